/* The collectives' front end: argument checks, the per-communicator state (sequence numbers,
 * scratch buffers, the background thread that runs non-blocking collectives in issue order,
 * the failure notices), the choice of all-reduce algorithm, and the bounded waits that turn a
 * dead or silent peer into an error naming it. The algorithms themselves are in their own files. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coll/coll_internal.h"

/* Failure notice: a rank whose collective failed tells the others which rank it blames. */
#define NOTICE_BYTES 256
#define NOTICE_TEXT (NOTICE_BYTES - 4)
/* Slice of a bounded wait: how often a waiting rank checks the failure notices. */
#define WAIT_SLICE_MS 100
/* A peer whose connection closed is blamed once our wait has made no progress for this long
 * (it may have closed legitimately after sending everything we still have to read). */
#define CLOSED_GRACE_S 1.0
/* Blamed rank of a notice that says "this rank has detached" (not a failure). */
#define NOTICE_BYE (-2)

typedef enum { OP_ALLREDUCE, OP_REDUCE_SCATTER, OP_ALLGATHER, OP_BROADCAST, OP_BARRIER } op_kind;

struct dml_coll_req {
  dml__coll_state *st;
  op_kind kind;
  const void *sendbuf;
  void *buf;
  size_t count;
  dml_dtype dt, wire; /* wire != dt: compressed all-reduce of f32 */
  dml_redop op;
  dml_allreduce_algo algo;
  int root;
  int status;
  int done;
  int heap;                   /* 1: made by a non-blocking call, freed by wait/test */
  uint64_t start_ns, done_ns; /* when the background thread ran it */
  struct dml_coll_req *next;
};

struct dml__coll_state {
  dml_comm *comm;
  int rank, size;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint32_t seq;
  dml_coll_req *head, *tail; /* queued non-blocking collectives */
  int caller_busy, worker_busy;
  int thread_started, stopping;
  pthread_t thread;
  /* settings from the environment */
  int env_code;
  char env_msg[300];
  dml_allreduce_algo env_algo;
  size_t rd_max_bytes;
  size_t chunk_bytes;
  double stall_s;
  int spin_us;
  /* sticky failure */
  int failed;
  char errmsg[512];
  /* failure notices: one receive posted per peer */
  dml_comm_req **notice_req;
  char *notice_buf;
  int *gone; /* per peer: the error its notice receive ended with (its connection failed) */
  /* scratch reused between collectives; pend[] reused too */
  void *scratch[4];
  size_t scratch_cap[4];
  dml_comm_req **pend;
  int *pend_peer;
  size_t cappend;
  dml__coll_state *next;
};

static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static dml__coll_state *g_states;
/* Notice buffers of detached states: a receive may still be posted on them until the
 * communicator is freed, so they are kept (reachable) instead of freed. */
typedef struct parked {
  void *buf;
  void *reqs;
  struct parked *next;
} parked;
static parked *g_parked;

/* ---------------------------------------------------------------------------------------------
 * Names and parsing. */

size_t dml_dtype_size(dml_dtype dt) {
  switch (dt) {
    case DML_F32: return 4;
    case DML_F64: return 8;
    case DML_I32: return 4;
    case DML_I64: return 8;
    case DML_F16: return 2;
    case DML_BF16: return 2;
  }
  return 0;
}

static const char *const k_dtype_names[] = {"f32", "f64", "i32", "i64", "f16", "bf16"};
static const char *const k_op_names[] = {"sum", "avg", "max", "min"};
static const char *const k_algo_names[] = {"auto", "ring", "rd"};

const char *dml_dtype_name(dml_dtype dt) {
  return (unsigned)dt < DML__ARRAY_LEN(k_dtype_names) ? k_dtype_names[dt] : NULL;
}
const char *dml_redop_name(dml_redop op) {
  return (unsigned)op < DML__ARRAY_LEN(k_op_names) ? k_op_names[op] : NULL;
}
const char *dml_allreduce_algo_name(dml_allreduce_algo a) {
  return (unsigned)a < DML__ARRAY_LEN(k_algo_names) ? k_algo_names[a] : NULL;
}

static int parse_name(const char *s, const char *const *names, size_t n, int *out) {
  if (s == NULL) return DML_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (strcmp(s, names[i]) == 0) {
      *out = (int)i;
      return 0;
    }
  return DML_EINVAL;
}
int dml_dtype_parse(const char *s, dml_dtype *out) {
  int v, rc = parse_name(s, k_dtype_names, DML__ARRAY_LEN(k_dtype_names), &v);
  if (rc == 0) *out = (dml_dtype)v;
  return rc;
}
int dml_redop_parse(const char *s, dml_redop *out) {
  int v, rc = parse_name(s, k_op_names, DML__ARRAY_LEN(k_op_names), &v);
  if (rc == 0) *out = (dml_redop)v;
  return rc;
}
int dml_allreduce_algo_parse(const char *s, dml_allreduce_algo *out) {
  int v, rc = parse_name(s, k_algo_names, DML__ARRAY_LEN(k_algo_names), &v);
  if (rc == 0) *out = (dml_allreduce_algo)v;
  return rc;
}

/* Measured on this machine (docs/collectives.md), tcp loopback, best of 9: with 2 ranks recursive
 * doubling (one exchange of the whole buffer) matches or beats the ring (two exchanges of half)
 * up to 256-512 KiB; with 3..8 ranks the ring wins from 128 KiB. */
#define DEFAULT_RD_MAX_BYTES ((size_t)64 * 1024)
#define DEFAULT_RD_MAX_BYTES_2 ((size_t)256 * 1024)
#define DEFAULT_CHUNK_BYTES ((size_t)512 * 1024)
#define DEFAULT_CHUNK_BYTES_MPI ((size_t)4 * 1024 * 1024)

size_t dml_allreduce_threshold_bytes(int world_size) {
  size_t def = world_size <= 2 ? DEFAULT_RD_MAX_BYTES_2 : DEFAULT_RD_MAX_BYTES;
  int64_t v;
  if (dml_env_i64("DISTML_ALLREDUCE_RD_MAX_BYTES", (int64_t)def, 0, INT64_MAX, &v, NULL) != 0)
    return def;
  return (size_t)v;
}

/* ---------------------------------------------------------------------------------------------
 * Per-communicator state. */

static void read_env(dml__coll_state *st) {
  dml_err e = {0};
  int64_t v;
  st->env_algo = DML_ALGO_AUTO;
  const char *a = getenv("DISTML_ALLREDUCE_ALGO");
  if (a && *a && (dml_allreduce_algo_parse(a, &st->env_algo) != 0)) {
    st->env_code = DML_EINVAL;
    snprintf(st->env_msg, sizeof(st->env_msg),
             "environment variable DISTML_ALLREDUCE_ALGO: '%s' is not one of ring, rd, auto", a);
    return;
  }
  size_t def = st->size <= 2 ? DEFAULT_RD_MAX_BYTES_2 : DEFAULT_RD_MAX_BYTES;
  if (dml_env_i64("DISTML_ALLREDUCE_RD_MAX_BYTES", (int64_t)def, 0, INT64_MAX, &v, &e) != 0)
    goto bad;
  st->rd_max_bytes = (size_t)v;
  /* MPI pipelines large messages itself; small chunks only add waits there. */
  const char *be = dml_comm_backend(st->comm);
  size_t chunk = be && strcmp(be, "mpi") == 0 ? DEFAULT_CHUNK_BYTES_MPI : DEFAULT_CHUNK_BYTES;
  if (dml_env_i64("DISTML_RING_CHUNK_BYTES", (int64_t)chunk, 64, (int64_t)1 << 30, &v, &e) != 0)
    goto bad;
  st->chunk_bytes = (size_t)v;
  if (dml_env_i64("DISTML_STALL_S", 10, 1, 86400, &v, &e) != 0) goto bad;
  st->stall_s = (double)v;
  if (dml_env_i64("DISTML_COLL_SPIN_US", dml__default_spin_us(), 0, 1000000, &v, &e) != 0) goto bad;
  st->spin_us = (int)v;
  return;
bad:
  st->env_code = e.code ? e.code : DML_EINVAL;
  snprintf(st->env_msg, sizeof(st->env_msg), "%.200s", e.msg);
}

static int post_notices(dml__coll_state *st) {
  int p = st->size;
  st->notice_req = dml__calloc((size_t)p, sizeof(*st->notice_req));
  st->notice_buf = dml__calloc((size_t)p, NOTICE_BYTES);
  st->gone = dml__calloc((size_t)p, sizeof(int));
  if (st->notice_req == NULL || st->notice_buf == NULL || st->gone == NULL) return DML_ENOMEM;
  for (int i = 0; i < p; i++) {
    if (i == st->rank) continue;
    int rc =
        dml_comm_irecv(st->comm, i, DML__COLL_TAG_NOTICE, st->notice_buf + (size_t)i * NOTICE_BYTES,
                       NOTICE_BYTES, &st->notice_req[i]);
    if (rc) {
      st->notice_req[i] = NULL;
      return rc;
    }
  }
  return 0;
}

static void free_state(dml__coll_state *st) {
  if (st == NULL) return;
  int outstanding = 0;
  for (int i = 0; st->notice_req && i < st->size; i++) outstanding |= st->notice_req[i] != NULL;
  if (outstanding) {
    parked *pk = calloc(1, sizeof(*pk)); /* plain calloc: kept for the life of the process */
    if (pk) {
      pk->buf = st->notice_buf;
      pk->reqs = st->notice_req;
      pthread_mutex_lock(&g_reg_mu);
      pk->next = g_parked;
      g_parked = pk;
      pthread_mutex_unlock(&g_reg_mu);
    }
  } else {
    dml__free(st->notice_buf);
    dml__free(st->notice_req);
  }
  for (size_t i = 0; i < DML__ARRAY_LEN(st->scratch); i++) dml__free(st->scratch[i]);
  dml__free(st->gone);
  dml__free(st->pend);
  dml__free(st->pend_peer);
  pthread_mutex_destroy(&st->mu);
  pthread_cond_destroy(&st->cv);
  dml__free(st);
}

static dml__coll_state *find_state(dml_comm *c) {
  for (dml__coll_state *s = g_states; s; s = s->next)
    if (s->comm == c) return s;
  return NULL;
}

static int get_state(dml_comm *c, dml__coll_state **out) {
  pthread_mutex_lock(&g_reg_mu);
  dml__coll_state *st = find_state(c);
  if (st) {
    pthread_mutex_unlock(&g_reg_mu);
    *out = st;
    return 0;
  }
  st = dml__calloc(1, sizeof(*st));
  if (st == NULL) {
    pthread_mutex_unlock(&g_reg_mu);
    return DML_ENOMEM;
  }
  st->comm = c;
  st->rank = dml_comm_rank(c);
  st->size = dml_comm_size(c);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&st->mu, NULL);
  pthread_cond_init(&st->cv, &ca);
  pthread_condattr_destroy(&ca);
  read_env(st);
  if (st->size > 1) {
    int rc = post_notices(st);
    if (rc) {
      st->failed = rc;
      snprintf(st->errmsg, sizeof(st->errmsg),
               "collectives: cannot post failure-notice receives: %s", dml_strerror(rc));
    }
  }
  st->next = g_states;
  g_states = st;
  pthread_mutex_unlock(&g_reg_mu);
  *out = st;
  return 0;
}

/* Detach is collective: every rank sends each peer a "bye" notice and waits (a bounded time)
 * for theirs, so that no notice receive is left posted when the communicator closes (a posted
 * receive on a connection that closes looks like a failure to the backend). After a failure the
 * communicator is aborted: the receives have completed, only collect them. */
static void say_goodbye(dml__coll_state *st) {
  if (st->notice_req == NULL || st->size < 2) return;
  int p = st->size;
  if (st->failed) {
    for (int i = 0; i < p; i++) {
      int done = 0;
      if (st->notice_req[i] && (dml_comm_test(st->comm, st->notice_req[i], &done), done))
        st->notice_req[i] = NULL;
    }
    return;
  }
  char *bye = dml__calloc(1, NOTICE_BYTES);
  dml_comm_req **sreq = dml__calloc((size_t)p, sizeof(*sreq));
  if (bye == NULL || sreq == NULL) {
    dml__free(bye);
    dml__free(sreq);
    return;
  }
  int32_t b = NOTICE_BYE;
  memcpy(bye, &b, sizeof(b));
  snprintf(bye + 4, NOTICE_TEXT, "detached");
  for (int i = 0; i < p; i++)
    if (i != st->rank && !st->gone[i] &&
        dml_comm_isend(st->comm, i, DML__COLL_TAG_NOTICE, bye, NOTICE_BYTES, &sreq[i]) != 0)
      sreq[i] = NULL;
  int timeout_ms = dml_comm_timeout_ms(st->comm);
  double deadline = dml_now_s() + DML__MIN(timeout_ms > 0 ? timeout_ms : 60000, 10000) / 1e3;
  for (int i = 0; i < p; i++) {
    while (st->notice_req[i] != NULL) {
      int left = (int)((deadline - dml_now_s()) * 1e3);
      if (left <= 0) break;
      if (dml_comm_wait(st->comm, st->notice_req[i], left) != DML_ETIMEDOUT)
        st->notice_req[i] = NULL;
    }
  }
  int pending = 0;
  for (int i = 0; i < p; i++) {
    if (sreq[i] == NULL) continue;
    int left = (int)((deadline - dml_now_s()) * 1e3);
    if (dml_comm_wait(st->comm, sreq[i], left > 0 ? left : 0) == DML_ETIMEDOUT) pending = 1;
  }
  dml__free(sreq);
  if (pending) {
    parked *pk = calloc(1, sizeof(*pk)); /* a send may still read bye: keep it */
    if (pk) {
      pk->buf = bye;
      pthread_mutex_lock(&g_reg_mu);
      pk->next = g_parked;
      g_parked = pk;
      pthread_mutex_unlock(&g_reg_mu);
    }
  } else {
    dml__free(bye);
  }
}

void dml_coll_detach(dml_comm *c) {
  if (c == NULL) return;
  pthread_mutex_lock(&g_reg_mu);
  dml__coll_state **pp = &g_states, *st = NULL;
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->comm == c) {
      st = *pp;
      *pp = st->next;
      break;
    }
  pthread_mutex_unlock(&g_reg_mu);
  if (st == NULL) return;
  pthread_mutex_lock(&st->mu);
  st->stopping = 1;
  pthread_cond_broadcast(&st->cv);
  pthread_mutex_unlock(&st->mu);
  if (st->thread_started) pthread_join(st->thread, NULL);
  say_goodbye(st);
  free_state(st);
}

const char *dml_coll_errmsg(dml_comm *c) {
  pthread_mutex_lock(&g_reg_mu);
  dml__coll_state *st = find_state(c);
  pthread_mutex_unlock(&g_reg_mu);
  return st ? st->errmsg : "";
}

/* ---------------------------------------------------------------------------------------------
 * Helpers for the algorithms. */

void *dml__coll_scratch(dml__coll_ctx *ctx, int i, size_t bytes) {
  dml__coll_state *st = ctx->st;
  if (bytes == 0) bytes = 1;
  if (st->scratch_cap[i] < bytes) {
    dml__free(st->scratch[i]);
    st->scratch[i] = dml__malloc(bytes);
    st->scratch_cap[i] = st->scratch[i] ? bytes : 0;
    if (st->scratch[i] == NULL) {
      dml__coll_fail(ctx, DML_ENOMEM, "%s #%u: out of memory (%zu bytes of scratch)", ctx->what,
                     ctx->seq, bytes);
      return NULL;
    }
  }
  return st->scratch[i];
}

int dml__coll_fail(dml__coll_ctx *ctx, int code, const char *fmt, ...) {
  if (ctx->err[0] == '\0') {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof(ctx->err), fmt, ap);
    va_end(ap);
  }
  return code;
}

static int track(dml__coll_ctx *ctx, dml_comm_req *req, int peer) {
  if (ctx->npend == ctx->cappend) {
    size_t cap = ctx->cappend ? 2 * ctx->cappend : 64;
    dml_comm_req **p = dml__realloc(ctx->pend, cap * sizeof(*p));
    if (p == NULL) return DML_ENOMEM;
    ctx->pend = p;
    int *pp = dml__realloc(ctx->pend_peer, cap * sizeof(*pp));
    if (pp == NULL) return DML_ENOMEM;
    ctx->pend_peer = pp;
    ctx->cappend = cap;
  }
  ctx->pend[ctx->npend] = req;
  ctx->pend_peer[ctx->npend] = peer;
  ctx->npend++;
  return 0;
}

static void untrack(dml__coll_ctx *ctx, size_t i) {
  ctx->pend[i] = ctx->pend[ctx->npend - 1];
  ctx->pend_peer[i] = ctx->pend_peer[ctx->npend - 1];
  ctx->npend--;
}

static int check_notices(dml__coll_ctx *ctx, int closed_ok);

/* A failed call on peer: if another rank already announced the root cause, report that one. */
static int comm_error(dml__coll_ctx *ctx, int rc, const char *op, int peer) {
  if (check_notices(ctx, 1) != 0) return rc;
  const char *m = dml_comm_errmsg(ctx->comm);
  return dml__coll_fail(ctx, rc, "%s #%u: %s %s failed: %s%s%s", ctx->what, ctx->seq, op,
                        dml_comm_peer_name(ctx->comm, peer), dml_strerror(rc), m && *m ? ": " : "",
                        m ? m : "");
}

static int start(dml__coll_ctx *ctx, int send, int peer, void *buf, size_t bytes,
                 dml_comm_req **req) {
  int rc = send ? dml_comm_isend(ctx->comm, peer, ctx->tag, buf, bytes, req)
                : dml_comm_irecv(ctx->comm, peer, ctx->tag, buf, bytes, req);
  if (rc) return comm_error(ctx, rc, send ? "send to" : "receive from", peer);
  rc = track(ctx, *req, peer);
  if (rc) return dml__coll_fail(ctx, rc, "%s #%u: out of memory", ctx->what, ctx->seq);
  return 0;
}

int dml__coll_isend(dml__coll_ctx *ctx, int peer, const void *buf, size_t bytes,
                    dml_comm_req **req) {
  return start(ctx, 1, peer, (void *)buf, bytes, req);
}

int dml__coll_irecv(dml__coll_ctx *ctx, int peer, void *buf, size_t bytes, dml_comm_req **req) {
  return start(ctx, 0, peer, buf, bytes, req);
}

/* Copies a peer's notice text, keeping printable characters only (it comes from the network). */
static void notice_text(const char *raw, char *out, size_t outsz) {
  size_t j = 0;
  for (size_t i = 0; i < NOTICE_TEXT && raw[i] && j + 1 < outsz; i++)
    out[j++] = (raw[i] >= 32 && raw[i] < 127) ? raw[i] : '?';
  out[j] = '\0';
}

/* Checks the failure notices. Returns 0 if none, else a failure recorded in ctx. closed_ok: a
 * closed peer is not (yet) blamed. */
static int check_notices(dml__coll_ctx *ctx, int closed_ok) {
  dml__coll_state *st = ctx->st;
  if (st->notice_req == NULL) return 0;
  for (int i = 0; i < st->size; i++) {
    if (st->notice_req[i] == NULL) continue;
    int done = 0;
    int rc = dml_comm_test(ctx->comm, st->notice_req[i], &done);
    if (!done) continue;
    st->notice_req[i] = NULL;
    if (rc == 0) {
      const char *nb = st->notice_buf + (size_t)i * NOTICE_BYTES;
      int32_t blamed;
      memcpy(&blamed, nb, sizeof(blamed));
      if (blamed == NOTICE_BYE) {
        st->gone[i] = 0; /* done with its collectives: not a failure, and not to be waited on */
        continue;
      }
      char text[NOTICE_TEXT + 1];
      notice_text(nb + 4, text, sizeof(text));
      if (blamed >= 0 && blamed < st->size && blamed != st->rank)
        return dml__coll_fail(ctx, DML_EPEER, "%s #%u: %s failed (reported by %s: %s)", ctx->what,
                              ctx->seq, dml_comm_peer_name(ctx->comm, blamed),
                              dml_comm_peer_name(ctx->comm, i), text);
      return dml__coll_fail(ctx, DML_EPEER, "%s #%u: %s reports a failure: %s", ctx->what, ctx->seq,
                            dml_comm_peer_name(ctx->comm, i), text);
    }
    st->gone[i] = rc; /* closed: blamed below once the grace is over */
    continue;
  }
  for (int i = 0; i < st->size; i++)
    if (st->gone[i] && !closed_ok)
      return dml__coll_fail(ctx, st->gone[i], "%s #%u: %s failed: %s", ctx->what, ctx->seq,
                            dml_comm_peer_name(ctx->comm, i), dml_strerror(st->gone[i]));
  return 0;
}

static void warn_stall(dml__coll_ctx *ctx, double waited_s) {
  char list[384];
  size_t len = 0;
  list[0] = '\0';
  for (size_t i = 0; i < ctx->npend && len + 48 < sizeof(list); i++) {
    int dup = 0;
    for (size_t j = 0; j < i; j++) dup |= ctx->pend_peer[j] == ctx->pend_peer[i];
    if (dup) continue;
    len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", len ? ", " : "",
                            dml_comm_peer_name(ctx->comm, ctx->pend_peer[i]));
  }
  dml_log(DML_LOG_WARN, "%s #%u: no progress for %.0f s; waiting for %s", ctx->what, ctx->seq,
          waited_s, len ? list : "(nobody)");
}

int dml__coll_wait(dml__coll_ctx *ctx, dml_comm_req *req) {
  size_t idx = ctx->npend;
  for (size_t i = 0; i < ctx->npend; i++)
    if (ctx->pend[i] == req) {
      idx = i;
      break;
    }
  int peer = idx < ctx->npend ? ctx->pend_peer[idx] : -1;
  double t0 = dml_now_s();
  int warned = 0;
  for (;;) {
    double waited = dml_now_s() - t0;
    double left_ms = ctx->timeout_ms - waited * 1e3;
    int slice = left_ms < WAIT_SLICE_MS ? (int)(left_ms > 1 ? left_ms : 1) : WAIT_SLICE_MS;
    int rc = dml_comm_wait(ctx->comm, req, slice);
    if (rc != DML_ETIMEDOUT) {
      if (idx < ctx->npend) untrack(ctx, idx);
      if (rc == 0) return 0;
      return comm_error(ctx, rc, "waiting for", peer);
    }
    waited = dml_now_s() - t0;
    int nrc = check_notices(ctx, waited < CLOSED_GRACE_S);
    if (nrc) return nrc;
    if (!warned && waited >= ctx->stall_s) {
      warn_stall(ctx, waited);
      warned = 1;
    }
    if (waited * 1e3 >= ctx->timeout_ms)
      return dml__coll_fail(ctx, DML_ETIMEDOUT, "%s #%u: %s did not answer within %.1f s",
                            ctx->what, ctx->seq, dml_comm_peer_name(ctx->comm, peer), waited);
  }
}

int dml__coll_wait_all(dml__coll_ctx *ctx) {
  while (ctx->npend > 0) {
    int rc = dml__coll_wait(ctx, ctx->pend[0]);
    if (rc) return rc;
  }
  return 0;
}

int dml__coll_sendrecv(dml__coll_ctx *ctx, int dst, const void *sbuf, size_t sbytes, int src,
                       void *rbuf, size_t rbytes) {
  dml_comm_req *sreq, *rreq;
  int rc = dml__coll_irecv(ctx, src, rbuf, rbytes, &rreq);
  if (rc == 0) rc = dml__coll_isend(ctx, dst, sbuf, sbytes, &sreq);
  if (rc == 0) rc = dml__coll_wait(ctx, rreq);
  if (rc == 0) rc = dml__coll_wait(ctx, sreq);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Running one collective. */

static const char *kind_name(op_kind k) {
  switch (k) {
    case OP_ALLREDUCE: return "allreduce";
    case OP_REDUCE_SCATTER: return "reduce_scatter";
    case OP_ALLGATHER: return "allgather";
    case OP_BROADCAST: return "broadcast";
    case OP_BARRIER: return "barrier";
  }
  return "collective";
}

static dml_allreduce_algo choose_algo(const dml__coll_state *st, const dml_coll_req *r) {
  if (r->algo != DML_ALGO_AUTO) return r->algo;
  if (st->env_algo != DML_ALGO_AUTO) return st->env_algo;
  return r->count * dml_dtype_size(r->wire) <= st->rd_max_bytes ? DML_ALGO_RD : DML_ALGO_RING;
}

static int dispatch(dml__coll_ctx *ctx, dml_coll_req *r) {
  int p = ctx->size;
  size_t esz = dml_dtype_size(r->dt);
  switch (r->kind) {
    case OP_BARRIER: return dml__barrier_dissemination(ctx);
    case OP_BROADCAST: return dml__broadcast_tree(ctx, r->buf, r->count * esz, r->root);
    case OP_ALLREDUCE: {
      if (p > 1 && r->count == 0) return dml__barrier_dissemination(ctx);
      if (choose_algo(ctx->st, r) == DML_ALGO_RING)
        return dml__allreduce_ring(ctx, r->buf, r->count, r->dt, r->wire, r->op);
      return dml__allreduce_rd(ctx, r->buf, r->count, r->dt, r->wire, r->op);
    }
    case OP_REDUCE_SCATTER:
    case OP_ALLGATHER: {
      size_t n = r->count;
      size_t *off = dml__malloc(2 * (size_t)p * sizeof(size_t));
      if (off == NULL) return dml__coll_fail(ctx, DML_ENOMEM, "%s: out of memory", ctx->what);
      size_t *cnt = off + p;
      for (int i = 0; i < p; i++) {
        off[i] = (size_t)i * n;
        cnt[i] = n;
      }
      int rc;
      if (r->kind == OP_ALLGATHER) {
        char *dst = (char *)r->buf + off[ctx->rank] * esz;
        if (r->sendbuf != dst && n) memcpy(dst, r->sendbuf, n * esz);
        rc = (p > 1 && n == 0) ? dml__barrier_dissemination(ctx)
                               : dml__allgather_ring(ctx, r->buf, off, cnt, r->dt, r->dt);
      } else if (p > 1 && n == 0) {
        rc = dml__barrier_dissemination(ctx);
      } else {
        /* The ring reduces in place: work on a copy of sendbuf. */
        char *work = dml__coll_scratch(ctx, 1, (size_t)p * n * esz);
        rc = work ? 0 : DML_ENOMEM;
        if (rc == 0) {
          memcpy(work, r->sendbuf, (size_t)p * n * esz);
          rc = dml__reduce_scatter_ring(ctx, work, off, cnt, r->dt, r->dt, r->op);
        }
        if (rc == 0) {
          if (r->op == DML_AVG) dml__scale_avg(work + off[ctx->rank] * esz, n, r->dt, p);
          memcpy(r->buf, work + off[ctx->rank] * esz, n * esz);
        }
      }
      dml__free(off);
      return rc;
    }
  }
  return DML_EINVAL;
}

/* After a failure: tell the other ranks whom we blame, abort the communicator so that nothing
 * more is written into our buffers, and release the requests still in flight. */
static void fail_cleanup(dml__coll_ctx *ctx, int blamed) {
  dml__coll_state *st = ctx->st;
  char notice[NOTICE_BYTES];
  memset(notice, 0, sizeof(notice));
  int32_t b = blamed;
  memcpy(notice, &b, sizeof(b));
  snprintf(notice + 4, NOTICE_TEXT, "%.240s", ctx->err);
  dml_comm_req *nreq[64];
  int nn = 0;
  for (int i = 0; i < st->size && nn < 64; i++) {
    if (i == st->rank || i == blamed) continue;
    if (dml_comm_isend(ctx->comm, i, DML__COLL_TAG_NOTICE, notice, sizeof(notice), &nreq[nn]) == 0)
      nn++;
  }
  for (int k = 0; k < nn; k++) dml_comm_wait(ctx->comm, nreq[k], 1000);
  dml_comm_abort(ctx->comm, ctx->err);
  int leaked = 0;
  for (size_t i = 0; i < ctx->npend; i++) {
    int done = 0;
    for (int tries = 0; tries < 100 && !done; tries++) {
      dml_comm_test(ctx->comm, ctx->pend[i], &done);
      if (!done) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
      }
    }
    leaked |= !done;
  }
  ctx->npend = 0;
  if (leaked) {
    /* The backend still holds requests on our scratch: never free it. */
    for (size_t i = 0; i < DML__ARRAY_LEN(st->scratch); i++) {
      st->scratch[i] = NULL;
      st->scratch_cap[i] = 0;
    }
  }
}

/* The rank the failure message blames, for the notice: the first "rank N" in it. */
static int blamed_rank(const char *msg) {
  const char *s = strstr(msg, "rank ");
  if (s == NULL) return -1;
  return atoi(s + 5);
}

/* blocking: run by the caller of a blocking collective, which may poll before it sleeps (the
 * background thread never does: it would take the core from the caller's computation). */
static int run(dml__coll_state *st, dml_coll_req *r, uint32_t seq, int blocking) {
  if (st->failed) return st->failed;
  if (st->env_code) {
    st->failed = st->env_code;
    snprintf(st->errmsg, sizeof(st->errmsg), "%s", st->env_msg);
    return st->failed;
  }
  dml__coll_ctx ctx;
  memset(&ctx, 0, sizeof(ctx));
  ctx.st = st;
  ctx.comm = st->comm;
  ctx.rank = st->rank;
  ctx.size = st->size;
  ctx.seq = seq;
  ctx.tag = DML_TAG_RESERVED + (int)(seq % DML__COLL_TAG_SPAN);
  ctx.what = kind_name(r->kind);
  ctx.timeout_ms = dml_comm_timeout_ms(st->comm);
  if (ctx.timeout_ms <= 0) ctx.timeout_ms = 60000;
  ctx.stall_s = st->stall_s;
  ctx.chunk_bytes = st->chunk_bytes;
  ctx.pend = st->pend;
  ctx.pend_peer = st->pend_peer;
  ctx.cappend = st->cappend;
  int spin0 = dml_comm_spin_us(); /* the caller's own budget, given back after */
  if (blocking && st->spin_us > spin0) dml_comm_set_spin_us(st->spin_us);
  int rc = dispatch(&ctx, r);
  dml_comm_set_spin_us(spin0);
  if (rc != 0) {
    if (ctx.err[0] == '\0')
      snprintf(ctx.err, sizeof(ctx.err), "%s #%u: %s", ctx.what, seq, dml_strerror(rc));
    if (st->size > 1) fail_cleanup(&ctx, blamed_rank(ctx.err));
    pthread_mutex_lock(&st->mu);
    st->failed = rc;
    snprintf(st->errmsg, sizeof(st->errmsg), "%s", ctx.err);
    pthread_mutex_unlock(&st->mu);
    dml_log(DML_LOG_ERROR, "%s", ctx.err);
  }
  st->pend = ctx.pend;
  st->pend_peer = ctx.pend_peer;
  st->cappend = ctx.cappend;
  return rc;
}

static void *worker_main(void *arg) {
  dml__coll_state *st = arg;
  pthread_mutex_lock(&st->mu);
  for (;;) {
    while (!st->stopping && (st->head == NULL || st->caller_busy))
      pthread_cond_wait(&st->cv, &st->mu);
    if (st->head == NULL) break; /* stopping and nothing left */
    dml_coll_req *r = st->head;
    st->head = r->next;
    if (st->head == NULL) st->tail = NULL;
    st->worker_busy = 1;
    uint32_t seq = st->seq++;
    pthread_mutex_unlock(&st->mu);
    r->start_ns = dml_now_ns();
    int rc = run(st, r, seq, 0);
    uint64_t t1 = dml_now_ns();
    pthread_mutex_lock(&st->mu);
    r->done_ns = t1;
    r->status = rc;
    r->done = 1;
    st->worker_busy = 0;
    pthread_cond_broadcast(&st->cv);
  }
  pthread_mutex_unlock(&st->mu);
  return NULL;
}

static int run_blocking(dml__coll_state *st, dml_coll_req *r) {
  pthread_mutex_lock(&st->mu);
  while (st->head || st->worker_busy || st->caller_busy) pthread_cond_wait(&st->cv, &st->mu);
  st->caller_busy = 1;
  uint32_t seq = st->seq++;
  pthread_mutex_unlock(&st->mu);
  int rc = run(st, r, seq, 1);
  pthread_mutex_lock(&st->mu);
  st->caller_busy = 0;
  pthread_cond_broadcast(&st->cv);
  pthread_mutex_unlock(&st->mu);
  return rc;
}

static int enqueue(dml__coll_state *st, const dml_coll_req *proto, dml_coll_req **out) {
  dml_coll_req *r = dml__malloc(sizeof(*r));
  if (r == NULL) return DML_ENOMEM;
  *r = *proto;
  r->heap = 1;
  r->next = NULL;
  pthread_mutex_lock(&st->mu);
  if (!st->thread_started) {
    if (pthread_create(&st->thread, NULL, worker_main, st) != 0) {
      pthread_mutex_unlock(&st->mu);
      dml__free(r);
      return DML_ESYS;
    }
    st->thread_started = 1;
  }
  if (st->tail)
    st->tail->next = r;
  else
    st->head = r;
  st->tail = r;
  pthread_cond_broadcast(&st->cv);
  pthread_mutex_unlock(&st->mu);
  *out = r;
  return 0;
}

int dml_coll_wait_timed(dml_coll_req *req, int timeout_ms, uint64_t *start_ns, uint64_t *done_ns) {
  if (req == NULL) return DML_EINVAL;
  dml__coll_state *st = req->st;
  pthread_mutex_lock(&st->mu);
  struct timespec dl;
  if (timeout_ms >= 0) dml__deadline_in_ms(&dl, timeout_ms);
  while (!req->done) {
    if (timeout_ms < 0) {
      pthread_cond_wait(&st->cv, &st->mu);
    } else if (pthread_cond_timedwait(&st->cv, &st->mu, &dl) == ETIMEDOUT && !req->done) {
      pthread_mutex_unlock(&st->mu);
      return DML_ETIMEDOUT;
    }
  }
  int rc = req->status;
  if (start_ns) *start_ns = req->start_ns;
  if (done_ns) *done_ns = req->done_ns;
  pthread_mutex_unlock(&st->mu);
  dml__free(req);
  return rc;
}

int dml_coll_wait(dml_coll_req *req, int timeout_ms) {
  return dml_coll_wait_timed(req, timeout_ms, NULL, NULL);
}

int dml_coll_test(dml_coll_req *req, int *done) {
  if (req == NULL || done == NULL) return DML_EINVAL;
  dml__coll_state *st = req->st;
  pthread_mutex_lock(&st->mu);
  *done = req->done;
  int rc = req->status;
  pthread_mutex_unlock(&st->mu);
  if (*done) dml__free(req);
  return *done ? rc : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Public entry points. */

static int check_common(dml_comm *c, const void *buf, size_t count, dml_dtype dt) {
  if (c == NULL) return DML_EINVAL;
  if (dml_dtype_size(dt) == 0) return DML_EINVAL;
  if (count > 0 && buf == NULL) return DML_EINVAL;
  if (count > SIZE_MAX / 16 / (size_t)DML__MAX(dml_comm_size(c), 1)) return DML_EOVERFLOW;
  return 0;
}

/* Validates, then runs now (req == NULL) or queues. */
static int submit(dml_comm *c, dml_coll_req *r, dml_coll_req **req) {
  dml__coll_state *st;
  int rc = get_state(c, &st);
  if (rc) return rc;
  r->st = st;
  if (req == NULL) return run_blocking(st, r);
  *req = NULL;
  return enqueue(st, r, req);
}

static int allreduce_common(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_dtype wire,
                            dml_redop op, dml_allreduce_algo algo, dml_coll_req **req) {
  int rc = check_common(c, buf, count, dt);
  if (rc) return rc;
  if (dml_redop_name(op) == NULL || dml_allreduce_algo_name(algo) == NULL) return DML_EINVAL;
  dml_coll_req r = {.kind = OP_ALLREDUCE,
                    .buf = buf,
                    .count = count,
                    .dt = dt,
                    .wire = wire,
                    .op = op,
                    .algo = algo};
  return submit(c, &r, req);
}

int dml_allreduce(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op) {
  return allreduce_common(c, buf, count, dt, dt, op, DML_ALGO_AUTO, NULL);
}
int dml_allreduce_with(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op,
                       dml_allreduce_algo algo) {
  return allreduce_common(c, buf, count, dt, dt, op, algo, NULL);
}
int dml_iallreduce(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op,
                   dml_coll_req **req) {
  if (req == NULL) return DML_EINVAL;
  return allreduce_common(c, buf, count, dt, dt, op, DML_ALGO_AUTO, req);
}
int dml_iallreduce_with(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op,
                        dml_allreduce_algo algo, dml_coll_req **req) {
  if (req == NULL) return DML_EINVAL;
  return allreduce_common(c, buf, count, dt, dt, op, algo, req);
}

static int compressed_common(dml_comm *c, float *buf, size_t count, dml_dtype wire, dml_redop op,
                             dml_coll_req **req) {
  if (wire != DML_F16 && wire != DML_BF16) return DML_EINVAL;
  return allreduce_common(c, buf, count, DML_F32, wire, op, DML_ALGO_AUTO, req);
}
int dml_allreduce_f32_compressed(dml_comm *c, float *buf, size_t count, dml_dtype wire,
                                 dml_redop op) {
  return compressed_common(c, buf, count, wire, op, NULL);
}
int dml_iallreduce_f32_compressed(dml_comm *c, float *buf, size_t count, dml_dtype wire,
                                  dml_redop op, dml_coll_req **req) {
  if (req == NULL) return DML_EINVAL;
  return compressed_common(c, buf, count, wire, op, req);
}

static int reduce_scatter_common(dml_comm *c, const void *sendbuf, void *recvbuf, size_t recvcount,
                                 dml_dtype dt, dml_redop op, dml_coll_req **req) {
  int rc = check_common(c, recvbuf, recvcount, dt);
  if (rc) return rc;
  if (recvcount > 0 && sendbuf == NULL) return DML_EINVAL;
  if (dml_redop_name(op) == NULL) return DML_EINVAL;
  dml_coll_req r = {.kind = OP_REDUCE_SCATTER,
                    .sendbuf = sendbuf,
                    .buf = recvbuf,
                    .count = recvcount,
                    .dt = dt,
                    .wire = dt,
                    .op = op};
  return submit(c, &r, req);
}
int dml_reduce_scatter(dml_comm *c, const void *sendbuf, void *recvbuf, size_t recvcount,
                       dml_dtype dt, dml_redop op) {
  return reduce_scatter_common(c, sendbuf, recvbuf, recvcount, dt, op, NULL);
}
int dml_ireduce_scatter(dml_comm *c, const void *sendbuf, void *recvbuf, size_t recvcount,
                        dml_dtype dt, dml_redop op, dml_coll_req **req) {
  if (req == NULL) return DML_EINVAL;
  return reduce_scatter_common(c, sendbuf, recvbuf, recvcount, dt, op, req);
}

static int allgather_common(dml_comm *c, const void *sendbuf, void *recvbuf, size_t sendcount,
                            dml_dtype dt, dml_coll_req **req) {
  int rc = check_common(c, recvbuf, sendcount, dt);
  if (rc) return rc;
  if (sendcount > 0 && sendbuf == NULL) return DML_EINVAL;
  dml_coll_req r = {.kind = OP_ALLGATHER,
                    .sendbuf = sendbuf,
                    .buf = recvbuf,
                    .count = sendcount,
                    .dt = dt,
                    .wire = dt};
  return submit(c, &r, req);
}
int dml_allgather(dml_comm *c, const void *sendbuf, void *recvbuf, size_t sendcount, dml_dtype dt) {
  return allgather_common(c, sendbuf, recvbuf, sendcount, dt, NULL);
}
int dml_iallgather(dml_comm *c, const void *sendbuf, void *recvbuf, size_t sendcount, dml_dtype dt,
                   dml_coll_req **req) {
  if (req == NULL) return DML_EINVAL;
  return allgather_common(c, sendbuf, recvbuf, sendcount, dt, req);
}

static int broadcast_common(dml_comm *c, void *buf, size_t count, dml_dtype dt, int root,
                            dml_coll_req **req) {
  int rc = check_common(c, buf, count, dt);
  if (rc) return rc;
  if (root < 0 || root >= dml_comm_size(c)) return DML_EINVAL;
  dml_coll_req r = {
      .kind = OP_BROADCAST, .buf = buf, .count = count, .dt = dt, .wire = dt, .root = root};
  return submit(c, &r, req);
}
int dml_broadcast(dml_comm *c, void *buf, size_t count, dml_dtype dt, int root) {
  return broadcast_common(c, buf, count, dt, root, NULL);
}
int dml_ibroadcast(dml_comm *c, void *buf, size_t count, dml_dtype dt, int root,
                   dml_coll_req **req) {
  if (req == NULL) return DML_EINVAL;
  return broadcast_common(c, buf, count, dt, root, req);
}

int dml_barrier(dml_comm *c) {
  if (c == NULL) return DML_EINVAL;
  dml_coll_req r = {.kind = OP_BARRIER, .dt = DML_F32, .wire = DML_F32};
  return submit(c, &r, NULL);
}
int dml_ibarrier(dml_comm *c, dml_coll_req **req) {
  if (c == NULL || req == NULL) return DML_EINVAL;
  dml_coll_req r = {.kind = OP_BARRIER, .dt = DML_F32, .wire = DML_F32};
  return submit(c, &r, req);
}
