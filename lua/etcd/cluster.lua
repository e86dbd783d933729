--- Cluster membership and maintenance: member_list/add/remove/update/promote,
-- status, alarm_list/alarm_disarm, defragment, hash_kv, move_leader, snapshot,
-- endpoint_status and endpoint_health (every endpoint at once).
-- Calls that concern one member take one of the client's endpoints.
-- @module etcd.cluster
local check = require "etcd.check"
local wait = require "etcd.wait"
local errors = require "etcd.errors"
local rpc = require "etcd.rpc"
local core = require "etcd.core"

local M = {}

local CALL = { timeout = "seconds" }

-- "https://h:p/" -> "h:p"
local function normalize(ep)
  return (ep:gsub("^https?://", ""):gsub("/$", ""))
end

-- The channel (1-based) of `endpoint`, one of the client's endpoints; raises
-- otherwise, naming it `what` (default: the method's first argument).
local function endpoint_index(cli, endpoint, fname, what)
  check.arg(endpoint, "string", 1, "endpoint", fname, 3)
  rpc.view(cli)
  local i = cli._chan[normalize(endpoint)]
  if i then return i end
  check.fail(("%s: %s: %q is not one of the client's endpoints")
    :format(fname, what or "bad argument #1 (endpoint)", endpoint), 3)
end

local function urls(list, n, name, fname)
  if type(list) ~= "table" or #list == 0 then
    check.fail(("%s: bad argument #%d (%s): list of URLs expected"):format(fname, n, name), 3)
  end
  check.list(list, ("%s: bad argument #%d (%s)"):format(fname, n, name), 3)
  for i, u in ipairs(list) do check.arg(u, "text", n, ("%s[%d]"):format(name, i), fname, 3) end
  return list
end

-- One call of `method` to each of the client's endpoints at once, failing
-- fast on a member that is down. Returns, per endpoint index, { res } or
-- { nil, msg, code }, with `took` (seconds until it was seen done). With
-- `enough` (a function of one such result), the first result it accepts
-- ends the wait: the calls still out are cancelled (their results say so).
local function each_endpoint(cli, method, req, timeout, enough)
  rpc.view(cli)
  local cc, md = cli._core, cli._md
  local t0 = wait.now()
  local dl = t0 + timeout
  local out, calls, toks = {}, {}, {}
  for i, ep in ipairs(cli._endpoints) do
    local h, msg, code = cc:_unary(method, req, timeout, md, cli._chan[ep], true)
    if h then
      calls[i] = h
      toks[#toks + 1] = h:token()
    else
      out[i] = { nil, msg, errors.classify(msg, code), took = 0 }
    end
  end
  local left = #toks
  while left > 0 do
    local r = wait.loop(cc, toks, dl + 1, function()
      local seen = false
      for i, h in pairs(calls) do
        if not out[i] and h:done() then
          local res, msg, code = h:result()
          if res then out[i] = { res } else out[i] = { errors.fail(msg, code) } end
          out[i].took = wait.now() - t0
          left, seen = left - 1, true
          if enough and enough(out[i]) then left = 0 end
        end
      end
      return seen or false
    end)
    if left == 0 then
      for i, h in pairs(calls) do
        if not out[i] then
          h:cancel()
          out[i] = { nil, "etcd: not needed", "cancelled", took = wait.now() - t0 }
        end
      end
    end
    if r == wait.TIMEOUT then
      for i, h in pairs(calls) do
        if not out[i] then
          h:cancel()
          out[i] = { nil, "etcd: no answer before the deadline", "timeout", took = wait.now() - t0 }
        end
      end
      break
    end
  end
  -- refused for the token: log in again (shared) and ask that one again
  for i, ep in ipairs(cli._endpoints) do
    local o = out[i]
    if not o[1] and cli._login and rpc.auth_refusal(o[2]) then
      local t1 = wait.now()
      out[i] = { rpc.call(cli, method, req, math.max(0, dl - t1), cli._chan[ep]) }
      out[i].took = o.took + wait.now() - t1
    end
  end
  return out
end

function M.install(Client)
  --- cli:member_list(opts) -> { members = { { id, name, peer_urls, client_urls, is_learner } }, header }
  function Client:member_list(opts)
    check.self(self, Client, "member_list", 2)
    local o = check.options(opts, CALL, "member_list", 2)
    return self:_call("Cluster.MemberList", {}, o.timeout)
  end

  --- cli:member_add(peer_urls, opts) -> { member, members, header }. opts: is_learner.
  function Client:member_add(peer_urls, opts)
    check.self(self, Client, "member_add", 2)
    urls(peer_urls, 1, "peer_urls", "member_add")
    local o = check.options(opts, { is_learner = "boolean", timeout = "seconds" }, "member_add", 2)
    return self:_call("Cluster.MemberAdd", { peer_urls = peer_urls, is_learner = o.is_learner }, o.timeout)
  end

  --- cli:member_remove(id, opts) -> { members, header }
  function Client:member_remove(id, opts)
    check.self(self, Client, "member_remove", 2)
    id = check.arg(id, "id", 1, "id", "member_remove", 2)
    local o = check.options(opts, CALL, "member_remove", 2)
    return self:_call("Cluster.MemberRemove", { id = id }, o.timeout)
  end

  --- cli:member_update(id, peer_urls, opts) -> { members, header }
  function Client:member_update(id, peer_urls, opts)
    check.self(self, Client, "member_update", 2)
    id = check.arg(id, "id", 1, "id", "member_update", 2)
    urls(peer_urls, 2, "peer_urls", "member_update")
    local o = check.options(opts, CALL, "member_update", 2)
    return self:_call("Cluster.MemberUpdate", { id = id, peer_urls = peer_urls }, o.timeout)
  end

  --- cli:member_promote(id, opts) -> { members, header }: a learner becomes a
  -- voter. etcd refuses while the learner has not caught up with the leader
  -- ("can only promote a learner member which is in sync with leader"): that
  -- refusal is asked again every 0.2 s until the deadline (opts.timeout, or
  -- the client's), and only then returned.
  function Client:member_promote(id, opts)
    check.self(self, Client, "member_promote", 2)
    id = check.arg(id, "id", 1, "id", "member_promote", 2)
    local o = check.options(opts, CALL, "member_promote", 2)
    local dl = wait.now() + (o.timeout or self._timeout)
    while true do
      local res, msg, code = self:_call("Cluster.MemberPromote", { id = id }, math.max(0, dl - wait.now()))
      if res or code ~= "FAILED_PRECONDITION" or not tostring(msg):find("in sync with leader", 1, true)
          or wait.now() + 0.2 >= dl then
        return res, msg, code
      end
      require("etcd.sched").sleep(0.2)
    end
  end

  --- cli:status(endpoint, opts) -> { version, db_size, leader, raft_index, raft_term,
  -- raft_applied_index, errors, db_size_in_use, is_learner, header } of that member.
  function Client:status(endpoint, opts)
    check.self(self, Client, "status", 2)
    local i = endpoint_index(self, endpoint, "status")
    local o = check.options(opts, CALL, "status", 2)
    return self:_call("Maintenance.Status", {}, o.timeout, i)
  end

  --- cli:alarm_list(opts) -> { alarms = { { member_id, alarm = "NOSPACE"|"CORRUPT" } }, header }
  function Client:alarm_list(opts)
    check.self(self, Client, "alarm_list", 2)
    local o = check.options(opts, CALL, "alarm_list", 2)
    return self:_call("Maintenance.Alarm", { action = "GET" }, o.timeout)
  end

  --- cli:alarm_disarm(alarm, opts) -> { alarms, header }: disarm an alarm
  -- as alarm_list gave it ({ member_id =, alarm = }).
  function Client:alarm_disarm(alarm, opts)
    check.self(self, Client, "alarm_disarm", 2)
    check.arg(alarm, "table", 1, "alarm", "alarm_disarm", 2)
    local o = check.options(opts, CALL, "alarm_disarm", 2)
    local member = check.value(alarm.member_id, "id", "alarm_disarm: alarm.member_id", 2)
    local kind = check.value(alarm.alarm, { none = "NONE", nospace = "NOSPACE", corrupt = "CORRUPT" },
      "alarm_disarm: alarm.alarm", 2)
    return self:_call("Maintenance.Alarm", { action = "DEACTIVATE", member_id = member, alarm = kind }, o.timeout)
  end

  --- cli:defragment(endpoint, opts) -> { header }: defragment that member's backend.
  function Client:defragment(endpoint, opts)
    check.self(self, Client, "defragment", 2)
    local i = endpoint_index(self, endpoint, "defragment")
    local o = check.options(opts, CALL, "defragment", 2)
    return self:_call("Maintenance.Defragment", {}, o.timeout, i)
  end

  --- cli:hash_kv(endpoint, revision, opts) -> { hash, compact_revision, header }
  function Client:hash_kv(endpoint, revision, opts)
    check.self(self, Client, "hash_kv", 2)
    local i = endpoint_index(self, endpoint, "hash_kv")
    revision = check.arg(revision, "integer", 2, "revision", "hash_kv", 2)
    local o = check.options(opts, CALL, "hash_kv", 2)
    return self:_call("Maintenance.HashKV", { revision = revision }, o.timeout, i)
  end

  --- cli:move_leader(id, opts) -> { header }: hand leadership to member `id`.
  -- etcd takes this only from the current leader: the call goes to the
  -- endpoint whose status names itself leader. Every endpoint is asked at
  -- once, failing fast on one that is down, within the call's one deadline
  -- (asked one after the other, a dead member ahead of the leader cost a
  -- whole timeout).
  function Client:move_leader(id, opts)
    check.self(self, Client, "move_leader", 2)
    id = check.arg(id, "id", 1, "id", "move_leader", 2)
    local o = check.options(opts, CALL, "move_leader", 2)
    local timeout = o.timeout or self._timeout
    local dl = wait.now() + timeout
    local function leads(r) return r[1] ~= nil and r[1].leader == r[1].header.member_id end
    local out = each_endpoint(self, "Maintenance.Status", {}, timeout, leads)
    local chan
    for i, ep in ipairs(self._endpoints) do
      if out[i] and leads(out[i]) then chan = self._chan[ep] end
    end
    return self:_call("Maintenance.MoveLeader", { target_id = id }, math.max(0, dl - wait.now()), chan)
  end

  --- cli:sync(opts) -> endpoints | nil, msg, code: the client's endpoints
  -- become the client URLs of the cluster's started voting members (etcd's
  -- member list, as Go's Client.Sync): a channel opens to each new one, and
  -- one that is no longer listed is retired (nothing new goes there; the
  -- engine's watch and keep-alive streams on it move now; calls already on
  -- it finish). URLs whose scheme does not fit the client (http:// for a TLS
  -- client, https:// for a plaintext one) are left out. opts: timeout.
  function Client:sync(opts)
    check.self(self, Client, "sync", 2)
    local o = check.options(opts, CALL, "sync", 2)
    local res, msg, code = self:_call("Cluster.MemberList", {}, o.timeout)
    if not res then return nil, msg, code end
    local want, seen = {}, {}
    for _, m in ipairs(res.members) do
      if m.name ~= "" and not m.is_learner then
        for _, u in ipairs(m.client_urls) do
          local https = u:find("^https://") ~= nil
          local ep = normalize(u)
          if https == self._tls and not seen[ep] and #want < core.MAX_ENDPOINTS then
            seen[ep] = true
            want[#want + 1] = ep
          end
        end
      end
    end
    if #want == 0 then
      return nil, "etcd: sync: no started member lists a client URL this client can use", "UNAVAILABLE"
    end
    rpc.view(self)
    for _, ep in ipairs(want) do
      if not self._chan[ep] then
        local i, m2, c2 = self._core:_add_target(ep)
        if not i then return nil, m2, c2 end
      end
    end
    -- (the new ones are in: a retirement never leaves the client without one)
    for _, ep in ipairs(self._endpoints) do
      if not seen[ep] then self._core:_retire(self._chan[ep]) end
    end
    rpc.view(self)
    local copy = {}
    for i, ep in ipairs(self._endpoints) do copy[i] = ep end
    return copy
  end

  --- cli:endpoint_status(opts) -> list, one entry per endpoint, in order:
  -- { endpoint, id, version, db_size, db_size_in_use, leader, is_leader,
  -- is_learner, raft_term, raft_index, raft_applied_index, errors, header,
  -- took } (etcd's StatusResponse and who answered), or { endpoint, error,
  -- code, took } for a member that did not answer (nil, msg, "closed" when the
  -- client is closed). Every endpoint is asked at
  -- once (as `etcdctl endpoint status --cluster` without the discovery);
  -- opts.timeout bounds the whole.
  function Client:endpoint_status(opts)
    check.self(self, Client, "endpoint_status", 2)
    local o = check.options(opts, CALL, "endpoint_status", 2)
    if self._core:_closed() then return nil, "etcd: client is closed", "closed" end
    local out = each_endpoint(self, "Maintenance.Status", {}, o.timeout or self._timeout)
    local list = {}
    for i, ep in ipairs(self._endpoints) do
      local r, e = out[i][1], { endpoint = ep, took = out[i].took }
      if r then
        for k, v in pairs(r) do e[k] = v end
        e.id = r.header.member_id
        e.is_leader = r.leader ~= core.id(0) and r.leader == r.header.member_id
      else
        e.error, e.code = out[i][2], out[i][3]
      end
      list[i] = e
    end
    return list
  end

  --- cli:endpoint_health(opts) -> list, one entry per endpoint, in order:
  -- { endpoint, health, took, error, code }. Healthy, as `etcdctl endpoint
  -- health` decides: a linearizable get (of the key "health") answered, or
  -- refused for permission (it went through consensus either way). Every
  -- endpoint is asked at once; a member that is down fails at once, one that
  -- does not answer by opts.timeout (default: the client's) is "timeout".
  function Client:endpoint_health(opts)
    check.self(self, Client, "endpoint_health", 2)
    local o = check.options(opts, CALL, "endpoint_health", 2)
    if self._core:_closed() then return nil, "etcd: client is closed", "closed" end
    local out = each_endpoint(self, "KV.Range", { key = "health" }, o.timeout or self._timeout)
    local list = {}
    for i, ep in ipairs(self._endpoints) do
      local r, msg, code = out[i][1], out[i][2], out[i][3]
      local ok = r ~= nil or code == "PERMISSION_DENIED"
      list[i] = { endpoint = ep, health = ok, took = out[i].took, error = not ok and msg or nil,
                  code = not ok and code or nil }
    end
    return list
  end

  --- cli:snapshot(path, opts) -> { size, revision, member_id, endpoint }: one
  -- member's whole database (etcd's Maintenance.Snapshot, as `etcdctl
  -- snapshot save`), streamed to the file `path`: written to `path .. ".part"`
  -- and renamed once complete, so `path` is never a partial snapshot. The
  -- file ends with etcd's SHA-256 of the data, which `etcdctl snapshot
  -- restore` checks. `revision`: the member's revision just before the
  -- snapshot began (everything up to it is in the file). opts: endpoint (one
  -- of cli:endpoints(); default: the one in use), timeout (the whole
  -- transfer; default: 60 s or the client's timeout if longer; the status
  -- asked first is bounded by the client's timeout too).
  function Client:snapshot(path, opts)
    check.self(self, Client, "snapshot", 2)
    check.arg(path, "text", 1, "path", "snapshot", 2)
    local o = check.options(opts, { endpoint = "string", timeout = "seconds" }, "snapshot", 2)
    local i = o.endpoint and endpoint_index(self, o.endpoint, "snapshot", "option 'endpoint'")
      or self._core:_current()
    local timeout = o.timeout or math.max(60, self._timeout)
    local dl = wait.now() + timeout
    -- the status is an ordinary call: the client's deadline (or a shorter
    -- one of the caller's), so that a member that is down or stuck fails it
    -- as fast as any call
    local st, msg, code = self:_call("Maintenance.Status", {}, math.min(timeout, self._timeout), i)
    if not st then return nil, msg, code end
    local tmp = path .. ".part"
    local f, ferr = io.open(tmp, "wb")
    if not f then return nil, "etcd: snapshot: cannot write " .. tostring(ferr), "io_error" end
    local cc = self._core
    local s
    s, msg, code = cc:_stream("Maintenance.Snapshot", math.max(0, dl - wait.now()), self._md, i)
    local size, total, res = 0, nil, nil
    if s then
      s:write {}
      s:close_send()
      while true do
        local r, m2, c2 = wait.loop(cc, s:token(), dl, function() return s:read() end)
        if r == wait.TIMEOUT then
          msg, code = "etcd: snapshot: no end before the deadline", "timeout"
          break
        elseif not r then
          -- the stream ended: complete only with every byte and etcd's hash
          if total and size == total + 32 then
            res = true
          elseif c2 == "closed" and m2 == "etcd: stream ended" then
            msg, code = ("etcd: snapshot: the stream ended after %d bytes of %s"):format(size,
              total and tostring(total + 32) or "?"), "DATA_LOSS"
          else
            msg, code = m2, errors.classify(m2, c2)
          end
          break
        end
        if not total then total = r.remaining_bytes + #r.blob end
        local ok, werr = f:write(r.blob)
        if not ok then
          msg, code = "etcd: snapshot: cannot write " .. tostring(werr), "io_error"
          break
        end
        size = size + #r.blob
      end
      s:close()
    else
      code = errors.classify(msg, code)
    end
    local ok, cerr = f:close()
    if res and not ok then res, msg, code = nil, "etcd: snapshot: cannot write " .. tostring(cerr), "io_error" end
    if res then
      local rok, rerr = os.rename(tmp, path)
      if not rok then res, msg, code = nil, "etcd: snapshot: cannot rename: " .. tostring(rerr), "io_error" end
    end
    if not res then
      os.remove(tmp)
      return nil, msg, code
    end
    return { size = size, revision = st.header.revision, member_id = st.header.member_id,
             endpoint = self._ep_of[i] }
  end
end

return M
