-- etcd.mirror: a local copy of a prefix kept by a watch (README "Mirroring a
-- prefix"): the paged load at one revision, following changes in batches per
-- revision, read-your-writes with m:wait, reloads after a compaction and
-- after the store's revision went backwards (a restore from a snapshot, a new
-- cluster behind the same endpoints), a stopped member and failover; against
-- real etcd.
local helpers = require "helpers"
local etcd = require "etcd"

local store, copy = helpers.prefix_values, helpers.mirror_values

-- Apply batches to a replica (key -> value), checking that each change is
-- one a user could act on: a put of something new or different, a delete of
-- something there.
local function replay(replica, batches)
  for _, b in ipairs(batches) do
    for _, c in ipairs(b) do
      if c.kind == "put" then
        replica[c.key] = c.kv.value
      else
        assert(replica[c.key] ~= nil, "delete of a key the replica does not have: " .. c.key)
        replica[c.key] = nil
      end
    end
  end
  return replica
end

local function drain(it)
  local list = {}
  for b in it do list[#list + 1] = b end
  return list
end

describe("etcd.mirror", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("loads the prefix page by page at one revision, then follows puts, deletes and other keys' revisions", function()
    for i = 1, 250 do assert(cli:put(("ld/k%03d"):format(i), "v" .. i)) end
    assert(cli:put("ld", "not in the prefix"))
    assert(cli:put("le/x", "nor this"))
    local seen = {}
    local m = helpers.defer(assert(etcd.mirror(cli, "ld/", {
      page_size = 7,
      on_change = function(kind, key, kv, prev_kv, value)
        seen[#seen + 1] = { kind, key, kv and kv.value, prev_kv and prev_kv.value, value }
      end,
    })))
    local now = assert(cli:get("zz"))
    assert.equal(250, m:count())
    assert.equal(now.header.revision, m:revision())
    assert.same(store(cli, "ld/"), copy(m))
    local v, kv = m:get("ld/k007")
    assert.equal("v7", v)
    assert.equal("ld/k007", kv.key)
    assert.is_nil(m:get("ld"))
    assert.is_nil(m:get("ld/nothing"))
    -- pairs: key order
    local prev = ""
    for k in m:pairs() do
      assert.is_true(k > prev)
      prev = k
    end
    -- read your writes
    local p = assert(cli:put("ld/k007", "seven"))
    assert.equal(p.header.revision, m:wait(p.header.revision, 5))
    assert.equal("seven", (m:get("ld/k007")))
    local d = assert(cli:delete("ld/k008"))
    assert.equal(d.header.revision, m:wait(d.header.revision, 5))
    assert.is_nil(m:get("ld/k008"))
    assert.equal(249, m:count())
    -- a revision made outside the prefix shows through a progress answer
    local o = assert(cli:put("le/y", "outside"))
    assert.equal(o.header.revision, m:wait(o.header.revision, 5))
    assert.equal(o.header.revision, m:revision())
    assert.same({ { "put", "ld/k007", "seven", "v7", "seven" }, { "delete", "ld/k008", nil, "v8", nil } }, seen)
    -- a revision that does not exist yet: "timeout"
    local r, msg, code = m:wait(o.header.revision + 100, 0.3)
    assert.is_nil(r)
    assert.equal("timeout", code)
    assert.matches("reflects revision " .. o.header.revision, msg)
    assert.equal("live", m:status())
  end)

  it("is consistent at one revision while writers change the prefix during the load", function()
    for i = 1, 300 do assert(cli:put(("cs/k%03d"):format(i), "0")) end
    local m, loaded_at, last
    etcd.spawn(function()
      local writer = etcd.spawn(function()
        for round = 1, 3 do
          for i = 1, 300, 7 do last = assert(cli:put(("cs/k%03d"):format(i), tostring(round))).header.revision end
        end
      end)
      local loader = etcd.spawn(function()
        m = assert(etcd.mirror(cli, "cs/", { page_size = 10 }))
        loaded_at = m:revision()
      end)
      assert(loader:join())
      -- the copy is the store at exactly the revision it reports, although
      -- the writer ran between its pages. (Reading the copy catches up with
      -- the watch events already in: the copy and its revision are taken
      -- together, with no yield between, before the store is read, which
      -- yields.)
      local at, now_copy
      repeat
        at = m:revision()
        now_copy = copy(m)
      until m:revision() == at
      assert.same(store(cli, "cs/", at), now_copy)
      assert(writer:join())
    end)
    etcd.run()
    assert.is_true(last > loaded_at, "the writer did not run during the load")
    assert(m:wait(last, 5))
    assert.same(store(cli, "cs/"), copy(m))
    m:close()
  end)

  it("pages: a prefix larger than the client's receive limit loads", function()
    local small = helpers.defer(assert(etcd.new { endpoints = srv.endpoints, max_recv_size = 200000 }))
    local big = string.rep("b", 1000)
    for i = 1, 400 do assert(cli:put(("pg/%03d"):format(i), big)) end
    local res, msg, code = small:get("pg/", { prefix = true })
    assert.is_nil(res)
    assert.equal("too_large", code, msg)
    local m = helpers.defer(assert(etcd.mirror(small, "pg/", { page_size = 50 })))
    assert.equal(400, m:count())
    assert.equal(big, (m:get("pg/400")))
    -- a page too large for the limit fails the first load as a call would
    local m2, msg2, code2 = etcd.mirror(small, "pg/", { page_size = 1000 })
    assert.is_nil(m2)
    assert.equal("too_large", code2, msg2)
  end)

  it("delivers a transaction's changes together, in revision order, each once", function()
    assert(cli:put("tx/a", "1"))
    assert(cli:put("tx/b", "1"))
    local m = helpers.defer(assert(etcd.mirror(cli, "tx/")))
    local it = m:changes(0)
    assert.is_nil(it()) -- nothing yet
    local t = assert(cli:txn { success = { etcd.op.put("tx/a", "2"), etcd.op.delete("tx/b"), etcd.op.put("tx/c", "3") } })
    local p = assert(cli:put("tx/a", "4"))
    assert(m:wait(p.header.revision, 5))
    local batches = drain(it)
    assert.equal(2, #batches)
    local b1, b2 = batches[1], batches[2]
    assert.equal(t.header.revision, b1.revision)
    assert.is_nil(b1.reload)
    assert.same({ "put", "tx/a", "2", "1" }, { b1[1].kind, b1[1].key, b1[1].value, b1[1].prev_value })
    assert.same({ "delete", "tx/b", "1" }, { b1[2].kind, b1[2].key, b1[2].prev_value })
    assert.same({ "put", "tx/c", "3" }, { b1[3].kind, b1[3].key, b1[3].value })
    assert.is_nil(b1[3].prev_kv)
    assert.equal(3, #b1)
    assert.equal(p.header.revision, b2.revision)
    assert.same({ "put", "tx/a", "4", "2" }, { b2[1].kind, b2[1].key, b2[1].value, b2[1].prev_value })
    -- an iterator made now starts after the copy's revision
    assert.is_nil(m:changes(0)())
  end)

  it("decodes each value once; keys_only keeps no values", function()
    assert(cli:put("dc/n", "42"))
    assert(cli:put("dc/bad", "forty-two"))
    local calls = 0
    local m = helpers.defer(assert(etcd.mirror(cli, "dc/", {
      decode = function(v, key)
        calls = calls + 1
        assert(key:sub(1, 3) == "dc/")
        return assert(tonumber(v), "not a number: " .. v)
      end,
    })))
    assert.equal(2, calls)
    local v, kv, err = m:get("dc/n")
    assert.equal(42, v)
    assert.equal("42", kv.value)
    assert.is_nil(err)
    v, kv, err = m:get("dc/bad")
    assert.is_nil(v)
    assert.equal("forty-two", kv.value)
    assert.matches("not a number: forty%-two", err)
    for _ = 1, 3 do m:get("dc/n") end
    assert.equal(2, calls)
    local p = assert(cli:put("dc/bad", "7"))
    assert(m:wait(p.header.revision, 5))
    assert.equal(7, (m:get("dc/bad")))
    assert.equal(3, calls)

    local k = helpers.defer(assert(etcd.mirror(cli, "dc/", { keys_only = true })))
    local yes, kkv = k:get("dc/n")
    assert.is_true(yes)
    assert.is_nil(kkv.value)
    p = assert(cli:put("dc/new", "x"))
    assert(k:wait(p.header.revision, 5))
    yes, kkv = k:get("dc/new")
    assert.is_true(yes)
    assert.is_nil(kkv.value)
    assert.equal(3, k:count())
  end)

  it("after a compaction reloads and delivers only the differences, never a half-loaded copy", function()
    for i = 1, 300 do assert(cli:put(("cp/k%03d"):format(i), "0")) end
    local m = helpers.defer(assert(etcd.mirror(cli, "cp/", { page_size = 20 })))
    local replica = copy(m)
    local it = m:changes(0)
    -- nobody reads the mirror while 1,100 puts arrive: the engine's queue
    -- for the watch fills (1,024 responses), it pauses the watch, and the
    -- revision it would resume from is then compacted
    local last
    for i = 1, 1100 do last = assert(cli:put("cp/k000", "x" .. i)).header.revision end
    assert(cli:compact(last))
    for i = 1, 5 do assert(cli:delete(("cp/k%03d"):format(i))) end
    for i = 1, 3 do assert(cli:put("cp/new" .. i, "n")) end
    local final = assert(cli:put("cp/k010", "changed")).header.revision
    local counts = {}
    etcd.spawn(function()
      local done = false
      local reader = etcd.spawn(function()
        while not done do
          counts[m:count()] = true
          etcd.sleep(0.001)
        end
      end)
      assert.equal(final, m:wait(final, 20))
      done = true
      assert(reader:join())
    end)
    etcd.run()
    -- the reader saw the copy before and after cp/k000 was created (300,
    -- 301) and the reloaded one (299), nothing in between
    for n in pairs(counts) do assert.is_true(n == 300 or n == 301 or n == 299, "a reader saw " .. n .. " keys") end
    assert.equal(299, m:count())
    assert.same(store(cli, "cp/"), copy(m))
    assert.equal(1, m:stats().reloads)
    local batches = drain(it)
    local reload
    for _, b in ipairs(batches) do
      if b.reload then
        assert.is_nil(reload, "two reloads")
        reload = b
      end
    end
    assert.is_table(reload)
    assert.equal("compacted", reload.reload)
    assert.equal(final, reload.revision)
    -- only the real differences: the deletes, the new keys, k010, and k000's
    -- value if the pause fell before its last put
    assert.is_true(#reload >= 9 and #reload <= 10, #reload .. " changes")
    assert.same(store(cli, "cp/"), replay(replica, batches))
  end)

  it("closes: reads keep the last copy, waits say closed, iterators end; closing the client ends it too", function()
    assert(cli:put("cl/a", "1"))
    local m = assert(etcd.mirror(cli, "cl/"))
    local it = m:changes()
    m:close()
    m:close()
    assert.equal("1", (m:get("cl/a")))
    assert.equal("closed", m:status())
    local r, msg, code = m:wait(m:revision() + 1, 1)
    assert.is_nil(r)
    assert.equal("closed", code, msg)
    assert.same({ nil, "etcd: mirror is closed", "closed" }, { m:poll(0.1) })
    assert.is_nil(it())
    assert.is_true(m:run())
    -- the client closed under a mirror
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    local m2 = assert(etcd.mirror(c2, "cl/"))
    c2:close()
    r, msg, code = m2:wait(m2:revision() + 1, 2)
    assert.is_nil(r)
    assert.equal("closed", code, msg)
    assert.equal("closed", (m2:status()))
    assert.equal("1", (m2:get("cl/a")))
    -- a failed first load
    local c3 = assert(etcd.new { endpoints = srv.endpoints })
    c3:close()
    r, msg, code = etcd.mirror(c3, "cl/")
    assert.is_nil(r)
    assert.equal("closed", code, msg)
  end)

  it("mirrors every key of a namespaced client with the prefix \"\", keys without the namespace", function()
    for i = 1, 15 do assert(cli:put(("allns/k%02d"):format(i), "v" .. i)) end
    assert(cli:put("allnt", "just past the namespace"))
    local ns = helpers.defer(assert(etcd.new { endpoints = srv.endpoints, namespace = "allns/" }))
    local m = helpers.defer(assert(etcd.mirror(ns, "", { page_size = 4 })))
    assert.equal(15, m:count())
    assert.equal("v3", (m:get("k03")))
    local p = assert(ns:put("k99", "new"))
    assert(m:wait(p.header.revision, 5))
    assert.equal("new", (m:get("k99")))
    assert.is_nil(m:get("allns/k99"))
    assert.same(store(ns, ""), copy(m))
  end)

  it("m:close() from another coroutine ends m:run at once; a closed client ends m:run and m:changes", function()
    assert(cli:put("cr/a", "1"))
    local m = assert(etcd.mirror(cli, "cr/"))
    local t0, took
    local runner = etcd.spawn(function()
      local r = { m:run() }
      took = helpers.now() - t0
      return helpers.unpack(r)
    end)
    etcd.spawn(function()
      etcd.sleep(0.2)
      t0 = helpers.now()
      m:close()
    end)
    etcd.run()
    local ok, res = runner:join()
    assert.is_true(ok)
    assert.is_true(res)
    assert.is_true(took < 1, ("m:run returned %.2f s after m:close()"):format(took))
    -- a client closed under a running mirror and an iterator
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    local m2 = assert(etcd.mirror(c2, "cr/"))
    local got
    local iter = etcd.spawn(function()
      got = 0
      -- the iterator called by hand: Lua 5.1's generic for cannot yield
      local changes = m2:changes()
      while changes() do got = got + 1 end
      return "ended"
    end)
    local run2 = etcd.spawn(function() return m2:run() end)
    etcd.spawn(function()
      assert(c2:put("cr/b", "2"))
      etcd.sleep(0.3)
      c2:close()
    end)
    etcd.run()
    assert.same({ true, "ended" }, { iter:join() })
    assert.equal(1, got)
    local ok2, r2, msg2, code2 = run2:join()
    assert.is_true(ok2)
    assert.is_nil(r2)
    assert.equal("closed", code2, msg2)
    assert.equal("closed", (m2:status()))
    assert.equal("2", (m2:get("cr/b")))
  end)

  it("follows etcd's own progress notifications when idle, and tells on_error what does not decode", function()
    -- the specs' etcd sends a progress notification every second
    -- (--experimental-watch-progress-notify-interval=1s)
    local errs = {}
    local m = helpers.defer(assert(etcd.mirror(cli, "pn/", {
      decode = function(v) return assert(tonumber(v), "NaN") end,
      on_error = function(msg, code) errs[#errs + 1] = { msg, code } end,
    })))
    local o = assert(cli:put("elsewhere/pn", "x")).header.revision
    assert.is_true(o > m:revision())
    assert.is_true(helpers.eventually(5, function()
      m:poll(0.5)
      return m:revision() >= o
    end))
    assert.same({}, errs)
    local p = assert(cli:put("pn/bad", "x")).header.revision
    assert(m:wait(p, 5))
    assert.equal(1, #errs)
    assert.equal("decode", errs[1][2])
    assert.matches('cannot decode the value of "pn/bad"', errs[1][1])
    assert.equal("live", m:status())
  end)

  it("raises on misuse", function()
    assert.has_error(function() etcd.mirror(nil, "x/") end,
      "etcd.mirror: bad argument #1 (cli): etcd.client expected, got nil")
    assert.has_error(function() etcd.mirror(cli, 5) end)
    assert.has_error(function() etcd.mirror(cli, "x/", { page = 5 }) end)
    assert.has_error(function() etcd.mirror(cli, "x/", { page_size = 0 }) end,
      "etcd.mirror: option 'page_size' must be at least 1")
    assert.has_error(function() etcd.mirror(cli, "x/", { on_change = "f" }) end)
    assert.has_error(function() etcd.mirror(cli, "x/", { keys_only = true, decode = tostring }) end)
    local m = helpers.defer(assert(etcd.mirror(cli, "x/")))
    assert.has_error(function() m.get("x/a") end)
    assert.has_error(function() m:get(1) end)
    assert.has_error(function() m:wait("x") end)
    assert.has_error(function() m:wait(1, -1) end)
    assert.has_error(function() m:poll("x") end)
    local inside, m2
    m2 = assert(etcd.mirror(cli, "x/", {
      on_change = function() inside = { pcall(function() return m2:poll(0) end) } end,
    }))
    local p = assert(cli:put("x/a", "1"))
    assert(m2:wait(p.header.revision, 5))
    m2:close()
    assert.is_false(inside[1])
    assert.matches("cannot be waited on from its own on_change", inside[2])
  end)
end)

describe("etcd.mirror and a store whose revision goes backwards", function()
  local srv
  setup(function() srv = helpers.start_etcd() end)
  teardown(function() if srv then srv:stop() end end)

  it("reloads when etcd is restored from a snapshot, and when a new cluster answers on the same endpoints", function()
    local cli = helpers.defer(assert(etcd.new { endpoints = srv.endpoints, timeout = 3 }))
    for i = 1, 20 do assert(cli:put(("rs/k%02d"):format(i), "old")) end
    local m = helpers.defer(assert(etcd.mirror(cli, "rs/", { progress_interval = 1 })))
    local path = helpers.tmpdir() .. "/s.db"
    local snap = assert(cli:snapshot(path))
    -- after the snapshot: a new key, a changed one, a deleted one
    assert(cli:put("rs/new", "after"))
    assert(cli:put("rs/k01", "after"))
    local d = assert(cli:delete("rs/k02"))
    assert(m:wait(d.header.revision, 5))
    local replica = copy(m)
    local it = m:changes(0)
    assert.equal("after", replica["rs/new"])

    helpers.restore_snapshot(srv, path)
    assert.is_true(helpers.eventually(20, function()
      m:poll(0.2)
      return m:stats().restores == 1
    end))
    assert.equal(snap.revision, m:revision())
    assert.same(store(cli, "rs/"), copy(m))
    assert.is_nil(m:get("rs/new"))
    assert.equal("old", (m:get("rs/k01")))
    assert.equal("old", (m:get("rs/k02")))
    local batches = drain(it)
    local last = batches[#batches]
    assert.equal("restored", last.reload)
    assert.equal(3, #last) -- rs/k01 and rs/k02 put back, rs/new deleted
    assert.same(store(cli, "rs/"), replay(replica, batches))
    -- and the copy follows the restored store
    local p = assert(cli:put("rs/k03", "later"))
    assert(m:wait(p.header.revision, 5))
    assert.equal("later", (m:get("rs/k03")))

    -- a new, empty cluster behind the same endpoint
    helpers.new_cluster_in_place(srv)
    assert(cli:put("rs/fresh", "1"))
    assert.is_true(helpers.eventually(20, function()
      m:poll(0.2)
      return m:stats().restores == 2
    end))
    assert.same({ ["rs/fresh"] = "1" }, copy(m))
    assert.same(store(cli, "rs/"), replay(replica, drain(it)))
    assert.equal("live", m:status())
  end)
end)
