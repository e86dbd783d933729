/*
 * What the engine's files share: the client's insides, the tag every
 * completion-queue operation carries, small helpers. Not for the binding files.
 */
#ifndef ETCD_ENGINE_INTERNAL_H
#define ETCD_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <grpc/grpc.h>
#include <grpc/support/time.h>

#include "engine.h"

struct ec_msg {
  ec_msg *next;
  size_t len;
  char data[];
};

/* A FIFO of messages (streams' in/out queues, watches' queues). */
typedef struct ec_queue {
  ec_msg *head, *tail;
  size_t n, bytes;
} ec_queue;

/* A message holding a copy of data, or NULL when out of memory. */
ec_msg *ec_msg_new(const void *data, size_t len);
void ec_queue_push(ec_queue *q, ec_msg *m);
ec_msg *ec_queue_pop(ec_queue *q);
void ec_queue_clear(ec_queue *q);

/* Completion identity (engine.h, "completion protocol"). Every object Lua can
 * wait on embeds one: its token, and the reap generation in which it was last
 * put on the client's ready list, so that it is listed at most once between
 * two reaps. */
typedef struct ec_ready {
  uint64_t token; /* 0: nobody waits on this object (engine-internal) */
  uint64_t gen;
} ec_ready;

typedef struct ec_tokens {
  uint64_t *v;
  size_t n, cap;
} ec_tokens;

/* A new token, unique in the process, never 0. */
uint64_t ec_token_new(void);
/* With c->mu held, after the object's state changed: put its token on the
 * ready list (once per reap) and signal the eventfd when the list was empty. */
void ec_ready_locked(ec_client *c, ec_ready *r);

/* Every completion-queue tag starts with this: the pump calls `done`. */
typedef struct ec_tag {
  void (*done)(struct ec_tag *tag, int ok);
} ec_tag;

typedef struct ec_chan {
  ec_tag tag; /* connectivity watch */
  ec_client *client;
  grpc_channel *channel;
  char *target;
  int watching;
  gpr_timespec watch_until;
} ec_chan;

/* The keep-alive manager (keepalive.c), driven by the pump thread. Leases
 * are found by id in a hash (chained; several keep-alives may renew one id)
 * and wait for their next send or expiry in a deadline heap, so an answer,
 * a tick or a release costs O(log n), not a scan of every lease. */
typedef struct ec_lease ec_lease;
typedef struct ec_ka {
  ec_stream *stream;
  int stream_ended;
  int idle; /* we cancelled the stream: nothing needed it */
  gpr_timespec reopen_at;
  ec_lease **buckets; /* hash by id; nbuckets is a power of two */
  size_t nbuckets;
  ec_lease **heap; /* alive leases by min(next_send, expires) */
  size_t nheap, capheap;
  size_t n; /* registered (alive or not, until released) */
} ec_ka;

/* The watch manager (watch.c), driven by the pump thread. */
typedef struct ec_watch ec_watch;
typedef struct ec_wm {
  ec_stream *stream;
  int stream_ended;
  /* we cancelled the stream (nothing needed it, or for a new token): the
   * next one opens at once, not after the break's back-off */
  int reopen_now;
  gpr_timespec reopen_at;
  ec_watch *watches; /* singly linked */
  ec_watch *creating; /* the create in flight, if any */
} ec_wm;

struct ec_client {
  atomic_int refs;
  pthread_mutex_t mu;
  grpc_completion_queue *cq;
  pthread_t pump;
  int pump_started;
  int efd;
  int closed;
  long pid;
  size_t nchan;
  size_t current;
  ec_chan *chans;
  ec_call *inflight; /* doubly linked list of unary calls in flight */
  size_t ninflight;
  ec_stream *streams; /* doubly linked list of live streams */
  size_t nstreams;
  ec_ka ka;
  ec_wm wm;
  /* metadata every stream the engine opens carries (the auth token) */
  ec_metadata *md;
  size_t nmd;
  int need_auth; /* etcd refused a watch create for the token: Lua must log in */
  /* The completion protocol: tokens ready since the last reap, the buffer
   * the last reap handed out (until ec_client_reap_done), the generation
   * (one per reap), and `all` when a token could not be listed (out of
   * memory): the next reap then says "wake every waiter". */
  ec_tokens ready, reaped;
  uint64_t reap_gen;
  int ready_all;
  ec_ready self; /* the client's own token: connectivity, auth, close */
  size_t max_send; /* the channels' send limit, bytes */
};

/* Client metadata plus `extra`, into out[] (at most `max`); with c->mu held.
 * Returns the count. */
size_t ec_stream_md_locked(ec_client *c, const ec_metadata *extra, size_t nextra,
                           ec_metadata *out, size_t max);

/* A consumer of a stream inside the engine (called by the pump thread with
 * the client's mutex held): messages go to it instead of the Lua queue. */
typedef struct ec_stream_hooks {
  void (*on_message)(void *ud, ec_stream *s, const char *data, size_t len);
  void (*on_end)(void *ud, ec_stream *s);
} ec_stream_hooks;

/* With c->mu held. wait_ready = 0: fail at once when the channel is not
 * connected, rather than wait for it. */
ec_stream *ec_stream_start_locked(ec_client *c, const char *path,
                                  int64_t timeout_ms, int chan,
                                  const ec_metadata *md, size_t nmd,
                                  int wait_ready, const ec_stream_hooks *hooks,
                                  void *hook_ud, char *err, size_t errlen);
int ec_stream_write_locked(ec_stream *s, const void *data, size_t len);
void ec_stream_cancel_locked(ec_stream *s);

/* The pump's next wake-up for keep-alives (with c->mu held). */
gpr_timespec ec_ka_deadline_locked(ec_client *c);
/* Run after every pump wake-up: send what is due, expire what is late. */
void ec_ka_tick(ec_client *c);
/* With c->mu held, client closing: every keep-alive ends as closed. */
void ec_ka_close_all_locked(ec_client *c);
/* After the pump stopped: drop the manager's references. */
void ec_ka_free(ec_client *c);
gpr_timespec ec_wm_deadline_locked(ec_client *c);
void ec_wm_tick(ec_client *c);
void ec_wm_close_all_locked(ec_client *c);
void ec_wm_free(ec_client *c);

/* Copy metadata into a grpc_metadata array (NULL for none, or on OOM with
 * *ok = 0); ec_md_free releases it. */
grpc_metadata *ec_md_copy(const ec_metadata *md, size_t n, int *ok);
void ec_md_free(grpc_metadata *md, size_t n);
/* A call on channel `chan` (< 0: the client's choice), with c->mu held. */
grpc_call *ec_create_call_locked(ec_client *c, int chan, const char *path,
                                 int64_t timeout_ms, int *chosen);

gpr_timespec ec_deadline_in(int64_t ms);
/* Wake whoever waits on the client's eventfd. */
void ec_signal(ec_client *c);
char *ec_dup_slice(grpc_slice s);
void ec_client_unref(ec_client *c);
/* The channel for a new call; with c->mu held. */
size_t ec_pick_channel(ec_client *c);
/* Cancel every live stream; with c->mu held (client closing). */
void ec_streams_cancel_all(ec_client *c);

#endif
