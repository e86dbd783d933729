/*
 * The client class (etcd.core.client) and the module's plain functions:
 *
 *   core.new{ targets = {...}, max_send_size =, max_recv_size =, tls = } -> client
 *   client:_dial(seconds)        start connecting, watch until then
 *   client:_ready()              true when a channel is ready
 *   client:_wait(seconds|nil)    block until the eventfd is readable
 *   client:_reap(t) -> n         the ready tokens (docs/DESIGN.md §3)
 *   client:_token()              the client's own token
 *   client:pollfd()              the eventfd, for event loops
 *   client:close()               also __gc and __close; idempotent
 *   core.now(), core.sleep(s), core._poll(clients, s), core.auth_refusal(msg)
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lua/binding.h"

int lb_push_fail(lua_State *L, const char *msg, const char *code) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

/* Seconds (a non-negative number) to milliseconds; `nil` gives `dflt`. */
int64_t lb_opt_ms(lua_State *L, int idx, int64_t dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  lua_Number s = luaL_checknumber(L, idx);
  if (isnan(s) || s < 0)
    luaL_argerror(L, idx, "timeout must be a non-negative number of seconds");
  if (s > 1e9) return -1; /* effectively forever */
  return (int64_t)ceil(s * 1000.0);
}

int lb_opt_chan(lua_State *L, int idx) {
  lua_Integer ci = luaL_optinteger(L, idx, 0);
  if (ci < 0 || ci > EC_MAX_ENDPOINTS) luaL_argerror(L, idx, "endpoint index out of range");
  return (int)ci - 1;
}

lclient *lb_check_client(lua_State *L) {
  return luaL_checkudata(L, 1, CLIENT_MT);
}

/* The client, or NULL with nil, msg, code pushed (closed or forked). */
ec_client *lb_live_client(lua_State *L, int *nret) {
  lclient *u = lb_check_client(L);
  if (u->c && ec_client_forked(u->c)) {
    *nret = lb_push_fail(L,
                      "etcd: client was created in another process; create a "
                      "new client after fork()",
                      "forked");
    return NULL;
  }
  if (!u->c || ec_client_closed(u->c)) {
    *nret = lb_push_fail(L, "etcd: client is closed", "closed");
    return NULL;
  }
  return u->c;
}

/* The string at idx as C text: one with a NUL byte inside would be cut
 * short by everything below (gRPC targets, PEM, names), so it is refused. */
static const char *c_text(lua_State *L, int idx, const char *what) {
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_error(L, "etcd.core.new: %s: string without NUL bytes expected", what);
  return s;
}

/* The metadata table at idx ({ key = value }) into md; returns the count. */
size_t lb_read_metadata(lua_State *L, int idx, ec_metadata *md) {
  size_t nmd = 0;
  if (lua_isnoneornil(L, idx)) return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, idx, "metadata: string keys and values expected");
    if (nmd == EC_MAX_METADATA) luaL_argerror(L, idx, "metadata: too many entries");
    md[nmd].key = lua_tostring(L, -2); /* anchored by the table */
    md[nmd].value = lua_tolstring(L, -1, &md[nmd].value_len);
    nmd++;
    lua_pop(L, 1);
  }
  return nmd;
}

static int l_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lpressure *p = lb_pressure_before_new(L, P_CLIENT);
  const char *targets[EC_MAX_ENDPOINTS];
  size_t n = 0;
  if (lua_getfield(L, 1, "targets") != LUA_TTABLE)
    return luaL_argerror(L, 1, "targets: table expected");
  size_t len = (size_t)lua_rawlen(L, -1);
  if (len == 0 || len > EC_MAX_ENDPOINTS)
    return luaL_argerror(L, 1, "targets: too few or too many endpoints");
  for (size_t i = 1; i <= len; i++) {
    lua_rawgeti(L, -1, (lua_Integer)i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, 1, "targets: strings expected");
    targets[n++] = c_text(L, -1, "targets"); /* anchored by the targets table */
    lua_pop(L, 1);
  }
  ec_config cfg = {targets, n, 0, 0, 0, NULL, NULL, NULL, NULL};
  /* tls = { ca =, cert =, key =, server_name = } as PEM text (Lua reads the
   * files); the strings stay anchored by that table during the call. */
  if (lua_getfield(L, 1, "tls") == LUA_TTABLE) {
    cfg.tls = 1;
    const char **dst[] = {&cfg.ca_pem, &cfg.cert_pem, &cfg.key_pem, &cfg.server_name};
    const char *names[] = {"ca", "cert", "key", "server_name"};
    for (int i = 0; i < 4; i++) {
      if (lua_getfield(L, -1, names[i]) == LUA_TSTRING) *dst[i] = c_text(L, -1, names[i]);
      lua_pop(L, 1);
    }
    if ((cfg.cert_pem == NULL) != (cfg.key_pem == NULL))
      return luaL_argerror(L, 1, "tls: cert and key go together");
  }
  lua_pop(L, 1);
  lua_getfield(L, 1, "max_send_size");
  lua_getfield(L, 1, "max_recv_size");
  lua_Integer ss = luaL_optinteger(L, -2, 0), rs = luaL_optinteger(L, -1, 0);
  if (ss < 0 || ss > INT32_MAX || rs < 0 || rs > INT32_MAX)
    return luaL_argerror(L, 1, "max_send_size/max_recv_size: 0 to 2^31-1 expected");
  cfg.max_send_size = (int)ss;
  cfg.max_recv_size = (int)rs;
  lua_pop(L, 2);
  lclient *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->c = NULL;
  u->p = NULL;
  luaL_setmetatable(L, CLIENT_MT);
  char err[256];
  u->c = ec_client_new(&cfg, err, sizeof err);
  if (u->c) {
    u->p = p;
    p->live[P_CLIENT]++;
  } else {
    if (ec_global_pid() && ec_global_pid() != (long)getpid())
      return lb_push_fail(L,
                       "etcd: gRPC was started by the parent process and "
                       "cannot run after fork(); create clients only in the "
                       "process that uses them",
                       "forked");
    return lb_push_fail(L, err, "INTERNAL");
  }
  return 1;
}

static int l_close(lua_State *L) {
  lclient *u = lb_check_client(L);
  if (u->c) ec_client_close(u->c);
  return 0;
}

static int l_gc(lua_State *L) {
  lclient *u = lb_check_client(L);
  if (u->c) {
    ec_client_release(u->c);
    lb_pressure_gone(u->p, P_CLIENT);
  }
  u->c = NULL;
  return 0;
}

static int l_tostring(lua_State *L) {
  lclient *u = lb_check_client(L);
  if (!u->c) {
    lua_pushfstring(L, "etcd.client (released): %p", (void *)u);
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "etcd.client (");
  int first = 1;
  const char *target[EC_MAX_ENDPOINTS];
  int retired[EC_MAX_ENDPOINTS];
  size_t n = ec_client_targets(u->c, target, retired);
  for (size_t i = 0; i < n; i++) {
    if (retired[i]) continue;
    if (!first) luaL_addstring(&b, ", ");
    first = 0;
    luaL_addstring(&b, target[i]);
  }
  luaL_addstring(&b, ec_client_closed(u->c) ? "; closed)" : ")");
  lua_pushfstring(L, ": %p", (void *)u);
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  return 1;
}

static int l_closed(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushboolean(L, !u->c || ec_client_closed(u->c));
  return 1;
}

static int l_pollfd(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? ec_client_fd(u->c) : -1);
  return 1;
}

static int l_dial(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  ec_client_dial(c, lb_opt_ms(L, 2, 5000));
  lua_pushboolean(L, 1);
  return 1;
}

static int l_ready(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  lua_pushboolean(L, ec_client_ready(c));
  return 1;
}

static int l_wait(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  int64_t ms = lb_opt_ms(L, 2, -1);
  int r = ec_client_wait(c, ms > INT32_MAX ? INT32_MAX : (int)ms);
  if (r < 0) return lb_push_fail(L, "etcd: client is closed", "closed");
  lua_pushboolean(L, r);
  return 1;
}

/* client:_reap(t) -> n: the tokens made ready since the last reap, as
 * integers in t[1..n] (t[n+1] is nil); t[1] == 0 means "every waiter of
 * this client must look" (a token could not be listed). Drains the fd. */
static int l_reap(lua_State *L) {
  lclient *u = lb_check_client(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!u->c) {
    lua_pushnil(L);
    lua_rawseti(L, 2, 1);
    lua_pushinteger(L, 0);
    return 1;
  }
  const uint64_t *v;
  int all;
  size_t n = ec_client_reap(u->c, &v, &all);
  lua_Integer k = 0;
  if (all) {
    lua_pushinteger(L, 0);
    lua_rawseti(L, 2, ++k);
  }
  for (size_t i = 0; i < n; i++) {
    lua_pushinteger(L, (lua_Integer)v[i]);
    lua_rawseti(L, 2, ++k);
  }
  lua_pushnil(L);
  lua_rawseti(L, 2, k + 1);
  ec_client_reap_done(u->c);
  lua_pushinteger(L, k);
  return 1;
}

static int l_token(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_token(u->c) : 0);
  return 1;
}

static int l_inflight(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_inflight(u->c) : 0);
  return 1;
}

/* client:_add_target(target) -> 1-based channel index | nil, msg, code */
static int l_add_target(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  const char *target = luaL_checkstring(L, 2);
  char err[128];
  int i = ec_client_add_target(c, target, err, sizeof err);
  if (i < 0) return lb_push_fail(L, err, ec_client_closed(c) ? "closed" : "INTERNAL");
  lua_pushinteger(L, i + 1);
  return 1;
}

/* client:_retire(index) -> true | false (the last endpoint stays) */
static int l_retire(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_Integer i = luaL_checkinteger(L, 2);
  lua_pushboolean(L, u->c && i >= 1 && ec_client_retire(u->c, (size_t)(i - 1)) == 0);
  return 1;
}

/* client:_current() -> 1-based index of the endpoint the next call goes to */
static int l_current(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_current(u->c) + 1 : 1);
  return 1;
}

/* client:_targets() -> { [i] = target }, { [i] = true when retired },
 * generation: every channel (1-based), read at one moment; the generation
 * (client:_chan_gen()) moves whenever the set changes */
static int l_targets(lua_State *L) {
  lclient *u = lb_check_client(L);
  const char *target[EC_MAX_ENDPOINTS];
  int retired[EC_MAX_ENDPOINTS];
  uint64_t gen = u->c ? ec_client_chan_gen(u->c) : 0;
  size_t n = u->c ? ec_client_targets(u->c, target, retired) : 0;
  lua_createtable(L, (int)n, 0);
  lua_createtable(L, 0, 0);
  for (size_t i = 0; i < n; i++) {
    lua_pushstring(L, target[i]);
    lua_rawseti(L, -3, (lua_Integer)i + 1);
    if (retired[i]) {
      lua_pushboolean(L, 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
  }
  lua_pushinteger(L, (lua_Integer)gen);
  return 3;
}

static int l_chan_gen(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_chan_gen(u->c) : 0);
  return 1;
}

/* client:_auto_sync(seconds): the engine syncs the endpoints every
 * `seconds` (0: never) */
static int l_auto_sync(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  ec_client_auto_sync(c, lb_opt_ms(L, 2, 0));
  lua_pushboolean(L, 1);
  return 1;
}

/* client:_member_at(i) -> the member id behind endpoint i (1-based), as its
 * last answer said; nil before any */
static int l_member_at(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_Integer i = luaL_checkinteger(L, 2);
  uint64_t mid = u->c && i >= 1 ? ec_client_member_at(u->c, (size_t)(i - 1)) : 0;
  if (mid) lb_push_id(L, (int64_t)mid, 1);
  else lua_pushnil(L);
  return 1;
}

/* client:_drops() -> n, chan: connections lost so far, and the 1-based
 * endpoint of the last (nil before any) */
static int l_drops(lua_State *L) {
  lclient *u = lb_check_client(L);
  size_t chan = 0;
  uint64_t n = u->c ? ec_client_drops(u->c, &chan) : 0;
  lua_pushinteger(L, (lua_Integer)n);
  if (n) lua_pushinteger(L, (lua_Integer)chan + 1);
  else lua_pushnil(L);
  return 2;
}

static int l_navoided(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_navoided(u->c) : 0);
  return 1;
}

/* client:_set_metadata{ key = value } for the streams the engine opens */
static int l_set_metadata(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  ec_metadata md[EC_MAX_METADATA];
  size_t n = lb_read_metadata(L, 2, md);
  if (ec_client_set_metadata(c, md, n) != 0) return lb_push_fail(L, "out of memory", "INTERNAL");
  lua_pushboolean(L, 1);
  return 1;
}

static int l_need_auth(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushboolean(L, u->c && ec_client_need_auth(u->c));
  return 1;
}

static int l_auth_refreshed(lua_State *L) {
  lclient *u = lb_check_client(L);
  if (u->c && !ec_client_closed(u->c)) ec_client_auth_refreshed(u->c);
  return 0;
}

static int l_nstreams(lua_State *L) {
  lclient *u = lb_check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_nstreams(u->c) : 0);
  return 1;
}

/* core._poll({ client, ... }, seconds|nil) -> number of clients whose fd is
 * readable (0: timed out). A client closed or released counts as readable:
 * its waiters must look. */
static int l_poll(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int64_t ms = lb_opt_ms(L, 2, -1);
  nfds_t n = 0;
  int ready = 0;
  lua_Integer len = (lua_Integer)lua_rawlen(L, 1);
  struct pollfd *fds =
      lua_newuserdatauv(L, (size_t)(len > 0 ? len : 1) * sizeof *fds, 0);
  for (lua_Integer i = 1; i <= len; i++) {
    lua_rawgeti(L, 1, i);
    lclient *u = luaL_testudata(L, -1, CLIENT_MT);
    lua_pop(L, 1);
    if (!u) return luaL_argerror(L, 1, "clients expected");
    if (!u->c || ec_client_closed(u->c)) ready++;
    else fds[n++] = (struct pollfd){ec_client_fd(u->c), POLLIN, 0};
  }
  if (ready) ms = 0;
  /* (The scheduler waits here with many calls in flight: the pump drives
   * the queue then, in parallel with the Lua thread, which measured better
   * than this thread driving it: docs/DESIGN.md §2.) */
  int r;
  do {
    r = poll(fds, n, ms < 0 ? -1 : ms > INT32_MAX ? INT32_MAX : (int)ms);
  } while (r < 0 && errno == EINTR);
  lua_pushinteger(L, ready + (r > 0 ? r : 0));
  return 1;
}

/* core.auth_refusal(msg) -> true when etcd's message means "log in again" */
static int l_auth_refusal(lua_State *L) {
  lua_pushboolean(L, ec_auth_refusal(luaL_optstring(L, 1, NULL)));
  return 1;
}

/* core.sleep(seconds): block the thread. */
static int l_sleep(lua_State *L) {
  int64_t ms = lb_opt_ms(L, 1, 0);
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

static int l_now(lua_State *L) {
  /* core.now(): monotonic seconds, for deadlines in Lua. */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* A metatable with methods, __gc and (if given) __close; left on the stack. */
void lb_new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                      lua_CFunction gc, lua_CFunction close) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  if (close) {
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
  }
}

void lb_open_client(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"close", l_close},         {"pollfd", l_pollfd},
      {"_dial", l_dial},          {"_ready", l_ready},
      {"_wait", l_wait},          {"_inflight", l_inflight},
      {"_navoided", l_navoided}, {"_current", l_current}, {"_drops", l_drops},
      {"_member_at", l_member_at}, {"_targets", l_targets},
      {"_chan_gen", l_chan_gen},  {"_auto_sync", l_auto_sync},
      {"_add_target", l_add_target}, {"_retire", l_retire},
      {"_closed", l_closed},      {"_nstreams", l_nstreams},
      {"_set_metadata", l_set_metadata}, {"_need_auth", l_need_auth},
      {"_auth_refreshed", l_auth_refreshed}, {"_reap", l_reap},
      {"_token", l_token},        {NULL, NULL}};
  static const luaL_Reg funcs[] = {
      {"new", l_new},     {"now", l_now},   {"sleep", l_sleep},
      {"_poll", l_poll},  {"auth_refusal", l_auth_refusal}, {NULL, NULL}};
  luaL_setfuncs(L, funcs, 0); /* into the module table */
  lb_new_class(L, CLIENT_MT, methods, l_gc, l_close);
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}

void lb_client_method(lua_State *L, const char *name, lua_CFunction f) {
  luaL_getmetatable(L, CLIENT_MT);
  lua_getfield(L, -1, "__index");
  lua_pushcfunction(L, f);
  lua_setfield(L, -2, name);
  lua_pop(L, 2);
}
