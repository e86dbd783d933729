--- The error contract (docs/ERROR_HANDLING.md): run-time failures come back as
-- `nil, msg, code`; `code` is a stable string. This module turns what gRPC and
-- etcd said into those codes, keeping etcd's own message text.
local M = {}

-- etcd's messages that have a code of their own, checked in order.
local by_message = {
  { "required revision has been compacted", "compacted" },
  { "required revision is a future revision", "future_revision" },
  { "requested lease not found", "lease_not_found" },
  { "etcdserver: no leader", "no_leader" },
  { "database space exceeded", "no_space" },
  { "etcdserver: request is too large", "too_large" },
  { "etcdserver: too many operations in txn request", "too_large" },
  { "message larger than max", "too_large" }, -- gRPC's own send/receive limits
  { "authentication failed, invalid user ID or password", "auth_failed" },
  -- a watch's cancel_reason has no status of its own; Go maps it the same way
  { "etcdserver: permission denied", "PERMISSION_DENIED" },
}

--- The stable code for a failure reported by the C core.
function M.classify(msg, code)
  if code == "closed" or code == "forked" or code == "timeout" then return code end
  msg = msg or ""
  for _, m in ipairs(by_message) do
    if msg:find(m[1], 1, true) then return m[2] end
  end
  return code or "UNKNOWN"
end

-- Size limits: which side refused, and what to change. (The words before
-- the parenthesis stay the server's or gRPC's own.)
local LIMIT_HINTS = {
  { "etcdserver: request is too large", "over etcd's --max-request-bytes (1.5 MiB unless the server sets it)" },
  { "etcdserver: too many operations in txn request", "over etcd's --max-txn-ops (128 unless the server sets it)" },
  { "Sent message larger than max", "over the client's max_send_size: etcd.new { max_send_size = n };"
    .. " etcd itself takes requests up to its --max-request-bytes (1.5 MiB by default)" },
  { "Received message larger than max", "over the client's max_recv_size: etcd.new { max_recv_size = n },"
    .. " or ask for less (limit, keys_only, count_only)" },
  { "received message larger than max", "refused by etcd: over its --max-request-bytes (1.5 MiB by default)" },
}

--- The message of a too_large failure with what to change appended.
function M.limit_hint(msg)
  for _, h in ipairs(LIMIT_HINTS) do
    if msg:find(h[1], 1, true) then return ("%s (%s)"):format(msg, h[2]) end
  end
  return msg
end

--- A failure as the three values every method returns.
function M.fail(msg, code)
  -- The call's deadline travels to etcd; when it runs out inside the server,
  -- etcd answers with Go's bare context error (status UNKNOWN). It is still
  -- this call's deadline, whichever side noticed first.
  if code == "UNKNOWN" and msg == "context deadline exceeded" then code = "timeout" end
  if code == "timeout" and not msg:find("^etcd") then
    msg = "etcd: deadline exceeded (" .. msg .. ")"
  end
  code = M.classify(msg, code)
  if code == "too_large" then msg = M.limit_hint(msg) end
  return nil, msg, code
end

--- Error object raised by iterators: `{ message =, code = }` with __tostring.
local Error = {}
Error.__index = Error
Error.__tostring = function(e) return e.message end
M.Error = Error

function M.new(msg, code)
  return setmetatable({ message = msg, code = code }, Error)
end

return M
