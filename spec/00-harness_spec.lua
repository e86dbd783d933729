-- The test harness itself (spec/helpers.lua), checked with etcdctl only.
local helpers = require "helpers"

local function exists(path)
  return os.rename(path, path) ~= nil
end

-- pids of live etcd processes whose command line contains `needle`
local function etcd_pids_with(needle)
  local pids = {}
  local p = io.popen("ls /proc")
  for pid in p:read("*a"):gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/cmdline", "rb")
    if f then
      local cmd = f:read("*a") or ""
      f:close()
      if cmd:find("etcd", 1, true) and cmd:find(needle, 1, true)
         and helpers.proc_running(tonumber(pid), "etcd") then
        pids[#pids + 1] = tonumber(pid)
      end
    end
  end
  p:close()
  return pids
end

local function get_value(target, key)
  local ok, out, err = helpers.etcdctl(target, "get", "--print-value-only", key)
  assert(ok, err)
  return (out:gsub("\n$", ""))
end

describe("harness: single member", function()
  local srv

  setup(function() srv = helpers.start_etcd() end)
  teardown(function() if srv then srv:stop() end end)

  it("describes itself", function()
    assert.matches("^127%.0%.0%.1:%d+$", srv.endpoint)
    assert.same({ srv.endpoint }, srv.endpoints)
    assert.equal("http://" .. srv.endpoint, srv.client_url)
    assert.matches("^http://127%.0%.0%.1:%d+$", srv.peer_url)
    assert.is_true(srv:is_running())
    assert.is_true(exists(srv.data_dir .. "/member"))
    assert.matches("^/dev/shm/lua%-etcd%-spec%.", srv.data_dir)
    assert.matches("etcd", srv:log_tail(200))
  end)

  it("serves etcdctl put/get", function()
    assert.is_true((helpers.etcdctl(srv, "put", "harness/k", "v1")))
    assert.equal("v1", get_value(srv, "harness/k"))
    -- value on stdin, with bytes a shell would mangle
    local v = "it's $HOME `x` \"q\" \\ *"
    assert.is_true((helpers.etcdctl(srv, { stdin = v }, "put", "harness/s")))
    assert.equal(v, get_value(srv, "harness/s"))
    local ok, _, err = helpers.etcdctl(srv, "no-such-command")
    assert.is_false(ok)
    assert.is_string(err)
  end)

  it("keeps its data across kill + restart and stop{keep_data} + restart", function()
    local port = srv.endpoint
    srv:kill()
    assert.is_false(srv:is_running())
    assert.is_true(exists(srv.data_dir))
    srv:restart()
    assert.equal(port, srv.endpoint)
    assert.equal("v1", get_value(srv, "harness/k"))

    srv:stop { keep_data = true }
    assert.is_false(srv:is_running())
    assert.is_true(exists(srv.data_dir))
    srv:restart()
    assert.equal("v1", get_value(srv, "harness/k"))
    assert.is_true((helpers.etcdctl(srv, "put", "harness/k", "v2")))
    -- restart of a running member: graceful stop, start again
    srv:restart()
    assert.equal("v2", get_value(srv, "harness/k"))
  end)

  it("stop removes the data dir and the process, and is idempotent", function()
    local pid, dir = srv.pid, srv.dir
    srv:stop()
    assert.is_false(helpers.proc_running(pid))
    assert.is_false(exists(dir))
    srv:stop()
    assert.is_false(exists(dir))
    srv = nil
  end)
end)

describe("harness: ports", function()
  local a, b

  teardown(function()
    if a then a:stop() end
    if b then b:stop() end
  end)

  it("gives two servers different ports", function()
    a = helpers.start_etcd()
    b = helpers.start_etcd()
    local pa = { a.client_port, a.peer_port }
    assert.is_not.equal(a.endpoint, b.endpoint)
    for _, p in ipairs({ b.client_port, b.peer_port }) do
      assert.is_not.equal(pa[1], p)
      assert.is_not.equal(pa[2], p)
    end
    assert.is_true((helpers.etcdctl(a, "put", "only/a", "1")))
    assert.equal("", get_value(b, "only/a"))
  end)

  it("retries with new ports when a port is taken", function()
    -- hand the next start a's busy client port: etcd cannot bind it, and
    -- although a answers health checks on it, the harness must notice that
    -- the port is not its own server's and start over on new ports
    local orig = helpers.pick_ports
    local calls = 0
    helpers.pick_ports = function(n)
      calls = calls + 1
      local ports = orig(n)
      if calls == 1 then ports[1] = a.client_port end
      return ports
    end
    local c
    local ok, err = pcall(function() c = helpers.start_etcd() end)
    helpers.pick_ports = orig
    assert(ok, err)
    assert.equal(2, calls)
    assert.is_not.equal(a.client_port, c.client_port)
    assert.is_true((helpers.etcdctl(c, "put", "only/c", "1")))
    assert.equal("", get_value(a, "only/c"))
    c:stop()
  end)

  it("raises with the log tail when etcd cannot start, leaving nothing behind", function()
    -- tokens carry this Lua's pid: other test runs may share the machine
    local ours = "lua-etcd-spec-" .. helpers.lua_pid .. "-"
    local before = #etcd_pids_with(ours)
    local shm = io.popen("ls /dev/shm"):read("*a")
    local ok, err = pcall(helpers.start_etcd, { args = { "--no-such-flag" } })
    assert.is_false(ok)
    assert.matches("no%-such%-flag", tostring(err))
    assert.matches("log tail", tostring(err))
    assert.equal(before, #etcd_pids_with(ours))
    -- the failed start's dir is gone (names are random, so compare ours only)
    for d in io.popen("ls /dev/shm"):read("*a"):gmatch("lua%-etcd%-spec%.%w+") do
      if not shm:find(d, 1, true) then
        local f = io.open("/dev/shm/" .. d .. "/etcd.log")
        local log = f and f:read("*a") or ""
        if f then f:close() end
        assert.is_nil(log:find(ours, 1, true), "left behind: " .. d)
      end
    end
  end)
end)

describe("harness: 3-member cluster", function()
  local c

  setup(function() c = helpers.start_cluster(3) end)
  teardown(function() if c then c:stop() end end)

  it("forms one cluster of 3", function()
    assert.equal(3, #c.members)
    assert.equal(3, #c.endpoints)
    local ok, out = helpers.etcdctl(c.members[2], "member", "list")
    assert.is_true(ok)
    local n = 0
    for _ in out:gmatch("started") do n = n + 1 end
    assert.equal(3, n)
    for _, m in ipairs(c.members) do
      assert.matches(m.name, out, 1, true)
      assert.matches(m.peer_url, out, 1, true)
    end
    local leader = c:leader_index()
    assert.is_number(leader)
    assert.is_true(leader >= 1 and leader <= 3)
  end)

  it("replicates a put on member 1 to member 3", function()
    assert.is_true((helpers.etcdctl(c.members[1], "put", "harness/c", "replicated")))
    assert.equal("replicated", get_value(c.members[3], "harness/c"))
    -- serializable read: answered from member 3's own store
    local ok, out = helpers.etcdctl(c.members[3], "get", "--consistency=s",
      "--print-value-only", "harness/c")
    assert.is_true(ok)
    assert.equal("replicated\n", out)
  end)

  it("survives the loss and return of one member", function()
    local victim = c:leader_index()
    c.members[victim]:kill()
    local other = victim % 3 + 1
    -- a write sent before a new leader exists is lost with the old leader
    -- and times out (etcd behaviour): wait for the election first
    local leader = c:wait_leader(10)
    assert.is_not.equal(victim, leader)
    assert.is_true((helpers.etcdctl(c.members[other], "put", "harness/c2", "x")))
    c.members[victim]:restart()
    assert.is_true(c.members[victim]:is_running())
    -- linearizable read through the restarted member
    assert.equal("x", get_value(c.members[victim], "harness/c2"))
    c:wait_healthy(10)
  end)

  it("stops without leaving any etcd process or directory behind", function()
    local token, dirs, pids = c.token, {}, {}
    for i, m in ipairs(c.members) do dirs[i], pids[i] = m.dir, m.pid end
    assert.equal(3, #etcd_pids_with(token))
    c:stop()
    assert.same({}, etcd_pids_with(token))
    for i = 1, 3 do
      assert.is_false(helpers.proc_running(pids[i]))
      assert.is_false(exists(dirs[i]))
    end
    c = nil
  end)
end)

describe("harness: misc", function()
  it("makes temp dirs that stop_all removes", function()
    local d = helpers.tmpdir()
    assert.matches("^/dev/shm/lua%-etcd%-spec%.", d)
    assert.is_true(exists(d))
    helpers.stop_all()
    assert.is_false(exists(d))
  end)

  it("sleeps", function()
    local t = helpers.now()
    helpers.sleep(0.2)
    assert.is_true(helpers.now() - t >= 0.15)
  end)
end)
