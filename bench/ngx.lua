-- What the nginx driver (lua/etcd/ngx.lua) costs: the same gets made inside
-- nginx (a content handler, waits yielding to nginx and polling between
-- ngx.sleep pauses) and in plain LuaJIT (waits blocking in poll()), against
-- one throw-away etcd, rounds interleaved (nginx, plain, nginx, ...): wall
-- time and CPU per call, one after the other and from BENCH_NGX_C concurrent
-- light threads (ngx.thread.spawn / etcd.spawn). Medians of BENCH_ROUNDS,
-- and the ratio nginx/plain.
--
--   make bench-ngx           (BENCH_ROUNDS=5, BENCH_NGX_N=300, BENCH_NGX_C=20)
local helpers = require "helpers"
local common = require "bench.common"

local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS") or "5")
local N = tonumber(os.getenv("BENCH_NGX_N") or "300")
local C = tonumber(os.getenv("BENCH_NGX_C") or "20")
local ROOT = assert(io.popen("pwd")):read("*l")

-- One round's work, the same code in both: `n` gets of one key by `c`
-- threads (`spawn`, `join`: nginx's or etcd's), timed with `now` and `cpu`.
local WORK = [[
local function work(cli, n, c, spawn, join, now, cpu)
  local t0, c0 = now(), cpu()
  local threads = {}
  for i = 1, c do
    threads[i] = spawn(function()
      for _ = 1, n / c do assert(cli:get("bench/k")) end
    end)
  end
  for i = 1, c do join(threads[i]) end
  return (now() - t0) * 1000 / n, (cpu() - c0) * 1000 / n
end
]]

local PLAIN = WORK .. [[
local etcd = require "etcd"
local core = require "etcd.core"
local ep, n, c = ...
n, c = tonumber(n), tonumber(c)
local cli = assert(etcd.new { endpoints = { ep } })
assert(cli:get("bench/k")) -- connected
local wall, cpu
if c == 1 then
  wall, cpu = work(cli, n, 1, function(f) f() end, function() end, core.now, os.clock)
else
  -- joining from the main thread runs etcd's scheduler until that task is done
  wall, cpu = work(cli, n, c, etcd.spawn, function(t) assert(t:join()) end, core.now, os.clock)
end
print(("RESULT wall_ms=%.4f cpu_ms=%.4f"):format(wall, cpu))
]]

local CONF = [[
daemon off;
master_process off;
worker_processes 1;
user root;
error_log logs/error.log warn;
pid logs/nginx.pid;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
events { worker_connections 256; }
http {
  access_log off;
  lua_package_path "$prefix/?.lua;ROOT/lua/?.lua;ROOT/lua/?/init.lua;;";
  lua_package_cpath "ROOT/build/luajit/?.so;;";
  server {
    listen 127.0.0.1:PORT;
    location = /work { content_by_lua_block {
      local etcd = require "etcd"
      local n, c = tonumber(ngx.var.arg_n), tonumber(ngx.var.arg_c)
      local cli = package.loaded.bench_cli
      if not cli then
        cli = assert(etcd.new { endpoints = { ngx.var.arg_ep } })
        package.loaded.bench_cli = cli
        assert(cli:get("bench/k"))
      end
      local function now() ngx.update_time() return ngx.now() end
      local wall, cpu = require("work")(cli, n, c, ngx.thread.spawn, ngx.thread.wait, now, os.clock)
      ngx.say(("RESULT wall_ms=%.4f cpu_ms=%.4f"):format(wall, cpu))
    } }
  }
}
]]

local srv = helpers.start_etcd()
local dir = helpers.tmpdir()
local port = helpers.pick_ports(1)[1]
local ok, err = pcall(function()
  local etcd = require "etcd"
  local cli = assert(etcd.new { endpoints = srv.endpoints })
  assert(cli:put("bench/k", string.rep("v", 100)))
  cli:close()
  os.execute("mkdir -p " .. dir .. "/logs")
  helpers.write_file(dir .. "/nginx.conf", (CONF:gsub("ROOT", ROOT):gsub("PORT", tostring(port))))
  helpers.write_file(dir .. "/work.lua", WORK .. "return work\n")
  helpers.write_file(dir .. "/plain.lua", PLAIN)
  os.execute(("cd %s && nginx -p %s -c nginx.conf >logs/stdout 2>&1 & echo $! > %s/ngx.pid"):format(dir, dir, dir))
  local ts = require "testsupport"
  assert(helpers.eventually(10, function() return ts.http_get(port, "/work?n=1&c=1&ep=" .. srv.endpoint, 5, true) end),
    "nginx did not start: " .. tostring(helpers.read_file(dir .. "/logs/error.log")))
  print(("ngx: etcd on %s, nginx %s with Debian's lua module, %d gets per round, %d rounds interleaved, medians")
    :format(srv.endpoint, select(2, common.sh("nginx -v")):match("[%d.]+") or "?", N, ROUNDS))
  for _, c in ipairs { 1, C } do
    local res = { nginx = {}, plain = {} }
    for r = 1, ROUNDS do
      local status, body = ts.http_get(port, ("/work?n=%d&c=%d&ep=%s"):format(N, c, srv.endpoint), 120, true)
      if status ~= 200 then
        error(("nginx: %s %s\n%s"):format(tostring(status), tostring(body),
          tostring(helpers.read_file(dir .. "/logs/error.log"))), 0)
      end
      local t = {}
      for k, v in body:gmatch("(%S+)=(%S+)") do t[k] = tonumber(v) end
      res.nginx[r] = t
      res.plain[r] = common.result(("LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='build/luajit/?.so;;' "
        .. "luajit %s/plain.lua %s %d %d"):format(dir, srv.endpoint, N, c))
    end
    print(("\n%s"):format(c == 1 and "one call after the other" or ("%d threads at once"):format(c)))
    print(("%-16s %10s %10s %8s"):format("per call", "nginx", "plain", "ratio"))
    for _, f in ipairs { "wall_ms", "cpu_ms" } do
      local a, b = common.median(res.nginx, f), common.median(res.plain, f)
      print(("%-16s %10.3f %10.3f %8.2f"):format(f, a, b, a / b))
    end
  end
end)
local pid = helpers.read_file(dir .. "/ngx.pid")
if pid then os.execute("kill -QUIT " .. pid:match("%d+") .. " 2>/dev/null") end
srv:stop()
assert(ok, err)
