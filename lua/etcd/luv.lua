--- The luv driver (README "Using with luv"): coroutines whose etcd calls are
-- driven by luv's default loop, alongside luv's own timers and sockets.
--
--     local uv = require "luv"
--     local eluv = require "etcd.luv"
--     eluv.spawn(function() assert(cli:put("k", "v")) end)
--     uv.run()            -- or eluv.run(): uv.run(), then raise an unjoined error
--
-- Per client, one uv poll handle watches the client's eventfd while some
-- coroutine waits on that client; when it is readable the ready list is
-- reaped and exactly the coroutines of those tokens are resumed. Deadlines
-- are uv timers. Handles are closed when nobody waits, so uv.run() returns
-- when the coroutines have finished.
local uv = require "luv"
local compat = require "etcd.compat"
local pcall = compat.pcall -- (5.1: one a coroutine can yield through)
-- luv keeps its loop in the userdata `_loop` of the module table it makes
-- first, freed when that table is collected, but points at it from a C
-- context in the registry that outlives it: once package.loaded.luv is
-- cleared (busted does it between spec files) and the table collected, a
-- later require "luv" (which makes a table without `_loop`) runs on the
-- freed loop and crashes. Keep the loop for the life of the Lua state.
do
  local reg = debug.getregistry()
  local loop = rawget(uv, "_loop")
  if loop ~= nil then reg["etcd.luv: luv's loop"] = loop end
end
local wait = require "etcd.wait"
local sched = require "etcd.sched"

local M = {}

local now = wait.now
local driver = { name = "etcd.luv", live = 0, failed = {} }
M.driver = driver

local polled = {}  -- etcd.core client -> waiters parked on its tokens
local handles = {} -- etcd.core client -> uv poll handle

local function later(fn)
  local t = uv.new_timer()
  t:start(0, 0, function()
    t:close()
    fn()
  end)
end

function driver.requeue(task)
  later(function() sched.resume(task, nil) end)
end

function driver.drive()
  uv.run("once")
end

local function luv_wake(rec, why)
  local task = rec.task
  if task.rec == rec then
    task.rec = nil
    sched.resume(task, why or "ready")
  end
end

local function watch_fd(cc)
  if handles[cc] then return end
  local h = uv.new_poll(cc:pollfd())
  handles[cc] = h
  h:start("r", function() wait.dispatch(cc) end)
end

local function unwatch_fd(cc)
  local h = handles[cc]
  if h then
    handles[cc] = nil
    h:stop()
    h:close()
  end
end

function driver.park(rec, cc, dl)
  local task = sched._state.current
  rec.task = task
  rec.wake = luv_wake
  task.rec = rec
  if cc then
    polled[cc] = (polled[cc] or 0) + 1
    watch_fd(cc)
  end
  local timer
  if dl then
    local ms = math.max(0, math.ceil((dl - now()) * 1000))
    timer = uv.new_timer()
    timer:start(ms, 0, function()
      if task.rec == rec then
        task.rec = nil
        sched.resume(task, "timeout") -- wait.park unregisters its token
      end
    end)
  end
  local ok, why = pcall(coroutine.yield, sched.PARK)
  task.rec = nil
  if timer then
    timer:stop()
    timer:close()
  end
  if cc then
    local n = polled[cc] - 1
    polled[cc] = n > 0 and n or nil
    if n == 0 then unwatch_fd(cc) end
  end
  if not ok then error(why, 0) end
  return why
end

--- eluv.spawn(fn, ...) -> handle: run fn(...) in a coroutine driven by luv's
-- default loop; it starts on the loop's next turn. h:join() as etcd.spawn's
-- (outside a coroutine it runs the loop until h ends).
function M.spawn(fn, ...)
  local task = sched.new_task(driver, fn, "etcd.luv.spawn")
  local args = compat.pack(...)
  later(function() sched.resume(task, compat.unpack(args, 1, args.n)) end)
  return task
end

--- eluv.run(mode): uv.run(mode); then, if a coroutine of ours failed and
-- nobody joined it, raise its error.
function M.run(mode)
  local r = uv.run(mode)
  sched.raise_unjoined(driver)
  return r
end

return M
