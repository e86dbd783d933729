/*
 * The binding: what the files of src/lua/ share. Only the files of this directory
 * include lua.h; the engine (src/engine/) is built without Lua's include
 * path. One file per Lua class, each with its open function:
 *
 *   client.c     etcd.core.client, core.new/now/sleep/_poll/auth_refusal
 *   call.c       etcd.core.call (unary calls) and the method registry
 *   stream.c     etcd.core.stream (bidirectional streams)
 *   watch.c      etcd.core.watch
 *   keepalive.c  etcd.core.keepalive
 *   pressure.c   collector pressure (core._pressure)
 *   pbconv.c     Lua tables <-> protobuf-c messages (core._pack/_unpack)
 *   core.c       luaopen_etcd_core: calls the open functions
 */
#ifndef ETCD_LUA_BINDING_H
#define ETCD_LUA_BINDING_H

#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>
#include <protobuf-c/protobuf-c.h>

#include "engine/engine.h"
#include "lua/compat.h"

#define CLIENT_MT "etcd.core.client"
#define CALL_MT "etcd.core.call"
#define STREAM_MT "etcd.core.stream"
#define WATCH_MT "etcd.core.watch"
#define KA_MT "etcd.core.keepalive"

/* ---- collector pressure (pressure.c) ---------------------------------- */
enum { P_CLIENT, P_WATCH, P_KA, P_KINDS };

typedef struct lpressure {
  size_t live[P_KINDS];
  size_t limit[P_KINDS];
  size_t collections[P_KINDS]; /* full collections run, for the specs */
} lpressure;

lpressure *lb_pressure_of(lua_State *L);
/* Before creating an object of kind k (nothing of it on the stack yet). */
lpressure *lb_pressure_before_new(lua_State *L, int k);
void lb_pressure_gone(lpressure *p, int k);

/* ---- the client (client.c) -------------------------------------------- */
typedef struct lclient {
  ec_client *c;
  lpressure *p;
} lclient;

lclient *lb_check_client(lua_State *L);
/* The client at index 1, or NULL with nil, msg, code pushed (closed or
 * forked: *nret is the count). */
ec_client *lb_live_client(lua_State *L, int *nret);
int lb_push_fail(lua_State *L, const char *msg, const char *code);
/* Seconds (a non-negative number) to milliseconds; nil gives `dflt`. */
int64_t lb_opt_ms(lua_State *L, int idx, int64_t dflt);
/* An optional 1-based endpoint index at idx (nil/0: the client chooses) as
 * the engine's 0-based channel, or -1; raises when out of range. */
int lb_opt_chan(lua_State *L, int idx);
/* The metadata table at idx ({ key = value }) into md (at most
 * EC_MAX_METADATA); returns the count. */
size_t lb_read_metadata(lua_State *L, int idx, ec_metadata *md);
/* A metatable with methods, __gc and (if given) __close; left on the stack. */
void lb_new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                  lua_CFunction gc, lua_CFunction close);
/* Add a method to the client class (made by lb_open_client). */
void lb_client_method(lua_State *L, const char *name, lua_CFunction f);

/* ---- calls and the method registry (call.c) --------------------------- */
/* nil, msg, code for a call or stream that ended with gRPC status `st`. */
int lb_push_status(lua_State *L, int st, int end, const char *msg);

typedef struct lb_method {
  char path[96]; /* "/etcdserverpb.KV/Range" */
  const ProtobufCMessageDescriptor *in, *out;
  int streaming;
} lb_method;

/* The method at idx: a handle from core.method(name), or its short name
 * ("KV.Range"); raises for an unknown one, or for a streaming one when
 * `streaming` is 0 (and a unary one when 1). */
const lb_method *lb_check_method(lua_State *L, int idx, int streaming);
/* A request or response message of any method, by its short name. */
const ProtobufCMessageDescriptor *lb_message_by_name(const char *name);

/* ---- open functions: each registers its class (and the client methods
 * that make its objects); the module table is at the top of the stack. -- */
void lb_open_client(lua_State *L);
void lb_open_call(lua_State *L);
void lb_open_stream(lua_State *L);
void lb_open_watch(lua_State *L);
void lb_open_keepalive(lua_State *L);
void lb_open_pressure(lua_State *L);
void lb_open_conv(lua_State *L);

#endif
