-- etcd.new, connecting, deadlines, close, fork: against a real etcd.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"
local ts = require "testsupport"

describe("etcd.new", function()
  local srv
  setup(function() srv = helpers.start_etcd() end)
  teardown(function() if srv then srv:stop() end end)

  it("connects, and the client works", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, dial_timeout = 3 })
    assert(cli:put("client/a", "1"))
    assert.equal("1", assert(cli:get("client/a")).kvs[1].value)
    cli:close()
  end)

  it("pollfd is the client's eventfd, for event loops", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints })
    local fd = cli:pollfd()
    assert.is_true(helpers.is_integer(fd) and fd > 2)
    local p = io.popen(("readlink /proc/%d/fd/%d"):format(ts.getpid(), fd))
    local target = p:read("*a")
    p:close()
    assert.equal("anon_inode:[eventfd]", target:gsub("%s+$", ""))
    cli:close()
  end)

  it("accepts http:// endpoints and a trailing slash", function()
    local cli = assert(etcd.new { endpoints = { "http://" .. srv.endpoint .. "/" } })
    assert.same({ srv.endpoint }, cli:endpoints())
    assert(cli:get("client/a"))
    cli:close()
  end)

  it("uses a live member when the first endpoint is dead", function()
    local dead = "127.0.0.1:" .. ts.free_port()
    local cli = assert(etcd.new { endpoints = { dead, srv.endpoint }, dial_timeout = 3 })
    for _ = 1, 3 do assert(cli:put("client/b", "x")) end
    cli:close()
  end)

  it("fails with UNAVAILABLE within dial_timeout when nothing listens", function()
    local t0 = core.now()
    local cli, msg, code = etcd.new { endpoints = { "127.0.0.1:" .. ts.free_port() }, dial_timeout = 0.5 }
    local took = core.now() - t0
    assert.is_nil(cli)
    assert.equal("UNAVAILABLE", code)
    assert.matches("no endpoint reachable within 0.5s", msg)
    assert.is_true(took >= 0.45 and took < 2, "took " .. took)
  end)

  it("fails within dial_timeout against a server that accepts TCP and never answers", function()
    local fd, port = ts.listen()
    local t0 = core.now()
    local cli, _, code = etcd.new { endpoints = { "127.0.0.1:" .. port }, dial_timeout = 0.5 }
    assert.is_nil(cli)
    assert.equal("UNAVAILABLE", code)
    assert.is_true(core.now() - t0 < 2)
    ts.close(fd)
  end)

  it("with dial_timeout = 0 returns at once, and calls end by their deadline", function()
    local fd, port = ts.listen()
    local cli = assert(etcd.new { endpoints = { "127.0.0.1:" .. port }, dial_timeout = 0, timeout = 0.5 })
    local t0 = core.now()
    local res, msg, code = cli:get("x")
    assert.is_nil(res)
    assert.equal("timeout", code)
    assert.matches("deadline", msg)
    assert.is_true(core.now() - t0 < 2)
    -- a per-call timeout overrides the client's
    t0 = core.now()
    res, msg, code = cli:put("x", "1", { timeout = 0.2 })
    assert.is_nil(res)
    assert.equal("timeout", code)
    assert.matches("deadline", msg)
    assert.is_true(core.now() - t0 < 1)
    cli:close()
    ts.close(fd)
  end)

  describe("misuse raises, naming the argument or option", function()
    it("needs an options table", function()
      assert.has_error(function() etcd.new("127.0.0.1:2379") end,
        "etcd.new: bad argument #1 (options table expected, got string)")
    end)
    it("rejects unknown options", function()
      assert.has_error(function() etcd.new { endpoint = { srv.endpoint } } end,
        "etcd.new: unknown option 'endpoint'")
    end)
    it("rejects wrong types", function()
      assert.has_error(function() etcd.new { endpoints = { srv.endpoint }, dial_timeout = "3" } end,
        "etcd.new: option 'dial_timeout': non-negative number of seconds expected, got string")
      assert.has_error(function() etcd.new { endpoints = { srv.endpoint }, timeout = -1 } end,
        "etcd.new: option 'timeout': non-negative number of seconds expected, got -1")
      assert.error_matches(function() etcd.new { endpoints = { srv.endpoint }, timeout = 0 / 0 } end,
        "etcd.new: option 'timeout': non%-negative number of seconds expected, got %-?nan")
      assert.has_error(function() etcd.new { endpoints = { srv.endpoint }, namespace = 1 } end,
        "etcd.new: option 'namespace': string expected, got integer")
      assert.has_error(function() etcd.new { endpoints = { srv.endpoint }, max_send_size = -5 } end,
        "etcd.new: option 'max_send_size': size in bytes (0 to 2^31-1) expected, got -5")
    end)
    it("rejects bad endpoints", function()
      assert.has_error(function() etcd.new { endpoints = {} } end,
        "etcd.new: option 'endpoints' must list at least one endpoint")
      assert.has_error(function() etcd.new { endpoints = { 2379 } } end,
        "etcd.new: endpoints[1]: string expected, got number")
      assert.has_error(function() etcd.new { endpoints = { "localhost" } } end,
        'etcd.new: endpoints[1]: "host:port" expected, got "localhost"')
      assert.has_error(function() etcd.new { endpoints = { "ftp://h:1" } } end,
        'etcd.new: endpoints[1]: unsupported scheme in "ftp://h:1"')
    end)
    it("auto_sync_interval takes seconds", function()
      assert.has_error(function() etcd.new { endpoints = { srv.endpoint }, auto_sync_interval = "30" } end)
      local c = assert(etcd.new { endpoints = { srv.endpoint }, auto_sync_interval = 30 })
      c:close()
    end)

    it("TLS against a plaintext port says it is a TLS problem", function()
      local _, msg, code = etcd.new { endpoints = { "https://" .. srv.endpoint }, dial_timeout = 1 }
      assert.equal("UNAVAILABLE", code)
      assert.matches("closed the TLS connection", msg)
    end)
    it("reports the error at the caller's line", function()
      local ok, err = pcall(function() etcd.new { endpointz = {} } end)
      assert.is_false(ok)
      assert.matches("01%-client_spec%.lua:%d+: etcd.new: unknown option", err)
    end)
  end)
end)

describe("gRPC's own log lines", function()
  -- one failing etcd.new in a fresh child Lua (helpers.run_lua)
  local script = [[local etcd = require "etcd"
assert(not etcd.new { endpoints = { "127.0.0.1:1" }, dial_timeout = 0.3 })]]

  local function stderr_of(env)
    local status, _, err = helpers.run_lua(script, { env = env })
    return status == 0, err
  end

  it("stay off stderr, even at gRPC's debug verbosity", function()
    local ok, err = stderr_of("GRPC_VERBOSITY=debug GRPC_TRACE=all")
    assert.is_true(ok)
    assert.equal("", err)
  end)

  it("reach stderr when LUA_ETCD_GRPC_LOG asks for them", function()
    local ok, err = stderr_of("LUA_ETCD_GRPC_LOG=1 GRPC_VERBOSITY=debug")
    assert.is_true(ok)
    assert.matches("^grpc ", err)
  end)
end)

describe("a closed client", function()
  local srv
  setup(function() srv = helpers.start_etcd() end)
  teardown(function() if srv then srv:stop() end end)

  it("returns nil, msg, 'closed' from every call; close is idempotent", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints })
    cli:close()
    cli:close()
    for _, f in ipairs {
      function() return cli:get("a") end,
      function() return cli:put("a", "1") end,
      function() return cli:delete("a") end,
      function() return cli:compact(1) end,
      function() return cli:txn { success = { etcd.op.put("a", "1") } } end,
      function() return cli:exec(etcd.op.get("a")) end,
      function() return cli:batch { etcd.op.get("a") } end,
    } do
      local res, msg, code = f()
      assert.is_nil(res)
      assert.equal("etcd: client is closed", msg)
      assert.equal("closed", code)
    end
    assert.matches("closed", tostring(cli))
  end)

  it("ends a call in flight with 'closed' instead of waiting for it", function()
    local fd, port = ts.listen()
    local cli = assert(etcd.new { endpoints = { "127.0.0.1:" .. port }, dial_timeout = 0 })
    local h = assert(cli._core:_unary("KV.Range", { key = "a" }, 60))
    assert.is_false(h:done())
    local t0 = core.now()
    cli:close()
    assert.is_true(h:done())
    local res, msg, code = h:result()
    assert.is_nil(res)
    assert.equal("closed", code)
    assert.equal("etcd: client is closed", msg)
    assert.is_true(core.now() - t0 < 2)
    ts.close(fd)
  end)

  it("is closed by a <close> variable", function()
    -- Lua 5.4 source, compiled here: this file loads on Luas without <close>
    local block = helpers.load54([[
      local etcd, srv, assert = ...
      local kept
      do
        local cli <close> = assert(etcd.new { endpoints = srv.endpoints })
        kept = cli
        assert(cli:put("close/a", "1"))
      end
      return kept
    ]], "=spec/01-client_spec.lua (a <close> block)")
    if not block then return pending("to-be-closed variables are Lua 5.4's") end
    local kept = block(etcd, srv, assert)
    local _, _, code = kept:get("close/a")
    assert.equal("closed", code)
  end)

  it("completes a call on the thread that waits for it, not through the pump thread #novalgrind", function()
    -- A call the thread blocks on is driven by the waiting thread itself
    -- (gRPC's completion queue runs there): the pump thread is not woken
    -- once per call, as it is with LUA_ETCD_PUMP_ONLY=1 (then this fails: a
    -- switch or more per call). Under valgrind one thread runs at a time:
    -- not there.
    local cli = assert(etcd.new { endpoints = srv.endpoints })
    assert(cli:put("drive/k", "v"))
    local N = 600
    local before = ts.switches_named("lua-etcd-pump")
    for _ = 1, N do assert(cli:get("drive/k")) end
    local switches = ts.switches_named("lua-etcd-pump") - before
    cli:close()
    assert.is_true(switches < N / 4, ("%d pump switches for %d calls"):format(switches, N))
    print(("  %d pump switches for %d calls"):format(switches, N))
  end)

  it("releases its pump thread when collected without close", function()
    collectgarbage()
    collectgarbage()
    local before = ts.threads_named("lua-etcd-pump")
    local clients = {}
    for i = 1, 20 do
      clients[i] = assert(etcd.new { endpoints = srv.endpoints })
      assert(clients[i]:get("a"))
    end
    assert.equal(before + 20, ts.threads_named("lua-etcd-pump"))
    clients = nil -- luacheck: ignore 311 (dropped for the collector)
    collectgarbage()
    collectgarbage()
    assert.equal(before, ts.threads_named("lua-etcd-pump"))
  end)
end)

describe("after fork()", function()
  local srv
  setup(function() srv = helpers.start_etcd() end)
  teardown(function() if srv then srv:stop() end end)

  it("a parent's client returns 'forked' in the child and keeps working in the parent", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints })
    assert(cli:put("fork/a", "parent"))
    io.stdout:flush()
    local pid = ts.fork()
    if pid == 0 then
      local res, msg, code = cli:get("fork/a")
      local c2, _, code2 = etcd.new { endpoints = srv.endpoints }
      local ok = res == nil and code == "forked" and msg:find("fork", 1, true) and c2 == nil and code2 == "forked"
      cli:close()
      ts.exit(ok and 0 or 1)
    end
    assert.equal(0, ts.wait(pid))
    assert.equal("parent", assert(cli:get("fork/a")).kvs[1].value)
    cli:close()
  end)
end)
