/*
 * A walk over protobuf wire bytes, guided by protobuf-c descriptors, that
 * measures how deeply messages nest before protobuf-c (which recurses without
 * a limit) is asked to decode them. No lua.h here.
 */
#ifndef ETCD_PBWALK_H
#define ETCD_PBWALK_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

enum { EC_PB_OK = 0, EC_PB_TOO_DEEP = 1, EC_PB_MALFORMED = -1 };

/* EC_PB_OK when `data` parses as `desc` with sub-messages nested at most
 * `max_depth` levels below the top one; EC_PB_TOO_DEEP past that;
 * EC_PB_MALFORMED for bytes that are not protobuf, or that repeat singular
 * sub-message fields more than 16 times in all (protobuf-c merges each repeat
 * into the earlier ones: quadratic time; etcd never repeats a field). */
int ec_pb_check_depth(const ProtobufCMessageDescriptor *desc,
                      const uint8_t *data, size_t len, int max_depth);

/* The member_id of the ResponseHeader that every etcd response carries in
 * field 1 (ResponseHeader.member_id is its field 2): 1 and *out set when the
 * bytes hold one, 0 otherwise (nothing is decoded but that field). */
int ec_pb_header_member(const uint8_t *data, size_t len, uint64_t *out);

#endif
