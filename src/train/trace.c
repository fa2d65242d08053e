/* Chrome trace-event output for training runs (see trace.h). */
#include "train/trace.h"

#include <string.h>

#include "core/internal.h"

#define TRACE_TAG (DML_TAG_RESERVED + 0x09000100) /* above coll's range (coll.h) */

void dml__trace_init(dml__trace *t, int enabled) {
  memset(t, 0, sizeof(*t));
  t->enabled = enabled;
  t->t0_ns = dml_now_ns();
  pthread_mutex_init(&t->lock, NULL);
}

void dml__trace_span(dml__trace *t, const char *name, const char *cat, int tid, uint64_t start_ns,
                     uint64_t end) {
  if (!t->enabled) return;
  pthread_mutex_lock(&t->lock);
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 4096;
    dml__trace_event *ev = dml__realloc(t->ev, cap * sizeof(*ev));
    if (ev == NULL) { /* out of memory: stop tracing rather than fail the run */
      t->enabled = 0;
      pthread_mutex_unlock(&t->lock);
      return;
    }
    t->ev = ev;
    t->cap = cap;
  }
  dml__trace_event *e = &t->ev[t->n++];
  snprintf(e->name, sizeof(e->name), "%s", name);
  snprintf(e->cat, sizeof(e->cat), "%s", cat);
  e->start_ns = start_ns > t->t0_ns ? start_ns - t->t0_ns : 0;
  e->dur_ns = end > start_ns ? end - start_ns : 0;
  e->tid = tid;
  pthread_mutex_unlock(&t->lock);
}

void dml__trace_add(dml__trace *t, const char *name, const char *cat, int tid, uint64_t start_ns) {
  if (t->enabled) dml__trace_span(t, name, cat, tid, start_ns, dml_now_ns());
}

/* Copies src into dst keeping only characters that need no JSON escaping. */
static void json_safe(char *dst, const char *src, size_t cap) {
  size_t k = 0;
  for (const char *c = src; *c && k + 1 < cap; c++)
    if (*c != '"' && *c != '\\' && (unsigned char)*c >= 0x20) dst[k++] = *c;
  dst[k] = '\0';
}

static void write_events(FILE *f, const dml__trace_event *ev, size_t n, int rank, int *first) {
  for (size_t i = 0; i < n; i++) {
    /* Names are our own short strings; keep only safe characters all the same. */
    char name[sizeof(ev[i].name)], cat[sizeof(ev[i].cat)];
    json_safe(name, ev[i].name, sizeof(name));
    json_safe(cat, ev[i].cat, sizeof(cat));
    fprintf(f,
            "%s\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,"
            "\"dur\":%.3f}",
            *first ? "" : ",", name, cat, rank, ev[i].tid, ev[i].start_ns / 1e3,
            ev[i].dur_ns / 1e3);
    *first = 0;
  }
}

int dml__trace_write(dml__trace *t, dml_comm *comm, const char *path, dml_err *err) {
  int rank = comm ? dml_comm_rank(comm) : 0, size = comm ? dml_comm_size(comm) : 1;
  int rc = 0;
  if (rank != 0) {
    uint64_t n = t->n;
    rc = dml_comm_send(comm, 0, TRACE_TAG, &n, sizeof(n));
    if (rc == 0 && n) rc = dml_comm_send(comm, 0, TRACE_TAG, t->ev, n * sizeof(*t->ev));
    if (rc != 0)
      return dml_err_set(err, rc, "trace: sending events to rank 0: %s", dml_comm_errmsg(comm));
    return 0;
  }
  dml_atomic_file af;
  if ((rc = dml_atomic_open(&af, path, err)) != 0) return rc;
  fprintf(af.f, "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[");
  int first = 1;
  for (int r = 0; r < size; r++) {
    fprintf(
        af.f,
        "%s\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"rank %d\"}}",
        first ? "" : ",", r, r);
    first = 0;
  }
  write_events(af.f, t->ev, t->n, 0, &first);
  for (int r = 1; r < size; r++) {
    uint64_t n = 0;
    rc = dml_comm_recv(comm, r, TRACE_TAG, &n, sizeof(n));
    if (rc == 0 && n > (1u << 26)) rc = DML_EPROTO; /* more events than a run records */
    dml__trace_event *ev = NULL;
    if (rc == 0 && n) {
      ev = dml__malloc(n * sizeof(*ev));
      if (ev == NULL) rc = DML_ENOMEM;
      if (rc == 0) rc = dml_comm_recv(comm, r, TRACE_TAG, ev, n * sizeof(*ev));
      if (rc == 0) {
        for (uint64_t i = 0; i < n; i++) { /* from another process: terminate the strings */
          ev[i].name[sizeof(ev[i].name) - 1] = '\0';
          ev[i].cat[sizeof(ev[i].cat) - 1] = '\0';
        }
      }
    }
    if (rc != 0) {
      dml__free(ev);
      dml_atomic_abort(&af);
      return dml_err_set(err, rc, "trace: receiving events of rank %d: %s", r,
                         comm ? dml_comm_errmsg(comm) : dml_strerror(rc));
    }
    write_events(af.f, ev, n, r, &first);
    dml__free(ev);
  }
  fprintf(af.f, "\n]}\n");
  return dml_atomic_commit(&af, err);
}

void dml__trace_free(dml__trace *t) {
  dml__free(t->ev);
  pthread_mutex_destroy(&t->lock);
  memset(t, 0, sizeof(*t));
}
