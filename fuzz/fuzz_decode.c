/*
 * libFuzzer target: untrusted bytes through the response decoder.
 *
 * Input: 4 selector bytes, then the protobuf payload. The selector picks one
 * of ALL the message descriptors of the generated files (etcdserverpb, mvccpb,
 * authpb; the list is made from the build/gen headers at build time): the
 * descriptor whose FNV-1a 32-bit hash of its full name ("etcdserverpb.
 * TxnResponse") equals the selector (little endian), or else descriptor
 * number selector % N in the list sorted by full name. Seed and regression
 * files use the hash, so they stay valid when messages are added.
 *
 * Per input, in a fresh lua_State (closed at the end: LeakSanitizer sees every
 * byte freed, and libFuzzer's per-input leak check stays meaningful):
 *   1. ec_pb_check_depth and ec_pb_header_member, then pbconv_unpack (which runs it again, as every
 *      production caller does), inside lua_pcall: a Lua error here is a bug.
 *      Oracles: too deep => the depth message; malformed => "malformed";
 *      protobuf-c accepts the bytes => pbconv_unpack gives a table.
 *   2. pbconv_pack of that table as it is (snake_case names: raises for
 *      messages with camelCase fields; must be a Lua error, never a crash).
 *   3. The table renamed back to .proto names and packed (only an unknown
 *      enum number may make that fail), checked, decoded again: the second
 *      table must equal the first, and packing it again gives the same bytes.
 *   4. Steps 1-3 again with an allocator that fails after k allocations (k
 *      derived from the input): only "not enough memory" errors, no leak.
 * Before step 1, when the walk lets the bytes through, protobuf-c decodes
 * them once more with its allocations counted (ASan's malloc hook): at most
 * DECODE_ALLOC_PER_BYTE bytes per input byte, so that work growing faster
 * than the input (a time bomb in a 4 MB answer) is caught on a few KB.
 *
 * FUZZ_DECODE_PRINT=1 in the environment prints the selected message (to
 * name a regression file, docs/FUZZING.md).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <sanitizer/allocator_interface.h>

#include "engine/pbwalk.h"
#include "etcdserverpb/rpc.pb-c.h"
#include "lua/pbconv.h"

static const ProtobufCMessageDescriptor *descs[] = {
#include "descriptors.inc"
};
#define NDESCS (sizeof descs / sizeof *descs)
static uint32_t desc_hash[NDESCS];
static int print_selected;

static uint32_t fnv1a(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  return h;
}

static int by_name(const void *a, const void *b) {
  const ProtobufCMessageDescriptor *const *x = a, *const *y = b;
  return strcmp((*x)->name, (*y)->name);
}

/* Bytes allocated (malloc, calloc, realloc: ASan's hook) while `counting`:
 * what protobuf-c allocates to decode one input. */
static volatile int counting;
static size_t counted;

static void count_malloc(const volatile void *ptr, size_t size) {
  (void)ptr;
  if (counting) counted += size;
}

static void count_free(const volatile void *ptr) { (void)ptr; }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  __sanitizer_install_malloc_and_free_hooks(count_malloc, count_free);
  qsort(descs, NDESCS, sizeof *descs, by_name);
  for (size_t i = 0; i < NDESCS; i++) desc_hash[i] = fnv1a(descs[i]->name);
  print_selected = getenv("FUZZ_DECODE_PRINT") != NULL;
  return 0;
}

#define CHECK(cond, ...)                                                      \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "fuzz_decode: invariant broken (%s:%d): %s\n  ",        \
              __FILE__, __LINE__, #cond);                                     \
      fprintf(stderr, __VA_ARGS__);                                           \
      fputc('\n', stderr);                                                    \
      abort();                                                                \
    }                                                                         \
  } while (0)

/* ---------------------------------------------------------------------- */
/* an allocator that can be told to fail                                    */

typedef struct alloc_state {
  long count;   /* allocations and growths so far */
  long fail_at; /* fail this one and every later one; 0: never */
} alloc_state;

static void *fuzz_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  alloc_state *a = ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (!ptr || nsize > osize) {
    a->count++;
    if (a->fail_at && a->count >= a->fail_at) return NULL;
  }
  return realloc(ptr, nsize);
}

/* ---------------------------------------------------------------------- */
/* .proto names back from the Lua names pbconv gives                         */

/* The same mapping as pbconv.c's push_lua_name (grantedTTL -> granted_ttl). */
static void lua_name(const char *name, char *buf, size_t size) {
  size_t j = 0;
  for (size_t i = 0; name[i] && j < size - 2; i++) {
    unsigned char ch = (unsigned char)name[i];
    if (ch >= 'A' && ch <= 'Z') {
      if (i > 0 && ((name[i - 1] >= 'a' && name[i - 1] <= 'z') ||
                    (name[i - 1] >= '0' && name[i - 1] <= '9')))
        buf[j++] = '_';
      buf[j++] = (char)(ch - 'A' + 'a');
    } else {
      buf[j++] = (char)ch;
    }
  }
  buf[j] = 0;
}

/* Push a copy of the decoded table at `idx` with the .proto field names. */
static void to_proto(lua_State *L, int idx, const ProtobufCMessageDescriptor *d) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 6, "to_proto");
  lua_newtable(L);
  int nkeys = 0;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    char name[160];
    lua_name(f->name, name, sizeof name);
    if (lua_getfield(L, idx, name) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    nkeys++;
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        CHECK(lua_istable(L, -1), "%s.%s: not a table", d->name, f->name);
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        lua_createtable(L, (int)n, 0);
        for (lua_Integer j = 1; j <= n; j++) {
          lua_rawgeti(L, -2, j);
          to_proto(L, -1, f->descriptor);
          lua_remove(L, -2);
          lua_rawseti(L, -2, j);
        }
      } else {
        to_proto(L, -1, f->descriptor);
      }
      lua_remove(L, -2);
    }
    lua_setfield(L, -2, f->name);
  }
  /* Nothing in the table that is not a field. */
  int total = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    total++;
  }
  CHECK(total == nkeys, "%s: %d keys decoded, %d of them fields", d->name,
        total, nkeys);
}

/* ---------------------------------------------------------------------- */

static int deep_equal(lua_State *L, int a, int b, int depth) {
  a = lua_absindex(L, a);
  b = lua_absindex(L, b);
  if (lua_type(L, a) != lua_type(L, b)) return 0;
  if (lua_type(L, a) != LUA_TTABLE) return lua_rawequal(L, a, b);
  if (depth > PBCONV_MAX_DEPTH * 2 + 4) return 0;
  luaL_checkstack(L, 6, "deep_equal");
  int na = 0, nb = 0;
  lua_pushnil(L);
  while (lua_next(L, a)) {
    na++;
    lua_pushvalue(L, -2);
    lua_rawget(L, b);
    int eq = deep_equal(L, -2, -1, depth + 1);
    lua_pop(L, 2);
    if (!eq) {
      lua_pop(L, 1);
      return 0;
    }
  }
  lua_pushnil(L);
  while (lua_next(L, b)) {
    nb++;
    lua_pop(L, 1);
  }
  return na == nb;
}

/* ---------------------------------------------------------------------- */

typedef struct job {
  const ProtobufCMessageDescriptor *d;
  const uint8_t *data;
  size_t len;
  int faulty; /* allocations may fail: check only that nothing crashes */
} job;

static int l_pack(lua_State *L) {
  const ProtobufCMessageDescriptor *d = lua_touserdata(L, 2);
  lua_settop(L, 1);
  pbconv_pack(L, 1, d);
  return 1;
}

static int contains(lua_State *L, int idx, const char *what) {
  const char *s = lua_tostring(L, idx);
  return s && strstr(s, what);
}

/* Pack the table at the top with `d` in a pcall; leaves the bytes or the
 * error on the stack and returns the status. */
static int pack_top(lua_State *L, const ProtobufCMessageDescriptor *d) {
  lua_pushcfunction(L, l_pack);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, (void *)d);
  return lua_pcall(L, 2, 1, 0);
}

/* protobuf-c's work must stay linear in the input: bytes it allocates to
 * decode what the walk let through, at most this many per input byte (plus
 * DECODE_ALLOC_BASE). Decoding allocates one struct of at most ~150 bytes per
 * 2 input bytes (an empty sub-message) plus protobuf-c's scan arrays;
 * merging k repeats of a singular sub-message copies the arrays merged so
 * far each time, O(k^2), which the walk's bound on repeats prevents. */
#define DECODE_ALLOC_PER_BYTE 256
#define DECODE_ALLOC_BASE 65536

static void check_decode_cost(const job *j) {
  counted = 0;
  counting = 1;
  ProtobufCMessage *m = protobuf_c_message_unpack(j->d, NULL, j->len, j->data);
  counting = 0;
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  CHECK(counted <= DECODE_ALLOC_PER_BYTE * j->len + DECODE_ALLOC_BASE,
        "%s: protobuf-c allocated %zu bytes to decode %zu bytes", j->d->name,
        counted, j->len);
}

static int l_run(lua_State *L) {
  job *j = lua_touserdata(L, 1);
  const ProtobufCMessageDescriptor *d = j->d;
  int depth = ec_pb_check_depth(d, j->data, j->len, PBCONV_MAX_DEPTH);
  if (depth == EC_PB_OK && !j->faulty) check_decode_cost(j);
  /* the pump's peek at every answer's header.member_id: any bytes */
  uint64_t member;
  if (ec_pb_header_member(j->data, j->len, &member)) CHECK(j->len >= 4, "member id from %zu bytes", j->len);
  int ok = pbconv_unpack(L, d, j->data, j->len);
  int t1 = lua_gettop(L);
  if (!ok) {
    CHECK(lua_type(L, -1) == LUA_TSTRING, "%s: no message", d->name);
    if (j->faulty) return 0;
    if (depth == EC_PB_TOO_DEEP)
      CHECK(contains(L, -1, "nested deeper than"), "%s: %s", d->name,
            lua_tostring(L, -1));
    else
      CHECK(contains(L, -1, "malformed"), "%s: %s", d->name,
            lua_tostring(L, -1));
    if (depth == EC_PB_OK) {
      /* pbwalk let it through: protobuf-c itself must refuse it. */
      ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, j->len, j->data);
      CHECK(m == NULL, "%s: protobuf-c decodes what pbconv refused: %s",
            d->name, lua_tostring(L, -2));
    }
    return 0;
  }
  CHECK(lua_istable(L, -1), "%s: unpack gave a %s", d->name,
        luaL_typename(L, -1));
  CHECK(depth == EC_PB_OK, "%s: decoded although pbwalk said %d", d->name,
        depth);

  /* 2. As it is: a Lua error or bytes, nothing else. */
  lua_pushvalue(L, t1);
  int st = pack_top(L, d);
  if (!j->faulty)
    CHECK(st == LUA_OK || st == LUA_ERRRUN, "%s: pack status %d", d->name, st);
  CHECK(lua_type(L, -1) == LUA_TSTRING, "%s: pack gave a %s", d->name,
        luaL_typename(L, -1));
  lua_pop(L, 1);

  /* 3. Round trip with the .proto names. */
  to_proto(L, t1, d);
  int proto = lua_gettop(L);
  lua_pushvalue(L, proto);
  st = pack_top(L, d);
  if (st != LUA_OK) {
    CHECK(lua_type(L, -1) == LUA_TSTRING, "%s: pack error is a %s", d->name,
          luaL_typename(L, -1));
    if (!j->faulty)
      CHECK(contains(L, -1, "no value"), "%s: pack of a decoded table: %s",
            d->name, lua_tostring(L, -1));
    return 0;
  }
  size_t n2;
  const char *b2 = lua_tolstring(L, -1, &n2);
  int bytes2 = lua_gettop(L);
  CHECK(ec_pb_check_depth(d, (const uint8_t *)b2, n2, PBCONV_MAX_DEPTH) ==
            EC_PB_OK,
        "%s: re-encoded bytes fail the depth walk", d->name);
  ok = pbconv_unpack(L, d, b2, n2);
  if (!ok && j->faulty) return 0;
  CHECK(ok, "%s: re-encoded bytes do not decode: %s", d->name,
        lua_tostring(L, -1));
  int t3 = lua_gettop(L);
  CHECK(deep_equal(L, t1, t3, 0), "%s: decode(encode(decode(x))) differs",
        d->name);
  to_proto(L, t3, d);
  st = pack_top(L, d);
  if (st != LUA_OK && j->faulty) return 0;
  CHECK(st == LUA_OK, "%s: second pack: %s", d->name, lua_tostring(L, -1));
  size_t n4;
  const char *b4 = lua_tolstring(L, -1, &n4);
  CHECK(n4 == n2 && memcmp(b4, lua_tostring(L, bytes2), n2) == 0,
        "%s: encoding is not stable (%zu then %zu bytes)", d->name, n2, n4);
  return 0;
}

/* One run in a fresh state; returns the number of allocations it made. */
static long run(const job *j, long fail_at) {
  alloc_state a = {0, 0};
  lua_State *L = lua_newstate(fuzz_alloc, &a);
  CHECK(L != NULL, "lua_newstate");
  pbconv_open(L); /* no standard library: the converter needs none */
  long base = a.count;
  a.fail_at = fail_at ? base + fail_at : 0;
  lua_pushcfunction(L, l_run);
  lua_pushlightuserdata(L, (void *)j);
  int st = lua_pcall(L, 1, 0, 0);
  a.fail_at = 0;
  if (st != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    CHECK(j->faulty && st == LUA_ERRMEM,
          "%s: Lua error (status %d) while decoding: %s", j->d->name, st,
          msg ? msg : luaL_typename(L, -1));
  }
  long used = a.count - base;
  lua_close(L);
  return used;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint32_t sel = 0;
  for (size_t i = 0; i < 4 && i < size; i++) sel |= (uint32_t)data[i] << (8 * i);
  const ProtobufCMessageDescriptor *d = NULL;
  for (size_t i = 0; i < NDESCS && !d; i++)
    if (desc_hash[i] == sel) d = descs[i];
  if (!d) d = descs[sel % NDESCS];
  if (print_selected) fprintf(stderr, "fuzz_decode: message %s\n", d->name);
  job j = {d, size > 4 ? data + 4 : data, size > 4 ? size - 4 : 0, 0};

  long used = run(&j, 0);
  if (used > 0) {
    /* Fail one allocation picked from the bytes (same input, same pick). */
    j.faulty = 1;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 16777619u;
    run(&j, 1 + (long)(h % (uint32_t)used));
  }
  return 0;
}
