/*
 * One source for Lua 5.4, 5.3, 5.1 and LuaJIT 2.1 (OpenResty's luajit2).
 * The binding is written against 5.4's API; this header supplies what the
 * older ones lack, and nothing else: every file of src/lua/ includes it
 * through binding.h or pbconv.h, after lua.h and lauxlib.h.
 *
 * 64-bit integers. On 5.3+ lua_Integer is int64_t and every etcd integer is
 * exact. Where numbers are doubles (5.1, LuaJIT) counters (revisions,
 * versions, counts, TTLs, sizes) stay numbers, exact below 2^53, while
 * identifiers (lease, member, cluster and leader ids: random 64-bit values,
 * almost always above 2^53) are decimal strings. lb_push_id / lb_to_id are
 * the one place that choice is made (DESIGN.md, "Lua versions").
 */
#ifndef ETCD_LUA_COMPAT_H
#define ETCD_LUA_COMPAT_H

#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#if LUA_VERSION_NUM >= 503
#define LB_INT64 1 /* lua_Integer holds every int64 */
#else
#define LB_INT64 0
#endif

#if LUA_VERSION_NUM < 502 /* 5.1 and LuaJIT */
#ifndef LUA_OK
#define LUA_OK 0
#endif
#define lua_rawlen(L, i) lua_objlen((L), (i))

static inline int lb_absindex(lua_State *L, int i) {
  return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
#define lua_absindex(L, i) lb_absindex((L), (i))

static inline int lb_rawgetp(lua_State *L, int t, const void *p) {
  t = lb_absindex(L, t);
  lua_pushlightuserdata(L, (void *)(uintptr_t)p);
  lua_rawget(L, t);
  return lua_type(L, -1);
}
#define lua_rawgetp(L, t, p) lb_rawgetp((L), (t), (p))

static inline void lb_rawsetp(lua_State *L, int t, const void *p) {
  t = lb_absindex(L, t);
  lua_pushlightuserdata(L, (void *)(uintptr_t)p);
  lua_insert(L, -2);
  lua_rawset(L, t);
}
#define lua_rawsetp(L, t, p) lb_rawsetp((L), (t), (p))

/* The get functions return the value's type from 5.3 on. */
static inline int lb_getfield(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  return lua_type(L, -1);
}
#define lua_getfield(L, t, k) lb_getfield((L), (t), (k))
static inline int lb_rawget(lua_State *L, int t) {
  lua_rawget(L, t);
  return lua_type(L, -1);
}
#define lua_rawget(L, t) lb_rawget((L), (t))
static inline int lb_gettable(lua_State *L, int t) {
  lua_gettable(L, t);
  return lua_type(L, -1);
}
#define lua_gettable(L, t) lb_gettable((L), (t))

/* Only the n = -1 rotation the binding uses (the top moved down to i). */
#define lua_rotate(L, i, n) ((void)(n), lua_insert((L), (i)))

/* LuaJIT's own lua_tointegerx truncates 1.5 to 1 and says it is a number:
 * only an integral value in range is an integer here, as on 5.3+. */
static inline lua_Integer lb_tointegerx(lua_State *L, int i, int *isnum) {
  int ok = lua_type(L, i) == LUA_TNUMBER ||
           (lua_type(L, i) == LUA_TSTRING && lua_isnumber(L, i));
  lua_Number n = ok ? lua_tonumber(L, i) : 0;
  ok = ok && n >= -9223372036854775808.0 && n < 9223372036854775808.0 &&
       (lua_Number)(lua_Integer)n == n;
  if (isnum) *isnum = ok;
  return ok ? (lua_Integer)n : 0;
}
#undef lua_tointegerx
#define lua_tointegerx(L, i, isnum) lb_tointegerx((L), (i), (isnum))

#ifndef LUA_LJDIR /* LuaJIT 2.1 (its luaconf.h defines LUA_LJDIR) has these 5.2
                    functions; 5.1 has not */
static inline void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name; l++) {
    for (int i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
static inline void luaL_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
static inline void *luaL_testudata(lua_State *L, int i, const char *tname) {
  void *p = lua_touserdata(L, i);
  if (!p || !lua_getmetatable(L, i)) return NULL;
  luaL_getmetatable(L, tname);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? p : NULL;
}
#define luaL_newlib(L, l) (lua_newtable(L), luaL_setfuncs((L), (l), 0))
#endif /* !LUA_LJDIR */
#endif /* LUA_VERSION_NUM < 502 */

#if LUA_VERSION_NUM < 503 /* 5.1, LuaJIT: no sized buffers */
#define LB_SIZED_BUFFER 0
#else
#define LB_SIZED_BUFFER 1
#endif

#if LUA_VERSION_NUM < 504
/* No user values before 5.4 (the binding uses none). */
#define lua_newuserdatauv(L, sz, nuv) ((void)(nuv), lua_newuserdata((L), (sz)))
/* lua_gc's third argument became variadic in 5.4. */
#define lb_gc(L, what, data) lua_gc((L), (what), (data))
#ifndef LUA_GCISRUNNING /* 5.1 */
#define LB_GC_RUNNING(L) 1
#else
#define LB_GC_RUNNING(L) lua_gc((L), LUA_GCISRUNNING, 0)
#endif
static inline int luaL_typeerror(lua_State *L, int arg, const char *tname) {
  const char *msg = lua_pushfstring(L, "%s expected, got %s", tname,
                                    luaL_typename(L, arg));
  return luaL_argerror(L, arg, msg);
}
#else
#define lb_gc(L, what, data) lua_gc((L), (what), (data))
#define LB_GC_RUNNING(L) lua_gc((L), LUA_GCISRUNNING)
#endif

/* ---- 64-bit identifiers (see the top of this file) --------------------- */

/* Push id `v` (`is_unsigned`: a uint64 field, such as a member id, whose
 * value is v's bits) as this Lua represents ids: an integer on 5.3+ (a
 * uint64 above 2^63 comes out negative, with the same bits), a decimal
 * string on 5.1/LuaJIT (unsigned fields in unsigned decimal). */
void lb_push_id(lua_State *L, int64_t v, int is_unsigned);
/* The id at `i` into *out: an integer (a float with an integral value; on
 * 5.1/LuaJIT exact below 2^53 only), or a string in decimal (optionally
 * negative, or up to 2^64-1) or in hex ("0x..."). Returns 0 for anything
 * else, or a string out of range. */
int lb_to_id(lua_State *L, int i, int64_t *out);
/* lb_to_id or raise a Lua error naming argument `arg`. */
int64_t lb_check_id(lua_State *L, int arg);

#endif
