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

#endif
