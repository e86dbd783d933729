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
};

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
