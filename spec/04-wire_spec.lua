-- The table <-> message conversion on its own: what arrives from the wire is
-- untrusted, so hostile bytes must give an error, never a crash. (Everything
-- that talks to etcd is in the other specs, against a real server.)
local core = require "etcd.core"
local etcd = require "etcd"
local helpers = require "helpers"

local function varint(n)
  local out = {}
  repeat
    local b = n % 128
    n = math.floor(n / 128)
    out[#out + 1] = string.char(n > 0 and b + 128 or b)
  until n == 0
  return table.concat(out)
end

local function field(num, payload) -- a length-delimited field
  return string.char(num * 8 + 2) .. varint(#payload) .. payload
end

-- A TxnResponse whose responses nest `depth` transactions deep.
local function nested_txn_response(depth)
  local inner = ""
  for _ = 1, depth do
    inner = field(3, field(4, inner)) -- TxnResponse.responses -> ResponseOp.response_txn
  end
  return inner
end

describe("decoding responses", function()
  it("round-trips a message, with snake_case names and every default", function()
    local bytes = core._pack("RangeResponse", {
      header = { revision = 7, cluster_id = -1, member_id = 3, raft_term = 2 },
      kvs = { { key = "a\0\255", value = "", mod_revision = 7, create_revision = 5, version = 2 } },
      count = 1,
    })
    local r = assert(core._unpack("RangeResponse", bytes))
    assert.equal(7, r.header.revision)
    -- a uint64 above 2^63: negative and exact on 5.3+, an unsigned decimal on 5.1/LuaJIT
    assert.equal(etcd.id("0xffffffffffffffff"), r.header.cluster_id)
    assert.equal("a\0\255", r.kvs[1].key)
    assert.equal("", r.kvs[1].value)
    assert.equal(etcd.id(0), r.kvs[1].lease)
    assert.equal(false, r.more)
    assert.equal(1, r.count)
  end)

  it("maps etcd's field names to snake_case", function()
    local r = assert(core._unpack("LeaseTimeToLiveResponse",
      core._pack("LeaseTimeToLiveResponse", { ID = 5, TTL = 3, grantedTTL = 10, keys = { "k" } })))
    assert.same({ id = etcd.id(5), ttl = 3, granted_ttl = 10, keys = { "k" } }, r)
    local m = assert(core._unpack("MemberListResponse",
      core._pack("MemberListResponse", { members = { { ID = 1, name = "n", peerURLs = { "http://x" }, isLearner = true } } })))
    assert.same({ id = etcd.id(1), name = "n", peer_urls = { "http://x" }, client_urls = {}, is_learner = true },
      m.members[1])
  end)

  it("gives enum values by name", function()
    local r = assert(core._unpack("AuthRoleGetResponse",
      core._pack("AuthRoleGetResponse", { perm = { { permType = "READWRITE", key = "a" } } })))
    assert.equal("READWRITE", r.perm[1].perm_type)
  end)

  it("decodes nested transactions within the depth limit", function()
    local r = assert(core._unpack("TxnResponse", nested_txn_response(30)))
    local d = 0
    while r.responses[1] do
      r = r.responses[1].response_txn
      d = d + 1
    end
    assert.equal(30, d)
  end)

  it("refuses a response nested deeper than the limit instead of crashing", function()
    local res, msg = core._unpack("TxnResponse", nested_txn_response(65))
    assert.is_nil(res)
    assert.matches("nested deeper than 64 levels", msg)
  end)

  it("refuses a few MB of nesting (protobuf-c alone would overflow the stack)", function()
    -- Headers only, outermost first: level i wraps everything inside it.
    -- (Under valgrind a tenth as deep: building it is all Lua, 300 s there;
    -- the C side's walk is what memcheck is for.)
    local depth = helpers.under_valgrind and 40000 or 400000
    local function vlen(n) -- bytes of n as a varint
      local k = 1
      while n >= 128 do n, k = math.floor(n / 128), k + 1 end
      return k
    end
    local char, floor = string.char, math.floor
    local function vint(n) -- varint(n), without a table: n < 2^28 here
      if n < 128 then return char(n) end
      if n < 16384 then return char(n % 128 + 128, floor(n / 128)) end
      if n < 2097152 then return char(n % 128 + 128, floor(n / 128) % 128 + 128, floor(n / 16384)) end
      return char(n % 128 + 128, floor(n / 128) % 128 + 128, floor(n / 16384) % 128 + 128, floor(n / 2097152))
    end
    local lens, ops, len = {}, {}, 0
    for i = 1, depth do
      local op = 1 + vlen(len) + len -- ResponseOp{ response_txn = <len> }
      len = 1 + vlen(op) + op        -- TxnResponse{ responses = { <op> } }
      lens[i], ops[i] = len, op
    end
    assert(len < 2 ^ 28)
    local parts = {}
    for i = depth, 1, -1 do
      local inner = i > 1 and lens[i - 1] or 0
      parts[#parts + 1] = "\26" .. vint(ops[i]) .. "\34" .. vint(inner)
    end
    local bytes = table.concat(parts)
    assert.equal(lens[depth], #bytes) -- the framing adds up
    assert.equal(varint(ops[depth]), vint(ops[depth]))
    assert.is_true(#bytes > (helpers.under_valgrind and 200 * 1024 or 2 * 1024 * 1024))
    local res, msg = core._unpack("TxnResponse", bytes)
    assert.is_nil(res)
    assert.matches("nested deeper than 64 levels", msg)
  end)

  it("refuses malformed bytes", function()
    for _, bad in ipairs {
      "\255",                     -- truncated varint
      "\10\200",                  -- length runs past the end
      "\10\5ab",                  -- length runs past the end
      "\11",                      -- group start: not used by etcd
      "\15",                      -- wire type 7 does not exist
      string.rep("\255", 11),     -- varint longer than 64 bits
      "\0\1",                     -- field number 0
    } do
      local res, msg = core._unpack("RangeResponse", bad)
      assert.is_nil(res)
      assert.matches("malformed", msg)
    end
  end)

  it("survives random bytes", function()
    math.randomseed(42)
    for _ = 1, 3000 do
      local n = math.random(0, 64)
      local t = {}
      for i = 1, n do t[i] = string.char(math.random(0, 255)) end
      local s = table.concat(t)
      for _, name in ipairs { "RangeResponse", "TxnResponse", "MemberListResponse", "AuthRoleGetResponse" } do
        local res, msg = core._unpack(name, s)
        assert.is_true(type(res) == "table" or type(msg) == "string")
      end
    end
  end)
end)

describe("encoding requests", function()
  it("raises on a field the message does not have", function()
    assert.has_error(function() core._pack("RangeRequest", { key = "a", prefx = true }) end,
      "etcd.core: etcdserverpb.RangeRequest has no field 'prefx'")
  end)

  it("raises on a wrong type, naming the field", function()
    assert.has_error(function() core._pack("RangeRequest", { key = 1 }) end,
      "etcd.core: field 'key' of etcdserverpb.RangeRequest: string expected, got number")
    assert.has_error(function() core._pack("RangeRequest", { limit = 1.5 }) end,
      "etcd.core: field 'limit' of etcdserverpb.RangeRequest: integer expected, got number")
    assert.has_error(function() core._pack("RangeRequest", { sort_order = "SIDEWAYS" }) end,
      "etcd.core: field 'sort_order' of etcdserverpb.RangeRequest: no value 'SIDEWAYS' in etcdserverpb.RangeRequest.SortOrder")
  end)

  it("accepts the snake_case names responses use, as well as etcd's own", function()
    local cases = {
      { "LeaseGrantRequest", { TTL = 5, ID = 7 }, { ttl = 5, id = 7 } },
      { "MemberAddRequest", { peerURLs = { "http://a:1" }, isLearner = true },
        { peer_urls = { "http://a:1" }, is_learner = true } },
      { "MemberRemoveRequest", { ID = 9 }, { id = 9 } },
      { "AlarmRequest", { memberID = 3, action = "GET" }, { member_id = 3, action = "GET" } },
      { "AuthRoleGrantPermissionRequest", { name = "r", perm = { permType = "READ", key = "k" } },
        { name = "r", perm = { perm_type = "READ", key = "k" } } },
    }
    for _, c in ipairs(cases) do
      assert.equal(core._pack(c[1], c[2]), core._pack(c[1], c[3]), c[1])
      -- and what comes back has the snake_case names
      assert.same(core._unpack(c[1], core._pack(c[1], c[2])), core._unpack(c[1], core._pack(c[1], c[3])))
    end
    assert.same({ ttl = 5, id = etcd.id(7) }, core._unpack("LeaseGrantRequest", core._pack("LeaseGrantRequest", { ttl = 5, id = 7 })))
  end)

  it("refuses a field given under both of its names", function()
    assert.has_error(function() core._pack("LeaseGrantRequest", { TTL = 5, ttl = 5 }) end,
      "etcd.core: etcdserverpb.LeaseGrantRequest: 'TTL' and 'ttl' name the same field")
  end)

  it("refuses two members of one oneof", function()
    assert.has_error(function()
      core._pack("TxnRequest", { success = { { request_range = { key = "a" }, request_put = { key = "a" } } } })
    end, "etcd.core: etcdserverpb.RequestOp: fields 'request_range' and 'request_put' exclude each other")
  end)

  it("raises on a request nested deeper than the limit", function()
    local t = {}
    local top = t
    for _ = 1, 40 do
      local inner = {}
      t.success = { { request_txn = inner } }
      t = inner
    end
    local ok, err = pcall(core._pack, "TxnRequest", top)
    assert.is_false(ok)
    assert.matches("nested deeper than 64 levels", err)
  end)

  it("raises on a table that contains itself instead of recursing forever", function()
    local t = { success = {} }
    t.success[1] = { request_txn = t }
    assert.has_error(function() core._pack("TxnRequest", t) end,
      "etcd.core: etcdserverpb.RequestOp nested deeper than 64 levels")
  end)
end)
