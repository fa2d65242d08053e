/* The task farm across processes: rank 0 hands tasks to worker ranks over a dml_comm as they
 * finish (credit of one running + prefetch queued per worker), re-issues the tasks of workers that
 * die or fall silent (heartbeats, leases), fails a task that was running on max_kills dying
 * workers, and keeps the first result of each task. Frames have a fixed size (header + the
 * maximum payload or result), so every receive is posted ahead with an exact length and a corrupt
 * frame is rejected by its fields. It does not start processes (see dml_launch_run) or retry
 * tasks whose handler returned an error. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "task/task_internal.h"

/* Above the collectives' tag range (coll_internal.h: DML_TAG_RESERVED + [0, 0x08000000] incl.
 * its notice tag). */
#define FARM_TAG_DOWN (DML_TAG_RESERVED + 0x08006000)
#define FARM_TAG_UP (DML_TAG_RESERVED + 0x08006001)
#define FARM_MAGIC 0x464c4d44u /* "DMLF" */
#define DOWN_HDR 64
#define UP_HDR 32
#define NAME_MAX_BYTES 32

enum { DOWN_TASK = 1, DOWN_STOP = 2 };
enum { UP_RESULT = 1, UP_HEARTBEAT = 2, UP_BYE = 3 };

static void put32(unsigned char *p, uint32_t v) {
  memcpy(p, &v, 4);
}
static void put64(unsigned char *p, uint64_t v) {
  memcpy(p, &v, 8);
}
static uint32_t get32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static uint64_t get64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

void dml_farm_opts_default(dml_farm_opts *opts) {
  memset(opts, 0, sizeof *opts);
}

static int resolve_opts(const dml_farm_opts *in, dml_farm_opts *o, dml_err *err) {
  if (in != NULL)
    *o = *in;
  else
    dml_farm_opts_default(o);
  if (o->hb_ms == 0) o->hb_ms = 100;
  if (o->lease_ms == 0) o->lease_ms = 20 * o->hb_ms;
  if (o->max_kills == 0) o->max_kills = 3;
  if (o->prefetch == 0) o->prefetch = 1;
  if (o->max_payload_bytes == 0) o->max_payload_bytes = 4096;
  if (o->max_result_bytes == 0) o->max_result_bytes = 4096;
  if (o->hb_ms < 1 || o->lease_ms <= o->hb_ms || o->max_kills < 1 || o->prefetch < 0 ||
      o->prefetch > 64)
    return dml_err_set(err, DML_EINVAL,
                       "farm: bad options (hb_ms %d, lease_ms %d must exceed it, max_kills %d, "
                       "prefetch %d in 0..64)",
                       o->hb_ms, o->lease_ms, o->max_kills, o->prefetch);
  if (o->max_payload_bytes > (64u << 20) || o->max_result_bytes > (64u << 20))
    return dml_err_set(err, DML_EINVAL, "farm: payload and result limits must be at most 64 MiB");
  return 0;
}

/* =============================================================================================
 * Master */

typedef struct wstate {
  int alive;
  uint64_t last_seen_ns;
  dml_comm_req *rreq;
  unsigned char *rbuf;
  size_t *inflight; /* task ids, oldest first */
  int ninflight;
} wstate;

typedef struct master {
  dml_comm *c;
  dml_farm_opts o;
  const dml_farm_task *tasks;
  size_t ntasks;
  dml_farm_result *results;
  unsigned char *done; /* per task */
  int *kills;          /* per task */
  size_t *queue;       /* ring of task ids */
  size_t qhead, qlen;
  wstate *w; /* indexed by rank; 0 unused */
  int n;     /* world size */
  int alive;
  size_t ndone;
  dml_farm_stats st;
  unsigned char *sbuf; /* one DOWN frame */
  size_t down_bytes, up_bytes;
  char last_loss[200];
} master;

static void q_push_front(master *m, size_t t) {
  m->qhead = (m->qhead + m->ntasks - 1) % m->ntasks;
  m->queue[m->qhead] = t;
  m->qlen++;
}

static size_t q_pop_front(master *m) {
  size_t t = m->queue[m->qhead];
  m->qhead = (m->qhead + 1) % m->ntasks;
  m->qlen--;
  return t;
}

static void finish_task(master *m, size_t t, int status, int worker, const void *data,
                        size_t bytes) {
  dml_farm_result *r = &m->results[t];
  r->status = status;
  r->worker = worker;
  r->data = NULL;
  r->bytes = 0;
  if (bytes > 0) {
    r->data = dml__malloc(bytes);
    if (r->data == NULL) {
      r->status = DML_ENOMEM;
    } else {
      memcpy(r->data, data, bytes);
      r->bytes = bytes;
    }
  }
  m->done[t] = 1;
  m->ndone++;
  if (r->status != 0)
    m->st.failed++;
  else
    m->st.done++;
}

/* Worker r is gone: its tasks go back to the front of the queue, or fail after max_kills. */
static void lose_worker(master *m, int r, const char *why) {
  wstate *w = &m->w[r];
  if (!w->alive) return;
  w->alive = 0;
  m->alive--;
  m->st.workers_lost++;
  snprintf(m->last_loss, sizeof m->last_loss, "worker %s: %s", dml_comm_peer_name(m->c, r), why);
  dml_log(DML_LOG_WARN, "farm: lost %s; re-issuing its %d task(s)", m->last_loss, w->ninflight);
  /* Re-queue newest first so the oldest ends up at the very front. A worker runs its tasks in
   * the order it got them, so only the oldest was running when it died: only that one is
   * charged with the death (the others had not started). */
  for (int i = w->ninflight - 1; i >= 0; i--) {
    size_t t = w->inflight[i];
    if (m->done[t]) continue;
    if (i == 0) m->kills[t]++;
    if (m->kills[t] >= m->o.max_kills) {
      char msg[96];
      int len =
          snprintf(msg, sizeof msg, "task %zu was running on %d workers that died", t, m->kills[t]);
      dml_log(DML_LOG_ERROR, "farm: %s (last: %s)", msg, m->last_loss);
      finish_task(m, t, DML_EPEER, -1, msg, len > 0 ? (size_t)len + 1 : 0);
    } else {
      q_push_front(m, t);
      m->st.reissued++;
    }
  }
  w->ninflight = 0;
}

static int post_recv(master *m, int r) {
  return dml_comm_irecv(m->c, r, FARM_TAG_UP, m->w[r].rbuf, m->up_bytes, &m->w[r].rreq);
}

static int send_task(master *m, int r, size_t t) {
  const dml_farm_task *task = &m->tasks[t];
  unsigned char *f = m->sbuf;
  memset(f, 0, DOWN_HDR);
  put32(f, FARM_MAGIC);
  put32(f + 4, DOWN_TASK);
  put64(f + 8, t);
  put32(f + 16, (uint32_t)++m->results[t].attempts);
  put32(f + 20, (uint32_t)task->bytes);
  memcpy(f + 24, task->handler, strlen(task->handler));
  if (task->bytes > 0) memcpy(f + DOWN_HDR, task->payload, task->bytes);
  return dml_comm_send(m->c, r, FARM_TAG_DOWN, f, m->down_bytes);
}

/* A frame from worker r: a heartbeat or a result. Returns 0, or a reason to drop the worker. */
static const char *handle_up(master *m, int r) {
  wstate *w = &m->w[r];
  const unsigned char *f = w->rbuf;
  if (get32(f) != FARM_MAGIC) return "bad frame (magic)";
  uint32_t kind = get32(f + 4);
  w->last_seen_ns = dml_now_ns();
  if (kind == UP_HEARTBEAT) return NULL;
  if (kind == UP_BYE) return "left before being told to stop";
  if (kind != UP_RESULT) return "bad frame (kind)";
  uint64_t t = get64(f + 8);
  int32_t status = (int32_t)get32(f + 20);
  uint32_t len = get32(f + 24);
  if (t >= m->ntasks) return "bad frame (task id out of range)";
  if (len > m->o.max_result_bytes) return "bad frame (result length)";
  int held = -1;
  for (int i = 0; i < w->ninflight; i++)
    if (w->inflight[i] == t) held = i;
  if (held < 0) return "bad frame (result for a task it was not given)";
  memmove(&w->inflight[held], &w->inflight[held + 1],
          (size_t)(w->ninflight - held - 1) * sizeof(size_t));
  w->ninflight--;
  if (m->done[t]) {
    m->st.duplicates++;
    return NULL;
  }
  finish_task(m, (size_t)t, status, r, f + UP_HDR, len);
  return NULL;
}

static void stop_workers(master *m) {
  unsigned char *f = m->sbuf;
  memset(f, 0, m->down_bytes);
  put32(f, FARM_MAGIC);
  put32(f + 4, DOWN_STOP);
  for (int r = 1; r < m->n; r++) {
    if (m->w[r].alive) {
      dml_comm_send(m->c, r, FARM_TAG_DOWN, f, m->down_bytes);
      continue;
    }
    /* a worker lost to the lease may still be there (stopped a while, then resumed): told too, so
     * that it does not wait for a task until this process ends -- for a second at most (one that
     * died fails at once) */
    dml_comm_req *q = NULL;
    if (dml_comm_isend(m->c, r, FARM_TAG_DOWN, f, m->down_bytes, &q) == 0 &&
        dml_comm_wait(m->c, q, 1000) == DML_ETIMEDOUT)
      dml_comm_cancel(m->c, q);
  }
}

/* Buffers that a posted receive may still write into: kept (reachable) until the process ends. */
typedef struct parked {
  struct parked *next;
  unsigned char *buf;
} parked;
static parked *g_parked;
static pthread_mutex_t g_parked_mu = PTHREAD_MUTEX_INITIALIZER;

static void park_buffer(unsigned char *buf) {
  parked *p = dml__malloc(sizeof *p);
  if (p == NULL) return; /* the buffer then simply stays allocated */
  p->buf = buf;
  pthread_mutex_lock(&g_parked_mu);
  p->next = g_parked;
  g_parked = p;
  pthread_mutex_unlock(&g_parked_mu);
}

int dml_farm_run(dml_comm *c, const dml_farm_opts *opts, const dml_farm_task *tasks, size_t ntasks,
                 dml_farm_result *results, dml_farm_stats *stats, dml_err *err) {
  master m;
  memset(&m, 0, sizeof m);
  if (stats != NULL) memset(stats, 0, sizeof *stats);
  int rc = resolve_opts(opts, &m.o, err);
  if (rc != 0) return rc;
  if (c == NULL || (ntasks > 0 && (tasks == NULL || results == NULL)))
    return dml_err_set(err, DML_EINVAL, "farm: no communicator, tasks or results");
  if (dml_comm_rank(c) != 0)
    return dml_err_set(err, DML_ESTATE, "farm: dml_farm_run runs on rank 0");
  m.n = dml_comm_size(c);
  if (m.n < 2 && ntasks > 0)
    return dml_err_set(err, DML_EINVAL, "farm: no worker ranks (world size 1)");
  for (size_t t = 0; t < ntasks; t++) {
    results[t] = (dml_farm_result){0, NULL, 0, -1, 0};
    const char *h = tasks[t].handler;
    if (h == NULL || strlen(h) >= NAME_MAX_BYTES || tasks[t].bytes > m.o.max_payload_bytes ||
        (tasks[t].bytes > 0 && tasks[t].payload == NULL))
      return dml_err_set(err, DML_EINVAL,
                         "farm: task %zu: handler name missing or over %d bytes, or payload of %zu "
                         "bytes over the limit of %zu",
                         t, NAME_MAX_BYTES - 1, tasks[t].bytes, m.o.max_payload_bytes);
  }
  double t0 = dml_now_s();
  m.c = c;
  m.tasks = tasks;
  m.ntasks = ntasks;
  m.results = results;
  m.down_bytes = DOWN_HDR + m.o.max_payload_bytes;
  m.up_bytes = UP_HDR + m.o.max_result_bytes;
  int cap = 1 + m.o.prefetch;
  m.done = dml__calloc(ntasks ? ntasks : 1, 1);
  m.kills = dml__calloc(ntasks ? ntasks : 1, sizeof(int));
  m.queue = dml__malloc((ntasks ? ntasks : 1) * sizeof(size_t));
  m.w = dml__calloc((size_t)m.n, sizeof(wstate));
  m.sbuf = dml__malloc(m.down_bytes);
  if (m.done == NULL || m.kills == NULL || m.queue == NULL || m.w == NULL || m.sbuf == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "farm: out of memory for %zu tasks", ntasks);
    goto out;
  }
  for (size_t t = 0; t < ntasks; t++) m.queue[t] = t;
  m.qlen = ntasks;
  uint64_t now = dml_now_ns();
  for (int r = 1; r < m.n; r++) {
    wstate *w = &m.w[r];
    w->rbuf = dml__malloc(m.up_bytes);
    w->inflight = dml__malloc((size_t)cap * sizeof(size_t));
    if (w->rbuf == NULL || w->inflight == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "farm: out of memory for worker %d", r);
      goto out;
    }
    w->alive = 1;
    w->last_seen_ns = now;
    m.alive++;
    if (post_recv(&m, r) != 0) lose_worker(&m, r, dml_comm_errmsg(c));
  }
  dml_progress prog;
  if (m.o.progress) dml_progress_begin(&prog, stderr, "farm", ntasks);
  uint64_t lease_ns = (uint64_t)m.o.lease_ms * 1000000u;
  long idle_ns = 20000;
  while (m.ndone < ntasks) {
    if (m.alive == 0) {
      rc = dml_err_set(err, DML_EPEER,
                       "farm: no worker left with %zu of %zu tasks unfinished (last lost: %s)",
                       ntasks - m.ndone, ntasks, m.last_loss);
      goto out_progress;
    }
    int progressed = 0;
    /* Hand out work: keep every live worker at one running + prefetch queued. */
    for (int r = 1; r < m.n && m.qlen > 0; r++) {
      wstate *w = &m.w[r];
      while (w->alive && w->ninflight < cap && m.qlen > 0) {
        size_t t = q_pop_front(&m);
        if (m.done[t]) continue;
        w->inflight[w->ninflight++] = t;
        if (send_task(&m, r, t) != 0) lose_worker(&m, r, dml_comm_errmsg(c));
        progressed = 1;
      }
    }
    /* Collect what came back; a failed receive means a dead connection. */
    now = dml_now_ns();
    for (int r = 1; r < m.n; r++) {
      wstate *w = &m.w[r];
      if (!w->alive) continue;
      int done = 0;
      int trc = dml_comm_test(c, w->rreq, &done);
      if (done) {
        w->rreq = NULL;
        progressed = 1;
        const char *bad = trc != 0 ? dml_comm_errmsg(c) : handle_up(&m, r);
        if (bad != NULL) {
          lose_worker(&m, r, bad);
          continue;
        }
        if (post_recv(&m, r) != 0) lose_worker(&m, r, dml_comm_errmsg(c));
      } else if (now - w->last_seen_ns > lease_ns) {
        char why[64];
        snprintf(why, sizeof why, "silent for more than %d ms (lease)", m.o.lease_ms);
        lose_worker(&m, r, why);
      }
    }
    if (m.o.progress) {
      char status[64];
      snprintf(status, sizeof status, "%d workers, %llu re-issued", m.alive,
               (unsigned long long)m.st.reissued);
      dml_progress_update(&prog, m.ndone, status);
    }
    /* Nothing happened: back off from 20 us to 1 ms so a master waiting on long tasks does not
     * take a core from the workers (a receive cannot be waited on several peers at once). */
    if (progressed) {
      idle_ns = 20000;
    } else {
      struct timespec ts = {0, idle_ns};
      nanosleep(&ts, NULL);
      if (idle_ns < 1000000) idle_ns *= 2;
    }
  }
  rc = 0;
out_progress:
  if (m.o.progress) dml_progress_end(&prog, rc == 0 ? "done" : "failed");
out:
  if (m.w != NULL && m.sbuf != NULL) stop_workers(&m);
  m.st.wall_s = dml_now_s() - t0;
  if (stats != NULL) *stats = m.st;
  if (m.w != NULL) {
    /* Each live worker answers the stop with a goodbye after its last frame (the pair's frames
     * arrive in order), so afterwards no receive of ours is left posted and the communicator can
     * carry another run. A worker silent for a lease, or lost earlier with a receive still
     * posted, keeps its buffer (a few KiB, parked) until the process ends: the communicator has
     * no way to withdraw one posted receive. */
    for (int r = 1; r < m.n; r++) {
      wstate *w = &m.w[r];
      int freeable = w->rreq == NULL;
      while (w->alive && w->rreq != NULL) {
        int wrc = dml_comm_wait(c, w->rreq, m.o.lease_ms);
        if (wrc == DML_ETIMEDOUT) break;
        w->rreq = NULL;
        freeable = 1;
        if (wrc != 0 || get32(w->rbuf) != FARM_MAGIC || get32(w->rbuf + 4) == UP_BYE) break;
        if (post_recv(&m, r) != 0) w->rreq = NULL; /* a heartbeat or late frame: keep listening */
      }
      if (freeable && w->rreq == NULL)
        dml__free(w->rbuf);
      else
        park_buffer(w->rbuf);
      dml__free(w->inflight);
    }
  }
  dml__free(m.w);
  dml__free(m.done);
  dml__free(m.kills);
  dml__free(m.queue);
  dml__free(m.sbuf);
  return rc;
}

void dml_farm_results_free(dml_farm_result *results, size_t ntasks) {
  if (results == NULL) return;
  for (size_t t = 0; t < ntasks; t++) {
    dml__free(results[t].data);
    results[t].data = NULL;
  }
}

/* =============================================================================================
 * Worker */

typedef struct hb {
  dml_comm *c;
  int hb_ms;
  size_t up_bytes;
  pthread_mutex_t mu; /* serialises this rank's sends to the master */
  pthread_cond_t cv;
  int stop;
  int rc;
} hb;

static void *hb_main(void *arg) {
  hb *h = arg;
  unsigned char *f = dml__calloc(1, h->up_bytes);
  pthread_mutex_lock(&h->mu);
  if (f == NULL) h->rc = DML_ENOMEM;
  while (!h->stop && h->rc == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)h->hb_ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    if (h->stop) break;
    put32(f, FARM_MAGIC);
    put32(f + 4, UP_HEARTBEAT);
    int rc = dml_comm_send(h->c, 0, FARM_TAG_UP, f, h->up_bytes);
    if (rc != 0) h->rc = rc;
  }
  pthread_mutex_unlock(&h->mu);
  dml__free(f);
  return NULL;
}

int dml_farm_serve(dml_comm *c, const dml_farm_opts *opts, const dml_farm_handler *handlers,
                   size_t nhandlers, dml_err *err) {
  dml_farm_opts o;
  int rc = resolve_opts(opts, &o, err);
  if (rc != 0) return rc;
  if (c == NULL || (nhandlers > 0 && handlers == NULL))
    return dml_err_set(err, DML_EINVAL, "farm: no communicator or handlers");
  if (dml_comm_rank(c) == 0)
    return dml_err_set(err, DML_ESTATE, "farm: rank 0 is the master, not a worker");
  size_t down_bytes = DOWN_HDR + o.max_payload_bytes, up_bytes = UP_HDR + o.max_result_bytes;
  unsigned char *in = dml__malloc(down_bytes), *out = dml__calloc(1, up_bytes);
  hb h = {c, o.hb_ms, up_bytes, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
  pthread_t th;
  int th_started = 0;
  if (in == NULL || out == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "farm: out of memory for frames");
    goto out;
  }
  if (pthread_create(&th, NULL, hb_main, &h) != 0) {
    rc = dml_err_set(err, DML_ESYS, "farm: cannot start the heartbeat thread");
    goto out;
  }
  th_started = 1;
  for (;;) {
    dml_comm_req *req;
    rc = dml_comm_irecv(c, 0, FARM_TAG_DOWN, in, down_bytes, &req);
    if (rc != 0) {
      dml_err_set(err, rc, "farm: master lost: %s", dml_comm_errmsg(c));
      goto out;
    }
    /* Wait in slices so a failed heartbeat (lost master) is noticed even while idle. */
    while ((rc = dml_comm_wait(c, req, o.lease_ms)) == DML_ETIMEDOUT) {
      pthread_mutex_lock(&h.mu);
      int hrc = h.rc;
      pthread_mutex_unlock(&h.mu);
      if (hrc != 0) {
        dml_comm_abort(c, "farm: heartbeat to the master failed");
        dml_comm_wait(c, req, o.hb_ms);
        rc = dml_err_set(err, hrc, "farm: master lost (heartbeat failed): %s", dml_comm_errmsg(c));
        goto out;
      }
    }
    if (rc != 0) {
      dml_err_set(err, rc, "farm: master lost: %s", dml_comm_errmsg(c));
      goto out;
    }
    uint32_t kind = get32(in + 4);
    uint32_t len = get32(in + 20);
    if (get32(in) != FARM_MAGIC || (kind != DOWN_TASK && kind != DOWN_STOP) ||
        len > o.max_payload_bytes || memchr(in + 24, 0, NAME_MAX_BYTES) == NULL) {
      rc = dml_err_set(err, DML_EPROTO,
                       "farm: bad task frame from the master (kind %u, payload %u bytes)", kind,
                       len);
      goto out;
    }
    if (kind == DOWN_STOP) {
      /* Heartbeats end first, then the goodbye: it is the last frame of this run. */
      pthread_mutex_lock(&h.mu);
      h.stop = 1;
      pthread_cond_signal(&h.cv);
      pthread_mutex_unlock(&h.mu);
      pthread_join(th, NULL);
      th_started = 0;
      memset(out, 0, UP_HDR);
      put32(out, FARM_MAGIC);
      put32(out + 4, UP_BYE);
      rc = dml_comm_send(c, 0, FARM_TAG_UP, out, up_bytes);
      if (rc != 0)
        dml_err_set(err, rc, "farm: goodbye to the master failed: %s", dml_comm_errmsg(c));
      goto out;
    }
    const char *name = (const char *)in + 24;
    const dml_farm_handler *hd = NULL;
    for (size_t i = 0; i < nhandlers; i++)
      if (strcmp(handlers[i].name, name) == 0) hd = &handlers[i];
    size_t out_len = 0;
    int status;
    if (hd == NULL) {
      status = DML_EINVAL;
      out_len = (size_t)snprintf((char *)out + UP_HDR, o.max_result_bytes, "no handler named '%s'",
                                 name) +
                1;
      if (out_len > o.max_result_bytes) out_len = o.max_result_bytes;
    } else {
      status = hd->fn(hd->user, in + DOWN_HDR, len, out + UP_HDR, o.max_result_bytes, &out_len);
      if (out_len > o.max_result_bytes) {
        status = DML_EOVERFLOW;
        out_len = 0;
      }
    }
    put32(out, FARM_MAGIC);
    put32(out + 4, UP_RESULT);
    memcpy(out + 8, in + 8, 8);   /* task id */
    memcpy(out + 16, in + 16, 4); /* attempt */
    put32(out + 20, (uint32_t)status);
    put32(out + 24, (uint32_t)out_len);
    pthread_mutex_lock(&h.mu);
    rc = dml_comm_send(c, 0, FARM_TAG_UP, out, up_bytes);
    pthread_mutex_unlock(&h.mu);
    if (rc != 0) {
      dml_err_set(err, rc, "farm: master lost: %s", dml_comm_errmsg(c));
      goto out;
    }
  }
out:
  if (th_started) {
    pthread_mutex_lock(&h.mu);
    h.stop = 1;
    pthread_cond_signal(&h.cv);
    pthread_mutex_unlock(&h.mu);
    pthread_join(th, NULL);
  }
  pthread_mutex_destroy(&h.mu);
  pthread_cond_destroy(&h.cv);
  dml__free(in);
  dml__free(out);
  return rc;
}
