/*
 * Lease keep-alive driven by the pump thread. Every registered lease is
 * renewed on the client's LeaseKeepAlive streams every TTL/3 of its last
 * answer. Each alive lease is a timer in the client's deadline heap
 * (client.c), due at its next renewal or its expiry; leases are found by id
 * in a hash. A due lease joins the send queue, and at most WINDOW renewals
 * are in flight on a stream: etcd answers every renewal of a stream in
 * order, so one is never sent twice on the same stream, and 100,000 leases
 * due at once do not crowd out their own answers. One stream serves while
 * its window has room; more open (up to EC_KA_STREAMS) while the queue
 * outgrows them. Streams carry require-leader metadata; one is replaced, on
 * a ready member, when it breaks or when its oldest renewal goes unanswered
 * too long (a stuck member, which the client then passes over for a while:
 * ec_chan_avoid_locked), and then only the renewals that were in flight
 * on it are sent again (while no member is up, a new try every
 * EC_REOPEN_MS). A lease is lost when etcd answers TTL 0, or
 * when its TTL (the caller's hint, then etcd's last answer, counted from
 * when that renewal was sent) runs out unconfirmed: a slow first answer is
 * waited for, not taken for a loss. No lua.h here.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcdserverpb/rpc.pb-c.h"

/* Renewals in flight on one stream at once. etcd handles one stream's
 * renewals one after the other (a follower forwards each to the leader over
 * HTTP: ~2,500 a second here, against ~15,000 on the leader), so more in
 * flight only lengthens the wait of each; fewer would leave the stream idle
 * between answers. While more are due than the windows hold, another stream
 * opens (up to EC_KA_STREAMS), and etcd serves the streams in parallel. */
#define WINDOW 256
/* The oldest renewal in flight unanswered this long (its lease's TTL/3,
 * within these bounds; the upper one while the TTL is unknown) means the
 * stream is stuck: it is replaced. */
#define STALL_MIN_MS 1500
#define STALL_MAX_MS 5000

enum { AT_IDLE = 0, AT_QUEUED = 1, AT_FLIGHT = 2 };
/* why a lease is no longer alive */
enum { WHY_NONE, WHY_NOT_FOUND, WHY_TTL0, WHY_TIMED_OUT, WHY_OOM, WHY_CLOSED, WHY_CLIENT_CLOSED };

struct ec_lease {
  ec_ready ready;
  /* while alive: idle, due at min(next_send, expiry); queued or in flight,
   * due at its expiry (not scheduled while the TTL is unknown) */
  ec_timer timer;
  atomic_int refs; /* the caller's and the manager's */
  ec_client *client;
  ec_lease *hnext;       /* hash chain */
  ec_lease *prev, *next; /* in the send queue or a slot's in-flight list */
  int registered; /* in the hash (the manager holds a reference) */
  int state;
  int where; /* AT_* */
  int slot;  /* AT_FLIGHT: on which stream */
  int why;   /* WHY_*, once not alive */
  int has_expiry; /* the TTL is known: `expires` holds */
  int64_t id;
  int64_t ttl_ms;   /* the TTL last known (0: unknown) */
  int64_t lost_ttl; /* etcd's answer, for WHY_TTL0 */
  gpr_timespec next_send, expires, sent;
  uint64_t seq;
  ec_ka_response latest;
};

static const char *const KA_PATH = "/etcdserverpb.Lease/LeaseKeepAlive";

static gpr_timespec tmin(gpr_timespec a, gpr_timespec b) {
  return gpr_time_cmp(a, b) < 0 ? a : b;
}

/* Renewals are due on a 100 ms grid (rounded up), so the leases due about
 * the same time are renewed in one pump wake-up, as Go's client renews in
 * one pass every 500 ms; TTL/3 leaves far more margin than that. */
#define GRID_MS 100
static gpr_timespec on_grid(gpr_timespec t) {
  int64_t ns = (int64_t)t.tv_nsec, step = (int64_t)GRID_MS * 1000000;
  int64_t up = (ns + step - 1) / step * step;
  t.tv_nsec = 0;
  return gpr_time_add(t, gpr_time_from_nanos(up, GPR_TIMESPAN));
}

/* Drop n references at once (the caller's, and the manager's when it held one). */
static void lease_unref_n(ec_lease *l, int n) {
  if (atomic_fetch_sub(&l->refs, n) != n) return;
  ec_client_unref(l->client);
  free(l);
}

/* ---- the id hash (c->mu held) ------------------------------------------ */

static size_t bucket_of(const ec_ka *ka, int64_t id) {
  uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ULL;
  return (size_t)(h >> 32) & (ka->nbuckets - 1);
}

static int hash_grow(ec_ka *ka) {
  size_t nb = ka->nbuckets ? ka->nbuckets * 2 : 64;
  ec_lease **b = calloc(nb, sizeof(ec_lease *));
  if (!b) return -1;
  ec_lease **old = ka->buckets;
  size_t nold = ka->nbuckets;
  ka->buckets = b;
  ka->nbuckets = nb;
  for (size_t i = 0; i < nold; i++) {
    ec_lease *l = old[i];
    while (l) {
      ec_lease *next = l->hnext;
      size_t k = bucket_of(ka, l->id);
      l->hnext = b[k];
      b[k] = l;
      l = next;
    }
  }
  free(old);
  return 0;
}

static int hash_insert(ec_ka *ka, ec_lease *l) {
  /* past one lease per bucket, twice the buckets (if that fails, longer
   * chains: still correct) */
  if (ka->n >= ka->nbuckets && hash_grow(ka) != 0 && !ka->nbuckets) return -1;
  size_t k = bucket_of(ka, l->id);
  l->hnext = ka->buckets[k];
  ka->buckets[k] = l;
  ka->n++;
  return 0;
}

static void hash_remove(ec_ka *ka, ec_lease *l) {
  for (ec_lease **p = &ka->buckets[bucket_of(ka, l->id)]; *p; p = &(*p)->hnext)
    if (*p == l) {
      *p = l->hnext;
      ka->n--;
      return;
    }
}

/* Every registered lease, for f (c->mu held; f must not unlink). */
static void each_lease(ec_client *c, void (*f)(ec_client *, ec_lease *)) {
  for (size_t i = 0; i < c->ka.nbuckets; i++) {
    ec_lease *next;
    for (ec_lease *l = c->ka.buckets[i]; l; l = next) {
      next = l->hnext;
      f(c, l);
    }
  }
}

/* ---- the send queue and the in-flight lists (c->mu held) ---------------- */

static void list_push(ec_lease_list *q, ec_lease *l) {
  l->next = NULL;
  l->prev = q->tail;
  if (q->tail) q->tail->next = l;
  else q->head = l;
  q->tail = l;
}

static void list_unlink(ec_lease_list *q, ec_lease *l) {
  if (l->prev) l->prev->next = l->next;
  else q->head = l->next;
  if (l->next) l->next->prev = l->prev;
  else q->tail = l->prev;
  l->prev = l->next = NULL;
}

static int64_t stall_ms(const ec_lease *l);

/* The slot's stall timer follows its oldest renewal in flight. */
static void arm_stall(ec_client *c, ec_ka_slot *k) {
  ec_lease *h = k->flight.head;
  if (h) ec_timer_set_locked(c, &k->stall, ec_after_ms(h->sent, stall_ms(h)));
  else ec_timer_cancel_locked(c, &k->stall);
}

/* Out of the queue or its slot's in-flight list (a window slot frees). */
static void detach(ec_client *c, ec_lease *l) {
  if (l->where == AT_QUEUED) {
    list_unlink(&c->ka.queue, l);
    c->ka.nqueued--;
  } else if (l->where == AT_FLIGHT) {
    ec_ka_slot *k = &c->ka.slots[l->slot];
    int was_head = k->flight.head == l;
    list_unlink(&k->flight, l);
    k->nflight--;
    if (was_head) arm_stall(c, k);
  }
  l->where = AT_IDLE;
}

/* A stream went away: its renewals in flight will not be answered. They go
 * back to the front of the queue, in the order they were sent. */
static void requeue_flight(ec_client *c, ec_ka_slot *k) {
  ec_ka *ka = &c->ka;
  ec_timer_cancel_locked(c, &k->stall);
  if (!k->flight.head) return;
  for (ec_lease *l = k->flight.head; l; l = l->next) l->where = AT_QUEUED;
  k->flight.tail->next = ka->queue.head;
  if (ka->queue.head) ka->queue.head->prev = k->flight.tail;
  else ka->queue.tail = k->flight.tail;
  ka->queue.head = k->flight.head;
  ka->nqueued += k->nflight;
  k->flight.head = k->flight.tail = NULL;
  k->nflight = 0;
}

static int64_t stall_ms(const ec_lease *l) {
  int64_t ms = l->ttl_ms ? l->ttl_ms / 3 : STALL_MAX_MS;
  return ms < STALL_MIN_MS ? STALL_MIN_MS : ms > STALL_MAX_MS ? STALL_MAX_MS : ms;
}

static int slot_live(const ec_ka_slot *k) { return k->stream && !k->ended; }

/* ---- state (c->mu held) ------------------------------------------------- */

static void lose(ec_lease *l, int state, int why) {
  ec_client *c = l->client;
  if (l->state == EC_KA_ALIVE) c->ka.nalive--;
  detach(c, l);
  l->state = state;
  l->why = why;
  ec_timer_cancel_locked(c, &l->timer);
  ec_ready_locked(c, &l->ready);
}

/* After next_send, expires or where changed. A lease whose timer cannot be
 * set (out of memory) is lost: it would otherwise never be renewed. */
static void reschedule(ec_client *c, ec_lease *l) {
  if (l->state != EC_KA_ALIVE) return;
  int r = 0;
  if (l->where == AT_IDLE)
    r = ec_timer_set_locked(c, &l->timer, l->has_expiry ? tmin(l->next_send, l->expires)
                                                        : l->next_send);
  else if (l->has_expiry)
    r = ec_timer_set_locked(c, &l->timer, l->expires);
  else
    ec_timer_cancel_locked(c, &l->timer);
  if (r != 0) lose(l, EC_KA_EXPIRED, WHY_OOM);
}

static const ec_stream_hooks KA_HOOKS;

/* Open slot k's stream; 0, or -1 when no member takes it now (then no new
 * stream before the reopen timer). */
static int open_slot(ec_client *c, ec_ka_slot *k, gpr_timespec now) {
  k->stream = ec_engine_stream_locked(c, KA_PATH, &KA_HOOKS);
  k->ended = 0;
  if (!k->stream) {
    /* no member up: try again in a while, on whichever is ready then */
    ec_timer_set_locked(c, &c->ka.reopen, ec_after_ms(now, EC_REOPEN_MS));
    return -1;
  }
  c->ka.stats.opens++;
  return 0;
}

/* A stream whose window has room: a live one (the first such), or a new one
 * while every live one is full and a slot is free (not during a break's
 * back-off). NULL when none. */
static ec_ka_slot *slot_with_room(ec_client *c, gpr_timespec now) {
  ec_ka *ka = &c->ka;
  ec_ka_slot *free_slot = NULL;
  for (int i = 0; i < EC_KA_STREAMS; i++) {
    ec_ka_slot *k = &ka->slots[i];
    if (slot_live(k)) {
      if (k->nflight < WINDOW) return k;
    } else if (!k->stream && !free_slot) {
      free_slot = k; /* an ended one waits for the tick to release it */
    }
  }
  if (!free_slot || ka->idle) return NULL;
  if (ka->reopen.idx && gpr_time_cmp(now, ka->reopen.at) < 0) return NULL;
  return open_slot(c, free_slot, now) == 0 ? free_slot : NULL;
}

/* Send from the queue while a window has room. */
static void pump(ec_client *c, gpr_timespec now) {
  ec_ka *ka = &c->ka;
  while (ka->queue.head) {
    ec_ka_slot *k = slot_with_room(c, now);
    if (!k) return;
    ec_lease *l = ka->queue.head;
    Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    uint8_t buf[16];
    req.id = l->id;
    size_t n = etcdserverpb__lease_keep_alive_request__pack(&req, buf);
    if (ec_stream_write_locked(k->stream, buf, n) != 0) {
      k->ended = 1; /* its end is coming: the tick releases it */
      continue;
    }
    detach(c, l);
    l->where = AT_FLIGHT;
    l->slot = (int)(k - ka->slots);
    l->sent = now;
    list_push(&k->flight, l);
    k->nflight++;
    ka->stats.sent++;
    if (k->flight.head == l) arm_stall(c, k);
  }
}

static void enqueue(ec_client *c, ec_lease *l) {
  list_push(&c->ka.queue, l);
  l->where = AT_QUEUED;
  c->ka.nqueued++;
  reschedule(c, l);
}

static ec_ka_slot *slot_of(ec_client *c, const ec_stream *s) {
  for (int i = 0; i < EC_KA_STREAMS; i++)
    if (c->ka.slots[i].stream == s) return &c->ka.slots[i];
  return NULL;
}

/* ---- stream consumer (pump thread, c->mu held) ------------------------ */

static void on_message(void *ud, ec_stream *s, const char *data, size_t len) {
  ec_client *c = ud;
  if (!c->ka.nbuckets) return;
  Etcdserverpb__LeaseKeepAliveResponse *r =
      etcdserverpb__lease_keep_alive_response__unpack(NULL, len,
                                                      (const uint8_t *)data);
  if (!r) return;
  c->ka.stats.answered++;
  /* etcd answers a stream's renewals in order: on a live stream, this is
   * the answer to the oldest renewal of this id in flight on it */
  ec_ka_slot *k = slot_of(c, s);
  int slot = k && slot_live(k) ? (int)(k - c->ka.slots) : -1, freed = 0;
  if (slot >= 0) ec_chan_answered_locked(c, (size_t)ec_stream_chan(s)); /* it answers */
  gpr_timespec now = ec_now();
  ec_lease *next;
  for (ec_lease *l = c->ka.buckets[bucket_of(&c->ka, r->id)]; l; l = next) {
    next = l->hnext;
    if (l->id != r->id || l->state != EC_KA_ALIVE) continue;
    /* the lease was renewed when etcd read the request: not before it was
     * sent (the conservative end), or now when this was not its request */
    gpr_timespec base = now;
    if (l->where == AT_FLIGHT && l->slot == slot && !freed) {
      base = l->sent;
      detach(c, l);
      freed = 1;
    } else if (l->where == AT_QUEUED) {
      detach(c, l); /* renewed already: no need to send */
    }
    if (r->ttl <= 0) {
      /* never answered alive: there was no such lease (etcd's words, as
       * keepalive_once and revoke report it: lease_not_found) */
      l->lost_ttl = r->ttl;
      lose(l, EC_KA_EXPIRED, l->seq == 0 ? WHY_NOT_FOUND : WHY_TTL0);
      continue;
    }
    l->seq++;
    l->latest.id = r->id;
    l->latest.ttl = r->ttl;
    if (r->header) {
      l->latest.revision = r->header->revision;
      l->latest.cluster_id = r->header->cluster_id;
      l->latest.member_id = r->header->member_id;
      l->latest.raft_term = r->header->raft_term;
    }
    l->ttl_ms = r->ttl * 1000;
    l->has_expiry = 1;
    l->expires = ec_after_ms(base, l->ttl_ms);
    l->next_send = on_grid(ec_after_ms(base, l->ttl_ms / 3));
    reschedule(c, l);
    ec_ready_locked(c, &l->ready);
  }
  etcdserverpb__lease_keep_alive_response__free_unpacked(r, NULL);
  if (c->ka.queue.head) pump(c, now); /* also after answers to closed leases */
}

static void on_end(void *ud, ec_stream *s) {
  ec_client *c = ud;
  ec_ka_slot *k = slot_of(c, s);
  if (k) k->ended = 1;
}

static const ec_stream_hooks KA_HOOKS = {on_message, on_end};

/* ---- timers (pump thread, c->mu held) ---------------------------------- */

/* A lease's timer: lost if its TTL ran out unconfirmed, else due. */
static void lease_due(ec_client *c, ec_timer *t) {
  ec_lease *l = (ec_lease *)((char *)t - offsetof(ec_lease, timer));
  gpr_timespec now = ec_now();
  if (l->has_expiry && gpr_time_cmp(now, l->expires) >= 0) {
    lose(l, EC_KA_EXPIRED, WHY_TIMED_OUT);
  } else if (l->where == AT_IDLE) {
    enqueue(c, l);
    pump(c, now);
  } else {
    reschedule(c, l);
  }
}

/* A slot's oldest renewal in flight is overdue: the stream is stuck (a
 * member that stopped answering, its connection still open). Let it go: its
 * renewals in flight go to another stream (or to this slot's next one,
 * which the tick opens). */
static void stall_due(ec_client *c, ec_timer *t) {
  ec_ka_slot *k = (ec_ka_slot *)((char *)t - offsetof(ec_ka_slot, stall));
  ec_lease *h = k->flight.head;
  /* with one member there is nowhere else to go (see watch.c's probe) */
  if (!h || !slot_live(k) || !ec_elsewhere_locked(c)) return;
  gpr_timespec due = ec_after_ms(h->sent, stall_ms(h));
  if (gpr_time_cmp(ec_now(), due) < 0) { /* (not expected: armed for the head) */
    ec_timer_set_locked(c, &k->stall, due);
    return;
  }
  c->ka.stats.stalls++;
  requeue_flight(c, k);
  /* its member is passed over for a while (calls too), and the new stream
   * opens at once, elsewhere: no back-off, this was no break */
  ec_chan_avoid_locked(c, (size_t)ec_stream_chan(k->stream));
  ec_stream_cancel_locked(k->stream);
  k->ended = 1;
  c->ka.reopen_now = 1;
}

/* The reopen timer only wakes the pump: the tick opens the stream. */
static void reopen_due(ec_client *c, ec_timer *t) {
  (void)c;
  (void)t;
}

/* Take the ended streams out of their slots (into dead[], released by the
 * caller outside the lock); their renewals in flight are queued again. A
 * break (not our own idle cancel) delays new streams by EC_REOPEN_MS. */
static int reap_slots(ec_client *c, ec_stream **dead, int all, gpr_timespec now) {
  int n = 0, broke = 0;
  for (int i = 0; i < EC_KA_STREAMS; i++) {
    ec_ka_slot *k = &c->ka.slots[i];
    if (!k->stream || !(k->ended || all)) continue;
    dead[n++] = k->stream;
    k->stream = NULL;
    k->ended = 0;
    requeue_flight(c, k);
    broke = 1;
  }
  if (broke && !c->ka.idle && !all && !c->ka.reopen_now)
    ec_timer_set_locked(c, &c->ka.reopen, ec_after_ms(now, EC_REOPEN_MS));
  c->ka.reopen_now = 0;
  return n;
}

static int any_stream(const ec_client *c) {
  for (int i = 0; i < EC_KA_STREAMS; i++)
    if (c->ka.slots[i].stream) return 1;
  return 0;
}

/* Nothing left to renew: let the streams go. */
static void go_idle(ec_client *c) {
  if (c->ka.idle || c->closed) return;
  for (int i = 0; i < EC_KA_STREAMS; i++) {
    ec_ka_slot *k = &c->ka.slots[i];
    if (k->stream) ec_stream_cancel_locked(k->stream);
    requeue_flight(c, k);
  }
  c->ka.idle = 1;
}

static void ka_tick(ec_client *c) {
  ec_stream *dead[EC_KA_STREAMS];
  int ndead = 0;
  pthread_mutex_lock(&c->mu);
  if (c->closed || (!c->ka.nalive && !any_stream(c))) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  gpr_timespec now = ec_now();
  ndead = reap_slots(c, dead, 0, now);
  if (c->ka.idle && !any_stream(c)) c->ka.idle = 0; /* all released */
  if (c->ka.nalive) pump(c, now);
  else if (any_stream(c)) go_idle(c);
  pthread_mutex_unlock(&c->mu);
  for (int i = 0; i < ndead; i++) ec_stream_release(dead[i]);
}

static void ka_close_all_locked(ec_client *c);
static void ka_free(ec_client *c);
static const ec_manager KA_MANAGER = {ka_tick, ka_close_all_locked, ka_free};

/* ---- API -------------------------------------------------------------- */

ec_lease *ec_keepalive_start(ec_client *c, int64_t id, int64_t ttl_ms,
                             char *err, size_t errlen) {
  ec_lease *l = calloc(1, sizeof *l);
  if (!l) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  atomic_init(&l->refs, 2);
  atomic_fetch_add(&c->refs, 1);
  l->client = c;
  l->ready.token = ec_token_new();
  l->timer.fire = lease_due;
  l->id = id;
  l->latest.id = id;
  pthread_mutex_lock(&c->mu);
  ec_manager_register_locked(c, &KA_MANAGER);
  c->ka.reopen.fire = reopen_due;
  for (int i = 0; i < EC_KA_STREAMS; i++) c->ka.slots[i].stall.fire = stall_due;
  if (c->closed || hash_insert(&c->ka, l) != 0) {
    int closed = c->closed;
    pthread_mutex_unlock(&c->mu);
    snprintf(err, errlen, closed ? "client closed" : "out of memory");
    atomic_store(&l->refs, 1);
    lease_unref_n(l, 1);
    return NULL;
  }
  l->registered = 1;
  c->ka.nalive++;
  gpr_timespec now = ec_now();
  if (ttl_ms > 0) { /* the caller's word until etcd's first answer */
    l->ttl_ms = ttl_ms;
    l->has_expiry = 1;
    l->expires = ec_after_ms(now, ttl_ms);
  }
  l->next_send = now;
  ec_stream *dead[EC_KA_STREAMS];
  int ndead = 0;
  if (c->ka.idle) {
    /* cancelled because nothing needed them (their ends may not be in yet):
     * new ones now; the old ones are released below, outside the lock */
    ndead = reap_slots(c, dead, 1, now);
    c->ka.idle = 0;
  }
  /* Queued (which schedules its expiry), and sent now when a window has
   * room: the write's completion wakes the pump, which may be asleep with
   * no deadline; else the answers in flight wake it, or the reopen timer. */
  enqueue(c, l);
  pump(c, now);
  pthread_mutex_unlock(&c->mu);
  for (int i = 0; i < ndead; i++) ec_stream_release(dead[i]);
  return l;
}

int ec_keepalive_state(ec_lease *l, uint64_t *seq, ec_ka_response *latest,
                       char *reason, size_t reasonlen) {
  ec_client *c = l->client;
  pthread_mutex_lock(&c->mu);
  int st = l->state;
  *seq = l->seq;
  *latest = l->latest;
  int why = l->why;
  int64_t ttl = l->lost_ttl;
  pthread_mutex_unlock(&c->mu);
  switch (why) {
  case WHY_NOT_FOUND:
    snprintf(reason, reasonlen, "etcdserver: requested lease not found");
    break;
  case WHY_TTL0:
    snprintf(reason, reasonlen,
             "etcd: lease %" PRIx64 " expired or was revoked (etcd answered TTL %" PRId64 ")",
             (uint64_t)l->id, ttl);
    break;
  case WHY_TIMED_OUT:
    snprintf(reason, reasonlen,
             "etcd: lease %" PRIx64 " expired: no answer from etcd before its TTL ran out",
             (uint64_t)l->id);
    break;
  case WHY_OOM:
    snprintf(reason, reasonlen, "etcd: keep-alive stopped: out of memory");
    break;
  case WHY_CLOSED:
    snprintf(reason, reasonlen, "etcd: keep-alive is closed");
    break;
  case WHY_CLIENT_CLOSED:
    snprintf(reason, reasonlen, "etcd: client is closed");
    break;
  default:
    snprintf(reason, reasonlen, "%s", "");
  }
  return st;
}

void ec_keepalive_release(ec_lease *l) {
  ec_client *c = l->client;
  int owned = 0;
  pthread_mutex_lock(&c->mu);
  if (l->state == EC_KA_ALIVE) lose(l, EC_KA_CLOSED, WHY_CLOSED);
  if (l->registered) { /* the manager's reference goes with it */
    hash_remove(&c->ka, l);
    l->registered = 0;
    owned = 1;
  }
  if (!c->ka.nalive) go_idle(c);
  pthread_mutex_unlock(&c->mu);
  lease_unref_n(l, 1 + owned);
}

static void close_one(ec_client *c, ec_lease *l) {
  (void)c;
  if (l->state == EC_KA_ALIVE) lose(l, EC_KA_CLOSED, WHY_CLIENT_CLOSED);
}

static void ka_close_all_locked(ec_client *c) {
  each_lease(c, close_one);
  ec_timer_cancel_locked(c, &c->ka.reopen);
  for (int i = 0; i < EC_KA_STREAMS; i++) ec_timer_cancel_locked(c, &c->ka.slots[i].stall);
}

/* Client teardown (pump stopped): drop the manager's references. */
static void ka_free(ec_client *c) {
  for (size_t i = 0; i < c->ka.nbuckets; i++) {
    ec_lease *l = c->ka.buckets[i];
    while (l) {
      ec_lease *next = l->hnext;
      l->registered = 0;
      lease_unref_n(l, 1);
      l = next;
    }
  }
  free(c->ka.buckets);
  c->ka.buckets = NULL;
  c->ka.nbuckets = c->ka.n = c->ka.nalive = 0;
  c->ka.queue.head = c->ka.queue.tail = NULL;
  c->ka.nqueued = 0;
  for (int i = 0; i < EC_KA_STREAMS; i++) {
    ec_ka_slot *k = &c->ka.slots[i];
    k->flight.head = k->flight.tail = NULL;
    k->nflight = 0;
    if (k->stream) {
      ec_stream *s = k->stream;
      k->stream = NULL;
      ec_stream_release(s);
    }
  }
}


uint64_t ec_keepalive_token(const ec_lease *l) { return l->ready.token; }

size_t ec_client_nkeepalives(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  size_t n = c->ka.nalive;
  pthread_mutex_unlock(&c->mu);
  return n;
}

void ec_client_ka_stats(ec_client *c, ec_ka_stats *out) {
  pthread_mutex_lock(&c->mu);
  *out = c->ka.stats;
  out->queued = c->ka.nqueued;
  out->in_flight = 0;
  for (int i = 0; i < EC_KA_STREAMS; i++) out->in_flight += c->ka.slots[i].nflight;
  out->alive = c->ka.nalive;
  pthread_mutex_unlock(&c->mu);
}
