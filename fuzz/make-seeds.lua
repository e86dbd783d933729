-- fuzz/make-seeds.lua: the seed corpus of the decode fuzzer (fuzz/fuzz_decode.c)
-- and the list of what each seed is, for spec/13-fuzz_regress_spec.lua.
--
--   make fuzz-seeds        (= LUA_CPATH='build/?.so;;' lua5.4 fuzz/make-seeds.lua fuzz/corpus/decode)
--
-- writes every seed to fuzz/corpus/decode/ (removing the files it does not
-- write there). dofile("fuzz/make-seeds.lua") returns the module without
-- writing anything.
--
-- A seed file is the fuzz target's input: 4 selector bytes (the FNV-1a 32-bit
-- hash of the message's full name, little endian) and then the protobuf
-- payload. Its name is <Message>-<what>.<outcome>, where <outcome> is what
-- decoding the payload as <Message> gives:
--   ok         a table
--   deep       nil, "response from etcd nested deeper than 64 levels"
--   malformed  nil, "malformed <full message name> from etcd"
-- The same naming holds for fuzz/regress/decode/ (docs/FUZZING.md).
--
-- The payloads are packed by the module's own encoder (core._pack, the one
-- requests go through) from realistic etcd answers, or written byte by byte
-- here where the encoder cannot produce them (messages that are not the
-- request or response of a method, hostile nesting, broken bytes).
local core = require "etcd.core"

local M = {}

M.MAX_DEPTH = 64 -- PBCONV_MAX_DEPTH (src/lua/pbconv.h)
M.MAX_LEN = 8192 -- FUZZ_DECODE_MAX_LEN (Makefile): every seed fits

-- ---------------------------------------------------------------------------
-- wire format helpers

local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7 -- logical shift: a negative int64 takes 10 bytes, as in protobuf
    out[#out + 1] = string.char(n ~= 0 and (b | 0x80) or b)
  until n == 0
  return table.concat(out)
end
M.varint = varint

-- A length-delimited field (sub-message, bytes, string, packed array).
local function ld(num, payload)
  return varint(num << 3 | 2) .. varint(#payload) .. payload
end
M.ld = ld

-- A varint field.
local function vf(num, v)
  return varint(num << 3) .. varint(v)
end

function M.fnv1a(s)
  local h = 2166136261
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

function M.selector(full_name)
  return string.pack("<I4", M.fnv1a(full_name))
end

local function pack(short, t)
  return core._pack(short, t)
end

-- ---------------------------------------------------------------------------
-- nesting builders (field numbers from proto/etcdserverpb/rpc.proto)
--
-- TxnResponse.responses = 3 -> ResponseOp.response_txn = 4 -> TxnResponse ...
-- TxnRequest.success = 2 / failure = 3 -> RequestOp.request_txn = 4 -> TxnRequest ...

-- A TxnResponse `n` transactions deep (2 * n message levels below the
-- top one), `inner` being the payload of the innermost TxnResponse. Built
-- inside out; the result is the payload of the outermost TxnResponse.
function M.nested_txn_response(n, inner)
  local s = inner or ""
  for _ = 1, n do
    s = ld(3, ld(4, s))
  end
  return s
end

-- The same for requests: TxnRequest -> RequestOp -> TxnRequest ...
function M.nested_txn_request(n, inner, branch)
  local s = inner or ""
  for _ = 1, n do
    s = ld(branch or 2, ld(4, s))
  end
  return s
end

-- ---------------------------------------------------------------------------
-- the seeds

local header = { cluster_id = -5543200311400211183, member_id = 0x2b8e8f2c5a0f1c3d, revision = 1042, raft_term = 7 }

local function kv(key, value, rev, extra)
  local t = { key = key, value = value, create_revision = rev - 3, mod_revision = rev, version = 4, lease = 0 }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local kvs = {
  kv("/app/config/a", "on", 1040),
  kv("/app/config/b", string.rep("x", 300), 1041, { lease = 0x694d8a1b2c3d4e5f }),
  kv("/app/\0bin\255", "\1\2\0\3", 1042),
}

local member = function(id, name, learner)
  return {
    ID = id, name = name, isLearner = learner,
    peerURLs = { "http://127.0.0.1:" .. (2380 + id % 100) },
    clientURLs = { "http://127.0.0.1:" .. (2379 + id % 100), "http://[::1]:" .. (2379 + id % 100) },
  }
end

local seeds = {}
M.seeds = seeds

local function add(file, full_name, payload, outcome, source)
  assert(#payload + 4 <= M.MAX_LEN, file .. ": longer than the fuzzer's max_len")
  seeds[#seeds + 1] = { file = file .. "." .. outcome, message = full_name, payload = payload,
    outcome = outcome, source = source }
end

-- Real answers, packed by the module's encoder; `source` is the table packed
-- (the spec checks the decoded table against it).
local function answer(short, what, t)
  add(short .. "-" .. what, "etcdserverpb." .. short, pack(short, t), "ok", { short = short, table = t })
end

answer("RangeResponse", "kvs", { header = header, kvs = kvs, more = true, count = 17 })
answer("RangeResponse", "count-only", { header = header, count = 123456789 })
answer("RangeResponse", "keys-only", { header = header,
  kvs = { { key = "/a", create_revision = 2, mod_revision = 9, version = 3 } } })
answer("PutResponse", "prev-kv", { header = header, prev_kv = kvs[1] })
answer("DeleteRangeResponse", "prev-kvs", { header = header, deleted = 2, prev_kvs = { kvs[1], kvs[3] } })
answer("TxnResponse", "mixed", {
  header = header, succeeded = true,
  responses = {
    { response_range = { header = header, kvs = { kvs[1] }, count = 1 } },
    { response_put = { header = header, prev_kv = kvs[2] } },
    { response_delete_range = { header = header, deleted = 1 } },
    { response_txn = { header = header, succeeded = false,
      responses = { { response_txn = { succeeded = true, responses = { { response_range = { count = 0 } } } } } } } },
  },
})
answer("TxnRequest", "compare-all-targets", {
  compare = {
    { result = "EQUAL", target = "VERSION", key = "/a", version = 3 },
    { result = "GREATER", target = "CREATE", key = "/b", create_revision = 10 },
    { result = "LESS", target = "MOD", key = "/c", range_end = "/d", mod_revision = 99 },
    { result = "NOT_EQUAL", target = "VALUE", key = "/e", value = "\0\1" },
    { result = "EQUAL", target = "LEASE", key = "/f", lease = 0x694d8a1b2c3d4e5f },
  },
  success = {
    { request_put = { key = "/a", value = "v", lease = 5, prev_kv = true } },
    { request_range = { key = "/a", range_end = "\0", limit = 10, sort_order = "DESCEND", sort_target = "MOD",
      serializable = true, keys_only = true, min_mod_revision = 1, max_create_revision = 50 } },
    { request_txn = { success = { { request_delete_range = { key = "/x", prev_kv = true } } } } },
  },
  failure = { { request_range = { key = "/a", count_only = true } } },
})
answer("WatchResponse", "created", { header = header, watch_id = 7, created = true })
answer("WatchResponse", "events", {
  header = header, watch_id = 7,
  events = {
    { type = "PUT", kv = kvs[1], prev_kv = kv("/app/config/a", "off", 1030) },
    { type = "DELETE", kv = { key = "/app/config/b", mod_revision = 1043 }, prev_kv = kvs[2] },
    { kv = kvs[3] },
  },
})
answer("WatchResponse", "canceled-compacted", { header = header, watch_id = 7, canceled = true, compact_revision = 900,
  cancel_reason = "mvcc: required revision has been compacted" })
answer("WatchResponse", "progress", { header = header, watch_id = -1 })
answer("WatchResponse", "fragment", { header = header, watch_id = 3, fragment = true, events = { { kv = kvs[2] } } })
answer("WatchRequest", "create-filters", { create_request = { key = "/app/", range_end = "/app0", start_revision = 5,
  progress_notify = true, filters = { "NOPUT", "NODELETE" }, prev_kv = true, watch_id = 4, fragment = true } })
answer("LeaseGrantResponse", "granted", { header = header, ID = 0x694d8a1b2c3d4e5f, TTL = 60 })
answer("LeaseGrantResponse", "error", { header = header, error = "lease already exists" })
answer("LeaseKeepAliveResponse", "alive", { header = header, ID = 0x694d8a1b2c3d4e5f, TTL = 59 })
answer("LeaseKeepAliveResponse", "expired", { header = header, ID = 0x694d8a1b2c3d4e5f, TTL = 0 })
answer("LeaseTimeToLiveResponse", "keys", { header = header, ID = 77, TTL = 30, grantedTTL = 60,
  keys = { "/a", "/b\0", "" } })
answer("LeaseRevokeResponse", "revoked", { header = header })
answer("LeaseLeasesResponse", "three", { header = header,
  leases = { { ID = 1 }, { ID = -1 }, { ID = 0x694d8a1b2c3d4e5f } } })
answer("MemberListResponse", "three", { header = header,
  members = { member(0x8e9e05c52164694d, "m1"), member(0x91bc3c398fb3c146, "m2"),
    member(0xfd422379fda50e48, "", true) } })
answer("MemberAddResponse", "learner", { header = header, member = member(42, "", true),
  members = { member(0x8e9e05c52164694d, "m1"), member(42, "", true) } })
answer("MemberRemoveResponse", "one-left", { header = header, members = { member(1, "m1") } })
answer("MemberUpdateResponse", "updated", { header = header, members = { member(1, "m1") } })
answer("MemberPromoteResponse", "promoted", { header = header, members = { member(1, "m1"), member(2, "m2") } })
answer("StatusResponse", "leader", { header = header, version = "3.4.23", dbSize = 24576, leader = 0x8e9e05c52164694d,
  raftIndex = 4242, raftTerm = 7, raftAppliedIndex = 4242, errors = { "etcdserver: no space" }, dbSizeInUse = 16384,
  isLearner = false })
answer("AlarmResponse", "alarms", { header = header,
  alarms = { { memberID = 0x8e9e05c52164694d, alarm = "NOSPACE" }, { memberID = 2, alarm = "CORRUPT" } } })
answer("HashKVResponse", "hash", { header = header, hash = 0xdeadbeef, compact_revision = 12 })
answer("HashResponse", "hash", { header = header, hash = 4294967295 })
answer("SnapshotResponse", "chunk", { header = header, remaining_bytes = 1 << 40, blob = string.rep("\0\255", 100) })
answer("CompactionResponse", "header", { header = header })
answer("DefragmentResponse", "header", { header = header })
answer("MoveLeaderResponse", "header", { header = header })
answer("AuthenticateResponse", "token", { header = header, token = "XQaHwpKfzTijFxMe.118" })
answer("AuthEnableResponse", "header", { header = header })
answer("AuthUserGetResponse", "roles", { header = header, roles = { "root", "reader" } })
answer("AuthUserListResponse", "users", { header = header, users = { "root", "alice", "bob" } })
answer("AuthRoleListResponse", "roles", { header = header, roles = { "root", "reader", "writer" } })
answer("AuthRoleGetResponse", "perms", { header = header, perm = {
  { permType = "READ", key = "/app/" , range_end = "/app0" },
  { permType = "WRITE", key = "/app/x" },
  { permType = "READWRITE", key = "\0", range_end = "\0" },
} })
answer("AuthUserAddRequest", "no-password", { name = "svc", options = { no_password = true } })

-- Messages that are no method's request or response: bytes cut out of a
-- packed parent (a one-element repeated field: tag, length, message).
local function cut(parent_bytes, tag)
  assert(parent_bytes:byte(1) == tag, "unexpected layout")
  local p, len, shift = 2, 0, 0
  repeat
    local b = parent_bytes:byte(p)
    len = len | ((b & 0x7f) << shift)
    shift = shift + 7
    p = p + 1
  until b < 0x80
  assert(p + len - 1 == #parent_bytes, "unexpected layout")
  return parent_bytes:sub(p)
end

add("KeyValue-lease", "mvccpb.KeyValue", cut(pack("RangeResponse", { kvs = { kvs[2] } }), 0x12), "ok")
add("Event-delete-prev", "mvccpb.Event", cut(pack("WatchResponse", {
  events = { { type = "DELETE", kv = { key = "/k", mod_revision = 9 }, prev_kv = kvs[1] } } }), 0x5a), "ok")
add("Member-urls", "etcdserverpb.Member",
  cut(pack("MemberListResponse", { members = { member(7, "m7") } }), 0x12), "ok")
add("Permission-range", "authpb.Permission", cut(pack("AuthRoleGetResponse", {
  perm = { { permType = "READWRITE", key = "/a", range_end = "/b" } } }), 0x12), "ok")
add("ResponseHeader-max", "etcdserverpb.ResponseHeader",
  vf(1, -1) .. vf(2, -1) .. vf(3, math.maxinteger) .. vf(4, -1), "ok")
add("Compare-value", "etcdserverpb.Compare", cut(pack("TxnRequest", {
  compare = { { result = "NOT_EQUAL", target = "VALUE", key = "/k", value = "v", range_end = "/l" } } }), 0x0a), "ok")
add("User-roles", "authpb.User", ld(1, "alice") .. ld(2, "$2a$10$hash") .. ld(3, "root") .. ld(3, "reader")
  .. ld(4, vf(1, 1)), "ok")
add("Role-perms", "authpb.Role", ld(1, "reader") .. ld(2, vf(1, 0) .. ld(2, "/a") .. ld(3, "/b"))
  .. ld(2, vf(1, 2) .. ld(2, "/c")), "ok")
add("LeaseCheckpointRequest-two", "etcdserverpb.LeaseCheckpointRequest",
  ld(1, vf(1, 5) .. vf(2, 30)) .. ld(1, vf(1, 6) .. vf(2, 0)), "ok")

-- Odd but valid protobuf: must decode.
local range = pack("RangeResponse", { header = header, kvs = { kvs[1] }, count = 1 })
add("RangeResponse-unknown-fields", "etcdserverpb.RangeResponse",
  vf(99, 5) .. range .. ld(100, M.nested_txn_response(200)) .. "\237\6\1\2\3\4" .. "\241\6" .. ("\0"):rep(8), "ok")
add("RangeResponse-empty", "etcdserverpb.RangeResponse", "", "ok")
add("TxnResponse-empty", "etcdserverpb.TxnResponse", "", "ok")
add("WatchResponse-unknown-event-type", "etcdserverpb.WatchResponse",
  vf(2, 1) .. ld(11, vf(1, 9) .. ld(2, ld(1, "/k"))), "ok")
add("WatchRequest-unpacked-filters", "etcdserverpb.WatchRequest",
  ld(1, ld(1, "/k") .. vf(5, 1) .. vf(5, 0) .. vf(5, 7)), "ok")
add("PutResponse-prev-kv-twice", "etcdserverpb.PutResponse",
  ld(2, ld(1, "/k") .. vf(3, 5)) .. ld(2, ld(5, "v") .. vf(3, 6)), "ok")
add("TxnResponse-oneof-twice", "etcdserverpb.TxnResponse",
  ld(3, ld(1, vf(4, 3)) .. ld(2, ld(1, vf(3, 4)))) .. ld(3, ld(4, "") .. ld(1, "")), "ok")
add("RangeResponse-negative-count", "etcdserverpb.RangeResponse", vf(4, -1) .. vf(3, 2), "ok")
add("StatusResponse-bool-overflow", "etcdserverpb.StatusResponse", vf(10, 1 << 40) .. ld(2, "3.5.0"), "ok")

-- Nesting at and past the limit (the top message is level 0; PBCONV_MAX_DEPTH
-- sub-message levels below it are accepted).
local half = M.MAX_DEPTH // 2
add("TxnResponse-depth64-exact", "etcdserverpb.TxnResponse", M.nested_txn_response(half), "ok")
add("TxnResponse-depth65-header", "etcdserverpb.TxnResponse", M.nested_txn_response(half, ld(1, vf(3, 1))), "deep")
add("TxnResponse-depth64-range", "etcdserverpb.TxnResponse",
  M.nested_txn_response(half - 1, ld(3, ld(1, vf(4, 1)))), "ok")
add("TxnResponse-depth65-kv", "etcdserverpb.TxnResponse",
  M.nested_txn_response(half - 1, ld(3, ld(1, ld(2, ld(1, "/k"))))), "deep")
add("TxnResponse-depth200", "etcdserverpb.TxnResponse", M.nested_txn_response(100), "deep")
add("TxnResponse-depth2600", "etcdserverpb.TxnResponse", M.nested_txn_response(1300), "deep")
add("TxnRequest-depth64-exact", "etcdserverpb.TxnRequest", M.nested_txn_request(half), "ok")
add("TxnRequest-depth65-compare", "etcdserverpb.TxnRequest", M.nested_txn_request(half, ld(1, ld(3, "/k"))), "deep")
add("TxnRequest-depth65-failure", "etcdserverpb.TxnRequest",
  M.nested_txn_request(half, ld(3, ld(1, ld(1, "/k"))), 3), "deep")
add("TxnRequest-depth2600", "etcdserverpb.TxnRequest", M.nested_txn_request(1300), "deep")
add("RequestOp-depth2000", "etcdserverpb.RequestOp", ld(4, M.nested_txn_request(999)), "deep")
add("ResponseOp-depth2000", "etcdserverpb.ResponseOp", ld(4, M.nested_txn_response(999)), "deep")

-- Broken bytes.
add("RangeResponse-truncated", "etcdserverpb.RangeResponse", range:sub(1, #range - 5), "malformed")
add("RangeResponse-length-past-end", "etcdserverpb.RangeResponse", "\18\200\1" .. ld(1, "/k"), "malformed")
add("RangeResponse-varint-11-bytes", "etcdserverpb.RangeResponse", "\32" .. ("\255"):rep(10) .. "\1", "malformed")
add("RangeResponse-field-zero", "etcdserverpb.RangeResponse", "\0\1", "malformed")
add("RangeResponse-group", "etcdserverpb.RangeResponse", "\19\12", "malformed")
add("RangeResponse-wire-type-7", "etcdserverpb.RangeResponse", "\15", "malformed")
add("RangeResponse-kvs-as-varint", "etcdserverpb.RangeResponse", vf(2, 1), "malformed")
add("WatchResponse-truncated-event", "etcdserverpb.WatchResponse", vf(2, 1) .. "\90\20\18\18\10\2/k", "malformed")
local deep = M.nested_txn_response(1300)
add("TxnResponse-depth2600-truncated", "etcdserverpb.TxnResponse", deep:sub(1, #deep // 2), "malformed")
add("TxnResponse-depth60-bad-tail", "etcdserverpb.TxnResponse", M.nested_txn_response(30, "\255"), "malformed")

-- ---------------------------------------------------------------------------

-- The bytes of a seed file.
function M.file_bytes(seed)
  return M.selector(seed.message) .. seed.payload
end

local function write_all(dir)
  local wanted = {}
  for _, s in ipairs(seeds) do
    assert(not wanted[s.file], "two seeds named " .. s.file)
    wanted[s.file] = true
    local f = assert(io.open(dir .. "/" .. s.file, "wb"))
    f:write(M.file_bytes(s))
    f:close()
  end
  local p = assert(io.popen("ls -1 '" .. dir .. "'"))
  for name in p:lines() do
    if not wanted[name] then assert(os.remove(dir .. "/" .. name)) end
  end
  p:close()
  print(("%d seeds in %s"):format(#seeds, dir))
end

local outdir = ...
if outdir then write_all(outdir) end

return M
