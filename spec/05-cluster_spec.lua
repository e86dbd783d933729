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
      local res, msg, code
      for _ = 1, 20 do -- the first read after a leader loss may time out
        res, msg, code = cli:get("cl/ka", { timeout = 2 })
        if res then break end
      end
      assert(res, ("no read with member %d down: %s (%s)"):format(i, tostring(msg), tostring(code)))
      assert.equal(1, res.count, "lease lost with member " .. i .. " down")
      assert.is_true(select(1, ka:next(5)) ~= nil)
      cluster.members[i]:restart()
    end
    ka:close()
  end)

  it("members that came back are used again when the member in use dies", function()
    -- Every member but the one in use goes down and comes back. gRPC leaves a
    -- channel idle once its connection is gone: unless the client asks the
    -- other channels to connect, it stays on the dead member for good.
    local index = {} -- member_id -> index in cluster.members
    for i, m in ipairs(cluster.members) do
      local one = assert(etcd.new { endpoints = { m.endpoint }, dial_timeout = 10 })
      index[assert(one:get("cl/x", { serializable = true })).header.member_id] = i
      one:close()
    end
    local inuse = index[assert(cli:get("cl/x", { serializable = true })).header.member_id]
    assert.is_not_nil(inuse)
    for i, m in ipairs(cluster.members) do
      if i ~= inuse then
        m:kill()
        m:restart()
      end
    end
    assert.equal(inuse, index[assert(cli:get("cl/x", { serializable = true })).header.member_id])
    cluster.members[inuse]:kill()
    local res, msg, code
    for _ = 1, 5 do -- the first call may still wait for the dead member
      res, msg, code = cli:get("cl/x", { timeout = 2 })
      if res then break end
    end
    assert(res, ("no read after the member in use died: %s (%s)"):format(tostring(msg), tostring(code)))
    assert.are_not.equal(inuse, index[res.header.member_id])
    cluster.members[inuse]:restart()
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
