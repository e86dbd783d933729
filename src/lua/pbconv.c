/* See pbconv.h. */
#include "pbconv.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lua/compat.h"

#include "engine/pbwalk.h"
#include "mvccpb/kv.pb-c.h"

#define BOX_MT "etcd.core.unpacked"

/* Field names as Lua sees them: snake case, lower case (`grantedTTL` ->
 * `granted_ttl`, `peerURLs` -> `peer_urls`, `ID` -> `id`). */
static void push_lua_name(lua_State *L, const char *name) {
  char buf[128];
  size_t j = 0;
  for (size_t i = 0; name[i] && j < sizeof buf - 2; i++) {
    unsigned char ch = (unsigned char)name[i];
    if (isupper(ch)) {
      if (i > 0 && (islower((unsigned char)name[i - 1]) ||
                    isdigit((unsigned char)name[i - 1])))
        buf[j++] = '_';
      buf[j++] = (char)tolower(ch);
    } else {
      buf[j++] = (char)ch;
    }
  }
  lua_pushlstring(L, buf, j);
}

static const char names_key = 'n';

/* The name table of message `d`, made once per Lua state and pushed:
 * t[i] = the Lua name of field i (i = 1..n_fields, snake case: the key
 * responses use), and t[name] = i for both its .proto name and its Lua name,
 * so requests accept either (`TTL` or `ttl`, `peerURLs` or `peer_urls`). */
static void push_names(lua_State *L, const ProtobufCMessageDescriptor *d) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &names_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &names_key);
  }
  if (lua_rawgetp(L, -1, d) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, (int)d->n_fields, (int)d->n_fields * 2);
    for (unsigned i = 0; i < d->n_fields; i++) {
      push_lua_name(L, d->fields[i].name);
      lua_pushvalue(L, -1);
      lua_rawseti(L, -3, (lua_Integer)i + 1);
      lua_pushinteger(L, (lua_Integer)i + 1);
      lua_rawset(L, -3);
      lua_pushinteger(L, (lua_Integer)i + 1);
      lua_setfield(L, -2, d->fields[i].name);
    }
    lua_pushvalue(L, -1);
    lua_rawsetp(L, -3, d);
  }
  lua_remove(L, -2);
}

/* ---------------------------------------------------------------------- */
/* 64-bit identifiers (compat.h)                                            */

/* etcd's id fields: lease, member, cluster and leader ids. Counters (the
 * revisions, versions, TTLs, sizes, watch ids) are plain integers. */
static int is_id_field(const ProtobufCFieldDescriptor *f) {
  static const char *const names[] = {"ID",        "lease",     "memberID",
                                      "member_id", "cluster_id", "targetID",
                                      "leader"};
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
    break;
  default:
    return 0;
  }
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(f->name, names[i]) == 0) return 1;
  return 0;
}

void lb_push_id(lua_State *L, int64_t v, int is_unsigned) {
#if LB_INT64
  (void)is_unsigned;
  lua_pushinteger(L, (lua_Integer)v);
#else
  char buf[24];
  if (is_unsigned) snprintf(buf, sizeof buf, "%" PRIu64, (uint64_t)v);
  else snprintf(buf, sizeof buf, "%" PRId64, v);
  lua_pushstring(L, buf);
#endif
}

/* A whole string in decimal ("-" allowed, up to 2^64-1) or "0x" hex. */
static int parse_id(const char *s, size_t n, int64_t *out) {
  if (n == 0 || n > 24 || strlen(s) != n) return 0;
  for (size_t i = 0; i < n; i++)
    if (isspace((unsigned char)s[i]) || s[i] == '+') return 0;
  char *end;
  errno = 0;
  if (s[0] == '-') {
    if (n < 2 || !isdigit((unsigned char)s[1])) return 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return 0;
    *out = (int64_t)v;
    return 1;
  }
  int hex = n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
  if (!isxdigit((unsigned char)s[hex ? 2 : 0]) ||
      (!hex && !isdigit((unsigned char)s[0])))
    return 0;
  unsigned long long v = strtoull(s, &end, hex ? 16 : 10);
  if (errno || *end) return 0;
  *out = (int64_t)(uint64_t)v;
  return 1;
}

int lb_to_id(lua_State *L, int i, int64_t *out) {
  if (lua_type(L, i) == LUA_TSTRING) {
    size_t n;
    const char *s = lua_tolstring(L, i, &n);
    return parse_id(s, n, out);
  }
  if (lua_type(L, i) != LUA_TNUMBER) return 0;
  int ok;
  lua_Integer v = lua_tointegerx(L, i, &ok);
#if !LB_INT64
  /* beyond 2^53 a double no longer holds every integer: that id was
   * rounded before it got here */
  if (ok && (v > ((lua_Integer)1 << 53) || v < -((lua_Integer)1 << 53))) ok = 0;
#endif
  if (ok) *out = (int64_t)v;
  return ok;
}

int64_t lb_check_id(lua_State *L, int arg) {
  int64_t v = 0;
  if (!lb_to_id(L, arg, &v)) {
    const char *msg =
        lua_type(L, arg) == LUA_TSTRING || lua_type(L, arg) == LUA_TNUMBER
            ? lua_pushfstring(L, "id expected (an integer%s, or a decimal or "
                                 "0x string), got %s",
                              LB_INT64 ? "" : " below 2^53",
                              lua_tostring(L, arg))
            : lua_pushfstring(L, "id expected, got %s", luaL_typename(L, arg));
    luaL_argerror(L, arg, msg);
  }
  return v;
}

/* ---------------------------------------------------------------------- */
/* encoding                                                                 */

typedef struct enc {
  lua_State *L;
  int arena; /* stack index of a table anchoring every scratch block */
  int narena;
} enc;

static void *scratch(enc *e, size_t size) {
  void *p = lua_newuserdatauv(e->L, size ? size : 1, 0);
  memset(p, 0, size ? size : 1);
  lua_rawseti(e->L, e->arena, ++e->narena);
  return p;
}

static void enc_message(enc *e, int idx, const ProtobufCMessageDescriptor *d,
                        ProtobufCMessage *m, int depth);

static const char *type_name_of(lua_State *L, int idx) {
  return luaL_typename(L, idx);
}

static void field_error(enc *e, const ProtobufCMessageDescriptor *d,
                        const ProtobufCFieldDescriptor *f, const char *want,
                        int idx) {
  luaL_error(e->L, "etcd.core: field '%s' of %s: %s expected, got %s", f->name,
             d->name, want, type_name_of(e->L, idx));
}

/* Store the Lua value at `idx` into `dst` as one element of field `f`. */
static void enc_value(enc *e, int idx, const ProtobufCMessageDescriptor *d,
                      const ProtobufCFieldDescriptor *f, void *dst, int depth) {
  lua_State *L = e->L;
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64: {
    int ok;
    lua_Integer v;
    if (is_id_field(f)) {
      int64_t id = 0;
      if (!lb_to_id(L, idx, &id)) field_error(e, d, f, "id", idx);
      v = (lua_Integer)id;
    } else {
      v = lua_tointegerx(L, idx, &ok);
      if (!ok || lua_type(L, idx) != LUA_TNUMBER)
        field_error(e, d, f, "integer", idx);
    }
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
      if (v < INT32_MIN || v > INT32_MAX)
        luaL_error(L, "etcd.core: field '%s' of %s: out of range", f->name,
                   d->name);
      *(int32_t *)dst = (int32_t)v;
      break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
      if (v < 0 || v > (lua_Integer)UINT32_MAX)
        luaL_error(L, "etcd.core: field '%s' of %s: out of range", f->name,
                   d->name);
      *(uint32_t *)dst = (uint32_t)v;
      break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      *(uint64_t *)dst = (uint64_t)v; /* ids above 2^63 arrive negative */
      break;
    default:
      *(int64_t *)dst = (int64_t)v;
    }
    break;
  }
  case PROTOBUF_C_TYPE_BOOL:
    if (!lua_isboolean(L, idx)) field_error(e, d, f, "boolean", idx);
    *(protobuf_c_boolean *)dst = lua_toboolean(L, idx);
    break;
  case PROTOBUF_C_TYPE_ENUM: {
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    if (lua_type(L, idx) == LUA_TSTRING) {
      const ProtobufCEnumValue *ev =
          protobuf_c_enum_descriptor_get_value_by_name(ed, lua_tostring(L, idx));
      if (!ev) {
        luaL_error(L, "etcd.core: field '%s' of %s: no value '%s' in %s",
                   f->name, d->name, lua_tostring(L, idx), ed->name);
        return; /* not reached: luaL_error does not return */
      }
      *(int *)dst = ev->value;
    } else {
      int ok;
      lua_Integer v = lua_tointegerx(L, idx, &ok);
      if (!ok || lua_type(L, idx) != LUA_TNUMBER)
        field_error(e, d, f, "enum name or integer", idx);
      if (!protobuf_c_enum_descriptor_get_value(ed, (int)v) || v != (int)v)
        luaL_error(L, "etcd.core: field '%s' of %s: no value %d in %s",
                   f->name, d->name, (int)v, ed->name);
      *(int *)dst = (int)v;
    }
    break;
  }
  case PROTOBUF_C_TYPE_STRING: {
    size_t n;
    if (lua_type(L, idx) != LUA_TSTRING) field_error(e, d, f, "string", idx);
    const char *s = lua_tolstring(L, idx, &n);
    if (strlen(s) != n)
      luaL_error(L, "etcd.core: field '%s' of %s: string contains a NUL byte",
                 f->name, d->name);
    *(const char **)dst = s; /* anchored by the request table */
    break;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    size_t n;
    if (lua_type(L, idx) != LUA_TSTRING) field_error(e, d, f, "string", idx);
    const char *s = lua_tolstring(L, idx, &n);
    ProtobufCBinaryData *b = dst;
    b->len = n;
    b->data = (uint8_t *)s;
    break;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    const ProtobufCMessageDescriptor *sd = f->descriptor;
    if (!lua_istable(L, idx)) field_error(e, d, f, "table", idx);
    if (depth + 1 > PBCONV_MAX_DEPTH)
      luaL_error(L, "etcd.core: %s nested deeper than %d levels", sd->name,
                 PBCONV_MAX_DEPTH);
    ProtobufCMessage *sub = scratch(e, sd->sizeof_message);
    protobuf_c_message_init(sd, sub);
    enc_message(e, idx, sd, sub, depth + 1);
    *(ProtobufCMessage **)dst = sub;
    break;
  }
  default:
    luaL_error(L, "etcd.core: field '%s' of %s: unsupported type", f->name,
               d->name);
  }
}

static size_t elem_size(const ProtobufCFieldDescriptor *f) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    return 4;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return 8;
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_ENUM:
    return sizeof(int);
  case PROTOBUF_C_TYPE_STRING:
    return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  default:
    return sizeof(void *);
  }
}

static void enc_message(enc *e, int idx, const ProtobufCMessageDescriptor *d,
                        ProtobufCMessage *m, int depth) {
  lua_State *L = e->L;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 10, "etcd.core: message nested too deeply");
  push_names(L, d);
  int names = lua_gettop(L);
  /* Every key must be a field of the message: a typo is a bug, not a no-op. */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int known = lua_type(L, -1) == LUA_TSTRING;
    if (known) {
      lua_pushvalue(L, -1);
      known = lua_rawget(L, names) == LUA_TNUMBER;
      lua_pop(L, 1);
    }
    if (!known)
      luaL_error(L, "etcd.core: %s has no field '%s'", d->name,
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                : luaL_typename(L, -1));
  }
  const char *oneof_set = NULL;
  unsigned oneof_q = 0;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    /* by its .proto name, or by its Lua name (not both) */
    int t = lua_getfield(L, idx, f->name);
    lua_rawgeti(L, names, (lua_Integer)i + 1);
    if (strcmp(lua_tostring(L, -1), f->name) != 0) {
      const char *alias = lua_tostring(L, -1);
      if (lua_gettable(L, idx) != LUA_TNIL) {
        if (t != LUA_TNIL)
          luaL_error(L, "etcd.core: %s: '%s' and '%s' name the same field",
                     d->name, f->name, alias);
        lua_remove(L, -2);
        t = lua_type(L, -1);
      } else {
        lua_pop(L, 1);
      }
    } else {
      lua_pop(L, 1);
    }
    if (t == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    char *base = (char *)m;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      if (!lua_istable(L, -1)) field_error(e, d, f, "table (array)", -1);
      size_t n = (size_t)lua_rawlen(L, -1), es = elem_size(f);
      void *arr = n ? scratch(e, n * es) : NULL;
      for (size_t j = 0; j < n; j++) {
        lua_rawgeti(L, -1, (lua_Integer)j + 1);
        if (lua_isnil(L, -1))
          luaL_error(L, "etcd.core: field '%s' of %s: hole at index %d",
                     f->name, d->name, (int)j + 1);
        enc_value(e, -1, d, f, (char *)arr + j * es, depth);
        lua_pop(L, 1);
      }
      *(size_t *)(base + f->quantifier_offset) = n;
      *(void **)(base + f->offset) = arr;
    } else {
      enc_value(e, -1, d, f, base + f->offset, depth);
      if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        if (oneof_set && oneof_q == f->quantifier_offset)
          luaL_error(L, "etcd.core: %s: fields '%s' and '%s' exclude each other",
                     d->name, oneof_set, f->name);
        oneof_set = f->name;
        oneof_q = f->quantifier_offset;
        *(uint32_t *)(base + f->quantifier_offset) = f->id;
      } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
                 f->quantifier_offset) {
        *(protobuf_c_boolean *)(base + f->quantifier_offset) = 1;
      }
    }
    lua_pop(L, 1);
  }
  lua_remove(L, names);
}

void pbconv_pack(lua_State *L, int idx, const ProtobufCMessageDescriptor *desc) {
  idx = lua_absindex(L, idx);
  luaL_checktype(L, idx, LUA_TTABLE);
  enc e = {L, 0, 0};
  lua_newtable(L);
  e.arena = lua_gettop(L);
  ProtobufCMessage *m = scratch(&e, desc->sizeof_message);
  protobuf_c_message_init(desc, m);
  enc_message(&e, idx, desc, m, 0);
  size_t n = protobuf_c_message_get_packed_size(m);
#if LB_SIZED_BUFFER
  luaL_Buffer b;
  uint8_t *out = (uint8_t *)luaL_buffinitsize(L, &b, n);
  protobuf_c_message_pack(m, out);
  luaL_pushresultsize(&b, n);
#else
  uint8_t *out = scratch(&e, n); /* 5.1: no sized buffer, one copy more */
  protobuf_c_message_pack(m, out);
  lua_pushlstring(L, (const char *)out, n);
#endif
  lua_remove(L, e.arena); /* the scratch blocks go to the collector */
}

/* ---------------------------------------------------------------------- */
/* decoding                                                                 */

/* The namespace to take off the keys of mvccpb.KeyValue messages (a key
 * that does not start with it is left as it is). */
typedef struct strip {
  const char *ns;
  size_t len;
} strip;

static void push_message(lua_State *L, const ProtobufCMessage *m, int depth,
                         const strip *ns);

static void push_value(lua_State *L, const ProtobufCFieldDescriptor *f,
                       const void *p, int depth, const strip *ns) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
    lua_pushinteger(L, *(const int32_t *)p);
    break;
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
    lua_pushinteger(L, *(const uint32_t *)p);
    break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
#if !LB_INT64
    if (is_id_field(f)) {
      lb_push_id(L, *(const int64_t *)p, 0);
      break;
    }
#endif
    lua_pushinteger(L, (lua_Integer) * (const int64_t *)p);
    break;
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
#if !LB_INT64
    if (is_id_field(f)) {
      lb_push_id(L, (int64_t) * (const uint64_t *)p, 1);
      break;
    }
#endif
    lua_pushinteger(L, (lua_Integer)(int64_t) * (const uint64_t *)p);
    break;
  case PROTOBUF_C_TYPE_BOOL:
    lua_pushboolean(L, *(const protobuf_c_boolean *)p);
    break;
  case PROTOBUF_C_TYPE_ENUM: {
    int v = *(const int *)p;
    const ProtobufCEnumValue *ev =
        protobuf_c_enum_descriptor_get_value(f->descriptor, v);
    if (ev) lua_pushstring(L, ev->name);
    else lua_pushinteger(L, v);
    break;
  }
  case PROTOBUF_C_TYPE_STRING: {
    const char *s = *(const char *const *)p;
    lua_pushstring(L, s ? s : "");
    break;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    const ProtobufCBinaryData *b = p;
    lua_pushlstring(L, b->len ? (const char *)b->data : "", b->len);
    break;
  }
  case PROTOBUF_C_TYPE_MESSAGE:
    push_message(L, *(const ProtobufCMessage *const *)p, depth + 1, ns);
    break;
  default:
    lua_pushnil(L);
  }
}

static void push_message(lua_State *L, const ProtobufCMessage *m, int depth,
                         const strip *ns) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  if (depth > PBCONV_MAX_DEPTH)
    luaL_error(L, "etcd.core: response nested deeper than %d levels",
               PBCONV_MAX_DEPTH);
  luaL_checkstack(L, 8, "etcd.core: response nested too deeply");
  push_names(L, d);
  int names = lua_gettop(L);
  lua_createtable(L, 0, (int)d->n_fields);
  const char *base = (const char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + f->quantifier_offset);
      const char *arr = *(const char *const *)(base + f->offset);
      size_t es = elem_size(f);
      lua_rawgeti(L, names, (lua_Integer)i + 1);
      lua_createtable(L, n > INT32_MAX ? 0 : (int)n, 0);
      for (size_t j = 0; j < n; j++) {
        push_value(L, f, arr + j * es, depth, ns);
        lua_rawseti(L, -2, (lua_Integer)j + 1);
      }
      lua_rawset(L, -3);
      continue;
    }
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      if (*(const uint32_t *)(base + f->quantifier_offset) != f->id) continue;
    } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
               f->type != PROTOBUF_C_TYPE_MESSAGE &&
               f->type != PROTOBUF_C_TYPE_STRING &&
               !*(const protobuf_c_boolean *)(base + f->quantifier_offset)) {
      continue;
    }
    if (f->type == PROTOBUF_C_TYPE_MESSAGE &&
        !*(const ProtobufCMessage *const *)(base + f->offset))
      continue; /* absent sub-message: nil */
    lua_rawgeti(L, names, (lua_Integer)i + 1);
    const ProtobufCBinaryData *b = (const ProtobufCBinaryData *)(base + f->offset);
    if (ns && d == &mvccpb__key_value__descriptor && f->id == 1 && b->len >= ns->len &&
        memcmp(b->data, ns->ns, ns->len) == 0)
      lua_pushlstring(L, (const char *)b->data + ns->len, b->len - ns->len);
    else
      push_value(L, f, base + f->offset, depth, ns);
    lua_rawset(L, -3);
  }
  lua_remove(L, names);
}

typedef struct box {
  ProtobufCMessage *msg;
} box;

static int box_gc(lua_State *L) {
  box *b = luaL_checkudata(L, 1, BOX_MT);
  if (b->msg) protobuf_c_message_free_unpacked(b->msg, NULL);
  b->msg = NULL;
  return 0;
}

int pbconv_unpack(lua_State *L, const ProtobufCMessageDescriptor *desc,
                  const void *data, size_t len) {
  return pbconv_unpack_ns(L, desc, data, len, NULL, 0);
}

int pbconv_unpack_ns(lua_State *L, const ProtobufCMessageDescriptor *desc,
                     const void *data, size_t len, const char *ns, size_t nslen) {
  strip st = {ns, nslen};
  int r = ec_pb_check_depth(desc, data, len, PBCONV_MAX_DEPTH);
  if (r == EC_PB_TOO_DEEP) {
    lua_pushfstring(L, "response from etcd nested deeper than %d levels",
                    PBCONV_MAX_DEPTH);
    return 0;
  }
  if (r != EC_PB_OK) {
    lua_pushfstring(L, "malformed %s from etcd", desc->name);
    return 0;
  }
  /* The decoded message lives in a box the collector frees if a Lua error
   * (out of memory) interrupts the conversion. */
  box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->msg = NULL;
  luaL_setmetatable(L, BOX_MT);
  b->msg = protobuf_c_message_unpack(desc, NULL, len, data);
  if (!b->msg) {
    lua_pop(L, 1);
    lua_pushfstring(L, "malformed %s from etcd", desc->name);
    return 0;
  }
  push_message(L, b->msg, 0, ns && nslen ? &st : NULL);
  protobuf_c_message_free_unpacked(b->msg, NULL);
  b->msg = NULL;
  lua_remove(L, -2);
  return 1;
}

void pbconv_open(lua_State *L) {
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}
