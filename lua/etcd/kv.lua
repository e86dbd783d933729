--- KV: get, put, delete, compact; the request builders shared with etcd.op,
-- and the namespace handling (a prefix added to every key sent and removed
-- from every key returned).
local check = require "etcd.check"

local M = {}

local SORT_TARGET = {
  key = "KEY", version = "VERSION", create = "CREATE", create_revision = "CREATE",
  mod = "MOD", mod_revision = "MOD", value = "VALUE",
}
local SORT_ORDER = { none = "NONE", ascend = "ASCEND", descend = "DESCEND" }

-- Options of each operation, as accepted by etcd.op.* (no timeout there).
M.GET_OPTS = {
  prefix = "boolean", range_end = "string", from_key = "boolean",
  limit = "non-negative integer", revision = "integer",
  sort_target = SORT_TARGET, sort_order = SORT_ORDER,
  serializable = "boolean", keys_only = "boolean", count_only = "boolean",
  min_mod_revision = "integer", max_mod_revision = "integer",
  min_create_revision = "integer", max_create_revision = "integer",
}
M.PUT_OPTS = { lease = "id", prev_kv = "boolean", ignore_value = "boolean", ignore_lease = "boolean" }
M.DELETE_OPTS = { prefix = "boolean", range_end = "string", from_key = "boolean", prev_kv = "boolean" }

--- The end of the range of keys that start with `key` (etcd's
-- GetPrefixRangeEnd): the key with its last byte below 0xff incremented and
-- what follows dropped; "\0" (no end) when every byte is 0xff.
function M.prefix_end(key)
  for i = #key, 1, -1 do
    local b = key:byte(i)
    if b < 0xff then return key:sub(1, i - 1) .. string.char(b + 1) end
  end
  return "\0"
end

local function with_timeout(spec)
  local t = { timeout = "seconds" }
  for k, v in pairs(spec) do t[k] = v end
  return t
end
M.GET_CALL_OPTS = with_timeout(M.GET_OPTS)
M.PUT_CALL_OPTS = with_timeout(M.PUT_OPTS)
M.DELETE_CALL_OPTS = with_timeout(M.DELETE_OPTS)
M.COMPACT_CALL_OPTS = { physical = "boolean", timeout = "seconds" }

-- key and range_end from the range options
local function range_of(key, o, fname, level)
  local n = (o.prefix and 1 or 0) + (o.range_end and 1 or 0) + (o.from_key and 1 or 0)
  if n > 1 then
    check.fail(fname .. ": options 'prefix', 'range_end' and 'from_key' exclude each other", level + 1)
  end
  if o.prefix then
    if key == "" then return "\0", "\0" end -- every key
    return key, M.prefix_end(key)
  elseif o.from_key then
    if key == "" then key = "\0" end
    return key, "\0"
  end
  return key, o.range_end
end

--- RangeRequest for key and checked options.
function M.range_request(key, o, fname, level)
  local k, e = range_of(key, o, fname, level + 1)
  local r = {
    key = k, range_end = e, limit = o.limit, revision = o.revision,
    serializable = o.serializable, keys_only = o.keys_only, count_only = o.count_only,
    min_mod_revision = o.min_mod_revision, max_mod_revision = o.max_mod_revision,
    min_create_revision = o.min_create_revision, max_create_revision = o.max_create_revision,
  }
  if o.sort_target or o.sort_order then
    r.sort_target = o.sort_target or "KEY"
    r.sort_order = o.sort_order or "ASCEND"
  end
  return r
end

function M.put_request(key, value, o)
  return { key = key, value = value, lease = o.lease, prev_kv = o.prev_kv,
           ignore_value = o.ignore_value, ignore_lease = o.ignore_lease }
end

function M.delete_request(key, o, fname, level)
  local k, e = range_of(key, o, fname, level + 1)
  return { key = k, range_end = e, prev_kv = o.prev_kv }
end

--- Check the positional arguments of put (value may be nil with ignore_value).
function M.put_args(key, value, o, fname, level)
  check.arg(key, "string", 1, "key", fname, level + 1)
  if value == nil and o.ignore_value then value = "" end
  check.arg(value, "string", 2, "value", fname, level + 1)
  return key, value
end

-- ---------------------------------------------------------------------------
-- namespace

--- Namespaced key and range end, like etcd's Go namespace package: the range
-- end "\0" (to the end of the keyspace) becomes the end of the namespace.
function M.ns_range(ns, key, range_end)
  key = ns .. key
  if range_end == "\0" then
    range_end = M.prefix_end(ns)
  elseif range_end and range_end ~= "" then
    range_end = ns .. range_end
  end
  return key, range_end
end

-- (Result keys lose the namespace while the response is decoded:
-- pbconv_unpack_ns, given the namespace by rpc.once.)

return M
