-- User and password: login, token refresh, and watches across token expiry,
-- against a real etcd with auth on (set up with etcdctl, independent of our
-- client). Simple tokens expire after --auth-token-ttl seconds unused.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

local function ctl(srv, ...)
  local ok, out, err = helpers.etcdctl(srv, ...)
  assert(ok, ("etcdctl %s: %s %s"):format(table.concat({ ... }, " "), tostring(out), tostring(err)))
  return out
end

describe("user and password", function()
  local srv
  setup(function()
    srv = helpers.start_etcd { args = { "--auth-token", "simple", "--auth-token-ttl", "2", "--bcrypt-cost", "4" } }
    ctl(srv, "user", "add", "root:rootpw")
    ctl(srv, "role", "add", "root")
    ctl(srv, "user", "grant-role", "root", "root")
    ctl(srv, "role", "add", "guest")
    ctl(srv, "role", "grant-permission", "guest", "readwrite", "foo", "zoo")
    ctl(srv, "user", "add", "guest:s3cret")
    ctl(srv, "user", "grant-role", "guest", "guest")
    ctl(srv, "auth", "enable")
  end)
  teardown(function()
    if srv then srv:stop() end
  end)

  it("logs in, and every call carries the token", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, user = "guest", password = "s3cret" })
    assert(cli:put("foo", "1"))
    assert.equal("1", assert(cli:get("foo")).kvs[1].value)
    local res, msg, code = cli:put("zoo1", "x")
    assert.is_nil(res)
    assert.equal("etcdserver: permission denied", msg)
    assert.equal("PERMISSION_DENIED", code)
    -- a watch on a key the user may not read: etcd cancels it with a reason
    local w
    w, msg, code = cli:watch("zoo1")
    assert.is_nil(w)
    -- etcd's own words: "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    assert.matches("etcdserver: permission denied", msg, 1, true)
    assert.equal("PERMISSION_DENIED", code)
    assert(cli:watch("foo")):close()
    cli:close()
  end)

  it("a wrong password is refused with auth_failed, and no client is made", function()
    local cli, msg, code = etcd.new { endpoints = srv.endpoints, user = "guest", password = "wrong" }
    assert.is_nil(cli)
    assert.equal("auth_failed", code)
    assert.equal("etcdserver: authentication failed, invalid user ID or password", msg)
    assert.is_nil(msg:find("wrong", 1, true))
  end)

  it("without a login, calls are refused", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints })
    local res, msg, code = cli:get("foo")
    assert.is_nil(res)
    assert.equal("etcdserver: user name is empty", msg)
    assert.equal("INVALID_ARGUMENT", code)
    cli:close()
  end)

  it("the password never shows in tostring or in the client's fields", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, user = "guest", password = "s3cret" })
    assert.is_nil(tostring(cli):find("s3cret", 1, true))
    for k, v in pairs(cli) do
      assert.is_false(type(v) == "string" and v:find("s3cret", 1, true) ~= nil, k)
    end
    cli:close()
  end)

  it("keeps working after the token expired unused", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, user = "guest", password = "s3cret" })
    assert(cli:put("foo", "a"))
    helpers.sleep(3.5) -- past --auth-token-ttl 2
    assert(cli:put("foo", "b"))
    assert.equal("b", assert(cli:get("foo")).kvs[1].value)
    cli:close()
  end)

  it("a role change (auth store revision) does not break a connected client", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, user = "guest", password = "s3cret" })
    assert(cli:get("foo"))
    ctl(srv, "--user", "root:rootpw", "role", "grant-permission", "guest", "read", "zz")
    assert(cli:get("foo"))
    assert(cli:put("foo", "c"))
    cli:close()
  end)

  it("after the token expired, a new watch works and an old one keeps delivering", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, user = "guest", password = "s3cret" })
    local old = assert(cli:watch("foo"))
    helpers.sleep(3.5)
    local new = assert(cli:watch("foo", { prefix = true }))
    local p = assert(cli:put("foo", "after-expiry"))
    for _, w in ipairs { old, new } do
      local r = assert(w:next(5))
      assert.equal("after-expiry", r.events[1].kv.value)
      assert.equal(p.header.revision, r.events[1].kv.mod_revision)
    end
    old:close()
    new:close()
    cli:close()
  end)

  it("a watch re-created after a member restart survives an expired token", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, user = "guest", password = "s3cret" })
    local w = assert(cli:watch("foo"))
    local p1 = assert(cli:put("foo", "before"))
    assert.equal(p1.header.revision, assert(w:next(5)).events[1].kv.mod_revision)
    helpers.sleep(3) -- the token expires while idle
    srv:restart { wait = false } -- its health check cannot log in; the puts below wait
    local t0 = core.now()
    local p2
    repeat
      p2 = cli:put("foo", "after-restart")
    until p2 or core.now() - t0 > 15
    assert(p2)
    local r = assert(w:next(10))
    assert.equal("after-restart", r.events[1].kv.value)
    w:close()
    cli:close()
  end)

  it("64 coroutines refused for the token at once cause one Authenticate, and all succeed", function()
    local cli = assert(etcd.new { endpoints = srv.endpoints, user = "guest", password = "s3cret" })
    local logins = 0
    local login = cli._login
    cli._login = function(...)
      logins = logins + 1
      return login(...)
    end
    assert(cli:get("foo"))
    -- the token expires unused (--auth-token-ttl 2): every call with it is
    -- refused ("invalid auth token") until the client logs in again
    helpers.sleep(3.5)
    local hs = {}
    for i = 1, 64 do
      hs[i] = etcd.spawn(function() return assert(cli:put("foo" .. i, "v" .. i)).header.revision end)
    end
    etcd.run()
    for i = 1, 64 do
      local ok, rev = hs[i]:join()
      assert.is_true(ok, tostring(rev))
      assert.is_true(rev > 0)
    end
    assert.equal(1, logins)
    cli:close()
  end)

  it("user and password go together", function()
    assert.has_error(function() etcd.new { endpoints = srv.endpoints, user = "guest" } end,
      "etcd.new: options 'user' and 'password' go together")
    assert.has_error(function() etcd.new { endpoints = srv.endpoints, user = 1, password = "x" } end,
      "etcd.new: option 'user': string expected, got integer")
  end)
end)
