--- Cluster membership and maintenance: member_list/add/remove/update/promote,
-- status, alarm_list/alarm_disarm, defragment, hash_kv, move_leader.
-- Calls that concern one member take one of the client's endpoints.
local check = require "etcd.check"

local M = {}

local CALL = { timeout = "seconds" }

-- 1-based index of `endpoint` among the client's endpoints; raises otherwise.
local function endpoint_index(cli, endpoint, fname)
  check.arg(endpoint, "string", 1, "endpoint", fname, 3)
  local want = endpoint:gsub("^https?://", ""):gsub("/$", "")
  for i, e in ipairs(cli._endpoints) do
    if e == want then return i end
  end
  check.fail(("%s: bad argument #1 (endpoint): %q is not one of the client's endpoints"):format(fname, endpoint), 3)
end

local function urls(list, n, name, fname)
  if type(list) ~= "table" or #list == 0 then
    check.fail(("%s: bad argument #%d (%s): list of URLs expected"):format(fname, n, name), 3)
  end
  check.list(list, ("%s: bad argument #%d (%s)"):format(fname, n, name), 3)
  for i, u in ipairs(list) do check.arg(u, "text", n, ("%s[%d]"):format(name, i), fname, 3) end
  return list
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
    id = check.arg(id, "integer", 1, "id", "member_remove", 2)
    local o = check.options(opts, CALL, "member_remove", 2)
    return self:_call("Cluster.MemberRemove", { id = id }, o.timeout)
  end

  --- cli:member_update(id, peer_urls, opts) -> { members, header }
  function Client:member_update(id, peer_urls, opts)
    check.self(self, Client, "member_update", 2)
    id = check.arg(id, "integer", 1, "id", "member_update", 2)
    urls(peer_urls, 2, "peer_urls", "member_update")
    local o = check.options(opts, CALL, "member_update", 2)
    return self:_call("Cluster.MemberUpdate", { id = id, peer_urls = peer_urls }, o.timeout)
  end

  --- cli:member_promote(id, opts) -> { members, header }: a learner becomes a voter.
  function Client:member_promote(id, opts)
    check.self(self, Client, "member_promote", 2)
    id = check.arg(id, "integer", 1, "id", "member_promote", 2)
    local o = check.options(opts, CALL, "member_promote", 2)
    return self:_call("Cluster.MemberPromote", { id = id }, o.timeout)
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
    local member = check.value(alarm.member_id, "integer", "alarm_disarm: alarm.member_id", 2)
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
  -- endpoint whose status names itself leader.
  function Client:move_leader(id, opts)
    check.self(self, Client, "move_leader", 2)
    id = check.arg(id, "integer", 1, "id", "move_leader", 2)
    local o = check.options(opts, CALL, "move_leader", 2)
    for i = 1, #self._endpoints do
      local st = self:_call("Maintenance.Status", {}, o.timeout, i)
      if st and st.leader == st.header.member_id then
        return self:_call("Maintenance.MoveLeader", { target_id = id }, o.timeout, i)
      end
    end
    return self:_call("Maintenance.MoveLeader", { target_id = id }, o.timeout)
  end
end

return M
