/*
 * Collector pressure: the objects whose real cost the collector cannot see.
 *
 * A client holds a pump thread, an eventfd and sockets; a watch holds a
 * watcher on etcd and a queue; a keep-alive keeps a lease alive on etcd. The
 * collector sees none of that: to it each is a userdata of a few bytes, so a
 * program that drops them without close() could run out of threads or file
 * descriptors long before Lua's heap grows enough for a collection. So, per
 * Lua state and per kind, the binding counts the objects not yet collected
 * (or closed, for watches and keep-alives). Creating one when the count has
 * reached its limit first runs a full collection, then sets the limit to
 * what survived plus max(MIN, half of it): garbage of a kind never exceeds
 * that slack, and a program that keeps many alive pays for a collection
 * only every (survivors / 2) creations. For clients the slack is also at
 * most an eighth of the file-descriptor limit (RLIMIT_NOFILE; each client
 * has an eventfd and a socket per endpoint). Each creation also adds its C-side
 * size (an estimate) to the collector's debt, as if Lua had allocated it,
 * so that incremental collection keeps pace. None of this runs while the
 * collector is stopped (collectgarbage "stop").
 */
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>

#include "lua/binding.h"

static const size_t pressure_min[P_KINDS] = {64, 1024, 1024};
static const int pressure_kb[P_KINDS] = {48, 1, 1};

static const char pressure_key = 'p';

/* How many dropped clients the file-descriptor limit allows: an eighth of
 * it (at least 8). */
static size_t fd_slack_cap(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY)
    return SIZE_MAX;
  return r.rlim_cur / 8 < 8 ? 8 : (size_t)(r.rlim_cur / 8);
}

/* The state's counters, made on first use. Anchored in the registry for the
 * state's whole life (finalizers run before lua_close frees any object), so
 * the objects may keep a plain pointer to them. */
lpressure *lb_pressure_of(lua_State *L) {
  lpressure *p;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &pressure_key) == LUA_TUSERDATA) {
    p = lua_touserdata(L, -1);
  } else {
    p = lua_newuserdatauv(L, sizeof *p, 0);
    memset(p, 0, sizeof *p);
    for (int k = 0; k < P_KINDS; k++) p->limit[k] = pressure_min[k];
    size_t cap = fd_slack_cap();
    if (p->limit[P_CLIENT] > cap) p->limit[P_CLIENT] = cap;
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &pressure_key);
    lua_remove(L, -2);
  }
  lua_pop(L, 1);
  return p;
}

/* Before creating an object of kind k (nothing of it on the stack yet). */
lpressure *lb_pressure_before_new(lua_State *L, int k) {
  lpressure *p = lb_pressure_of(L);
  if (!LB_GC_RUNNING(L)) return p;
  if (p->live[k] >= p->limit[k]) {
    lb_gc(L, LUA_GCCOLLECT, 0);
    p->collections[k]++;
    size_t slack = p->live[k] / 2;
    if (slack < pressure_min[k]) slack = pressure_min[k];
    if (k == P_CLIENT) {
      size_t cap = fd_slack_cap();
      if (slack > cap) slack = cap;
    }
    p->limit[k] = p->live[k] + slack;
  }
  lb_gc(L, LUA_GCSTEP, pressure_kb[k]);
  return p;
}

void lb_pressure_gone(lpressure *p, int k) {
  if (p && p->live[k] > 0) p->live[k]--;
}

/* core._pressure() -> { clients =, watches =, keepalives = }, each
 * { live =, limit =, collections = }: this state's collector pressure
 * counters (for the specs). */
static int l_pressure(lua_State *L) {
  static const char *const names[P_KINDS] = {"clients", "watches", "keepalives"};
  lpressure *p = lb_pressure_of(L);
  lua_createtable(L, 0, P_KINDS);
  for (int k = 0; k < P_KINDS; k++) {
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)p->live[k]);
    lua_setfield(L, -2, "live");
    lua_pushinteger(L, (lua_Integer)p->limit[k]);
    lua_setfield(L, -2, "limit");
    lua_pushinteger(L, (lua_Integer)p->collections[k]);
    lua_setfield(L, -2, "collections");
    lua_setfield(L, -2, names[k]);
  }
  return 1;
}

void lb_open_pressure(lua_State *L) {
  lua_pushcfunction(L, l_pressure);
  lua_setfield(L, -2, "_pressure");
}
