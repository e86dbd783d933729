--- The one place where Lua waits for the C core (docs/DESIGN.md, "Waiting").
--
-- Every blocking method is a *start* (C, returns at once with an object that
-- has a token) followed by `wait.loop`, which looks at the object, and while
-- it has nothing to tell, parks until the object's token is reaped from its
-- client's ready list, or the deadline passes. How a wait parks is the
-- *driver*'s business, chosen by who is running:
--
--   * a coroutine started by etcd.spawn      -> the built-in scheduler (etcd.sched)
--   * a coroutine started by etcd.luv.spawn  -> luv's loop (etcd.luv)
--   * a coroutine run by a cqueues controller -> cqueues (etcd.cqueues)
--   * nginx code in a phase that can yield   -> nginx (etcd.ngx)
--   * anything else (the main thread, a plain coroutine) -> block the thread
--
-- Whoever reaps a client's ready list (`wait.dispatch`) wakes the waiters of
-- exactly those tokens, whatever their driver: one implementation of waiting,
-- several drivers.
local core = require "etcd.core"
local compat = require "etcd.compat"
local pcall = compat.pcall -- (5.1: one a coroutine can yield through)

local M = {}

local now = core.now
local running, isyieldable = compat.running, compat.isyieldable
local pinned = compat.pinned
M.now = now

--- Returned by `wait.loop` when the deadline passed.
M.TIMEOUT = setmetatable({}, { __tostring = function() return "etcd.wait.TIMEOUT" end })

-- token -> the record of the waiter parked on it, or a list of records when
-- several wait on one token (a session's keep-alive, waited on by each of its
-- mutexes and elections). A record is a table { cc =, co =, wake =
-- function(rec, why) } made by `wait.park`; its driver sets `wake`. A list
-- has no `wake`. One record may be parked on several tokens (wait.loop with a
-- list of tokens); the drivers ignore a record woken twice.
local waiters = {}
M._waiters = waiters

local function add_waiter(tok, rec)
  local cur = waiters[tok]
  if cur == nil then
    waiters[tok] = rec
  elseif cur.wake then
    -- (a coroutine abandoned while parked, e.g. never resumed, is no waiter)
    if coroutine.status(cur.co) == "dead" then waiters[tok] = rec else waiters[tok] = { cur, rec } end
  else
    cur[#cur + 1] = rec
  end
end

local function del_waiter(tok, rec)
  local cur = waiters[tok]
  if cur == rec then
    waiters[tok] = nil
  elseif cur and not cur.wake then
    for i = #cur, 1, -1 do
      if cur[i] == rec then table.remove(cur, i) end
    end
    if cur[1] == nil then waiters[tok] = nil end
  end
end

-- Wake the waiter (or the list of waiters) taken off a token.
local function wake(entry)
  if entry.wake then return entry:wake("ready") end
  for i = 1, #entry do entry[i]:wake("ready") end
end

-- Drivers by coroutine (weak keys): etcd.spawn and etcd.luv.spawn register
-- theirs. cqueues is recognised by asking it.
local owner = setmetatable({}, { __mode = "k" })
M.owner = owner

-- ---------------------------------------------------------------------------
-- reaping

local function wake_all_of(cc)
  local list = {}
  for tok, entry in pairs(waiters) do
    if (entry.cc or entry[1].cc) == cc then list[#list + 1] = tok end
  end
  for _, tok in ipairs(list) do
    local entry = waiters[tok]
    waiters[tok] = nil
    wake(entry)
  end
end

--- Reap the tokens made ready on client `cc` (an etcd.core client) and wake
-- their waiters. Safe to call from anywhere, any number of times: a reap with
-- nothing ready costs one read() that finds the eventfd empty.
local spare = {} -- dispatch's buffer, lent to one dispatch at a time
function M.dispatch(cc)
  local buf = spare or {}
  spare = nil
  local n = cc:_reap(buf)
  for i = 1, n do
    local tok = buf[i]
    if tok == 0 then
      wake_all_of(cc)
    else
      local entry = waiters[tok]
      if entry then
        waiters[tok] = nil
        wake(entry)
      end
    end
  end
  spare = buf
  return n
end

-- ---------------------------------------------------------------------------
-- the blocking driver: the thread sleeps in poll() on the client's eventfd

local blocking = { name = "block" }
M.blocking = blocking

function blocking.park(_, cc, dl)
  if not cc then
    -- A Lua event (a coroutine's end, a login in flight) can only be signalled
    -- by coroutines of the built-in scheduler: let them run one round.
    return require("etcd.sched").step(dl)
  end
  local left = dl and dl - now()
  if left and left < 0 then left = 0 end
  local r = cc:_wait(left)
  M.dispatch(cc)
  if r == false then return "timeout" end
  return "ready"
end

local function noop() end

-- Inside nginx (OpenResty), the nginx driver.
local ngxd = rawget(_G, "ngx") and require "etcd.ngx"
M.ngx = ngxd

--- The driver for the running coroutine.
function M.driver()
  if pinned then
    local d = pinned() -- (5.1: inside the library's own pcall)
    if d then return d end
  end
  local co, main = running()
  -- where yielding is impossible (the main thread, a __close run by
  -- coroutine.close, a C function in between) a wait blocks
  if main or not isyieldable() then return blocking end
  local d = owner[co]
  if d then return d end
  if ngxd and ngxd.can_yield() then return ngxd end
  local cq = package.loaded.cqueues
  if cq and cq.running then
    local controller, inside = cq.running()
    if controller and inside then return require "etcd.cqueues" end
  end
  return blocking
end

-- ---------------------------------------------------------------------------
-- waiting

--- Park once: until `tok` (a token of client `cc`, or a list of tokens of
-- it) is reaped, or `dl` (absolute, wait.now() seconds; nil: none) passes.
-- Returns "ready" or "timeout"; either way the caller looks again. Several
-- coroutines may park on one token: each is woken.
function M.park(cc, tok, dl)
  local d = M.driver()
  local rec = { cc = cc, co = running(), wake = noop }
  local many = type(tok) == "table"
  if many then
    for i = 1, #tok do
      if tok[i] ~= 0 then add_waiter(tok[i], rec) end
    end
  elseif tok == 0 then
    tok = nil -- a released object: nothing will list it
  else
    add_waiter(tok, rec)
  end
  local ok, why = pcall(d.park, rec, cc, dl)
  if many then
    for i = 1, #tok do del_waiter(tok[i], rec) end
  elseif tok then
    del_waiter(tok, rec)
  end
  if not ok then error(why, 0) end
  return why
end

-- Between two looks of wait.loop: the blocking driver does what
-- blocking.park does, without parking a record nobody but this thread could
-- wake (sleep on the client's eventfd, or drive its queue: ec_client_wait;
-- then reap); the others park.
local function between(drv, cc, tok, dl)
  if drv == blocking and cc then
    local left = dl and dl - now()
    if left and left < 0 then left = 0 end
    cc:_wait(left)
    M.dispatch(cc)
  else
    M.park(cc, tok, dl)
  end
end

--- Look at an object until it has something to say: `step()` returns false
-- for "nothing yet", anything else is returned as it is. Between looks, park
-- on `tok` of client `cc` until the absolute deadline `dl` (nil: none).
-- Returns step's values, or wait.TIMEOUT once `dl` passed with nothing.
function M.loop(cc, tok, dl, step)
  local drv
  while true do
    local a, b, c, d = step()
    if a ~= false then return a, b, c, d end
    if dl and now() >= dl then return M.TIMEOUT end
    drv = drv or M.driver()
    between(drv, cc, tok, dl)
  end
end

--- wait.loop for a call handle `h` (its step: h:done()), without a
-- closure per call: true once it is done, or wait.TIMEOUT.
function M.loop_done(cc, h, dl)
  local drv
  while true do
    if h:done() then return true end
    if dl and now() >= dl then return M.TIMEOUT end
    drv = drv or M.driver()
    between(drv, cc, h:token(), dl)
  end
end

--- fn(...) (up to three results), by one coroutine at a time on `obj` (a
-- watch, a keep-alive, an observer: its `_kind` names it): a second
-- coroutine waiting on it meanwhile is misuse, raised at `level` (1: the
-- caller).
function M.alone(obj, what, level, fn, ...)
  local co = running()
  local w = obj._waiter
  if w and w ~= co and compat.alive(w) then
    error(("%s: another coroutine is already waiting on this %s (one waiter at a time)"):format(what, obj._kind),
      level + 1)
  end
  obj._waiter = co
  local ok, a, b, c = pcall(fn, ...)
  obj._waiter = nil
  if not ok then error(a, 0) end
  return a, b, c
end

--- wait.loop for a watch or a keep-alive `obj` (its client obj._cli, token
-- obj._tok, step obj._look), by one coroutine at a time (wait.alone).
function M.loop_alone(obj, dl, what, level)
  local a, b, c = M.alone(obj, what, level + 1, M.loop, obj._cli._core, obj._tok, dl, obj._look)
  return a, b, c -- not a tail call: `level` counts this frame
end

--- An absolute deadline `seconds` from now (nil stays nil: no limit).
function M.deadline(seconds)
  return seconds and now() + seconds
end

-- ---------------------------------------------------------------------------
-- events: a Lua-side "something happened" that parked waiters can wait for
-- (a coroutine's end, a login done), whatever their driver.

local Event = {}
Event.__index = Event

function M.event()
  return setmetatable({ fired = false, recs = {} }, Event)
end

--- Wake every waiter; later waits return at once.
function Event:signal()
  self.fired = true
  local recs = self.recs
  self.recs = {}
  for _, rec in ipairs(recs) do rec:wake("ready") end
end

--- Wait until one of `events` is signalled or `dl` passes: true or false.
-- One waiter record is parked on all of them; the first signal wakes it (the
-- drivers ignore a record woken twice).
function M.any(events, dl)
  local function fired()
    for _, e in ipairs(events) do
      if e.fired then return true end
    end
    return false
  end
  while not fired() do
    if dl and now() >= dl then return false end
    local rec = { co = running(), wake = noop }
    for _, e in ipairs(events) do table.insert(e.recs, rec) end
    local ok, why = pcall(M.driver().park, rec, nil, dl)
    for _, e in ipairs(events) do
      local recs = e.recs
      for i = #recs, 1, -1 do
        if recs[i] == rec then table.remove(recs, i) end
      end
    end
    if not ok then error(why, 0) end
  end
  return true
end

--- Wait until signalled or `dl` passes. Returns true (signalled) or false.
function Event:wait(dl)
  return M.any({ self }, dl)
end

-- 5.1: the library's pcall runs its function in a coroutine of its own,
-- which keeps the driver of the code that called it
if pinned then compat.pin = M.driver end

return M
