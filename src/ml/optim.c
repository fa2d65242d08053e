/* Optimizers over a flat float buffer: SGD, SGD+momentum, Adam, AdaGrad and FTRL-Proximal, with
 * dense range updates (a gradient bucket) and sparse updates over an index list (touched
 * features, parameter-server rows). State vectors are one allocation, exposed as named tensors.
 * This file knows nothing about models; it sees floats and indices. */
#include "core/internal.h"
#include "distml/ml.h"

#include <math.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define MAX_STATE 2

struct dml_optim {
  dml_optim_config cfg;
  size_t n;
  uint64_t step;
  double bc1, bc2; /* Adam bias corrections 1 - beta^step for the current step */
  float *state;    /* nstate * n floats, one allocation */
  int nstate;
  dml_tensor_info tensors[MAX_STATE];
};

void dml_optim_config_init(dml_optim_config *cfg, dml_optim_kind kind) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->kind = kind;
  cfg->momentum = 0.9f;
  cfg->beta1 = 0.9f;
  cfg->beta2 = 0.999f;
  cfg->ftrl_beta = 1.0f;
  switch (kind) {
    case DML_OPT_SGD: cfg->lr = 0.1f; break;
    case DML_OPT_MOMENTUM: cfg->lr = 0.05f; break;
    case DML_OPT_ADAM:
      cfg->lr = 1e-3f;
      cfg->eps = 1e-8f;
      break;
    case DML_OPT_ADAGRAD:
      cfg->lr = 0.05f;
      cfg->eps = 1e-10f;
      break;
    case DML_OPT_FTRL: cfg->lr = 0.5f; break; /* alpha for batch-mean gradients (measured) */
  }
}

const char *dml_optim_kind_name(dml_optim_kind kind) {
  switch (kind) {
    case DML_OPT_SGD: return "sgd";
    case DML_OPT_MOMENTUM: return "momentum";
    case DML_OPT_ADAM: return "adam";
    case DML_OPT_ADAGRAD: return "adagrad";
    case DML_OPT_FTRL: return "ftrl";
  }
  return NULL;
}

int dml_optim_kind_parse(const char *name, dml_optim_kind *out, dml_err *err) {
  for (int k = DML_OPT_SGD; k <= DML_OPT_FTRL; k++) {
    if (name != NULL && strcmp(name, dml_optim_kind_name((dml_optim_kind)k)) == 0) {
      *out = (dml_optim_kind)k;
      return 0;
    }
  }
  return dml_err_set(err, DML_EINVAL, "unknown optimizer '%s' (sgd, momentum, adam, adagrad, ftrl)",
                     name ? name : "(null)");
}

static int check_cfg(const dml_optim_config *c, dml_err *err) {
  if (dml_optim_kind_name(c->kind) == NULL)
    return dml_err_set(err, DML_EINVAL, "optimizer: unknown kind %d", (int)c->kind);
  if (!(c->lr > 0.0f) || !isfinite(c->lr))
    return dml_err_set(err, DML_EINVAL, "optimizer: learning rate %g must be > 0", (double)c->lr);
  if (!(c->weight_decay >= 0.0f) || !isfinite(c->weight_decay))
    return dml_err_set(err, DML_EINVAL, "optimizer: weight decay %g must be >= 0",
                       (double)c->weight_decay);
  if (c->kind == DML_OPT_MOMENTUM && !(c->momentum >= 0.0f && c->momentum < 1.0f))
    return dml_err_set(err, DML_EINVAL, "optimizer: momentum %g not in [0, 1)",
                       (double)c->momentum);
  if (c->kind == DML_OPT_ADAM && !(c->beta1 >= 0.0f && c->beta1 < 1.0f && c->beta2 >= 0.0f &&
                                   c->beta2 < 1.0f && c->eps > 0.0f))
    return dml_err_set(err, DML_EINVAL, "optimizer: adam needs beta1, beta2 in [0, 1) and eps > 0");
  if (c->kind == DML_OPT_ADAGRAD && !(c->eps >= 0.0f && c->adagrad_init >= 0.0f))
    return dml_err_set(err, DML_EINVAL, "optimizer: adagrad needs eps >= 0 and init >= 0");
  if (c->kind == DML_OPT_FTRL &&
      !(c->ftrl_beta >= 0.0f && c->ftrl_l1 >= 0.0f && c->ftrl_l2 >= 0.0f))
    return dml_err_set(err, DML_EINVAL, "optimizer: ftrl needs beta, l1, l2 >= 0");
  return 0;
}

static void add_state(dml_optim *o, const char *name) {
  dml_tensor_info *t = &o->tensors[o->nstate];
  memset(t, 0, sizeof(*t));
  snprintf(t->name, sizeof(t->name), "%s", name);
  t->ndim = 1;
  t->shape[0] = (int64_t)o->n;
  t->offset = (size_t)o->nstate * o->n;
  t->count = o->n;
  o->nstate++;
}

int dml_optim_create(dml_optim **out, const dml_optim_config *cfg, size_t n, dml_err *err) {
  *out = NULL;
  int rc = check_cfg(cfg, err);
  if (rc) return rc;
  dml_optim *o = dml__calloc(1, sizeof(*o));
  if (o == NULL) return dml_err_set(err, DML_ENOMEM, "optimizer: out of memory");
  o->cfg = *cfg;
  o->n = n;
  switch (cfg->kind) {
    case DML_OPT_SGD: break;
    case DML_OPT_MOMENTUM: add_state(o, "momentum.v"); break;
    case DML_OPT_ADAM:
      add_state(o, "adam.m");
      add_state(o, "adam.v");
      break;
    case DML_OPT_ADAGRAD: add_state(o, "adagrad.sum"); break;
    case DML_OPT_FTRL:
      add_state(o, "ftrl.z");
      add_state(o, "ftrl.n");
      break;
  }
  if (o->nstate > 0) {
    int ovf = 0;
    size_t bytes = dml__mul_size(n, (size_t)o->nstate * sizeof(float), &ovf);
    o->state = ovf ? NULL : dml__calloc(1, bytes);
    if (o->state == NULL) {
      dml__free(o);
      return dml_err_set(err, DML_ENOMEM, "optimizer: cannot allocate state for %zu floats", n);
    }
    if (cfg->kind == DML_OPT_ADAGRAD && cfg->adagrad_init != 0.0f)
      for (size_t i = 0; i < n; i++) o->state[i] = cfg->adagrad_init;
  }
  *out = o;
  return 0;
}

void dml_optim_free(dml_optim *o) {
  if (o == NULL) return;
  dml__free(o->state);
  dml__free(o);
}

const dml_optim_config *dml_optim_get_config(const dml_optim *o) {
  return &o->cfg;
}
void dml_optim_set_lr(dml_optim *o, float lr) {
  o->cfg.lr = lr;
}
uint64_t dml_optim_step_count(const dml_optim *o) {
  return o->step;
}
int dml_optim_num_state(const dml_optim *o) {
  return o->nstate;
}
float *dml_optim_state_data(dml_optim *o) {
  return o->state;
}

const dml_tensor_info *dml_optim_state_tensor(const dml_optim *o, int i) {
  return i >= 0 && i < o->nstate ? &o->tensors[i] : NULL;
}

static void set_corrections(dml_optim *o) {
  double t = (double)(o->step ? o->step : 1);
  o->bc1 = 1.0 - pow((double)o->cfg.beta1, t);
  o->bc2 = 1.0 - pow((double)o->cfg.beta2, t);
}

void dml_optim_set_step_count(dml_optim *o, uint64_t step) {
  o->step = step;
  set_corrections(o);
}

void dml_optim_begin_step(dml_optim *o) {
  o->step++;
  set_corrections(o);
}

/* Momentum and Adam state of coordinates whose gradient is always zero (dead ReLU units, border
 * pixels) decays geometrically into subnormal floats, and x86 takes a microcode assist on every
 * subnormal operand: measured, that made the step of a 784-256-10 MLP 10x slower than its
 * forward/backward. The updates therefore run with flush-to-zero and denormals-are-zero set, and
 * the caller's floating-point mode is restored afterwards. */
#if defined(__SSE__)
#define FTZ_DAZ 0x8040u
static unsigned int fp_mode_begin(void) {
  unsigned int saved = _mm_getcsr();
  _mm_setcsr(saved | FTZ_DAZ);
  return saved;
}
static void fp_mode_end(unsigned int saved) {
  _mm_setcsr(saved);
}
#else
static unsigned int fp_mode_begin(void) {
  return 0;
}
static void fp_mode_end(unsigned int saved) {
  (void)saved;
}
#endif

/* FTRL weight from its state. */
static inline float ftrl_w(const dml_optim_config *c, float z, float nn) {
  if (fabsf(z) <= c->ftrl_l1) return 0.0f;
  float sgn = z > 0 ? 1.0f : -1.0f;
  return -(z - sgn * c->ftrl_l1) / ((c->ftrl_beta + sqrtf(nn)) / c->lr + c->ftrl_l2);
}

/* The per-coordinate update of every kind, applied to idx(k) for k < count.
 * IDX(k) gives the buffer index, GRAD(k) the gradient value. */
#define OPTIM_LOOP(IDX, GRAD)                                                                \
  do {                                                                                       \
    const dml_optim_config *c = &o->cfg;                                                     \
    const float lr = c->lr, wd = c->weight_decay;                                            \
    float *s0 = o->state, *s1 = o->state ? o->state + o->n : NULL;                           \
    switch (c->kind) {                                                                       \
      case DML_OPT_SGD:                                                                      \
        for (size_t k = 0; k < count; k++) {                                                 \
          size_t i = (IDX);                                                                  \
          float g = (GRAD) + wd * w[i];                                                      \
          w[i] -= lr * g;                                                                    \
        }                                                                                    \
        break;                                                                               \
      case DML_OPT_MOMENTUM: {                                                               \
        const float mu = c->momentum;                                                        \
        for (size_t k = 0; k < count; k++) {                                                 \
          size_t i = (IDX);                                                                  \
          float g = (GRAD) + wd * w[i];                                                      \
          float v = mu * s0[i] + g;                                                          \
          s0[i] = v;                                                                         \
          w[i] -= lr * v;                                                                    \
        }                                                                                    \
        break;                                                                               \
      }                                                                                      \
      case DML_OPT_ADAM: {                                                                   \
        const float b1 = c->beta1, b2 = c->beta2, eps = c->eps;                              \
        const float step = (float)(lr / o->bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(o->bc2)); \
        for (size_t k = 0; k < count; k++) {                                                 \
          size_t i = (IDX);                                                                  \
          float g = (GRAD) + wd * w[i];                                                      \
          float m1 = b1 * s0[i] + (1.0f - b1) * g;                                           \
          float v2 = b2 * s1[i] + (1.0f - b2) * g * g;                                       \
          s0[i] = m1;                                                                        \
          s1[i] = v2;                                                                        \
          w[i] -= step * m1 / (sqrtf(v2) * inv_sqrt_bc2 + eps);                              \
        }                                                                                    \
        break;                                                                               \
      }                                                                                      \
      case DML_OPT_ADAGRAD: {                                                                \
        const float eps = c->eps;                                                            \
        for (size_t k = 0; k < count; k++) {                                                 \
          size_t i = (IDX);                                                                  \
          float g = (GRAD) + wd * w[i];                                                      \
          float s = s0[i] + g * g;                                                           \
          s0[i] = s;                                                                         \
          w[i] -= lr * g / (sqrtf(s) + eps);                                                 \
        }                                                                                    \
        break;                                                                               \
      }                                                                                      \
      case DML_OPT_FTRL:                                                                     \
        for (size_t k = 0; k < count; k++) {                                                 \
          size_t i = (IDX);                                                                  \
          float g = (GRAD);                                                                  \
          float nn = s1[i];                                                                  \
          float sigma = (sqrtf(nn + g * g) - sqrtf(nn)) / lr;                                \
          s0[i] += g - sigma * w[i];                                                         \
          s1[i] = nn + g * g;                                                                \
          w[i] = ftrl_w(c, s0[i], s1[i]);                                                    \
        }                                                                                    \
        break;                                                                               \
    }                                                                                        \
  } while (0)

/* Dense kernels: restrict pointers and (with GCC, whose -O2 does not vectorize these loops)
 * tree-vectorize, so that a bucket update runs at memory speed. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
/* (Not under the sanitizers: their runtimes are not ready when the ifunc resolvers run.) */
/* One copy per instruction set, chosen at load time (ifunc): AVX-512 where the CPU has it. */
#define VECTORIZE \
  __attribute__((optimize("tree-vectorize"), target_clones("avx512f", "avx2", "default")))
#elif defined(__GNUC__) && !defined(__clang__)
#define VECTORIZE __attribute__((optimize("tree-vectorize")))
#else
#define VECTORIZE
#endif

VECTORIZE static void dense_sgd(float *restrict w, const float *restrict g, size_t n, float lr,
                                float wd) {
  for (size_t i = 0; i < n; i++) w[i] -= lr * (g[i] + wd * w[i]);
}

VECTORIZE static void dense_momentum(float *restrict w, const float *restrict g, float *restrict v,
                                     size_t n, float lr, float mu, float wd) {
  for (size_t i = 0; i < n; i++) {
    float vv = mu * v[i] + (g[i] + wd * w[i]);
    v[i] = vv;
    w[i] -= lr * vv;
  }
}

VECTORIZE static void dense_adam(float *restrict w, const float *restrict g, float *restrict m,
                                 float *restrict v, size_t n, float step, float inv_sqrt_bc2,
                                 float b1, float b2, float eps, float wd) {
  for (size_t i = 0; i < n; i++) {
    float gg = g[i] + wd * w[i];
    float m1 = b1 * m[i] + (1.0f - b1) * gg;
    float v2 = b2 * v[i] + (1.0f - b2) * gg * gg;
    m[i] = m1;
    v[i] = v2;
    w[i] -= step * m1 / (sqrtf(v2) * inv_sqrt_bc2 + eps);
  }
}

VECTORIZE static void dense_adagrad(float *restrict w, const float *restrict g, float *restrict s,
                                    size_t n, float lr, float eps, float wd) {
  for (size_t i = 0; i < n; i++) {
    float gg = g[i] + wd * w[i];
    float ss = s[i] + gg * gg;
    s[i] = ss;
    w[i] -= lr * gg / (sqrtf(ss) + eps);
  }
}

int dml_optim_update_range(dml_optim *o, float *params, const float *grads, size_t offset,
                           size_t count) {
  if (offset > o->n || count > o->n - offset) return DML_ERANGE;
  if (o->step == 0) dml_optim_begin_step(o); /* tolerate a missing begin_step on the first step */
  const dml_optim_config *oc = &o->cfg;
  float *wr = params + offset;
  const float *gr = grads + offset;
  float *st0 = o->state ? o->state + offset : NULL;
  float *st1 = o->state ? o->state + o->n + offset : NULL;
  unsigned int mode = fp_mode_begin();
  switch (oc->kind) {
    case DML_OPT_SGD: dense_sgd(wr, gr, count, oc->lr, oc->weight_decay); break;
    case DML_OPT_MOMENTUM:
      dense_momentum(wr, gr, st0, count, oc->lr, oc->momentum, oc->weight_decay);
      break;
    case DML_OPT_ADAM:
      dense_adam(wr, gr, st0, st1, count, (float)(oc->lr / o->bc1), (float)(1.0 / sqrt(o->bc2)),
                 oc->beta1, oc->beta2, oc->eps, oc->weight_decay);
      break;
    case DML_OPT_ADAGRAD:
      dense_adagrad(wr, gr, st0, count, oc->lr, oc->eps, oc->weight_decay);
      break;
    case DML_OPT_FTRL: {
      /* FTRL is meant for sparse models; the shared per-coordinate loop serves its dense steps. */
      float *w = params;
      OPTIM_LOOP(offset + k, grads[offset + k]);
      break;
    }
  }
  fp_mode_end(mode);
  return 0;
}

int dml_optim_update_sparse(dml_optim *o, float *params, const float *grads, const uint32_t *idx,
                            size_t nidx, int compact) {
  for (size_t k = 0; k < nidx; k++)
    if (idx[k] >= o->n) return DML_ERANGE;
  if (o->step == 0) dml_optim_begin_step(o);
  float *w = params;
  size_t count = nidx;
  unsigned int mode = fp_mode_begin();
  if (compact) {
    OPTIM_LOOP(idx[k], grads[k]);
  } else {
    OPTIM_LOOP(idx[k], grads[idx[k]]);
  }
  fp_mode_end(mode);
  return 0;
}

void dml_optim_step(dml_optim *o, float *params, const float *grads) {
  dml_optim_begin_step(o);
  dml_optim_update_range(o, params, grads, 0, o->n);
}

void dml_optim_ftrl_weights(const dml_optim *o, float *params) {
  if (o->cfg.kind != DML_OPT_FTRL) return;
  for (size_t i = 0; i < o->n; i++) params[i] = ftrl_w(&o->cfg, o->state[i], o->state[o->n + i]);
}
