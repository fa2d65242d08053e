/* Tests of the train drivers on small generated data (fast, so they also run under the
 * sanitizers): local training learns; the same seed gives a bitwise-identical model; a run
 * stopped after an epoch and resumed from its checkpoint ends bitwise equal to an uninterrupted
 * run; a data set cut to a shard trains like the sharded whole; the trace file is valid JSON;
 * bad configurations are refused with a message. */
#include <jansson.h>
#include <unistd.h>

#include "core/internal.h"
#include "distml/data.h"
#include "distml/train.h"
#include "testutil.h"

static char dir[64];

static void make_data(dml_dataset *train, dml_dataset *test) {
  char path[128], tpath[128];
  snprintf(path, sizeof(path), "%s/train.svm", dir);
  snprintf(tpath, sizeof(tpath), "%s/test.svm", dir);
  T_OK(dml_gen_dense_multiclass_file(path, 2000, 20, 4, 7, NULL));
  T_OK(dml_gen_dense_multiclass_file(tpath, 500, 20, 4, 7, NULL));
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_features = 20;
  T_OK(dml_dataset_load(path, "libsvm", &o, train, NULL));
  T_OK(dml_dataset_load(tpath, "libsvm", &o, test, NULL));
}

static void base_config(dml_train_config *c) {
  dml_train_config_init(c);
  dml_model_config_init(&c->model, DML_MODEL_MLP, 0, 0);
  c->model.num_hidden = 1;
  c->model.hidden[0] = 16;
  dml_optim_config_init(&c->optim, DML_OPT_ADAM);
  c->optim.lr = 0.01f;
  c->epochs = 4;
  c->batch = 32;
  c->lr_cosine = 1;
}

static int files_equal(const char *a, const char *b) {
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "cmp -s %s %s", a, b);
  return system(cmd) == 0;
}

int main(void) {
  snprintf(dir, sizeof(dir), "/tmp/distml_train_test_XXXXXX");
  T_ASSERT(mkdtemp(dir) != NULL);
  dml_dataset train = {0}, test = {0};
  make_data(&train, &test);
  dml_err e = {0};
  dml_train_result r1, r2;
  char m1[128], m2[128], m3[128], ck[128], trace[128];
  snprintf(m1, sizeof(m1), "%s/a.safetensors", dir);
  snprintf(m2, sizeof(m2), "%s/b.safetensors", dir);
  snprintf(m3, sizeof(m3), "%s/c.safetensors", dir);
  snprintf(ck, sizeof(ck), "%s/ck", dir);
  snprintf(trace, sizeof(trace), "%s/trace.json", dir);

  /* Learns, and is deterministic. */
  dml_train_config c;
  base_config(&c);
  c.save_path = m1;
  c.trace_path = trace;
  T_OK(dml_train_run(&c, &train, &test, NULL, &r1, &e));
  T_ASSERT(r1.test_accuracy > 0.8); /* 4 well-separated blobs: chance is 0.25 */
  T_EQ_INT(r1.epochs_done, 4);
  T_EQ_INT(r1.steps, 4 * (2000 / 32));
  T_ASSERT(r1.samples_per_s > 0 && r1.wall_s > 0);
  base_config(&c);
  c.save_path = m2;
  T_OK(dml_train_run(&c, &train, &test, NULL, &r2, &e));
  T_ASSERT(files_equal(m1, m2));
  T_EQ_INT(r1.test_accuracy == r2.test_accuracy, 1);

  /* The trace is JSON with events. */
  json_error_t je;
  json_t *tr = json_load_file(trace, 0, &je);
  T_ASSERT(tr != NULL);
  T_ASSERT(json_array_size(json_object_get(tr, "traceEvents")) > 100);
  json_decref(tr);

  /* Stop after epoch 2 (checkpointing every epoch), resume, compare with the uninterrupted run. */
  base_config(&c);
  c.checkpoint_dir = ck;
  c.stop_after_epoch = 2;
  T_EQ_INT(dml_train_run(&c, &train, &test, NULL, &r2, &e), DML_ECANCELED);
  base_config(&c);
  c.checkpoint_dir = ck;
  c.resume = 1;
  c.save_path = m3;
  T_OK(dml_train_run(&c, &train, &test, NULL, &r2, &e));
  T_EQ_INT(r2.resumed_from_epoch, 2);
  T_ASSERT(files_equal(m1, m3));

  /* A data set cut to rank 1 of 2's shard is what the trainer would use of the whole. */
  dml_dataset part = {0};
  char path[128];
  snprintf(path, sizeof(path), "%s/train.svm", dir);
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_features = 20;
  T_OK(dml_dataset_load(path, "libsvm", &o, &part, NULL));
  int64_t b, en;
  T_OK(dml_shard_range(part.n, 1, 2, &b, &en));
  T_OK(dml_dataset_keep_range(&part, (int)b, (int)en, &e));
  T_EQ_INT(part.n, en - b);
  T_EQ_INT(part.y[0], train.y[b]);
  T_EQ_INT(part.indptr[part.n], train.indptr[en] - train.indptr[b]);
  T_EQ_INT(dml_dataset_keep_range(&part, 5, 2, &e), DML_ERANGE);
  dml_dataset_free(&part);

  /* Bad configurations. */
  base_config(&c);
  c.batch = 0;
  T_EQ_INT(dml_train_run(&c, &train, &test, NULL, &r2, &e), DML_EINVAL);
  base_config(&c);
  c.batch = 4000; /* more than the data set */
  T_EQ_INT(dml_train_run(&c, &train, &test, NULL, &r2, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "too few");
  base_config(&c);
  c.strategy = DML_STRATEGY_ALLREDUCE;
  T_EQ_INT(dml_train_run(&c, &train, &test, NULL, &r2, &e), DML_EINVAL);
  base_config(&c);
  c.model.in_dim = 21;
  T_EQ_INT(dml_train_run(&c, &train, &test, NULL, &r2, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "features");

  dml_dataset_free(&train);
  dml_dataset_free(&test);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  T_EQ_INT(system(cmd), 0);
  printf("train_test ok\n");
  return 0;
}
