--- Auth administration: auth_enable/auth_disable, users (user_add, user_get,
-- user_list, user_delete, user_change_password, user_grant_role,
-- user_revoke_role) and roles (role_add, role_get, role_list, role_delete,
-- role_grant_permission, role_revoke_permission), as Go's clientv3.Auth.
--
-- etcd 3.4 has no AuthStatus RPC (it came with etcd 3.5), so there is no
-- auth_status here.
--
-- Like Go's namespace package, the client's namespace does not apply to the
-- keys of permissions: they are sent as given.
-- @module etcd.auth
local check = require "etcd.check"
local compat = require "etcd.compat"
local prefix_end = require("etcd.kv").prefix_end

local M = {}

local CALL = { timeout = "seconds" }
local PERM_OPTS = { prefix = "boolean", from_key = "boolean", timeout = "seconds" }

-- "read" | "write" | "readwrite" (any case) -> authpb.Permission.Type name
local PERM_TYPES = { read = "READ", write = "WRITE", readwrite = "READWRITE" }

local function name_arg(v, n, what, fname)
  check.arg(v, "text", n, what, fname, 3) -- not a tail call: the level counts this frame
end

-- The range of a permission: key and range_end (nil or "" for one key), or
-- opts.prefix / opts.from_key. Raises on a conflict.
local function perm_range(key, range_end, o, fname)
  check.arg(key, "string", 2, "key", fname, 3)
  if range_end ~= nil then check.arg(range_end, "string", 3, "range_end", fname, 3) end
  if o.prefix and o.from_key then
    check.fail(("%s: options 'prefix' and 'from_key' exclude each other"):format(fname), 3)
  end
  if (o.prefix or o.from_key) and range_end ~= nil and range_end ~= "" then
    check.fail(("%s: option '%s' and argument #3 (range_end) exclude each other"):format(
      fname, o.prefix and "prefix" or "from_key"), 3)
  end
  if o.prefix then return key, prefix_end(key) end
  if o.from_key then return key, "\0" end
  if range_end == "" then range_end = nil end
  return key, range_end
end

-- perm (any case) -> the enum name; raises at the public caller otherwise.
-- (check.value with an enum lets a non-string through as `false`.)
local function perm_type(perm)
  local t = type(perm) == "string" and PERM_TYPES[perm:lower()]
  if not t then
    check.fail(('role_grant_permission: bad argument #4 (perm): expected one of '
      .. '"read", "readwrite", "write", got %s'):format(
      type(perm) == "string" and ("%q"):format(perm) or compat.type(perm) or type(perm)), 3)
  end
  return t
end

function M.install(Client)
  --- cli:auth_enable(opts) -> { header }. etcd wants a user "root" with the
  -- role "root" first.
  function Client:auth_enable(opts)
    check.self(self, Client, "auth_enable", 2)
    local o = check.options(opts, CALL, "auth_enable", 2)
    return self:_call("Auth.AuthEnable", {}, o.timeout)
  end

  --- cli:auth_disable(opts) -> { header }
  function Client:auth_disable(opts)
    check.self(self, Client, "auth_disable", 2)
    local o = check.options(opts, CALL, "auth_disable", 2)
    return self:_call("Auth.AuthDisable", {}, o.timeout)
  end

  --- cli:user_add(name, password, opts) -> { header }. opts: no_password (a
  -- user who can only log in by TLS certificate; then password is nil or "").
  function Client:user_add(name, password, opts)
    check.self(self, Client, "user_add", 2)
    name_arg(name, 1, "name", "user_add")
    local o = check.options(opts, { no_password = "boolean", timeout = "seconds" }, "user_add", 2)
    if o.no_password then
      if password ~= nil and password ~= "" then
        check.fail("user_add: bad argument #2 (password): must be nil or \"\" with option 'no_password'", 2)
      end
      password = nil
    else
      check.arg(password, "text", 2, "password", "user_add", 2)
    end
    return self:_call("Auth.UserAdd", {
      name = name, password = password,
      options = o.no_password and { no_password = true } or nil,
    }, o.timeout)
  end

  --- cli:user_get(name, opts) -> { roles = { ... }, header }
  function Client:user_get(name, opts)
    check.self(self, Client, "user_get", 2)
    name_arg(name, 1, "name", "user_get")
    local o = check.options(opts, CALL, "user_get", 2)
    return self:_call("Auth.UserGet", { name = name }, o.timeout)
  end

  --- cli:user_list(opts) -> { users = { ... }, header }
  function Client:user_list(opts)
    check.self(self, Client, "user_list", 2)
    local o = check.options(opts, CALL, "user_list", 2)
    return self:_call("Auth.UserList", {}, o.timeout)
  end

  --- cli:user_delete(name, opts) -> { header }
  function Client:user_delete(name, opts)
    check.self(self, Client, "user_delete", 2)
    name_arg(name, 1, "name", "user_delete")
    local o = check.options(opts, CALL, "user_delete", 2)
    return self:_call("Auth.UserDelete", { name = name }, o.timeout)
  end

  --- cli:user_change_password(name, password, opts) -> { header }
  function Client:user_change_password(name, password, opts)
    check.self(self, Client, "user_change_password", 2)
    name_arg(name, 1, "name", "user_change_password")
    check.arg(password, "text", 2, "password", "user_change_password", 2)
    local o = check.options(opts, CALL, "user_change_password", 2)
    return self:_call("Auth.UserChangePassword", { name = name, password = password }, o.timeout)
  end

  --- cli:user_grant_role(user, role, opts) -> { header }
  function Client:user_grant_role(user, role, opts)
    check.self(self, Client, "user_grant_role", 2)
    name_arg(user, 1, "user", "user_grant_role")
    name_arg(role, 2, "role", "user_grant_role")
    local o = check.options(opts, CALL, "user_grant_role", 2)
    return self:_call("Auth.UserGrantRole", { user = user, role = role }, o.timeout)
  end

  --- cli:user_revoke_role(user, role, opts) -> { header }
  function Client:user_revoke_role(user, role, opts)
    check.self(self, Client, "user_revoke_role", 2)
    name_arg(user, 1, "user", "user_revoke_role")
    name_arg(role, 2, "role", "user_revoke_role")
    local o = check.options(opts, CALL, "user_revoke_role", 2)
    return self:_call("Auth.UserRevokeRole", { name = user, role = role }, o.timeout)
  end

  --- cli:role_add(name, opts) -> { header }
  function Client:role_add(name, opts)
    check.self(self, Client, "role_add", 2)
    name_arg(name, 1, "name", "role_add")
    local o = check.options(opts, CALL, "role_add", 2)
    return self:_call("Auth.RoleAdd", { name = name }, o.timeout)
  end

  --- cli:role_get(name, opts) -> { perm = { { perm_type = "read"|"write"|"readwrite",
  -- key, range_end }, ... }, header }
  function Client:role_get(name, opts)
    check.self(self, Client, "role_get", 2)
    name_arg(name, 1, "name", "role_get")
    local o = check.options(opts, CALL, "role_get", 2)
    local res, msg, code = self:_call("Auth.RoleGet", { role = name }, o.timeout)
    if not res then return nil, msg, code end
    for _, p in ipairs(res.perm) do
      if type(p.perm_type) == "string" then p.perm_type = p.perm_type:lower() end
    end
    return res
  end

  --- cli:role_list(opts) -> { roles = { ... }, header }
  function Client:role_list(opts)
    check.self(self, Client, "role_list", 2)
    local o = check.options(opts, CALL, "role_list", 2)
    return self:_call("Auth.RoleList", {}, o.timeout)
  end

  --- cli:role_delete(name, opts) -> { header }
  function Client:role_delete(name, opts)
    check.self(self, Client, "role_delete", 2)
    name_arg(name, 1, "name", "role_delete")
    local o = check.options(opts, CALL, "role_delete", 2)
    return self:_call("Auth.RoleDelete", { role = name }, o.timeout)
  end

  --- cli:role_grant_permission(role, key, range_end, perm, opts) -> { header }.
  -- perm: "read" | "write" | "readwrite" (any case); range_end nil or "" for
  -- one key; opts: prefix, from_key.
  function Client:role_grant_permission(role, key, range_end, perm, opts)
    check.self(self, Client, "role_grant_permission", 2)
    name_arg(role, 1, "role", "role_grant_permission")
    local o = check.options(opts, PERM_OPTS, "role_grant_permission", 2)
    local k, e = perm_range(key, range_end, o, "role_grant_permission")
    local t = perm_type(perm)
    return self:_call("Auth.RoleGrantPermission",
      { name = role, perm = { perm_type = t, key = k, range_end = e } }, o.timeout)
  end

  --- cli:role_revoke_permission(role, key, range_end, opts) -> { header }.
  -- The range must be the one granted; opts: prefix, from_key.
  function Client:role_revoke_permission(role, key, range_end, opts)
    check.self(self, Client, "role_revoke_permission", 2)
    name_arg(role, 1, "role", "role_revoke_permission")
    local o = check.options(opts, PERM_OPTS, "role_revoke_permission", 2)
    local k, e = perm_range(key, range_end, o, "role_revoke_permission")
    return self:_call("Auth.RoleRevokePermission", { role = role, key = k, range_end = e }, o.timeout)
  end
end

return M
