-- keepalive_scale: our client against etcd's Go client, side by side on one
-- throw-away etcd (data dir on /dev/shm), rounds interleaved (ours, Go,
-- ours, Go, ...) so that machine noise hits both alike. Each round of each
-- client is its own process: grant BENCH_KA leases (100 at a time), start
-- every keep-alive at once, wait for each first answer, measure a get's p50
-- with them held (against the same get before), close them all, revoke.
-- Medians of BENCH_ROUNDS, and the ratio ours/Go.
--
--   make bench-keepalive     (BENCH_KA="20000 100000" BENCH_ROUNDS=3 BENCH_TTL=60)
local helpers = require "helpers"
local common = require "bench.common"

local SIZES = os.getenv("BENCH_KA") or "20000 100000"
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS") or "3")
local LUA = os.getenv("BENCH_LUA") or "lua5.4"
local GO = "build/bench/keepalive"

local FIELDS = { "grants_s", "start_s", "first_s", "lost", "get_none_us", "get_with_us", "close_ms",
  "rss_per_lease_b", "grant_cpu_us", "ka_cpu_us" }

local run, median = common.result, common.median

assert(os.execute("bench/go/build.sh"), "bench/go/build.sh failed")
local srv = helpers.start_etcd {}
local ok, err = pcall(function()
  local ep = srv.endpoint
  print(("keepalive_scale: etcd %s on %s, %d rounds interleaved, medians"):format(
    io.popen("etcd --version | head -1"):read("*l") or "?", ep, ROUNDS))
  for n in SIZES:gmatch("%d+") do
    local res = { lua = {}, go = {} }
    for r = 1, ROUNDS do
      res.lua[r] = run(("BENCH_ENDPOINTS=%s BENCH_KA=%s %s bench/keepalive_scale.lua"):format(ep, n, LUA))
      res.go[r] = run(("%s -endpoints %s -n %s -ttl %s"):format(GO, ep, n, os.getenv("BENCH_TTL") or "60"))
    end
    print(("\n%s leases, TTL %s s, every keep-alive started at once"):format(n, os.getenv("BENCH_TTL") or "60"))
    print(("%-16s %12s %12s %8s"):format("", "ours", "Go", "ours/Go"))
    for _, f in ipairs(FIELDS) do
      local a, b = median(res.lua, f), median(res.go, f)
      print(("%-16s %12.3f %12.3f %8s"):format(f, a, b, b ~= 0 and ("%.2f"):format(a / b) or "-"))
    end
    local a = median(res.lua, "get_with_us") / median(res.lua, "get_none_us")
    local b = median(res.go, "get_with_us") / median(res.go, "get_none_us")
    print(("%-16s %12.2f %12.2f"):format("get with/none", a, b))
    local sa = median(res.lua, "grants_s") + median(res.lua, "start_s") + median(res.lua, "first_s")
    local sb = median(res.go, "grants_s") + median(res.go, "start_s") + median(res.go, "first_s")
    print(("%-16s %12.3f %12.3f %8.2f"):format("set-up_s", sa, sb, sa / sb))
  end
end)
srv:stop()
assert(ok, err)
