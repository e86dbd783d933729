-- The decode fuzzer's inputs replayed through the module a user loads
-- (docs/FUZZING.md): every regression file of fuzz/regress/decode/ and every
-- seed of fuzz/corpus/decode/ (deep nesting, truncated and hostile bytes among
-- them) go through core._unpack, the decoder every unary call, stream and
-- watch runs on etcd's answer (a refused answer reaches the user as
-- `nil, msg, "INTERNAL"`, docs/ERROR_HANDLING.md). No clang needed: this runs
-- in `make spec`, `make asan` and `make valgrind`.
--
-- A file is 4 selector bytes and the protobuf payload; it is named
-- <Message>-<what>.<outcome>, outcome being ok (a table), deep (the depth
-- limit's error) or malformed.
local core = require "etcd.core"
local etcd = require "etcd"
local helpers = require "helpers"

if not math.type then
  -- fuzz/make-seeds.lua builds the inputs with 64-bit integer arithmetic
  -- (varints of negative numbers, FNV-1a): Lua 5.3+ only. The decoder is the
  -- same C on every Lua; the other specs decode real answers there.
  describe("decode fuzzer inputs replayed through etcd.core", function()
    pending("needs Lua 5.3+ (fuzz/make-seeds.lua); run under lua5.4 or lua5.3")
  end)
  return
end

local LIMIT = 64 -- PBCONV_MAX_DEPTH
local DEEP_MSG = "response from etcd nested deeper than 64 levels"

local seeds = dofile("fuzz/make-seeds.lua")
local ld = seeds.ld

local function read(path) return assert(helpers.read_file(path)) end

local function list(dir)
  local out = {}
  local p = assert(io.popen("ls -1 '" .. dir .. "' 2>/dev/null"))
  for name in p:lines() do out[#out + 1] = name end
  p:close()
  table.sort(out)
  return out
end

-- Byte order, as the fuzzer's strcmp (not the locale's).
local function bytes_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = a:byte(i), b:byte(i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Every message of the .proto files, by full name, as the fuzzer's selector
-- knows them: the FNV-1a hash of the name, or else index (selector % N) in
-- the list sorted by name.
local messages = {}
for _, path in ipairs { "proto/mvccpb/kv.proto", "proto/authpb/auth.proto", "proto/etcdserverpb/rpc.proto" } do
  local src = read(path)
  local pkg = assert(src:match("\npackage%s+([%w_.]+)%s*;"))
  for name in src:gmatch("\nmessage%s+([%w_]+)%s*{") do messages[#messages + 1] = pkg .. "." .. name end
end
table.sort(messages, bytes_less)
local by_hash = {}
for _, name in ipairs(messages) do by_hash[seeds.fnv1a(name)] = name end

-- The selector: the first 4 bytes as a little-endian uint32 (the bytes do
-- not overlap, so a sum is their bitwise or).
local BYTE_WEIGHT = { 1, 256, 65536, 16777216 }
local function selected(bytes)
  local sel = 0
  for i = 1, math.min(4, #bytes) do sel = sel + bytes:byte(i) * BYTE_WEIGHT[i] end
  return by_hash[sel] or messages[sel % #messages + 1]
end

-- string.pack("<I4", n) for 0 <= n < 2^32
local function u32le(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 16777216) % 256)
end

-- How core._unpack reaches a message. Requests and responses of methods
-- directly; a message that only occurs inside others as the one element of a
-- field of such a parent (so one level deeper: no replayed file of these sits
-- at the exact limit).
local inside = {
  ["mvccpb.KeyValue"] = { "RangeResponse", 2, function(t) return t.kvs[1] end },
  ["mvccpb.Event"] = { "WatchResponse", 11, function(t) return t.events[1] end },
  ["authpb.Permission"] = { "AuthRoleGetResponse", 2, function(t) return t.perm[1] end },
  ["authpb.UserAddOptions"] = { "AuthUserAddRequest", 3, function(t) return t.options end },
  ["etcdserverpb.ResponseHeader"] = { "RangeResponse", 1, function(t) return t.header end },
  ["etcdserverpb.RequestOp"] = { "TxnRequest", 2, function(t) return t.success[1] end },
  ["etcdserverpb.ResponseOp"] = { "TxnResponse", 3, function(t) return t.responses[1] end },
  ["etcdserverpb.Compare"] = { "TxnRequest", 1, function(t) return t.compare[1] end },
  ["etcdserverpb.WatchCreateRequest"] = { "WatchRequest", 1, function(t) return t.create_request end },
  ["etcdserverpb.WatchCancelRequest"] = { "WatchRequest", 2, function(t) return t.cancel_request end },
  ["etcdserverpb.WatchProgressRequest"] = { "WatchRequest", 3, function(t) return t.progress_request end },
  ["etcdserverpb.LeaseStatus"] = { "LeaseLeasesResponse", 2, function(t) return t.leases[1] end },
  ["etcdserverpb.Member"] = { "MemberListResponse", 2, function(t) return t.members[1] end },
  ["etcdserverpb.AlarmMember"] = { "AlarmResponse", 2, function(t) return t.alarms[1] end },
}
-- No method sends or returns these, nor any message that contains them: only
-- the fuzz target decodes them.
local unreachable = {
  ["authpb.User"] = true, ["authpb.Role"] = true, ["etcdserverpb.LeaseCheckpoint"] = true,
  ["etcdserverpb.LeaseCheckpointRequest"] = true, ["etcdserverpb.LeaseCheckpointResponse"] = true,
}

-- Decode `payload` as `full` the way a user's call would.
-- Returns ok, table_or_msg, top message full name.
local function replay(full, payload)
  local via = inside[full]
  if via then
    local top = "etcdserverpb." .. via[1]
    local res, msg = core._unpack(via[1], ld(via[2], payload))
    if not res then return false, msg, top end
    return true, via[3](res), top
  end
  local res, msg = core._unpack(full:match("%.([%w_]+)$"), payload)
  if not res then return false, msg, full end
  return true, res, full
end

local function check_outcome(label, outcome, ok, res, top)
  if outcome == "ok" then
    assert(ok, label .. ": refused: " .. tostring(res))
    assert.equal("table", type(res), label)
  elseif outcome == "deep" then
    assert(not ok, label .. ": decoded although too deep")
    assert.equal(DEEP_MSG, res, label)
  elseif outcome == "malformed" then
    assert(not ok, label .. ": decoded although malformed")
    assert.equal("malformed " .. top .. " from etcd", res, label)
  else
    error(label .. ": unknown outcome '" .. tostring(outcome) .. "' in the file name")
  end
end

-- The .proto name -> the name pbconv gives (grantedTTL -> granted_ttl).
local function lua_name(name)
  return (name:gsub("([%l%d])(%u)", "%1_%2"):lower())
end

-- Every field set in `src` (.proto names, as packed) is in `got` with the
-- same value; `got` has the defaults of the others on top.
local function assert_has(src, got, where)
  for k, v in pairs(src) do
    local name = type(k) == "string" and lua_name(k) or k
    local g = got[name]
    local path = where .. "." .. tostring(name)
    if type(v) == "table" then
      assert(type(g) == "table", path .. ": table expected, got " .. type(g))
      if #v > 0 then assert(#g == #v, path .. ": " .. #v .. " elements expected, got " .. #g) end
      assert_has(v, g, path)
    else
      assert(g == v, path .. ": " .. tostring(v) .. " expected, got " .. tostring(g))
    end
  end
end

-- How many times `step` leads into a nested transaction.
local function txn_depth(t, step)
  local d = 0
  while true do
    local nxt = step(t)
    if not nxt then return d end
    t, d = nxt, d + 1
  end
end
local function next_response_txn(t) return t.responses[1] and t.responses[1].response_txn end
local function next_request_txn(t) return t.success[1] and t.success[1].request_txn end

describe("decode fuzzer inputs replayed through etcd.core", function()
  it("knows the fuzzer's message list (the selector of a regression file resolves the same way)", function()
    local n = 0
    for _, h in ipairs { "mvccpb/kv", "authpb/auth", "etcdserverpb/rpc" } do
      for line in read("build/gen/" .. h .. ".pb-c.h"):gmatch("[^\n]+") do
        if line:match("^extern const ProtobufCMessageDescriptor [%w_]+;$") then n = n + 1 end
      end
    end
    assert.equal(n, #messages)
    assert.equal("etcdserverpb.TxnResponse", selected(seeds.selector("etcdserverpb.TxnResponse") .. "x"))
    -- a selector that is no hash picks by index in the sorted list
    assert.equal(messages[1], selected(u32le(#messages * 1000)))
    assert.equal("authpb.Permission", messages[1])
  end)

  it("has the committed seed corpus exactly as fuzz/make-seeds.lua writes it", function()
    local files = list("fuzz/corpus/decode")
    local want = {}
    for _, s in ipairs(seeds.seeds) do want[s.file] = s end
    assert.is_true(#seeds.seeds >= 50)
    assert.equal(#seeds.seeds, #files, "run `make fuzz-seeds`")
    for _, name in ipairs(files) do
      local s = want[name]
      assert(s, name .. ": not written by fuzz/make-seeds.lua (run `make fuzz-seeds`)")
      assert(read("fuzz/corpus/decode/" .. name) == seeds.file_bytes(s), name .. ": differs, run `make fuzz-seeds`")
      assert(#seeds.file_bytes(s) <= seeds.MAX_LEN, name .. ": longer than the fuzzer's -max_len")
    end
  end)

  it("gives every seed its outcome: the answer as a table, or nil and the error", function()
    local counts = { ok = 0, deep = 0, malformed = 0, skipped = 0 }
    for _, s in ipairs(seeds.seeds) do
      local bytes = seeds.file_bytes(s)
      assert.equal(s.message, selected(bytes), s.file)
      if unreachable[s.message] then
        counts.skipped = counts.skipped + 1
      else
        local ok, res, top = replay(s.message, s.payload)
        check_outcome(s.file, s.outcome, ok, res, top)
        counts[s.outcome] = counts[s.outcome] + 1
        if s.source then assert_has(s.source.table, res, s.file) end
      end
    end
    assert.is_true(counts.ok >= 40 and counts.deep >= 8 and counts.malformed >= 8)
    assert.is_true(counts.skipped <= 3)
  end)

  it("decodes the real answers with their content", function()
    local function seed(file)
      for _, s in ipairs(seeds.seeds) do if s.file == file then return s end end
      error("no seed " .. file)
    end
    local r = assert(core._unpack("RangeResponse", seed("RangeResponse-kvs.ok").payload))
    assert.equal(3, #r.kvs)
    assert.equal("/app/\0bin\255", r.kvs[3].key)
    assert.equal("\1\2\0\3", r.kvs[3].value)
    assert.equal(etcd.id("0x694d8a1b2c3d4e5f"), r.kvs[2].lease)
    assert.equal("b31298af9827dd11", etcd.id_hex(r.header.cluster_id, true))
    local w = assert(core._unpack("WatchResponse", seed("WatchResponse-events.ok").payload))
    assert.same({ "PUT", "DELETE", "PUT" }, { w.events[1].type, w.events[2].type, w.events[3].type })
    assert.equal("off", w.events[1].prev_kv.value)
    assert.is_nil(w.events[3].prev_kv)
    local u = assert(core._unpack("WatchResponse", seed("WatchResponse-unknown-event-type.ok").payload))
    assert.equal(9, u.events[1].type) -- an enum value this client does not know: its number
    local p = assert(core._unpack("PutResponse", seed("PutResponse-prev-kv-twice.ok").payload))
    assert.same({ key = "/k", value = "v", create_revision = 0, mod_revision = 6, version = 0, lease = etcd.id(0) },
      p.prev_kv)
    local t = assert(core._unpack("TxnResponse", seed("TxnResponse-oneof-twice.ok").payload))
    assert.same({ response_put = { header = { cluster_id = etcd.id(0), member_id = etcd.id(0), revision = 4, raft_term = 0 } } },
      t.responses[1])
    assert.is_nil(t.responses[2].response_txn)
    assert.equal(0, t.responses[2].response_range.count)
    local f = assert(core._unpack("WatchRequest", seed("WatchRequest-unpacked-filters.ok").payload))
    assert.same({ "NODELETE", "NOPUT", 7 }, f.create_request.filters)
    local x = assert(core._unpack("RangeResponse", seed("RangeResponse-unknown-fields.ok").payload))
    assert.equal(1, #x.kvs)
    assert.equal(1, x.count)
  end)

  it("accepts nesting exactly at the limit and refuses one level more", function()
    local half = math.floor(LIMIT / 2)
    local r = assert(core._unpack("TxnResponse", seeds.nested_txn_response(half)))
    assert.equal(half, txn_depth(r, next_response_txn))
    local q = assert(core._unpack("TxnRequest", seeds.nested_txn_request(half)))
    assert.equal(half, txn_depth(q, next_request_txn))
    -- 62 levels of transactions, a ResponseOp (63) with a RangeResponse (64)
    local b = assert(core._unpack("TxnResponse", seeds.nested_txn_response(half - 1, ld(3, ld(1, "")))))
    local inner = b
    for _ = 1, half - 1 do inner = inner.responses[1].response_txn end
    assert.equal(0, inner.responses[1].response_range.count)
    for _, case in ipairs {
      { "TxnResponse", seeds.nested_txn_response(half, ld(1, "")) },               -- a header at 65
      { "TxnResponse", seeds.nested_txn_response(half - 1, ld(3, ld(1, ld(2, "")))) }, -- a KeyValue at 65
      { "TxnRequest", seeds.nested_txn_request(half, ld(1, "")) },                 -- a Compare at 65
      { "TxnRequest", seeds.nested_txn_request(half + 1) },
    } do
      local res, msg = core._unpack(case[1], case[2])
      assert.is_nil(res)
      assert.equal(DEEP_MSG, msg)
    end
  end)

  it("refuses thousands of nested transactions, requests and responses, and truncated ones", function()
    for _, n in ipairs { 100, 1000, 5000 } do
      local resp, req = seeds.nested_txn_response(n), seeds.nested_txn_request(n)
      for _, case in ipairs {
        { "TxnResponse", resp }, { "TxnRequest", req },
        { "TxnResponse", ld(3, ld(4, resp)) }, { "TxnRequest", ld(3, ld(4, req)) },
      } do
        local res, msg = core._unpack(case[1], case[2])
        assert.is_nil(res)
        assert.equal(DEEP_MSG, msg)
        -- cut anywhere: the outer lengths run past the end before any depth is reached
        res, msg = core._unpack(case[1], case[2]:sub(1, #case[2] - 1))
        assert.is_nil(res)
        assert.equal("malformed etcdserverpb." .. case[1] .. " from etcd", msg)
      end
    end
  end)

  it("refuses at once an answer repeating a sub-message thousands of times (protobuf-c merges in O(n^2))", function()
    -- 64000 times MemberAddResponse.member (320 KB): 35 s of CPU before the
    -- walk bounded the repeats of singular sub-messages to 16 per answer.
    local bytes = ld(2, ld(3, "u")):rep(64000)
    local t0 = core.now()
    local res, msg = core._unpack("MemberAddResponse", bytes)
    local dt = core.now() - t0
    assert.is_nil(res)
    assert.equal("malformed etcdserverpb.MemberAddResponse from etcd", msg)
    assert.is_true(dt < 2, ("took %.3f s"):format(dt))
    -- up to 16 repeats still merge as protobuf says: repeated fields appended
    local m = assert(core._unpack("MemberAddResponse", ld(2, ld(3, "u")):rep(17)))
    assert.equal(17, #m.member.peer_urls)
    res, msg = core._unpack("MemberAddResponse", ld(2, ld(3, "u")):rep(18))
    assert.is_nil(res)
    assert.equal("malformed etcdserverpb.MemberAddResponse from etcd", msg)
    -- a oneof given again replaces the earlier member: no merge, no bound
    local t = assert(core._unpack("TxnResponse", ld(3, ld(1, ld(2, ld(1, "k"))):rep(1000))))
    assert.equal(1, #t.responses[1].response_range.kvs)
  end)

  it("gives every regression file of fuzz/regress/decode/ its outcome", function()
    local files = list("fuzz/regress/decode")
    assert.is_true(#files >= 5)
    for _, name in ipairs(files) do
      local message, outcome = name:match("^([%w_]+)%-[%w_.-]+%.(%a+)$")
      assert(message, name .. ": not named <Message>-<what>.<outcome>")
      local bytes = read("fuzz/regress/decode/" .. name)
      local full = selected(bytes)
      assert.equal(message, full:match("%.([%w_]+)$"), name .. ": the selector picks " .. full)
      assert(not unreachable[full], name .. ": " .. full .. " cannot be replayed through etcd.core")
      local ok, res, top = replay(full, bytes:sub(5))
      check_outcome(name, outcome, ok, res, top)
    end
  end)

  it("leaves the process working: many replays later, decoding and memory are as before", function()
    local good = seeds.seeds[1]
    for _, s in ipairs(seeds.seeds) do if s.file == "RangeResponse-kvs.ok" then good = s end end
    local before = assert(core._unpack("RangeResponse", good.payload))
    collectgarbage()
    collectgarbage()
    local mem0 = collectgarbage("count")
    for _ = 1, 20 do
      for _, s in ipairs(seeds.seeds) do
        if not unreachable[s.message] then replay(s.message, s.payload) end
      end
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(collectgarbage("count") < mem0 + 64) -- KB: nothing kept
    assert.same(before, assert(core._unpack("RangeResponse", good.payload)))
  end)
end)
