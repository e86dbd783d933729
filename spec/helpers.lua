-- spec/helpers.lua: what the specs share. The etcd servers themselves come
-- from etcd.testing (lua/etcd/testing.lua, the module users' own specs use
-- too): real etcd processes, never mocks, on free loopback ports with their
-- data on /dev/shm, stopped even when a spec fails or Lua dies. Its
-- documentation (start options, the server and cluster objects, etcdctl,
-- make_certs, tmpdir, ...) is at the top of that file.
--
-- Plain Lua only (io.popen, os.execute, /proc): no luasocket, no luaposix.
-- Runs on Lua 5.4, 5.3, 5.1 and LuaJIT 2.1, as the specs do (see "Lua
-- versions" below for what they use instead of 5.3/5.4-only features).
--
--   local helpers = require "helpers"
--   local srv
--   setup(function() srv = helpers.start_etcd() end)
--   teardown(function() if srv then srv:stop() end end)
--
-- or, for the usual one etcd and one client of it per describe block:
--
--   local srv, cli
--   helpers.etcd_fixture(function(s, c) srv, cli = s, c end,
--                        { etcd = start_etcd's opts, client = etcd.new's opts })
--
-- Every field of etcd.testing is a field of helpers too (helpers.start_etcd,
-- start_cluster, etcd_fixture, etcdctl, make_certs, tmpdir, stop_all,
-- pick_ports, proc_running, lua_pid, sleep, now, read_file, write_file,
-- shell_quote, execute, popen, and the settings start_timeout, stop_grace,
-- start_attempts): helpers reads them from etcd.testing, and assigning one
-- through helpers (helpers.pick_ports = f, helpers.stop_grace = 1) sets it in
-- etcd.testing, where the servers' code reads it.
--
-- The specs' own helpers:
--   helpers.prefix_values(cli, pfx[, rev]) -> key -> value, header;
--   helpers.mirror_values(m) -> an etcd.mirror's copy as key -> value,
--   helpers.count(cli, pfx) -> how many keys under pfx,
--   helpers.eventually(limit, f[, step]) (poll f until true or limit seconds),
--   helpers.until_true(pred[, limit]) (poll with etcd.sleep; raises),
--   helpers.run_lua(script[, {env=, args=, seconds=}]) -> status, stdout,
--     stderr, seconds (a child helpers.lua with this process's module paths),
--   helpers.child_env: what to put before a child Lua's command (under ASan:
--     no leak check, as run_lua does),
--   helpers.under_asan, helpers.under_valgrind (booleans: this process runs
--   with the ASan runtime preloaded / under valgrind), helpers.slowdown (1,
--   3 under ASan, 20 under valgrind: scale bounds on elapsed time by it)
-- Lua versions (the same spec sources run on 5.4, 5.3, 5.1 and LuaJIT 2.1):
--   helpers.defer(obj) -> obj: `local x = helpers.defer(obj)` for `local x
--     <close> = obj` in a test: obj is closed when the running test ends,
--     passed or failed (details at its definition); helpers.close_now(obj)
--     closes as the end of a <close> variable's block does;
--     helpers.load54(src) compiles Lua 5.4 source (nil elsewhere: the specs
--     about <close> itself are pending there); helpers.has_tbc
--   helpers.lua_abi ("5.4", "5.3", "5.1"), helpers.lua (the interpreter for a
--     child: lua5.4, lua5.3, lua5.1 or luajit; LUA_ETCD_SPEC_LUA overrides)
--   helpers.pack / helpers.unpack (table.pack / table.unpack),
--   helpers.is_integer(v) (math.type(v) == "integer"; before 5.3 a number
--     without a fraction), helpers.is_id(v), helpers.execute(cmd) (os.execute
--     with 5.2+'s results), helpers.popen(cmd).finish() -> output, ok, how,
--     code (an io.popen read to the end, with the exit status even on 5.1)

local testing = require "etcd.testing"

-- helpers.X is testing.X for every X helpers does not define itself, and
-- assigning such an X through helpers assigns it in testing.
local M = setmetatable({}, {
  __index = testing,
  __newindex = function(t, k, v)
    if testing[k] ~= nil then testing[k] = v else rawset(t, k, v) end
  end,
})

local q, read_file, write_file, now = testing.shell_quote, testing.read_file, testing.write_file, testing.now

do
  -- make asan preloads libasan; valgrind preloads its vgpreload_*.so
  local preload = os.getenv("LD_PRELOAD") or ""
  M.under_asan = preload:find("libasan", 1, true) ~= nil
  M.under_valgrind = preload:find("vgpreload", 1, true) ~= nil
  M.slowdown = M.under_valgrind and 20 or M.under_asan and 3 or 1
end

---------------------------------------------------------------------------
-- Lua 5.1 / LuaJIT 2.1 / 5.3 / 5.4: the same specs run on each

-- "5.4", "5.3" or "5.1" (LuaJIT: "5.1"); the interpreter a child Lua runs with
-- (LUA_ETCD_SPEC_LUA overrides): lua5.4, lua5.3, lua5.1 or luajit.
M.lua_abi = _VERSION:match("%d+%.%d+")
M.lua = os.getenv("LUA_ETCD_SPEC_LUA") or (rawget(_G, "jit") and "luajit" or "lua" .. M.lua_abi)
-- Does this Lua have to-be-closed variables (`local x <close> = ...`)?
M.has_tbc = M.lua_abi >= "5.4"

-- table.pack / table.unpack
M.pack = table.pack or function(...) return { n = select("#", ...), ... } end
M.unpack = table.unpack or rawget(_G, "unpack")

-- Is v an integer: on 5.3+ of integer subtype (math.type), before 5.3 a
-- finite number without a fractional part.
-- helpers.is_id(v): v is an id as this Lua represents ids (etcd.id): an
-- integer on 5.3+, a decimal string on 5.1/LuaJIT.
function M.is_id(v)
  return v ~= nil and require("etcd.core").id(v) == v
end

function M.is_integer(v)
  if math.type then return math.type(v) == "integer" end
  return type(v) == "number" and v == math.floor(v) and v ~= math.huge and v ~= -math.huge
end

-- Close obj as a to-be-closed variable does: its __close metamethod (with no
-- error), or else obj:close().
local function close_obj(obj)
  local mt = debug.getmetatable(obj)
  local f = type(mt) == "table" and rawget(mt, "__close")
  if f then return f(obj, nil) end
  return obj:close()
end

-- helpers.load54(src[, name]) -> the function compiled from `src`, Lua 5.4
-- source (to-be-closed variables: a spec about <close> itself), or nil on a
-- Lua without them; keeps such a spec file loadable on every Lua.
function M.load54(src, name)
  if not M.has_tbc then return nil end
  return assert(load(src, name or "=(Lua 5.4 source)", "t"))
end

-- helpers.close_now(obj): close obj now as the end of a <close> variable's
-- block does (its __close, else obj:close()).
M.close_now = close_obj

-- helpers.defer(obj) -> obj: the portable `local x <close> = obj` of a busted
-- test. obj (an object with a __close metamethod or a close method; nil and
-- false are returned as they are, as <close> allows) is closed when the
-- running test ends, passed or failed: after its body and before the
-- after_each blocks, the objects deferred last first. Each close is called
-- once; if one raises, the others are still closed and the test then fails
-- with the first error. defer keeps no object alive: the list is weak, and an
-- object collected before the test ends is not closed by it (the collector
-- closed it). Where a spec depends on the close at the end of a block (do
-- ... end, a loop, a function called by the test) it closes the object there
-- itself (helpers.close_now), and defer only covers a failure before that
-- point (closing twice is harmless: close is idempotent).
-- Implementation: the test's finally() (busted keeps one per test: a spec
-- that calls finally itself replaces it, and then the end-of-test event
-- closes what is left).
local deferred = setmetatable({}, { __mode = "v" })
local ndeferred = 0
local current_test, finally_set   -- the running test's busted element

local function close_deferred()
  local first_err
  for i = ndeferred, 1, -1 do
    local obj = deferred[i]
    deferred[i] = nil
    if obj ~= nil then
      local ok, err = pcall(close_obj, obj)
      if not ok and first_err == nil then first_err = err end
    end
  end
  ndeferred = 0
  if first_err ~= nil then error(first_err, 0) end
end

do
  -- only under busted (the benches require this module too)
  local busted = package.loaded.busted
  local ok, subscribe = pcall(function() return busted.subscribe end)
  if ok and subscribe then
    -- mediator subscribers return nil, true: the next one runs too
    subscribe({ "test", "start" }, function(element)
      current_test, finally_set = element, false
      return nil, true
    end)
    subscribe({ "test", "end" }, function()
      current_test = nil
      if ndeferred > 0 then close_deferred() end
      return nil, true
    end)
  end
end

function M.defer(obj)
  if obj == nil or obj == false then return obj end
  local mt = debug.getmetatable(obj)
  local closable = type(mt) == "table" and rawget(mt, "__close")
  if not closable then
    local ok, c = pcall(function() return obj.close end)
    closable = ok and c
  end
  if not closable then error("helpers.defer: a value with neither __close nor close: " .. tostring(obj), 2) end
  if not current_test then error("helpers.defer: not inside a running busted test", 2) end
  ndeferred = ndeferred + 1
  deferred[ndeferred] = obj
  if not finally_set then
    finally_set = true
    local env = current_test.env
    if env and env.finally then env.finally(close_deferred) end
  end
  return obj
end

-- Wait up to `limit` seconds, polling every `step` (default 0.05), for f()
-- to be true; then one last f() decides.
function M.eventually(limit, f, step)
  local t0 = now()
  repeat
    if f() then return true end
    M.sleep(step or 0.05)
  until now() - t0 > limit
  return f()
end

-- Wait until pred() holds, polling every 10 ms with etcd.sleep (so inside a
-- spawned coroutine the others run meanwhile); raises after `limit` seconds
-- (default 10) times helpers.slowdown.
function M.until_true(pred, limit)
  local etcd = require "etcd"
  local t0 = now()
  while not pred() do
    if now() - t0 > (limit or 10) * M.slowdown then error("condition not reached in time", 2) end
    etcd.sleep(0.01)
  end
end

-- cli:member_remove(id), asked again every 0.25 s for 10 s while etcd
-- refuses it (a removal that would leave it unhealthy for a moment):
-- its result, or nil, msg from the last try.
function M.member_remove(cli, id)
  local removed, msg
  for _ = 1, 40 do
    removed, msg = cli:member_remove(id)
    if removed then break end
    M.sleep(0.25)
  end
  return removed, msg
end

-- Each of the watches `ws` sees exactly `revs` (sorted mod revisions), in
-- order, and nothing after; each is closed.
function M.assert_watches_saw(ws, revs)
  local luassert = require "luassert"
  for i, w in ipairs(ws) do
    local seen = {}
    while #seen < #revs do
      local r = assert(w:next(10))
      for _, e in ipairs(r.events) do seen[#seen + 1] = e.kv.mod_revision end
    end
    luassert.same(revs, seen, "watch " .. i)
    luassert.is_nil(w:next(0.2))
    w:close()
  end
end

-- How many keys start with `pfx` (a count-only get on client `cli`).
function M.count(cli, pfx)
  return assert(cli:get(pfx, { prefix = true, count_only = true })).count
end

-- The keys under `pfx` as the store has them (at `rev`, nil: now): key ->
-- value, and the response's header.
-- helpers.restore_snapshot(srv, path): etcd `srv` stopped, its data replaced
-- by the snapshot at `path` (etcdctl snapshot restore, same member and
-- cluster token: the same cluster id, an older revision), started again.
function M.restore_snapshot(srv, path)
  srv:stop { keep_data = true }
  assert(M.execute("rm -rf '" .. srv.data_dir .. "'"))
  local ok, out, err = M.etcdctl(srv, "snapshot", "restore", path, "--data-dir", srv.data_dir,
    "--name", srv.name, "--initial-cluster", srv.initial_cluster,
    "--initial-cluster-token", srv.token, "--initial-advertise-peer-urls", srv.peer_url)
  assert(ok, tostring(out) .. tostring(err))
  srv:restart()
end

-- helpers.new_cluster_in_place(srv): etcd `srv` replaced by a new, empty
-- cluster on the same ports.
function M.new_cluster_in_place(srv)
  srv:stop { keep_data = true }
  assert(M.execute("rm -rf '" .. srv.data_dir .. "'"))
  srv:_spawn("new")
  srv:wait_healthy()
end

function M.prefix_values(cli, pfx, rev)
  local res = assert(cli:get(pfx, { prefix = true, revision = rev }))
  local t = {}
  for _, kv in ipairs(res.kvs) do t[kv.key] = kv.value end
  return t, res.header
end

-- A mirror's copy (etcd.mirror) as key -> value.
function M.mirror_values(m)
  local t = {}
  for k, _, kv in m:pairs() do t[k] = kv.value end
  return t
end

-- Children that exit on purpose run without LeakSanitizer under ASan. Every
-- child Lua ends with gRPC's threads still at work (gRPC lives as long as
-- the process), and what such a thread holds at that moment is not always
-- visible to LeakSanitizer: CI once reported OpenSSL objects of a failed TLS
-- handshake as leaked in spec/12's child. gcc 12's exit-time leak tracer also
-- now and then crashes scanning such threads ("Tracer caught signal 11").
-- ASan's and UBSan's other checks stay on in the child; the spec process
-- itself keeps the leak check (docs/SANITIZERS.md).
local CHILD_ASAN = M.under_asan
  and "ASAN_OPTIONS=" .. q((os.getenv("ASAN_OPTIONS") or "") .. ":detect_leaks=0") .. " "
  or ""
M.child_env = CHILD_ASAN

-- run_lua(script[, opts]) -> status, stdout, stderr, seconds
-- Run `script` in a child helpers.lua with this process's module paths (so under
-- make asan it loads the ASan build), killed after opts.seconds (default 30,
-- times helpers.slowdown). opts.env: "NAME=value ..." put before the
-- command; opts.args: the script's arguments (...). status is the exit code,
-- or 128 + the signal that ended it.
function M.run_lua(script, opts)
  opts = opts or {}
  local src, out, err = os.tmpname(), os.tmpname(), os.tmpname()
  write_file(src, script)
  local args = {}
  for i, a in ipairs(opts.args or {}) do args[i] = q(a) end
  local cmd = ("%s%s LUA_PATH=%s LUA_CPATH=%s timeout -s KILL %d %s %s %s >%s 2>%s"):format(
    CHILD_ASAN, opts.env or "", q(package.path), q(package.cpath),
    math.ceil((opts.seconds or 30) * M.slowdown), M.lua, q(src), table.concat(args, " "), q(out), q(err))
  local t0 = now()
  local _, how, code = M.execute(cmd)
  local took = now() - t0
  local o, e = read_file(out), read_file(err)
  os.remove(src)
  os.remove(out)
  os.remove(err)
  return how == "signal" and 128 + code or code, assert(o), assert(e), took
end

return M
