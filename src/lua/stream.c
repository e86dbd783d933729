/*
 * Bidirectional streams for Lua: client:_stream(method, seconds, metadata,
 * endpoint) -> stream; stream:write(request), stream:close_send(),
 * stream:read(), stream:token(), stream:close() (also __gc and __close).
 */
#include "lua/binding.h"
#include "lua/pbconv.h"

typedef struct lstream {
  ec_stream *s;
  const ProtobufCMessageDescriptor *in, *out;
} lstream;

/* client:_stream(method, seconds|nil, metadata, endpoint) -> stream | nil,
 * msg, code. endpoint: 1-based index; nil/0: the client chooses. */
static int l_stream(lua_State *L) {
  int nret;
  ec_client *c = lb_live_client(L, &nret);
  if (!c) return nret;
  const lb_method *m = lb_check_method(L, 2, 1);
  int64_t ms = lb_opt_ms(L, 3, -1);
  int chan = lb_opt_chan(L, 5);
  lua_settop(L, 4);
  ec_metadata md[EC_MAX_METADATA];
  size_t nmd = lb_read_metadata(L, 4, md);
  lstream *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->s = NULL;
  u->in = m->in;
  u->out = m->out;
  luaL_setmetatable(L, STREAM_MT);
  char err[256];
  u->s = ec_stream_start(c, m->path, ms, chan, md, nmd, err, sizeof err);
  if (!u->s) return lb_push_fail(L, err, ec_client_closed(c) ? "closed" : "INTERNAL");
  return 1;
}

static lstream *check_stream(lua_State *L) {
  return luaL_checkudata(L, 1, STREAM_MT);
}

/* stream:write(request) -> true | nil, msg, code */
static int s_write(lua_State *L) {
  lstream *u = check_stream(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!u->s) return lb_push_fail(L, "etcd: stream is closed", "closed");
  pbconv_pack(L, 2, u->in);
  size_t len;
  const char *data = lua_tolstring(L, -1, &len);
  if (ec_stream_write(u->s, data, len) != 0)
    return lb_push_fail(L, "etcd: stream has ended", "closed");
  lua_pushboolean(L, 1);
  return 1;
}

/* stream:read() -> response | false (nothing yet) | nil, msg, code (ended) */
static int s_read(lua_State *L) {
  lstream *u = check_stream(L);
  if (!u->s) return lb_push_fail(L, "etcd: stream is closed", "closed");
  ec_msg *m;
  int r = ec_stream_read(u->s, &m);
  if (r == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r < 0)
    return lb_push_status(L, ec_stream_status(u->s), ec_stream_end(u->s),
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

/* stream:close_send(): no more requests (after the queued ones) */
static int s_close_send(lua_State *L) {
  lstream *u = check_stream(L);
  if (u->s) ec_stream_close_send(u->s);
  return 0;
}

static int s_token(lua_State *L) {
  lstream *u = check_stream(L);
  lua_pushinteger(L, u->s ? (lua_Integer)ec_stream_token(u->s) : 0);
  return 1;
}

/* stream:close(): cancel and release; idempotent, also __gc and __close */
static int s_close(lua_State *L) {
  lstream *u = check_stream(L);
  if (u->s) ec_stream_release(u->s);
  u->s = NULL;
  return 0;
}

void lb_open_stream(lua_State *L) {
  static const luaL_Reg methods[] = {{"write", s_write},
                                     {"read", s_read},
                                     {"close", s_close},
                                     {"close_send", s_close_send},
                                     {"token", s_token},
                                     {NULL, NULL}};
  lb_new_class(L, STREAM_MT, methods, s_close, s_close);
  lua_pop(L, 1);
  lb_client_method(L, "_stream", l_stream);
}
