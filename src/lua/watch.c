/*
 * Watches for Lua: client:_watch(create_request, start_revision,
 * join_fragments) -> watch; w:read(), w:created(), w:token(), w:close()
 * (also __gc and __close); client:_request_progress(), client:_nwatches().
 */
#include "lua/binding.h"
#include "etcdserverpb/rpc.pb-c.h"
#include "lua/pbconv.h"

typedef struct lwatch {
  ec_watch *w;
  lpressure *p;
} lwatch;

/* client:_watch(create_request, start_revision, join_fragments)
 *   -> watch | nil, msg, code
 * create_request: a WatchCreateRequest table without start_revision and
 * fragment. */
static int l_watch(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer rev = luaL_optinteger(L, 3, 0);
  lpressure *p = lb_pressure_before_new(L, P_WATCH);
  pbconv_pack(L, 2, &etcdserverpb__watch_create_request__descriptor);
  size_t len;
  const char *req = lua_tolstring(L, -1, &len);
  lwatch *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->w = NULL;
  u->p = NULL;
  luaL_setmetatable(L, WATCH_MT);
  char err[128];
  u->w = ec_watch_start(c, req, len, (int64_t)rev, lua_toboolean(L, 4), err,
                        sizeof err);
  if (!u->w) return lb_push_fail(L, err, ec_client_closed(c) ? "closed" : "INTERNAL");
  u->p = p;
  p->live[P_WATCH]++;
  return 1;
}

/* w:read() -> response | false (nothing yet)
 *           | nil, "ended"|"closed", reason, compact_revision */
static int w_read(lua_State *L) {
  lwatch *u = luaL_checkudata(L, 1, WATCH_MT);
  if (!u->w) {
    lua_pushnil(L);
    lua_pushstring(L, "closed");
    lua_pushstring(L, "closed");
    lua_pushinteger(L, 0);
    return 4;
  }
  ec_msg *m;
  int r = ec_watch_read(u->w, &m);
  if (r == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r < 0) {
    int64_t compact;
    char reason[256];
    int st = ec_watch_state(u->w, &compact, reason, sizeof reason);
    lua_pushnil(L);
    lua_pushstring(L, st == EC_W_ENDED ? "ended" : "closed");
    lua_pushstring(L, reason);
    lua_pushinteger(L, (lua_Integer)compact);
    return 4;
  }
  lua_pushlstring(L, ec_msg_data(m), ec_msg_len(m));
  ec_msg_free(m);
  size_t n;
  const char *bytes = lua_tolstring(L, -1, &n);
  size_t nslen = 0;
  const char *ns = luaL_optlstring(L, 2, NULL, &nslen);
  if (!pbconv_unpack_ns(L, &etcdserverpb__watch_response__descriptor, bytes, n, ns, nslen)) {
    lua_pushnil(L);
    lua_pushstring(L, "ended");
    lua_rotate(L, -3, -1); /* nil, "ended", message */
    lua_pushinteger(L, 0);
    return 4;
  }
  return 1;
}

/* w:created() -> true (etcd confirmed it) | false (not yet) | nil (ended) */
static int w_created(lua_State *L) {
  lwatch *u = luaL_checkudata(L, 1, WATCH_MT);
  int r = u->w ? ec_watch_created(u->w) : -1;
  if (r < 0) lua_pushnil(L);
  else lua_pushboolean(L, r);
  return 1;
}

static int w_token(lua_State *L) {
  lwatch *u = luaL_checkudata(L, 1, WATCH_MT);
  lua_pushinteger(L, u->w ? (lua_Integer)ec_watch_token(u->w) : 0);
  return 1;
}

/* w:close(): cancel on the server; idempotent, also __gc and __close */
static int w_close(lua_State *L) {
  lwatch *u = luaL_checkudata(L, 1, WATCH_MT);
  if (u->w) {
    ec_watch_release(u->w);
    lb_pressure_gone(u->p, P_WATCH);
  }
  u->w = NULL;
  return 0;
}

static int l_request_progress(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  lua_pushboolean(L, ec_watch_request_progress(c));
  return 1;
}

static int l_nwatches(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_nwatches(u->c) : 0);
  return 1;
}

void lb_open_watch(lua_State *L) {
  static const luaL_Reg methods[] = {{"read", w_read},       {"close", w_close},
                                     {"created", w_created}, {"token", w_token},
                                     {NULL, NULL}};
  lb_new_class(L, WATCH_MT, methods, w_close, w_close);
  lua_pop(L, 1);
  lb_client_method(L, "_watch", l_watch);
  lb_client_method(L, "_request_progress", l_request_progress);
  lb_client_method(L, "_nwatches", l_nwatches);
}
