/* See pbwalk.h. */
#include "pbwalk.h"

static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return -1;
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return 0;
    }
  }
  return -1;
}

static int walk(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                const uint8_t *end, int depth, int max_depth) {
  while (p < end) {
    uint64_t key, n;
    if (read_varint(&p, end, &key)) return EC_PB_MALFORMED;
    uint32_t number = (uint32_t)(key >> 3);
    if (number == 0 || key >> 32) return EC_PB_MALFORMED;
    switch (key & 7) {
    case 0: /* varint */
      if (read_varint(&p, end, &n)) return EC_PB_MALFORMED;
      break;
    case 1: /* 64-bit */
      if (end - p < 8) return EC_PB_MALFORMED;
      p += 8;
      break;
    case 5: /* 32-bit */
      if (end - p < 4) return EC_PB_MALFORMED;
      p += 4;
      break;
    case 2: { /* length-delimited */
      if (read_varint(&p, end, &n) || n > (uint64_t)(end - p))
        return EC_PB_MALFORMED;
      const ProtobufCFieldDescriptor *f =
          desc ? protobuf_c_message_descriptor_get_field(desc, number) : NULL;
      if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
        if (depth + 1 > max_depth) return EC_PB_TOO_DEEP;
        int r = walk(f->descriptor, p, p + n, depth + 1, max_depth);
        if (r != EC_PB_OK) return r;
      }
      p += n;
      break;
    }
    default: /* groups (3, 4) are not used by etcd; 6 and 7 do not exist */
      return EC_PB_MALFORMED;
    }
  }
  return EC_PB_OK;
}

int ec_pb_check_depth(const ProtobufCMessageDescriptor *desc,
                      const uint8_t *data, size_t len, int max_depth) {
  return walk(desc, data, data + len, 0, max_depth);
}
