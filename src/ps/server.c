/* The parameter server: one shard of the model as sparse u64 keys in an open-addressing hash map
 * (missing keys read as zero) whose slots index flat value and optimizer-state arrays, a
 * server-side optimizer from ml.h, and the request loop with clock-based consistency (BSP, SSP,
 * ASP). It is not the worker client (client.c) and not a training loop (src/train/train_ps.c). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/internal.h"
#include "distml/ps.h"
#include "ps/ps_internal.h"

#define EMPTY_SLOT UINT32_MAX

typedef struct worker_state {
  int is_worker;
  int done, dead, dropped;
  uint64_t clock;
  uint64_t last_push_ts; /* highest push timestamp received (pushes arrive in order per sender):
                            later frames at or below it are resends */
  uint64_t last_push_lo; /* key_lo of that push's last frame here (a dense request sends several
                            frames with one timestamp, in increasing key order) */
  uint64_t applied_ts, applied_lo; /* the same for the last push applied (a BSP push held for its
                                      clock is received, not applied): what a checkpoint says */
  dml_comm_req *watch;             /* receive that never completes unless the peer dies */
  uint64_t applied;                /* push frames from this worker applied (or aggregated) here */
  uint64_t ckpt_applied;           /* restored server: `applied` in the checkpoint */
  uint64_t ckpt_clock;             /* restored server: `clock` in the checkpoint */
  int rejoined;                    /* restored server: its REJOIN arrived (losses counted once) */
  size_t sum_bytes;                /* its frame values held in summed pushpulls' groups */
} worker_state;

/* 1 if w is a worker that counts: it has neither left, died nor been dropped. */
static int counts(const worker_state *w) {
  return w->is_worker && !w->done && !w->dead && !w->dropped;
}

/* A push of a mirrored chunk (ps_internal.h), kept until its clock is folded. */
typedef struct mirror_push {
  int src;
  uint64_t clock;
  uint32_t off, cnt; /* the chunk's segment it covers */
  float *vals;       /* (cnt) owned copy */
} mirror_push;

/* A push of a mirrored chunk is acknowledged at once while its clock is less than this many
 * clocks past the chunk's fold, else once the fold is that close: a worker that pushes without
 * pulling runs at most this far ahead of the slowest, and the replicas hold its pushes till
 * then. */
#define MIRROR_ACK_LEAD 16
/* Pushes one sender may have waiting in one mirrored chunk's queue (an honest worker has at most
 * MIRROR_ACK_LEAD plus its requests in flight), and bytes all of them may take in one replica
 * (MAX_MIRROR_BYTES / processes per sender), each counted with its entry: past either the sender
 * is dropped (a hostile peer can make a replica neither hold nor scan without bound, nor use up
 * the others' room). dml__ps_mirror_check refuses configs where an honest worker could. */
#define MAX_MIRROR_QUEUED 1024
#define MAX_MIRROR_BYTES ((size_t)256 << 20)
#define MIRROR_ENTRY_BYTES(cnt) (sizeof(mirror_push) + 16 + (size_t)(cnt) * sizeof(float))

/* A dense part: DML__PS_DENSE_PART consecutive keys of the dense namespace in flat arrays. */
typedef struct dense_part {
  uint64_t part;  /* key / DML__PS_DENSE_PART */
  float *vals;    /* (DML__PS_DENSE_PART) */
  float *grads;   /* (DML__PS_DENSE_PART) scratch: a frame's values at their offsets */
  dml_optim *opt; /* NULL when sum_only */
  float *agg;     /* (DML__PS_DENSE_PART) BSP aggregation: pushes of the open clock, summed */
  uint32_t agg_n; /* pushes summed into agg */
  size_t agg_lo, agg_hi; /* offsets they touched: [agg_lo, agg_hi) */
  int mirror;            /* a chunk of a mirrored tensor: every server holds it */
  uint64_t mclock;       /* mirrored: every clock below is folded */
  mirror_push *mq;       /* mirrored: pushes of clocks >= mclock, in arrival order */
  size_t nmq, mq_cap;
  uint64_t *mlast;  /* mirrored: (n) 1 + the clock of each sender's last push queued here (a
                      sender's pushes come in clock order) */
  uint32_t *mcount; /* mirrored: (n) pushes of each sender in mq */
} dense_part;

/* BSP sync aggregation: a push of a clock the open aggregate has not reached (its worker is ahead
 * of the slowest), kept (owned) until that clock's aggregate opens. */
typedef struct held_push {
  int src;
  dml__ps_msg m;
} held_push;

/* Bytes of such pushes a server keeps at most; past it a push is summed into the open aggregate
 * (the mean of that clock then counts it: a worker that runs that far ahead without pulling). */
#define MAX_HELD_PUSH_BYTES ((size_t)256 << 20)

typedef struct deferred {
  int src;
  dml__ps_msg m;
  int local;        /* a dense request of this process's own worker (dml_ps_serve): answered
                       in place, not with a frame */
  float *local_out; /* its pull's buffer (NULL: a push) */
} deferred;

/* Summed pushpulls (cfg.summed_pushpull): the pushpulls of one dense range and clock, held until
 * every worker that counts has sent its own. A member's push is this process's worker's (vals and
 * out: the caller's buffers), a DIRECT one (its values read out of the worker piece by piece,
 * its output written the same way) or a frame's (m owns a copy of its values; answered with a
 * reply). */
typedef struct sum_member {
  int src;
  dml__ps_msg m;
  const float *vals; /* the values: this process's worker's, or m.vals; NULL: DIRECT */
  float *out;        /* this process's worker's output (else answered with a reply) */
  int gone;          /* its worker stopped counting, or a copy with it failed: left out */
} sum_member;

typedef struct sum_group {
  uint64_t clock, key_lo, key_hi;
  int nm;
  sum_member *mem; /* (n) */
} sum_group;

/* Summed pushpulls held at most (groups, and bytes of frame values copied from one sender) before
 * the sender of another is dropped: a worker cannot make the server allocate without bound, and
 * what a dropped one held is let go (sum_prune). */
#define MAX_SUM_GROUPS 4096
#define MAX_SUM_BYTES ((size_t)256 << 20)

/* A pull of this process's worker answered in place after it had waited (the worker collects
 * these: dml__ps_server_local_done). */
typedef struct local_done {
  uint64_t timestamp, key_lo;
} local_done;

/* A reply on its way: sent without blocking (the loop goes on serving while the worker takes it),
 * its frame freed once the send completes. */
typedef struct outgoing {
  dml_comm_req *req;
  void *buf; /* owned, freed once sent */
  size_t bytes;
  int dst;
} outgoing;

/* Replies in flight at most (count and bytes) before the loop waits for the oldest: a worker that
 * never reads its replies cannot make the server allocate without bound. */
#define MAX_OUTGOING 1024
#define MAX_OUTGOING_BYTES ((size_t)256 << 20)

struct dml_ps_server {
  dml_comm *c;
  dml_ps_config cfg;
  int me, n, live;
  int h, K, vme, vS;               /* handler index, handlers per process, virtual server index
                                     (me + h * servers) and virtual servers (servers * K) */
  int tag_req, tag_rep, tag_watch; /* this handler's tags */
  dml_ps_server **subs;            /* handler 0: handlers 1..K-1, run on their own threads */
  worker_state *w;                 /* (n) */
  /* hash map: hkeys/hslot of hcap (power of two); values and optimizer of vcap slots */
  uint64_t *hkeys;
  uint32_t *hslot;
  size_t hcap, nkeys;
  float *vals;
  size_t vcap;
  dml_optim *opt;
  uint32_t *idx_scratch;
  size_t idx_cap;
  /* BSP sync aggregation: summed pushes of the open clock, by slot */
  int aggregating;
  float *agg;          /* (vcap) */
  unsigned char *mark; /* (vcap) slot is in agg_list */
  uint32_t *agg_list;
  size_t nagg, agg_list_cap;
  float *agg_grads;               /* (agg_list_cap) compact mean for the optimizer */
  uint64_t agg_pushes, agg_clock; /* pushes summed into the open aggregate, and its clock */
  uint64_t dense_agg_pushes;      /* dense frames summed into their parts' agg this clock */
  held_push *hq;                  /* pushes of later clocks, in arrival order */
  size_t nhq, hq_cap, hq_bytes;
  int hq_full_logged;
  deferred *dq;
  size_t ndq, dq_cap;
  dense_part *dparts;
  size_t ndparts, dparts_cap;
  uint64_t *mparts; /* (layout.nmirrored) the mirrored chunks, all made at creation */
  size_t *mq_bytes; /* (n) what their queues hold of each sender (MIRROR_ENTRY_BYTES each) */
  int *mslot;       /* (n) scratch: a fold's push of each sender */
  dml__ps_dense_layout layout;
  outgoing *out;
  size_t nout, out_cap, out_bytes;
  dml_ps_server_stats st;
  pthread_t thread, watcher;
  int thread_started, watcher_started;
  int stop_watch; /* set by the loop, read by the watcher: __atomic accesses */
  int own_comm;   /* c was made by a re-form: freed with the server */
  int reform_wanted;
  double last_ckpt_s;
  uint64_t last_ckpt_clock;
  int thread_rc;
  dml_err thread_err;
  int attached;        /* served by this process's worker (dml__ps_server_attach) */
  dml_comm_req *inreq; /* attached: the posted receive of the next request */
  int body_wait_ms;    /* DISTML_PS_BODY_WAIT_MS, default DML__PS_BODY_WAIT_MS */
  void *spare;         /* the body of the request being handled: its reply may take it */
  size_t spare_bytes;
  int spare_filled;  /* spare holds the reply's values already */
  float *dpiece;     /* DIRECT_PIECE floats: a direct push's piece on its way to the parts */
  int recheck;       /* a worker stopped counting outside a clock update: serve_deferred again */
  local_done *ldone; /* attached: deferred pulls of that worker answered in place */
  size_t nldone, ldone_cap;
  /* the DIRECT request being answered: 1 its values are to be written from the parts, 2 they
   * were written as its push was added */
  int direct_now;
  sum_group *sg; /* summed pushpulls waiting for the other workers' */
  size_t nsg, sg_cap;
  float *sgbuf; /* (n * DIRECT_PIECE) pieces of DIRECT members' values */
};

/* Runs of 64 consecutive keys stay in consecutive buckets (a dense range walks memory in order);
 * the runs themselves are spread by a multiplicative mix. */
static uint64_t hash_key(uint64_t x) {
  uint64_t b = x >> 6;
  b ^= b >> 33;
  b *= 0xff51afd7ed558ccdull;
  b ^= b >> 33;
  return (b << 6) | (x & 63);
}

static int grow_values(dml_ps_server *s, dml_err *err) {
  size_t ncap = s->vcap ? 2 * s->vcap : 1 << 14;
  float *nv = dml__realloc(s->vals, ncap * sizeof(float));
  if (nv == NULL) return dml_err_set(err, DML_ENOMEM, "ps server: no memory for %zu values", ncap);
  memset(nv + s->vcap, 0, (ncap - s->vcap) * sizeof(float));
  s->vals = nv;
  if (s->aggregating) {
    float *na = dml__realloc(s->agg, ncap * sizeof(float));
    if (na) s->agg = na;
    unsigned char *nm = dml__realloc(s->mark, ncap);
    if (nm) s->mark = nm;
    if (!na || !nm)
      return dml_err_set(err, DML_ENOMEM, "ps server: no memory for %zu aggregated values", ncap);
    memset(na + s->vcap, 0, (ncap - s->vcap) * sizeof(float));
    memset(nm + s->vcap, 0, ncap - s->vcap);
  }
  if (!s->cfg.sum_only) {
    dml_optim *no = NULL;
    int rc = dml_optim_create(&no, &s->cfg.optim, ncap, err);
    if (rc) return rc;
    if (s->opt) {
      int ns = dml_optim_num_state(s->opt);
      float *os = dml_optim_state_data(s->opt), *nsd = dml_optim_state_data(no);
      for (int i = 0; i < ns; i++)
        memcpy(nsd + (size_t)i * ncap, os + (size_t)i * s->vcap, s->vcap * sizeof(float));
      dml_optim_set_step_count(no, dml_optim_step_count(s->opt));
      dml_optim_free(s->opt);
    }
    s->opt = no;
  }
  s->vcap = ncap;
  return 0;
}

static int grow_map(dml_ps_server *s, dml_err *err) {
  size_t ncap = s->hcap ? 2 * s->hcap : 1 << 15;
  uint64_t *nk = dml__malloc(ncap * sizeof(uint64_t));
  uint32_t *ns = dml__malloc(ncap * sizeof(uint32_t));
  if (nk == NULL || ns == NULL) {
    dml__free(nk);
    dml__free(ns);
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a %zu-slot key map", ncap);
  }
  for (size_t i = 0; i < ncap; i++) ns[i] = EMPTY_SLOT;
  for (size_t i = 0; i < s->hcap; i++) {
    if (s->hslot[i] == EMPTY_SLOT) continue;
    size_t j = hash_key(s->hkeys[i]) & (ncap - 1);
    while (ns[j] != EMPTY_SLOT) j = (j + 1) & (ncap - 1);
    nk[j] = s->hkeys[i];
    ns[j] = s->hslot[i];
  }
  dml__free(s->hkeys);
  dml__free(s->hslot);
  s->hkeys = nk;
  s->hslot = ns;
  s->hcap = ncap;
  return 0;
}

/* Slot of key, or EMPTY_SLOT when absent (and !insert). */
static int lookup(dml_ps_server *s, uint64_t key, int insert, uint32_t *slot, dml_err *err) {
  if (insert && (s->nkeys + 1) * 2 > s->hcap) {
    int rc = grow_map(s, err);
    if (rc) return rc;
  }
  *slot = EMPTY_SLOT;
  if (s->hcap == 0) return 0;
  size_t j = hash_key(key) & (s->hcap - 1);
  while (s->hslot[j] != EMPTY_SLOT) {
    if (s->hkeys[j] == key) {
      *slot = s->hslot[j];
      return 0;
    }
    j = (j + 1) & (s->hcap - 1);
  }
  if (!insert) return 0;
  if (s->nkeys >= s->vcap) {
    int rc = grow_values(s, err);
    if (rc) return rc;
  }
  if (s->nkeys >= EMPTY_SLOT)
    return dml_err_set(err, DML_EOVERFLOW, "ps server: more than 4G keys");
  s->hkeys[j] = key;
  s->hslot[j] = (uint32_t)s->nkeys;
  *slot = (uint32_t)s->nkeys++;
  return 0;
}

/* v[i] += g[i]. In blocks of a fixed length, which -O2's cheap vectoriser turns into SIMD adds
 * (a plain loop stays scalar: measured 19% of a colocated 4 MB pushpull in one add loop). */
static void add_floats(float *restrict v, const float *restrict g, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (size_t j = 0; j < 16; j++) v[i + j] += g[i + j];
  for (; i < n; i++) v[i] += g[i];
}

/* v[i] += x[i] + y[i], in blocks as add_floats: two pushes in one pass. */
static void add2_floats(float *restrict v, const float *restrict x, const float *restrict y,
                        size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (size_t j = 0; j < 16; j++) v[i + j] += x[i + j] + y[i + j];
  for (; i < n; i++) v[i] += x[i] + y[i];
}

/* v[i] += g[i]; out[i] = v[i] (out may be g): a sum-only pushpull's add and read in one pass. */
static void add_copy_floats(float *restrict v, const float *g, float *out, size_t n) {
  size_t i = 0;
  float t[16];
  for (; i + 16 <= n; i += 16) {
    for (size_t j = 0; j < 16; j++) t[j] = v[i + j] + g[i + j];
    for (size_t j = 0; j < 16; j++) v[i + j] = t[j];
    for (size_t j = 0; j < 16; j++) out[i + j] = t[j];
  }
  for (; i < n; i++) out[i] = v[i] = v[i] + g[i];
}

/* The index of the first part >= part in dparts (kept sorted by part). */
static size_t part_index(const dml_ps_server *s, uint64_t part) {
  size_t lo = 0, hi = s->ndparts;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->dparts[mid].part < part)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static dense_part *find_part(dml_ps_server *s, uint64_t part) {
  size_t i = part_index(s, part);
  return i < s->ndparts && s->dparts[i].part == part ? &s->dparts[i] : NULL;
}

/* Calls fn for each chunk segment of the dense range [lo, lo + n): the chunk, the offset in it,
 * the count, and the segment's offset in the range. Stops at fn's first non-zero return. */
typedef int (*segment_fn)(dml_ps_server *s, uint64_t part, size_t off, size_t cnt, size_t at,
                          void *arg);
static int for_segments(dml_ps_server *s, uint64_t lo, uint64_t n, segment_fn fn, void *arg) {
  for (uint64_t a = lo; a < lo + n;) {
    uint64_t part = a / DML__PS_DENSE_PART, end = (part + 1) * DML__PS_DENSE_PART;
    uint64_t b = DML__MIN(end, lo + n);
    int rc = fn(s, part, (size_t)(a - part * DML__PS_DENSE_PART), (size_t)(b - a), (size_t)(a - lo),
                arg);
    if (rc) return rc;
    a = b;
  }
  return 0;
}

float dml_ps_server_dense_value(const dml_ps_server *s, uint64_t key) {
  int v = dml__ps_dense_owner(&s->layout, key), S = s->vS / s->K;
  if (s->subs && v >= 0 && v / S > 0 && v / S < s->K) s = s->subs[v / S - 1];
  dense_part *d = find_part((dml_ps_server *)s, key / DML__PS_DENSE_PART);
  return d ? d->vals[key % DML__PS_DENSE_PART] : 0.0f;
}

float dml_ps_server_value(const dml_ps_server *s, uint64_t key) {
  int v = dml__ps_owner(key, s->vS), S = s->vS / s->K;
  if (s->subs && v / S > 0 && v / S < s->K) s = s->subs[v / S - 1];
  uint32_t slot;
  if (lookup((dml_ps_server *)s, key, 0, &slot, NULL) != 0 || slot == EMPTY_SLOT) return 0.0f;
  return s->vals[slot];
}

static int apply_push(dml_ps_server *s, const dml__ps_msg *m, dml_err *err) {
  if (m->nkeys > s->idx_cap) {
    uint32_t *ni = dml__realloc(s->idx_scratch, (size_t)m->nkeys * sizeof(uint32_t));
    if (ni == NULL)
      return dml_err_set(err, DML_ENOMEM, "ps server: no memory for %llu keys",
                         (unsigned long long)m->nkeys);
    s->idx_scratch = ni;
    s->idx_cap = (size_t)m->nkeys;
  }
  for (uint64_t i = 0; i < m->nkeys; i++) {
    int rc = lookup(s, m->keys[i], 1, &s->idx_scratch[i], err);
    if (rc) return rc;
  }
  if (s->cfg.sum_only) {
    for (uint64_t i = 0; i < m->nkeys; i++) s->vals[s->idx_scratch[i]] += m->vals[i];
    return 0;
  }
  if (s->aggregating) {
    if (s->nagg + m->nkeys > s->agg_list_cap) {
      size_t nc = DML__MAX(2 * s->agg_list_cap, s->nagg + (size_t)m->nkeys);
      uint32_t *nl = dml__realloc(s->agg_list, nc * sizeof(uint32_t));
      if (nl) s->agg_list = nl;
      float *ng = dml__realloc(s->agg_grads, nc * sizeof(float));
      if (ng) s->agg_grads = ng;
      if (!nl || !ng)
        return dml_err_set(err, DML_ENOMEM, "ps server: no memory to aggregate %zu keys", nc);
      s->agg_list_cap = nc;
    }
    for (uint64_t i = 0; i < m->nkeys; i++) {
      uint32_t slot = s->idx_scratch[i];
      if (!s->mark[slot]) {
        s->mark[slot] = 1;
        s->agg_list[s->nagg++] = slot;
      }
      s->agg[slot] += m->vals[i];
    }
    s->agg_pushes++;
    return 0;
  }
  dml_optim_begin_step(s->opt);
  int rc = dml_optim_update_sparse(s->opt, s->vals, m->vals, s->idx_scratch, (size_t)m->nkeys, 1);
  if (rc) return dml_err_set(err, rc, "ps server: optimizer update failed");
  return 0;
}

/* Room for one more element in the array *arrp (a T **) of *cap elements of elem bytes holding n:
 * doubled when full, first to `first` elements. 0, or -1 when out of memory (the array as it
 * was). */
static int grow_one(void *arrp, size_t n, size_t *cap, size_t elem, size_t first) {
  if (n < *cap) return 0;
  size_t nc = *cap ? 2 * *cap : first;
  void *old, *na;
  memcpy(&old, arrp, sizeof old);
  if ((na = dml__realloc(old, nc * elem)) == NULL) return -1;
  memcpy(arrp, &na, sizeof na);
  *cap = nc;
  return 0;
}

/* The chunk's storage, made (zero) on first use; pointers into dparts last until the next call. */
static int dense_part_get(dml_ps_server *s, uint64_t part, dense_part **out, dml_err *err) {
  size_t at = part_index(s, part);
  if (at < s->ndparts && s->dparts[at].part == part) {
    *out = &s->dparts[at];
    return 0;
  }
  if (grow_one(&s->dparts, s->ndparts, &s->dparts_cap, sizeof(dense_part), 8) != 0)
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a dense part");
  dense_part nd;
  memset(&nd, 0, sizeof(nd));
  dense_part *d = &nd;
  d->part = part;
  d->vals = dml__calloc(DML__PS_DENSE_PART, sizeof(float));
  d->grads = dml__calloc(DML__PS_DENSE_PART, sizeof(float));
  int rc = d->vals && d->grads
               ? 0
               : dml_err_set(err, DML_ENOMEM, "ps server: no memory for a dense part");
  if (rc == 0 && !s->cfg.sum_only)
    rc = dml_optim_create(&d->opt, &s->cfg.optim, DML__PS_DENSE_PART, err);
  if (rc) {
    dml__free(d->vals);
    dml__free(d->grads);
    dml_optim_free(d->opt);
    return rc;
  }
  memmove(&s->dparts[at + 1], &s->dparts[at], (s->ndparts - at) * sizeof(dense_part));
  s->dparts[at] = nd;
  s->ndparts++;
  *out = &s->dparts[at];
  return 0;
}

/* A dense push, chunk by chunk: added (sum-only), summed into each chunk's aggregate (BSP sync
 * aggregation: applied as the mean once the clock closes), or one optimizer step per chunk.
 * also_out (sum-only, may be NULL): the new values are written there too, in the same pass (a
 * pushpull whose pull is answered now). */
typedef struct apply_arg {
  const dml__ps_msg *m;
  float *also_out;
  dml_err *err;
} apply_arg;

/* One chunk's segment of a dense push (for_segments). */
static int apply_segment(dml_ps_server *s, uint64_t part, size_t off, size_t cnt, size_t at,
                         void *arg) {
  apply_arg *a = arg;
  const float *v = a->m->vals + at; /* the received frame or body, not the part */
  dense_part *d;
  int rc = dense_part_get(s, part, &d, a->err);
  if (rc) return rc;
  if (d->opt == NULL) {
    if (a->also_out)
      add_copy_floats(d->vals + off, v, a->also_out + at, cnt);
    else
      add_floats(d->vals + off, v, cnt);
    return 0;
  }
  /* summed now, applied as the mean once every live worker passed the clock */
  if (s->aggregating) {
    if (d->agg == NULL && (d->agg = dml__calloc(DML__PS_DENSE_PART, sizeof(float))) == NULL)
      return dml_err_set(a->err, DML_ENOMEM, "ps server: no memory to aggregate a dense part");
    add_floats(d->agg + off, v, cnt);
    if (d->agg_n == 0 || off < d->agg_lo) d->agg_lo = off;
    if (d->agg_n == 0 || off + cnt > d->agg_hi) d->agg_hi = off + cnt;
    d->agg_n++;
    return 0;
  }
  memcpy(d->grads + off, v, cnt * sizeof(float));
  dml_optim_begin_step(d->opt);
  rc = dml_optim_update_range(d->opt, d->vals, d->grads, off, cnt);
  return rc ? dml_err_set(a->err, rc, "ps server: dense optimizer update failed") : 0;
}

static int apply_dense(dml_ps_server *s, const dml__ps_msg *m, float *also_out, dml_err *err) {
  apply_arg a = {m, also_out, err};
  int rc = for_segments(s, m->key_lo, m->nvals, apply_segment, &a);
  if (rc == 0 && s->aggregating && !s->cfg.sum_only) s->dense_agg_pushes++;
  return rc;
}

/* A worker that cannot be answered is gone: it stops counting, the server goes on. */
static void reply_failed(dml_ps_server *s, int dst) {
  dml_log(DML_LOG_WARN, "ps server %d: reply to %s failed: %s", s->me,
          dml_comm_peer_name(s->c, dst), dml_comm_errmsg(s->c));
  if (dst >= 0 && dst < s->n && counts(&s->w[dst])) {
    s->w[dst].dead = 1;
    s->live--;
    s->st.dead_workers++;
    s->recheck = 1;
  }
}

/* Releases the replies whose sends completed; with wait_all (or over the limits) waits for them
 * (each wait bounded by the communicator's timeout). */
static void reap_replies(dml_ps_server *s, int wait_all) {
  size_t k = 0;
  for (size_t i = 0; i < s->nout; i++) {
    outgoing *o = &s->out[i];
    int done = 0, rc;
    int must = wait_all || s->nout - i > MAX_OUTGOING || s->out_bytes > MAX_OUTGOING_BYTES;
    if (must) {
      rc = dml_comm_wait(s->c, o->req, -1);
      done = rc != DML_ETIMEDOUT;
      if (!done) {
        /* Still pending after the timeout: the worker does not read its replies. It stops
         * counting; the frame stays with the pending send (not freed under it) and is lost. */
        reply_failed(s, o->dst);
        s->out_bytes -= o->bytes;
        continue;
      }
    } else {
      rc = dml_comm_test(s->c, o->req, &done);
    }
    if (!done) {
      s->out[k++] = *o;
      continue;
    }
    if (rc) reply_failed(s, o->dst);
    s->out_bytes -= o->bytes;
    dml__free(o->buf);
  }
  s->nout = k;
}

/* Sends buf (owned: freed once sent) to dst on tag without blocking. */
static int post_send(dml_ps_server *s, int dst, int tag, void *buf, size_t bytes, dml_err *err) {
  if (grow_one(&s->out, s->nout, &s->out_cap, sizeof(outgoing), 64) != 0) {
    dml__free(buf);
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a reply");
  }
  dml_comm_req *req = NULL;
  if (dml_comm_isend(s->c, dst, tag, buf, bytes, &req) != 0) {
    dml__free(buf);
    reply_failed(s, dst);
    return 0;
  }
  s->out[s->nout++] = (outgoing){req, buf, bytes, dst};
  s->out_bytes += bytes;
  if (s->nout > MAX_OUTGOING || s->out_bytes > MAX_OUTGOING_BYTES) reap_replies(s, 0);
  return 0;
}

/* A request of this process's own worker handled in place (dml__ps_server_local). */
typedef struct local_sink {
  float *out;   /* a pull's values (nkeys, or the dense range's length) */
  int answered; /* 1: done (values in out); 0: the pull waits and its reply comes as a frame */
} local_sink;

/* One chunk's segment of a dense range into dst (for_segments); a chunk never written reads 0. */
static int read_segment(dml_ps_server *s, uint64_t part, size_t off, size_t cnt, size_t at,
                        void *dst) {
  dense_part *d = find_part(s, part);
  if (d)
    memcpy((float *)dst + at, d->vals + off, cnt * sizeof(float));
  else
    memset((float *)dst + at, 0, cnt * sizeof(float));
  return 0;
}

/* The values of req's keys (slots: already looked up, or NULL) into dst; missing keys read 0. */
static void read_values(dml_ps_server *s, const dml__ps_msg *req, const uint32_t *slots,
                        float *dst) {
  if (req->flags & DML__PS_FLAG_DENSE) {
    for_segments(s, req->key_lo, req->key_hi - req->key_lo + 1, read_segment, dst);
    return;
  }
  for (uint64_t i = 0; i < req->nkeys; i++) {
    uint32_t slot;
    if (slots)
      slot = slots[i];
    else
      lookup(s, req->keys[i], 0, &slot, NULL);
    dst[i] = slot == EMPTY_SLOT ? 0.0f : s->vals[slot];
  }
}

static int post_reply(dml_ps_server *s, int dst, void *buf, size_t bytes, dml_err *err) {
  return post_send(s, dst, s->tag_rep, buf, bytes, err);
}

static void drop_peer(dml_ps_server *s, int src, const char *why);

/* A DIRECT request's values are copied out of the worker in pieces of this many keys (256 KB),
 * each added while it is in cache; pieces end at multiples of it, so a chunk is never split (a
 * BSP mean counts each push of a chunk once). */
#define DIRECT_PIECE ((uint64_t)1 << 16)

/* A direct copy with worker src failed (rc from dml_comm_peer_read/write; what: which): its link
 * had failed or it has exited (DML_EPEER: a death the watcher reports; the request is ignored),
 * or anything else, a bad address first, is the worker's protocol error (DML_EPROTO: dropped).
 * The message is made here: the communicator's last error may be another thread's. */
static int direct_failed(dml_ps_server *s, int src, int rc, const char *what, uint64_t addr,
                         size_t bytes, dml_err *err) {
  return dml_err_set(err, rc == DML_EPEER ? DML_EPEER : DML_EPROTO,
                     "ps: %s: %s at 0x%llx (%zu bytes): %s", dml_comm_peer_name(s->c, src), what,
                     (unsigned long long)addr, bytes,
                     rc == DML_EPROTO  ? "not mapped in it"
                     : rc == DML_EPEER ? "its link has failed"
                                       : dml_strerror(rc));
}

/* A dense range's segments as pieces of one direct write (for_segments): the chunk's values, or
 * zeros for a chunk never written. A range of at most DML__PS_DENSE_MAX_PART keys has at most
 * this many segments. */
#define DIRECT_MAX_SEGMENTS (DML__PS_DENSE_MAX_PART / DML__PS_DENSE_PART + 1)
typedef struct direct_pieces {
  struct iovec iov[DIRECT_MAX_SEGMENTS];
  int n;
} direct_pieces;

static int direct_piece_segment(dml_ps_server *s, uint64_t part, size_t off, size_t cnt, size_t at,
                                void *arg) {
  static const float zeros[DML__PS_DENSE_PART] = {0};
  (void)at; /* the segments come in order */
  direct_pieces *a = arg;
  if (a->n == DIRECT_MAX_SEGMENTS) return DML_EINVAL; /* not past the decoder's range limit */
  dense_part *d = find_part(s, part);
  a->iov[a->n++] =
      (struct iovec){(void *)(uintptr_t)(d ? d->vals + off : zeros), cnt * sizeof(float)};
  return 0;
}

/* Writes keys [lo, lo + n) straight out of the parts into worker dst's memory at addr, in one
 * system call (n at most DML__PS_DENSE_MAX_PART). 0, or dml_comm_peer_writev's failure. */
static int write_parts(dml_ps_server *s, int dst, uint64_t lo, uint64_t n, uint64_t addr) {
  direct_pieces a;
  a.n = 0;
  int crc = for_segments(s, lo, n, direct_piece_segment, &a);
  return crc ? crc : dml_comm_peer_writev(s->c, dst, addr, a.iov, a.n);
}

static int send_reply(dml_ps_server *s, int dst, const dml__ps_msg *req, int with_values,
                      const uint32_t *slots, dml_err *err) {
  dml__ps_msg r;
  memset(&r, 0, sizeof(r));
  r.command = DML__PS_REPLY;
  r.sender = (uint32_t)s->me;
  if (req->flags & DML__PS_FLAG_DENSE) {
    r.flags = DML__PS_FLAG_DENSE;
    r.timestamp = req->timestamp;
    r.clock = req->clock;
    r.key_lo = req->key_lo;
    r.key_hi = req->key_hi;
    r.nvals = with_values ? req->key_hi - req->key_lo + 1 : 0;
    r.value_type = r.nvals ? DML__PS_VT_F32 : DML__PS_VT_NONE;
    int direct = s->direct_now;
    s->direct_now = 0; /* it meant this request only */
    if (r.nvals && (req->flags & DML__PS_FLAG_DIRECT) && direct) {
      /* the values into the worker's output (unless written as the push was added), then a
       * header that says so */
      if (direct == 1) {
        int crc = write_parts(s, dst, req->key_lo, r.nvals, req->out_addr);
        if (crc) {
          dml_err e;
          direct_failed(s, dst, crc, "writing its direct pull's output", req->out_addr,
                        (size_t)r.nvals * sizeof(float), &e);
          if (crc != DML_EPEER) drop_peer(s, dst, dml_err_msg(&e)); /* a bad output address */
          return 0; /* else: it died, the watcher says so */
        }
      }
      r.flags |= DML__PS_FLAG_DIRECT;
      r.nvals = 0;
      r.value_type = DML__PS_VT_NONE;
      void *hbuf = dml__malloc(DML__PS_HEADER_BYTES);
      if (hbuf == NULL) return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a reply");
      dml__ps_encode(hbuf, &r, NULL, NULL);
      return post_reply(s, dst, hbuf, DML__PS_HEADER_BYTES, err);
    }
    if (r.nvals && (req->flags & DML__PS_FLAG_REPLY_BODY)) {
      /* the header, then the values on the body tag: the worker receives them straight into
       * its buffer. (Sent from the part itself, they made every change to the part wait for
       * the worker to have read them: a round trip on the next push; measured slower.) */
      r.flags |= DML__PS_FLAG_BODY;
      void *hbuf = dml__malloc(DML__PS_HEADER_BYTES);
      size_t vbytes = (size_t)r.nvals * sizeof(float);
      /* the request's own body when it has one (its values are applied by now): no allocation,
       * and already in cache; filled: it holds the values already (apply_dense wrote them) */
      float *vbuf = s->spare && s->spare_bytes >= vbytes ? s->spare : NULL;
      int filled = vbuf != NULL && s->spare_filled;
      if (vbuf) s->spare = NULL;
      if (vbuf == NULL) vbuf = dml__malloc(vbytes);
      if (hbuf == NULL || vbuf == NULL) {
        dml__free(hbuf);
        dml__free(vbuf);
        return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a reply");
      }
      if (!filled) read_values(s, req, NULL, vbuf);
      dml__ps_encode(hbuf, &r, NULL, NULL);
      int rc = post_reply(s, dst, hbuf, DML__PS_HEADER_BYTES, err);
      if (rc == 0)
        rc = post_send(s, dst, DML__PS_TAG_BODY(s->h, req->timestamp), vbuf, vbytes, err);
      else
        dml__free(vbuf);
      return rc;
    }
    size_t dbytes = dml__ps_frame_bytes(0, r.nvals);
    void *dbuf = dml__malloc(dbytes);
    float *tmp = NULL; /* the values, unless they lie in one chunk held here */
    const float *src = NULL;
    if (dbuf && r.nvals) {
      uint64_t part = req->key_lo / DML__PS_DENSE_PART;
      dense_part *d = find_part(s, part);
      if (d && req->key_hi / DML__PS_DENSE_PART == part)
        src = d->vals + req->key_lo % DML__PS_DENSE_PART;
      else if ((src = tmp = dml__malloc((size_t)r.nvals * sizeof(float))) != NULL)
        read_values(s, req, NULL, tmp);
    }
    if (dbuf == NULL || (r.nvals && src == NULL)) {
      dml__free(dbuf);
      return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a %zu-byte reply", dbytes);
    }
    dml__ps_encode(dbuf, &r, NULL, src);
    dml__free(tmp);
    return post_reply(s, dst, dbuf, dbytes, err);
  }
  r.timestamp = req->timestamp;
  r.clock = req->clock;
  r.nkeys = with_values ? req->nkeys : 0;
  r.nvals = r.nkeys;
  r.value_type = r.nvals ? DML__PS_VT_F32 : DML__PS_VT_NONE;
  r.key_lo = r.nkeys ? req->key_lo : 0;
  r.key_hi = r.nkeys ? req->key_hi : 0;
  size_t bytes = dml__ps_frame_bytes(r.nkeys, r.nvals);
  void *buf = dml__malloc(bytes);
  float *v = r.nvals ? dml__malloc((size_t)r.nvals * sizeof(float)) : NULL;
  if (buf == NULL || (r.nvals && v == NULL)) {
    dml__free(buf);
    dml__free(v);
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a %zu-byte reply", bytes);
  }
  if (r.nvals) read_values(s, req, slots, v);
  dml__ps_encode(buf, &r, req->keys, v);
  dml__free(v);
  return post_reply(s, dst, buf, bytes, err);
}

static uint64_t min_live_clock(const dml_ps_server *s, int except) {
  uint64_t m = UINT64_MAX;
  for (int r = 0; r < s->n; r++) {
    const worker_state *w = &s->w[r];
    if (!counts(w) || r == except) continue;
    if (w->clock < m) m = w->clock;
  }
  return m;
}

static int pull_ready(const dml_ps_server *s, int src, const dml__ps_msg *m) {
  if (m->clock == DML__PS_CLOCK_FINAL) return min_live_clock(s, src) == UINT64_MAX;
  if (s->cfg.staleness < 0) return 1;
  uint64_t st = (uint64_t)s->cfg.staleness;
  if (m->clock <= st) return 1;
  return min_live_clock(s, -1) >= m->clock - st;
}

/* The mean of the agg_n pushes summed into d->agg, applied as one optimizer step; agg cleared. */
static void apply_part_mean(dense_part *d) {
  float scale = 1.0f / (float)d->agg_n;
  for (size_t i = d->agg_lo; i < d->agg_hi; i++) {
    d->grads[i] = d->agg[i] * scale;
    d->agg[i] = 0;
  }
  dml_optim_begin_step(d->opt);
  dml_optim_update_range(d->opt, d->vals, d->grads, d->agg_lo, d->agg_hi - d->agg_lo);
  d->agg_n = 0;
}

/* BSP: once every live worker has passed the aggregated clock, apply the mean of its pushes. */
static void flush_dense_aggregate(dml_ps_server *s) {
  for (size_t p = 0; p < s->ndparts; p++)
    if (s->dparts[p].agg_n) apply_part_mean(&s->dparts[p]);
  s->dense_agg_pushes = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Mirrored chunks (ps_internal.h): every server holds them and folds their pushes clock by clock,
 * in sender order, so that every replica computes the same values. */

/* 1 if dense request m covers mirrored chunks (a frame covers mirrored chunks only, or none). */
static int is_mirrored(const dml_ps_server *s, const dml__ps_msg *m) {
  return (m->flags & DML__PS_FLAG_DENSE) &&
         dml__ps_dense_owner(&s->layout, m->key_lo) == DML__PS_MIRRORED;
}

/* 1 if clock c of mirrored chunk d is complete: every live worker has pushed it or passed it
 * (its pushes arrive before its later clock, in order). */
static int mirror_clock_complete(const dml_ps_server *s, const dense_part *d, uint64_t c) {
  for (int r = 0; r < s->n; r++) {
    const worker_state *w = &s->w[r];
    if (!counts(w) || w->clock > c) continue;
    if (d->mlast[r] <= c) return 0; /* nothing of clock c (nor later) from r yet */
  }
  return 1;
}

/* Applies clock c's pushes of mirrored chunk d in sender order, the same on every replica: added
 * (sum-only), or their mean as one optimizer step; then drops them. */
static void mirror_apply_clock(dml_ps_server *s, dense_part *d, uint64_t c) {
  uint32_t n = 0;
  size_t lo = DML__PS_DENSE_PART, hi = 0;
  for (int r = 0; r < s->n; r++) s->mslot[r] = -1;
  for (size_t i = 0; i < d->nmq; i++) /* one push per sender and clock */
    if (d->mq[i].clock == c) s->mslot[d->mq[i].src] = (int)i;
  for (int r = 0; r < s->n; r++) {
    if (s->mslot[r] < 0) continue;
    const mirror_push *p = &d->mq[s->mslot[r]];
    add_floats((d->opt ? d->agg : d->vals) + p->off, p->vals, p->cnt);
    lo = DML__MIN(lo, (size_t)p->off);
    hi = DML__MAX(hi, (size_t)p->off + p->cnt);
    n++;
  }
  if (n && d->opt) {
    d->agg_n = n;
    d->agg_lo = lo;
    d->agg_hi = hi;
    apply_part_mean(d);
  }
  size_t k = 0;
  for (size_t i = 0; i < d->nmq; i++) {
    if (d->mq[i].clock != c) {
      d->mq[k++] = d->mq[i];
      continue;
    }
    s->mq_bytes[d->mq[i].src] -= MIRROR_ENTRY_BYTES(d->mq[i].cnt);
    d->mcount[d->mq[i].src]--;
    dml__free(d->mq[i].vals);
  }
  d->nmq = k;
}

/* Folds every complete clock of every mirrored chunk; force (a final pull: every other worker has
 * left): every clock held, in order, jumping from one held clock to the next. Clocks no live
 * worker pushed are skipped at once. */
static void mirror_fold(dml_ps_server *s, int force) {
  for (uint64_t k = 0; k < s->layout.nmirrored; k++) {
    dense_part *d = find_part(s, s->mparts[k]);
    while (d->mclock < UINT64_MAX && (force || mirror_clock_complete(s, d, d->mclock))) {
      uint64_t c = d->mclock, next = force ? UINT64_MAX : min_live_clock(s, -1);
      mirror_apply_clock(s, d, c);
      for (size_t i = 0; i < d->nmq; i++) next = DML__MIN(next, d->mq[i].clock);
      if (next == UINT64_MAX) { /* nothing held, and no live worker (or a forced fold) */
        d->mclock = c + 1;
        break;
      }
      d->mclock = DML__MAX(c + 1, next);
    }
  }
}

/* 1 if a request on mirrored chunks can be answered: a pull at clock c once clocks < c are
 * folded, a pushpull once c is (its own push is in the fold it reads), a push at once unless
 * its clock is MIRROR_ACK_LEAD or more past the fold. */
static int mirror_ready(dml_ps_server *s, const dml__ps_msg *m) {
  uint64_t need = m->clock + (m->command != DML__PS_PULL);
  if (m->command == DML__PS_PUSH) /* acknowledged at once unless far ahead of the fold */
    need = m->clock >= MIRROR_ACK_LEAD ? m->clock + 1 - MIRROR_ACK_LEAD : 0;
  for (uint64_t part = m->key_lo / DML__PS_DENSE_PART; part <= m->key_hi / DML__PS_DENSE_PART;
       part++) {
    const dense_part *d = find_part(s, part);
    if (d == NULL || d->mclock < need) return 0;
  }
  return 1;
}

/* 1 if request m from src can be answered now: a push at once (on mirrored chunks, once its clock
 * is folded), a pull by the consistency model (pull_ready) and the mirrored folds. */
static int request_ready(dml_ps_server *s, int src, const dml__ps_msg *m) {
  int consistent = m->command == DML__PS_PUSH || pull_ready(s, src, m);
  if (m->clock == DML__PS_CLOCK_FINAL || !is_mirrored(s, m)) return consistent;
  return consistent && mirror_ready(s, m);
}

typedef struct mirror_arg {
  int src, check; /* check: only look (a first pass: a refused push is kept nowhere) */
  const dml__ps_msg *m;
  dml_err *err;
} mirror_arg;

/* One chunk's segment of a push of mirrored chunks (for_segments): checked, or queued (a copy). */
static int mirror_segment(dml_ps_server *s, uint64_t part, size_t off, size_t cnt, size_t at,
                          void *arg) {
  mirror_arg *a = arg;
  dense_part *d = find_part(s, part);
  const char *peer = dml_comm_peer_name(s->c, a->src);
  if (a->check) {
    if (d == NULL || !d->mirror)
      return dml_err_set(a->err, DML_EPROTO, "ps: %s pushed dense chunk %llu as mirrored", peer,
                         (unsigned long long)part);
    if (a->m->clock < d->mclock)
      return dml_err_set(a->err, DML_EPROTO,
                         "ps: %s pushed mirrored dense chunk %llu at clock %llu, which this "
                         "replica has applied already (it is at clock %llu)",
                         peer, (unsigned long long)part, (unsigned long long)a->m->clock,
                         (unsigned long long)d->mclock);
    if (d->mlast[a->src] > a->m->clock)
      return dml_err_set(a->err, DML_EPROTO,
                         "ps: %s pushed mirrored dense chunk %llu at clock %llu after one at "
                         "clock %llu (once per clock, in clock order)",
                         peer, (unsigned long long)part, (unsigned long long)a->m->clock,
                         (unsigned long long)(d->mlast[a->src] - 1));
    if (d->mcount[a->src] >= MAX_MIRROR_QUEUED)
      return dml_err_set(a->err, DML_EPROTO,
                         "ps: %s has %d pushes of mirrored dense chunk %llu waiting for other "
                         "workers' clocks (at most %d)",
                         peer, MAX_MIRROR_QUEUED, (unsigned long long)part, MAX_MIRROR_QUEUED);
    return 0;
  }
  if (grow_one(&d->mq, d->nmq, &d->mq_cap, sizeof(mirror_push), 8) != 0)
    return dml_err_set(a->err, DML_ENOMEM, "ps server: no memory to hold a push");
  float *v = dml__malloc(cnt * sizeof(float));
  if (v == NULL) return dml_err_set(a->err, DML_ENOMEM, "ps server: no memory to hold a push");
  memcpy(v, a->m->vals + at, cnt * sizeof(float));
  d->mq[d->nmq++] = (mirror_push){a->src, a->m->clock, (uint32_t)off, (uint32_t)cnt, v};
  d->mlast[a->src] = a->m->clock + 1; /* below UINT64_MAX: the decoder refuses that clock */
  d->mcount[a->src]++;
  s->mq_bytes[a->src] += MIRROR_ENTRY_BYTES(cnt);
  return 0;
}

/* A dropped peer's pushes still waiting in the mirrored chunks' queues are discarded (those of
 * clocks folded already stay applied). */
static void mirror_forget(dml_ps_server *s, int src) {
  for (uint64_t k = 0; k < s->layout.nmirrored; k++) {
    dense_part *d = find_part(s, s->mparts[k]);
    size_t j = 0;
    for (size_t i = 0; i < d->nmq; i++) {
      if (d->mq[i].src != src) {
        d->mq[j++] = d->mq[i];
        continue;
      }
      dml__free(d->mq[i].vals);
    }
    d->nmq = j;
    d->mcount[src] = 0;
    s->mq_bytes[src] = 0;
  }
}

/* Queues push m from src on mirrored chunks for its clock's fold (checked first, whole). */
static int mirror_push_add(dml_ps_server *s, int src, const dml__ps_msg *m, dml_err *err) {
  uint64_t chunks =
      m->nvals ? (m->key_hi / DML__PS_DENSE_PART - m->key_lo / DML__PS_DENSE_PART + 1) : 0;
  if (s->mq_bytes[src] + chunks * MIRROR_ENTRY_BYTES(0) + m->nvals * sizeof(float) >
      MAX_MIRROR_BYTES / (size_t)s->n)
    return dml_err_set(err, DML_EPROTO,
                       "ps: %s: more than %zu MB of its pushes to mirrored tensors wait here for "
                       "other workers' clocks",
                       dml_comm_peer_name(s->c, src), (MAX_MIRROR_BYTES / (size_t)s->n) >> 20);
  mirror_arg a = {src, 1, m, err};
  int rc = for_segments(s, m->key_lo, m->nvals, mirror_segment, &a);
  a.check = 0;
  return rc ? rc : for_segments(s, m->key_lo, m->nvals, mirror_segment, &a);
}

/* The open aggregate's pushes, their mean applied as one optimizer step. */
static void apply_aggregate(dml_ps_server *s) {
  if (s->dense_agg_pushes) flush_dense_aggregate(s);
  if (s->agg_pushes == 0) return;
  float scale = 1.0f / (float)s->agg_pushes;
  for (size_t i = 0; i < s->nagg; i++) {
    uint32_t slot = s->agg_list[i];
    s->agg_grads[i] = s->agg[slot] * scale;
    s->agg[slot] = 0;
    s->mark[slot] = 0;
  }
  dml_optim_begin_step(s->opt);
  dml_optim_update_sparse(s->opt, s->vals, s->agg_grads, s->agg_list, s->nagg, 1);
  s->nagg = 0;
  s->agg_pushes = 0;
}

static void maybe_checkpoint(dml_ps_server *s);

/* A DIRECT push (its values still in the worker), applied piece by piece as apply_dense would
 * the whole: each piece copied out of the worker, applied, and with write_out (a sum-only
 * pushpull answered now) the new values written into the worker's output. A bad address stops
 * it with DML_EPROTO (the pieces before it applied, and with write_out the piece whose write
 * failed: the worker is dropped). */
static int apply_direct(dml_ps_server *s, int src, const dml__ps_msg *m, int write_out,
                        dml_err *err) {
  if (s->dpiece == NULL && (s->dpiece = dml__malloc(DIRECT_PIECE * sizeof(float))) == NULL)
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a direct push");
  for (uint64_t at = 0; at < m->nvals;) {
    uint64_t key = m->key_lo + at;
    uint64_t n = DML__MIN(DIRECT_PIECE - key % DIRECT_PIECE, m->nvals - at);
    size_t bytes = (size_t)n * sizeof(float);
    uint64_t in = m->vals_addr + at * sizeof(float), out = m->out_addr + at * sizeof(float);
    int crc = dml_comm_peer_read(s->c, src, s->dpiece, in, bytes);
    if (crc) return direct_failed(s, src, crc, "reading its direct push", in, bytes, err);
    s->st.bytes_in += bytes;
    dml__ps_msg piece = *m;
    piece.key_lo = key;
    piece.key_hi = key + n - 1;
    piece.nvals = n;
    piece.vals = s->dpiece;
    piece.borrowed = 1;
    int rc = apply_dense(s, &piece, write_out ? s->dpiece : NULL, err);
    if (rc) return rc;
    if (write_out && (crc = dml_comm_peer_write(s->c, src, out, s->dpiece, bytes)) != 0)
      return direct_failed(s, src, crc, "writing its direct pushpull's output", out, bytes, err);
    at += n;
  }
  return 0;
}

/* The values of DIRECT push m, copied out of the worker whole, into m (owned): for the paths that
 * keep them (a held push, a mirrored chunk's queue). */
static int direct_fetch(dml_ps_server *s, int src, dml__ps_msg *m, dml_err *err) {
  size_t bytes = (size_t)m->nvals * sizeof(float);
  float *v = dml__malloc(bytes);
  if (v == NULL) return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a direct push");
  int crc = dml_comm_peer_read(s->c, src, v, m->vals_addr, bytes);
  if (crc) {
    dml__free(v);
    return direct_failed(s, src, crc, "reading its direct push", m->vals_addr, bytes, err);
  }
  s->st.bytes_in += bytes;
  if (!m->borrowed) dml__free(m->keys); /* none: a dense frame */
  m->keys = NULL;
  m->vals = v;
  m->borrowed = 0;
  return 0;
}

/* A push summed into the open aggregate (or, without aggregation, applied): its worker counts
 * it. also (sum-only pushpull answered now, may be NULL): the new values go there too; a DIRECT
 * push's values are read as it is applied (unless fetched already), and with direct_out its new
 * values written into the worker's output. */
static int push_apply(dml_ps_server *s, int src, const dml__ps_msg *m, float *also, int direct_out,
                      dml_err *err) {
  int direct = (m->flags & DML__PS_FLAG_DIRECT) && m->vals == NULL;
  int rc = direct                            ? apply_direct(s, src, m, direct_out, err)
           : (m->flags & DML__PS_FLAG_DENSE) ? apply_dense(s, m, also, err)
                                             : apply_push(s, m, err);
  if (rc == 0) {
    s->w[src].applied++;
    s->w[src].applied_ts = m->timestamp;
    s->w[src].applied_lo = m->key_lo;
  }
  return rc;
}

/* BSP sync aggregation: the aggregate of clock c is applied once every live worker has passed c
 * (the slowest worker's clock mc > c: each sent its pushes of c before saying so), then the next
 * clock's opens with the pushes held for it, and so on while mc is past it. A pull at clock c is
 * answered only once mc >= c, so after every aggregate before c. */
static void flush_aggregate_to(dml_ps_server *s, uint64_t mc) {
  if (!s->aggregating) return;
  while (mc > s->agg_clock) {
    if (s->agg_pushes || s->dense_agg_pushes) apply_aggregate(s);
    maybe_checkpoint(s); /* between aggregates: it holds every push it counts as applied */
    uint64_t next = mc;  /* the next clock with held pushes, at most the slowest worker's */
    for (size_t i = 0; i < s->nhq; i++)
      if (s->hq[i].m.clock < next) next = s->hq[i].m.clock;
    if (next == UINT64_MAX) break; /* no live worker and nothing held */
    s->agg_clock = next;
    size_t k = 0;
    for (size_t i = 0; i < s->nhq; i++) {
      held_push *h = &s->hq[i];
      if (h->m.clock > next) {
        s->hq[k++] = *h;
        continue;
      }
      dml_err e;
      dml_err_clear(&e);
      if (push_apply(s, h->src, &h->m, NULL, 0, &e) != 0)
        dml_log(DML_LOG_WARN, "ps server %d: a held push of %s: %s", s->me,
                dml_comm_peer_name(s->c, h->src), dml_err_msg(&e));
      s->hq_bytes -= dml__ps_frame_bytes(h->m.nkeys, h->m.nvals);
      dml__ps_msg_free(&h->m);
    }
    s->nhq = k;
  }
}

static void flush_aggregate(dml_ps_server *s) {
  flush_aggregate_to(s, min_live_clock(s, -1));
}

/* A final pull can be answered (every other worker has left, and its own pushes were waited
 * for): every aggregate still open or held is complete -- applied, clock by clock. */
static void final_pull_ready(dml_ps_server *s, const dml__ps_msg *m) {
  if (m->clock != DML__PS_CLOCK_FINAL) return;
  flush_aggregate_to(s, UINT64_MAX);
  if (s->layout.nmirrored) mirror_fold(s, 1);
}

/* *keep becomes m with keys and values of its own: m's when m owns them (taken over: m keeps
 * none), else a copy of the frame's. 0 or DML_ENOMEM. */
static int keep_msg(dml__ps_msg *keep, dml__ps_msg *m) {
  *keep = *m;
  if (m->borrowed) return dml__ps_msg_own(keep);
  m->keys = NULL;
  m->vals = NULL;
  m->borrowed = 1;
  return 0;
}

/* Keeps push m from src for its clock's aggregate (BSP sync aggregation, m's clock past the open
 * one): a copy, or its values when m owns them (m keeps none then). 0: kept; 1: no room (sum it
 * now); or an error. */
static int hold_push(dml_ps_server *s, int src, dml__ps_msg *m, dml_err *err) {
  size_t bytes = dml__ps_frame_bytes(m->nkeys, m->nvals);
  if (s->hq_bytes + bytes > MAX_HELD_PUSH_BYTES) {
    if (!s->hq_full_logged)
      dml_log(DML_LOG_WARN,
              "ps server %d: more than %zu MB of pushes ahead of the slowest worker's clock: "
              "further ones count in the open clock's mean",
              s->me, MAX_HELD_PUSH_BYTES >> 20);
    s->hq_full_logged = 1;
    return 1;
  }
  if (grow_one(&s->hq, s->nhq, &s->hq_cap, sizeof(held_push), 16) != 0)
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory to hold a push");
  held_push *h = &s->hq[s->nhq];
  h->src = src;
  if (keep_msg(&h->m, m) != 0) /* a direct push's fetched values, or the frame's copied */
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory to hold a push");
  s->nhq++;
  s->hq_bytes += bytes;
  return 0;
}

static void sum_check(dml_ps_server *s);

static void serve_deferred(dml_ps_server *s, dml_err *err) {
  if (s->nsg) sum_check(s); /* a worker that stopped counting may complete a group */
  flush_aggregate(s);
  if (s->layout.nmirrored) mirror_fold(s, 0);
  size_t k = 0;
  for (size_t i = 0; i < s->ndq; i++) {
    deferred *d = &s->dq[i];
    if (request_ready(s, d->src, &d->m)) {
      final_pull_ready(s, &d->m);
      if (d->local && s->nldone < s->ldone_cap) {
        if (d->local_out) read_values(s, &d->m, NULL, d->local_out);
        s->ldone[s->nldone++] = (local_done){d->m.timestamp, d->m.key_lo};
      } else {
        /* a DIRECT pull's values go straight into the worker's output, as when answered at
         * once: a worker that gives up on a request fences the servers that still owe it
         * (dml_comm_fence) before its buffers go back to the caller */
        if (d->m.flags & DML__PS_FLAG_DIRECT) s->direct_now = 1;
        send_reply(s, d->src, &d->m, d->m.command != DML__PS_PUSH, NULL, err);
      }
      dml__ps_msg_free(&d->m);
    } else {
      s->dq[k++] = *d;
    }
  }
  s->ndq = k;
}

static void worker_leaves(dml_ps_server *s, int r, int died) {
  worker_state *w = &s->w[r];
  if (!counts(w)) return;
  if (died) {
    w->dead = 1;
    s->st.dead_workers++;
    dml_log(DML_LOG_WARN, "ps server %d: worker %s died; it no longer counts", s->me,
            dml_comm_peer_name(s->c, r));
  } else {
    w->done = 1;
  }
  s->live--;
}

/* The first frame of a worker on a re-formed communicator: its clock and whether it has left
 * are the truth; a server restored from a checkpoint counts what the checkpoint missed. */
static void worker_rejoins(dml_ps_server *s, int r, const dml__ps_msg *m) {
  worker_state *w = &s->w[r];
  if (s->st.restored && !w->rejoined) {
    w->rejoined = 1;
    uint64_t lost = m->key_lo > w->ckpt_applied ? m->key_lo - w->ckpt_applied : 0;
    uint64_t clocks = m->clock > w->ckpt_clock ? m->clock - w->ckpt_clock : 0;
    s->st.lost_pushes += lost;
    s->st.lost_clocks += clocks;
    dml_log(
        DML_LOG_WARN,
        "ps server %d: worker %d rejoined at clock %llu; the checkpoint (clock %llu) lacks %llu "
        "of its acknowledged pushes: lost",
        s->me, r, (unsigned long long)m->clock, (unsigned long long)w->ckpt_clock,
        (unsigned long long)lost);
  }
  if (m->clock > w->clock || s->st.restored) w->clock = m->clock;
  if (m->key_hi == 1) worker_leaves(s, r, 0);
}

/* Worker w has reached clock c: the pulls (and BSP aggregate) that waited for it are served. The
 * body of the request being handled (spare) is kept from their replies: its values are still to
 * be applied. */
static void serve_deferred_keep_spare(dml_ps_server *s, dml_err *err) {
  void *spare = s->spare;
  s->spare = NULL;
  serve_deferred(s, err);
  s->spare = spare;
}

static void clock_advances(dml_ps_server *s, worker_state *w, uint64_t c, dml_err *err) {
  if (c <= w->clock) return;
  w->clock = c;
  serve_deferred_keep_spare(s, err);
}

/* Room for every deferred pull to be answered in place before the worker collects them. */
static int grow_ldone(dml_ps_server *s) {
  size_t nc = DML__MAX(2 * s->ldone_cap, s->nldone + s->ndq + 16);
  local_done *nl = dml__realloc(s->ldone, nc * sizeof(local_done));
  if (nl == NULL) return DML_ENOMEM;
  s->ldone = nl;
  s->ldone_cap = nc;
  return 0;
}

/* Keeps request m from src to be answered once request_ready says so (0: the entry owns m; on
 * an error the caller still frees it); a dense request of this process's worker (sink) is then
 * answered in place, into its buffer. */
static int defer_request(dml_ps_server *s, int src, dml__ps_msg *m, local_sink *sink,
                         dml_err *err) {
  if (grow_one(&s->dq, s->ndq, &s->dq_cap, sizeof(deferred), 16) != 0)
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory to defer a request");
  /* the reply needs the keys or the range, not the values of a pushpull's push half */
  if (!m->borrowed) dml__free(m->vals);
  m->vals = NULL;
  m->nvals = 0;
  int local = sink && (m->flags & DML__PS_FLAG_DENSE);
  if ((local && s->nldone + s->ndq + 1 > s->ldone_cap && grow_ldone(s) != 0) ||
      dml__ps_msg_own(m) != 0) /* the frame is freed after this call */
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory to defer a request");
  s->dq[s->ndq++] = (deferred){src, *m, local, local ? sink->out : NULL};
  s->st.deferred_pulls++;
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Summed pushpulls. */

/* One chunk's segment of a group's piece (for_segments): every member's push added in one pass,
 * and this process's worker's output written from the chunk. */
typedef struct sum_arg {
  const float **v; /* (nv) the pushes' values of the piece */
  int nv;
  float *out; /* this process's worker's output for the piece, or NULL */
  dml_err *err;
} sum_arg;

static int sum_segment(dml_ps_server *s, uint64_t part, size_t off, size_t cnt, size_t at,
                       void *arg) {
  sum_arg *a = arg;
  dense_part *d;
  int rc = dense_part_get(s, part, &d, a->err);
  if (rc) return rc;
  float *p = d->vals + off;
  int k = 0;
  for (; k + 2 <= a->nv; k += 2) add2_floats(p, a->v[k] + at, a->v[k + 1] + at, cnt);
  if (k < a->nv) add_floats(p, a->v[k] + at, cnt);
  if (a->out) memcpy(a->out + at, p, cnt * sizeof(float));
  return 0;
}

/* A copy with member k's worker failed (crc from dml_comm_peer_read/write): it is left out of the
 * rest of the group; a bad address (anything but its death) drops it. */
static void sum_member_failed(dml_ps_server *s, sum_member *mb, int crc, const char *what,
                              uint64_t addr, size_t bytes) {
  dml_err e;
  int rc = direct_failed(s, mb->src, crc, what, addr, bytes, &e);
  mb->gone = 1;
  if (rc != DML_EPEER) drop_peer(s, mb->src, dml_err_msg(&e));
}

/* Group g is complete: piece by piece (DIRECT_PIECE keys), every member's push is added into the
 * parts in one pass and every member's output written from them; then each is answered. The
 * members of workers that stopped counting are left out. */
static int sum_run(dml_ps_server *s, sum_group *g, dml_err *err) {
  uint64_t n = g->key_hi - g->key_lo + 1;
  size_t piece_floats = DIRECT_PIECE;
  for (int k = 0; k < g->nm; k++)
    if (!counts(&s->w[g->mem[k].src])) g->mem[k].gone = 1;
  if (s->sgbuf == NULL &&
      (s->sgbuf = dml__malloc((size_t)s->n * piece_floats * sizeof(float))) == NULL)
    return dml_err_set(err, DML_ENOMEM, "ps server: no memory for summed pushpulls");
  const float **v = dml__malloc((size_t)g->nm * sizeof(*v));
  if (v == NULL) return dml_err_set(err, DML_ENOMEM, "ps server: no memory for summed pushpulls");
  int rc = 0;
  for (uint64_t at = 0; at < n && rc == 0;) {
    uint64_t key = g->key_lo + at;
    uint64_t cnt = DML__MIN(DIRECT_PIECE - key % DIRECT_PIECE, n - at);
    size_t bytes = (size_t)cnt * sizeof(float);
    int nv = 0;
    float *out = NULL;
    for (int k = 0; k < g->nm; k++) {
      sum_member *mb = &g->mem[k];
      if (mb->gone) continue;
      if (mb->out) out = mb->out + at;
      if (mb->vals) {
        v[nv++] = mb->vals + at;
        continue;
      }
      float *b = s->sgbuf + (size_t)k * piece_floats;
      uint64_t in = mb->m.vals_addr + at * sizeof(float);
      int crc = dml_comm_peer_read(s->c, mb->src, b, in, bytes);
      if (crc) {
        sum_member_failed(s, mb, crc, "reading its direct pushpull", in, bytes);
        continue;
      }
      s->st.bytes_in += bytes;
      v[nv++] = b;
    }
    sum_arg a = {v, nv, out, err};
    if ((rc = for_segments(s, key, cnt, sum_segment, &a)) != 0) break;
    for (int k = 0; k < g->nm; k++) {
      sum_member *mb = &g->mem[k];
      if (mb->gone || mb->vals) continue;
      uint64_t to = mb->m.out_addr + at * sizeof(float);
      int crc = write_parts(s, mb->src, key, cnt, to);
      if (crc) sum_member_failed(s, mb, crc, "writing its direct pushpull's output", to, bytes);
    }
    at += cnt;
  }
  dml__free(v);
  if (rc) return rc;
  s->st.summed++;
  for (int k = 0; k < g->nm; k++) {
    sum_member *mb = &g->mem[k];
    if (mb->gone) continue;
    worker_state *w = &s->w[mb->src];
    w->applied++;
    w->last_push_ts = w->applied_ts = mb->m.timestamp;
    w->last_push_lo = w->applied_lo = mb->m.key_lo;
    s->st.pushes++;
    s->st.pulls++;
    if (mb->out) { /* keeping the room defer_request made for the deferred pulls */
      if (s->nldone + s->ndq + 1 > s->ldone_cap && grow_ldone(s) != 0)
        return dml_err_set(err, DML_ENOMEM, "ps server: no memory to answer a pushpull");
      s->ldone[s->nldone++] = (local_done){mb->m.timestamp, mb->m.key_lo};
    } else {
      s->direct_now = mb->vals ? 0 : 2;                       /* DIRECT: written as it was added */
      int arc = send_reply(s, mb->src, &mb->m, 1, NULL, err); /* the others still answered */
      if (rc == 0) rc = arc;
    }
  }
  return rc;
}

static void sum_member_free(dml_ps_server *s, sum_member *mb) {
  if (mb->m.vals && !mb->m.borrowed) s->w[mb->src].sum_bytes -= (size_t)mb->m.nvals * sizeof(float);
  dml__ps_msg_free(&mb->m);
}

static void sum_group_free(dml_ps_server *s, sum_group *g) {
  for (int k = 0; k < g->nm; k++) sum_member_free(s, &g->mem[k]);
  dml__free(g->mem);
  g->mem = NULL;
  g->nm = 0;
}

/* Lets go of the members of workers that stopped counting, and of groups left with none. */
static void sum_prune(dml_ps_server *s) {
  for (size_t i = 0; i < s->nsg;) {
    sum_group *g = &s->sg[i];
    int j = 0;
    for (int k = 0; k < g->nm; k++) {
      if (counts(&s->w[g->mem[k].src]))
        g->mem[j++] = g->mem[k];
      else
        sum_member_free(s, &g->mem[k]);
    }
    g->nm = j;
    if (j > 0) {
      i++;
      continue;
    }
    sum_group_free(s, g);
    s->sg[i] = s->sg[--s->nsg];
  }
}

/* Runs every group whose members are all the workers that count (their number is s->live). */
static void sum_check(dml_ps_server *s) {
  sum_prune(s);
  for (size_t i = 0; i < s->nsg;) {
    sum_group *g = &s->sg[i];
    if (g->nm < s->live) {
      i++;
      continue;
    }
    sum_group done = *g;
    s->sg[i] = s->sg[--s->nsg]; /* out of the list first: answering may look at it again */
    dml_err e;
    dml_err_clear(&e);
    if (sum_run(s, &done, &e) != 0)
      dml_log(DML_LOG_ERROR, "ps server %d: summed pushpull: %s", s->me, dml_err_msg(&e));
    sum_group_free(s, &done);
  }
}

/* Pushpull m from src (dense, sum-only, BSP, not mirrored) joins the group of its keys and clock
 * (made if it is the first); the group runs once it is complete. */
static int sum_hold(dml_ps_server *s, int src, dml__ps_msg *m, local_sink *sink, dml_err *err) {
  const char *peer = dml_comm_peer_name(s->c, src);
  sum_prune(s); /* what a dropped worker held is not held against the others */
  size_t i = 0;
  while (i < s->nsg && !(s->sg[i].clock == m->clock && s->sg[i].key_lo == m->key_lo)) i++;
  if (i < s->nsg) {
    sum_group *g = &s->sg[i];
    if (g->key_hi != m->key_hi)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s pushpulled keys [%llu, %llu] at clock %llu, another worker [%llu, "
                         "%llu]: summed pushpulls need the same ranges",
                         peer, (unsigned long long)m->key_lo, (unsigned long long)m->key_hi,
                         (unsigned long long)m->clock, (unsigned long long)g->key_lo,
                         (unsigned long long)g->key_hi);
    for (int k = 0; k < g->nm; k++)
      if (g->mem[k].src == src)
        return dml_err_set(err, DML_EPROTO,
                           "ps: %s pushpulled keys [%llu, %llu] twice at clock %llu (summed "
                           "pushpulls: once per clock)",
                           peer, (unsigned long long)m->key_lo, (unsigned long long)m->key_hi,
                           (unsigned long long)m->clock);
  } else {
    if (s->nsg >= MAX_SUM_GROUPS)
      return dml_err_set(err, DML_EPROTO, "ps: %s: more than %d summed pushpulls waiting", peer,
                         MAX_SUM_GROUPS);
    if (grow_one(&s->sg, s->nsg, &s->sg_cap, sizeof(sum_group), 4) != 0)
      return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a summed pushpull");
    sum_member *mem = dml__calloc((size_t)s->n, sizeof(*mem));
    if (mem == NULL) return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a pushpull");
    s->sg[s->nsg++] = (sum_group){m->clock, m->key_lo, m->key_hi, 0, mem};
  }
  sum_group *g = &s->sg[i];
  sum_member mb = {src, *m, NULL, NULL, 0};
  if (sink) { /* the caller's buffers, valid until it has the answer */
    mb.vals = m->vals;
    mb.out = sink->out;
    mb.m.vals = NULL;
    mb.m.borrowed = 1;
  } else if (m->vals) { /* a frame's (or body's) values: copied */
    size_t bytes = (size_t)m->nvals * sizeof(float);
    if (s->w[src].sum_bytes + bytes > MAX_SUM_BYTES)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s: more than %zu MB of its summed pushpulls' values waiting", peer,
                         MAX_SUM_BYTES >> 20);
    if (keep_msg(&mb.m, m) != 0)
      return dml_err_set(err, DML_ENOMEM, "ps server: no memory for a summed pushpull");
    s->w[src].sum_bytes += bytes;
    mb.vals = mb.m.vals;
  }
  g->mem[g->nm++] = mb;
  sum_check(s);
  return 0;
}

/* One request from src, decoded and checked (or built in place by this process's worker: sink
 * not NULL, keys and values borrowed from the caller). A pull's values go to sink->out when
 * sink is given and the pull can be answered now; otherwise into a reply frame. m is freed (or
 * kept, owned, with a deferred pull). */
static int handle_msg(dml_ps_server *s, int src, dml__ps_msg *mp, local_sink *sink, dml_err *err) {
  dml__ps_msg m = *mp;
  int rc = 0, fused_local = 0, applied_now = 0;
  /* The watcher reports a dead worker as a BYE from this rank naming it. */
  if (src == s->me && m.command == DML__PS_BYE && m.sender != (uint32_t)s->me) {
    if (m.sender < (uint32_t)s->n) worker_leaves(s, (int)m.sender, 1);
    serve_deferred(s, err);
    return 0;
  }
  worker_state *w = &s->w[src];
  if (w->dropped) {
    dml__ps_msg_free(&m);
    return 0;
  }
  /* A request carries its sender's clock: the worker has finished every iteration before it (and
   * sent their pushes, which came first), as a CLOCK frame would say (workers send one only to
   * servers no request told). */
  int request =
      m.command == DML__PS_PUSH || m.command == DML__PS_PUSHPULL || m.command == DML__PS_PULL;
  int mirrored = is_mirrored(s, &m);
  if (mirrored && m.command != DML__PS_PULL && m.clock < w->clock) {
    /* a worker's clock only grows: a replica that took this push and one that had folded its
     * clock already would differ */
    rc = dml_err_set(
        err, DML_EPROTO, "ps: %s pushed mirrored dense keys at clock %llu after telling clock %llu",
        dml_comm_peer_name(s->c, src), (unsigned long long)m.clock, (unsigned long long)w->clock);
    dml__ps_msg_free(&m);
    return rc;
  }
  if (request && m.clock != DML__PS_CLOCK_FINAL) clock_advances(s, w, m.clock, err);
  switch (m.command) {
    case DML__PS_PUSH:
    case DML__PS_PUSHPULL:
      if (s->cfg.summed_pushpull && m.command == DML__PS_PUSHPULL &&
          (m.flags & DML__PS_FLAG_DENSE) && !mirrored) {
        if ((rc = sum_hold(s, src, &m, sink, err)) == 0 && sink) sink->answered = 0;
        break;
      }
      if (m.timestamp < w->last_push_ts ||
          (m.timestamp == w->last_push_ts && m.key_lo <= w->last_push_lo)) {
        s->st.dup_pushes++; /* resent after a timeout: applied once already */
      } else if (mirrored) {
        /* queued for its clock's fold on this replica, which may complete that clock */
        if ((m.flags & DML__PS_FLAG_DIRECT) && (rc = direct_fetch(s, src, &m, err)) != 0) break;
        if ((rc = mirror_push_add(s, src, &m, err)) != 0) break;
        w->applied++;
        w->last_push_ts = w->applied_ts = m.timestamp;
        w->last_push_lo = w->applied_lo = m.key_lo;
        s->st.pushes++;
        serve_deferred_keep_spare(s, err);
      } else {
        /* a sum-only dense pushpull answered now reads the part as it adds: into the local
         * worker's buffer, or into the request's body, which becomes the reply's */
        int later = s->aggregating && m.clock > s->agg_clock;
        /* a DIRECT push held for a later clock is copied out of the worker now */
        if (later && (m.flags & DML__PS_FLAG_DIRECT) && (rc = direct_fetch(s, src, &m, err)) != 0)
          break;
        int direct = (m.flags & DML__PS_FLAG_DIRECT) && m.vals == NULL;
        float *also = NULL;
        int answer_now = m.command == DML__PS_PUSHPULL && (m.flags & DML__PS_FLAG_DENSE) &&
                         s->cfg.sum_only && request_ready(s, src, &m);
        if (answer_now && sink)
          also = sink->out;
        else if (answer_now && !direct && s->spare && s->spare == (void *)m.vals)
          also = m.vals;
        /* BSP sync aggregation: a push of a clock past the open aggregate's waits for it */
        int held = later ? hold_push(s, src, &m, err) : 1;
        if (held < 0) {
          rc = held;
          break;
        }
        if (held == 1) {
          if ((rc = push_apply(s, src, &m, also, answer_now && direct, err)) != 0) break;
          applied_now = 1;
          if (also && sink) fused_local = 1;
          if (also && !sink) s->spare_filled = 1;
          if (answer_now && direct) s->direct_now = 2;
        }
        w->last_push_ts = m.timestamp;
        w->last_push_lo = m.key_lo;
        s->st.pushes++;
      }
      if (rc || (mirrored && src != s->me)) break; /* a replica's copy: never answered */
      if (m.command == DML__PS_PUSH) {
        if (!request_ready(s, src, &m)) { /* a push of mirrored chunks: once its clock is folded */
          if ((rc = defer_request(s, src, &m, sink, err)) == 0) return 0;
          break;
        }
        if (sink)
          sink->answered = 1;
        else
          rc = send_reply(s, src, &m, 0, NULL, err);
        break;
      }
      /* the pull half */
      /* fall through */
    case DML__PS_PULL:
      s->st.pulls++;
      if (request_ready(s, src, &m)) {
        final_pull_ready(s, &m);
        /* a pushpull whose push was applied just now has its slots in idx_scratch */
        int fresh = m.command == DML__PS_PUSHPULL && !(m.flags & DML__PS_FLAG_DENSE) &&
                    applied_now && s->idx_cap >= m.nkeys;
        const uint32_t *slots = fresh ? s->idx_scratch : NULL;
        if (sink) {
          if (!fused_local) read_values(s, &m, slots, sink->out);
          sink->answered = 1;
        } else {
          if ((m.flags & DML__PS_FLAG_DIRECT) && s->direct_now == 0) s->direct_now = 1;
          rc = send_reply(s, src, &m, 1, slots, err);
        }
      } else {
        s->direct_now = 0;
        if ((rc = defer_request(s, src, &m, sink, err)) == 0) return 0; /* it owns m */
      }
      break;
    case DML__PS_CLOCK: clock_advances(s, w, m.clock, err); break;
    case DML__PS_BYE:
      worker_leaves(s, src, 0);
      serve_deferred(s, err);
      break;
    case DML__PS_REFORM:
      if (s->cfg.recover) s->reform_wanted = 1;
      break;
    case DML__PS_REJOIN:
      worker_rejoins(s, src, &m);
      serve_deferred(s, err);
      break;
    default:
      rc = dml_err_set(err, DML_EPROTO, "ps: %s sent command %u to a server",
                       dml_comm_peer_name(s->c, src), m.command);
  }
  dml__ps_msg_free(&m);
  return rc;
}

/* The values of m (a BODY push from src): the next message from src on the body tag, of exactly
 * m->nvals floats, waited for at most body_wait_ms. *out owns them; m->vals points in. */
static int take_body(dml_ps_server *s, int src, const char *peer, dml__ps_msg *m, void **out,
                     dml_err *err) {
  dml_comm_req *q = NULL;
  void *buf = NULL;
  size_t bytes = 0;
  int rc = dml_comm_irecv_alloc(s->c, src, DML__PS_TAG_BODY_IN(s->h), &q);
  if (rc == 0) {
    rc = dml_comm_wait_alloc(s->c, q, s->body_wait_ms, &buf, &bytes, NULL);
    if (rc == DML_ETIMEDOUT) {
      dml_comm_cancel(s->c, q);
      return dml_err_set(err, DML_EPROTO, "ps: %s announced %llu values and sent none in %d ms",
                         peer, (unsigned long long)m->nvals, s->body_wait_ms);
    }
  }
  if (rc)
    return dml_err_set(err, DML_EPROTO, "ps: %s: receiving the values it announced: %s", peer,
                       dml_comm_errmsg(s->c));
  s->st.bytes_in += bytes;
  if (bytes != m->nvals * sizeof(float)) {
    dml_comm_buf_free(buf);
    return dml_err_set(err, DML_EPROTO, "ps: %s announced %llu values and sent %zu bytes", peer,
                       (unsigned long long)m->nvals, bytes);
  }
  m->vals = buf;
  *out = buf;
  return 0;
}

/* 1 if every chunk of the dense range [lo, hi] (at most DML__PS_DENSE_MAX_PART keys, as the
 * decoder checked) is this handler's, or every one is mirrored (held by every server). */
static int owns_dense(const dml_ps_server *s, uint64_t lo, uint64_t hi) {
  int first = dml__ps_dense_owner(&s->layout, lo);
  if (first != s->vme && first != DML__PS_MIRRORED) return 0;
  for (uint64_t part = lo / DML__PS_DENSE_PART; part <= hi / DML__PS_DENSE_PART; part++)
    if (dml__ps_dense_owner(&s->layout, part * DML__PS_DENSE_PART) != first) return 0;
  return 1;
}

/* A worker stopped counting outside a clock update (dropped, or its reply failed): the pulls and
 * the BSP aggregate that waited for it are looked at again. */
static void recheck(dml_ps_server *s) {
  if (!s->recheck) return;
  s->recheck = 0;
  dml_err e;
  dml_err_clear(&e);
  serve_deferred(s, &e);
}

/* A frame from src that broke the protocol (rc DML_EPROTO, err saying how): src is dropped, its
 * later frames ignored, and it stops counting. */
static void drop_if_hostile(dml_ps_server *s, int src, int rc, const dml_err *err) {
  if (rc == DML_EPROTO && src == s->me) /* this process's worker: its request is not answered */
    dml_log(DML_LOG_ERROR, "ps server %d: a request of this process's worker: %s", s->me,
            dml_err_msg(err));
  if (rc != DML_EPROTO || src < 0 || src >= s->n || src == s->me) return;
  drop_peer(s, src, dml_err_msg(err));
}

/* Worker src broke the protocol (why): dropped, its later frames ignored; it stops counting. */
static void drop_peer(dml_ps_server *s, int src, const char *why) {
  dml_log(DML_LOG_WARN, "ps server %d: dropping %s: %s", s->me, dml_comm_peer_name(s->c, src), why);
  if (s->w[src].dropped) return;
  s->st.dropped_peers++;
  if (counts(&s->w[src])) s->live--;
  s->w[src].dropped = 1;
  s->recheck = 1;
  mirror_forget(s, src);
}

int dml_ps_server_handle(dml_ps_server *s, int src, const void *frame, size_t bytes, dml_err *err) {
  dml__ps_msg m;
  const char *peer = dml_comm_peer_name(s->c, src);
  s->st.bytes_in += bytes;
  int rc = dml__ps_decode_view(frame, bytes, peer, &m, err); /* frame outlives m, or m owns */
  if (rc == 0 && src != s->me && m.sender != (uint32_t)src)
    rc = dml_err_set(err, DML_EPROTO, "ps: %s sent a frame claiming to come from rank %u", peer,
                     m.sender);
  if (rc == 0 && (src < 0 || src >= s->n || (!s->w[src].is_worker && src != s->me)))
    rc =
        dml_err_set(err, DML_EPROTO, "ps: %s is not a worker but sent command %u", peer, m.command);
  if (rc == 0 && (m.flags & DML__PS_FLAG_DENSE) && !owns_dense(s, m.key_lo, m.key_hi))
    rc = dml_err_set(err, DML_EPROTO,
                     "ps: %s sent dense keys [%llu, %llu], which server %d does not own (or "
                     "mirrored and sharded ones in one frame)",
                     peer, (unsigned long long)m.key_lo, (unsigned long long)m.key_hi, s->me);
  if (rc == 0 && src != s->me && is_mirrored(s, &m) && m.command != DML__PS_PUSH)
    rc = dml_err_set(err, DML_EPROTO,
                     "ps: %s sent command %u for mirrored dense keys [%llu, %llu]: a worker "
                     "reads its own replica, and sends the others pushes only",
                     peer, m.command, (unsigned long long)m.key_lo, (unsigned long long)m.key_hi);
  if (rc == 0) {
    for (uint64_t i = 0; i < m.nkeys; i++)
      if (dml__ps_owner(m.keys[i], s->vS) != s->vme) {
        rc = dml_err_set(err, DML_EPROTO, "ps: %s sent key %llu, which server %d does not own",
                         peer, (unsigned long long)m.keys[i], s->me);
        break;
      }
  }
  int direct = (m.flags & DML__PS_FLAG_DIRECT) != 0;
  if (rc == 0 && direct && !dml_comm_direct(s->c, src))
    rc = dml_err_set(err, DML_EPROTO,
                     "ps: %s sent a direct request, but this server cannot reach its memory", peer);
  if (rc == 0 && direct && !s->w[src].dropped && m.command != DML__PS_REPLY)
    s->st.direct++;  /* its values count in bytes_in as they are copied in */
  void *body = NULL; /* the values of a BODY push, sent after its header (a dropped peer's are
                        not waited for: it is ignored) */
  if (rc == 0 && (m.flags & DML__PS_FLAG_BODY) && !direct && m.command != DML__PS_REPLY &&
      !s->w[src].dropped)
    rc = take_body(s, src, peer, &m, &body, err);
  if (rc) {
    dml__ps_msg_free(&m);
    drop_if_hostile(s, src, rc, err);
    recheck(s);
    return rc;
  }
  s->spare = body; /* the reply may take it (send_reply) */
  s->spare_bytes = body ? (size_t)m.nvals * sizeof(float) : 0;
  s->spare_filled = 0;
  s->direct_now = 0;
  rc = handle_msg(s, src, &m, NULL, err); /* a deferred pull keeps no pushed values */
  if (rc == DML_EPEER) { /* a direct copy found src's link failed: its death comes next */
    dml_log(DML_LOG_DEBUG, "ps server %d: %s", s->me, dml_err_msg(err));
    dml_err_clear(err);
    rc = 0;
  }
  dml_comm_buf_free(s->spare);
  s->spare = NULL;
  s->spare_filled = 0;
  s->direct_now = 0;
  drop_if_hostile(s, src, rc, err); /* a push that breaks the protocol (mirrored chunks) */
  recheck(s);
  return rc;
}

void dml_ps_config_init(dml_ps_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->num_servers = 1;
  cfg->sync_aggregate = 1;
  dml_optim_config_init(&cfg->optim, DML_OPT_FTRL);
}

uint64_t dml__ps_mirror_keys(const dml_ps_config *cfg, int n) {
  int K = cfg->handler_threads > 0 ? cfg->handler_threads : 1;
  if (!cfg->colocated || n < 2 || cfg->staleness != 0 || !(cfg->sum_only || cfg->sync_aggregate) ||
      K > 1 || cfg->checkpoint_dir || cfg->recover || cfg->restore)
    return 0;
  return cfg->mirror_bytes / (uint64_t)(n - 1) / sizeof(float);
}

int dml_ps_sync_parse(const char *s, int *staleness, dml_err *err) {
  if (s == NULL) return dml_err_set(err, DML_EINVAL, "--sync: missing value");
  if (strcmp(s, "bsp") == 0) {
    *staleness = 0;
    return 0;
  }
  if (strcmp(s, "asp") == 0) {
    *staleness = DML_PS_ASP;
    return 0;
  }
  if (strncmp(s, "ssp:", 4) == 0) {
    int64_t v;
    if (dml_parse_i64(s + 4, 1, 1000000, &v, err) != 0)
      return dml_err_set(err, DML_EINVAL,
                         "--sync %s: the staleness must be an integer in 1..1000000", s);
    *staleness = (int)v;
    return 0;
  }
  return dml_err_set(err, DML_EINVAL, "--sync %s: want bsp, ssp:S or asp", s);
}

int dml_ps_dense_layout(const dml_ps_config *cfg, int n, uint64_t *offsets, uint64_t *server_bytes,
                        dml_err *err) {
  dml__ps_dense_layout l;
  int S = dml_ps_num_servers(cfg, n), K = cfg->handler_threads > 0 ? cfg->handler_threads : 1;
  int rc = dml__ps_dense_layout_build(&l, cfg->dense_sizes, cfg->num_dense, S * K,
                                      dml__ps_mirror_keys(cfg, n), err);
  if (rc) return rc;
  for (int t = 0; offsets && t < cfg->num_dense; t++) offsets[t] = l.offset[t];
  for (int k = 0; server_bytes && k < S; k++) server_bytes[k] = 0;
  for (int v = 0; server_bytes && v < S * K; v++) server_bytes[v % S] += l.bytes[v];
  dml__ps_dense_layout_free(&l);
  return 0;
}

void dml_ps_sparse_load(const dml_ps_config *cfg, int n, uint64_t nkeys, uint64_t *server_bytes) {
  int S = dml_ps_num_servers(cfg, n), K = cfg->handler_threads > 0 ? cfg->handler_threads : 1;
  for (int k = 0; k < S; k++) server_bytes[k] = 0;
  for (uint64_t key = 0; key < nkeys; key++)
    server_bytes[dml__ps_owner(key, S * K) % S] += sizeof(float);
}

int dml_ps_num_servers(const dml_ps_config *cfg, int n) {
  return cfg->colocated ? n : cfg->num_servers;
}
int dml_ps_num_workers(const dml_ps_config *cfg, int n) {
  return cfg->colocated ? n : n - cfg->num_servers;
}
int dml_ps_is_server(const dml_ps_config *cfg, int rank) {
  return cfg->colocated || rank < cfg->num_servers;
}
int dml_ps_is_worker(const dml_ps_config *cfg, int rank, int n) {
  return rank < n && (cfg->colocated || rank >= cfg->num_servers);
}

static int create_handler(dml_ps_server **out, dml_comm *c, const dml_ps_config *cfg, int h,
                          dml_err *err);

int dml_ps_server_create(dml_ps_server **out, dml_comm *c, const dml_ps_config *cfg, dml_err *err) {
  *out = NULL;
  int K = cfg->handler_threads > 0 ? cfg->handler_threads : 1;
  if (K > DML__PS_MAX_HANDLERS)
    return dml_err_set(err, DML_EINVAL, "ps: %d handler threads (at most %d)", K,
                       DML__PS_MAX_HANDLERS);
  if (K > 1 && (cfg->recover || cfg->restore || cfg->checkpoint_dir))
    return dml_err_set(err, DML_EUNSUPPORTED,
                       "ps: checkpoints and recovery need one handler thread per server");
  int rc = dml__ps_summed_check(cfg, err);
  if (rc) return rc;
  dml_ps_server *s = NULL;
  rc = create_handler(&s, c, cfg, 0, err);
  if (rc) return rc;
  if (K > 1) {
    s->subs = dml__calloc((size_t)K - 1, sizeof(dml_ps_server *));
    if (s->subs == NULL) rc = dml_err_set(err, DML_ENOMEM, "ps server: out of memory");
    for (int h = 1; rc == 0 && h < K; h++) rc = create_handler(&s->subs[h - 1], c, cfg, h, err);
    if (rc) {
      dml_ps_server_free(s);
      return rc;
    }
  }
  *out = s;
  return 0;
}

int dml__ps_summed_check(const dml_ps_config *cfg, dml_err *err) {
  if (!cfg->summed_pushpull) return 0;
  if (!cfg->sum_only || cfg->staleness != 0)
    return dml_err_set(err, DML_EINVAL, "ps: summed pushpulls need BSP and a sum-only server");
  if (cfg->recover || cfg->restore)
    return dml_err_set(err, DML_EUNSUPPORTED, "ps: summed pushpulls are not recovered");
  return 0;
}

int dml__ps_mirror_check(const dml_ps_config *cfg, int n, dml_err *err) {
  uint64_t mk = dml__ps_mirror_keys(cfg, n), per_clock = 0;
  if (mk == 0) return 0;
  for (int t = 0; t < cfg->num_dense; t++)
    if (cfg->dense_sizes[t] <= mk)
      per_clock +=
          cfg->dense_sizes[t] * sizeof(float) + (cfg->dense_sizes[t] + DML__PS_DENSE_PART - 1) /
                                                    DML__PS_DENSE_PART * MIRROR_ENTRY_BYTES(0);
  uint64_t flight = cfg->max_in_flight > 0 ? (uint64_t)cfg->max_in_flight : 64;
  if (flight + MIRROR_ACK_LEAD > MAX_MIRROR_QUEUED)
    return dml_err_set(err, DML_EINVAL,
                       "ps: %llu requests in flight with mirrored tensors (at most %d: a replica "
                       "holds a worker's pushes until every worker has pushed their clock)",
                       (unsigned long long)flight, MAX_MIRROR_QUEUED - MIRROR_ACK_LEAD);
  if (per_clock * (flight + MIRROR_ACK_LEAD) > MAX_MIRROR_BYTES / (uint64_t)n)
    return dml_err_set(err, DML_EINVAL,
                       "ps: %llu bytes of mirrored tensors per clock: a replica could have to hold "
                       "%llu of one worker's clocks of them (requests in flight and the ack lead), "
                       "more than its %zu MB for a worker; lower mirror_bytes",
                       (unsigned long long)per_clock,
                       (unsigned long long)(flight + MIRROR_ACK_LEAD),
                       (MAX_MIRROR_BYTES / (size_t)n) >> 20);
  return 0;
}

/* Every mirrored chunk's storage, made up front: its fold clock counts from the start. */
static int make_mirrored(dml_ps_server *s, dml_err *err) {
  if (s->layout.nmirrored == 0) return 0;
  int rc = dml__ps_mirror_check(&s->cfg, s->n, err);
  if (rc) return rc;
  s->mparts = dml__malloc((size_t)s->layout.nmirrored * sizeof(uint64_t));
  s->mslot = dml__malloc((size_t)s->n * sizeof(int));
  s->mq_bytes = dml__calloc((size_t)s->n, sizeof(size_t));
  if (s->mparts == NULL || s->mslot == NULL || s->mq_bytes == NULL)
    return dml_err_set(err, DML_ENOMEM, "ps server: out of memory");
  uint64_t k = 0;
  for (uint64_t chunk = 0; chunk < s->layout.nchunks; chunk++) {
    if (s->layout.owner[chunk] != DML__PS_MIRRORED) continue;
    dense_part *d;
    rc = dense_part_get(s, chunk, &d, err);
    if (rc) return rc;
    d->mirror = 1;
    d->mlast = dml__calloc((size_t)s->n, sizeof(uint64_t));
    d->mcount = dml__calloc((size_t)s->n, sizeof(uint32_t));
    if ((d->opt && (d->agg = dml__calloc(DML__PS_DENSE_PART, sizeof(float))) == NULL) ||
        d->mlast == NULL || d->mcount == NULL)
      return dml_err_set(err, DML_ENOMEM, "ps server: out of memory");
    s->mparts[k++] = chunk;
  }
  return 0;
}

static int create_handler(dml_ps_server **out, dml_comm *c, const dml_ps_config *cfg, int h,
                          dml_err *err) {
  *out = NULL;
  int n = c ? dml_comm_size(c) : 1, me = c ? dml_comm_rank(c) : 0;
  if (!cfg->colocated && (cfg->num_servers < 1 || cfg->num_servers >= n))
    return dml_err_set(err, DML_EINVAL, "ps: %d servers need at least %d ranks (have %d)",
                       cfg->num_servers, cfg->num_servers + 1, n);
  if (!dml_ps_is_server(cfg, me))
    return dml_err_set(err, DML_EINVAL, "ps: rank %d is not a server", me);
  if (cfg->colocated && (cfg->recover || cfg->restore))
    return dml_err_set(err, DML_EUNSUPPORTED,
                       "ps: recovery needs dedicated servers (not --servers colocated)");
  dml_ps_server *s = dml__calloc(1, sizeof(*s));
  if (s == NULL) return dml_err_set(err, DML_ENOMEM, "ps server: out of memory");
  s->c = c;
  s->cfg = *cfg;
  /* mirrored tensors on the tcp backend only (dml_ps_create decides the same): under MPI a
   * large unanswered push moves only while its receiver tests for it */
  const char *be = c ? dml_comm_backend(c) : NULL;
  if (be == NULL || strcmp(be, "tcp") != 0) s->cfg.mirror_bytes = 0;
  cfg = &s->cfg;
  s->me = me;
  s->n = n;
  s->K = cfg->handler_threads > 0 ? cfg->handler_threads : 1;
  s->h = h;
  s->vme = me + h * dml_ps_num_servers(cfg, n);
  s->vS = dml_ps_num_servers(cfg, n) * s->K;
  s->tag_req = DML__PS_TAG_REQ + h * DML__PS_TAG_HANDLER_STEP;
  s->tag_rep = DML__PS_TAG_REP + h * DML__PS_TAG_HANDLER_STEP;
  s->tag_watch = DML__PS_TAG_WATCH + h * DML__PS_TAG_HANDLER_STEP;
  s->aggregating = cfg->sync_aggregate && cfg->staleness == 0 && !cfg->sum_only;
  int64_t bw;
  if (dml_env_i64("DISTML_PS_BODY_WAIT_MS", DML__PS_BODY_WAIT_MS, 1, 3600000, &bw, err) != 0) {
    dml__free(s);
    return err->code ? err->code : DML_EINVAL;
  }
  s->body_wait_ms = (int)bw;
  s->w = dml__calloc((size_t)n, sizeof(worker_state));
  int rc = s->w ? 0 : dml_err_set(err, DML_ENOMEM, "ps server: out of memory");
  if (rc == 0)
    rc = dml__ps_dense_layout_build(&s->layout, cfg->dense_sizes, cfg->num_dense, s->vS,
                                    dml__ps_mirror_keys(cfg, n), err);
  if (rc == 0) rc = grow_values(s, err);
  if (rc == 0) rc = grow_map(s, err);
  if (rc == 0) rc = make_mirrored(s, err);
  if (rc) {
    dml_ps_server_free(s);
    return rc;
  }
  for (int r = 0; r < n; r++) {
    s->w[r].is_worker = dml_ps_is_worker(cfg, r, n);
    if (s->w[r].is_worker) s->live++;
  }
  *out = s;
  return 0;
}

/* The loop learns of worker r's death as a BYE from this rank naming r. */
static void report_dead(dml_ps_server *s, int r) {
  dml__ps_msg m;
  memset(&m, 0, sizeof(m));
  m.command = DML__PS_BYE;
  m.sender = (uint32_t)r;
  unsigned char buf[DML__PS_HEADER_BYTES];
  dml__ps_encode(buf, &m, NULL, NULL);
  dml_comm_send(s->c, s->me, s->tag_req, buf, sizeof buf);
}

/* Polls a receive per remote worker that completes only with the worker's empty goodbye (sent
 * when it leaves in order, so nothing is left pending on a peer that exits) or fails when the
 * worker is gone; a failure reaches the loop as a self-sent BYE naming the worker (it may be
 * blocked in a receive).
 * The watcher touches only w[r].watch, which the loop never reads. */
static void *watch_main(void *arg) {
  dml_ps_server *s = arg;
  static char none;
  for (int r = 0; r < s->n; r++) {
    if (!s->w[r].is_worker || r == s->me) continue;
    /* The receive cannot be posted when the worker already failed (it may die before this
     * thread first runs): that is its death report. */
    if (dml_comm_irecv(s->c, r, s->tag_watch, &none, 0, &s->w[r].watch) != 0) {
      s->w[r].watch = NULL;
      report_dead(s, r);
    }
  }
  while (!__atomic_load_n(&s->stop_watch, __ATOMIC_ACQUIRE)) {
    for (int r = 0; r < s->n; r++) {
      if (s->w[r].watch == NULL) continue;
      int done = 0;
      int wrc = dml_comm_test(s->c, s->w[r].watch, &done);
      if (!done) continue;
      s->w[r].watch = NULL;
      if (wrc == 0) continue; /* the worker's empty goodbye on this tag: it left in order */
      report_dead(s, r);
    }
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

int dml_ps_checkpoint_path(const char *dir, int rank, char *out, size_t bytes) {
  int len = snprintf(out, bytes, "%s/ps-server-%d.safetensors", dir, rank);
  return len < 0 || (size_t)len >= bytes ? DML_EINVAL : 0;
}

dml_comm *dml_ps_server_comm(const dml_ps_server *s) {
  return s->c;
}

static int watcher_start(dml_ps_server *s, dml_err *err) {
  __atomic_store_n(&s->stop_watch, 0, __ATOMIC_RELEASE);
  for (int r = 0; r < s->n; r++) s->w[r].watch = NULL;
  if (pthread_create(&s->watcher, NULL, watch_main, s) != 0)
    return dml_err_set(err, DML_ESYS, "ps server: cannot start the watcher thread");
  s->watcher_started = 1;
  return 0;
}

static void watcher_stop(dml_ps_server *s) {
  if (!s->watcher_started) return;
  __atomic_store_n(&s->stop_watch, 1, __ATOMIC_RELEASE);
  pthread_join(s->watcher, NULL);
  s->watcher_started = 0;
}

/* Writes the periodic checkpoint when one is due and no BSP aggregate is open (a checkpoint then
 * holds every push it counts as applied). */
static void maybe_checkpoint(dml_ps_server *s) {
  const dml_ps_config *cfg = &s->cfg;
  if (cfg->checkpoint_dir == NULL || s->agg_pushes != 0 || s->dense_agg_pushes != 0) return;
  double now = dml_now_s();
  uint64_t mc = min_live_clock(s, -1);
  int by_time = cfg->checkpoint_every_s > 0 && now - s->last_ckpt_s >= cfg->checkpoint_every_s;
  int by_clock = cfg->checkpoint_every_clocks > 0 && mc != UINT64_MAX &&
                 mc >= s->last_ckpt_clock + cfg->checkpoint_every_clocks;
  if (!by_time && !by_clock) return;
  char path[4096];
  dml_err e;
  dml_err_clear(&e);
  s->last_ckpt_s = now;
  if (mc != UINT64_MAX) s->last_ckpt_clock = mc;
  if (dml_ps_checkpoint_path(cfg->checkpoint_dir, s->me, path, sizeof path) != 0 ||
      dml_ps_server_checkpoint(s, path, &e) != 0) {
    dml_log(DML_LOG_WARN, "ps server %d: checkpoint not written: %s", s->me, dml_err_msg(&e));
    return;
  }
  s->st.checkpoints++;
}

/* Leaves the current communicator and joins a new one with every other process of the job (same
 * rank, world size and rendezvous): the shard, clocks and applied pushes stay; pulls waiting for
 * an answer are dropped (their workers resend them); every rank that joins is alive. */
static int reform(dml_ps_server *s, const char *why, dml_err *err) {
  int max = s->cfg.max_reforms > 0 ? s->cfg.max_reforms : 8;
  if (s->st.reforms >= max)
    return dml_err_set(err, DML_ECLOSED, "ps server %d: %s, and %d re-forms were already made",
                       s->me, why, max);
  dml_log(DML_LOG_WARN, "ps server %d: %s; re-forming the job", s->me, why);
  watcher_stop(s);
  dml_comm_abort(s->c, "ps: re-forming the job after a failure");
  reap_replies(s, 1); /* they fail at once on the aborted communicator */
  if (s->own_comm) dml_comm_free(s->c);
  s->c = NULL;
  s->own_comm = 0;
  dml_comm *nc = NULL;
  dml_err ierr;
  dml_err_clear(&ierr);
  int rc = dml_comm_init(&nc, s->cfg.comm_opts, &ierr);
  if (rc == 0 && (dml_comm_rank(nc) != s->me || dml_comm_size(nc) != s->n)) {
    rc = dml_err_set(&ierr, DML_EMISMATCH, "the new communicator has rank %d of %d",
                     dml_comm_rank(nc), dml_comm_size(nc));
    dml_comm_free(nc);
    nc = NULL;
  }
  if (rc)
    return dml_err_set(err, rc, "ps server %d: re-forming the job after %s: %s", s->me, why,
                       dml_err_msg(&ierr));
  s->c = nc;
  s->own_comm = 1;
  s->st.reforms++;
  for (size_t i = 0; i < s->ndq; i++) dml__ps_msg_free(&s->dq[i].m);
  s->ndq = 0;
  for (size_t i = 0; i < s->nsg; i++) sum_group_free(s, &s->sg[i]); /* resent */
  s->nsg = 0;
  for (int r = 0; r < s->n; r++) {
    worker_state *w = &s->w[r];
    if (w->is_worker && w->dead && !w->dropped) {
      w->dead = 0;
      s->st.dead_workers--;
      s->live++;
    }
  }
  dml_log(DML_LOG_INFO, "ps server %d: re-formed the job (re-form %d)", s->me, s->st.reforms);
  return watcher_start(s, err);
}

/* Orderly shutdown: every worker still here hears that this server is done (a BYE on the reply
 * tag), so it can leave without taking the end of the connection for a failure; but_me: not the
 * worker of this process (it is told in place). */
static void send_shutdown(dml_ps_server *s, int but_me) {
  dml__ps_msg m;
  memset(&m, 0, sizeof(m));
  m.command = DML__PS_BYE;
  m.sender = (uint32_t)s->me;
  unsigned char buf[DML__PS_HEADER_BYTES];
  dml__ps_encode(buf, &m, NULL, NULL);
  for (int r = 0; r < s->n; r++) {
    const worker_state *w = &s->w[r];
    if (!w->is_worker || w->dead || w->dropped || (but_me && r == s->me)) continue;
    dml_comm_send(s->c, r, s->tag_rep, buf, sizeof buf);
  }
}

/* A frame received from src (buf, freed here) handled as the loop does: a dropped hostile peer
 * is not an error of the loop; anything else is. */
static int handle_received(dml_ps_server *s, int src, void *buf, size_t bytes, dml_err *err) {
  dml_err herr;
  dml_err_clear(&herr);
  int hrc = dml_ps_server_handle(s, src, buf, bytes, &herr);
  dml_comm_buf_free(buf);
  return hrc && hrc != DML_EPROTO ? dml_err_set(err, hrc, "%s", dml_err_msg(&herr)) : 0;
}

/* Posts the receive of the next request (a worker serving its shard itself). */
static int post_inreq(dml_ps_server *s, dml_err *err) {
  int rc = dml_comm_irecv_alloc(s->c, DML_ANY_SOURCE, s->tag_req, &s->inreq);
  if (rc) s->inreq = NULL;
  return rc ? dml_err_set(err, rc, "ps server %d: %s", s->me, dml_comm_errmsg(s->c)) : 0;
}

int dml_ps_server_run(dml_ps_server *s, dml_err *err) {
  int rc = 0;
  if (s->cfg.restore && !s->st.restored) {
    char path[4096];
    if (s->cfg.checkpoint_dir == NULL ||
        dml_ps_checkpoint_path(s->cfg.checkpoint_dir, s->me, path, sizeof path) != 0)
      return dml_err_set(err, DML_EINVAL, "ps server %d: restore needs a checkpoint directory",
                         s->me);
    if ((rc = dml_ps_server_restore(s, path, err)) != 0) return rc;
    dml_log(DML_LOG_WARN,
            "ps server %d: restarted from %s (%zu keys, slowest worker at clock %llu)", s->me, path,
            s->nkeys, (unsigned long long)s->st.restored_clock);
  }
  /* the watcher first: nothing to undo if it cannot start */
  if ((rc = watcher_start(s, err)) != 0) return rc;
  for (int h = 1; s->subs && h < s->K; h++)
    if ((rc = dml_ps_server_start(s->subs[h - 1], err)) != 0) {
      for (int j = 1; j < h; j++) dml_ps_server_join(s->subs[j - 1], NULL);
      watcher_stop(s);
      return rc;
    }
  s->last_ckpt_s = dml_now_s();
  s->last_ckpt_clock = s->st.restored ? s->st.restored_clock : 0;
  /* One posted receive for the next request, kept across the communicator's timeouts: an idle
   * server waits on (a blocking receive that timed out would fail the peer whose request was just
   * arriving), and a peer that dies is still an error at once. */
  dml_comm_req *q = NULL;
  for (;;) {
    /* No worker left: the end, unless some died and there is recovery. Workers that re-form the
     * job send REFORM before they abort, so it is queued by the time their deaths are known:
     * what is queued is handled before the loop ends (the last one may call for a re-form). */
    int draining = s->live == 0;
    if (draining && !(s->cfg.recover && s->st.dead_workers > 0)) break;
    void *buf = NULL;
    size_t bytes = 0;
    int src = -1, done = 1;
    rc = q ? 0 : dml_comm_irecv_alloc(s->c, DML_ANY_SOURCE, s->tag_req, &q);
    if (rc == 0 && draining) rc = dml_comm_test_alloc(s->c, q, &done, &buf, &bytes, &src);
    if (rc == 0 && !draining) rc = dml_comm_wait_alloc(s->c, q, -1, &buf, &bytes, &src);
    if (draining && (rc || !done)) { /* nothing queued (or no one left to send it) */
      if (done) q = NULL;
      rc = 0;
      break;
    }
    if (rc == DML_ETIMEDOUT) {
      rc = 0;
      continue;
    }
    q = NULL; /* completed (or never posted): released */
    if (rc && s->cfg.recover) {
      char why[300];
      snprintf(why, sizeof why, "receive failed: %.250s", dml_comm_errmsg(s->c));
      if ((rc = reform(s, why, err)) != 0) break;
      continue;
    }
    if (rc) {
      dml_err_set(err, rc, "ps server %d: receive failed: %s", s->me, dml_comm_errmsg(s->c));
      break;
    }
    if ((rc = handle_received(s, src, buf, bytes, err)) != 0) break;
    if (s->nout) reap_replies(s, 0);
    recheck(s);
    if (s->reform_wanted) {
      s->reform_wanted = 0;
      char why[64];
      snprintf(why, sizeof why, "worker %d asked for a re-form", src);
      if ((rc = reform(s, why, err)) != 0) break;
      continue;
    }
    maybe_checkpoint(s);
  }
  if (q) dml_comm_cancel(s->c, q);
  flush_aggregate(s);
  watcher_stop(s);
  reap_replies(s, 1);
  if (rc == 0) send_shutdown(s, 0);
  s->st.keys = s->nkeys;
  for (int h = 1; s->subs && h < s->K; h++) {
    dml_err herr;
    dml_err_clear(&herr);
    int hrc = dml_ps_server_join(s->subs[h - 1], &herr);
    if (hrc && rc == 0)
      rc = dml_err_set(err, hrc, "ps server %d handler %d: %s", s->me, h, dml_err_msg(&herr));
  }
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Serving from the worker of this process (colocated, dml_ps_serve): the loop above cut into
 * steps the worker takes inside its own calls. */

int dml__ps_server_attach(dml_ps_server *s, dml_err *err) {
  if (s->attached || s->thread_started)
    return dml_err_set(err, DML_ESTATE, "ps server %d: already running or served", s->me);
  if (s->subs || s->cfg.recover || s->cfg.restore || s->cfg.checkpoint_dir)
    return dml_err_set(err, DML_EUNSUPPORTED,
                       "ps server %d: a worker serves its shard itself only with one handler "
                       "thread and no checkpoints",
                       s->me);
  int rc = post_inreq(s, err);
  if (rc) return rc;
  if ((rc = watcher_start(s, err)) != 0) {
    dml_comm_cancel(s->c, s->inreq);
    s->inreq = NULL;
    return rc;
  }
  s->attached = 1;
  return 0;
}

int dml__ps_server_local_done(dml_ps_server *s, uint64_t *timestamp, uint64_t *key_lo) {
  if (s->nldone == 0) return 0;
  local_done d = s->ldone[--s->nldone];
  *timestamp = d.timestamp;
  *key_lo = d.key_lo;
  return 1;
}

void dml__ps_server_forget(dml_ps_server *s, uint64_t timestamp) {
  size_t k = 0;
  for (size_t i = 0; i < s->ndq; i++) {
    deferred *d = &s->dq[i];
    if (d->src == s->me && d->m.timestamp == timestamp) {
      dml__ps_msg_free(&d->m);
      continue;
    }
    s->dq[k++] = *d;
  }
  s->ndq = k;
  for (size_t i = 0; i < s->nsg; i++) { /* its buffers are the caller's again */
    sum_group *g = &s->sg[i];
    int j = 0;
    for (int m = 0; m < g->nm; m++)
      if (!(g->mem[m].src == s->me && g->mem[m].m.timestamp == timestamp)) g->mem[j++] = g->mem[m];
    g->nm = j;
  }
}

int dml__ps_server_worker_dead(const dml_ps_server *s, int rank) {
  return rank >= 0 && rank < s->n && s->w[rank].dead;
}

int dml__ps_server_live(const dml_ps_server *s) {
  return s->live;
}

dml_comm_req *dml__ps_server_inreq(const dml_ps_server *s) {
  return s->inreq;
}

int dml__ps_server_poll(dml_ps_server *s, int *moved, dml_err *err) {
  while (s->inreq != NULL && s->live > 0) {
    void *buf = NULL;
    size_t bytes = 0;
    int src = -1, done = 0;
    int rc = dml_comm_test_alloc(s->c, s->inreq, &done, &buf, &bytes, &src);
    if (!done) break;
    s->inreq = NULL;
    if (rc)
      return dml_err_set(err, rc, "ps server %d: receive failed: %s", s->me, dml_comm_errmsg(s->c));
    *moved = 1;
    if ((rc = handle_received(s, src, buf, bytes, err)) != 0) return rc;
    if (s->live > 0 && (rc = post_inreq(s, err)) != 0) return rc;
    /* a request of this process's worker answered: back to it (a test of the next receive
     * would look at the sockets once more, a system call, before the worker goes on) */
    if (s->nldone) break;
  }
  if (s->nout) reap_replies(s, 0);
  recheck(s);
  return 0;
}

int dml__ps_server_local(dml_ps_server *s, dml__ps_msg *m, float *out, int *answered,
                         dml_err *err) {
  local_sink sink = {out, 0};
  s->st.bytes_in += dml__ps_frame_bytes(m->nkeys, m->nvals);
  m->borrowed = 1;
  int rc = handle_msg(s, s->me, m, &sink, err);
  *answered = sink.answered;
  if (s->nout) reap_replies(s, 0);
  recheck(s);
  return rc;
}

int dml__ps_server_detach(dml_ps_server *s) {
  if (!s->attached) return 0;
  s->attached = 0;
  if (s->inreq) dml_comm_cancel(s->c, s->inreq);
  s->inreq = NULL;
  flush_aggregate(s);
  watcher_stop(s);
  reap_replies(s, 1);
  /* A self-sent message could come after the other ranks have exited, and a receive from any
   * rank fails once no other rank is left: the worker of this process is told by the return. */
  if (s->live == 0) send_shutdown(s, 1);
  s->st.keys = s->nkeys;
  return s->live == 0;
}

static void *server_thread(void *arg) {
  dml_ps_server *s = arg;
  dml_err_clear(&s->thread_err);
  s->thread_rc = dml_ps_server_run(s, &s->thread_err);
  return NULL;
}

int dml_ps_server_start(dml_ps_server *s, dml_err *err) {
  if (pthread_create(&s->thread, NULL, server_thread, s) != 0)
    return dml_err_set(err, DML_ESYS, "ps server: cannot start its thread");
  s->thread_started = 1;
  return 0;
}

int dml_ps_server_join(dml_ps_server *s, dml_err *err) {
  if (!s->thread_started) return 0;
  pthread_join(s->thread, NULL);
  s->thread_started = 0;
  if (s->thread_rc && err) dml_err_set(err, s->thread_rc, "%s", dml_err_msg(&s->thread_err));
  return s->thread_rc;
}

/* Counters summed over the handlers; peers dropped or dead as handler 0 saw them. */
void dml_ps_server_stats_get(const dml_ps_server *s, dml_ps_server_stats *st) {
  *st = s->st;
  st->keys = s->nkeys;
  for (int h = 1; s->subs && h < s->K; h++) {
    const dml_ps_server *u = s->subs[h - 1];
    st->pushes += u->st.pushes;
    st->pulls += u->st.pulls;
    st->dup_pushes += u->st.dup_pushes;
    st->deferred_pulls += u->st.deferred_pulls;
    st->bytes_in += u->st.bytes_in;
    st->direct += u->st.direct;
    st->summed += u->st.summed;
    st->keys += u->nkeys;
  }
}

void dml_ps_server_free(dml_ps_server *s) {
  if (s == NULL) return;
  dml__ps_server_detach(s);
  for (int h = 1; s->subs && h < s->K; h++) dml_ps_server_free(s->subs[h - 1]);
  dml__free(s->subs);
  if (s->c) reap_replies(s, 1);
  dml__free(s->out);
  for (size_t i = 0; i < s->ndq; i++) dml__ps_msg_free(&s->dq[i].m);
  dml__free(s->dq);
  for (size_t i = 0; i < s->nhq; i++) dml__ps_msg_free(&s->hq[i].m);
  dml__free(s->hq);
  for (size_t i = 0; i < s->nsg; i++) sum_group_free(s, &s->sg[i]);
  dml__free(s->sg);
  dml__free(s->sgbuf);
  dml__free(s->ldone);
  for (size_t i = 0; i < s->ndparts; i++) {
    dml__free(s->dparts[i].vals);
    dml__free(s->dparts[i].grads);
    dml__free(s->dparts[i].agg);
    dml_optim_free(s->dparts[i].opt);
    for (size_t j = 0; j < s->dparts[i].nmq; j++) dml__free(s->dparts[i].mq[j].vals);
    dml__free(s->dparts[i].mq);
    dml__free(s->dparts[i].mlast);
    dml__free(s->dparts[i].mcount);
  }
  dml__free(s->dparts);
  dml__free(s->mparts);
  dml__free(s->mslot);
  dml__free(s->mq_bytes);
  dml__ps_dense_layout_free(&s->layout);
  dml_optim_free(s->opt);
  dml__free(s->vals);
  dml__free(s->hkeys);
  dml__free(s->hslot);
  dml__free(s->idx_scratch);
  dml__free(s->agg);
  dml__free(s->mark);
  dml__free(s->agg_list);
  dml__free(s->agg_grads);
  dml__free(s->dpiece);
  dml__free(s->w);
  if (s->own_comm) dml_comm_free(s->c);
  dml__free(s);
}

/* ---------------------------------------------------------------------------------------------
 * Checkpoints. Slots are handed out in insertion order, so slots 0..nkeys-1 are exactly the live
 * values and state entries. */

/* which: 0 last push timestamp, 1 clock, 2 last push key_lo, 3 push frames applied -- of the pushes
 * applied: one held for its clock's aggregate is not in the file, so its resend must not look like
 * a duplicate after a restore */
static uint64_t field(const worker_state *w, int which) {
  return which == 1   ? w->clock
         : which == 2 ? w->applied_lo
         : which == 3 ? w->applied
                      : w->applied_ts;
}

static int list_u64(char **out, const worker_state *w, int n, int which) {
  size_t cap = (size_t)n * 21 + 1;
  char *b = dml__malloc(cap);
  if (b == NULL) return DML_ENOMEM;
  size_t len = 0;
  b[0] = 0;
  for (int r = 0; r < n; r++)
    len += (size_t)snprintf(b + len, cap - len, "%s%llu", r ? "," : "",
                            (unsigned long long)field(&w[r], which));
  *out = b;
  return 0;
}

int dml_ps_server_checkpoint(dml_ps_server *s, const char *path, dml_err *err) {
  if (s->layout.nmirrored)
    return dml_err_set(err, DML_EUNSUPPORTED,
                       "ps server %d: no checkpoint with mirrored tensors (colocated, no recovery)",
                       s->me);
  size_t n = s->nkeys;
  int ns = s->opt ? dml_optim_num_state(s->opt) : 0;
  dml_st_tensor t[2 + 8 + 3 + 8];
  size_t nd = s->ndparts, P = DML__PS_DENSE_PART;
  int nds = nd && s->dparts[0].opt ? dml_optim_num_state(s->dparts[0].opt) : 0;
  float *dparts = NULL, *dsteps = NULL, *dvals = NULL, *dstate = NULL;
  float *keybits = dml__malloc((n ? n : 1) * sizeof(uint64_t));
  float *state = NULL;
  char *clocks = NULL, *pushes = NULL, *push_lo = NULL, *applied = NULL;
  int rc = keybits ? 0 : DML_ENOMEM;
  if (rc == 0 && ns > 0) {
    state = dml__malloc((n ? n : 1) * sizeof(float) * (size_t)ns);
    if (state == NULL) rc = DML_ENOMEM;
  }
  if (rc == 0) rc = list_u64(&clocks, s->w, s->n, 1);
  if (rc == 0) rc = list_u64(&pushes, s->w, s->n, 0);
  if (rc == 0) rc = list_u64(&push_lo, s->w, s->n, 2);
  if (rc == 0) rc = list_u64(&applied, s->w, s->n, 3);
  if (rc == 0 && nd > 0) {
    /* dense chunks: their indices and step counts as raw u64 bits, values and state (nd, P) */
    dparts = dml__malloc(nd * sizeof(uint64_t));
    dsteps = dml__malloc(nd * sizeof(uint64_t));
    dvals = dml__malloc(nd * P * sizeof(float));
    if (nds > 0) dstate = dml__malloc(nd * P * sizeof(float) * (size_t)nds);
    if (!dparts || !dsteps || !dvals || (nds > 0 && !dstate)) rc = DML_ENOMEM;
  }
  if (rc) {
    dml_err_set(err, rc, "ps checkpoint %s: out of memory", path);
    goto out;
  }
  {
    /* keys by slot */
    uint64_t *kb = (uint64_t *)(void *)keybits;
    for (size_t j = 0; j < s->hcap; j++)
      if (s->hslot[j] != EMPTY_SLOT) kb[s->hslot[j]] = s->hkeys[j];
  }
  int nt = 0;
  char names[8][DML_TENSOR_NAME_MAX + 16];
  t[nt++] = (dml_st_tensor){"ps.keys", 2, {(int64_t)n, 2, 0, 0}, keybits};
  t[nt++] = (dml_st_tensor){"ps.values", 1, {(int64_t)n, 0, 0, 0}, s->vals};
  float *sd = ns ? dml_optim_state_data(s->opt) : NULL;
  for (int i = 0; i < ns && i < 8; i++) {
    const dml_tensor_info *ti = dml_optim_state_tensor(s->opt, i);
    snprintf(names[i], sizeof names[i], "ps.optim.%s", ti->name);
    memcpy(state + (size_t)i * n, sd + (size_t)i * s->vcap, n * sizeof(float));
    t[nt++] = (dml_st_tensor){names[i], 1, {(int64_t)n, 0, 0, 0}, state + (size_t)i * n};
  }
  char step[32], rank[16], world[16];
  snprintf(step, sizeof step, "%llu",
           (unsigned long long)(s->opt ? dml_optim_step_count(s->opt) : 0));
  snprintf(rank, sizeof rank, "%d", s->me);
  snprintf(world, sizeof world, "%d", s->n);
  dml_st_meta meta[] = {
      {"ps.format", "2"}, /* 2: dense chunks of 8K keys (1: 64K) */
      {"ps.optim", s->cfg.sum_only ? "sum" : dml_optim_kind_name(s->cfg.optim.kind)},
      {"ps.optim.step", step},
      {"ps.server", rank},
      {"ps.world", world},
      {"ps.clocks", clocks},
      {"ps.last_push_ts", pushes},
      {"ps.last_push_lo", push_lo},
      {"ps.applied", applied}};
  char dnames[8][DML_TENSOR_NAME_MAX + 24];
  if (nd > 0) {
    uint64_t *pi = (uint64_t *)(void *)dparts, *si = (uint64_t *)(void *)dsteps;
    for (size_t i = 0; i < nd; i++) {
      const dense_part *d = &s->dparts[i];
      pi[i] = d->part;
      si[i] = d->opt ? dml_optim_step_count(d->opt) : 0;
      memcpy(dvals + i * P, d->vals, P * sizeof(float));
      for (int k = 0; k < nds; k++)
        memcpy(dstate + ((size_t)k * nd + i) * P, dml_optim_state_data(d->opt) + (size_t)k * P,
               P * sizeof(float));
    }
    t[nt++] = (dml_st_tensor){"ps.dense.chunks", 2, {(int64_t)nd, 2, 0, 0}, dparts};
    t[nt++] = (dml_st_tensor){"ps.dense.steps", 2, {(int64_t)nd, 2, 0, 0}, dsteps};
    t[nt++] = (dml_st_tensor){"ps.dense.values", 2, {(int64_t)nd, (int64_t)P, 0, 0}, dvals};
    for (int k = 0; k < nds && k < 8; k++) {
      snprintf(dnames[k], sizeof dnames[k], "ps.dense.optim.%s",
               dml_optim_state_tensor(s->dparts[0].opt, k)->name);
      t[nt++] = (dml_st_tensor){
          dnames[k], 2, {(int64_t)nd, (int64_t)P, 0, 0}, dstate + (size_t)k * nd * P};
    }
  }
  rc = dml_safetensors_write(path, t, nt, meta, (int)DML__ARRAY_LEN(meta), err);
out:
  dml__free(dparts);
  dml__free(dsteps);
  dml__free(dvals);
  dml__free(dstate);
  dml__free(keybits);
  dml__free(state);
  dml__free(clocks);
  dml__free(pushes);
  dml__free(push_lo);
  dml__free(applied);
  return rc;
}

/* Parses n comma-separated u64 from text into w[].clock (which 1), .last_push_lo and .applied_lo
 * (2), .applied (3) or .last_push_ts and .applied_ts (0); -1 for anything else, or a number past
 * u64. */
static int parse_list(const char *text, worker_state *w, int n, int which) {
  const char *p = text;
  for (int r = 0; r < n; r++) {
    char *end;
    if (p == NULL || *p < '0' || *p > '9') return -1;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno == ERANGE) return -1;
    if (which == 1)
      w[r].clock = v;
    else if (which == 2)
      w[r].last_push_lo = w[r].applied_lo = v;
    else if (which == 3)
      w[r].applied = v;
    else
      w[r].last_push_ts = w[r].applied_ts = v;
    p = end;
    if (r + 1 < n) {
      if (*p != ',') return -1;
      p++;
    }
  }
  return *p == 0 ? 0 : -1;
}

/* The dense chunks of a checkpoint (absent: none), checked like the sparse part. */
static int restore_dense(dml_ps_server *s, const dml_safetensors *st, const char *path,
                         dml_err *err) {
  const dml_st_tensor *tc = dml_safetensors_find(st, "ps.dense.chunks"),
                      *ts = dml_safetensors_find(st, "ps.dense.steps"),
                      *tv = dml_safetensors_find(st, "ps.dense.values");
  if (tc == NULL && ts == NULL && tv == NULL) return 0;
  const int64_t P = (int64_t)DML__PS_DENSE_PART;
  int64_t nd = tc && tc->ndim == 2 && tc->shape[1] == 2 ? tc->shape[0] : -1;
  if (nd < 0 || !ts || ts->ndim != 2 || ts->shape[0] != nd || ts->shape[1] != 2 || !tv ||
      tv->ndim != 2 || tv->shape[0] != nd || tv->shape[1] != P)
    return dml_err_set(err, DML_EFORMAT,
                       "ps restore %s: ps.dense.chunks (n, 2), ps.dense.steps (n, 2) and "
                       "ps.dense.values (n, %lld) must go together",
                       path, (long long)P);
  for (int64_t i = 0; i < nd; i++) {
    uint64_t part, steps;
    memcpy(&part, tc->data + 2 * i, sizeof part);
    memcpy(&steps, ts->data + 2 * i, sizeof steps);
    if (part > (UINT64_MAX / DML__PS_DENSE_PART) ||
        dml__ps_dense_owner(&s->layout, part * DML__PS_DENSE_PART) != s->me || find_part(s, part))
      return dml_err_set(err, DML_EFORMAT,
                         "ps restore %s: dense chunk %llu (#%lld) belongs to another server or "
                         "appears twice",
                         path, (unsigned long long)part, (long long)i);
    dense_part *d;
    int rc = dense_part_get(s, part, &d, err);
    if (rc) return rc;
    memcpy(d->vals, tv->data + i * P, (size_t)P * sizeof(float));
    if (d->opt) {
      int ns = dml_optim_num_state(d->opt);
      for (int k = 0; k < ns; k++) {
        char name[DML_TENSOR_NAME_MAX + 24];
        snprintf(name, sizeof name, "ps.dense.optim.%s", dml_optim_state_tensor(d->opt, k)->name);
        const dml_st_tensor *to = dml_safetensors_find(st, name);
        if (to == NULL || to->ndim != 2 || to->shape[0] != nd || to->shape[1] != P)
          return dml_err_set(err, DML_EFORMAT, "ps restore %s: %s missing or not (%lld, %lld)",
                             path, name, (long long)nd, (long long)P);
        memcpy(dml_optim_state_data(d->opt) + (size_t)k * (size_t)P, to->data + i * P,
               (size_t)P * sizeof(float));
      }
      dml_optim_set_step_count(d->opt, steps);
    }
  }
  return 0;
}

int dml_ps_server_restore(dml_ps_server *s, const char *path, dml_err *err) {
  if (s->nkeys != 0)
    return dml_err_set(err, DML_ESTATE, "ps restore %s: the server already holds keys", path);
  dml_safetensors *st = NULL;
  int rc = dml_safetensors_read(path, &st, err);
  if (rc) return rc;
  const char *want_opt = s->cfg.sum_only ? "sum" : dml_optim_kind_name(s->cfg.optim.kind);
  const char *fmt = dml_safetensors_meta(st, "ps.format"),
             *opt = dml_safetensors_meta(st, "ps.optim");
  const char *srv = dml_safetensors_meta(st, "ps.server"),
             *world = dml_safetensors_meta(st, "ps.world");
  const char *step = dml_safetensors_meta(st, "ps.optim.step");
  const dml_st_tensor *tk = dml_safetensors_find(st, "ps.keys"),
                      *tv = dml_safetensors_find(st, "ps.values");
  char rank[16], wsz[16];
  snprintf(rank, sizeof rank, "%d", s->me);
  snprintf(wsz, sizeof wsz, "%d", s->n);
  if (fmt && strcmp(fmt, "1") == 0) {
    rc = dml_err_set(err, DML_EFORMAT,
                     "ps restore %s: a checkpoint of format 1 (dense chunks of 64K keys) from an "
                     "older distml; this one reads format 2",
                     path);
    goto out;
  }
  if (!fmt || strcmp(fmt, "2") != 0 || !opt || !srv || !world || !step || !tk || !tv) {
    rc = dml_err_set(
        err, DML_EFORMAT,
        "ps restore %s: not a parameter-server checkpoint (metadata or tensors missing)", path);
    goto out;
  }
  if (strcmp(opt, want_opt) != 0 || strcmp(srv, rank) != 0 || strcmp(world, wsz) != 0) {
    rc = dml_err_set(err, DML_EFORMAT,
                     "ps restore %s: written by server %s of %s with optimizer %s; this is server "
                     "%s of %s with %s",
                     path, srv, world, opt, rank, wsz, want_opt);
    goto out;
  }
  int64_t n = tk->ndim == 2 ? tk->shape[0] : -1;
  if (n < 0 || tk->shape[1] != 2 || tv->ndim != 1 || tv->shape[0] != n ||
      n >= (int64_t)EMPTY_SLOT) {
    rc = dml_err_set(err, DML_EFORMAT, "ps restore %s: ps.keys must be (n, 2) and ps.values (n)",
                     path);
    goto out;
  }
  if (parse_list(dml_safetensors_meta(st, "ps.clocks"), s->w, s->n, 1) != 0 ||
      parse_list(dml_safetensors_meta(st, "ps.last_push_ts"), s->w, s->n, 0) != 0 ||
      parse_list(dml_safetensors_meta(st, "ps.last_push_lo"), s->w, s->n, 2) != 0 ||
      parse_list(dml_safetensors_meta(st, "ps.applied"), s->w, s->n, 3) != 0) {
    rc = dml_err_set(
        err, DML_EFORMAT,
        "ps restore %s: ps.clocks / ps.last_push_ts / ps.last_push_lo / ps.applied must list %d "
        "numbers",
        path, s->n);
    goto out;
  }
  int S = dml_ps_num_servers(&s->cfg, s->n);
  for (int64_t i = 0; i < n; i++) {
    uint64_t key;
    memcpy(&key, tk->data + 2 * i, sizeof key);
    uint32_t slot;
    if (dml__ps_owner(key, S) != s->me) {
      rc =
          dml_err_set(err, DML_EFORMAT, "ps restore %s: key %llu (#%lld) belongs to another server",
                      path, (unsigned long long)key, (long long)i);
      goto out;
    }
    if ((rc = lookup(s, key, 1, &slot, err)) != 0) goto out;
    if (slot != (uint32_t)i) {
      rc = dml_err_set(err, DML_EFORMAT, "ps restore %s: key %llu (#%lld) appears twice", path,
                       (unsigned long long)key, (long long)i);
      goto out;
    }
    s->vals[i] = tv->data[i];
  }
  if (s->opt) {
    int ns = dml_optim_num_state(s->opt);
    float *sd = dml_optim_state_data(s->opt);
    for (int i = 0; i < ns; i++) {
      char name[DML_TENSOR_NAME_MAX + 16];
      snprintf(name, sizeof name, "ps.optim.%s", dml_optim_state_tensor(s->opt, i)->name);
      const dml_st_tensor *ts = dml_safetensors_find(st, name);
      if (ts == NULL || ts->ndim != 1 || ts->shape[0] != n) {
        rc =
            dml_err_set(err, DML_EFORMAT, "ps restore %s: optimizer state %s missing or not (%lld)",
                        path, name, (long long)n);
        goto out;
      }
      memcpy(sd + (size_t)i * s->vcap, ts->data, (size_t)n * sizeof(float));
    }
    int64_t steps;
    dml_err pe;
    if (dml_parse_i64(step, 0, INT64_MAX, &steps, &pe) != 0) {
      rc = dml_err_set(err, DML_EFORMAT,
                       "ps restore %s: metadata ps.optim.step '%s' is not a step "
                       "count",
                       path, step);
      goto out;
    }
    dml_optim_set_step_count(s->opt, (uint64_t)steps);
  }
  if ((rc = restore_dense(s, st, path, err)) != 0) goto out;
  s->st.keys = s->nkeys;
  s->st.restored = 1;
  s->st.restored_clock = UINT64_MAX;
  for (int r = 0; r < s->n; r++) {
    worker_state *w = &s->w[r];
    w->ckpt_applied = w->applied;
    w->ckpt_clock = w->clock;
    if (w->is_worker && w->clock < s->st.restored_clock) s->st.restored_clock = w->clock;
  }
  if (s->st.restored_clock == UINT64_MAX) s->st.restored_clock = 0;
out:
  dml_safetensors_free(st);
  return rc;
}
