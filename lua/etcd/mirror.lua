--- etcd.mirror(cli, prefix, opts): a local copy of a prefix, kept by a watch
-- (README "Mirroring a prefix", docs/DESIGN.md "The prefix mirror").
--
-- A mirror loads the prefix page by page at one revision, then watches it
-- from the next revision. Whoever calls the mirror moves it on: reads apply
-- what the watch has queued (they never wait and never call etcd); m:poll,
-- m:wait, m:run and m:changes also wait, and do what needs etcd: re-creating
-- the watch, a reload after a compaction or after the cluster's revision
-- went backwards (a restore from a snapshot, a new cluster behind the same
-- endpoints). A reload is built aside and swapped in at once, so a reader
-- sees the copy at one revision or at the next, never half of one; only the
-- differences are delivered as changes.
--
-- One coroutine at a time moves the mirror (`_busy`); others that want to
-- wait park on the mirror's tick (an etcd.wait event signalled after every
-- round), and readers meanwhile read the copy as it is.
-- @module etcd.mirror
require "etcd.core"
local check = require "etcd.check"
local kv = require "etcd.kv"
local wait = require "etcd.wait"
local compat = require "etcd.compat"
local pcall = compat.pcall -- (5.1: one a coroutine can yield through)
local core = require "etcd.core"

local M = {}

local now = wait.now
local running = compat.running
local ID0 = core.id(0)

local OPTS = {
  on_change = "function", on_error = "function", decode = "function",
  keys_only = "boolean", page_size = "integer", timeout = "seconds",
  progress_interval = "seconds",
}

local CLOSED = "etcd: mirror is closed"
local PAGE = 1000
local PROGRESS_EVERY = 10   -- ask etcd where the store is after this much silence
local PROVE_FIRST, PROVE_AGAIN = 0.02, 0.5 -- m:wait: when a read proves a revision
local BACKOFF_MIN, BACKOFF_MAX = 0.25, 5

local Mirror = { __name = "etcd.mirror", _kind = "mirror" }
Mirror.__index = Mirror
M.Mirror = Mirror
function Mirror.__valid(v) return rawget(v, "_kvs") ~= nil end

-- ---------------------------------------------------------------------------
-- helpers

-- Tell on_error (a callback's failure, a value that does not decode).
local function notify(self, msg, code)
  local f = self._on_error
  if f then
    local ok, e = pcall(f, msg, code)
    if not ok then io.stderr:write(("etcd.mirror: on_error failed: %s\n"):format(tostring(e))) end
  end
end

local function close_watch(self)
  local w = self._w
  if w then
    self._w = nil
    w:close()
  end
end

-- A failure that the next round retries after a pause (doubling); a closed
-- client ends the mirror instead.
local function failed(self, msg, code)
  if code == "closed" or self._cli._core:_closed() then
    self._dead = { msg, "closed" }
    close_watch(self)
    return nil, msg, "closed"
  end
  self._err = { msg, code }
  notify(self, msg, code)
  local b = self._backoff
  self._retry_at = now() + b * (0.9 + 0.2 * math.random())
  self._backoff = math.min(b * 2, BACKOFF_MAX)
  return nil, msg, code
end

local function succeeded(self)
  self._retry_at = nil
  self._backoff = BACKOFF_MIN
  self._err = nil
end

-- Wake the coroutines that wait for the mirror to move.
local function tick(self)
  local t = self._tick
  self._tick = wait.event()
  t:signal()
end

-- The value m:get gives for a kv: decoded ones are kept in `vals` (only
-- with `decode`: without, the kv's own value is it, and nothing is stored).
local function value_of(self, key, kvv, vals)
  if kvv == nil then return nil end
  if self._decode then return vals[key] end
  if self._keys_only then return true end
  return kvv.value
end

local function decoded(self, key, kvv, vals, derr)
  local dec = self._decode
  if self._keys_only then
    kvv.value = nil
  elseif dec then
    local ok, v, e = pcall(dec, kvv.value, key)
    if ok and v ~= nil then
      vals[key], derr[key] = v, nil
    else
      local err = tostring(ok and (e or "decode returned nil") or v)
      vals[key], derr[key] = nil, err
      notify(self, ("etcd.mirror: cannot decode the value of %q: %s"):format(key, err), "decode")
    end
  end
end

-- Hand a batch to the change queues and to on_change.
local function deliver(self, batch)
  self._batches = self._batches + 1
  for q in pairs(self._subs) do
    q.n = q.n + 1
    q[q.n] = batch
  end
  local f = self._on_change
  if f then
    for i = 1, #batch do
      local c = batch[i]
      local ok, e = pcall(f, c.kind, c.key, c.kv, c.prev_kv, c.value)
      if not ok then notify(self, ("etcd.mirror: on_change failed: %s"):format(tostring(e)), "callback") end
    end
  end
end

-- The copy must be loaded again (`why`: "compacted", "restored").
local function need_reload(self, why)
  close_watch(self)
  self._need = self._need or why
end

-- ---------------------------------------------------------------------------
-- loading

-- Swap a finished load in and deliver its differences from the copy.
local function swap(self, ld)
  local old, oldv = self._kvs, self._vals
  local batch = { revision = ld.rev, reload = ld.why }
  local n = 0
  if ld.why ~= "initial" then
    for key, o in pairs(old) do
      if ld.kvs[key] == nil then
        n = n + 1
        batch[n] = { kind = "delete", key = key, prev_kv = o, prev_value = value_of(self, key, o, oldv) }
      end
    end
    for key, k in pairs(ld.kvs) do
      local o = old[key]
      if not o or o.mod_revision ~= k.mod_revision or o.create_revision ~= k.create_revision
        or o.value ~= k.value or o.lease ~= k.lease then
        n = n + 1
        batch[n] = { kind = "put", key = key, kv = k, value = value_of(self, key, k, ld.vals), prev_kv = o,
                     prev_value = value_of(self, key, o, oldv) }
      end
    end
    table.sort(batch, function(a, b) return a.key < b.key end)
  end
  self._kvs, self._vals, self._derr, self._n = ld.kvs, ld.vals, ld.derr, ld.n
  -- a revision m:wait proved against the old copy holds for the new one
  -- (nothing in the prefix changed between the old copy and it, and the
  -- load began in between), unless the store went back
  if ld.why == "restored" or ld.rev > self._rev then self._rev = ld.rev end
  self._seen, self._last_ev, self._last_n, self._skip = ld.rev, nil, 0, nil
  self._cluster = ld.cluster
  self._loading, self._need = nil, nil
  self._heard = now()
  if ld.why ~= "initial" then
    self._reloads = self._reloads + 1
    if ld.why == "restored" then self._restores = self._restores + 1 end
  end
  if n > 0 then deliver(self, batch) end
end

-- Load pages until the load is done (true) or `dl` passed between pages
-- (false: the next round goes on where this one stopped).
local function load(self, dl)
  local ld = self._loading
  if not ld then
    ld = { kvs = {}, vals = {}, derr = {}, n = 0, key = self._prefix, rev = 0, why = self._need }
    self._loading = ld
  end
  local cli = self._cli
  while true do
    local res, msg, code = cli:get(ld.key, { range_end = self._end, limit = self._page, revision = ld.rev,
                                             keys_only = self._keys_only, timeout = self._timeout })
    if self._closed then -- closed meanwhile: the copy stays as it was
      self._loading = nil
      return nil, CLOSED, "closed"
    end
    if not res then
      if code == "compacted" then self._loading = nil end -- its revision is gone: start again
      return nil, msg, code
    end
    if ld.rev == 0 then
      ld.rev, ld.cluster = res.header.revision, res.header.cluster_id
    end
    local kvs, vals, derr = ld.kvs, ld.vals, ld.derr
    local list = res.kvs
    for i = 1, #list do
      local k = list[i]
      local key = k.key
      if kvs[key] == nil then ld.n = ld.n + 1 end
      kvs[key] = k
      local o = self._decode and self._kvs[key]
      if o and o.mod_revision == k.mod_revision and o.value == k.value then
        vals[key], derr[key] = self._vals[key], self._derr[key] -- decoded once
      else
        decoded(self, key, k, vals, derr)
      end
    end
    if not res.more or #list == 0 then
      swap(self, ld)
      return true
    end
    ld.key = list[#list].key .. "\0"
    if dl and now() >= dl then return false end
  end
end

-- ---------------------------------------------------------------------------
-- applying watch responses (never yields, except in the user's callbacks)

local function apply_events(self, events)
  local kvs, vals, derr = self._kvs, self._vals, self._derr
  local batch, brev = nil, nil
  for i = 1, #events do
    local ev = events[i]
    local k = ev.kv
    local rev = k.mod_revision
    if rev ~= brev then
      if batch and #batch > 0 then deliver(self, batch) end
      batch, brev = { revision = rev }, rev
    end
    local key = k.key
    local prev = kvs[key]
    local prev_value = value_of(self, key, prev, vals)
    if ev.type == "DELETE" then
      if prev ~= nil then
        kvs[key], vals[key], derr[key] = nil, nil, nil
        self._n = self._n - 1
        batch[#batch + 1] = { kind = "delete", key = key, prev_kv = prev, prev_value = prev_value }
      end
    else
      if prev == nil then self._n = self._n + 1 end
      kvs[key] = k
      decoded(self, key, k, vals, derr)
      batch[#batch + 1] = { kind = "put", key = key, kv = k, value = value_of(self, key, k, vals), prev_kv = prev,
                            prev_value = prev_value }
    end
    if rev == self._last_ev then self._last_n = self._last_n + 1 else self._last_n = 1 end
    self._seen, self._last_ev = rev, rev
    if rev > self._rev then self._rev = rev end
  end
  if batch and #batch > 0 then deliver(self, batch) end
end

-- One response of the watch. Returns true when the copy moved.
local function apply(self, resp)
  self._heard = now()
  local h = resp.header
  if h and h.cluster_id ~= ID0 and self._cluster and h.cluster_id ~= self._cluster then
    need_reload(self, "restored") -- another cluster answers behind the same endpoints
    return false
  end
  local events = resp.events
  local skip = self._skip
  if skip and #events > 0 then
    -- a watch opened again inside a revision: drop what was applied of it
    local i = 1
    while i <= #events and skip.n > 0 and events[i].kv.mod_revision == skip.rev do
      i, skip.n = i + 1, skip.n - 1
    end
    if i > 1 then events = compat.move(events, i, #events, 1, {}) end
    if #events > 0 or skip.n == 0 then self._skip = nil end
    if #events == 0 then return false end
  end
  if #events == 0 then
    if resp.progress_notify and h then
      local r = h.revision
      if resp.watch_id ~= -1 then
        -- etcd's own notification for this watch comes in order with its
        -- events: everything up to r was sent
        if r < self._seen then
          self._suspect = true -- a member behind the others, or a store gone back
        elseif r > self._seen then
          self._seen, self._last_ev, self._skip = r, nil, nil
          if r > self._rev then
            self._rev = r
            return true
          end
        end
      elseif r < self._rev then
        -- The answer to a progress request (watch_id -1) only says where
        -- the store is: etcd 3.4 sends it ahead of events still queued.
        -- Below the copy: a member behind the one we heard from, or a store
        -- restored from a snapshot; a linearizable read tells.
        self._suspect = true
      end
    end
    return false
  end
  local first = events[1].kv.mod_revision
  if first < self._seen or (first == self._seen and first ~= self._last_ev) then
    -- (the engine never repeats an event: only a different history can)
    need_reload(self, "restored")
    return false
  end
  apply_events(self, events)
  return true
end

-- How the watch ended -> what to do.
local function ended(self, msg, code)
  close_watch(self)
  if code == "compacted" then
    need_reload(self, "compacted")
    return true
  end
  if code == "closed" and not self._cli._core:_closed() then
    return true -- our own watch, closed by m:close() or for a reload
  end
  return failed(self, msg, code) -- (a closed client ends the mirror there)
end

-- Apply everything the watch has queued, without waiting. Returns the number
-- of responses applied, or nil, msg, code when the watch ended.
local function drain(self)
  local w, n = self._w, 0
  while w and w == self._w do
    local resp, msg, code = w._look()
    if resp == false then break end
    if resp == nil then
      local ok, m, c = ended(self, msg, code)
      if ok == nil then return nil, m, c end
      break
    end
    if apply(self, resp) then n = n + 1 end
  end
  return n
end

-- ---------------------------------------------------------------------------
-- one round of work, by the coroutine that holds the mirror

local function open_watch(self)
  -- Open at the revision after the last one seen whole; after an event, at
  -- that event's revision, dropping the events of it already applied (a
  -- queue pause of the engine may have ended a response inside it).
  local start = self._seen + 1
  if self._last_ev == self._seen and self._last_n > 0 then
    start = self._seen
    self._skip = { rev = self._seen, n = self._last_n }
  end
  -- `fragment`: the pieces of a large response are joined, so a revision
  -- is applied whole
  local w, msg, code = self._cli:watch(self._prefix, { range_end = self._end, start_revision = start,
                                                       progress_notify = true, fragment = true })
  if not w then
    self._skip = nil
    return nil, msg, code
  end
  if self._closed then -- closed while the watch was being created
    w:close()
    self._skip = nil
    return nil, CLOSED, "closed"
  end
  self._w = w
  self._watches = self._watches + 1
  self._heard = now()
  return true
end

-- Does the copy (at self._rev) equal the store at `revision`? It does when
-- no key of the prefix was written after self._rev up to `revision` and the
-- prefix holds as many keys then as the copy: one read at that revision
-- (etcd's count ignores the revision filter). Then the copy reflects it.
local function prove(self, revision)
  if self._need or self._suspect then return false end -- a reload decides
  local rev0, n0 = self._rev, self._n
  local res, msg, code = self._cli:get(self._prefix, {
    range_end = self._end, revision = revision, min_mod_revision = rev0 + 1, keys_only = true, limit = 1,
    timeout = self._timeout,
  })
  if not res then return nil, msg, code end
  if self._rev ~= rev0 or self._n ~= n0 or self._need or self._suspect then
    return false -- moved meanwhile: look again
  end
  if #res.kvs == 0 and res.count == n0 and revision > self._rev then
    self._rev = revision
    tick(self)
    return true
  end
  return false
end

-- Is the cluster really behind the copy? A linearizable read says.
local function confirm(self)
  local res, msg, code = self._cli:get(self._prefix, { keys_only = true, timeout = self._timeout })
  if not res then return nil, msg, code end
  self._suspect = nil
  local h = res.header
  if h.revision < self._rev or (self._cluster and h.cluster_id ~= self._cluster) then
    need_reload(self, "restored")
  end
  return true
end

-- Work until something moved or `dl` (absolute; nil: none) passed: true, or
-- nil, msg, code (a failure, retried by a later round after a pause).
local function round(self, dl)
  if self._dead then return nil, self._dead[1], self._dead[2] end
  if self._retry_at then
    local t = now()
    if t < self._retry_at then
      local until_ = self._retry_at
      if dl and dl < until_ then until_ = dl end
      self._tick:wait(until_) -- nothing signals it while we hold the mirror: a pause
      if now() < self._retry_at then return nil, self._err[1], self._err[2] end
    end
  end
  -- (each step below may yield: m:close() from another coroutine, or from
  -- on_change, ends the round after it)
  if self._need then
    local ok, msg, code = load(self, dl)
    if self._closed then return nil, CLOSED, "closed" end
    if ok == nil then return failed(self, msg, code) end
    succeeded(self)
    if ok == false then return true end
  end
  if self._suspect then
    local ok, msg, code = confirm(self)
    if self._closed then return nil, CLOSED, "closed" end
    if not ok then return failed(self, msg, code) end
    if self._need then return true end
  end
  if not self._w then
    local ok, msg, code = open_watch(self)
    if self._closed then return nil, CLOSED, "closed" end
    if not ok then return failed(self, msg, code) end
    succeeded(self)
  end
  local n, msg, code = drain(self)
  if n == nil then return nil, msg, code end
  if n > 0 or not self._w then return true end
  -- nothing queued: wait for the watch, and ask etcd where the store is when
  -- it has been silent for a while
  local t = now()
  local ask_at = math.max(self._heard, self._asked) + self._progress
  if t >= ask_at then
    self._asked = t
    self._cli:request_progress()
    ask_at = t + self._progress
  end
  local until_ = dl
  if not until_ or ask_at < until_ then until_ = ask_at end
  local w = self._w
  local a, b, c = wait.loop_alone(w, until_, "etcd.mirror", 1)
  if a == wait.TIMEOUT or self._closed then return true end
  if a == nil then
    local ok, m, cc = ended(self, b, c)
    if ok == nil then return nil, m, cc end
    return true
  end
  if apply(self, a) then succeeded(self) end
  n, msg, code = drain(self)
  if n == nil then return nil, msg, code end
  return true
end

-- Take the mirror and do one round; if another coroutine holds it, wait for
-- its next round instead. Returns true or nil, msg, code.
local function advance(self, dl)
  if self._closed then return nil, CLOSED, "closed" end
  local b = self._busy
  if b == running() then
    error("etcd.mirror: a mirror cannot be waited on from its own on_change or on_error", 3)
  end
  if b and compat.alive(b) then
    self._tick:wait(dl)
    return true
  end
  self._busy = running()
  local ok, a, msg, code = pcall(round, self, dl)
  self._busy = nil
  tick(self)
  if not ok then error(a, 0) end
  return a, msg, code
end

-- What reads do first: apply what is queued, when nobody else holds the mirror.
local function catch_up(self)
  if self._closed or not self._w then return end
  local b = self._busy
  if b and compat.alive(b) then return end
  self._busy = running()
  local ok, e = pcall(drain, self)
  self._busy = nil
  tick(self)
  if not ok then error(e, 0) end
end

-- ---------------------------------------------------------------------------
-- the public surface

--- etcd.mirror(cli, prefix, opts) -> mirror | nil, msg, code
function M.new(cli, prefix, opts)
  check.object(cli, require("etcd").Client, 1, "cli", "etcd.mirror", 2)
  check.arg(prefix, "string", 2, "prefix", "etcd.mirror", 2)
  local o = check.options(opts, OPTS, "etcd.mirror", 2)
  local page = o.page_size or PAGE
  if page < 1 then check.fail("etcd.mirror: option 'page_size' must be at least 1", 2) end
  if o.keys_only and o.decode then check.fail("etcd.mirror: options 'keys_only' and 'decode' exclude each other", 2) end
  local self = setmetatable({
    _cli = cli, _prefix = prefix, _end = kv.prefix_end(prefix), prefix = prefix,
    _page = page, _keys_only = o.keys_only or false, _decode = o.decode, _timeout = o.timeout,
    _on_change = o.on_change, _on_error = o.on_error,
    _progress = (o.progress_interval and o.progress_interval > 0) and o.progress_interval or PROGRESS_EVERY,
    _kvs = {}, _vals = {}, _derr = {}, _n = 0, _rev = 0, _seen = 0, _last_ev = nil, _last_n = 0, _skip = nil,
    _cluster = nil,
    _need = "initial", _loading = nil, _w = nil, _suspect = nil,
    _subs = setmetatable({}, { __mode = "k" }), _tick = wait.event(),
    _busy = nil, _closed = false, _dead = nil, _err = nil,
    _retry_at = nil, _backoff = BACKOFF_MIN, _heard = now(), _asked = -math.huge,
    _batches = 0, _reloads = 0, _restores = 0, _watches = 0,
  }, Mirror)
  -- the first load and watch: any failure is the caller's
  while self._need do
    local ok, msg, code = load(self, nil)
    if not ok then return nil, msg, code end
  end
  local ok, msg, code = open_watch(self)
  if not ok then return nil, msg, code end
  return self
end

--- m:get(key) -> value, kv (nil when absent); with `decode`, the decoded
-- value (nil, kv, err when decoding failed); with `keys_only`, true, kv.
function Mirror:get(key)
  check.self(self, Mirror, "m:get", 2)
  check.arg(key, "string", 1, "key", "m:get", 2)
  catch_up(self)
  local k = self._kvs[key]
  if k == nil then return nil end
  return value_of(self, key, k, self._vals), k, self._derr[key]
end

--- for key, value, kv in m:pairs() do ... end: the copy at one revision, in
-- key order (changes applied meanwhile do not show in this loop).
function Mirror:pairs()
  check.self(self, Mirror, "m:pairs", 2)
  catch_up(self)
  local keys, n = {}, 0
  local kvs, vals = self._kvs, self._vals
  for key in next, kvs do
    n = n + 1
    keys[n] = key
  end
  table.sort(keys)
  local ks, vs = {}, {}
  for i = 1, n do
    local key = keys[i]
    local k = kvs[key]
    ks[i], vs[i] = k, value_of(self, key, k, vals)
  end
  local i = 0
  return function()
    i = i + 1
    if i > n then return nil end
    return keys[i], vs[i], ks[i]
  end
end

--- m:count() -> number of keys in the copy.
function Mirror:count()
  check.self(self, Mirror, "m:count", 2)
  catch_up(self)
  return self._n
end

--- m:revision() -> the store revision the copy reflects.
function Mirror:revision()
  check.self(self, Mirror, "m:revision", 2)
  catch_up(self)
  return self._rev
end

--- m:poll(timeout) -> batches applied (0: none) | nil, msg, code. Waits up
-- to `timeout` seconds (default 0) for something to apply.
function Mirror:poll(timeout)
  check.self(self, Mirror, "m:poll", 2)
  if timeout ~= nil then timeout = check.value(timeout, "seconds", "m:poll: bad argument #1 (timeout)", 2) end
  local dl = now() + (timeout or 0)
  local before = self._batches
  local rev = self._rev
  repeat
    local ok, msg, code = advance(self, dl)
    if not ok then return nil, msg, code end
  until self._batches ~= before or self._rev ~= rev or now() >= dl
  return self._batches - before
end

--- m:wait(revision, timeout) -> revision | nil, msg, code: returns once the
-- copy reflects at least `revision` ("timeout" after `timeout` seconds; nil:
-- no limit).
function Mirror:wait(revision, timeout)
  check.self(self, Mirror, "m:wait", 2)
  revision = check.arg(revision, "integer", 1, "revision", "m:wait", 2)
  if timeout ~= nil then timeout = check.value(timeout, "seconds", "m:wait: bad argument #2 (timeout)", 2) end
  local dl = wait.deadline(timeout)
  catch_up(self)
  -- a change in the prefix arrives by itself; a revision made outside it is
  -- proven by a read, after a short grace for the events in flight
  local next_check = now() + PROVE_FIRST
  local last_err
  while self._rev < revision do
    if self._closed then return nil, CLOSED, "closed" end
    if self._dead then return nil, self._dead[1], self._dead[2] end
    local t = now()
    if dl and t >= dl then
      local e = last_err or self._err
      local why = e and (" (last failure: " .. tostring(e[1]) .. ")") or ""
      return nil, ("etcd: mirror reflects revision %d, not %d, after %gs%s"):format(self._rev, revision, timeout, why),
        "timeout"
    end
    if t >= next_check then
      next_check = t + PROVE_AGAIN
      local ok, msg, code = prove(self, revision)
      if ok == nil then last_err = { msg, code } end
    end
    if self._rev < revision then
      local step = next_check
      if dl and dl < step then step = dl end
      advance(self, step)
    end
  end
  return self._rev
end

--- for batch in m:changes(timeout) do ... end: the batches applied after the
-- revision the copy reflects at this call, each { revision =, reload = nil |
-- "compacted" | "restored", [i] = { kind = "put" | "delete", key =, kv =,
-- value =, prev_kv =, prev_value = } }. Each step waits up to `timeout`
-- seconds (nil: no limit) and ends the loop when none came (the iterator can
-- be called again); the loop also ends when the mirror or its client is
-- closed. Other failures are retried (and given to on_error).
function Mirror:changes(timeout)
  check.self(self, Mirror, "m:changes", 2)
  if timeout ~= nil then timeout = check.value(timeout, "seconds", "m:changes: bad argument #1 (timeout)", 2) end
  catch_up(self)
  local q = { n = 0, head = 1 }
  self._subs[q] = true
  return function()
    local dl = wait.deadline(timeout)
    local looked = false
    while true do
      if q.head <= q.n then
        local b = q[q.head]
        q[q.head] = nil
        q.head = q.head + 1
        return b
      end
      if self._closed or self._dead then return nil end
      if looked and dl and now() >= dl then return nil end
      advance(self, dl)
      looked = true
    end
  end
end

--- m:run() keeps the mirror moving until it is closed (in a spawned
-- coroutine, a luv or cqueues task). Returns true once closed, or nil, msg,
-- "closed" when the client was.
function Mirror:run()
  check.self(self, Mirror, "m:run", 2)
  while not self._closed do
    if self._dead then return nil, self._dead[1], self._dead[2] end
    advance(self, nil)
  end
  return true
end

--- m:status() -> "live" | "loading" | "retrying" | "closed", msg, code (the
-- last failure, while it is not yet overcome).
function Mirror:status()
  check.self(self, Mirror, "m:status", 2)
  if self._closed then return "closed" end
  if self._dead then return "closed", self._dead[1], self._dead[2] end
  local e = self._err
  if self._need then return "loading", e and e[1], e and e[2] end
  if e or not self._w then return "retrying", e and e[1], e and e[2] end
  return "live"
end

--- m:stats() -> counters for monitoring and the specs.
function Mirror:stats()
  check.self(self, Mirror, "m:stats", 2)
  return { revision = self._rev, count = self._n, batches = self._batches, reloads = self._reloads,
           restores = self._restores, watches = self._watches }
end

--- m:close(): stop watching; the copy stays readable as it was. Idempotent;
-- also __close and __gc.
function Mirror:close()
  check.self(self, Mirror, "m:close", 2)
  if self._closed then return end
  self._closed = true
  close_watch(self)
  tick(self)
end
Mirror.__close = Mirror.close
function Mirror:__gc()
  if rawget(self, "_w") then pcall(close_watch, self) end
end

function Mirror:__tostring()
  return ("etcd.mirror(%q) at %d, %d keys%s"):format(self._prefix, self._rev, self._n,
    self._closed and ", closed" or "")
end

return M
