/*
 * Lua tables <-> protobuf-c messages, driven by the generated descriptors, so
 * one converter serves every etcd message. A protobuf-c message never reaches
 * Lua: requests are packed here, responses unpacked and turned into tables.
 */
#ifndef ETCD_PBCONV_H
#define ETCD_PBCONV_H

#include <lua.h>
#include <protobuf-c/protobuf-c.h>

/* Deepest message nesting accepted in either direction. */
#define PBCONV_MAX_DEPTH 64

/* Encode the table at `idx` as `desc` and push the packed bytes as a Lua
 * string. Field names are the .proto names. Raises on a wrong field name or
 * type. All scratch memory belongs to Lua's collector, so an error leaks
 * nothing. */
void pbconv_pack(lua_State *L, int idx, const ProtobufCMessageDescriptor *desc);

/* Decode `data` as `desc` and push it as a table (field names in snake case:
 * `grantedTTL` becomes `granted_ttl`). Returns 1 with the table pushed, or
 * 0 with an error message pushed when the bytes are malformed or nested too
 * deeply. */
int pbconv_unpack(lua_State *L, const ProtobufCMessageDescriptor *desc,
                  const void *data, size_t len);

/* The same, taking the namespace `ns` (nslen bytes) off the key of every
 * mvccpb.KeyValue in the message that starts with it (a client's namespace:
 * done here, it costs no second string per key). */
int pbconv_unpack_ns(lua_State *L, const ProtobufCMessageDescriptor *desc,
                     const void *data, size_t len, const char *ns, size_t nslen);

void pbconv_open(lua_State *L);

#endif
