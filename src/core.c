/*
 * etcd.core: the C module behind lua/etcd/. It exposes a client object that
 * starts calls (returning at once) and a call object that says when it is done
 * and what came back. Waiting is Lua's business (lua/etcd/wait.lua).
 *
 *   core.new{ targets = {...}, max_send_size =, max_recv_size = } -> client
 *   client:_dial(seconds)        start connecting, watch until then
 *   client:_ready()              true when a channel is ready
 *   client:_wait(seconds|nil)    block until the pump signals; true/false
 *   client:_unary(method, request, seconds, metadata) -> call
 *   client:pollfd()              the eventfd, for event loops
 *   client:close()               also __gc and __close; idempotent
 *   call:done(), call:result() -> table | nil, msg, code (once); call:cancel()
 *   core._pressure()             the collector pressure counters (below)
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "engine/engine.h"
#include "etcdserverpb/rpc.pb-c.h"
#include "pbconv.h"

#define CLIENT_MT "etcd.core.client"
#define CALL_MT "etcd.core.call"

#ifndef LUA_ETCD_VERSION
#define LUA_ETCD_VERSION "scm"
#endif

/* ---------------------------------------------------------------------- */
/* collector pressure                                                       */
/*
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
enum { P_CLIENT, P_WATCH, P_KA, P_KINDS };
static const size_t pressure_min[P_KINDS] = {64, 1024, 1024};
static const int pressure_kb[P_KINDS] = {48, 1, 1};

typedef struct lpressure {
  size_t live[P_KINDS];
  size_t limit[P_KINDS];
  size_t collections[P_KINDS]; /* full collections run, for the specs */
} lpressure;

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
static lpressure *pressure_of(lua_State *L) {
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
static lpressure *pressure_before_new(lua_State *L, int k) {
  lpressure *p = pressure_of(L);
  if (!lua_gc(L, LUA_GCISRUNNING)) return p;
  if (p->live[k] >= p->limit[k]) {
    lua_gc(L, LUA_GCCOLLECT);
    p->collections[k]++;
    size_t slack = p->live[k] / 2;
    if (slack < pressure_min[k]) slack = pressure_min[k];
    if (k == P_CLIENT) {
      size_t cap = fd_slack_cap();
      if (slack > cap) slack = cap;
    }
    p->limit[k] = p->live[k] + slack;
  }
  lua_gc(L, LUA_GCSTEP, pressure_kb[k]);
  return p;
}

static void pressure_gone(lpressure *p, int k) {
  if (p && p->live[k] > 0) p->live[k]--;
}

typedef struct lclient {
  ec_client *c;
  lpressure *p;
} lclient;

typedef struct lcall {
  ec_call *k;
  const ProtobufCMessageDescriptor *out;
} lcall;

static const char *const status_names[] = {
    "OK",                 "CANCELLED",         "UNKNOWN",
    "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS",     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION", "ABORTED",          "OUT_OF_RANGE",
    "UNIMPLEMENTED",      "INTERNAL",          "UNAVAILABLE",
    "DATA_LOSS",          "UNAUTHENTICATED"};

static const ProtobufCServiceDescriptor *const services[] = {
    &etcdserverpb__kv__descriptor,          &etcdserverpb__lease__descriptor,
    &etcdserverpb__cluster__descriptor,     &etcdserverpb__maintenance__descriptor,
    &etcdserverpb__auth__descriptor,        &etcdserverpb__watch__descriptor,
    NULL};

/* Methods that stream: a unary call on them is a bug. */
static const char *const streaming[] = {"Watch.Watch", "Lease.LeaseKeepAlive",
                                        "Maintenance.Snapshot"};

static int push_fail(lua_State *L, const char *msg, const char *code) {
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

/* Seconds (a non-negative number) to milliseconds; `nil` gives `dflt`. */
static int64_t opt_ms(lua_State *L, int idx, int64_t dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  lua_Number s = luaL_checknumber(L, idx);
  if (isnan(s) || s < 0)
    luaL_argerror(L, idx, "timeout must be a non-negative number of seconds");
  if (s > 1e9) return -1; /* effectively forever */
  return (int64_t)ceil(s * 1000.0);
}

/* ---------------------------------------------------------------------- */
/* client                                                                   */

static lclient *check_client(lua_State *L) {
  return luaL_checkudata(L, 1, CLIENT_MT);
}

/* The client, or NULL with nil, msg, code pushed (closed or forked). */
static ec_client *live_client(lua_State *L, int *nret) {
  lclient *u = check_client(L);
  if (!u->c || ec_client_closed(u->c)) {
    *nret = push_fail(L, "etcd: client is closed", "closed");
    return NULL;
  }
  if (ec_client_pid(u->c) != (long)getpid()) {
    *nret = push_fail(L,
                      "etcd: client was created in another process; create a "
                      "new client after fork()",
                      "forked");
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

static int l_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lpressure *p = pressure_before_new(L, P_CLIENT);
  const char *targets[64];
  size_t n = 0;
  if (lua_getfield(L, 1, "targets") != LUA_TTABLE)
    return luaL_argerror(L, 1, "targets: table expected");
  size_t len = (size_t)lua_rawlen(L, -1);
  if (len == 0 || len > 64)
    return luaL_argerror(L, 1, "targets: 1 to 64 endpoints expected");
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
      return push_fail(L,
                       "etcd: gRPC was started by the parent process and "
                       "cannot run after fork(); create clients only in the "
                       "process that uses them",
                       "forked");
    return push_fail(L, err, "INTERNAL");
  }
  return 1;
}

static int l_close(lua_State *L) {
  lclient *u = check_client(L);
  if (u->c) ec_client_close(u->c);
  return 0;
}

static int l_gc(lua_State *L) {
  lclient *u = check_client(L);
  if (u->c) {
    ec_client_release(u->c);
    pressure_gone(u->p, P_CLIENT);
  }
  u->c = NULL;
  return 0;
}

static int l_tostring(lua_State *L) {
  lclient *u = check_client(L);
  if (!u->c) {
    lua_pushfstring(L, "etcd.client (released): %p", (void *)u);
    return 1;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "etcd.client (");
  for (size_t i = 0; i < ec_client_nchannels(u->c); i++) {
    if (i) luaL_addstring(&b, ", ");
    luaL_addstring(&b, ec_client_target(u->c, i));
  }
  luaL_addstring(&b, ec_client_closed(u->c) ? "; closed)" : ")");
  lua_pushfstring(L, ": %p", (void *)u);
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  return 1;
}

static int l_closed(lua_State *L) {
  lclient *u = check_client(L);
  lua_pushboolean(L, !u->c || ec_client_closed(u->c));
  return 1;
}

static int l_pollfd(lua_State *L) {
  lclient *u = check_client(L);
  lua_pushinteger(L, u->c ? ec_client_fd(u->c) : -1);
  return 1;
}

static int l_dial(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  ec_client_dial(c, opt_ms(L, 2, 5000));
  lua_pushboolean(L, 1);
  return 1;
}

static int l_ready(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  lua_pushboolean(L, ec_client_ready(c));
  return 1;
}

static int l_wait(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  int64_t ms = opt_ms(L, 2, -1);
  int r = ec_client_wait(c, ms > INT32_MAX ? INT32_MAX : (int)ms);
  if (r < 0) return push_fail(L, "etcd: client is closed", "closed");
  lua_pushboolean(L, r);
  return 1;
}

/* client:_reap(t) -> n: the tokens made ready since the last reap, as
 * integers in t[1..n] (t[n+1] is nil); t[1] == 0 means "every waiter of
 * this client must look" (a token could not be listed). Drains the fd. */
static int l_reap(lua_State *L) {
  lclient *u = check_client(L);
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
  lclient *u = check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_token(u->c) : 0);
  return 1;
}

/* core._poll({ client, ... }, seconds|nil) -> number of clients whose fd is
 * readable (0: timed out). A client closed or released counts as readable:
 * its waiters must look. */
static int l_poll(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int64_t ms = opt_ms(L, 2, -1);
  struct pollfd fds[64];
  nfds_t n = 0;
  int ready = 0;
  lua_Integer len = (lua_Integer)lua_rawlen(L, 1);
  if (len > 64) return luaL_argerror(L, 1, "at most 64 clients");
  for (lua_Integer i = 1; i <= len; i++) {
    lua_rawgeti(L, 1, i);
    lclient *u = luaL_testudata(L, -1, CLIENT_MT);
    lua_pop(L, 1);
    if (!u) return luaL_argerror(L, 1, "clients expected");
    if (!u->c || ec_client_closed(u->c)) ready++;
    else fds[n++] = (struct pollfd){ec_client_fd(u->c), POLLIN, 0};
  }
  if (ready) ms = 0;
  int r;
  do {
    r = poll(fds, n, ms < 0 ? -1 : ms > INT32_MAX ? INT32_MAX : (int)ms);
  } while (r < 0 && errno == EINTR);
  lua_pushinteger(L, ready + (r > 0 ? r : 0));
  return 1;
}

/* core.sleep(seconds): block the thread. */
static int l_sleep(lua_State *L) {
  int64_t ms = opt_ms(L, 1, 0);
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  return 0;
}

static int l_inflight(lua_State *L) {
  lclient *u = check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_inflight(u->c) : 0);
  return 1;
}

static const ProtobufCMethodDescriptor *find_method(const char *name,
                                                    const char **service) {
  const char *dot = strchr(name, '.');
  if (!dot) return NULL;
  size_t slen = (size_t)(dot - name);
  for (size_t i = 0; services[i]; i++) {
    const ProtobufCServiceDescriptor *s = services[i];
    if (strlen(s->short_name) != slen || strncmp(s->short_name, name, slen) != 0)
      continue;
    for (unsigned j = 0; j < s->n_methods; j++)
      if (!strcmp(s->methods[j].name, dot + 1)) {
        *service = s->name;
        return &s->methods[j];
      }
  }
  return NULL;
}

/* The metadata table at idx ({ key = value }) into md; returns the count. */
static size_t read_metadata(lua_State *L, int idx, ec_metadata *md) {
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

/* client:_unary(method, request, seconds, metadata, endpoint_index, fail_fast)
 *   -> call | nil, msg, code */
static int l_unary(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  const char *mname = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  int64_t ms = opt_ms(L, 4, 10000);
  /* 1-based endpoint index; 0/nil: the client chooses. Read before anything
   * is pushed: the stack grows below. */
  lua_Integer ci = luaL_optinteger(L, 6, 0);
  if (ci < 0 || ci > 64) return luaL_argerror(L, 6, "endpoint index out of range");
  int chan = (int)ci - 1;
  int fail_fast = lua_toboolean(L, 7);
  lua_settop(L, 7);
  for (size_t i = 0; i < sizeof streaming / sizeof *streaming; i++)
    if (!strcmp(mname, streaming[i]))
      return luaL_argerror(L, 2, "streaming method: not a unary call");
  const char *service;
  const ProtobufCMethodDescriptor *m = find_method(mname, &service);
  if (!m) return luaL_argerror(L, 2, "unknown etcd method");

  ec_metadata md[EC_MAX_METADATA];
  size_t nmd = read_metadata(L, 5, md);

  pbconv_pack(L, 3, m->input);
  size_t reqlen;
  const char *req = lua_tolstring(L, -1, &reqlen);
  char path[160];
  snprintf(path, sizeof path, "/%s/%s", service, m->name);

  lcall *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->k = NULL;
  h->out = m->output;
  luaL_setmetatable(L, CALL_MT);
  char err[256];
  h->k = ec_unary_start(c, path, req, reqlen, ms, chan, fail_fast, md, nmd, err,
                        sizeof err);
  if (!h->k)
    return push_fail(L, err,
                     ec_client_closed(c) ? "closed" : "INTERNAL");
  return 1;
}

/* ---------------------------------------------------------------------- */
/* call                                                                     */

static lcall *check_call(lua_State *L) {
  return luaL_checkudata(L, 1, CALL_MT);
}

static int c_done(lua_State *L) {
  lcall *h = check_call(L);
  lua_pushboolean(L, !h->k || ec_call_done(h->k));
  return 1;
}

static int c_token(lua_State *L) {
  lcall *h = check_call(L);
  lua_pushinteger(L, h->k ? (lua_Integer)ec_call_token(h->k) : 0);
  return 1;
}

static int c_cancel(lua_State *L) {
  lcall *h = check_call(L);
  if (h->k) ec_call_cancel(h->k);
  return 0;
}

static int c_gc(lua_State *L) {
  lcall *h = check_call(L);
  if (h->k) ec_call_release(h->k);
  h->k = NULL;
  return 0;
}

/* nil, msg, code for a call or stream that ended with status `st`. */
static int push_status(lua_State *L, int st, int end, const char *msg) {
  switch (end) {
  case EC_END_CLOSED:
    return push_fail(L, "etcd: client is closed", "closed");
  case EC_END_CANCELLED:
    if (st == 1) return push_fail(L, "etcd: call cancelled", "cancelled");
    break;
  }
  if (st == 4) return push_fail(L, *msg ? msg : "deadline exceeded", "timeout");
  const char *code =
      st > 0 && st < (int)(sizeof status_names / sizeof *status_names)
          ? status_names[st]
          : "UNKNOWN";
  if (st == 0) return push_fail(L, "etcd: stream ended", "closed");
  return push_fail(L, *msg ? msg : code, code);
}

/* call:result() -> response table | nil, message, code
 * code is the gRPC status name, or "closed" / "timeout" / "cancelled".
 * Once only: the call is released after it (a second call says "released"). */
static int c_result(lua_State *L) {
  lcall *h = check_call(L);
  if (!h->k) return push_fail(L, "etcd: call was released", "closed");
  if (!ec_call_done(h->k)) return luaL_error(L, "etcd: call not finished");
  int st = ec_call_status(h->k);
  int n;
  if (st != 0 || ec_call_end(h->k) != EC_END_NORMAL) {
    n = push_status(L, st, ec_call_end(h->k), ec_call_details(h->k));
  } else {
    size_t len;
    const void *data = ec_call_response(h->k, &len);
    if (pbconv_unpack(L, h->out, data ? data : "", data ? len : 0)) {
      n = 1;
    } else {
      lua_pushnil(L);
      lua_insert(L, -2);
      lua_pushstring(L, "INTERNAL");
      n = 3;
    }
  }
  /* Lua has its copy: the response's C memory, which the collector does not
   * see, goes now rather than when the call object is collected. */
  ec_call_release(h->k);
  h->k = NULL;
  return n;
}

/* ---------------------------------------------------------------------- */
/* stream                                                                   */

typedef struct lstream {
  ec_stream *s;
  const ProtobufCMessageDescriptor *in, *out;
} lstream;

#define STREAM_MT "etcd.core.stream"

static const ProtobufCMethodDescriptor *find_stream(const char *name,
                                                    const char **service) {
  for (size_t i = 0; i < sizeof streaming / sizeof *streaming; i++)
    if (!strcmp(name, streaming[i])) return find_method(name, service);
  return NULL;
}

/* client:_stream(method, seconds|nil, metadata) -> stream | nil, msg, code */
static int l_stream(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  const char *mname = luaL_checkstring(L, 2);
  int64_t ms = opt_ms(L, 3, -1);
  const char *service;
  const ProtobufCMethodDescriptor *m = find_stream(mname, &service);
  if (!m) return luaL_argerror(L, 2, "unknown etcd streaming method");
  ec_metadata md[EC_MAX_METADATA];
  size_t nmd = read_metadata(L, 4, md);
  char path[160];
  snprintf(path, sizeof path, "/%s/%s", service, m->name);
  lstream *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  u->in = m->input;
  u->out = m->output;
  luaL_setmetatable(L, STREAM_MT);
  char err[256];
  u->s = ec_stream_start(c, path, ms, -1, md, nmd, err, sizeof err);
  if (!u->s) return push_fail(L, err, ec_client_closed(c) ? "closed" : "INTERNAL");
  return 1;
}

static lstream *check_stream(lua_State *L) {
  return luaL_checkudata(L, 1, STREAM_MT);
}

/* stream:write(request) -> true | nil, msg, code */
static int s_write(lua_State *L) {
  lstream *u = check_stream(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!u->s) return push_fail(L, "etcd: stream is closed", "closed");
  pbconv_pack(L, 2, u->in);
  size_t len;
  const char *data = lua_tolstring(L, -1, &len);
  if (ec_stream_write(u->s, data, len) != 0)
    return push_fail(L, "etcd: stream has ended", "closed");
  lua_pushboolean(L, 1);
  return 1;
}

/* stream:read() -> response | false (nothing yet) | nil, msg, code (ended) */
static int s_read(lua_State *L) {
  lstream *u = check_stream(L);
  if (!u->s) return push_fail(L, "etcd: stream is closed", "closed");
  ec_msg *m;
  int r = ec_stream_read(u->s, &m);
  if (r == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r < 0)
    return push_status(L, ec_stream_status(u->s), ec_stream_end(u->s),
                       ec_stream_details(u->s));
  /* the bytes live in a string Lua owns before decoding can raise */
  lua_pushlstring(L, ec_msg_data(m), ec_msg_len(m));
  ec_msg_free(m);
  size_t n;
  const char *bytes = lua_tolstring(L, -1, &n);
  if (!pbconv_unpack(L, u->out, bytes, n)) {
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushstring(L, "INTERNAL");
    return 3;
  }
  return 1;
}

static int s_token(lua_State *L) {
  lstream *u = check_stream(L);
  lua_pushinteger(L, u->s ? (lua_Integer)ec_stream_token(u->s) : 0);
  return 1;
}

static int s_close_send(lua_State *L) {
  lstream *u = check_stream(L);
  if (u->s) ec_stream_close_send(u->s);
  return 0;
}

static int s_ended(lua_State *L) {
  lstream *u = check_stream(L);
  lua_pushboolean(L, !u->s || ec_stream_ended(u->s));
  return 1;
}

static int s_queued(lua_State *L) {
  lstream *u = check_stream(L);
  lua_pushinteger(L, u->s ? (lua_Integer)ec_stream_queued(u->s) : 0);
  return 1;
}

/* stream:close(): cancel and release; idempotent, also __gc and __close */
static int s_close(lua_State *L) {
  lstream *u = check_stream(L);
  if (u->s) ec_stream_release(u->s);
  u->s = NULL;
  return 0;
}

/* ---------------------------------------------------------------------- */
/* keep-alive                                                               */

#define KA_MT "etcd.core.keepalive"

typedef struct lka {
  ec_lease *l;
  lpressure *p;
} lka;

/* client:_keepalive(id, first_timeout_seconds) -> ka | nil, msg, code */
static int l_keepalive(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  lua_Integer id = luaL_checkinteger(L, 2);
  int64_t ms = opt_ms(L, 3, 6000);
  lpressure *p = pressure_before_new(L, P_KA);
  lka *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->l = NULL;
  u->p = NULL;
  luaL_setmetatable(L, KA_MT);
  char err[128];
  u->l = ec_keepalive_start(c, (int64_t)id, ms, err, sizeof err);
  if (!u->l) return push_fail(L, err, ec_client_closed(c) ? "closed" : "INTERNAL");
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
  lua_pushinteger(L, (lua_Integer)r.id);
  lua_setfield(L, -2, "id");
  lua_pushinteger(L, (lua_Integer)r.ttl);
  lua_setfield(L, -2, "ttl");
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer)r.cluster_id);
  lua_setfield(L, -2, "cluster_id");
  lua_pushinteger(L, (lua_Integer)r.member_id);
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
    pressure_gone(u->p, P_KA);
  }
  u->l = NULL;
  return 0;
}

/* client:_set_metadata{ key = value } for the streams the engine opens */
static int l_set_metadata(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  ec_metadata md[EC_MAX_METADATA];
  size_t n = read_metadata(L, 2, md);
  if (ec_client_set_metadata(c, md, n) != 0) return push_fail(L, "out of memory", "INTERNAL");
  lua_pushboolean(L, 1);
  return 1;
}

static int l_need_auth(lua_State *L) {
  lclient *u = check_client(L);
  lua_pushboolean(L, u->c && ec_client_need_auth(u->c));
  return 1;
}

static int l_auth_refreshed(lua_State *L) {
  lclient *u = check_client(L);
  if (u->c && !ec_client_closed(u->c)) ec_client_auth_refreshed(u->c);
  return 0;
}

static int l_nkeepalives(lua_State *L) {
  lclient *u = check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_nkeepalives(u->c) : 0);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* watch                                                                    */

#define WATCH_MT "etcd.core.watch"

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
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_Integer rev = luaL_optinteger(L, 3, 0);
  lpressure *p = pressure_before_new(L, P_WATCH);
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
  if (!u->w) return push_fail(L, err, ec_client_closed(c) ? "closed" : "INTERNAL");
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
  if (!pbconv_unpack(L, &etcdserverpb__watch_response__descriptor, bytes, n)) {
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

static int w_queued(lua_State *L) {
  lwatch *u = luaL_checkudata(L, 1, WATCH_MT);
  lua_pushinteger(L, u->w ? (lua_Integer)ec_watch_queued(u->w) : 0);
  return 1;
}

/* w:close(): cancel on the server; idempotent, also __gc and __close */
static int w_close(lua_State *L) {
  lwatch *u = luaL_checkudata(L, 1, WATCH_MT);
  if (u->w) {
    ec_watch_release(u->w);
    pressure_gone(u->p, P_WATCH);
  }
  u->w = NULL;
  return 0;
}

static int l_request_progress(lua_State *L) {
  int nret;
  ec_client *c = live_client(L, &nret);
  if (!c) return nret;
  lua_pushboolean(L, ec_watch_request_progress(c));
  return 1;
}

static int l_nwatches(lua_State *L) {
  lclient *u = check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_nwatches(u->c) : 0);
  return 1;
}

static int l_nstreams(lua_State *L) {
  lclient *u = check_client(L);
  lua_pushinteger(L, u->c ? (lua_Integer)ec_client_nstreams(u->c) : 0);
  return 1;
}

/* ---------------------------------------------------------------------- */

/* core._pressure() -> { clients =, watches =, keepalives = }, each
 * { live =, limit =, collections = }: this state's collector pressure
 * counters (for the specs). */
static int l_pressure(lua_State *L) {
  static const char *const names[P_KINDS] = {"clients", "watches", "keepalives"};
  lpressure *p = pressure_of(L);
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

static int l_now(lua_State *L) {
  /* core.now(): monotonic seconds, for deadlines in Lua. */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* A request or response message of any method, by its short name. */
static const ProtobufCMessageDescriptor *message_by_name(const char *name) {
  for (size_t i = 0; services[i]; i++)
    for (unsigned j = 0; j < services[i]->n_methods; j++) {
      const ProtobufCMethodDescriptor *m = &services[i]->methods[j];
      if (!strcmp(m->input->short_name, name)) return m->input;
      if (!strcmp(m->output->short_name, name)) return m->output;
    }
  return NULL;
}

static int l_unpack(lua_State *L) {
  /* core._unpack(message_name, bytes): decode bytes as a response message.
   * For specs and the fuzzer: the same path as a real response. */
  const char *name = luaL_checkstring(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  const ProtobufCMessageDescriptor *d = message_by_name(name);
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
  const ProtobufCMessageDescriptor *d = message_by_name(name);
  if (!d) return luaL_argerror(L, 1, "unknown message");
  pbconv_pack(L, 2, d);
  return 1;
}

/* A metatable with methods, __gc and (if given) __close; left on the stack. */
static void new_class(lua_State *L, const char *name, const luaL_Reg *methods,
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

__attribute__((visibility("default"))) int luaopen_etcd_core(lua_State *L) {
  static const luaL_Reg client_methods[] = {
      {"close", l_close},     {"pollfd", l_pollfd}, {"_dial", l_dial},
      {"_ready", l_ready},    {"_wait", l_wait},    {"_unary", l_unary},
      {"_inflight", l_inflight}, {"_closed", l_closed}, {"_stream", l_stream},
      {"_nstreams", l_nstreams}, {"_keepalive", l_keepalive},
      {"_nkeepalives", l_nkeepalives}, {"_watch", l_watch},
      {"_request_progress", l_request_progress}, {"_nwatches", l_nwatches},
      {"_set_metadata", l_set_metadata}, {"_need_auth", l_need_auth},
      {"_auth_refreshed", l_auth_refreshed}, {"_reap", l_reap},
      {"_token", l_token},
      {NULL, NULL}};
  static const luaL_Reg watch_methods[] = {
      {"read", w_read},       {"queued", w_queued}, {"close", w_close},
      {"created", w_created}, {"token", w_token}, {NULL, NULL}};
  static const luaL_Reg ka_methods[] = {
      {"state", k_state}, {"close", k_close}, {"token", k_token}, {NULL, NULL}};
  static const luaL_Reg stream_methods[] = {
      {"write", s_write},   {"read", s_read},     {"close_send", s_close_send},
      {"ended", s_ended},   {"queued", s_queued}, {"close", s_close},
      {"token", s_token},   {NULL, NULL}};
  static const luaL_Reg call_methods[] = {{"done", c_done},
                                          {"result", c_result},
                                          {"cancel", c_cancel},
                                          {"token", c_token},
                                          {NULL, NULL}};
  pbconv_open(L);
  new_class(L, CLIENT_MT, client_methods, l_gc, l_close);
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  new_class(L, STREAM_MT, stream_methods, s_close, s_close);
  lua_pop(L, 1);
  new_class(L, WATCH_MT, watch_methods, w_close, w_close);
  lua_pop(L, 1);
  new_class(L, KA_MT, ka_methods, k_close, k_close);
  lua_pop(L, 1);
  new_class(L, CALL_MT, call_methods, c_gc, NULL);
  lua_pop(L, 1);

  static const luaL_Reg funcs[] = {
      {"new", l_new},       {"now", l_now},         {"_unpack", l_unpack},
      {"_pack", l_pack},     {"_pressure", l_pressure}, {"_poll", l_poll},
      {"sleep", l_sleep},   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_pushstring(L, LUA_ETCD_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
