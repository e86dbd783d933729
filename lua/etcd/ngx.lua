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
local core = require "etcd.core"

local M = { name = "etcd.ngx" }

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

--- Whether the running code is nginx Lua code that can yield (its phase
-- allows it). False outside nginx.
function M.can_yield()
  if not ngx or not ngx.get_phase then return false end
  local ok, phase = pcall(ngx.get_phase)
  return ok and M.YIELDING[phase] == true
end

--- The nginx phase running, or nil outside nginx.
function M.phase()
  if not ngx or not ngx.get_phase then return nil end
  local ok, phase = pcall(ngx.get_phase)
  return ok and phase or nil
end

local function wake(rec, why)
  if not rec.why then rec.why = why or "ready" end
end

--- Park until `rec` is woken (wait.dispatch finds its token on `cc`'s
-- ready list, or an event signals it) or `dl` passes.
function M.park(rec, cc, dl)
  rec.wake = wake
  local i, now, dispatch = 1, core.now, require("etcd.wait").dispatch
  while true do
    if cc then dispatch(cc) end
    if rec.why then return rec.why end
    local pause = PAUSES[i] or M.max_pause
    i = i + 1
    if dl then
      local left = dl - now()
      if left <= 0 then return "timeout" end
      if left < pause then pause = left end
    end
    -- (below 1 ms nginx sleeps 0 ms, which it warns about)
    ngx.sleep(pause < 0.001 and 0.001 or pause)
  end
end

--- What etcd.sched does when every spawned coroutine waits, inside nginx:
-- look at the clients' ready lists (`clients`, a list of etcd.core clients)
-- between pauses, as M.park does, for up to `left` seconds (nil: no limit).
-- Returns once one of them has something ready.
function M.idle(clients, left)
  local i, now = 1, core.now
  local dl = left and now() + left
  while true do
    if #clients > 0 and core._poll(clients, 0) > 0 then return end
    local pause = PAUSES[i] or M.max_pause
    i = i + 1
    if dl then
      local rest = dl - now()
      if rest <= 0 then return end
      if rest < pause then pause = rest end
    end
    ngx.sleep(pause < 0.001 and 0.001 or pause)
  end
end

return M
