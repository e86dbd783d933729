--- examples/mirror_config.lua: serve configuration from a mirror of a prefix.
--
-- A service keeps its settings under "demo/config/" in etcd, one key per
-- setting, the value a number. The service never asks etcd while it serves:
-- it reads a local copy (etcd.mirror) that a watch keeps current, and reacts
-- to changes as they come. An operator changes settings meanwhile; after
-- each change the operator waits for the service's copy to reflect it
-- (read-your-writes), then checks what the service answers.
--
--   make demo                      runs it after the tour, against a throw-away etcd
--   ETCD_ENDPOINTS=127.0.0.1:2379 \
--   LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/?.so;;' lua5.4 examples/mirror_config.lua
--
-- It writes and deletes keys under demo/config/ only.
local etcd = require "etcd"

local function endpoints()
  local s = rawget(_G, "ETCD_ENDPOINTS") or os.getenv("ETCD_ENDPOINTS") or "127.0.0.1:2379"
  local list = {}
  for ep in s:gmatch("[^,%s]+") do list[#list + 1] = ep end
  return list
end

local PREFIX = "demo/config/"
local cli <close> = assert(etcd.new { endpoints = endpoints() })
assert(cli:delete(PREFIX, { prefix = true }))
assert(cli:put(PREFIX .. "max_connections", "100"))
assert(cli:put(PREFIX .. "timeout_ms", "250"))

-- The service's copy: values decoded once, changes logged as they apply.
local log = {}
local cfg <close> = assert(etcd.mirror(cli, PREFIX, {
  decode = function(v) return assert(tonumber(v), "not a number") end,
  on_change = function(kind, key, _, prev_kv, value)
    local line = ("config: %s %s%s"):format(kind, key:sub(#PREFIX + 1),
      kind == "put" and (" = " .. tostring(value) .. (prev_kv and (" (was " .. prev_kv.value .. ")") or "")) or "")
    log[#log + 1] = line
    print(line)
  end,
}))
print(("loaded %d settings at revision %d"):format(cfg:count(), cfg:revision()))
for key, value in cfg:pairs() do print(("  %s = %s"):format(key:sub(#PREFIX + 1), tostring(value))) end

-- What the service answers: from the copy only.
local function serve(request)
  local limit = cfg:get(PREFIX .. "max_connections") or 10
  local timeout = cfg:get(PREFIX .. "timeout_ms") or 1000
  local mode = cfg:get(PREFIX .. "maintenance") and "maintenance" or "normal"
  return ("%s: limit %d, timeout %d ms, %s"):format(request, limit, timeout, mode)
end

local done = false
-- keeps the copy moving (applies changes, reloads after a compaction, ...)
local keeper = etcd.spawn(function() return cfg:run() end)

local operator = etcd.spawn(function()
  local function change(fn, ...)
    local res = assert(fn(cli, ...))
    -- read-your-writes: the service's copy reflects the change from here on
    assert(cfg:wait(res.header.revision, 5))
  end
  print(serve("request 1"))
  change(cli.put, PREFIX .. "max_connections", "500")
  assert(serve("request 2") == "request 2: limit 500, timeout 250 ms, normal")
  print(serve("request 2"))
  -- several settings at once, atomically: the service sees all or none
  change(cli.txn, { success = { etcd.op.put(PREFIX .. "maintenance", "1"),
                                etcd.op.put(PREFIX .. "timeout_ms", "50") } })
  assert(serve("request 3") == "request 3: limit 500, timeout 50 ms, maintenance")
  print(serve("request 3"))
  change(cli.delete, PREFIX .. "maintenance")
  print(serve("request 4"))
  -- a value the decoder refuses: the key is there, its value is not usable
  change(cli.put, PREFIX .. "timeout_ms", "soon")
  local v, kv, err = cfg:get(PREFIX .. "timeout_ms")
  print(("timeout_ms = %q does not decode (%s): the service falls back to %s"):format(kv.value, err, tostring(v)))
  print(serve("request 5"))
  done = true
  cfg:close() -- ends the keeper's m:run()
end)

assert(operator:join())
assert(keeper:join())
assert(done)
assert(#log == 5, "expected 5 changes, got " .. #log)
assert(cli:delete(PREFIX, { prefix = true }))
print("mirror_config: ok")
