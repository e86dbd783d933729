/* See pbwalk.h. */
#include "pbwalk.h"

/* Besides the depth, the walk bounds the repeats of singular sub-messages
 * (below): past EC_PB_MAX_REPEATS of them in one input, the bytes count as
 * malformed. etcd never repeats one; a few repeats (messages concatenated to
 * be merged, as protobuf allows) still decode. Without the bound, 64000
 * repeats of MemberAddResponse.member (320 KB) kept protobuf-c busy for 35 s,
 * and a 4 MB answer for hours. */
#define EC_PB_MAX_REPEATS 16

typedef struct walk_state {
  int max_depth;
  int repeats; /* repeated singular sub-messages met so far, whole input */
} walk_state;

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

/* A singular (not repeated, not oneof) sub-message field met again in the
 * same message: protobuf-c merges it into the earlier one, copying every
 * array merged so far, so k repeats cost O(k^2). */
static int repeated_singular(const ProtobufCMessageDescriptor *desc,
                             const ProtobufCFieldDescriptor *f, uint64_t *seen) {
  if (f->label == PROTOBUF_C_LABEL_REPEATED ||
      (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
    return 0; /* appended / the last one replaces the others: linear */
  size_t i = (size_t)(f - desc->fields);
  if (i >= 64) return 1; /* no etcd message has that many fields */
  uint64_t bit = (uint64_t)1 << i;
  int again = (*seen & bit) != 0;
  *seen |= bit;
  return again;
}

/* Skips one field's value of wire type `wt`: 0, or -1 on malformed bytes
 * (groups, 3 and 4, are not used by etcd; 6 and 7 do not exist). */
static int skip_value(const uint8_t **p, const uint8_t *end, uint64_t wt) {
  uint64_t n;
  switch (wt) {
  case 0: return read_varint(p, end, &n);
  case 1: if (end - *p < 8) return -1; *p += 8; return 0;
  case 5: if (end - *p < 4) return -1; *p += 4; return 0;
  case 2:
    if (read_varint(p, end, &n) || n > (uint64_t)(end - *p)) return -1;
    *p += n;
    return 0;
  default: return -1;
  }
}

static int walk(const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                const uint8_t *end, int depth, walk_state *st) {
  uint64_t seen = 0; /* singular sub-message fields met, by field index */
  while (p < end) {
    uint64_t key, n;
    if (read_varint(&p, end, &key)) return EC_PB_MALFORMED;
    uint32_t number = (uint32_t)(key >> 3);
    if (number == 0 || key >> 32) return EC_PB_MALFORMED;
    if ((key & 7) != 2) { /* varint, 64-bit, 32-bit; anything else is bad */
      if (skip_value(&p, end, key & 7)) return EC_PB_MALFORMED;
      continue;
    }
    /* length-delimited */
    if (read_varint(&p, end, &n) || n > (uint64_t)(end - p))
      return EC_PB_MALFORMED;
    const ProtobufCFieldDescriptor *f =
        desc ? protobuf_c_message_descriptor_get_field(desc, number) : NULL;
    if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
      if (depth + 1 > st->max_depth) return EC_PB_TOO_DEEP;
      if (repeated_singular(desc, f, &seen) &&
          ++st->repeats > EC_PB_MAX_REPEATS)
        return EC_PB_MALFORMED;
      int r = walk(f->descriptor, p, p + n, depth + 1, st);
      if (r != EC_PB_OK) return r;
    }
    p += n;
  }
  return EC_PB_OK;
}

int ec_pb_check_depth(const ProtobufCMessageDescriptor *desc,
                      const uint8_t *data, size_t len, int max_depth) {
  walk_state st = {max_depth, 0};
  return walk(desc, data, data + len, 0, &st);
}

int ec_pb_header_member(const uint8_t *data, size_t len, uint64_t *out) {
  const uint8_t *p = data, *end = data + len;
  while (p < end) { /* Go writes field 1 first: one step, as a rule */
    uint64_t key, n;
    if (read_varint(&p, end, &key)) return 0;
    if (key != ((1 << 3) | 2)) {
      if (skip_value(&p, end, key & 7)) return 0;
      continue;
    }
    if (read_varint(&p, end, &n) || n > (uint64_t)(end - p)) return 0;
    const uint8_t *q = p, *qend = p + n;
    while (q < qend) {
      if (read_varint(&q, qend, &key)) return 0;
      if (key == (2 << 3)) /* field 2, varint */
        return read_varint(&q, qend, out) == 0;
      if (skip_value(&q, qend, key & 7)) return 0;
    }
    return 0;
  }
  return 0;
}
