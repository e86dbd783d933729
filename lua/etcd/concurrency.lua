--- Sessions, mutexes, elections and software transactional memory: etcd's Go
-- package `clientv3/concurrency`, with the same key layouts and wait rules,
-- so Lua and Go programs (and `etcdctl lock`/`etcdctl elect`) exclude each
-- other on one cluster. README "Locks, elections and STM".
--
--     local concurrency = require "etcd.concurrency"
--     local s <close> = assert(concurrency.new_session(cli, { ttl = 10 }))
--     local m = concurrency.new_mutex(s, "/my-lock")
--     assert(m:lock(5)) ... assert(m:unlock())
--
-- Everything here is built on the client's public methods: inside a spawned
-- coroutine every wait yields, outside one it blocks, as they do.
-- @module etcd.concurrency
local etcd = require "etcd"
local check = require "etcd.check"
local compat = require "etcd.compat"
local pcall = compat.pcall -- (5.1: one a coroutine can yield through)
local wait = require "etcd.wait"

local M = {}

local now = wait.now
local cmp, op = etcd.compare, etcd.op

-- ---------------------------------------------------------------------------
-- helpers shared with etcd.recipes

--- Go's fmt.Sprintf("%s%x", pfx, id) for an int64 lease id: lowercase hex,
-- a minus sign for a negative id (Go formats the signed value). Exact for
-- every int64, and for ids as decimal strings (5.1/LuaJIT).
function M.key_of(pfx, id)
  return pfx .. etcd.id_hex(id)
end

--- The per-call timeout left before the absolute deadline `dl` (nil: the
-- client's own), or nil when `dl` has passed.
local function left(cli, dl)
  if not dl then return cli._timeout end
  local t = dl - now()
  if t <= 0 then return nil end
  return t < cli._timeout and t or cli._timeout
end
M._left = left

--- The timeout of the first request of an operation: that request is sent
-- even when `dl` has passed (a timeout of 0 means "one attempt, no wait").
local function first(cli, dl)
  return left(cli, dl) or cli._timeout
end
M._first = first

local function late(what, timeout)
  return ("etcd: %s did not finish within %gs"):format(what, timeout)
end
M._late = late

local function expired(what, timeout)
  return nil, late(what, timeout), "timeout"
end
M._expired = expired

-- The first key (by create revision) under a prefix: the owner of a lock, the
-- leader of an election (Go's WithFirstCreate).
local function first_create(pfx)
  return op.get(pfx, { prefix = true, sort_target = "create", sort_order = "ascend", limit = 1 })
end

-- Look through what watch `w` has queued for an event of one of `types` (a
-- set: { DELETE = true }): the event, false (none yet; what was queued is
-- consumed), or nil, msg, code once the watch has ended.
local function find_event(w, types)
  while true do
    local resp, msg, code = w._look()
    if not resp then return resp, msg, code end
    for _, ev in ipairs(resp.events) do
      if types[ev.type] then return ev end
    end
  end
end

-- Wait until one of `a.types` happens to `a.key` (or under it with
-- `a.prefix`), looking from revision `a.rev` on, with one watch closed
-- before returning. Ends early when `a.alive()` (optional) says no, and at
-- the absolute deadline `a.dl` with nil, `a.late` (the caller's message),
-- "timeout". `a.extra`: a list of tokens to park on as well (a session's
-- keep-alive, the watch of our own key). `a.holder` (optional) gets the
-- watch as holder._wait while it waits, so that another coroutine can end
-- the wait by closing it. Returns the event, or nil, msg, code ("timeout",
-- "session_lost" from `alive`, "closed", "compacted", ...).
function M._wait_event(cli, a)
  local w, msg, code = cli:watch(a.key, { prefix = a.prefix, start_revision = a.rev })
  if not w then
    -- a creation that timed out past our deadline: ours ran out too
    if code == "timeout" and a.dl and now() >= a.dl then return nil, a.late, "timeout" end
    return nil, msg, code
  end
  local holder, alive, types = a.holder, a.alive, a.types
  if holder then
    holder._wait = w
    if holder._closed then w:close() end -- closed while the watch was being made
  end
  local toks = w._tok
  if a.extra then
    toks = { w._tok }
    for j = 1, #a.extra do toks[j + 1] = a.extra[j] end
  end
  local ev, m, c = wait.loop(cli._core, toks, a.dl, function()
    if alive then
      local ok, m2, c2 = alive()
      if not ok then return nil, m2, c2 end
    end
    return find_event(w, types)
  end)
  w:close()
  if holder then holder._wait = nil end
  if ev == wait.TIMEOUT then return nil, a.late, "timeout" end
  return ev, m, c
end

M._DELETED = { DELETE = true }
local DELETED = M._DELETED

-- ---------------------------------------------------------------------------
-- sessions

local Session = { __name = "etcd.concurrency.session" }
Session.__index = Session
M.Session = Session
function Session.__valid(s) return rawget(s, "_ka") ~= nil end

local LOST = "etcd: session lost (its lease expired or was revoked)"
-- our key went (with its lease, or deleted): what a wait or its final look says
local KEY_GONE = LOST .. " (the lock key is gone)"
M._KEY_GONE = KEY_GONE

-- Is the session's lease still kept alive? true, or nil, msg, code
-- ("session_lost"; "closed" when the client was closed).
function Session:_alive()
  if self._ended then return nil, "etcd: session is closed", "session_lost" end
  local st = self._ka._h:state()
  if st == "alive" then return true end
  if self._cli._core:_closed() then return nil, "etcd: client is closed", "closed" end
  return nil, LOST, "session_lost"
end

local SESSION_OPTS = { ttl = "integer", lease = "id", timeout = "seconds" }

--- concurrency.new_session(cli, { ttl = 60, lease = id, timeout = s }) ->
-- session | nil, msg, code. Grants a lease of `ttl` seconds (or takes lease
-- `id`) and keeps it alive in the client's pump thread until s:close().
function M.new_session(cli, opts)
  check.object(cli, etcd.Client, 1, "cli", "concurrency.new_session", 2)
  local o = check.options(opts, SESSION_OPTS, "concurrency.new_session", 2)
  local ttl = o.ttl or 60
  if ttl <= 0 then ttl = 60 end -- Go's WithTTL ignores a TTL <= 0
  local id, granted = o.lease, nil
  if not id or id == etcd.id(0) then -- 0 is Go's NoLease: grant one
    local res, msg, code = cli:grant(ttl, { timeout = o.timeout })
    if not res then return nil, msg, code end
    id, granted = res.id, res.ttl
  end
  -- a lease granted here is known to live `granted` seconds at most
  local ka, msg, code = cli:keepalive(id, { ttl = granted })
  if not ka then return nil, msg, code end
  return setmetatable({ _cli = cli, _ka = ka, _id = id, _ttl = ttl }, Session)
end

function Session:lease()
  check.self(self, Session, "s:lease", 2)
  return self._id
end

function Session:client()
  check.self(self, Session, "s:client", 2)
  return self._cli
end

function Session:ttl()
  check.self(self, Session, "s:ttl", 2)
  return self._ttl
end

--- s:orphan(): stop renewing the lease without revoking it (it expires after
-- its TTL; keys and locks held through it last until then). Idempotent.
function Session:orphan()
  check.self(self, Session, "s:orphan", 2)
  if not self._ended then self._ended = "orphaned" end
  self._ka:close()
end

--- s:close() -> true | nil, msg, code: stop renewing and revoke the lease, so
-- every key of the session (its locks, its candidacies) is deleted at once.
-- Idempotent (a close after a successful one returns true; one that failed
-- can be tried again). Also __close: inside a spawned coroutine that fails,
-- the scheduler closes it, so its `<close>` sessions are revoked too.
function Session:close()
  check.self(self, Session, "s:close", 2)
  if self._revoked then return true end
  self._ended = self._ended or "closed"
  self._ka:close()
  -- like Go: if the revoke takes longer than the TTL, the lease has expired anyway
  local res, msg, code = self._cli:revoke(self._id, { timeout = self._ttl })
  if not res and code ~= "lease_not_found" then return nil, msg, code end
  self._revoked = true
  return true
end
-- A finalizer must not wait for etcd (it may run inside another call's
-- wait), so a dropped session only stops renewing: the lease then expires
-- after its TTL. s:close() or <close> revoke at once.
Session.__close = Session.close
function Session:__gc()
  if rawget(self, "_ka") then self._ka:close() end
end

--- s:done(timeout) -> true | nil, msg, "timeout": waits until the session is
-- over: its lease was lost (expired, revoked elsewhere: noticed at the next
-- renewal, at most TTL/3 later), or s:close()/s:orphan(), or the client was
-- closed. `timeout` nil: no limit; 0: just look.
function Session:done(timeout)
  check.self(self, Session, "s:done", 2)
  if timeout ~= nil then timeout = check.arg(timeout, "seconds", 1, "timeout", "s:done", 2) end
  local r = wait.loop(self._cli._core, self._ka._tok, wait.deadline(timeout), function()
    return not self:_alive()
  end)
  if r == wait.TIMEOUT then return nil, "etcd: session still alive at the deadline", "timeout" end
  return true
end

function Session:__tostring()
  local ok = self:_alive()
  return ("etcd.concurrency.session(%s, ttl %d)%s"):format(etcd.id_hex(self._id), self._ttl, ok and "" or " ended")
end

-- Wait until no key is left under `pfx` whose `sort` revision ("create" or
-- "mod") is at most `max_rev` (Go's waitDeletes, and the read-write lock's
-- waitOnLastRev): watch only the newest of them, the key just ahead, until
-- it is deleted, then look again. Ends early, with "session_lost", when
-- session `s` ends, or when our own key `own` (put at revision `own_rev`)
-- is deleted: a lease revoked elsewhere is seen at once, not at the next
-- renewal. Returns the header of the last look.
local function wait_none_before(s, pfx, sort, max_rev, dl, timeout, what, own, own_rev)
  local cli = s._cli
  -- (if the watch cannot be made, the keep-alive alone tells)
  local own_w = own and cli:watch(own, { start_revision = own_rev, filters = { "noput" } }) or nil
  local mine = own_w
  local extra = { s._ka._tok, own_w and own_w._tok or nil }
  local function alive()
    local ok, m, c = s:_alive()
    if not ok then return nil, m, c end
    if mine then
      local ev = find_event(mine, DELETED)
      if ev then return nil, KEY_GONE, "session_lost" end
      -- the watch ended (compacted, ...): the session's keep-alive still tells
      if ev == nil then mine = nil end
    end
    return true
  end
  local function done(...)
    if own_w then own_w:close() end
    return ...
  end
  local o = { prefix = true, sort_target = sort, sort_order = "descend", limit = 1 }
  o["max_" .. sort .. "_revision"] = max_rev
  while true do
    local ok, msg, code = alive()
    if not ok then return done(nil, msg, code) end
    o.timeout = left(cli, dl)
    if not o.timeout then return done(expired(what, timeout)) end
    local res
    res, msg, code = cli:get(pfx, o)
    if not res then return done(nil, msg, code) end
    if #res.kvs == 0 then return done(res.header) end
    -- from the look's revision, at which the key exists: its deletion comes
    -- later (and a compaction since it was created does not matter)
    local ev
    ev, msg, code = M._wait_event(cli, { key = res.kvs[1].key, rev = res.header.revision, types = DELETED, dl = dl,
                                         late = dl and late(what, timeout), alive = alive, extra = extra })
    -- a compacted start revision: look again (the key may be gone already)
    if not ev and code ~= "compacted" then return done(nil, msg, code) end
  end
end
M._wait_none_before = wait_none_before

-- A lease that etcd no longer has means the session is over.
local function session_code(msg, code)
  if code == "lease_not_found" then return LOST .. " (" .. msg .. ")", "session_lost" end
  return msg, code
end
M._session_code = session_code

-- ---------------------------------------------------------------------------
-- mutex

local Mutex = { __name = "etcd.concurrency.mutex" }
Mutex.__index = Mutex
M.Mutex = Mutex
function Mutex.__valid(m) return getmetatable(rawget(m, "_s")) == Session end

--- concurrency.new_mutex(s, pfx): a lock named by `pfx`. Its key is
-- pfx .. "/" .. hex lease id, as in Go (so two mutexes on one session and
-- prefix share one key and do not exclude each other).
function M.new_mutex(s, pfx)
  check.object(s, Session, 1, "s", "concurrency.new_mutex", 2)
  check.arg(pfx, "string", 2, "pfx", "concurrency.new_mutex", 2)
  return setmetatable({ _s = s, _pfx = pfx .. "/", _key = nil, _rev = -1, _hdr = nil }, Mutex)
end

-- Put our key if it is not there, and read the owner, in one txn (Go's
-- tryAcquire). Returns the txn response and whether we own the lock.
local function try_acquire(m, dl)
  local s = m._s
  local cli = s._cli
  local ok, msg, code = s:_alive()
  if not ok then return nil, msg, code end
  local key = M.key_of(m._pfx, s._id)
  local owner = first_create(m._pfx)
  local res
  res, msg, code = cli:txn({
    compare = { cmp.create_revision(key, "=", 0) },
    success = { op.put(key, "", { lease = s._id }), owner },
    failure = { op.get(key), owner },
  }, { timeout = first(cli, dl) })
  if not res then
    msg, code = session_code(msg, code)
    -- a txn that failed (a timeout, a lost connection) may still have been
    -- applied: do not leave a key behind that would block everyone
    if code ~= "session_lost" and not m._key then cli:delete(key) end
    return nil, msg, code
  end
  m._key = key
  m._rev = res.header.revision
  if not res.succeeded then m._rev = res.responses[1].kvs[1].create_revision end
  local kvs = res.responses[2].kvs
  return res, #kvs == 0 or kvs[1].create_revision == m._rev
end

-- Delete our key after a failed or refused lock (best effort, the client's
-- own deadline), and forget it.
local function release(m)
  local key = m._key
  m._key, m._rev = nil, -1
  if key then m._s._cli:delete(key) end
end

--- m:lock(timeout) -> true | nil, msg, code. Waits (yielding inside a spawned
-- coroutine) until every key created before ours under the prefix is gone:
-- locks are granted in arrival order. Codes: "timeout" (our key is removed),
-- "session_lost" (the session ended while waiting), "closed", etcd's.
function Mutex:lock(timeout)
  check.self(self, Mutex, "m:lock", 2)
  if timeout ~= nil then timeout = check.arg(timeout, "seconds", 1, "timeout", "m:lock", 2) end
  if self._busy then check.fail("m:lock: another coroutine is already locking this mutex", 2) end
  self._busy = true
  local ok, a, b, c = pcall(self._lock, self, timeout)
  self._busy = false
  if not ok then error(a, 0) end
  return a, b, c
end

function Mutex:_lock(timeout)
  local dl = wait.deadline(timeout)
  local res, mine, code = try_acquire(self, dl)
  if not res then return nil, mine, code end
  if mine then
    self._hdr = res.header
    return true
  end
  local s = self._s
  local hdr, msg
  hdr, msg, code = wait_none_before(s, self._pfx, "create", self._rev - 1, dl, timeout, "m:lock", self._key,
    self._rev)
  if not hdr then
    release(self)
    return nil, msg, code
  end
  -- as etcd 3.5 does: make sure our key (and so the session) is still there
  local g
  g, msg, code = s._cli:get(self._key, { timeout = first(s._cli, dl) })
  if not g then
    release(self)
    return nil, msg, code
  end
  if #g.kvs == 0 or g.kvs[1].create_revision ~= self._rev then
    self._key, self._rev = nil, -1
    return nil, KEY_GONE, "session_lost"
  end
  self._hdr = g.header
  return true
end

--- m:try_lock() -> true | nil, msg, "locked" (held by another session), or
-- another failure. Never waits for the lock (etcd 3.5's TryLock).
function Mutex:try_lock(opts)
  check.self(self, Mutex, "m:try_lock", 2)
  local o = check.options(opts, { timeout = "seconds" }, "m:try_lock", 2)
  local res, mine, code = try_acquire(self, wait.deadline(o.timeout))
  if not res then return nil, mine, code end
  if mine then
    self._hdr = res.header
    return true
  end
  local key = self._key
  self._key, self._rev = nil, -1
  local d, msg
  d, msg, code = self._s._cli:delete(key, { timeout = o.timeout })
  if not d then return nil, msg, code end
  return nil, "etcd: mutex is locked by another session", "locked"
end

--- m:unlock() -> true | nil, msg, code. Deletes our key. "session_lost" when
-- the key had already gone (the session's lease ended while the lock was
-- held: whatever the lock protected was not protected to the end).
-- Unlocking a mutex that is not locked raises an error.
function Mutex:unlock(opts)
  check.self(self, Mutex, "m:unlock", 2)
  local o = check.options(opts, { timeout = "seconds" }, "m:unlock", 2)
  if not self._key then check.fail("m:unlock: the mutex is not locked", 2) end
  local res, msg, code = self._s._cli:txn({
    compare = { cmp.create_revision(self._key, "=", self._rev) },
    success = { op.delete(self._key) },
  }, { timeout = o.timeout })
  if not res then return nil, msg, code end
  self._key, self._rev = nil, -1
  self._hdr = res.header
  if not res.succeeded then return nil, LOST .. " (the lock had been released by its lease)", "session_lost" end
  return true
end

--- m:is_owner(): a comparison (etcd.compare) that holds while this mutex
-- holds the lock; put it in cli:txn's `compare` to fence writes. When the
-- mutex is not locked it can never hold.
function Mutex:is_owner()
  check.self(self, Mutex, "m:is_owner", 2)
  return cmp.create_revision(self._key or "\0", "=", self._rev)
end

--- m:key(): our key under the prefix while locked (nil otherwise).
function Mutex:key()
  check.self(self, Mutex, "m:key", 2)
  return self._key
end

--- m:header(): the response header of the request that got (or let go of) the lock.
function Mutex:header()
  check.self(self, Mutex, "m:header", 2)
  return self._hdr
end

function Mutex:__tostring()
  return ("etcd.concurrency.mutex(%q)%s"):format(self._pfx:sub(1, -2), self._key and " locked" or "")
end

-- ---------------------------------------------------------------------------
-- election

local Election = { __name = "etcd.concurrency.election" }
Election.__index = Election
M.Election = Election
function Election.__valid(e) return getmetatable(rawget(e, "_s")) == Session end

--- concurrency.new_election(s, pfx): candidates put pfx .. "/" .. hex lease
-- id; the key created first leads.
function M.new_election(s, pfx)
  check.object(s, Session, 1, "s", "concurrency.new_election", 2)
  check.arg(pfx, "string", 2, "pfx", "concurrency.new_election", 2)
  return setmetatable({ _s = s, _pfx = pfx .. "/", _key = nil, _rev = -1, _leader = false }, Election)
end

--- concurrency.resume_election(s, pfx, leader_key, leader_rev): an election
-- this session leads already (Go's ResumeElection), e.g. after a restart
-- that kept the lease: proclaim and resign work without campaigning again.
-- (Go keeps `pfx` without the "/" there, so its Leader and Observe look
-- under a wider prefix; ours adds the "/" as everywhere else.)
function M.resume_election(s, pfx, leader_key, leader_rev)
  check.object(s, Session, 1, "s", "concurrency.resume_election", 2)
  check.arg(pfx, "string", 2, "pfx", "concurrency.resume_election", 2)
  check.arg(leader_key, "string", 3, "leader_key", "concurrency.resume_election", 2)
  leader_rev = check.arg(leader_rev, "integer", 4, "leader_rev", "concurrency.resume_election", 2)
  return setmetatable({ _s = s, _pfx = pfx .. "/", _key = leader_key, _rev = leader_rev, _leader = true },
    Election)
end

local NOT_LEADER = "election: not leader"

--- e:campaign(value, timeout) -> true | nil, msg, code. Puts our candidacy
-- (with `value`) and waits until every earlier candidate is gone. Codes:
-- "timeout" (our candidacy is withdrawn), "session_lost", "closed", etcd's.
function Election:campaign(value, timeout)
  check.self(self, Election, "e:campaign", 2)
  check.arg(value, "string", 1, "value", "e:campaign", 2)
  if timeout ~= nil then timeout = check.arg(timeout, "seconds", 2, "timeout", "e:campaign", 2) end
  local dl = wait.deadline(timeout)
  local s = self._s
  local cli = s._cli
  local ok, msg, code = s:_alive()
  if not ok then return nil, msg, code end
  local key = M.key_of(self._pfx, s._id)
  local res
  res, msg, code = cli:txn({
    compare = { cmp.create_revision(key, "=", 0) },
    success = { op.put(key, value, { lease = s._id }) },
    failure = { op.get(key) },
  }, { timeout = first(cli, dl) })
  if not res then
    msg, code = session_code(msg, code)
    -- the txn may have been applied: withdraw a candidacy we may have put
    if code ~= "session_lost" and not self._leader then cli:delete(key) end
    return nil, msg, code
  end
  self._key, self._rev, self._leader = key, res.header.revision, true
  if not res.succeeded then
    local kv = res.responses[1].kvs[1]
    self._rev = kv.create_revision
    if kv.value ~= value then
      ok, msg, code = self:proclaim(value)
      if not ok then
        self:resign()
        return nil, msg, code
      end
    end
  end
  local hdr
  hdr, msg, code = wait_none_before(s, self._pfx, "create", self._rev - 1, dl, timeout, "e:campaign", key,
    self._rev)
  if not hdr then
    if code == "timeout" then self:resign() else self._leader = false end
    return nil, msg, code
  end
  -- never a false success: our candidacy must still be there
  local g
  g, msg, code = cli:get(key, { timeout = first(cli, dl) })
  if not g then
    self:resign()
    return nil, msg, code
  end
  if #g.kvs == 0 or g.kvs[1].create_revision ~= self._rev then
    self._leader = false
    return nil, LOST .. " (the candidacy key is gone)", "session_lost"
  end
  self._hdr = res.header
  return true
end

--- e:proclaim(value) -> true | nil, msg, code: the leader announces a new
-- value without an election. "not_leader" when we are not (any more) leader.
function Election:proclaim(value, opts)
  check.self(self, Election, "e:proclaim", 2)
  check.arg(value, "string", 1, "value", "e:proclaim", 2)
  local o = check.options(opts, { timeout = "seconds" }, "e:proclaim", 2)
  if not self._leader then return nil, NOT_LEADER, "not_leader" end
  local res, msg, code = self._s._cli:txn({
    compare = { cmp.create_revision(self._key, "=", self._rev) },
    success = { op.put(self._key, value, { lease = self._s._id }) },
  }, { timeout = o.timeout })
  if not res then return nil, session_code(msg, code) end
  if not res.succeeded then
    self._key, self._leader = nil, false
    return nil, NOT_LEADER, "not_leader"
  end
  self._hdr = res.header
  return true
end

--- e:resign() -> true | nil, msg, code: give up leadership (or candidacy);
-- the next candidate is elected. Nothing to do when not leader.
function Election:resign(opts)
  check.self(self, Election, "e:resign", 2)
  local o = check.options(opts, { timeout = "seconds" }, "e:resign", 2)
  if not self._leader then return true end
  local res, msg, code = self._s._cli:txn({
    compare = { cmp.create_revision(self._key, "=", self._rev) },
    success = { op.delete(self._key) },
  }, { timeout = o.timeout })
  if not res then return nil, msg, code end -- still leader: it can be tried again
  self._hdr = res.header
  self._key, self._leader = nil, false
  return true
end

--- e:leader() -> get response whose kvs[1] is the leader's key and value, or
-- nil, "election: no leader", "no_leader".
function Election:leader(opts)
  check.self(self, Election, "e:leader", 2)
  local o = check.options(opts, { timeout = "seconds" }, "e:leader", 2)
  local res, msg, code = self._s._cli:exec(first_create(self._pfx), { timeout = o.timeout })
  if not res then return nil, msg, code end
  if #res.kvs == 0 then return nil, "election: no leader", "no_leader" end
  return res
end

function Election:key()
  check.self(self, Election, "e:key", 2)
  return self._key
end

function Election:rev()
  check.self(self, Election, "e:rev", 2)
  return self._rev
end

function Election:header()
  check.self(self, Election, "e:header", 2)
  return self._hdr
end

function Election:__tostring()
  return ("etcd.concurrency.election(%q)%s"):format(self._pfx:sub(1, -2), self._leader and " leader" or "")
end

-- ---------------------------------------------------------------------------
-- observing an election

local NO_CHANGE = "etcd: no leader change before the deadline"
local PUT = { PUT = true }

local Observer = { __name = "etcd.concurrency.observer", _kind = "observer" }
Observer.__index = Observer
M.Observer = Observer
function Observer.__valid(o) return getmetatable(rawget(o, "_e")) == Election end

--- e:observe() -> observer: `for resp in e:observe() do ... end` gives a get
-- response { header, kvs = { leader kv } } for the current leader and then
-- for each change: a new leader, or a new value proclaimed. `obs:next(timeout)`
-- gives one at a time; `obs:close()` (also <close>, or leaving the for loop
-- with break in Lua 5.4) ends it.
function Election:observe()
  check.self(self, Election, "e:observe", 2)
  local obs = setmetatable({ _e = self, _cli = self._s._cli, _evs = {}, _i = 0 }, Observer)
  return obs, nil, nil, obs
end

-- The current leader, or (when there is none) the first candidate put after
-- the look; then a watch on its key.
local function observe_leader(self, dl)
  local cli, pfx = self._cli, self._e._pfx
  local t = left(cli, dl)
  if not t then return nil, NO_CHANGE, "timeout" end
  local res, msg, code = cli:exec(first_create(pfx), { timeout = t })
  if not res then return nil, msg, code end
  local hdr, kv = res.header, res.kvs[1]
  if not kv then
    local ev
    ev, msg, code = M._wait_event(cli, { key = pfx, prefix = true, rev = res.header.revision, types = PUT, dl = dl,
                                         late = NO_CHANGE, holder = self })
    if not ev then
      if self._closed then return nil, "etcd: observer is closed", "closed" end
      if code == "timeout" then return nil, NO_CHANGE, "timeout" end
      return nil, msg, code
    end
    kv = ev.kv
    hdr = { revision = kv.mod_revision, cluster_id = hdr.cluster_id, member_id = hdr.member_id,
            raft_term = hdr.raft_term }
  end
  local w
  w, msg, code = cli:watch(kv.key, { start_revision = hdr.revision + 1 })
  if not w then return nil, msg, code end
  if self._closed then
    w:close()
    return nil, "etcd: observer is closed", "closed"
  end
  self._w = w
  return { header = hdr, kvs = { kv }, count = 1, more = false }
end

--- obs:next(timeout) -> response | nil, msg, code ("timeout": nothing new in
-- time, the observer stays usable; "closed").
function Observer:next(timeout)
  check.self(self, Observer, "obs:next", 2)
  if timeout ~= nil then timeout = check.arg(timeout, "seconds", 1, "timeout", "obs:next", 2) end
  local a, b, c = wait.alone(self, "obs:next", 2, self._next, self, timeout)
  return a, b, c -- not a tail call: misuse is raised at the caller's level
end

function Observer:_next(timeout)
  local dl = wait.deadline(timeout)
  while true do
    if self._closed then return nil, "etcd: observer is closed", "closed" end
    local w = self._w
    if not w then return observe_leader(self, dl) end
    local evs, i = self._evs, self._i
    if i < #evs then
      i = i + 1
      self._i = i
      local ev = evs[i]
      if ev.type == "DELETE" then
        w:close()
        self._w, self._evs, self._i = nil, {}, 0
      else
        return { header = self._hdr, kvs = { ev.kv }, count = 1, more = false }
      end
    else
      local wt
      if dl then
        wt = dl - now()
        if wt < 0 then wt = 0 end
      end
      local resp, msg, code = w:next(wt)
      if not resp then
        if code == "timeout" then return nil, NO_CHANGE, "timeout" end
        if self._closed then return nil, "etcd: observer is closed", "closed" end
        return nil, msg, code
      end
      self._evs, self._i, self._hdr = resp.events, 0, resp.header
    end
  end
end

--- The iterator protocol: raises an error object { message =, code = } on a
-- failure; ends (nil) once the observer is closed.
function Observer:__call()
  local resp, msg, code = self:next()
  if resp then return resp end
  if self._closed then return nil end
  error(require("etcd.errors").new(msg, code), 2)
end

function Observer:close()
  check.self(self, Observer, "obs:close", 2)
  self._closed = true
  if self._w then self._w:close() end
  if self._wait then self._wait:close() end
end
Observer.__close = Observer.close

-- ---------------------------------------------------------------------------
-- STM

local ISOLATION = {
  serializable_snapshot = true, serializable = true, repeatable_reads = true, read_committed = true,
}

local STM = { __name = "etcd.concurrency.stm" }
STM.__index = STM
M.STM = STM

-- Raised by stm:get when etcd fails: new_stm returns it as nil, msg, code.
local Abort = {}
Abort.__index = Abort

local function throw(msg, code)
  error(setmetatable({ msg = msg, code = code }, Abort), 0)
end

local function value_of(resp)
  local kv = resp and resp.kvs[1]
  return kv and kv.value
end

-- Go's stm.fetch: the first of `keys` already read, or one txn reading all.
local function fetch(self, keys)
  if #keys == 0 then return nil end
  local ops = {}
  for i, k in ipairs(keys) do
    local r = self._rset[k]
    if r then return r end
    ops[i] = op.get(k, self._get_opts)
  end
  local res, msg, code = self._cli:txn({ success = ops }, { timeout = self._timeout })
  if not res then throw(msg, code) end
  for i, k in ipairs(keys) do self._rset[k] = res.responses[i] end
  return res.responses[1]
end

--- stm:get(key, ...) -> value (nil for a missing key): the value of the
-- first key, read in one txn with the others (which go into the read set).
-- A key written in this transaction reads as written.
function STM:get(...)
  check.self(self, STM, "stm:get", 2)
  local keys = { ... }
  if #keys == 0 then check.fail("stm:get: bad argument #1 (key expected)", 2) end
  for i, k in ipairs(keys) do check.arg(k, "string", i, "key", "stm:get", 2) end
  for _, k in ipairs(keys) do
    local w = self._wset[k]
    if w then return w.val end
  end
  if not self._snap then return value_of(fetch(self, keys)) end
  -- serializable levels: reads come from the revision of the first read
  local first_read = next(self._rset) == nil
  for _, k in ipairs(keys) do
    local r = self._prefetch[k]
    if r then
      self._prefetch[k] = nil
      self._rset[k] = r
    end
  end
  local resp = fetch(self, keys)
  if first_read then self._get_opts = { revision = resp.header.revision, serializable = true } end
  return value_of(resp)
end

--- stm:put(key, value, opts): write at commit (opts as for etcd.op.put).
function STM:put(key, value, opts)
  check.self(self, STM, "stm:put", 2)
  check.arg(key, "string", 1, "key", "stm:put", 2)
  check.arg(value, "string", 2, "value", "stm:put", 2)
  local o = op.put(key, value, opts)
  self._wset[key] = { val = value, op = o }
end

--- stm:del(key): delete at commit.
function STM:del(key)
  check.self(self, STM, "stm:del", 2)
  check.arg(key, "string", 1, "key", "stm:del", 2)
  self._wset[key] = { val = nil, op = op.delete(key) }
end

--- stm:rev(key) -> the key's mod revision as read (0: missing).
function STM:rev(key)
  check.self(self, STM, "stm:rev", 2)
  check.arg(key, "string", 1, "key", "stm:rev", 2)
  if self._snap then self:get(key) end
  local resp = fetch(self, { key })
  local kv = resp and resp.kvs[1]
  return kv and kv.mod_revision or 0
end

local function read_cmps(rset, out)
  for k, r in pairs(rset) do
    local kv = r.kvs[1]
    out[#out + 1] = cmp.mod_revision(k, "=", kv and kv.mod_revision or 0)
  end
  return out
end

-- The comparisons that must hold for the commit, per isolation level.
local function conflicts(self)
  local iso = self._iso
  if iso == "read_committed" then return {} end
  local out = read_cmps(self._rset, {})
  if iso == "serializable_snapshot" then
    local base = compat.maxinteger - 1
    for _, r in pairs(self._rset) do
      if r.header.revision < base then base = r.header.revision end
    end
    for k in pairs(self._wset) do out[#out + 1] = cmp.mod_revision(k, "<", base + 1) end
  end
  return out
end

-- One commit attempt: the response, or nil on a conflict (retry).
local function commit(self)
  local puts = {}
  for _, w in pairs(self._wset) do puts[#puts + 1] = w.op end
  local t = { compare = conflicts(self), success = puts }
  local keys
  if self._snap then
    -- read the read set again in the failure branch: a retry starts from it
    keys = {}
    t.failure = {}
    for k in pairs(self._rset) do
      keys[#keys + 1] = k
      t.failure[#t.failure + 1] = op.get(k)
    end
  end
  local res, msg, code = self._cli:txn(t, { timeout = self._timeout })
  if not res then throw(msg, code) end
  if res.succeeded then return res end
  if self._snap then
    local pre = {}
    for i, k in ipairs(keys) do pre[k] = res.responses[i] end
    self._prefetch = pre
    self._get_opts = nil
  end
  return nil
end

local STM_OPTS = { isolation = "string", prefetch = "table", timeout = "seconds" }

--- concurrency.new_stm(cli, fn, opts) -> txn response | nil, msg, code.
-- Runs fn(stm) and commits its writes if what it read is unchanged (per the
-- isolation level); on a conflict runs fn again, as Go's NewSTM does. An
-- error raised by fn aborts without committing: nil, err, "aborted".
-- opts: isolation ("serializable_snapshot" (default), "serializable",
-- "repeatable_reads", "read_committed"), prefetch (keys read in the first
-- txn), timeout (of each request).
function M.new_stm(cli, fn, opts)
  check.object(cli, etcd.Client, 1, "cli", "concurrency.new_stm", 2)
  if type(fn) ~= "function" then
    check.fail(("concurrency.new_stm: bad argument #2 (fn): function expected, got %s"):format(type(fn)), 2)
  end
  local o = check.options(opts, STM_OPTS, "concurrency.new_stm", 2)
  local iso = o.isolation or "serializable_snapshot"
  if not ISOLATION[iso] then
    check.fail(("concurrency.new_stm: option 'isolation' must be one of serializable_snapshot, serializable, "
      .. "repeatable_reads, read_committed (got %q)"):format(iso), 2)
  end
  local prefetch = o.prefetch
  if prefetch then
    check.list(prefetch, "concurrency.new_stm: option 'prefetch'", 2)
    for i, k in ipairs(prefetch) do
      if type(k) ~= "string" then
        check.fail(("concurrency.new_stm: option 'prefetch'[%d] must be a string"):format(i), 2)
      end
    end
  end
  local snap = iso == "serializable_snapshot" or iso == "serializable"
  local self = setmetatable({ _cli = cli, _iso = iso, _snap = snap, _timeout = o.timeout, _prefetch = {},
                              _get_opts = (not snap) and { serializable = true } or nil }, STM)
  while true do
    self._rset, self._wset = {}, {}
    local ok, err = pcall(function()
      if prefetch and #prefetch > 0 then self:get(compat.unpack(prefetch)) end
      fn(self)
    end)
    if not ok then
      if getmetatable(err) == Abort then return nil, err.msg, err.code end
      return nil, err, "aborted"
    end
    local cok, res = pcall(commit, self)
    if not cok then
      if getmetatable(res) == Abort then return nil, res.msg, res.code end
      error(res, 0)
    end
    if res then return res end
  end
end

return M
