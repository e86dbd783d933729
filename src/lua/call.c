/*
 * Unary calls: client:_unary(method, request, seconds, metadata, endpoint,
 * fail_fast) -> call; call:done(), call:token(), call:cancel(),
 * call:result() -> table | nil, msg, code (once). And the method registry:
 * every etcd method by its short name ("KV.Range"), resolved once.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <grpc/status.h>

#include "lua/binding.h"
#include "etcdserverpb/rpc.pb-c.h"
#include "lua/pbconv.h"

typedef struct lcall {
  ec_call *k;
  int chan; /* the endpoint it went to, 1-based (kept past the release) */
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

/* Every method of every service, resolved once per process: its path and
 * its messages. Lua holds them as light userdata (core.method(name)), and
 * names resolve through one table lookup: no scan, no formatting per call. */
#define MAX_METHODS 96
static lb_method method_table[MAX_METHODS];
static size_t nmethods;
static pthread_once_t methods_once = PTHREAD_ONCE_INIT;

static void build_methods(void) {
  for (size_t i = 0; services[i]; i++)
    for (unsigned j = 0; j < services[i]->n_methods && nmethods < MAX_METHODS; j++) {
      const ProtobufCServiceDescriptor *sd = services[i];
      lb_method *m = &method_table[nmethods++];
      snprintf(m->path, sizeof m->path, "/%s/%s", sd->name, sd->methods[j].name);
      m->in = sd->methods[j].input;
      m->out = sd->methods[j].output;
      char shortname[96];
      snprintf(shortname, sizeof shortname, "%s.%s", sd->short_name, sd->methods[j].name);
      for (size_t k = 0; k < sizeof streaming / sizeof *streaming; k++)
        if (!strcmp(shortname, streaming[k])) m->streaming = 1;
    }
}

static const char methods_key = 'm';

/* The registry's { ["KV.Range"] = handle, ... }, pushed. */
static void push_methods(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &methods_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  pthread_once(&methods_once, build_methods);
  lua_createtable(L, 0, (int)nmethods);
  size_t k = 0;
  for (size_t i = 0; services[i]; i++)
    for (unsigned j = 0; j < services[i]->n_methods && k < nmethods; j++, k++) {
      lua_pushfstring(L, "%s.%s", services[i]->short_name,
                      services[i]->methods[j].name);
      lua_pushlightuserdata(L, &method_table[k]);
      lua_rawset(L, -3);
    }
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &methods_key);
}

const lb_method *lb_check_method(lua_State *L, int idx, int want_streaming) {
  const lb_method *m = NULL;
  if (lua_type(L, idx) == LUA_TLIGHTUSERDATA) {
    const lb_method *p = lua_touserdata(L, idx);
    pthread_once(&methods_once, build_methods);
    for (size_t i = 0; i < nmethods && !m; i++)
      if (p == &method_table[i]) m = p;
  } else if (lua_type(L, idx) == LUA_TSTRING) {
    push_methods(L);
    lua_pushvalue(L, idx);
    if (lua_rawget(L, -2) == LUA_TLIGHTUSERDATA) m = lua_touserdata(L, -1);
    lua_pop(L, 2);
  } else {
    luaL_typeerror(L, idx, "etcd method name or handle");
  }
  if (!m) {
    luaL_argerror(L, idx, "unknown etcd method");
    return NULL;
  }
  if (m->streaming != want_streaming) {
    luaL_argerror(L, idx, want_streaming ? "unknown etcd streaming method"
                                         : "streaming method: not a unary call");
    return NULL;
  }
  return m;
}

/* core.method(name) -> handle (a light userdata) | nil */
static int l_method(lua_State *L) {
  luaL_checkstring(L, 1);
  push_methods(L);
  lua_pushvalue(L, 1);
  lua_rawget(L, -2);
  return 1;
}

/* client:_unary(method, request, seconds, metadata, endpoint_index, fail_fast)
 *   -> call | nil, msg, code */
static int l_unary(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  const lb_method *m = lb_check_method(L, 2, 0);
  luaL_checktype(L, 3, LUA_TTABLE);
  int64_t ms = lb_opt_ms(L, 4, 10000);
  /* 1-based endpoint index; 0/nil: the client chooses. Read before anything
   * is pushed: the stack grows below. */
  int chan = lb_opt_chan(L, 6);
  int fail_fast = lua_toboolean(L, 7);
  lua_settop(L, 7);
  ec_metadata md[EC_MAX_METADATA];
  size_t nmd = lb_read_metadata(L, 5, md);

  pbconv_pack(L, 3, m->in);
  size_t reqlen;
  const char *req = lua_tolstring(L, -1, &reqlen);
  lcall *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->k = NULL;
  h->chan = 0;
  h->out = m->out;
  luaL_setmetatable(L, CALL_MT);
  char err[256];
  h->k = ec_unary_start(c, m->path, req, reqlen, ms, chan, fail_fast, md, nmd, err,
                        sizeof err);
  if (!h->k)
    return lb_push_fail(L, err,
                     ec_client_closed(c) ? "closed" : "INTERNAL");
  h->chan = ec_call_chan(h->k) + 1;
  return 1;
}

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

/* call:chan() -> the endpoint (1-based) the call went to */
static int c_chan(lua_State *L) {
  lcall *h = check_call(L);
  lua_pushinteger(L, h->chan);
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
int lb_push_status(lua_State *L, int st, int end, const char *msg) {
  switch (end) {
  case EC_END_CLOSED:
    return lb_push_fail(L, "etcd: client is closed", "closed");
  case EC_END_CANCELLED:
    if (st == GRPC_STATUS_CANCELLED)
      return lb_push_fail(L, "etcd: call cancelled", "cancelled");
    break;
  }
  if (st == GRPC_STATUS_DEADLINE_EXCEEDED) return lb_push_fail(L, *msg ? msg : "deadline exceeded", "timeout");
  const char *code =
      st > 0 && st < (int)(sizeof status_names / sizeof *status_names)
          ? status_names[st]
          : "UNKNOWN";
  if (st == GRPC_STATUS_OK) return lb_push_fail(L, "etcd: stream ended", "closed");
  return lb_push_fail(L, *msg ? msg : code, code);
}

/* call:result() -> response table | nil, message, code
 * code is the gRPC status name, or "closed" / "timeout" / "cancelled".
 * Once only: the call is released after it (a second call says "released"). */
static int c_result(lua_State *L) {
  lcall *h = check_call(L);
  if (!h->k) return lb_push_fail(L, "etcd: call was released", "closed");
  if (!ec_call_done(h->k)) return luaL_error(L, "etcd: call not finished");
  int st = ec_call_status(h->k);
  int n;
  if (st != GRPC_STATUS_OK || ec_call_end(h->k) != EC_END_NORMAL) {
    n = lb_push_status(L, st, ec_call_end(h->k), ec_call_details(h->k));
  } else {
    size_t len;
    const void *data = ec_call_response(h->k, &len);
    size_t nslen = 0;
    const char *ns = luaL_optlstring(L, 2, NULL, &nslen);
    if (pbconv_unpack_ns(L, h->out, data ? data : "", data ? len : 0, ns, nslen)) {
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


/* A request or response message of any method, by its short name. */
const ProtobufCMessageDescriptor *lb_message_by_name(const char *name) {
  for (size_t i = 0; services[i]; i++)
    for (unsigned j = 0; j < services[i]->n_methods; j++) {
      const ProtobufCMethodDescriptor *m = &services[i]->methods[j];
      if (!strcmp(m->input->short_name, name)) return m->input;
      if (!strcmp(m->output->short_name, name)) return m->output;
    }
  return NULL;
}

void lb_open_call(lua_State *L) {
  static const luaL_Reg methods[] = {{"done", c_done},     {"result", c_result},
                                     {"cancel", c_cancel}, {"token", c_token},
                                     {"chan", c_chan},     {NULL, NULL}};
  lb_new_class(L, CALL_MT, methods, c_gc, NULL);
  lua_pop(L, 1);
  lb_client_method(L, "_unary", l_unary);
  lua_pushcfunction(L, l_method);
  lua_setfield(L, -2, "method");
}
