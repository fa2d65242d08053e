/* The training drivers: local (one process) and allreduce (data-parallel replicas). Both run the
 * same loop -- epochs, this rank's shard in a seeded order, micro-batches, optimizer steps,
 * evaluation, metrics, checkpoints; the allreduce strategy adds the gradient exchange: one
 * contiguous gradient buffer cut into buckets in reverse layer order, each bucket's all-reduce
 * started from the backward callback as soon as its layers are done (so it overlaps the rest of
 * backward), then waited for in the same fixed order before the optimizer step. The last bucket,
 * done when backward is, runs in the trainer's own thread: nothing is left to overlap it with. */
#include "distml/train.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/internal.h"
#include "train/trace.h"
#include "train/train_ps.h"

void dml_train_config_init(dml_train_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->strategy = DML_STRATEGY_LOCAL;
  dml_model_config_init(&cfg->model, DML_MODEL_MLP, 0, 0);
  cfg->model.num_hidden = 1;
  cfg->model.hidden[0] = 256;
  dml_optim_config_init(&cfg->optim, DML_OPT_MOMENTUM);
  cfg->epochs = 10;
  cfg->batch = 64;
  cfg->seed = 1;
  cfg->checkpoint_every = 1;
  cfg->bucket_mb = 1.0;
  cfg->accumulate = 1;
  cfg->wire_dtype = DML_F32;
}

/* ---------------------------------------------------------------------------------------------
 * Gradient buckets. */

typedef struct bucket {
  size_t offset, count; /* floats of the gradient buffer */
  int first_layer;      /* the lowest layer index in the bucket: its completion launches it */
  dml_coll_req *req;    /* in flight, or NULL */
} bucket;

typedef struct trainer {
  const dml_train_config *cfg;
  dml_comm *comm;
  int rank, world;
  dml_model *m;
  dml_optim *o;
  size_t n; /* parameters */
  bucket *buckets;
  int nbuckets;
  int next_bucket; /* next bucket to launch in this step */
  int layers_done; /* callbacks seen in this backward */
  int nlayers;
  int sync_now;     /* this backward ends a step whose gradients are all-reduced */
  float grad_scale; /* local rows / global rows of the step (the model applies it) */
  int failed;       /* a bucket's all-reduce failed in the backward callback: fail_err says how
                       (the model's own message for the callback's failure would hide it) */
  dml_err fail_err;
  dml__trace trace;
  uint64_t comm_ns, wait_ns;
  dml_err *err;
} trainer;

/* Reverse layer order, a small first bucket (closed once it holds cap/8) so that communication
 * starts early, then buckets of at most cap bytes (a layer larger than the cap is a bucket of its
 * own). A first bucket under cap/8 takes the next layers while they fit in the cap: a bucket of
 * a few KB buys no overlap (its all-reduce is all latency) but costs the backward a wake-up of the
 * communication thread on its core (MLP 784-256-10: fc2 alone was 10 KB; fc2+fc1 in one bucket,
 * 2 ranks, 256 rows each: median 182k -> 190k samples/s, 8 alternating pairs). The plan depends
 * only on the model and the cap, so it is the same on every rank. */
static int plan_buckets(trainer *t) {
  size_t cap = (size_t)(t->cfg->bucket_mb * 1048576.0 / sizeof(float));
  if (cap < 1) cap = 1;
  size_t first_cap = cap / 8 ? cap / 8 : 1;
  t->nlayers = dml_model_num_layers(t->m);
  t->buckets = dml__calloc((size_t)t->nlayers, sizeof(bucket));
  if (t->buckets == NULL) return DML_ENOMEM;
  t->nbuckets = 0;
  bucket *b = NULL;
  for (int l = t->nlayers - 1; l >= 0; l--) {
    size_t off, cnt;
    dml_model_layer_range(t->m, l, &off, &cnt);
    if (b == NULL || b->count + cnt > cap || (t->nbuckets == 1 && b->count >= first_cap)) {
      b = &t->buckets[t->nbuckets++];
      b->offset = off;
      b->count = 0;
    }
    b->offset = off;
    b->count += cnt;
    b->first_layer = l;
  }
  return 0;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
  const unsigned char *p = data;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* One hash of everything the ranks must agree on: model shape, bucket plan, wire type, batch. */
static uint64_t config_hash(const trainer *t) {
  const dml_train_config *c = t->cfg;
  const dml_model_config *mc = dml_model_get_config(t->m);
  uint64_t h = 0xcbf29ce484222325ull;
  int v[] = {(int)mc->kind, mc->in_dim,       mc->num_classes,   mc->num_hidden,
             c->batch,      c->accumulate,    c->sync_every,     (int)c->wire_dtype,
             c->epochs,     (int)c->strategy, (int)c->optim.kind};
  h = fnv1a(h, v, sizeof(v));
  h = fnv1a(h, mc->hidden, sizeof(int) * (size_t)mc->num_hidden);
  h = fnv1a(h, &t->n, sizeof(t->n));
  for (int i = 0; i < t->nbuckets; i++) {
    uint64_t b[2] = {t->buckets[i].offset, t->buckets[i].count};
    h = fnv1a(h, b, sizeof(b));
  }
  h = fnv1a(h, &c->seed, sizeof(c->seed));
  return h;
}

/* Every rank's value of h; a rank that differs from rank 0 is named. */
static int check_agreement(trainer *t, uint64_t h, const char *what) {
  uint64_t *all = dml__calloc((size_t)t->world, sizeof(uint64_t));
  if (all == NULL) return dml_err_set(t->err, DML_ENOMEM, "out of memory");
  int rc = dml_allgather(t->comm, &h, all, 1, DML_I64);
  if (rc != 0) {
    dml__free(all);
    return dml_err_set(t->err, rc, "checking %s across ranks: %s", what, dml_coll_errmsg(t->comm));
  }
  for (int r = 1; r < t->world; r++) {
    if (all[r] != all[0]) {
      dml__free(all);
      return dml_err_set(t->err, DML_EMISMATCH,
                         "%s of rank %d differs from rank 0 (hash %016llx vs %016llx): every rank "
                         "must run the same model, flags and bucket plan",
                         what, r, (unsigned long long)all[r], (unsigned long long)all[0]);
    }
  }
  dml__free(all);
  return 0;
}

/* A blocking all-reduce in the trainer's thread, in wire type w: the gradients' --grad-compress
 * type, or DML_F32 for the model average (weights rounded to 16 bits every few steps would erase
 * the small updates between averages). Counted as communication nothing hid, and drawn in the
 * trace as name. */
static int allreduce_here(trainer *t, float *buf, size_t count, dml_redop op, dml_dtype w,
                          const char *name) {
  uint64_t a0 = dml_now_ns();
  int rc = w == DML_F32 ? dml_allreduce(t->comm, buf, count, DML_F32, op)
                        : dml_allreduce_f32_compressed(t->comm, buf, count, w, op);
  uint64_t a1 = dml_now_ns();
  t->comm_ns += a1 - a0;
  t->wait_ns += a1 - a0;
  dml__trace_span(&t->trace, name, "allreduce", 0, a0, a1);
  return rc;
}

/* Starts bucket b's all-reduce on the communication thread; the step's last bucket instead runs
 * here, blocking: backward is over, so the thread would have nothing to hide it behind, and run
 * here it takes no hand-off between threads and may poll the socket (DISTML_COLL_SPIN_US) where
 * a thread woken on this rank's core would wait for it (one bucket, 2 ranks, 256 rows each:
 * median 190k -> 197k samples/s, 8 alternating pairs). The blocking all-reduce first waits for
 * the buckets still queued, so the order is the plan's. */
static int launch_bucket(trainer *t, bucket *b) {
  float *g = dml_model_grads(t->m) + b->offset; /* already scaled: dml_model_set_grad_scale */
  int i = (int)(b - t->buckets), last = i == t->nbuckets - 1, rc;
  dml_dtype w = t->cfg->wire_dtype;
  b->req = NULL;
  if (last) {
    char name[24];
    snprintf(name, sizeof(name), "allreduce b%d", i);
    rc = allreduce_here(t, g, b->count, DML_SUM, t->cfg->wire_dtype, name);
  } else {
    rc = w == DML_F32 ? dml_iallreduce(t->comm, g, b->count, DML_F32, DML_SUM, &b->req)
                      : dml_iallreduce_f32_compressed(t->comm, g, b->count, w, DML_SUM, &b->req);
  }
  if (rc != 0) {
    b->req = NULL;
    t->failed = 1;
    return dml_err_set(&t->fail_err, rc, "%s the all-reduce of gradient bucket %d: %s",
                       last ? "running" : "starting", i, dml_coll_errmsg(t->comm));
  }
  return 0;
}

static int on_grad_ready(void *ctx, size_t offset, size_t count) {
  (void)offset;
  (void)count;
  trainer *t = ctx;
  int layer = t->nlayers - 1 - t->layers_done++;
  if (!t->sync_now) return 0;
  while (t->next_bucket < t->nbuckets && t->buckets[t->next_bucket].first_layer == layer) {
    int rc = launch_bucket(t, &t->buckets[t->next_bucket++]);
    if (rc != 0) return rc;
  }
  return 0;
}

/* Waits for every launched bucket, in launch order. */
static int wait_buckets(trainer *t) {
  int rc = 0;
  for (int i = 0; i < t->next_bucket; i++) {
    bucket *b = &t->buckets[i];
    if (b->req == NULL) continue;
    uint64_t w0 = dml_now_ns();
    uint64_t ran0 = 0, ran1 = 0;
    int r = dml_coll_wait_timed(b->req, -1, &ran0, &ran1);
    uint64_t w1 = dml_now_ns();
    b->req = NULL;
    t->wait_ns += w1 - w0;
    /* The all-reduce's own time: not its wait in the queue, nor the time until we looked. */
    if (ran1 > ran0) t->comm_ns += ran1 - ran0;
    if (t->trace.enabled) {
      char name[24];
      snprintf(name, sizeof(name), "allreduce b%d", i);
      if (ran1 > ran0) dml__trace_span(&t->trace, name, "allreduce", 1, ran0, ran1);
      dml__trace_add(&t->trace, "wait", "wait", 0, w0);
    }
    if (r != 0 && rc == 0)
      rc = dml_err_set(t->err, r, "all-reduce of gradient bucket %d: %s", i,
                       dml_coll_errmsg(t->comm));
  }
  t->next_bucket = 0;
  return rc;
}

int dml__train_pipe_epoch(dml_pipe *pipe, int epoch, int *holding, dml_pipe_stats *st0,
                          const char *what, dml_err *err) {
  int rc = dml_pipe_start(pipe, (uint64_t)epoch);
  if (rc != 0) return dml_err_set(err, rc, "%sinput pipeline: %s", what, dml_pipe_errmsg(pipe));
  *holding = 0;
  dml_pipe_get_stats(pipe, st0);
  return 0;
}

void dml__train_pipe_epoch_end(dml_pipe *pipe, dml_pipe_batch *held, int *holding,
                               const dml_pipe_stats *st0, double epoch_s, dml_train_result *res) {
  if (*holding) dml_pipe_release(pipe, held);
  *holding = 0;
  dml_pipe_stats st1;
  dml_pipe_get_stats(pipe, &st1);
  res->input_stall_s = (double)(st1.consumer_wait_ns - st0->consumer_wait_ns) * 1e-9;
  res->input_stall_pct = epoch_s > 0 ? 100.0 * res->input_stall_s / epoch_s : 0;
}

int dml__train_next_batch(dml_pipe *pipe, dml_pipe_batch *held, int *holding, int dim, dml_batch *b,
                          const char *what, dml_err *err) {
  if (*holding) dml_pipe_release(pipe, held);
  *holding = 0;
  int rc = dml_pipe_next(pipe, held);
  if (rc != 0) return dml_err_set(err, rc, "%sinput pipeline: %s", what, dml_pipe_errmsg(pipe));
  *holding = 1;
  memset(b, 0, sizeof(*b));
  b->n = (int)held->count;
  b->dim = dim;
  if (held->indptr != NULL) {
    b->indptr = held->indptr;
    b->indices = held->indices;
    b->values = held->values;
    b->y = held->y;
  } else {
    b->x = held->data;
    b->y = (const int32_t *)((const float *)held->data + held->count * (size_t)dim);
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Input pipeline. Dense data: an element is one row (dim floats, then its int32 label), mapped
 * (copied and augmented) on the pool; a batch is the rows then the labels, ready to train on.
 * Sparse data: the pipeline's CSR mode copies the rows itself (no augmentation). Either way the
 * batches depend on (seed, epoch, rank) only, not on the number of loader threads; they are not
 * the batches of the path without the pipeline (its epoch order is another permutation). */

typedef struct pipe_ctx {
  const dml_dataset *ds;
  int64_t first_row;      /* the rank's shard begins here */
  const dml_augment *aug; /* NULL: none */
  int side;               /* image side (rows are side x side images) */
} pipe_ctx;

static int pipe_map(void *ctx, uint64_t epoch, uint64_t index, dml_rng *rng, void *out) {
  (void)epoch;
  const pipe_ctx *pc = ctx;
  int dim = pc->ds->dim;
  int64_t row = pc->first_row + (int64_t)index;
  float *x = out;
  memcpy(x, pc->ds->x + (size_t)row * (size_t)dim, sizeof(float) * (size_t)dim);
  memcpy(x + dim, &pc->ds->y[row], sizeof(int32_t));
  if (pc->aug != NULL)
    return dml_augment_image(pc->aug, rng, x, (size_t)pc->side, (size_t)pc->side, 1, NULL);
  return 0;
}

static int pipe_collate(void *ctx, void *const *elems, const uint64_t *idx, size_t count,
                        void *batch) {
  (void)idx;
  const pipe_ctx *pc = ctx;
  int dim = pc->ds->dim;
  float *x = batch;
  int32_t *y = (int32_t *)(x + count * (size_t)dim);
  for (size_t i = 0; i < count; i++) {
    const float *e = elems[i];
    memcpy(x + i * (size_t)dim, e, sizeof(float) * (size_t)dim);
    memcpy(&y[i], e + dim, sizeof(int32_t));
  }
  return 0;
}

struct dml__loader {
  dml_pool *pool;
  dml_pipe *pipe;
  pipe_ctx ctx; /* the pipeline's map reads it: lives as long as the pipeline */
};

int dml__loader_create(const dml_train_config *cfg, const dml_dataset *train, int64_t first_row,
                       int64_t nrows, int batch, uint64_t seed, int drop_last, dml__loader **out,
                       dml_err *err) {
  *out = NULL;
  if (train->x == NULL && cfg->augment.flags)
    return dml_err_set(err, DML_EINVAL,
                       "--augment shifts, flips and adds noise to images; %s is sparse (CSR) "
                       "data, which has no pixels: drop --augment",
                       train->name);
  int side = (int)lround(sqrt((double)train->dim));
  if (cfg->augment.flags && side * side != train->dim)
    return dml_err_set(err, DML_EINVAL,
                       "--augment treats rows as square images; %s has %d features", train->name,
                       train->dim);
  dml__loader *l = dml__calloc(1, sizeof(*l));
  if (l == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory");
  l->ctx = (pipe_ctx){train, first_row, cfg->augment.flags ? &cfg->augment : NULL, side};
  dml_pool_opts po = {0};
  po.nthreads = (unsigned)(cfg->loader_threads > 0 ? cfg->loader_threads : 1);
  po.name = "loader";
  int rc = dml_pool_create(&po, &l->pool, err);
  if (rc == 0) {
    dml_pipe_opts pp;
    dml_pipe_opts_default(&pp);
    pp.n = (uint64_t)nrows;
    pp.batch_size = (size_t)batch;
    if (train->x != NULL) {
      pp.elem_bytes = sizeof(float) * (size_t)train->dim + sizeof(int32_t);
      pp.batch_bytes = pp.elem_bytes * (size_t)batch;
      pp.map = pipe_map;
      pp.collate = pipe_collate;
      pp.ctx = &l->ctx;
    } else {
      pp.csr.indptr = train->indptr;
      pp.csr.indices = train->indices;
      pp.csr.values = train->values;
      pp.csr.y = train->y;
      pp.csr.first_row = (uint64_t)first_row;
    }
    pp.drop_last = drop_last;
    pp.shuffle_order = 1;
    pp.prefetch = (size_t)cfg->prefetch;
    pp.seed = seed;
    rc = dml_pipe_create(l->pool, &pp, &l->pipe, err);
  }
  if (rc != 0) {
    dml__loader_free(l);
    return rc;
  }
  *out = l;
  return 0;
}

dml_pipe *dml__loader_pipe(const dml__loader *l) {
  return l ? l->pipe : NULL;
}

void dml__loader_free(dml__loader *l) {
  if (l == NULL) return;
  dml_pipe_destroy(l->pipe);
  dml_pool_destroy(l->pool);
  dml__free(l);
}

/* ---------------------------------------------------------------------------------------------
 * Evaluation. */

int dml_evaluate(dml_model *m, const dml_dataset *ds, dml_comm *comm, double *accuracy,
                 double *loss, double *auc, dml_err *err) {
  int rank = comm ? dml_comm_rank(comm) : 0, world = comm ? dml_comm_size(comm) : 1;
  int64_t begin, end;
  int rc = dml_shard_range(ds->n, rank, world, &begin, &end);
  if (rc != 0) return dml_err_set(err, rc, "evaluation: bad shard");
  int binary = dml_model_get_config(m)->num_classes == 2;
  int64_t per_rank = (ds->n + world - 1) / world;
  float *scores = NULL;
  int32_t *labels = NULL;
  if (binary && auc != NULL) {
    scores = dml__calloc((size_t)per_rank * (size_t)world + 1, sizeof(float));
    labels = dml__calloc((size_t)per_rank * (size_t)world + 1, sizeof(int32_t));
    if (scores == NULL || labels == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "evaluation: out of memory");
      goto out;
    }
    for (int64_t i = 0; i < per_rank * world; i++) labels[i] = -1;
  }
  double sums[3] = {0, 0, 0}; /* loss, correct, rows */
  dml_batch_buf buf = {0};
  const int chunk = 4096;
  for (int64_t r = begin; r < end; r += chunk) {
    int cnt = (int)DML__MIN((int64_t)chunk, end - r);
    dml_batch b;
    if ((rc = dml_dataset_slice(ds, (int)r, cnt, &buf, &b, err)) != 0) break;
    double ls = 0;
    int correct = 0;
    float *sc = scores ? scores + (r - begin) : NULL;
    if ((rc = dml_model_evaluate(m, &b, &ls, &correct, sc, err)) != 0) break;
    if (labels) memcpy(labels + (r - begin), b.y, sizeof(int32_t) * (size_t)cnt);
    sums[0] += ls;
    sums[1] += correct;
    sums[2] += cnt;
  }
  dml_batch_buf_free(&buf);
  if (rc != 0) goto out;
  if (comm != NULL && world > 1) {
    if ((rc = dml_allreduce(comm, sums, 3, DML_F64, DML_SUM)) != 0) {
      dml_err_set(err, rc, "evaluation: reducing metrics: %s", dml_coll_errmsg(comm));
      goto out;
    }
    if (scores != NULL) {
      /* Gather every rank's (padded) scores and labels into place; labels -1 mark padding. */
      float *s_all = dml__calloc((size_t)per_rank * (size_t)world, sizeof(float));
      int32_t *l_all = dml__calloc((size_t)per_rank * (size_t)world, sizeof(int32_t));
      if (s_all == NULL || l_all == NULL) {
        dml__free(s_all);
        dml__free(l_all);
        rc = dml_err_set(err, DML_ENOMEM, "evaluation: out of memory");
        goto out;
      }
      rc = dml_allgather(comm, scores, s_all, (size_t)per_rank, DML_F32);
      if (rc == 0) rc = dml_allgather(comm, labels, l_all, (size_t)per_rank, DML_I32);
      dml__free(scores);
      dml__free(labels);
      scores = s_all;
      labels = l_all;
      if (rc != 0) {
        dml_err_set(err, rc, "evaluation: gathering scores: %s", dml_coll_errmsg(comm));
        goto out;
      }
    }
  }
  if (accuracy) *accuracy = sums[2] > 0 ? sums[1] / sums[2] : 0;
  if (loss) *loss = sums[2] > 0 ? sums[0] / sums[2] : 0;
  if (auc) {
    *auc = NAN;
    if (scores != NULL) {
      size_t k = 0, total = (size_t)per_rank * (size_t)world;
      for (size_t i = 0; i < total; i++) /* compact away the padding */
        if (labels[i] >= 0) {
          scores[k] = scores[i];
          labels[k++] = labels[i];
        }
      double a;
      if (dml_metric_auc(scores, labels, k, &a, NULL) == 0) *auc = a;
    }
  }
out:
  dml__free(scores);
  dml__free(labels);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Checkpoints: DIR/ckpt-epoch-NNNNNN.safetensors, the model plus the optimizer state, written
 * atomically by rank 0; every rank restores from the newest. */

static int checkpoint_path(char *out, size_t cap, const char *dir, int epoch) {
  return snprintf(out, cap, "%s/ckpt-epoch-%06d.safetensors", dir, epoch) < (int)cap ? 0
                                                                                     : DML_EINVAL;
}

static int latest_checkpoint(const char *dir, int *epoch_out, dml_err *err) {
  DIR *d = opendir(dir);
  if (d == NULL) {
    if (errno == ENOENT) {
      *epoch_out = 0;
      return 0;
    }
    return dml_err_set(err, DML_EIO, "%s: cannot open checkpoint directory: %s", dir,
                       strerror(errno));
  }
  int best = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    int ep;
    char tail[32];
    /* Only complete files: temporaries are "....safetensors.tmp.<pid>". */
    if (sscanf(e->d_name, "ckpt-epoch-%d.%31s", &ep, tail) == 2 &&
        strcmp(tail, "safetensors") == 0 && ep > best)
      best = ep;
  }
  closedir(d);
  *epoch_out = best;
  return 0;
}

static int save_checkpoint(trainer *t, int epoch, uint64_t step) {
  const char *dir = t->cfg->checkpoint_dir;
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    return dml_err_set(t->err, DML_EIO, "%s: cannot create checkpoint directory: %s", dir,
                       strerror(errno));
  char path[4096];
  if (checkpoint_path(path, sizeof(path), dir, epoch) != 0)
    return dml_err_set(t->err, DML_EINVAL, "%s: checkpoint path too long", dir);
  char ep[32], st[32];
  snprintf(ep, sizeof(ep), "%d", epoch);
  snprintf(st, sizeof(st), "%llu", (unsigned long long)step);
  dml_st_meta meta[] = {{"train.epoch", ep}, {"train.step", st}};
  return dml_checkpoint_save(path, t->m, t->o, meta, (int)DML__ARRAY_LEN(meta), t->err);
}

static int load_checkpoint(trainer *t, int epoch, uint64_t *step) {
  char path[4096];
  if (checkpoint_path(path, sizeof(path), t->cfg->checkpoint_dir, epoch) != 0)
    return dml_err_set(t->err, DML_EINVAL, "checkpoint path too long");
  dml_safetensors *st = NULL;
  int rc = dml_checkpoint_restore(path, t->m, t->o, &st, t->err);
  if (rc != 0) return rc;
  const char *s = dml_safetensors_meta(st, "train.step");
  int64_t v = 0;
  dml_err pe;
  if (s == NULL || dml_parse_i64(s, 0, INT64_MAX, &v, &pe) != 0)
    rc = dml_err_set(t->err, DML_EFORMAT, "%s: metadata train.step '%s' is not a step count", path,
                     s ? s : "(missing)");
  *step = (uint64_t)v;
  dml_safetensors_free(st);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * The loop. */

static uint64_t params_hash(trainer *t) {
  return fnv1a(0xcbf29ce484222325ull, dml_model_params(t->m), t->n * sizeof(float));
}

static void metrics_line(dml_jsonl *j, int epoch, uint64_t step, double train_loss,
                         double train_acc, double test_loss, double test_acc, double test_auc,
                         double sps, double epoch_s, const dml_train_result *r, uint64_t bytes) {
  dml_jsonl_begin(j);
  dml_jsonl_add_int(j, "epoch", epoch);
  dml_jsonl_add_int(j, "step", (int64_t)step);
  dml_jsonl_add_double(j, "loss", train_loss);
  dml_jsonl_add_double(j, "accuracy", train_acc);
  dml_jsonl_add_double(j, "test_loss", test_loss);
  dml_jsonl_add_double(j, "test_accuracy", test_acc);
  if (!isnan(test_auc)) dml_jsonl_add_double(j, "test_auc", test_auc);
  dml_jsonl_add_double(j, "samples_per_s", sps);
  dml_jsonl_add_double(j, "epoch_s", epoch_s);
  dml_jsonl_add_int(j, "bytes_sent", (int64_t)bytes);
  if (r->input_stall_s > 0 || r->input_stall_pct > 0) {
    dml_jsonl_add_double(j, "input_stall_s", r->input_stall_s);
    dml_jsonl_add_double(j, "input_stall_pct", r->input_stall_pct);
  }
  if (r->ring_bytes_per_step > 0) {
    dml_jsonl_add_double(j, "bytes_per_step", r->bytes_per_step);
    dml_jsonl_add_double(j, "ring_bytes_per_step", r->ring_bytes_per_step);
    dml_jsonl_add_double(j, "comm_ms_per_step", r->comm_s * 1e3);
    dml_jsonl_add_double(j, "wait_ms_per_step", r->wait_s * 1e3);
    dml_jsonl_add_double(j, "overlap_pct", r->overlap_pct);
  }
  dml_jsonl_end(j);
}

int dml_train_run(const dml_train_config *cfg_in, const dml_dataset *train, const dml_dataset *test,
                  dml_comm *comm, dml_train_result *res, dml_err *err) {
  double t_start = dml_now_s();
  dml_train_config cfgv = *cfg_in;
  const dml_train_config *cfg = &cfgv;
  memset(res, 0, sizeof(*res));
  res->test_auc = NAN;
  trainer t = {0};
  t.cfg = cfg;
  t.err = err;
  t.comm = comm;
  t.rank = comm ? dml_comm_rank(comm) : 0;
  t.world = comm ? dml_comm_size(comm) : 1;
  int dp = cfg->strategy == DML_STRATEGY_ALLREDUCE && t.world > 1;
  if (cfg->strategy == DML_STRATEGY_ALLREDUCE && comm == NULL)
    return dml_err_set(err, DML_EINVAL, "the allreduce strategy needs a communicator");
  if (cfg->epochs < 1 || cfg->batch < 1 || cfg->accumulate < 1 || cfg->checkpoint_every < 1)
    return dml_err_set(err, DML_EINVAL,
                       "epochs, batch, accumulate and checkpoint-every must be >= 1");
  if (cfg->batch < t.world)
    return dml_err_set(err, DML_EINVAL,
                       "--batch %d is smaller than the %d workers: every worker needs rows",
                       cfg->batch, t.world);
  if (cfgv.model.in_dim == 0) cfgv.model.in_dim = train->dim;
  if (cfgv.model.num_classes == 0) cfgv.model.num_classes = train->num_classes;
  if (cfgv.model.in_dim != train->dim)
    return dml_err_set(err, DML_EINVAL, "%s has %d features, the model expects %d", train->name,
                       train->dim, cfgv.model.in_dim);
  if (test != NULL && test->dim > cfgv.model.in_dim && test->x != NULL)
    return dml_err_set(err, DML_EINVAL, "test set %s has %d features, the training set %d",
                       test->name, test->dim, cfgv.model.in_dim);

  /* Rows of this rank per micro-batch: the global batch split as evenly as possible. */
  int local_batch = cfg->batch / t.world + (t.rank < cfg->batch % t.world);
  int max_local = (cfg->batch + t.world - 1) / t.world;
  cfgv.model.max_batch = max_local;
  cfgv.model.seed = cfg->seed;
  int64_t total_rows = cfg->shard_of_rows > 0 ? cfg->shard_of_rows : train->n;
  int64_t shard_begin, shard_end;
  int rc = dml_shard_range(total_rows, t.rank, t.world, &shard_begin, &shard_end);
  if (rc != 0) return dml_err_set(err, rc, "bad shard");
  if (cfg->shard_of_rows > 0) { /* the data set holds only this rank's rows */
    if (train->n != shard_end - shard_begin)
      return dml_err_set(err, DML_EINVAL,
                         "%s: %d rows kept, but rank %d's shard of %lld rows has %lld", train->name,
                         train->n, t.rank, (long long)total_rows,
                         (long long)(shard_end - shard_begin));
    shard_end -= shard_begin;
    shard_begin = 0;
  }
  int64_t min_shard = total_rows / t.world;
  int64_t steps_per_epoch = min_shard / max_local / cfg->accumulate;
  if (steps_per_epoch < 1)
    return dml_err_set(
        err, DML_EINVAL,
        "%s has %lld rows: too few for a global batch of %d x %d micro-batches on %d workers",
        train->name, (long long)total_rows, cfg->batch, cfg->accumulate, t.world);
  int64_t shard_n = shard_end - shard_begin;

  uint32_t *order = NULL, *rows = NULL;
  dml_batch_buf bbuf = {0};
  dml__loader *loader = NULL;
  dml_pipe *pipe = NULL;
  dml_pipe_batch held = {0};
  int holding = 0;
  dml_jsonl metrics = {0};
  int metrics_open = 0;
  dml__trace_init(&t.trace, cfg->trace_path != NULL);
  if ((rc = dml_model_create(&t.m, &cfgv.model, err)) != 0) goto out;
  t.n = dml_model_num_params(t.m);
  if ((rc = dml_optim_create(&t.o, &cfg->optim, t.n, err)) != 0) goto out;
  if ((rc = plan_buckets(&t)) != 0) {
    dml_err_set(err, rc, "out of memory");
    goto out;
  }
  order = dml__malloc(sizeof(uint32_t) * (size_t)(shard_n ? shard_n : 1));
  rows = dml__malloc(sizeof(uint32_t) * (size_t)max_local);
  if (order == NULL || rows == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "out of memory");
    goto out;
  }
  if (cfg->loader_threads > 0 || cfg->augment.flags) {
    if ((rc = dml__loader_create(cfg, train, shard_begin, shard_n, local_batch,
                                 cfg->seed * 1000003ull + (uint64_t)t.rank, 1, &loader, err)) != 0)
      goto out;
    pipe = dml__loader_pipe(loader);
  }
  if (dp) {
    if ((rc = check_agreement(&t, config_hash(&t), "the model shape, bucket plan and flags")) != 0)
      goto out;
    /* Rank 0's initial parameters for everybody. */
    if ((rc = dml_broadcast(comm, dml_model_params(t.m), t.n, DML_F32, 0)) != 0) {
      dml_err_set(err, rc, "broadcasting the initial parameters: %s", dml_coll_errmsg(comm));
      goto out;
    }
  }
  int start_epoch = 0;
  uint64_t step = 0;
  if (cfg->resume) {
    int last = 0;
    if ((rc = latest_checkpoint(cfg->checkpoint_dir, &last, err)) != 0) goto out;
    /* every rank must resume from the same checkpoint, to the same parameters: one that sees
     * another directory (another machine) is an error naming it, not a silent divergence */
    if (dp &&
        (rc = check_agreement(&t, (uint64_t)last, "the checkpoint epoch to resume from")) != 0)
      goto out;
    if (last > 0) {
      if ((rc = load_checkpoint(&t, last, &step)) != 0) goto out;
      /* the checkpoint holds the parameters as they were (FTRL's too: recomputing them from z and
       * n at the base rate would undo a decayed schedule's) */
      if (dp && (rc = check_agreement(&t, params_hash(&t), "the parameters resumed")) != 0)
        goto out;
      start_epoch = last;
      res->resumed_from_epoch = last;
      if (t.rank == 0)
        dml_log(DML_LOG_INFO, "resuming from %s/ckpt-epoch-%06d.safetensors (epoch %d, step %llu)",
                cfg->checkpoint_dir, last, last, (unsigned long long)step);
    } else if (t.rank == 0) {
      struct stat dst;
      int exists = stat(cfg->checkpoint_dir, &dst) == 0;
      dml_log(exists ? DML_LOG_INFO : DML_LOG_WARN, "no checkpoint in %s%s: starting from scratch",
              cfg->checkpoint_dir, exists ? "" : " (no such directory yet)");
    }
  }
  if (cfg->metrics_path != NULL && t.rank == 0) {
    if ((rc = dml_jsonl_open(&metrics, cfg->metrics_path, err)) != 0) goto out;
    metrics_open = 1;
  }
  const char *check_env = getenv("DISTML_CHECK_REPLICAS");
  int check_replicas = dp && check_env != NULL && strcmp(check_env, "1") == 0;
  int global_rows_per_step = cfg->batch * cfg->accumulate;
  int sync_grads = dp && cfg->sync_every == 0;
  t.grad_scale =
      sync_grads ? (float)local_batch / (float)global_rows_per_step : 1.0f / (float)cfg->accumulate;
  dml_model_set_accumulate(t.m, cfg->accumulate > 1);
  dml_model_set_grad_scale(t.m, t.grad_scale);
  uint64_t bytes0 = comm ? dml_comm_bytes_sent(comm) : 0;
  double train_s = 0;

  if (start_epoch >= cfg->epochs) { /* resumed with nothing left to train: the model as it is */
    res->epochs_done = start_epoch;
    if (t.rank == 0)
      dml_log(DML_LOG_INFO, "the checkpoint of epoch %d has all %d epochs: evaluating it only",
              start_epoch, cfg->epochs);
    if (test != NULL && (rc = dml_evaluate(t.m, test, dp ? comm : NULL, &res->test_accuracy,
                                           &res->test_loss, &res->test_auc, err)) != 0)
      goto out;
  }
  for (int epoch = start_epoch; epoch < cfg->epochs; epoch++) {
    double e0 = dml_now_s();
    uint64_t e_bytes0 = comm ? dml_comm_bytes_sent(comm) : 0;
    t.comm_ns = t.wait_ns = 0;
    dml_pipe_stats ps0 = {0};
    if (pipe != NULL) {
      if ((rc = dml__train_pipe_epoch(pipe, epoch, &holding, &ps0, "", err)) != 0) goto out;
    } else {
      dml_epoch_order(order, (size_t)shard_n, cfg->seed * 1000003ull + (uint64_t)t.rank,
                      (uint64_t)epoch);
    }
    dml_progress prog;
    char label[32];
    snprintf(label, sizeof(label), "epoch %d/%d", epoch + 1, cfg->epochs);
    int show = cfg->progress && t.rank == 0;
    if (show) dml_progress_begin(&prog, stderr, label, (uint64_t)steps_per_epoch);
    double loss_sum = 0, correct_sum = 0, rows_sum = 0;
    int64_t pos = 0;
    for (int64_t s = 0; s < steps_per_epoch; s++) {
      if (cfg->accumulate > 1) dml_model_zero_grads(t.m);
      for (int k = 0; k < cfg->accumulate; k++) {
        dml_batch b;
        uint64_t c0 = dml_now_ns();
        if (pipe != NULL) {
          if ((rc = dml__train_next_batch(pipe, &held, &holding, train->dim, &b, "", err)) != 0)
            goto out;
          dml__trace_add(&t.trace, "input wait", "io", 0, c0);
          c0 = dml_now_ns();
        } else {
          for (int i = 0; i < local_batch; i++) rows[i] = (uint32_t)shard_begin + order[pos + i];
          pos += max_local; /* every rank advances alike; the extra row of short ranks is unused */
          if ((rc = dml_dataset_gather(train, rows, local_batch, &bbuf, &b, err)) != 0) goto out;
        }
        float loss;
        int correct;
        t.sync_now = sync_grads && k == cfg->accumulate - 1;
        t.layers_done = 0;
        t.next_bucket = 0;
        rc = dml_model_forward_backward(t.m, &b, &loss, &correct, on_grad_ready, &t, err);
        dml__trace_add(&t.trace, "forward+backward", "compute", 0, c0);
        if (rc != 0) {
          if (t.failed) { /* name the bucket and the peer, not just the callback */
            (void)wait_buckets(&t);
            if (err) *err = t.fail_err;
          }
          goto out;
        }
        loss_sum += (double)loss * local_batch;
        correct_sum += correct;
        rows_sum += local_batch;
      }
      if (sync_grads && (rc = wait_buckets(&t)) != 0) goto out;
      /* A sparse model (logreg) lists the coordinates its gradient touched: without a dense
       * gradient all-reduce, scale and step only those (a dense step over 1M weights per batch
       * would cost more than the batch). */
      const uint32_t *touched = NULL;
      size_t ntouched = 0;
      if (!sync_grads) dml_model_touched(t.m, &touched, &ntouched);
      if (cfg->lr_cosine) {
        double total = (double)steps_per_epoch * cfg->epochs;
        dml_optim_set_lr(t.o,
                         (float)(cfg->optim.lr * 0.5 * (1.0 + cos(M_PI * (double)step / total))));
      }
      uint64_t o0 = dml_now_ns();
      if (touched != NULL) {
        dml_optim_begin_step(t.o);
        if ((rc = dml_optim_update_sparse(t.o, dml_model_params(t.m), dml_model_grads(t.m), touched,
                                          ntouched, 0)) != 0) {
          dml_err_set(err, rc, "sparse optimizer step: index out of range");
          goto out;
        }
      } else {
        dml_optim_step(t.o, dml_model_params(t.m), dml_model_grads(t.m));
      }
      dml__trace_add(&t.trace, "optimizer", "compute", 0, o0);
      if (sync_grads && dml_model_touched(t.m, &touched, &ntouched) == 0 && touched != NULL) {
        /* A sparse model re-zeroes only the coordinates it touched itself; after the all-reduce
         * the buffer also holds the other ranks' coordinates, which must not leak into the next
         * step. */
        memset(dml_model_grads(t.m), 0, t.n * sizeof(float));
      }
      step++;
      if (dp && cfg->sync_every > 0 &&
          ((s + 1) % cfg->sync_every == 0 || s + 1 == steps_per_epoch)) {
        rc = allreduce_here(&t, dml_model_params(t.m), t.n, DML_AVG, DML_F32, "model average");
        if (rc != 0) {
          dml_err_set(err, rc, "averaging the models: %s", dml_coll_errmsg(comm));
          goto out;
        }
      }
      /* with local SGD the replicas agree only right after an average */
      int averaged =
          cfg->sync_every == 0 || (s + 1) % cfg->sync_every == 0 || s + 1 == steps_per_epoch;
      if (check_replicas && averaged &&
          (rc = check_agreement(&t, params_hash(&t), "the parameters after a step")) != 0)
        goto out;
      if (show) {
        char st[96];
        double el = dml_now_s() - e0;
        snprintf(st, sizeof(st), "loss %.4f  %.0f samples/s", loss_sum / rows_sum,
                 el > 0 ? (double)(s + 1) * global_rows_per_step / el : 0.0);
        dml_progress_update(&prog, (uint64_t)s + 1, st);
      }
    }
    double epoch_train_s = dml_now_s() - e0;
    train_s += epoch_train_s;
    if (pipe != NULL) dml__train_pipe_epoch_end(pipe, &held, &holding, &ps0, epoch_train_s, res);
    /* Training loss and accuracy over all ranks. */
    double sums[3] = {loss_sum, correct_sum, rows_sum};
    if (dp && (rc = dml_allreduce(comm, sums, 3, DML_F64, DML_SUM)) != 0) {
      dml_err_set(err, rc, "reducing the training loss: %s", dml_coll_errmsg(comm));
      goto out;
    }
    res->train_loss = sums[0] / sums[2];
    res->train_accuracy = sums[1] / sums[2];
    double sps = (double)steps_per_epoch * global_rows_per_step / epoch_train_s;
    res->epochs_done = epoch + 1;
    if (dp) {
      uint64_t sent = dml_comm_bytes_sent(comm) - e_bytes0;
      res->bytes_per_step = (double)sent / (double)steps_per_epoch;
      res->ring_bytes_per_step =
          cfg->sync_every > 0 ? 2.0 * (t.world - 1) / t.world * (double)t.n * 4.0 / cfg->sync_every
                              : 2.0 * (t.world - 1) / t.world * (double)t.n *
                                    (cfg->wire_dtype == DML_F32 ? 4.0 : 2.0);
      res->comm_s = (double)t.comm_ns * 1e-9 / (double)steps_per_epoch;
      res->wait_s = (double)t.wait_ns * 1e-9 / (double)steps_per_epoch;
      res->overlap_pct =
          t.comm_ns > 0 ? 100.0 * (1.0 - (double)t.wait_ns / (double)t.comm_ns) : 0.0;
    }
    double tacc = NAN, tloss = NAN, tauc = NAN;
    if (test != NULL) {
      uint64_t v0 = dml_now_ns();
      if ((rc = dml_evaluate(t.m, test, dp ? comm : NULL, &tacc, &tloss, &tauc, err)) != 0)
        goto out;
      dml__trace_add(&t.trace, "evaluate", "eval", 0, v0);
      res->test_accuracy = tacc;
      res->test_loss = tloss;
      res->test_auc = tauc;
    }
    if (show) {
      char st[192];
      int k = snprintf(st, sizeof(st), "loss %.4f acc %.4f | test loss %.4f acc %.4f",
                       res->train_loss, res->train_accuracy, tloss, tacc);
      if (!isnan(tauc)) k += snprintf(st + k, sizeof(st) - (size_t)k, " auc %.4f", tauc);
      snprintf(st + k, sizeof(st) - (size_t)k, " | %.0f samples/s", sps);
      dml_progress_end(&prog, st);
    }
    if (metrics_open)
      metrics_line(&metrics, epoch + 1, step, res->train_loss, res->train_accuracy, tloss, tacc,
                   tauc, sps, epoch_train_s, res, comm ? dml_comm_bytes_sent(comm) - bytes0 : 0);
    if (cfg->checkpoint_dir != NULL && t.rank == 0 &&
        ((epoch + 1) % cfg->checkpoint_every == 0 || epoch + 1 == cfg->epochs)) {
      if ((rc = save_checkpoint(&t, epoch + 1, step)) != 0) goto out;
    }
    if (cfg->stop_after_epoch > 0 && epoch + 1 == cfg->stop_after_epoch &&
        epoch + 1 < cfg->epochs) {
      rc = dml_err_set(err, DML_ECANCELED, "stopped after epoch %d as asked", epoch + 1);
      goto out;
    }
  }
  res->steps = step;
  res->train_s = train_s;
  res->samples_per_s = train_s > 0 ? (double)(res->epochs_done - start_epoch) *
                                         (double)steps_per_epoch * global_rows_per_step / train_s
                                   : 0;
  if (cfg->save_path != NULL && t.rank == 0) {
    char st[32];
    snprintf(st, sizeof(st), "%llu", (unsigned long long)step);
    dml_st_meta meta[] = {{"distml.steps", st}};
    if ((rc = dml_model_save(t.m, cfg->save_path, NULL, 0, meta, 1, err)) != 0) goto out;
  }
  if (cfg->trace_path != NULL &&
      (rc = dml__trace_write(&t.trace, dp ? comm : NULL, cfg->trace_path, err)) != 0)
    goto out;
  res->wall_s = dml_now_s() - t_start;
out:
  if (t.buckets != NULL)
    for (int i = 0; i < t.nbuckets; i++)
      if (t.buckets[i].req != NULL) (void)dml_coll_wait(t.buckets[i].req, 1000);
  if (pipe != NULL && holding) dml_pipe_release(pipe, &held);
  dml__loader_free(loader);
  if (metrics_open) dml_jsonl_close(&metrics);
  dml_batch_buf_free(&bbuf);
  dml__free(order);
  dml__free(rows);
  dml__free(t.buckets);
  dml_optim_free(t.o);
  dml_model_free(t.m);
  dml__trace_free(&t.trace);
  return rc;
}
