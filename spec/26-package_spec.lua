-- Installing the module as users do: `make install` (PREFIX, DESTDIR) and
-- `luarocks make` of the rockspec into a fresh tree, each built apart from
-- the suite's own build; then a script that finds nothing of this checkout
-- loads the installed module and talks to a real etcd. Every file of
-- lua/etcd/ must be installed (a forgotten module fails `require "etcd"`
-- only when that part is used).
local helpers = require "helpers"

local function sh(cmd)
  local out, ok = helpers.popen(cmd .. " 2>&1").finish()
  return ok, out
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- The Lua these specs run on: its ABI directory (share/lua/5.4, ...), and
-- the Makefile's LUA= for it (lua5.4 is the default).
local ABI = helpers.lua_abi
local LUA_ARG = helpers.lua ~= "lua5.4" and " LUA=" .. q(helpers.lua) or ""

local function listing(dir, pattern)
  local _, out = sh(("cd %s && ls -1 %s 2>/dev/null"):format(q(dir), pattern))
  local t = {}
  for line in out:gmatch("[^\n]+") do t[#t + 1] = line end
  table.sort(t)
  return t
end

-- A script run by a Lua (lua5.4, ...: helpers.lua) that sees only `path` and `cpath`.
local SMOKE = [[
local etcd = require "etcd"
local searchpath = package.searchpath or function(name, path) -- Lua 5.1 has none
  for f in path:gmatch("[^;]+") do
    f = f:gsub("%?", (name:gsub("%.", "/")))
    local h = io.open(f)
    if h then h:close() return f end
  end
end
local core_at = searchpath("etcd.core", package.cpath)
local lua_at = searchpath("etcd", package.path)
local cli = assert(etcd.new { endpoints = { arg[1] } })
assert(cli:put("pkg/k", "installed"))
local m = assert(etcd.mirror(cli, "pkg/"))
local v = m:get("pkg/k")
m:close()
cli:close()
print("SMOKE", v, lua_at, core_at, etcd.version)
]]

describe("installing the module #build", function()
  local srv, dir
  setup(function()
    srv = helpers.start_etcd()
    dir = helpers.tmpdir()
    local f = assert(io.open(dir .. "/smoke.lua", "w"))
    f:write(SMOKE)
    f:close()
  end)
  teardown(function() if srv then srv:stop() end end)

  local function smoke(path, cpath)
    return sh(("cd %s && env LUA_PATH=%s LUA_CPATH=%s %s smoke.lua %s"):format(q(dir), q(path), q(cpath),
      helpers.lua, srv.endpoint))
  end

  local lua_files = listing("lua/etcd", "*.lua")

  it("make install puts every Lua file and the C module where Lua looks (PREFIX, DESTDIR)", function()
    local dest = dir .. "/dest"
    local ok, out = sh(("make -s -j2 install BUILD=%s DESTDIR=%s PREFIX=/opt/le VERSION=9.8.7%s"):format(
      q(dir .. "/build"), q(dest), LUA_ARG))
    assert.is_true(ok, out)
    local share, lib = dest .. "/opt/le/share/lua/" .. ABI, dest .. "/opt/le/lib/lua/" .. ABI
    assert.same(lua_files, listing(share .. "/etcd", "*.lua"))
    assert.same({ "core.so" }, listing(lib .. "/etcd", "*"))
    local ok2, out2 = smoke(share .. "/?.lua;" .. share .. "/?/init.lua", lib .. "/?.so")
    assert.is_true(ok2, out2)
    assert.matches("SMOKE\tinstalled\t" .. share:gsub("%p", "%%%0") .. "/etcd/init.lua\t"
      .. lib:gsub("%p", "%%%0") .. "/etcd/core.so\t9%.8%.7\n", out2) -- VERSION= reaches etcd.version
  end)

  it("make LUA=... builds for that Lua or stops, naming what to install", function()
    local ok, out = sh(("make -s all LUA=lua5.3 LUA_PC=lua-missing BUILD=%s"):format(q(dir .. "/nolua")))
    assert.is_falsy(ok)
    assert.matches("LUA=lua5.3: no Lua headers %(pkg%-config lua%-missing%); install lua5.3 liblua5.3%-dev", out)
    ok, out = sh(("make -s all LUA=lua9 BUILD=%s"):format(q(dir .. "/nolua")))
    assert.is_falsy(ok)
    assert.matches("LUA=lua9: one of lua5.4 lua5.3 lua5.1 luajit expected", out)
  end)

  it("make rockspec-release writes a release's rockspec from the scm one (docs/RELEASING.md)", function()
    local ok, out = sh(("make -s rockspec-release VERSION=1.2.3 ROCKSPEC_DIR=%s"):format(q(dir)))
    assert.is_true(ok, out)
    local spec = {}
    local chunk = assert(loadfile(dir .. "/etcd-1.2.3-1.rockspec", "t", spec))
    if rawget(_G, "setfenv") then setfenv(chunk, spec) end -- luacheck: ignore 113 (Lua 5.1)
    chunk()
    assert.equal("1.2.3-1", spec.version)
    assert.equal("v1.2.3", spec.source.tag)
    assert.equal("1.2.3", spec.build.build_variables.VERSION)
    assert.equal("1.2.3", spec.build.install_variables.VERSION)
    -- everything else as in the scm rockspec
    local scm = {}
    chunk = assert(loadfile("rockspec/etcd-scm-1.rockspec", "t", scm))
    if rawget(_G, "setfenv") then setfenv(chunk, scm) end -- luacheck: ignore 113
    chunk()
    assert.same(scm.dependencies, spec.dependencies)
    assert.same(scm.build.install_target, spec.build.install_target)
    assert.same(scm.description, spec.description)
    local bad
    ok, bad = sh(("make -s rockspec-release VERSION=scm ROCKSPEC_DIR=%s"):format(q(dir)))
    assert.is_falsy(ok)
    assert.matches("VERSION=X.Y.Z expected", bad)
  end)

  it("luarocks make of the rockspec installs a rock that works from its tree", function()
    -- from a copy of the sources, so that nothing is built in this checkout
    local src, tree = dir .. "/src", dir .. "/tree"
    assert(helpers.execute(("mkdir -p %s && cp -r Makefile LICENSE src lua proto rockspec %s/"):format(q(src), q(src))))
    local ok, out = sh(("cd %s && luarocks --lua-version=%s make rockspec/etcd-scm-1.rockspec --tree %s"):format(
      q(src), ABI, q(tree)))
    assert.is_true(ok, out)
    assert.matches("etcd scm%-1 is now installed", out)
    local share, lib = tree .. "/share/lua/" .. ABI, tree .. "/lib/lua/" .. ABI
    assert.same(lua_files, listing(share .. "/etcd", "*.lua"))
    assert.same({ "core.so" }, listing(lib .. "/etcd", "*"))
    local ok2, out2 = smoke(share .. "/?.lua;" .. share .. "/?/init.lua", lib .. "/?.so")
    assert.is_true(ok2, out2)
    assert.matches("SMOKE\tinstalled\t" .. share:gsub("%p", "%%%0") .. "/etcd/init.lua", out2)
    -- luarocks knows it
    local ok3, out3 = sh(("luarocks --lua-version=%s list --tree %s"):format(ABI, q(tree)))
    assert.is_true(ok3, out3)
    assert.matches("etcd%s+scm%-1", out3)
  end)
end)
