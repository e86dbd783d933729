-- cli:keepalive: a lease renewed by the client's pump thread, with no Lua code
-- running, against a real etcd.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

local function alive(cli, key)
  return assert(cli:get(key)).count == 1
end

-- Wait up to `limit` seconds for f() to be true.
local function eventually(limit, f)
  local t0 = core.now()
  repeat
    if f() then return true end
    helpers.sleep(0.1)
  until core.now() - t0 > limit
  return false
end

describe("keepalive", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("the seed's keep-alive: the first answer carries the TTL", function()
    local l = assert(cli:grant(5))
    assert(cli:put("ka/seed", "bar", { lease = l.id }))
    local ka = helpers.defer(assert(cli:keepalive(l.id)))
    local r = assert(ka:next(5))
    assert.equal(l.id, r.id)
    assert.equal(5, r.ttl)
    assert.is_number(r.header.revision)
    assert.matches("etcd.keepalive", tostring(ka))
  end)

  it("keeps a 2 s lease alive while Lua is busy for 8 s calling nothing #novalgrind", function()
    local l = assert(cli:grant(2))
    assert(cli:put("ka/busy", "x", { lease = l.id }))
    local ka = assert(cli:keepalive(l.id))
    local t0 = core.now()
    local spins = 0
    while core.now() - t0 < 8 do spins = spins + 1 end -- no etcd call, no yield
    assert.is_true(spins > 0)
    assert.is_true(alive(cli, "ka/busy"))
    assert.is_true(assert(cli:time_to_live(l.id)).ttl > 0)
    ka:close()
  end)

  it("after close, renewal stops and the key expires within its TTL", function()
    local l = assert(cli:grant(2))
    assert(cli:put("ka/closed", "x", { lease = l.id }))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    helpers.sleep(2.5)
    assert.is_true(alive(cli, "ka/closed")) -- renewed past its TTL
    ka:close()
    ka:close()
    local res, msg, code = ka:next(0)
    assert.is_nil(res)
    assert.equal("closed", code)
    assert.equal("etcd: keep-alive is closed", msg)
    assert.is_true(eventually(4, function() return not alive(cli, "ka/closed") end))
  end)

  it("reports lease_expired promptly when another client revokes the lease #novalgrind", function()
    local l = assert(cli:grant(3))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    local other = assert(etcd.new { endpoints = srv.endpoints })
    assert(other:revoke(l.id))
    other:close()
    local t0 = core.now()
    local res, msg, code = ka:next(5)
    assert.is_nil(res)
    assert.equal("lease_expired", code)
    assert.matches("expired or was revoked", msg)
    assert.is_true(core.now() - t0 < 2.5, "took " .. (core.now() - t0)) -- within TTL/3 and a margin
    -- and it stays that way; the iterator raises an error object with the code
    local ok, err = pcall(function() for _ in ka:responses() do end end)
    assert.is_false(ok)
    assert.equal("lease_expired", err.code)
    assert.matches("expired", tostring(err))
    ka:close()
  end)

  it("keepalive of a lease that does not exist reports lease_not_found, as keepalive_once and revoke do", function()
    local ka = assert(cli:keepalive(0x5151))
    local res, msg, code = ka:next(5)
    assert.is_nil(res)
    assert.equal("lease_not_found", code)
    assert.equal("etcdserver: requested lease not found", msg)
    local _, msg1, code1 = cli:keepalive_once(0x5151)
    assert.same({ msg, code }, { msg1, code1 })
    local _, msg2, code2 = cli:revoke(0x5151)
    assert.same({ msg, code }, { msg2, code2 })
    -- and it stays that way; the iterator raises the same code
    local ok, err = pcall(function() for _ in ka:responses() do end end)
    assert.is_false(ok)
    assert.equal("lease_not_found", err.code)
    ka:close()
  end)

  it("next(timeout) returns 'timeout' between answers and the object stays usable", function()
    local l = assert(cli:grant(30))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    local res, _, code = ka:next(0.2) -- the next answer is due in 10 s
    assert.is_nil(res)
    assert.equal("timeout", code)
    assert.equal(1, cli._core:_nkeepalives())
    ka:close()
    assert(cli:revoke(l.id))
  end)

  it("responses() iterates, and ends when the object is closed", function()
    local l = assert(cli:grant(3))
    local ka = assert(cli:keepalive(l.id))
    local n = 0
    for r in ka:responses() do
      assert.equal(l.id, r.id)
      n = n + 1
      if n == 2 then ka:close() end
    end
    assert.equal(2, n)
    assert(cli:revoke(l.id))
  end)

  it("keeps 1000 leases alive over one stream #novalgrind", function()
    local kas, ids = {}, {}
    for i = 1, 1000 do
      ids[i] = assert(cli:grant(3)).id
      kas[i] = assert(cli:keepalive(ids[i]))
    end
    assert.equal(1000, cli._core:_nkeepalives())
    assert.equal(1, cli._core:_nstreams())
    helpers.sleep(4.5) -- past the TTL
    for _, i in ipairs { 1, 250, 500, 750, 1000 } do
      assert.is_true(assert(cli:time_to_live(ids[i])).ttl > 0, "lease " .. i)
    end
    for i = 1, 1000 do
      assert(kas[i]:next(5))
      kas[i]:close()
    end
    assert.equal(0, cli._core:_nkeepalives())
    assert.is_true(eventually(3, function() return cli._core:_nstreams() == 0 end))
    for i = 1, 1000 do assert(cli:revoke(ids[i])) end
  end)

  it("an abandoned keep-alive is stopped by the collector", function()
    local l = assert(cli:grant(2))
    assert(cli:put("ka/gc", "x", { lease = l.id }))
    do
      local ka = assert(cli:keepalive(l.id))
      assert(ka:next(5))
    end
    collectgarbage()
    collectgarbage()
    assert.equal(0, cli._core:_nkeepalives())
    assert.is_true(eventually(4, function() return not alive(cli, "ka/gc") end))
  end)

  it("closing the client ends every keep-alive with 'closed'", function()
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    local l = assert(c2:grant(5))
    local ka = assert(c2:keepalive(l.id))
    assert(ka:next(5))
    c2:close()
    local res, _, code = ka:next(1)
    assert.is_nil(res)
    assert.equal("closed", code)
    local ok, err = pcall(function() for _ in ka:responses() do end end)
    assert.is_false(ok)
    assert.equal("closed", err.code)
    local k2, _, code2 = c2:keepalive(l.id)
    assert.is_nil(k2)
    assert.equal("closed", code2)
  end)

  it("misuse raises", function()
    assert.has_error(function() cli:keepalive("1x") end,
      "keepalive: bad argument #1 (id): id (an integer, or a decimal or 0x string) expected, got string")
    assert.has_error(function() cli:keepalive(1, { lease = 1 }) end, "keepalive: unknown option 'lease'")
    assert.has_error(function() cli:keepalive(1, { ttl = -1 }) end)
  end)
end)

describe("keepalive across a member restart", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("the lease survives the member restarting (same data dir)", function()
    local l = assert(cli:grant(6))
    assert(cli:put("ka/restart", "x", { lease = l.id }))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    srv:restart()
    helpers.sleep(7) -- longer than the TTL: only renewals after the restart keep it
    assert.is_true(alive(cli, "ka/restart"))
    local r = assert(ka:next(5))
    assert.equal(6, r.ttl)
    ka:close()
  end)

  it("with the member gone, the lease is reported lost when its TTL runs out", function()
    local l = assert(cli:grant(2))
    local ka = assert(cli:keepalive(l.id))
    assert(ka:next(5))
    srv:kill()
    local t0 = core.now()
    local res, msg, code = ka:next(10)
    assert.is_nil(res)
    assert.equal("lease_expired", code)
    assert.matches("no answer from etcd before its TTL ran out", msg)
    assert.is_true(core.now() - t0 < 4)
    srv:restart()
  end)
end)
