--- Leases: grant, revoke, time_to_live, leases, keepalive_once, and
-- keepalive: a lease renewed by the client's pump thread in the background.
-- @module etcd.lease
require "etcd.core" -- its classes are registered before ours look them up
local check = require "etcd.check"
local core = require "etcd.core"
local wait = require "etcd.wait"
local errors = require "etcd.errors"

local M = {}

-- ---------------------------------------------------------------------------
-- keep-alive object

local KeepAlive = { __name = "etcd.keepalive", _kind = "keep-alive" }
KeepAlive.__index = KeepAlive
-- a real keep-alive has its core object; setmetatable({}, KeepAlive) does not
local CORE_KA_MT = debug.getregistry()["etcd.core.keepalive"]
function KeepAlive.__valid(v) return getmetatable(rawget(v, "_h")) == CORE_KA_MT end
M.KeepAlive = KeepAlive

--- ka:next(timeout) -> { id, ttl, header } | nil, msg, code
-- The newest answer not yet returned (answers in between are coalesced: the
-- lease is renewed either way). Waits up to `timeout` seconds (default: the
-- keepalive's `timeout` option; nil: no limit). Codes: "timeout" (the object
-- stays usable), "lease_expired" (the lease is gone: renewal stopped),
-- "closed" (this object or the client was closed).
function KeepAlive:next(timeout)
  check.self(self, KeepAlive, "ka:next", 2)
  if timeout == nil then timeout = self._timeout end
  if timeout ~= nil then timeout = check.value(timeout, "seconds", "ka:next: bad argument #1 (timeout)", 2) end
  local r, msg, code = self:_next(timeout, "ka:next", 2)
  return r, msg, code -- not a tail call: misuse is raised at the caller's level
end

function KeepAlive:_next(timeout, what, level)
  local r, msg = wait.loop_alone(self, wait.deadline(timeout), what, level + 1)
  if r == wait.TIMEOUT then return nil, "etcd: no keep-alive answer before the deadline", "timeout" end
  if r then return r end
  return nil, msg, self._code
end

-- One look at the lease's state: the newest answer not yet returned, false
-- (nothing new), or nil, msg once the lease is lost or the object closed.
local function look(self)
  local state, seq, x = self._h:state()
  if state == "alive" then
    if seq > self._seen then
      self._seen = seq
      return x
    end
    return false
  end
  -- "requested lease not found" (it never existed) gives lease_not_found
  self._code = state == "expired" and errors.classify(x, "lease_expired") or "closed"
  return nil, x
end

--- for r in ka:responses() do ... end: each answer, as ka:next() gives them.
-- The loop ends when this object is closed; a lost lease or a closed client
-- raises an error object { message =, code = } ("lease_expired", "closed").
function KeepAlive:responses()
  check.self(self, KeepAlive, "ka:responses", 2)
  return function()
    local r, msg, code = self:_next(nil, "ka:responses", 2)
    if r then return r end
    if self._closed then return nil end
    error(errors.new(msg, code), 2)
  end
end

--- Stop renewing the lease (it is not revoked: it expires after its TTL).
-- Idempotent; also __close, and the collector does it for a dropped object.
function KeepAlive:close()
  check.self(self, KeepAlive, "ka:close", 2)
  self._closed = true
  self._h:close()
end
KeepAlive.__close = KeepAlive.close

function KeepAlive:__tostring()
  return ("etcd.keepalive(%s): %s"):format(core.id_hex(self.id), (self._h:state()))
end

local CALL = { timeout = "seconds" }
local KEEPALIVE = { timeout = "seconds", ttl = "seconds" }

function M.install(Client)
  --- cli:grant(ttl, opts) -> { id, ttl, header }. opts: id (ask for this id), timeout.
  function Client:grant(ttl, opts)
    check.self(self, Client, "grant", 2)
    ttl = check.arg(ttl, "integer", 1, "ttl", "grant", 2)
    local o = check.options(opts, { id = "id", timeout = "seconds" }, "grant", 2)
    local res, msg, code = self:_call("Lease.LeaseGrant", { ttl = ttl, id = o.id }, o.timeout)
    if not res then return nil, msg, code end
    if res.error ~= "" then return errors.fail(res.error, "UNKNOWN") end
    res.error = nil
    return res
  end

  --- cli:revoke(id, opts) -> { header }: the lease ends and its keys are deleted.
  function Client:revoke(id, opts)
    check.self(self, Client, "revoke", 2)
    id = check.arg(id, "id", 1, "id", "revoke", 2)
    local o = check.options(opts, CALL, "revoke", 2)
    return self:_call("Lease.LeaseRevoke", { id = id }, o.timeout)
  end

  --- cli:time_to_live(id, opts) -> { id, ttl, granted_ttl, keys, header };
  -- ttl is -1 for a lease that has expired. opts: keys (list attached keys), timeout.
  function Client:time_to_live(id, opts)
    check.self(self, Client, "time_to_live", 2)
    id = check.arg(id, "id", 1, "id", "time_to_live", 2)
    local o = check.options(opts, { keys = "boolean", timeout = "seconds" }, "time_to_live", 2)
    local res, msg, code = self:_call("Lease.LeaseTimeToLive", { id = id, keys = o.keys }, o.timeout)
    if not res then return nil, msg, code end
    local ns = self._ns
    if ns ~= "" then -- like Go's namespace: keep the namespace's keys, without it
      local keys = {}
      for _, k in ipairs(res.keys) do
        if k:sub(1, #ns) == ns then keys[#keys + 1] = k:sub(#ns + 1) end
      end
      res.keys = keys
    end
    return res
  end

  --- cli:leases(opts) -> { leases = { { id = n }, ... }, header }
  function Client:leases(opts)
    check.self(self, Client, "leases", 2)
    local o = check.options(opts, CALL, "leases", 2)
    return self:_call("Lease.LeaseLeases", {}, o.timeout)
  end

  --- cli:keepalive(id, opts) -> keep-alive object: the client's pump thread
  -- renews the lease on a shared stream (every TTL/3) with no Lua code
  -- running, until ka:close() or the lease is lost. opts: timeout (default
  -- wait of ka:next; none by default), ttl (the lease's TTL in seconds, when
  -- the caller knows it, e.g. from its grant: the lease counts as lost if
  -- etcd has not answered once before it runs out; unknown by default: then
  -- only etcd's answer tells, however long the first one takes).
  function Client:keepalive(id, opts)
    check.self(self, Client, "keepalive", 2)
    id = check.arg(id, "id", 1, "id", "keepalive", 2)
    local o = check.options(opts, KEEPALIVE, "keepalive", 2)
    local h, msg, code = self._core:_keepalive(id, o.ttl)
    if not h then return errors.fail(msg, code) end
    local ka = setmetatable({ _h = h, _tok = h:token(), _cli = self, _seen = 0, _timeout = o.timeout, id = id },
      KeepAlive)
    ka._look = function() return look(ka) end
    return ka
  end

  --- cli:keepalive_once(id, opts) -> { id, ttl, header }: renew the lease once.
  -- A lease that no longer exists gives nil, msg, "lease_not_found".
  function Client:keepalive_once(id, opts)
    check.self(self, Client, "keepalive_once", 2)
    id = check.arg(id, "id", 1, "id", "keepalive_once", 2)
    local o = check.options(opts, CALL, "keepalive_once", 2)
    local timeout = o.timeout or self._timeout
    local c = self._core
    local st, msg, code = c:_stream("Lease.LeaseKeepAlive", timeout, self._md)
    if not st then return errors.fail(msg, code) end
    local res
    res, msg, code = st:write { id = id }
    if res then
      res, msg, code = wait.loop(c, st:token(), wait.deadline(timeout), function() return st:read() end)
      if res == wait.TIMEOUT then res, msg, code = nil, "etcd: no keep-alive answer before the deadline", "timeout"
      elseif res == nil then res, msg, code = errors.fail(msg, code) end
    end
    st:close()
    if not res then return nil, msg, code end
    if res.ttl <= 0 then return nil, "etcdserver: requested lease not found", "lease_not_found" end
    return res
  end
end

return M
