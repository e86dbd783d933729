-- Puts from N coroutines of one Lua state on one client, against the same N
-- puts in sequence (issue: "64-coroutine put throughput vs 64 calls in
-- sequence"). One etcd on /dev/shm; rounds interleaved; medians printed.
--
--   make bench-coroutines      (BENCH_N=64 BENCH_ROUNDS=15)
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

local N = tonumber(os.getenv("BENCH_N") or "64")
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS") or "15")

local srv = helpers.start_etcd {}
local ok, err = pcall(function()
  local cli = assert(etcd.new { endpoints = srv.endpoints })
  local seq, par = {}, {}
  for r = 1, ROUNDS do
    local t0 = core.now()
    for i = 1, N do assert(cli:put("bench/s" .. i, "v")) end
    seq[r] = core.now() - t0
    t0 = core.now()
    for i = 1, N do etcd.spawn(function() assert(cli:put("bench/p" .. i, "v")) end) end
    etcd.run()
    par[r] = core.now() - t0
  end
  table.sort(seq)
  table.sort(par)
  local m = ROUNDS // 2 + 1
  print(("%d puts: in sequence %.1f ms (%.0f puts/s), from %d coroutines %.1f ms (%.0f puts/s): %.1fx")
    :format(N, seq[m] * 1e3, N / seq[m], N, par[m] * 1e3, N / par[m], seq[m] / par[m]))
  cli:close()
end)
srv:stop()
assert(ok, err)
