-- A member of a three-member cluster that stops answering while its TCP
-- connections stay open (SIGSTOP): gRPC's keepalive would notice after ~40 s.
-- The client notices by itself: a call of a second or more that runs out of
-- time on it, or a keep-alive renewal left unanswered past TTL/3, makes it
-- pass that member over (until it answers a probe again), and calls and
-- keep-alives go on elsewhere. The leader stays stopped for STOP seconds: 50
-- (the issue's mark; past the 30 s an avoidance used to last), 20 in the
-- sanitizer and LuaJIT runs (LUA_ETCD_SPEC_STOP_SECONDS), whose point is
-- memory and the other Lua, not the length. The follower, 20 s: the same
-- code keeps either passed over, and CI's 45 minutes are short.
local STOP = tonumber(os.getenv("LUA_ETCD_SPEC_STOP_SECONDS")) or 50
local helpers = require "helpers"
local core = require "etcd.core"
local etcd = require "etcd"

describe("a member of three that stops answering (SIGSTOP)", function()
  local cl, cli
  setup(function() cl = helpers.start_cluster(3) end)
  teardown(function()
    if cli then cli:close() end
    if cl then
      for _, m in ipairs(cl.members) do if m:is_running() then m:resume() end end
      cl:stop()
    end
  end)

  -- Stop member `pick(leader index)`, in use by a new client (first of its
  -- endpoints), for `seconds` of puts with a 1 s deadline from WRITERS
  -- coroutines (a put every 20 ms each for the first 10 s, then every 0.5 s:
  -- what each watch must verify stays small), watched by WATCHES watches:
  -- each writer may see one put fail (the one in flight), none after
  -- `settle` seconds.
  local WRITERS, WATCHES = 4, 50
  local function stop_one(pick, settle, seconds)
    local li = assert(cl:leader_index())
    local fi = pick(li)
    local stopped
    cli, stopped = cl:client_on(fi, { timeout = 1 })
    assert.equal(stopped, assert(cli:get("h/any")).header.member_id) -- it serves us
    local l = assert(cli:grant(5))
    assert(cli:put("h/lease", "x", { lease = l.id }))
    local ka = assert(cli:keepalive(l.id))
    assert.equal(stopped, assert(ka:next(5)).header.member_id)
    local ws = {}
    for i = 1, WATCHES do ws[i] = assert(cli:watch("h/k")) end
    local p0 = assert(cli:put("h/k", "before"))
    for _, w in ipairs(ws) do assert.equal(p0.header.revision, assert(w:next(5)).events[1].kv.mod_revision) end
    assert.equal(0, cli._core:_navoided())

    cl.members[fi]:pause()
    finally(function() cl.members[fi]:resume() end) -- (SIGCONT: harmless when running)
    local t0 = core.now()
    local ok, last_failure, failures, revs, tasks = 0, nil, {}, {}, {}
    for wr = 1, WRITERS do
      failures[wr] = {}
      tasks[wr] = etcd.spawn(function()
        while core.now() - t0 < seconds do
          local p, msg, code = cli:put("h/k", tostring(ok), { timeout = 1 })
          if p then
            ok = ok + 1
            revs[#revs + 1] = p.header.revision
            assert.are_not.equal(stopped, p.header.member_id)
          else
            last_failure = core.now() - t0
            table.insert(failures[wr], tostring(code) .. ": " .. tostring(msg))
          end
          etcd.sleep(core.now() - t0 < 10 and 0.02 or 0.5)
        end
      end)
    end
    for _, t in ipairs(tasks) do assert(t:join()) end
    for wr = 1, WRITERS do assert.is_true(#failures[wr] <= 1, table.concat(failures[wr], "\n")) end
    assert.is_true(last_failure == nil or last_failure < settle * helpers.slowdown, tostring(last_failure))
    assert.is_true(ok > 20)
    -- still passed over: it has not answered (a time limit on the avoidance
    -- would have sent a put back to it, to fail)
    assert.equal(1, cli._core:_navoided())
    -- the lease lived on: renewed through another member all along
    local r = assert(ka:next(5))
    assert.are_not.equal(stopped, r.header.member_id)
    assert.equal(5, r.ttl)
    assert.is_true(assert(cli:time_to_live(l.id)).ttl > 0)
    assert.equal("x", assert(cli:get("h/lease")).kvs[1].value)
    assert.is_true(cli._core:_ka_stats().stalls >= 1)
    -- the watches moved off the stopped member and saw every acknowledged
    -- put once, in order (the puts that timed out never reached etcd)
    table.sort(revs)
    helpers.assert_watches_saw(ws, revs)

    cl.members[fi]:resume()
    -- back: it answers a probe, and is a candidate again
    assert.is_true(helpers.eventually(5, function() return cli._core:_navoided() == 0 end))
    ka:close()
    assert(cli:revoke(l.id))
    cli:close()
    cli = nil
    cl:wait_healthy()
  end

  it("a follower in use: calls move to another member within one deadline; a lease of TTL 5 kept alive through it survives; watches move and lose nothing #novalgrind", function()
    -- stopping a follower costs the cluster no election: what is measured is
    -- the client alone. The put in flight when it stopped runs out of time;
    -- the next goes elsewhere.
    stop_one(function(li) return li % 3 + 1 end, 1.5, math.min(STOP, 20))
  end)

  it("the leader in use: the same once the others elected a leader #novalgrind", function()
    -- the others need an election (0.5-1 s here) before a put succeeds
    -- again: the put in flight times out, and the leader fence holds the
    -- next until a follower names the new leader. etcd's new leader extends
    -- every lease by its election, and the keep-alive stream, moved by its
    -- stall, is answered once it is done
    stop_one(function(li) return li end, 2.5, STOP)
  end)
end)
