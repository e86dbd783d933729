-- The messages README.md and docs/ERROR_HANDLING.md show are the ones users
-- get: each case below makes the situation against a real etcd, takes the
-- message the library gives, evens out what varies from run to run (a port,
-- a short dial timeout) to the value the docs use, and finds it, word for
-- word, in the doc (line breaks and indentation count as one space).
local helpers = require "helpers"
local etcd = require "etcd"
local concurrency = require "etcd.concurrency"
local recipes = require "etcd.recipes"

local function doc(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return (s:gsub("%s+", " "))
end

local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "did not raise")
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

describe("documented messages", function()
  local srv, cli, docs
  setup(function()
    srv = helpers.start_etcd()
    cli = assert(etcd.new { endpoints = srv.endpoints })
    docs = { README = doc("README.md"), ERRORS = doc("docs/ERROR_HANDLING.md") }
  end)
  teardown(function()
    if cli then cli:close() end
    if srv then srv:stop() end
  end)

  -- `msg` (and code) as the docs show them
  local function documented(where, msg, code, code_shown)
    for _, name in ipairs(where) do
      assert.is_truthy(docs[name]:find(msg, 1, true), ("%s does not show %q"):format(name, msg))
      if code_shown then
        assert.is_truthy(docs[name]:find(code, 1, true), ("%s does not show the code %q"):format(name, code))
      end
    end
  end

  it("etcd.new with no endpoint reachable, and its endpoints checked", function()
    local port = helpers.pick_ports(1)[1]
    local c, msg, code = etcd.new { endpoints = { "127.0.0.1:" .. port }, dial_timeout = 0.3 }
    assert.is_nil(c)
    assert.equal("UNAVAILABLE", code)
    msg = msg:gsub(tostring(port), "2379"):gsub("within 0%.3s", "within 5s")
    documented({ "README" }, ('nil, "%s", "UNAVAILABLE"'):format(msg))
    documented({ "ERRORS" }, '"etcd: no endpoint reachable within 5s (127.0.0.1:2379): "')
    assert.matches("^etcd: no endpoint reachable within 5s %(127%.0%.0%.1:2379%): ", msg)
    -- (Lua 5.1's %q writes the NUL byte as \000)
    documented({ "README" }, (raised(etcd.new, { endpoints = { "127.0.0.1:2379\0" } }):gsub("\\000", "\\0")))
    documented({ "README" }, raised(etcd.new, { endpoints = { "localhost" } }))
  end)

  it("misuse", function()
    documented({ "README", "ERRORS" }, raised(cli.get, cli, "k", { prefx = true }))
    documented({ "README" }, raised(cli.get, "k"))
    local msg = raised(cli.user_add, cli, "a\0b", "pw")
    documented({ "README" }, msg:match("string without NUL bytes expected"))
    local op = etcd.op.txn { success = {} }
    for _ = 1, 30 do op = etcd.op.txn { success = { op } } end
    documented({ "README" }, raised(etcd.op.txn, { success = { op } }):match("transactions nested deeper than 31 levels"))
  end)

  it("failures etcd reports", function()
    local _, msg, code = cli:put("big", ("x"):rep(1700 * 1024))
    assert.equal("too_large", code)
    documented({ "README" }, ('nil, "%s", "too_large"'):format(msg))
    local w
    w, msg, code = cli:watch("b", { range_end = "a" })
    assert.is_nil(w)
    documented({ "README" }, ('nil, "%s", "%s"'):format(msg, code))
    local r1 = assert(cli:put("c", "1")).header.revision
    assert(cli:put("c", "2"))
    assert(cli:compact(r1 + 1))
    _, msg, code = cli:get("c", { revision = r1 })
    assert.equal("compacted", code)
    documented({ "README" }, ('"%s"'):format(msg))
  end)

  it("a closed client, watch, mirror", function()
    local c = assert(etcd.new { endpoints = srv.endpoints })
    local w = assert(c:watch("w"))
    local _, msg, code = w:next(0.05)
    assert.equal("timeout", code)
    documented({ "ERRORS" }, ('"%s"'):format(msg))
    local ka = assert(c:keepalive(assert(c:grant(60)).id))
    assert(ka:next(5))
    _, msg, code = ka:next(0.05)
    assert.equal("timeout", code)
    documented({ "ERRORS" }, ('"%s"'):format(msg))
    ka:close()
    w:close()
    _, msg, code = w:next(0)
    assert.equal("closed", code)
    documented({ "ERRORS" }, ('"%s"'):format(msg))
    local m = assert(etcd.mirror(c, "mm/"))
    m:close()
    _, msg, code = m:poll(0)
    assert.equal("closed", code)
    documented({ "ERRORS" }, ('"%s"'):format(msg))
    c:close()
    _, msg, code = c:get("k")
    assert.equal("closed", code)
    documented({ "README", "ERRORS" }, ('nil, "%s", "closed"'):format(msg))
  end)

  it("the concurrency package", function()
    local s1 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local s2 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local m1, m2 = concurrency.new_mutex(s1, "doc-lock/"), concurrency.new_mutex(s2, "doc-lock/")
    assert(m1:lock(5))
    local _, msg, code = m2:try_lock()
    assert.equal("locked", code)
    documented({ "README", "ERRORS" }, msg)
    assert(m1:unlock())
    local b = recipes.new_barrier(cli, "doc-barrier")
    assert(b:hold())
    _, msg, code = b:hold()
    assert.equal("exists", code)
    documented({ "ERRORS" }, ('"%s"'):format(msg))
    assert(b:release())
    assert(cli:revoke(s2:lease()))
    _, msg, code = concurrency.new_mutex(s2, "doc-lock2/"):lock(5)
    assert.equal("session_lost", code)
    documented({ "ERRORS" }, ('"%s'):format(msg))
    s1:close()
    s2:close()
  end)
end)
