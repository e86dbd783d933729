-- How much kept-alive leases cost a get (issue: "a get's p50 with 20,000
-- kept-alive leases within 10 % of the same get with none"), and how long
-- closing them takes. One etcd on /dev/shm, one client; rounds interleaved
-- (none / N keep-alives attached to the same client), medians printed.
--
--   make bench-keepalive            (BENCH_KA=20000 BENCH_GETS=2000 BENCH_ROUNDS=3)
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"

local N = tonumber(os.getenv("BENCH_KA") or "20000")
local GETS = tonumber(os.getenv("BENCH_GETS") or "2000")
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS") or "3")

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

local srv = helpers.start_etcd {}
local ok, err = pcall(function()
  local cli = assert(etcd.new { endpoints = srv.endpoints })
  assert(cli:put("bench/k", "v"))
  -- the leases, granted from 100 coroutines at once
  local leases = {}
  for g = 0, 99 do
    etcd.spawn(function()
      for i = g + 1, N, 100 do leases[i] = assert(cli:grant(120)).id end
    end)
  end
  etcd.run()
  local none, with, closing = {}, {}, {}
  for r = 1, ROUNDS do
    none[r] = p50(cli)
    local kas = {}
    for i = 1, N do kas[i] = assert(cli:keepalive(leases[i])) end
    -- settled: every lease answered once (its next renewal is TTL/3 away)
    for i = 1, N do assert(kas[i]:next(30)) end
    with[r] = p50(cli)
    local t0 = core.now()
    for i = 1, N do kas[i]:close() end
    closing[r] = core.now() - t0
  end
  table.sort(none)
  table.sort(with)
  table.sort(closing)
  local m = ROUNDS // 2 + 1
  print(("get p50: %.1f us with no keep-alive, %.1f us with %d (%.2fx); closing %d: %.0f ms")
    :format(none[m] * 1e6, with[m] * 1e6, N, with[m] / none[m], N, closing[m] * 1e3))
  cli:close()
end)
srv:stop()
assert(ok, err)
