-- The prefix mirror against a plain paged get of the same keys, on one
-- throw-away etcd (data dir on /dev/shm), rounds interleaved (get, mirror,
-- get, mirror, ...), each round a process of its own (bench/mirror_load.lua).
-- For BENCH_MIRROR_KEYS keys of 100 bytes: load time, CPU, resident memory
-- per key; and for the mirror, the CPU to apply one change with that many
-- keys held (it should not grow with the number of keys). Medians of
-- BENCH_ROUNDS, and the ratio mirror/get.
--
--   make bench-mirror        (BENCH_MIRROR_KEYS="1000 100000" BENCH_ROUNDS=3)
local helpers = require "helpers"
local common = require "bench.common"
local etcd = require "etcd"

local SIZES = os.getenv("BENCH_MIRROR_KEYS") or "1000 100000"
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS") or "3")
local LUA = os.getenv("BENCH_LUA") or "lua5.4"
local FIELDS = { "load_s", "load_cpu_s", "rss_mb", "bytes_per_key", "apply_cpu_us" }

local run, median = common.result, common.median

local srv = helpers.start_etcd { args = { "--quota-backend-bytes=4294967296" } }
local ok, err = pcall(function()
  local ep = srv.endpoint
  local cli = assert(etcd.new { endpoints = { ep } })
  print(("mirror: etcd %s on %s, %d rounds interleaved, medians"):format(
    io.popen("etcd --version | head -1"):read("*l") or "?", ep, ROUNDS))
  local value = string.rep("v", 100)
  for n in SIZES:gmatch("%d+") do
    n = tonumber(n)
    local pfx = ("m%d/"):format(n)
    for i = 1, n, 100 do
      local ops = {}
      for j = i, math.min(i + 99, n) do ops[#ops + 1] = etcd.op.put(("%skey%08d"):format(pfx, j), value) end
      assert(cli:txn { success = ops })
    end
    local res = { get = {}, mirror = {} }
    for r = 1, ROUNDS do
      for _, mode in ipairs { "get", "mirror" } do
        res[mode][r] = run(("BENCH_ENDPOINTS=%s BENCH_MODE=%s BENCH_PREFIX=%s %s bench/mirror_load.lua"):format(
          ep, mode, pfx, LUA))
      end
    end
    print(("\n%d keys of %d bytes, pages of 1000"):format(n, #value))
    print(("%-16s %12s %12s %8s"):format("", "mirror", "paged get", "ratio"))
    for _, f in ipairs(FIELDS) do
      local a, b = median(res.mirror, f), median(res.get, f)
      print(("%-16s %12.3f %12.3f %8s"):format(f, a, b, b ~= 0 and ("%.2f"):format(a / b) or "-"))
    end
  end
  cli:close()
end)
srv:stop()
assert(ok, err)
