--- examples/run.lua: run an example against a throw-away etcd.
--
--   lua5.4 examples/run.lua examples/tour.lua [args...]      (what `make demo` runs)
--
-- Starts a single etcd on free loopback ports with spec/helpers.lua, hands its
-- endpoints to the script in the global ETCD_ENDPOINTS (comma-separated; the
-- examples prefer it over the environment variable of the same name), runs the
-- script in this process, and always stops etcd, even when the script raises.
-- Exits 0 when the script ran through, 1 when it (or starting etcd) failed.

local script = arg and arg[1]
if not script then
  io.stderr:write("usage: lua5.4 examples/run.lua SCRIPT.lua [args...]\n")
  os.exit(2)
end

-- The repository root is the parent of this file's directory.
local function dirname(p) return p:match("^(.*)/[^/]*$") or "." end
local here = dirname(arg[0] or "examples/run.lua")
local root = here == "." and ".." or dirname(here)

-- spec/helpers.lua (the test harness) starts etcd. lua/ and build/ come last,
-- so an explicit LUA_PATH / LUA_CPATH (as `make demo` sets) wins.
local function add(path, entries, first)
  local have = {}
  for e in path:gmatch("[^;]+") do have[e] = true end
  local new = {}
  for _, e in ipairs(entries) do
    if not have[e] then new[#new + 1] = e; have[e] = true end
  end
  if #new == 0 then return path end
  if first then return table.concat(new, ";") .. ";" .. path end
  return path .. ";" .. table.concat(new, ";")
end
package.path = add(package.path, { root .. "/spec/?.lua", "spec/?.lua" }, true)
package.path = add(package.path, { root .. "/lua/?.lua", root .. "/lua/?/init.lua" }, false)
package.cpath = add(package.cpath, { root .. "/build/?.so" }, false)

local function fail(msg)
  io.stderr:write("run.lua: ", tostring(msg), "\n")
  os.exit(1, true)
end

local chunk, lerr = loadfile(script)
if not chunk then fail(lerr) end

local ok_h, helpers = pcall(require, "helpers")
if not ok_h then fail("cannot load spec/helpers.lua: " .. tostring(helpers)) end

local started, srv = pcall(helpers.start_etcd)
if not started then fail("could not start etcd: " .. tostring(srv)) end

ETCD_ENDPOINTS = table.concat(srv.endpoints or { srv.endpoint }, ",")
print(("run.lua: throw-away etcd at %s"):format(ETCD_ENDPOINTS))

-- The script sees its own name as arg[0] and the rest of the command line.
local script_arg = { [0] = script }
for i = 2, #arg do script_arg[i - 1] = arg[i] end
arg = script_arg

local ok, err = xpcall(chunk, debug.traceback, table.unpack(script_arg))

-- Clients the script left open are closed before etcd goes away.
collectgarbage()
collectgarbage()

local stopped, serr = pcall(srv.stop, srv)
if not stopped then io.stderr:write("run.lua: stopping etcd failed: ", tostring(serr), "\n") end

if not ok then
  io.stderr:write(tostring(err), "\n")
  io.stderr:write(("run.lua: %s failed\n"):format(script))
  os.exit(1, true)
end
os.exit(stopped and 0 or 1, true)
