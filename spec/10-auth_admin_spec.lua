-- Auth administration (users, roles, permissions, auth_enable/auth_disable)
-- against a real etcd, following the auth part of the Go walk-through
-- (section 四). Auth being on is checked independently with etcdctl; every
-- test leaves auth off and no user or role behind.
local helpers = require "helpers"
local etcd = require "etcd"

local SPEC = "10%-auth_admin_spec%.lua:%d+: "

-- fn must raise msg (exactly), at the level of this file (the caller).
local function raises(msg, fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "did not raise: " .. msg)
  assert.is_string(err)
  assert.matches(SPEC, err)
  assert.equal(msg, (err:gsub("^.-" .. SPEC, "")))
end

-- a run-time failure: nil, msg, code
local function fails(msg, code, res, m, c)
  assert.is_nil(res)
  assert.equal(msg, m)
  assert.equal(code, c)
end

local function ctl(srv, ...)
  local ok, out, err = helpers.etcdctl(srv, ...)
  return ok, out .. err
end

describe("auth administration", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end, { etcd = { args = { "--bcrypt-cost", "4" } } })

  -- Every test ends with auth off (disabled as root by etcdctl, whatever the
  -- test did) and without users or roles.
  after_each(function()
    ctl(srv, "--user", "root:123", "auth", "disable")
    local ok, out = ctl(srv, "get", "probe")
    assert(ok, "auth still on after the test: " .. out)
    for _, u in ipairs(assert(cli:user_list()).users) do assert(cli:user_delete(u)) end
    for _, r in ipairs(assert(cli:role_list()).roles) do assert(cli:role_delete(r)) end
  end)

  -- The walk-through's set-up: roles root and guest, users root and xingyys.
  local function walkthrough()
    assert(cli:role_add("root"))
    assert(cli:user_add("root", "123"))
    assert(cli:user_grant_role("root", "root"))
    assert(cli:user_change_password("root", "123"))
    assert(cli:role_add("guest"))
    assert(cli:user_add("xingyys", ""))
    assert(cli:user_grant_role("xingyys", "guest"))
    assert(cli:user_change_password("xingyys", "123"))
    assert(cli:role_grant_permission("guest", "foo", "zoo", "readwrite"))
  end

  it("the walk-through: users, roles and a read-write range, as etcd lists them", function()
    walkthrough()
    local u = assert(cli:user_get("root"))
    assert.same({ "root" }, u.roles)
    assert.is_true(u.header.revision > 0)
    assert.same({ "guest" }, assert(cli:user_get("xingyys")).roles)
    assert.same({ "root", "xingyys" }, assert(cli:user_list()).users)
    assert.same({ "guest", "root" }, assert(cli:role_list()).roles)
    local g = assert(cli:role_get("guest"))
    assert.same({ { perm_type = "readwrite", key = "foo", range_end = "zoo" } }, g.perm)
    assert.is_true(g.header.revision > 0)
    assert.same({}, assert(cli:role_get("root")).perm)
    -- etcdctl sees the same
    local ok, out = ctl(srv, "role", "get", "guest")
    assert.is_true(ok, out)
    assert.matches("[foo, zoo)", out, 1, true)
    ok, out = ctl(srv, "user", "get", "xingyys")
    assert.is_true(ok, out)
    assert.matches("Roles: guest", out, 1, true)
    -- every result is a table with a header; options take a timeout
    local res = assert(cli:user_list { timeout = 5 })
    assert.is_table(res.header)
    assert(cli:role_list { timeout = 5 })
  end)

  it("permissions: one key, a range, a prefix, from a key; perm in any case; revoke", function()
    assert(cli:role_add("r"))
    assert(cli:role_grant_permission("r", "k1", nil, "READ"))
    assert(cli:role_grant_permission("r", "k2", "", "Write"))
    assert(cli:role_grant_permission("r", "a", "c", "readwrite"))
    assert(cli:role_grant_permission("r", "p/", nil, "readWrite", { prefix = true }))
    assert(cli:role_grant_permission("r", "q\255", nil, "read", { prefix = true, timeout = 5 }))
    assert(cli:role_grant_permission("r", "z", nil, "write", { from_key = true }))
    -- etcd lists them sorted by key; a single key has range_end ""
    assert.same({
      { perm_type = "readwrite", key = "a", range_end = "c" },
      { perm_type = "read", key = "k1", range_end = "" },
      { perm_type = "write", key = "k2", range_end = "" },
      { perm_type = "readwrite", key = "p/", range_end = "p0" },
      { perm_type = "read", key = "q\255", range_end = "r" },
      { perm_type = "write", key = "z", range_end = "\0" },
    }, assert(cli:role_get("r")).perm)
    -- granting the same range again replaces its type
    assert(cli:role_grant_permission("r", "k1", nil, "write"))
    assert.equal("write", assert(cli:role_get("r")).perm[2].perm_type)
    -- revoking needs the same range
    fails("etcdserver: permission is not granted to the role", "FAILED_PRECONDITION",
      cli:role_revoke_permission("r", "p/"))
    assert(cli:role_revoke_permission("r", "p/", nil, { prefix = true }))
    assert(cli:role_revoke_permission("r", "q\255", "", { prefix = true }))
    assert(cli:role_revoke_permission("r", "z", nil, { from_key = true }))
    assert(cli:role_revoke_permission("r", "a", "c"))
    assert(cli:role_revoke_permission("r", "k1", ""))
    assert(cli:role_revoke_permission("r", "k2", nil, { timeout = 5 }))
    assert.same({}, assert(cli:role_get("r")).perm)
    fails("etcdserver: permission is not granted to the role", "FAILED_PRECONDITION",
      cli:role_revoke_permission("r", "k2"))
  end)

  it("revoke a role, delete a user and a role; what etcd says about missing ones", function()
    walkthrough()
    assert(cli:user_revoke_role("xingyys", "guest"))
    assert.same({}, assert(cli:user_get("xingyys")).roles)
    fails("etcdserver: role is not granted to the user", "FAILED_PRECONDITION",
      cli:user_revoke_role("xingyys", "guest"))
    fails("etcdserver: role is not granted to the user", "FAILED_PRECONDITION",
      cli:user_revoke_role("xingyys", "nosuch"))
    fails("etcdserver: user name not found", "FAILED_PRECONDITION", cli:user_revoke_role("nosuch", "guest"))
    -- deleting a role takes it away from its users
    assert(cli:user_grant_role("xingyys", "guest"))
    assert(cli:role_delete("guest"))
    assert.same({}, assert(cli:user_get("xingyys")).roles)
    assert(cli:user_delete("xingyys"))
    assert.same({ "root" }, assert(cli:user_list()).users)
    assert.same({ "root" }, assert(cli:role_list()).roles)
    -- missing users and roles: etcd 3.4 answers FAILED_PRECONDITION, not NOT_FOUND
    local NOUSER, NOROLE = "etcdserver: user name not found", "etcdserver: role name not found"
    fails(NOUSER, "FAILED_PRECONDITION", cli:user_delete("xingyys"))
    fails(NOUSER, "FAILED_PRECONDITION", cli:user_get("xingyys"))
    fails(NOUSER, "FAILED_PRECONDITION", cli:user_change_password("xingyys", "x"))
    fails(NOUSER, "FAILED_PRECONDITION", cli:user_grant_role("xingyys", "root"))
    fails(NOROLE, "FAILED_PRECONDITION", cli:role_delete("guest"))
    fails(NOROLE, "FAILED_PRECONDITION", cli:role_get("guest"))
    fails(NOROLE, "FAILED_PRECONDITION", cli:user_grant_role("root", "guest"))
    fails(NOROLE, "FAILED_PRECONDITION", cli:role_grant_permission("guest", "foo", nil, "read"))
    fails(NOROLE, "FAILED_PRECONDITION", cli:role_revoke_permission("guest", "foo"))
  end)

  it("duplicates, empty names, and a user without a password", function()
    assert(cli:role_add("r"))
    fails("etcdserver: role name already exists", "FAILED_PRECONDITION", cli:role_add("r"))
    assert(cli:user_add("u", "pw"))
    fails("etcdserver: user name already exists", "FAILED_PRECONDITION", cli:user_add("u", "pw"))
    assert(cli:user_grant_role("u", "r"))
    assert(cli:user_grant_role("u", "r")) -- granting twice is fine
    assert.same({ "r" }, assert(cli:user_get("u")).roles)
    fails("etcdserver: role name is empty", "INVALID_ARGUMENT", cli:role_add(""))
    fails("etcdserver: user name is empty", "INVALID_ARGUMENT", cli:user_add("", "pw"))
    -- etcd 3.4 takes an empty password (the walk-through does that)
    assert(cli:user_add("e", ""))
    assert(cli:user_add("np", nil, { no_password = true }))
    assert(cli:user_add("np2", "", { no_password = true, timeout = 5 }))
    assert.same({ "e", "np", "np2", "u" }, assert(cli:user_list()).users)
  end)

  it("auth_enable needs user root with role root", function()
    fails("etcdserver: root user does not exist", "FAILED_PRECONDITION", cli:auth_enable())
    assert(cli:user_add("root", "123"))
    fails("etcdserver: root user does not have root role", "FAILED_PRECONDITION", cli:auth_enable())
    assert(cli:role_add("root"))
    assert(cli:user_grant_role("root", "root"))
    assert(cli:auth_disable()) -- disabling when it is off is fine
    assert(cli:auth_enable { timeout = 5 })
    local ok, out = ctl(srv, "put", "foo", "x")
    assert.is_false(ok)
    assert.matches("etcdserver: user name is empty", out, 1, true)
  end)

  it("with auth on: the guest may write foo but not zoo1; root disables it again", function()
    walkthrough()
    assert(cli:auth_enable())
    -- etcdctl: without a user refused, the guest as granted, a wrong password refused
    local ok, out = ctl(srv, "put", "foo", "x")
    assert.is_false(ok)
    assert.matches("etcdserver: user name is empty", out, 1, true)
    ok, out = ctl(srv, "--user", "xingyys:123", "put", "foo", "1")
    assert.is_true(ok, out)
    ok, out = ctl(srv, "--user", "xingyys:123", "put", "zoo1", "x")
    assert.is_false(ok)
    assert.matches("etcdserver: permission denied", out, 1, true)
    ok, out = ctl(srv, "--user", "xingyys:wrong", "get", "foo")
    assert.is_false(ok)
    assert.matches("etcdserver: authentication failed, invalid user ID or password", out, 1, true)
    ok, out = ctl(srv, "--user", "root:123", "get", "foo")
    assert.is_true(ok, out)
    assert.matches("foo\n1\n", out, 1, true)
    -- our client without a login: every call refused, admin ones too
    local E = "etcdserver: user name is empty"
    fails(E, "INVALID_ARGUMENT", cli:get("foo"))
    fails(E, "INVALID_ARGUMENT", cli:user_list())
    fails(E, "INVALID_ARGUMENT", cli:role_get("guest"))
    fails(E, "INVALID_ARGUMENT", cli:auth_enable())
    fails(E, "INVALID_ARGUMENT", cli:auth_disable())
    -- logged in as the guest: foo yes, zoo1 no (the walk-through's txn
    -- compares zoo1), administration no, but its own user and role yes
    local guest = helpers.defer(assert(etcd.new { endpoints = srv.endpoints, user = "xingyys", password = "123" }))
    assert(guest:put("foo", "2"))
    assert.equal("2", assert(guest:get("foo")).kvs[1].value)
    local DENIED = "etcdserver: permission denied"
    fails(DENIED, "PERMISSION_DENIED", guest:put("zoo1", "x"))
    fails(DENIED, "PERMISSION_DENIED", guest:txn {
      compare = { etcd.compare.value("zoo1", ">", "abc") },
      success = { etcd.op.put("zoo1", "XYZ") },
      failure = { etcd.op.put("zoo1", "ABC") },
    })
    fails(DENIED, "PERMISSION_DENIED", guest:user_list())
    fails(DENIED, "PERMISSION_DENIED", guest:role_add("x"))
    fails(DENIED, "PERMISSION_DENIED", guest:auth_disable())
    assert.same({ "guest" }, assert(guest:user_get("xingyys")).roles)
    assert.same({ { perm_type = "readwrite", key = "foo", range_end = "zoo" } },
      assert(guest:role_get("guest")).perm)
    fails("etcdserver: authentication failed, invalid user ID or password", "auth_failed",
      etcd.new { endpoints = srv.endpoints, user = "xingyys", password = "wrong" })
    -- root administers with auth on; etcd keeps root root
    local root = helpers.defer(assert(etcd.new { endpoints = srv.endpoints, user = "root", password = "123" }))
    assert.same({ "root", "xingyys" }, assert(root:user_list()).users)
    local BAD = "etcdserver: invalid auth management"
    fails(BAD, "INVALID_ARGUMENT", root:user_revoke_role("root", "root"))
    fails(BAD, "INVALID_ARGUMENT", root:user_delete("root"))
    fails(BAD, "INVALID_ARGUMENT", root:role_delete("root"))
    assert(root:role_grant_permission("guest", "zoo1", nil, "write"))
    assert(guest:put("zoo1", "x"))
    -- root disables auth with etcdctl; our unauthenticated client works again
    ok, out = ctl(srv, "--user", "root:123", "auth", "disable")
    assert.is_true(ok, out)
    assert.matches("Authentication Disabled", out, 1, true)
    assert.equal("x", assert(cli:get("zoo1")).kvs[1].value)
  end)

  it("root disables auth through our client", function()
    walkthrough()
    assert(cli:auth_enable())
    local root = assert(etcd.new { endpoints = srv.endpoints, user = "root", password = "123" })
    assert(root:auth_disable())
    root:close()
    assert(cli:put("foo", "free"))
    local ok, out = ctl(srv, "put", "foo", "x")
    assert.is_true(ok, out)
  end)

  it("permission keys do not take the client's namespace (as in Go)", function()
    local ns = helpers.defer(assert(etcd.new { endpoints = srv.endpoints, namespace = "app/" }))
    assert(ns:role_add("r"))
    assert(ns:role_grant_permission("r", "foo", nil, "read", { prefix = true }))
    assert.same({ { perm_type = "read", key = "foo", range_end = "fop" } }, assert(cli:role_get("r")).perm)
    assert.same({ { perm_type = "read", key = "foo", range_end = "fop" } }, assert(ns:role_get("r")).perm)
    assert(ns:role_revoke_permission("r", "foo", "fop"))
  end)

  it("misuse raises, naming the argument or option", function()
    raises("auth_enable: option 'timeout': non-negative number of seconds expected, got -1",
      function() cli:auth_enable { timeout = -1 } end)
    raises("auth_disable: options must be a plain table, got string", function() cli:auth_disable("now") end)
    raises("user_add: bad argument #1 (name): string expected, got integer", function() cli:user_add(1, "pw") end)
    raises("user_add: bad argument #2 (password): string expected, got nil", function() cli:user_add("u") end)
    raises("user_add: bad argument #2 (password): must be nil or \"\" with option 'no_password'",
      function() cli:user_add("u", "pw", { no_password = true }) end)
    raises("user_add: option 'no_password': boolean expected, got string",
      function() cli:user_add("u", nil, { no_password = "yes" }) end)
    raises("user_add: unknown option 'nopassword'", function() cli:user_add("u", "pw", { nopassword = true }) end)
    raises("user_get: bad argument #1 (name): string expected, got nil", function() cli:user_get() end)
    raises("user_get: unknown option 'roles'", function() cli:user_get("u", { roles = true }) end)
    raises("user_list: unknown option 'prefix'", function() cli:user_list { prefix = true } end)
    raises("user_delete: bad argument #1 (name): string expected, got table", function() cli:user_delete {} end)
    raises("user_change_password: bad argument #2 (password): string expected, got nil",
      function() cli:user_change_password("u") end)
    raises("user_grant_role: bad argument #2 (role): string expected, got integer",
      function() cli:user_grant_role("u", 1) end)
    raises("user_revoke_role: bad argument #1 (user): string expected, got nil",
      function() cli:user_revoke_role(nil, "r") end)
    raises("role_add: bad argument #1 (name): string expected, got boolean", function() cli:role_add(false) end)
    raises("role_get: bad argument #1 (name): string expected, got nil", function() cli:role_get() end)
    raises("role_list: options must be a plain table, got integer", function() cli:role_list(5) end)
    raises("role_delete: bad argument #1 (name): string expected, got integer", function() cli:role_delete(1) end)
    raises("role_grant_permission: bad argument #4 (perm): expected one of \"read\", \"readwrite\", \"write\", got \"rw\"",
      function() cli:role_grant_permission("r", "k", nil, "rw") end)
    raises("role_grant_permission: bad argument #4 (perm): expected one of \"read\", \"readwrite\", \"write\", got nil",
      function() cli:role_grant_permission("r", "k", nil) end)
    raises("role_grant_permission: bad argument #4 (perm): expected one of \"read\", \"readwrite\", \"write\", got boolean",
      function() cli:role_grant_permission("r", "k", nil, true) end)
    raises("role_grant_permission: bad argument #4 (perm): expected one of \"read\", \"readwrite\", \"write\", got integer",
      function() cli:role_grant_permission("r", "k", nil, 2) end)
    raises("role_grant_permission: bad argument #1 (role): string expected, got nil",
      function() cli:role_grant_permission(nil, "k", nil, "read") end)
    raises("role_grant_permission: bad argument #2 (key): string expected, got integer",
      function() cli:role_grant_permission("r", 1, nil, "read") end)
    raises("role_grant_permission: bad argument #3 (range_end): string expected, got integer",
      function() cli:role_grant_permission("r", "k", 5, "read") end)
    raises("role_grant_permission: option 'prefix' and argument #3 (range_end) exclude each other",
      function() cli:role_grant_permission("r", "k", "z", "read", { prefix = true }) end)
    raises("role_grant_permission: options 'prefix' and 'from_key' exclude each other",
      function() cli:role_grant_permission("r", "k", nil, "read", { prefix = true, from_key = true }) end)
    raises("role_grant_permission: unknown option 'range_end'",
      function() cli:role_grant_permission("r", "k", nil, "read", { range_end = "z" }) end)
    raises("role_revoke_permission: option 'from_key' and argument #3 (range_end) exclude each other",
      function() cli:role_revoke_permission("r", "k", "z", { from_key = true }) end)
    raises("role_revoke_permission: unknown option 'prefx'",
      function() cli:role_revoke_permission("r", "k", nil, { prefx = true }) end)
    raises("role_revoke_permission: option 'prefix': boolean expected, got integer",
      function() cli:role_revoke_permission("r", "k", nil, { prefix = 1 }) end)
    -- nothing was sent
    assert.same({}, assert(cli:user_list()).users)
    assert.same({}, assert(cli:role_list()).roles)
  end)
end)
