/*
 * Keep-alives for Lua: client:_keepalive(id, ttl) -> ka;
 * ka:state(), ka:token(), ka:close() (also __gc and __close);
 * client:_nkeepalives(), client:_ka_stats().
 */
#include "lua/binding.h"

typedef struct lka {
  ec_lease *l;
  lpressure *p;
} lka;

/* client:_keepalive(id, ttl_seconds) -> ka | nil, msg, code. ttl: the
 * lease's TTL when the caller knows it (nil or 0: unknown). */
static int l_keepalive(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  int64_t id = lb_check_id(L, 2);
  int64_t ms = lb_opt_ms(L, 3, 0);
  lpressure *p = lb_pressure_before_new(L, P_KA);
  lka *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->l = NULL;
  u->p = NULL;
  luaL_setmetatable(L, KA_MT);
  char err[128];
  u->l = ec_keepalive_start(c, id, ms, err, sizeof err);
  if (!u->l) return lb_push_fail(L, err, ec_client_closed(c) ? "closed" : "INTERNAL");
  u->p = p;
  p->live[P_KA]++;
  return 1;
}

/* ka:state() -> "alive"|"expired"|"closed", seq, latest | reason
 * latest = { id, ttl, header = {...} } (nil before the first answer). */
static int k_state(lua_State *L) {
  lka *u = luaL_checkudata(L, 1, KA_MT);
  if (!u->l) {
    lua_pushstring(L, "closed");
    lua_pushinteger(L, 0);
    lua_pushstring(L, "etcd: keep-alive is closed");
    return 3;
  }
  uint64_t seq;
  ec_ka_response r;
  char reason[160];
  int st = ec_keepalive_state(u->l, &seq, &r, reason, sizeof reason);
  lua_pushstring(L, st == EC_KA_ALIVE ? "alive" : st == EC_KA_EXPIRED ? "expired" : "closed");
  lua_pushinteger(L, (lua_Integer)seq);
  if (st != EC_KA_ALIVE) {
    lua_pushstring(L, reason);
    return 3;
  }
  if (seq == 0) {
    lua_pushnil(L);
    return 3;
  }
  lua_createtable(L, 0, 3);
  lb_push_id(L, r.id, 0);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, (lua_Integer)r.ttl);
  lua_setfield(L, -2, "ttl");
  lua_createtable(L, 0, 4);
  lb_push_id(L, (int64_t)r.cluster_id, 1);
  lua_setfield(L, -2, "cluster_id");
  lb_push_id(L, (int64_t)r.member_id, 1);
  lua_setfield(L, -2, "member_id");
  lua_pushinteger(L, (lua_Integer)r.revision);
  lua_setfield(L, -2, "revision");
  lua_pushinteger(L, (lua_Integer)r.raft_term);
  lua_setfield(L, -2, "raft_term");
  lua_setfield(L, -2, "header");
  return 3;
}

static int k_token(lua_State *L) {
  lka *u = luaL_checkudata(L, 1, KA_MT);
  lua_pushinteger(L, u->l ? (lua_Integer)ec_keepalive_token(u->l) : 0);
  return 1;
}

/* ka:close(): stop renewing; idempotent, also __gc and __close */
static int k_close(lua_State *L) {
  lka *u = luaL_checkudata(L, 1, KA_MT);
  if (u->l) {
    ec_keepalive_release(u->l);
    lb_pressure_gone(u->p, P_KA);
  }
  u->l = NULL;
  return 0;
}

static int l_nkeepalives(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_nkeepalives(u->c) : 0);
  return 1;
}

/* client:_ka_stats() -> { sent, answered, opens, stalls, queued, in_flight, alive } */
static int l_ka_stats(lua_State *L) {
  lclient *u = lb_check_client(L);
  ec_ka_stats st = {0};
  if (u->c) ec_client_ka_stats(u->c, &st);
  lua_createtable(L, 0, 7);
  const struct { const char *k; uint64_t v; } f[] = {
      {"sent", st.sent},     {"answered", st.answered}, {"opens", st.opens},
      {"stalls", st.stalls}, {"queued", st.queued},     {"in_flight", st.in_flight},
      {"alive", st.alive}};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    lua_pushinteger(L, (lua_Integer)f[i].v);
    lua_setfield(L, -2, f[i].k);
  }
  return 1;
}

void lb_open_keepalive(lua_State *L) {
  static const luaL_Reg methods[] = {{"state", k_state}, {"close", k_close},
                                     {"token", k_token}, {NULL, NULL}};
  lb_new_class(L, KA_MT, methods, k_close, k_close);
  lua_pop(L, 1);
  lb_client_method(L, "_keepalive", l_keepalive);
  lb_client_method(L, "_nkeepalives", l_nkeepalives);
  lb_client_method(L, "_ka_stats", l_ka_stats);
}
