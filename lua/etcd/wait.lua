--- The one place where Lua waits for the C core.
-- Every blocking method is a *start* (C, returns at once with a call object)
-- followed by `wait.call`. Today a wait blocks the Lua state on the client's
-- eventfd (the pump thread signals it); a scheduler adapter can replace
-- `wait.block` to yield a coroutine instead, without touching any method.
local core = require "etcd.core"
local errors = require "etcd.errors"

local M = {}

M.now = core.now

--- Block until the client's pump thread signals or `timeout` seconds pass
-- (nil: no limit). Returns true, false (timed out) or nil, msg, code.
function M.block(ccli, timeout)
  return ccli:_wait(timeout)
end

--- Wait for a started call and return its result (a table, or nil, msg, code).
-- gRPC enforces the call's deadline; `limit` (seconds) is a local safety net
-- in case it never answers.
function M.call(ccli, h, limit)
  local deadline = limit and (M.now() + limit + 2)
  while not h:done() do
    local left
    if deadline then
      left = deadline - M.now()
      if left <= 0 then
        h:cancel()
        return errors.fail("etcd: no answer before the deadline", "timeout")
      end
    end
    local ok, msg, code = M.block(ccli, left)
    if ok == nil and not h:done() then return errors.fail(msg, code) end
  end
  local res, msg, code = h:result()
  if res == nil then return errors.fail(msg, code) end
  return res
end

--- Wait for the next message of a stream (etcd.core stream object) for at
-- most `timeout` seconds (nil: no limit). Returns the message, or nil, msg,
-- code ("timeout" when the time ran out; the stream stays usable).
function M.read(ccli, st, timeout)
  local deadline = timeout and (M.now() + timeout)
  while true do
    local res, msg, code = st:read()
    if res then return res end
    if res == nil then return errors.fail(msg, code) end
    local left
    if deadline then
      left = deadline - M.now()
      if left <= 0 then return nil, "etcd: no message before the deadline", "timeout" end
    end
    local ok, m, c = M.block(ccli, left)
    if ok == nil then
      res = st:read()
      if res then return res end
      return errors.fail(m, c)
    end
  end
end

--- Wait until `ready()` is true or `timeout` seconds pass. Returns true or false.
function M.until_ready(ccli, ready, timeout)
  local deadline = M.now() + timeout
  while not ready() do
    local left = deadline - M.now()
    if left <= 0 then return false end
    local ok = M.block(ccli, left)
    if ok == nil then return false end
  end
  return true
end

return M
