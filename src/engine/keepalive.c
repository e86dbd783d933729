/*
 * Lease keep-alive driven by the pump thread. Every registered lease is
 * renewed on the client's one LeaseKeepAlive stream: a request every 500 ms
 * until etcd answers (as etcd's Go client does), then one every TTL/3. The
 * pump's completion-queue deadline is the timer (gRPC 1.51 has no public
 * timer). The stream carries require-leader metadata and is opened again,
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
#define REOPEN_MS 500

struct ec_lease {
  ec_ready ready;
  atomic_int refs; /* the caller's and the manager's */
  ec_client *client;
  ec_lease *hnext; /* hash chain */
  int registered;  /* in the hash (the manager holds a reference) */
  size_t hidx;     /* position in the deadline heap + 1; 0: not in it */
  int64_t id;
  int state;
  gpr_timespec next_send, expires;
  uint64_t seq;
  ec_ka_response latest;
  char reason[160];
};

static const char *const KA_PATH = "/etcdserverpb.Lease/LeaseKeepAlive";
static const ec_metadata KA_MD[] = {{"hasleader", "true", 4}};

static gpr_timespec now_mono(void) { return gpr_now(GPR_CLOCK_MONOTONIC); }

static gpr_timespec after_ms(gpr_timespec t, int64_t ms) {
  return gpr_time_add(t, gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static gpr_timespec tmin(gpr_timespec a, gpr_timespec b) {
  return gpr_time_cmp(a, b) < 0 ? a : b;
}

/* Drop n references at once (the caller's, and the manager's when it held one). */
static void lease_unref_n(ec_lease *l, int n) {
  if (atomic_fetch_sub(&l->refs, n) != n) return;
  ec_client_unref(l->client);
  free(l);
}

/* ---- the deadline heap and the id hash (c->mu held) ------------------- */

static gpr_timespec key_of(const ec_lease *l) { return tmin(l->next_send, l->expires); }

static int before(const ec_lease *a, const ec_lease *b) {
  return gpr_time_cmp(key_of(a), key_of(b)) < 0;
}

static void heap_put(ec_ka *ka, size_t i, ec_lease *l) {
  ka->heap[i] = l;
  l->hidx = i + 1;
}

static void heap_up(ec_ka *ka, size_t i) {
  ec_lease *l = ka->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!before(l, ka->heap[p])) break;
    heap_put(ka, i, ka->heap[p]);
    i = p;
  }
  heap_put(ka, i, l);
}

static void heap_down(ec_ka *ka, size_t i) {
  ec_lease *l = ka->heap[i];
  for (;;) {
    size_t a = 2 * i + 1, b = a + 1, m = i;
    const ec_lease *best = l;
    if (a < ka->nheap && before(ka->heap[a], best)) m = a, best = ka->heap[a];
    if (b < ka->nheap && before(ka->heap[b], best)) m = b;
    if (m == i) break;
    heap_put(ka, i, ka->heap[m]);
    i = m;
  }
  heap_put(ka, i, l);
}

/* After l's key changed. */
static void heap_fix(ec_ka *ka, ec_lease *l) {
  if (!l->hidx) return;
  heap_up(ka, l->hidx - 1);
  heap_down(ka, l->hidx - 1);
}

static int heap_insert(ec_ka *ka, ec_lease *l) {
  if (ka->nheap == ka->capheap) {
    size_t cap = ka->capheap ? ka->capheap * 2 : 64;
    ec_lease **h = realloc(ka->heap, cap * sizeof(ec_lease *));
    if (!h) return -1;
    ka->heap = h;
    ka->capheap = cap;
  }
  heap_put(ka, ka->nheap++, l);
  heap_up(ka, ka->nheap - 1);
  return 0;
}

static void heap_remove(ec_ka *ka, ec_lease *l) {
  if (!l->hidx) return;
  size_t i = l->hidx - 1;
  l->hidx = 0;
  ec_lease *last = ka->heap[--ka->nheap];
  if (i < ka->nheap) {
    heap_put(ka, i, last);
    heap_up(ka, i);
    heap_down(ka, last->hidx - 1);
  }
}

static size_t bucket_of(const ec_ka *ka, int64_t id) {
  uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ULL;
  return (size_t)(h >> 32) & (ka->nbuckets - 1);
}

static int hash_grow(ec_ka *ka) {
  size_t nb = ka->nbuckets ? ka->nbuckets * 2 : 64;
  ec_lease **b = calloc(nb, sizeof(ec_lease *));
  if (!b) return -1;
  ec_ka old = *ka;
  ka->buckets = b;
  ka->nbuckets = nb;
  for (size_t i = 0; i < old.nbuckets; i++) {
    ec_lease *l = old.buckets[i];
    while (l) {
      ec_lease *next = l->hnext;
      size_t k = bucket_of(ka, l->id);
      l->hnext = b[k];
      b[k] = l;
      l = next;
    }
  }
  free(old.buckets);
  return 0;
}

static int hash_insert(ec_ka *ka, ec_lease *l) {
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

/* With c->mu held: the lease is no longer alive (out of the heap). */
static void lose(ec_lease *l, int state, const char *reason) {
  l->state = state;
  snprintf(l->reason, sizeof l->reason, "%s", reason);
  heap_remove(&l->client->ka, l);
  ec_ready_locked(l->client, &l->ready);
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
  gpr_timespec now = now_mono();
  ec_lease *next;
  for (ec_lease *l = c->ka.buckets[bucket_of(&c->ka, r->id)]; l; l = next) {
    next = l->hnext; /* lose() leaves the chain as it is */
    if (l->id != r->id || l->state != EC_KA_ALIVE) continue;
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
    l->expires = after_ms(now, r->ttl * 1000);
    l->next_send = after_ms(now, r->ttl * 1000 / 3);
    heap_fix(&c->ka, l);
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

static size_t encode_request(int64_t id, uint8_t *buf) {
  Etcdserverpb__LeaseKeepAliveRequest req =
      ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
  req.id = id;
  return etcdserverpb__lease_keep_alive_request__pack(&req, buf);
}

/* Send a renewal now (if the stream takes it); either way the next try is
 * RETRY_MS from now, until etcd answers. */
static void send_locked(ec_client *c, ec_lease *l, gpr_timespec now) {
  uint8_t buf[16];
  size_t n = encode_request(l->id, buf);
  if (c->ka.stream && !c->ka.stream_ended)
    ec_stream_write_locked(c->ka.stream, buf, n);
  l->next_send = after_ms(now, RETRY_MS);
  heap_fix(&c->ka, l);
}

static void open_locked(ec_client *c, gpr_timespec now) {
  char err[128];
  /* Fail fast on a member that is down: the pump tries again in 500 ms on
   * whichever member is ready then, instead of waiting on this one. */
  ec_metadata md[EC_MAX_METADATA + 1];
  size_t nmd = ec_stream_md_locked(c, KA_MD, 1, md, EC_MAX_METADATA + 1);
  c->ka.stream = ec_stream_start_locked(c, KA_PATH, -1, -1, md, nmd, 0,
                                        &KA_HOOKS, c, err, sizeof err);
  c->ka.stream_ended = 0;
  if (!c->ka.stream) {
    c->ka.reopen_at = after_ms(now, REOPEN_MS);
    return;
  }
  /* a new stream: every alive lease is due now (the order stays a heap) */
  for (size_t i = 0; i < c->ka.nheap; i++)
    c->ka.heap[i]->next_send = now;
  for (size_t i = c->ka.nheap; i-- > 0;) heap_down(&c->ka, i);
}

gpr_timespec ec_ka_deadline_locked(ec_client *c) {
  gpr_timespec dl = gpr_inf_future(GPR_CLOCK_MONOTONIC);
  if (!c->ka.nheap) return dl;
  dl = key_of(c->ka.heap[0]);
  if (!c->ka.stream || c->ka.stream_ended) dl = tmin(dl, c->ka.reopen_at);
  return dl;
}

void ec_ka_tick(ec_client *c) {
  ec_stream *dead = NULL;
  pthread_mutex_lock(&c->mu);
  if (c->closed || (!c->ka.nheap && !c->ka.stream)) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  gpr_timespec now = now_mono();
  if (c->ka.stream && c->ka.stream_ended) {
    dead = c->ka.stream;
    c->ka.stream = NULL;
    c->ka.stream_ended = 0;
    /* a stream we let go when nothing needed it is no break: no back-off */
    c->ka.reopen_at = c->ka.idle ? now : after_ms(now, REOPEN_MS);
    c->ka.idle = 0;
  }
  if (c->ka.nheap && !c->ka.stream && gpr_time_cmp(now, c->ka.reopen_at) >= 0)
    open_locked(c, now);
  /* what is due: expire the late, renew the rest */
  while (c->ka.nheap && gpr_time_cmp(key_of(c->ka.heap[0]), now) <= 0) {
    ec_lease *l = c->ka.heap[0];
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
  if (c->ka.stream && !c->ka.nheap && !c->ka.idle) {
    /* nothing left to renew: let the stream go */
    ec_stream_cancel_locked(c->ka.stream);
    c->ka.idle = 1;
  }
  pthread_mutex_unlock(&c->mu);
  if (dead) ec_stream_release(dead);
}

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
  l->id = id;
  l->latest.id = id;
  pthread_mutex_lock(&c->mu);
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    snprintf(err, errlen, "client closed");
    atomic_store(&l->refs, 1);
    lease_unref_n(l, 1);
    return NULL;
  }
  gpr_timespec now = now_mono();
  l->expires = after_ms(now, first_timeout_ms);
  l->next_send = now;
  if (hash_insert(&c->ka, l) != 0) {
    pthread_mutex_unlock(&c->mu);
    snprintf(err, errlen, "out of memory");
    atomic_store(&l->refs, 1);
    lease_unref_n(l, 1);
    return NULL;
  }
  l->registered = 1;
  if (heap_insert(&c->ka, l) != 0) {
    hash_remove(&c->ka, l);
    pthread_mutex_unlock(&c->mu);
    snprintf(err, errlen, "out of memory");
    atomic_store(&l->refs, 1);
    lease_unref_n(l, 1);
    return NULL;
  }
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
  /* Send the first request from here: its completion wakes the pump, which
   * then schedules this lease (the pump may be asleep with no deadline). */
  if (c->ka.stream) send_locked(c, l, now);
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
  if (!c->ka.nheap && c->ka.stream && !c->closed && !c->ka.idle) {
    ec_stream_cancel_locked(c->ka.stream);
    c->ka.idle = 1;
  }
  pthread_mutex_unlock(&c->mu);
  lease_unref_n(l, 1 + owned);
}

void ec_ka_close_all_locked(ec_client *c) {
  while (c->ka.nheap) lose(c->ka.heap[0], EC_KA_CLOSED, "etcd: client is closed");
}

/* Client teardown (pump stopped): drop the manager's references. */
void ec_ka_free(ec_client *c) {
  for (size_t i = 0; i < c->ka.nbuckets; i++) {
    ec_lease *l = c->ka.buckets[i];
    while (l) {
      ec_lease *next = l->hnext;
      l->registered = 0;
      l->hidx = 0;
      lease_unref_n(l, 1);
      l = next;
    }
  }
  free(c->ka.buckets);
  free(c->ka.heap);
  c->ka.buckets = NULL;
  c->ka.heap = NULL;
  c->ka.nbuckets = c->ka.nheap = c->ka.capheap = c->ka.n = 0;
  if (c->ka.stream) {
    ec_stream *s = c->ka.stream;
    c->ka.stream = NULL;
    ec_stream_release(s);
  }
}

uint64_t ec_keepalive_token(const ec_lease *l) { return l->ready.token; }

size_t ec_client_nkeepalives(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  size_t n = c->ka.nheap;
  pthread_mutex_unlock(&c->mu);
  return n;
}
