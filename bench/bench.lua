-- The workloads of bench/run.lua for our client, one per process, printing
-- the RESULT line bench/go/kv/main.go and bench/node/bench.js print too.
--
--   BENCH_ENDPOINTS=127.0.0.1:2379 BENCH_WORKLOAD=put_seq BENCH_N=5000 lua5.4 bench/bench.lua
--
-- Workloads: put_seq, get_seq, get_100, get_100_ns, txn_cas_seq, lease_seq,
-- put_conc (64 in flight: spawned coroutines), watch (a prefix watch
-- receiving n events while 64 writers put them), mem_watch_ka (n watches +
-- n kept-alive leases: resident memory), rss_puts (n puts, 64 in flight:
-- resident memory growth).
local etcd = require "etcd"
local core = require "etcd.core"

local EP = assert(os.getenv("BENCH_ENDPOINTS"), "BENCH_ENDPOINTS")
local WORKLOAD = os.getenv("BENCH_WORKLOAD") or "put_seq"
local N = tonumber(os.getenv("BENCH_N") or "2000")
local SIZE = tonumber(os.getenv("BENCH_SIZE") or "64")
local IN_FLIGHT = 64

local now = core.now
local value = string.rep("v", SIZE)

local rss_kb = require("bench.common").rss_kb

local function report(r)
  local lat = r.lat or {}
  table.sort(lat)
  local n = #lat
  local p50, p99, mean = 0, 0, 0
  if n > 0 then
    p50, p99 = lat[n // 2 + 1], lat[(n * 99) // 100 + 1]
    local sum = 0
    for i = 1, n do sum = sum + lat[i] end
    mean = sum / n
  end
  print(("RESULT workload=%s ops=%d ops_s=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f errors=%d cpu_us_op=%.2f%s"):format(
    WORKLOAD, r.ops, r.ops / r.wall, p50 * 1e6, p99 * 1e6, mean * 1e6, r.errors, r.cpu / r.ops * 1e6, r.extra or ""))
end

-- f(i) n times in sequence, timing each
local function seq(n, f)
  local lat, errors = {}, 0
  local c0, t0 = os.clock(), now()
  for i = 1, n do
    local s = now()
    if not f(i) then errors = errors + 1 end
    lat[i] = now() - s
  end
  return { lat = lat, ops = n, errors = errors, wall = now() - t0, cpu = os.clock() - c0 }
end

-- f(i) n times from IN_FLIGHT spawned coroutines taking the next index
local function conc(n, f)
  local lat, errors, next_i = {}, 0, 0
  local c0, t0 = os.clock(), now()
  for _ = 1, IN_FLIGHT do
    etcd.spawn(function()
      while true do
        next_i = next_i + 1
        local i = next_i
        if i > n then return end
        local s = now()
        if not f(i) then errors = errors + 1 end
        lat[i] = now() - s
      end
    end)
  end
  etcd.run()
  return { lat = lat, ops = n, errors = errors, wall = now() - t0, cpu = os.clock() - c0 }
end

local cli = assert(etcd.new { endpoints = { EP }, namespace = WORKLOAD == "get_100_ns" and "bench/ns/" or nil })
assert(cli:get("bench/warm-up"))

local r
if WORKLOAD == "put_seq" then
  r = seq(N, function(i) return cli:put("bench/put/" .. (i % 1000), value) end)
elseif WORKLOAD == "get_seq" then
  assert(cli:put("bench/get", value))
  r = seq(N, function() return cli:get("bench/get") end)
elseif WORKLOAD == "get_100" or WORKLOAD == "get_100_ns" then
  for i = 0, 99 do assert(cli:put(("bench/g100/%03d"):format(i), value)) end
  r = seq(N, function()
    local res = cli:get("bench/g100/", { prefix = true })
    return res and #res.kvs == 100
  end)
elseif WORKLOAD == "txn_cas_seq" then
  local cur = "0"
  assert(cli:put("bench/cas", cur))
  r = seq(N, function(i)
    local nxt = tostring(i)
    local res = cli:txn { compare = { etcd.compare.value("bench/cas", "==", cur) },
                          success = { etcd.op.put("bench/cas", nxt) } }
    if not res or not res.succeeded then return false end
    cur = nxt
    return true
  end)
elseif WORKLOAD == "lease_seq" then
  r = seq(N, function()
    local l = cli:grant(60)
    return l and cli:revoke(l.id)
  end)
elseif WORKLOAD == "put_conc" then
  r = conc(N, function(i) return cli:put("bench/conc/" .. (i % 1000), value) end)
elseif WORKLOAD == "watch" then
  local w = assert(cli:watch("bench/watch/", { prefix = true }))
  local sent, lat = {}, {}
  local reader = etcd.spawn(function()
    local got = 0
    while got < N do
      local resp = assert(w:next(60))
      local t = now()
      for _, ev in ipairs(resp.events) do
        local i = tonumber(ev.kv.key:sub(#"bench/watch/" + 1))
        lat[#lat + 1] = t - sent[i]
        got = got + 1
      end
    end
  end)
  r = conc(N, function(i)
    sent[i] = now()
    return cli:put("bench/watch/" .. i, value)
  end)
  local t0 = now()
  assert(reader:join())
  r.wall = r.wall + (now() - t0)
  r.lat = lat
  w:close()
elseif WORKLOAD == "mem_watch_ka" then
  collectgarbage("collect")
  local rss0 = rss_kb()
  local c0, t0 = os.clock(), now()
  local keep = {}
  for i = 1, N do
    keep[#keep + 1] = assert(cli:watch("bench/mem/w" .. i))
    local l = assert(cli:grant(60))
    keep[#keep + 1] = assert(cli:keepalive(l.id, { ttl = l.ttl }))
  end
  core.sleep(2)
  collectgarbage("collect")
  r = { ops = N, errors = 0, wall = now() - t0, cpu = os.clock() - c0,
        extra = (" rss_mb=%.1f"):format((rss_kb() - rss0) / 1024) }
  for _, o in ipairs(keep) do o:close() end
elseif WORKLOAD == "rss_puts" then
  local rss0, mid = rss_kb(), nil
  r = conc(N, function(i)
    if i == N // 10 then mid = rss_kb() end
    return cli:put("bench/rss/" .. (i % 1000), value)
  end)
  local rss1 = rss_kb()
  r.extra = (" rss_mb=%.1f rss_growth_mb=%.1f"):format((rss1 - rss0) / 1024, (rss1 - mid) / 1024)
  r.lat = nil
else
  io.stderr:write("unknown workload " .. WORKLOAD .. "\n")
  os.exit(2)
end
report(r)
cli:close()
