/*
 * etcd.core: the C module behind lua/etcd/. The classes live one per file
 * (binding.h); this file only opens them. Waiting is Lua's business
 * (lua/etcd/wait.lua); objects start operations and report on them.
 */
#include "lua/binding.h"

#ifndef LUA_ETCD_VERSION
#define LUA_ETCD_VERSION "scm"
#endif

__attribute__((visibility("default"))) int luaopen_etcd_core(lua_State *L) {
  lua_newtable(L);
  lb_open_client(L); /* first: the others add client methods */
  lb_open_call(L);
  lb_open_stream(L);
  lb_open_watch(L);
  lb_open_keepalive(L);
  lb_open_pressure(L);
  lb_open_conv(L);
  lua_pushstring(L, LUA_ETCD_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, EC_MAX_ENDPOINTS);
  lua_setfield(L, -2, "MAX_ENDPOINTS");
  return 1;
}
