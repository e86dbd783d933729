-- etcd.recipes (Go's contrib/recipes): queue, priority queue, barrier,
-- double barrier and readers-writer lock, against a real etcd: in coroutines
-- of one Lua state, as Go uses goroutines, and shared by several Lua
-- processes. Key layouts are Go's, checked with plain gets.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"
local concurrency = require "etcd.concurrency"
local recipes = require "etcd.recipes"

local slow = helpers.slowdown
local LOST = "etcd: session lost (its lease expired or was revoked)"

-- A failure that says the session is lost (with or without a detail).
local function lost(r, msg, code)
  assert.is_nil(r)
  assert.equal("session_lost", code)
  assert.equal(LOST, msg:sub(1, #LOST))
end

-- What a blocking method that ran out of `t` seconds says.
local function within(what, t) return ("etcd: %s did not finish within %gs"):format(what, t) end

-- The keys under `pfx`, in key order.
local function keys(cli, pfx)
  local res = assert(cli:get(pfx, { prefix = true, keys_only = true }))
  local out = {}
  for i, kv in ipairs(res.kvs) do out[i] = kv.key end
  return out
end

local count, until_true = helpers.count, helpers.until_true

-- Position of `entry` in `log` (it must be there).
local function pos(log, entry)
  for i, v in ipairs(log) do
    if v == entry then return i end
  end
  error(("%q not in the log: %s"):format(entry, table.concat(log, ", ")), 2)
end

-- `a` was logged before `b`.
local function before(log, a, b)
  assert.is_true(pos(log, a) < pos(log, b), ("%q before %q: %s"):format(a, b, table.concat(log, ", ")))
end

local function sessions(cli, n, ttl)
  local ss = {}
  for i = 1, n do ss[i] = assert(concurrency.new_session(cli, { ttl = ttl or 5 })) end
  return ss
end

local function close_all(ss)
  for _, s in ipairs(ss) do assert(s:close()) end
end

-- The handle's results after it ended without an error.
local function results(h)
  local r = helpers.pack(h:join())
  assert(r[1], r[2])
  return helpers.unpack(r, 2, r.n)
end

-- A child Lua (helpers.lua) running `script` with `args` (...), started in the
-- background with this process's module paths (as helpers.run_lua builds its
-- command line). child.finish() waits for it: stdout, exit status, stderr.
local function start_child(script, args)
  local q = helpers.shell_quote
  local src, errf = os.tmpname(), os.tmpname()
  helpers.write_file(src, script)
  local qa = {}
  for i, a in ipairs(args) do qa[i] = q(tostring(a)) end
  local asan = helpers.under_asan
    and "ASAN_OPTIONS=" .. q((os.getenv("ASAN_OPTIONS") or "") .. ":detect_leaks=0") .. " " or ""
  local cmd = ("%sLUA_PATH=%s LUA_CPATH=%s timeout -s KILL %d %s %s %s 2>%s"):format(
    asan, q(package.path), q(package.cpath), math.ceil(30 * slow), helpers.lua, q(src), table.concat(qa, " "), q(errf))
  local p = helpers.popen(cmd)
  local child = {}
  function child.finish()
    local out, _, _, status = p.finish()
    local err = helpers.read_file(errf) or ""
    os.remove(src)
    os.remove(errf)
    return out, status, err
  end
  return child
end

describe("recipes", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  describe("queue", function()
    it("hands items out in the order they were enqueued; items are pfx/<number> as Go's", function()
      local q = recipes.new_queue(cli, "qfifo")
      for i = 1, 5 do assert.is_true(q:enqueue("item" .. i)) end
      local ks = keys(cli, "qfifo/")
      assert.equal(5, #ks)
      for _, k in ipairs(ks) do
        -- Go's time.Now().UnixNano()
        local n = k:match("^qfifo/(%d+)$")
        assert.is_truthy(n, k)
        assert.is_true(math.abs(tonumber(n) / 1e9 - os.time()) < 3600, k)
      end
      assert.equal("item1", assert(cli:get(ks[1])).kvs[1].value)
      for i = 1, 5 do assert.equal("item" .. i, q:dequeue(5 * slow)) end
      assert.same({}, keys(cli, "qfifo/"))
    end)

    it("orders by etcd revision, not by the number in the key (another producer's clock may be behind)", function()
      local q = recipes.new_queue(cli, "qrev")
      assert(q:enqueue("first"))
      assert(cli:put("qrev/1", "second")) -- a smaller number, written later
      assert(q:enqueue("third"))
      assert.equal("first", q:dequeue(5 * slow))
      assert.equal("second", q:dequeue(5 * slow))
      assert.equal("third", q:dequeue(5 * slow))
    end)

    it("dequeue on an empty queue returns nil, msg, 'timeout' after its timeout", function()
      local q = recipes.new_queue(cli, "qempty")
      local t = 0.3 * slow
      local t0 = core.now()
      assert.same({ nil, within("q:dequeue", t), "timeout" }, { q:dequeue(t) })
      local took = core.now() - t0
      assert.is_true(took >= t - 0.01 and took < t + 2 * slow, tostring(took))
      -- and in a spawned coroutine
      local h = etcd.spawn(function() return q:dequeue(t) end)
      assert.same({ nil, within("q:dequeue", t), "timeout" }, { results(h) })
    end)

    it("dequeue(0) takes an item that is there, and returns 'timeout' at once on an empty queue", function()
      local q = recipes.new_queue(cli, "qzero")
      assert(q:enqueue("ready"))
      assert.equal("ready", q:dequeue(0))
      local t0 = core.now()
      assert.same({ nil, within("q:dequeue", 0), "timeout" }, { q:dequeue(0) })
      assert.is_true(core.now() - t0 < 1 * slow)
      local pq = recipes.new_priority_queue(cli, "qzero-pq")
      assert(pq:enqueue("ready", 9))
      assert.equal("ready", pq:dequeue(0))
      assert.same({ nil, within("q:dequeue", 0), "timeout" }, { pq:dequeue(0) })
    end)

    it("a dequeue waiting in a coroutine gets an item enqueued later", function()
      local q = recipes.new_queue(cli, "qlate")
      local log = {}
      local consumer = etcd.spawn(function()
        log[#log + 1] = "waiting"
        local v, msg, code = q:dequeue(10 * slow)
        log[#log + 1] = "got " .. tostring(v)
        return v, msg, code
      end)
      etcd.spawn(function()
        etcd.sleep(0.3)
        log[#log + 1] = "enqueue"
        assert(q:enqueue("late"))
      end)
      etcd.run()
      assert.same({ true, "late" }, { consumer:join() })
      assert.same({ "waiting", "enqueue", "got late" }, log)
      assert.same({}, keys(cli, "qlate/"))
    end)

    it("a queue takes only its own items: 'jobs' leaves those of 'jobs2' (Go's would take them)", function()
      local q, q2 = recipes.new_queue(cli, "qjobs"), recipes.new_queue(cli, "qjobs2")
      assert(q2:enqueue("other"))
      assert.same({ nil, within("q:dequeue", 0), "timeout" }, { q:dequeue(0) })
      assert(q:enqueue("mine"))
      assert.equal("mine", q:dequeue(0))
      assert.equal("other", q2:dequeue(0))
    end)

    it("4 consumers and 2 producers in coroutines: each of 40 items is dequeued exactly once", function()
      local q = recipes.new_queue(cli, "qmany")
      local got = {}
      local consumers = {}
      for c = 1, 4 do
        consumers[c] = etcd.spawn(function()
          local n = 0
          while true do
            local v = assert(q:dequeue(20 * slow))
            if v == "stop" then return n end
            got[#got + 1] = v
            n = n + 1
          end
        end)
      end
      local producers = {}
      for p = 1, 2 do
        producers[p] = etcd.spawn(function()
          for i = 1, 20 do assert(q:enqueue(("p%d-%02d"):format(p, i))) end
        end)
      end
      -- after every item: one "stop" per consumer (FIFO: a consumer sees
      -- one only once every item has been taken)
      etcd.spawn(function()
        for p = 1, 2 do assert(producers[p]:join()) end
        for _ = 1, 4 do assert(q:enqueue("stop")) end
      end)
      etcd.run()
      local total = 0
      for c = 1, 4 do total = total + results(consumers[c]) end
      assert.equal(40, total)
      local want = {}
      for p = 1, 2 do
        for i = 1, 20 do want[#want + 1] = ("p%d-%02d"):format(p, i) end
      end
      table.sort(got)
      assert.same(want, got) -- none lost, none twice
      assert.same({}, keys(cli, "qmany/"))
    end)
  end)

  describe("priority queue", function()
    it("lowest priority number first, FIFO within one; keys pfx/%05d/%016d and __pfx/%05d guards as Go's", function()
      local pq = recipes.new_priority_queue(cli, "pq")
      local items = { { "a", 3 }, { "b", 1 }, { "c", 3 }, { "d", 0 }, { "e", 1 }, { "f", 65535 }, { "g", 10 } }
      for _, e in ipairs(items) do assert.is_true(pq:enqueue(e[1], e[2])) end
      assert.same({
        "pq/00000/0000000000000000",
        "pq/00001/0000000000000000", "pq/00001/0000000000000001",
        "pq/00003/0000000000000000", "pq/00003/0000000000000001",
        "pq/00010/0000000000000000",
        "pq/65535/0000000000000000",
      }, keys(cli, "pq/"))
      assert.same({ "__pq/00000", "__pq/00001", "__pq/00003", "__pq/00010", "__pq/65535" }, keys(cli, "__pq/"))
      assert.equal("c", assert(cli:get("pq/00003/0000000000000001")).kvs[1].value)
      for _, want in ipairs { "d", "b", "e", "a", "c", "g", "f" } do
        assert.equal(want, pq:dequeue(5 * slow))
      end
      assert.same({}, keys(cli, "pq/"))
      -- as Go's: numbering starts again once a priority's items are gone
      assert(pq:enqueue("h", 3))
      assert.same({ "pq/00003/0000000000000000" }, keys(cli, "pq/"))
      assert.equal("h", pq:dequeue(5 * slow))
    end)

    it("concurrent enqueues at one priority get distinct numbers: none overwrites another", function()
      local pq = recipes.new_priority_queue(cli, "pqconc")
      for w = 1, 3 do
        etcd.spawn(function()
          for i = 1, 5 do assert(pq:enqueue(("w%d-%d"):format(w, i), 7)) end
        end)
      end
      etcd.run()
      local ks = keys(cli, "pqconc/")
      local want = {}
      for n = 0, 14 do want[#want + 1] = ("pqconc/00007/%016d"):format(n) end
      assert.same(want, ks)
      -- each writer's items in its own order
      local seen = { 0, 0, 0 }
      for _ = 1, 15 do
        local v = pq:dequeue(5 * slow)
        local w, i = assert(v):match("^w(%d)%-(%d)$")
        w, i = tonumber(w), tonumber(i)
        assert.equal(seen[w] + 1, i)
        seen[w] = i
      end
      assert.same({ 5, 5, 5 }, seen)
    end)

    it("a dequeue waiting in a coroutine gets a later item; on an empty queue it times out", function()
      local pq = recipes.new_priority_queue(cli, "pqwait")
      assert.same({ nil, within("q:dequeue", 0.2 * slow), "timeout" }, { pq:dequeue(0.2 * slow) })
      local consumer = etcd.spawn(function() return pq:dequeue(10 * slow) end)
      etcd.spawn(function()
        etcd.sleep(0.2)
        assert(pq:enqueue("urgent", 0))
      end)
      etcd.run()
      assert.same({ "urgent" }, { results(consumer) })
      assert.same({}, keys(cli, "pqwait/"))
    end)

    it("a priority outside 0..65535, or not an integer, raises and writes nothing", function()
      local pq = recipes.new_priority_queue(cli, "pqbad")
      local range = "q:enqueue: bad argument #2 (priority must be within 0..65535)"
      assert.has_error(function() pq:enqueue("x", 65536) end, range)
      assert.has_error(function() pq:enqueue("x", -1) end, range)
      assert.has_error(function() pq:enqueue("x", 1.5) end,
        "q:enqueue: bad argument #2 (priority): integer expected, got float")
      assert.has_error(function() pq:enqueue("x") end,
        "q:enqueue: bad argument #2 (priority): integer expected, got nil")
      assert.has_error(function() pq:enqueue(1, 1) end,
        "q:enqueue: bad argument #1 (value): string expected, got integer")
      assert.equal(0, count(cli, "pqbad/"))
      assert.equal(0, count(cli, "__pqbad/"))
    end)

    it("next to a foreign key that does not end in a number, enqueue returns nil, msg, code", function()
      local pq = recipes.new_priority_queue(cli, "pqforeign")
      assert(cli:put("pqforeign/00001/abc", "not ours"))
      local ok, r, msg, code = pcall(pq.enqueue, pq, "x", 1)
      assert.is_true(ok, tostring(r)) -- a failure to return, not an error to raise
      assert.same({ nil, 'etcd: key "pqforeign/00001/abc" does not end in a number', "UNKNOWN" },
        { r, msg, code })
    end)
  end)

  describe("barrier", function()
    it("hold when held gives nil, msg, 'exists'; the key has no lease; release lets it be held again", function()
      local b = recipes.new_barrier(cli, "bhold")
      local other = recipes.new_barrier(cli, "bhold")
      assert.is_true(b:hold())
      assert.same({ nil, "etcd: key already exists", "exists" }, { b:hold() })
      assert.same({ nil, "etcd: key already exists", "exists" }, { other:hold() })
      local kv = assert(cli:get("bhold")).kvs[1]
      assert.equal("", kv.value)
      assert.equal(etcd.id(0), kv.lease)
      assert.is_true(b:release())
      assert.equal(0, count(cli, "bhold"))
      assert.is_true(other:hold())
      assert.is_true(other:release())
    end)

    it("wait returns true at once when the barrier is not held; times out while it is", function()
      local b = recipes.new_barrier(cli, "bfree")
      local t0 = core.now()
      assert.is_true(b:wait(5 * slow)) -- never held
      assert(b:hold())
      assert(b:release())
      assert.is_true(b:wait(5 * slow)) -- released
      assert.is_true(core.now() - t0 < 2 * slow)
      assert(b:hold())
      assert.same({ nil, within("b:wait", 0.2 * slow), "timeout" }, { b:wait(0.2 * slow) })
      assert(b:release())
    end)

    it("a barrier is its key alone: 'job1' is not held by a held 'job10' (Go's would be)", function()
      local b1, b10 = recipes.new_barrier(cli, "bjob1"), recipes.new_barrier(cli, "bjob10")
      assert(b10:hold())
      assert.is_true(b1:wait(1 * slow))
      assert(b10:release())
    end)

    it("waiters in several coroutines all go on after the release, none before", function()
      local b = recipes.new_barrier(cli, "bwait")
      assert(b:hold())
      -- a write after the hold: the waiters look at a later revision than
      -- the barrier's (Go's Wait would wait for a PUT that never comes)
      assert(cli:put("other/bwait", "x"))
      local log, hs = {}, {}
      for i = 1, 4 do
        hs[i] = etcd.spawn(function()
          local mine = recipes.new_barrier(cli, "bwait")
          log[#log + 1] = "wait " .. i
          local ok, msg, code = mine:wait(10 * slow)
          log[#log + 1] = "done " .. i
          return ok, msg, code
        end)
      end
      etcd.spawn(function()
        etcd.sleep(0.4)
        log[#log + 1] = "release"
        assert(b:release())
      end)
      etcd.run()
      for i = 1, 4 do
        assert.same({ true }, { results(hs[i]) })
        before(log, "wait " .. i, "release")
        before(log, "release", "done " .. i)
      end
    end)
  end)

  describe("double barrier", function()
    it("count 3: none returns from enter before the third entered, nor from leave before the third leaves", function()
      local ss = sessions(cli, 3)
      local log, hs = {}, {}
      local inside
      for i = 1, 3 do
        hs[i] = etcd.spawn(function()
          local b = recipes.new_double_barrier(ss[i], "dbar", 3)
          if i == 3 then etcd.sleep(0.4) end
          log[#log + 1] = "enter " .. i
          assert(b:enter(10 * slow))
          log[#log + 1] = "entered " .. i
          if i == 3 then
            inside = assert(cli:get("dbar/", { prefix = true })).kvs
            etcd.sleep(0.4)
          else
            until_true(function() return inside end) -- the keys are looked at before anyone leaves
          end
          log[#log + 1] = "leave " .. i
          assert(b:leave(10 * slow))
          log[#log + 1] = "left " .. i
        end)
      end
      etcd.run()
      for i = 1, 3 do
        results(hs[i])
        before(log, "enter 3", "entered " .. i)
        before(log, "leave 3", "left " .. i)
      end
      -- while all three were in: dbar/ready and dbar/waiters/<n>, one on each session's lease
      assert.equal(4, #inside)
      assert.equal("dbar/ready", inside[1].key)
      local leases, want = {}, {}
      for i = 2, 4 do
        assert.matches("^dbar/waiters/%d+$", inside[i].key)
        leases[#leases + 1] = inside[i].lease
        want[#want + 1] = ss[i - 1]:lease()
      end
      table.sort(leases)
      table.sort(want)
      assert.same(want, leases)
      assert.same({}, keys(cli, "dbar/"))
      close_all(ss)
    end)

    it("a 4th entering with count 3 while 3 are in gets too_many and is not counted: the three leave", function()
      local ss = sessions(cli, 4)
      local bs, hs = {}, {}
      for i = 1, 4 do bs[i] = recipes.new_double_barrier(ss[i], "dtoo", 3) end
      for i = 1, 3 do hs[i] = etcd.spawn(function() return bs[i]:enter(10 * slow) end) end
      etcd.run()
      for i = 1, 3 do assert.same({ true }, { results(hs[i]) }) end
      assert.same({ nil, "etcd: too many clients at the double barrier", "too_many" }, { bs[4]:enter(5 * slow) })
      -- unlike Go's, the 4th takes its waiter key back: the others do not
      -- wait for it to leave
      assert.equal(3, count(cli, "dtoo/waiters"))
      for i = 1, 3 do hs[i] = etcd.spawn(function() return bs[i]:leave(10 * slow) end) end
      etcd.run()
      for i = 1, 3 do assert.same({ true }, { results(hs[i]) }) end
      assert.same({}, keys(cli, "dtoo/"))
      close_all(ss)
    end)

    it("enter and leave that run out of time return nil, msg, 'timeout'; a timed-out leave can be retried", function()
      local ss = sessions(cli, 2)
      local a, b = recipes.new_double_barrier(ss[1], "dtime", 2), recipes.new_double_barrier(ss[2], "dtime", 2)
      assert.same({ nil, within("b:enter", 0.2 * slow), "timeout" }, { a:enter(0.2 * slow) })
      local ha = etcd.spawn(function() return a:enter(5 * slow) end)
      local hb = etcd.spawn(function() return b:enter(5 * slow) end)
      etcd.run()
      assert.same({ true }, { results(ha) })
      assert.same({ true }, { results(hb) })
      -- b stays: a cannot leave
      assert.same({ nil, within("b:leave", 0.2 * slow), "timeout" }, { a:leave(0.2 * slow) })
      ha = etcd.spawn(function() return a:leave(5 * slow) end)
      hb = etcd.spawn(function() return b:leave(5 * slow) end)
      etcd.run()
      assert.same({ true }, { results(ha) })
      assert.same({ true }, { results(hb) })
      assert.same({}, keys(cli, "dtime/"))
      close_all(ss)
    end)

    it("enter on a session whose lease is gone returns session_lost", function()
      local s = assert(concurrency.new_session(cli, { ttl = 30 }))
      assert(cli:revoke(s:lease()))
      lost(recipes.new_double_barrier(s, "dblost", 2):enter(1))
      assert.equal(0, count(cli, "dblost/"))
      s:close()
    end)

    it("an enter that timed out does not count: two later ones are not let through with count 3", function()
      local ss = sessions(cli, 3)
      local b1 = recipes.new_double_barrier(ss[1], "dgone", 3)
      assert.is_nil((b1:enter(0.2 * slow)))
      assert.equal(0, count(cli, "dgone/waiters"))
      local hs = {}
      for i = 2, 3 do
        hs[i] = etcd.spawn(function()
          return recipes.new_double_barrier(ss[i], "dgone", 3):enter(0.5 * slow)
        end)
      end
      etcd.run()
      -- only two of three are at the barrier: both wait in vain
      for i = 2, 3 do assert.is_nil((results(hs[i]))) end
      assert.equal(0, count(cli, "dgone/waiters"))
      close_all(ss)
    end)
  end)

  describe("double barrier when a process fails", function()
    -- B's client revokes A's lease just before B deletes its own waiter key
    -- (between B's look and B's delete): A "fails" at the worst moment
    local cli2
    before_each(function() cli2 = assert(etcd.new { endpoints = srv.endpoints }) end)
    after_each(function() cli2:close() end)

    it("the lowest's lease ending just as another leaves: that one still leaves", function()
      -- a's key is the lowest, b's is in the middle, c's the highest
      local sa, sc = assert(concurrency.new_session(cli, { ttl = 5 })), assert(concurrency.new_session(cli, { ttl = 5 }))
      local sb = assert(concurrency.new_session(cli2, { ttl = 5 }))
      local a = recipes.new_double_barrier(sa, "dfail", 3)
      local b = recipes.new_double_barrier(sb, "dfail", 3)
      local c = recipes.new_double_barrier(sc, "dfail", 3)
      local hs = {
        etcd.spawn(function() return a:enter(5 * slow) end),
        etcd.spawn(function()
          until_true(function() return count(cli, "dfail/waiters") == 1 end)
          return b:enter(5 * slow)
        end),
        etcd.spawn(function()
          until_true(function() return count(cli, "dfail/waiters") == 2 end)
          return c:enter(5 * slow)
        end),
      }
      etcd.run()
      for i = 1, 3 do assert.same({ true }, { results(hs[i]) }) end
      local bkey
      for _, kv in ipairs(assert(cli:get("dfail/waiters", { prefix = true })).kvs) do
        if kv.lease == sb:lease() then bkey = kv.key end
      end
      local delete, fired = cli2.delete, false
      cli2.delete = function(self, key, opts)
        if not fired and key == assert(bkey) then
          fired = true
          assert(cli:revoke(sa:lease()))
        end
        return delete(self, key, opts)
      end
      -- c (the highest) leaves first and waits for a; then b
      local hc = etcd.spawn(function() return c:leave(3 * slow) end)
      local hb = etcd.spawn(function()
        until_true(function() return count(cli, "dfail/waiters") == 2 end)
        return b:leave(3 * slow)
      end)
      etcd.run()
      assert.is_true(fired)
      assert.same({ true }, { results(hc) })
      assert.same({ true }, { results(hb) })
      -- (dfail/ready may stay, as with Go's: no one was the last one left)
      assert.equal(0, count(cli, "dfail/waiters"))
      sb:close()
      sc:close()
    end)
  end)

  describe("rwmutex", function()
    it("two readers hold it at once; their keys are pfx/read/<n> on their sessions' leases", function()
      local ss = sessions(cli, 2)
      local r1, r2 = recipes.new_rwmutex(ss[1], "rw2r"), recipes.new_rwmutex(ss[2], "rw2r")
      assert.is_true(r1:rlock(2 * slow))
      assert.is_true(r2:rlock(2 * slow)) -- would time out if readers excluded each other
      local kvs = assert(cli:get("rw2r/", { prefix = true })).kvs
      assert.equal(2, #kvs)
      local leases = {}
      for i, kv in ipairs(kvs) do
        assert.matches("^rw2r/read/%d+$", kv.key)
        leases[i] = kv.lease
      end
      table.sort(leases)
      local want = { ss[1]:lease(), ss[2]:lease() }
      table.sort(want)
      assert.same(want, leases)
      assert.is_true(r1:runlock())
      assert.is_true(r2:runlock())
      assert.same({}, keys(cli, "rw2r/"))
      close_all(ss)
    end)

    it("a writer waits for both readers; a reader arriving after the waiting writer waits for it", function()
      local ss = sessions(cli, 4)
      local r1, r2 = recipes.new_rwmutex(ss[1], "rwo"), recipes.new_rwmutex(ss[2], "rwo")
      local w, r3 = recipes.new_rwmutex(ss[3], "rwo"), recipes.new_rwmutex(ss[4], "rwo")
      assert(r1:rlock(2 * slow))
      assert(r2:rlock(2 * slow))
      local log = {}
      local wh = etcd.spawn(function()
        local ok, msg, code = w:lock(10 * slow)
        log[#log + 1] = "w locked"
        etcd.sleep(0.2)
        log[#log + 1] = "w unlock"
        assert(w:unlock())
        return ok, msg, code
      end)
      local r3h = etcd.spawn(function()
        until_true(function() return count(cli, "rwo/write/") == 1 end) -- the writer is ahead
        local ok, msg, code = r3:rlock(10 * slow)
        log[#log + 1] = "r3 locked"
        assert(r3:runlock())
        return ok, msg, code
      end)
      etcd.spawn(function()
        until_true(function() return count(cli, "rwo/read/") == 3 end) -- r3 is waiting
        etcd.sleep(0.2)
        log[#log + 1] = "r1 runlock"
        assert(r1:runlock())
        etcd.sleep(0.2)
        log[#log + 1] = "r2 runlock"
        assert(r2:runlock())
      end)
      etcd.run()
      assert.same({ true }, { results(wh) })
      assert.same({ true }, { results(r3h) })
      before(log, "r2 runlock", "w locked")
      before(log, "w unlock", "r3 locked")
      assert.same({}, keys(cli, "rwo/"))
      close_all(ss)
    end)

    it("lock or rlock on an object that holds the lock raises; so does unlocking one that does not", function()
      local ss = sessions(cli, 1)
      local m = recipes.new_rwmutex(ss[1], "rwmis")
      assert(m:lock(2 * slow))
      assert.has_error(function() m:lock(1) end, "m:lock: the lock is held by this object already")
      assert.has_error(function() m:rlock(1) end, "m:rlock: the lock is held by this object already")
      assert.equal(1, count(cli, "rwmis/")) -- nothing written by the misuse
      assert.is_true(m:unlock())
      assert.has_error(function() m:unlock() end, "m:unlock: not locked")
      assert.has_error(function() m:runlock() end, "m:runlock: not locked")
      assert.is_true(m:rlock(2 * slow))
      assert.has_error(function() m:rlock(1) end, "m:rlock: the lock is held by this object already")
      assert.is_true(m:runlock())
      assert.equal(0, count(cli, "rwmis/"))
      close_all(ss)
    end)

    it("a writer whose lock times out removes its key: readers after it are not held up", function()
      local ss = sessions(cli, 3)
      local r1, w = recipes.new_rwmutex(ss[1], "rwto"), recipes.new_rwmutex(ss[2], "rwto")
      assert(r1:rlock(2 * slow))
      assert.same({ nil, within("m:lock", 0.3 * slow), "timeout" }, { w:lock(0.3 * slow) })
      assert.equal(0, count(cli, "rwto/write/"))
      local r2 = recipes.new_rwmutex(ss[3], "rwto")
      assert.is_true(r2:rlock(2 * slow))
      assert(r1:runlock())
      assert(r2:runlock())
      close_all(ss)
    end)

    it("a waiting writer whose session's lease is revoked elsewhere returns session_lost", function()
      local reader = assert(concurrency.new_session(cli, { ttl = 5 }))
      local ws = assert(concurrency.new_session(cli, { ttl = 2 }))
      local r, w = recipes.new_rwmutex(reader, "rwlost"), recipes.new_rwmutex(ws, "rwlost")
      assert(r:rlock(2 * slow))
      local t0
      local h = etcd.spawn(function() return w:lock(10 * slow) end)
      etcd.spawn(function()
        until_true(function() return count(cli, "rwlost/write/") == 1 end)
        t0 = core.now()
        assert(cli:revoke(ws:lease()))
      end)
      etcd.run()
      lost(results(h))
      -- noticed at once (the writer watches its own key), or at the next
      -- renewal (TTL/3): long before the lock's timeout
      local took = core.now() - t0
      assert.is_true(took < 3 * slow, tostring(took))
      lost(w:lock(1))
      assert.equal(0, count(cli, "rwlost/write/"))
      -- the reader still holds
      assert.equal(1, count(cli, "rwlost/read/"))
      assert.is_true(r:runlock())
      assert(reader:close())
      ws:close()
    end)
    it("a writer whose key went with its lease while it waited gets session_lost, not the lock", function()
      local reader = assert(concurrency.new_session(cli, { ttl = 5 }))
      -- a long TTL: the keep-alive does not notice the loss before the end
      local ws = assert(concurrency.new_session(cli, { ttl = 60 }))
      local r, w = recipes.new_rwmutex(reader, "rwgone"), recipes.new_rwmutex(ws, "rwgone")
      assert(r:rlock(2 * slow))
      local h = etcd.spawn(function() return w:lock(10 * slow) end)
      etcd.spawn(function()
        until_true(function() return count(cli, "rwgone/write/") == 1 end)
        assert(cli:revoke(ws:lease())) -- the writer's key goes ...
        assert(r:runlock()) -- ... and then what it waited for
      end)
      etcd.run()
      assert.same({ nil, LOST .. " (the lock key is gone)", "session_lost" }, { results(h) })
      assert.same({}, keys(cli, "rwgone/"))
      assert(reader:close())
      ws:close()
    end)
  end)

  describe("constructors", function()
    it("raise on a wrong client, session, key or count", function()
      local s = assert(concurrency.new_session(cli, { ttl = 5 }))
      assert.has_error(function() recipes.new_queue(nil, "x") end,
        "recipes.new_queue: bad argument #1 (cli): etcd.client expected, got nil")
      assert.has_error(function() recipes.new_priority_queue(s, "x") end,
        "recipes.new_priority_queue: bad argument #1 (cli): etcd.client expected, got etcd.concurrency.session")
      assert.has_error(function() recipes.new_barrier(cli, nil) end,
        "recipes.new_barrier: bad argument #2 (key): string expected, got nil")
      assert.has_error(function() recipes.new_rwmutex(cli, "x") end,
        "recipes.new_rwmutex: bad argument #1 (s): etcd.concurrency.session expected, got etcd.client")
      assert.has_error(function() recipes.new_double_barrier(s, "x", 0) end,
        "recipes.new_double_barrier: bad argument #3 (count must be at least 1)")
      assert.has_error(function() recipes.new_queue(cli, "x"):dequeue(-1) end,
        "q:dequeue: bad argument #1 (timeout): non-negative number of seconds expected, got -1")
      assert.has_error(function() recipes.new_queue(cli, "x"):enqueue(nil) end,
        "q:enqueue: bad argument #1 (value): string expected, got nil")
      assert(s:close())
      -- a closed session: building on it works, locking does not
      assert.same({ nil, "etcd: session is closed", "session_lost" }, { recipes.new_rwmutex(s, "x"):lock(1) })
    end)
  end)

  describe("across processes", function()
    it("3 child processes and this one take from one queue: every item exactly once", function()
      local script = [[
        local endpoint, id, slow = ...
        slow = tonumber(slow)
        local etcd = require "etcd"
        local recipes = require "etcd.recipes"
        local cli = assert(etcd.new { endpoints = { endpoint } })
        local q = recipes.new_queue(cli, "mpq/items")
        assert(cli:put("mpq/ready/" .. id, ""))
        assert(recipes.new_barrier(cli, "mpq/start"):wait(20 * slow))
        while true do
          local v = assert(q:dequeue(20 * slow))
          if v == "stop" then break end
          io.write(v, "\n")
        end
        cli:close()
      ]]
      local start = recipes.new_barrier(cli, "mpq/start")
      assert(start:hold())
      local kids = {}
      for i = 1, 3 do kids[i] = start_child(script, { srv.endpoint, i, slow }) end
      local ready = helpers.eventually(20 * slow, function() return count(cli, "mpq/ready/") == 3 end)
      local q = recipes.new_queue(cli, "mpq/items")
      local mine = {}
      if ready then
        assert(start:release())
        etcd.spawn(function()
          -- paced: on a loaded machine this process alone could otherwise
          -- take all 60 before the children's first dequeue (CI met that)
          for i = 1, 60 do
            assert(q:enqueue(("item%02d"):format(i)))
            etcd.sleep(0.005)
          end
          for _ = 1, 4 do assert(q:enqueue("stop")) end -- one per process
        end)
        etcd.spawn(function()
          while true do
            local v = assert(q:dequeue(20 * slow))
            if v == "stop" then return end
            mine[#mine + 1] = v
          end
        end)
        etcd.run()
      end
      local got, takers = {}, (#mine > 0 and 1 or 0)
      for _, v in ipairs(mine) do got[#got + 1] = v end
      for i = 1, 3 do
        local out, status, err = kids[i].finish()
        assert.equal(0, status, err)
        local n = 0
        for v in out:gmatch("[^\n]+") do
          got[#got + 1] = v
          n = n + 1
        end
        if n > 0 then takers = takers + 1 end
      end
      assert.is_true(ready, "the children did not start")
      table.sort(got)
      local want = {}
      for i = 1, 60 do want[i] = ("item%02d"):format(i) end
      assert.same(want, got) -- none lost, none twice
      assert.is_true(takers >= 2, "only one process took items")
      assert.same({}, keys(cli, "mpq/items/"))
    end)

    it("3 child processes enqueue at once on a priority queue: nothing lost, lowest first, FIFO per producer", function()
      -- all three number their items at the same priorities at the same
      -- time: the "__" guard key makes the losers of a race number again
      local script = [[
        local endpoint, id, slow = ...
        slow = tonumber(slow)
        local etcd = require "etcd"
        local recipes = require "etcd.recipes"
        local cli = assert(etcd.new { endpoints = { endpoint } })
        local q = recipes.new_priority_queue(cli, "mppq/q")
        assert(cli:put("mppq/ready/" .. id, ""))
        assert(recipes.new_barrier(cli, "mppq/start"):wait(20 * slow))
        for i = 1, 10 do assert(q:enqueue(("%s-%02d"):format(id, i), i % 3)) end
        cli:close()
      ]]
      local start = recipes.new_barrier(cli, "mppq/start")
      assert(start:hold())
      local kids = {}
      for i = 1, 3 do kids[i] = start_child(script, { srv.endpoint, i, slow }) end
      local ready = helpers.eventually(20 * slow, function() return count(cli, "mppq/ready/") == 3 end)
      if ready then assert(start:release()) end
      for i = 1, 3 do
        local _, status, err = kids[i].finish()
        assert.equal(0, status, err)
      end
      assert.is_true(ready, "the children did not start")
      local q = recipes.new_priority_queue(cli, "mppq/q")
      local got, last_prio, last_of = {}, -1, {}
      for _ = 1, 30 do
        local v = assert(q:dequeue(0))
        local id, n = v:match("^(%d)-(%d+)$")
        n = tonumber(n)
        local prio = n % 3
        assert.is_true(prio >= last_prio, "priority order")
        if prio > last_prio then last_of = {} end
        last_prio = prio
        assert.is_true((last_of[id] or 0) < n, "FIFO per producer within a priority")
        last_of[id] = n
        got[#got + 1] = v
      end
      assert.same({ nil, within("q:dequeue", 0), "timeout" }, { q:dequeue(0) })
      table.sort(got)
      local want = {}
      for id = 1, 3 do
        for i = 1, 10 do want[#want + 1] = ("%d-%02d"):format(id, i) end
      end
      table.sort(want)
      assert.same(want, got)
    end)

    it("3 child processes and this one pass a double barrier of 4 together, in and out", function()
      -- each process says it arrived before entering, and counts the
      -- arrivals once through: 4, or enter did not wait for everyone
      local script = [[
        local endpoint, id, slow = ...
        slow = tonumber(slow)
        local etcd = require "etcd"
        local concurrency = require "etcd.concurrency"
        local recipes = require "etcd.recipes"
        local cli = assert(etcd.new { endpoints = { endpoint } })
        local s = assert(concurrency.new_session(cli, { ttl = 10 }))
        local b = recipes.new_double_barrier(s, "mpdb/b", 4)
        local function count(p) return assert(cli:get(p, { prefix = true, count_only = true })).count end
        assert(cli:put("mpdb/arrived/" .. id, ""))
        assert(b:enter(20 * slow))
        io.write(count("mpdb/arrived/"), "\n")
        etcd.sleep(0.05 * id)
        assert(cli:put("mpdb/leaving/" .. id, ""))
        assert(b:leave(20 * slow))
        io.write(count("mpdb/leaving/"), "\n")
        assert(s:close())
        cli:close()
      ]]
      local kids = {}
      for i = 1, 3 do kids[i] = start_child(script, { srv.endpoint, i, slow }) end
      local s = assert(concurrency.new_session(cli, { ttl = 10 }))
      local b = recipes.new_double_barrier(s, "mpdb/b", 4)
      assert(cli:put("mpdb/arrived/0", ""))
      assert(b:enter(20 * slow))
      local outs = { ("%d\n"):format(count(cli, "mpdb/arrived/")) }
      assert(cli:put("mpdb/leaving/0", ""))
      assert(b:leave(20 * slow))
      outs[1] = outs[1] .. ("%d\n"):format(count(cli, "mpdb/leaving/"))
      for i = 1, 3 do
        local out, status, err = kids[i].finish()
        assert.equal(0, status, err)
        outs[i + 1] = out
      end
      assert.same({ "4\n4\n", "4\n4\n", "4\n4\n", "4\n4\n" }, outs)
      assert.same({}, keys(cli, "mpdb/b/waiters/"))
      assert(s:close())
    end)

    it("3 child processes and this one share an rwmutex: writers never overlap anyone", function()
      local script = [[
        local endpoint, id, slow = ...
        slow = tonumber(slow)
        local etcd = require "etcd"
        local concurrency = require "etcd.concurrency"
        local recipes = require "etcd.recipes"
        local cli = assert(etcd.new { endpoints = { endpoint } })
        local s = assert(concurrency.new_session(cli, { ttl = 5 }))
        local m = recipes.new_rwmutex(s, "mprw/lock")
        assert(cli:put("mprw/ready/" .. id, ""))
        assert(recipes.new_barrier(cli, "mprw/start"):wait(20 * slow))
        for round = 1, 6 do
          if round % 2 == 1 then
            assert(m:lock(20 * slow))
            local a = assert(cli:put("mprw/owner", id)).header.revision
            etcd.sleep(0.01)
            local seen = assert(cli:get("mprw/owner")).kvs[1].value
            local b = assert(cli:put("mprw/owner", "free")).header.revision
            assert(m:unlock())
            io.write(("W %d %d %s %s\n"):format(a, b, id, seen))
          else
            assert(m:rlock(20 * slow))
            local seen = assert(cli:get("mprw/owner")).kvs[1].value
            etcd.sleep(0.01)
            local again = assert(cli:get("mprw/owner")).kvs[1].value
            assert(m:runlock())
            io.write(("R %s %s\n"):format(seen, again))
          end
        end
        assert(s:close())
        cli:close()
      ]]
      assert(cli:put("mprw/owner", "free"))
      local start = recipes.new_barrier(cli, "mprw/start")
      assert(start:hold())
      local kids = {}
      for i = 1, 3 do kids[i] = start_child(script, { srv.endpoint, i, slow }) end
      local ready = helpers.eventually(20 * slow, function() return count(cli, "mprw/ready/") == 3 end)
      local lines = {}
      if ready then
        assert(start:release())
        -- this process takes part, as child "0", blocking (no coroutine)
        local s = assert(concurrency.new_session(cli, { ttl = 5 }))
        local m = recipes.new_rwmutex(s, "mprw/lock")
        for round = 1, 6 do
          if round % 2 == 0 then
            assert(m:lock(20 * slow))
            local a = assert(cli:put("mprw/owner", "0")).header.revision
            etcd.sleep(0.01)
            local seen = assert(cli:get("mprw/owner")).kvs[1].value
            local b = assert(cli:put("mprw/owner", "free")).header.revision
            assert(m:unlock())
            lines[#lines + 1] = ("W %d %d 0 %s"):format(a, b, seen)
          else
            assert(m:rlock(20 * slow))
            local seen = assert(cli:get("mprw/owner")).kvs[1].value
            etcd.sleep(0.01)
            local again = assert(cli:get("mprw/owner")).kvs[1].value
            assert(m:runlock())
            lines[#lines + 1] = ("R %s %s"):format(seen, again)
          end
        end
        assert(s:close())
      end
      for i = 1, 3 do
        local out, status, err = kids[i].finish()
        assert.equal(0, status, err)
        for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      end
      assert.is_true(ready, "the children did not start")
      local writes, reads = {}, 0
      for _, l in ipairs(lines) do
        local a, b, id, seen = l:match("^W (%d+) (%d+) (%d) (%S+)$")
        if a then
          assert.equal(id, seen, l) -- no other writer came in meanwhile
          writes[#writes + 1] = { tonumber(a), tonumber(b), l }
        else
          local r1, r2 = l:match("^R (%S+) (%S+)$")
          assert.same({ "free", "free" }, { r1, r2 }, l) -- no writer inside a read
          reads = reads + 1
        end
      end
      assert.equal(12, #writes)
      assert.equal(12, reads)
      table.sort(writes, function(x, y) return x[1] < y[1] end)
      for i = 2, #writes do
        assert.is_true(writes[i - 1][2] < writes[i][1], writes[i - 1][3] .. " overlaps " .. writes[i][3])
      end
      assert.equal(0, count(cli, "mprw/lock/"))
    end)
  end)
end)
