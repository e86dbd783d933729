--- examples/tour.lua: etcd's Go client walk-through ("Go 结合 etcd"), in Lua.
--
-- Every section of the Go document appears here under the same heading, and
-- runs against a real etcd checking its own results, so a broken client makes
-- this script fail (non-zero exit).
--
--   make demo                      starts a throw-away etcd and runs this file
--   ETCD_ENDPOINTS=127.0.0.1:2379 \
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 examples/tour.lua
--
-- Endpoints: the global ETCD_ENDPOINTS (set by examples/run.lua), else the
-- environment variable ETCD_ENDPOINTS, else "127.0.0.1:2379"; comma-separated.
-- The tour writes the keys foo, key1 .. key6 and tour/..., and deletes them at
-- the end. It never compacts, so it is safe against an etcd you care about.
local etcd = require "etcd"

local function endpoints()
  local s = rawget(_G, "ETCD_ENDPOINTS") or os.getenv("ETCD_ENDPOINTS") or "127.0.0.1:2379"
  local list = {}
  for ep in s:gmatch("[^,%s]+") do list[#list + 1] = ep end
  assert(#list > 0, "ETCD_ENDPOINTS lists no endpoint")
  return list
end

local function section(title)
  print()
  print("== " .. title)
end

-- A call's result, or an error that shows etcd's message and the error code.
local function must(res, msg, code)
  if res == nil then error(("etcd call failed: %s [%s]"):format(tostring(msg), tostring(code)), 2) end
  return res
end

local function value_of(cli, key)
  local kv = must(cli:get(key)).kvs[1]
  return kv and kv.value
end

local EP = endpoints()

-- ---------------------------------------------------------------------------
section "1. connect"

-- Go: clientv3.New(clientv3.Config{Endpoints: ..., DialTimeout: 3 * time.Second})
-- `<close>` closes the client when this scope ends (Go: defer cli.Close()).
local cli <close> = must(etcd.new { endpoints = EP, dial_timeout = 3 })
print("connected to " .. table.concat(cli:endpoints(), ", "))

-- A header carries etcd's uint64 ids as Lua integers (maybe negative): %x shows
-- them the way etcdctl does.
local h = must(cli:get("foo")).header
print(("cluster %x, member %x, revision %d"):format(h.cluster_id, h.member_id, h.revision))

do -- Go's connect(): New, then Close
  local c = must(etcd.new { endpoints = EP, dial_timeout = 3 })
  c:close()
  c:close() -- closing twice is fine
  local res, msg, code = c:get("foo")
  assert(res == nil and code == "closed", "a closed client must say so")
  print(("after close: %s [%s]"):format(msg, code))
end

section "1. connect with TLS and user/password"
-- The throw-away etcd of `make demo` is plaintext, so TLS is only shown here;
-- spec/12-tls_spec.lua runs it against an etcd on https:
--   etcd.new { endpoints = { "https://10.0.0.1:2379" }, dial_timeout = 3,
--              tls = { ca = "/tmp/ca.pem", cert = "/tmp/cert.pem", key = "/tmp/key.pem" },
--              user = "root", password = "root" }
-- A user and password are shown for real in section 4, once auth is on.
print("(TLS: shown in comments; the demo's etcd is plaintext. user/password: see 4.)")

-- ---------------------------------------------------------------------------
section "2.1 put/get/delete"

must(cli:put("foo", "1")) -- etcdctl put foo 1

local res = must(cli:get("foo", { prefix = true })) -- etcdctl get foo --prefix
for _, kv in ipairs(res.kvs) do
  print(("get %s => %s"):format(kv.key, kv.value))
end
assert(res.kvs[1].key == "foo" and res.kvs[1].value == "1", "get foo --prefix must find foo => 1")

local del = must(cli:delete("foo")) -- etcdctl del foo
print(("deleted %d key(s)"):format(del.deleted))
assert(del.deleted == 1)

-- A missing key is not an error: kvs is empty.
res = must(cli:get("foo"))
assert(#res.kvs == 0 and res.count == 0)
print("get foo after delete: no error, #kvs = 0")

-- ---------------------------------------------------------------------------
section "2.2 txn"

must(cli:put("foo", "xyz"))

local function txn_foo()
  return must(cli:txn {
    -- txn value comparisons are lexical
    compare = { etcd.compare.value("foo", ">", "abc") },
    success = { etcd.op.put("foo", "XYZ"), etcd.op.get("foo") },
    failure = { etcd.op.put("foo", "ABC") },
  })
end

-- "xyz" > "abc": the success branch runs
local t = txn_foo()
print(("succeeded = %s, foo => %s"):format(t.succeeded, value_of(cli, "foo")))
assert(t.succeeded == true and value_of(cli, "foo") == "XYZ")
-- each response is shaped like the matching method's result
print(("responses[2] (the get inside the txn): foo => %s"):format(t.responses[2].kvs[1].value))
assert(#t.responses == 2 and t.responses[2].kvs[1].value == "XYZ")

-- now "XYZ" > "abc" is false (upper case sorts first): the failure branch runs
t = txn_foo()
print(("succeeded = %s, foo => %s"):format(t.succeeded, value_of(cli, "foo")))
assert(t.succeeded == false and value_of(cli, "foo") == "ABC")

-- ---------------------------------------------------------------------------
section "2.3 batch (Do)"

local ops = {
  etcd.op.put("key1", "123"),
  etcd.op.get("key1"),
  etcd.op.put("key2", "456"),
}

-- Go: for _, op := range ops { cli.Do(ctx, op) }
for _, op in ipairs(ops) do
  local r = must(cli:exec(op))
  print(("exec %s -> revision %d"):format(tostring(op), r.header.revision))
end
assert(must(cli:exec(ops[2])).kvs[1].value == "123")

-- the same, in one call: results in order
local results = must(cli:batch(ops))
assert(#results == 3 and results[2].kvs[1].value == "123")
print(("batch: %d results, key1 => %s"):format(#results, results[2].kvs[1].value))

-- atomic: one txn, so every op sees the same revision
results = must(cli:batch(ops, { atomic = true }))
assert(#results == 3 and results[2].kvs[1].value == "123")
assert(results[1].header.revision == results[3].header.revision)
print(("atomic batch: %d results, all at revision %d"):format(#results, results[1].header.revision))

-- A failing op stops a batch: the ops before it were applied, later ones not
-- sent. The lease below does not exist.
local NO_LEASE = 0x7e7e7e7e7e7e
local r, msg, code, done = cli:batch {
  etcd.op.put("key3", "789"),
  etcd.op.put("key4", "x", { lease = NO_LEASE }),
  etcd.op.put("key5", "never"),
}
assert(r == nil and code == "lease_not_found" and #done == 1)
assert(value_of(cli, "key3") == "789" and value_of(cli, "key5") == nil)
print(("batch stopped at op 2: %s [%s]; %d op applied before it"):format(msg, code, #done))

-- An atomic batch applies all or nothing.
r, msg, code = cli:batch({
  etcd.op.put("key6", "never"),
  etcd.op.put("key4", "x", { lease = NO_LEASE }),
}, { atomic = true })
assert(r == nil and code == "lease_not_found" and value_of(cli, "key6") == nil)
print(("atomic batch failed as a whole: %s [%s]; key6 not written"):format(msg, code))

-- ---------------------------------------------------------------------------
section "2.4 watch"
do
  -- The Go walk-through writes from a goroutine every second; here the writes
  -- come first and the watch, created before them, delivers them in order.
  local w <close> = assert(cli:watch("foo", { prefix = true }))
  -- local w = cli:watch("foo")                           -- one key
  -- local w = cli:watch("foo", { range_end = "foo4" })  -- [foo, foo4)
  local keys = { "foo", "foo1", "foo2", "foo3", "foo4" }
  for _, k in ipairs(keys) do assert(cli:put(k, os.date("!%H:%M:%S"))) end
  local n = 0
  for ev in w:events() do
    print(("%s %q: %q"):format(ev.type, ev.kv.key, ev.kv.value))
    n = n + 1
    assert(ev.kv.key == keys[n])
    if n == #keys then break end
  end
  for _, k in ipairs(keys) do assert(cli:delete(k)) end
end

section "2.4 watch with progress notify"
do
  local w <close> = assert(cli:watch("foo", { progress_notify = true }))
  -- etcd sends progress notifications on its own timer (10 minutes by
  -- default); request_progress asks for one now.
  assert(cli:request_progress())
  local wresp = assert(w:next(10))
  print("wresp.header.revision:", wresp.header.revision)
  print("wresp.progress_notify:", wresp.progress_notify)
  assert(wresp.progress_notify and wresp.header.revision > 0)
end

-- ---------------------------------------------------------------------------
section "3.1 lease: grant"
-- etcdctl lease grant 5; the key goes when the lease ends
local lease = assert(cli:grant(5))
assert(cli:put("foo", "bar", { lease = lease.id }))
print(("granted lease %x (ttl %d s); foo is attached to it"):format(lease.id, lease.ttl))

section "3.2 lease: revoke"
local l2 = assert(cli:grant(5))
assert(cli:put("foo-revoked", "bar", { lease = l2.id }))
assert(cli:revoke(l2.id))
assert(assert(cli:get("foo-revoked")).count == 0)
print(("revoked lease %x: its key foo-revoked is gone"):format(l2.id))

section "3.3 lease: keep-alive and keep-alive once"
do
  -- renewed by the client's pump thread until closed, while Lua does anything
  local ka <close> = assert(cli:keepalive(lease.id))
  local ka1 = assert(ka:next(5))
  print("keepalive: ttl", ka1.ttl)
end
local kaa = assert(cli:keepalive_once(lease.id))
assert(kaa.id == lease.id and kaa.ttl == 5)
print("keepalive_once: ttl", kaa.ttl)

section "3.4 lease: leases and time-to-live"
local mine = {}
for _, ttl in ipairs { 5, 10, 15 } do mine[assert(cli:grant(ttl)).id] = true end
for _, l in ipairs(assert(cli:leases()).leases) do
  if mine[l.id] then
    local info = assert(cli:time_to_live(l.id, { keys = true }))
    print(("lease: %d, ttl: %d, grantedTTL: %d"):format(info.id, info.ttl, info.granted_ttl))
    assert(cli:revoke(l.id))
  end
end
assert(cli:revoke(lease.id))

-- ---------------------------------------------------------------------------
section "4. auth"
do
  -- the Go walk-through's roles, users and permissions
  assert(cli:role_add("root"))
  assert(cli:user_add("root", "123"))
  assert(cli:user_grant_role("root", "root"))
  assert(cli:user_change_password("root", "123"))
  assert(cli:role_add("guest"))
  assert(cli:user_add("xingyys", ""))
  assert(cli:user_grant_role("xingyys", "guest"))
  assert(cli:user_change_password("xingyys", "123"))
  -- read-write on [foo, zoo)
  assert(cli:role_grant_permission("guest", "foo", "zoo", "readwrite"))
  assert(cli:auth_enable())
  local root <close> = must(etcd.new { endpoints = EP, dial_timeout = 3, user = "root", password = "123" })
  print("auth enabled; roles: " .. table.concat(assert(root:role_list()).roles, ", "))

  local authCli <close> = must(etcd.new { endpoints = EP, dial_timeout = 3, user = "xingyys", password = "123" })
  assert(authCli:put("foo", "1"))
  for _, kv in ipairs(assert(authCli:get("foo")).kvs) do print(("%s => %q"):format(kv.key, kv.value)) end
  -- zoo1 is outside [foo, zoo): the txn is denied
  local tres, tmsg, tcode = authCli:txn {
    compare = { etcd.compare.value("zoo1", ">", "abc") },
    success = { etcd.op.put("zoo1", "XYZ") },
    failure = { etcd.op.put("zoo1", "ABC") },
  }
  print("txn on zoo1:", tres, tmsg, tcode)
  assert(tres == nil and tcode == "PERMISSION_DENIED")
  local _, m2, c2 = etcd.new { endpoints = EP, user = "xingyys", password = "wrong" }
  print("wrong password:", m2, c2)
  assert(c2 == "auth_failed")

  -- undo it all, as root
  assert(root:delete("foo"))
  assert(root:auth_disable())
  for _, u in ipairs { "xingyys", "root" } do assert(cli:user_delete(u)) end
  for _, role in ipairs { "guest", "root" } do assert(cli:role_delete(role)) end
  print("auth disabled; users and roles removed")
end

section "5. cluster"
for _, member in ipairs(assert(cli:member_list()).members) do
  print(("ID: %x | Name: %s | ClientURL: %s | PeerURL: %s"):format(member.id, member.name,
    table.concat(member.client_urls, ","), table.concat(member.peer_urls, ",")))
end
-- cli:member_add({ "http://10.0.0.2:2380" }), cli:member_remove(id),
-- cli:member_update(id, { peer urls }) change the membership.
local st = assert(cli:status(cli:endpoints()[1]))
print(("status of %s: etcd %s, leader %x, db %d bytes"):format(cli:endpoints()[1], st.version, st.leader, st.db_size))

section "6.0 many things at once: coroutines (Go: goroutines)"
-- Go runs the walk-through's lock and election examples in goroutines. In Lua,
-- etcd.spawn starts a coroutine in which every etcd call yields instead of
-- blocking; etcd.run() drives them all until they have finished.
do
  local w <close> = must(cli:watch("tour/jobs/", { prefix = true }))
  local consumer = etcd.spawn(function()
    local seen = 0
    for _ in w:events() do
      seen = seen + 1
      if seen == 16 then return seen end
    end
  end)
  for i = 1, 16 do
    etcd.spawn(function() must(cli:put(("tour/jobs/%02d"):format(i), "job")) end)
  end
  etcd.run() -- the 16 puts were in flight at once, on one connection
  local ok, seen = consumer:join()
  assert(ok and seen == 16)
  print(("16 puts from 16 coroutines; a watching coroutine saw all %d events"):format(seen))
  -- the first of several things, as Go's select
  local tick = etcd.spawn(function() etcd.sleep(0.05) return "tick" end)
  local ev = etcd.spawn(function() return w:next() end)
  local which, _, what = etcd.first(tick, ev)
  print(("etcd.first: the %s came first"):format(which == 1 and what or "event"))
  w:close() -- ends the waiting one
  etcd.run()
end

-- Go's concurrency package: the same keys and rules, so these locks and
-- elections exclude Go programs and `etcdctl lock` / `etcdctl elect`.
local concurrency = require "etcd.concurrency"

section "6.1 concurrency: lock and try-lock"
do
  -- Go: concurrency.NewSession(cli): a lease kept alive in the background;
  -- `<close>` revokes it at the end of the scope (Go: defer s1.Close())
  local s1 <close> = must(concurrency.new_session(cli))
  local m1 = concurrency.new_mutex(s1, "/tour/lock")
  local s2 <close> = must(concurrency.new_session(cli))
  local m2 = concurrency.new_mutex(s2, "/tour/lock")

  must(m1:lock())
  print("acquired lock for s1")
  local order = {}
  -- Go: go func() { m2.Lock(ctx) }(): it waits until s1 unlocks
  local m2_locked = etcd.spawn(function()
    must(m2:lock())
    order[#order + 1] = "s2"
    print("acquired lock for s2")
  end)
  etcd.spawn(function()
    etcd.sleep(0.1)
    must(m1:unlock())
    order[#order + 1] = "s1"
    print("released lock for s1")
  end)
  etcd.run()
  assert(m2_locked:join() and order[1] == "s1" and order[2] == "s2")
  must(m2:unlock())

  -- try-lock (Go: m2.TryLock(ctx) == concurrency.ErrLocked)
  must(m1:lock())
  print("acquired lock for s1")
  local ok, _, why = m2:try_lock()
  assert(not ok and why == "locked")
  print("cannot acquire lock for s2, as already locked in another session")
  must(m1:unlock())
  print("released lock for s1")
  must(m2:try_lock())
  print("acquired lock for s2")
  must(m2:unlock())
end

section "6.2 concurrency: election"
do
  local s1 <close> = must(concurrency.new_session(cli))
  local e1 = concurrency.new_election(s1, "/tour/my-election/")
  local s2 <close> = must(concurrency.new_session(cli))
  local e2 = concurrency.new_election(s2, "/tour/my-election/")
  -- competing candidates, with e1 initially losing to e2
  local c1 = etcd.spawn(function()
    etcd.sleep(0.3) -- delay candidacy so e2 wins first
    must(e1:campaign("e1"))
    return e1
  end)
  local c2 = etcd.spawn(function()
    must(e2:campaign("e2"))
    return e2
  end)
  -- Go: e := <-electc
  local _, _, e = etcd.first(c1, c2)
  local obs <close> = e:observe()
  local first_value = must(obs:next()).kvs[1].value
  assert(first_value == "e2")
  print("completed first election with " .. first_value)
  -- resign so the next candidate can be elected
  must(e:resign())
  local _, second = c1:join()
  local second_value = must(second:leader()).kvs[1].value
  assert(second_value == "e1")
  print("completed second election with " .. second_value)
  must(second:resign())
end

section "6.3 concurrency: STM"
do
  -- set up "accounts"
  local total_accounts = 5
  for i = 0, total_accounts - 1 do must(cli:put(("tour/accts/%d"):format(i), "100")) end
  local function exchange(stm)
    local from, to = math.random(0, total_accounts - 1), math.random(0, total_accounts - 1)
    if from == to then return end -- nothing to do
    local from_k, to_k = ("tour/accts/%d"):format(from), ("tour/accts/%d"):format(to)
    local from_v, to_v = tonumber(stm:get(from_k)), tonumber(stm:get(to_k))
    local xfer = from_v // 2
    stm:put(from_k, tostring(from_v - xfer))
    stm:put(to_k, tostring(to_v + xfer))
  end
  -- concurrently exchange values between accounts; on a conflict new_stm
  -- runs exchange again, as Go's NewSTM does
  for _ = 1, 10 do
    etcd.spawn(function() must(concurrency.new_stm(cli, exchange)) end)
  end
  etcd.run()
  -- confirm account sum matches sum from beginning
  local sum = 0
  for _, kv in ipairs(must(cli:get("tour/accts/", { prefix = true })).kvs) do sum = sum + tonumber(kv.value) end
  assert(sum == 500)
  print("account sum is " .. sum)
end

section "6.4 beyond the Go walk-through: Go's recipes (queue)"
do
  -- etcd's Go contrib/recipes, with Go's key layouts: new_queue,
  -- new_priority_queue, new_barrier, new_double_barrier, new_rwmutex
  local recipes = require "etcd.recipes"
  local q = recipes.new_queue(cli, "tour/queue")
  local consumer = etcd.spawn(function()
    local got = {}
    for _ = 1, 3 do got[#got + 1] = must(q:dequeue(5)) end -- waits for items
    return table.concat(got, " ")
  end)
  etcd.spawn(function()
    for i = 1, 3 do must(q:enqueue("job" .. i)) end
  end)
  etcd.run()
  local _, got = consumer:join()
  print("dequeued: " .. got)
end

-- ---------------------------------------------------------------------------
section "7. beyond the Go walk-through: namespace, timeouts, errors, binary keys"

-- namespace: a prefix added to every key sent and removed from every key returned
do
  local app <close> = must(etcd.new { endpoints = EP, namespace = "tour/app/" })
  must(app:put("color", "blue"))
  local all = must(app:get("", { prefix = true })) -- every key of the namespace
  assert(#all.kvs == 1 and all.kvs[1].key == "color" and all.kvs[1].value == "blue")
  assert(value_of(cli, "tour/app/color") == "blue")
  print('namespace "tour/app/": app sees "color", a plain client sees "tour/app/color"')
end

-- timeouts: the client's default (10 s) or per call
must(cli:get("key1", { timeout = 2 }))
print("get with { timeout = 2 }: ok")
do
  -- dial_timeout = 0: do not wait for a connection in etcd.new; the call then
  -- waits for one until its deadline.
  local lost <close> = must(etcd.new { endpoints = { "127.0.0.1:1" }, dial_timeout = 0, timeout = 0.5 })
  local res2, msg2, code2 = lost:get("foo")
  assert(res2 == nil and code2 == "timeout")
  print(("unreachable endpoint, timeout 0.5 s: %s [%s]"):format(msg2, code2))

  local none, msg3, code3 = etcd.new { endpoints = { "127.0.0.1:1" }, dial_timeout = 0.5 }
  assert(none == nil and code3 == "UNAVAILABLE")
  print(("etcd.new with dial_timeout 0.5 s: %s [%s]"):format(msg3, code3))
end

-- errors: misuse raises, naming the option; run-time failures return nil, msg, code
do
  local ok, err = pcall(cli.get, cli, "foo", { prefx = true })
  assert(not ok and err:find("unknown option 'prefx'", 1, true))
  print("misuse raises: " .. err)

  local now = must(cli:get("key1")).header.revision
  local res2, msg2, code2 = cli:get("key1", { revision = now + 1000 })
  assert(res2 == nil and code2 == "future_revision")
  print(("a revision ahead of the store: %s [%s]"):format(msg2, code2))
end

-- keys and values are binary-safe
do
  local key, val = "tour/bin/\0\255", "\0\1\2\255"
  must(cli:put(key, val))
  local got = must(cli:get("tour/bin/", { prefix = true })).kvs[1]
  assert(got.key == key and got.value == val)
  print(("binary key of %d bytes and value of %d bytes round-trip"):format(#got.key, #got.value))
end

-- ---------------------------------------------------------------------------
section "clean up"
local removed = 0
for _, k in ipairs { "foo", "key1", "key2", "key3", "key4", "key5", "key6" } do
  removed = removed + must(cli:delete(k)).deleted
end
removed = removed + must(cli:delete("tour/", { prefix = true })).deleted
print(("deleted %d key(s); tour done"):format(removed))
