-- A real three-member cluster: one channel per endpoint, and calls carry on
-- on a live member when the one in use dies.
local helpers = require "helpers"
local etcd = require "etcd"

describe("a three-member cluster", function()
  local cluster, cli
  setup(function()
    cluster = helpers.start_cluster(3)
    cli = assert(etcd.new { endpoints = cluster.endpoints, dial_timeout = 5, timeout = 5 })
  end)
  teardown(function()
    if cli then cli:close() end
    if cluster then cluster:stop() end
  end)

  it("writes through one member are read on every member", function()
    local p = assert(cli:put("cl/a", "1"))
    for i = 1, 3 do
      local one = assert(etcd.new { endpoints = { cluster.members[i].endpoint } })
      local res = assert(one:get("cl/a", { revision = p.header.revision }))
      assert.equal("1", res.kvs[1].value)
      one:close()
    end
  end)

  it("has one channel per endpoint", function()
    assert.same(cluster.endpoints, cli:endpoints())
    assert.equal(3, #cli:endpoints())
  end)

  it("keeps working when the member in use is killed, and after it returns", function()
    assert(cli:put("cl/b", "before"))
    -- The client starts on the first endpoint; kill that member.
    cluster.members[1]:kill()
    local ok = false
    for _ = 1, 20 do
      local res = cli:put("cl/b", "during")
      if res then ok = true break end
      helpers.sleep(0.25)
    end
    assert.is_true(ok, "no write succeeded on the surviving members")
    assert.equal("during", assert(cli:get("cl/b")).kvs[1].value)
    cluster.members[1]:restart()
    local one = assert(etcd.new { endpoints = { cluster.members[1].endpoint }, dial_timeout = 10 })
    local res = assert(one:get("cl/b"))
    assert.equal("during", res.kvs[1].value)
    one:close()
  end)

  it("a keep-alive survives the loss of each member in turn #novalgrind", function()
    local l = assert(cli:grant(3))
    assert(cli:put("cl/ka", "x", { lease = l.id }))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    for i = 1, 3 do
      cluster.members[i]:kill()
      cluster:wait_leader(10)
      helpers.sleep(4) -- longer than the TTL
      local res
      for _ = 1, 20 do -- the first read after a leader loss may time out
        res = cli:get("cl/ka", { timeout = 2 })
        if res then break end
      end
      assert.equal(1, assert(res).count, "lease lost with member " .. i .. " down")
      assert.is_true(select(1, ka:next(5)) ~= nil)
      cluster.members[i]:restart()
    end
    ka:close()
  end)

  it("a client of a dead member alone times out by its deadline", function()
    cluster.members[2]:kill()
    local one = assert(etcd.new { endpoints = { cluster.members[2].endpoint }, dial_timeout = 0, timeout = 0.5 })
    local res, _, code = one:get("cl/a")
    assert.is_nil(res)
    assert.equal("timeout", code)
    one:close()
    cluster.members[2]:restart()
  end)
end)
