-- lua-etcd inside a real nginx (Debian's nginx + libnginx-mod-http-lua, on
-- LuaJIT; README "Using with OpenResty"): examples/openresty/nginx.conf as
-- shipped, on a free loopback port, against a throw-away etcd. One elected
-- worker mirrors a prefix into a lua_shared_dict that a location serves
-- (etcd.ngx.shared_mirror), and another takes over when it dies;
-- request handlers write and long-poll through their worker's client while
-- dozens of others wait; a client cannot be made in the master;
-- `nginx -s reload` leaves no worker, thread or connection behind.
-- The nginx processes run the LuaJIT build (build/luajit/, made by `make
-- spec`); this spec itself runs under any Lua. Tagged #nginx: not under
-- ASan or valgrind (nothing of it runs in the busted process).
local helpers = require "helpers"
local etcd = require "etcd"
local core = require "etcd.core"
local ts = require "testsupport"

local ROOT = assert(io.popen("pwd")):read("*l")
local NGINX = "/usr/sbin/nginx"
local LUAJIT_BUILD = ROOT .. "/build/luajit"

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

-- The pids of the live processes whose parent is `ppid` (from /proc: a
-- minimal Debian has no procps).
local function children(ppid)
  local out = {}
  for pid in sh("ls /proc"):gmatch("%d+") do
    local stat = read_file("/proc/" .. pid .. "/stat")
    local state, parent
    if stat then state, parent = stat:match("^%d+ %(.*%) (%a) (%d+)") end
    if parent and tonumber(parent) == ppid and state ~= "Z" then out[#out + 1] = tonumber(pid) end
  end
  table.sort(out)
  return out
end

local function threads(pid)
  local s = read_file("/proc/" .. pid .. "/status") or ""
  return tonumber(s:match("Threads:%s*(%d+)"))
end

-- Established TCP connections of process `pid` to local port `port`.
local function connections_to(pid, port)
  local inodes = {}
  for inode in sh("ls -l /proc/" .. pid .. "/fd"):gmatch("socket:%[(%d+)%]") do inodes[inode] = true end
  local n = 0
  for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
    for line in (read_file(f) or ""):gmatch("[^\n]+") do
      local rport, st, inode = line:match(
        "^%s*%d+:%s+%x+:%x+%s+%x+:(%x+)%s+(%x+)%s+%S+%s+%S+%s+%S+%s+%d+%s+%d+%s+(%d+)")
      if rport and tonumber(rport, 16) == port and st == "01" and inodes[inode] then n = n + 1 end
    end
  end
  return n
end

-- GET path -> status, body (its last newline off), or nil, msg.
local function http(port, path, secs)
  local status, body = ts.http_get(port, path, secs or 5, true)
  if not status then return nil, body end
  return status, (body:gsub("\n$", ""))
end

-- An nginx running examples/openresty/nginx.conf from `dir`, listening on
-- `port`, its workers talking to `endpoints`. `extra` is added to the http
-- block. A watchdog ends nginx should this Lua process die first.
local function start_nginx(endpoints, opts)
  opts = opts or {}
  local dir = helpers.tmpdir()
  local port = helpers.pick_ports(1)[1]
  local conf = assert(read_file(ROOT .. "/examples/openresty/nginx.conf"))
  local n
  conf, n = conf:gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")
  assert(n == 1)
  conf, n = conf:gsub('lua_package_path "%$prefix/%?%.lua;;";', ('lua_package_path "$prefix/?.lua;%s/lua/?.lua;%s/lua/?/init.lua;;";\n'
    .. '  lua_package_cpath "%s/?.so;;";\n%s'):format(ROOT, ROOT, LUAJIT_BUILD, opts.extra or ""))
  assert(n == 1)
  if opts.init then
    conf, n = conf:gsub('init_by_lua_block { require "etcd" }', function() return "init_by_lua_block {" .. opts.init .. "}" end)
    assert(n == 1)
  end
  if opts.location then
    conf, n = conf:gsub("(    # GET /config/<name>)", function(c) return opts.location .. "\n" .. c end)
    assert(n == 1)
  end
  if opts.workers then
    conf, n = conf:gsub("worker_processes 2;", "worker_processes " .. opts.workers .. ";")
    assert(n == 1)
  end
  -- as root, workers would run as nobody, who cannot read a tmpfs dir of ours
  conf = "user root;\ndaemon off;\n" .. conf
  os.execute("mkdir -p " .. dir .. "/logs")
  write_file(dir .. "/nginx.conf", conf)
  write_file(dir .. "/etcd_config.lua", assert(read_file(ROOT .. "/examples/openresty/etcd_config.lua")))
  local cmd = ("cd %s && ETCD_ENDPOINTS=%s %s -p %s -c nginx.conf -e logs/error.log >logs/stdout 2>&1 & N=$!; "
    .. "echo $N; (while kill -0 %d 2>/dev/null && kill -0 $N 2>/dev/null; do sleep 1; done; "
    .. "kill -QUIT $N 2>/dev/null) >/dev/null 2>&1 </dev/null &"):format(dir, table.concat(endpoints, ","), NGINX, dir,
    helpers.lua_pid)
  local pid = tonumber(sh(cmd):match("%d+"))
  local ngx = { dir = dir, port = port, pid = pid }
  function ngx.log() return (read_file(dir .. "/logs/error.log") or "") .. (read_file(dir .. "/logs/stdout") or "") end
  function ngx.workers() return children(pid) end
  function ngx.stop()
    if not helpers.proc_running(pid) then return end
    os.execute("kill -QUIT " .. pid)
    if not helpers.eventually(10, function() return not helpers.proc_running(pid) end) then
      for _, child in ipairs(children(pid)) do os.execute("kill -KILL " .. child) end
      os.execute("kill -KILL " .. pid)
    end
    os.execute("wait " .. pid .. " 2>/dev/null")
  end
  assert(helpers.eventually(10, function() return http(port, "/config/none", 1) == 404 end),
    "nginx did not start:\n" .. ngx.log())
  return ngx
end

describe("README's OpenResty section", function()
  it("shows examples/openresty/nginx.conf and etcd_config.lua as they are", function()
    local readme = assert(read_file(ROOT .. "/README.md"))
    local sec = assert(readme:match("\n## Using with OpenResty\n(.-)\n## "), "no section")
    assert.equal(read_file(ROOT .. "/examples/openresty/nginx.conf"), sec:match("```nginx\n(.-)```"))
    assert.equal(read_file(ROOT .. "/examples/openresty/etcd_config.lua"), sec:match("```lua\n(.-)```"))
  end)
end)

describe("OpenResty/nginx #nginx", function()
  local srv, cli, ngx
  setup(function()
    srv = helpers.start_etcd()
    cli = assert(etcd.new { endpoints = srv.endpoints })
  end)
  teardown(function()
    if ngx then ngx.stop() end
    if cli then cli:close() end
    if srv then srv:stop() end
  end)

  it("one worker mirrors config/ into a shared dict, and nginx serves a change within a second", function()
    assert(cli:put("config/colour", "red"))
    ngx = start_nginx(srv.endpoints)
    assert.is_true(helpers.eventually(5, function() return select(2, http(ngx.port, "/config/colour")) == "red" end),
      ngx.log())
    -- how long after etcd acknowledged a put nginx serves it (printed: the
    -- README quotes it)
    local took = {}
    for i = 1, 20 do
      local v = "colour" .. i
      assert(cli:put("config/colour", v))
      local t0 = core.now()
      local seen = helpers.eventually(1, function() return select(2, http(ngx.port, "/config/colour")) == v end, 0.002)
      assert.is_true(seen, ("the change to %s not served within a second"):format(v))
      took[i] = core.now() - t0
    end
    table.sort(took)
    print(("\n  nginx serves a change %.1f ms after etcd acknowledged it (median of 20; max %.1f ms)")
      :format(took[10] * 1000, took[20] * 1000))
    assert(cli:delete("config/colour"))
    assert.is_true(helpers.eventually(1, function() return http(ngx.port, "/config/colour") == 404 end, 0.01))
    assert.not_matches("%[error%]", ngx.log())
  end)

  it("a put from a request handler is served while 50 requests wait on etcd in the same worker", function()
    if ngx then ngx.stop() end
    ngx = start_nginx(srv.endpoints, { workers = 1 })
    local dir = ngx.dir
    local kids = {}
    for i = 1, 50 do
      local pid = ts.fork()
      if pid == 0 then
        local status, body = http(ngx.port, "/wait?key=gate", 20)
        local f = io.open(dir .. "/kid." .. i, "wb")
        if f then
          f:write(tostring(status), " ", tostring(body))
          f:close()
        end
        ts.exit(0)
      end
      kids[i] = pid
    end
    -- all 50 are parked in watches of nginx's only worker
    local status, body
    assert.is_true(helpers.eventually(15, function()
      status, body = http(ngx.port, "/status")
      return body:match("waiting (%d+)") == "50"
    end), "waiting: " .. tostring(body) .. "\n" .. ngx.log())
    -- the worker still answers: a put through etcd, from a request handler
    status, body = http(ngx.port, "/put?key=gate&value=open", 5)
    assert.equal(200, status, body)
    local rev = assert(tonumber(body))
    local res = assert(cli:get("config/gate"))
    assert.equal("open", res.kvs[1].value)
    assert.equal(rev, res.kvs[1].mod_revision)
    -- and that put ended every wait
    for i, pid in ipairs(kids) do
      assert.equal(0, ts.wait(pid))
      assert.equal("200 open", read_file(dir .. "/kid." .. i))
    end
    assert.not_matches("%[error%]", ngx.log())
  end)

  it("when the holder's worker dies, another takes over from the stored revision: changes keep arriving", function()
    if ngx then ngx.stop() end
    assert(cli:put("config/k", "v0"))
    ngx = start_nginx(srv.endpoints, { workers = 2 })
    local function status()
      local _, body = http(ngx.port, "/status")
      local t = {}
      for k, v in tostring(body):gmatch("(%a+) (%w+)") do t[k] = tonumber(v) or v end
      return t
    end
    local function served(v, limit)
      return helpers.eventually(limit or 5, function() return select(2, http(ngx.port, "/config/k")) == v end, 0.01)
    end
    assert.is_true(served("v0"), ngx.log())
    local st = status()
    assert.equal(1, st.loads)
    assert.equal(1, st.takeovers)
    for round = 1, 3 do
      local holder = assert(tonumber(status().holder), "no holder")
      -- the holder dies: nothing mirrors until another worker's lock attempt
      -- finds the lock expired (lock_ttl, 5 s); meanwhile etcd changes
      assert(helpers.execute("kill -KILL " .. holder))
      assert.is_true(helpers.eventually(5, function() return not helpers.proc_running(holder) end))
      for i = 1, 3 do assert(cli:put("config/k", ("r%d.%d"):format(round, i))) end
      assert(cli:delete("config/gone"))
      assert(cli:put("config/new" .. round, "yes"))
      assert.is_true(served(("r%d.3"):format(round), 15), "no takeover:\n" .. ngx.log())
      assert.equal("yes", select(2, http(ngx.port, "/config/new" .. round)))
      st = status()
      assert.are_not.equal(holder, st.holder)
      assert.equal(1, st.loads) -- caught up from the stored revision, no reload
      assert.equal(1 + round, st.takeovers)
      assert.equal(assert(cli:get("config/k")).header.revision, st.revision)
      -- and it goes on: a change is served within a second
      assert(cli:put("config/k", "after" .. round))
      assert.is_true(served("after" .. round, 1))
    end
    -- nginx -s reload: the old holder steps down, a new worker takes over at once
    local holder = status().holder
    assert(helpers.execute(("%s -p %s -c nginx.conf -s reload 2>/dev/null"):format(NGINX, ngx.dir)))
    assert.is_true(helpers.eventually(15, function()
      local h = status().holder
      return h ~= nil and h ~= "none" and h ~= holder and not helpers.proc_running(holder)
    end), ngx.log())
    assert(cli:put("config/k", "reloaded"))
    assert.is_true(served("reloaded", 1))
    assert.equal(1, status().loads)
    -- a holder stopped (SIGSTOP) while it waits loses the lock; resumed, it
    -- must not write the events it had queued over the newer ones
    holder = status().holder
    assert(helpers.execute("kill -STOP " .. holder))
    assert(cli:put("config/k", "stale"))
    assert.is_true(served("stale", 15), "no takeover from a stopped holder:\n" .. ngx.log())
    assert.are_not.equal(holder, status().holder)
    assert(cli:put("config/k", "fresh"))
    assert.is_true(served("fresh", 1))
    assert(helpers.execute("kill -CONT " .. holder))
    helpers.sleep(1.5) -- the resumed worker reads its watch, sees it lost the lock
    assert.equal("fresh", select(2, http(ngx.port, "/config/k")))
    assert.equal(1, status().loads)
    -- a compaction past the stored revision: the next holder loads again
    holder = status().holder
    assert(helpers.execute("kill -STOP " .. holder)) -- a hung holder: its lock runs out
    for i = 1, 5 do assert(cli:put("config/k", "c" .. i)) end
    assert(cli:compact(assert(cli:get("config/k")).header.revision))
    os.execute("kill -KILL " .. holder)
    assert.is_true(served("c5", 15), ngx.log())
    assert.equal(2, status().loads)
  end)

  it("loads in a request handler (no init_by_lua), and etcd.spawn/etcd.run work in one", function()
    if ngx then ngx.stop() end
    ngx = start_nginx(srv.endpoints, {
      init = " ",
      location = [[
    location = /spawn { content_by_lua_block {
      local etcd = require "etcd"
      local cli = require("etcd_config").client()
      local done = {}
      for i = 1, 5 do
        etcd.spawn(function()
          assert(cli:put("config/spawned" .. i, "v" .. i))
          etcd.sleep(0.01)
          local v = assert(cli:get("config/spawned" .. i)).kvs[1].value
          done[#done + 1] = v
        end)
      end
      etcd.run()
      table.sort(done)
      ngx.say(table.concat(done, " "))
    } }]],
    })
    for _ = 1, 3 do
      local status, body = http(ngx.port, "/spawn", 10)
      assert.equal(200, status, ngx.log())
      assert.equal("v1 v2 v3 v4 v5", body)
    end
    assert.not_matches("%[error%]", ngx.log())
  end)

  it("a client cannot be made in init_by_lua (the master): a clear error, and the workers work", function()
    if ngx then ngx.stop() end
    ngx = start_nginx(srv.endpoints, {
      init = [[
    local etcd = require "etcd"
    local ok, err = pcall(etcd.new, { endpoints = { "127.0.0.1:1" } })
    package.loaded.master_error = ok and "made" or tostring(err)
  ]],
      location = "    location = /master { content_by_lua_block { ngx.say(package.loaded.master_error) } }",
    })
    local status, body = http(ngx.port, "/master")
    assert.equal(200, status)
    assert.matches("etcd.new: not in init_by_lua%* %(nginx's master process, before the fork%)", body)
    assert(cli:put("config/after", "fine"))
    assert.is_true(helpers.eventually(5, function() return select(2, http(ngx.port, "/config/after")) == "fine" end),
      ngx.log())
    -- the master never started gRPC: one thread
    assert.equal(1, threads(ngx.pid))
  end)

  it("nginx -s reload leaves no worker, thread or connection behind", function()
    if ngx then ngx.stop() end
    ngx = start_nginx(srv.endpoints, { workers = 2 })
    local etcd_port = tonumber(srv.endpoint:match(":(%d+)$"))
    -- each worker has made its client: the mirror's holder, and a put's
    local function settle(v)
      assert(cli:put("config/reload", v))
      for _ = 1, 8 do assert.equal(200, (http(ngx.port, "/put?key=touch&value=" .. v))) end
      assert.is_true(helpers.eventually(5, function() return select(2, http(ngx.port, "/config/reload")) == v end),
        ngx.log())
    end
    local function census()
      local ws = ngx.workers()
      local t, c = {}, 0
      for i, pid in ipairs(ws) do
        t[i] = threads(pid)
        c = c + connections_to(pid, etcd_port)
      end
      table.sort(t)
      return { workers = #ws, threads = t, connections = c, master_threads = threads(ngx.pid),
        master_connections = connections_to(ngx.pid, etcd_port) }
    end
    settle("v0")
    local before = census()
    assert.equal(2, before.workers)
    assert.equal(1, before.master_threads)
    assert.equal(0, before.master_connections)
    for round = 1, 3 do
      local old = {}
      for _, pid in ipairs(ngx.workers()) do old[pid] = true end
      assert(helpers.execute(("%s -p %s -c nginx.conf -s reload 2>/dev/null"):format(NGINX, ngx.dir)))
      -- the old workers end (their mirror loop sees ngx.worker.exiting())
      assert.is_true(helpers.eventually(15, function()
        for pid in pairs(old) do
          if helpers.proc_running(pid) then return false end
        end
        return #ngx.workers() == 2
      end), "old workers still running after reload " .. round .. "\n" .. ngx.log())
      settle("v" .. round)
      local after = census()
      assert.equal(before.workers, after.workers)
      assert.equal(before.connections, after.connections)
      assert.equal(1, after.master_threads)
      assert.equal(0, after.master_connections)
      -- gRPC's pool grows and shrinks a little with the load: a new worker
      -- has as many as the first ones had, give or take that
      for _, t in ipairs(after.threads) do assert.is_true(t <= before.threads[2] + 3, tostring(t)) end
    end
    assert.not_matches("%[error%]", ngx.log())
    assert.not_matches("%[alert%]", ngx.log())
  end)
  it("a restore from a snapshot, then a new cluster behind the same endpoint: the dict is loaded again", function()
    if ngx then ngx.stop() end
    for i = 1, 5 do assert(cli:put("config/rs" .. i, "old")) end
    ngx = start_nginx(srv.endpoints, { workers = 2 })
    local function value(k) return select(2, http(ngx.port, "/config/" .. k)) end
    local function loads()
      local _, body = http(ngx.port, "/status")
      return tonumber(tostring(body):match("loads (%d+)"))
    end
    assert.is_true(helpers.eventually(5, function() return value("rs1") == "old" end), ngx.log())
    local loads0 = loads()
    local path = helpers.tmpdir() .. "/s.db"
    assert(cli:snapshot(path))
    assert(cli:put("config/rs1", "after"))
    assert(cli:put("config/rsnew", "after"))
    assert.is_true(helpers.eventually(5, function() return value("rsnew") == "after" end))
    -- etcd restored from the snapshot: its revision is behind the dict's
    helpers.restore_snapshot(srv, path)
    assert.is_true(helpers.eventually(30, function()
      return value("rs1") == "old" and http(ngx.port, "/config/rsnew") == 404
    end), "the restore was not noticed:\n" .. ngx.log())
    assert.equal(loads0 + 1, loads())
    -- a new, empty cluster behind the same endpoint
    helpers.new_cluster_in_place(srv)
    assert(cli:put("config/fresh", "1"))
    assert.is_true(helpers.eventually(30, function()
      return value("fresh") == "1" and http(ngx.port, "/config/rs1") == 404
    end), "the new cluster was not noticed:\n" .. ngx.log())
    assert.equal(loads0 + 2, loads())
  end)
end)
