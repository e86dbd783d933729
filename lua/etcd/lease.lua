--- Leases: grant, revoke, time_to_live, leases, keepalive_once.
-- (The keep-alive that renews by itself in the background is later work.)
local check = require "etcd.check"
local wait = require "etcd.wait"
local errors = require "etcd.errors"

local M = {}

local CALL = { timeout = "seconds" }

function M.install(Client)
  --- cli:grant(ttl, opts) -> { id, ttl, header }. opts: id (ask for this id), timeout.
  function Client:grant(ttl, opts)
    ttl = check.arg(ttl, "integer", 1, "ttl", "grant", 2)
    local o = check.options(opts, { id = "integer", timeout = "seconds" }, "grant", 2)
    local res, msg, code = self:_call("Lease.LeaseGrant", { TTL = ttl, ID = o.id }, o.timeout)
    if not res then return nil, msg, code end
    if res.error ~= "" then return errors.fail(res.error, "UNKNOWN") end
    res.error = nil
    return res
  end

  --- cli:revoke(id, opts) -> { header }: the lease ends and its keys are deleted.
  function Client:revoke(id, opts)
    id = check.arg(id, "integer", 1, "id", "revoke", 2)
    local o = check.options(opts, CALL, "revoke", 2)
    return self:_call("Lease.LeaseRevoke", { ID = id }, o.timeout)
  end

  --- cli:time_to_live(id, opts) -> { id, ttl, granted_ttl, keys, header };
  -- ttl is -1 for a lease that has expired. opts: keys (list attached keys), timeout.
  function Client:time_to_live(id, opts)
    id = check.arg(id, "integer", 1, "id", "time_to_live", 2)
    local o = check.options(opts, { keys = "boolean", timeout = "seconds" }, "time_to_live", 2)
    local res, msg, code = self:_call("Lease.LeaseTimeToLive", { ID = id, keys = o.keys }, o.timeout)
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
    local o = check.options(opts, CALL, "leases", 2)
    return self:_call("Lease.LeaseLeases", {}, o.timeout)
  end

  --- cli:keepalive_once(id, opts) -> { id, ttl, header }: renew the lease once.
  -- A lease that no longer exists gives nil, msg, "lease_not_found".
  function Client:keepalive_once(id, opts)
    id = check.arg(id, "integer", 1, "id", "keepalive_once", 2)
    local o = check.options(opts, CALL, "keepalive_once", 2)
    local timeout = o.timeout or self._timeout
    local c = self._core
    local st, msg, code = c:_stream("Lease.LeaseKeepAlive", timeout, self._md)
    if not st then return errors.fail(msg, code) end
    local res
    res, msg, code = st:write { ID = id }
    if res then res, msg, code = wait.read(c, st, timeout) end
    st:close()
    if not res then return nil, msg, code end
    if res.ttl <= 0 then return nil, "etcdserver: requested lease not found", "lease_not_found" end
    return res
  end
end

return M
