-- etcd.testing (lua/etcd/testing.lua), the module users' own specs start
-- etcd with: the README's busted example (examples/busted/config_spec.lua)
-- passes in a busted of its own and leaves no etcd behind; so does a spec
-- that fails, and a Lua killed with SIGKILL; a three-member cluster serves a
-- put on one member to a client of another.
local helpers = require "helpers"
local testing = require "etcd.testing"
local etcd = require "etcd"

local q = testing.shell_quote
local EXAMPLE = "examples/busted/config_spec.lua"

local function exists(path)
  return os.rename(path, path) ~= nil
end

local function sh(cmd)
  local out, ok, how, code = testing.popen(cmd .. " 2>&1").finish()
  return ok, out, how == "signal" and 128 + code or code
end

local CWD = assert(testing.popen("pwd").finish():match("^(.-)%s*$"))

-- This checkout's part of a module path (its relative entries, such as
-- lua/?.lua and build/?.so, made absolute), for a child that runs in another
-- directory, without spec/ (users' specs have no spec/helpers.lua); then the
-- child's Lua's own default path (the first busted may run on another Lua).
local function absolute(path)
  local t = {}
  for e in path:gmatch("[^;]+") do
    if e:sub(1, 1) ~= "/" and e:sub(1, 2) ~= "./" and not e:find("spec/?.lua", 1, true) then
      t[#t + 1] = CWD .. "/" .. e
    end
  end
  return table.concat(t, ";") .. ";;"
end

-- The directory of every etcd started by a child that runs with
-- `env_for(dir)`: an `etcd` there (named etcd, as the module expects) notes
-- its pid and arguments in dir/launched, then execs the real one.
local function env_for(dir)
  local real = os.getenv("LUA_ETCD_SPEC_ETCD") or "etcd"
  os.execute("mkdir -p " .. q(dir .. "/bin"))
  testing.write_file(dir .. "/bin/etcd", ("#!/bin/sh\necho \"$$ $*\" >>%s\nexec %s \"$@\"\n"):format(
    q(dir .. "/launched"), q(real)))
  os.execute("chmod +x " .. q(dir .. "/bin/etcd"))
  return ("%sLUA_ETCD_SPEC_ETCD=%s LUA_PATH=%s LUA_CPATH=%s"):format(helpers.child_env,
    q(dir .. "/bin/etcd"), q(absolute(package.path)), q(absolute(package.cpath)))
end

-- A live process with `needle` in its command line, or nil.
local function process_with(needle)
  local ok, out = sh("ls /proc")
  assert(ok, out)
  for pid in out:gmatch("%d+") do
    local cmd = testing.read_file("/proc/" .. pid .. "/cmdline")
    if cmd and cmd:find(needle, 1, true) and testing.proc_running(tonumber(pid)) then return tonumber(pid) end
  end
end

-- What the etcds noted in dir/launched left behind: a list of messages
-- (empty: nothing), and how many were launched.
local function leftovers(dir)
  local found, n = {}, 0
  for line in (testing.read_file(dir .. "/launched") or ""):gmatch("[^\n]+") do
    n = n + 1
    local pid = tonumber(line:match("^(%d+)"))
    local data = assert(line:match("%-%-data%-dir (%S+)"), line)
    local sdir = assert(data:match("^(.*)/data$"), data)
    if testing.proc_running(pid, "etcd") then found[#found + 1] = "etcd " .. pid .. " still runs" end
    local other = process_with(data)
    if other then found[#found + 1] = "process " .. other .. " runs with " .. data end
    if exists(sdir) then found[#found + 1] = sdir .. " is still there" end
  end
  return found, n
end

local function no_leftovers(dir, seconds)
  local left
  helpers.eventually(seconds * helpers.slowdown, function()
    left = leftovers(dir)
    return #left == 0
  end, 0.2)
  return left
end

-- busted on `file` in directory `dir`, under this process's Lua and with
-- this checkout's modules: ok, output, exit status.
local function busted(dir, file)
  return sh(("cd %s && %s timeout -s KILL %d busted --lua=%s %s"):format(q(dir), env_for(dir),
    math.ceil(120 * helpers.slowdown), helpers.lua, q(file)))
end

describe("etcd.testing", function()
  it("is what spec/helpers.lua uses, and helpers' settings reach it", function()
    assert.equal(testing.start_etcd, testing.start)
    assert.equal(testing.etcd_fixture, testing.fixture)
    for _, name in ipairs { "start_etcd", "start_cluster", "etcd_fixture", "etcdctl", "make_certs", "tmpdir",
                            "stop_all", "pick_ports", "proc_running", "sleep", "now", "popen", "execute" } do
      assert.is_function(testing[name], name)
      assert.equal(testing[name], helpers[name], name)
    end
    assert.equal(testing.lua_pid, helpers.lua_pid)
    local grace = testing.stop_grace
    helpers.stop_grace = grace + 1
    assert.equal(grace + 1, testing.stop_grace)
    helpers.stop_grace = grace
    assert.equal(grace, testing.stop_grace)
    assert.is_nil(rawget(helpers, "stop_grace"))
  end)

  it("README's busted example is examples/busted/config_spec.lua, word for word", function()
    local readme = assert(testing.read_file("README.md"))
    local section = assert(readme:match("\n## Testing your code against etcd\n(.-)\n## "),
      "README has no section \"Testing your code against etcd\"")
    local file = assert(testing.read_file(EXAMPLE))
    local block
    for b in section:gmatch("\n```lua\n(.-\n)```\n") do
      if b:find("-- " .. EXAMPLE .. ":", 1, true) == 1 then block = b end
    end
    assert(block, "the section has no ```lua block that starts with \"-- " .. EXAMPLE .. ":\"")
    assert.equal(file, block)
  end)

  it("runs the busted example, which passes and leaves no etcd behind", function()
    local dir = helpers.tmpdir()
    local ok, out = busted(dir, CWD .. "/" .. EXAMPLE)
    assert.is_true(ok, out)
    assert.matches("2 successes / 0 failures / 0 errors", out, 1, true)
    local left, n = leftovers(dir)
    assert.equal(1, n)
    assert.same({}, left)
  end)

  it("stops the etcd of a spec that fails, and of a test that raised with its own etcd running", function()
    local dir = helpers.tmpdir()
    testing.write_file(dir .. "/failing_spec.lua", [[
local testing = require "etcd.testing"
describe("a spec that fails", function()
  local cli
  testing.fixture(function(_, c) cli = c end)
  it("fails an assertion while etcd runs", function()
    assert(cli:put("k", "v"))
    assert.equal("not v", (cli:get_value("k")))
  end)
  it("raises with an etcd of its own still running", function()
    testing.start()
    error("boom")
  end)
end)
]])
    local ok, out, status = busted(dir, "failing_spec.lua")
    assert.is_not_true(ok, out)
    assert.is_true(status > 0 and status < 128, out)
    assert.matches("0 successes / 1 failure / 1 error", out, 1, true)
    local _, n = leftovers(dir)
    assert.equal(2, n)
    assert.same({}, no_leftovers(dir, 10))
  end)

  it("leaves no etcd behind when its Lua is killed with SIGKILL (the guardian)", function()
    local status, out, err = helpers.run_lua([[
local testing = require "etcd.testing"
local srv = testing.start()
local dir = testing.tmpdir()
io.stdout:write(srv.pid, " ", srv.dir, " ", dir, "\n")
io.stdout:flush()
os.execute("kill -KILL " .. testing.lua_pid)
io.stdout:write("still alive\n")
]])
    assert.equal(128 + 9, status, out .. err)
    local pid, sdir, tdir = out:match("^(%d+) (%S+) (%S+)\n$")
    assert(pid, out .. err)
    assert.matches("^/dev/shm/lua%-etcd%-spec%.", sdir)
    local gone = helpers.eventually(10 * helpers.slowdown, function()
      return not testing.proc_running(tonumber(pid)) and not exists(sdir) and not exists(tdir)
    end, 0.2)
    assert.is_true(gone, "etcd " .. pid .. " or its dir outlived the killed Lua")
  end)

  local cluster_left = {}
  describe("with a three-member cluster", function()
    local c, cli
    testing.fixture(function(s, x) c, cli = s, x end, { cluster = 3 })

    it("serves a put on one member to a client of another", function()
      assert.equal(3, #c.members)
      assert.same({ c.members[1].endpoint, c.members[2].endpoint, c.members[3].endpoint }, c.endpoints)
      local one = helpers.defer(assert(etcd.new { endpoints = { c.members[1].endpoint } }))
      local three = helpers.defer(assert(etcd.new { endpoints = { c.members[3].endpoint } }))
      assert(one:put("testing/k", "on one"))
      assert.equal("on one", (three:get_value("testing/k")))
      assert.equal("on one", (cli:get_value("testing/k")))
      local leader = c:wait_leader(10)
      assert.is_true(leader >= 1 and leader <= 3)
      for i, m in ipairs(c.members) do
        assert.is_true(m:is_running())
        cluster_left[i] = { pid = m.pid, dir = m.dir }
      end
    end)
  end)

  it("stopped that cluster's members and removed their dirs after its describe block", function()
    assert.equal(3, #cluster_left)
    for _, m in ipairs(cluster_left) do
      assert.is_false(testing.proc_running(m.pid), "etcd " .. m.pid)
      assert.is_false(exists(m.dir), m.dir)
    end
  end)
end)
