-- Writes the seed corpus of fuzz/fuzz_options.c (fuzz/corpus/options/): a
-- few calls per public function, with plausible and hostile arguments, in
-- the input format described at the top of fuzz_options.c; and, given a
-- second directory, the inputs of what the fuzzer found
-- (fuzz/regress/options/; spec/14-hostile_spec.lua makes the same calls).
--
--   make all
--   LUA_PATH='lua/?.lua;lua/?/init.lua' LUA_CPATH='build/?.so' \
--     lua5.4 fuzz/gen_options_corpus.lua fuzz/corpus/options fuzz/regress/options
--
-- The byte that picks a target is its index in the sorted list of public
-- functions, which this script computes the way the harness does: run it
-- again when a public function is added or removed (the old files still
-- run, but reach other functions). Strings and option names are written as
-- raw bytes, so the harness's dictionaries can change freely.
local etcd = require "etcd"

local dir = assert(arg[1], "usage: gen_options_corpus.lua <corpus directory> [<regress directory>]")
local regress_dir = arg[2]

-- the harness's target list: every public function, sorted by name
local targets = {}
-- not the scheduler's (fuzz_options.c says why)
local SCHED = { spawn = true, run = true, sleep = true, first = true, yield = true }
local function add(prefix, t)
  for name, f in pairs(t) do
    if type(f) == "function" and not name:find("^_") and not (prefix == "etcd." and SCHED[name]) then
      targets[#targets + 1] = prefix .. name
    end
  end
end
add("etcd.", etcd)
add("etcd.op.", etcd.op)
add("etcd.compare.", etcd.compare)
add("cli:", etcd.Client)
table.sort(targets)
local index = {}
for i, name in ipairs(targets) do index[name] = i - 1 end

-- ---------------------------------------------------------------------------
-- values, encoded for gen_value()

-- gen_value() reads values nested MAX_DEPTH (4) deep or deeper as scalars
-- only (a table there would be read as a scalar and the rest misread).
local MAX_DEPTH = 4

-- A value the harness makes: kind bytes, then `args` encoded one level down.
local Made = {}
local function made(bytes, args, scalar)
  return setmetatable({ bytes = bytes, args = args or {}, scalar = scalar }, Made)
end

local function byte(n) return string.char(n & 0xff) end

local enc

local function enc_string(s)
  if #s < 255 then return byte(8) .. byte(#s) .. s end
  if s == s:sub(1, 1):rep(#s) and #s <= 0xffff then -- one byte repeated
    return byte(10) .. s:sub(1, 1) .. byte(#s) .. byte(#s >> 8)
  end
  local n = #s - 255
  assert(n <= 0xffff, "string too long")
  return byte(8) .. byte(255) .. byte(n) .. byte(n >> 8) .. s
end

local function enc_table(t, depth)
  local n = #t
  local pairs_n = 0
  for _ in pairs(t) do pairs_n = pairs_n + 1 end
  assert(pairs_n <= 8, "at most 8 entries")
  if pairs_n == n then -- a list
    local out = { byte(12), byte(n) }
    for i = 1, n do out[#out + 1] = enc(t[i], depth + 1) end
    return table.concat(out)
  end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local out = { byte(14), byte(#keys) }
  for _, k in ipairs(keys) do
    -- key byte >= 224: the key is a value
    out[#out + 1] = byte(224) .. enc(k, depth + 1) .. enc(t[k], depth + 1)
  end
  return table.concat(out)
end

function enc(v, depth)
  local t = type(v)
  if (t == "table" and not (getmetatable(v) == Made and v.scalar)) and depth >= MAX_DEPTH then
    error("a table nested too deep for the harness (depth " .. depth .. ")")
  end
  if getmetatable(v) == Made then
    local out = { v.bytes }
    for i = 1, v.args.n or #v.args do out[#out + 1] = enc(v.args[i], depth + 1) end
    return table.concat(out)
  end
  if v == nil then return byte(0) end
  if t == "boolean" then return byte(v and 2 or 1) end
  if math.type(v) == "integer" then
    if v >= -128 and v <= 127 then return byte(3) .. byte(v) end
    return byte(4) .. string.pack("<i8", v)
  end
  if t == "number" then return byte(6) .. string.pack("<d", v) end
  if t == "string" then return enc_string(v) end
  if t == "table" then return enc_table(v, depth) end
  error("cannot encode a " .. t)
end

-- library objects, made by the harness
local OPS = { get = 0, put = 1, delete = 2, txn = 3 }
local NARGS = { get = 2, put = 3, delete = 2, txn = 1 }
local function op(kind, ...)
  local args = table.pack(...)
  args.n = NARGS[kind]
  return made(byte(19) .. byte(OPS[kind]), args)
end
local CMPS = { value = 0, version = 1, create_revision = 2, mod_revision = 3, lease = 4 }
local function cmp(kind, ...)
  local args = table.pack(...)
  args.n = 4
  return made(byte(20) .. byte(CMPS[kind]), args)
end
local NIL = made(byte(0), nil, true) -- nil where a table constructor would lose it
local CLI = made(byte(22) .. byte(0))
local CLOSED = made(byte(22) .. byte(1))
local function long_list(n, v) return made(byte(22) .. byte(6) .. byte(n - 1), { v, n = 1 }) end
local function holey(a, b) return made(byte(22) .. byte(7), { a, b, n = 2 }) end
local NAN, INF = 0 / 0, math.huge
local MAXI, MINI = math.maxinteger, math.mininteger

-- one call: { target, args..., closed = bool, self = value }
local function call(c)
  local name = c[1]
  local i = assert(index[name], "no target " .. name)
  local n = #c - 1
  assert(n <= 31)
  local flags = 2 | (n << 2)
  if c.closed then flags = flags | 1 end
  local out = { byte(i) }
  if c.self ~= nil then
    out[#out + 1] = byte(flags | 0x80)
    out[#out + 1] = enc(c.self, 0)
  else
    out[#out + 1] = byte(flags)
  end
  for j = 2, #c do out[#out + 1] = enc(c[j], 0) end
  return table.concat(out)
end

-- ---------------------------------------------------------------------------
-- the seeds: name -> calls (at most 8 per file)

local seeds = {
  ["kv-get"] = {
    { "cli:get", "foo", { prefix = true, limit = 10, sort_target = "mod", sort_order = "descend" } },
    { "cli:get_value", "foo", { revision = 3, serializable = true, timeout = 0.01 } },
    { "cli:get_value", "foo", { prefix = true } },
    { "cli:get", "a\0b\255", { range_end = "\255\255", keys_only = true, count_only = false } },
    { "cli:get", "", { from_key = true, revision = -1, serializable = true } },
    { "cli:get", "k", { limit = "5" } },
    { "cli:get", "k", { prefix = true, range_end = "z" } },
    { "cli:get", "k", { min_mod_revision = 2 ^ 53, max_create_revision = 1.5 } },
    { "cli:get", "k", { timeout = NAN } },
    { "cli:get", "k", { sort_target = "size" } },
  },
  ["kv-put"] = {
    { "cli:put", "k", "v", { lease = MAXI, prev_kv = true } },
    { "cli:put", "k", NIL, { ignore_value = true, ignore_lease = true } },
    { "cli:put", "k\0", "\255", { lease = -1 } },
    { "cli:put", 1, "v" },
    { "cli:put", "k", "v", { lease = 2 ^ 63 } },
    { "cli:put", "k", "v", { timeout = -1 } },
  },
  ["kv-delete"] = {
    { "cli:delete", "k", { prefix = true, prev_kv = true } },
    { "cli:delete", "\255", { from_key = true } },
    { "cli:delete", "b", { range_end = "a" } },
    { "cli:delete", NIL },
    { "cli:delete", "k", { prefix = 1 } },
  },
  ["kv-compact"] = {
    { "cli:compact", 5, { physical = true } },
    { "cli:compact", -1 },
    { "cli:compact", MINI },
    { "cli:compact", 1.5 },
    { "cli:compact", INF },
    { "cli:compact", "5" },
  },
  ["txn"] = {
    { "cli:txn", {
      compare = { cmp("value", "k", "=", "v"), cmp("version", "k", ">", 0, { prefix = true }) },
      success = { op("put", "k", "v2"), op("get", "k", { prefix = true }) },
      failure = { op("delete", "k", { prev_kv = true }) },
    }, { timeout = 1 } },
    { "cli:exec", op("txn", { success = { op("get", "k") } }) },
    { "cli:txn", { succes = {} } },
    { "cli:txn", { compare = { "k" } } },
    { "cli:txn", { success = holey(op("get", "a"), op("get", "b")) } },
    { "cli:txn", { success = long_list(129, op("get", "k")) } },
  },
  ["mirror"] = {
    { "etcd.mirror", CLI, "cfg/", { page_size = 10, keys_only = true, timeout = 0.01 } },
    { "etcd.mirror", CLOSED, "cfg/" },
    { "etcd.mirror", CLI, "cfg/", { page_size = 0 } },
    { "etcd.mirror", CLI, "", { decode = "x", progress_interval = -1 } },
    { "etcd.mirror", "cli", 1 },
  },
  ["exec-batch"] = {
    { "cli:exec", op("get", "k", { limit = 1 }) },
    { "cli:exec", { kind = "get", req = {} } },
    { "cli:batch", { op("put", "a", "1"), op("get", "a") }, { atomic = true } },
    { "cli:batch", { op("put", "a", "1"), "x" } },
    { "cli:batch", { op("get", "a"), x = 1 } },
    { "cli:batch", {}, { atomic = 1 } },
  },
  ["ops"] = {
    { "etcd.op.get", "k", { prefix = true, timeout = 1 } },
    { "etcd.op.put", "k", "v", { lease = 1.5 } },
    { "etcd.op.delete", "k", { from_key = true, range_end = "z" } },
    { "etcd.op.txn", { compare = {}, success = { op("put", "k", "v") }, failure = {} } },
    { "etcd.op.txn", "txn" },
    { "etcd.op.get", NIL },
    { "etcd.op.put", "k", NIL, { ignore_value = "yes" } },
  },
  ["compares"] = {
    { "etcd.compare.value", "k", "==", "v", { prefix = true } },
    { "etcd.compare.version", "k", "!=", NAN },
    { "etcd.compare.create_revision", "k", "<", MAXI, { range_end = "\0" } },
    { "etcd.compare.mod_revision", "k", "~=", 1 },
    { "etcd.compare.lease", "k", ">", -1.0, { prefix = true, range_end = "z" } },
    { "etcd.compare.value", "k", "=", 5 },
  },
  ["new"] = {
    { "etcd.new", { endpoints = { "127.0.0.1:1" }, dial_timeout = 0, timeout = 0.001 } },
    { "etcd.new", { endpoints = { "http://[::1]:1/", "localhost:1" }, dial_timeout = 0, namespace = "ns/" } },
    { "etcd.new", { endpoints = { "https://127.0.0.1:1" }, dial_timeout = 0, tls = { server_name = "x\0y" } } },
    { "etcd.new", { endpoints = { "127.0.0.1:1" }, dial_timeout = 0, user = "u" } },
    { "etcd.new", { endpoints = { "127.0.0.1:1" }, dial_timeout = 0, user = "u\0", password = "p" } },
    { "etcd.new", { endpoints = { "a\0b:1" }, dial_timeout = 0 } },
    { "etcd.new", { endpoints = { "127.0.0.1:1", x = 1 }, dial_timeout = 0 } },
    { "etcd.new", { endpoints = { "127.0.0.1:1" }, max_send_size = "100", auto_sync_interval = 1 } },
  },
  ["new-tls"] = {
    { "etcd.new", { endpoints = { "127.0.0.1:1" }, dial_timeout = 0,
                    tls = { ca = "/nonexistent/ca.pem", cert = "c", key = "k" } } },
    { "etcd.new", { endpoints = { "127.0.0.1:1" }, dial_timeout = 0,
                    tls = { ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n" } } },
    { "etcd.new", { endpoints = { "http://127.0.0.1:1" }, dial_timeout = 0, tls = {} } },
    { "etcd.new", { endpoints = { "127.0.0.1:1" }, dial_timeout = 0, tls = { ca = "." } } },
    { "etcd.new", { endpoints = long_list(65, "127.0.0.1:1"), dial_timeout = 0 } },
  },
  ["lease"] = {
    { "cli:grant", 10, { id = 5 } },
    { "cli:grant", -1, { id = -1 } },
    { "cli:revoke", MAXI },
    { "cli:time_to_live", 1, { keys = true } },
    { "cli:leases", { timeout = INF } },
    { "cli:keepalive_once", 0 },
    { "cli:keepalive", 1, { timeout = 0 } },
    { "cli:grant", NAN },
  },
  ["watch"] = {
    { "cli:watch", "k", { prefix = true, start_revision = 5, prev_kv = true, filters = { "noput", "nodelete" } } },
    { "cli:watch", "b", { range_end = "a" } },
    { "cli:watch", "k", { filters = { "noput", x = 1 } } },
    { "cli:watch", "k", { filters = { "put" }, fragment = true, progress_notify = 1 } },
    { "cli:watch", ("k"):rep(3000), { from_key = true } },
    { "cli:request_progress" },
  },
  ["cluster"] = {
    { "cli:member_list" },
    { "cli:member_add", { "http://127.0.0.1:2380" }, { is_learner = true } },
    { "cli:member_add", { "http://127.0.0.1:2380", x = 1 } },
    { "cli:member_add", holey("http://a:1", "http://b:1") },
    { "cli:member_update", -1, { "u\0" } },
    { "cli:member_remove", MAXI },
    { "cli:member_promote", 0 },
    { "cli:move_leader", 1.0 },
  },
  ["maintenance"] = {
    { "cli:status", "127.0.0.1:1" },
    { "cli:status", "http://127.0.0.1:1/" },
    { "cli:status", "127.0.0.1:2" },
    { "cli:defragment", "127.0.0.1:1", { timeout = 0 } },
    { "cli:hash_kv", "127.0.0.1:1", -1 },
    { "cli:alarm_list" },
    { "cli:alarm_disarm", { member_id = 1, alarm = "nospace" } },
    { "cli:alarm_disarm", { member_id = "1", alarm = "x" } },
  },
  ["maintenance-2"] = {
    { "cli:snapshot", "/nonexistent/dir/s.db" },
    { "cli:snapshot", "s\0.db", { endpoint = "127.0.0.1:2" } },
    { "cli:snapshot", "/dev/null/x", { endpoint = "http://127.0.0.1:1/", timeout = 0 } },
    { "cli:endpoint_status" },
    { "cli:endpoint_status", { timeout = -1 } },
    { "cli:endpoint_health", { timeout = 0.001 } },
    { "cli:sync" },
    { "cli:sync", { all = true } },
  },
  ["auth-users"] = {
    { "cli:auth_enable" },
    { "cli:auth_disable", { timeout = 1e300 } },
    { "cli:user_add", "u", "p" },
    { "cli:user_add", "u", "", { no_password = true } },
    { "cli:user_add", "u\0", "p" },
    { "cli:user_get", "\255" },
    { "cli:user_change_password", "u", "p\0" },
    { "cli:user_delete", "" },
  },
  ["auth-roles"] = {
    { "cli:user_list" },
    { "cli:user_grant_role", "u", "r" },
    { "cli:user_revoke_role", "u", "r\0" },
    { "cli:role_add", "r" },
    { "cli:role_get", "r\0" },
    { "cli:role_list" },
    { "cli:role_delete", 1 },
  },
  ["auth-perms"] = {
    { "cli:role_grant_permission", "r", "k", NIL, "readwrite", { prefix = true } },
    { "cli:role_grant_permission", "r", "k", "z", "READ" },
    { "cli:role_grant_permission", "r", "k", "z", "write", { from_key = true } },
    { "cli:role_grant_permission", "r", "k", NIL, 1 },
    { "cli:role_revoke_permission", "r", "k", NIL, { prefix = true, from_key = true } },
    { "cli:role_revoke_permission", "r\0", "", "" },
  },
  ["client-misc"] = {
    { "cli:endpoints" },
    { "cli:pollfd" },
    { "cli:events" },
    { "cli:timeout" },
    { "etcd.prefix_end", "a\255" },
    { "etcd.prefix_end", "\255\255" },
    { "etcd.prefix_end", NIL },
    { "etcd.id", "0x694d8a1b2c3d4e5f" },
    { "etcd.id", "-9223372036854775808" },
    { "etcd.id", "18446744073709551616" },
    { "etcd.id", 1.5 },
    { "etcd.id_hex", "18446744073709551615", true },
    { "etcd.id_hex", -1 },
    { "etcd.id_hex", "0x" },
    { "cli:get", "k", self = "k" },
    { "cli:put", "k", "v", self = CLOSED },
    { "cli:close", closed = true },
  },
  ["closed-client"] = {
    { "cli:get", "k", closed = true },
    { "cli:put", "k", "v", closed = true },
    { "cli:watch", "k", closed = true },
    { "cli:keepalive", 1, closed = true },
    { "cli:keepalive_once", 1, closed = true },
    { "cli:status", "127.0.0.1:1", closed = true },
    { "cli:move_leader", 1, closed = true },
    { "cli:request_progress", closed = true },
  },
  ["bad-self"] = {
    { "cli:get", "k", self = {} },
    { "cli:txn", {}, self = CLI },
    { "cli:watch", "k", self = 1 },
    { "cli:grant", 1, self = NIL },
    { "cli:user_add", "u", "p", self = "cli" },
    { "cli:close", self = false },
  },
}

-- What the fuzzer found, one input each (the fix is named in the spec).
local regress = {
  -- raised "attempt to get length of a nil value": no argument check
  ["prefix-end-of-nil"] = { { "etcd.prefix_end", NIL }, { "etcd.prefix_end", 1 } },
  -- raised "etcd.core: ... string contains a NUL byte" from the encoder
  ["auth-name-with-nul"] = { { "cli:role_delete", "r\0" }, { "cli:role_get", "\0" }, { "cli:role_add", "a\0b" },
                             { "cli:user_get", "u\0" } },
  -- raised "etcd.core: field 'peerURLs' ...: hole at index 2"
  ["member-add-list-with-hole"] = { { "cli:member_add", holey("http://a:1", "http://b:1") } },
  -- raised "bad argument #1 to '_unary'" (a forged op: outside the strict
  -- invariant now, but it must still raise cleanly)
  ["exec-forged-op"] = { { "cli:exec", made(byte(22) .. byte(4) .. byte(0)) } },
  -- a false alarm of the harness: the user's text quoted in a check's
  -- message held "attempt to "
  ["quoted-user-text"] = { { "cli:status", "attempt to index" }, { "cli:get", "k", { ["attempt to x"] = 1 } } },
  -- cli:snapshot asked the endpoint's status first with no deadline of its
  -- own: 60 s on the harness's dead endpoint with timeout 0.001 (the input
  -- the fuzzer found was raw bytes; written from here, it keeps reaching
  -- cli:snapshot when public functions are added)
  ["snapshot-status-waited-60s"] = { { "cli:snapshot", "snap.db", { timeout = 0.001 } } },
}

-- Every target gets a plain call of its own too, so that each is reached
-- even when the hand-written seeds above miss it.
local covered = {}
for _, calls in pairs(seeds) do
  for _, c in ipairs(calls) do covered[c[1]] = true end
end
for _, name in ipairs(targets) do
  assert(covered[name], "no seed reaches " .. name)
end

os.execute("mkdir -p '" .. dir .. "'")
local names = {}
for name in pairs(seeds) do names[#names + 1] = name end
table.sort(names)
-- files of up to 4 calls: <group>-1, <group>-2, ...
local PER_FILE = 4
local total = 0
for _, name in ipairs(names) do
  local calls = seeds[name]
  for first = 1, #calls, PER_FILE do
    local bytes = {}
    for i = first, math.min(first + PER_FILE - 1, #calls) do bytes[#bytes + 1] = call(calls[i]) end
    local f = assert(io.open(("%s/%s-%d"):format(dir, name, (first - 1) // PER_FILE + 1), "wb"))
    f:write(table.concat(bytes))
    f:close()
    total = total + 1
  end
end
io.stderr:write(("%d seeds for %d targets written to %s\n"):format(total, #targets, dir))

if regress_dir then
  os.execute("mkdir -p '" .. regress_dir .. "'")
  for name, calls in pairs(regress) do
    local bytes = {}
    for i, c in ipairs(calls) do bytes[i] = call(c) end
    local f = assert(io.open(("%s/%s"):format(regress_dir, name), "wb"))
    f:write(table.concat(bytes))
    f:close()
  end
end
