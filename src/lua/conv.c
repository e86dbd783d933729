/*
 * Conversion for Lua: core._pack(message_name, table) -> bytes and
 * core._unpack(message_name, bytes) -> table, the very paths requests and
 * responses take (pbconv.c), for the specs and the fuzzers.
 */
#include "lua/binding.h"
#include "lua/pbconv.h"

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

void lb_open_conv(lua_State *L) {
  pbconv_open(L);
  lua_pushcfunction(L, l_unpack);
  lua_setfield(L, -2, "_unpack");
  lua_pushcfunction(L, l_pack);
  lua_setfield(L, -2, "_pack");
}
