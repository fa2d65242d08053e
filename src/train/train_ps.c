/* The parameter-server strategy's training loop: workers pull the coordinates a batch touches,
 * compute the logistic-regression gradient and push it to the servers, which apply the optimizer
 * (FTRL by default) under BSP, SSP or ASP. A worker gathers its batches itself, or with
 * cfg->loader_threads > 0 takes them from the input pipeline (task.h; CSR rows for logreg, dense
 * rows with --augment for softmax/MLP) prepared ahead
 * on its own threads. The dense models (softmax, MLP) go through the dense API: the whole flat
 * parameter buffer is pulled and its gradient pushed each iteration. It is not the server or the
 * wire protocol (src/ps). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"
#include "train/train_ps.h"

/* Above the ps layer's tags (src/ps/ps_internal.h: DML_TAG_RESERVED + 0x09100000..3). */
#define PS_TAG_RESULT (DML_TAG_RESERVED + 0x09100010)

typedef struct ps_result_wire {
  double test_accuracy, test_loss, test_auc, train_loss, train_accuracy, samples_per_s, train_s;
  double steps, epochs_done, input_stall_s, input_stall_pct;
} ps_result_wire;

/* One --metrics line per epoch, written by the first worker: loss and accuracy over its own
 * rows, samples/s estimated for all workers from its own rate, and the input stall. */
static void ps_metrics_line(dml_jsonl *j, int epoch, uint64_t step, double loss, double acc,
                            double sps, double epoch_s, const dml_train_result *r, int piped) {
  dml_jsonl_begin(j);
  dml_jsonl_add_int(j, "epoch", epoch);
  dml_jsonl_add_int(j, "step", (int64_t)step);
  dml_jsonl_add_double(j, "loss", loss);
  dml_jsonl_add_double(j, "accuracy", acc);
  dml_jsonl_add_double(j, "samples_per_s", sps);
  dml_jsonl_add_double(j, "epoch_s", epoch_s);
  if (piped) {
    dml_jsonl_add_double(j, "input_stall_s", r->input_stall_s);
    dml_jsonl_add_double(j, "input_stall_pct", r->input_stall_pct);
  }
  dml_jsonl_end(j);
}

/* The training figures of a worker's run (rows: of its last epoch; samples/s estimated for all
 * W workers from its own rate). */
static void train_totals(dml_train_result *res, uint64_t steps, double t_train, double loss_sum,
                         uint64_t correct, uint64_t rows, int epochs, int W) {
  res->steps = steps;
  res->train_s = t_train;
  res->train_loss = rows ? loss_sum / (double)rows : NAN;
  res->train_accuracy = rows ? (double)correct / (double)rows : NAN;
  res->samples_per_s = t_train > 0 ? (double)rows * epochs * W / t_train : 0;
}

static void result_to_wire(const dml_train_result *res, ps_result_wire *w) {
  *w = (ps_result_wire){res->test_accuracy, res->test_loss,      res->test_auc,
                        res->train_loss,    res->train_accuracy, res->samples_per_s,
                        res->train_s,       (double)res->steps,  (double)res->epochs_done,
                        res->input_stall_s, res->input_stall_pct};
}

/* The first worker's last step, once it has the final model and has left the job. */
static int evaluate_and_save(const dml_train_config *cfg, dml_model *m, const dml_dataset *test,
                             dml_train_result *res, dml_err *err) {
  int rc = 0;
  if (test != NULL)
    rc = dml_evaluate(m, test, NULL, &res->test_accuracy, &res->test_loss, &res->test_auc, err);
  if (rc == 0 && cfg->save_path != NULL)
    rc = dml_model_save(m, cfg->save_path, NULL, 0, NULL, 0, err);
  return rc;
}

/* The first worker sends the result to report_to on the job's current communicator. */
static int send_result(dml_ps *ps, int report_to, const dml_train_result *res, dml_err *err) {
  ps_result_wire w;
  result_to_wire(res, &w);
  dml_comm *pc = dml_ps_comm(ps);
  int rc = dml_comm_send(pc, report_to, PS_TAG_RESULT, &w, sizeof w);
  if (rc != 0)
    dml_err_set(err, rc, "ps train: sending the result to rank %d: %s", report_to,
                dml_comm_errmsg(pc));
  return rc;
}

/* The dense model's flat parameter buffer, registered with the servers as one tensor (spread
 * over them in runs of whole chunks): *nparams gets its size, from the training set's shape. */
static int dense_params(const dml_train_config *cfg, const dml_dataset *train, uint64_t *nparams,
                        dml_err *err) {
  if (train == NULL)
    return dml_err_set(err, DML_EINVAL,
                       "ps train: a dense model needs the training set's shape on every process");
  dml_model_config mc = cfg->model;
  if (mc.in_dim == 0) mc.in_dim = train->dim;
  if (mc.num_classes == 0) mc.num_classes = train->num_classes;
  mc.max_batch = 1;
  dml_model *m = NULL;
  int rc = dml_model_create(&m, &mc, err);
  if (rc == 0) *nparams = dml_model_num_params(m);
  dml_model_free(m);
  return rc;
}

static void log_dense_load(const dml_ps_config *pcfg, int n, uint64_t nparams) {
  int S = dml_ps_num_servers(pcfg, n);
  uint64_t *bytes = dml__calloc((size_t)S, sizeof(uint64_t));
  dml_err e;
  if (bytes == NULL || dml_ps_dense_layout(pcfg, n, NULL, bytes, &e) != 0) {
    dml__free(bytes);
    return;
  }
  char line[1024];
  size_t off = 0;
  for (int k = 0; k < S && off < sizeof line - 64; k++)
    off += (size_t)snprintf(line + off, sizeof line - off, "%sserver %d %llu bytes", k ? ", " : "",
                            k, (unsigned long long)bytes[k]);
  dml__free(bytes);
  dml_log(DML_LOG_INFO, "ps: load per server for %llu dense parameters: %s",
          (unsigned long long)nparams, line);
}

/* The bytes each server will hold if every one of the model's nkeys sparse keys is touched
 * (hashed into virtual ranges, docs/ps.md), printed once at start by the first worker. */
static void log_server_load(const dml_ps_config *pcfg, int n, uint64_t nkeys) {
  int S = dml_ps_num_servers(pcfg, n);
  uint64_t *bytes = dml__calloc((size_t)S, sizeof(uint64_t));
  char line[1024];
  if (bytes == NULL) return;
  dml_ps_sparse_load(pcfg, n, nkeys, bytes);
  size_t off = 0;
  for (int k = 0; k < S && off < sizeof line - 64; k++)
    off += (size_t)snprintf(line + off, sizeof line - off, "%sserver %d %llu bytes (%.1f%%)",
                            k ? ", " : "", k, (unsigned long long)bytes[k],
                            100.0 * (double)bytes[k] / (double)(nkeys * sizeof(float)));
  dml_log(DML_LOG_INFO, "ps: load per server for %llu sparse keys: %s", (unsigned long long)nkeys,
          line);
  dml__free(bytes);
}

/* A worker's input: its shard of the training set, read in a seeded order per epoch, or through
 * the input pipeline (--loader-threads, --augment). Both PS workers read it alike. */
typedef struct worker_input {
  const dml_dataset *train;
  int64_t b0, shard_n; /* the shard: rows [b0, b0 + shard_n) */
  uint64_t seed;       /* of this worker's epoch orders */
  uint32_t *order;
  dml_batch_buf bbuf;
  dml__loader *loader;
  dml_pipe *pipe; /* NULL: no pipeline */
  dml_pipe_batch held;
  int holding;
  dml_pipe_stats ps0; /* the pipeline's counters at the epoch's start */
} worker_input;

static int input_open(worker_input *in, const dml_train_config *cfg, const dml_dataset *train,
                      int widx, int W, int local_batch, dml_err *err) {
  memset(in, 0, sizeof(*in));
  in->train = train;
  in->seed = cfg->seed * 1000003ull + (uint64_t)widx;
  int64_t b1 = 0;
  int rc = dml_shard_range(train->n, widx, W, &in->b0, &b1);
  if (rc) return dml_err_set(err, rc, "ps train: sharding %d rows over %d workers", train->n, W);
  in->shard_n = b1 - in->b0;
  if ((in->order = dml__malloc((size_t)(in->shard_n + 1) * sizeof(uint32_t))) == NULL)
    return dml_err_set(err, DML_ENOMEM, "ps train: out of memory");
  if (cfg->loader_threads > 0 || cfg->augment.flags) {
    /* The same number of batches per epoch as without it (the last one partial). */
    if ((rc = dml__loader_create(cfg, train, in->b0, in->shard_n, local_batch, in->seed, 0,
                                 &in->loader, err)) != 0)
      return rc;
    in->pipe = dml__loader_pipe(in->loader);
  }
  return 0;
}

static int input_epoch(worker_input *in, int epoch, dml_err *err) {
  if (in->pipe != NULL)
    return dml__train_pipe_epoch(in->pipe, epoch, &in->holding, &in->ps0, "ps train: ", err);
  dml_epoch_order(in->order, (size_t)in->shard_n, in->seed, (uint64_t)epoch);
  for (int64_t i = 0; i < in->shard_n; i++) in->order[i] += (uint32_t)in->b0;
  return 0;
}

/* The epoch's batch of cnt rows starting at off (the pipeline's next batch: the same size). */
static int input_batch(worker_input *in, int off, int cnt, dml_batch *b, dml_err *err) {
  if (in->pipe != NULL)
    return dml__train_next_batch(in->pipe, &in->held, &in->holding, in->train->dim, b,
                                 "ps train: ", err);
  return dml_dataset_gather(in->train, in->order + off, cnt, &in->bbuf, b, err);
}

static void input_epoch_end(worker_input *in, double epoch_s, dml_train_result *res) {
  if (in->pipe != NULL)
    dml__train_pipe_epoch_end(in->pipe, &in->held, &in->holding, &in->ps0, epoch_s, res);
}

/* An iteration sends its push and its clock without waiting; the next pull waits for its own
 * reply and then for the push's acknowledgement, which each server sent before that reply (one
 * ordered stream per server): one round trip per iteration instead of two, same consistency
 * (the pull still carries the advanced clock). 0 ts: nothing pending. */
static int wait_push(dml_ps *ps, uint64_t *ts) {
  uint64_t t = *ts;
  *ts = 0;
  return t ? dml_ps_wait(ps, t) : 0;
}

static void input_close(worker_input *in) {
  if (in->pipe != NULL && in->holding) dml_pipe_release(in->pipe, &in->held);
  dml__loader_free(in->loader);
  dml_batch_buf_free(&in->bbuf);
  dml__free(in->order);
}

/* Dense models (softmax, MLP): the servers hold the model's whole flat parameter buffer as a
 * registered dense tensor (spread over them in runs of whole chunks) of DELTAS from the initial
 * parameters, which every worker computes identically from the seed: a worker's parameters are
 * init + pulled delta. Each iteration pulls the delta, runs forward/backward on batch / W rows,
 * pushes the gradient (the servers apply cfg->optim; under BSP the W pushes of a clock are
 * averaged into one step: the local run's step on the global batch) and advances the clock.
 * Weight decay, if any, acts on the delta. */
static int run_dense_worker(const dml_train_config *cfg, const dml_dataset *train,
                            const dml_dataset *test, dml_comm *comm, const dml_ps_config *pcfg,
                            int first, int report_to, dml_ps_server *local, dml_train_result *res,
                            dml_err *err) {
  int n = dml_comm_size(comm), rank = dml_comm_rank(comm);
  int W = dml_ps_num_workers(pcfg, n);
  int widx = pcfg->colocated ? rank : rank - pcfg->num_servers;
  if (train == NULL || train->n == 0)
    return dml_err_set(err, DML_EINVAL, "ps train: workers need the training set");
  dml_model_config mc = cfg->model;
  if (mc.in_dim == 0) mc.in_dim = train->dim;
  if (mc.num_classes == 0) mc.num_classes = train->num_classes;
  int local_batch = cfg->batch / W > 0 ? cfg->batch / W : 1;
  if (mc.max_batch < local_batch) mc.max_batch = local_batch;
  dml_model *m = NULL;
  dml_ps *ps = NULL;
  float *init = NULL, *delta = NULL;
  dml_jsonl metrics = {0};
  int metrics_open = 0;
  worker_input in;
  int rc = input_open(&in, cfg, train, widx, W, local_batch, err);
  if (rc) goto out;
  if ((rc = dml_model_create(&m, &mc, err)) != 0) goto out;
  size_t P = dml_model_num_params(m);
  float *params = dml_model_params(m), *grads = dml_model_grads(m);
  init = dml__malloc(P * sizeof(float));
  delta = dml__malloc(P * sizeof(float));
  if (!init || !delta) {
    rc = dml_err_set(err, DML_ENOMEM, "ps train: out of memory");
    goto out;
  }
  memcpy(init, params, P * sizeof(float));
  if (first && cfg->metrics_path != NULL) {
    if ((rc = dml_jsonl_open(&metrics, cfg->metrics_path, err)) != 0) goto out;
    metrics_open = 1;
  }
  if ((rc = dml_ps_create(&ps, comm, pcfg, err)) != 0) goto out;
  if (local && (rc = dml_ps_serve(ps, local, err)) != 0) goto out;
  if (first) log_dense_load(pcfg, n, P);
  double t_train = 0, loss_sum = 0;
  uint64_t push_ts = 0; /* the last iteration's push, not waited for yet (wait_push) */
  uint64_t steps = 0, correct = 0, rows = 0;
  int shard_n = (int)in.shard_n;
  for (int epoch = 0; epoch < cfg->epochs; epoch++) {
    if ((rc = input_epoch(&in, epoch, err)) != 0) goto out;
    loss_sum = 0;
    correct = rows = 0;
    double t0 = dml_now_s();
    for (int off = 0; off < shard_n; off += local_batch) {
      int cnt = DML__MIN(local_batch, shard_n - off);
      dml_batch b;
      if ((rc = input_batch(&in, off, cnt, &b, err)) != 0) goto out;
      cnt = b.n;
      uint64_t ts;
      if ((rc = dml_ps_pull_dense(ps, 0, delta, P, &ts)) != 0 || (rc = dml_ps_wait(ps, ts)) != 0 ||
          (rc = wait_push(ps, &push_ts)) != 0)
        goto ps_fail;
      for (size_t k = 0; k < P; k++) params[k] = init[k] + delta[k];
      float loss;
      int ok;
      if ((rc = dml_model_forward_backward(m, &b, &loss, &ok, NULL, NULL, err)) != 0) goto out;
      if ((rc = dml_ps_push_dense(ps, 0, grads, P, &push_ts)) != 0) goto ps_fail;
      if ((rc = dml_ps_clock(ps)) != 0) goto ps_fail;
      loss_sum += (double)loss * cnt;
      correct += (uint64_t)ok;
      rows += (uint64_t)cnt;
      steps++;
    }
    double epoch_s = dml_now_s() - t0;
    t_train += epoch_s;
    res->epochs_done = epoch + 1;
    input_epoch_end(&in, epoch_s, res);
    if (metrics_open)
      ps_metrics_line(&metrics, epoch + 1, steps, rows ? loss_sum / (double)rows : NAN,
                      rows ? (double)correct / (double)rows : NAN,
                      epoch_s > 0 ? (double)rows * W / epoch_s : 0, epoch_s, res, in.pipe != NULL);
  }
  train_totals(res, steps, t_train, loss_sum, correct, rows, cfg->epochs, W);
  if ((rc = wait_push(ps, &push_ts)) != 0) goto ps_fail;
  if (first) {
    uint64_t ts;
    if ((rc = dml_ps_pull_dense_final(ps, 0, delta, P, &ts)) != 0 ||
        (rc = dml_ps_wait(ps, ts)) != 0)
      goto ps_fail;
    for (size_t k = 0; k < P; k++) params[k] = init[k] + delta[k];
  }
  /* leave before evaluating: nobody waits on the first worker's evaluation and save */
  if ((rc = dml_ps_finish(ps)) != 0) goto ps_fail;
  if (first && (rc = evaluate_and_save(cfg, m, test, res, err)) != 0) goto out;
  if (first && report_to >= 0) rc = send_result(ps, report_to, res, err);
  goto out;
ps_fail:
  dml_err_set(err, rc, "%s", dml_ps_errmsg(ps));
out:
  input_close(&in);
  if (metrics_open) dml_jsonl_close(&metrics);
  dml_ps_free(ps);
  dml__free(init);
  dml__free(delta);
  dml_model_free(m);
  return rc;
}

/* report_to: the rank the first worker sends the result to (-1: none); local: the shard of this
 * process when the worker serves it itself (colocated, dml_ps_serve), else NULL (run_dense_worker
 * takes both alike). The worker leaves in
 * order (dml_ps_finish) and sends the result on the client's communicator, which is the job's
 * current one after a re-form. */
static int run_worker(const dml_train_config *cfg, const dml_dataset *train,
                      const dml_dataset *test, dml_comm *comm, const dml_ps_config *pcfg, int first,
                      int report_to, dml_ps_server *local, dml_train_result *res, dml_err *err) {
  int n = dml_comm_size(comm), rank = dml_comm_rank(comm);
  int W = dml_ps_num_workers(pcfg, n);
  int widx = pcfg->colocated ? rank : rank - pcfg->num_servers;
  if (train == NULL || train->indptr == NULL)
    return dml_err_set(err, DML_EUNSUPPORTED,
                       "ps train: workers need sparse (LIBSVM) training data");
  if (cfg->augment.flags)
    return dml_err_set(err, DML_EINVAL,
                       "ps train: --augment shifts and flips images; %s is sparse (CSR) data, "
                       "which has no pixels: drop --augment",
                       train->name);
  dml_model_config mc = cfg->model;
  if (mc.in_dim == 0) mc.in_dim = train->dim;
  int local_batch = cfg->batch / W > 0 ? cfg->batch / W : 1;
  if (mc.max_batch < local_batch) mc.max_batch = local_batch;
  dml_model *m = NULL;
  dml_ps *ps = NULL;
  uint64_t *keys = NULL;
  float *vals = NULL;
  dml_jsonl metrics = {0};
  int metrics_open = 0;
  worker_input in; /* (--augment was refused above: the pipeline only copies CSR rows) */
  int rc = input_open(&in, cfg, train, widx, W, local_batch, err);
  if (rc) goto out;
  if ((rc = dml_model_create(&m, &mc, err)) != 0) goto out;
  size_t nk_max = (size_t)mc.in_dim + 1;
  keys = dml__malloc(nk_max * sizeof(uint64_t));
  vals = dml__malloc(nk_max * sizeof(float));
  if (!keys || !vals) {
    rc = dml_err_set(err, DML_ENOMEM, "ps train: out of memory");
    goto out;
  }
  if (first && cfg->metrics_path != NULL) {
    if ((rc = dml_jsonl_open(&metrics, cfg->metrics_path, err)) != 0) goto out;
    metrics_open = 1;
  }
  if ((rc = dml_ps_create(&ps, comm, pcfg, err)) != 0) goto out;
  if (local && (rc = dml_ps_serve(ps, local, err)) != 0) goto out;
  if (first) log_server_load(pcfg, n, (uint64_t)nk_max);
  float *params = dml_model_params(m), *grads = dml_model_grads(m);
  double t_train = 0, loss_sum = 0;
  uint64_t push_ts = 0; /* the last iteration's push, not waited for yet (wait_push) */
  uint64_t steps = 0, correct = 0, rows = 0;
  int shard_n = (int)in.shard_n;
  for (int epoch = 0; epoch < cfg->epochs; epoch++) {
    if ((rc = input_epoch(&in, epoch, err)) != 0) goto out;
    loss_sum = 0;
    correct = rows = 0;
    double t0 = dml_now_s();
    for (int off = 0; off < shard_n; off += local_batch) {
      int cnt = DML__MIN(local_batch, shard_n - off);
      dml_batch b;
      if ((rc = input_batch(&in, off, cnt, &b, err)) != 0) goto out;
      const uint32_t *idx;
      size_t nk;
      if ((rc = dml_model_batch_keys(m, &b, &idx, &nk, err)) != 0) goto out;
      for (size_t k = 0; k < nk; k++) keys[k] = idx[k]; /* ascending: features, then the bias */
      uint64_t ts;
      if ((rc = dml_ps_pull(ps, keys, vals, nk, &ts)) != 0 || (rc = dml_ps_wait(ps, ts)) != 0 ||
          (rc = wait_push(ps, &push_ts)) != 0)
        goto ps_fail;
      for (size_t k = 0; k < nk; k++) params[idx[k]] = vals[k];
      float loss;
      int ok;
      if ((rc = dml_model_forward_backward(m, &b, &loss, &ok, NULL, NULL, err)) != 0) goto out;
      for (size_t k = 0; k < nk; k++) vals[k] = grads[idx[k]];
      if ((rc = dml_ps_push(ps, keys, vals, nk, &push_ts)) != 0) goto ps_fail;
      dml_model_zero_grads(m);
      if ((rc = dml_ps_clock(ps)) != 0) goto ps_fail;
      loss_sum += (double)loss * cnt;
      correct += (uint64_t)ok;
      rows += (uint64_t)cnt;
      steps++;
    }
    double epoch_s = dml_now_s() - t0;
    t_train += epoch_s;
    res->epochs_done = epoch + 1;
    input_epoch_end(&in, epoch_s, res);
    if (metrics_open)
      ps_metrics_line(&metrics, epoch + 1, steps, rows ? loss_sum / (double)rows : NAN,
                      rows ? (double)correct / (double)rows : NAN,
                      epoch_s > 0 ? (double)rows * W / epoch_s : 0, epoch_s, res, in.pipe != NULL);
  }
  train_totals(res, steps, t_train, loss_sum, correct, rows, cfg->epochs, W);
  if ((rc = wait_push(ps, &push_ts)) != 0) goto ps_fail;
  if (first) {
    /* The final model: every key, once every other worker has finished or died (in requests of
     * at most DML_PS_MAX_REQUEST_KEYS keys). */
    for (size_t k = 0; k < nk_max; k++) keys[k] = k;
    for (size_t k = 0; k < nk_max; k += DML_PS_MAX_REQUEST_KEYS) {
      size_t cnt = DML__MIN(nk_max - k, (size_t)DML_PS_MAX_REQUEST_KEYS);
      uint64_t ts;
      if ((rc = dml_ps_pull_final(ps, keys + k, vals + k, cnt, &ts)) != 0 ||
          (rc = dml_ps_wait(ps, ts)) != 0)
        goto ps_fail;
    }
    memcpy(params, vals, nk_max * sizeof(float));
  }
  if ((rc = dml_ps_finish(ps)) != 0) goto ps_fail; /* before evaluating, as above */
  if (first && (rc = evaluate_and_save(cfg, m, test, res, err)) != 0) goto out;
  if (dml_ps_reforms(ps) > 0)
    dml_log(DML_LOG_INFO, "ps worker %d: finished after %d re-form%s, %llu frames resent", rank,
            dml_ps_reforms(ps), dml_ps_reforms(ps) == 1 ? "" : "s",
            (unsigned long long)dml_ps_resent_frames(ps));
  if (first && report_to >= 0) rc = send_result(ps, report_to, res, err);
  goto out;
ps_fail:
  dml_err_set(err, rc, "%s", dml_ps_errmsg(ps));
out:
  input_close(&in);
  if (metrics_open) dml_jsonl_close(&metrics);
  dml_ps_free(ps);
  dml__free(keys);
  dml__free(vals);
  dml_model_free(m);
  return rc;
}

int dml_train_ps_run(const dml_train_config *cfg, const dml_dataset *train, const dml_dataset *test,
                     dml_comm *comm, const dml_ps_config *pcfg_in, dml_train_result *res,
                     dml_err *err) {
  memset(res, 0, sizeof(*res));
  res->test_auc = NAN;
  if (comm == NULL) return dml_err_set(err, DML_EINVAL, "ps train: needs a communicator");
  int dense_model = cfg->model.kind != DML_MODEL_LOGREG;
  dml_ps_config pcfg = *pcfg_in;
  pcfg.optim = cfg->optim;
  int n = dml_comm_size(comm), rank = dml_comm_rank(comm);
  if (!pcfg.colocated && (pcfg.num_servers < 1 || pcfg.num_servers >= n))
    return dml_err_set(err, DML_EINVAL, "ps train: %d servers need at least %d processes (have %d)",
                       pcfg.num_servers, pcfg.num_servers + 1, n);
  int first_worker = pcfg.colocated ? 0 : pcfg.num_servers;
  uint64_t nparams = 0; /* a dense model's parameters: one registered tensor (outlives pcfg) */
  if (dense_model) {
    int prc = dense_params(cfg, train, &nparams, err);
    if (prc) return prc;
    pcfg.dense_sizes = &nparams;
    pcfg.num_dense = 1;
  }
  if (!pcfg.colocated && cfg->checkpoint_dir != NULL) {
    /* Recovery: servers checkpoint every checkpoint_every seconds (or checkpoint_every_clocks
     * worker clocks); a server the launcher restarted (DISTML_RESTART) reloads its shard; every
     * process re-forms the job when a peer fails. */
    const char *restart = getenv("DISTML_RESTART");
    if (mkdir(cfg->checkpoint_dir, 0755) != 0 && errno != EEXIST)
      return dml_err_set(err, DML_EIO, "ps train: cannot create %s: %s", cfg->checkpoint_dir,
                         strerror(errno));
    pcfg.checkpoint_dir = cfg->checkpoint_dir;
    if (cfg->checkpoint_every_clocks > 0) /* by clocks only */
      pcfg.checkpoint_every_clocks = (uint64_t)cfg->checkpoint_every_clocks;
    else
      pcfg.checkpoint_every_s = cfg->checkpoint_every > 0 ? cfg->checkpoint_every : 1;
    pcfg.recover = 1;
    pcfg.restore = dml_ps_is_server(&pcfg, rank) && restart != NULL && atoi(restart) > 0;
    char path[4096];
    if (pcfg.restore &&
        (dml_ps_checkpoint_path(cfg->checkpoint_dir, rank, path, sizeof path) != 0 ||
         access(path, F_OK) != 0)) {
      /* killed before its first checkpoint: it starts empty and everything it held is lost */
      dml_log(DML_LOG_WARN,
              "ps server %d: restarted, but %s does not exist yet: starting from an empty shard "
              "(every update it held is lost)",
              rank, path);
      pcfg.restore = 0;
    }
  }
  double t0 = dml_now_s();
  dml_ps_server *srv = NULL;
  int rc = 0;
  if (dml_ps_is_server(&pcfg, rank)) {
    if ((rc = dml_ps_server_create(&srv, comm, &pcfg, err)) != 0) return rc;
    if (pcfg.colocated) {
      /* the worker serves its shard itself (dml_ps_serve) unless it has handler threads */
      if (pcfg.handler_threads > 1 && (rc = dml_ps_server_start(srv, err)) != 0) goto out;
    } else {
      rc = dml_ps_server_run(srv, err);
      dml_ps_server_stats st;
      dml_ps_server_stats_get(srv, &st);
      dml_log(DML_LOG_INFO,
              "ps server %d: %llu pushes, %llu pulls (%llu waited for clocks), %llu keys, %llu "
              "bytes in, %d dead workers, %d dropped peers, %llu checkpoints, %d re-forms",
              rank, (unsigned long long)st.pushes, (unsigned long long)st.pulls,
              (unsigned long long)st.deferred_pulls, (unsigned long long)st.keys,
              (unsigned long long)st.bytes_in, st.dead_workers, st.dropped_peers,
              (unsigned long long)st.checkpoints, st.reforms);
      if (st.restored)
        dml_log(DML_LOG_WARN,
                "ps server %d: restarted from its checkpoint (slowest worker at clock %llu): %llu "
                "acknowledged pushes lost, %llu worker iterations since the checkpoint",
                rank, (unsigned long long)st.restored_clock, (unsigned long long)st.lost_pushes,
                (unsigned long long)st.lost_clocks);
      if (st.dead_workers > 0)
        dml_log(DML_LOG_WARN, "ps server %d: %d worker%s died; training went on without %s", rank,
                st.dead_workers, st.dead_workers == 1 ? "" : "s",
                st.dead_workers == 1 ? "it" : "them");
      if (rc) goto out;
    }
  }
  if (dml_ps_is_worker(&pcfg, rank, n)) {
    rc = (dense_model ? run_dense_worker : run_worker)(
        cfg, train, test, comm, &pcfg, rank == first_worker,
        rank == first_worker && rank != 0 ? 0 : -1,
        pcfg.colocated && pcfg.handler_threads <= 1 ? srv : NULL, res, err);
    if (srv) {
      dml_err jerr;
      int jrc = dml_ps_server_join(srv, &jerr);
      if (rc == 0 && jrc) rc = dml_err_set(err, jrc, "%s", dml_err_msg(&jerr));
    }
    if (rc) goto out;
  }
  if (rank == 0 && first_worker != 0) {
    ps_result_wire w;
    dml_comm *sc = dml_ps_server_comm(srv);
    /* it comes after the first worker's evaluation and save, however long they take (its death
     * is an error naming it, not a wait) */
    dml_comm_req *q = NULL;
    rc = dml_comm_irecv(sc, first_worker, PS_TAG_RESULT, &w, sizeof w, &q);
    if (rc == 0) rc = dml_comm_wait(sc, q, INT_MAX);
    if (rc) {
      dml_err_set(err, rc, "ps train: no result from the first worker: %s", dml_comm_errmsg(sc));
      goto out;
    }
    res->test_accuracy = w.test_accuracy;
    res->test_loss = w.test_loss;
    res->test_auc = w.test_auc;
    res->train_loss = w.train_loss;
    res->train_accuracy = w.train_accuracy;
    res->samples_per_s = w.samples_per_s;
    res->train_s = w.train_s;
    res->steps = (uint64_t)w.steps;
    res->epochs_done = (int)w.epochs_done;
    res->input_stall_s = w.input_stall_s;
    res->input_stall_pct = w.input_stall_pct;
  }
out:
  res->wall_s = dml_now_s() - t0;
  dml_ps_server_free(srv);
  return rc;
}
