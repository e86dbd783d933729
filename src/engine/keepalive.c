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
  atomic_int refs; /* the caller's and the manager's */
  ec_client *client;
  ec_lease *next;
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

static void lose(ec_lease *l, int state, const char *reason) {
  l->state = state;
  snprintf(l->reason, sizeof l->reason, "%s", reason);
}

/* ---- stream consumer (pump thread, c->mu held) ------------------------ */

static void on_message(void *ud, ec_stream *s, const char *data, size_t len) {
  ec_client *c = ud;
  (void)s;
  Etcdserverpb__LeaseKeepAliveResponse *r =
      etcdserverpb__lease_keep_alive_response__unpack(NULL, len,
                                                      (const uint8_t *)data);
  if (!r) return;
  gpr_timespec now = now_mono();
  for (ec_lease *l = c->ka.leases; l; l = l->next) {
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

static void send_locked(ec_client *c, ec_lease *l, gpr_timespec now) {
  uint8_t buf[16];
  size_t n = encode_request(l->id, buf);
  if (ec_stream_write_locked(c->ka.stream, buf, n) == 0)
    l->next_send = after_ms(now, RETRY_MS);
}

static void open_locked(ec_client *c, gpr_timespec now) {
  char err[128];
  /* Fail fast on a member that is down: the pump tries again in 500 ms on
   * whichever member is ready then, instead of waiting on this one. */
  ec_metadata md[8];
  size_t nmd = ec_stream_md_locked(c, KA_MD, 1, md, 8);
  c->ka.stream = ec_stream_start_locked(c, KA_PATH, -1, -1, md, nmd, 0,
                                        &KA_HOOKS, c, err, sizeof err);
  c->ka.stream_ended = 0;
  if (!c->ka.stream) {
    c->ka.reopen_at = after_ms(now, REOPEN_MS);
    return;
  }
  for (ec_lease *l = c->ka.leases; l; l = l->next)
    if (l->state == EC_KA_ALIVE) l->next_send = now;
}

gpr_timespec ec_ka_deadline_locked(ec_client *c) {
  gpr_timespec dl = gpr_inf_future(GPR_CLOCK_MONOTONIC);
  int alive = 0;
  for (ec_lease *l = c->ka.leases; l; l = l->next) {
    if (l->state != EC_KA_ALIVE) continue;
    alive = 1;
    dl = tmin(dl, tmin(l->next_send, l->expires));
  }
  if (alive && (!c->ka.stream || c->ka.stream_ended))
    dl = tmin(dl, c->ka.reopen_at);
  return dl;
}

void ec_ka_tick(ec_client *c) {
  ec_stream *dead = NULL;
  int changed = 0;
  pthread_mutex_lock(&c->mu);
  if (c->closed || !c->ka.leases) {
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
  size_t alive = 0;
  for (ec_lease *l = c->ka.leases; l; l = l->next) {
    if (l->state != EC_KA_ALIVE) continue;
    if (gpr_time_cmp(now, l->expires) >= 0) {
      char why[160];
      snprintf(why, sizeof why,
               "etcd: lease %" PRIx64 " expired: no answer from etcd before its TTL ran out",
               (uint64_t)l->id);
      lose(l, EC_KA_EXPIRED, why);
      changed = 1;
      continue;
    }
    alive++;
  }
  if (alive && !c->ka.stream && gpr_time_cmp(now, c->ka.reopen_at) >= 0)
    open_locked(c, now);
  if (c->ka.stream) {
    if (!alive) {
      /* nothing left to renew: let the stream go */
      ec_stream_cancel_locked(c->ka.stream);
      c->ka.idle = 1;
    } else {
      for (ec_lease *l = c->ka.leases; l; l = l->next)
        if (l->state == EC_KA_ALIVE && gpr_time_cmp(now, l->next_send) >= 0)
          send_locked(c, l, now);
    }
  }
  pthread_mutex_unlock(&c->mu);
  if (dead) ec_stream_release(dead);
  if (changed) ec_signal(c);
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
  l->next = c->ka.leases;
  c->ka.leases = l;
  c->ka.n++;
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
  /* unlink: the manager's reference goes with it */
  for (ec_lease **p = &c->ka.leases; *p; p = &(*p)->next)
    if (*p == l) {
      *p = l->next;
      c->ka.n--;
      owned = 1;
      break;
    }
  if (l->state == EC_KA_ALIVE) lose(l, EC_KA_CLOSED, "etcd: keep-alive is closed");
  int any = 0;
  for (ec_lease *x = c->ka.leases; x; x = x->next) any |= x->state == EC_KA_ALIVE;
  if (!any && c->ka.stream && !c->closed) {
    ec_stream_cancel_locked(c->ka.stream);
    c->ka.idle = 1;
  }
  pthread_mutex_unlock(&c->mu);
  lease_unref_n(l, 1 + owned);
}

void ec_ka_close_all_locked(ec_client *c) {
  for (ec_lease *l = c->ka.leases; l; l = l->next)
    if (l->state == EC_KA_ALIVE) lose(l, EC_KA_CLOSED, "etcd: client is closed");
}

/* Client teardown (pump stopped): drop the manager's references. */
void ec_ka_free(ec_client *c) {
  ec_lease *l = c->ka.leases;
  c->ka.leases = NULL;
  c->ka.n = 0;
  while (l) {
    ec_lease *next = l->next;
    lease_unref_n(l, 1);
    l = next;
  }
  if (c->ka.stream) {
    ec_stream *s = c->ka.stream;
    c->ka.stream = NULL;
    ec_stream_release(s);
  }
}

size_t ec_client_nkeepalives(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  size_t n = 0;
  for (ec_lease *l = c->ka.leases; l; l = l->next) n += l->state == EC_KA_ALIVE;
  pthread_mutex_unlock(&c->mu);
  return n;
}
