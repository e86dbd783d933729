--- Every unary call goes through here: one absolute deadline computed when the
-- method is called, one re-login shared by every coroutine whose call was
-- refused for the token (single flight), and the place where a retry policy
-- (failover) belongs.
local core = require "etcd.core"
local errors = require "etcd.errors"
local wait = require "etcd.wait"

local M = {}

local now = wait.now

-- gRPC enforces the deadline (it travels to etcd too); this much later the
-- local wait gives up on its own, should an answer never come.
local GRACE = 2

-- etcd's answers that mean "log in again" (the one list is the engine's:
-- it needs it for watch creates).
M.auth_refusal = core.auth_refusal

--- Start one unary call and wait for it until the absolute deadline `dl`.
-- `md`: the metadata to send (the token) or nil; `chan`: 1-based endpoint
-- index or nil; `fail_fast`: do not wait for a connection.
function M.once(cc, method, req, dl, md, chan, fail_fast)
  local left = dl - now()
  if left < 0 then left = 0 end
  local h, msg, code = cc:_unary(method, req, left, md, chan, fail_fast)
  if not h then return errors.fail(msg, code) end
  local r = wait.loop(cc, h:token(), dl + GRACE, function() return h:done() or false end)
  if r == wait.TIMEOUT then
    h:cancel()
    return errors.fail("etcd: no answer before the deadline", "timeout")
  end
  local res
  res, msg, code = h:result()
  if res == nil then return errors.fail(msg, code) end
  return res
end

--- Log `cli` in again, once for everyone: `sent` is the metadata the refused
-- call carried. If the client has a newer token already, nothing to do; if a
-- login is in flight, wait for it; else this caller logs in and the others
-- refused meanwhile wait for its result. Returns true or nil, msg, code.
function M.relogin(cli, sent, dl)
  if cli._md ~= sent then return true end
  local flight = cli._login_flight
  if flight then
    if not flight.ev:wait(dl) then return nil, "etcd: no login before the deadline", "timeout" end
    if flight.ok then return true end
    return nil, flight.msg, flight.code
  end
  flight = { ev = wait.event() }
  cli._login_flight = flight
  local ok, res, msg, code = pcall(cli._authenticate, cli, dl)
  cli._login_flight = nil
  if not ok then
    flight.ok, flight.msg, flight.code = nil, tostring(res), "INTERNAL"
    flight.ev:signal()
    error(res, 0)
  end
  flight.ok, flight.msg, flight.code = res, msg, code
  flight.ev:signal()
  return res, msg, code
end

--- A unary call on client `cli` (etcd.Client): `timeout` seconds (nil: the
-- client's default) from now; refused for the token, it logs in again
-- (shared) and is sent once more within the same deadline.
function M.call(cli, method, req, timeout, chan)
  local dl = now() + (timeout or cli._timeout)
  local cc = cli._core
  local md = cli._md
  local res, msg, code = M.once(cc, method, req, dl, md, chan)
  if not res and cli._login and M.auth_refusal(msg) then
    local ok, m2, c2 = M.relogin(cli, md, dl)
    if not ok then return nil, m2, c2 end
    res, msg, code = M.once(cc, method, req, dl, cli._md, chan)
  end
  if not res then return nil, msg, code end
  return res
end

return M
