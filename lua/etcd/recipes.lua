--- etcd's Go `contrib/recipes` (experimental recipes): a readers-writer lock,
-- barriers, a double barrier, a queue and a priority queue, with the same
-- key layouts as Go's, so Lua and Go processes can share them. README
-- "Locks, elections and STM".
--
--     local recipes = require "etcd.recipes"
--     local q = recipes.new_queue(cli, "jobs")
--     assert(q:enqueue("job 1"))
--     local v = assert(q:dequeue(10))   -- waits up to 10 s for an item
--
-- Blocking methods take a `timeout` in seconds (nil: no limit) and yield
-- inside a spawned coroutine, as every method of the client does.
-- @module etcd.recipes
local etcd = require "etcd"
local core = require "etcd.core"
local check = require "etcd.check"
local wait = require "etcd.wait"
local concurrency = require "etcd.concurrency"

local M = {}

local cmp, op = etcd.compare, etcd.op
local Session = concurrency.Session
local left, first, wait_event = concurrency._left, concurrency._first, concurrency._wait_event
local late, expired = concurrency._late, concurrency._expired
local DELETED, PUT = concurrency._DELETED, { PUT = true }

local function check_timeout(timeout, n, what)
  if timeout == nil then return nil end
  local t = check.arg(timeout, "seconds", n, "timeout", what, 3)
  return t -- not a tail call: `level` counts this frame
end

-- Go's withTop(target, order): the first key of a prefix by one sort order.
local function top(pfx, target, order)
  return { prefix = true, sort_target = target, sort_order = order, limit = 1 }, pfx
end

-- ---------------------------------------------------------------------------
-- keys (Go's key.go)

-- Put `key` only if it does not exist: its revision, or nil, msg, code
-- ("exists" when it does).
local function put_new(cli, key, val, lease, dl)
  local res, msg, code = cli:txn({
    compare = { cmp.version(key, "=", 0) },
    success = { op.put(key, val, { lease = lease or 0 }) },
  }, { timeout = first(cli, dl) })
  if not res then return nil, msg, code end
  if not res.succeeded then return nil, "etcd: key already exists", "exists" end
  return res.header.revision
end

-- Go's time.Now().UnixNano(), as far as Lua sees it: the wall clock's
-- seconds and the monotonic clock's fraction (uniqueness is what matters:
-- put_new refuses a key that exists and we try another).
local seq = 0
local function nano()
  seq = seq + 1
  return os.time() * 1000000000 + math.floor(core.now() % 1 * 1e9) + seq
end

-- A new key prefix .. "/" .. number: (key, revision) or nil, msg, code.
local function new_unique(cli, prefix, val, lease, dl)
  while true do
    local key = ("%s/%d"):format(prefix, nano())
    local rev, msg, code = put_new(cli, key, val, lease, dl)
    if rev then return key, rev end
    if code ~= "exists" then return nil, msg, code end
  end
end

-- Go's newSequentialKV: prefix .. "/" .. %016d, one more than the last key;
-- "__" .. prefix guards against a key deleted and allocated again.
local function new_sequential(cli, prefix, val, dl)
  while true do
    local t = left(cli, dl)
    if not t then return nil, "etcd: deadline passed", "timeout" end
    local o, k = top(prefix, "key", "descend")
    o.timeout = t
    local res, msg, code = cli:get(k, o)
    if not res then return nil, msg, code end
    local n = 0
    if #res.kvs > 0 then
      local last = res.kvs[1].key:match("([^/]*)$")
      n = tonumber(last:match("^%d+"))
      if not n then return nil, ("etcd: key %q does not end in a number"):format(res.kvs[1].key), "UNKNOWN" end
      n = math.floor(n) + 1
    end
    local key = ("%s/%016d"):format(prefix, n)
    local base = "__" .. prefix
    t = left(cli, dl)
    if not t then return nil, "etcd: deadline passed", "timeout" end
    res, msg, code = cli:txn({
      compare = { cmp.mod_revision(base, "<", res.header.revision + 1) },
      success = { op.put(base, ""), op.put(key, val) },
    }, { timeout = t })
    if not res then return nil, msg, code end
    if res.succeeded then return key, res.header.revision end
  end
end

-- Delete `key` if its mod revision is still `rev`: true, false, or nil, msg, code.
local function delete_rev(cli, key, rev, dl)
  local res, msg, code = cli:txn({
    compare = { cmp.mod_revision(key, "=", rev) },
    success = { op.delete(key) },
  }, { timeout = left(cli, dl) })
  if not res then return nil, msg, code end
  return res.succeeded
end

-- ---------------------------------------------------------------------------
-- barrier

local Barrier = { __name = "etcd.recipes.barrier" }
Barrier.__index = Barrier
M.Barrier = Barrier
function Barrier.__valid(b) return getmetatable(rawget(b, "_cli")) == etcd.Client end

--- recipes.new_barrier(cli, key): processes wait at the barrier while `key` exists.
function M.new_barrier(cli, key)
  check.object(cli, etcd.Client, 1, "cli", "recipes.new_barrier", 2)
  check.arg(key, "string", 2, "key", "recipes.new_barrier", 2)
  return setmetatable({ _cli = cli, _key = key }, Barrier)
end

--- b:hold() -> true | nil, msg, code ("exists": held already).
function Barrier:hold()
  check.self(self, Barrier, "b:hold", 2)
  local rev, msg, code = put_new(self._cli, self._key, "", 0, nil)
  if not rev then return nil, msg, code end
  return true
end

--- b:release() -> true | nil, msg, code: the waiters go on.
function Barrier:release()
  check.self(self, Barrier, "b:release", 2)
  local res, msg, code = self._cli:delete(self._key)
  if not res then return nil, msg, code end
  return true
end

--- b:wait(timeout) -> true | nil, msg, code: until the barrier is released.
function Barrier:wait(timeout)
  check.self(self, Barrier, "b:wait", 2)
  timeout = check_timeout(timeout, 1, "b:wait")
  local dl = wait.deadline(timeout)
  local cli = self._cli
  -- (Go looks for the first key under the key as a prefix, so a barrier
  -- "job1" waits while "job10" is held; we look at the key itself)
  local res, msg, code = cli:get(self._key, { timeout = first(cli, dl) })
  if not res then return nil, msg, code end
  if #res.kvs == 0 then return true end
  -- the key exists at the look's revision: its deletion comes later. (Go
  -- waits for a PUT and then a DELETE from that revision, and so misses a
  -- release when the key was put before the look's revision.)
  local ev
  ev, msg, code = wait_event(cli, { key = self._key, rev = res.header.revision, types = DELETED, dl = dl,
                                   late = dl and late("b:wait", timeout) })
  if not ev then return nil, msg, code end
  return true
end

-- ---------------------------------------------------------------------------
-- double barrier

local DoubleBarrier = { __name = "etcd.recipes.double_barrier" }
DoubleBarrier.__index = DoubleBarrier
M.DoubleBarrier = DoubleBarrier
function DoubleBarrier.__valid(b) return getmetatable(rawget(b, "_s")) == Session end

--- recipes.new_double_barrier(s, key, count): `count` processes enter
-- together and leave together. Keys: key/waiters/<n> (on the session's
-- lease) and key/ready.
function M.new_double_barrier(s, key, count)
  check.object(s, Session, 1, "s", "recipes.new_double_barrier", 2)
  check.arg(key, "string", 2, "key", "recipes.new_double_barrier", 2)
  count = check.arg(count, "integer", 3, "count", "recipes.new_double_barrier", 2)
  if count < 1 then check.fail("recipes.new_double_barrier: bad argument #3 (count must be at least 1)", 2) end
  return setmetatable({ _s = s, _cli = s._cli, _key = key, _count = count }, DoubleBarrier)
end

--- b:enter(timeout) -> true | nil, msg, code: waits until `count` processes
-- have entered. "too_many": more than `count` are in.
function DoubleBarrier:enter(timeout)
  check.self(self, DoubleBarrier, "b:enter", 2)
  timeout = check_timeout(timeout, 1, "b:enter")
  local dl = wait.deadline(timeout)
  local cli = self._cli
  local key, rev, code = new_unique(cli, self._key .. "/waiters", "", self._s._id, dl)
  if not key then return nil, concurrency._session_code(rev, code) end
  self._mine, self._rev = key, rev
  local msg
  -- a process that does not enter must not be counted by the others
  local function withdraw(m, c)
    cli:delete(key)
    self._mine = nil
    return nil, m, c
  end
  local res
  res, msg, code = cli:get(self._key .. "/waiters", { prefix = true, timeout = first(cli, dl) })
  if not res then return withdraw(msg, code) end
  if #res.kvs > self._count then return withdraw("etcd: too many clients at the double barrier", "too_many") end
  if #res.kvs == self._count then
    res, msg, code = cli:put(self._key .. "/ready", "", { timeout = first(cli, dl) })
    if not res then return withdraw(msg, code) end
    return true
  end
  local ev
  ev, msg, code = wait_event(cli, { key = self._key .. "/ready", rev = rev, types = PUT, dl = dl,
                                   late = dl and late("b:enter", timeout) })
  if not ev then return withdraw(msg, code) end
  return true
end

--- b:leave(timeout) -> true | nil, msg, code: waits until every process has left.
function DoubleBarrier:leave(timeout)
  check.self(self, DoubleBarrier, "b:leave", 2)
  timeout = check_timeout(timeout, 1, "b:leave")
  local dl = wait.deadline(timeout)
  local cli = self._cli
  while true do
    local res, msg, code = cli:get(self._key .. "/waiters", { prefix = true, timeout = left(cli, dl) })
    if not res then return nil, msg, code end
    if #res.kvs == 0 then return true end
    local lowest, highest = res.kvs[1], res.kvs[1]
    for _, kv in ipairs(res.kvs) do
      if kv.mod_revision < lowest.mod_revision then lowest = kv end
      if kv.mod_revision > highest.mod_revision then highest = kv end
    end
    if #res.kvs == 1 then
      -- the only one left: finish up
      res, msg, code = cli:delete(self._key .. "/ready", { timeout = left(cli, dl) })
      if not res then return nil, msg, code end
      if self._mine then
        res, msg, code = cli:delete(self._mine, { timeout = left(cli, dl) })
        if not res then return nil, msg, code end
        self._mine = nil
      end
      return true
    end
    -- a process that fails leaves through its lease: the lowest waits for
    -- the highest, every other one deletes itself and waits for the lowest
    local target, look = lowest, res.header.revision
    if lowest.key == self._mine then
      target = highest
    elseif self._mine then
      res, msg, code = cli:delete(self._mine, { timeout = left(cli, dl) })
      if not res then return nil, msg, code end
      self._mine = nil
    end
    local ev
    -- (from the look's revision, at which the key exists: its deletion
    -- comes later, and a compaction since it was put does not matter)
    ev, msg, code = wait_event(cli, { key = target.key, rev = look, types = DELETED, dl = dl,
                                     late = dl and late("b:leave", timeout) })
    if not ev and code ~= "compacted" then return nil, msg, code end
  end
end

-- ---------------------------------------------------------------------------
-- readers-writer lock

local RWMutex = { __name = "etcd.recipes.rwmutex" }
RWMutex.__index = RWMutex
M.RWMutex = RWMutex
function RWMutex.__valid(m) return getmetatable(rawget(m, "_s")) == Session end

--- recipes.new_rwmutex(s, pfx): readers put pfx/read/<n>, writers
-- pfx/write/<n> (on the session's lease); a reader waits for the writers
-- ahead of it, a writer for everyone ahead of it.
function M.new_rwmutex(s, pfx)
  check.object(s, Session, 1, "s", "recipes.new_rwmutex", 2)
  check.arg(pfx, "string", 2, "pfx", "recipes.new_rwmutex", 2)
  return setmetatable({ _s = s, _cli = s._cli, _pfx = pfx .. "/" }, RWMutex)
end

local function rw_lock(m, kind, wait_pfx, timeout, what)
  local dl = wait.deadline(timeout)
  if m._key then check.fail(what .. ": the lock is held by this object already", 3) end
  local ok, msg, code = m._s:_alive()
  if not ok then return nil, msg, code end
  local key, rev
  key, rev, code = new_unique(m._cli, m._pfx .. kind, "", m._s._id, dl)
  if not key then return nil, concurrency._session_code(rev, code) end
  m._key, m._rev = key, rev
  -- until no key under wait_pfx older (by mod revision) than ours is left
  ok, msg, code = concurrency._wait_none_before(m._s, wait_pfx, "mod", rev - 1, dl, timeout, what, key, rev)
  if ok then
    -- never a false success: our key (and so the session) must still be there
    local g
    g, msg, code = m._cli:get(key, { timeout = first(m._cli, dl) })
    if g and #g.kvs == 1 and g.kvs[1].mod_revision == rev then return true end
    if g then msg, code = concurrency._KEY_GONE, "session_lost" end
  end
  m._cli:delete(key)
  m._key = nil
  return nil, msg, code
end

--- m:rlock(timeout) -> true | nil, msg, code.
function RWMutex:rlock(timeout)
  check.self(self, RWMutex, "m:rlock", 2)
  timeout = check_timeout(timeout, 1, "m:rlock")
  local r, msg, code = rw_lock(self, "read", self._pfx .. "write", timeout, "m:rlock")
  return r, msg, code -- not a tail call: misuse is raised at the caller's level
end

--- m:lock(timeout) -> true | nil, msg, code.
function RWMutex:lock(timeout)
  check.self(self, RWMutex, "m:lock", 2)
  timeout = check_timeout(timeout, 1, "m:lock")
  local r, msg, code = rw_lock(self, "write", self._pfx, timeout, "m:lock")
  return r, msg, code -- not a tail call: misuse is raised at the caller's level
end

local function rw_unlock(m, what)
  if not m._key then check.fail(what .. ": not locked", 3) end
  local res, msg, code = m._cli:delete(m._key)
  if not res then return nil, msg, code end
  m._key = nil
  return true
end

function RWMutex:runlock()
  check.self(self, RWMutex, "m:runlock", 2)
  local r, msg, code = rw_unlock(self, "m:runlock")
  return r, msg, code -- not a tail call: misuse is raised at the caller's level
end

function RWMutex:unlock()
  check.self(self, RWMutex, "m:unlock", 2)
  local r, msg, code = rw_unlock(self, "m:unlock")
  return r, msg, code -- not a tail call: misuse is raised at the caller's level
end

-- ---------------------------------------------------------------------------
-- queues

-- Take the first item (by the sort in `o`) or wait for one: Go's Dequeue.
local function dequeue(cli, pfx, o, dl, timeout, what)
  local looked = false
  while true do
    -- the first look is made even when `dl` has passed (timeout 0: take an
    -- item if there is one, do not wait)
    local t = looked and left(cli, dl) or first(cli, dl)
    looked = true
    if not t then return expired(what, timeout) end
    o.timeout = t
    local res, msg, code = cli:get(pfx, o)
    if not res then return nil, msg, code end
    local kv = res.kvs[1]
    if kv then
      local ok
      ok, msg, code = delete_rev(cli, kv.key, kv.mod_revision, dl)
      if ok == nil then return nil, msg, code end
      if ok then return kv.value end
      -- another consumer took it: look again
    else
      local ev
      ev, msg, code = wait_event(cli, { key = pfx, prefix = true, rev = res.header.revision, types = PUT, dl = dl,
                                       late = dl and late(what, timeout) })
      if not ev then
        if code ~= "compacted" then return nil, msg, code end
      else
        local ok
        ok, msg, code = delete_rev(cli, ev.kv.key, ev.kv.mod_revision, dl)
        if ok == nil then return nil, msg, code end
        if ok then return ev.kv.value end
      end
    end
  end
end

local Queue = { __name = "etcd.recipes.queue" }
Queue.__index = Queue
M.Queue = Queue
function Queue.__valid(q) return getmetatable(rawget(q, "_cli")) == etcd.Client end

--- recipes.new_queue(cli, pfx): a FIFO queue; items are pfx/<n>.
function M.new_queue(cli, pfx)
  check.object(cli, etcd.Client, 1, "cli", "recipes.new_queue", 2)
  check.arg(pfx, "string", 2, "pfx", "recipes.new_queue", 2)
  return setmetatable({ _cli = cli, _pfx = pfx }, Queue)
end

--- q:enqueue(value) -> true | nil, msg, code.
function Queue:enqueue(value)
  check.self(self, Queue, "q:enqueue", 2)
  check.arg(value, "string", 1, "value", "q:enqueue", 2)
  local key, msg, code = new_unique(self._cli, self._pfx, value, 0, nil)
  if not key then return nil, msg, code end
  return true
end

--- q:dequeue(timeout) -> value | nil, msg, code: the oldest item, removed;
-- waits for one when the queue is empty.
function Queue:dequeue(timeout)
  check.self(self, Queue, "q:dequeue", 2)
  timeout = check_timeout(timeout, 1, "q:dequeue")
  -- items are pfx/<n>: look under "pfx/" (Go looks under "pfx", and so also
  -- takes the items of a queue named "pfx2")
  local pfx = self._pfx .. "/"
  local o = top(pfx, "mod", "ascend")
  local v, msg, code = dequeue(self._cli, pfx, o, wait.deadline(timeout), timeout, "q:dequeue")
  return v, msg, code
end

local PriorityQueue = { __name = "etcd.recipes.priority_queue" }
PriorityQueue.__index = PriorityQueue
M.PriorityQueue = PriorityQueue
function PriorityQueue.__valid(q) return getmetatable(rawget(q, "_cli")) == etcd.Client end

--- recipes.new_priority_queue(cli, pfx): items are pfx/<%05d priority>/<%016d n>;
-- the lowest priority number comes out first, FIFO within one priority.
function M.new_priority_queue(cli, pfx)
  check.object(cli, etcd.Client, 1, "cli", "recipes.new_priority_queue", 2)
  check.arg(pfx, "string", 2, "pfx", "recipes.new_priority_queue", 2)
  return setmetatable({ _cli = cli, _pfx = pfx .. "/" }, PriorityQueue)
end

--- q:enqueue(value, priority) -> true | nil, msg, code. priority: 0..65535.
function PriorityQueue:enqueue(value, priority)
  check.self(self, PriorityQueue, "q:enqueue", 2)
  check.arg(value, "string", 1, "value", "q:enqueue", 2)
  priority = check.arg(priority, "integer", 2, "priority", "q:enqueue", 2)
  if priority < 0 or priority > 65535 then
    check.fail("q:enqueue: bad argument #2 (priority must be within 0..65535)", 2)
  end
  local key, msg, code = new_sequential(self._cli, ("%s%05d"):format(self._pfx, priority), value, nil)
  if not key then return nil, msg, code end
  return true
end

function PriorityQueue:dequeue(timeout)
  check.self(self, PriorityQueue, "q:dequeue", 2)
  timeout = check_timeout(timeout, 1, "q:dequeue")
  local o = top(self._pfx, "key", "ascend")
  return dequeue(self._cli, self._pfx, o, wait.deadline(timeout), timeout, "q:dequeue")
end

return M
