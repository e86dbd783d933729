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

/* A timer in the client's one deadline heap: the pump sleeps until the
 * earliest and calls `fire` (pump thread, c->mu held) once it is due. */
typedef struct ec_timer {
  gpr_timespec at;
  size_t idx; /* position in the heap + 1; 0: not scheduled */
  void (*fire)(ec_client *c, struct ec_timer *t);
} ec_timer;

typedef struct ec_timers {
  ec_timer **v;
  size_t n, cap;
} ec_timers;

/* With c->mu held: schedule t at `at` (or move it there); 0, or -1 when
 * out of memory (then it is not scheduled). */
int ec_timer_set_locked(ec_client *c, ec_timer *t, gpr_timespec at);
void ec_timer_cancel_locked(ec_client *c, ec_timer *t);

/* What the pump knows of a manager (keepalive.c, watch.c): after every
 * wake-up `tick` (takes c->mu itself); at close `close_all_locked`; after
 * the pump stopped `free`. Their timers are in the client's heap. A manager
 * registers itself with a client on first use (ec_manager_register_locked):
 * client.c knows none of them by name. */
typedef struct ec_manager {
  void (*tick)(ec_client *c);
  void (*close_all_locked)(ec_client *c);
  void (*free)(ec_client *c);
} ec_manager;
#define EC_MAX_MANAGERS 4
/* With c->mu held; idempotent. */
void ec_manager_register_locked(ec_client *c, const ec_manager *m);

#define EC_REOPEN_MS 500 /* a broken engine stream is replaced after this */

gpr_timespec ec_now(void);
gpr_timespec ec_after_ms(gpr_timespec t, int64_t ms);

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
  /* until then (etcd.new's dial) the watch also asks it to connect */
  gpr_timespec watch_until;
  /* the state its watch last saw: READY then anything else is a drop */
  grpc_connectivity_state seen;
  /* the member stopped answering (ec_chan_avoid_locked): other channels
   * are preferred until it answers again; `probe` asks it meanwhile */
  int avoid;
  ec_timer probe;
  int probing; /* a probe is in flight */
  /* no longer one of the client's endpoints (ec_client_retire): never
   * picked; kept until the client closes, for the calls still on it */
  int retired;
  /* the etcd member behind it, from the last answer's header; 0: none yet */
  uint64_t member_id;
} ec_chan;

/* With c->mu held: the member behind channel i left a request unanswered
 * past a bound while its connection stays open (stopped, or hung): calls and
 * engine streams prefer the other channels until it answers again, to our
 * probes (a Status every second) or anything else. With no other channel
 * ready, it is still used. */
void ec_chan_avoid_locked(ec_client *c, size_t i);
/* With c->mu held: an answer came from channel i. */
void ec_chan_answered_locked(ec_client *c, size_t i);
/* With c->mu held: 1 when the client has more than one endpoint not retired
 * (somewhere else to send a call or move a stream). */
int ec_elsewhere_locked(const ec_client *c);

/* The keep-alive manager (keepalive.c), driven by the pump thread. Leases
 * are found by id in a hash (chained; several keep-alives may renew one id);
 * each alive lease is a timer in the client's heap, due at its next renewal
 * or its expiry. A due lease joins the send queue; each stream has at most a
 * window of renewals in flight (etcd answers each, in order), and a stream
 * more is opened (up to EC_KA_STREAMS) while the queue outgrows the windows,
 * so starting, renewing, answering and closing cost O(1) or O(log n), and a
 * crowd of due leases never crowds out the answers. */
typedef struct ec_lease ec_lease;
typedef struct ec_lease_list {
  ec_lease *head, *tail;
} ec_lease_list;
#define EC_KA_STREAMS 4
typedef struct ec_ka_slot {
  ec_stream *stream;
  int ended;
  ec_lease_list flight; /* sent on this stream, oldest first */
  size_t nflight;
  ec_timer stall; /* the oldest renewal in flight gets its answer by then */
} ec_ka_slot;
typedef struct ec_ka {
  ec_ka_slot slots[EC_KA_STREAMS];
  int idle;        /* we cancelled the streams: nothing needed them */
  int reopen_now;  /* a stuck stream was let go: its successor opens at once */
  ec_timer reopen; /* after a break, no stream opens before this */
  ec_lease **buckets; /* hash by id; nbuckets is a power of two */
  size_t nbuckets;
  size_t n;      /* registered (alive or not, until released) */
  size_t nalive; /* alive: renewed */
  ec_lease_list queue; /* due, waiting for room in a window */
  size_t nqueued;
  ec_ka_stats stats;
} ec_ka;

/* The watch manager (watch.c), driven by the pump thread. */
typedef struct ec_watch ec_watch;
typedef struct ec_wm {
  ec_stream *stream;
  int stream_ended;
  /* we cancelled the stream (nothing needed it, or for a new token): the
   * next one opens at once, not after the break's back-off */
  int reopen_now;
  int maybe_pending; /* some watch may be S_PENDING: next_create scans */
  ec_timer reopen; /* when to open a new stream */
  /* Liveness: a stream silent for a while gets a progress request of ours;
   * no message at all before the probe's bound means a stuck member. */
  ec_timer probe;
  gpr_timespec last_heard, probe_sent;
  int probes;   /* our progress requests whose answers are still to come */
  int probing;  /* one of them is outstanding and nothing was heard since */
  uint64_t stalls;
  ec_watch *watches; /* singly linked */
  ec_watch *creating; /* the create in flight, if any */
} ec_wm;

struct ec_client {
  atomic_int refs;
  /* unary calls between their creation (under mu) and the start of their
   * batch (outside it): close waits for none before it shuts the queue */
  atomic_int starting;
  pthread_mutex_t mu;
  grpc_completion_queue *cq;
  pthread_t pump;
  int pump_started;
  int efd;
  int closed;
  long pid;
  size_t nchan;   /* channels made, retired ones included */
  size_t current;
  ec_chan *chans; /* room for EC_MAX_ENDPOINTS: never moves */
  /* how channels are made, for those added later (ec_client_add_target) */
  grpc_channel_credentials *creds;
  grpc_arg chan_args[10];
  size_t nchan_args;
  char *server_name;
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
  ec_timers timers; /* the one deadline heap of the pump */
  const ec_manager *managers[EC_MAX_MANAGERS]; /* registered, in order */
  size_t nmanagers;
  size_t max_send; /* the channels' send limit, bytes */
  int tls;          /* https:// endpoints (auto-sync keeps to those) */
  uint64_t chan_gen; /* counts changes to the set of endpoints */
  /* connections lost: counted, with the channel of the last (engine.h,
   * ec_client_drops) */
  uint64_t drops;
  size_t drop_chan;
  /* auto-sync: a MemberList of the engine's own every sync_ms (0: off) */
  int64_t sync_ms;
  ec_timer sync_timer;
  int syncing; /* one in flight */
  /* Who runs grpc_completion_queue_next (engine.h, "who drives the
   * queue"): one thread at a time, the pump or the Lua thread waiting in
   * ec_client_wait. */
  int driver;       /* EC_DRIVER_* */
  int lua_drives;   /* allowed: LUA_ETCD_PUMP_ONLY unset at creation */
  int lua_wants;    /* the Lua thread waits on the fd for the pump to hand over */
  int64_t released; /* CLOCK_MONOTONIC ns when the Lua thread last stopped driving */
  pthread_cond_t pump_cv; /* the pump waits here while it does not drive */
};
enum { EC_DRIVER_NONE = 0, EC_DRIVER_PUMP = 1, EC_DRIVER_LUA = 2 };

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
/* With c->mu held: the metadata and flags of the streams the engine opens
 * for itself (client metadata + hasleader), failing fast on a member that
 * is down. NULL when it cannot start (the manager tries again later). */
ec_stream *ec_engine_stream_locked(ec_client *c, const char *path,
                                   const ec_stream_hooks *hooks);
/* The channel a stream runs on. */
int ec_stream_chan(const ec_stream *s);
/* With c->mu held: cancel the engine's own streams (hooks) on channel chan. */
void ec_streams_cancel_engine_on_locked(ec_client *c, int chan);

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
