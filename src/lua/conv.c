/*
 * Conversion for Lua: core._pack(message_name, table) -> bytes and
 * core._unpack(message_name, bytes) -> table, the very paths requests and
 * responses take (pbconv.c), for the specs and the fuzzers.
 */
#include "lua/binding.h"
#include "lua/pbconv.h"

#include <inttypes.h>
#include <stdio.h>

static int l_unpack(lua_State *L) {
  /* core._unpack(message_name, bytes): decode bytes as a response message.
   * For specs and the fuzzer: the same path as a real response. */
  const char *name = luaL_checkstring(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  const ProtobufCMessageDescriptor *d = lb_message_by_name(name);
  if (!d) return luaL_argerror(L, 1, "unknown message");
  if (!pbconv_unpack(L, d, data, len)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

static int l_pack(lua_State *L) {
  /* core._pack(message_name, table): the encoder used for requests. */
  const char *name = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  const ProtobufCMessageDescriptor *d = lb_message_by_name(name);
  if (!d) return luaL_argerror(L, 1, "unknown message");
  pbconv_pack(L, 2, d);
  return 1;
}

/* core.id(v) -> v as this Lua represents ids (an integer on 5.3+, a
 * decimal string on 5.1/LuaJIT), or nil when v is no id. A decimal string
 * keeps its sign; hex ("0x...") and numbers come back unsigned. */
static int l_id(lua_State *L) {
  int64_t v;
  if (!lb_to_id(L, 1, &v)) {
    lua_pushnil(L);
    return 1;
  }
  int negative = lua_type(L, 1) == LUA_TSTRING ? *lua_tostring(L, 1) == '-' : v < 0;
  lb_push_id(L, v, !negative);
  return 1;
}

/* core.id_hex(id, unsigned) -> lower-case hex, as Go's fmt "%x" formats the
 * id: an int64 (lease ids) with a minus sign when negative; with `unsigned`
 * (member and cluster ids, uint64 in etcd) its 64 bits. Raises for no id. */
static int l_id_hex(lua_State *L) {
  int64_t v = lb_check_id(L, 1);
  char buf[24];
  if (lua_toboolean(L, 2) || v >= 0) snprintf(buf, sizeof buf, "%" PRIx64, (uint64_t)v);
  else snprintf(buf, sizeof buf, "-%" PRIx64, (uint64_t)0 - (uint64_t)v);
  lua_pushstring(L, buf);
  return 1;
}

void lb_open_conv(lua_State *L) {
  lua_pushcfunction(L, l_id);
  lua_setfield(L, -2, "id");
  lua_pushcfunction(L, l_id_hex);
  lua_setfield(L, -2, "id_hex");
  pbconv_open(L);
  lua_pushcfunction(L, l_unpack);
  lua_setfield(L, -2, "_unpack");
  lua_pushcfunction(L, l_pack);
  lua_setfield(L, -2, "_pack");
}
