--- Every unary call goes through here: one absolute deadline computed when the
-- method is called, one re-login shared by every coroutine whose call was
-- refused for the token (single flight), and the retries of etcd's Go client
-- (clientv3/retry.go, retry_interceptor.go): a call Go marks repeatable that
-- failed with UNAVAILABLE is sent again, to a member that is up, within its
-- deadline; writes are never sent twice.
local core = require "etcd.core"
local compat = require "etcd.compat"
local pcall = compat.pcall -- (5.1: one a coroutine can yield through)
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
-- index or nil; `fail_fast`: do not wait for a connection; `ns`: a
-- namespace to take off the keys of the result (done while decoding).
-- Returns the response, or nil, msg, code and the endpoint index it failed on
-- (when etcd failed it, rather than the client before it was sent).
function M.once(cc, method, req, dl, md, chan, fail_fast, ns)
  local left = dl - now()
  if left < 0 then left = 0 end
  local h, msg, code = cc:_unary(method, req, left, md, chan, fail_fast)
  if not h then return errors.fail(msg, code) end
  local r = wait.loop_done(cc, h, dl + GRACE)
  if r == wait.TIMEOUT then
    h:cancel()
    return errors.fail("etcd: no answer before the deadline", "timeout")
  end
  local res
  res, msg, code = h:result(ns)
  if res == nil then
    local _, m2, c2 = errors.fail(msg, code)
    return nil, m2, c2, h:chan()
  end
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

-- The calls Go's client retries (retry.go: withRetryPolicy(repeatable)):
-- they read, or repeating them changes nothing more than doing them once.
local REPEATABLE = {}
for _, m in ipairs {
  "KV.Range", "Lease.LeaseGrant", "Lease.LeaseRevoke", "Lease.LeaseTimeToLive", "Lease.LeaseLeases",
  "Cluster.MemberList", "Maintenance.Alarm", "Maintenance.Status", "Maintenance.Hash",
  "Maintenance.HashKV", "Maintenance.MoveLeader", "Auth.UserList", "Auth.UserGet", "Auth.RoleGet",
  "Auth.RoleList",
} do
  REPEATABLE[m] = true
  REPEATABLE[core.method(m)] = true -- callers may pass the handle (etcd.op's kinds)
end

-- What Go retries a repeatable call on: gRPC's UNAVAILABLE, which etcd also
-- uses for "no leader", "leader changed" and "request timed out" (the
-- connection broke, or that member cannot serve it now).
local RETRY_ON = { UNAVAILABLE = true, no_leader = true }

-- Writes carry etcd's require-leader metadata: a member that knows no leader
-- refuses them in its gRPC interceptor, before any handler ran ("etcdserver:
-- no leader"), so that refusal provably applied nothing and is retried like a
-- read's UNAVAILABLE. Any other failure of a write may or may not have been
-- applied (docs/ERROR_HANDLING.md) and is returned as it is.
local HASLEADER = { hasleader = "true" }
local function with_leader(cli, md)
  if md == nil then return HASLEADER end
  local c = cli._md_hl
  if c and c[1] == md then return c[2] end
  local t = { hasleader = "true" }
  for k, v in pairs(md) do t[k] = v end
  cli._md_hl = { md, t }
  return t
end

-- The leader fence. A call that failed with UNAVAILABLE (its connection
-- broke, or etcd's "request timed out") or ran out of time on member M
-- leaves the cluster's leader suspect: M itself may be the leader, dead or
-- hung, or M's leader may be. The other members believe in a dead leader
-- until their election timeout, and a write sent to one of them meanwhile is
-- forwarded to it and dropped without a word: it fails at its deadline,
-- outcome unknown (etcd 3.4). So the writes that follow wait first, all of
-- them on one check, until the check finds a live leader; each within its
-- own deadline. The check asks every endpoint's status at once, again every
-- FENCE_PAUSE, until an answer settles it:
--   * a member names itself the leader: a leader answered;
--   * a member names a leader that is not among the client's endpoints (the
--     client cannot ask it) and is not M;
--   * a member names a leader that some member has named for FENCE_TRUST
--     since the check began: a leader that dead would have been given up by
--     then (etcd's election timeout is 1 s by default, randomised up to 2 s;
--     5 s leaves room for a loaded machine and a slower member), so it lives,
--     even if this client cannot reach it.
-- A member that names no leader does not settle it: it may be the first to
-- have given up on a dead leader while another still forwards to it (CI met
-- a write lost so). Reads do not wait (a read is sent again after any
-- UNAVAILABLE). Out of time, the writes are not sent: they fail "no_leader"
-- when the last answer named none (as etcd would have refused them), else
-- "timeout"; either way nothing was applied.
local FENCE_PAUSE, FENCE_TRUST = 0.05, 5

local function suspect(cli, chan)
  if cli._fence or not chan or chan == 0 then return end
  local member = cli._core:_member_at(chan)
  if member then cli._fence = { member = member } end
end

-- Does status answer `res` settle fence `f`? `ours`: member id -> true for
-- the client's endpoints; `named`: leader id -> when an answer first named it.
-- No leader: 0 (ids are strings, "0", where Lua has no 64-bit integers).
local function names_none(id) return id == 0 or id == "0" end

local function settles(f, res, ours, named)
  local l = res.leader
  if names_none(l) then return false end
  if l == res.header.member_id then return true end
  if not ours[l] and l ~= f.member then return true end
  local t = named[l]
  if not t then named[l] = now() return false end
  return now() - t >= FENCE_TRUST
end

-- Returns true once settled (or when there is nothing to judge by), else
-- false and whether a member named no leader (the deadline came first).
local function fence(cli, dl)
  local f = cli._fence
  if f.ev then
    f.ev:wait(dl)
    if f.settled == nil then return false, false end
    return f.settled, f.leaderless
  end
  f.ev = wait.event()
  local cc = cli._core
  local calls = {} -- endpoint index -> the status call in flight there
  local leaderless = false
  local ours, named = {}, {}
  local ok, err = pcall(function()
    while now() < dl do
      local toks = {}
      for _, ep in ipairs(cli._endpoints) do
        local i = cli._chan[ep]
        local m = cc:_member_at(i)
        if m then ours[m] = true end
        if not calls[i] then
          local h, _, code = cc:_unary("Maintenance.Status", {}, math.max(0, math.min(1, dl - now())), cli._md, i, true)
          if not h and code == "closed" then return true end
          calls[i] = h
        end
        if calls[i] then toks[#toks + 1] = calls[i]:token() end
      end
      local done = wait.loop(cc, toks, math.min(dl, now() + FENCE_PAUSE), function()
        for i, h in pairs(calls) do
          if h:done() then
            calls[i] = nil
            local res, _, code = h:result()
            if res then
              ours[res.header.member_id] = true
              if settles(f, res, ours, named) then return true end
              leaderless = names_none(res.leader)
            -- an answer that is not a sign of a member gone (a refusal
            -- of some other kind) cannot be judged: do not hold writes
            elseif not RETRY_ON[code] and code ~= "timeout" then
              return true
            end
          end
        end
        return false
      end)
      if done == true then return true end
    end
    return false
  end)
  for _, h in pairs(calls) do h:cancel() end
  cli._fence = nil
  f.settled, f.leaderless = ok and err or false, leaderless
  f.ev:signal()
  if not ok then error(err, 0) end
  return f.settled, leaderless
end

-- Go's limit on attempts (options.go: defaultUnaryMaxRetries).
local MAX_ATTEMPTS = 100

-- Go's back-off (roundRobinQuorumBackoff): 25 ms, 10 % jitter, once every
-- quorum-many attempts (the others go at once, to the next member).
local WAIT_BETWEEN, JITTER = 0.025, 0.10

-- After "no leader" the cluster is electing, which takes one to several
-- election timeouts (etcd's default: 1 s, randomised up to 2 s, again if
-- the first pre-vote fails): pausing 25 ms would burn Go's 100 attempts in
-- about 1.3 s, before a leader is there. Those attempts are paced at
-- 100 ms every quorum-many instead and not counted: the deadline bounds
-- them (etcd refused each before running it, so nothing was applied).
local NO_LEADER_PAUSE = 0.1

--- The client's view of its endpoints (`_endpoints`: in use, in channel
-- order; `_chan`: endpoint -> 1-based channel; `_ep_of`: channel ->
-- endpoint, retired ones included), read again from the engine when its
-- set changed: auto-sync changes it in the background (the engine's pump),
-- cli:sync from Lua. The engine's list is the one truth.
function M.view(cli)
  local cc = cli._core
  if cc:_chan_gen() == cli._gen then return end
  local targets, retired, gen = cc:_targets()
  local eps, chan, ep_of = {}, {}, {}
  for i, t in ipairs(targets) do
    ep_of[i] = t
    if not retired[i] then
      eps[#eps + 1] = t
      chan[t] = i
    end
  end
  if #eps == 0 then return end -- (a closed client's engine lists nothing)
  cli._endpoints, cli._chan, cli._ep_of, cli._gen = eps, chan, ep_of, gen
end

--- A unary call on client `cli` (etcd.Client): `timeout` seconds (nil: the
-- client's default) from now; refused for the token, it logs in again
-- (shared) and is sent once more within the same deadline. A repeatable
-- call that failed with UNAVAILABLE is sent again (the client picks a member
-- that is up) until it succeeds, fails otherwise, or its deadline comes;
-- only with more than one endpoint, and not when `chan` names the member.
function M.call(cli, method, req, timeout, chan, ns)
  if cli._sync_every then M.view(cli) end
  local dl = now() + (timeout or cli._timeout)
  local cc = cli._core
  local repeatable = REPEATABLE[method]
  local retry = not chan and #cli._endpoints > 1
  local quorum = math.floor(#cli._endpoints / 2) + 1
  local attempt, waited = 0, 0
  while true do
    if retry and not repeatable then
      -- a connection lost since the last write (a member died or
      -- restarted) is a suspect too, though no call of ours failed on it
      local n, at = cc:_drops()
      if n ~= cli._drops then
        cli._drops = n
        if at then suspect(cli, at) end
      end
    end
    if retry and not repeatable and cli._fence then
      local settled, leaderless = fence(cli, dl)
      if not settled and now() >= dl then
        if leaderless then return nil, "etcd: no leader (the write was not sent)", "no_leader" end
        return nil, "etcd: deadline exceeded waiting for a leader (the write was not sent)", "timeout"
      end
    end
    local md = cli._md
    local send = repeatable and md or with_leader(cli, md)
    local res, msg, code, on = M.once(cc, method, req, dl, send, chan, nil, ns)
    if not res and cli._login and M.auth_refusal(msg) then
      local ok, m2, c2 = M.relogin(cli, md, dl)
      if not ok then return nil, m2, c2 end
      send = repeatable and cli._md or with_leader(cli, cli._md)
      res, msg, code, on = M.once(cc, method, req, dl, send, chan, nil, ns)
    end
    if res then return res end
    if retry and (code == "UNAVAILABLE" or code == "timeout") then suspect(cli, on) end
    if not retry or not (repeatable and RETRY_ON[code] or code == "no_leader") then return nil, msg, code end
    local no_leader = code == "no_leader"
    if no_leader then
      waited = waited + 1
    else
      attempt = attempt + 1
      if attempt >= MAX_ATTEMPTS then return nil, msg, code end
    end
    if (attempt + waited) % quorum == 0 then
      local pause = (no_leader and NO_LEADER_PAUSE or WAIT_BETWEEN) * (1 + JITTER * (2 * math.random() - 1))
      if now() + pause >= dl then return nil, msg, code end
      require("etcd.sched").sleep(pause)
    end
    if now() >= dl then return nil, msg, code end
  end
end

return M
