/* The three models (softmax regression, MLP, sparse logistic regression): parameter layout,
 * seeded initialisation, forward/backward with a per-layer gradient-ready callback, evaluation.
 * Dense layers are sgemm calls on preallocated workspaces; nothing is allocated per step.
 * Losses live in loss.c, optimizers in optim.c, files in model_io.c. */
#include "core/internal.h"
#include "distml/ml.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_BATCH 256
#define ALIGN_BYTES 64

typedef struct layer {
  int in, out;       /* weight is (out, in) */
  size_t w_off;      /* float offset of the weight */
  size_t b_off;      /* float offset of the bias (w_off + in*out) */
  size_t off, count; /* the whole layer: weight then bias */
} layer;

/* A float buffer aligned to ALIGN_BYTES carved from one dml__malloc. */
typedef struct fbuf {
  void *raw;
  float *p;
} fbuf;

struct dml_model {
  dml_model_config cfg;
  size_t nparams;
  fbuf params, grads;
  int ntensors;
  dml_tensor_info *tensors;
  int nlayers;
  layer *layers;
  fbuf work;      /* all activation workspaces, one allocation */
  float **act;    /* act[l]: (max_batch, layers[l].out) layer outputs (post-ReLU for hidden) */
  float *dbuf[2]; /* (max_batch, max width) ping-pong buffers for backward */
  fbuf xdense;    /* (max_batch, in_dim): CSR rows densified for softmax/mlp; lazy */
  float *probs;   /* (max_batch, K) for predict/evaluate scores (inside work) */
  int accumulate;
  float grad_scale; /* folded into the loss gradient (1: the mean loss) */
  /* logreg */
  uint32_t *stamp; /* (in_dim+1): == epoch when the coordinate is in the touched set */
  uint32_t epoch;
  uint32_t *touched; /* (in_dim+1) */
  size_t ntouched;
  uint32_t *key_stamp, *keys; /* dml_model_batch_keys: (in_dim+1) each, allocated on first use */
  uint32_t key_epoch;
};

static int fbuf_alloc(fbuf *b, size_t nfloats, int zero) {
  int ovf = 0;
  size_t bytes = dml__mul_size(nfloats, sizeof(float), &ovf);
  if (ovf || bytes > SIZE_MAX - ALIGN_BYTES) return DML_EOVERFLOW;
  b->raw = zero ? dml__calloc(1, bytes + ALIGN_BYTES) : dml__malloc(bytes + ALIGN_BYTES);
  if (b->raw == NULL) return DML_ENOMEM;
  uintptr_t a = ((uintptr_t)b->raw + ALIGN_BYTES - 1) & ~(uintptr_t)(ALIGN_BYTES - 1);
  b->p = (float *)a;
  return 0;
}

static void fbuf_free(fbuf *b) {
  dml__free(b->raw);
  b->raw = NULL;
  b->p = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Configuration helpers. */

void dml_model_config_init(dml_model_config *cfg, dml_model_kind kind, int in_dim,
                           int num_classes) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->kind = kind;
  cfg->in_dim = in_dim;
  cfg->num_classes = kind == DML_MODEL_LOGREG ? 2 : num_classes;
  cfg->max_batch = DEFAULT_MAX_BATCH;
  cfg->seed = 1;
}

int dml_model_config_set_hidden(dml_model_config *cfg, const char *list, dml_err *err) {
  int n = 0;
  const char *p = list;
  if (list == NULL || *list == '\0') {
    cfg->num_hidden = 0;
    return 0;
  }
  while (*p) {
    const char *start = p;
    long v = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
      if (v < 100000000) v = v * 10 + (*p - '0');
      p++;
      digits++;
    }
    if (digits == 0 || (*p != ',' && *p != '\0'))
      return dml_err_set(err, DML_EINVAL,
                         "hidden sizes '%s': bad token at '%s' (want e.g. 256,128)", list, start);
    if (v < 1 || v > 1000000)
      return dml_err_set(err, DML_ERANGE, "hidden sizes '%s': width %ld not in 1..1000000", list,
                         v);
    if (n == DML_MODEL_MAX_HIDDEN)
      return dml_err_set(err, DML_ERANGE, "hidden sizes '%s': more than %d layers", list,
                         DML_MODEL_MAX_HIDDEN);
    cfg->hidden[n++] = (int)v;
    if (*p == ',') {
      p++;
      if (*p == '\0')
        return dml_err_set(err, DML_EINVAL, "hidden sizes '%s': trailing comma", list);
    }
  }
  cfg->num_hidden = n;
  return 0;
}

const char *dml_model_kind_name(dml_model_kind kind) {
  switch (kind) {
    case DML_MODEL_SOFTMAX: return "softmax";
    case DML_MODEL_MLP: return "mlp";
    case DML_MODEL_LOGREG: return "logreg";
  }
  return NULL;
}

int dml_model_kind_parse(const char *name, dml_model_kind *out, dml_err *err) {
  static const dml_model_kind kinds[] = {DML_MODEL_SOFTMAX, DML_MODEL_MLP, DML_MODEL_LOGREG};
  for (size_t i = 0; i < DML__ARRAY_LEN(kinds); i++) {
    if (name != NULL && strcmp(name, dml_model_kind_name(kinds[i])) == 0) {
      *out = kinds[i];
      return 0;
    }
  }
  return dml_err_set(err, DML_EINVAL, "unknown model '%s' (softmax, mlp, logreg)",
                     name ? name : "(null)");
}

static int check_config(const dml_model_config *cfg, dml_err *err) {
  if (dml_model_kind_name(cfg->kind) == NULL)
    return dml_err_set(err, DML_EINVAL, "model config: unknown kind %d", (int)cfg->kind);
  if (cfg->in_dim < 1)
    return dml_err_set(err, DML_EINVAL, "model config: in_dim %d must be >= 1", cfg->in_dim);
  if (cfg->kind == DML_MODEL_LOGREG) {
    if (cfg->num_classes != 2 && cfg->num_classes != 0)
      return dml_err_set(err, DML_EINVAL, "model config: logreg is binary (num_classes %d, want 2)",
                         cfg->num_classes);
    if (cfg->in_dim == INT32_MAX)
      return dml_err_set(err, DML_ERANGE, "model config: in_dim %d too large", cfg->in_dim);
  } else if (cfg->num_classes < 2) {
    return dml_err_set(err, DML_EINVAL, "model config: num_classes %d must be >= 2",
                       cfg->num_classes);
  }
  if (cfg->kind == DML_MODEL_MLP) {
    if (cfg->num_hidden < 1 || cfg->num_hidden > DML_MODEL_MAX_HIDDEN)
      return dml_err_set(err, DML_EINVAL, "model config: mlp needs 1..%d hidden layers, got %d",
                         DML_MODEL_MAX_HIDDEN, cfg->num_hidden);
    for (int i = 0; i < cfg->num_hidden; i++)
      if (cfg->hidden[i] < 1)
        return dml_err_set(err, DML_EINVAL, "model config: hidden layer %d width %d must be >= 1",
                           i + 1, cfg->hidden[i]);
  } else if (cfg->num_hidden != 0) {
    return dml_err_set(err, DML_EINVAL, "model config: %s has no hidden layers (num_hidden %d)",
                       dml_model_kind_name(cfg->kind), cfg->num_hidden);
  }
  if (cfg->max_batch < 0 || cfg->max_batch > (1 << 24))
    return dml_err_set(err, DML_EINVAL, "model config: max_batch %d not in 1..%d", cfg->max_batch,
                       1 << 24);
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Creation. */

static void set_tensor(dml_tensor_info *t, const char *name, int ndim, int64_t d0, int64_t d1,
                       size_t offset) {
  memset(t, 0, sizeof(*t));
  snprintf(t->name, sizeof(t->name), "%s", name);
  t->ndim = ndim;
  t->shape[0] = d0;
  t->shape[1] = ndim > 1 ? d1 : 0;
  t->offset = offset;
  t->count = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
}

static void touched_reset(dml_model *m) {
  if (++m->epoch == 0) {
    memset(m->stamp, 0, ((size_t)m->cfg.in_dim + 1) * sizeof(uint32_t));
    m->epoch = 1;
  }
  m->ntouched = 0;
}

void dml_model_init_params(dml_model *m, uint64_t seed) {
  dml_rng rng;
  dml_rng_seed(&rng, seed);
  memset(m->params.p, 0, m->nparams * sizeof(float));
  if (m->cfg.kind != DML_MODEL_LOGREG) {
    for (int l = 0; l < m->nlayers; l++) {
      const layer *L = &m->layers[l];
      int last = l == m->nlayers - 1;
      /* He-uniform for ReLU layers, Xavier-uniform for the softmax layer. */
      double limit = last ? sqrt(6.0 / (L->in + L->out)) : sqrt(6.0 / L->in);
      float *w = m->params.p + L->w_off;
      size_t cnt = (size_t)L->in * (size_t)L->out;
      for (size_t i = 0; i < cnt; i++) w[i] = (float)((2.0 * dml_rng_uniform(&rng) - 1.0) * limit);
    }
  }
  memset(m->grads.p, 0, m->nparams * sizeof(float));
  if (m->cfg.kind == DML_MODEL_LOGREG) touched_reset(m);
}

int dml_model_create(dml_model **out, const dml_model_config *cfg_in, dml_err *err) {
  *out = NULL;
  int rc = check_config(cfg_in, err);
  if (rc) return rc;
  dml_model *m = dml__calloc(1, sizeof(*m));
  if (m == NULL) return dml_err_set(err, DML_ENOMEM, "model: out of memory");
  m->cfg = *cfg_in;
  m->grad_scale = 1.0f;
  dml_model_config *cfg = &m->cfg;
  if (cfg->max_batch == 0) cfg->max_batch = DEFAULT_MAX_BATCH;
  if (cfg->kind == DML_MODEL_LOGREG) cfg->num_classes = 2;
  for (int i = cfg->num_hidden; i < DML_MODEL_MAX_HIDDEN; i++) cfg->hidden[i] = 0;

  m->nlayers = cfg->kind == DML_MODEL_MLP ? cfg->num_hidden + 1 : 1;
  m->layers = dml__calloc((size_t)m->nlayers, sizeof(layer));
  m->ntensors = 2 * m->nlayers;
  m->tensors = dml__calloc((size_t)m->ntensors, sizeof(dml_tensor_info));
  m->act = dml__calloc((size_t)m->nlayers, sizeof(float *));
  if (m->layers == NULL || m->tensors == NULL || m->act == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "model: out of memory");
    goto fail;
  }

  /* Layout: forward order, weight then bias of each layer, no padding. */
  size_t off = 0, maxw = 0;
  uint64_t total = 0;
  for (int l = 0; l < m->nlayers; l++) {
    layer *L = &m->layers[l];
    if (cfg->kind == DML_MODEL_LOGREG) {
      L->in = cfg->in_dim;
      L->out = 1;
    } else {
      L->in = l == 0 ? cfg->in_dim : cfg->hidden[l - 1];
      L->out = l == m->nlayers - 1 ? cfg->num_classes : cfg->hidden[l];
    }
    total += (uint64_t)L->in * (uint64_t)L->out + (uint64_t)L->out;
    if (total > ((uint64_t)1 << 34)) {
      rc = dml_err_set(err, DML_EOVERFLOW, "model: more than 2^34 parameters");
      goto fail;
    }
    L->off = off;
    L->w_off = off;
    L->b_off = off + (size_t)L->in * (size_t)L->out;
    L->count = (size_t)L->in * (size_t)L->out + (size_t)L->out;
    off += L->count;
    if ((size_t)L->out > maxw) maxw = (size_t)L->out;
    if (l > 0 && (size_t)L->in > maxw) maxw = (size_t)L->in;
    char wname[DML_TENSOR_NAME_MAX], bname[DML_TENSOR_NAME_MAX];
    if (cfg->kind == DML_MODEL_LOGREG) {
      set_tensor(&m->tensors[0], "weight", 1, L->in, 0, L->w_off);
      set_tensor(&m->tensors[1], "bias", 1, 1, 0, L->b_off);
    } else {
      if (cfg->kind == DML_MODEL_SOFTMAX) {
        snprintf(wname, sizeof(wname), "fc.weight");
        snprintf(bname, sizeof(bname), "fc.bias");
      } else {
        snprintf(wname, sizeof(wname), "fc%d.weight", l + 1);
        snprintf(bname, sizeof(bname), "fc%d.bias", l + 1);
      }
      set_tensor(&m->tensors[(size_t)2 * (size_t)l], wname, 2, L->out, L->in, L->w_off);
      set_tensor(&m->tensors[(size_t)2 * (size_t)l + 1], bname, 1, L->out, 0, L->b_off);
    }
  }
  m->nparams = off;
  if ((rc = fbuf_alloc(&m->params, m->nparams, 0)) != 0 ||
      (rc = fbuf_alloc(&m->grads, m->nparams, 1)) != 0) {
    rc = dml_err_set(err, rc, "model: cannot allocate %zu parameters", m->nparams);
    goto fail;
  }

  /* Workspaces: one allocation holding act[l] for every layer, two backward buffers, probs. */
  size_t mb = (size_t)cfg->max_batch, wsz = 0;
  for (int l = 0; l < m->nlayers; l++) wsz += mb * (size_t)m->layers[l].out;
  wsz += 2 * mb * maxw + mb * (size_t)(cfg->num_classes);
  if ((rc = fbuf_alloc(&m->work, wsz, 1)) != 0) {
    rc = dml_err_set(err, rc, "model: cannot allocate workspaces for max_batch %d", cfg->max_batch);
    goto fail;
  }
  float *w = m->work.p;
  for (int l = 0; l < m->nlayers; l++) {
    m->act[l] = w;
    w += mb * (size_t)m->layers[l].out;
  }
  m->dbuf[0] = w;
  w += mb * maxw;
  m->dbuf[1] = w;
  w += mb * maxw;
  m->probs = w;

  if (cfg->kind == DML_MODEL_LOGREG) {
    m->stamp = dml__calloc((size_t)cfg->in_dim + 1, sizeof(uint32_t));
    m->touched = dml__malloc(((size_t)cfg->in_dim + 1) * sizeof(uint32_t));
    if (m->stamp == NULL || m->touched == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "model: out of memory for %d features", cfg->in_dim);
      goto fail;
    }
    m->epoch = 1;
  }
  dml_model_init_params(m, cfg->seed);
  *out = m;
  return 0;
fail:
  dml_model_free(m);
  return rc;
}

void dml_model_free(dml_model *m) {
  if (m == NULL) return;
  fbuf_free(&m->params);
  fbuf_free(&m->grads);
  fbuf_free(&m->work);
  fbuf_free(&m->xdense);
  dml__free(m->layers);
  dml__free(m->tensors);
  dml__free(m->act);
  dml__free(m->stamp);
  dml__free(m->touched);
  dml__free(m->key_stamp);
  dml__free(m->keys);
  dml__free(m);
}

/* ---------------------------------------------------------------------------------------------
 * Accessors. */

const dml_model_config *dml_model_get_config(const dml_model *m) {
  return &m->cfg;
}
uint64_t dml_model_config_params(const dml_model_config *cfg) {
  if (cfg->kind == DML_MODEL_LOGREG) return (uint64_t)cfg->in_dim + 1;
  int nl = cfg->kind == DML_MODEL_MLP ? cfg->num_hidden + 1 : 1;
  uint64_t total = 0, in = (uint64_t)cfg->in_dim;
  for (int l = 0; l < nl; l++) {
    uint64_t out = (uint64_t)(l == nl - 1 ? cfg->num_classes : cfg->hidden[l]);
    total += in * out + out;
    in = out;
  }
  return total;
}

size_t dml_model_num_params(const dml_model *m) {
  return m->nparams;
}
float *dml_model_params(dml_model *m) {
  return m->params.p;
}
float *dml_model_grads(dml_model *m) {
  return m->grads.p;
}
int dml_model_num_tensors(const dml_model *m) {
  return m->ntensors;
}

const dml_tensor_info *dml_model_tensor(const dml_model *m, int i) {
  return i >= 0 && i < m->ntensors ? &m->tensors[i] : NULL;
}

const dml_tensor_info *dml_model_find_tensor(const dml_model *m, const char *name) {
  for (int i = 0; i < m->ntensors; i++)
    if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
  return NULL;
}

int dml_model_num_layers(const dml_model *m) {
  return m->nlayers;
}

int dml_model_layer_range(const dml_model *m, int l, size_t *offset, size_t *count) {
  if (l < 0 || l >= m->nlayers) return DML_ERANGE;
  *offset = m->layers[l].off;
  *count = m->layers[l].count;
  return 0;
}

void dml_model_set_accumulate(dml_model *m, int on) {
  m->accumulate = on != 0;
}

void dml_model_set_grad_scale(dml_model *m, float scale) {
  m->grad_scale = scale;
}

void dml_model_zero_grads(dml_model *m) {
  if (m->cfg.kind != DML_MODEL_LOGREG) {
    memset(m->grads.p, 0, m->nparams * sizeof(float));
    return;
  }
  if (m->ntouched == m->nparams) {
    memset(m->grads.p, 0, m->nparams * sizeof(float));
  } else {
    for (size_t i = 0; i < m->ntouched; i++) m->grads.p[m->touched[i]] = 0.0f;
  }
  touched_reset(m);
}

int dml_model_touched(const dml_model *m, const uint32_t **indices, size_t *count) {
  if (m->cfg.kind != DML_MODEL_LOGREG) {
    *indices = NULL;
    *count = 0;
    return 0;
  }
  *indices = m->touched;
  *count = m->ntouched;
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Batch validation: everything is checked before any gradient is written. */

static int check_batch(const dml_model *m, const dml_batch *b, int need_labels, dml_err *err) {
  if (b == NULL) return dml_err_set(err, DML_EINVAL, "batch is NULL");
  if (b->n < 0) return dml_err_set(err, DML_EINVAL, "batch: n %d < 0", b->n);
  if (b->n == 0) return 0;
  int in_dim = m->cfg.in_dim;
  if (b->x != NULL) {
    if (b->dim != in_dim)
      return dml_err_set(err, DML_EINVAL, "batch: %d features per row, model expects %d", b->dim,
                         in_dim);
  } else {
    /* rows with no entries at all (valid LIBSVM) need no index or value arrays */
    if (b->indptr == NULL || ((b->indices == NULL || b->values == NULL) && b->indptr[b->n] > 0))
      return dml_err_set(err, DML_EINVAL, "batch: neither dense rows nor CSR arrays given");
    if (b->indptr[0] != 0) return dml_err_set(err, DML_EINVAL, "batch: CSR indptr[0] != 0");
    for (int i = 0; i < b->n; i++) {
      uint64_t s = b->indptr[i], e = b->indptr[i + 1];
      if (e < s) return dml_err_set(err, DML_EINVAL, "batch row %d: CSR indptr decreases", i);
      for (uint64_t k = s; k < e; k++) {
        if (b->indices[k] >= (uint32_t)in_dim)
          return dml_err_set(err, DML_EINVAL,
                             "batch row %d: feature index %u beyond the model's %d features", i,
                             b->indices[k], in_dim);
      }
    }
  }
  if (need_labels) {
    if (b->y == NULL) return dml_err_set(err, DML_EINVAL, "batch: no labels");
    int k = m->cfg.num_classes;
    for (int i = 0; i < b->n; i++)
      if (b->y[i] < 0 || b->y[i] >= k)
        return dml_err_set(err, DML_EINVAL, "batch row %d: label %d outside 0..%d", i, b->y[i],
                           k - 1);
  }
  return 0;
}

/* Dense rows [r0, r0+n) of the batch: the caller's x, or CSR densified into xdense. */
static int dense_rows(dml_model *m, const dml_batch *b, int r0, int n, const float **rows,
                      dml_err *err) {
  size_t in = (size_t)m->cfg.in_dim;
  if (b->x != NULL) {
    *rows = b->x + (size_t)r0 * in;
    return 0;
  }
  if (m->xdense.p == NULL && fbuf_alloc(&m->xdense, (size_t)m->cfg.max_batch * in, 0) != 0)
    return dml_err_set(err, DML_ENOMEM, "model: cannot allocate a %d x %d workspace for CSR input",
                       m->cfg.max_batch, m->cfg.in_dim);
  float *x = m->xdense.p;
  memset(x, 0, (size_t)n * in * sizeof(float));
  for (int i = 0; i < n; i++) {
    float *row = x + (size_t)i * in;
    for (uint64_t k = b->indptr[r0 + i]; k < b->indptr[r0 + i + 1]; k++)
      row[b->indices[k]] = b->values[k];
  }
  *rows = x;
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Dense models (softmax, mlp). */

/* Forward n rows; logits end in act[nlayers-1]. */
static void dense_forward(dml_model *m, const float *x, int n) {
  const float *in = x;
  for (int l = 0; l < m->nlayers; l++) {
    const layer *L = &m->layers[l];
    const float *W = m->params.p + L->w_off, *bias = m->params.p + L->b_off;
    float *out = m->act[l];
    /* out (n, out) = in (n, in) * W^T: W is (out, in) row-major, so Trans avoids a copy. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, L->out, L->in, 1.0f, in, L->in, W,
                L->in, 0.0f, out, L->out);
    int relu = l < m->nlayers - 1;
    for (int i = 0; i < n; i++) {
      float *r = out + (size_t)i * (size_t)L->out;
      if (relu) {
        for (int j = 0; j < L->out; j++) {
          float v = r[j] + bias[j];
          r[j] = v > 0.0f ? v : 0.0f;
        }
      } else {
        for (int j = 0; j < L->out; j++) r[j] += bias[j];
      }
    }
    in = out;
  }
}

static int dense_forward_backward(dml_model *m, const dml_batch *b, float *loss, int *correct,
                                  dml_grad_ready_fn cb, void *ctx, dml_err *err) {
  int n = b->n, K = m->cfg.num_classes;
  const float *x = NULL;
  int rc = dense_rows(m, b, 0, n, &x, err);
  if (rc) return rc;
  dense_forward(m, x, n);
  double loss_sum = 0;
  int corr = 0;
  float *d = m->act[m->nlayers - 1]; /* dlogits overwrite the logits in place */
  dml_softmax_xent(d, b->y, n, K, m->grad_scale / (float)n, d, &loss_sum, &corr);
  float beta = m->accumulate ? 1.0f : 0.0f;
  int cur = 0;
  for (int l = m->nlayers - 1; l >= 0; l--) {
    const layer *L = &m->layers[l];
    const float *inp = l == 0 ? x : m->act[l - 1];
    float *dW = m->grads.p + L->w_off, *db = m->grads.p + L->b_off;
    /* dW (out, in) = d^T (out, n) * inp (n, in) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L->out, L->in, n, 1.0f, d, L->out, inp,
                L->in, beta, dW, L->in);
    if (!m->accumulate) memset(db, 0, (size_t)L->out * sizeof(float));
    for (int i = 0; i < n; i++) {
      const float *r = d + (size_t)i * (size_t)L->out;
      for (int j = 0; j < L->out; j++) db[j] += r[j];
    }
    if (cb != NULL && (rc = cb(ctx, L->off, L->count)) != 0)
      return dml_err_set(err, rc, "gradient callback for layer %d failed: %s", l + 1,
                         dml_strerror(rc));
    if (l == 0) break;
    /* dprev (n, in) = d (n, out) * W (out, in), then through the ReLU of layer l-1. */
    float *dprev = m->dbuf[cur];
    cur ^= 1;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, L->in, L->out, 1.0f, d, L->out,
                m->params.p + L->w_off, L->in, 0.0f, dprev, L->in);
    const float *h = m->act[l - 1];
    size_t cnt = (size_t)n * (size_t)L->in;
    for (size_t i = 0; i < cnt; i++)
      if (h[i] <= 0.0f) dprev[i] = 0.0f;
    d = dprev;
  }
  if (loss) *loss = (float)(loss_sum / n);
  if (correct) *correct = corr;
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Logistic regression. */

/* Logits z[0..n) of rows [r0, r0+n). */
static void logreg_logits(const dml_model *m, const dml_batch *b, int r0, int n, float *z) {
  const float *w = m->params.p;
  float bias = m->params.p[m->cfg.in_dim];
  if (b->x != NULL) {
    int in = m->cfg.in_dim;
    for (int i = 0; i < n; i++) z[i] = bias;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, in, 1.0f, b->x + (size_t)r0 * (size_t)in, in, w, 1,
                1.0f, z, 1);
    return;
  }
  for (int i = 0; i < n; i++) {
    float s = bias;
    for (uint64_t k = b->indptr[r0 + i]; k < b->indptr[r0 + i + 1]; k++)
      s += w[b->indices[k]] * b->values[k];
    z[i] = s;
  }
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

static void touch(dml_model *m, uint32_t j) {
  if (m->stamp[j] != m->epoch) {
    m->stamp[j] = m->epoch;
    m->touched[m->ntouched++] = j;
  }
}

static int logreg_forward_backward(dml_model *m, const dml_batch *b, float *loss, int *correct,
                                   dml_grad_ready_fn cb, void *ctx, dml_err *err) {
  int n = b->n, in = m->cfg.in_dim;
  float *z = m->act[0], *g = m->grads.p;
  if (!m->accumulate) dml_model_zero_grads(m); /* sparse cost: only the last touched set */
  logreg_logits(m, b, 0, n, z);
  double loss_sum = 0;
  int corr = 0;
  dml_logistic_loss(z, b->y, n, m->grad_scale / (float)n, z, &loss_sum, &corr);
  size_t before = m->ntouched;
  if (b->x != NULL) {
    cblas_sgemv(CblasRowMajor, CblasTrans, n, in, 1.0f, b->x, in, z, 1, 1.0f, g, 1);
    if (m->ntouched != m->nparams) {
      for (uint32_t j = 0; j <= (uint32_t)in; j++) {
        m->stamp[j] = m->epoch;
        m->touched[j] = j;
      }
      m->ntouched = m->nparams;
      before = m->ntouched; /* already in order */
    }
  } else {
    for (int i = 0; i < n; i++) {
      float dz = z[i];
      for (uint64_t k = b->indptr[i]; k < b->indptr[i + 1]; k++) {
        uint32_t j = b->indices[k];
        touch(m, j);
        g[j] += dz * b->values[k];
      }
    }
  }
  float db = 0.0f;
  for (int i = 0; i < n; i++) db += z[i];
  g[in] += db;
  touch(m, (uint32_t)in);
  if (m->ntouched > before) {
    /* Keep the set sorted (a full sort; the set is only the batch's distinct features). */
    qsort(m->touched, m->ntouched, sizeof(uint32_t), cmp_u32);
  }
  if (cb != NULL) {
    int rc = cb(ctx, 0, m->nparams);
    if (rc) return dml_err_set(err, rc, "gradient callback failed: %s", dml_strerror(rc));
  }
  if (loss) *loss = (float)(loss_sum / n);
  if (correct) *correct = corr;
  return 0;
}

int dml_model_forward_backward(dml_model *m, const dml_batch *b, float *loss, int *correct,
                               dml_grad_ready_fn cb, void *ctx, dml_err *err) {
  int rc = check_batch(m, b, 1, err);
  if (rc) return rc;
  if (b->n == 0) return dml_err_set(err, DML_EINVAL, "batch: no rows (the mean loss is undefined)");
  if (b->n > m->cfg.max_batch)
    return dml_err_set(err, DML_EINVAL, "batch: %d rows exceed the model's max_batch %d", b->n,
                       m->cfg.max_batch);
  if (m->cfg.kind == DML_MODEL_LOGREG)
    return logreg_forward_backward(m, b, loss, correct, cb, ctx, err);
  return dense_forward_backward(m, b, loss, correct, cb, ctx, err);
}

int dml_model_batch_keys(dml_model *m, const dml_batch *b, const uint32_t **indices, size_t *count,
                         dml_err *err) {
  *indices = NULL;
  *count = 0;
  if (m->cfg.kind != DML_MODEL_LOGREG)
    return dml_err_set(err, DML_EUNSUPPORTED, "batch keys: only for the logreg model");
  int rc = check_batch(m, b, 0, err);
  if (rc) return rc;
  size_t nk = (size_t)m->cfg.in_dim + 1;
  if (m->key_stamp == NULL) {
    m->key_stamp = dml__calloc(nk, sizeof(uint32_t));
    m->keys = dml__malloc(nk * sizeof(uint32_t));
    if (m->key_stamp == NULL || m->keys == NULL) {
      dml__free(m->key_stamp);
      dml__free(m->keys);
      m->key_stamp = m->keys = NULL;
      return dml_err_set(err, DML_ENOMEM, "batch keys: out of memory for %d features",
                         m->cfg.in_dim);
    }
  }
  if (++m->key_epoch == 0) {
    memset(m->key_stamp, 0, nk * sizeof(uint32_t));
    m->key_epoch = 1;
  }
  size_t n = 0;
  if (b->x != NULL || b->n == 0) {
    for (uint32_t j = 0; j < (uint32_t)nk && b->n > 0; j++) m->keys[n++] = j;
  } else {
    for (uint64_t k = 0; k < b->indptr[b->n]; k++) {
      uint32_t j = b->indices[k];
      if (m->key_stamp[j] != m->key_epoch) {
        m->key_stamp[j] = m->key_epoch;
        m->keys[n++] = j;
      }
    }
    qsort(m->keys, n, sizeof(uint32_t), cmp_u32);
    m->keys[n++] = (uint32_t)m->cfg.in_dim;
  }
  *indices = m->keys;
  *count = n;
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Evaluation. */

/* Forward in chunks; for each chunk either accumulate loss/correct (with labels) and write
 * P(class 1) to scores, or write the (n, K) probabilities. */
static int eval_chunks(dml_model *m, const dml_batch *b, double *loss_sum, int *correct,
                       float *scores, float *probs_out, dml_err *err) {
  int K = m->cfg.num_classes, mb = m->cfg.max_batch;
  double ls = 0;
  int corr = 0;
  for (int r0 = 0; r0 < b->n; r0 += mb) {
    int n = DML__MIN(mb, b->n - r0);
    const int32_t *y = b->y ? b->y + r0 : NULL;
    if (m->cfg.kind == DML_MODEL_LOGREG) {
      float *z = m->act[0];
      logreg_logits(m, b, r0, n, z);
      if (y) dml_logistic_loss(z, y, n, 1.0f, NULL, &ls, &corr);
      for (int i = 0; i < n; i++) {
        float p = z[i] >= 0 ? 1.0f / (1.0f + expf(-z[i])) : expf(z[i]) / (1.0f + expf(z[i]));
        if (scores) scores[r0 + i] = p;
        if (probs_out) {
          probs_out[2 * (size_t)(r0 + i)] = 1.0f - p;
          probs_out[2 * (size_t)(r0 + i) + 1] = p;
        }
      }
      continue;
    }
    const float *x = NULL;
    int rc = dense_rows(m, b, r0, n, &x, err);
    if (rc) return rc;
    dense_forward(m, x, n);
    const float *logits = m->act[m->nlayers - 1];
    if (y) dml_softmax_xent(logits, y, n, K, 1.0f, NULL, &ls, &corr);
    if (scores || probs_out) {
      for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * (size_t)K;
        float mx = l[0];
        for (int k = 1; k < K; k++) mx = l[k] > mx ? l[k] : mx;
        double s = 0;
        for (int k = 0; k < K; k++) s += exp((double)l[k] - mx);
        if (scores) scores[r0 + i] = (float)(exp((double)l[1] - mx) / s);
        if (probs_out)
          for (int k = 0; k < K; k++)
            probs_out[(size_t)(r0 + i) * (size_t)K + (size_t)k] =
                (float)(exp((double)l[k] - mx) / s);
      }
    }
  }
  if (loss_sum) *loss_sum = ls;
  if (correct) *correct = corr;
  return 0;
}

int dml_model_evaluate(dml_model *m, const dml_batch *b, double *loss_sum, int *correct,
                       float *scores_out, dml_err *err) {
  if (scores_out != NULL && m->cfg.num_classes != 2)
    return dml_err_set(err, DML_EINVAL,
                       "evaluate: scores are P(class 1) for two-class models; this model has %d "
                       "classes (use dml_model_predict_proba)",
                       m->cfg.num_classes);
  int rc = check_batch(m, b, 1, err);
  if (rc) return rc;
  return eval_chunks(m, b, loss_sum, correct, scores_out, NULL, err);
}

int dml_model_predict_proba(dml_model *m, const dml_batch *b, float *probs_out, dml_err *err) {
  int rc = check_batch(m, b, 0, err);
  if (rc) return rc;
  dml_batch nb = *b;
  nb.y = NULL;
  return eval_chunks(m, &nb, NULL, NULL, NULL, probs_out, err);
}
