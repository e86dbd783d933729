/*
 * Watches driven by the pump thread: one Watch stream per client, shared by
 * every watch and demultiplexed by watch_id; per-watch bounded queues of
 * response bytes for Lua; re-creation after a break from the revision after
 * the last one received, so no event is lost or repeated. No lua.h here.
 *
 * Creates always ask etcd for fragments, so that a catch-up from history
 * (etcd 3.4 puts up to 1000 revisions in one response) arrives in pieces the
 * queue bound can count; pieces go to Lua as responses of their own unless
 * the caller asked for `fragment`, which joins them. A re-create resumes at
 * the revision of the last event delivered and drops the events of that
 * revision it delivered already, so a pause may fall inside a revision.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcdserverpb/rpc.pb-c.h"
#include "pbwalk.h"

/* A watch whose queue passes either bound is cancelled on the server and
 * re-created once Lua has drained it below half. */
#define HIGH_COUNT 1024
#define HIGH_BYTES ((size_t)8 << 20)
#define MAX_DEPTH 64
/* A stream silent this long (while a watch is on it) gets a progress
 * request; with no message at all PROBE_MS after it, its member is taken
 * for stuck (stopped, hung: its TCP connection open, gRPC's keepalive would
 * take ~40 s): the member is passed over and the watches move to a new
 * stream, resuming from their last revision. */
#define SILENT_MS 5000
#define PROBE_MS 3000

enum {
  S_PENDING,  /* a create is to be sent */
  S_CREATING, /* create sent, waiting for `created` */
  S_ACTIVE,   /* live on the server */
  S_PAUSING,  /* cancelled by us (queue full), waiting for the ack */
  S_PAUSED,   /* off the server until Lua drains the queue */
  S_ENDED,    /* ended by etcd (compaction, failed create, ...) */
  S_CLOSED    /* closed by the client */
};

struct ec_watch {
  ec_ready ready;
  atomic_int refs; /* the caller's, and the manager's while in its list */
  ec_client *client;
  ec_watch *next;
  int in_list;
  int closing; /* released by the caller while its create was in flight */
  char *create;
  size_t create_len;
  int join_fragments; /* the caller asked for `fragment`: join the pieces */
  /* Where a re-creation starts: revision resume_rev, whose first resume_skip
   * events were delivered already (events of one revision replay in the same
   * order). resume_rev 0: from now. */
  int64_t resume_rev;
  size_t resume_skip;
  size_t skip_left; /* events at resume_rev still to drop after a re-create */
  int64_t watch_id;
  int state;
  ec_queue q; /* responses for Lua */
  char *frag;
  size_t frag_len;
  int64_t compact_revision;
  int created; /* etcd confirmed the first create */
  char reason[256];
};

static const char *const WATCH_PATH = "/etcdserverpb.Watch/Watch";


/* Drop n references at once (the caller's, and the manager's when it held one). */
static void w_unref_n(ec_watch *w, int n) {
  if (atomic_fetch_sub(&w->refs, n) != n) return;
  ec_queue_clear(&w->q);
  free(w->frag);
  free(w->create);
  ec_client_unref(w->client);
  free(w);
}

/* With c->mu held: something a reader of w would see changed. */
static void wake(ec_watch *w) { ec_ready_locked(w->client, &w->ready); }

static int queue_push(ec_watch *w, const char *data, size_t len) {
  ec_msg *m = ec_msg_new(data, len);
  if (!m) return -1;
  ec_queue_push(&w->q, m);
  wake(w);
  return 0;
}

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  do {
    p[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) p[n] |= 0x80;
    n++;
  } while (v);
  return n;
}

static void unlink_locked(ec_client *c, ec_watch *w) {
  for (ec_watch **p = &c->wm.watches; *p; p = &(*p)->next)
    if (*p == w) {
      *p = w->next;
      w->in_list = 0;
      return;
    }
}

/* ---- requests on the stream (c->mu held) ------------------------------ */

static int send_cancel_locked(ec_client *c, ec_watch *w) {
  if (!c->wm.stream || c->wm.stream_ended) return -1;
  uint8_t buf[24], inner[12];
  size_t in = 0;
  inner[in++] = 0x08; /* watch_id, explicit even when 0 */
  in += put_varint(inner + in, (uint64_t)w->watch_id);
  size_t n = 0;
  buf[n++] = 0x12; /* WatchRequest.cancel_request */
  n += put_varint(buf + n, in);
  memcpy(buf + n, inner, in);
  return ec_stream_write_locked(c->wm.stream, buf, n + in);
}

static void end_locked(ec_watch *w, int state, int64_t compact,
                       const char *reason);

/* 0: sent; -1: not sent (out of memory or the stream refused it: tried again
 * later); 1: too large ever to send, the watch has ended. */
static int send_create_locked(ec_client *c, ec_watch *w) {
  uint8_t extra[16];
  size_t xn = 0;
  if (w->resume_rev > 0) { /* start_revision; later fields win when merged */
    extra[xn++] = 0x18;
    xn += put_varint(extra + xn, (uint64_t)w->resume_rev);
  }
  /* fragment = true, always: etcd then splits a huge response (a catch-up
   * from history holds up to 1000 revisions) into pieces near its request
   * limit, which the queue bound can count. */
  extra[xn++] = 0x40;
  extra[xn++] = 0x01;
  size_t inner = w->create_len + xn;
  uint8_t hdr[12];
  size_t hn = 0;
  hdr[hn++] = 0x0a; /* WatchRequest.create_request */
  hn += put_varint(hdr + hn, inner);
  /* gRPC would fail the whole shared stream on it (and every watch on it
   * would be re-created, this one again): refuse this watch alone, with
   * gRPC's words for it. */
  if (hn + inner > c->max_send) {
    char why[96];
    snprintf(why, sizeof why, "Sent message larger than max (%zu vs. %zu)",
             hn + inner, c->max_send);
    end_locked(w, S_ENDED, 0, why);
    return 1;
  }
  char *buf = malloc(hn + inner);
  if (!buf) return -1;
  memcpy(buf, hdr, hn);
  memcpy(buf + hn, w->create, w->create_len);
  memcpy(buf + hn + w->create_len, extra, xn);
  int r = ec_stream_write_locked(c->wm.stream, buf, hn + inner);
  free(buf);
  if (r == 0) w->skip_left = w->resume_skip;
  return r;
}

/* Send the next create if none is in flight: creates go one at a time so
 * that a failed one (answered with watch_id -1) is known. A create too large
 * to send ends its watch, and the next one goes. */
static void next_create_locked(ec_client *c) {
  if (!c->wm.maybe_pending || !c->wm.stream || c->wm.stream_ended ||
      c->wm.creating || c->need_auth)
    return;
  for (ec_watch *w = c->wm.watches; w; w = w->next) {
    if (w->state != S_PENDING) continue;
    int r = send_create_locked(c, w);
    if (r == 0) {
      w->state = S_CREATING;
      c->wm.creating = w;
    } else if (r > 0) {
      continue; /* end_locked woke its waiter */
    }
    return;
  }
  c->wm.maybe_pending = 0; /* none: no scan until one is pending again */
}

static void open_locked(ec_client *c, gpr_timespec now);

static void maybe_resume_locked(ec_client *c, ec_watch *w) {
  if (w->state == S_PAUSED && w->q.n <= HIGH_COUNT / 2 &&
      w->q.bytes <= HIGH_BYTES / 2) {
    w->state = S_PENDING;
    c->wm.maybe_pending = 1;
    /* The pump may be asleep with nothing to wait for: open the stream from
     * here if there is none; the create's completion wakes the pump. */
    if (!c->wm.stream) open_locked(c, gpr_now(GPR_CLOCK_MONOTONIC));
    next_create_locked(c);
  }
}

static void end_locked(ec_watch *w, int state, int64_t compact,
                       const char *reason) {
  w->state = state;
  w->compact_revision = compact;
  snprintf(w->reason, sizeof w->reason, "%s", reason ? reason : "");
  wake(w);
}

/* ---- stream consumer (pump thread, c->mu held) ------------------------ */

int ec_auth_refusal(const char *msg) {
  static const char *const refusals[] = {"invalid auth token",
                                         "revision of auth store is old",
                                         "user name is empty"};
  for (size_t i = 0; msg && i < sizeof refusals / sizeof *refusals; i++)
    if (strstr(msg, refusals[i])) return 1;
  return 0;
}

static ec_watch *find_live(ec_client *c, int64_t id) {
  for (ec_watch *w = c->wm.watches; w; w = w->next)
    if (w->watch_id == id && (w->state == S_ACTIVE || w->state == S_PAUSING))
      return w;
  return NULL;
}

/* Account for the events of one delivered response. */
static void advance(ec_watch *w, const Etcdserverpb__WatchResponse *r) {
  for (size_t i = 0; i < r->n_events; i++) {
    if (!r->events[i]->kv) continue;
    int64_t rev = r->events[i]->kv->mod_revision;
    if (rev > w->resume_rev) {
      w->resume_rev = rev;
      w->resume_skip = 1;
    } else if (rev == w->resume_rev) {
      w->resume_skip++;
    }
  }
  if (!r->n_events && !r->fragment && r->header &&
      r->header->revision + 1 > w->resume_rev) {
    /* a progress notification: everything up to header.revision was sent */
    w->resume_rev = r->header->revision + 1;
    w->resume_skip = 0;
    w->skip_left = 0;
  }
}

/* Queue one response (a whole one, or a piece of a fragmented one) for Lua,
 * dropping the events a re-created watch sends again. `given`: data already
 * unpacked by the caller (it frees it), or NULL (unpacked here). */
static void deliver(ec_client *c, ec_watch *w, const char *data, size_t len,
                    Etcdserverpb__WatchResponse *given) {
  Etcdserverpb__WatchResponse *r =
      given ? given : etcdserverpb__watch_response__unpack(NULL, len, (const uint8_t *)data);
  if (!r) return;
  if (r->canceled) {
    if (w->state == S_PAUSING) {
      w->state = S_PAUSED;
      maybe_resume_locked(c, w);
    } else {
      queue_push(w, data, len); /* Lua sees compact_revision and the reason */
      end_locked(w, S_ENDED, r->compact_revision, r->cancel_reason);
    }
    if (!given) etcdserverpb__watch_response__free_unpacked(r, NULL);
    return;
  }
  size_t keep = r->n_events, first = 0;
  while (w->skip_left && first < r->n_events && r->events[first]->kv &&
         r->events[first]->kv->mod_revision == w->resume_rev) {
    first++;
    w->skip_left--;
  }
  w->skip_left = first < r->n_events ? 0 : w->skip_left;
  keep -= first;
  if (first && !keep) { /* all seen before: nothing to deliver */
    if (!given) etcdserverpb__watch_response__free_unpacked(r, NULL);
    return;
  }
  if (first) {
    Etcdserverpb__WatchResponse part = *r;
    part.events = r->events + first;
    part.n_events = keep;
    size_t n = etcdserverpb__watch_response__get_packed_size(&part);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf) {
      etcdserverpb__watch_response__pack(&part, buf);
      advance(w, &part);
      queue_push(w, (const char *)buf, n);
      free(buf);
    }
  } else {
    advance(w, r);
    queue_push(w, data, len);
  }
  if (w->state == S_ACTIVE && (w->q.n > HIGH_COUNT || w->q.bytes > HIGH_BYTES) &&
      send_cancel_locked(c, w) == 0)
    w->state = S_PAUSING;
  if (!given) etcdserverpb__watch_response__free_unpacked(r, NULL);
}

static void on_message(void *ud, ec_stream *s, const char *data, size_t len) {
  ec_client *c = ud;
  /* After close (every watch is closed), a response still on its way must not
   * bring a watch back to life, e.g. a late "created" to S_ACTIVE. */
  if (c->closed || s != c->wm.stream) return;
  c->wm.last_heard = ec_now(); /* the member is alive */
  c->wm.probing = 0;
  ec_chan_answered_locked(c, (size_t)ec_stream_chan(s));
  if (ec_pb_check_depth(&etcdserverpb__watch_response__descriptor,
                        (const uint8_t *)data, len, MAX_DEPTH) != EC_PB_OK) {
    ec_stream_cancel_locked(s); /* unreadable: start over on a new stream */
    return;
  }
  Etcdserverpb__WatchResponse *r =
      etcdserverpb__watch_response__unpack(NULL, len, (const uint8_t *)data);
  if (!r) {
    ec_stream_cancel_locked(s);
    return;
  }
  if (r->created) {
    ec_watch *w = c->wm.creating;
    c->wm.creating = NULL;
    if (w) {
      if ((r->watch_id == -1 || r->canceled) && ec_auth_refusal(r->cancel_reason) &&
          !w->closing) {
        /* etcd 3.4 keeps the stream but refuses new watches on it once the
         * token expired or the auth store moved on: wait for a new token,
         * then create it again on a new stream (ec_client_auth_refreshed). */
        w->state = S_PENDING;
        c->wm.maybe_pending = 1;
        c->need_auth = 1;
        /* whichever watch is waited on logs in again */
        for (ec_watch *x = c->wm.watches; x; x = x->next) wake(x);
        ec_ready_locked(c, &c->self);
      } else if (r->watch_id == -1 || r->canceled) {
        end_locked(w, S_ENDED, r->compact_revision,
                   *r->cancel_reason ? r->cancel_reason : "watch create failed");
      } else {
        w->watch_id = r->watch_id;
        w->created = 1;
        if (w->resume_rev == 0 && r->header) {
          w->resume_rev = r->header->revision + 1;
          w->resume_skip = 0;
        }
        w->state = S_ACTIVE;
        wake(w);
        if (w->closing) {
          send_cancel_locked(c, w);
          w->state = S_CLOSED;
        }
      }
      if (w->closing) {
        unlink_locked(c, w);
        w_unref_n(w, 1); /* the manager's reference; the caller's is gone */
      }
    }
    next_create_locked(c);
  } else if (r->watch_id == -1) {
    /* An answer to a progress request: for every watch on the stream, but
     * the answers to our own probes (etcd answers each request once, in
     * order: which of two is whose does not matter, they say the same). */
    if (c->wm.probes > 0) {
      c->wm.probes--;
    } else {
      for (ec_watch *w = c->wm.watches; w; w = w->next)
        if (w->state == S_ACTIVE || w->state == S_PAUSING)
          queue_push(w, data, len);
    }
  } else {
    ec_watch *w = find_live(c, r->watch_id);
    /* Unless the user asked for joined fragments, pieces go to Lua as they
     * come (the last branch). */
    if (w && w->join_fragments && r->fragment) {
      char *p = realloc(w->frag, w->frag_len + len);
      if (p) {
        memcpy(p + w->frag_len, data, len);
        w->frag = p;
        w->frag_len += len;
      }
    } else if (w && w->join_fragments && w->frag_len) {
      /* the last fragment: concatenated messages merge into one response */
      char *p = realloc(w->frag, w->frag_len + len);
      if (p) {
        memcpy(p + w->frag_len, data, len);
        w->frag = p;
        size_t n = w->frag_len + len;
        w->frag_len = 0;
        deliver(c, w, p, n, NULL);
      }
      free(w->frag);
      w->frag = NULL;
      w->frag_len = 0;
    } else if (w) {
      deliver(c, w, data, len, r); /* the same bytes: unpacked once */
    }
  }
  etcdserverpb__watch_response__free_unpacked(r, NULL);
}

static void on_end(void *ud, ec_stream *s) {
  ec_client *c = ud;
  if (s == c->wm.stream) c->wm.stream_ended = 1;
}

static const ec_stream_hooks WATCH_HOOKS = {on_message, on_end};

/* The reopen timer only wakes the pump: the tick opens the stream. */
static void reopen_due(ec_client *c, ec_timer *t) {
  (void)c;
  (void)t;
}

/* When to open the next stream (c->mu held). */
static void reopen_at(ec_client *c, gpr_timespec at) {
  c->wm.reopen.fire = reopen_due;
  ec_timer_set_locked(c, &c->wm.reopen, at);
}

static int reopen_due_now(ec_client *c, gpr_timespec now) {
  return !c->wm.reopen.idx || gpr_time_cmp(now, c->wm.reopen.at) >= 0;
}

/* ---- liveness (c->mu held) --------------------------------------------- */

/* A WatchRequest with an empty progress_request: the caller's
 * (ec_watch_request_progress) and our own probes alike. */
static const uint8_t PROGRESS_REQ[] = {0x1a, 0x00};

static int any_live(const ec_client *c);

static void send_probe_locked(ec_client *c, gpr_timespec now) {
  if (ec_stream_write_locked(c->wm.stream, PROGRESS_REQ, sizeof PROGRESS_REQ) != 0) return;
  c->wm.probes++;
  if (!c->wm.probing) {
    c->wm.probing = 1;
    c->wm.probe_sent = now;
  }
  ec_timer_set_locked(c, &c->wm.probe, ec_after_ms(c->wm.probe_sent, PROBE_MS));
}

/* The probe timer: silent too long, probe; probed and still nothing, the
 * member is stuck: let the stream go (the tick opens another, elsewhere). */
static void probe_due(ec_client *c, ec_timer *t) {
  (void)t;
  /* with one member there is nowhere else to go: gRPC's keepalive ends a
   * dead connection, and a stopped member answers again once it resumes */
  if (c->closed || !c->wm.stream || c->wm.stream_ended || !any_live(c) ||
      !ec_elsewhere_locked(c))
    return;
  gpr_timespec now = ec_now();
  if (c->wm.probing) {
    gpr_timespec bound = ec_after_ms(c->wm.probe_sent, PROBE_MS);
    if (gpr_time_cmp(now, bound) < 0) {
      ec_timer_set_locked(c, &c->wm.probe, bound);
      return;
    }
    c->wm.stalls++;
    ec_chan_avoid_locked(c, (size_t)ec_stream_chan(c->wm.stream));
    ec_stream_cancel_locked(c->wm.stream);
    c->wm.reopen_now = 1;
    return;
  }
  gpr_timespec quiet_until = ec_after_ms(c->wm.last_heard, SILENT_MS);
  if (gpr_time_cmp(now, quiet_until) < 0) {
    ec_timer_set_locked(c, &c->wm.probe, quiet_until);
    return;
  }
  send_probe_locked(c, now);
}

static void open_locked(ec_client *c, gpr_timespec now) {
  c->wm.stream = ec_engine_stream_locked(c, WATCH_PATH, &WATCH_HOOKS);
  c->wm.stream_ended = 0;
  c->wm.creating = NULL;
  c->wm.probes = 0;
  c->wm.probing = 0;
  c->wm.last_heard = now;
  c->wm.probe.fire = probe_due;
  if (c->wm.stream) {
    ec_timer_cancel_locked(c, &c->wm.reopen);
    ec_timer_set_locked(c, &c->wm.probe, ec_after_ms(now, SILENT_MS));
  } else {
    reopen_at(c, ec_after_ms(now, EC_REOPEN_MS));
  }
}

static int needs_stream(int state) {
  return state == S_PENDING || state == S_CREATING || state == S_ACTIVE ||
         state == S_PAUSING || state == S_PAUSED;
}

static int any_live(const ec_client *c) {
  for (const ec_watch *w = c->wm.watches; w; w = w->next)
    if (needs_stream(w->state) && !w->closing) return 1;
  return 0;
}

/* ---- pump ------------------------------------------------------------- */

/* The stream ended, or we cancelled it (it may not have ended yet): take
 * it off the client (the caller releases it outside the lock). Every watch
 * that was on it is created again, on the next stream, from the revision
 * after the last one it received; half-received fragments are dropped (their
 * events come again). A stream that broke is replaced after EC_REOPEN_MS; one
 * we cancelled on purpose at once. */
static ec_stream *detach_stream_locked(ec_client *c, gpr_timespec now) {
  ec_stream *dead = c->wm.stream;
  c->wm.stream = NULL;
  c->wm.stream_ended = 0;
  c->wm.creating = NULL;
  reopen_at(c, c->wm.reopen_now ? now : ec_after_ms(now, EC_REOPEN_MS));
  c->wm.reopen_now = 0;
  for (ec_watch *w = c->wm.watches; w; w = w->next) {
    free(w->frag);
    w->frag = NULL;
    w->frag_len = 0;
    if (w->state == S_CREATING || w->state == S_ACTIVE) {
      w->state = S_PENDING;
      c->wm.maybe_pending = 1;
    }
    else if (w->state == S_PAUSING) w->state = S_PAUSED;
    if (w->closing) w->state = S_CLOSED;
  }
  /* watches released while their create was in flight: gone with it */
  for (ec_watch **p = &c->wm.watches; *p;) {
    ec_watch *w = *p;
    if (w->closing) {
      *p = w->next;
      w->in_list = 0;
      w_unref_n(w, 1);
    } else {
      p = &w->next;
    }
  }
  return dead;
}

/* Nothing needs the stream: let it go (etcd 3.4 does not end a stream on
 * half-close, so cancel it). */
static void idle_cancel_locked(ec_client *c) {
  ec_stream_cancel_locked(c->wm.stream);
  c->wm.reopen_now = 1;
}

static void wm_tick(ec_client *c) {
  ec_stream *dead = NULL;
  pthread_mutex_lock(&c->mu);
  if (c->closed || (!c->wm.watches && !c->wm.stream)) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
  if (c->wm.stream && c->wm.stream_ended) dead = detach_stream_locked(c, now);
  int live = 0; /* some watch needs the stream (usually the first one) */
  for (ec_watch *w = c->wm.watches; w && !live; w = w->next)
    live = needs_stream(w->state);
  if (!live && c->wm.stream && !c->wm.stream_ended) {
    idle_cancel_locked(c);
  } else if (live && !c->wm.stream && reopen_due_now(c, now)) {
    open_locked(c, now);
  } else if (live && c->wm.stream && !c->wm.stream_ended && !c->wm.probing &&
             c->chans[ec_stream_chan(c->wm.stream)].avoid) {
    /* its member was caught not answering (a call, a keep-alive): ask now;
     * any message from it clears the mark */
    send_probe_locked(c, now);
  }
  next_create_locked(c);
  pthread_mutex_unlock(&c->mu);
  if (dead) ec_stream_release(dead);
}

/* Client closing: every watch ends as closed, even one etcd had ended
 * already, and what it had queued goes (no read returns it any more). */
static void wm_close_all_locked(ec_client *c) {
  ec_timer_cancel_locked(c, &c->wm.reopen);
  ec_timer_cancel_locked(c, &c->wm.probe);
  for (ec_watch *w = c->wm.watches; w; w = w->next) {
    end_locked(w, S_CLOSED, 0, "client closed");
    ec_queue_clear(&w->q);
  }
}

static void wm_free(ec_client *c) {
  ec_watch *w = c->wm.watches;
  c->wm.watches = NULL;
  c->wm.creating = NULL;
  while (w) {
    ec_watch *n = w->next;
    w->in_list = 0;
    w_unref_n(w, 1);
    w = n;
  }
  if (c->wm.stream) {
    ec_stream *s = c->wm.stream;
    c->wm.stream = NULL;
    ec_stream_release(s);
  }
}

static const ec_manager WATCH_MANAGER = {wm_tick, wm_close_all_locked, wm_free};

/* ---- API (Lua's thread) ----------------------------------------------- */

ec_watch *ec_watch_start(ec_client *c, const void *create, size_t len,
                         int64_t start_revision, int join_fragments, char *err,
                         size_t errlen) {
  ec_watch *w = calloc(1, sizeof *w);
  if (w) w->create = malloc(len ? len : 1);
  if (!w || !w->create) {
    if (w) free(w);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  memcpy(w->create, create, len);
  w->create_len = len;
  w->resume_rev = start_revision > 0 ? start_revision : 0;
  w->join_fragments = join_fragments;
  w->watch_id = -1;
  w->state = S_PENDING;
  atomic_init(&w->refs, 2);
  atomic_fetch_add(&c->refs, 1);
  w->client = c;
  w->ready.token = ec_token_new();
  pthread_mutex_lock(&c->mu);
  if (c->closed) {
    pthread_mutex_unlock(&c->mu);
    snprintf(err, errlen, "client closed");
    atomic_store(&w->refs, 1);
    w_unref_n(w, 1);
    return NULL;
  }
  ec_manager_register_locked(c, &WATCH_MANAGER);
  /* A stream we cancelled because no watch needed it (its end may not be in
   * yet) is replaced now: a create sent on it would be lost with it. */
  ec_stream *dead = NULL;
  gpr_timespec now = ec_now();
  if (c->wm.stream && c->wm.reopen_now) dead = detach_stream_locked(c, now);
  /* append: creates go out in the order watches were made */
  ec_watch **p = &c->wm.watches;
  while (*p) p = &(*p)->next;
  *p = w;
  w->in_list = 1;
  c->wm.maybe_pending = 1;
  if (!c->wm.stream) open_locked(c, now);
  /* The create's completion wakes the pump, which then owns the rest. An
   * ended stream is replaced by the pump, which its end already woke. */
  next_create_locked(c);
  pthread_mutex_unlock(&c->mu);
  if (dead) ec_stream_release(dead);
  return w;
}

int ec_watch_read(ec_watch *w, ec_msg **out) {
  ec_client *c = w->client;
  pthread_mutex_lock(&c->mu);
  /* a closed client's watches are closed: nothing more comes out of them */
  ec_msg *m = c->closed ? NULL : ec_queue_pop(&w->q);
  if (m && !c->closed) maybe_resume_locked(c, w);
  int live = !c->closed && needs_stream(w->state);
  pthread_mutex_unlock(&c->mu);
  if (!m) return live ? 0 : -1;
  *out = m;
  return 1;
}

int ec_watch_state(ec_watch *w, int64_t *compact_revision, char *reason,
                   size_t reasonlen) {
  ec_client *c = w->client;
  pthread_mutex_lock(&c->mu);
  int st = c->closed              ? EC_W_CLOSED
           : w->state == S_ENDED  ? EC_W_ENDED
           : w->state == S_CLOSED ? EC_W_CLOSED
                                  : EC_W_LIVE;
  *compact_revision = w->compact_revision;
  snprintf(reason, reasonlen, "%s", w->reason);
  pthread_mutex_unlock(&c->mu);
  return st;
}

int ec_watch_created(ec_watch *w) {
  pthread_mutex_lock(&w->client->mu);
  int r = w->client->closed                               ? -1
          : w->created                                    ? 1
          : (w->state == S_ENDED || w->state == S_CLOSED) ? -1
                                                          : 0;
  pthread_mutex_unlock(&w->client->mu);
  return r;
}

void ec_watch_release(ec_watch *w) {
  ec_client *c = w->client;
  int drop_manager = 0;
  pthread_mutex_lock(&c->mu);
  if (w->in_list) {
    if (w->state == S_CREATING && !c->closed) {
      w->closing = 1; /* cancelled once its id is known, then unlinked */
    } else {
      if ((w->state == S_ACTIVE || w->state == S_PAUSING) && !c->closed)
        send_cancel_locked(c, w);
      unlink_locked(c, w);
      drop_manager = 1;
    }
  }
  /* A watch whose create is in flight stays S_CREATING until its id is
   * known (then it is cancelled and unlinked); any other is closed now. */
  if (!w->closing && w->state != S_ENDED) end_locked(w, S_CLOSED, 0, "closed");
  int live = 0;
  for (ec_watch *x = c->wm.watches; x; x = x->next)
    live |= needs_stream(x->state) && !x->closing;
  if (!live && c->wm.stream && !c->wm.stream_ended && !c->closed)
    idle_cancel_locked(c);
  pthread_mutex_unlock(&c->mu);
  w_unref_n(w, 1 + drop_manager);
}

int ec_watch_request_progress(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  int r = 0;
  if (c->wm.stream && !c->wm.stream_ended && !c->closed)
    r = ec_stream_write_locked(c->wm.stream, PROGRESS_REQ, sizeof PROGRESS_REQ) == 0;
  pthread_mutex_unlock(&c->mu);
  return r;
}

void ec_client_auth_refreshed(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  if (c->need_auth) {
    c->need_auth = 0;
    /* the stream keeps the token it was opened with: open a new one; every
     * watch on it is created again from where it stood */
    if (c->wm.stream && !c->wm.stream_ended && !c->closed) {
      ec_stream_cancel_locked(c->wm.stream);
      c->wm.reopen_now = 1;
    }
    reopen_at(c, ec_now());
  }
  pthread_mutex_unlock(&c->mu);
}

uint64_t ec_watch_token(const ec_watch *w) { return w->ready.token; }

size_t ec_client_nwatches(ec_client *c) {
  pthread_mutex_lock(&c->mu);
  size_t n = 0;
  for (ec_watch *w = c->wm.watches; w; w = w->next)
    n += needs_stream(w->state) && !w->closing;
  pthread_mutex_unlock(&c->mu);
  return n;
}
