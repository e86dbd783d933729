-- etcd.mirror on three members, under faults: the member in use stopped
-- (SIGSTOP: its connections stay open, nothing answers), then a leader kill
-- -9, a member restart and a full outage while a writer changes the prefix.
-- Afterwards the copy equals the store, and the batches delivered, applied
-- to the first copy, give the store again: nothing lost, nothing twice,
-- nothing out of order.
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

local store, copy = helpers.prefix_values, helpers.mirror_values

describe("etcd.mirror on three members", function()
  local cl
  setup(function() cl = helpers.start_cluster(3) end)
  teardown(function() if cl then cl:stop() end end)

  it("catches up through another member when the one in use is stopped", function()
    -- in use on a follower (stopping the leader would also stop the writes
    -- for an election)
    local li = cl:wait_leader(10)
    local f = li % 3 + 1
    local cli = helpers.defer(cl:client_on(f, { timeout = 2 }))
    local writer = helpers.defer(cl:client_on(li))
    for i = 1, 50 do assert(writer:put(("hs/k%02d"):format(i), "before")) end
    local m = helpers.defer(assert(etcd.mirror(cli, "hs/")))
    assert.equal(50, m:count())
    cl.members[f]:pause()
    local ok, err = pcall(function()
      local t0 = core.now()
      for i = 1, 20 do assert(writer:put(("hs/k%02d"):format(i), "after")) end
      assert(writer:delete("hs/k50"))
      local last = assert(writer:put("hs/new", "x")).header.revision
      -- the watch stream is silent 5 s, gets a progress request, and when
      -- nothing comes 3 s later it moves to another member
      assert.equal(last, m:wait(last, 20 * helpers.slowdown))
      local took = core.now() - t0
      assert.is_true(took < 15 * helpers.slowdown, ("caught up after %.1f s"):format(took))
      assert.same(store(writer, "hs/"), copy(m))
    end)
    cl.members[f]:resume()
    assert(ok, err)
  end)

  it("leader kill, member restart, full outage: the copy ends equal, each change delivered once, in order #novalgrind", function()
    local cli = helpers.defer(assert(etcd.new { endpoints = cl.endpoints, timeout = 2 }))
    local wcli = helpers.defer(assert(etcd.new { endpoints = cl.endpoints, timeout = 1 }))
    for i = 1, 100 do assert(wcli:put(("fo/k%03d"):format(i), "0")) end
    local m = helpers.defer(assert(etcd.mirror(cli, "fo/")))
    local replica = copy(m)
    local batches = {}
    local stop = false
    local writes, failures = 0, 0
    local collector = etcd.spawn(function()
      -- the iterator called by hand: Lua 5.1's generic for cannot yield
      local changes = m:changes()
      while true do
        local b = changes()
        if not b then break end
        batches[#batches + 1] = b
      end
    end)
    local writer = etcd.spawn(function()
      local n = 0
      while not stop do
        n = n + 1
        local k = ("fo/k%03d"):format(math.random(1, 150))
        local ok
        if n % 5 == 0 then ok = wcli:delete(k) else ok = wcli:put(k, tostring(n)) end
        if ok then writes = writes + 1 else
          failures = failures + 1
          etcd.sleep(0.05)
        end
      end
    end)
    local faults = etcd.spawn(function()
      etcd.sleep(1.5)
      local li = cl:wait_leader(10)
      cl.members[li]:kill()
      etcd.sleep(2)
      cl.members[li]:restart()
      etcd.sleep(1.5)
      cl.members[(li % 3) + 1]:restart()
      etcd.sleep(1.5)
      cl:stop { keep_data = true }
      etcd.sleep(2)
      cl:restart()
      etcd.sleep(2)
      stop = true
    end)
    assert(faults:join())
    assert(writer:join())
    assert.is_true(writes > 50, writes .. " writes")
    local final, fh
    assert.is_true(helpers.eventually(20, function()
      local ok, t, h = pcall(store, wcli, "fo/")
      if ok then final, fh = t, h end
      return ok
    end))
    assert.equal(fh.revision, m:wait(fh.revision, 30))
    assert.same(final, copy(m))
    m:close()
    assert(collector:join())
    -- in order, each revision once; applied to the first copy they give the
    -- store
    local prev = 0
    for _, b in ipairs(batches) do
      assert.is_nil(b.reload, "no reload was needed")
      assert.is_true(b.revision > prev, ("batch at %d after %d"):format(b.revision, prev))
      prev = b.revision
      for _, c in ipairs(b) do
        if c.kind == "put" then replica[c.key] = c.kv.value
        else
          assert.is_not_nil(replica[c.key], "delete of a missing key " .. c.key)
          replica[c.key] = nil
        end
      end
    end
    assert.same(final, replica)
    assert.equal(0, m:stats().restores)
  end)
end)
