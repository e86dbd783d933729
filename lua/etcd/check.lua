--- Argument and option checking: misuse raises, naming the argument or option,
-- at the level of the code that called the public method.
local compat = require "etcd.compat"
local core = require "etcd.core"

local M = {}
local mtype, tointeger = compat.type, compat.tointeger

local function typename(v)
  local t = type(v)
  if t == "number" then return mtype(v) end
  return t
end

--- An option or field name for a message: 'name', or "quoted" with escapes
-- (and cut short) when it is no plain identifier.
function M.name(k)
  if type(k) ~= "string" then return typename(k) end
  if k:match("^[%a_][%w_]*$") and #k <= 64 then return "'" .. k .. "'" end
  return ("%q"):format(#k > 64 and k:sub(1, 64) .. "..." or k)
end

--- Raise `msg` at the public caller's level (`level` counted from the caller of
-- this module's function, as in `error`).
function M.fail(msg, level)
  error(msg, level + 1)
end

local checkers = {
  boolean = function(v) return type(v) == "boolean" end,
  string = function(v) return type(v) == "string" end,
  -- what etcd's protobuf `string` fields (names, passwords, URLs) can carry:
  -- the C core hands them on as C strings
  text = function(v) return type(v) == "string" and not v:find("\0", 1, true) end,
  table = function(v) return type(v) == "table" end,
  ["function"] = function(v) return type(v) == "function" end,
  integer = function(v) return type(v) == "number" and tointeger(v) ~= nil end,
  -- a lease, member or cluster id: an integer, or a decimal or "0x" string
  -- (what ids are on 5.1/LuaJIT: etcd.id)
  id = function(v) return core.id(v) ~= nil end,
  -- non-negative seconds, not NaN
  seconds = function(v) return type(v) == "number" and v == v and v >= 0 end,
  -- (math.tointeger alone would take the string "5" too)
  ["non-negative integer"] = function(v)
    local i = type(v) == "number" and tointeger(v)
    return i and i >= 0
  end,
  -- a message size limit gRPC can take (a C int); 0: the default
  size = function(v)
    local i = type(v) == "number" and tointeger(v)
    return i and i >= 0 and i <= 0x7fffffff
  end,
}
M.checkers = checkers

-- What a checked value of `kind` becomes: integers as integers, ids as this
-- Lua's ids.
local INTEGRAL = { integer = tointeger, ["non-negative integer"] = tointeger, size = tointeger, id = core.id }

--- Check a value against a kind name (a key of `checkers`) or an enum table
-- (accepted names -> wire value). Returns the normalised value or raises.
function M.value(v, kind, what, level)
  if type(kind) == "table" then
    local w = nil
    if type(v) == "string" then w = kind[v:lower()] end
    if w == nil then
      local names = {}
      for k in pairs(kind) do names[#names + 1] = ("%q"):format(k) end
      table.sort(names)
      error(("%s: expected one of %s, got %s"):format(what, table.concat(names, ", "),
        type(v) == "string" and ("%q"):format(v) or typename(v)), level + 1)
    end
    return w
  end
  if not checkers[kind](v) then
    local got = typename(v)
    if kind == "seconds" and type(v) == "number" then got = tostring(v) end
    local want = kind == "seconds" and "non-negative number of seconds"
      or kind == "size" and "size in bytes (0 to 2^31-1)"
      or kind == "id" and "id (an integer, or a decimal or 0x string)"
      or kind == "text" and (type(v) == "string" and "string without NUL bytes" or "string") or kind
    if kind == "text" and type(v) == "string" then got = "a string with a NUL byte" end
    if (kind == "size" or kind == "non-negative integer") and type(v) == "number" then got = tostring(v) end
    error(("%s: %s expected, got %s"):format(what, want, got), level + 1)
  end
  local norm = INTEGRAL[kind]
  if norm then return norm(v) end
  return v
end

--- Check an options table against `spec` (option name -> kind). `nil` gives an
-- empty table. Unknown names raise: a typo never silently changes a query.
function M.options(opts, spec, fname, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" or getmetatable(opts) ~= nil then
    error(("%s: options must be a plain table, got %s"):format(fname, typename(opts)), level + 1)
  end
  local out = {}
  for k, v in pairs(opts) do
    if type(k) ~= "string" then
      error(("%s: option names must be strings, got %s"):format(fname, typename(k)), level + 1)
    end
    local kind = spec[k]
    if kind == nil then
      error(("%s: unknown option %s"):format(fname, M.name(k)), level + 1)
    end
    -- the message is made only for a value that fails
    local c = checkers[kind]
    if c and c(v) then
      local norm = INTEGRAL[kind]
      if norm then v = norm(v) end
      out[k] = v
    else
      out[k] = M.value(v, kind, ("%s: option %s"):format(fname, M.name(k)), level + 1)
    end
  end
  return out
end

--- Check that `t` is a plain list (keys 1..#t only); `what` names it.
function M.list(t, what, level)
  if type(t) ~= "table" or getmetatable(t) ~= nil then
    error(("%s: list expected, got %s"):format(what, typename(t)), level + 1)
  end
  local n, count = #t, 0
  for k in pairs(t) do
    if mtype(k) ~= "integer" or k < 1 or k > n then
      error(("%s: list expected (found key %s)"):format(what,
        type(k) == "string" and ("%q"):format(#k > 64 and k:sub(1, 64) .. "..." or k)
        or type(k) == "number" and tostring(k) or typename(k)), level + 1)
    end
    count = count + 1
  end
  if count ~= n then
    for i = 1, n do
      if t[i] == nil then error(("%s: list expected (found a hole at %d)"):format(what, i), level + 1) end
    end
  end
  return t
end

--- Check the object a method was called on (`cli.get(...)` instead of
-- `cli:get(...)` passes the first argument as self).
function M.self(v, mt, fname, level)
  -- __valid: what a real object has and a forged one (setmetatable({}, mt)) lacks
  if getmetatable(v) ~= mt or (mt.__valid and not mt.__valid(v)) then
    error(("%s: bad self (%s expected, got %s: call it as obj:%s(...))"):format(fname, mt.__name, typename(v),
      fname:match("[%w_]+$")), level + 1)
  end
end

--- Check positional argument #n (`name`) of function `fname`: an object of
-- class `mt` (a real one: its __valid, if any, agrees).
function M.object(v, mt, n, name, fname, level)
  if getmetatable(v) ~= mt or (mt.__valid and not mt.__valid(v)) then
    local vmt = type(v) == "table" and getmetatable(v)
    error(("%s: bad argument #%d (%s): %s expected, got %s"):format(fname, n, name, mt.__name,
      vmt and vmt.__name or type(v)), level + 1)
  end
end

--- Check a positional argument.
function M.arg(v, kind, n, name, fname, level)
  -- the message is made only for a value that fails
  local c = checkers[kind]
  if c and c(v) then
    local norm = INTEGRAL[kind]
    if norm then return norm(v) end
    return v
  end
  local out = M.value(v, kind, ("%s: bad argument #%d (%s)"):format(fname, n, name), level + 1)
  return out -- not a tail call: `level` counts this frame
end

return M
