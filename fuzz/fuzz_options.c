/*
 * libFuzzer target: arbitrary Lua values, made from the input bytes, given to
 * every public function and method of lua-etcd (the modules under lua/etcd/ and, through
 * them, etcd.core linked in statically with the same sanitizers).
 *
 * The targets are found at start-up, not listed here: every function of
 * `etcd`, `etcd.op`, `etcd.compare` and every method of `etcd.Client` whose
 * name does not start with "_", sorted by name; the number of arguments each
 * takes comes from debug.getinfo. A method added to the API is fuzzed without
 * touching this file. Not the scheduler's (etcd.spawn, run, sleep, first,
 * yield): they take functions and task handles, not options, run the
 * coroutines spawned before, and etcd.sleep(1e9) sleeps that long by design
 * (spec/17 checks their arguments).
 *
 * One process has one client on 127.0.0.1:1 (nothing listens there: calls
 * whose arguments pass the checks fail at once with UNAVAILABLE or their
 * deadline), with dial_timeout = 0 and timeout = 0.001, plus one closed
 * client; both are made once and closed at exit.
 *
 * Input format (read in order; every read past the end gives 0, so a short
 * input ends in nils):
 *   call  := target:u8 flags:u8 value*       at most MAX_CALLS calls
 *     target % (number of targets) picks the function or method;
 *     flags bit 0: the method is called on the closed client;
 *     flags bit 1: ((flags >> 2) & 31) % (nparams + 2) arguments instead of
 *                  nparams;
 *     flags bit 7: a method is called on a generated value (read before the
 *                  arguments) instead of a client: `cli.get(x)` for
 *                  `cli:get(x)` (cli:close never gets the shared open client).
 *   value := kind:u8 payload                 kind % 24, see gen_value()
 * fuzz/gen_options_corpus.lua writes the seed corpus in this format.
 *
 * Invariants (abort() when broken):
 *   - a raised error is a string;
 *   - a call that returns gives a first result that is not nil, or exactly
 *     nil, string message, string code, the code one of the error contract's
 *     (docs/ERROR_HANDLING.md: lua-etcd's own lower-case codes or a gRPC
 *     status name);
 *   - the shared open client is still open after every call;
 *   - with FUZZ_OPTIONS_STRICT=1 (the default), a raised error must come from
 *     the argument checks, as the contract says: raised at the caller's level
 *     (the message starts with this harness's chunk name, "fuzzcaller:"),
 *     naming the function ("get:", "etcd.op.put:", ...), and not from Lua
 *     itself ("attempt to index a nil value", "bad argument #1 to 'xxx'" from
 *     a C function, "etcd.core: ..." from the request encoder). Unless the
 *     input made a table with a metatable (whose metamethods may raise
 *     anything) or forged an op or a compare (a table given the metatable of
 *     etcd.op or etcd.compare, whose fields no check sees), such an error
 *     means a check let a bad value through. Text between double quotes is
 *     the input's own, quoted by a check ("%q"), and is not searched.
 *   FUZZ_OPTIONS_STRICT=0 checks only the first three; =report prints the
 *   strict violations (as survey lines) instead of aborting.
 * Objects that come back (clients from etcd.new, keep-alives, watches) are
 * closed at once; a keep-alive is first asked for ka:next(value).
 *
 * Timeouts are kept short so that an input runs in milliseconds: in a plain
 * table argument, a number `timeout` above 0.001 becomes 0.001 and a number
 * `dial_timeout` above 0 becomes 0 (both stay valid; invalid values are left
 * alone); for etcd.new a missing `timeout` is set to 0.001 (a login would
 * otherwise wait 10 s). io.open refuses paths under /dev, /proc and /sys (the
 * tls option reads files: /dev/zero would never end). So long deadlines,
 * values over etcd's limits and real server answers are not covered here:
 * spec/14-hostile_spec.lua does those against a real etcd.
 *
 * FUZZ_OPTIONS_SURVEY=1 prints every distinct error message shape once;
 * FUZZ_OPTIONS_TRACE=1 prints every call and its outcome (to check seeds).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>

#include <grpc/grpc.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#ifndef FUZZ_LUA_DIR
#define FUZZ_LUA_DIR "lua"
#endif

#define MAX_CALLS 8
#define MAX_DEPTH 4
#define MAX_ITEMS 8

int luaopen_etcd_core(lua_State *L);

static lua_State *GL;
static int strict = 1, survey, trace;
static long iterations;

#define FAIL(...)                                                             \
  do {                                                                        \
    fprintf(stderr, "fuzz_options: invariant broken (%s:%d): ", __FILE__,     \
            __LINE__);                                                        \
    fprintf(stderr, __VA_ARGS__);                                             \
    fputc('\n', stderr);                                                      \
    abort();                                                                  \
  } while (0)

/* ---------------------------------------------------------------------- */
/* bytes                                                                    */

typedef struct src {
  const uint8_t *p;
  size_t n;
  int tainted; /* a table with a metatable, or a forged op, was made */
} src;

static unsigned u8(src *s) {
  if (!s->n) return 0;
  s->n--;
  return *s->p++;
}

static uint64_t u64(src *s) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)u8(s) << (8 * i);
  return v;
}

/* ---------------------------------------------------------------------- */
/* the harness's Lua side                                                   */

static const char harness_lua[] =
    "local etcd = require 'etcd'\n"
    "local H = { etcd = etcd }\n"
    "H.KeepAlive = require('etcd.lease').KeepAlive\n"
    "H.Watch = require('etcd.watch').Watch\n"
    "H.Op = require('etcd.txn').Op\n"
    "H.Compare = require('etcd.txn').Compare\n"
    "-- the function every target is called through: errors raised at level 2\n"
    "-- point at this line\n"
    "function H.call(f, ...) local r = table.pack(f(...)) return r end\n"
    "local targets = {}\n"
    "local SCHED = { spawn = true, run = true, sleep = true, first = true, yield = true }\n"
    "local function add(prefix, t, method)\n"
    "  for name, f in pairs(t) do\n"
    "    if type(f) == 'function' and not name:find('^_')\n"
    "       and not (prefix == 'etcd.' and SCHED[name]) then\n"
    "      local info = debug.getinfo(f, 'u')\n"
    "      local n = info.nparams - (method and 1 or 0)\n"
    "      if n < 0 then n = 0 end\n"
    "      targets[#targets + 1] = { name = prefix .. name, f = f, method = method,\n"
    "                                nparams = n }\n"
    "    end\n"
    "  end\n"
    "end\n"
    "add('etcd.', etcd)\n"
    "add('etcd.op.', etcd.op)\n"
    "add('etcd.compare.', etcd.compare)\n"
    "add('cli:', etcd.Client, true)\n"
    "table.sort(targets, function(a, b) return a.name < b.name end)\n"
    "H.targets = targets\n"
    "local cfg = { endpoints = { '127.0.0.1:1' }, dial_timeout = 0, timeout = 0.001 }\n"
    "H.cli = assert(etcd.new(cfg))\n"
    "H.closed = assert(etcd.new(cfg))\n"
    "H.closed:close()\n"
    "function H.alive() return not H.cli._core:_closed() end\n"
    "-- the tls option reads files: nothing that never ends or blocks\n"
    "local open = io.open\n"
    "io.open = function(path, ...)\n"
    "  if type(path) == 'string' and (path:find('^/dev') or path:find('^/proc')\n"
    "      or path:find('^/sys') or path:find('^/run')) then\n"
    "    return nil, path .. ': refused by the fuzzer'\n"
    "  end\n"
    "  return open(path, ...)\n"
    "end\n"
    "return H\n";

static int H_ref = LUA_NOREF;

/* Push field `name` of the harness table. */
static int push_h(lua_State *L, const char *name) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, H_ref);
  int t = lua_getfield(L, -1, name);
  lua_remove(L, -2);
  return t;
}

static int fz_raise(lua_State *L) {
  return luaL_error(L, "fuzz: raised by a generated function");
}
static int fz_noop(lua_State *L) {
  (void)L;
  return 0;
}
static int fz_upvalue(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

static const char *const dict_strings[] = {
    "", "\0", "\xff", "\xff\xff", "a\xff", "a\0b", "foo", "k", "key", "/",
    "127.0.0.1:1", "http://127.0.0.1:1", "https://127.0.0.1:1",
    "http://127.0.0.1:1/", "[::1]:1", "localhost:1", "127.0.0.1:0",
    "127.0.0.1:65536", "127.0.0.1", ":1", "unix:///tmp/x", "dns:///x:1",
    "ftp://x:1", "http://", "[::1]", "=", "==", "!=", ">", "<", "~=",
    "version", "create", "create_revision", "mod", "mod_revision", "value",
    "lease", "none", "ascend", "descend", "ASCEND", "KEY", "Mod", "read",
    "write", "readwrite", "READWRITE", "noput", "nodelete", "NOPUT",
    "nospace", "corrupt", "NONE", "root", "%s%d%q%", "\n",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n",
    "-----BEGIN", "/nonexistent/ca.pem", ".", "get", "put", "delete", "txn",
};
#define NDICT (sizeof dict_strings / sizeof *dict_strings)

/* Option names of every method, and the names of request fields. */
static const char *const dict_keys[] = {
    "prefix", "range_end", "from_key", "limit", "revision", "sort_target",
    "sort_order", "serializable", "keys_only", "count_only",
    "min_mod_revision", "max_mod_revision", "min_create_revision",
    "max_create_revision", "timeout", "lease", "prev_kv", "ignore_value",
    "ignore_lease", "physical", "atomic", "id", "keys", "start_revision",
    "progress_notify", "filters", "fragment", "is_learner", "no_password",
    "endpoints", "dial_timeout", "namespace", "max_send_size",
    "max_recv_size", "user", "password", "tls", "auto_sync_interval", "ca",
    "cert", "key", "server_name", "compare", "success", "failure",
    "member_id", "alarm", "kind", "req", "_kind", "value", "target",
    "result", "version",
};
#define NKEYS (sizeof dict_keys / sizeof *dict_keys)

static const lua_Integer special_ints[] = {
    0, 1, -1, 2, 3, 5, 10, 60, 64, 65, 100, 255, 256, 1000, 65535, 65536,
    0x7fffffff, (lua_Integer)0x80000000, -(lua_Integer)0x80000000,
    (lua_Integer)0x100000000, (lua_Integer)1 << 53, -((lua_Integer)1 << 53),
    INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1};
#define NSPECIAL_INTS (sizeof special_ints / sizeof *special_ints)

static void gen_value(lua_State *L, src *s, int depth);

static void gen_string(lua_State *L, src *s, unsigned kind) {
  switch (kind % 3) {
  case 0: { /* raw bytes from the input */
    size_t len = u8(s);
    if (len == 255) {
      size_t lo = u8(s), hi = u8(s); /* in this order */
      len += lo | hi << 8;
    }
    if (len > s->n) len = s->n;
    lua_pushlstring(L, (const char *)s->p, len);
    s->p += len;
    s->n -= len;
    break;
  }
  case 1: { /* from the dictionary (some hold a NUL: lengths are given) */
    unsigned i = u8(s) % NDICT;
    const char *d = dict_strings[i];
    size_t len = strlen(d);
    if (i == 1) len = 1;
    if (i == 5) len = 3;
    lua_pushlstring(L, d, len);
    break;
  }
  default: { /* one byte repeated, up to 64 KiB */
    char c = (char)u8(s);
    size_t lo = u8(s), hi = u8(s); /* in this order */
    size_t len = lo | hi << 8;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, len);
    memset(p, c, len);
    luaL_pushresultsize(&b, len);
  }
  }
}

/* A key for a generated table: mostly an option name. Returns 0 when the
 * value cannot be a key (nil, NaN). */
static int gen_key(lua_State *L, src *s, int depth) {
  unsigned b = u8(s);
  if (b < 224) {
    lua_pushstring(L, dict_keys[b % NKEYS]);
    return 1;
  }
  gen_value(L, s, depth + 1);
  if (lua_isnil(L, -1) ||
      (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1) &&
       isnan(lua_tonumber(L, -1)))) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

static void gen_map(lua_State *L, src *s, int depth) {
  unsigned n = u8(s) % (MAX_ITEMS + 1);
  lua_createtable(L, 0, (int)n);
  for (unsigned i = 0; i < n; i++) {
    if (!gen_key(L, s, depth)) {
      gen_value(L, s, depth + 1); /* consume the value all the same */
      lua_pop(L, 1);
      continue;
    }
    gen_value(L, s, depth + 1);
    lua_rawset(L, -3);
  }
}

/* Call `etcd.<sub>.<name>` with n generated arguments; on an error push the
 * result of `fallback` (a valid object) instead. */
static void gen_made(lua_State *L, src *s, int depth, const char *sub,
                     const char *name, int n, const char *fallback) {
  push_h(L, "etcd");
  lua_getfield(L, -1, sub);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_remove(L, -2);
  for (int i = 0; i < n; i++) gen_value(L, s, depth + 1);
  if (lua_pcall(L, n, 1, 0) != LUA_OK || lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (luaL_dostring(L, fallback) != LUA_OK)
      FAIL("fallback %s: %s", fallback, lua_tostring(L, -1));
  }
}

static void gen_value(lua_State *L, src *s, int depth) {
  luaL_checkstack(L, 10, "gen_value");
  unsigned kind = u8(s) % 24;
  if (depth >= MAX_DEPTH && kind >= 12) kind %= 12;
  switch (kind) {
  case 0:
    lua_pushnil(L);
    break;
  case 1:
  case 2:
    lua_pushboolean(L, kind == 2);
    break;
  case 3:
    lua_pushinteger(L, (int8_t)u8(s));
    break;
  case 4:
    lua_pushinteger(L, (lua_Integer)u64(s));
    break;
  case 5:
    lua_pushinteger(L, special_ints[u8(s) % NSPECIAL_INTS]);
    break;
  case 6: {
    uint64_t bits = u64(s);
    double d;
    memcpy(&d, &bits, sizeof d);
    lua_pushnumber(L, d);
    break;
  }
  case 7: {
    static const double f[] = {0.0,   -0.0,  0.5,   0.001,  1e-9,  1.5,
                               2.0,   3.0,   -0.5,  1e9,    1e10,  1e300,
                               -1e300, 9.2233720368547758e18, -9.2233720368547758e18,
                               9007199254740993.0, 5e-324, 4294967296.0};
    unsigned i = u8(s) % (sizeof f / sizeof *f + 3);
    if (i < sizeof f / sizeof *f) lua_pushnumber(L, f[i]);
    else if (i == sizeof f / sizeof *f) lua_pushnumber(L, NAN);
    else lua_pushnumber(L, i % 2 ? HUGE_VAL : -HUGE_VAL);
    break;
  }
  case 8:
  case 9:
  case 10:
    gen_string(L, s, kind - 8);
    break;
  case 11: /* two strings end to end */
    gen_string(L, s, u8(s));
    gen_string(L, s, u8(s));
    lua_concat(L, 2);
    break;
  case 12:
  case 13: { /* a list */
    unsigned n = u8(s) % (MAX_ITEMS + 1);
    lua_createtable(L, (int)n, 0);
    for (unsigned i = 1; i <= n; i++) {
      gen_value(L, s, depth + 1);
      lua_rawseti(L, -2, i);
    }
    break;
  }
  case 14:
  case 15:
  case 16:
    gen_map(L, s, depth);
    break;
  case 17:
    lua_pushcfunction(L, u8(s) % 2 ? fz_raise : fz_noop);
    break;
  case 18:
    if (u8(s) % 2) lua_pushlightuserdata(L, (void *)s);
    else lua_newuserdatauv(L, 0, 0);
    break;
  case 19: { /* an etcd.op */
    static const char *const ops[] = {"get", "put", "delete", "txn"};
    unsigned i = u8(s) % 4;
    gen_made(L, s, depth, "op", ops[i], i == 1 ? 3 : i == 3 ? 1 : 2,
             "return require('etcd').op.get('k')");
    break;
  }
  case 20: { /* an etcd.compare */
    static const char *const cmps[] = {"value", "version", "create_revision",
                                       "mod_revision", "lease"};
    gen_made(L, s, depth, "compare", cmps[u8(s) % 5], 4,
             "return require('etcd').compare.version('k', '=', 1)");
    break;
  }
  case 21: { /* a table with a metatable */
    s->tainted = 1;
    unsigned how = u8(s);
    gen_map(L, s, depth);
    lua_newtable(L);
    switch (how % 5) {
    case 0:
      lua_pushcfunction(L, fz_raise);
      lua_setfield(L, -2, "__index");
      break;
    case 1:
      gen_value(L, s, depth + 1);
      lua_pushcclosure(L, fz_upvalue, 1);
      lua_setfield(L, -2, "__len");
      break;
    case 2:
      lua_pushcfunction(L, fz_raise);
      lua_setfield(L, -2, "__pairs");
      break;
    case 3:
      gen_value(L, s, depth + 1);
      lua_pushcclosure(L, fz_upvalue, 1);
      lua_setfield(L, -2, "__tostring");
      break;
    default:
      break;
    }
    lua_setmetatable(L, -2);
    break;
  }
  case 22: { /* objects of the library, and forged ones */
    unsigned what = u8(s) % 8;
    switch (what) {
    case 0:
      push_h(L, "cli");
      break;
    case 1:
      push_h(L, "closed");
      break;
    case 2:
      push_h(L, "etcd");
      break;
    case 3:
      lua_newthread(L);
      break;
    case 4:
    case 5: /* an op or a compare with arbitrary fields */
      s->tainted = 1;
      gen_map(L, s, depth);
      push_h(L, what == 4 ? "Op" : "Compare");
      lua_setmetatable(L, -2);
      break;
    case 6: { /* a long list of one value */
      unsigned n = u8(s) + 1;
      gen_value(L, s, depth + 1);
      lua_createtable(L, (int)n, 0);
      for (unsigned i = 1; i <= n; i++) {
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, i);
      }
      lua_remove(L, -2);
      break;
    }
    default: /* a list with a hole */
      lua_createtable(L, 3, 0);
      gen_value(L, s, depth + 1);
      lua_rawseti(L, -2, 1);
      gen_value(L, s, depth + 1);
      lua_rawseti(L, -2, 3);
    }
    break;
  }
  default: /* a map of the form { <key> = <value> } with one pair */
    lua_newtable(L);
    if (gen_key(L, s, depth)) {
      gen_value(L, s, depth + 1);
      lua_rawset(L, -3);
    }
  }
}

/* ---------------------------------------------------------------------- */

/* Keep the waits short (see the top of the file). */
static void shorten(lua_State *L, int idx, int is_new) {
  if (lua_type(L, idx) != LUA_TTABLE) return;
  idx = lua_absindex(L, idx); /* raw accesses only: no metamethod runs */
  lua_pushliteral(L, "timeout");
  lua_rawget(L, idx);
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Number v = lua_tonumber(L, -1);
    if (v > 0.001) {
      lua_pushliteral(L, "timeout");
      lua_pushnumber(L, 0.001);
      lua_rawset(L, idx);
    }
  } else if (lua_isnil(L, -1) && is_new) {
    lua_pushliteral(L, "timeout");
    lua_pushnumber(L, 0.001);
    lua_rawset(L, idx);
  }
  lua_pop(L, 1);
  lua_pushliteral(L, "dial_timeout");
  lua_rawget(L, idx);
  if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) > 0) {
    lua_pushliteral(L, "dial_timeout");
    lua_pushinteger(L, 0);
    lua_rawset(L, idx);
  }
  lua_pop(L, 1);
}

/* Errors that only Lua itself or a C function's luaL_argerror raise: with no
 * user metatable in play, one of them means a check missed a bad value.
 * What the input wrote is quoted in the checks' messages ("%q": a name in
 * single quotes is a plain identifier), so text between double quotes is
 * left out of the search: a key "attempt to x" is no finding. */
static int internal_error(const char *msg) {
  static const char *const marks[] = {
      "attempt to ", "bad argument #1 to '", "bad argument #2 to '",
      "bad argument #3 to '", "bad argument #4 to '", "etcd.core:",
      "stack overflow", "table index is", "number has no integer",
      "invalid value (at index", "invalid option"};
  size_t n = strlen(msg);
  char *bare = malloc(n + 1);
  if (!bare) FAIL("out of memory");
  size_t j = 0;
  int quoted = 0;
  for (size_t i = 0; i < n; i++) {
    if (quoted && msg[i] == '\\' && i + 1 < n) {
      i++; /* an escaped character, maybe a quote */
    } else if (msg[i] == '"') {
      quoted = !quoted;
    } else if (!quoted) {
      bare[j++] = msg[i];
    }
  }
  bare[j] = 0;
  int found = 0;
  for (size_t i = 0; i < sizeof marks / sizeof *marks && !found; i++)
    found = strstr(bare, marks[i]) != NULL;
  free(bare);
  return found;
}

static void survey_note(const char *name, const char *msg) {
  /* One line per (target, message without its quoted values). */
  static char seen[4096][96];
  static int nseen;
  char shape[96];
  size_t j = 0;
  int quoted = 0;
  for (const char *p = msg; *p && j < sizeof shape - 1; p++) {
    if (*p == '"') {
      quoted = !quoted;
      continue;
    }
    if (!quoted && !(*p >= '0' && *p <= '9')) shape[j++] = *p;
  }
  shape[j] = 0;
  char key[96];
  snprintf(key, sizeof key, "%s|%s", name, shape);
  for (int i = 0; i < nseen; i++)
    if (!strcmp(seen[i], key)) return;
  if (nseen < 4096) snprintf(seen[nseen++], sizeof seen[0], "%s", key);
  fprintf(stderr, "survey: %s: %s\n", name, msg);
}

/* Where an argument error raised at the caller's level points: the line of
 * H.call in the harness chunk. */
#define CALLER_MARK "fuzzcaller:"

/* Is `msg` an argument error of function `name` raised at its caller's
 * level? Returns NULL if so, else what is wrong. */
static const char *not_a_check(const char *name, const char *msg) {
  if (internal_error(msg)) return "an error that no check made";
  if (strncmp(msg, CALLER_MARK, strlen(CALLER_MARK)) != 0)
    return "an error not raised at the caller's level";
  /* "cli:get" is named "get:" in its messages; "etcd.new" "etcd.new:" */
  char want[96];
  snprintf(want, sizeof want, "%s:",
           strncmp(name, "cli:", 4) == 0 ? name + 4 : name);
  if (!strstr(msg, want)) return "an error that does not name the function";
  return NULL;
}

/* The codes of docs/ERROR_HANDLING.md. */
static int known_code(const char *code) {
  static const char *const codes[] = {
      "timeout", "closed", "forked", "compacted", "future_revision",
      "lease_not_found", "lease_expired", "auth_failed", "no_leader",
      "no_space", "too_large", "cancelled", "locked", "session_lost",
      "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
      "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
    if (!strcmp(code, codes[i])) return 1;
  return 0;
}

/* Check the outcome of H.call (status st, result on top); returns the index
 * of the packed results (a table) or 0 after an error. */
static int check_outcome(lua_State *L, int st, const char *name, int tainted) {
  if (st != LUA_OK) {
    if (lua_type(L, -1) != LUA_TSTRING)
      FAIL("%s raised a %s, not a string", name, luaL_typename(L, -1));
    const char *msg = lua_tostring(L, -1);
    if (trace) fprintf(stderr, "trace: %s raised: %.300s\n", name, msg);
    if (survey) survey_note(name, msg);
    if (st == LUA_ERRMEM) FAIL("%s: out of memory", name);
    const char *why = strict && !tainted ? not_a_check(name, msg) : NULL;
    if (why && strict == 2) {
      char tag[128];
      snprintf(tag, sizeof tag, "%s (%s)", name, why);
      survey_note(tag, msg);
    } else if (why) {
      FAIL("%s raised %s: %s", name, why, msg);
    }
    lua_pop(L, 1);
    return 0;
  }
  int r = lua_gettop(L);
  lua_getfield(L, r, "n");
  lua_Integer n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_rawgeti(L, r, 1);
  int first_nil = lua_isnil(L, -1);
  lua_pop(L, 1);
  if (n == 0 && !strcmp(name, "cli:close")) return r;
  /* cqueues' polling protocol: nil is "no timeout" */
  if (n == 1 && first_nil && !strcmp(name, "cli:timeout")) return r;
  if (n == 0) FAIL("%s returned nothing", name);
  if (first_nil) {
    lua_rawgeti(L, r, 2);
    lua_rawgeti(L, r, 3);
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
      FAIL("%s returned nil, %s, %s", name, luaL_typename(L, -2),
           luaL_typename(L, -1));
    if (!known_code(lua_tostring(L, -1)))
      FAIL("%s returned the code \"%s\" (message \"%s\"), not one of the "
           "contract's", name, lua_tostring(L, -1), lua_tostring(L, -2));
    if (survey) survey_note(name, lua_tostring(L, -1));
    if (trace)
      fprintf(stderr, "trace: %s returned nil, \"%.300s\", %s\n", name,
              lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pop(L, 2);
  } else if (trace) {
    lua_rawgeti(L, r, 1);
    fprintf(stderr, "trace: %s returned a %s\n", name, luaL_typename(L, -1));
    lua_pop(L, 1);
  }
  return r;
}

/* Close what came back; ask a keep-alive for ka:next(value) first. */
static void close_results(lua_State *L, int r, src *s) {
  lua_getfield(L, r, "n");
  lua_Integer n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, r, i);
    if (!lua_getmetatable(L, -1)) {
      lua_pop(L, 1);
      continue;
    }
    int is_ka = (push_h(L, "KeepAlive"), lua_rawequal(L, -1, -2));
    lua_pop(L, 1);
    if (is_ka) {
      push_h(L, "call");
      lua_getfield(L, -3, "next");
      lua_pushvalue(L, -4);
      gen_value(L, s, 1);
      if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) > 0.001) {
        lua_pop(L, 1);
        lua_pushnumber(L, 0.001);
      } else if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushinteger(L, 0); /* nil would wait for the first answer */
      }
      int st = lua_pcall(L, 3, 1, 0);
      if (check_outcome(L, st, "ka:next", s->tainted)) lua_pop(L, 1);
    }
    lua_pop(L, 1); /* the metatable */
    /* Anything with a close method of ours: client, keep-alive, watch. */
    if (lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1)) {
      lua_pop(L, 1);
      lua_getfield(L, -1, "close");
      if (lua_isfunction(L, -1)) {
        lua_pushvalue(L, -2);
        if (lua_pcall(L, 1, 0, 0) != LUA_OK)
          FAIL("close of a result raised: %s", lua_tostring(L, -1));
      } else {
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
}

static int l_iteration(lua_State *L) {
  src *s = lua_touserdata(L, 1);
  lua_settop(L, 0);
  push_h(L, "targets");
  int targets = lua_gettop(L);
  lua_Integer ntargets = (lua_Integer)lua_rawlen(L, targets);
  for (int call = 0; call < MAX_CALLS && s->n; call++) {
    unsigned sel = u8(s), flags = u8(s);
    lua_rawgeti(L, targets, (lua_Integer)(sel % ntargets) + 1);
    int t = lua_gettop(L);
    lua_getfield(L, t, "name");
    const char *name = lua_tostring(L, -1);
    lua_getfield(L, t, "nparams");
    int nparams = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, t, "method");
    int method = lua_toboolean(L, -1);
    lua_pop(L, 1);
    int nargs = (flags & 2)
                    ? (int)(((flags >> 2) & 31) % (unsigned)(nparams + 2))
                    : nparams;
    int is_new = !strcmp(name, "etcd.new");

    push_h(L, "call");
    int base = lua_gettop(L);
    lua_getfield(L, t, "f");
    if (method && (flags & 0x80)) {
      gen_value(L, s, 0); /* a bad self */
      push_h(L, "cli");
      int shared = lua_rawequal(L, -1, -2);
      lua_pop(L, 1);
      if (shared && !strcmp(name, "cli:close")) { /* it must stay open */
        lua_pop(L, 1);
        push_h(L, "closed");
      }
    } else if (method)
      push_h(L, (flags & 1) || !strcmp(name, "cli:close") ? "closed" : "cli");
    for (int i = 0; i < nargs; i++) {
      gen_value(L, s, 0);
      shorten(L, -1, is_new);
    }
    int st = lua_pcall(L, lua_gettop(L) - base, 1, 0);
    int r = check_outcome(L, st, name, s->tainted);
    if (r) {
      close_results(L, r, s);
      lua_pop(L, 1);
    }
    lua_settop(L, targets);
    push_h(L, "alive");
    lua_call(L, 0, 1);
    if (!lua_toboolean(L, -1))
      FAIL("the shared client was closed by a call of %s", name);
    lua_settop(L, targets);
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* coverage of the Lua code                                                 */

/* libFuzzer sees only instrumented C. A line hook feeds it the Lua side too:
 * each (chunk, previous line, line) step bumps one of these counters, which
 * libFuzzer treats like its own edge counters. */
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t
    lua_counters[1 << 16];
static const void *prev_source;
static int prev_line;

static void line_hook(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return;
  uintptr_t h = (uintptr_t)ar->source;
  if ((const void *)ar->source != prev_source) prev_line = 0;
  h = h * 31 + (uintptr_t)prev_line * 65599 + (uintptr_t)ar->currentline;
  h ^= h >> 17;
  h *= 0xed5ad4bbu;
  h ^= h >> 11;
  uint8_t *c = &lua_counters[h & (sizeof lua_counters - 1)];
  if (*c < 255) (*c)++;
  prev_source = ar->source;
  prev_line = ar->currentline;
}

static void cleanup(void) {
  if (!GL) return;
  lua_State *L = GL;
  GL = NULL;
  if (push_h(L, "cli") != LUA_TNIL) {
    lua_getfield(L, -1, "close");
    lua_insert(L, -2);
    lua_pcall(L, 1, 0, 0);
  }
  lua_close(L); /* closes every client: their channels are gone */
  /* Balance the module's one grpc_init() and wait for gRPC's own clean-up,
   * so that no DNS resolution a fuzzed endpoint ("localhost:1") started is
   * still in flight in c-ares when LeakSanitizer looks, at exit. */
  grpc_shutdown_blocking();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *e = getenv("FUZZ_OPTIONS_STRICT");
  if (e && !strcmp(e, "0")) strict = 0;
  if (e && !strcmp(e, "report")) strict = 2;
  survey = getenv("FUZZ_OPTIONS_SURVEY") != NULL;
  trace = getenv("FUZZ_OPTIONS_TRACE") != NULL;
  /* Nothing may wait on the terminal. */
  int fd = open("/dev/null", O_RDONLY);
  if (fd >= 0) {
    dup2(fd, 0);
    close(fd);
  }
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  const char *dir = getenv("FUZZ_LUA_DIR");
  if (!dir) dir = FUZZ_LUA_DIR;
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", dir, dir);
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, ""); /* never a core.so from the file system */
  lua_setfield(L, -2, "cpath");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_etcd_core);
  lua_setfield(L, -2, "etcd.core");
  lua_pop(L, 2);
  if (luaL_loadbuffer(L, harness_lua, sizeof harness_lua - 1, "=fuzzcaller") ||
      lua_pcall(L, 0, 1, 0)) {
    fprintf(stderr, "fuzz_options: set-up failed: %s\n", lua_tostring(L, -1));
    exit(1);
  }
  H_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  GL = L;
  atexit(cleanup);
  if (getenv("FUZZ_OPTIONS_LIST")) {
    push_h(L, "targets");
    for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
      lua_rawgeti(L, -1, i);
      lua_getfield(L, -1, "name");
      lua_getfield(L, -2, "nparams");
      fprintf(stderr, "target %d: %s (%d)\n", (int)i - 1, lua_tostring(L, -2),
              (int)lua_tointeger(L, -1));
      lua_pop(L, 3);
    }
    lua_pop(L, 1);
  }
  return 0;
}

static int run_one(const uint8_t *data, size_t size);

/* FUZZ_OPTIONS_REPEAT=n: run each input n times and print the resident set
 * size now and then (to tell a leak from the collector's slack). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static long repeat = -1;
  if (repeat < 0) {
    const char *e = getenv("FUZZ_OPTIONS_REPEAT");
    repeat = e ? atol(e) : 0;
  }
  if (repeat <= 1) return run_one(data, size);
  for (long i = 0; i < repeat; i++) {
    run_one(data, size);
    if (i % (repeat / 10 + 1) == 0) {
      long pages = 0;
      FILE *f = fopen("/proc/self/statm", "r");
      if (f) {
        if (fscanf(f, "%*ld %ld", &pages) != 1) pages = 0;
        fclose(f);
      }
      fprintf(stderr, "repeat %ld: rss %ld KiB, Lua %d KiB\n", i,
              pages * (sysconf(_SC_PAGESIZE) / 1024), lua_gc(GL, LUA_GCCOUNT, 0));
    }
  }
  return 0;
}

static int run_one(const uint8_t *data, size_t size) {
  lua_State *L = GL;
  src s = {data, size, 0};
  lua_settop(L, 0);
  prev_source = NULL;
  lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  lua_pushcfunction(L, l_iteration);
  lua_pushlightuserdata(L, &s);
  int st = lua_pcall(L, 1, 0, 0);
  lua_sethook(L, NULL, 0, 0);
  if (st != LUA_OK)
    FAIL("harness error: %s", lua_tostring(L, -1));
  lua_settop(L, 0);
  if (++iterations % 64 == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
