-- etcd.concurrency: sessions, mutexes, elections and STM, against a real
-- etcd, in coroutines as the Go walk-through uses goroutines, and side by
-- side with Debian's etcdctl (built on Go's concurrency package).
local helpers = require "helpers"
local etcd = require "etcd"

-- Go's "%x" of a lease id (on 5.1/LuaJIT ids are decimal strings: etcd.id_hex)
local function hex(id)
  if math.type then return ("%x"):format(id) end
  return etcd.id_hex(id)
end
local core = require "etcd.core"
local concurrency = require "etcd.concurrency"

local eventually = helpers.eventually
local slow = helpers.slowdown

-- Run `body` as a spawned coroutine and return its results (raising its error).
local function go(body)
  local r = helpers.pack(etcd.spawn(body):join())
  if not r[1] then error(r[2], 0) end
  return helpers.unpack(r, 2, r.n)
end

local count, until_true = helpers.count, helpers.until_true

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- A shell command in the background, its output in a file.
local function bg(cmd)
  local out = os.tmpname()
  local p = assert(io.popen(("sh -c %s"):format(q(cmd .. " >" .. q(out) .. " 2>&1 & echo $!"))))
  local pid = assert(tonumber(p:read("*l")))
  p:close()
  local proc = { pid = pid }
  function proc.output()
    local f = io.open(out)
    if not f then return "" end
    local s = f:read("*a")
    f:close()
    return s
  end
  function proc.running() return helpers.execute("kill -0 " .. pid .. " 2>/dev/null") == true end
  function proc.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    assert.is_true(eventually(10, function() return not proc.running() end))
    os.remove(out)
  end
  return proc
end

describe("concurrency sessions", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  it("keep their lease alive past its TTL and revoke it on close", function()
    local s = assert(concurrency.new_session(cli, { ttl = 2 }))
    local id = s:lease()
    assert.equal(2, assert(cli:time_to_live(id)).granted_ttl)
    assert(cli:put("sess/k", "v", { lease = id }))
    etcd.sleep(2.5) -- longer than the TTL: only the keep-alive keeps it
    assert.equal(1, count(cli, "sess/k"))
    assert.same({ nil, "etcd: session still alive at the deadline", "timeout" }, { s:done(0) })
    assert.is_true(s:close())
    assert.equal(0, count(cli, "sess/k"))
    assert.equal(-1, assert(cli:time_to_live(id)).ttl)
    assert.is_true(s:close()) -- idempotent
    assert.is_true(s:done(0))
  end)

  it("orphan stops renewing without revoking", function()
    local s = assert(concurrency.new_session(cli, { ttl = 30 }))
    s:orphan()
    assert.is_true(s:done(0))
    local ttl = assert(cli:time_to_live(s:lease())).ttl
    assert.is_true(ttl > 0 and ttl <= 30)
    assert(cli:revoke(s:lease()))
  end)

  it("take an existing lease with `lease`, and report its loss through done()", function()
    local g = assert(cli:grant(2))
    local s = assert(concurrency.new_session(cli, { lease = g.id }))
    assert.equal(g.id, s:lease())
    local waiter = etcd.spawn(function() return s:done(10 * slow) end)
    etcd.spawn(function()
      etcd.sleep(0.2)
      assert(cli:revoke(g.id)) -- from outside
    end)
    etcd.run()
    assert.same({ true, true }, { waiter:join() })
    s:close()
  end)

  it("`lease = 0` (Go's NoLease) grants a lease", function()
    local s = assert(concurrency.new_session(cli, { lease = 0, ttl = 5 }))
    assert.is_true(s:lease() ~= 0)
    assert.equal(5, assert(cli:time_to_live(s:lease())).granted_ttl)
    s:close()
  end)

  it("a <close> session of a spawned coroutine that fails is revoked", function()
    -- Lua 5.4 source, compiled here: this file loads on Luas without <close>
    local body = helpers.load54([[
      local concurrency, cli, assert, got_id = ...
      return function()
        local s <close> = assert(concurrency.new_session(cli, { ttl = 30 }))
        got_id(s:lease())
        error("boom", 0)
      end
    ]], "=spec/19-concurrency_spec.lua (a <close> session)")
    if not body then return pending("to-be-closed variables are Lua 5.4's") end
    local id
    etcd.spawn(body(concurrency, cli, assert, function(v) id = v end))
    local ok, err = pcall(etcd.run)
    assert.is_false(ok)
    assert.matches("^boom", err)
    assert.equal(-1, assert(cli:time_to_live(id)).ttl)
  end)

  it("fail like the grant they make, and reject misuse", function()
    assert.has_error(function() concurrency.new_session(nil) end,
      "concurrency.new_session: bad argument #1 (cli): etcd.client expected, got nil")
    assert.has_error(function() concurrency.new_session(cli, { ttl = "x" }) end)
    assert.has_error(function() concurrency.new_session(cli, { tll = 5 }) end)
    -- a lease that does not exist: like Go's KeepAlive, the keep-alive
    -- starts, and the session is over at etcd's first answer
    local s = assert(concurrency.new_session(cli, { lease = 12345 }))
    assert.same({ true }, { s:done(5 * slow) })
    assert.is_true(s:close())
  end)
end)

describe("concurrency mutex", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  local function sessions(n, ttl)
    local list = {}
    for i = 1, n do list[i] = assert(concurrency.new_session(cli, { ttl = ttl or 10 })) end
    return list
  end
  local function close_all(list)
    for _, s in ipairs(list) do s:close() end
  end

  it("the walk-through: a second locker waits in another coroutine until the first unlocks", function()
    local ss = sessions(2)
    local m1, m2 = concurrency.new_mutex(ss[1], "/my-lock"), concurrency.new_mutex(ss[2], "/my-lock")
    local log = {}
    assert.is_true(m1:lock())
    log[#log + 1] = "acquired lock for s1"
    assert.equal("/my-lock/" .. hex(ss[1]:lease()), m1:key())
    local second = etcd.spawn(function()
      assert(m2:lock(20 * slow))
      log[#log + 1] = "acquired lock for s2"
      return assert(m2:unlock())
    end)
    etcd.spawn(function()
      etcd.sleep(0.3)
      log[#log + 1] = "released lock for s1"
      assert(m1:unlock())
    end)
    etcd.run()
    assert.same({ true, true }, { second:join() })
    assert.same({ "acquired lock for s1", "released lock for s1", "acquired lock for s2" }, log)
    assert.equal(0, count(cli, "/my-lock/"))
    close_all(ss)
  end)

  it("try_lock reports 'locked' while another session holds it, and leaves no key behind", function()
    local ss = sessions(2)
    local m1, m2 = concurrency.new_mutex(ss[1], "tl"), concurrency.new_mutex(ss[2], "tl")
    assert.is_true(m1:try_lock())
    assert.same({ nil, "etcd: mutex is locked by another session", "locked" }, { m2:try_lock() })
    assert.is_nil(m2:key())
    assert.equal(1, count(cli, "tl/"))
    assert(m1:unlock())
    assert.is_true(m2:try_lock())
    assert.equal(m2:key(), assert(cli:get("tl/", { prefix = true })).kvs[1].key)
    assert(m2:unlock())
    close_all(ss)
  end)

  it("two mutexes on one session and prefix share one key and do not exclude each other, as in Go", function()
    local s = assert(concurrency.new_session(cli, { ttl = 10 }))
    local a, b = concurrency.new_mutex(s, "shared"), concurrency.new_mutex(s, "shared")
    assert.is_true(a:lock(1))
    assert.is_true(b:lock(1))
    assert.equal(a:key(), b:key())
    assert.equal(1, count(cli, "shared/"))
    s:close()
  end)

  it("grants the lock in arrival order to 5 waiters on 5 sessions", function()
    local ss = sessions(6)
    local holder = concurrency.new_mutex(ss[6], "fair")
    assert(holder:lock())
    local order = {}
    go(function()
      for i = 1, 5 do
        local m = concurrency.new_mutex(ss[i], "fair")
        etcd.spawn(function()
          assert(m:lock(20 * slow))
          order[#order + 1] = i
          etcd.sleep(0.02)
          assert(m:unlock())
        end)
        -- the next waiter arrives once this one's key is in
        until_true(function() return count(cli, "fair/") == i + 1 end)
      end
      assert(holder:unlock())
    end)
    etcd.run()
    assert.same({ 1, 2, 3, 4, 5 }, order)
    close_all(ss)
  end)

  it("a lock that times out returns 'timeout' and withdraws its key", function()
    local ss = sessions(2)
    local m1, m2 = concurrency.new_mutex(ss[1], "to"), concurrency.new_mutex(ss[2], "to")
    assert(m1:lock())
    local t0 = core.now()
    assert.same({ nil, "etcd: m:lock did not finish within 0.3s", "timeout" }, { m2:lock(0.3) })
    assert.is_true(core.now() - t0 >= 0.3)
    assert.is_nil(m2:key())
    assert.equal(1, count(cli, "to/"))
    assert(m1:unlock())
    close_all(ss)
  end)

  it("lock(0) takes a free lock and does not wait for a held one; one lock at a time per mutex", function()
    local ss = sessions(2)
    local m1, m2 = concurrency.new_mutex(ss[1], "zero"), concurrency.new_mutex(ss[2], "zero")
    assert.is_true(m1:lock(0))
    assert.same({ nil, "etcd: m:lock did not finish within 0s", "timeout" }, { m2:lock(0) })
    assert.equal(1, count(cli, "zero/"))
    local waiting = etcd.spawn(function() return m2:lock(20 * slow) end)
    local misuse = etcd.spawn(function()
      until_true(function() return count(cli, "zero/") == 2 end)
      return pcall(m2.lock, m2, 1)
    end)
    assert.same({ true, false, "m:lock: another coroutine is already locking this mutex" }, { misuse:join() })
    assert(m1:unlock())
    assert.same({ true, true }, { waiting:join() })
    assert(m2:unlock())
    close_all(ss)
  end)

  it("a waiter whose predecessor's session dies is promoted", function()
    local ss = sessions(3, 30)
    local m1, m2, m3 = concurrency.new_mutex(ss[1], "pro"), concurrency.new_mutex(ss[2], "pro"),
      concurrency.new_mutex(ss[3], "pro")
    assert(m1:lock())
    local got = {}
    local second_code = go(function()
      local second = etcd.spawn(function() return m2:lock(20 * slow) end)
      until_true(function() return count(cli, "pro/") == 2 end)
      etcd.spawn(function() assert(m3:lock(20 * slow)); got[#got + 1] = 3 end)
      until_true(function() return count(cli, "pro/") == 3 end)
      -- the waiter just ahead of m3 (m2) dies: m3 goes on waiting for m1
      assert(cli:revoke(ss[2]:lease()))
      etcd.sleep(0.3)
      assert.same({}, got)
      -- the holder dies: m3 is promoted
      assert(cli:revoke(ss[1]:lease()))
      until_true(function() return #got == 1 end)
      -- m2's own key went with its session: it was told so, not granted
      local _, _, _, code = second:join()
      return code
    end)
    etcd.run()
    assert.same({ 3 }, got)
    assert.equal("session_lost", second_code)
    assert.equal(m3:key(), assert(cli:get("pro/", { prefix = true })).kvs[1].key)
    assert(m3:unlock())
    close_all(ss)
  end)

  it("returns 'session_lost' at once, never a false success, when the lease ends while waiting", function()
    -- TTL 30: the keep-alive would notice only at its next renewal, up to
    -- 10 s later; the waiter watches its own key and sees it go at once
    local ss = sessions(2, 30)
    local m1, m2 = concurrency.new_mutex(ss[1], "lost"), concurrency.new_mutex(ss[2], "lost")
    assert(m1:lock())
    local revoked_at
    local waiter = etcd.spawn(function()
      local r, m, c = m2:lock(60 * slow)
      return r, m, c, core.now() - revoked_at
    end)
    etcd.spawn(function()
      until_true(function() return count(cli, "lost/") == 2 end)
      etcd.sleep(0.1) -- the waiter is waiting
      revoked_at = core.now()
      assert(cli:revoke(ss[2]:lease()))
    end)
    etcd.run()
    local ok, res, msg, code, took = waiter:join()
    assert.is_true(ok)
    assert.is_nil(res)
    assert.equal("session_lost", code)
    assert.equal("etcd: session lost (its lease expired or was revoked) (the lock key is gone)", msg)
    assert.is_true(took < 3 * slow, "took " .. took)
    assert.is_nil(m2:key())
    -- the holder is unaffected
    assert.equal(m1:key(), assert(cli:get("lost/", { prefix = true })).kvs[1].key)
    -- a lock on a session that ended fails the same way
    local _, msg2, code2 = m2:lock(1)
    assert.equal("session_lost", code2)
    assert.matches("^etcd: session lost", msg2)
    assert(m1:unlock())
    close_all(ss)
  end)

  it("is_owner fences writes in a txn, and unlock reports a lock lost while held", function()
    local s = assert(concurrency.new_session(cli, { ttl = 10 }))
    local m = concurrency.new_mutex(s, "fence")
    assert(m:lock())
    local res = assert(cli:txn { compare = { m:is_owner() }, success = { etcd.op.put("fenced", "1") } })
    assert.is_true(res.succeeded)
    assert(cli:revoke(s:lease())) -- the lease ends while we hold the lock
    res = assert(cli:txn { compare = { m:is_owner() }, success = { etcd.op.put("fenced", "2") } })
    assert.is_false(res.succeeded)
    assert.equal("1", assert(cli:get("fenced")).kvs[1].value)
    local ok, msg, code = m:unlock()
    assert.is_nil(ok)
    assert.equal("session_lost", code)
    assert.matches("released by its lease", msg)
    assert.has_error(function() m:unlock() end, "m:unlock: the mutex is not locked")
    -- not locked: is_owner can never hold
    res = assert(cli:txn { compare = { m:is_owner() }, success = { etcd.op.put("fenced", "3") } })
    assert.is_false(res.succeeded)
    s:close()
  end)

  it("works outside a scheduler, with a namespace, and checks its arguments", function()
    local ns = assert(etcd.new { endpoints = cli:endpoints(), namespace = "ns1/" })
    local s = assert(concurrency.new_session(ns, { ttl = 10 }))
    local m = concurrency.new_mutex(s, "lk")
    assert.is_true(m:lock(5))
    assert.is_table(m:header())
    assert.equal("ns1/lk/" .. hex(s:lease()), assert(cli:get("ns1/lk/", { prefix = true })).kvs[1].key)
    assert(m:unlock())
    s:close()
    ns:close()
    assert.has_error(function() concurrency.new_mutex(cli, "x") end)
    assert.has_error(function() concurrency.new_mutex(s, 5) end,
      "concurrency.new_mutex: bad argument #2 (pfx): string expected, got integer")
    assert.has_error(function() m:lock(-1) end)
  end)

  it("builds Go's key for any lease id", function()
    assert.equal("p/5fe0a231400db36a", concurrency.key_of("p/", etcd.id("0x5fe0a231400db36a")))
    assert.equal("p/5fe0a231400db36a", concurrency.key_of("p/", "6908700160798077802"))
    assert.equal("p/0", concurrency.key_of("p/", 0))
    assert.equal("p/-1", concurrency.key_of("p/", -1))
    assert.equal("p/-8000000000000000", concurrency.key_of("p/", "-9223372036854775808"))
    if math.type then
      assert.equal("p/5fe0a231400db36a", concurrency.key_of("p/", 0x5fe0a231400db36a))
      assert.equal("p/-8000000000000000", concurrency.key_of("p/", math.mininteger))
    end
  end)
end)

describe("concurrency election", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  it("the walk-through: two candidates, the second elected when the first resigns", function()
    local s1 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local s2 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local e1, e2 = concurrency.new_election(s1, "/my-election"), concurrency.new_election(s2, "/my-election")
    assert.same({ nil, "election: no leader", "no_leader" }, { e1:leader() })
    local log = {}
    local c1 = etcd.spawn(function()
      assert(e1:campaign("e1"))
      log[#log + 1] = "e1 elected"
      etcd.sleep(0.3)
      log[#log + 1] = "e1 resigns"
      assert(e1:resign())
    end)
    local c2 = etcd.spawn(function()
      etcd.sleep(0.1) -- the delayed candidate
      assert(e2:campaign("e2", 20 * slow))
      log[#log + 1] = "e2 elected"
      return assert(e2:leader()).kvs[1].value
    end)
    etcd.run()
    assert.is_true((c1:join()))
    assert.same({ true, "e2" }, { c2:join() })
    assert.same({ "e1 elected", "e1 resigns", "e2 elected" }, log)
    assert.equal("/my-election/" .. hex(s2:lease()), e2:key())
    assert.equal(assert(cli:get(e2:key())).kvs[1].create_revision, e2:rev())
    assert.is_table(e2:header())
    s1:close()
    s2:close()
  end)

  it("proclaim changes the leader's value; a non-leader gets 'not_leader'", function()
    local s1 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local s2 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local e1, e2 = concurrency.new_election(s1, "pr"), concurrency.new_election(s2, "pr")
    assert.same({ nil, "election: not leader", "not_leader" }, { e1:proclaim("x") })
    assert(e1:campaign("a"))
    assert(e1:proclaim("b"))
    assert.equal("b", assert(e2:leader()).kvs[1].value)
    -- campaigning again with another value proclaims it
    assert(e1:campaign("c"))
    assert.equal("c", assert(e2:leader()).kvs[1].value)
    assert.same({ nil, "election: not leader", "not_leader" }, { e2:proclaim("x") })
    assert.is_true(e2:resign()) -- not leader: nothing to do
    -- leadership lost underneath: proclaim says so
    assert(cli:revoke(s1:lease()))
    assert.same({ nil, "election: not leader", "not_leader" }, { e1:proclaim("d") })
    s2:close()
  end)

  it("observe gives the current leader and each change, across three leader changes", function()
    local ss, es = {}, {}
    for i = 1, 3 do
      ss[i] = assert(concurrency.new_session(cli, { ttl = 10 }))
      es[i] = concurrency.new_election(ss[i], "obs")
    end
    local seen = {}
    local observer = etcd.spawn(function()
      -- the iterator called by hand: Lua 5.1's generic for cannot yield
      local observe = es[1]:observe()
      while true do
        local resp = observe()
        if not resp then break end
        seen[#seen + 1] = resp.kvs[1].value
        if #seen == 4 then break end
      end
      return #seen
    end)
    etcd.spawn(function()
      assert(es[1]:campaign("leader-1"))
      until_true(function() return #seen == 1 end)
      assert(es[1]:proclaim("leader-1b"))
      -- candidates in a known order: each one's key is in before the next
      local second = etcd.spawn(function() return es[2]:campaign("leader-2", 20 * slow) end)
      until_true(function() return count(cli, "obs/") == 2 end)
      local third = etcd.spawn(function() return es[3]:campaign("leader-3", 20 * slow) end)
      until_true(function() return count(cli, "obs/") == 3 end)
      assert(es[1]:resign())
      assert(second:join())
      assert(es[2]:resign())
      assert(third:join())
    end)
    etcd.run()
    assert.same({ true, 4 }, { observer:join() })
    assert.same({ "leader-1", "leader-1b", "leader-2", "leader-3" }, seen)
    -- the observer's watch was closed by the break
    for i = 1, 3 do ss[i]:close() end
  end)

  it("observe with timeouts, and close", function()
    local s = assert(concurrency.new_session(cli, { ttl = 10 }))
    local e = concurrency.new_election(s, "obs2")
    local obs = e:observe()
    assert.same({ nil, "etcd: no leader change before the deadline", "timeout" }, { obs:next(0.2) })
    assert(e:campaign("v"))
    assert.equal("v", assert(obs:next(5)).kvs[1].value)
    assert.same({ nil, "etcd: no leader change before the deadline", "timeout" }, { obs:next(0.2) })
    obs:close()
    assert.same({ nil, "etcd: observer is closed", "closed" }, { obs:next(1) })
    s:close()
  end)

  it("an observer closed by another coroutine ends the wait for a first leader", function()
    local s = assert(concurrency.new_session(cli, { ttl = 10 }))
    local obs = concurrency.new_election(s, "obs3"):observe()
    local reader = etcd.spawn(function() return obs:next() end)
    local other = etcd.spawn(function()
      etcd.sleep(0.1)
      local ok, err = pcall(obs.next, obs, 1)
      obs:close()
      return ok, err
    end)
    etcd.run()
    assert.same({ true, nil, "etcd: observer is closed", "closed" }, { reader:join() })
    local _, ok, err = other:join()
    assert.is_false(ok)
    assert.matches("obs:next: another coroutine is already waiting on this observer", err)
    s:close()
  end)

  it("a campaign that times out withdraws; resume_election continues a leadership", function()
    local s1 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local s2 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local e1, e2 = concurrency.new_election(s1, "rs"), concurrency.new_election(s2, "rs")
    assert(e1:campaign("one"))
    assert.same({ nil, "etcd: e:campaign did not finish within 0.3s", "timeout" }, { e2:campaign("two", 0.3) })
    assert.equal(1, count(cli, "rs/"))
    local again = concurrency.resume_election(s1, "rs", e1:key(), e1:rev())
    assert(again:proclaim("one-again"))
    assert.equal("one-again", assert(e2:leader()).kvs[1].value)
    assert(again:resign())
    assert.same({ nil, "election: no leader", "no_leader" }, { e2:leader() })
    s1:close()
    s2:close()
  end)

  it("a campaign whose session ends while waiting returns 'session_lost'", function()
    local s1 = assert(concurrency.new_session(cli, { ttl = 10 }))
    local s2 = assert(concurrency.new_session(cli, { ttl = 2 }))
    local e1, e2 = concurrency.new_election(s1, "sl"), concurrency.new_election(s2, "sl")
    assert(e1:campaign("one"))
    local c = etcd.spawn(function() return e2:campaign("two", 20 * slow) end)
    etcd.spawn(function()
      until_true(function() return count(cli, "sl/") == 2 end)
      assert(cli:revoke(s2:lease()))
    end)
    etcd.run()
    local ok, res, _, code = c:join()
    assert.is_true(ok)
    assert.is_nil(res)
    assert.equal("session_lost", code)
    assert.equal("one", assert(e1:leader()).kvs[1].value)
    s1:close()
    s2:close()
  end)
end)

describe("concurrency STM", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  -- read_committed checks nothing at commit, so two transfers that share one
  -- account can lose an update and with it money (as in Go): at that level
  -- the transfers all move money between the same two accounts, read at one
  -- revision, so that each commit still writes a pair with the right sum.
  for _, iso in ipairs { "serializable_snapshot", "serializable", "repeatable_reads", "read_committed" } do
    it("the bank transfer: 10 concurrent transfers conserve the total (" .. iso .. ")", function()
      local n_acc = iso == "read_committed" and 2 or 5
      local accounts = {}
      for i = 1, n_acc do
        accounts[i] = ("bank-%s/%d"):format(iso, i)
        assert(cli:put(accounts[i], "100"))
      end
      local function pair(n) return n % n_acc + 1, (n + 2) % n_acc + 1 end
      if n_acc == 2 then pair = function(n) return n % 2 + 1, (n + 1) % 2 + 1 end end
      local hs = {}
      for n = 1, 10 do
        hs[n] = etcd.spawn(function()
          local from, to = pair(n)
          from, to = accounts[from], accounts[to]
          return concurrency.new_stm(cli, function(stm)
            -- both balances read in one request, at one revision
            local a = tonumber(stm:get(from, to))
            local b = tonumber(stm:get(to))
            stm:put(from, tostring(a - n))
            stm:put(to, tostring(b + n))
          end, { isolation = iso })
        end)
      end
      etcd.run()
      for n = 1, 10 do
        local ok, res = hs[n]:join()
        assert.is_true(ok)
        assert.is_true(res.succeeded)
      end
      local total, balances = 0, {}
      for i = 1, n_acc do
        balances[i] = tonumber(assert(cli:get(accounts[i])).kvs[1].value)
        total = total + balances[i]
      end
      assert.equal(100 * n_acc, total)
      if iso ~= "read_committed" then
        -- no update lost: each account moved by exactly its transfers
        local expect = { 100, 100, 100, 100, 100 }
        for n = 1, 10 do
          local from, to = pair(n)
          expect[from] = expect[from] - n
          expect[to] = expect[to] + n
        end
        assert.same(expect, balances)
      end
    end)
  end

  it("retries when a key it read changed before the commit, except at read_committed", function()
    for _, case in ipairs { { "serializable_snapshot", 2 }, { "serializable", 2 }, { "repeatable_reads", 2 },
      { "read_committed", 1 } } do
      local iso, runs_expected = case[1], case[2]
      assert(cli:put("rt/x", "1"))
      local runs = 0
      local res = assert(concurrency.new_stm(cli, function(stm)
        runs = runs + 1
        local x = stm:get("rt/x")
        if runs == 1 then assert(cli:put("rt/x", "changed")) end -- a concurrent writer
        stm:put("rt/y", x)
      end, { isolation = iso }))
      assert.is_true(res.succeeded)
      assert.equal(runs_expected, runs, iso)
      assert.equal(runs_expected == 2 and "changed" or "1", assert(cli:get("rt/y")).kvs[1].value, iso)
    end
  end)

  it("serializable levels read from the revision of the first read", function()
    for _, case in ipairs { { "serializable_snapshot", "old" }, { "serializable", "old" },
      { "repeatable_reads", "new" }, { "read_committed", "new" } } do
      local iso, expect = case[1], case[2]
      assert(cli:put("snap/a", "a"))
      assert(cli:put("snap/b", "old"))
      local seen
      assert(concurrency.new_stm(cli, function(stm)
        stm:get("snap/a")
        if not seen then assert(cli:put("snap/b", "new")) end
        seen = seen or stm:get("snap/b")
      end, { isolation = iso }))
      assert.equal(expect, seen, iso)
    end
  end)

  it("get, put, del and rev inside a transaction", function()
    assert(cli:put("ops/a", "1"))
    assert(cli:delete("ops/missing"))
    local rev_a = assert(cli:get("ops/a")).kvs[1].mod_revision
    local got = {}
    local res = assert(concurrency.new_stm(cli, function(stm)
      got.missing = stm:get("ops/missing")
      got.rev_missing = stm:rev("ops/missing")
      got.a = stm:get("ops/a")
      got.rev_a = stm:rev("ops/a")
      stm:put("ops/b", "2")
      got.b = stm:get("ops/b") -- reads its own write
      stm:del("ops/a")
      got.a_after = stm:get("ops/a")
    end, { prefetch = { "ops/a", "ops/b" } }))
    assert.is_true(res.succeeded)
    assert.same({ a = "1", rev_a = rev_a, rev_missing = 0, b = "2" }, got)
    assert.equal(0, count(cli, "ops/a"))
    assert.equal("2", assert(cli:get("ops/b")).kvs[1].value)
  end)

  it("an error raised inside fn aborts without committing and is returned", function()
    local res, err, code = concurrency.new_stm(cli, function(stm)
      stm:put("ab/x", "1")
      error("insufficient funds", 0)
    end)
    assert.is_nil(res)
    assert.equal("insufficient funds", err)
    assert.equal("aborted", code)
    assert.equal(0, count(cli, "ab/x"))
    local obj = { reason = "x" }
    assert.same({ nil, obj, "aborted" }, { concurrency.new_stm(cli, function() error(obj) end) })
    -- a failed request inside fn ends it with that failure
    local other = assert(etcd.new { endpoints = cli:endpoints() })
    assert.same({ nil, "etcd: client is closed", "closed" }, { concurrency.new_stm(other, function(stm)
      other:close()
      stm:get("ab/x")
      error("not reached")
    end) })
  end)

  it("rejects misuse", function()
    assert.has_error(function() concurrency.new_stm(cli, "f") end,
      "concurrency.new_stm: bad argument #2 (fn): function expected, got string")
    assert.has_error(function() concurrency.new_stm(cli, function() end, { isolation = "snapshot" }) end)
    assert.has_error(function() concurrency.new_stm(cli, function() end, { prefetch = { 1 } }) end,
      "concurrency.new_stm: option 'prefetch'[1] must be a string")
    local _, err = concurrency.new_stm(cli, function(stm) stm:get() end)
    assert.matches("stm:get: bad argument #1", err)
  end)
end)

describe("concurrency with etcdctl (Go's package)", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  local function etcdctl(args)
    return ("ETCDCTL_API=3 timeout 60 etcdctl --endpoints=%s %s"):format(srv.endpoint, args)
  end

  it("while `etcdctl lock` holds NAME, try_lock says 'locked' and lock waits until etcdctl is done", function()
    local p = bg(etcdctl("lock ctl-lock -- sh -c 'echo held; sleep 1; echo done'"))
    assert.is_true(eventually(10, function() return p.output():find("held", 1, true) ~= nil end))
    local s = assert(concurrency.new_session(cli, { ttl = 10 }))
    local m = concurrency.new_mutex(s, "ctl-lock")
    assert.same({ nil, "etcd: mutex is locked by another session", "locked" }, { m:try_lock() })
    assert.is_true(m:lock(20 * slow))
    assert.matches("done", p.output())
    assert(m:unlock())
    p.stop()
    s:close()
  end)

  it("while our mutex holds NAME, `etcdctl lock NAME` waits until we unlock", function()
    local s = assert(concurrency.new_session(cli, { ttl = 10 }))
    local m = concurrency.new_mutex(s, "lua-lock")
    assert(m:lock())
    local p = bg(etcdctl("lock lua-lock -- echo got-it"))
    assert.is_true(eventually(10, function() return count(cli, "lua-lock/") == 2 end)) -- etcdctl is waiting
    etcd.sleep(0.3)
    assert.equal("", p.output())
    assert(m:unlock())
    assert.is_true(eventually(10, function() return p.output():find("got-it", 1, true) ~= nil end))
    p.stop()
    s:close()
  end)

  it("our election sees `etcdctl elect` as leader, and `etcdctl elect -l` observes ours", function()
    local p = bg(etcdctl("elect ctl-elect go-leader"))
    local s = assert(concurrency.new_session(cli, { ttl = 10 }))
    local e = concurrency.new_election(s, "ctl-elect")
    assert.is_true(eventually(10, function()
      local r = e:leader()
      return r and r.kvs[1].value == "go-leader"
    end))
    assert.same({ nil, "etcd: e:campaign did not finish within 0.3s", "timeout" }, { e:campaign("lua", 0.3) })
    p.stop() -- etcdctl resigns on SIGTERM
    assert.is_true(e:campaign("lua-leader", 10 * slow))
    local l = bg(etcdctl("elect -l ctl-elect"))
    assert.is_true(eventually(10, function() return l.output():find("lua-leader", 1, true) ~= nil end))
    assert.is_truthy(l.output():find(concurrency.key_of("ctl-elect/", s:lease()), 1, true))
    assert(e:proclaim("lua-leader-2"))
    assert.is_true(eventually(10, function() return l.output():find("lua-leader-2", 1, true) ~= nil end))
    l.stop()
    assert(e:resign())
    s:close()
  end)
end)
