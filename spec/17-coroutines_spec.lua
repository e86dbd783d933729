-- Many things at once in one Lua state: etcd.spawn / etcd.run / join /
-- sleep, every blocking method yielding inside a spawned coroutine, and the
-- same methods still blocking outside one. Against a real etcd.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

local eventually = helpers.eventually

describe("coroutines", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("etcd.spawn(f):join() at top level runs f and returns true and its results", function()
    local h = etcd.spawn(function(a, b)
      assert(cli:put("co/join", a .. b))
      return assert(cli:get("co/join")).kvs[1].value, 42
    end, "x", "y")
    assert.equal("running", h:status())
    assert.same({ true, "xy", 42 }, { h:join() })
    assert.equal("done", h:status())
    -- joined again: the same results
    assert.same({ true, "xy", 42 }, { h:join() })
  end)

  it("64 coroutines have 64 puts in flight at once on one client", function()
    -- etcd stopped (SIGSTOP): nothing completes, so every put that started is
    -- still in flight when we look
    srv:pause()
    local hs = {}
    for i = 1, 64 do
      hs[i] = etcd.spawn(function() return assert(cli:put("co/p" .. i, tostring(i))).header.revision end)
    end
    local peak = 0
    local watcher = etcd.spawn(function()
      local t0 = core.now()
      while core.now() - t0 < 5 * helpers.slowdown do
        peak = math.max(peak, cli._core:_inflight())
        if peak == 64 then break end
        etcd.sleep(0.01)
      end
      srv:resume()
    end)
    etcd.run()
    assert.is_true(watcher:join())
    assert.equal(64, peak)
    local revs = {}
    for i = 1, 64 do
      local ok, rev = hs[i]:join()
      assert.is_true(ok)
      revs[rev] = true
    end
    local n = 0
    for _ in pairs(revs) do n = n + 1 end
    assert.equal(64, n) -- 64 distinct writes
    assert.equal(0, cli._core:_inflight())
  end)

  it("64 puts from 64 coroutines finish several times faster than 64 in sequence #novalgrind", function()
    local function seq()
      local t0 = core.now()
      for i = 1, 64 do assert(cli:put("co/s" .. i, "v")) end
      return core.now() - t0
    end
    local function par()
      local t0 = core.now()
      for i = 1, 64 do etcd.spawn(function() assert(cli:put("co/s" .. i, "w")) end) end
      etcd.run()
      return core.now() - t0
    end
    -- rounds interleaved, best of each (the machine is shared)
    local bs, bp = math.huge, math.huge
    for _ = 1, 3 do
      bs = math.min(bs, seq())
      bp = math.min(bp, par())
    end
    print(("\n  64 puts: in sequence %.1f ms, from 64 coroutines %.1f ms (%.1fx)"):format(bs * 1e3, bp * 1e3, bs / bp))
    assert.is_true(bs / bp > 1.5, ("only %.2fx"):format(bs / bp))
  end)

  it("a watch consumer and a producer interleave in one state", function()
    local w = assert(cli:watch("co/w/", { prefix = true }))
    local log = {}
    local consumer = etcd.spawn(function()
      local n = 0
      -- the iterator called by hand: Lua 5.1's generic for cannot yield
      local events = w:events()
      while true do
        local ev = events()
        if not ev then break end
        n = n + 1
        log[#log + 1] = "got " .. ev.kv.value
        if n == 10 then break end
      end
      return n
    end)
    local producer = etcd.spawn(function()
      for i = 1, 10 do
        assert(cli:put("co/w/" .. i, tostring(i)))
        log[#log + 1] = "put " .. i
        etcd.sleep(0.02)
      end
    end)
    etcd.run()
    w:close()
    assert.same({ true, 10 }, { consumer:join() })
    assert.is_true(producer:join())
    -- each event was consumed before the producer's next put
    for i = 1, 9 do
      local got, nextput
      for k, v in ipairs(log) do
        if v == "got " .. i then got = k end
        if v == "put " .. (i + 1) then nextput = k end
      end
      assert.is_true(got < nextput, table.concat(log, ", "))
    end
  end)

  it("10,000 coroutines each doing a get all finish", function()
    assert(cli:put("co/many", "m"))
    local n = helpers.under_valgrind and 1000 or 10000
    local done = 0
    for _ = 1, n do
      etcd.spawn(function()
        local r = assert(cli:get("co/many"))
        assert(r.kvs[1].value == "m")
        done = done + 1
      end)
    end
    etcd.run()
    assert.equal(n, done)
    assert.equal(0, cli._core:_inflight())
    -- each wait had a deadline timer; every one went with its wait
    assert.equal(0, #require("etcd.sched")._state.timers)
  end)

  it("deadlines still fire on time while thousands of finished waits leave dead timers behind", function()
    assert(cli:put("co/dl", "x"))
    local sched = require "etcd.sched"
    local woke, timed_out = {}, nil
    local t0 = core.now()
    for i, d in ipairs { 0.6, 0.2, 0.4 } do
      etcd.spawn(function()
        etcd.sleep(d)
        woke[i] = core.now() - t0
      end)
    end
    local w = assert(cli:watch("co/dl-never"))
    etcd.spawn(function()
      local r, _, code = w:next(0.5)
      timed_out = { r, code, core.now() - t0 }
    end)
    local max_heap = 0
    for _ = 1, 64 do
      etcd.spawn(function()
        while core.now() - t0 < 0.8 do
          assert(cli:get("co/dl"))
          max_heap = math.max(max_heap, #sched._state.timers)
        end
      end)
    end
    etcd.run()
    w:close()
    -- each on time (within a slack for a loaded machine), in order
    for i, d in ipairs { 0.6, 0.2, 0.4 } do
      assert.is_true(woke[i] >= d and woke[i] < d + 0.3 * helpers.slowdown, ("sleep %g woke at %.3f"):format(d, woke[i]))
    end
    assert.is_nil(timed_out[1])
    assert.equal("timeout", timed_out[2])
    assert.is_true(timed_out[3] >= 0.5 and timed_out[3] < 0.8 * helpers.slowdown, tostring(timed_out[3]))
    -- the dead were dropped as they piled up (64 waits live at a time)
    assert.is_true(max_heap < 400, "timer heap grew to " .. max_heap)
    assert.equal(0, #sched._state.timers)
  end)

  it("a coroutine waiting on a keep-alive sees the lease lost", function()
    local l = assert(cli:grant(5))
    local ka = assert(cli:keepalive(l.id))
    local waiter = etcd.spawn(function()
      local seen = 0
      while true do
        local r, msg, code = ka:next()
        if not r then return seen, msg, code end
        seen = seen + 1
      end
    end)
    etcd.spawn(function()
      etcd.sleep(0.2)
      assert(cli:revoke(l.id))
    end)
    etcd.run()
    local ok, seen, msg, code = waiter:join()
    assert.is_true(ok)
    assert.is_true(seen >= 1)
    assert.equal("lease_expired", code, msg)
    ka:close()
  end)

  it("an error in one coroutine does not stop the others; etcd.run raises it after", function()
    local finished = 0
    for i = 1, 5 do
      etcd.spawn(function()
        assert(cli:put("co/e" .. i, "v"))
        finished = finished + 1
      end)
    end
    etcd.spawn(function()
      assert(cli:get("co/e1"))
      error("boom in a coroutine")
    end)
    local ok, err = pcall(etcd.run)
    assert.is_false(ok)
    assert.matches("boom in a coroutine", err)
    assert.matches("stack traceback", err)
    assert.equal(5, finished)
    -- raised once: the next run has nothing to raise
    etcd.run()
  end)

  it("join returns false and the error with its traceback; a joined error is not raised by run", function()
    local h = etcd.spawn(function() error({ code = "mine" }) end)
    local h2 = etcd.spawn(function()
      assert(cli:get("co/x"))
      error("second")
    end)
    local joiner = etcd.spawn(function()
      local ok, err = h2:join()
      return ok, err
    end)
    local ok, e = h:join()
    assert.is_false(ok)
    assert.same({ code = "mine" }, e)
    etcd.run() -- h2's error was joined by `joiner`: nothing raised
    local _, jok, jerr = joiner:join()
    assert.is_false(jok)
    assert.matches("second", jerr)
    assert.matches("stack traceback", jerr)
  end)

  it("closing the client wakes every waiting coroutine with closed", function()
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    local hs = {}
    local watches = {}
    for i = 2, 100, 2 do watches[i] = assert(c2:watch("co/close/" .. i)) end
    srv:pause() -- the gets below stay unanswered
    for i = 1, 100 do
      if i % 2 == 0 then
        local w = watches[i]
        hs[i] = etcd.spawn(function() return w:next() end)
      else
        -- a get that etcd cannot answer: the member is stopped
        hs[i] = etcd.spawn(function() return c2:get("co/close", { timeout = 30 }) end)
      end
    end
    etcd.spawn(function()
      etcd.sleep(0.2)
      c2:close()
    end)
    local t0 = core.now()
    etcd.run()
    srv:resume()
    assert.is_true(core.now() - t0 < 10 * helpers.slowdown)
    for i = 1, 100 do
      local ok, res, msg, code = hs[i]:join()
      assert.is_true(ok)
      assert.is_nil(res)
      assert.equal("closed", code, msg)
    end
    assert.equal(0, c2._core:_inflight())
    assert.equal(0, c2._core:_nwatches())
  end)

  it("a second coroutine waiting on the same watch is a clear error", function()
    local w = assert(cli:watch("co/two"))
    local first = etcd.spawn(function() return w:next(0.5) end)
    local second = etcd.spawn(function() return w:next(0.5) end)
    local ok, err = second:join()
    assert.is_false(ok)
    assert.matches("w:next: another coroutine is already waiting on this watch", err)
    local ok1, res, _, code = first:join()
    assert.is_true(ok1)
    assert.is_nil(res)
    assert.equal("timeout", code)
    -- the watch is still usable, and its waiter free again
    assert(cli:put("co/two", "v"))
    assert.equal("v", assert(w:next(5)).events[1].kv.value)
    w:close()
  end)

  it("a plain coroutine.wrap that is not spawned still blocks correctly", function()
    local f = coroutine.wrap(function()
      assert(cli:put("co/plain", "p"))
      coroutine.yield(assert(cli:get("co/plain")).kvs[1].value)
      return "end"
    end)
    assert.equal("p", f())
    assert.equal("end", f())
    -- and inside a spawned coroutine, a plain nested one blocks too
    local h = etcd.spawn(function()
      local g = coroutine.wrap(function() return assert(cli:get("co/plain")).kvs[1].value end)
      return g()
    end)
    assert.same({ true, "p" }, { h:join() })
  end)

  it("etcd.sleep yields inside a spawned coroutine and sleeps the thread outside", function()
    local order = {}
    etcd.spawn(function()
      etcd.sleep(0.1)
      order[#order + 1] = "slow"
    end)
    etcd.spawn(function()
      etcd.sleep(0.01)
      order[#order + 1] = "fast"
    end)
    local t0 = core.now()
    etcd.run()
    assert.same({ "fast", "slow" }, order)
    local took = core.now() - t0
    assert.is_true(took >= 0.1 and took < 0.1 + 2 * helpers.slowdown, tostring(took))
    t0 = core.now()
    etcd.sleep(0.05)
    assert.is_true(core.now() - t0 >= 0.05)
  end)

  it("a deadline inside a coroutine ends the call with timeout while others go on", function()
    srv:pause()
    local ticks = 0
    local slow = etcd.spawn(function() return cli:get("co/t", { timeout = 0.3 }) end)
    local ticker = etcd.spawn(function()
      while slow:status() == "running" do
        ticks = ticks + 1
        etcd.sleep(0.01)
      end
    end)
    etcd.run()
    srv:resume()
    local _, res, msg, code = slow:join()
    assert.is_nil(res)
    assert.equal("timeout", code, msg)
    assert.is_true(ticker:join())
    assert.is_true(ticks >= 5, "ticks: " .. ticks)
  end)

  it("misuse of the scheduler's functions raises, naming them", function()
    assert.has_error(function() etcd.spawn(42) end, "etcd.spawn: bad argument #1 (function expected, got number)")
    assert.has_error(function() etcd.sleep("1") end,
      "etcd.sleep: bad argument #1 (seconds): non-negative number of seconds expected, got string")
    assert.has_error(function() etcd.sleep(-1) end,
      "etcd.sleep: bad argument #1 (seconds): non-negative number of seconds expected, got -1")
    assert.has_error(function() etcd.Task.join({}) end, "join: bad self (etcd task expected)")
    assert.has_error(function() require("etcd.luv").spawn(nil) end,
      "etcd.luv.spawn: bad argument #1 (function expected, got nil)")
  end)

  it("etcd.run from a spawned coroutine is misuse", function()
    local h = etcd.spawn(function() etcd.run() end)
    local ok, err = h:join()
    assert.is_false(ok)
    assert.matches("etcd.run: called from a spawned coroutine", err)
  end)

  it("a join cycle is reported, not a hang", function()
    local a, b
    a = etcd.spawn(function() etcd.sleep(0); return b:join() end)
    b = etcd.spawn(function() etcd.sleep(0); return a:join() end)
    local ok, err = pcall(etcd.run)
    assert.is_false(ok)
    assert.matches("every coroutine is waiting and nothing can wake them", err)
    -- they ended as failed, and the scheduler is usable again
    assert.equal("failed", a:status())
    assert.equal("failed", b:status())
    assert.same({ true, 7 }, { etcd.spawn(function() return 7 end):join() })
    etcd.run()
  end)
end)

describe("coroutines and keep-alives", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  it("gets work with 20,000 kept-alive leases on the client #novalgrind", function()
    local n = helpers.under_asan and 5000 or 20000
    local kas = {}
    local per = 100
    for g = 0, math.floor(n / per) - 1 do
      etcd.spawn(function()
        for i = 1, per do
          local l = assert(cli:grant(60))
          kas[g * per + i] = assert(cli:keepalive(l.id))
        end
      end)
    end
    etcd.run()
    assert.equal(n, cli._core:_nkeepalives())
    for _ = 1, 20 do assert(cli:get("ka/k", { serializable = true })) end
    eventually(30, function()
      for i = 1, n, math.floor(n / 50) do
        if kas[i]:next(0) == nil and kas[i]._seen == 0 then return false end
      end
      return true
    end)
    local t0 = core.now()
    for i = 1, n do kas[i]:close() end
    print(("\n  closing %d keep-alives: %.0f ms"):format(n, (core.now() - t0) * 1e3))
    assert.equal(0, cli._core:_nkeepalives())
  end)
end)

describe("etcd.first", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  it("returns the first of several coroutines to end, at top level and inside one", function()
    local w = assert(cli:watch("first/k"))
    local ev = etcd.spawn(function() return w:next() end)
    local tick = etcd.spawn(function() etcd.sleep(0.1); return "tick" end)
    assert.same({ 2, true, "tick" }, { etcd.first(ev, tick) })
    assert.equal("running", ev:status())
    local inner = etcd.spawn(function()
      local ev2 = etcd.spawn(function() return etcd.sleep(0.3) end)
      local put = etcd.spawn(function() return assert(cli:put("first/k", "v")).header.revision end)
      local which = etcd.first(ev2, put, ev)
      return which
    end)
    local ok, which = inner:join()
    assert.is_true(ok)
    assert.is_true(which == 2 or which == 3)
    local _, resp = ev:join()
    assert.equal("v", resp.events[1].kv.value)
    w:close()
    etcd.run() -- the sleeper
    assert.has_error(function() etcd.first() end, "etcd.first: bad argument #1 (task handle expected, got no value)")
    assert.has_error(function() etcd.first(ev, 1) end, "etcd.first: bad argument #2 (task handle expected, got number)")
  end)
end)
