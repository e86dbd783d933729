/*
 * Bidirectional streams over gRPC's C core. The pump thread keeps one
 * RECV_MESSAGE outstanding and queues what arrives; writes are queued and
 * sent one at a time (gRPC allows one SEND_MESSAGE in flight per call).
 * No lua.h here: see engine.h.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/support/alloc.h>

struct ec_stream {
  ec_ready ready; /* token 0 for the engine's own streams (hooks) */
  atomic_int refs;
  ec_client *client;
  ec_stream *prev, *next; /* in client->streams while the call lives */
  grpc_call *call;        /* guarded by client->mu */
  int chan;
  int pending;            /* batches in flight */
  ec_tag t_start, t_recv, t_send, t_status;
  grpc_metadata *send_md;
  size_t nsend_md;
  grpc_metadata_array recv_md, trail_md;
  grpc_byte_buffer *recv_buf, *send_buf;
  grpc_status_code status;
  grpc_slice details;
  const char *error_string;
  ec_queue in, out;
  int sending, want_close_send, closed_send, status_in, ended, end;
  char *message;
  const ec_stream_hooks *hooks; /* pump-side consumer, or NULL: queue for Lua */
  void *hook_ud;
};

int ec_stream_chan(const ec_stream *s) { return s->chan; }

static void stream_unref(ec_stream *s) {
  if (atomic_fetch_sub(&s->refs, 1) != 1) return;
  ec_queue_clear(&s->in);
  ec_queue_clear(&s->out);
  free(s->message);
  ec_client_unref(s->client);
  free(s);
}

static ec_msg *msg_from_buffer(grpc_byte_buffer *bb) {
  grpc_byte_buffer_reader rd;
  ec_msg *m = NULL;
  if (grpc_byte_buffer_reader_init(&rd, bb)) {
    grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
    m = ec_msg_new(GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl));
    grpc_slice_unref(sl);
    grpc_byte_buffer_reader_destroy(&rd);
  }
  return m;
}

/* With c->mu held: start the next batch a stream needs, if it can. */
/* No batch may start once the client is closing: its completion queue is
 * shutting down, and gRPC aborts on a batch started there. */
static void start_send_locked(ec_stream *s) {
  if (s->sending || s->ended || s->status_in || !s->call || s->client->closed)
    return;
  grpc_op op;
  memset(&op, 0, sizeof op);
  ec_msg *m = s->out.head;
  if (m) {
    ec_queue_pop(&s->out);
    grpc_slice sl = grpc_slice_from_copied_buffer(m->data, m->len);
    free(m);
    s->send_buf = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = s->send_buf;
  } else if (s->want_close_send && !s->closed_send) {
    s->closed_send = 1;
    op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  } else {
    return;
  }
  if (grpc_call_start_batch(s->call, &op, 1, &s->t_send, NULL) == GRPC_CALL_OK) {
    s->sending = 1;
    s->pending++;
  } else if (s->send_buf) {
    grpc_byte_buffer_destroy(s->send_buf);
    s->send_buf = NULL;
  }
}

static void start_recv_locked(ec_stream *s) {
  if (s->client->closed) return;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &s->recv_buf;
  if (grpc_call_start_batch(s->call, &op, 1, &s->t_recv, NULL) == GRPC_CALL_OK)
    s->pending++;
}

/* With c->mu held, after a batch completed: once the status is in and no
 * batch is pending, the call is finished. Returns 1 when it just ended. */
static int finish_locked(ec_stream *s) {
  ec_client *c = s->client;
  if (s->ended || !s->status_in || s->pending) return 0;
  s->ended = 1;
  if (s->prev) s->prev->next = s->next;
  else c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  c->nstreams--;
  if (s->hooks) s->hooks->on_end(s->hook_ud, s);
  return 1;
}

static void release_call(ec_stream *s) {
  /* after finish_locked() returned 1, outside the lock */
  ec_md_free(s->send_md, s->nsend_md);
  s->send_md = NULL;
  s->nsend_md = 0;
  grpc_metadata_array_destroy(&s->recv_md);
  grpc_metadata_array_destroy(&s->trail_md);
  grpc_call *call = s->call;
  s->call = NULL;
  grpc_call_unref(call);
}

/* Common tail of every completion: finish if done, list the stream's token
 * (its waiter in Lua looks again), drop the pump's reference when the stream
 * ended. */
static void after_batch(ec_stream *s) {
  ec_client *c = s->client;
  int ended = finish_locked(s);
  ec_ready_locked(c, &s->ready);
  pthread_mutex_unlock(&c->mu);
  if (ended) {
    release_call(s);
    stream_unref(s); /* the pump's reference */
  }
}

static void on_start(ec_tag *t, int ok) {
  ec_stream *s = (ec_stream *)((char *)t - offsetof(ec_stream, t_start));
  (void)ok; /* a failed start shows in the status */
  pthread_mutex_lock(&s->client->mu);
  s->pending--;
  after_batch(s);
}

static void on_recv(ec_tag *t, int ok) {
  ec_stream *s = (ec_stream *)((char *)t - offsetof(ec_stream, t_recv));
  ec_client *c = s->client;
  ec_msg *m = NULL;
  int more = ok && s->recv_buf;
  if (s->recv_buf) {
    m = msg_from_buffer(s->recv_buf);
    grpc_byte_buffer_destroy(s->recv_buf);
    s->recv_buf = NULL;
  }
  pthread_mutex_lock(&c->mu);
  s->pending--;
  if (m && s->hooks) {
    s->hooks->on_message(s->hook_ud, s, m->data, m->len);
    free(m);
  } else if (m) {
    ec_queue_push(&s->in, m);
  }
  if (more && s->call && !s->status_in) start_recv_locked(s);
  after_batch(s);
}

static void on_send(ec_tag *t, int ok) {
  ec_stream *s = (ec_stream *)((char *)t - offsetof(ec_stream, t_send));
  ec_client *c = s->client;
  if (s->send_buf) {
    grpc_byte_buffer_destroy(s->send_buf);
    s->send_buf = NULL;
  }
  pthread_mutex_lock(&c->mu);
  s->pending--;
  s->sending = 0;
  if (ok) start_send_locked(s);
  after_batch(s);
}

static void on_status(ec_tag *t, int ok) {
  ec_stream *s = (ec_stream *)((char *)t - offsetof(ec_stream, t_status));
  ec_client *c = s->client;
  (void)ok;
  char *m = ec_dup_slice(s->details);
  grpc_slice_unref(s->details);
  s->details = grpc_empty_slice();
  if (s->error_string) gpr_free((void *)s->error_string);
  s->error_string = NULL;
  pthread_mutex_lock(&c->mu);
  s->pending--;
  s->status_in = 1;
  s->message = m;
  ec_queue_clear(&s->out);
  after_batch(s);
}

ec_stream *ec_stream_start(ec_client *c, const char *path, int64_t timeout_ms,
                           int chan, const ec_metadata *md, size_t nmd,
                           char *err, size_t errlen) {
  pthread_mutex_lock(&c->mu);
  ec_stream *s = ec_stream_start_locked(c, path, timeout_ms, chan, md, nmd, 1,
                                        NULL, NULL, err, errlen);
  pthread_mutex_unlock(&c->mu);
  return s;
}

ec_stream *ec_stream_start_locked(ec_client *c, const char *path,
                                  int64_t timeout_ms, int chan,
                                  const ec_metadata *md, size_t nmd,
                                  int wait_ready, const ec_stream_hooks *hooks,
                                  void *hook_ud, char *err, size_t errlen) {
  ec_stream *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  atomic_init(&s->refs, 2); /* the caller's and the pump's */
  s->t_start.done = on_start;
  s->t_recv.done = on_recv;
  s->t_send.done = on_send;
  s->t_status.done = on_status;
  s->status = GRPC_STATUS_UNKNOWN;
  s->details = grpc_empty_slice();
  s->hooks = hooks;
  s->hook_ud = hook_ud;
  if (!hooks) s->ready.token = ec_token_new();
  grpc_metadata_array_init(&s->recv_md);
  grpc_metadata_array_init(&s->trail_md);
  atomic_fetch_add(&c->refs, 1);
  s->client = c;
  int ok;
  s->send_md = ec_md_copy(md, nmd, &ok);
  if (!ok) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  s->nsend_md = nmd;

  if (c->closed) {
    snprintf(err, errlen, "client closed");
    goto fail;
  }
  s->call = ec_create_call_locked(c, chan, path, timeout_ms, &s->chan);
  if (!s->call) {
    snprintf(err, errlen, "cannot create a gRPC call");
    goto fail;
  }
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = s->nsend_md;
  ops[0].data.send_initial_metadata.metadata = s->send_md;
  ops[0].flags = (wait_ready ? GRPC_INITIAL_METADATA_WAIT_FOR_READY : 0) |
                 GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET;
  ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[1].data.recv_initial_metadata.recv_initial_metadata = &s->recv_md;
  grpc_call_error e = grpc_call_start_batch(s->call, ops, 2, &s->t_start, NULL);
  if (e == GRPC_CALL_OK) {
    s->pending++;
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->trail_md;
    ops[0].data.recv_status_on_client.status = &s->status;
    ops[0].data.recv_status_on_client.status_details = &s->details;
    ops[0].data.recv_status_on_client.error_string = &s->error_string;
    e = grpc_call_start_batch(s->call, ops, 1, &s->t_status, NULL);
    if (e == GRPC_CALL_OK) {
      s->pending++;
      start_recv_locked(s);
    } else {
      /* the start batch is in flight: let it finish through the pump */
      grpc_call_cancel(s->call, NULL);
      s->status_in = 1;
      s->message = strdup("cannot start the stream");
    }
  }
  if (e != GRPC_CALL_OK && !s->pending) {
    grpc_call_unref(s->call);
    s->call = NULL;
    snprintf(err, errlen, "cannot start a gRPC stream (error %d)", (int)e);
    goto fail;
  }
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  c->nstreams++;
  return s;

fail:
  ec_md_free(s->send_md, s->nsend_md);
  grpc_metadata_array_destroy(&s->recv_md);
  grpc_metadata_array_destroy(&s->trail_md);
  grpc_slice_unref(s->details);
  atomic_store(&s->refs, 1);
  stream_unref(s);
  return NULL;
}

int ec_stream_write_locked(ec_stream *s, const void *data, size_t len) {
  if (s->ended || s->status_in || s->want_close_send || !s->call) return -1;
  ec_msg *m = ec_msg_new(data, len);
  if (!m) return -1;
  ec_queue_push(&s->out, m);
  start_send_locked(s);
  return 0;
}

int ec_stream_write(ec_stream *s, const void *data, size_t len) {
  pthread_mutex_lock(&s->client->mu);
  int r = ec_stream_write_locked(s, data, len);
  pthread_mutex_unlock(&s->client->mu);
  return r;
}

void ec_stream_close_send(ec_stream *s) {
  ec_client *c = s->client;
  pthread_mutex_lock(&c->mu);
  if (!s->want_close_send && s->call && !s->status_in) {
    s->want_close_send = 1;
    start_send_locked(s);
  }
  pthread_mutex_unlock(&c->mu);
}

int ec_stream_read(ec_stream *s, ec_msg **out) {
  ec_client *c = s->client;
  pthread_mutex_lock(&c->mu);
  ec_msg *m = ec_queue_pop(&s->in);
  int ended = s->ended;
  pthread_mutex_unlock(&c->mu);
  if (!m) return ended ? -1 : 0;
  *out = m;
  return 1;
}

int ec_stream_status(ec_stream *s) { return (int)s->status; }
int ec_stream_end(ec_stream *s) { return s->end; }
const char *ec_stream_details(ec_stream *s) {
  return s->message ? s->message : "";
}

static void cancel_locked(ec_stream *s, int why, const char *text) {
  if (s->call && !s->status_in) {
    if (s->end == EC_END_NORMAL) s->end = why;
    grpc_call_cancel_with_status(s->call, GRPC_STATUS_CANCELLED, text, NULL);
  }
}

void ec_stream_cancel_locked(ec_stream *s) {
  cancel_locked(s, EC_END_CANCELLED, "cancelled");
}

void ec_stream_cancel(ec_stream *s) {
  pthread_mutex_lock(&s->client->mu);
  cancel_locked(s, EC_END_CANCELLED, "cancelled");
  pthread_mutex_unlock(&s->client->mu);
}

void ec_streams_cancel_engine_on_locked(ec_client *c, int chan) {
  for (ec_stream *s = c->streams; s; s = s->next)
    if (s->hooks && s->chan == chan) cancel_locked(s, EC_END_CANCELLED, "endpoint retired");
}

void ec_streams_cancel_all(ec_client *c) {
  for (ec_stream *s = c->streams; s; s = s->next)
    cancel_locked(s, EC_END_CLOSED, "client closed");
}

void ec_stream_release(ec_stream *s) {
  ec_stream_cancel(s);
  stream_unref(s);
}

uint64_t ec_stream_token(const ec_stream *s) { return s->ready.token; }

size_t ec_client_nstreams(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  size_t n = c->nstreams;
  pthread_mutex_unlock(&c->mu);
  return n;
}
