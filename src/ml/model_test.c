/* Tests for the models: finite-difference gradient checks of every model (softmax, MLP with one
 * and two hidden layers, sparse and dense logistic regression), the gradient-ready callback order
 * and coverage, accumulation, the gradient scale, the touched set of the sparse model,
 * CSR == dense input, evaluation and batch validation. */
#include "core/internal.h"
#include "distml/ml.h"
#include "testutil.h"

/* A random batch: dense rows, plus the same rows in CSR form (with ~half the entries zero). */
typedef struct test_data {
  int n, dim;
  float x[64 * 32];
  uint64_t indptr[65];
  uint32_t indices[64 * 32];
  float values[64 * 32];
  int32_t y[64];
} test_data;

static void make_data(test_data *d, int n, int dim, int k, uint64_t seed) {
  dml_rng rng;
  dml_rng_seed(&rng, seed);
  T_ASSERT(n <= 64 && dim <= 32);
  d->n = n;
  d->dim = dim;
  uint64_t nnz = 0;
  d->indptr[0] = 0;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < dim; j++) {
      float v = dml_rng_uniform(&rng) < 0.5f ? 0.0f : dml_rng_normal(&rng);
      d->x[i * dim + j] = v;
      if (v != 0.0f) {
        d->indices[nnz] = (uint32_t)j;
        d->values[nnz++] = v;
      }
    }
    d->indptr[i + 1] = nnz;
    d->y[i] = (int32_t)dml_rng_below(&rng, (uint64_t)k);
  }
}

static dml_batch dense_batch(const test_data *d) {
  dml_batch b = {.n = d->n, .dim = d->dim, .x = d->x, .y = d->y};
  return b;
}

static dml_batch csr_batch(const test_data *d) {
  dml_batch b = {.n = d->n,
                 .dim = d->dim,
                 .indptr = d->indptr,
                 .indices = d->indices,
                 .values = d->values,
                 .y = d->y};
  return b;
}

static dml_model *make_model(dml_model_kind kind, int in, int k, const char *hidden,
                             uint64_t seed) {
  dml_model_config cfg;
  dml_model_config_init(&cfg, kind, in, k);
  cfg.max_batch = 16;
  cfg.seed = seed;
  if (hidden) T_OK(dml_model_config_set_hidden(&cfg, hidden, NULL));
  dml_model *m = NULL;
  dml_err err = {0};
  int rc = dml_model_create(&m, &cfg, &err);
  if (rc) T_FAIL("create: %s", err.msg);
  return m;
}

static double mean_loss(dml_model *m, const dml_batch *b) {
  double ls = 0;
  T_OK(dml_model_evaluate(m, b, &ls, NULL, NULL, NULL));
  return ls / b->n;
}

/* Central differences on every parameter against the analytic gradient. Logreg starts at zero,
 * so parameters are randomised first to get a non-trivial point. */
static void gradcheck(dml_model *m, const dml_batch *b, const char *what) {
  size_t np = dml_model_num_params(m);
  float *w = dml_model_params(m), *g = dml_model_grads(m);
  dml_rng rng;
  dml_rng_seed(&rng, 99);
  if (dml_model_get_config(m)->kind == DML_MODEL_LOGREG)
    for (size_t i = 0; i < np; i++) w[i] = 0.5f * dml_rng_normal(&rng);
  float loss = 0;
  dml_err err = {0};
  if (dml_model_forward_backward(m, b, &loss, NULL, NULL, NULL, &err)) T_FAIL("%s", err.msg);
  T_NEAR(loss, mean_loss(m, b), 1e-5);
  float *ga = dml__malloc(np * sizeof(float));
  memcpy(ga, g, np * sizeof(float));
  int nonzero = 0, bad = 0;
  const float eps = 3e-3f;
  for (size_t i = 0; i < np; i++) {
    float w0 = w[i];
    w[i] = w0 + eps;
    double lp = mean_loss(m, b);
    w[i] = w0 - eps;
    double lm = mean_loss(m, b);
    w[i] = w0;
    double num = (lp - lm) / (2.0 * (double)eps);
    if (fabs(num - ga[i]) > 2e-3 + 2e-2 * fabs(num)) {
      fprintf(stderr, "%s: param %zu: analytic %.7g numeric %.7g\n", what, i, (double)ga[i], num);
      bad++;
    }
    nonzero += ga[i] != 0.0f;
  }
  T_EQ_INT(bad, 0);
  T_ASSERT(nonzero > (int)np / 4); /* a check of all-zero gradients would prove little */
  dml__free(ga);
}

static void test_gradcheck(void) {
  test_data d;
  make_data(&d, 7, 9, 4, 1);
  dml_batch db = dense_batch(&d), cb = csr_batch(&d);

  dml_model *m = make_model(DML_MODEL_SOFTMAX, 9, 4, NULL, 3);
  gradcheck(m, &db, "softmax");
  dml_model_free(m);

  m = make_model(DML_MODEL_MLP, 9, 4, "6", 4);
  gradcheck(m, &db, "mlp 9-6-4");
  dml_model_free(m);

  /* Seed chosen so that no ReLU input lies within the finite-difference step of 0 (seeds 5
   * and 15 put one at 0.0009 and 0.003: the numeric gradient then straddles the kink). */
  m = make_model(DML_MODEL_MLP, 9, 4, "8,5", 17);
  gradcheck(m, &db, "mlp 9-8-5-4");
  gradcheck(m, &cb, "mlp 9-8-5-4 csr input");
  dml_model_free(m);

  test_data d2;
  make_data(&d2, 11, 20, 2, 2);
  dml_batch sb = csr_batch(&d2), sd = dense_batch(&d2);
  m = make_model(DML_MODEL_LOGREG, 20, 2, NULL, 6);
  gradcheck(m, &sb, "logreg csr");
  gradcheck(m, &sd, "logreg dense");
  dml_model_free(m);
}

/* ---------------------------------------------------------------------------------------------
 * Callback: reverse layer order, contiguous, exactly covering, and final when reported. */
typedef struct cb_rec {
  dml_model *m;
  int calls;
  size_t off[8], cnt[8];
  float *snap; /* copy of the grads of each range when reported */
} cb_rec;

static int record_cb(void *ctx, size_t offset, size_t count) {
  cb_rec *r = ctx;
  T_ASSERT(r->calls < 8);
  r->off[r->calls] = offset;
  r->cnt[r->calls] = count;
  memcpy(r->snap + offset, dml_model_grads(r->m) + offset, count * sizeof(float));
  r->calls++;
  return 0;
}

static int failing_cb(void *ctx, size_t offset, size_t count) {
  (void)offset;
  (void)count;
  (*(int *)ctx)++;
  return DML_EPEER;
}

static void test_callback(void) {
  test_data d;
  make_data(&d, 9, 12, 3, 7);
  dml_batch b = dense_batch(&d);
  dml_model *m = make_model(DML_MODEL_MLP, 12, 3, "10,8,6", 8);
  size_t np = dml_model_num_params(m);
  T_EQ_INT(dml_model_num_layers(m), 4);
  cb_rec r = {.m = m, .snap = dml__calloc(np, sizeof(float))};
  T_OK(dml_model_forward_backward(m, &b, NULL, NULL, record_cb, &r, NULL));
  T_EQ_INT(r.calls, 4);
  size_t end = np;
  for (int c = 0; c < r.calls; c++) {
    size_t lo, cnt;
    T_OK(dml_model_layer_range(m, 3 - c, &lo, &cnt));
    T_EQ_INT(r.off[c], lo);
    T_EQ_INT(r.cnt[c], cnt);
    T_EQ_INT(r.off[c] + r.cnt[c], end); /* walks back from the end: contiguous, no gap */
    end = r.off[c];
  }
  T_EQ_INT(end, 0);
  /* Nothing changed in a range after it was reported. */
  T_EQ_INT(memcmp(r.snap, dml_model_grads(m), np * sizeof(float)), 0);
  dml__free(r.snap);

  /* Tensors are laid out in forward order, weight then bias, with no gaps. */
  size_t off = 0;
  for (int i = 0; i < dml_model_num_tensors(m); i++) {
    const dml_tensor_info *t = dml_model_tensor(m, i);
    T_EQ_INT(t->offset, off);
    off += t->count;
  }
  T_EQ_INT(off, np);
  const dml_tensor_info *t = dml_model_find_tensor(m, "fc2.weight");
  T_ASSERT(t != NULL);
  T_EQ_INT(t->shape[0], 8);
  T_EQ_INT(t->shape[1], 10);

  /* A failing callback stops backward and its code comes back. */
  int calls = 0;
  dml_err err = {0};
  T_EQ_INT(dml_model_forward_backward(m, &b, NULL, NULL, failing_cb, &calls, &err), DML_EPEER);
  T_EQ_INT(calls, 1);
  T_CONTAINS(err.msg, "callback");
  dml_model_free(m);
}

/* ---------------------------------------------------------------------------------------------
 * Accumulation, touched set, CSR vs dense, evaluation, validation. */

static void test_accumulate(void) {
  test_data d1, d2;
  make_data(&d1, 8, 10, 3, 11);
  make_data(&d2, 5, 10, 3, 12);
  dml_batch b1 = dense_batch(&d1), b2 = dense_batch(&d2);
  dml_model *m = make_model(DML_MODEL_MLP, 10, 3, "7", 13);
  size_t np = dml_model_num_params(m);
  float *g1 = dml__malloc(np * sizeof(float)), *g2 = dml__malloc(np * sizeof(float));
  T_OK(dml_model_forward_backward(m, &b1, NULL, NULL, NULL, NULL, NULL));
  memcpy(g1, dml_model_grads(m), np * sizeof(float));
  T_OK(dml_model_forward_backward(m, &b2, NULL, NULL, NULL, NULL, NULL));
  memcpy(g2, dml_model_grads(m), np * sizeof(float)); /* overwrite: b2 alone */
  dml_model_set_accumulate(m, 1);
  dml_model_zero_grads(m);
  T_OK(dml_model_forward_backward(m, &b1, NULL, NULL, NULL, NULL, NULL));
  T_OK(dml_model_forward_backward(m, &b2, NULL, NULL, NULL, NULL, NULL));
  const float *g = dml_model_grads(m);
  for (size_t i = 0; i < np; i++) T_NEAR(g[i], g1[i] + g2[i], 1e-5 + 1e-4 * fabs(g1[i] + g2[i]));
  dml_model_free(m);
  dml__free(g1);
  dml__free(g2);
}

/* A gradient scale multiplies every gradient (MLP and sparse logreg) and leaves the loss alone. */
static void test_grad_scale(void) {
  test_data d;
  make_data(&d, 8, 10, 3, 21);
  dml_batch dense = dense_batch(&d);
  for (int kind = 0; kind < 2; kind++) {
    dml_model *m = kind == 0 ? make_model(DML_MODEL_MLP, 10, 3, "7", 23)
                             : make_model(DML_MODEL_LOGREG, 10, 2, NULL, 23);
    dml_batch b = dense;
    int32_t y01[64];
    if (kind == 1) { /* logreg labels are 0/1 */
      for (int i = 0; i < d.n; i++) y01[i] = d.y[i] % 2;
      b.y = y01;
    }
    size_t np = dml_model_num_params(m);
    float *g1 = dml__malloc(np * sizeof(float)), loss1, loss2;
    T_OK(dml_model_forward_backward(m, &b, &loss1, NULL, NULL, NULL, NULL));
    memcpy(g1, dml_model_grads(m), np * sizeof(float));
    dml_model_set_grad_scale(m, 0.25f);
    T_OK(dml_model_forward_backward(m, &b, &loss2, NULL, NULL, NULL, NULL));
    const float *g = dml_model_grads(m);
    double norm = 0;
    for (size_t i = 0; i < np; i++) {
      T_NEAR(g[i], 0.25f * g1[i], 1e-7 + 1e-5 * fabs(g1[i]));
      norm += fabs(g1[i]);
    }
    T_ASSERT(norm > 0);
    T_NEAR(loss2, loss1, 1e-7);
    dml_model_free(m);
    dml__free(g1);
  }
}

static void test_touched(void) {
  /* Two sparse batches over disjoint features: after the second (overwrite mode), the first
   * batch's coordinates are zero again and the touched set is exactly the second's features. */
  uint64_t ip1[3] = {0, 2, 3}, ip2[3] = {0, 1, 3};
  uint32_t ix1[3] = {1, 5, 7}, ix2[3] = {2, 3, 9};
  float v1[3] = {1, 2, 3}, v2[3] = {-1, 0.5f, 2};
  int32_t y1[2] = {1, 0}, y2[2] = {0, 1};
  dml_batch b1 = {.n = 2, .dim = 10, .indptr = ip1, .indices = ix1, .values = v1, .y = y1};
  dml_batch b2 = {.n = 2, .dim = 10, .indptr = ip2, .indices = ix2, .values = v2, .y = y2};
  dml_model *m = make_model(DML_MODEL_LOGREG, 10, 2, NULL, 1);
  const float *g = dml_model_grads(m);
  const uint32_t *t;
  size_t nt;
  T_OK(dml_model_forward_backward(m, &b1, NULL, NULL, NULL, NULL, NULL));
  T_OK(dml_model_touched(m, &t, &nt));
  T_EQ_INT(nt, 4);
  T_EQ_INT(t[0], 1);
  T_EQ_INT(t[1], 5);
  T_EQ_INT(t[2], 7);
  T_EQ_INT(t[3], 10); /* the bias, last */
  T_ASSERT(g[5] != 0.0f);
  /* The keys a parameter-server worker would pull, known before the step, are the touched set. */
  const uint32_t *keys;
  size_t nkeys;
  T_OK(dml_model_batch_keys(m, &b2, &keys, &nkeys, NULL));
  T_EQ_INT(nkeys, 4);
  uint32_t want[4] = {2, 3, 9, 10};
  for (int i = 0; i < 4; i++) T_EQ_INT(keys[i], want[i]);
  T_OK(dml_model_forward_backward(m, &b2, NULL, NULL, NULL, NULL, NULL));
  T_OK(dml_model_touched(m, &t, &nt));
  T_EQ_INT(nt, 4);
  for (int i = 0; i < 4; i++) T_EQ_INT(t[i], want[i]);
  for (uint32_t j = 0; j < 10; j++) {
    int in2 = j == 2 || j == 3 || j == 9;
    if (!in2)
      T_EQ_INT(g[j] == 0.0f, 1);
    else
      T_ASSERT(g[j] != 0.0f);
  }
  /* With all weights zero, P = 0.5: g[bias] = mean(0.5 - y) = 0. g[9] = (0.5-1)*2/2 = -0.5. */
  T_NEAR(g[9], -0.5, 1e-6);
  T_NEAR(g[10], 0.0, 1e-6);
  /* Accumulate: the union of both sets. */
  dml_model_set_accumulate(m, 1);
  T_OK(dml_model_forward_backward(m, &b1, NULL, NULL, NULL, NULL, NULL));
  T_OK(dml_model_touched(m, &t, &nt));
  T_EQ_INT(nt, 7);
  for (size_t i = 1; i < nt; i++) T_ASSERT(t[i - 1] < t[i]);
  /* A feature in several rows appears once; rows given out of feature order come back sorted. */
  uint64_t ip3[4] = {0, 2, 4, 5};
  uint32_t ix3[5] = {4, 8, 0, 4, 8};
  float v3[5] = {1, 1, 1, 1, 1};
  dml_batch b3 = {.n = 3, .dim = 10, .indptr = ip3, .indices = ix3, .values = v3, .y = y1};
  T_OK(dml_model_batch_keys(m, &b3, &keys, &nkeys, NULL));
  T_EQ_INT(nkeys, 4);
  uint32_t want3[4] = {0, 4, 8, 10};
  for (int i = 0; i < 4; i++) T_EQ_INT(keys[i], want3[i]);
  dml_model_zero_grads(m);
  T_OK(dml_model_touched(m, &t, &nt));
  T_EQ_INT(nt, 0);
  for (int j = 0; j <= 10; j++) T_EQ_INT(g[j] == 0.0f, 1);
  dml_model_free(m);
}

static void test_csr_equals_dense_and_eval(void) {
  test_data d;
  make_data(&d, 40, 16, 5, 21);
  dml_batch db = dense_batch(&d), cb = csr_batch(&d);
  dml_model *m = make_model(DML_MODEL_MLP, 16, 5, "12", 22);
  /* 40 rows with max_batch 16: evaluation runs in 3 chunks. */
  double l1, l2;
  int c1, c2;
  T_OK(dml_model_evaluate(m, &db, &l1, &c1, NULL, NULL));
  T_OK(dml_model_evaluate(m, &cb, &l2, &c2, NULL, NULL));
  T_NEAR(l1, l2, 1e-4);
  T_EQ_INT(c1, c2);
  /* Chunked evaluation equals the sum over single-batch forward_backward calls. */
  double ls = 0;
  int cs = 0;
  for (int r0 = 0; r0 < 40; r0 += 10) {
    dml_batch part = {.n = 10, .dim = 16, .x = d.x + r0 * 16, .y = d.y + r0};
    float l;
    int c;
    T_OK(dml_model_forward_backward(m, &part, &l, &c, NULL, NULL, NULL));
    ls += (double)l * 10;
    cs += c;
  }
  T_NEAR(ls, l1, 1e-3);
  T_EQ_INT(cs, c1);
  float probs[40 * 5];
  T_OK(dml_model_predict_proba(m, &db, probs, NULL));
  for (int i = 0; i < 40; i++) {
    double s = 0;
    for (int k = 0; k < 5; k++) s += probs[i * 5 + k];
    T_NEAR(s, 1.0, 1e-5);
  }
  float scores[40];
  dml_err err = {0};
  T_EQ_INT(dml_model_evaluate(m, &db, NULL, NULL, scores, &err), DML_EINVAL);
  dml_model_free(m);

  /* Two-class softmax: scores are P(class 1) and match predict_proba. */
  make_data(&d, 20, 6, 2, 23);
  db = dense_batch(&d);
  m = make_model(DML_MODEL_SOFTMAX, 6, 2, NULL, 24);
  T_OK(dml_model_evaluate(m, &db, NULL, NULL, scores, NULL));
  T_OK(dml_model_predict_proba(m, &db, probs, NULL));
  for (int i = 0; i < 20; i++) T_NEAR(scores[i], probs[2 * i + 1], 1e-6);
  dml_model_free(m);
}

static void test_validation(void) {
  test_data d;
  make_data(&d, 20, 8, 3, 31);
  dml_model *m = make_model(DML_MODEL_SOFTMAX, 8, 3, NULL, 1);
  dml_err err = {0};
  dml_batch b = dense_batch(&d);
  T_EQ_INT(dml_model_forward_backward(m, &b, NULL, NULL, NULL, NULL, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "max_batch 16");
  b.n = 5;
  d.y[3] = 3;
  T_EQ_INT(dml_model_forward_backward(m, &b, NULL, NULL, NULL, NULL, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "row 3: label 3 outside 0..2");
  d.y[3] = 0;
  b.dim = 7;
  T_EQ_INT(dml_model_forward_backward(m, &b, NULL, NULL, NULL, NULL, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "model expects 8");
  dml_batch c = csr_batch(&d);
  c.n = 5;
  d.indices[d.indptr[2]] = 8;
  T_EQ_INT(dml_model_forward_backward(m, &c, NULL, NULL, NULL, NULL, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "row 2: feature index 8");
  dml_model_free(m);

  dml_model_config cfg;
  dml_model_config_init(&cfg, DML_MODEL_MLP, 10, 3);
  T_EQ_INT(dml_model_create(&m, &cfg, &err), DML_EINVAL); /* mlp without hidden layers */
  T_ASSERT(m == NULL);
  T_EQ_INT(dml_model_config_set_hidden(&cfg, "256,,3", &err), DML_EINVAL);
  T_EQ_INT(dml_model_config_set_hidden(&cfg, "256,0", &err), DML_ERANGE);
  T_EQ_INT(dml_model_config_set_hidden(&cfg, "256,", &err), DML_EINVAL);
  T_OK(dml_model_config_set_hidden(&cfg, "256,128", &err));
  T_EQ_INT(cfg.num_hidden, 2);
  T_EQ_INT(cfg.hidden[1], 128);
  dml_model_kind k;
  T_OK(dml_model_kind_parse("logreg", &k, NULL));
  T_EQ_INT(k, DML_MODEL_LOGREG);
  T_EQ_INT(dml_model_kind_parse("cnn", &k, &err), DML_EINVAL);
}

static void test_init(void) {
  dml_model *a = make_model(DML_MODEL_MLP, 50, 10, "40", 5);
  dml_model *b = make_model(DML_MODEL_MLP, 50, 10, "40", 5);
  dml_model *c = make_model(DML_MODEL_MLP, 50, 10, "40", 6);
  size_t np = dml_model_num_params(a);
  T_EQ_INT(memcmp(dml_model_params(a), dml_model_params(b), np * sizeof(float)), 0);
  T_ASSERT(memcmp(dml_model_params(a), dml_model_params(c), np * sizeof(float)) != 0);
  /* He-uniform bound for fc1 (fan_in 50), zero biases, and a spread that uses the range. */
  const dml_tensor_info *w = dml_model_find_tensor(a, "fc1.weight");
  const dml_tensor_info *bias = dml_model_find_tensor(a, "fc1.bias");
  const float *p = dml_model_params(a);
  float lim = sqrtf(6.0f / 50), mx = 0;
  for (size_t i = 0; i < w->count; i++) {
    T_ASSERT(fabsf(p[w->offset + i]) <= lim);
    mx = fmaxf(mx, fabsf(p[w->offset + i]));
  }
  T_ASSERT(mx > 0.9f * lim);
  for (size_t i = 0; i < bias->count; i++) T_EQ_INT(p[bias->offset + i] == 0.0f, 1);
  dml_model_free(a);
  dml_model_free(b);
  dml_model_free(c);
}

int main(void) {
  test_gradcheck();
  test_callback();
  test_accumulate();
  test_grad_scale();
  test_touched();
  test_csr_equals_dense_and_eval();
  test_validation();
  test_init();
  printf("model_test: ok\n");
  return 0;
}
