-- One round of bench/mirror.lua, in a process of its own (for its resident
-- memory): load BENCH_PREFIX either with a plain paged get into a table of
-- kvs (BENCH_MODE=get: what a hand-written mirror keeps) or with
-- etcd.mirror (BENCH_MODE=mirror), and report the time and the memory it
-- took. The mirror round then applies BENCH_CHANGES puts and reports the CPU
-- time per change applied.
local etcd = require "etcd"
local core = require "etcd.core"

local EP = assert(os.getenv("BENCH_ENDPOINTS"))
local MODE = os.getenv("BENCH_MODE") or "mirror"
local PREFIX = os.getenv("BENCH_PREFIX") or "b/"
local PAGE = tonumber(os.getenv("BENCH_PAGE") or "1000")
local CHANGES = tonumber(os.getenv("BENCH_CHANGES") or "1000")

local rss_kb = require("bench.common").rss_kb

local cli = assert(etcd.new { endpoints = { EP }, max_recv_size = 64 << 20 })
assert(cli:get("warm-up"))
collectgarbage("collect")
local rss0 = rss_kb()
local t0, c0 = core.now(), os.clock()
local keep, n
if MODE == "get" then
  local t, key, rev, stop = {}, PREFIX, 0, etcd.prefix_end(PREFIX)
  n = 0
  while true do
    local res = assert(cli:get(key, { range_end = stop, limit = PAGE, revision = rev }))
    if rev == 0 then rev = res.header.revision end
    for _, kv in ipairs(res.kvs) do
      t[kv.key] = kv
      n = n + 1
    end
    if not res.more then break end
    key = res.kvs[#res.kvs].key .. "\0"
  end
  keep = t
else
  keep = assert(etcd.mirror(cli, PREFIX, { page_size = PAGE }))
  n = keep:count()
end
local load_s, load_cpu = core.now() - t0, os.clock() - c0
collectgarbage("collect")
local rss1 = rss_kb()
local apply_us = 0
if MODE == "mirror" and CHANGES > 0 then
  local w = assert(etcd.new { endpoints = { EP } })
  local last
  for i = 1, CHANGES do last = assert(w:put(("%schange/%06d"):format(PREFIX, i), "v")).header.revision end
  local c1 = os.clock()
  assert(keep:wait(last, 30))
  apply_us = (os.clock() - c1) / CHANGES * 1e6
  assert(w:delete(PREFIX .. "change/", { prefix = true }))
  w:close()
end
print(("RESULT keys=%d load_s=%.4f load_cpu_s=%.4f rss_mb=%.2f bytes_per_key=%.0f apply_cpu_us=%.2f"):format(
  n, load_s, load_cpu, (rss1 - rss0) / 1024, (rss1 - rss0) * 1024 / n, apply_us))
if MODE == "mirror" then keep:close() end
cli:close()
