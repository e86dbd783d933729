/*
 * Lease keep-alive driven by the pump thread. Every registered lease is
 * renewed on the client's one LeaseKeepAlive stream: a request every 500 ms
 * until etcd answers (as etcd's Go client does), then one every TTL/3. Each
 * alive lease is a timer in the client's deadline heap (client.c), due at
 * its next send or its expiry; leases are found by id in a hash. The stream
 * carries require-leader metadata and is opened again,
 * on a ready member, when it breaks (it does not wait for a member that is
 * down: while none is up, a new try every 500 ms). No lua.h here.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcdserverpb/rpc.pb-c.h"

#define RETRY_MS 500

struct ec_lease {
  ec_ready ready;
  ec_timer timer;  /* while alive: due at min(next_send, expires) */
  atomic_int refs; /* the caller's and the manager's */
  ec_client *client;
  ec_lease *hnext; /* hash chain */
  int registered;  /* in the hash (the manager holds a reference) */
  int64_t id;
  int state;
  gpr_timespec next_send, expires;
  uint64_t seq;
  ec_ka_response latest;
  char reason[160];
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

/* ---- state (c->mu held) ------------------------------------------------- */

/* After next_send or expires changed. A lease whose timer cannot be set
 * (out of memory) is lost: it would otherwise never be renewed. */
static void reschedule(ec_client *c, ec_lease *l);

static void lose(ec_lease *l, int state, const char *reason) {
  ec_client *c = l->client;
  if (l->state == EC_KA_ALIVE) c->ka.nalive--;
  l->state = state;
  snprintf(l->reason, sizeof l->reason, "%s", reason);
  ec_timer_cancel_locked(c, &l->timer);
  ec_ready_locked(c, &l->ready);
}

static void reschedule(ec_client *c, ec_lease *l) {
  if (l->state != EC_KA_ALIVE) return;
  if (ec_timer_set_locked(c, &l->timer, tmin(l->next_send, l->expires)) != 0)
    lose(l, EC_KA_EXPIRED, "etcd: keep-alive stopped: out of memory");
}

/* ---- stream consumer (pump thread, c->mu held) ------------------------ */

static void on_message(void *ud, ec_stream *s, const char *data, size_t len) {
  ec_client *c = ud;
  (void)s;
  if (!c->ka.nbuckets) return;
  Etcdserverpb__LeaseKeepAliveResponse *r =
      etcdserverpb__lease_keep_alive_response__unpack(NULL, len,
                                                      (const uint8_t *)data);
  if (!r) return;
  gpr_timespec now = ec_now();
  for (ec_lease *l = c->ka.buckets[bucket_of(&c->ka, r->id)]; l; l = l->hnext) {
    if (l->id != r->id || l->state != EC_KA_ALIVE) continue;
    if (r->ttl <= 0 && l->seq == 0) {
      /* it never answered alive: there was no such lease (etcd's words, as
       * keepalive_once and revoke report it: lease_not_found) */
      lose(l, EC_KA_EXPIRED, "etcdserver: requested lease not found");
      continue;
    }
    if (r->ttl <= 0) {
      char why[160];
      snprintf(why, sizeof why,
               "etcd: lease %" PRIx64 " expired or was revoked (etcd answered TTL %" PRId64 ")",
               (uint64_t)l->id, r->ttl);
      lose(l, EC_KA_EXPIRED, why);
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
    l->expires = ec_after_ms(now, r->ttl * 1000);
    l->next_send = on_grid(ec_after_ms(now, r->ttl * 1000 / 3));
    reschedule(c, l);
    ec_ready_locked(c, &l->ready);
  }
  etcdserverpb__lease_keep_alive_response__free_unpacked(r, NULL);
}

static void on_end(void *ud, ec_stream *s) {
  ec_client *c = ud;
  if (s == c->ka.stream) c->ka.stream_ended = 1;
}

static const ec_stream_hooks KA_HOOKS = {on_message, on_end};

/* ---- scheduling ------------------------------------------------------- */

/* Send a renewal now (if the stream takes it); either way the next try is
 * RETRY_MS from now, until etcd answers. */
static void send_locked(ec_client *c, ec_lease *l, gpr_timespec now) {
  Etcdserverpb__LeaseKeepAliveRequest req =
      ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
  uint8_t buf[16];
  req.id = l->id;
  size_t n = etcdserverpb__lease_keep_alive_request__pack(&req, buf);
  if (c->ka.stream && !c->ka.stream_ended)
    ec_stream_write_locked(c->ka.stream, buf, n);
  l->next_send = on_grid(ec_after_ms(now, RETRY_MS));
  reschedule(c, l);
}

/* A lease's timer: expire it if late, else renew it. */
static void lease_due(ec_client *c, ec_timer *t) {
  ec_lease *l = (ec_lease *)((char *)t - offsetof(ec_lease, timer));
  gpr_timespec now = ec_now();
  if (gpr_time_cmp(now, l->expires) >= 0) {
    char why[160];
    snprintf(why, sizeof why,
             "etcd: lease %" PRIx64 " expired: no answer from etcd before its TTL ran out",
             (uint64_t)l->id);
    lose(l, EC_KA_EXPIRED, why);
  } else {
    send_locked(c, l, now);
  }
}

/* The reopen timer only wakes the pump: the tick opens the stream. */
static void reopen_due(ec_client *c, ec_timer *t) {
  (void)c;
  (void)t;
}

static void all_due_now(ec_client *c, ec_lease *l) {
  if (l->state != EC_KA_ALIVE) return;
  l->next_send = ec_now();
  reschedule(c, l);
}

static void open_locked(ec_client *c, gpr_timespec now) {
  c->ka.stream = ec_engine_stream_locked(c, KA_PATH, &KA_HOOKS);
  c->ka.stream_ended = 0;
  if (!c->ka.stream) {
    /* no member up: try again in a while, on whichever is ready then */
    ec_timer_set_locked(c, &c->ka.reopen, ec_after_ms(now, EC_REOPEN_MS));
    return;
  }
  ec_timer_cancel_locked(c, &c->ka.reopen);
  /* a new stream: every alive lease is due now */
  each_lease(c, all_due_now);
}

static void ka_tick(ec_client *c) {
  ec_stream *dead = NULL;
  pthread_mutex_lock(&c->mu);
  if (c->closed || (!c->ka.nalive && !c->ka.stream)) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  gpr_timespec now = ec_now();
  if (c->ka.stream && c->ka.stream_ended) {
    dead = c->ka.stream;
    c->ka.stream = NULL;
    c->ka.stream_ended = 0;
    /* a stream we let go when nothing needed it is no break: no back-off */
    ec_timer_set_locked(c, &c->ka.reopen,
                        c->ka.idle ? now : ec_after_ms(now, EC_REOPEN_MS));
    c->ka.idle = 0;
  }
  if (c->ka.nalive && !c->ka.stream &&
      (!c->ka.reopen.idx || gpr_time_cmp(now, c->ka.reopen.at) >= 0))
    open_locked(c, now);
  if (c->ka.stream && !c->ka.nalive && !c->ka.idle) {
    /* nothing left to renew: let the stream go */
    ec_stream_cancel_locked(c->ka.stream);
    c->ka.idle = 1;
  }
  pthread_mutex_unlock(&c->mu);
  if (dead) ec_stream_release(dead);
}

static void ka_close_all_locked(ec_client *c);
static void ka_free(ec_client *c);
static const ec_manager KA_MANAGER = {ka_tick, ka_close_all_locked, ka_free};

/* ---- API -------------------------------------------------------------- */

ec_lease *ec_keepalive_start(ec_client *c, int64_t id, int64_t first_timeout_ms,
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
  l->expires = ec_after_ms(now, first_timeout_ms);
  l->next_send = now;
  ec_stream *dead = NULL;
  if (c->ka.stream && (c->ka.stream_ended || c->ka.idle)) {
    /* ended, or cancelled because nothing needed it (its end may not be in
     * yet): a new one now; the old one is released below, outside the lock */
    dead = c->ka.stream;
    c->ka.stream = NULL;
    c->ka.stream_ended = 0;
    c->ka.idle = 0;
  }
  if (!c->ka.stream) open_locked(c, now);
  /* The first request from here (it also schedules the lease): its
   * completion wakes the pump, which may be asleep with no deadline. */
  send_locked(c, l, now);
  pthread_mutex_unlock(&c->mu);
  if (dead) ec_stream_release(dead);
  return l;
}

int ec_keepalive_state(ec_lease *l, uint64_t *seq, ec_ka_response *latest,
                       char *reason, size_t reasonlen) {
  ec_client *c = l->client;
  pthread_mutex_lock(&c->mu);
  int st = l->state;
  *seq = l->seq;
  *latest = l->latest;
  snprintf(reason, reasonlen, "%s", l->reason);
  pthread_mutex_unlock(&c->mu);
  return st;
}

void ec_keepalive_release(ec_lease *l) {
  ec_client *c = l->client;
  int owned = 0;
  pthread_mutex_lock(&c->mu);
  if (l->state == EC_KA_ALIVE) lose(l, EC_KA_CLOSED, "etcd: keep-alive is closed");
  if (l->registered) { /* the manager's reference goes with it */
    hash_remove(&c->ka, l);
    l->registered = 0;
    owned = 1;
  }
  if (!c->ka.nalive && c->ka.stream && !c->closed && !c->ka.idle) {
    ec_stream_cancel_locked(c->ka.stream);
    c->ka.idle = 1;
  }
  pthread_mutex_unlock(&c->mu);
  lease_unref_n(l, 1 + owned);
}

static void close_one(ec_client *c, ec_lease *l) {
  (void)c;
  if (l->state == EC_KA_ALIVE) lose(l, EC_KA_CLOSED, "etcd: client is closed");
}

static void ka_close_all_locked(ec_client *c) {
  each_lease(c, close_one);
  ec_timer_cancel_locked(c, &c->ka.reopen);
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
  if (c->ka.stream) {
    ec_stream *s = c->ka.stream;
    c->ka.stream = NULL;
    ec_stream_release(s);
  }
}


uint64_t ec_keepalive_token(const ec_lease *l) { return l->ready.token; }

size_t ec_client_nkeepalives(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  size_t n = c->ka.nalive;
  pthread_mutex_unlock(&c->mu);
  return n;
}
