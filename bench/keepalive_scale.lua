-- keepalive_scale for our client: one process, one client, against the etcd
-- at BENCH_ENDPOINTS. The same phases as bench/go/keepalive/main.go, the same
-- RESULT line; bench/keepalive.lua runs both, rounds interleaved.
--
--   BENCH_ENDPOINTS=127.0.0.1:2379 BENCH_KA=20000 lua5.4 bench/keepalive_scale.lua
local etcd = require "etcd"
local core = require "etcd.core"

local EPS = assert(os.getenv("BENCH_ENDPOINTS"), "BENCH_ENDPOINTS not set")
local N = tonumber(os.getenv("BENCH_KA") or "20000")
local TTL = tonumber(os.getenv("BENCH_TTL") or "60")
local GETS = tonumber(os.getenv("BENCH_GETS") or "2000")

local rss_kib = require("bench.common").rss_kb

local function p50(cli)
  local t = {}
  for i = 1, GETS do
    local t0 = core.now()
    assert(cli:get("bench/k", { serializable = true }))
    t[i] = core.now() - t0
  end
  table.sort(t)
  return t[GETS // 2 + 1]
end

local eps = {}
for e in EPS:gmatch("[^,]+") do eps[#eps + 1] = e end
local cli = assert(etcd.new { endpoints = eps })
assert(cli:put("bench/k", "v"))
local none = p50(cli)
collectgarbage()
local rss0 = rss_kib()

-- grants, from 100 coroutines at once (as the Go side: 100 goroutines)
local t0, c0 = core.now(), os.clock() -- os.clock: CPU time of every thread
local ids = {}
for g = 0, 99 do
  etcd.spawn(function()
    for i = g + 1, N, 100 do ids[i] = assert(cli:grant(TTL)).id end
  end)
end
etcd.run()
local grants, grant_cpu = core.now() - t0, os.clock() - c0

-- every keep-alive started at once
t0, c0 = core.now(), os.clock()
local kas = {}
for i = 1, N do kas[i] = assert(cli:keepalive(ids[i])) end
local start = core.now() - t0
t0 = core.now()
local lost = 0
for i = 1, N do
  if not kas[i]:next(120) then lost = lost + 1 end
end
local first = core.now() - t0
local ka_cpu = os.clock() - c0
local with = p50(cli)
local rss1 = rss_kib()

t0 = core.now()
for i = 1, N do kas[i]:close() end
local closing = core.now() - t0

-- revoke them all (not timed) so that every round starts alike
for g = 0, 99 do
  etcd.spawn(function()
    for i = g + 1, N, 100 do cli:revoke(ids[i]) end
  end)
end
etcd.run()
cli:close()
print(("RESULT client=lua n=%d grants_s=%.3f start_s=%.3f first_s=%.3f lost=%d get_none_us=%.1f"
  .. " get_with_us=%.1f close_ms=%.1f rss_per_lease_b=%.0f grant_cpu_us=%.1f ka_cpu_us=%.1f")
  :format(N, grants, start, first, lost, none * 1e6, with * 1e6, closing * 1e3, (rss1 - rss0) * 1024 / N,
  grant_cpu / N * 1e6, ka_cpu / N * 1e6))
