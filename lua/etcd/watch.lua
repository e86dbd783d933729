--- Watch: cli:watch, w:next, w:events, w:responses, w:close, and
-- cli:request_progress. The C engine keeps every watch of a client on one
-- gRPC stream, queues what arrives while Lua is busy (bounded), and
-- re-creates watches after a break from the revision after the last one
-- received, so no event is lost or repeated.
-- @module etcd.watch
require "etcd.core" -- its classes are registered before ours look them up
local check = require "etcd.check"
local errors = require "etcd.errors"
local kv = require "etcd.kv"
local wait = require "etcd.wait"

local M = {}

local FILTERS = { noput = "NOPUT", nodelete = "NODELETE" }

local WATCH_OPTS = {
  prefix = "boolean", range_end = "string", from_key = "boolean",
  start_revision = "integer", prev_kv = "boolean", progress_notify = "boolean",
  filters = "table", fragment = "boolean", timeout = "seconds",
}

local Watch = { __name = "etcd.watch", _kind = "watch" }
Watch.__index = Watch
-- a real watch has its core object; setmetatable({}, Watch) does not
local CORE_WATCH_MT = debug.getregistry()["etcd.core.watch"]
function Watch.__valid(v) return getmetatable(rawget(v, "_h")) == CORE_WATCH_MT end
M.Watch = Watch

-- The failure that ends a watch: remembered, so every later call says it too.
local function finish(self, msg, code)
  self._err = { msg, code }
  return nil, msg, code
end

local function compacted(self, rev)
  self.compact_revision = rev
  return finish(self, ("etcdserver: mvcc: required revision has been compacted (compact revision %d)"):format(rev),
    "compacted")
end

-- One look at the engine's queue: a response, false (nothing yet), or
-- nil, msg, code once the watch has ended.
local function look(self)
  local ns = self._ns
  -- (the engine takes the namespace off the keys while decoding)
  local resp, st, reason, compact = self._h:read(ns ~= "" and ns or nil)
  if resp then
    if resp.canceled then
      if resp.compact_revision > 0 then return compacted(self, resp.compact_revision) end
      local msg = resp.cancel_reason ~= "" and resp.cancel_reason or "etcd: watch canceled by etcd"
      return finish(self, msg, errors.classify(msg, "CANCELLED"))
    end
    if #resp.events == 0 and resp.compact_revision == 0 and resp.header and resp.header.revision ~= 0 then
      resp.progress_notify = true
    end
    return resp
  elseif resp == nil then
    if st == "closed" then
      if self._closed then return finish(self, "etcd: watch is closed", "closed") end
      return finish(self, "etcd: client is closed", "closed")
    end
    if compact and compact > 0 then return compacted(self, compact) end
    local msg = reason ~= "" and reason or "etcd: watch ended"
    return finish(self, msg, errors.classify(msg, "CANCELLED"))
  end
  -- nothing yet: if etcd refused to re-create a watch for the token, log in
  -- again (the engine listed every watch's token when it did)
  self._cli:_check_auth()
  return false
end

-- Next response; `timeout` nil waits without limit.
-- `level`: where misuse (a second waiting coroutine) is raised.
function Watch:_next(timeout, what, level)
  if self._err then return nil, self._err[1], self._err[2] end
  local a, b, c = wait.loop_alone(self, wait.deadline(timeout), what, level + 1)
  if a == wait.TIMEOUT then return nil, "etcd: no watch response before the deadline", "timeout" end
  return a, b, c
end

--- w:next(timeout) -> response | nil, msg, code. Waits up to `timeout`
-- seconds (default: the watch's `timeout` option; none: no limit). "timeout"
-- leaves the watch usable; "compacted", "closed" and etcd's cancels end it.
function Watch:next(timeout)
  check.self(self, Watch, "w:next", 2)
  if timeout == nil then timeout = self._timeout end
  if timeout ~= nil then timeout = check.value(timeout, "seconds", "w:next: bad argument #1 (timeout)", 2) end
  local resp, msg, code = self:_next(timeout, "w:next", 2)
  return resp, msg, code -- not a tail call: misuse is raised at the caller's level
end

--- for resp in w:responses() do ... end (waits without limit). Ends when the
-- watch is closed by w:close(); raises an error object on any other end.
function Watch:responses()
  check.self(self, Watch, "w:responses", 2)
  return function()
    local resp, msg, code = self:_next(nil, "w:responses", 2)
    if resp then return resp end
    if self._closed then return nil end
    error(errors.new(msg, code), 2)
  end
end

--- for ev in w:events() do ... end: the events of every response, in order.
function Watch:events()
  check.self(self, Watch, "w:events", 2)
  local evs, i = {}, 0
  return function()
    while i >= #evs do
      local resp, msg, code = self:_next(nil, "w:events", 2)
      if not resp then
        if self._closed then return nil end
        error(errors.new(msg, code), 2)
      end
      evs, i = resp.events, 0
    end
    i = i + 1
    return evs[i]
  end
end

--- Cancel the watch on etcd and free it. Idempotent; also __close, and the
-- collector does it for a dropped watch.
function Watch:close()
  check.self(self, Watch, "w:close", 2)
  self._closed = true
  self._h:close()
end
Watch.cancel = Watch.close
Watch.__close = Watch.close

function Watch:__tostring()
  return ("etcd.watch(%q)%s"):format(self.key, self._closed and " closed" or "")
end

function M.install(Client)
  --- cli:watch(key, opts) -> watch | nil, msg, code
  function Client:watch(key, opts)
    check.self(self, Client, "watch", 2)
    check.arg(key, "string", 1, "key", "watch", 2)
    local o = check.options(opts, WATCH_OPTS, "watch", 2)
    local r = kv.range_request(key, { prefix = o.prefix, range_end = o.range_end, from_key = o.from_key }, "watch", 2)
    local filters
    if o.filters then
      check.list(o.filters, "watch: option 'filters'", 2)
      filters = {}
      for i, f in ipairs(o.filters) do
        filters[i] = check.value(f, FILTERS, ("watch: option 'filters'[%d]"):format(i), 2)
      end
    end
    local k, e = r.key, r.range_end
    if self._ns ~= "" then k, e = kv.ns_range(self._ns, k, e) end
    local req = { key = k, range_end = e, prev_kv = o.prev_kv, progress_notify = o.progress_notify,
                  filters = filters }
    local h, msg, code = self._core:_watch(req, o.start_revision, o.fragment)
    if not h then return errors.fail(msg, code) end
    local w = setmetatable({ _h = h, _tok = h:token(), _cli = self, _timeout = o.timeout, _ns = self._ns,
                             key = key }, Watch)
    w._look = function() return look(w) end
    -- Return once etcd has created the watch, so that every change made after
    -- cli:watch() returns is seen; a refused watch fails here.
    local limit = self._timeout
    local function created()
      self:_check_auth()
      return h:created() ~= false
    end
    if wait.loop(self._core, w._tok, wait.deadline(limit), created) == wait.TIMEOUT then
      h:close()
      if self._core:_closed() then return nil, "etcd: client is closed", "closed" end
      return nil, ("etcd: watch not created within %gs"):format(limit), "timeout"
    end
    if h:created() == nil then
      local _, m, c = w:_next(0, "watch", 2)
      h:close()
      return nil, m, c
    end
    return w
  end

  --- cli:request_progress() -> true | nil, msg, code: ask etcd to send every
  -- watch of this client a progress response (`progress_notify = true`).
  function Client:request_progress()
    check.self(self, Client, "request_progress", 2)
    local ok, msg, code = self._core:_request_progress()
    if ok == nil then return nil, msg, code end
    return true
  end
end

return M
