/* Per-rank timeline of a training run in Chrome's trace-event format (opens in Perfetto and
 * chrome://tracing): complete events with a name, a category, a start and a duration. Events are
 * recorded in memory during the run (thread-safe); at the end every rank sends its events to
 * rank 0, which writes one file in which each rank is a process (pid = rank) and each thread a
 * track. Internal to the train layer. */
#ifndef DISTML_TRAIN_TRACE_H
#define DISTML_TRAIN_TRACE_H

#include <pthread.h>
#include <stdint.h>

#include "distml/comm.h"

typedef struct dml__trace_event {
  char name[24];     /* "forward", "bucket 3", ... */
  char cat[12];      /* "compute", "wait", "allreduce", "io", "eval" */
  uint64_t start_ns; /* since the trace began */
  uint64_t dur_ns;
  int tid; /* 0: training thread, 1: communication thread */
} dml__trace_event;

typedef struct dml__trace {
  int enabled; /* 0: every call is a no-op */
  uint64_t t0_ns;
  dml__trace_event *ev;
  size_t n, cap;
  pthread_mutex_t lock;
} dml__trace;

void dml__trace_init(dml__trace *t, int enabled);
/* Records one event from start_ns (dml_now_ns) to now. */
void dml__trace_add(dml__trace *t, const char *name, const char *cat, int tid, uint64_t start_ns);
/* Records one event from start_ns to end_ns (dml_now_ns clock). */
void dml__trace_span(dml__trace *t, const char *name, const char *cat, int tid, uint64_t start_ns,
                     uint64_t end_ns);
/* Rank 0 gathers all ranks' events over comm (may be NULL for one process) and writes path
 * atomically; other ranks send theirs. Collective: every rank calls it. */
int dml__trace_write(dml__trace *t, dml_comm *comm, const char *path, dml_err *err);
void dml__trace_free(dml__trace *t);

#endif
