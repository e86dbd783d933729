--- The built-in scheduler: etcd.spawn, etcd.run, etcd.sleep, handle:join
-- (README "Using with coroutines", docs/DESIGN.md "Waiting").
--
-- One per Lua state. A spawned coroutine that waits (any etcd call, a join, a
-- sleep) yields to it; when no coroutine can run, the scheduler sleeps in
-- poll() on the eventfds of the clients that have waiters, until the nearest
-- deadline, then reaps those clients' ready lists (wait.dispatch) and resumes
-- exactly the coroutines whose tokens came up.
-- @module etcd.sched
local core = require "etcd.core"
local wait = require "etcd.wait"
local compat = require "etcd.compat"
local pcall = compat.pcall -- (5.1: one a coroutine can yield through)

local M = {}

local now = core.now
local floor, pack, unpack = math.floor, compat.pack, compat.unpack
local PARK = setmetatable({}, { __tostring = function() return "etcd.sched.PARK" end })
M.PARK = PARK

local S = {
  current = nil,     -- the task running now
  -- tasks to resume, and why (two arrays: no table per wake-up)
  rq_task = {}, rq_why = {}, head = 1, tail = 0,
  timers = {},       -- binary heap of { at, task, seq, idx, dead }
  dead = 0,          -- entries of it whose wait ended otherwise
  polled = {},       -- etcd.core client -> number of tasks parked on its tokens
}
M._state = S

-- ---------------------------------------------------------------------------
-- the timer heap

-- Entries are { at, task, seq, idx, dead }: idx is the entry's place in the
-- heap (nil once out of it). A wait that ends by its token (nearly every
-- one) marks its timer dead rather than removing it from the middle of the
-- heap (a sift down per call was a fifth of the scheduler's work with 64
-- calls in flight); dead entries are dropped when they reach the top, and
-- the heap is rebuilt without them once they outnumber the live ones.
local function put(h, i, e)
  h[i] = e
  e[4] = i
end

local function sift_up(h, i)
  local e = h[i]
  while i > 1 do
    local p = floor(i / 2)
    if h[p][1] <= e[1] then break end
    put(h, i, h[p])
    i = p
  end
  put(h, i, e)
end

local function sift_down(h, i)
  local n, e = #h, h[i]
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    local best = e
    if l <= n and h[l][1] < best[1] then m, best = l, h[l] end
    if r <= n and h[r][1] < best[1] then m = r end
    if m == i then break end
    put(h, i, h[m])
    i = m
  end
  put(h, i, e)
end

local function heap_push(h, e)
  put(h, #h + 1, e)
  sift_up(h, #h)
end

local function heap_remove(h, e)
  local i = e[4]
  if not i then return end
  e[4] = nil
  local n = #h
  local last = h[n]
  h[n] = nil
  if i < n then
    put(h, i, last)
    sift_up(h, i)
    sift_down(h, last[4])
  end
end

local function heap_pop(h)
  local top = h[1]
  heap_remove(h, top)
  if top[5] then S.dead = S.dead - 1 end
  return top
end

-- Mark a timer whose wait ended; rebuild the heap when the dead dominate.
local function heap_kill(h, e)
  if e[5] or not e[4] then return end
  e[5] = true
  local dead = S.dead + 1
  S.dead = dead
  if dead == #h then -- the last live wait ended: nothing left to keep
    for i = #h, 1, -1 do
      h[i][4], h[i] = nil, nil
    end
    S.dead = 0
  elseif dead > 64 and dead * 2 > #h then
    local live = {}
    for i = 1, #h do
      local x = h[i]
      if x[5] then x[4] = nil else live[#live + 1] = x end
    end
    for i = #h, 1, -1 do h[i] = nil end
    for i = 1, #live do put(h, i, live[i]) end
    for i = floor(#live / 2), 1, -1 do sift_down(h, i) end
    S.dead = 0
  end
end

-- ---------------------------------------------------------------------------
-- tasks

local Task = { __name = "etcd.task" }
Task.__index = Task
M.Task = Task

local function enqueue(task, why)
  local t = S.tail + 1
  S.tail = t
  S.rq_task[t], S.rq_why[t] = task, why
end

-- The built-in driver, as seen by etcd.wait. Every driver that runs tasks
-- has `live` (tasks not finished), `failed` (finished with an error, in
-- order, not joined yet), `requeue(task)` (a task yielded without parking)
-- and `drive()` (one round of its loop, for a join from outside).
local driver = { name = "etcd.spawn", live = 0, failed = {}, tasks = {} }
M.driver = driver

function driver.requeue(task) enqueue(task, nil) end

local function sched_wake(rec, why)
  local task = rec.task
  if task and task.rec == rec then
    task.rec = nil
    enqueue(task, why)
  end
end

function driver.park(rec, cc, dl)
  local task = S.current
  rec.task = task
  rec.wake = sched_wake
  task.rec = rec
  task.seq = task.seq + 1
  if cc then S.polled[cc] = (S.polled[cc] or 0) + 1 end
  local timer = dl and { dl, task, task.seq }
  if timer then heap_push(S.timers, timer) end
  local ok, why = pcall(coroutine.yield, PARK)
  task.rec = nil
  if timer then heap_kill(S.timers, timer) end
  if cc then
    local n = S.polled[cc] - 1
    S.polled[cc] = n > 0 and n or nil
  end
  if not ok then error(why, 0) end
  return why
end

local function finish(task)
  local d = task.driver
  d.live = d.live - 1
  if d.tasks then d.tasks[task] = nil end
  task.ev:signal()
end

-- (coroutine.resume's results, taken as varargs: no table per resume)
local function resumed(task, prev, ok, ...)
  S.current = prev
  if not ok then
    local err = ...
    if type(err) == "string" then err = debug.traceback(task.co, err) end
    -- run its pending to-be-closed variables (`local s <close> = ...`) now,
    -- as a failed coroutine keeps them until it is closed; they cannot
    -- yield there, so their waits block (wait.driver)
    if coroutine.close then coroutine.close(task.co) end
    task.state, task.err = "failed", err
    local failed = task.driver.failed
    failed[#failed + 1] = task
    finish(task)
  elseif coroutine.status(task.co) == "dead" then
    task.state = "done"
    task.results = pack(...)
    finish(task)
  elseif (...) ~= PARK then
    -- a plain coroutine.yield() inside a spawned coroutine: let the others run
    task.driver.requeue(task)
  end
end

local function resume(task, ...)
  local prev = S.current
  S.current = task
  resumed(task, prev, coroutine.resume(task.co, ...))
end
M.resume = resume

-- A task running fn(...) in a coroutine; `d` is its driver (built-in or luv).
function M.new_task(d, fn, what)
  if type(fn) ~= "function" then
    error(("%s: bad argument #1 (function expected, got %s)"):format(what, type(fn)), 3)
  end
  local task = setmetatable({ co = coroutine.create(fn), state = "running", seq = 0,
                              ev = wait.event(), driver = d }, Task)
  wait.owner[task.co] = d
  d.live = d.live + 1
  if d.tasks then d.tasks[task] = true end
  return task
end

--- etcd.spawn(fn, ...) -> handle: run fn(...) in a new coroutine under the
-- built-in scheduler. It starts at the next etcd.run(), join or wait.
function M.spawn(fn, ...)
  local task = M.new_task(driver, fn, "etcd.spawn")
  enqueue(task, pack(...))
  return task
end

--- h:status() -> "running" | "done" | "failed"
function Task:status()
  return self.state
end

-- Wait until one of the tasks `ts` has ended and return its position: yield
-- inside a scheduled coroutine, run the tasks' loop outside one. `what`
-- names the caller in misuse errors (raised at the caller's caller).
local function await(ts, what)
  local function ended()
    for i, t in ipairs(ts) do
      if t.state ~= "running" then return i end
    end
  end
  local evs = {}
  for i, t in ipairs(ts) do evs[i] = t.ev end
  while not ended() do
    if wait.driver() ~= wait.blocking then
      wait.any(evs, nil)
    elseif S.current then
      error(("%s: called from a plain coroutine inside a spawned one; call it from the spawned coroutine itself")
        :format(what), 3)
    else
      ts[1].driver.drive()
    end
  end
  return ended()
end

--- h:join() -> true, results... | false, err (with the coroutine's traceback).
-- Inside a spawned coroutine it waits (yields) until h ends; outside one it
-- runs the scheduler until h ends.
function Task:join()
  if getmetatable(self) ~= Task then error("join: bad self (etcd task expected)", 2) end
  if self.state == "running" then
    if coroutine.running() == self.co then error("join: a coroutine cannot join itself", 2) end
    await({ self }, "join")
  end
  self.joined = true
  if self.state == "failed" then return false, self.err end
  return true, unpack(self.results, 1, self.results.n)
end

function Task:__tostring()
  return ("etcd.task (%s): %s"):format(self.state, tostring(self.co):match("0x%x+") or "?")
end

-- ---------------------------------------------------------------------------
-- driving

local function fire_timers()
  local h, t = S.timers, now()
  while h[1] and h[1][1] <= t do
    local e = heap_pop(h)
    local task = e[2]
    if not e[5] and task.seq == e[3] and task.rec then
      task.rec = nil
      enqueue(task, "timeout") -- wait.park unregisters its token once resumed
    end
  end
end

-- The nearest deadline (a stale entry, should one remain, is dropped).
local function next_timer()
  local h = S.timers
  if h[1] and S.dead >= #h then -- all dead: nothing to wait for
    for i = #h, 1, -1 do
      h[i][4], h[i] = nil, nil
    end
    S.dead = 0
  end
  -- a stale entry nobody marked (its task was closed while it waited) goes;
  -- a dead one at the top stays (popping each would cost a sift down per
  -- call): it only makes the scheduler look once earlier than needed
  while h[1] and not h[1][5] and (h[1][2].seq ~= h[1][3] or not h[1][2].rec) do heap_pop(h) end
  return h[1] and h[1][1]
end

local function run_queue()
  -- only what is queued now; what they queue runs in the next round
  local last = S.tail
  local tasks, whys = S.rq_task, S.rq_why
  while S.head <= last do
    local i = S.head
    local task, why = tasks[i], whys[i]
    tasks[i], whys[i] = nil, nil
    S.head = i + 1
    if task.state == "running" then
      if type(why) == "table" then resume(task, unpack(why, 1, why.n))
      else resume(task, why) end
    end
  end
  if S.head > S.tail then S.head, S.tail = 1, 0 end
end

-- One round: run what can run; if nothing can, sleep until a client that
-- has waiters signals or the nearest deadline (or `dl`) passes. Returns
-- "ready" or "timeout" (dl passed), for wait.blocking.
function M.step(dl)
  if S.head <= S.tail then
    run_queue()
    return "ready"
  end
  local at = next_timer()
  if dl and (not at or dl < at) then at = dl end
  local clients = {}
  for cc in pairs(S.polled) do clients[#clients + 1] = cc end
  if #clients == 0 and not at then
    -- Nothing can ever wake them: they end as failed (their joiners learn
    -- why), so that the state stays usable, and the caller gets the error.
    local msg = "etcd: every coroutine is waiting and nothing can wake them (a join cycle, or a wait on" ..
      " something no spawned coroutine will do)"
    local stuck = {}
    for task in pairs(driver.tasks) do stuck[#stuck + 1] = task end
    for _, task in ipairs(stuck) do
      if task.state == "running" and coroutine.status(task.co) == "suspended" then
        task.state, task.err, task.joined, task.rec = "failed", msg, true, nil
        if coroutine.close then coroutine.close(task.co) end
        finish(task)
      end
    end
    error(msg, 0)
  end
  local left = at and at - now()
  if left and left < 0 then left = 0 end
  local ngxd = wait.ngx
  if ngxd and ngxd.can_yield() then
    -- inside nginx: never block the worker's event loop
    ngxd.idle(clients, left)
    for _, cc in ipairs(clients) do wait.dispatch(cc) end
  elseif #clients == 0 then
    core.sleep(left)
  else
    core._poll(clients, left)
    for _, cc in ipairs(clients) do wait.dispatch(cc) end
  end
  fire_timers()
  if S.head <= S.tail then run_queue() end
  if dl and now() >= dl then return "timeout" end
  return "ready"
end

function driver.drive() M.step(nil) end

--- etcd.run(): run every spawned coroutine until all have finished; then,
-- if one failed and nobody joined it, raise its error (the first such).
function M.run()
  if S.current then error("etcd.run: called from a spawned coroutine", 2) end
  while driver.live > 0 do M.step(nil) end
  M.raise_unjoined(driver)
end

-- Raise the first error of d's tasks that nobody joined (once).
function M.raise_unjoined(d)
  local failed = d.failed
  for i, task in ipairs(failed) do
    if not task.joined then
      d.failed = { unpack(failed, i + 1) }
      task.joined = true
      error(task.err, 0)
    end
  end
  d.failed = {}
end

--- etcd.first(h1, h2, ...) -> i, ok, results...: wait until the first of
-- the handles has ended (Go's select over goroutines); `i` is its position,
-- the rest is h_i:join(). The others go on running.
function M.first(...)
  local hs = pack(...)
  if hs.n == 0 then error("etcd.first: bad argument #1 (task handle expected, got no value)", 2) end
  for i = 1, hs.n do
    if getmetatable(hs[i]) ~= Task then
      error(("etcd.first: bad argument #%d (task handle expected, got %s)"):format(i, type(hs[i])), 2)
    end
  end
  local i = await(hs, "etcd.first")
  return i, hs[i]:join()
end

--- etcd.sleep(seconds): yields inside a spawned (or luv/cqueues) coroutine,
-- sleeps the thread outside one.
function M.sleep(seconds)
  local d = wait.driver()
  if d == wait.blocking then
    core.sleep(seconds)
    return
  end
  local dl = now() + seconds
  while now() < dl do
    d.park({ wake = function() end }, nil, dl)
  end
end

--- etcd.yield(): let the other spawned coroutines run, then go on.
function M.yield()
  if wait.driver() == driver then coroutine.yield() end
end

return M
