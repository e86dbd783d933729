-- Keep-alives at scale, against a real etcd: 20,000 leases kept alive by one
-- client, started all at once; none is reported lost while etcd holds it,
-- across a leader kill too, and closing them leaves nothing behind (the
-- suite also runs under ASan and valgrind, which check the last).
local helpers = require "helpers"
local etcd = require "etcd"

local N = 20000

-- N leases of `ttl` seconds, granted from 100 coroutines at once.
local function grant_all(cli, n, ttl)
  local ids = {}
  for g = 0, 99 do
    etcd.spawn(function()
      for i = g + 1, n, 100 do ids[i] = assert(cli:grant(ttl)).id end
    end)
  end
  etcd.run()
  return ids
end

local function revoke_all(cli, ids)
  for g = 0, 99 do
    etcd.spawn(function()
      for i = g + 1, #ids, 100 do cli:revoke(ids[i]) end
    end)
  end
  etcd.run()
end

-- Every keep-alive's newest answer, or what it reports instead: the number
-- of alive ones, and a list of the others' codes and messages.
local function census(kas, timeout)
  local ok, bad = 0, {}
  for i, ka in ipairs(kas) do
    local r, msg, code = ka:next(timeout)
    if r then ok = ok + 1 else bad[#bad + 1] = ("#%d: %s (%s)"):format(i, tostring(msg), tostring(code)) end
  end
  return ok, bad
end

-- The set of lease ids etcd holds.
local function held(cli)
  local res = assert(cli:leases { timeout = 30 })
  local set = {}
  for _, l in ipairs(res.leases) do set[l.id] = true end
  return set
end

local function missing(set, ids)
  local n = 0
  for _, id in ipairs(ids) do if not set[id] then n = n + 1 end end
  return n
end

describe("keep-alives at scale", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  it("20,000 leases with TTL 10 started at once: every first answer in, none lost, etcd holds them all two TTLs later #novalgrind #scale", function()
    local ids = grant_all(cli, N, 10)
    local kas = {}
    for i = 1, N do kas[i] = assert(cli:keepalive(ids[i])) end
    -- and one on an id etcd never granted, among them: told at once
    local ghost = assert(cli:keepalive(0x7e57))
    local ok, bad = census(kas, 60)
    assert.same({}, { helpers.unpack(bad, 1, 5) })
    assert.equal(N, ok)
    local r, msg, code = ghost:next(5)
    assert.is_nil(r)
    assert.equal("lease_not_found", code, msg)
    ghost:close()
    -- two full TTLs: only the renewals keep them
    helpers.sleep(25)
    ok, bad = census(kas, 10)
    assert.same({}, { helpers.unpack(bad, 1, 5) })
    assert.equal(N, ok)
    assert.equal(0, missing(held(cli), ids))
    local st = cli._core:_ka_stats()
    assert.equal(N, st.alive)
    -- every renewal sent was answered but those still in flight: none was
    -- sent twice on a stream, and no stream broke
    assert.is_true(st.sent - st.answered <= st.in_flight, ("sent %d, answered %d, in flight %d")
      :format(st.sent, st.answered, st.in_flight))
    assert.equal(0, st.stalls)
    for i = 1, N do kas[i]:close() end
    assert.equal(0, cli._core:_nkeepalives())
    revoke_all(cli, ids)
  end)

  it("closing 20,000 keep-alives, some still waiting for their first answer, leaves nothing behind", function()
    -- (a long TTL: under valgrind the grants alone take a minute)
    local ids = grant_all(cli, N, 600)
    local kas = {}
    for i = 1, N do kas[i] = assert(cli:keepalive(ids[i], { ttl = 600 })) end
    -- half closed at once: most of them still queued or in flight
    for i = 1, N, 2 do kas[i]:close() end
    local st = cli._core:_ka_stats()
    assert.equal(math.floor(N / 2), st.alive)
    assert.is_true(st.queued + st.in_flight <= math.floor(N / 2))
    for i = 2, N, 2 do assert(kas[i]:next(60 * helpers.slowdown)) end
    for i = 2, N, 2 do kas[i]:close() end
    st = cli._core:_ka_stats()
    assert.same({ 0, 0, 0 }, { st.alive, st.queued, st.in_flight })
    assert.equal(0, cli._core:_nkeepalives())
    -- closed objects say so; the streams go once nothing needs them
    local _, _, code = kas[1]:next(0)
    assert.equal("closed", code)
    assert.is_true(helpers.eventually(5 * helpers.slowdown, function() return cli._core:_nstreams() == 0 end))
    revoke_all(cli, ids)
  end)
end)

describe("keep-alives at scale across a leader kill", function()
  local cl, cli
  setup(function() cl = helpers.start_cluster(3) end)
  teardown(function()
    if cli then cli:close() end
    if cl then cl:stop() end
  end)

  it("20,000 leases with TTL 10 held by one client: none lost, the streams move once, no burst of re-sends #novalgrind #scale", function()
    local li = assert(cl:leader_index())
    -- in use on the leader: the client's streams start there
    local leader_id
    cli, leader_id = cl:client_on(li)
    local ids = grant_all(cli, N, 10)
    local kas = {}
    for i = 1, N do kas[i] = assert(cli:keepalive(ids[i])) end
    local ok, bad = census(kas, 60)
    assert.equal(N, ok, table.concat(bad, "\n", 1, math.min(#bad, 5)))
    local before = assert(kas[1]:next(10)).header.member_id
    assert.equal(leader_id, before) -- renewed through the member about to die
    local st0 = cli._core:_ka_stats()
    cl.members[li]:kill()
    -- two full TTLs past the kill: the answers come from another member
    helpers.sleep(22)
    ok, bad = census(kas, 10)
    assert.equal(N, ok, table.concat(bad, "\n", 1, math.min(#bad, 5)))
    local after = assert(kas[1]:next(10)).header.member_id
    assert.are_not.equal(before, after)
    assert.equal(0, missing(held(cli), ids))
    local st = cli._core:_ka_stats()
    -- the streams on the dead member were replaced (one each, a few tries
    -- while the cluster elected a leader), not one new stream per lease
    assert.is_true(st.opens - st0.opens <= 12, ("%d streams opened"):format(st.opens - st0.opens))
    -- only what was in flight on the dead streams went again: at most a
    -- window (256) per stream, not 20,000 re-sends in a burst
    local resent = (st.sent - st0.sent) - (st.answered - st0.answered) - st.in_flight
    assert.is_true(resent <= 256 * (st.opens - st0.opens + 4), ("%d renewals never answered"):format(resent))
    for i = 1, N do kas[i]:close() end
    revoke_all(cli, ids)
  end)
end)
