/* Tests for the optimizers: each kind against steps computed by hand on a 3-float vector (the
 * arithmetic is in the comments), range and sparse updates against the full step, state tensors
 * and configuration errors. Also the losses and the AUC metric against a brute-force pair count. */
#include "core/internal.h"
#include "distml/ml.h"
#include "testutil.h"

static const float G1[3] = {0.5f, 0.25f, -1.0f};
static const float G2[3] = {1.0f, 0.0f, 0.0f};

/* An optimizer of kind with learning rate lr, other settings from base (or the defaults). */
static dml_optim *make(dml_optim_kind kind, float lr, const dml_optim_config *base) {
  dml_optim_config cfg;
  if (base)
    cfg = *base;
  else
    dml_optim_config_init(&cfg, kind);
  cfg.kind = kind;
  cfg.lr = lr;
  dml_optim *o = NULL;
  dml_err err = {0};
  if (dml_optim_create(&o, &cfg, 3, &err)) T_FAIL("%s", err.msg);
  return o;
}

static void expect3(const float *w, double a, double b, double c) {
  T_NEAR(w[0], a, 1e-6);
  T_NEAR(w[1], b, 1e-6);
  T_NEAR(w[2], c, 1e-6);
}

static void test_sgd(void) {
  float w[3] = {1.0f, -2.0f, 0.5f};
  dml_optim *o = make(DML_OPT_SGD, 0.1f, NULL);
  dml_optim_step(o, w, G1); /* w - 0.1 g */
  expect3(w, 0.95, -2.025, 0.6);
  dml_optim_free(o);

  dml_optim_config c;
  dml_optim_config_init(&c, DML_OPT_SGD);
  c.weight_decay = 0.1f;
  o = make(DML_OPT_SGD, 0.1f, &c);
  float v[3] = {1.0f, -2.0f, 0.5f};
  dml_optim_step(o, v, G1); /* g + 0.1 w = (0.6, 0.05, -0.95) -> w - 0.1 that */
  expect3(v, 0.94, -2.005, 0.595);
  T_EQ_INT(dml_optim_num_state(o), 0);
  dml_optim_free(o);
}

static void test_momentum(void) {
  float w[3] = {1.0f, -2.0f, 0.5f};
  dml_optim *o = make(DML_OPT_MOMENTUM, 0.1f, NULL);
  dml_optim_step(o, w, G1); /* v = g: as SGD */
  expect3(w, 0.95, -2.025, 0.6);
  dml_optim_step(o, w, G1); /* v = 0.9 g + g = 1.9 g: w - 0.19 g */
  expect3(w, 0.855, -2.0725, 0.79);
  T_EQ_INT(dml_optim_num_state(o), 1);
  T_EQ_INT(strcmp(dml_optim_state_tensor(o, 0)->name, "momentum.v"), 0);
  T_NEAR(dml_optim_state_data(o)[2], -1.9, 1e-6);
  dml_optim_free(o);
}

static void test_adam(void) {
  float w[3] = {1.0f, -2.0f, 0.5f};
  dml_optim *o = make(DML_OPT_ADAM, 0.01f, NULL);
  /* Step 1: m = 0.1 g, v = 0.001 g^2; corrected m/sqrt(v) = sign(g): w - 0.01 sign(g). */
  dml_optim_step(o, w, G1);
  expect3(w, 0.99, -2.01, 0.51);
  /* Step 2 with g = (1, 0, 0): coordinate 0: m = 0.045 + 0.1 = 0.145, v = 0.00024975 + 0.001;
   * mhat = 0.145 / 0.19, vhat = 0.00124975 / 0.001999; w = 0.99 - 0.01 * 0.763158 / 0.790688.
   * Coordinate 1: m = 0.0225, v = 6.24375e-5: w = -2.01 - 0.01 * 0.118421 / 0.176732. */
  dml_optim_step(o, w, G2);
  expect3(w, 0.98034818, -2.01670058, 0.51670058);
  T_EQ_INT(dml_optim_step_count(o), 2);
  T_EQ_INT(dml_optim_num_state(o), 2);
  T_EQ_INT(strcmp(dml_optim_state_tensor(o, 1)->name, "adam.v"), 0);
  T_EQ_INT(dml_optim_state_tensor(o, 1)->offset, 3);
  dml_optim_free(o);
}

static void test_adagrad(void) {
  float w[3] = {1.0f, -2.0f, 0.5f};
  dml_optim *o = make(DML_OPT_ADAGRAD, 0.1f, NULL);
  dml_optim_step(o, w, G1); /* s = g^2: w - 0.1 sign(g) */
  expect3(w, 0.9, -2.1, 0.6);
  dml_optim_step(o, w, G2); /* s0 = 0.25 + 1: w0 = 0.9 - 0.1 / sqrt(1.25); g = 0 moves nothing */
  expect3(w, 0.81055728, -2.1, 0.6);
  dml_optim_free(o);
}

static void test_ftrl(void) {
  dml_optim_config c;
  dml_optim_config_init(&c, DML_OPT_FTRL);
  c.ftrl_beta = 1.0f;
  c.ftrl_l1 = 0.1f;
  c.ftrl_l2 = 0.5f;
  dml_optim *o = make(DML_OPT_FTRL, 0.1f, &c);
  float w[3] = {0, 0, 0};
  const float g[3] = {0.5f, 0.05f, -1.0f};
  /* coord 0: sigma = 0.5 / 0.1 = 5, z = 0.5, n = 0.25: w = -(0.5 - 0.1) / ((1 + 0.5) / 0.1 + 0.5)
   * coord 1: z = 0.05 <= l1: w = 0
   * coord 2: z = -1, n = 1: w = -(-1 + 0.1) / ((1 + 1) / 0.1 + 0.5) */
  dml_optim_step(o, w, g);
  expect3(w, -0.4 / 15.5, 0.0, 0.9 / 20.5);
  /* coord 0 again with g = 0.5: sigma = (sqrt(0.5) - 0.5) / 0.1 = 2.0710678,
   * z = 0.5 + 0.5 + 2.0710678 * 0.4 / 15.5 = 1.0534469, n = 0.5:
   * w = -(1.0534469 - 0.1) / ((1 + sqrt(0.5)) / 0.1 + 0.5) */
  const float gg[3] = {0.5f, 0.0f, 0.0f};
  dml_optim_step(o, w, gg);
  T_NEAR(w[0], -0.9534469 / 17.5710678, 1e-6);
  /* The weights are a function of the state. */
  float w2[3] = {7, 7, 7};
  dml_optim_ftrl_weights(o, w2);
  expect3(w2, w[0], w[1], w[2]);
  dml_optim_free(o);
}

/* Range and sparse updates give the same result as a full step on the same coordinates, and
 * leave the others (and their state) alone. */
static void test_range_sparse(void) {
  enum { N = 101 };
  dml_rng rng;
  dml_rng_seed(&rng, 3);
  static float w0[N], g[N], wa[N], wb[N], wc[N], gc[N];
  for (int i = 0; i < N; i++) {
    w0[i] = dml_rng_normal(&rng);
    g[i] = dml_rng_normal(&rng);
  }
  for (int k = DML_OPT_SGD; k <= DML_OPT_FTRL; k++) {
    dml_optim_config c;
    dml_optim_config_init(&c, (dml_optim_kind)k);
    c.weight_decay = 0.01f;
    dml_optim *a, *b, *s;
    T_OK(dml_optim_create(&a, &c, N, NULL));
    T_OK(dml_optim_create(&b, &c, N, NULL));
    T_OK(dml_optim_create(&s, &c, N, NULL));
    memcpy(wa, w0, sizeof(w0));
    memcpy(wb, w0, sizeof(w0));
    memcpy(wc, w0, sizeof(w0));
    uint32_t idx[N];
    size_t nidx = 0;
    for (int step = 0; step < 3; step++) {
      dml_optim_step(a, wa, g);
      dml_optim_begin_step(b);
      T_OK(dml_optim_update_range(b, wb, g, 60, 41)); /* buckets in reverse, like backward */
      T_OK(dml_optim_update_range(b, wb, g, 0, 60));
      /* sparse: every third coordinate, compact gradient values, in descending order */
      nidx = 0;
      for (int i = N - 1; i >= 0; i -= 3) {
        idx[nidx] = (uint32_t)i;
        gc[nidx++] = g[i];
      }
      dml_optim_begin_step(s);
      T_OK(dml_optim_update_sparse(s, wc, gc, idx, nidx, 1));
    }
    T_EQ_INT(memcmp(wa, wb, sizeof(wa)), 0);
    for (int i = 0; i < N; i++) {
      if ((N - 1 - i) % 3 == 0)
        T_EQ_INT(wc[i] == wa[i], 1);
      else
        T_EQ_INT(wc[i] == w0[i], 1);
    }
    T_EQ_INT(dml_optim_update_range(b, wb, g, 100, 2), DML_ERANGE);
    idx[0] = N;
    T_EQ_INT(dml_optim_update_sparse(b, wb, g, idx, 1, 0), DML_ERANGE);
    dml_optim_free(a);
    dml_optim_free(b);
    dml_optim_free(s);
  }
}

static void test_config_errors(void) {
  dml_optim_config c;
  dml_optim *o;
  dml_err err = {0};
  dml_optim_config_init(&c, DML_OPT_ADAM);
  c.lr = 0;
  T_EQ_INT(dml_optim_create(&o, &c, 4, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "learning rate");
  dml_optim_config_init(&c, DML_OPT_MOMENTUM);
  c.momentum = 1.0f;
  T_EQ_INT(dml_optim_create(&o, &c, 4, &err), DML_EINVAL);
  dml_optim_kind k;
  T_OK(dml_optim_kind_parse("ftrl", &k, NULL));
  T_EQ_INT(k, DML_OPT_FTRL);
  T_EQ_INT(dml_optim_kind_parse("lbfgs", &k, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "lbfgs");
}

/* ---------------------------------------------------------------------------------------------
 * Losses and metrics. */

static void test_losses(void) {
  /* logits (1, 2, 3), label 2: loss = log(e^1 + e^2 + e^3) - 3 = 0.40760596 */
  float l[6] = {1, 2, 3, 1000, 0, -1000}, d[6];
  int32_t y[2] = {2, 0};
  double ls = 0;
  int corr = 0;
  dml_softmax_xent(l, y, 1, 3, 1.0f, d, &ls, &corr);
  T_NEAR(ls, 0.40760596, 1e-6);
  T_EQ_INT(corr, 1);
  T_NEAR(d[0], 0.09003057, 1e-6); /* softmax(1,2,3) = (0.0900, 0.2447, 0.6652) */
  T_NEAR(d[2], 0.66524096 - 1.0, 1e-6);
  /* Huge logits stay finite (stable log-sum-exp): row 2 loss is 0 for label 0. */
  ls = 0;
  dml_softmax_xent(l + 3, y + 1, 1, 3, 1.0f, NULL, &ls, &corr);
  T_NEAR(ls, 0.0, 1e-6);
  /* logistic: z = 0 -> log 2; z = 100, y = 0 -> 100; z = -100, y = 0 -> ~0 */
  float z[3] = {0, 100, -100}, dz[3];
  int32_t yz[3] = {1, 0, 0};
  ls = 0;
  corr = 0;
  dml_logistic_loss(z, yz, 3, 0.5f, dz, &ls, &corr);
  T_NEAR(ls, log(2.0) + 100.0, 1e-4);
  T_EQ_INT(corr, 1); /* z = 0 predicts 0, label 1: wrong; z = -100 right; z = 100 wrong */
  T_NEAR(dz[0], -0.25, 1e-7);
  T_NEAR(dz[1], 0.5, 1e-7);
}

static double brute_auc(const float *s, const int32_t *y, int n) {
  double good = 0, pairs = 0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++)
      if (y[i] == 1 && y[j] == 0) {
        pairs++;
        good += s[i] > s[j] ? 1.0 : s[i] == s[j] ? 0.5 : 0.0;
      }
  return good / pairs;
}

static void test_auc(void) {
  dml_rng rng;
  dml_rng_seed(&rng, 17);
  enum { N = 500 };
  static float s[N];
  static int32_t y[N];
  for (int trial = 0; trial < 5; trial++) {
    for (int i = 0; i < N; i++) {
      y[i] = dml_rng_uniform(&rng) < 0.3f;
      /* coarse scores (many ties), shifted up for positives so the AUC is far from 0.5 */
      s[i] = (float)dml_rng_below(&rng, 20) / 20.0f + (y[i] ? 0.15f : 0.0f) * (float)trial;
    }
    double auc;
    T_OK(dml_metric_auc(s, y, N, &auc, NULL));
    T_NEAR(auc, brute_auc(s, y, N), 1e-12);
  }
  float ps[4] = {0.1f, 0.4f, 0.35f, 0.8f};
  int32_t py[4] = {0, 0, 1, 1};
  double auc;
  T_OK(dml_metric_auc(ps, py, 4, &auc, NULL));
  T_NEAR(auc, 0.75, 1e-12);
  dml_err err = {0};
  int32_t ones[4] = {1, 1, 1, 1};
  T_EQ_INT(dml_metric_auc(ps, ones, 4, &auc, &err), DML_ERANGE);
  T_CONTAINS(err.msg, "undefined");
  ps[2] = NAN;
  T_EQ_INT(dml_metric_auc(ps, py, 4, &auc, &err), DML_EINVAL);
  /* log-loss: -(log 0.9 + log 0.8) / 2 */
  float p[2] = {0.1f, 0.8f};
  int32_t yl[2] = {0, 1};
  T_NEAR(dml_metric_logloss(p, yl, 2), -(log(0.9) + log(0.8)) / 2, 1e-6);
  T_NEAR(dml_metric_accuracy(3, 4), 0.75, 1e-12);
}

int main(void) {
  test_sgd();
  test_momentum();
  test_adam();
  test_adagrad();
  test_ftrl();
  test_range_sparse();
  test_config_errors();
  test_losses();
  test_auc();
  printf("optim_test: ok\n");
  return 0;
}
