--- Transactions, operations and batches: etcd.compare.*, etcd.op.*,
-- cli:txn, cli:exec (Go's Do), cli:batch.
-- @module etcd.txn
local core = require "etcd.core"
local check = require "etcd.check"
local compat = require "etcd.compat"
local kv = require "etcd.kv"

local M = {}

-- ---------------------------------------------------------------------------
-- etcd.op

local Op = { __name = "etcd.op" }
Op.__index = Op
M.Op = Op

-- method handles, resolved once (core.method): no name lookup per call
local KIND_METHOD = {
  get = core.method("KV.Range"), put = core.method("KV.Put"),
  delete = core.method("KV.DeleteRange"), txn = core.method("KV.Txn"),
}
local KIND_ONEOF = { get = "request_range", put = "request_put", delete = "request_delete_range", txn = "request_txn" }
local RESP_KIND = {
  response_range = "get", response_put = "put", response_delete_range = "delete", response_txn = "txn",
}
M.KIND_METHOD = KIND_METHOD

Op.__tostring = function(op) return ("etcd.op.%s(%q)"):format(op.kind, op.req.key or "") end

local function new_op(kind, req) return setmetatable({ kind = kind, req = req }, Op) end

-- Is `x` an op made by etcd.op.* (not merely a table with its metatable)?
function M.is_op(x)
  return getmetatable(x) == Op and KIND_METHOD[rawget(x, "kind")] ~= nil and type(rawget(x, "req")) == "table"
end
local is_op = M.is_op

-- Transactions nest at most this deep, the outermost included: the answer to
-- a deeper one would nest deeper than the 64 protobuf levels the client
-- decodes (src/lua/pbconv.h), though etcd would apply it.
M.MAX_TXN_DEPTH = 31

local op = {}
M.op = op

--- etcd.op.get(key, opts): a get for cli:txn, cli:exec and cli:batch (the
-- options of cli:get but `timeout`).
function op.get(key, opts)
  check.arg(key, "string", 1, "key", "etcd.op.get", 2)
  local o = check.options(opts, kv.GET_OPTS, "etcd.op.get", 2)
  return new_op("get", kv.range_request(key, o, "etcd.op.get", 2))
end

--- etcd.op.put(key, value, opts): a put (the options of cli:put but `timeout`).
function op.put(key, value, opts)
  local o = check.options(opts, kv.PUT_OPTS, "etcd.op.put", 2)
  key, value = kv.put_args(key, value, o, "etcd.op.put", 2)
  return new_op("put", kv.put_request(key, value, o))
end

--- etcd.op.delete(key, opts): a delete (the options of cli:delete but `timeout`).
function op.delete(key, opts)
  check.arg(key, "string", 1, "key", "etcd.op.delete", 2)
  local o = check.options(opts, kv.DELETE_OPTS, "etcd.op.delete", 2)
  return new_op("delete", kv.delete_request(key, o, "etcd.op.delete", 2))
end

-- ---------------------------------------------------------------------------
-- etcd.compare

local Compare = { __name = "etcd.compare" }
Compare.__index = Compare
M.Compare = Compare

local RESULT = { ["="] = "EQUAL", ["=="] = "EQUAL", ["!="] = "NOT_EQUAL", [">"] = "GREATER", ["<"] = "LESS" }
local CMP_OPTS = { prefix = "boolean", range_end = "string" }

local compare = {}
M.compare = compare

local function comparer(name, target, field, kind)
  compare[name] = function(key, operator, x, opts)
    local fname = "etcd.compare." .. name
    check.arg(key, "string", 1, "key", fname, 2)
    local result = check.value(operator, RESULT, fname .. ": bad argument #2 (operator)", 2)
    x = check.arg(x, kind, 3, field, fname, 2)
    local o = check.options(opts, CMP_OPTS, fname, 2)
    if o.prefix and o.range_end then
      check.fail(fname .. ": options 'prefix' and 'range_end' exclude each other", 2)
    end
    local c = { key = key, target = target, result = result, [field] = x }
    if o.prefix then
      if key == "" then c.key, c.range_end = "\0", "\0" else c.range_end = kv.prefix_end(key) end
    else
      c.range_end = o.range_end
    end
    return setmetatable(c, Compare)
  end
end
--- etcd.compare.value(key, operator, value, opts): compare the key's value;
-- `operator` is "=" (or "=="), "!=", ">" or "<"; opts: `prefix` or `range_end`
-- to compare every key of a range.
-- @function compare.value

--- etcd.compare.version(key, operator, version, opts)
-- @function compare.version

--- etcd.compare.create_revision(key, operator, revision, opts)
-- @function compare.create_revision

--- etcd.compare.mod_revision(key, operator, revision, opts)
-- @function compare.mod_revision

--- etcd.compare.lease(key, operator, lease_id, opts)
-- @function compare.lease

comparer("value", "VALUE", "value", "string")
comparer("version", "VERSION", "version", "integer")
comparer("create_revision", "CREATE", "create_revision", "integer")
comparer("mod_revision", "MOD", "mod_revision", "integer")
comparer("lease", "LEASE", "lease", "id")

-- ---------------------------------------------------------------------------
-- txn

-- Check `{ compare =, success =, failure = }` and build a TxnRequest.
function M.txn_request(t, fname, level)
  if type(t) ~= "table" or getmetatable(t) ~= nil then
    check.fail(("%s: bad argument #1 (table with compare, success, failure expected, got %s)")
      :format(fname, type(t)), level + 1)
  end
  for k in pairs(t) do
    if k ~= "compare" and k ~= "success" and k ~= "failure" then
      check.fail(("%s: unknown field %s (compare, success, failure expected)"):format(fname,
        type(k) == "string" and check.name(k) or ("[%s]"):format(type(k) == "number" and tostring(k) or type(k))),
        level + 1)
    end
  end
  local req = { compare = {}, success = {}, failure = {} }
  local depth = 1 -- of this txn: 1 + the deepest txn among its ops
  for _, part in ipairs { "compare", "success", "failure" } do
    local list = t[part]
    if list ~= nil then
      if type(list) ~= "table" then
        check.fail(("%s: '%s' must be a list, got %s"):format(fname, part, type(list)), level + 1)
      end
      local n = #list
      for k in pairs(list) do
        if compat.type(k) ~= "integer" or k < 1 or k > n then
          check.fail(("%s: '%s' must be a list (found key %s)"):format(fname, part, tostring(k)), level + 1)
        end
      end
      for i = 1, n do
        local x = list[i]
        if part == "compare" then
          if getmetatable(x) ~= Compare then
            check.fail(("%s: compare[%d] must be made by etcd.compare.*"):format(fname, i), level + 1)
          end
          req.compare[i] = x
        else
          if not is_op(x) then
            check.fail(("%s: %s[%d] must be made by etcd.op.*"):format(fname, part, i), level + 1)
          end
          if x.kind == "txn" then
            local d = (compat.tointeger(rawget(x, "depth")) or M.MAX_TXN_DEPTH) + 1
            if d > M.MAX_TXN_DEPTH then
              check.fail(("%s: transactions nested deeper than %d levels (%s[%d])"):format(fname,
                M.MAX_TXN_DEPTH, part, i), level + 1)
            end
            if d > depth then depth = d end
          end
          req[part][i] = { [KIND_ONEOF[x.kind]] = x.req, _kind = x.kind }
        end
      end
    end
  end
  return req, depth
end

--- etcd.op.txn{ compare =, success =, failure = }: a transaction nested in
-- another (etcd 3.3 and later), at most 31 levels deep.
function op.txn(t)
  local req, depth = M.txn_request(t, "etcd.op.txn", 2)
  local o = new_op("txn", req)
  o.depth = depth
  return o
end

-- ---------------------------------------------------------------------------
-- sending an op: namespace, wire request, result shaping

-- A copy of the request ready for the wire, with the namespace applied.
local function wire(ns, kind, req)
  if kind == "txn" then
    local out = { compare = {}, success = {}, failure = {} }
    for i, c in ipairs(req.compare) do
      local w = {}
      for k, v in pairs(c) do w[k] = v end
      if ns ~= "" then w.key, w.range_end = kv.ns_range(ns, c.key, c.range_end) end
      out.compare[i] = w
    end
    for _, part in ipairs { "success", "failure" } do
      for i, rop in ipairs(req[part]) do
        local k = rop._kind
        out[part][i] = { [KIND_ONEOF[k]] = wire(ns, k, rop[KIND_ONEOF[k]]) }
      end
    end
    return out
  end
  if ns == "" then return req end
  local w = {}
  for k, v in pairs(req) do w[k] = v end
  w.key, w.range_end = kv.ns_range(ns, req.key, req.range_end)
  return w
end
M.wire = wire

-- The result of a txn: each response shaped like the matching method's
-- result. (Keys come without the namespace already: the decoder took it
-- off, src/lua/pbconv.c pbconv_unpack_ns.)
local function shape(kind, res)
  if kind == "txn" then
    for i, r in ipairs(res.responses) do
      local field, inner = next(r)
      if field then res.responses[i] = shape(RESP_KIND[field], inner) end
    end
  end
  return res
end
M.shape = shape

return M
