-- The client inside event loops: cqueues (a coroutine run by a controller
-- yields to cqueues) and luv (etcd.luv.spawn, driven by uv.run). Both with
-- Debian's real lua-cqueues and lua-luv, against a real etcd; in both the
-- loop's own timers keep ticking while etcd calls are in flight.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

describe("cqueues", function()
  local cqueues = require "cqueues"
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("calls, a watch and a keep-alive inside a controller", function()
    local cq = cqueues.new()
    local got = {}
    local w = assert(cli:watch("cq/", { prefix = true }))
    cq:wrap(function()
      -- the iterator called by hand: Lua 5.1's generic for cannot yield
      local events = w:events()
      while #got < 5 do
        local ev = assert(events())
        got[#got + 1] = ev.kv.value
      end
    end)
    cq:wrap(function()
      for i = 1, 5 do
        assert(cli:put("cq/" .. i, tostring(i)))
        cqueues.sleep(0.01)
      end
    end)
    local lease
    cq:wrap(function()
      lease = assert(cli:grant(5))
      local ka = assert(cli:keepalive(lease.id))
      assert(ka:next(5))
      ka:close()
    end)
    assert(cq:loop(30 * helpers.slowdown))
    assert.is_true(cq:empty())
    w:close()
    assert.same({ "1", "2", "3", "4", "5" }, got)
    assert.is_true(helpers.is_id(lease.id))
  end)

  it("the loop keeps ticking while a call is in flight", function()
    local cq = cqueues.new()
    local ticks, res, msg, code = 0, nil, nil, nil
    local done = false
    srv:pause()
    cq:wrap(function()
      res, msg, code = cli:get("cq/slow", { timeout = 0.5 })
      done = true
    end)
    cq:wrap(function()
      while not done do
        ticks = ticks + 1
        cqueues.sleep(0.01)
      end
    end)
    assert(cq:loop(30 * helpers.slowdown))
    srv:resume()
    assert.is_nil(res)
    assert.equal("timeout", code, msg)
    assert.is_true(ticks >= 10, "ticks: " .. ticks)
  end)

  it("many coroutines of one controller have their calls in flight at once", function()
    local cq = cqueues.new()
    local peak, n = 0, 32
    srv:pause()
    for i = 1, n do cq:wrap(function() assert(cli:put("cq/m" .. i, "v")) end) end
    cq:wrap(function()
      local t0 = core.now()
      while peak < n and core.now() - t0 < 5 * helpers.slowdown do
        peak = math.max(peak, cli._core:_inflight())
        cqueues.sleep(0.01)
      end
      srv:resume()
    end)
    assert(cq:loop(30 * helpers.slowdown))
    assert.equal(n, peak)
    assert.equal(0, cli._core:_inflight())
  end)

  it("the client speaks cqueues' polling protocol", function()
    assert.equal("r", cli:events())
    assert.is_nil(cli:timeout())
    assert.equal(cli._core:pollfd(), cli:pollfd())
    local cq = cqueues.new()
    local ready
    cq:wrap(function()
      -- a call started by hand: the client's fd becomes readable once it is done
      local h = assert(cli._core:_unary("KV.Range", { key = "cq/1" }, 5))
      ready = cqueues.poll(cli, 5 * helpers.slowdown)
      require("etcd.wait").dispatch(cli._core)
      assert(h:done())
      assert(h:result())
    end)
    assert(cq:loop(30 * helpers.slowdown))
    assert.equal(cli, ready)
  end)
end)

describe("luv", function()
  local uv = require "luv"
  local eluv = require "etcd.luv"
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("etcd calls run alongside luv's own timers", function()
    local ticks, done = 0, false
    local timer = uv.new_timer()
    timer:start(10, 10, function()
      ticks = ticks + 1
      if done then
        timer:stop()
        timer:close()
      end
    end)
    srv:pause()
    local slow = eluv.spawn(function()
      local r, msg, code = cli:get("luv/slow", { timeout = 0.5 })
      done = true
      return r, msg, code
    end)
    eluv.run()
    srv:resume()
    local ok, r, _, code = slow:join()
    assert.is_true(ok)
    assert.is_nil(r)
    assert.equal("timeout", code)
    assert.is_true(ticks >= 10, "ticks: " .. ticks)
  end)

  it("puts, a watch and joins driven by uv.run", function()
    local w = assert(cli:watch("luv/", { prefix = true }))
    local consumer = eluv.spawn(function()
      local got = {}
      -- the iterator called by hand: Lua 5.1's generic for cannot yield
      local events = w:events()
      while #got < 5 do
        local ev = assert(events())
        got[#got + 1] = ev.kv.value
      end
      return table.concat(got, ",")
    end)
    local hs = {}
    for i = 1, 5 do
      hs[i] = eluv.spawn(function()
        etcd.sleep(0.01 * i)
        return assert(cli:put("luv/" .. i, tostring(i))).header.revision
      end)
    end
    local joiner = eluv.spawn(function()
      local revs = {}
      for i = 1, 5 do revs[i] = select(2, hs[i]:join()) end
      return revs
    end)
    uv.run()
    w:close()
    assert.same({ true, "1,2,3,4,5" }, { consumer:join() })
    local _, revs = joiner:join()
    for i = 2, 5 do assert.is_true(revs[i] > revs[i - 1]) end
  end)

  it("keeps luv's loop alive when package.loaded.luv is cleared (luv's C context outlives it)", function()
    -- without etcd.luv pinning the module, the collector frees luv's loop
    -- and a later require "luv" runs on the freed memory (valgrind saw it)
    -- (twice: the second require "luv" makes a table without the loop)
    local status, out, err = helpers.run_lua([[
      local weak = setmetatable({}, { __mode = "v" })
      for round = 1, 2 do
        require "etcd.luv"
        if round == 1 then weak[1] = package.loaded.luv._loop end
        package.loaded.luv, package.loaded["etcd.luv"] = nil, nil
        collectgarbage()
        collectgarbage()
        io.write(weak[1] and "kept" or "collected", "\n")
        local uv = require "luv"
        local t = uv.new_timer()
        t:start(1, 0, function() t:close() end)
        uv.run()
        io.write("timer ran\n")
        package.loaded.luv = nil
        collectgarbage()
      end
    ]])
    assert.equal(0, status, err)
    assert.equal("kept\ntimer ran\nkept\ntimer ran\n", out)
  end)

  it("an error in a luv coroutine nobody joins is raised by etcd.luv.run", function()
    eluv.spawn(function() error("luv boom") end)
    local ok, err = pcall(eluv.run)
    assert.is_false(ok)
    assert.matches("luv boom", err)
  end)

  it("join outside a coroutine runs the loop until the coroutine ends", function()
    local h = eluv.spawn(function() return assert(cli:put("luv/j", "j")).header.revision end)
    local ok, rev = h:join()
    assert.is_true(ok)
    assert.is_true(rev > 0)
  end)
end)
