#define _GNU_SOURCE
/*
 * Client, channels, pump thread and unary calls over gRPC's C core.
 * No lua.h here: see engine.h.
 */
#include "internal.h"
#include "pbwalk.h"
#include "etcdserverpb/rpc.pb-c.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

struct ec_call {
  ec_tag tag;
  ec_ready ready;
  atomic_int refs;
  atomic_int done;
  ec_client *client;
  grpc_call *call; /* owned until the batch completes; guarded by client->mu */
  int chan;
  int picked;         /* the client chose the channel (no endpoint given) */
  int64_t timeout_ms; /* the call's deadline, from its start */
  int end;
  ec_call *prev, *next;
  /* the batch */
  grpc_metadata *send_md;
  size_t nsend_md;
  grpc_byte_buffer *send_buf;
  grpc_byte_buffer *recv_buf;
  grpc_metadata_array recv_md;
  grpc_metadata_array trail_md;
  grpc_status_code status;
  grpc_slice details;
  const char *error_string;
  /* results, plain memory once done */
  char *response;
  size_t response_len;
  char *message;
  /* the engine's own call (no token, nobody waits): called when it ended,
   * with c->mu held */
  void (*hook)(ec_client *c, ec_call *k);
};

static void call_unlist_locked(ec_client *c, ec_call *k);
static int internal_call_locked(ec_client *c, const char *path, const void *req,
                                size_t reqlen, int64_t timeout_ms, int chan,
                                void (*hook)(ec_client *, ec_call *));

/* ---------------------------------------------------------------------- */
/* process-wide gRPC start                                                  */

static pthread_mutex_t global_mu = PTHREAD_MUTEX_INITIALIZER;
static long global_pid;

/* This process's pid, kept without a syscall: set by the first init and by
 * the fork() child handler. In a child only the thread that forked exists,
 * and a client's lock may have been held by another thread at the fork, to
 * be released never: a parent's client is then touched without its lock
 * (ec_client_forked), and every call on it fails "forked" before any. */
static long self_pid;
static void atfork_child(void) { self_pid = (long)getpid(); }

int ec_client_forked(const ec_client *c) { return c->pid != self_pid; }

/* c->mu, unless this is a fork() child (see self_pid): returns whether it
 * was taken, for unlock_if. */
static int lock_unless_forked(ec_client *c) {
  if (ec_client_forked(c)) return 0;
  pthread_mutex_lock(&c->mu);
  return 1;
}
static void unlock_if(ec_client *c, int locked) {
  if (locked) pthread_mutex_unlock(&c->mu);
}

static void log_sink(gpr_log_func_args *args) {
  /* gRPC's own log lines stay off stderr unless asked for. */
  static int want = -1;
  if (want < 0) want = getenv("LUA_ETCD_GRPC_LOG") != NULL;
  if (want)
    fprintf(stderr, "grpc %s %s:%d %s\n", gpr_log_severity_string(args->severity),
            args->file, args->line, args->message);
}

/* Debian's Abseil is built without NDEBUG, so every absl::Mutex lock (all
 * of gRPC's locks) runs its debug-only deadlock detector: a graph of lock
 * order, about 5 % of the instructions of a call. Turn it off, as a release
 * build has it (OnDeadlockCycle::kIgnore is 0). Looked up by name, so a
 * build of Abseil without the symbol (or another spelling of its inline
 * namespace) simply keeps its default. */
static void quiet_absl_deadlock_check(void) {
  static const char *const names[] = {
      "_ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE",
      "_ZN4absl29SetMutexDeadlockDetectionModeENS_15OnDeadlockCycleE",
  };
  const char *keep = getenv("LUA_ETCD_ABSL_DEADLOCK_CHECK");
  if (keep && *keep && strcmp(keep, "0") != 0) return;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    void *f = dlsym(RTLD_DEFAULT, names[i]);
    if (f) {
      void (*set)(int);
      memcpy(&set, &f, sizeof set);
      set(0);
      return;
    }
  }
}

int ec_global_init(void) {
  int rc = 0;
  pthread_mutex_lock(&global_mu);
  if (global_pid == 0) {
    gpr_set_log_function(log_sink);
    quiet_absl_deadlock_check();
    grpc_init();
    global_pid = self_pid = (long)getpid();
    pthread_atfork(NULL, NULL, atfork_child);
  } else if (global_pid != (long)getpid()) {
    rc = -1;
  }
  pthread_mutex_unlock(&global_mu);
  return rc;
}

long ec_global_pid(void) {
  long p;
  pthread_mutex_lock(&global_mu);
  p = global_pid;
  pthread_mutex_unlock(&global_mu);
  return p;
}

/* ---------------------------------------------------------------------- */
/* helpers                                                                  */

gpr_timespec ec_deadline_in(int64_t ms) {
  if (ms < 0) return gpr_inf_future(GPR_CLOCK_MONOTONIC);
  return ec_after_ms(ec_now(), ms);
}

void ec_signal(ec_client *c) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(c->efd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
  /* EAGAIN means the counter is already huge: a wake-up is pending anyway. */
}

/* ---------------------------------------------------------------------- */
/* the completion protocol (engine.h)                                       */

static atomic_uint_fast64_t token_counter;

uint64_t ec_token_new(void) { return (uint64_t)atomic_fetch_add(&token_counter, 1) + 1; }

void ec_ready_locked(ec_client *c, ec_ready *r) {
  if (!r->token || r->gen == c->reap_gen) return;
  ec_tokens *t = &c->ready;
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    uint64_t *v = realloc(t->v, cap * sizeof *v);
    if (!v) {
      /* cannot list it: the next reap wakes everyone instead */
      c->ready_all = 1;
      ec_signal(c);
      return;
    }
    t->v = v;
    t->cap = cap;
  }
  r->gen = c->reap_gen;
  t->v[t->n++] = r->token;
  if (t->n == 1) ec_signal(c);
}

static void drain_fd(ec_client *c) {
  uint64_t v;
  ssize_t n;
  do {
    n = read(c->efd, &v, sizeof v);
  } while (n < 0 && errno == EINTR);
}

size_t ec_client_reap(ec_client *c, const uint64_t **out, int *all) {
  /* Drain first: a token listed after the swap below signals again. */
  drain_fd(c);
  int locked = lock_unless_forked(c);
  if (c->reaped.n == 0) {
    ec_tokens t = c->reaped;
    c->reaped = c->ready;
    c->ready = t;
    c->reap_gen++;
  } else if (c->ready.n || c->ready_all) {
    /* the last reap was not finished (its reader raised): hand that out
     * first, and keep the fd readable for what came since */
    ec_signal(c);
  }
  *all = c->ready_all;
  c->ready_all = 0;
  unlock_if(c, locked);
  *out = c->reaped.v;
  return c->reaped.n;
}

void ec_client_reap_done(ec_client *c) { c->reaped.n = 0; }

uint64_t ec_client_token(const ec_client *c) { return c->self.token; }

char *ec_dup_slice(grpc_slice s) {
  size_t n = GRPC_SLICE_LENGTH(s);
  char *p = malloc(n + 1);
  if (p) {
    memcpy(p, GRPC_SLICE_START_PTR(s), n);
    p[n] = 0;
  }
  return p;
}

static void free_md(ec_metadata *md, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free((char *)md[i].key);
    free((char *)md[i].value);
  }
  free(md);
}

void ec_client_unref(ec_client *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1) return;
  free_md(c->md, c->nmd);
  for (size_t i = 0; i < c->nchan; i++) free(c->chans[i].target);
  free(c->chans);
  free(c->server_name);
  if (c->creds) grpc_channel_credentials_release(c->creds);
  free(c->ready.v);
  free(c->reaped.v);
  if (c->efd >= 0) close(c->efd);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->pump_cv);
  free(c);
}

/* ---------------------------------------------------------------------- */
/* the deadline heap (c->mu held)                                           */

gpr_timespec ec_now(void) { return gpr_now(GPR_CLOCK_MONOTONIC); }

gpr_timespec ec_after_ms(gpr_timespec t, int64_t ms) {
  return gpr_time_add(t, gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static void heap_put(ec_timers *h, size_t i, ec_timer *t) {
  h->v[i] = t;
  t->idx = i + 1;
}

static void heap_up(ec_timers *h, size_t i) {
  ec_timer *t = h->v[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (gpr_time_cmp(t->at, h->v[p]->at) >= 0) break;
    heap_put(h, i, h->v[p]);
    i = p;
  }
  heap_put(h, i, t);
}

static void heap_down(ec_timers *h, size_t i) {
  ec_timer *t = h->v[i];
  for (;;) {
    size_t a = 2 * i + 1, b = a + 1, m = i;
    const ec_timer *best = t;
    if (a < h->n && gpr_time_cmp(h->v[a]->at, best->at) < 0) m = a, best = h->v[a];
    if (b < h->n && gpr_time_cmp(h->v[b]->at, best->at) < 0) m = b;
    if (m == i) break;
    heap_put(h, i, h->v[m]);
    i = m;
  }
  heap_put(h, i, t);
}

int ec_timer_set_locked(ec_client *c, ec_timer *t, gpr_timespec at) {
  ec_timers *h = &c->timers;
  t->at = at;
  if (t->idx) {
    heap_up(h, t->idx - 1);
    heap_down(h, t->idx - 1);
    return 0;
  }
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    ec_timer **v = realloc(h->v, cap * sizeof(ec_timer *));
    if (!v) return -1;
    h->v = v;
    h->cap = cap;
  }
  heap_put(h, h->n++, t);
  heap_up(h, h->n - 1);
  return 0;
}

void ec_timer_cancel_locked(ec_client *c, ec_timer *t) {
  ec_timers *h = &c->timers;
  if (!t->idx) return;
  size_t i = t->idx - 1;
  t->idx = 0;
  ec_timer *last = h->v[--h->n];
  if (i < h->n) {
    heap_put(h, i, last);
    heap_up(h, i);
    heap_down(h, last->idx - 1);
  }
}

/* ---------------------------------------------------------------------- */
/* pump thread                                                              */

void ec_manager_register_locked(ec_client *c, const ec_manager *m) {
  for (size_t i = 0; i < c->nmanagers; i++)
    if (c->managers[i] == m) return;
  if (c->nmanagers < EC_MAX_MANAGERS) c->managers[c->nmanagers++] = m;
}

/* After a completion (or a timeout) of the queue, on whichever thread
 * drives it: what is due, then each manager's tick (managers register from
 * the Lua thread: the list is copied under the same lock). */
static void after_event(ec_client *c) {
  const ec_manager *ms[EC_MAX_MANAGERS];
  pthread_mutex_lock(&c->mu);
  if (!c->closed) {
    gpr_timespec now = ec_now();
    while (c->timers.n && gpr_time_cmp(c->timers.v[0]->at, now) <= 0) {
      ec_timer *t = c->timers.v[0];
      ec_timer_cancel_locked(c, t);
      t->fire(c, t);
    }
  }
  size_t nm = c->nmanagers;
  for (size_t i = 0; i < nm; i++) ms[i] = c->managers[i];
  pthread_mutex_unlock(&c->mu);
  for (size_t i = 0; i < nm; i++) ms[i]->tick(c);
}

/* One turn of the queue, by whichever thread drives it: the next event
 * (or none by `dl`), its handler, then after_event. Returns the event's
 * type. */
static grpc_completion_type run_once(ec_client *c, gpr_timespec dl) {
  grpc_event ev = grpc_completion_queue_next(c->cq, dl, NULL);
  if (ev.type == GRPC_QUEUE_SHUTDOWN) return ev.type;
  if (ev.type == GRPC_OP_COMPLETE) {
    ec_tag *t = ev.tag;
    t->done(t, ev.success);
  }
  after_event(c);
  return ev.type;
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Milliseconds from now to `until` (CLOCK_MONOTONIC ns), rounded up, at
 * least 0, at most INT32_MAX; -1 for INT64_MAX (no limit). */
static int ms_left(int64_t until) {
  if (until == INT64_MAX) return -1;
  int64_t ms = (until - mono_ns() + 999999) / 1000000;
  return ms < 0 ? 0 : ms > INT32_MAX ? INT32_MAX : (int)ms;
}

/* The pump leaves the queue to the Lua thread for this long after the Lua
 * thread last drove it: a program that makes calls comes back within
 * microseconds, and its completions then never cross threads. While the Lua
 * thread drives, the pump looks again every EC_PUMP_LOOK_NS (the Lua thread
 * does not signal it when it stops: that would wake it once per wait). */
#define EC_HANDOVER_NS 2000000
#define EC_PUMP_LOOK_NS 20000000

static void *pump_main(void *arg) {
  ec_client *c = arg;
  /* named, so tools (and the specs) can tell our threads from gRPC's */
  pthread_setname_np(pthread_self(), "lua-etcd-pump");
  pthread_mutex_lock(&c->mu);
  for (;;) {
    /* Not while the Lua thread drives, nor in the moment after (it is
     * likely to be back); never once the client is closing: then the pump
     * alone drains the queue to its shutdown. */
    for (;;) {
      if (c->closed) break;
      int64_t until = c->driver == EC_DRIVER_LUA ? mono_ns() + EC_PUMP_LOOK_NS
                                                 : c->released + EC_HANDOVER_NS;
      if (c->driver == EC_DRIVER_NONE && mono_ns() >= until) break;
      struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
      pthread_cond_timedwait(&c->pump_cv, &c->mu, &ts);
    }
    c->driver = EC_DRIVER_PUMP;
    /* The completion queue's deadline is the earliest timer. */
    gpr_timespec dl = c->timers.n ? c->timers.v[0]->at
                                  : gpr_inf_future(GPR_CLOCK_MONOTONIC);
    pthread_mutex_unlock(&c->mu);
    if (run_once(c, dl) == GRPC_QUEUE_SHUTDOWN) break;
    pthread_mutex_lock(&c->mu);
    c->driver = EC_DRIVER_NONE;
    if (c->lua_wants) {
      /* the Lua thread waits on the fd: hand it the queue */
      c->released = mono_ns();
      ec_signal(c);
    }
  }
  return NULL;
}

/* ---------------------------------------------------------------------- */
/* channels and connectivity                                                */

/* Every channel's connectivity is watched from the dial on, one watch after
 * the other (a watch ends at a change of state or after EC_CHAN_WATCH_S):
 * etcd.new's dial waits on the client's token for a channel to become
 * READY, and a READY channel that leaves READY is a lost connection
 * (`drops`: the leader fence in rpc.lua starts from it). Until the dial's
 * `watch_until` a channel not READY is also asked to connect. The watches
 * end when the channels are destroyed (ec_client_close). */
#define EC_CHAN_WATCH_S 300

static void chan_watch_locked(ec_client *c, ec_chan *ch, grpc_connectivity_state st) {
  grpc_channel_watch_connectivity_state(
      ch->channel, st,
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(EC_CHAN_WATCH_S, GPR_TIMESPAN)),
      c->cq, &ch->tag);
  ch->watching = 1;
}

static void chan_watch_done(ec_tag *tag, int ok) {
  (void)ok; /* a change or the watch's own deadline: look again either way */
  ec_chan *ch = (ec_chan *)tag;
  ec_client *c = ch->client;
  pthread_mutex_lock(&c->mu);
  ch->watching = 0;
  ec_ready_locked(c, &c->self);
  if (!c->closed && ch->channel) {
    int dialing = gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), ch->watch_until) < 0;
    grpc_connectivity_state st = grpc_channel_check_connectivity_state(ch->channel, dialing);
    if (ch->seen == GRPC_CHANNEL_READY && st != GRPC_CHANNEL_READY && !ch->retired) {
      c->drops++;
      c->drop_chan = (size_t)(ch - c->chans);
    }
    ch->seen = st;
    chan_watch_locked(c, ch, st);
  }
  pthread_mutex_unlock(&c->mu);
}

void ec_client_dial(ec_client *c, int64_t timeout_ms) {
  pthread_mutex_lock(&c->mu);
  if (!c->closed) {
    gpr_timespec until = ec_deadline_in(timeout_ms);
    for (size_t i = 0; i < c->nchan; i++) {
      ec_chan *ch = &c->chans[i];
      ch->watch_until = until;
      grpc_connectivity_state st =
          grpc_channel_check_connectivity_state(ch->channel, 1);
      if (!ch->watching) {
        ch->seen = st;
        chan_watch_locked(c, ch, st);
      }
    }
  }
  pthread_mutex_unlock(&c->mu);
}

uint64_t ec_client_drops(ec_client *c, size_t *chan) {
  int locked = lock_unless_forked(c);
  uint64_t n = c->drops;
  *chan = c->drop_chan;
  unlock_if(c, locked);
  return n;
}

int ec_client_ready(ec_client *c) {
  int ready = 0;
  pthread_mutex_lock(&c->mu);
  if (!c->closed)
    for (size_t i = 0; i < c->nchan && !ready; i++)
      ready = !c->chans[i].retired &&
              grpc_channel_check_connectivity_state(c->chans[i].channel, 0) ==
                  GRPC_CHANNEL_READY;
  pthread_mutex_unlock(&c->mu);
  return ready;
}

/* How good a channel is for a call starting now. */
static int chan_rank(grpc_connectivity_state st) {
  switch (st) {
  case GRPC_CHANNEL_READY:
    return 3;
  case GRPC_CHANNEL_CONNECTING:
  case GRPC_CHANNEL_IDLE: /* asked to connect just now */
    return 2;
  case GRPC_CHANNEL_TRANSIENT_FAILURE:
    return 1;
  default:
    return 0;
  }
}

/* Choose the channel for a call: the current one while it is ready, else the
 * next ready one, else one still trying over one that failed (the current
 * one on a tie); the call then waits for it. Called with c->mu held.
 *
 * When the current one is not ready, every channel is asked to connect: gRPC
 * leaves a channel IDLE once its connection is gone (pick_first), and only a
 * call or this request makes it connect again. Asking the current one alone
 * left a member that had died and come back idle for good: when the member
 * in use died in turn, no other channel was ever ready. (Go's balancer keeps
 * a connection to every endpoint the same way.) */
/* A channel passed over (ec_chan_avoid_locked) ranks below one that is
 * still connecting, above one that failed. */
static int chan_score(ec_client *c, size_t i) {
  if (c->chans[i].retired) return -100;
  int r = chan_rank(grpc_channel_check_connectivity_state(c->chans[i].channel, 1));
  return c->chans[i].avoid ? 2 * r - 3 : 2 * r;
}

size_t ec_pick_channel(ec_client *c) {
  size_t pick = c->current;
  int best = chan_score(c, pick);
  if (best == 6) return pick;
  for (size_t k = 1; k < c->nchan; k++) {
    size_t i = (c->current + k) % c->nchan;
    int r = chan_score(c, i);
    if (r > best) {
      best = r;
      pick = i;
    }
  }
  c->current = pick;
  return pick;
}

int ec_elsewhere_locked(const ec_client *c) {
  size_t live = 0;
  for (size_t i = 0; i < c->nchan && live < 2; i++) live += !c->chans[i].retired;
  return live > 1;
}

/* A member passed over is asked how it is (Status, failing fast) every
 * EC_PROBE_MS, each time with EC_PROBE_MS to answer, until it answers: any
 * answer ends its avoidance (unary_done). */
#define EC_PROBE_MS 1000

static void probe_done(ec_client *c, ec_call *k) {
  ec_chan *ch = &c->chans[k->chan];
  ch->probing = 0;
  if (!c->closed && ch->avoid && !ch->retired)
    ec_timer_set_locked(c, &ch->probe, ec_after_ms(ec_now(), EC_PROBE_MS));
}

static void probe_fire(ec_client *c, ec_timer *t) {
  ec_chan *ch = (ec_chan *)((char *)t - offsetof(ec_chan, probe));
  if (!ch->avoid || ch->retired || ch->probing) return;
  int i = (int)(ch - c->chans);
  if (internal_call_locked(c, "/etcdserverpb.Maintenance/Status", "", 0, EC_PROBE_MS, i,
                           probe_done) == 0)
    ch->probing = 1;
  else if (!c->closed)
    ec_timer_set_locked(c, &ch->probe, ec_after_ms(ec_now(), EC_PROBE_MS));
}

void ec_chan_avoid_locked(ec_client *c, size_t i) {
  if (i >= c->nchan || !ec_elsewhere_locked(c)) return;
  ec_chan *ch = &c->chans[i];
  ch->avoid = 1;
  ch->probe.fire = probe_fire;
  if (!ch->probing && !ch->probe.idx)
    ec_timer_set_locked(c, &ch->probe, ec_after_ms(ec_now(), EC_PROBE_MS));
  if (c->current == i) ec_pick_channel(c);
}

void ec_chan_answered_locked(ec_client *c, size_t i) {
  if (i >= c->nchan) return;
  c->chans[i].avoid = 0;
  ec_timer_cancel_locked(c, &c->chans[i].probe);
}

size_t ec_client_navoided(ec_client *c) {
  size_t n = 0;
  pthread_mutex_lock(&c->mu);
  for (size_t i = 0; i < c->nchan; i++) n += (size_t)c->chans[i].avoid;
  pthread_mutex_unlock(&c->mu);
  return n;
}

/* ---------------------------------------------------------------------- */
/* client                                                                   */

ec_client *ec_client_new(const ec_config *cfg, char *err, size_t errlen) {
  if (ec_global_init() != 0) {
    snprintf(err, errlen, "gRPC was started in another process (fork)");
    return NULL;
  }
  if (cfg->ntargets == 0 || cfg->ntargets > EC_MAX_ENDPOINTS) {
    snprintf(err, errlen, "1 to %d endpoints expected", EC_MAX_ENDPOINTS);
    return NULL;
  }
  ec_client *c = calloc(1, sizeof *c);
  if (!c) goto oom;
  atomic_init(&c->refs, 1);
  atomic_init(&c->starting, 0);
  c->efd = -1;
  pthread_mutex_init(&c->mu, NULL);
  {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->pump_cv, &ca);
    pthread_condattr_destroy(&ca);
  }
  {
    const char *po = getenv("LUA_ETCD_PUMP_ONLY");
    c->lua_drives = !(po && *po && strcmp(po, "0") != 0);
  }
  c->pid = (long)getpid();
  c->self.token = ec_token_new();
  c->reap_gen = 1;
  c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c->efd < 0) {
    snprintf(err, errlen, "eventfd: %s", strerror(errno));
    ec_client_unref(c);
    return NULL;
  }
  c->chans = calloc(EC_MAX_ENDPOINTS, sizeof *c->chans);
  if (!c->chans) goto oom;
  c->nchan = cfg->ntargets;
  for (size_t i = 0; i < c->nchan; i++)
    if (!(c->chans[i].target = strdup(cfg->targets[i]))) goto oom;

  grpc_arg *args = c->chan_args;
  int na = 0;
#define INT_ARG(k, v)                                                          \
  do {                                                                         \
    args[na].type = GRPC_ARG_INTEGER;                                          \
    args[na].key = (char *)(k);                                                \
    args[na].value.integer = (v);                                              \
    na++;                                                                      \
  } while (0)
  /* etcd's Go client: 2 MiB send limit, no practical receive limit. */
  c->max_send = cfg->max_send_size > 0 ? (size_t)cfg->max_send_size : (size_t)2 << 20;
  INT_ARG(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, (int)c->max_send);
  INT_ARG(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
          cfg->max_recv_size > 0 ? cfg->max_recv_size : 0x7fffffff);
  /* Each client has its own connections: closing one never disturbs another. */
  INT_ARG(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  /* Keep-alive pings detect a hung member; never more often than etcd's 5 s
   * minimum, and only while calls are active (etcd refuses idle pings). */
  INT_ARG(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  INT_ARG(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  INT_ARG(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  /* Reconnect quickly after a member restarts. */
  INT_ARG(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  INT_ARG(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  INT_ARG(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
#undef INT_ARG
  if (cfg->tls && cfg->server_name) {
    if (!(c->server_name = strdup(cfg->server_name))) goto oom;
    args[na].type = GRPC_ARG_STRING;
    args[na].key = (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
    args[na].value.string = c->server_name;
    na++;
  }
  c->nchan_args = (size_t)na;
  grpc_channel_args chargs = {c->nchan_args, args};

  c->cq = grpc_completion_queue_create_for_next(NULL);
  c->tls = cfg->tls != 0;
  grpc_channel_credentials *creds;
  if (cfg->tls) {
    /* Verification is always on: no option turns it off. */
    grpc_ssl_pem_key_cert_pair pair = {cfg->key_pem, cfg->cert_pem};
    creds = grpc_ssl_credentials_create(
        cfg->ca_pem, cfg->cert_pem && cfg->key_pem ? &pair : NULL, NULL, NULL);
  } else {
    creds = grpc_insecure_credentials_create();
  }
  if (!creds) {
    snprintf(err, errlen, "cannot create TLS credentials");
    grpc_completion_queue_shutdown(c->cq);
    while (grpc_completion_queue_next(c->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                      NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(c->cq);
    c->cq = NULL;
    c->closed = 1;
    ec_client_unref(c);
    return NULL;
  }
  for (size_t i = 0; i < c->nchan; i++) {
    ec_chan *ch = &c->chans[i];
    ch->tag.done = chan_watch_done;
    ch->client = c;
    ch->channel = grpc_channel_create(ch->target, creds, &chargs);
  }
  c->creds = creds; /* for the channels added later; released with the client */

  if (pthread_create(&c->pump, NULL, pump_main, c) != 0) {
    snprintf(err, errlen, "cannot start the pump thread");
    ec_client_close(c);
    ec_client_unref(c);
    return NULL;
  }
  c->pump_started = 1;
  return c;

oom:
  snprintf(err, errlen, "out of memory");
  if (c) ec_client_unref(c);
  return NULL;
}

void ec_client_close(ec_client *c) {
  if (ec_client_forked(c)) {
    /* A fork() child: gRPC's threads do not exist here, and the lock may
     * be held for good. Touch nothing but the flag. */
    c->closed = 1;
    return;
  }
  pthread_mutex_lock(&c->mu);
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  c->closed = 1;
  pthread_cond_signal(&c->pump_cv); /* the pump drains the queue from now on */
  for (ec_call *k = c->inflight; k; k = k->next) {
    k->end = EC_END_CLOSED;
    grpc_call_cancel_with_status(k->call, GRPC_STATUS_CANCELLED,
                                 "client closed", NULL);
  }
  ec_streams_cancel_all(c);
  for (size_t i = 0; i < c->nmanagers; i++) c->managers[i]->close_all_locked(c);
  pthread_mutex_unlock(&c->mu);
  /* A unary call made before `closed` was set may still be starting its
   * batch (ec_unary_start): let it, before the queue shuts down. */
  while (atomic_load(&c->starting) > 0) sched_yield();
  /* Pending connectivity watches complete when their channel is destroyed. */
  for (size_t i = 0; i < c->nchan; i++)
    if (c->chans[i].channel) {
      grpc_channel_destroy(c->chans[i].channel);
      c->chans[i].channel = NULL;
    }
  if (c->cq) {
    grpc_completion_queue_shutdown(c->cq);
    /* The pump sees GRPC_QUEUE_SHUTDOWN only after every tag completed. */
    if (c->pump_started) {
      pthread_join(c->pump, NULL);
    } else {
      while (grpc_completion_queue_next(c->cq,
                                        gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                        NULL).type != GRPC_QUEUE_SHUTDOWN) {
      }
    }
    grpc_completion_queue_destroy(c->cq);
    c->cq = NULL;
  }
  for (size_t i = 0; i < c->nmanagers; i++) c->managers[i]->free(c);
  free(c->timers.v);
  c->timers.v = NULL;
  c->timers.n = c->timers.cap = 0;
  /* Every call, stream, watch and keep-alive listed itself as it ended; the
   * client's own token wakes whoever waits for connectivity. */
  pthread_mutex_lock(&c->mu);
  ec_ready_locked(c, &c->self);
  pthread_mutex_unlock(&c->mu);
}

void ec_client_release(ec_client *c) {
  ec_client_close(c);
  ec_client_unref(c);
}

int ec_client_closed(const ec_client *c) {
  ec_client *m = (ec_client *)c;
  int locked = lock_unless_forked(m);
  int v = m->closed;
  unlock_if(m, locked);
  return v;
}

long ec_client_pid(const ec_client *c) { return c->pid; }
int ec_client_fd(const ec_client *c) { return c->efd; }

size_t ec_client_current(ec_client *c) {
  if (ec_client_forked(c)) return c->current;
  pthread_mutex_lock(&c->mu);
  size_t i = c->closed ? c->current : ec_pick_channel(c);
  pthread_mutex_unlock(&c->mu);
  return i;
}

/* With c->mu held: see ec_client_add_target. */
static int add_target_locked(ec_client *c, const char *target, char *err, size_t errlen) {
  if (c->closed) {
    snprintf(err, errlen, "client closed");
    return -1;
  }
  for (size_t i = 0; i < c->nchan; i++)
    if (!strcmp(c->chans[i].target, target)) {
      if (c->chans[i].retired) c->chan_gen++;
      c->chans[i].retired = 0;
      return (int)i;
    }
  if (c->nchan >= EC_MAX_ENDPOINTS) {
    snprintf(err, errlen, "more than %d endpoints", EC_MAX_ENDPOINTS);
    return -1;
  }
  ec_chan *ch = &c->chans[c->nchan];
  memset(ch, 0, sizeof *ch);
  if (!(ch->target = strdup(target))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  grpc_channel_args chargs = {c->nchan_args, c->chan_args};
  ch->tag.done = chan_watch_done;
  ch->client = c;
  ch->channel = grpc_channel_create(ch->target, c->creds, &chargs);
  /* connect now, as etcd.new's dial does for the first ones, and watch it */
  ch->seen = grpc_channel_check_connectivity_state(ch->channel, 1);
  chan_watch_locked(c, ch, ch->seen);
  c->chan_gen++;
  return (int)c->nchan++;
}

int ec_client_add_target(ec_client *c, const char *target, char *err, size_t errlen) {
  pthread_mutex_lock(&c->mu);
  int r = add_target_locked(c, target, err, errlen);
  pthread_mutex_unlock(&c->mu);
  return r;
}

/* With c->mu held: see ec_client_retire. */
static int retire_locked(ec_client *c, size_t i) {
  if (i >= c->nchan) return -1;
  if (c->chans[i].retired) return 0;
  if (!ec_elsewhere_locked(c)) return -1;
  c->chans[i].retired = 1;
  c->chan_gen++;
  ec_timer_cancel_locked(c, &c->chans[i].probe);
  if (c->current == i) ec_pick_channel(c);
  /* the engine's own streams there (watch, keep-alive) end now and are
   * opened again elsewhere, as after a break */
  ec_streams_cancel_engine_on_locked(c, (int)i);
  return 0;
}

int ec_client_retire(ec_client *c, size_t i) {
  pthread_mutex_lock(&c->mu);
  int r = retire_locked(c, i);
  pthread_mutex_unlock(&c->mu);
  return r;
}

uint64_t ec_client_chan_gen(ec_client *c) {
  int locked = lock_unless_forked(c);
  uint64_t g = c->chan_gen;
  unlock_if(c, locked);
  return g;
}

/* ---------------------------------------------------------------------- */
/* auto-sync: the endpoints follow etcd's member list, in the background   */

/* The gRPC target of client URL `url` ("http://h:p/" -> "h:p") into buf:
 * 1, or 0 when its scheme is not the client's (https:// for a TLS client,
 * anything else for a plaintext one) or it does not fit. cluster.lua's
 * cli:sync applies the same rule. */
static int url_target(const char *url, int tls, char *buf, size_t len) {
  int https = !strncmp(url, "https://", 8);
  if (https != !!tls) return 0;
  const char *p = https ? url + 8 : !strncmp(url, "http://", 7) ? url + 7 : url;
  size_t n = strlen(p);
  if (n && p[n - 1] == '/') n--;
  if (n == 0 || n >= len) return 0;
  memcpy(buf, p, n);
  buf[n] = 0;
  return 1;
}

#define EC_TARGET_MAX 256

/* With c->mu held: the client's endpoints become the client URLs of the
 * started voting members in MemberList answer `data` (as cli:sync does):
 * new ones get a channel, those no longer listed are retired. */
static void sync_apply_locked(ec_client *c, const uint8_t *data, size_t len) {
  if (ec_pb_check_depth(&etcdserverpb__member_list_response__descriptor, data, len, 8) !=
      EC_PB_OK)
    return;
  Etcdserverpb__MemberListResponse *r =
      etcdserverpb__member_list_response__unpack(NULL, len, data);
  if (!r) return;
  char(*want)[EC_TARGET_MAX] = malloc(EC_MAX_ENDPOINTS * sizeof *want);
  if (!want) {
    etcdserverpb__member_list_response__free_unpacked(r, NULL);
    return;
  }
  size_t nwant = 0;
  for (size_t i = 0; i < r->n_members; i++) {
    const Etcdserverpb__Member *m = r->members[i];
    if (!m->name || !*m->name || m->islearner) continue;
    for (size_t u = 0; u < m->n_clienturls && nwant < EC_MAX_ENDPOINTS; u++) {
      if (!url_target(m->clienturls[u], c->tls, want[nwant], EC_TARGET_MAX)) continue;
      size_t k = 0;
      while (k < nwant && strcmp(want[k], want[nwant]) != 0) k++;
      if (k == nwant) nwant++;
    }
  }
  etcdserverpb__member_list_response__free_unpacked(r, NULL);
  if (!nwant) {
    free(want);
    return;
  }
  char err[64];
  for (size_t k = 0; k < nwant; k++) (void)add_target_locked(c, want[k], err, sizeof err);
  /* (the new ones are in: a retirement never leaves the client without one) */
  for (size_t i = 0; i < c->nchan; i++) {
    if (c->chans[i].retired) continue;
    size_t k = 0;
    while (k < nwant && strcmp(want[k], c->chans[i].target) != 0) k++;
    if (k == nwant) (void)retire_locked(c, i);
  }
  free(want);
}

static void sync_done(ec_client *c, ec_call *k) {
  c->syncing = 0;
  if (c->closed || !c->sync_ms) return;
  if (k->status == GRPC_STATUS_OK && k->response)
    sync_apply_locked(c, (const uint8_t *)k->response, k->response_len);
  ec_timer_set_locked(c, &c->sync_timer, ec_after_ms(ec_now(), c->sync_ms));
}

/* Go's autoSync asks with 5 s to answer. */
#define EC_SYNC_TIMEOUT_MS 5000

static void sync_fire(ec_client *c, ec_timer *t) {
  (void)t;
  if (c->syncing || !c->sync_ms) return;
  if (internal_call_locked(c, "/etcdserverpb.Cluster/MemberList", "", 0, EC_SYNC_TIMEOUT_MS,
                           -1, sync_done) == 0)
    c->syncing = 1;
  else if (!c->closed)
    ec_timer_set_locked(c, &c->sync_timer, ec_after_ms(ec_now(), c->sync_ms));
}

static void kick_done(ec_tag *tag, int ok) {
  (void)tag;
  (void)ok;
}
static ec_tag kick_tag = {kick_done};

/* With c->mu held, on a thread other than the pump: the pump sleeps until
 * the earliest timer it knew of, or a completion; a connectivity watch that
 * is due at once is one. */
static void kick_pump_locked(ec_client *c) {
  if (c->closed || !c->nchan || !c->chans[0].channel) return;
  grpc_channel *ch = c->chans[0].channel;
  grpc_channel_watch_connectivity_state(ch, grpc_channel_check_connectivity_state(ch, 0),
                                        gpr_now(GPR_CLOCK_MONOTONIC), c->cq, &kick_tag);
}

void ec_client_auto_sync(ec_client *c, int64_t ms) {
  pthread_mutex_lock(&c->mu);
  c->sync_ms = ms > 0 ? ms : 0;
  c->sync_timer.fire = sync_fire;
  if (c->closed || !c->sync_ms) {
    ec_timer_cancel_locked(c, &c->sync_timer);
  } else if (!c->syncing) {
    ec_timer_set_locked(c, &c->sync_timer, ec_after_ms(ec_now(), c->sync_ms));
    kick_pump_locked(c); /* this may be its earliest timer now */
  }
  pthread_mutex_unlock(&c->mu);
}

uint64_t ec_client_member_at(ec_client *c, size_t i) {
  int locked = lock_unless_forked(c);
  uint64_t r = i < c->nchan ? c->chans[i].member_id : 0;
  unlock_if(c, locked);
  return r;
}

size_t ec_client_targets(ec_client *c, const char **target, int *retired) {
  int locked = lock_unless_forked(c);
  size_t n = c->nchan;
  for (size_t i = 0; i < n; i++) {
    target[i] = c->chans[i].target;
    retired[i] = c->chans[i].retired;
  }
  unlock_if(c, locked);
  return n;
}

int ec_client_set_metadata(ec_client *c, const ec_metadata *md, size_t n) {
  if (n > EC_MAX_METADATA) return -1;
  ec_metadata *copy = n ? calloc(n, sizeof *copy) : NULL;
  if (n && !copy) return -1;
  for (size_t i = 0; i < n; i++) {
    char *k = strdup(md[i].key), *v = malloc(md[i].value_len + 1);
    if (!k || !v) {
      free(k);
      free(v);
      free_md(copy, i);
      return -1;
    }
    memcpy(v, md[i].value, md[i].value_len);
    v[md[i].value_len] = 0;
    copy[i].key = k;
    copy[i].value = v;
    copy[i].value_len = md[i].value_len;
  }
  pthread_mutex_lock(&c->mu);
  ec_metadata *old = c->md;
  size_t nold = c->nmd;
  c->md = copy;
  c->nmd = n;
  pthread_mutex_unlock(&c->mu);
  free_md(old, nold);
  return 0;
}

ec_stream *ec_engine_stream_locked(ec_client *c, const char *path,
                                   const ec_stream_hooks *hooks) {
  static const ec_metadata HASLEADER = {"hasleader", "true", 4};
  char err[128];
  ec_metadata md[EC_MAX_METADATA + 1];
  size_t nmd = ec_stream_md_locked(c, &HASLEADER, 1, md, EC_MAX_METADATA + 1);
  /* wait_ready 0: a member that is down fails it at once; the manager
   * tries again on whichever member is ready then */
  return ec_stream_start_locked(c, path, -1, -1, md, nmd, 0, hooks, c, err,
                                sizeof err);
}

size_t ec_stream_md_locked(ec_client *c, const ec_metadata *extra, size_t nextra,
                           ec_metadata *out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < nextra && n < max; i++) out[n++] = extra[i];
  for (size_t i = 0; i < c->nmd && n < max; i++) out[n++] = c->md[i];
  return n;
}

int ec_client_need_auth(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  int r = c->need_auth;
  pthread_mutex_unlock(&c->mu);
  return r;
}

size_t ec_client_inflight(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  size_t n = c->ninflight;
  pthread_mutex_unlock(&c->mu);
  return n;
}

static int wait_fd(ec_client *c, int timeout_ms) {
  struct pollfd p = {c->efd, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
  } while (r < 0 && errno == EINTR);
  return r;
}

/* With c->mu held: the next reap has something to hand out. */
static int to_reap_locked(const ec_client *c) {
  return c->ready.n || c->ready_all || c->reaped.n;
}

/* With c->mu held and the queue ours (EC_DRIVER_LUA): run it on this thread
 * until something is listed for a reap, or `until` (ns) passes. Returns 1
 * or 0, with c->mu held. */
static int drive_locked(ec_client *c, int64_t until) {
  for (;;) {
    gpr_timespec dl = ec_deadline_in(ms_left(until));
    if (c->timers.n && gpr_time_cmp(c->timers.v[0]->at, dl) < 0) dl = c->timers.v[0]->at;
    pthread_mutex_unlock(&c->mu);
    run_once(c, dl); /* (the queue shuts down only in ec_client_close, on this thread) */
    pthread_mutex_lock(&c->mu);
    if (to_reap_locked(c) || c->closed) return 1;
    if (mono_ns() >= until) return 0;
  }
}

int ec_client_wait(ec_client *c, int timeout_ms) {
  if (!c->lua_drives || ec_client_forked(c)) {
    int r = wait_fd(c, timeout_ms);
    if (r < 0) return -1;
    if (ec_client_closed(c)) return -1;
    return r > 0;
  }
  /* The Lua thread drives the queue itself while it waits, when the pump is
   * not in it: a completion is then handled where its waiter runs, with no
   * hand-off between threads. When the pump is in it, wait on the fd; the
   * pump hands the queue over after its next completion. */
  int64_t until = timeout_ms < 0 ? INT64_MAX : mono_ns() + (int64_t)timeout_ms * 1000000;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    if (c->closed) break;
    if (to_reap_locked(c)) {
      pthread_mutex_unlock(&c->mu);
      return 1;
    }
    if (c->driver == EC_DRIVER_NONE) {
      c->driver = EC_DRIVER_LUA;
      int r = drive_locked(c, until);
      c->driver = EC_DRIVER_NONE;
      c->released = mono_ns();
      int closed = c->closed;
      pthread_mutex_unlock(&c->mu);
      return closed ? -1 : r;
    }
    /* Nothing is listed: a signal still in the fd is stale (the pump's
     * hand-over, or a token reaped since); drain it, or poll would not
     * sleep. A token listed from now on signals again (under this lock). */
    uint64_t v;
    while (read(c->efd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    c->lua_wants = 1;
    pthread_mutex_unlock(&c->mu);
    int r = wait_fd(c, ms_left(until));
    pthread_mutex_lock(&c->mu);
    c->lua_wants = 0;
    if (r < 0) break;
    if (r == 0 && mono_ns() >= until) {
      int closed = c->closed;
      pthread_mutex_unlock(&c->mu);
      return closed ? -1 : 0;
    }
  }
  pthread_mutex_unlock(&c->mu);
  return -1;
}

/* ---------------------------------------------------------------------- */
/* shared by unary calls and streams                                        */

ec_msg *ec_msg_new(const void *data, size_t len) {
  ec_msg *m = malloc(sizeof *m + len);
  if (m) {
    m->next = NULL;
    m->len = len;
    if (len) memcpy(m->data, data, len);
  }
  return m;
}

const char *ec_msg_data(const ec_msg *m) { return m->data; }
size_t ec_msg_len(const ec_msg *m) { return m->len; }
void ec_msg_free(ec_msg *m) { free(m); }

void ec_queue_push(ec_queue *q, ec_msg *m) {
  m->next = NULL;
  if (q->tail) q->tail->next = m;
  else q->head = m;
  q->tail = m;
  q->n++;
  q->bytes += m->len;
}

ec_msg *ec_queue_pop(ec_queue *q) {
  ec_msg *m = q->head;
  if (m) {
    q->head = m->next;
    if (!q->head) q->tail = NULL;
    q->n--;
    q->bytes -= m->len;
  }
  return m;
}

void ec_queue_clear(ec_queue *q) {
  ec_msg *m;
  while ((m = ec_queue_pop(q))) free(m);
}

grpc_metadata *ec_md_copy(const ec_metadata *md, size_t n, int *ok) {
  *ok = 1;
  if (!n) return NULL;
  grpc_metadata *out = calloc(n, sizeof *out);
  if (!out) {
    *ok = 0;
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    out[i].key = grpc_slice_from_copied_string(md[i].key);
    out[i].value = grpc_slice_from_copied_buffer(md[i].value, md[i].value_len);
  }
  return out;
}

void ec_md_free(grpc_metadata *md, size_t n) {
  for (size_t i = 0; i < n; i++) {
    grpc_slice_unref(md[i].key);
    grpc_slice_unref(md[i].value);
  }
  free(md);
}

grpc_call *ec_create_call_locked(ec_client *c, int chan, const char *path,
                                 int64_t timeout_ms, int *chosen) {
  size_t ci = (chan >= 0 && (size_t)chan < c->nchan) ? (size_t)chan
                                                     : ec_pick_channel(c);
  *chosen = (int)ci;
  grpc_slice method = grpc_slice_from_copied_string(path);
  grpc_call *call = grpc_channel_create_call(
      c->chans[ci].channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, method, NULL,
      ec_deadline_in(timeout_ms), NULL);
  grpc_slice_unref(method);
  return call;
}

/* ---------------------------------------------------------------------- */
/* unary calls                                                              */

static void call_unref(ec_call *k) {
  if (atomic_fetch_sub(&k->refs, 1) != 1) return;
  free(k->response);
  free(k->message);
  ec_client_unref(k->client);
  free(k);
}

/* Free what the batch used; the grpc_call itself is released by the caller. */
static void batch_cleanup(ec_call *k) {
  ec_md_free(k->send_md, k->nsend_md);
  k->send_md = NULL;
  k->nsend_md = 0;
  if (k->send_buf) grpc_byte_buffer_destroy(k->send_buf);
  k->send_buf = NULL;
  grpc_metadata_array_destroy(&k->recv_md);
  grpc_metadata_array_destroy(&k->trail_md);
}

static void unary_done(ec_tag *tag, int ok) {
  ec_call *k = (ec_call *)tag;
  ec_client *c = k->client;
  (void)ok; /* the status below says everything; a failed batch keeps UNKNOWN */
  if (k->recv_buf) {
    grpc_byte_buffer_reader rd;
    if (grpc_byte_buffer_reader_init(&rd, k->recv_buf)) {
      grpc_slice s = grpc_byte_buffer_reader_readall(&rd);
      size_t n = GRPC_SLICE_LENGTH(s);
      k->response = malloc(n ? n : 1);
      if (k->response) {
        memcpy(k->response, GRPC_SLICE_START_PTR(s), n);
        k->response_len = n;
      } else if (k->status == GRPC_STATUS_OK) {
        k->status = GRPC_STATUS_RESOURCE_EXHAUSTED;
      }
      grpc_slice_unref(s);
      grpc_byte_buffer_reader_destroy(&rd);
    }
    grpc_byte_buffer_destroy(k->recv_buf);
    k->recv_buf = NULL;
  }
  k->message = ec_dup_slice(k->details);
  grpc_slice_unref(k->details);
  if (k->error_string) gpr_free((void *)k->error_string);
  k->error_string = NULL;
  batch_cleanup(k);

  pthread_mutex_lock(&c->mu);
  /* Evidence about the member. An answer: it is alive. A call of a second
   * or more that ran out of time on a member whose connection is still up,
   * not cancelled by us: it stopped answering (or is very slow); the next
   * calls go to another member. */
  if (k->status != GRPC_STATUS_DEADLINE_EXCEEDED && k->status != GRPC_STATUS_UNAVAILABLE &&
      k->status != GRPC_STATUS_CANCELLED && k->status != GRPC_STATUS_UNKNOWN) {
    ec_chan_answered_locked(c, (size_t)k->chan);
    uint64_t mid;
    if (k->status == GRPC_STATUS_OK && k->response && (size_t)k->chan < c->nchan &&
        ec_pb_header_member((const uint8_t *)k->response, k->response_len, &mid) && mid)
      c->chans[k->chan].member_id = mid;
  }
  else if (k->status == GRPC_STATUS_DEADLINE_EXCEEDED && k->picked && k->end == EC_END_NORMAL &&
           k->timeout_ms >= 1000 && !c->closed &&
           grpc_channel_check_connectivity_state(c->chans[k->chan].channel, 0) ==
               GRPC_CHANNEL_READY)
    ec_chan_avoid_locked(c, (size_t)k->chan);
  call_unlist_locked(c, k);
  grpc_call *call = k->call;
  k->call = NULL;
  atomic_store(&k->done, 1);
  if (k->hook) k->hook(c, k);
  ec_ready_locked(c, &k->ready);
  pthread_mutex_unlock(&c->mu);
  grpc_call_unref(call);
  call_unref(k); /* the pump's reference */
}

/* A call that never started: gone. */
static void call_discard(ec_call *k) {
  batch_cleanup(k);
  grpc_slice_unref(k->details);
  atomic_store(&k->refs, 1);
  call_unref(k);
}

/* A call object holding its request and the batch's buffers, with `refs`
 * references; NULL with err filled when out of memory. */
static ec_call *call_new(ec_client *c, const void *req, size_t reqlen,
                         const ec_metadata *md, size_t nmd, int refs, char *err,
                         size_t errlen) {
  ec_call *k = calloc(1, sizeof *k);
  if (!k) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  k->tag.done = unary_done;
  atomic_init(&k->refs, refs);
  atomic_init(&k->done, 0);
  k->status = GRPC_STATUS_UNKNOWN;
  k->details = grpc_empty_slice();
  grpc_metadata_array_init(&k->recv_md);
  grpc_metadata_array_init(&k->trail_md);
  atomic_fetch_add(&c->refs, 1);
  k->client = c;
  int ok;
  k->send_md = ec_md_copy(md, nmd, &ok);
  k->nsend_md = ok ? nmd : 0;
  grpc_slice body = grpc_slice_from_copied_buffer(req, reqlen);
  k->send_buf = grpc_raw_byte_buffer_create(&body, 1);
  grpc_slice_unref(body);
  if (!ok) {
    snprintf(err, errlen, "out of memory");
    call_discard(k);
    return NULL;
  }
  return k;
}

/* The six operations of a unary call's one batch. */
static void call_ops(ec_call *k, grpc_op ops[6], int fail_fast) {
  memset(ops, 0, 6 * sizeof *ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = k->nsend_md;
  ops[0].data.send_initial_metadata.metadata = k->send_md;
  /* Like etcd's Go client: wait for a connection rather than fail fast. */
  ops[0].flags = (fail_fast ? 0 : GRPC_INITIAL_METADATA_WAIT_FOR_READY) |
                 GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = k->send_buf;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &k->recv_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &k->recv_buf;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &k->trail_md;
  ops[5].data.recv_status_on_client.status = &k->status;
  ops[5].data.recv_status_on_client.status_details = &k->details;
  ops[5].data.recv_status_on_client.error_string = &k->error_string;
}

/* With c->mu held: make k's grpc_call and list it (close and cancel find
 * it there); 0, or -1 when gRPC made no call. */
static int call_create_locked(ec_client *c, ec_call *k, const char *path,
                              int64_t timeout_ms, int chan) {
  k->call = ec_create_call_locked(c, chan, path, timeout_ms, &k->chan);
  k->picked = chan < 0;
  k->timeout_ms = timeout_ms;
  if (!k->call) return -1;
  k->next = c->inflight;
  if (c->inflight) c->inflight->prev = k;
  c->inflight = k;
  c->ninflight++;
  return 0;
}

/* With c->mu held: take k off the list of calls in flight (it ended, or its
 * batch did not start). */
static void call_unlist_locked(ec_client *c, ec_call *k) {
  if (k->prev) k->prev->next = k->next;
  else c->inflight = k->next;
  if (k->next) k->next->prev = k->prev;
  c->ninflight--;
}

ec_call *ec_unary_start(ec_client *c, const char *path, const void *req,
                        size_t reqlen, int64_t timeout_ms, int chan,
                        int fail_fast, const ec_metadata *md, size_t nmd,
                        char *err, size_t errlen) {
  /* the caller's reference and the pump's */
  ec_call *k = call_new(c, req, reqlen, md, nmd, 2, err, errlen);
  if (!k) return NULL;
  k->ready.token = ec_token_new();
  grpc_op ops[6];
  call_ops(k, ops, fail_fast);

  /* The call is made and listed under the lock; its batch, the costly part,
   * starts outside it, so that the pump is not held up meanwhile (with many
   * calls in flight the two threads fought over the lock on every call). */
  pthread_mutex_lock(&c->mu);
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    snprintf(err, errlen, "client closed");
    call_discard(k);
    return NULL;
  }
  if (call_create_locked(c, k, path, timeout_ms, chan)) {
    pthread_mutex_unlock(&c->mu);
    snprintf(err, errlen, "cannot create a gRPC call");
    call_discard(k);
    return NULL;
  }
  atomic_fetch_add(&c->starting, 1);
  pthread_mutex_unlock(&c->mu);

  grpc_call_error e = grpc_call_start_batch(k->call, ops, 6, &k->tag, NULL);
  if (e != GRPC_CALL_OK) {
    pthread_mutex_lock(&c->mu);
    call_unlist_locked(c, k);
    grpc_call *call = k->call;
    k->call = NULL;
    pthread_mutex_unlock(&c->mu);
    grpc_call_unref(call);
    atomic_fetch_sub(&c->starting, 1);
    snprintf(err, errlen, "cannot start a gRPC call (error %d)", (int)e);
    call_discard(k);
    return NULL;
  }
  /* (the call may have completed already: k stays alive by the caller's
   * reference) */
  atomic_fetch_sub(&c->starting, 1);
  return k;
}

/* With c->mu held (the pump's timers): a unary call of the engine's own,
 * failing fast, with the engine streams' metadata (the token); `hook` gets
 * it, c->mu held, when it ended, closed client included. 0, or -1 when it
 * could not start (out of memory, closed). */
static int internal_call_locked(ec_client *c, const char *path, const void *req,
                                size_t reqlen, int64_t timeout_ms, int chan,
                                void (*hook)(ec_client *, ec_call *)) {
  if (c->closed) return -1;
  ec_metadata md[EC_MAX_METADATA + 1];
  size_t nmd = ec_stream_md_locked(c, NULL, 0, md, EC_MAX_METADATA + 1);
  char err[64];
  ec_call *k = call_new(c, req, reqlen, md, nmd, 1, err, sizeof err); /* the pump's */
  if (!k) return -1;
  k->hook = hook;
  grpc_op ops[6];
  call_ops(k, ops, 1);
  if (call_create_locked(c, k, path, timeout_ms, chan)) {
    call_discard(k);
    return -1;
  }
  if (grpc_call_start_batch(k->call, ops, 6, &k->tag, NULL) != GRPC_CALL_OK) {
    call_unlist_locked(c, k);
    grpc_call_unref(k->call);
    k->call = NULL;
    call_discard(k);
    return -1;
  }
  return 0;
}

int ec_call_done(ec_call *k) { return atomic_load(&k->done); }

void ec_call_cancel(ec_call *k) {
  ec_client *c = k->client;
  pthread_mutex_lock(&c->mu);
  if (k->call && !atomic_load(&k->done)) {
    if (k->end == EC_END_NORMAL) k->end = EC_END_CANCELLED;
    grpc_call_cancel_with_status(k->call, GRPC_STATUS_CANCELLED, "cancelled",
                                 NULL);
  }
  pthread_mutex_unlock(&c->mu);
}

int ec_call_status(const ec_call *k) { return (int)k->status; }
int ec_call_end(const ec_call *k) { return k->end; }
const char *ec_call_details(const ec_call *k) {
  return k->message ? k->message : "";
}
const void *ec_call_response(const ec_call *k, size_t *len) {
  *len = k->response_len;
  return k->response;
}
uint64_t ec_call_token(const ec_call *k) { return k->ready.token; }
int ec_call_chan(const ec_call *k) { return k->chan; }

void ec_call_release(ec_call *k) {
  /* A call dropped before it finished is cancelled: nobody wants the answer. */
  if (!atomic_load(&k->done)) ec_call_cancel(k);
  call_unref(k);
}
