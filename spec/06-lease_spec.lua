-- Leases: grant, revoke, time_to_live, leases, keepalive_once, against a real
-- etcd. (The background keep-alive comes with its own spec later.)
local helpers = require "helpers"
local etcd = require "etcd"

describe("leases", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("grant returns an id and the ttl, and a key attached to it lives with it", function()
    local l = assert(cli:grant(60))
    assert.is_true(helpers.is_id(l.id) and l.id ~= etcd.id(0))
    assert.equal(60, l.ttl)
    assert.is_number(l.header.revision)
    assert.is_nil(l.error)
    assert(cli:put("lease/a", "x", { lease = l.id }))
    local ok, out = helpers.etcdctl(srv, "lease", "timetolive", etcd.id_hex(l.id), "--keys")
    assert.is_true(ok)
    assert.matches("lease/a", out)
  end)

  it("grant with a chosen id, and a taken id is refused", function()
    local l = assert(cli:grant(60, { id = 0x1234abcd }))
    assert.equal(etcd.id(0x1234abcd), l.id)
    local res, msg, code = cli:grant(60, { id = 0x1234abcd })
    assert.is_nil(res)
    assert.equal("etcdserver: lease already exists", msg)
    assert.equal("FAILED_PRECONDITION", code)
  end)

  it("the seed's revoke: the key goes with the lease", function()
    local l = assert(cli:grant(60))
    assert(cli:put("lease/r", "x", { lease = l.id }))
    assert(cli:revoke(l.id))
    assert.equal(0, assert(cli:get("lease/r")).count)
    local res, msg, code = cli:revoke(l.id)
    assert.is_nil(res)
    assert.equal("etcdserver: requested lease not found", msg)
    assert.equal("lease_not_found", code)
  end)

  it("a key goes when its lease expires", function()
    local l = assert(cli:grant(1))
    assert(cli:put("lease/e", "x", { lease = l.id }))
    local gone = false
    for _ = 1, 40 do
      if assert(cli:get("lease/e")).count == 0 then gone = true break end
      helpers.sleep(0.25)
    end
    assert.is_true(gone)
    local t = assert(cli:time_to_live(l.id))
    assert.equal(-1, t.ttl)
  end)

  it("time_to_live with and without keys", function()
    local l = assert(cli:grant(30))
    assert(cli:put("lease/t1", "x", { lease = l.id }))
    assert(cli:put("lease/t2", "x", { lease = l.id }))
    local t = assert(cli:time_to_live(l.id, { keys = true }))
    assert.equal(l.id, t.id)
    assert.equal(30, t.granted_ttl)
    assert.is_true(t.ttl > 0 and t.ttl <= 30)
    table.sort(t.keys)
    assert.same({ "lease/t1", "lease/t2" }, t.keys)
    assert.same({}, assert(cli:time_to_live(l.id)).keys)
  end)

  it("time_to_live in a namespace lists the namespace's keys without it", function()
    local ns = assert(etcd.new { endpoints = srv.endpoints, namespace = "app/" })
    local l = assert(ns:grant(30))
    assert(ns:put("k", "x", { lease = l.id }))
    assert(cli:put("other", "x", { lease = l.id }))
    assert.same({ "k" }, assert(ns:time_to_live(l.id, { keys = true })).keys)
    ns:close()
  end)

  it("leases lists the granted leases (the seed's listing with time-to-live)", function()
    local ids = {}
    for _, ttl in ipairs { 5, 10, 15 } do ids[assert(cli:grant(ttl)).id] = ttl end
    local res = assert(cli:leases())
    local found = 0
    for _, l in ipairs(res.leases) do
      if ids[l.id] then
        found = found + 1
        assert.equal(ids[l.id], assert(cli:time_to_live(l.id, { keys = true })).granted_ttl)
      end
    end
    assert.equal(3, found)
  end)

  it("keepalive_once renews a lease", function()
    local l = assert(cli:grant(10))
    helpers.sleep(1.2)
    assert.is_true(assert(cli:time_to_live(l.id)).ttl < 10)
    local r = assert(cli:keepalive_once(l.id))
    assert.equal(l.id, r.id)
    assert.equal(10, r.ttl)
    assert.is_number(r.header.revision)
    assert.is_true(assert(cli:time_to_live(l.id)).ttl >= 9)
    assert.equal(0, cli._core:_nstreams()) -- the stream is gone after the call
  end)

  it("keepalive_once of a lease that does not exist: lease_not_found", function()
    local res, msg, code = cli:keepalive_once(0x7777)
    assert.is_nil(res)
    assert.equal("etcdserver: requested lease not found", msg)
    assert.equal("lease_not_found", code)
  end)

  it("on a closed client, every lease call returns 'closed'", function()
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    c2:close()
    for _, f in ipairs {
      function() return c2:grant(5) end, function() return c2:revoke(1) end,
      function() return c2:time_to_live(1) end, function() return c2:leases() end,
      function() return c2:keepalive_once(1) end,
    } do
      local res, _, code = f()
      assert.is_nil(res)
      assert.equal("closed", code)
    end
  end)

  it("takes ids as integers, decimal or 0x strings on every Lua; etcd.id and etcd.id_hex", function()
    local id = assert(cli:grant(60)).id
    -- results carry ids as this Lua represents them
    assert.equal(etcd.id(id), id)
    if math.type then assert.is_true(helpers.is_integer(id)) else assert.is_string(id) end
    local hex = etcd.id_hex(id)
    assert.matches("^%x+$", hex)
    assert.equal(id, etcd.id("0x" .. hex))
    assert.equal(id, assert(cli:time_to_live("0x" .. hex)).id)
    assert.equal(id, assert(cli:time_to_live(tostring(id))).id)
    assert(cli:put("lease/ids", "v", { lease = "0x" .. hex }))
    assert.equal(id, assert(cli:get("lease/ids")).kvs[1].lease)
    assert.is_true(assert(cli:txn { compare = { etcd.compare.lease("lease/ids", "=", tostring(id)) } }).succeeded)
    local ka = assert(cli:keepalive("0x" .. hex))
    assert.equal(id, assert(ka:next(5)).id)
    ka:close()
    assert(cli:revoke("0x" .. hex))
    assert.equal(-1, assert(cli:time_to_live(id)).ttl)
    -- the canonical forms, exact beyond 2^53
    assert.equal(etcd.id("0x694d8a1b2c3d4e5f"), etcd.id("7587872796500119135"))
    assert.equal("694d8a1b2c3d4e5f", etcd.id_hex("7587872796500119135"))
    assert.equal("-8000000000000000", etcd.id_hex("-9223372036854775808"))
    assert.equal("ffffffffffffffff", etcd.id_hex("18446744073709551615", true))
    assert.equal("-1", etcd.id_hex("18446744073709551615"))
    assert.has_error(function() etcd.id("12x") end,
      "etcd.id: bad argument #1 (v): id (an integer, or a decimal or 0x string) expected, got string")
    assert.has_error(function() etcd.id_hex(1.5) end,
      "etcd.id_hex: bad argument #1 (id): id (an integer, or a decimal or 0x string) expected, got float")
  end)

  it("misuse raises", function()
    assert.has_error(function() cli:grant("5") end, "grant: bad argument #1 (ttl): integer expected, got string")
    assert.has_error(function() cli:grant(5, { ttl = 3 }) end, "grant: unknown option 'ttl'")
    assert.has_error(function() cli:revoke(nil) end, "revoke: bad argument #1 (id): id (an integer, or a decimal or 0x string) expected, got nil")
    assert.has_error(function() cli:time_to_live(1, { key = true }) end, "time_to_live: unknown option 'key'")
    assert.has_error(function() cli:keepalive_once(1.5) end,
      "keepalive_once: bad argument #1 (id): id (an integer, or a decimal or 0x string) expected, got float")
    assert.has_error(function() cli:leases { all = true } end, "leases: unknown option 'all'")
  end)
end)
