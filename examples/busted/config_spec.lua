-- examples/busted/config_spec.lua: a busted spec of your own code against a
-- throw-away etcd (README "Testing your code against etcd"). Run it with
--
--   busted examples/busted/config_spec.lua
--
-- testing.fixture starts etcd on a free loopback port, with its data on
-- /dev/shm, before the tests of the describe block, and stops it after them,
-- also when a test fails; if busted itself dies, etcd goes with it.
local etcd = require "etcd"
local testing = require "etcd.testing"

-- The code under test: an application's settings, one key each under a prefix.
local config = {}

function config.save(cli, prefix, settings)
  local ops = {}
  for name, value in pairs(settings) do ops[#ops + 1] = etcd.op.put(prefix .. name, value) end
  return cli:batch(ops, { atomic = true })
end

-- The settings and the revision they were read at.
function config.load(cli, prefix)
  local res, err, code = cli:get(prefix, { prefix = true })
  if not res then return nil, err, code end
  local settings = {}
  for _, kv in ipairs(res.kvs) do settings[kv.key:sub(#prefix + 1)] = kv.value end
  return settings, res.header.revision
end

describe("config in etcd", function()
  local srv, cli
  testing.fixture(function(s, c) srv, cli = s, c end)

  it("reads back what it saved", function()
    assert(config.save(cli, "app/", { port = "8080", mode = "live" }))
    assert.same({ port = "8080", mode = "live" }, (config.load(cli, "app/")))
  end)

  it("sees a change another client makes", function()
    local _, rev = assert(config.load(cli, "app/"))
    local w = assert(cli:watch("app/", { prefix = true, start_revision = rev + 1 }))
    local other = assert(etcd.new { endpoints = srv.endpoints })
    assert(other:put("app/mode", "maintenance"))
    other:close()
    local resp = assert(w:next(5))
    w:close()
    assert.equal("PUT", resp.events[1].type)
    assert.equal("app/mode", resp.events[1].kv.key)
    assert.equal("maintenance", resp.events[1].kv.value)
    assert.equal("maintenance", config.load(cli, "app/").mode)
  end)
end)
