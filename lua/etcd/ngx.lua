--- The OpenResty/nginx driver (README "Using with OpenResty"). Nothing to
-- call: inside nginx, etcd.wait picks it for every wait made where nginx
-- lets Lua yield (rewrite, access, content, ngx.timer.at callbacks,
-- ngx.thread.spawn threads, ssl_certificate/ssl_client_hello, ...).
--
-- nginx cannot poll a foreign file descriptor, so a parked wait polls its
-- client's ready list instead: reap it (a non-blocking read of the client's
-- eventfd), and if its token has not come up, ngx.sleep and look again. The
-- pauses back off from 1 ms (nginx's timer resolution: ngx.sleep(0) is slow
-- and noisy without OpenResty's own nginx patches) to `M.max_pause`
-- (10 ms), so an answer waits at most that long after it has arrived, and a
-- long wait costs one wake-up per `max_pause`.
--
-- Where nginx cannot yield (init_worker_by_lua*, set_by_lua*, header and
-- body filters, log_by_lua*, balancer_by_lua*, exit_worker_by_lua*) a wait
-- blocks the worker for at most the call's deadline, as outside nginx
-- (`M.BLOCKING` lists those phases). In init_by_lua* (the master, before
-- the fork) a client cannot be made at all: gRPC's threads would not
-- survive into the workers.
--
-- Also `etcd.ngx.shared_mirror`: one watcher per nginx instance, keeping a
-- prefix in a lua_shared_dict for every worker.
-- @module etcd.ngx
local core = require "etcd.core"

local M = { name = "etcd.ngx" }
local Shared

--- The longest pause between two looks at a client's ready list (seconds).
M.max_pause = 0.01

-- The pauses: 1, 1, 2, 4, 8 ms, then max_pause.
local PAUSES = { 0.001, 0.001, 0.002, 0.004, 0.008 }

--- Phases whose code nginx lets yield (ngx.sleep works there).
M.YIELDING = {
  rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true, preread = true,
}
--- Phases where a wait blocks the worker (up to the call's deadline).
M.BLOCKING = {
  init_worker = true, set = true, header_filter = true, body_filter = true, log = true,
  balancer = true, exit_worker = true, ssl_session_store = true,
}

local ngx = rawget(_G, "ngx")

--- The nginx phase running, or nil outside nginx.
function M.phase()
  if not ngx or not ngx.get_phase then return nil end
  local ok, phase = pcall(ngx.get_phase)
  return ok and phase or nil
end

--- Whether the running code is nginx Lua code that can yield (its phase
-- allows it). False outside nginx.
function M.can_yield()
  return M.YIELDING[M.phase()] == true
end

-- Pause number `i` of a wait that ends at `dl` (nil: none): false once `dl`
-- has passed, else true after sleeping.
local function pause(i, dl)
  local p = PAUSES[i] or M.max_pause
  if dl then
    local left = dl - core.now()
    if left <= 0 then return false end
    if left < p then p = left end
  end
  -- (below 1 ms nginx sleeps 0 ms, which it warns about)
  ngx.sleep(p < 0.001 and 0.001 or p)
  return true
end

local function wake(rec, why)
  if not rec.why then rec.why = why or "ready" end
end

--- Park until `rec` is woken (wait.dispatch finds its token on `cc`'s
-- ready list, or an event signals it) or `dl` passes.
function M.park(rec, cc, dl)
  rec.wake = wake
  local dispatch = require("etcd.wait").dispatch
  for i = 1, math.huge do
    if cc then dispatch(cc) end
    if rec.why then return rec.why end
    if not pause(i, dl) then return "timeout" end
  end
end

--- What etcd.sched does when every spawned coroutine waits, inside nginx:
-- look at the clients' ready lists (`clients`, a list of etcd.core clients)
-- between pauses, as M.park does, for up to `left` seconds (nil: no limit).
-- Returns once one of them has something ready.
function M.idle(clients, left)
  local dl = left and core.now() + left
  for i = 1, math.huge do
    if #clients > 0 and core._poll(clients, 0) > 0 then return end
    if not pause(i, dl) then return end
  end
end

-- ---------------------------------------------------------------------------
-- One watcher per nginx instance: a prefix mirrored into a lua_shared_dict.

--- Keys of the dict that are the mirror's own (no key of a prefix other
-- than "" can collide: they start with two NUL bytes).
M.META = {
  holder = "\0\0etcd:holder",     -- "pid:token" of the worker that mirrors
  revision = "\0\0etcd:revision", -- the store revision the dict reflects
  cluster = "\0\0etcd:cluster",   -- the cluster id it came from
  loads = "\0\0etcd:loads",       -- full loads so far (not catch-ups)
  takeovers = "\0\0etcd:takeovers", -- holders so far
}
local META = M.META

Shared = { __name = "etcd.ngx.shared_mirror" }
Shared.__index = Shared

--- m:get(key) -> the value of `key` in the dict (nil when absent): what
-- every worker reads; no call to etcd.
function Shared:get(key) return self.dict:get(key) end
--- m:revision() -> the store revision the dict reflects (0 before the first load).
function Shared:revision() return self.dict:get(META.revision) or 0 end
--- m:holder() -> the pid of the worker that mirrors now, or nil.
function Shared:holder()
  local h = self.dict:get(META.holder)
  return h and tonumber(h:match("^(%d+):"))
end
--- m:holding() -> whether this worker is the holder.
function Shared:holding() return self.dict:get(META.holder) == self.token end
--- m:stats() -> { revision, loads, takeovers, holder }.
function Shared:stats()
  local d = self.dict
  return { revision = self:revision(), loads = d:get(META.loads) or 0, takeovers = d:get(META.takeovers) or 0,
    holder = self:holder() }
end

local function log(self, msg, code)
  if self.on_error then pcall(self.on_error, msg, code) end
  ngx.log(ngx.WARN, "etcd.ngx.shared_mirror(", self.prefix, "): ", msg, code and (" (" .. code .. ")") or "")
end

local function set(self, key, value)
  local ok, err = self.dict:set(key, value)
  if not ok then log(self, ("cannot keep %q in the shared dict: %s"):format(key, tostring(err)), "dict") end
end

-- Is `key` one of the prefix's?
local function ours(self, key)
  return key:sub(1, #self.prefix) == self.prefix and key:sub(1, 2) ~= "\0\0"
end

-- Load the whole prefix in pages at one revision, write it into the dict and
-- drop the dict's keys that are no longer there.
local function load(self, cli)
  local kv = require "etcd.kv"
  local range_end = self.prefix == "" and "\0" or kv.prefix_end(self.prefix)
  local seen, rev, cluster = {}, nil, nil
  local from = self.prefix
  while true do
    local res, msg, code = cli:get(from, { range_end = range_end, limit = self.page_size, revision = rev })
    if not res then return nil, msg, code end
    rev = rev or res.header.revision
    cluster = cluster or res.header.cluster_id
    for _, x in ipairs(res.kvs) do
      set(self, x.key, x.value)
      seen[x.key] = true
    end
    if not res.more or #res.kvs == 0 then break end
    from = res.kvs[#res.kvs].key .. "\0"
    if ngx.worker.exiting() or not self:holding() then return nil, "etcd.ngx: holder lost during the load", "lost" end
  end
  for _, key in ipairs(self.dict:get_keys(0)) do
    if ours(self, key) and not seen[key] then self.dict:delete(key) end
  end
  set(self, META.cluster, tostring(cluster))
  set(self, META.revision, rev)
  self.dict:incr(META.loads, 1, 0)
  return true
end

-- Refresh the lock; false once another worker holds it.
local function refresh(self)
  if self.dict:get(META.holder) ~= self.token then return false end
  self.dict:set(META.holder, self.token, self.lock_ttl)
  return true
end

-- Is etcd still the store the dict came from (the cluster id `cluster`, at
-- `rev` or later)? A linearizable read says: true, false, or nil, msg, code.
local function same_store(self, cli, rev, cluster)
  local res, msg, code = cli:get(self.prefix, { keys_only = true, limit = 1 })
  if not res then return nil, msg, code end
  return tostring(res.header.cluster_id) == cluster and res.header.revision >= rev
end

-- The holder's work: catch up from the dict's revision (or load), then
-- apply the watch's events until the lock is lost, the worker exits or
-- something fails (the caller starts over).
local function hold(self, cli)
  local rev = self.dict:get(META.revision)
  local cluster = self.dict:get(META.cluster)
  if rev then
    -- a restore from a snapshot while no worker held the mirror?
    local same, msg, code = same_store(self, cli, rev, cluster)
    if same == nil then return nil, msg, code end
    if not same then
      self.dict:delete(META.revision)
      rev = nil
    end
  end
  if not rev then
    local ok, msg, code = load(self, cli)
    if not ok then return nil, msg, code end
    rev, cluster = self.dict:get(META.revision), self.dict:get(META.cluster)
  end
  -- from the last revision applied: its events again (applying them twice
  -- leaves the same values), so a revision cut short is completed
  local w, msg, code = cli:watch(self.prefix, { prefix = self.prefix ~= "", from_key = self.prefix == "" or nil,
    start_revision = rev, progress_notify = true, fragment = true })
  if not w then return nil, msg, code end
  local every = self.lock_ttl / 3
  while not ngx.worker.exiting() do
    if not refresh(self) then w:close() return nil, "etcd.ngx: another worker holds the mirror", "lost" end
    local resp
    resp, msg, code = w:next(every)
    if resp then
      -- still the holder, and nobody moved the dict past us? (this worker may
      -- have been stopped inside w:next while another took over: its events
      -- would then be older than what the dict holds)
      if self.dict:get(META.holder) ~= self.token or (self.dict:get(META.revision) or 0) > rev then
        w:close()
        return nil, "etcd.ngx: another worker holds the mirror", "lost"
      end
      local h = resp.header
      if cluster and h.cluster_id ~= 0 and tostring(h.cluster_id) ~= cluster then
        w:close()
        self.dict:delete(META.revision) -- another cluster behind the endpoints: load it
        return nil, "etcd.ngx: the cluster changed (restored from a snapshot, or a new one)", "restored"
      end
      local last = rev
      for _, ev in ipairs(resp.events) do
        local r = ev.kv.mod_revision
        if r < rev then
          w:close()
          self.dict:delete(META.revision)
          return nil, "etcd.ngx: the store went back (an event older than the copy)", "restored"
        end
        if ev.type == "PUT" then set(self, ev.kv.key, ev.kv.value) else self.dict:delete(ev.kv.key) end
        last = r
      end
      if #resp.events == 0 and h.revision > last then last = h.revision end
      if #resp.events == 0 and h.revision ~= 0 and h.revision < rev then
        -- a progress answer behind the dict: confirm with a linearizable read
        local same
        same, msg, code = same_store(self, cli, rev, cluster)
        if same == nil then w:close() return nil, msg, code end
        if not same then
          w:close()
          self.dict:delete(META.revision)
          return nil, "etcd.ngx: the store went back (restored from a snapshot?)", "restored"
        end
      end
      if last > rev then
        rev = last
        set(self, META.revision, rev)
      end
    elseif code == "compacted" then
      w:close()
      self.dict:delete(META.revision) -- the revision to resume from is gone: load again
      return nil, msg, code
    elseif code ~= "timeout" then
      w:close()
      return nil, msg, code
    end
  end
  w:close()
  return true
end

local function run(self)
  local again = 0.2 -- seconds before a holder that stepped down tries again
  while not ngx.worker.exiting() do
    if self.dict:add(META.holder, self.token, self.lock_ttl) then
      self.dict:incr(META.takeovers, 1, 0)
      local ok, cli, msg, code = pcall(self.client)
      if ok and cli then
        local done
        ok, done, msg, code = pcall(hold, self, cli)
        if not ok then done, msg, code = nil, tostring(done), "error" end
        if not done and not ngx.worker.exiting() then log(self, msg, code) end
      else
        log(self, "cannot make a client: " .. tostring(ok and msg or cli), ok and code or "error")
      end
      -- step down, so that another worker (or this one, next round) takes over at once
      if self.dict:get(META.holder) == self.token then self.dict:delete(META.holder) end
      if not ngx.worker.exiting() then ngx.sleep(again) end
    else
      ngx.sleep(math.min(1, self.lock_ttl / 3))
    end
  end
end

--- etcd.ngx.shared_mirror(dict, prefix, opts) -> m: keep the keys under
-- `prefix` in the lua_shared_dict `dict` (a ngx.shared.DICT), with one
-- watcher per nginx instance. Call it in init_worker_by_lua* of every worker:
-- each starts a timer; the workers elect one holder through a lock in the
-- dict (a key with a TTL), and the holder loads the prefix (once) and applies
-- the watch's events; the others read the dict. When the holder's worker dies
-- or is reloaded, another takes the lock (at once when it stepped down, else
-- after `lock_ttl`) and catches up from the revision stored in the dict: no
-- full load unless that revision was compacted or the cluster changed.
-- opts: `client` (function making this worker's etcd client: required),
-- `lock_ttl` (seconds, 5), `page_size` (1000), `on_error(msg, code)`.
function M.shared_mirror(dict, prefix, opts)
  opts = opts or {}
  assert(type(dict) == "table" and dict.add, "etcd.ngx.shared_mirror: bad argument #1 (a ngx.shared.DICT expected)")
  assert(type(prefix) == "string", "etcd.ngx.shared_mirror: bad argument #2 (prefix: string expected)")
  assert(type(opts.client) == "function", "etcd.ngx.shared_mirror: option 'client': function expected")
  local self = setmetatable({
    dict = dict, prefix = prefix, client = opts.client, lock_ttl = opts.lock_ttl or 5,
    page_size = opts.page_size or 1000, on_error = opts.on_error,
    token = ("%d:%s"):format(ngx.worker.pid(), tostring({}):match("0x%x+") or tostring(math.random())),
  }, Shared)
  assert(ngx.timer.at(0, function(premature) if not premature then run(self) end end))
  return self
end

return M
