-- The benchmark (issue "faster than etcd's own Go client"): one throw-away
-- etcd (data dir on /dev/shm, --metrics extensive), and each workload run by
-- our client (bench/bench.lua), etcd's Go client (build/bench/kv, from
-- bench/go/kv), Node's etcd3 (bench/node/bench.js) and, where it applies, the
-- floor (build/bench/floor: pre-encoded requests through the bare gRPC C
-- core), each round a process of its own, rounds interleaved (ours, Go,
-- Node, floor, ours, ...) so that machine noise hits all alike. Prints the
-- medians of BENCH_ROUNDS rounds per client, the ratios ours/Go, and etcd's
-- own handling time per op (from /metrics), so the client's share shows.
--
--   make bench-kv    (BENCH_ROUNDS=3 BENCH_WORKLOADS="put_seq get_seq ..." BENCH_SCALE=1)
--
-- BENCH_PUMP=1 adds a row "pump": ours with the pump thread alone driving.
-- BENCH_SCALE multiplies every workload's op count (0.1 for a quick look).
-- BENCH_MEM=1 adds mem_watch_ka (10,000 watches + 10,000 kept-alive leases)
-- and rss_puts (1,000,000 puts).
local helpers = require "helpers"
local common = require "bench.common"

local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS") or "3")
local SCALE = tonumber(os.getenv("BENCH_SCALE") or "1")
local LUA = os.getenv("BENCH_LUA") or "lua5.4"
local CLIENTS = { "ours", "go", "node", "floor" }
-- BENCH_PUMP=1 adds "pump": ours with LUA_ETCD_PUMP_ONLY=1 (the pump thread
-- alone drives gRPC's queue, as before the Lua thread drove it while waiting)
local PUMP = os.getenv("BENCH_PUMP") == "1"
if PUMP then table.insert(CLIENTS, 2, "pump") end

-- workload -> ops, the gRPC methods whose server time counts, floor's name
local WORKLOADS = {
  { "put_seq", 5000, { "KV/Put" }, "put_seq" },
  { "get_seq", 5000, { "KV/Range" }, "get_seq" },
  { "get_100", 2000, { "KV/Range" } },
  { "get_100_ns", 2000, { "KV/Range" } },
  { "txn_cas_seq", 3000, { "KV/Txn" } },
  { "lease_seq", 2000, { "Lease/LeaseGrant", "Lease/LeaseRevoke" } },
  { "put_conc", 20000, { "KV/Put" }, "put_conc" },
  { "watch", 20000, { "KV/Put" } },
}
if os.getenv("BENCH_MEM") == "1" then
  WORKLOADS[#WORKLOADS + 1] = { "mem_watch_ka", 10000, {} }
  WORKLOADS[#WORKLOADS + 1] = { "rss_puts", 1000000, {} }
end
local only = os.getenv("BENCH_WORKLOADS")
if only then
  local keep = {}
  for _, w in ipairs(WORKLOADS) do
    if (" " .. only .. " "):find(" " .. w[1] .. " ", 1, true) then keep[#keep + 1] = w end
  end
  WORKLOADS = keep
end

local sh, result = common.sh, common.result

-- etcd's cumulative handling seconds and count of the given methods
local function server_time(url, methods)
  local _, out = sh("curl -s " .. url .. "/metrics")
  local sum, count = 0, 0
  for _, m in ipairs(methods) do
    local svc, name = m:match("^(%w+)/(%w+)$")
    local pat = 'grpc_server_handling_seconds_(%a+){grpc_method="' .. name .. '",grpc_service="etcdserverpb.' .. svc
      .. '",grpc_type="unary"} ([%d.e+-]+)'
    for kind, v in out:gmatch(pat) do
      if kind == "sum" then sum = sum + tonumber(v) elseif kind == "count" then count = count + tonumber(v) end
    end
  end
  return sum, count
end

local median = common.median

assert(os.execute("bench/go/build.sh"), "bench/go/build.sh failed")
local have_node = os.execute("test -d bench/node/node_modules/etcd3 && command -v node >/dev/null")
local have_floor = os.execute("test -x build/bench/floor")

local srv = helpers.start_etcd { args = { "--metrics=extensive", "--quota-backend-bytes=4294967296" } }
local ok, err = pcall(function()
  local ep, url = srv.endpoint, srv.client_url
  local _, ver = sh("etcd --version | head -1")
  print(("bench: %s on %s, %d rounds interleaved, medians; %s"):format(ver:gsub("\n", ""), ep, ROUNDS,
    os.date("!%Y-%m-%d %H:%M UTC")))
  if not have_node then print("bench: Node's etcd3 not installed (make bench-deps): no Node column") end
  local summary = {}
  for _, w in ipairs(WORKLOADS) do
    local name, n, methods, floor = w[1], math.max(1, math.floor(w[2] * SCALE)), w[3], w[4]
    local cmds = {
      ours = ("BENCH_ENDPOINTS=%s BENCH_WORKLOAD=%s BENCH_N=%d %s bench/bench.lua"):format(ep, name, n, LUA),
      pump = PUMP and ("LUA_ETCD_PUMP_ONLY=1 BENCH_ENDPOINTS=%s BENCH_WORKLOAD=%s BENCH_N=%d %s bench/bench.lua")
        :format(ep, name, n, LUA) or nil,
      go = ("build/bench/kv -endpoints %s -workload %s -n %d"):format(ep, name, n),
      node = have_node and ("node bench/node/bench.js %s %s %d"):format(ep, name, n) or nil,
      floor = (floor and have_floor) and ("build/bench/floor %s %s %d"):format(ep, floor, n) or nil,
    }
    local res = {}
    for _, c in ipairs(CLIENTS) do res[c] = {} end
    for _ = 1, ROUNDS do
      for _, c in ipairs(CLIENTS) do
        if cmds[c] then
          local s0, n0 = server_time(url, methods)
          local r = result(cmds[c])
          local s1, n1 = server_time(url, methods)
          r.server_us_op = n1 > n0 and (s1 - s0) / (n1 - n0) * 1e6 or 0
          table.insert(res[c], r)
        end
      end
    end
    print(("\n%s: %d ops"):format(name, n))
    print(("%-8s %10s %9s %9s %9s %7s %10s %10s"):format("client", "ops/s", "p50 µs", "p99 µs", "mean µs", "errors",
      "cpu µs/op", "server µs"))
    local med = {}
    for _, c in ipairs(CLIENTS) do
      if #res[c] > 0 then
        local m = {}
        for _, f in ipairs { "ops_s", "p50_us", "p99_us", "mean_us", "errors", "cpu_us_op", "server_us_op",
                             "rss_mb", "rss_growth_mb" } do
          local list = {}
          for _, r in ipairs(res[c]) do if r[f] then list[#list + 1] = r[f] end end
          m[f] = median(list)
        end
        med[c] = m
        print(("%-8s %10.0f %9.1f %9.1f %9.1f %7d %10.2f %10.1f%s"):format(c, m.ops_s, m.p50_us, m.p99_us, m.mean_us,
          m.errors, m.cpu_us_op, m.server_us_op,
          m.rss_mb and (" rss %.1f MiB"):format(m.rss_mb) .. (m.rss_growth_mb and (", growth %.1f MiB"):format(
            m.rss_growth_mb) or "") or ""))
      end
    end
    local o, g, f = med.ours, med.go, med.floor
    local line = ("%-8s ours/Go: ops/s %.2f, p50 %.2f, cpu/op %.2f"):format("", o.ops_s / g.ops_s,
      g.p50_us > 0 and o.p50_us / g.p50_us or 0, o.cpu_us_op / g.cpu_us_op)
    if f then line = line .. (", ours/floor: ops/s %.2f, p50 %.2f"):format(o.ops_s / f.ops_s, o.p50_us / f.p50_us) end
    print(line)
    summary[#summary + 1] = { name, o, g, med.node, f }
  end
  print("\nsummary (ours/Go; p50 for sequential workloads, ops/s for concurrent ones; cpu µs/op)")
  for _, s in ipairs(summary) do
    local name, o, g = s[1], s[2], s[3]
    print(("%-12s p50 %.2f  ops/s %.2f  cpu %.2f"):format(name, g.p50_us > 0 and o.p50_us / g.p50_us or 0,
      o.ops_s / g.ops_s, o.cpu_us_op / g.cpu_us_op))
  end
end)
srv:stop()
assert(ok, err)
