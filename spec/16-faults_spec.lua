-- Fault injection against a real etcd: the member killed (SIGKILL) in the
-- middle of a unary call, a watch and a keep-alive; a client used while its
-- member is down and after it came back; and servers that stop answering (a
-- plain listening socket that never speaks, a stopped etcd): every wait ends
-- by its deadline with nil, msg, code (docs/ERROR_HANDLING.md).
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"
local ts = require "testsupport"

-- How long past its deadline a wait may end (a loaded machine, sanitizers).
local SLACK = 1.5 * helpers.slowdown
-- The deadline of the waits under test.
local T = 0.3

local function timed(f, ...)
  local t0 = core.now()
  local r = helpers.pack(f(...))
  return core.now() - t0, helpers.unpack(r, 1, r.n)
end

local eventually = helpers.eventually

-- A failure that ended by its deadline `t`: nil, a message, code `want`.
local function assert_deadline(what, t, took, res, msg, code, want)
  assert.is_nil(res, what .. " succeeded")
  assert.is_string(msg, what)
  assert.equal(want or "timeout", code, what .. ": " .. tostring(msg))
  assert.is_true(took >= t - 0.01, ("%s ended after %.3f s, before its deadline %.3f s"):format(what, took, t))
  assert.is_true(took < t + SLACK, ("%s ended after %.3f s, deadline %.3f s"):format(what, took, t))
end

-- Every kind of wait of the API, as function(cli, ep, t) -> res, msg, code,
-- each bounded by `t` seconds (the client's `timeout` is t too, for the
-- waits that take no option). `admin`: changes the cluster or auth if the
-- server ever applies it: only against a server that never answers.
local KINDS = {
  { "get", function(c, _, t) return c:get("f/k", { timeout = t }) end },
  { "get (the client's timeout)", function(c) return c:get("f/k") end },
  { "put", function(c, _, t) return c:put("f/k", "v", { timeout = t }) end },
  { "delete", function(c, _, t) return c:delete("f/k", { timeout = t }) end },
  { "txn", function(c, _, t)
    return c:txn({ compare = { etcd.compare.version("f/k", ">", 0) }, success = { etcd.op.get("f/k") },
                   failure = { etcd.op.put("f/k", "v") } }, { timeout = t })
  end },
  { "exec", function(c, _, t) return c:exec(etcd.op.get("f/k"), { timeout = t }) end },
  { "batch", function(c, _, t) return c:batch({ etcd.op.get("f/k"), etcd.op.put("f/k", "w") }, { timeout = t }) end },
  { "atomic batch", function(c, _, t) return c:batch({ etcd.op.put("f/k", "w") }, { timeout = t, atomic = true }) end },
  { "compact", function(c, _, t) return c:compact(1, { timeout = t }) end },
  { "grant", function(c, _, t) return c:grant(10, { timeout = t }) end },
  { "revoke", function(c, _, t) return c:revoke(12345, { timeout = t }) end },
  { "time_to_live", function(c, _, t) return c:time_to_live(12345, { timeout = t }) end },
  { "leases", function(c, _, t) return c:leases { timeout = t } end },
  { "keepalive_once", function(c, _, t) return c:keepalive_once(12345, { timeout = t }) end },
  { "keepalive: ka:next", function(c, _, t)
    local ka = c:keepalive(12345)
    local r, m, k = ka:next(t)
    ka:close()
    return r, m, k
  end },
  { "watch (creation, the client's timeout)", function(c) return c:watch("f/k") end },
  { "member_list", function(c, _, t) return c:member_list { timeout = t } end },
  { "status", function(c, ep, t) return c:status(ep, { timeout = t }) end },
  { "alarm_list", function(c, _, t) return c:alarm_list { timeout = t } end },
  { "hash_kv", function(c, ep, t) return c:hash_kv(ep, 0, { timeout = t }) end },
  { "defragment", function(c, ep, t) return c:defragment(ep, { timeout = t }) end },
  { "user_list", function(c, _, t) return c:user_list { timeout = t } end },
  { "user_get", function(c, _, t) return c:user_get("root", { timeout = t }) end },
  { "role_list", function(c, _, t) return c:role_list { timeout = t } end },
  { "user_add", function(c, _, t) return c:user_add("f-user", "pw", { timeout = t }) end, admin = true },
  { "auth_enable", function(c, _, t) return c:auth_enable { timeout = t } end, admin = true },
  { "member_add", function(c, _, t) return c:member_add({ "http://127.0.0.1:1" }, { timeout = t }) end, admin = true },
}

-- Run every kind against `cli` (whose `timeout` is T); each ends by T.
local function every_wait_ends(cli, ep, with_admin)
  for _, k in ipairs(KINDS) do
    if with_admin or not k.admin then
      local took, res, msg, code = timed(k[2], cli, ep, T) -- (batch adds a 4th value)
      assert_deadline(k[1], T, took, res, msg, code)
    end
  end
end

describe("a server that accepts connections and never answers", function()
  local fd, ep
  setup(function()
    local port
    fd, port = ts.listen()
    ep = "127.0.0.1:" .. port
  end)
  teardown(function() if fd then ts.close(fd) end end)

  it("every kind of wait ends by its deadline with nil, msg, 'timeout'", function()
    local cli = assert(etcd.new { endpoints = { ep }, dial_timeout = 0, timeout = T })
    every_wait_ends(cli, ep, true)
    -- a keep-alive that never got an answer is lost when the TTL its caller
    -- knows runs out; with none known it waits for etcd's word (a slow first
    -- answer is no loss)
    local ka = assert(cli:keepalive(1, { ttl = 1 }))
    local took, r, msg, code = timed(ka.next, ka, 10)
    assert_deadline("ka:next until the lease is given up", 1, took, r, msg, code, "lease_expired")
    assert.matches("no answer from etcd before its TTL ran out", msg)
    local ka2 = assert(cli:keepalive(2))
    assert_deadline("ka:next of a lease of unknown TTL", 1.5, timed(ka2.next, ka2, 1.5))
    assert.equal("alive", (ka2._h:state()))
    ka2:close()
    cli:close()
  end)

  it("etcd.new ends by dial_timeout with 'UNAVAILABLE', and a login by the client's timeout", function()
    local took, c, msg, code = timed(etcd.new, { endpoints = { ep }, dial_timeout = T })
    assert_deadline("etcd.new", T, took, c, msg, code, "UNAVAILABLE")
    took, c, msg, code = timed(etcd.new, { endpoints = { ep }, dial_timeout = 0, timeout = T, user = "u", password = "p" })
    assert_deadline("etcd.new with a login", T, took, c, msg, code)
  end)

  it("a call's own timeout wins over the client's", function()
    local cli = assert(etcd.new { endpoints = { ep }, dial_timeout = 0, timeout = 30 })
    assert_deadline("get", 0.2, timed(cli.get, cli, "k", { timeout = 0.2 }))
    assert_deadline("keepalive_once", 0.2, timed(cli.keepalive_once, cli, 1, { timeout = 0.2 }))
    cli:close()
  end)
end)

describe("a member that stops answering (SIGSTOP)", function()
  local srv, cli
  setup(function()
    srv = helpers.start_etcd()
    cli = assert(etcd.new { endpoints = srv.endpoints, timeout = T, dial_timeout = 1 })
  end)
  teardown(function()
    if cli then cli:close() end
    if srv then srv:resume():stop() end
  end)

  it("every kind of wait ends by its deadline, a watch's next too; all works again once it answers", function()
    local w = assert(cli:watch("f/w"))
    local l = assert(cli:grant(30, { timeout = 5 }))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    srv:pause()
    every_wait_ends(cli, srv.endpoint, false)
    assert_deadline("w:next", T, timed(w.next, w, T))
    assert_deadline("ka:next", T, timed(ka.next, ka, T))
    -- a new client cannot finish its handshake with a stopped server
    local took, c, msg, code = timed(etcd.new, { endpoints = srv.endpoints, dial_timeout = 0.5 })
    assert_deadline("etcd.new", 0.5, took, c, msg, code, "UNAVAILABLE")
    srv:resume()
    -- the same client, its watch and its keep-alive work again
    local p
    assert.is_true(eventually(10, function()
      p = cli:put("f/w", "after", { timeout = 1 })
      return p ~= nil
    end), "no put succeeded after the member resumed")
    local r = assert(w:next(5))
    assert.equal("after", r.events[#r.events].kv.value)
    assert(ka:next(5))
    w:close()
    ka:close()
  end)
end)

describe("a member killed (SIGKILL) and restarted", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end, { client = { dial_timeout = 1 } })

  local function restart()
    srv:restart()
    -- the client reconnects by itself (gRPC's back-off is at most 2 s)
    assert.is_true(eventually(10, function() return cli:get("f/any", { timeout = 1 }) ~= nil end),
      "the client did not reconnect")
  end

  it("in the middle of a unary call: it ends at once with 'UNAVAILABLE', not at its deadline", function()
    assert(cli:put("f/a", "1"))
    srv:pause() -- the request reaches etcd's socket and stays unanswered
    srv:kill_after(0.5)
    local took, res, msg, code = timed(cli.get, cli, "f/a", { timeout = 10 * helpers.slowdown })
    assert.is_nil(res)
    assert.is_string(msg)
    assert.equal("UNAVAILABLE", code, msg)
    assert.is_true(took >= 0.4 and took < 5 * helpers.slowdown, "took " .. took)
    assert.is_true(eventually(5, function() return not srv:is_running() end))
    restart()
    assert.equal("1", assert(cli:get("f/a")).kvs[1].value)
  end)

  it("in the middle of a watch's wait: the wait ends by its deadline; the watch resumes after the restart", function()
    local w = assert(cli:watch("f/w/", { prefix = true }))
    local p1 = assert(cli:put("f/w/1", "before"))
    local r = assert(w:next(5))
    assert.equal(p1.header.revision, r.events[1].kv.mod_revision)
    srv:kill_after(0.3)
    assert_deadline("w:next", 2, timed(w.next, w, 2))
    assert.is_false(srv:is_running())
    -- still down: a wait still ends by its deadline, and the watch goes on
    assert_deadline("w:next", T, timed(w.next, w, T))
    restart()
    local p2 = assert(cli:put("f/w/2", "after"))
    r = assert(w:next(10))
    assert.equal(1, #r.events)
    assert.equal("f/w/2", r.events[1].kv.key)
    assert.equal(p2.header.revision, r.events[1].kv.mod_revision)
    w:close()
  end)

  it("in the middle of a keep-alive's wait: the lease is lost when its TTL runs out; a new one works after", function()
    local l = assert(cli:grant(3))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    srv:kill_after(0.3)
    local took, r, msg, code = timed(ka.next, ka, 20)
    assert.is_nil(r)
    assert.equal("lease_expired", code, msg)
    assert.matches("no answer from etcd before its TTL ran out", msg)
    assert.is_true(took < 3 + SLACK, "took " .. took)
    restart()
    -- it stays lost (renewal stopped), whatever etcd now thinks of the lease
    r, msg, code = ka:next(1)
    assert.is_nil(r)
    assert.equal("lease_expired", code, msg)
    assert.equal(0, cli._core:_nkeepalives())
    ka:close()
    local l2 = assert(cli:grant(3))
    local ka2 = assert(cli:keepalive(l2.id))
    assert.equal(3, assert(ka2:next(5)).ttl)
    ka2:close()
  end)

  it("while it is down every call fails with 'timeout' by its deadline; after it is back the same client works", function()
    assert(cli:put("f/d", "kept"))
    local w = assert(cli:watch("f/d"))
    srv:kill()
    local c2 = assert(etcd.new { endpoints = srv.endpoints, dial_timeout = 0, timeout = T })
    every_wait_ends(c2, srv.endpoint, false)
    for _ = 1, 2 do -- the code stays the same however often it is tried
      assert_deadline("get", T, timed(cli.get, cli, "f/d", { timeout = T }))
      assert_deadline("put", T, timed(cli.put, cli, "f/d", "x", { timeout = T }))
    end
    restart()
    assert.equal("kept", assert(cli:get("f/d")).kvs[1].value)
    assert.equal("kept", assert(c2:get("f/d", { timeout = 5 })).kvs[1].value)
    local p = assert(cli:put("f/d", "new"))
    local r = assert(w:next(10))
    assert.equal(p.header.revision, r.events[1].kv.mod_revision)
    local l = assert(cli:grant(5))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    ka:close()
    w:close()
    c2:close()
  end)
end)
