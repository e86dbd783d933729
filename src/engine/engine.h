/*
 * The gRPC engine of lua-etcd. It drives gRPC's C core and knows nothing of
 * Lua: no file under src/engine/ includes lua.h.
 *
 * One ec_client owns one completion queue, one channel per endpoint and one
 * pump thread that drains the queue (or leaves it to a Lua thread blocked in
 * ec_client_wait, which then drains it). The pump thread completes operations,
 * lists their tokens as ready and signals an eventfd; the Lua side waits on
 * that fd (ec_client_wait) or hands it to an event loop, reaps the ready
 * tokens (ec_client_reap) and reads the results of just those objects.
 * Nothing here ever calls into Lua.
 */
#ifndef ETCD_ENGINE_H
#define ETCD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ec_client ec_client;
typedef struct ec_call ec_call;
typedef struct ec_stream ec_stream;
/* One received message, handed to the caller as it was queued (no copy). */
typedef struct ec_msg ec_msg;
const char *ec_msg_data(const ec_msg *m);
size_t ec_msg_len(const ec_msg *m);
void ec_msg_free(ec_msg *m);

typedef struct ec_config {
  const char *const *targets; /* gRPC target names, one channel each */
  size_t ntargets;
  int max_send_size; /* bytes; 0: engine default */
  int max_recv_size; /* bytes; 0: engine default */
  /* TLS: on when `tls`; PEM text; ca NULL: the system's roots; cert and key
   * together or neither; server_name overrides the name checked. */
  int tls;
  const char *ca_pem, *cert_pem, *key_pem, *server_name;
} ec_config;

/* The most endpoints (channels) a client has. */
#define EC_MAX_ENDPOINTS 64

/* 1 when etcd's message means "log in again": the simple token expired
 * (after --auth-token-ttl unused), or the auth store changed since. The one
 * list of those messages, for the engine (watch creates) and Lua (rpc.lua). */
int ec_auth_refusal(const char *msg);

/* The most metadata entries a call carries (the caller's); the streams the
 * engine opens add their own one to the client's. */
#define EC_MAX_METADATA 16

typedef struct ec_metadata {
  const char *key;   /* lower-case ASCII */
  const char *value;
  size_t value_len;
} ec_metadata;

/* Why a call ended, beyond its gRPC status. */
enum { EC_END_NORMAL = 0, EC_END_CLOSED = 1, EC_END_CANCELLED = 2 };

/* Initialise gRPC once per process. Returns 0, or -1 when gRPC was started by
 * another process (we are a fork() child: gRPC cannot be used here). */
int ec_global_init(void);
/* The pid that initialised gRPC, 0 if none. */
long ec_global_pid(void);

ec_client *ec_client_new(const ec_config *cfg, char *err, size_t errlen);
/* Cancel every call, stop the pump thread, destroy the channels. Idempotent.
 * Safe in a forked child (it then only marks the client closed). */
void ec_client_close(ec_client *c);
/* Drop the owner's reference (after close). */
void ec_client_release(ec_client *c);
int ec_client_closed(const ec_client *c);
long ec_client_pid(const ec_client *c);
int ec_client_fd(const ec_client *c);
/* The channel the next call would go to (0-based). */
size_t ec_client_current(ec_client *c);
/* A channel to one more endpoint (the same credentials and settings as the
 * others): its 0-based index, or -1 with err filled (too many, closed, out
 * of memory). A retired channel to the same target is taken back instead. */
int ec_client_add_target(ec_client *c, const char *target, char *err, size_t errlen);
/* Endpoint i is no longer one of the client's: no call or engine stream goes
 * there any more (the engine's streams on it move now); calls already on it
 * finish. Refused (-1) when it is the last one not retired. */
int ec_client_retire(ec_client *c, size_t i);
/* Every channel's target (0-based index; the strings live as long as the
 * client) and whether it is retired, into arrays of EC_MAX_ENDPOINTS:
 * returns how many, all read at one moment. */
size_t ec_client_targets(ec_client *c, const char **target, int *retired);

/* Start connecting every channel and watch them until `timeout_ms` from now;
 * each state change signals the fd. */
void ec_client_dial(ec_client *c, int64_t timeout_ms);
/* 1 if some channel is READY. */
int ec_client_ready(ec_client *c);
/* ---- the completion protocol ------------------------------------------
 * Every object Lua may wait on (client, call, stream, watch, keep-alive) has
 * a token, unique in the process and never 0. Whenever the pump changes what
 * such an object would tell Lua (a call finished, a message was queued, a
 * watch was created or ended, a lease was renewed or lost, a channel changed
 * state, the client closed), it updates the object first, then puts its
 * token on the client's ready list, at most once between two reaps, and
 * signals the eventfd when the list was empty. One driver reaps the list and
 * wakes exactly the waiters of those tokens; a waiter then looks at its
 * object again. A token reaped before its waiter registered is harmless: the
 * object's state already shows what happened. */

/* Wait until something is ready for a reap or timeout_ms passes (<0: no
 * limit), driving the completion queue on the calling thread meanwhile when
 * the pump lets it (internal.h, c->driver; LUA_ETCD_PUMP_ONLY=1 at the
 * client's creation: never). Does not reap (ec_client_reap does). Returns 1
 * ready (or possibly so), 0 timed out, -1 closed or error. */
int ec_client_wait(ec_client *c, int timeout_ms);
/* Drain the eventfd and take every token made ready since the last reap:
 * returns their count with *out pointing at them (valid until
 * ec_client_reap_done), and *all = 1 when some could not be listed (out of
 * memory): then every waiter must look. Only the thread that owns the
 * client's Lua state reaps. */
size_t ec_client_reap(ec_client *c, const uint64_t **out, int *all);
void ec_client_reap_done(ec_client *c);
uint64_t ec_client_token(const ec_client *c);
/* Metadata every stream the engine opens by itself carries from now on (the
 * auth token); copies it. 0, or -1 when out of memory. */
int ec_client_set_metadata(ec_client *c, const ec_metadata *md, size_t n);
/* 1 when etcd refused a watch create because of the token: log in again,
 * set the new token, then call ec_client_auth_refreshed. */
int ec_client_need_auth(ec_client *c);
/* The token was renewed: the watch stream is opened again with it and the
 * watches waiting for it are created. */
void ec_client_auth_refreshed(ec_client *c);
/* Number of calls in flight (for specs and leak checks). */
size_t ec_client_inflight(ec_client *c);
/* Number of channels passed over now: their member left a call or a
 * keep-alive renewal unanswered past a bound while connected (for specs). */
size_t ec_client_navoided(ec_client *c);
/* Counts the changes to the set of endpoints (added, retired, taken back):
 * whoever caches the list reads it again when this moved. */
uint64_t ec_client_chan_gen(ec_client *c);
/* Every `ms` (0: stop), the engine asks a member for etcd's member list and
 * makes the client's endpoints the client URLs of the started voting
 * members (new ones get a channel, those no longer listed are retired),
 * whether or not Lua is making calls. */
void ec_client_auto_sync(ec_client *c, int64_t ms);
/* The member id behind channel i, as the last unary answer from it said;
 * 0 when none has come. */
uint64_t ec_client_member_at(ec_client *c, size_t i);
/* How many times a channel's connection was lost (READY, then any other
 * state: the member died, restarted or the link broke), and in *chan the
 * channel of the last such loss. Every channel's connectivity is watched
 * from etcd.new's dial on, for as long as the client lives. */
uint64_t ec_client_drops(ec_client *c, size_t *chan);
/* The client was made in another process: this is a fork() child (no
 * syscall: the pid is kept by a fork handler). */
int ec_client_forked(const ec_client *c);

/* Start a unary call. `chan` < 0 lets the client choose the channel.
 * `fail_fast`: fail at once on a channel that cannot connect (its status then
 * carries gRPC's last connection error) instead of waiting for it.
 * Returns NULL with err filled when the call cannot start. */
ec_call *ec_unary_start(ec_client *c, const char *path, const void *req,
                        size_t reqlen, int64_t timeout_ms, int chan,
                        int fail_fast, const ec_metadata *md, size_t nmd,
                        char *err, size_t errlen);
int ec_call_done(ec_call *k);
void ec_call_cancel(ec_call *k);
/* Results, valid once ec_call_done() is 1. */
int ec_call_status(const ec_call *k); /* grpc_status_code */
int ec_call_end(const ec_call *k);    /* EC_END_* */
const char *ec_call_details(const ec_call *k);
const void *ec_call_response(const ec_call *k, size_t *len);
uint64_t ec_call_token(const ec_call *k);
/* The channel the call went to (0-based). */
int ec_call_chan(const ec_call *k);
void ec_call_release(ec_call *k);

/* ---- bidirectional streams ------------------------------------------
 * The pump keeps one receive outstanding and queues every message that
 * arrives; writes are queued and sent one at a time, in order. */

/* Open a stream. timeout_ms < 0: no deadline. */
ec_stream *ec_stream_start(ec_client *c, const char *path, int64_t timeout_ms,
                           int chan, const ec_metadata *md, size_t nmd,
                           char *err, size_t errlen);
/* Queue a message. Returns 0, or -1 when the stream has ended or the
 * sending side was closed. */
int ec_stream_write(ec_stream *s, const void *data, size_t len);
/* Half-close after the queued writes. */
void ec_stream_close_send(ec_stream *s);
/* Take the oldest received message: 1 with *out (ec_msg_free it), 0 when
 * none is queued yet, -1 when none is queued and the stream ended. */
int ec_stream_read(ec_stream *s, ec_msg **out);
/* Once ended: */
int ec_stream_status(ec_stream *s);
int ec_stream_end(ec_stream *s); /* EC_END_* */
const char *ec_stream_details(ec_stream *s);
void ec_stream_cancel(ec_stream *s);
/* Cancel if still running and drop the caller's reference. */
void ec_stream_release(ec_stream *s);
size_t ec_client_nstreams(ec_client *c);
uint64_t ec_stream_token(const ec_stream *s);

/* ---- lease keep-alive -----------------------------------------------
 * The pump thread renews registered leases on the client's shared
 * LeaseKeepAlive stream every TTL/3, with no Lua code running. A lease is
 * lost only when etcd answers TTL 0 (or "not found"), or when its TTL (the
 * caller's hint, then etcd's last answer) runs out with no renewal
 * confirmed. A renewal etcd has not answered is not sent again on the same
 * stream (etcd answers every one); the stream is replaced when it breaks or
 * when the oldest renewal goes unanswered too long, and only the renewals
 * in flight on it are sent again. */

typedef struct ec_lease ec_lease;
enum { EC_KA_ALIVE = 0, EC_KA_EXPIRED = 1, EC_KA_CLOSED = 2 };

typedef struct ec_ka_response {
  int64_t id, ttl, revision;
  uint64_t cluster_id, member_id, raft_term;
} ec_ka_response;

/* Counters of the keep-alive manager, for specs and benchmarks. */
typedef struct ec_ka_stats {
  uint64_t sent;     /* renewals written to a stream */
  uint64_t answered; /* answers received */
  uint64_t opens;    /* keep-alive streams opened */
  uint64_t stalls;   /* streams replaced because an answer was overdue */
  uint64_t queued, in_flight, alive; /* now */
} ec_ka_stats;

/* Start renewing lease `id`. `ttl_ms`: the lease's TTL if the caller knows
 * it (from its grant), which bounds the wait for etcd's first answer; 0:
 * unknown (etcd's first answer tells it). */
ec_lease *ec_keepalive_start(ec_client *c, int64_t id, int64_t ttl_ms,
                             char *err, size_t errlen);
/* State (EC_KA_*); *seq counts the answers so far, *latest is the newest.
 * `reason` gets why the lease is no longer alive. */
int ec_keepalive_state(ec_lease *l, uint64_t *seq, ec_ka_response *latest,
                       char *reason, size_t reasonlen);
/* Stop renewing (idempotent) and drop the caller's reference. */
void ec_keepalive_release(ec_lease *l);
size_t ec_client_nkeepalives(ec_client *c);
void ec_client_ka_stats(ec_client *c, ec_ka_stats *out);
uint64_t ec_keepalive_token(const ec_lease *l);

/* ---- watch ------------------------------------------------------------
 * Every watch of a client shares one Watch stream, demultiplexed by
 * watch_id. Creates are sent one at a time (a failed create is answered with
 * id -1). Responses are queued per watch as bytes (fragments joined); a queue
 * over its bound gets the watch cancelled on the server and re-created from
 * its next revision once Lua drained it. When the stream breaks, every watch
 * is re-created from the revision after the last one it received. */

typedef struct ec_watch ec_watch;
enum { EC_W_LIVE = 0, EC_W_ENDED = 1, EC_W_CLOSED = 2 };

/* `create` is a packed WatchCreateRequest without start_revision and
 * fragment; `start_revision` 0: from now; `join_fragments`: deliver a
 * fragmented response joined into one (else piece by piece). */
ec_watch *ec_watch_start(ec_client *c, const void *create, size_t len,
                         int64_t start_revision, int join_fragments, char *err,
                         size_t errlen);
/* Oldest queued response: 1 with *out (ec_msg_free it), 0 none yet, -1
 * none and the watch is no longer live (see ec_watch_state). */
int ec_watch_read(ec_watch *w, ec_msg **out);
/* EC_W_*; for ENDED, *compact_revision and `reason` (etcd's cancel reason). */
int ec_watch_state(ec_watch *w, int64_t *compact_revision, char *reason,
                   size_t reasonlen);
/* 1 once etcd confirmed the watch, 0 before, -1 if it ended first. */
int ec_watch_created(ec_watch *w);
/* Cancel on the server (if live) and drop the caller's reference. */
void ec_watch_release(ec_watch *w);
/* Send a WatchProgressRequest on the watch stream; 0 when there is none. */
int ec_watch_request_progress(ec_client *c);
size_t ec_client_nwatches(ec_client *c);
uint64_t ec_watch_token(const ec_watch *w);

#endif
