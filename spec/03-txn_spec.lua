-- Transactions, ops, exec (Go's Do) and batches, against a real etcd.
local helpers = require "helpers"
local etcd = require "etcd"

describe("txn", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("runs the walk-through's txn: value comparisons are lexical", function()
    assert(cli:put("foo", "xyz"))
    local res = assert(cli:txn {
      compare = { etcd.compare.value("foo", ">", "abc") },
      success = { etcd.op.put("foo", "XYZ") },
      failure = { etcd.op.put("foo", "ABC") },
    })
    assert.is_true(res.succeeded)
    assert.is_number(res.header.revision)
    assert.equal("XYZ", assert(cli:get("foo")).kvs[1].value)
    res = assert(cli:txn {
      compare = { etcd.compare.value("foo", "<", "ABC") },
      success = { etcd.op.put("foo", "never") },
      failure = { etcd.op.put("foo", "ABC") },
    })
    assert.is_false(res.succeeded)
    assert.equal("ABC", assert(cli:get("foo")).kvs[1].value)
  end)

  it("shapes each response like the matching method's result", function()
    assert(cli:put("t/a", "1"))
    assert(cli:put("t/c", "2"))
    local res = assert(cli:txn {
      success = {
        etcd.op.get("t/a"),
        etcd.op.put("t/b", "2", { prev_kv = true }),
        etcd.op.put("t/a", "3", { prev_kv = true }),
        etcd.op.delete("t/c", { prev_kv = true }),
        etcd.op.get("t/", { prefix = true, count_only = true }),
      },
    })
    assert.is_true(res.succeeded)
    assert.equal("1", res.responses[1].kvs[1].value)
    assert.equal(1, res.responses[1].count)
    assert.is_nil(res.responses[2].prev_kv)
    assert.equal("1", res.responses[3].prev_kv.value)
    assert.equal(1, res.responses[4].deleted)
    assert.equal("2", res.responses[4].prev_kvs[1].value)
    assert.equal(2, res.responses[5].count) -- t/a and t/b; t/c is gone
  end)

  it("compares version, create_revision, mod_revision and lease", function()
    local p = assert(cli:put("t/v", "1"))
    assert(cli:put("t/v", "2"))
    local rev = p.header.revision
    local function holds(c)
      return assert(cli:txn { compare = { c } }).succeeded
    end
    assert.is_true(holds(etcd.compare.version("t/v", "=", 2)))
    assert.is_true(holds(etcd.compare.version("t/v", "!=", 1)))
    assert.is_false(holds(etcd.compare.version("t/v", ">", 2)))
    assert.is_true(holds(etcd.compare.create_revision("t/v", "=", rev)))
    assert.is_true(holds(etcd.compare.mod_revision("t/v", ">", rev)))
    assert.is_true(holds(etcd.compare.lease("t/v", "=", 0)))
    -- a missing key has version 0 and create_revision 0: the usual "create if absent"
    assert.is_true(holds(etcd.compare.create_revision("t/absent", "=", 0)))
    assert.is_true(holds(etcd.compare.version("t/absent", "==", 0)))
  end)

  it("compares over a range or a prefix", function()
    assert(cli:put("t/r/1", "a"))
    assert(cli:put("t/r/2", "a"))
    assert.is_true(assert(cli:txn { compare = { etcd.compare.value("t/r/", "=", "a", { prefix = true }) } }).succeeded)
    assert(cli:put("t/r/2", "b"))
    assert.is_false(assert(cli:txn { compare = { etcd.compare.value("t/r/", "=", "a", { prefix = true }) } }).succeeded)
    assert.is_true(assert(cli:txn { compare = { etcd.compare.value("t/r/1", "=", "a", { range_end = "t/r/2" }) } }).succeeded)
  end)

  it("nests transactions", function()
    assert(cli:put("t/n", "outer"))
    local inner = etcd.op.txn {
      compare = { etcd.compare.value("t/n", "=", "outer") },
      success = { etcd.op.put("t/n", "inner"), etcd.op.get("t/n") },
      failure = {},
    }
    local res = assert(cli:txn { success = { inner, etcd.op.get("t/n") } })
    assert.is_true(res.succeeded)
    local r1 = res.responses[1]
    assert.is_true(r1.succeeded)
    assert.equal("inner", r1.responses[2].kvs[1].value)
    assert.equal("inner", res.responses[2].kvs[1].value)
  end)

  it("an empty txn succeeds", function()
    local res = assert(cli:txn {})
    assert.is_true(res.succeeded)
    assert.same({}, res.responses)
  end)

  it("etcd's own refusals come back as nil, msg, code", function()
    local res, msg, code = cli:txn { success = { etcd.op.put("t/dup", "1"), etcd.op.put("t/dup", "2") } }
    assert.is_nil(res)
    assert.equal("etcdserver: duplicate key given in txn request", msg)
    assert.equal("INVALID_ARGUMENT", code)
    local ops = {}
    for i = 1, 129 do ops[i] = etcd.op.get("t/" .. i) end
    res, msg, code = cli:txn { success = ops }
    assert.is_nil(res)
    assert.matches("^etcdserver: too many operations in txn request %(over etcd's %-%-max%-txn%-ops", msg)
    assert.equal("too_large", code)
    assert(cli:get("t/a")) -- still usable
  end)

  it("works inside a namespace: compares, ops and results", function()
    local ns = assert(etcd.new { endpoints = srv.endpoints, namespace = "ns1/" })
    assert(ns:put("k", "v"))
    local res = assert(ns:txn {
      compare = { etcd.compare.value("k", "=", "v"), etcd.compare.version("", ">", 0, { prefix = true }) },
      success = { etcd.op.get("", { prefix = true }), etcd.op.txn { success = { etcd.op.put("k", "w", { prev_kv = true }) } } },
    })
    assert.is_true(res.succeeded)
    assert.equal("k", res.responses[1].kvs[1].key)
    assert.equal("k", res.responses[2].responses[1].prev_kv.key)
    assert.equal("w", assert(cli:get("ns1/k")).kvs[1].value)
    ns:close()
  end)

  describe("misuse raises", function()
    it("in compare and op constructors", function()
      assert.has_error(function() etcd.compare.value("k", "~", "v") end,
        [[etcd.compare.value: bad argument #2 (operator): expected one of "!=", "<", "=", "==", ">", got "~"]])
      assert.has_error(function() etcd.compare.value(1, "=", "v") end,
        "etcd.compare.value: bad argument #1 (key): string expected, got integer")
      assert.has_error(function() etcd.compare.version("k", "=", "1") end,
        "etcd.compare.version: bad argument #3 (version): integer expected, got string")
      assert.has_error(function() etcd.compare.value("k", "=", "v", { prefx = true }) end,
        "etcd.compare.value: unknown option 'prefx'")
      assert.has_error(function() etcd.op.get("k", { prefx = true }) end, "etcd.op.get: unknown option 'prefx'")
      assert.has_error(function() etcd.op.get("k", { timeout = 1 }) end, "etcd.op.get: unknown option 'timeout'")
      assert.has_error(function() etcd.op.put("k") end, "etcd.op.put: bad argument #2 (value): string expected, got nil")
      assert.has_error(function() etcd.op.delete(false) end,
        "etcd.op.delete: bad argument #1 (key): string expected, got boolean")
    end)

    it("in the txn table", function()
      assert.has_error(function() cli:txn("x") end,
        "txn: bad argument #1 (table with compare, success, failure expected, got string)")
      assert.has_error(function() cli:txn { sucess = {} } end, "txn: unknown field 'sucess' (compare, success, failure expected)")
      assert.has_error(function() cli:txn { success = { { "put", "k", "v" } } } end,
        "txn: success[1] must be made by etcd.op.*")
      assert.has_error(function() cli:txn { compare = { etcd.op.get("k") } } end,
        "txn: compare[1] must be made by etcd.compare.*")
      assert.has_error(function() cli:txn({}, { atomic = true }) end, "txn: unknown option 'atomic'")
    end)
  end)
end)

describe("exec and batch", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  it("exec runs one op, like Go's Do, in the walk-through's loop", function()
    local results = {}
    for i, op in ipairs { etcd.op.put("key1", "123"), etcd.op.get("key1"), etcd.op.put("key2", "456") } do
      results[i] = assert(cli:exec(op))
    end
    assert.equal("123", results[2].kvs[1].value)
    assert.is_number(results[3].header.revision)
    assert.equal("456", assert(cli:get("key2")).kvs[1].value)
  end)

  it("batch runs ops in order and returns results in order", function()
    local res = assert(cli:batch {
      etcd.op.put("b/1", "a"), etcd.op.get("b/1"), etcd.op.put("b/1", "b", { prev_kv = true }), etcd.op.delete("b/1"),
    })
    assert.equal(4, #res)
    assert.equal("a", res[2].kvs[1].value)
    assert.equal("a", res[3].prev_kv.value)
    assert.equal(1, res[4].deleted)
    assert.is_true(res[4].header.revision > res[1].header.revision)
  end)

  it("a failing op stops the batch; the ops before it are applied and reported", function()
    local res, msg, code, done = cli:batch {
      etcd.op.put("b/2", "a"), etcd.op.put("b/3", "x", { lease = 999 }), etcd.op.put("b/4", "never"),
    }
    assert.is_nil(res)
    assert.equal("etcdserver: requested lease not found", msg)
    assert.equal("lease_not_found", code)
    assert.equal(1, #done)
    assert.equal("a", assert(cli:get("b/2")).kvs[1].value)
    assert.equal(0, assert(cli:get("b/4")).count)
  end)

  it("atomic = true: all ops in one revision, or none", function()
    local res = assert(cli:batch({ etcd.op.put("b/5", "1"), etcd.op.put("b/6", "2"), etcd.op.get("b/", { prefix = true }) },
      { atomic = true }))
    assert.equal(res[1].header.revision, res[2].header.revision)
    local seen = {}
    for _, kv in ipairs(res[3].kvs) do seen[kv.key] = kv.value end
    assert.same({ "1", "2" }, { seen["b/5"], seen["b/6"] }) -- the get sees the puts before it
    local before = assert(cli:get("b/7"))
    local r, _, code = cli:batch({ etcd.op.put("b/7", "x"), etcd.op.put("b/8", "x", { lease = 999 }) }, { atomic = true })
    assert.is_nil(r)
    assert.equal("lease_not_found", code)
    assert.equal(before.count, assert(cli:get("b/7")).count)
  end)

  it("misuse raises", function()
    assert.has_error(function() cli:exec({ kind = "get" }) end, "exec: bad argument #1 (etcd.op expected, got table)")
    assert.has_error(function() cli:batch { etcd.op.get("a"), "b" } end, "batch: ops[2] must be made by etcd.op.*")
    assert.has_error(function() cli:batch({}, { atomc = true }) end, "batch: unknown option 'atomc'")
  end)
end)
