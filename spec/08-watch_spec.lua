-- cli:watch: one shared Watch stream per client, against a real etcd (started
-- by helpers with --experimental-watch-progress-notify-interval=1s).
--
-- cli:watch is expected to return once etcd has confirmed the watch (as Go's
-- Watch does), so a put made right after it is seen without a start_revision.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

local eventually = helpers.eventually

-- "PUT key=value" / "DELETE key" (binary-safe, %q for anything unprintable).
local function sig(ev, with_rev)
  local function s(x)
    if type(x) ~= "string" then return tostring(x) end
    if x:find("[^%w%p ]") then return ("%q"):format(x) end
    return x
  end
  local kv = ev.kv or {}
  local out = tostring(ev.type) .. " " .. s(kv.key)
  if ev.type ~= "DELETE" then out = out .. "=" .. s(kv.value) end
  if with_rev then out = out .. "@" .. tostring(kv.mod_revision) end
  return out
end

local function shape(evs, with_rev)
  local t = {}
  for i, ev in ipairs(evs) do t[i] = sig(ev, with_rev) end
  return t
end

-- Events from w's responses until at least n came (responses without events,
-- e.g. progress notifications, are skipped); fails saying what came back.
local function collect(w, n, limit)
  local evs = {}
  local deadline = core.now() + (limit or 5)
  while #evs < n do
    local left = deadline - core.now()
    local r, msg, code
    if left > 0 then
      r, msg, code = w:next(left)
    else
      msg, code = "(spec deadline)", "timeout"
    end
    if not r then
      error(("expected %d events, got %d {%s}, then w:next gave nil, %s, %s"):format(
        n, #evs, table.concat(shape(evs, true), ", "), tostring(msg), tostring(code)), 2)
    end
    assert.is_table(r.events, "a response without an events list")
    for _, ev in ipairs(r.events) do evs[#evs + 1] = ev end
  end
  return evs
end

-- Events until one with mod_revision >= rev arrived.
local function collect_until(w, rev, limit)
  local evs = {}
  local deadline = core.now() + (limit or 10)
  while not (evs[#evs] and evs[#evs].kv.mod_revision >= rev) do
    local left = deadline - core.now()
    local r, msg, code
    if left > 0 then r, msg, code = w:next(left) else msg, code = "(spec deadline)", "timeout" end
    if not r then
      error(("waiting for revision %d: got %d events (last %s), then w:next gave nil, %s, %s"):format(
        rev, #evs, evs[#evs] and sig(evs[#evs], true) or "none", tostring(msg), tostring(code)), 2)
    end
    for _, ev in ipairs(r.events) do evs[#evs + 1] = ev end
  end
  return evs
end

-- The next response that is not a plain event response.
local function next_progress(w, limit)
  local deadline = core.now() + (limit or 3)
  while true do
    local left = deadline - core.now()
    if left <= 0 then error("no progress response within " .. (limit or 3) .. " s", 2) end
    local r, msg, code = w:next(left)
    if not r then
      error(("waiting for a progress response: w:next gave nil, %s, %s"):format(tostring(msg), tostring(code)), 2)
    end
    if r.progress_notify then return r end
    assert.is_true(#r.events > 0, "a response that is neither an event nor progress_notify")
  end
end

local rss_kb = require("testsupport").rss_kb -- VmRSS of this process, KiB

local function rev_of(res) return res.header.revision end

describe("watch", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("the seed's watch with prefix: every put under the prefix, in order, with its value", function()
    local wp = helpers.defer(assert(cli:watch("foo", { prefix = true })))
    local wr = helpers.defer(assert(cli:watch("foo", { range_end = "foo4" })))
    local wk = helpers.defer(assert(cli:watch("foo")))
    local revs = {}
    for i, k in ipairs { "foo", "foo1", "foo2", "foo3", "foo4" } do
      revs[i] = rev_of(assert(cli:put(k, "bar" .. i)))
    end
    assert(cli:put("fo", "outside"))   -- not under the prefix
    assert(cli:put("fop", "outside"))  -- nor this one
    local last = rev_of(assert(cli:put("foo0", "sentinel")))
    local evs = collect(wp, 6)
    assert.same({ "PUT foo=bar1", "PUT foo1=bar2", "PUT foo2=bar3", "PUT foo3=bar4", "PUT foo4=bar5",
      "PUT foo0=sentinel" }, shape(evs))
    for i = 1, 5 do
      local kv = evs[i].kv
      assert.equal(revs[i], kv.mod_revision)
      assert.equal(revs[i], kv.create_revision)
      assert.equal(1, kv.version)
      assert.equal(etcd.id(0), kv.lease)
      assert.is_nil(evs[i].prev_kv) -- not asked for
    end
    assert.equal(last, evs[6].kv.mod_revision)
    -- range_end "foo4": foo4 itself is outside [foo, foo4)
    assert.same({ "PUT foo=bar1", "PUT foo1=bar2", "PUT foo2=bar3", "PUT foo3=bar4", "PUT foo0=sentinel" },
      shape(collect(wr, 5)))
    -- a plain watch: that key only
    assert(cli:put("foo", "again"))
    assert.same({ "PUT foo=bar1", "PUT foo=again" }, shape(collect(wk, 2)))
  end)

  it("a response carries header, watch_id and events; not canceled, not progress", function()
    local w = helpers.defer(assert(cli:watch("shape/k")))
    local p = assert(cli:put("shape/k", "v"))
    local r = assert(w:next(5))
    assert.is_table(r.header)
    assert.equal(p.header.revision, r.header.revision)
    assert.is_true(helpers.is_id(r.header.cluster_id))
    assert.is_number(r.watch_id)
    assert.equal(false, r.canceled)
    assert.is_nil(r.progress_notify)
    assert.equal(1, #r.events)
    assert.equal("PUT", r.events[1].type)
    assert.equal("shape/k", r.events[1].kv.key)
  end)

  it("prev_kv: PUT and DELETE events carry the previous key-value", function()
    local w = helpers.defer(assert(cli:watch("pk/a", { prev_kv = true })))
    local plain = helpers.defer(assert(cli:watch("pk/a")))
    local p1 = assert(cli:put("pk/a", "v1"))
    local p2 = assert(cli:put("pk/a", "v2"))
    local d = assert(cli:delete("pk/a"))
    local evs = collect(w, 3)
    assert.same({ "PUT pk/a=v1", "PUT pk/a=v2", "DELETE pk/a" }, shape(evs))
    assert.is_nil(evs[1].prev_kv) -- the key did not exist
    assert.equal("pk/a", evs[2].prev_kv.key)
    assert.equal("v1", evs[2].prev_kv.value)
    assert.equal(rev_of(p1), evs[2].prev_kv.mod_revision)
    -- the DELETE: kv has the key and the revision of the deletion; prev_kv the last value
    assert.equal("pk/a", evs[3].kv.key)
    assert.equal(rev_of(d), evs[3].kv.mod_revision)
    assert.equal("pk/a", evs[3].prev_kv.key)
    assert.equal("v2", evs[3].prev_kv.value)
    assert.equal(rev_of(p2), evs[3].prev_kv.mod_revision)
    assert.equal(2, evs[3].prev_kv.version)
    -- without the option there is none
    local pe = collect(plain, 3)
    assert.same({ "PUT pk/a=v1", "PUT pk/a=v2", "DELETE pk/a" }, shape(pe))
    for i = 1, 3 do assert.is_nil(pe[i].prev_kv) end
  end)

  it("start_revision replays history, in order, at the exact revisions, then goes on live", function()
    local r1 = rev_of(assert(cli:put("h/a", "1")))
    local r2 = rev_of(assert(cli:put("h/b", "2")))
    assert(cli:put("hx", "outside"))
    local r3 = rev_of(assert(cli:put("h/a", "3")))
    local r4 = rev_of(assert(cli:delete("h/b")))
    local w = helpers.defer(assert(cli:watch("h/", { prefix = true, start_revision = r1 })))
    assert.same({ "PUT h/a=1@" .. r1, "PUT h/b=2@" .. r2, "PUT h/a=3@" .. r3, "DELETE h/b@" .. r4 },
      shape(collect(w, 4), true))
    local r5 = rev_of(assert(cli:put("h/c", "live")))
    assert.same({ "PUT h/c=live@" .. r5 }, shape(collect(w, 1), true))
    -- from a revision in the middle
    local w2 = helpers.defer(assert(cli:watch("h/", { prefix = true, start_revision = r2 })))
    assert.same({ "PUT h/b=2@" .. r2, "PUT h/a=3@" .. r3, "DELETE h/b@" .. r4, "PUT h/c=live@" .. r5 },
      shape(collect(w2, 4), true))
  end)

  it("filters: noput sees only deletes, nodelete only puts, both: nothing", function()
    local np = helpers.defer(assert(cli:watch("flt/", { prefix = true, filters = { "noput" } })))
    local nd = helpers.defer(assert(cli:watch("flt/", { prefix = true, filters = { "nodelete" } })))
    local none = helpers.defer(assert(cli:watch("flt/", { prefix = true, filters = { "noput", "nodelete" } })))
    assert(cli:put("flt/a", "1"))
    assert(cli:delete("flt/a"))
    assert(cli:put("flt/b", "2"))
    assert(cli:delete("flt/b"))
    assert.same({ "DELETE flt/a", "DELETE flt/b" }, shape(collect(np, 2)))
    assert.same({ "PUT flt/a=1", "PUT flt/b=2" }, shape(collect(nd, 2)))
    local r, msg, code = none:next(0.3)
    assert.is_nil(r, "a watch filtering out both got something")
    assert.equal("timeout", code, msg)
  end)

  it("from_key: every key from the given one on", function()
    local w = helpers.defer(assert(cli:watch("fk/m", { from_key = true })))
    assert(cli:put("fk/a", "before"))
    assert(cli:put("fk/m", "1"))
    assert(cli:put("fk/z", "2"))
    assert(cli:put("fl", "3"))
    assert(cli:put("fk/b", "before"))
    assert(cli:put("~fk", "4"))
    assert.same({ "PUT fk/m=1", "PUT fk/z=2", "PUT fl=3", "PUT ~fk=4" }, shape(collect(w, 4)))
  end)

  it("fragment: a response over the server's request limit comes back whole", function()
    local big = string.rep("F", 400 * 1024) -- 10 x 400 KiB: above the 1.5 MiB default
    local revs = {}
    for i = 1, 10 do revs[i] = rev_of(assert(cli:put(("frag/%02d"):format(i), i .. big))) end
    -- one response from history: etcd sends it in fragments
    local w = helpers.defer(assert(cli:watch("frag/", { prefix = true, fragment = true, start_revision = revs[1] })))
    local r = assert(w:next(10))
    assert.equal(10, #r.events)
    for i = 1, 10 do
      assert.equal(("frag/%02d"):format(i), r.events[i].kv.key)
      assert.is_true(r.events[i].kv.value == i .. big, "value of event " .. i)
      assert.equal(revs[i], r.events[i].kv.mod_revision)
    end
  end)

  it("progress_notify: the seed's watch with progress notify gets a progress response when idle #novalgrind", function()
    local p = assert(cli:put("pn/x", "1"))
    local w = helpers.defer(assert(cli:watch("pn/", { prefix = true, progress_notify = true })))
    local t0 = core.now()
    local r = assert(w:next(3))
    assert.is_true(r.progress_notify, "first response is not a progress notification")
    assert.same({}, r.events)
    assert.is_true(r.header.revision >= rev_of(p), "progress revision " .. r.header.revision)
    assert.is_true(core.now() - t0 < 3)
    -- after an event, the next progress response is at least at its revision
    local p2 = assert(cli:put("pn/y", "2"))
    assert.same({ "PUT pn/y=2" }, shape(collect(w, 1)))
    local r2 = next_progress(w, 3)
    assert.same({}, r2.events)
    assert.is_true(r2.header.revision >= rev_of(p2), "progress revision " .. r2.header.revision)
    -- without the option: no progress responses
    local quiet = helpers.defer(assert(cli:watch("pn/", { prefix = true })))
    local r3, msg, code = quiet:next(1.6)
    assert.is_nil(r3, "a watch without progress_notify got a response")
    assert.equal("timeout", code, msg)
  end)

  it("request_progress: every watch of the client gets a progress response", function()
    local ws = {
      assert(cli:watch("rp/a")),
      assert(cli:watch("rp/b", { prefix = true })),
      assert(cli:watch("rp/c", { from_key = true, filters = { "noput" } })),
    }
    local p = assert(cli:put("rp/zz-unwatched-put", "x")) -- only the from_key watch could see it: it filters puts
    assert.is_true(cli:request_progress())
    for i, w in ipairs(ws) do
      local r = w:next(3)
      assert.is_table(r, "watch " .. i .. " got no progress response")
      assert.is_true(r.progress_notify, "watch " .. i)
      assert.same({}, r.events)
      assert.is_true(r.header.revision >= rev_of(p), "watch " .. i .. ": progress revision " .. r.header.revision)
    end
    for _, w in ipairs(ws) do w:close() end
  end)

  it("200 watches on one client share one stream, each sees its own event", function()
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    local ws = {}
    for i = 1, 200 do ws[i] = assert(c2:watch(("many/%03d"):format(i))) end
    assert.equal(1, c2._core:_nstreams())
    for i = 1, 200 do assert(cli:put(("many/%03d"):format(i), "v" .. i)) end
    for i = 1, 200 do
      assert.same({ ("PUT many/%03d=v%d"):format(i, i) }, shape(collect(ws[i], 1)))
    end
    -- every event has arrived by now; none went to another watch
    for i = 1, 200 do
      local r, msg, code = ws[i]:next(0)
      assert.is_nil(r, "watch " .. i .. " got a second response")
      assert.equal("timeout", code, msg)
    end
    assert.equal(1, c2._core:_nstreams())
    for i = 1, 200 do ws[i]:close() end
    assert.is_true(eventually(2, function() return c2._core:_nstreams() == 0 end),
      "streams left: " .. c2._core:_nstreams())
    c2:close()
  end)

  it("next(timeout) returns 'timeout' when nothing came, and the watch stays usable #novalgrind", function()
    local w = helpers.defer(assert(cli:watch("to/k")))
    local t0 = core.now()
    local r, msg, code = w:next(0.2)
    local took = core.now() - t0
    assert.is_nil(r)
    assert.equal("timeout", code)
    assert.is_string(msg)
    assert.is_true(took >= 0.15 and took < 1, "took " .. took)
    local p = assert(cli:put("to/k", "after"))
    local evs = collect(w, 1)
    assert.same({ "PUT to/k=after@" .. rev_of(p) }, shape(evs, true))
    -- the watch's `timeout` option is the default wait of next()
    local w2 = helpers.defer(assert(cli:watch("to/k2", { timeout = 0.2 })))
    t0 = core.now()
    r, msg, code = w2:next()
    took = core.now() - t0
    assert.is_nil(r)
    assert.equal("timeout", code, msg)
    assert.is_true(took >= 0.15 and took < 1, "took " .. took)
  end)

  it("responses() and events() iterate, and end when the watch is closed", function()
    local w = assert(cli:watch("it/", { prefix = true, timeout = 5 }))
    assert(cli:put("it/a", "1"))
    assert(cli:put("it/b", "2"))
    local got = {}
    for r in w:responses() do
      assert.is_table(r.header)
      for _, ev in ipairs(r.events) do got[#got + 1] = sig(ev) end
      if #got >= 2 then w:close() end
    end
    assert.same({ "PUT it/a=1", "PUT it/b=2" }, got)
    local n = 0
    for _ in w:responses() do n = n + 1 end -- closed: ends at once
    for _ in w:events() do n = n + 1 end
    assert.equal(0, n)

    local w2 = assert(cli:watch("it/", { prefix = true, timeout = 5 }))
    assert(cli:put("it/c", "3"))
    assert(cli:delete("it/a"))
    got = {}
    for ev in w2:events() do
      got[#got + 1] = sig(ev)
      if #got == 2 then w2:cancel() end
    end
    assert.same({ "PUT it/c=3", "DELETE it/a" }, got)
  end)

  it("close/cancel: next says 'closed'; the stream goes when the last watch is gone", function()
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    local w1 = assert(c2:watch("cc/1"))
    local w2 = assert(c2:watch("cc/2"))
    assert.equal(1, c2._core:_nstreams())
    w1:close()
    w1:close()  -- idempotent
    w1:cancel()
    local r, msg, code = w1:next(0)
    assert.is_nil(r)
    assert.equal("closed", code)
    assert.is_string(msg)
    -- the other watch still works, and the closed one gets nothing
    assert(cli:put("cc/1", "x"))
    assert(cli:put("cc/2", "y"))
    assert.same({ "PUT cc/2=y" }, shape(collect(w2, 1)))
    r, msg, code = w1:next(0)
    assert.is_nil(r)
    assert.equal("closed", code, msg)
    assert.equal(1, c2._core:_nstreams())
    w2:cancel()
    r, msg, code = w2:next(0)
    assert.is_nil(r)
    assert.equal("closed", code, msg)
    assert.is_true(eventually(2, function() return c2._core:_nstreams() == 0 end),
      "streams left: " .. c2._core:_nstreams())

    -- <close>, then a new watch opens a stream again (closed at the end of
    -- the block as `local w3 <close>` would be)
    do
      local w3 = helpers.defer(assert(c2:watch("cc/3")))
      assert(cli:put("cc/3", "z"))
      assert.same({ "PUT cc/3=z" }, shape(collect(w3, 1)))
      assert.equal(1, c2._core:_nstreams())
      helpers.close_now(w3)
    end
    assert.is_true(eventually(2, function() return c2._core:_nstreams() == 0 end),
      "streams left after <close>: " .. c2._core:_nstreams())

    -- an abandoned watch is cancelled by the collector
    do
      local w4 = assert(c2:watch("cc/4")) -- luacheck: ignore 231
      assert.equal(1, c2._core:_nstreams())
      w4 = nil
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(eventually(2, function() return c2._core:_nstreams() == 0 end),
      "streams left after GC: " .. c2._core:_nstreams())
    c2:close()
  end)

  it("closing the client ends every watch with 'closed', promptly #novalgrind", function()
    local c2 = assert(etcd.new { endpoints = srv.endpoints })
    local w = assert(c2:watch("cl/k", { timeout = 5 }))
    local w2 = assert(c2:watch("cl/k2", { timeout = 5 }))
    assert(cli:put("cl/k", "1"))
    assert.same({ "PUT cl/k=1" }, shape(collect(w, 1)))
    c2:close()
    local t0 = core.now()
    local r, msg, code = w:next(5)
    assert.is_nil(r)
    assert.equal("closed", code, msg)
    assert.is_string(msg)
    assert.is_true(core.now() - t0 < 1, "took " .. (core.now() - t0))
    local ok, err = pcall(function() for _ in w2:events() do end end)
    assert.is_false(ok)
    assert.is_table(err, "events() raised " .. tostring(err))
    assert.equal("closed", err.code)
    assert.is_string(err.message)
    assert.equal(err.message, tostring(err))
    ok, err = pcall(function() for _ in w:responses() do end end)
    assert.is_false(ok)
    assert.equal("closed", err.code)
    w:close()
    w2:close()
    local w3, _, code3 = c2:watch("cl/k")
    assert.is_nil(w3)
    assert.equal("closed", code3)
    local ok2, _, code4 = c2:request_progress()
    assert.is_nil(ok2)
    assert.equal("closed", code4)
  end)

  it("a keyspace namespace applies to watches", function()
    local ns = assert(etcd.new { endpoints = srv.endpoints, namespace = "ns1/" })
    local all = helpers.defer(assert(ns:watch("", { prefix = true })))
    local one = helpers.defer(assert(ns:watch("a", { prev_kv = true })))
    local from = helpers.defer(assert(ns:watch("b", { from_key = true })))
    local raw = helpers.defer(assert(cli:watch("ns1/a")))
    assert(cli:put("ns1", "outside"))
    assert(cli:put("ns10", "outside")) -- just after the namespace
    assert(cli:put("ns1x", "outside"))
    local p1 = assert(ns:put("a", "1"))
    assert(cli:put("ns1/b", "2"))   -- inside, written without the namespace
    assert(ns:put("a", "3"))
    assert(ns:delete("b"))
    assert(cli:put("zzz-ns", "outside"))
    assert(ns:put("c", "end"))
    assert.same({ "PUT a=1", "PUT b=2", "PUT a=3", "DELETE b", "PUT c=end" }, shape(collect(all, 5)))
    local evs = collect(one, 2)
    assert.same({ "PUT a=1", "PUT a=3" }, shape(evs))
    assert.equal("a", evs[2].prev_kv.key)
    assert.equal("1", evs[2].prev_kv.value)
    assert.same({ "PUT b=2", "DELETE b", "PUT c=end" }, shape(collect(from, 3)))
    assert.same({ "PUT ns1/a=1", "PUT ns1/a=3" }, shape(collect(raw, 2)))
    -- history in the namespace
    local hist = helpers.defer(assert(ns:watch("", { prefix = true, start_revision = rev_of(p1) })))
    assert.same({ "PUT a=1", "PUT b=2", "PUT a=3", "DELETE b", "PUT c=end" }, shape(collect(hist, 5)))
    ns:close()
  end)

  it("keys and values are binary-safe in events (NUL, 0xFF)", function()
    local key, value = "bin/\0\255k\1", "\0\255v\0"
    local w = helpers.defer(assert(cli:watch(key)))
    local wp = helpers.defer(assert(cli:watch("bin/\0", { prefix = true })))
    local wf = helpers.defer(assert(cli:watch("bx\255", { prefix = true })))
    assert(cli:put("bin/", "not under bin/\\0"))
    assert(cli:put("bin/\0", "exact"))
    assert(cli:put(key, value))
    assert(cli:put("bx\255\255", "ff"))
    assert(cli:put("by", "after the prefix"))
    assert(cli:put("bx\255", "end"))
    local evs = collect(w, 1)
    assert.equal(key, evs[1].kv.key)
    assert.equal(value, evs[1].kv.value)
    evs = collect(wp, 2)
    assert.equal("bin/\0", evs[1].kv.key)
    assert.equal(key, evs[2].kv.key)
    assert.equal(value, evs[2].kv.value)
    assert.same({ "PUT " .. ("%q"):format("bx\255\255") .. "=ff", "PUT " .. ("%q"):format("bx\255") .. "=end" },
      shape(collect(wf, 2)))
  end)

  it("a watch from a compacted revision ends with 'compacted' and the compact revision", function()
    local revs = {}
    for i = 1, 5 do revs[i] = rev_of(assert(cli:put("cp/k", "v" .. i))) end
    assert(cli:compact(revs[5], { physical = true }))
    local w = helpers.defer(assert(cli:watch("cp/k", { start_revision = revs[1] })))
    local r, msg, code = w:next(5)
    assert.is_nil(r, "got a response from a compacted revision")
    assert.equal("compacted", code, msg)
    assert.matches("compacted", msg)
    assert.equal(revs[5], w.compact_revision)
    -- terminal: it stays that way
    r, msg, code = w:next(0)
    assert.is_nil(r)
    assert.equal("compacted", code, msg)
    -- the iterators raise an error object with the code
    local w2 = helpers.defer(assert(cli:watch("cp/k", { start_revision = revs[2], timeout = 5 })))
    local ok, err = pcall(function() for _ in w2:events() do end end)
    assert.is_false(ok)
    assert.is_table(err, "events() raised " .. tostring(err))
    assert.equal("compacted", err.code)
    assert.matches("compacted", tostring(err))
    assert.is_true(w2.compact_revision > 0)
    -- the compaction revision itself is still there: no jump ahead
    local w3 = helpers.defer(assert(cli:watch("cp/k", { start_revision = revs[5] })))
    assert.same({ "PUT cp/k=v5@" .. revs[5] }, shape(collect(w3, 1), true))
  end)

  it("two watches on the same key each get every event", function()
    local a = helpers.defer(assert(cli:watch("twin/k")))
    local b = helpers.defer(assert(cli:watch("twin/k", { prev_kv = true })))
    assert(cli:put("twin/k", "1"))
    assert(cli:put("twin/k", "2"))
    assert.same({ "PUT twin/k=1", "PUT twin/k=2" }, shape(collect(a, 2)))
    local evs = collect(b, 2)
    assert.same({ "PUT twin/k=1", "PUT twin/k=2" }, shape(evs))
    assert.equal("1", evs[2].prev_kv.value)
    assert.is_nil(evs[1].prev_kv)
  end)

  it("a watch etcd refuses (empty range) fails with nil, msg, code; the stream goes on", function()
    local before = helpers.defer(assert(cli:watch("refused/before")))
    local w, msg, code = cli:watch("refused/b", { range_end = "refused/a" })
    assert.is_nil(w)
    assert.matches("range is empty", msg)
    assert.is_string(code)
    -- the watch created before and one created after both work
    local after = helpers.defer(assert(cli:watch("refused/after")))
    assert(cli:put("refused/before", "1"))
    assert(cli:put("refused/after", "2"))
    assert.same({ "PUT refused/before=1" }, shape(collect(before, 1)))
    assert.same({ "PUT refused/after=2" }, shape(collect(after, 1)))
  end)

  it("misuse raises", function()
    assert.has_error(function() cli:watch("a", { prefx = true }) end, "watch: unknown option 'prefx'")
    assert.has_error(function() cli:watch("a", { prefix = 1 }) end, "watch: option 'prefix': boolean expected, got integer")
    assert.has_error(function() cli:watch("a", { start_revision = "1" }) end,
      "watch: option 'start_revision': integer expected, got string")
    assert.has_error(function() cli:watch("a", { filters = "noput" }) end,
      "watch: option 'filters': table expected, got string")
    assert.error_matches(function() cli:watch("a", { filters = { "noputs" } }) end, "filter")
    assert.has_error(function() cli:watch("a", { timeout = -1 }) end,
      "watch: option 'timeout': non-negative number of seconds expected, got -1")
    assert.error_matches(function() cli:watch(1) end, "^watch: bad argument #1 %(key%)")
    assert.error_matches(function() cli:watch(nil) end, "^watch: bad argument #1 %(key%)")
    assert.error_matches(function() cli:watch("a", { prefix = true, range_end = "b" }) end, "exclude each other")
    assert.error_matches(function() cli:watch("a", { prefix = true, from_key = true }) end, "exclude each other")
    assert.has_error(function() cli:watch("a", "prefix") end,
      "watch: options must be a plain table, got string")
    local w = helpers.defer(assert(cli:watch("misuse/a")))
    assert.error_matches(function() w:next("1") end, "timeout")
    assert.error_matches(function() w:next(-1) end, "timeout")
  end)
end)

describe("watch with a slow consumer", function()
  local cli
  helpers.etcd_fixture(function(_, c) cli = c end)

  it("100,000 events while the watch is not read: memory stays bounded, every event arrives once, in order #slow #novalgrind", function()
    local N, PER_TXN, VSIZE = 100000, 100, 3000
    -- 100,000 x 3000 bytes is ~300 MB of values: a client that kept every
    -- response of a watch nobody reads would grow well past the limit.
    local LIMIT_KB = 200 * 1024
    local pad = string.rep("v", VSIZE - 7)
    local function key(i) return ("slow/%06d"):format(i) end
    local function value(i) return ("%06d:"):format(i) .. pad end
    local w = helpers.defer(assert(cli:watch("slow/", { prefix = true })))
    local other = helpers.defer(assert(cli:watch("slowx")))
    local r0 = assert(cli:get("slow/")).header.revision
    collectgarbage()
    collectgarbage()
    local rss0 = rss_kb()
    local peak = rss0
    local t0 = core.now()
    for b = 0, math.floor(N / PER_TXN) - 1 do
      local ops = {}
      for j = 1, PER_TXN do
        local i = b * PER_TXN + j
        ops[j] = etcd.op.put(key(i), value(i))
      end
      assert(cli:batch(ops, { atomic = true }))
      if b % 20 == 0 then peak = math.max(peak, rss_kb()) end
    end
    local t_write = core.now() - t0
    -- the client's stream still flows for its other watches
    local px = assert(cli:put("slowx", "after"))
    assert.same({ "PUT slowx=after@" .. rev_of(px) }, shape(collect(other, 1, 5), true))
    assert.equal(r0 + math.floor(N / PER_TXN) + 1, rev_of(px)) -- nothing else wrote
    -- let the pump take in whatever etcd still sends; keep the highest RSS
    local t1 = core.now()
    repeat
      peak = math.max(peak, rss_kb())
      helpers.sleep(0.1)
    until core.now() - t1 > 1.5
    collectgarbage()
    collectgarbage()
    peak = math.max(peak, rss_kb())
    local growth = peak - rss0
    -- drain: exactly N PUTs, in write order, at the revision of their txn
    -- (the catch-up after a pause must not cost memory in proportion to the
    -- backlog either: RSS is sampled after every response)
    local n, nresp, max_evs, drain_peak = 0, 0, 0, rss0
    local deadline = core.now() + 90
    t1 = core.now()
    while n < N do
      local r, msg, code = w:next(math.max(0, deadline - core.now()))
      if not r then
        error(("after %d of %d events: w:next gave nil, %s, %s"):format(n, N, tostring(msg), tostring(code)))
      end
      drain_peak = math.max(drain_peak, rss_kb())
      nresp, max_evs = nresp + 1, math.max(max_evs, #r.events)
      for _, ev in ipairs(r.events) do
        n = n + 1
        local want_rev = r0 + math.floor((n - 1) / PER_TXN) + 1
        if n > N or ev.type ~= "PUT" or ev.kv.key ~= key(n) or ev.kv.value ~= value(n)
            or ev.kv.mod_revision ~= want_rev then
          error(("event %d: got %s %q (value %q...) @%s, want PUT %q @%d"):format(n, tostring(ev.type),
            tostring(ev.kv.key), tostring(ev.kv.value):sub(1, 8), tostring(ev.kv.mod_revision), key(n), want_rev))
        end
      end
    end
    local t_drain = core.now() - t1
    -- nothing after the last one but what comes next
    local pe = assert(cli:put("slow/~end", "end"))
    assert.same({ "PUT slow/~end=end@" .. rev_of(pe) }, shape(collect(w, 1, 10), true))
    print(("\n  slow consumer: writes %.1f s, drain %.1f s in %d responses (largest: %d events), RSS %d MB -> peak %d MB (+%d MB) unread, %d MB draining"):format(
      t_write, t_drain, nresp, max_evs, math.floor(rss0 / 1024), math.floor(peak / 1024),
      math.floor(growth / 1024), math.floor(drain_peak / 1024)))
    if helpers.under_asan then
      print("  (ASan keeps freed memory in its quarantine: RSS not checked)")
    else
      assert.is_true(growth < LIMIT_KB, ("RSS grew by %d MB (limit %d MB) while the watch was not read"):format(
        math.floor(growth / 1024), math.floor(LIMIT_KB / 1024)))
      assert.is_true(drain_peak - rss0 < LIMIT_KB, ("RSS grew by %d MB (limit %d MB) while the watch caught up: %d events in %d responses, the largest %d events"):format(
        math.floor((drain_peak - rss0) / 1024), math.floor(LIMIT_KB / 1024), N, nresp, max_evs))
    end
  end)

  it("3000 single puts while the watch is not read (over 1024 responses): all of them, once, in order #novalgrind", function()
    local N = 3000
    local w = helpers.defer(assert(cli:watch("cnt/", { prefix = true })))
    local r0 = assert(cli:get("cnt/")).header.revision
    for i = 1, N do assert(cli:put(("cnt/%04d"):format(i), tostring(i))) end
    local want, got = {}, {}
    for i = 1, N do want[i] = ("PUT cnt/%04d=%d@%d"):format(i, i, r0 + i) end
    local evs = collect(w, N, 30)
    for i, ev in ipairs(evs) do got[i] = sig(ev, true) end
    assert.same(want, got)
    local pe = assert(cli:put("cnt/~end", "end"))
    assert.same({ "PUT cnt/~end=end@" .. rev_of(pe) }, shape(collect(w, 1), true))
  end)

  it("a watch paused for its slow reader, then compacted past: what it kept, then 'compacted', never a gap #novalgrind", function()
    local TXNS, PER_TXN = 100, 100 -- 10,000 x 4 KB: 40 MB, far over the 8 MiB queue bound
    local pad = string.rep("c", 4000)
    local function key(i) return ("cw/%05d"):format(i) end
    local w = helpers.defer(assert(cli:watch("cw/", { prefix = true })))
    local r0 = assert(cli:get("cw/")).header.revision
    for b = 0, TXNS - 1 do
      local ops = {}
      for j = 1, PER_TXN do ops[j] = etcd.op.put(key(b * PER_TXN + j), pad) end
      assert(cli:batch(ops, { atomic = true }))
    end
    local last = r0 + TXNS
    assert(cli:compact(last, { physical = true }))
    local n, code, msg = 0, nil, nil -- luacheck: ignore 311
    while true do
      local r
      r, msg, code = w:next(10)
      if not r then break end
      for _, ev in ipairs(r.events) do
        n = n + 1
        local want_rev = r0 + math.floor((n - 1) / PER_TXN) + 1
        if ev.kv.key ~= key(n) or ev.kv.mod_revision ~= want_rev then
          error(("event %d: got %s, want %s @%d"):format(n, sig(ev, true):sub(1, 40), key(n), want_rev))
        end
      end
    end
    assert.equal("compacted", code, msg)
    assert.is_true(n > 0 and n < TXNS * PER_TXN, n .. " events before the end")
    assert.equal(0, n % PER_TXN, "a txn's events were split: " .. n)
    assert.equal(last, w.compact_revision)
  end)
end)

describe("watch across a member restart", function()
  local srv, cli
  helpers.etcd_fixture(function(s, c) srv, cli = s, c end)

  it("a writer keeps writing while the member restarts: every write is seen exactly once, in order #slow #novalgrind", function()
    local w = helpers.defer(assert(cli:watch("rs/", { prefix = true })))
    local idle = helpers.defer(assert(cli:watch("rs-idle/", { prefix = true }))) -- gets nothing before the restart
    local written = {} -- puts that returned success: "key=value@rev"
    local function put(i)
      local k = ("rs/%04d"):format(i)
      local deadline = core.now() + 30
      local attempt = 0
      while true do
        attempt = attempt + 1
        local v = ("%d/%d"):format(i, attempt) -- a retried put that was applied anyway shows in the history
        local res, msg, code = cli:put(k, v, { timeout = 1 })
        if res then
          written[#written + 1] = ("PUT %s=%s@%d"):format(k, v, rev_of(res))
          return rev_of(res)
        end
        if core.now() > deadline then error(("put %s: still failing after 30 s: %s (%s)"):format(k, msg, code)) end
        helpers.sleep(0.05)
      end
    end
    local first = put(1)
    for i = 2, 100 do put(i) end
    local seen = collect(w, 100) -- read before the restart
    for i = 101, 200 do put(i) end -- not read before the restart
    -- the member goes down (same data dir kept); the writer keeps trying
    srv:stop { keep_data = true }
    local down_fails = 0
    for i = 201, 205 do
      local k, v = ("rs/%04d"):format(i), ("%d/down"):format(i)
      local res = cli:put(k, v, { timeout = 0.3 })
      if res then written[#written + 1] = ("PUT %s=%s@%d"):format(k, v, rev_of(res)) else down_fails = down_fails + 1 end
    end
    assert.equal(5, down_fails, "puts succeeded with the member down")
    -- a watch is not ended by the member being down
    local r, msg, code = idle:next(0.3)
    assert.is_nil(r)
    assert.equal("timeout", code, msg)
    srv:restart { wait = false }
    local last
    for i = 201, 400 do last = put(i) end
    assert.is_true(srv:is_running())
    -- the idle watch resumed too
    local pi = assert(cli:put("rs-idle/x", "after"))
    assert.same({ "PUT rs-idle/x=after@" .. rev_of(pi) }, shape(collect(idle, 1), true))
    for _, ev in ipairs(collect_until(w, last, 20)) do seen[#seen + 1] = ev end
    -- nothing extra after the last write: the next event is the sentinel
    local sentinel = rev_of(assert(cli:put("rs/~end", "end")))
    local tail = collect(w, 1, 10)
    assert.same({ "PUT rs/~end=end@" .. sentinel }, shape(tail, true))
    -- what etcd has, read by a new client from the first revision
    local c3 = assert(etcd.new { endpoints = srv.endpoints })
    local hw = assert(c3:watch("rs/", { prefix = true, start_revision = first }))
    local hist = collect_until(hw, sentinel, 10)
    hw:close()
    c3:close()
    assert.equal(sentinel, hist[#hist].kv.mod_revision)
    table.remove(hist) -- the sentinel
    assert.same(shape(hist, true), shape(seen, true))
    -- every successful put is in the history, at its revision
    local in_hist = {}
    for _, s in ipairs(shape(hist, true)) do in_hist[s] = true end
    for _, s in ipairs(written) do assert.is_true(in_hist[s], "successful put missing from etcd's history: " .. s) end
    assert.is_true(#hist >= 400)
    -- strictly increasing revisions, so no event came twice
    for i = 2, #seen do
      assert.is_true(seen[i].kv.mod_revision > seen[i - 1].kv.mod_revision,
        ("event %d (%s) after %s"):format(i, sig(seen[i], true), sig(seen[i - 1], true)))
    end
  end)

  it("a watch paused for its slow reader across a member restart: every write once, in order #slow #novalgrind", function()
    local PER_TXN = 100
    local pad = string.rep("p", 4000)
    local function key(i) return ("rb/%05d"):format(i) end
    local function value(i) return i .. ":" .. pad end
    local w = helpers.defer(assert(cli:watch("rb/", { prefix = true })))
    local r0 = assert(cli:get("rb/")).header.revision
    local function write_txns(from, to)
      for b = from, to do
        local ops = {}
        for j = 1, PER_TXN do
          local i = b * PER_TXN + j
          ops[j] = etcd.op.put(key(i), value(i))
        end
        assert(cli:batch(ops, { atomic = true }))
      end
    end
    write_txns(0, 29) -- 12 MB unread: the watch is paused
    srv:restart()
    -- reads are safe to retry: wait until the client reaches the member again
    local t0 = core.now()
    while not cli:get("rb/", { timeout = 1 }) do
      assert.is_true(core.now() - t0 < 20, "the client did not reconnect")
      helpers.sleep(0.1)
    end
    write_txns(30, 39)
    local total = 40 * PER_TXN
    local n = 0
    local deadline = core.now() + 30
    while n < total do
      local r, msg, code = w:next(math.max(0, deadline - core.now()))
      if not r then error(("after %d of %d events: w:next gave nil, %s, %s"):format(n, total, tostring(msg), tostring(code))) end
      for _, ev in ipairs(r.events) do
        n = n + 1
        local want_rev = r0 + math.floor((n - 1) / PER_TXN) + 1
        if n > total or ev.kv.key ~= key(n) or ev.kv.value ~= value(n) or ev.kv.mod_revision ~= want_rev then
          error(("event %d: got %s, want %s @%d"):format(n, sig(ev, true):sub(1, 40), key(n), want_rev))
        end
      end
    end
    local pe = assert(cli:put("rb/~end", "end"))
    assert.same({ "PUT rb/~end=end@" .. rev_of(pe) }, shape(collect(w, 1, 10), true))
  end)
end)
