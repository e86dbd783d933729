--- One source for Lua 5.4, 5.3, 5.1 and LuaJIT: what the library's modules
-- use that the older ones lack (the C side is src/lua/compat.h).
-- Internal module: not part of the public API.
local M = {}

M.unpack = table.unpack or rawget(_G, "unpack") -- (5.1's global)
M.pack = table.pack or function(...) return { n = select("#", ...), ... } end

--- table.move, for the non-overlapping moves the library makes.
M.move = table.move or function(a1, f, e, t, a2)
  a2 = a2 or a1
  for i = 0, e - f do a2[t + i] = a1[f + i] end
  return a2
end

-- Integers are 64-bit on 5.3+; elsewhere numbers are doubles, exact below
-- 2^53, and ids are decimal strings (etcd.id).
if math.type then
  M.type = math.type
  M.tointeger = math.tointeger
  M.maxinteger = math.maxinteger
else
  local floor, LIMIT = math.floor, 2 ^ 53
  --- math.type where there are only doubles: an integral value a double
  -- holds exactly (|v| <= 2^53) is an "integer"; any other number a "float".
  function M.type(v)
    if type(v) ~= "number" then return nil end
    if v == floor(v) and v <= LIMIT and v >= -LIMIT then return "integer" end
    return "float"
  end
  function M.tointeger(v)
    if M.type(v) == "integer" then return v end
    return nil
  end
  M.maxinteger = LIMIT
end

local running, isyieldable = coroutine.running, coroutine.isyieldable
local create, resume, status, yield = coroutine.create, coroutine.resume, coroutine.status, coroutine.yield
local MAIN = {} -- stands for the main thread where coroutine.running gives nil

-- Can a coroutine yield from inside pcall? 5.2+ and LuaJIT: yes; 5.1: no.
-- (Known, not probed: inside nginx a coroutine resumed while a module loads,
-- in require, makes OpenResty's coroutine.resume yield across that C call.)
local YIELD_ACROSS_PCALL = rawget(_G, "jit") ~= nil or _VERSION ~= "Lua 5.1"

-- Where it cannot (5.1): pcall runs f in a coroutine of its own and passes
-- its yields on to the coroutine that called pcall (as coxpcall does); the
-- coroutine that called pcall is its "outer" one, which M.running reports,
-- so that the library's drivers still know whose wait it is.
local outer = setmetatable({}, { __mode = "k" })

--- coroutine.running as 5.2+ has it: the running coroutine (a stand-in
-- object for the main thread on 5.1) and whether it is the main one.
function M.running()
  local co, main = running()
  if co == nil then return MAIN, true end
  while outer[co] do co = outer[co] end -- (only 5.1's pcall fills `outer`)
  if co == MAIN then return MAIN, true end
  return co, main == true
end

--- Set by etcd.wait on 5.1: called where M.pcall makes its coroutine, its
-- value is what M.pinned() then gives inside that coroutine (the waiting
-- driver of the code that called pcall: inside the new coroutine, cqueues
-- would no longer recognise its own).
M.pin = nil
--- On 5.1, the value M.pin gave for the running pcall coroutine (nil
-- elsewhere); nil itself where coroutines can yield across pcall.
M.pinned = nil

if YIELD_ACROSS_PCALL then
  M.pcall = pcall
else
  local pins = setmetatable({}, { __mode = "k" })
  function M.pinned()
    local co = running()
    return co and pins[co]
  end
  local function pass(co, ok, ...)
    if not ok then return false, ... end
    if status(co) == "dead" then return true, ... end
    return pass(co, resume(co, yield(...)))
  end
  --- pcall, through which a coroutine can yield.
  function M.pcall(f, ...)
    local pin = M.pin and M.pin()
    local co = create(function(...) return f(...) end) -- (5.1's create takes no C function)
    outer[co] = running() or MAIN
    pins[co] = pin
    return pass(co, resume(co, ...))
  end
end

--- Whether coroutine `co` (as M.running gives it) has not ended.
function M.alive(co)
  return co == MAIN or coroutine.status(co) ~= "dead"
end

--- Whether the running code can yield. 5.1 has no way to tell a C call
-- boundary: there, any coroutine but the main thread is taken as able.
M.isyieldable = isyieldable or function() return not select(2, M.running()) end

return M
