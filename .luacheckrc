-- luacheck configuration (make lint). Lua 5.4 first.
std = "lua54"
max_line_length = 120
-- it("...") descriptions say what a user sees, at whatever length.
files["spec/"] = { std = "+busted", max_line_length = false }
-- examples/run.lua hands the endpoints to the example it runs.
files["examples/"] = { globals = { "ETCD_ENDPOINTS", "arg" } }
-- the Lua side of the nginx example runs in nginx's lua module (LuaJIT)
files["examples/openresty/"] = { std = "luajit+ngx_lua" }
-- a busted spec of the kind users write (README "Testing your code against etcd")
files["examples/busted/"] = { std = "+busted" }
