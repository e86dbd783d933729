--- lua-etcd: etcd v3 for Lua.
--
--     local etcd = require "etcd"
--     local cli = assert(etcd.new { endpoints = { "127.0.0.1:2379" } })
--     assert(cli:put("foo", "1"))
--     local res = assert(cli:get("foo", { prefix = true }))
--
-- Misuse raises; run-time failures return `nil, msg, code` (docs/ERROR_HANDLING.md).
-- @module etcd
local core = require "etcd.core"
local check = require "etcd.check"
local errors = require "etcd.errors"
local wait = require "etcd.wait"
local rpc = require "etcd.rpc"
local sched = require "etcd.sched"
local kv = require "etcd.kv"
local txn = require "etcd.txn"
local lease = require "etcd.lease"
local watch = require "etcd.watch"
local cluster = require "etcd.cluster"
local auth = require "etcd.auth"

local etcd = {
  version = core.version,
  op = txn.op,
  compare = txn.compare,
  --- etcd.prefix_end(key): the end of the range of keys that start with key
  prefix_end = function(key)
    check.arg(key, "string", 1, "key", "etcd.prefix_end", 2)
    return kv.prefix_end(key)
  end,
  Error = errors.Error,
  --- etcd.id(v): v as this Lua represents 64-bit ids (lease, member, cluster
  -- ids): an integer on 5.3/5.4, a decimal string on 5.1/LuaJIT, where a
  -- double cannot hold them. v: an integer, a decimal string or a "0x" hex
  -- string. Raises for anything else.
  id = function(v)
    local id = core.id(v)
    if id == nil then check.arg(v, "id", 1, "v", "etcd.id", 2) end
    return id
  end,
  --- etcd.id_hex(id, unsigned): the id in lower-case hex, as Go's "%x"
  -- formats it (an int64 lease id with a minus sign when negative; with
  -- `unsigned`, a member or cluster id's 64 bits). Exact on every Lua.
  id_hex = function(id, unsigned)
    check.arg(id, "id", 1, "id", "etcd.id_hex", 2)
    return core.id_hex(id, unsigned)
  end,
  -- coroutines (README "Using with coroutines")
  spawn = sched.spawn,
  run = sched.run,
  sleep = function(seconds)
    seconds = check.arg(seconds, "seconds", 1, "seconds", "etcd.sleep", 2)
    return sched.sleep(seconds)
  end,
  yield = sched.yield,
  first = sched.first,
  Task = sched.Task, -- the class of the handles etcd.spawn returns
}

local Client = { __name = "etcd.client" }
Client.__index = Client
-- a real client has its core; setmetatable({}, Client) does not
local CORE_MT = debug.getregistry()["etcd.core.client"]
function Client.__valid(v) return getmetatable(rawget(v, "_core")) == CORE_MT end

local NEW_OPTS = {
  endpoints = "table", dial_timeout = "seconds", timeout = "seconds",
  namespace = "string", max_send_size = "size", max_recv_size = "size",
  user = "text", password = "text", tls = "table", auto_sync_interval = "seconds",
}
-- Options of DESIGN.md that later work adds; named here so that passing one
-- says so instead of "unknown option". (None left.)
local NOT_YET = {}
local TLS_OPTS = { ca = "text", cert = "text", key = "text", server_name = "text" }

-- "host:port", "http://host:port" or "https://host:port" -> gRPC target, scheme
local function target_of(ep, i)
  local what = ("etcd.new: endpoints[%d]"):format(i)
  if type(ep) ~= "string" then check.fail(("%s: string expected, got %s"):format(what, type(ep)), 3) end
  if ep:find("\0", 1, true) then
    check.fail(("%s: \"host:port\" without NUL bytes expected, got %q"):format(what, ep), 3)
  end
  local scheme = ep:match("^(https?)://")
  local rest = ep:match("^https?://(.*)$") or ep
  rest = rest:gsub("/$", "")
  if rest:match("^%a[%w+.-]*://") then check.fail(("%s: unsupported scheme in %q"):format(what, ep), 3) end
  local host, port = rest:match("^(%[[%x:.]+%]):(%d+)$")
  if not host then host, port = rest:match("^([%w._-]+):(%d+)$") end
  if not host or tonumber(port) < 1 or tonumber(port) > 65535 then
    check.fail(("%s: \"host:port\" expected, got %q"):format(what, ep), 3)
  end
  return host .. ":" .. port, scheme
end

-- PEM text given inline, or read from a path.
local function pem(v, name)
  if v:find("-----BEGIN", 1, true) then return v end
  local f, err = io.open(v, "rb")
  if not f then
    if err:sub(1, #v + 2) == v .. ": " then err = err:sub(#v + 3) end
    check.fail(("etcd.new: option 'tls.%s': cannot read %q: %s"):format(name, v, err), 3)
  end
  local text = f:read("*a")
  f:close()
  if not text or not text:find("-----BEGIN", 1, true) then
    check.fail(("etcd.new: option 'tls.%s': %q holds no PEM data"):format(name, v), 3)
  end
  return text
end

--- Connect to etcd. Options: endpoints (list of "host:port" or
-- "http://host:port"), dial_timeout (seconds, default 5; 0: do not wait),
-- timeout (default per-call deadline, 10 s), namespace, max_send_size,
-- max_recv_size. Returns a client or nil, msg, code.
function etcd.new(opts)
  if type(opts) ~= "table" then
    check.fail(("etcd.new: bad argument #1 (options table expected, got %s)"):format(type(opts)), 2)
  end
  for k in pairs(opts) do
    if NOT_YET[k] then check.fail(("etcd.new: option '%s' is not implemented yet"):format(k), 2) end
  end
  local o = check.options(opts, NEW_OPTS, "etcd.new", 2)
  local eps = o.endpoints
  if eps then check.list(eps, "etcd.new: option 'endpoints'", 2) end
  if not eps or #eps == 0 then check.fail("etcd.new: option 'endpoints' must list at least one endpoint", 2) end
  if wait.ngx and wait.ngx.phase() == "init" then
    -- the nginx master, before it forks the workers: gRPC's threads would
    -- not survive the fork, and every client would be dead in the workers
    check.fail("etcd.new: not in init_by_lua* (nginx's master process, before the fork): create clients in"
      .. " the workers (init_worker_by_lua*, better in an ngx.timer.at callback there, or a request handler)", 2)
  end
  if #eps > core.MAX_ENDPOINTS then
    check.fail(("etcd.new: option 'endpoints' lists more than %d endpoints"):format(core.MAX_ENDPOINTS), 2)
  end
  local targets, schemes = {}, {}
  for i = 1, #eps do
    local t, sch = target_of(eps[i], i)
    targets[i] = t
    schemes[sch or "none"] = true
  end
  local tls
  if o.tls or schemes.https then
    if schemes.http then
      check.fail("etcd.new: http:// endpoints cannot be used with TLS (https:// endpoints or option 'tls')", 2)
    end
    local t = check.options(o.tls, TLS_OPTS, "etcd.new: option 'tls'", 2)
    if (t.cert == nil) ~= (t.key == nil) then
      check.fail("etcd.new: options 'tls.cert' and 'tls.key' go together", 2)
    end
    tls = { server_name = t.server_name }
    for _, k in ipairs { "ca", "cert", "key" } do
      if t[k] then tls[k] = pem(t[k], k) end
    end
  end
  if (o.user == nil) ~= (o.password == nil) then
    check.fail("etcd.new: options 'user' and 'password' go together", 2)
  end
  local c, msg, code = core.new { targets = targets, max_send_size = o.max_send_size,
                                  max_recv_size = o.max_recv_size, tls = tls }
  if not c then return nil, msg, code end
  local self = setmetatable({
    _core = c,
    _timeout = o.timeout or 10,
    _ns = o.namespace or "",
    _gen = false, -- rpc.view: _endpoints, _chan, _ep_of, read from the engine
    _tls = tls and true or false,
    _dial_timeout = o.dial_timeout or 5,
    -- 0 or none: the engine's default (src/engine/client.c)
  }, Client)
  rpc.view(self)
  if o.auto_sync_interval and o.auto_sync_interval > 0 then
    -- the engine syncs in the background (whether or not Lua makes calls);
    -- calls read the new list when it changed (rpc.view)
    self._sync_every = o.auto_sync_interval
    c:_auto_sync(o.auto_sync_interval)
  end
  local dial = self._dial_timeout
  if dial > 0 then
    c:_dial(dial)
    -- every change of a channel's state lists the client's own token
    local up = wait.loop(c, c:_token(), wait.now() + dial, function() return c:_ready() or c:_closed() or false end)
    if up == wait.TIMEOUT or not c:_ready() then
      -- gRPC keeps the reason with the channel: one call that fails fast
      -- brings it out (refused, TLS handshake, ...).
      local why = ""
      local _, m = rpc.once(c, "Maintenance.Status", {}, wait.now() + 1, nil, 1, true)
      if m and m ~= "" then why = ": " .. m end
      local closed = why:find("Socket closed", 1, true) or why:find("Endpoint read failed", 1, true)
        or why:find("Connection reset by peer", 1, true)
      if closed and tls then
        -- With TLS 1.3 the server refuses a client certificate only after the
        -- handshake; gRPC's status then says no more than that it closed.
        why = why .. " (the server closed the TLS connection: it may demand a client certificate"
          .. " (tls.cert, tls.key) or reject the one given, or not serve TLS at all)"
      elseif closed then
        -- what a TLS port does to a plaintext client
        why = why .. " (the server closed the connection: if it serves TLS, use an https:// endpoint or the tls option)"
      end
      c:close()
      return nil, ("etcd: no endpoint reachable within %gs (%s)%s"):format(dial, table.concat(targets, ", "), why),
        "UNAVAILABLE"
    end
  end
  if o.user then
    -- The password stays in this closure: never in a field, a message or
    -- tostring(cli).
    local user, password = o.user, o.password
    self._login = function(dl)
      return rpc.once(c, "Auth.Authenticate", { name = user, password = password }, dl)
    end
    local ok, amsg, acode = self:_authenticate(wait.now() + self._timeout)
    if not ok then
      c:close()
      return nil, amsg, acode
    end
  end
  return self
end

--- Close the client: every call in flight ends with code "closed", later calls
-- return nil, msg, "closed". Idempotent; also __close and __gc.
function Client:close()
  check.self(self, Client, "close", 2)
  local c = self._core
  c:close()
  -- everything in flight ended as closed and listed its token: wake the
  -- coroutines that wait on this client
  wait.dispatch(c)
end
Client.__close = Client.close

function Client:__tostring()
  return tostring(self._core)
end

--- The eventfd the client's pump thread signals, for event loops.
function Client:pollfd()
  check.self(self, Client, "pollfd", 2)
  return self._core:pollfd()
end

--- cqueues' polling protocol (with pollfd): a client can be given to
-- cqueues.poll; it is readable when its pump has something for Lua.
function Client:events()
  check.self(self, Client, "events", 2)
  return "r"
end

function Client:timeout()
  check.self(self, Client, "timeout", 2)
  return nil
end

--- The endpoints this client uses, as gRPC targets.
function Client:endpoints()
  check.self(self, Client, "endpoints", 2)
  rpc.view(self)
  local t = {}
  for i, e in ipairs(self._endpoints) do t[i] = e end
  return t
end

-- Log in (again) with the client's user and password before the absolute
-- deadline `dl`; the new token goes on every later call and on the streams
-- the engine opens. Callers go through rpc.relogin (one login at a time).
function Client:_authenticate(dl)
  local res, msg, code = self._login(dl)
  if not res and msg and msg:find("authentication is not enabled", 1, true) then
    -- auth is off (or was turned off): go on without a token, as Go does
    res = { token = nil }
  elseif not res then
    return nil, msg, code
  end
  self._md = res.token and { token = res.token } or nil
  self._core:_set_metadata(self._md or {})
  self._core:_auth_refreshed()
  return true
end

-- If etcd refused a watch for the token, log in again (from any wait).
function Client:_check_auth(dl)
  if self._login and self._core:_need_auth() then
    rpc.relogin(self, self._md, dl or wait.now() + self._timeout)
  end
end

-- A unary call (rpc.call): deadline, single-flight re-login. `ns`: the
-- namespace to take off the keys of the result.
function Client:_call(method, req, timeout, chan, ns)
  return rpc.call(self, method, req, timeout, chan, ns)
end

-- Send an op (etcd.op.*) and shape its result.
function Client:_send(op, timeout)
  local ns = self._ns
  if ns ~= "" and op.kind ~= "txn" and op.req.key == "" and (op.req.range_end or "") == "" then
    return nil, "etcdserver: key is not provided", "INVALID_ARGUMENT"
  end
  local res, msg, code = self:_call(txn.KIND_METHOD[op.kind], txn.wire(ns, op.kind, op.req), timeout, nil,
    ns ~= "" and ns or nil)
  if not res then return nil, msg, code end
  return txn.shape(op.kind, res) -- (the keys came without the namespace)
end

-- ---------------------------------------------------------------------------
-- KV

--- cli:get(key, opts) -> { header, kvs, more, count }
function Client:get(key, opts)
  check.self(self, Client, "get", 2)
  check.arg(key, "string", 1, "key", "get", 2)
  local o = check.options(opts, kv.GET_CALL_OPTS, "get", 2)
  local op = setmetatable({ kind = "get", req = kv.range_request(key, o, "get", 2) }, txn.Op)
  return self:_send(op, o.timeout)
end

local GET_VALUE_OPTS = { revision = "integer", serializable = "boolean", timeout = "seconds" }

--- cli:get_value(key, opts) -> value, kv | nil (no such key) | nil, msg, code:
-- the commonest read, one key's value.
function Client:get_value(key, opts)
  check.self(self, Client, "get_value", 2)
  check.arg(key, "string", 1, "key", "get_value", 2)
  local o = check.options(opts, GET_VALUE_OPTS, "get_value", 2)
  local op = setmetatable({ kind = "get", req = kv.range_request(key, o, "get_value", 2) }, txn.Op)
  local res, msg, code = self:_send(op, o.timeout)
  if not res then return nil, msg, code end
  local k = res.kvs[1]
  if not k then return nil end
  return k.value, k
end

--- cli:put(key, value, opts) -> { header, prev_kv }
function Client:put(key, value, opts)
  check.self(self, Client, "put", 2)
  local o = check.options(opts, kv.PUT_CALL_OPTS, "put", 2)
  key, value = kv.put_args(key, value, o, "put", 2)
  local op = setmetatable({ kind = "put", req = kv.put_request(key, value, o) }, txn.Op)
  return self:_send(op, o.timeout)
end

--- cli:delete(key, opts) -> { header, deleted, prev_kvs }
function Client:delete(key, opts)
  check.self(self, Client, "delete", 2)
  check.arg(key, "string", 1, "key", "delete", 2)
  local o = check.options(opts, kv.DELETE_CALL_OPTS, "delete", 2)
  local op = setmetatable({ kind = "delete", req = kv.delete_request(key, o, "delete", 2) }, txn.Op)
  return self:_send(op, o.timeout)
end

--- cli:compact(revision, opts) -> { header }
function Client:compact(revision, opts)
  check.self(self, Client, "compact", 2)
  revision = check.arg(revision, "integer", 1, "revision", "compact", 2)
  local o = check.options(opts, kv.COMPACT_CALL_OPTS, "compact", 2)
  return self:_call("KV.Compact", { revision = revision, physical = o.physical }, o.timeout)
end

-- ---------------------------------------------------------------------------
-- txn and batches

local CALL_OPTS = { timeout = "seconds" }

--- cli:txn{ compare =, success =, failure = } -> { header, succeeded, responses }
function Client:txn(t, opts)
  check.self(self, Client, "txn", 2)
  local req = txn.txn_request(t, "txn", 2)
  local o = check.options(opts, CALL_OPTS, "txn", 2)
  return self:_send(setmetatable({ kind = "txn", req = req }, txn.Op), o.timeout)
end

--- cli:exec(op) runs one etcd.op.* (Go's Do) and returns the matching result.
function Client:exec(op, opts)
  check.self(self, Client, "exec", 2)
  if not txn.is_op(op) then
    check.fail(("exec: bad argument #1 (etcd.op expected, got %s)"):format(type(op)), 2)
  end
  local o = check.options(opts, CALL_OPTS, "exec", 2)
  return self:_send(op, o.timeout)
end

--- cli:batch(ops, opts) runs ops in order and returns their results in order.
-- Without `atomic`, each op is its own request: on a failure the result is
-- nil, msg, code, done (the results of the ops that were applied before).
-- With `atomic = true` the ops are sent as one txn: all apply or none.
function Client:batch(ops, opts)
  check.self(self, Client, "batch", 2)
  if type(ops) ~= "table" then
    check.fail(("batch: bad argument #1 (list of etcd.op expected, got %s)"):format(type(ops)), 2)
  end
  check.list(ops, "batch: bad argument #1 (ops)", 2)
  for i = 1, #ops do
    if not txn.is_op(ops[i]) then
      check.fail(("batch: ops[%d] must be made by etcd.op.*"):format(i), 2)
    end
  end
  local o = check.options(opts, { timeout = "seconds", atomic = "boolean" }, "batch", 2)
  if o.atomic then
    local req = txn.txn_request({ success = ops }, "batch", 2)
    local res, msg, code = self:_send(setmetatable({ kind = "txn", req = req }, txn.Op), o.timeout)
    if not res then return nil, msg, code end
    return res.responses
  end
  local results = {}
  for i = 1, #ops do
    local res, msg, code = self:_send(ops[i], o.timeout)
    if not res then return nil, msg, code, results end
    results[i] = res
  end
  return results
end

lease.install(Client)
watch.install(Client)
cluster.install(Client)
auth.install(Client)

etcd.Client = Client

--- etcd.mirror(cli, prefix, opts): a local copy of a prefix kept by a watch
-- (lua/etcd/mirror.lua, README "Mirroring a prefix")
etcd.mirror = require("etcd.mirror").new
return etcd
