/* End-to-end check of the ml API with a plain training loop (gather -> forward_backward ->
 * optimizer step), the loop the train layer builds on: on Fashion-MNIST, softmax regression
 * reaches >= 0.84 and the 784-256-10 MLP >= 0.88 test accuracy in 10 epochs; on a synthetic sparse
 * binary set, logistic regression with FTRL sparse steps (touched coordinates only) reaches a
 * high AUC. Prints samples/s for information only (nothing asserts a time).
 * DISTML_ML_EPOCHS overrides the epoch count, DISTML_ML_OPT / DISTML_ML_LR the MLP optimizer and
 * DISTML_ML_FTRL_LR / DISTML_ML_BETA the FTRL settings, DISTML_ML_ONLY_SPARSE skips Fashion-MNIST,
 * for experiments (the accuracy checks need 10 epochs).
 * test-labels: slow */
#include "distml/data.h"
#include "distml/ml.h"
#include "testutil.h"

#include <cblas.h>
#include <unistd.h>

typedef struct run_result {
  double test_acc, test_loss, samples_per_s;
} run_result;

static run_result train(const dml_dataset *tr, const dml_dataset *te, dml_model_config *mc,
                        const dml_optim_config *oc, int epochs, int batch) {
  dml_err err = {0};
  dml_model *m = NULL;
  dml_optim *o = NULL;
  mc->max_batch = batch;
  if (dml_model_create(&m, mc, &err)) T_FAIL("%s", err.msg);
  if (dml_optim_create(&o, oc, dml_model_num_params(m), &err)) T_FAIL("%s", err.msg);
  uint32_t *order = malloc((size_t)tr->n * sizeof(uint32_t));
  dml_batch_buf buf = {0};
  run_result r = {0};
  double compute_s = 0;
  uint64_t samples = 0;
  /* Dense models: learning rate decays linearly to lr/epochs over the run (measured: the last
   * epochs' accuracy then stops jumping around; a constant lr ends ~0.5-1 point lower). */
  const float lr0 = oc->lr;
  const int decay = mc->kind != DML_MODEL_LOGREG;
  for (int e = 0; e < epochs; e++) {
    if (decay) dml_optim_set_lr(o, lr0 * (float)(epochs - e) / (float)epochs);
    dml_epoch_order(order, (size_t)tr->n, 42, (uint64_t)e);
    double loss_sum = 0;
    int steps = 0;
    for (int s = 0; s + batch <= tr->n; s += batch) {
      dml_batch b;
      if (dml_dataset_gather(tr, order + s, batch, &buf, &b, &err)) T_FAIL("%s", err.msg);
      double t0 = dml_now_s();
      float loss;
      if (dml_model_forward_backward(m, &b, &loss, NULL, NULL, NULL, &err)) T_FAIL("%s", err.msg);
      if (mc->kind == DML_MODEL_LOGREG) {
        const uint32_t *idx;
        size_t nidx;
        T_OK(dml_model_touched(m, &idx, &nidx));
        dml_optim_begin_step(o);
        T_OK(dml_optim_update_sparse(o, dml_model_params(m), dml_model_grads(m), idx, nidx, 0));
      } else {
        dml_optim_step(o, dml_model_params(m), dml_model_grads(m));
      }
      compute_s += dml_now_s() - t0;
      samples += (uint64_t)batch;
      loss_sum += loss;
      steps++;
    }
    dml_batch tb = {.n = te->n,
                    .dim = te->dim,
                    .x = te->x,
                    .indptr = te->indptr,
                    .indices = te->indices,
                    .values = te->values,
                    .y = te->y};
    double tl;
    int tc;
    if (dml_model_evaluate(m, &tb, &tl, &tc, NULL, &err)) T_FAIL("%s", err.msg);
    r.test_acc = dml_metric_accuracy((uint64_t)tc, (uint64_t)te->n);
    r.test_loss = tl / te->n;
    printf("  %s epoch %d: train loss %.4f  test loss %.4f  test acc %.4f\n",
           dml_model_kind_name(mc->kind), e + 1, loss_sum / steps, r.test_loss, r.test_acc);
  }
  r.samples_per_s = samples / compute_s;
  if (mc->kind == DML_MODEL_LOGREG) {
    float *scores = malloc((size_t)te->n * sizeof(float));
    dml_batch tb = {.n = te->n,
                    .dim = te->dim,
                    .indptr = te->indptr,
                    .indices = te->indices,
                    .values = te->values,
                    .y = te->y};
    double auc;
    T_OK(dml_model_evaluate(m, &tb, NULL, NULL, scores, NULL));
    T_OK(dml_metric_auc(scores, te->y, (size_t)te->n, &auc, NULL));
    printf("  logreg test AUC %.4f\n", auc);
    r.test_loss = auc; /* reported through test_loss for the caller's check */
    free(scores);
  }
  free(order);
  dml_batch_buf_free(&buf);
  dml_model_free(m);
  dml_optim_free(o);
  return r;
}

static int env_int(const char *name, int def) {
  const char *s = getenv(name);
  return s ? atoi(s) : def;
}

static void test_fashion(void) {
  dml_dataset tr = {0}, te = {0};
  dml_err err = {0};
  if (dml_dataset_load("fashion-mnist:train", NULL, NULL, &tr, &err) != 0 ||
      dml_dataset_load("fashion-mnist:test", NULL, NULL, &te, &err) != 0)
    T_FAIL("Fashion-MNIST not available (apt-get install dataset-fashion-mnist): %s", err.msg);
  int epochs = env_int("DISTML_ML_EPOCHS", 10);

  dml_model_config mc;
  dml_optim_config oc;
  dml_model_config_init(&mc, DML_MODEL_SOFTMAX, tr.dim, 10);
  dml_optim_config_init(&oc, DML_OPT_ADAM);
  oc.lr = 2e-3f;
  run_result r = train(&tr, &te, &mc, &oc, epochs, 64);
  printf("softmax (adam lr 0.002, linear decay): test acc %.4f, %.0f samples/s (compute only)\n",
         r.test_acc, r.samples_per_s);
  if (epochs >= 10) T_ASSERT(r.test_acc >= 0.84);

  dml_model_config_init(&mc, DML_MODEL_MLP, tr.dim, 10);
  T_OK(dml_model_config_set_hidden(&mc, "256", NULL));
  const char *opt = getenv("DISTML_ML_OPT");
  dml_optim_kind k = DML_OPT_ADAM;
  if (opt) T_OK(dml_optim_kind_parse(opt, &k, NULL));
  dml_optim_config_init(&oc, k); /* adam 1e-3; momentum 0.9 lr 0.05 */
  if (getenv("DISTML_ML_LR")) oc.lr = (float)atof(getenv("DISTML_ML_LR"));
  r = train(&tr, &te, &mc, &oc, epochs, 64);
  printf("mlp 784-256-10 (%s lr %g, linear decay): test acc %.4f, %.0f samples/s (compute only)\n",
         dml_optim_kind_name(k), (double)oc.lr, r.test_acc, r.samples_per_s);
  if (epochs >= 10) T_ASSERT(r.test_acc >= 0.88);
  dml_dataset_free(&tr);
  dml_dataset_free(&te);
}

static void test_sparse_logreg(void) {
  const int NFEAT = env_int("DISTML_ML_FEATURES", 2000), NTRAIN = env_int("DISTML_ML_ROWS", 40000);
  const int NROWS = NTRAIN + 4000;
  char path[] = "/tmp/distml_ml_sparse_XXXXXX";
  int fd = mkstemp(path);
  T_ASSERT(fd >= 0);
  close(fd);
  dml_err err = {0};
  /* NROWS rows over NFEAT features (skewed: frequent and rare ones), 20 non-zeros per row. */
  float *planted = malloc((size_t)NFEAT * sizeof(float));
  if (dml_gen_sparse_binary_file(path, NROWS, NFEAT, 20, 9, planted, &err)) T_FAIL("%s", err.msg);
  dml_data_opts opts;
  dml_data_opts_init(&opts);
  opts.num_features = NFEAT;
  dml_dataset all = {0};
  if (dml_read_libsvm(path, &opts, &all, &err)) T_FAIL("%s", err.msg);
  unlink(path);
  /* the first NTRAIN rows train, the last 4000 test (views into the same arrays) */
  dml_dataset tr = all, te = all;
  tr.n = NTRAIN;
  te.n = all.n - NTRAIN;
  te.indptr = all.indptr + NTRAIN;
  te.y = all.y + NTRAIN;
  /* te's indptr does not start at 0: rebase into a copy */
  uint64_t *ip = malloc(((size_t)te.n + 1) * sizeof(uint64_t));
  for (int i = 0; i <= te.n; i++) ip[i] = te.indptr[i] - te.indptr[0];
  te.indices = all.indices + te.indptr[0];
  te.values = all.values + te.indptr[0];
  te.indptr = ip;

  dml_model_config mc;
  dml_optim_config oc;
  dml_model_config_init(&mc, DML_MODEL_LOGREG, NFEAT, 2);
  dml_optim_config_init(&oc, DML_OPT_FTRL);
  oc.ftrl_l1 = 0.001f;
  if (getenv("DISTML_ML_FTRL_LR")) oc.lr = (float)atof(getenv("DISTML_ML_FTRL_LR"));
  if (getenv("DISTML_ML_BETA")) oc.ftrl_beta = (float)atof(getenv("DISTML_ML_BETA"));
  run_result r = train(&tr, &te, &mc, &oc, 3, 64);
  /* The labels are noisy draws from sigmoid(planted . x): the planted weights' own AUC on the test
   * rows is the ceiling a learned model can approach. */
  float *oracle = malloc((size_t)te.n * sizeof(float));
  for (int i = 0; i < te.n; i++) {
    double z = 0;
    for (uint64_t k = te.indptr[i]; k < te.indptr[i + 1]; k++)
      z += planted[te.indices[k]] * te.values[k];
    oracle[i] = (float)z;
  }
  double oracle_auc;
  T_OK(dml_metric_auc(oracle, te.y, (size_t)te.n, &oracle_auc, NULL));
  printf(
      "sparse logreg (ftrl): test acc %.4f, AUC %.4f (planted weights: %.4f), %.0f samples/s "
      "(compute only)\n",
      r.test_acc, r.test_loss, oracle_auc, r.samples_per_s);
  T_ASSERT(r.test_loss > 0.6);
  T_ASSERT(r.test_loss >= oracle_auc - 0.05);
  free(oracle);
  free(planted);
  free(ip);
  dml_dataset_free(&all);
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* One BLAS thread, as the benchmark runs: on this shared 2-core machine more threads only spin.
   */
  openblas_set_num_threads(1);
  printf("OpenBLAS core: %s\n", openblas_get_corename());
  test_sparse_logreg();
  if (getenv("DISTML_ML_ONLY_SPARSE")) return 0;
  test_fashion();
  printf("test_ml_fashion: ok\n");
  return 0;
}
