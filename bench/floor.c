/*
 * bench/floor.c: the floor of any gRPC C core client of etcd. It sends
 * pre-encoded PutRequest / RangeRequest bytes on one channel through the gRPC
 * C core, in sequence or 64 in flight, and does nothing else: no encoding,
 * no decoding, no thread hand-off, no Lua. Prints the RESULT line of
 * bench/bench.lua.
 *
 *   build/bench/floor 127.0.0.1:2379 put_seq 5000 [value_bytes]
 *
 * Workloads: put_seq, get_seq, put_conc.
 */
#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define IN_FLIGHT 64

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* protobuf: field `f` of wire type 2 (bytes) */
static size_t put_bytes(unsigned char *out, int f, const char *s, size_t n) {
  size_t k = 0;
  out[k++] = (unsigned char)(f << 3 | 2);
  size_t v = n;
  while (v >= 0x80) {
    out[k++] = (unsigned char)(v | 0x80);
    v >>= 7;
  }
  out[k++] = (unsigned char)v;
  memcpy(out + k, s, n);
  return k + n;
}

typedef struct {
  grpc_call *call;
  grpc_byte_buffer *send, *recv;
  grpc_metadata_array imd, tmd;
  grpc_status_code status;
  grpc_slice details;
  double t0;
  int index;
} call_t;

static grpc_channel *channel;
static grpc_completion_queue *cq;
static grpc_slice method;
static grpc_slice body;

static void start(call_t *c, int index) {
  memset(c, 0, sizeof *c);
  c->index = index;
  c->t0 = now();
  c->call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                     gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                  gpr_time_from_seconds(10, GPR_TIMESPAN)),
                                     NULL);
  c->send = grpc_raw_byte_buffer_create(&body, 1);
  grpc_metadata_array_init(&c->imd);
  grpc_metadata_array_init(&c->tmd);
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY | GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = c->send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &c->imd;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &c->recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &c->tmd;
  ops[5].data.recv_status_on_client.status = &c->status;
  ops[5].data.recv_status_on_client.status_details = &c->details;
  if (grpc_call_start_batch(c->call, ops, 6, c, NULL) != GRPC_CALL_OK) {
    fprintf(stderr, "floor: cannot start a call\n");
    exit(1);
  }
}

/* Wait for one call to complete; returns it (done with its resources). */
static call_t *finish(int *errors) {
  grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
  if (ev.type != GRPC_OP_COMPLETE) {
    fprintf(stderr, "floor: completion queue: %d\n", (int)ev.type);
    exit(1);
  }
  call_t *c = ev.tag;
  if (!ev.success || c->status != GRPC_STATUS_OK || !c->recv) (*errors)++;
  grpc_byte_buffer_destroy(c->send);
  if (c->recv) grpc_byte_buffer_destroy(c->recv);
  grpc_metadata_array_destroy(&c->imd);
  grpc_metadata_array_destroy(&c->tmd);
  grpc_slice_unref(c->details);
  grpc_call_unref(c->call);
  return c;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: floor ENDPOINT put_seq|get_seq|put_conc N [value_bytes]\n");
    return 2;
  }
  const char *ep = argv[1], *workload = argv[2];
  int n = atoi(argv[3]);
  size_t size = argc > 4 ? (size_t)atoi(argv[4]) : 64;
  if (n <= 0 || size > 1 << 20) return 2;
  grpc_init();
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  channel = grpc_channel_create(ep, creds, NULL);
  grpc_channel_credentials_release(creds);
  cq = grpc_completion_queue_create_for_next(NULL);

  unsigned char *req = malloc(64 + size);
  char *value = malloc(size + 1);
  memset(value, 'v', size);
  size_t len;
  int get = strcmp(workload, "get_seq") == 0;
  if (get) {
    len = put_bytes(req, 1, "bench/get", 9);
    method = grpc_slice_from_static_string("/etcdserverpb.KV/Range");
  } else {
    len = put_bytes(req, 1, "bench/floor", 11);
    len += put_bytes(req + len, 2, value, size);
    method = grpc_slice_from_static_string("/etcdserverpb.KV/Put");
  }
  body = grpc_slice_from_copied_buffer((const char *)req, len);
  int errors = 0;
  call_t one;
  start(&one, 0); /* warm up: connect */
  finish(&errors);
  errors = 0;

  double *lat = calloc((size_t)n, sizeof *lat);
  double c0 = cpu(), t0 = now();
  if (strcmp(workload, "put_conc") == 0) {
    call_t *calls = calloc(IN_FLIGHT, sizeof *calls);
    int started = 0, done = 0;
    for (; started < IN_FLIGHT && started < n; started++) start(&calls[started], started);
    while (done < n) {
      call_t *c = finish(&errors);
      lat[c->index] = now() - c->t0;
      done++;
      if (started < n) start(c, started++);
    }
    free(calls);
  } else if (get || strcmp(workload, "put_seq") == 0) {
    for (int i = 0; i < n; i++) {
      start(&one, i);
      finish(&errors);
      lat[i] = now() - one.t0;
    }
  } else {
    fprintf(stderr, "floor: unknown workload %s\n", workload);
    return 2;
  }
  double wall = now() - t0, used = cpu() - c0;
  qsort(lat, (size_t)n, sizeof *lat, cmp);
  double sum = 0;
  for (int i = 0; i < n; i++) sum += lat[i];
  printf("RESULT workload=%s ops=%d ops_s=%.1f p50_us=%.1f p99_us=%.1f mean_us=%.1f errors=%d cpu_us_op=%.2f\n",
         workload, n, n / wall, lat[n / 2] * 1e6, lat[(n * 99) / 100] * 1e6, sum / n * 1e6, errors,
         used / n * 1e6);
  free(lat);
  free(req);
  free(value);
  grpc_slice_unref(body);
  grpc_channel_destroy(channel);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  grpc_shutdown();
  return 0;
}
