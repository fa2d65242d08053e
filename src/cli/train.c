/* `distml train` and `distml eval`. train: with -n N (N > 1) and no launcher environment it
 * starts N copies of itself through the local launcher; each copy (or a process started by mpirun
 * or with the torchrun variables) joins the communicator and runs its rank of the strategy. */
#include <getopt.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/launch.h"
#include "cli/ps_launch.h"
#include "cli/train_flags.h"
#include "distml.h"
#include "distml/ps.h"
#include "train/train_ps.h"

static int launched_env(void) {
  static const char *vars[] = {"DISTML_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE",
                               "PMI_SIZE", "SLURM_NTASKS"};
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
    if (getenv(vars[i]) != NULL) return 1;
  return 0;
}

/* drop_extra: a sparse test set read against the training set's inferred feature count drops the
 * features the model has no weight for (they carry no information for it). */
static void load_data(const char *cmd, const char *spec, const dml_cli_train_flags *f,
                      dml_dataset *ds, int num_classes, int drop_extra) {
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.csv_label_col = f->label_col;
  o.csv_header = strcmp(f->header, "yes") == 0  ? DML_CSV_HEADER_YES
                 : strcmp(f->header, "no") == 0 ? DML_CSV_HEADER_NO
                                                : DML_CSV_HEADER_AUTO;
  o.num_features = f->features;
  o.num_classes = num_classes;
  o.drop_extra_features = drop_extra;
  dml_err e = {0};
  if (dml_dataset_load(spec, f->format, &o, ds, &e) != 0) dml_cli_fail(cmd, "%s", dml_err_msg(&e));
}

static dml_optim_kind optim_kind(const char *name) {
  dml_optim_kind k;
  if (dml_optim_kind_parse(name, &k, NULL) != 0)
    dml_cli_usage_error("train", "unknown optimizer %s", name);
  return k;
}

/* What the training data asks of the model, checked before any is made: logreg's labels are 0
 * and 1, and the models of this machine's workers (sized by the file's largest feature index) fit
 * in its memory. Errors name the file and the row. */
static void check_fits(const dml_cli_train_flags *f, const dml_model_config *model,
                       const dml_dataset *ds, int ps_mode) {
  int logreg = strcmp(f->model, "logreg") == 0;
  for (int i = 0; logreg && i < ds->n; i++)
    if (ds->y[i] > 1)
      dml_cli_fail("train", "%s: row %d: label %d: logreg is binary (labels 0 and 1)", ds->name,
                   i + 1, ds->y[i]);
  dml_model_config mc = *model;
  mc.in_dim = ds->dim;
  mc.num_classes = ds->num_classes;
  double params = (double)dml_model_config_params(&mc);
  /* bytes per parameter for the -n workers of this machine: each holds the model and its
   * gradients, and (all-reduce, local) two optimizer states; a parameter-server worker's optimizer
   * is on the servers, but the first worker pulls the final model with its u64 keys */
  const char *lws = getenv("LOCAL_WORLD_SIZE"); /* a rank the launcher started */
  double W = lws && atoi(lws) > 0 ? atoi(lws) : f->nproc > 0 ? f->nproc : 1;
  double need = params * (ps_mode ? 8.0 * W + 12.0 : 16.0 * W);
  double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
  if (have <= 0 || need <= have) return;
  int row = 0; /* the row with the largest feature index (sparse data) */
  for (int i = 0; ds->indptr && i < ds->n && row == 0; i++)
    for (uint64_t k = ds->indptr[i]; k < ds->indptr[i + 1]; k++)
      if (ds->indices[k] + 1 == (uint32_t)ds->dim) row = i + 1;
  char where[64] = "";
  if (row) snprintf(where, sizeof where, " (feature index %d in row %d)", ds->dim, row);
  dml_cli_fail("train",
               "%s: %d features%s make a %s model of %.0f parameters, about %.1f GB with its "
               "gradients and optimizer state: more than this machine's %.1f GB",
               ds->name, ds->dim, where, f->model, params, need / 1e9, have / 1e9);
}

/* workers: training processes; servers: parameter-server processes (-1: not the ps strategy).
 * Without a test set there are no test figures (not zeros). */
static void print_json(const dml_train_result *r, const dml_cli_train_flags *f, int workers,
                       int servers) {
  dml_jsonl j;
  dml_jsonl_init_stream(&j, stdout);
  dml_jsonl_begin(&j);
  if (f->test != NULL) {
    dml_jsonl_add_double(&j, "test_accuracy", r->test_accuracy);
    dml_jsonl_add_double(&j, "test_loss", r->test_loss);
    if (!isnan(r->test_auc)) dml_jsonl_add_double(&j, "test_auc", r->test_auc);
  }
  dml_jsonl_add_double(&j, "train_loss", r->train_loss);
  dml_jsonl_add_double(&j, "train_accuracy", r->train_accuracy);
  dml_jsonl_add_double(&j, "samples_per_s", r->samples_per_s);
  dml_jsonl_add_double(&j, "wall_s", r->wall_s);
  dml_jsonl_add_double(&j, "train_s", r->train_s);
  dml_jsonl_add_int(&j, "epochs", r->epochs_done);
  dml_jsonl_add_int(&j, "steps", (int64_t)r->steps);
  dml_jsonl_add_int(&j, "workers", workers);
  if (servers >= 0) {
    dml_jsonl_add_int(&j, "servers", servers);
    dml_jsonl_add_str(&j, "sync", f->sync);
  }
  dml_jsonl_add_str(&j, "model", f->model);
  dml_jsonl_add_str(&j, "optimizer", f->optimizer);
  dml_jsonl_add_int(&j, "batch", f->batch);
  if (workers > 1 && servers < 0) {
    dml_jsonl_add_double(&j, "bytes_per_step", r->bytes_per_step);
    dml_jsonl_add_double(&j, "ring_bytes_per_step", r->ring_bytes_per_step);
    dml_jsonl_add_double(&j, "comm_ms_per_step", r->comm_s * 1e3);
    dml_jsonl_add_double(&j, "wait_ms_per_step", r->wait_s * 1e3);
    dml_jsonl_add_double(&j, "overlap_pct", r->overlap_pct);
  }
  if (r->resumed_from_epoch) dml_jsonl_add_int(&j, "resumed_from_epoch", r->resumed_from_epoch);
  if (f->loader_threads > 0 || f->augment != NULL) {
    dml_jsonl_add_double(&j, "input_stall_s", r->input_stall_s);
    dml_jsonl_add_double(&j, "input_stall_pct", r->input_stall_pct);
  }
  dml_jsonl_end(&j);
  dml_jsonl_close(&j);
}

/* Removes "-n N" / "-nN" from argv for the launched copies (they learn the size from the env). */
static char **argv_for_ranks(int argc, char **argv) {
  char **out = calloc((size_t)argc + 3, sizeof(char *));
  int k = 0;
  out[k++] = "distml";
  for (int i = 0; i < argc; i++) {
    if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
      i++;
      continue;
    }
    if (strncmp(argv[i], "-n", 2) == 0 && argv[i][2] != '\0' && argv[i][2] != '-') continue;
    out[k++] = argv[i];
  }
  out[k] = NULL;
  return out;
}

int dml_cli_train_main(int argc, char **argv) {
  dml_cli_train_flags f;
  dml_cli_train_flags_parse(&f, argc, argv);
  int launched = launched_env();
  int want_ps = f.strategy != NULL && strcmp(f.strategy, "ps") == 0;
  if (f.checkpoint_every_clocks > 0 && !(want_ps && f.checkpoint != NULL && !f.servers_colocated))
    dml_cli_usage_error("train",
                        "--checkpoint-every %dclocks: servers checkpoint by clocks; it needs "
                        "--strategy ps with dedicated --servers and --checkpoint DIR",
                        f.checkpoint_every_clocks);
  if ((f.nproc > 1 || want_ps) && !launched) {
    if (f.backend != NULL && strcmp(f.backend, "mpi") == 0)
      dml_cli_usage_error("train",
                          "--backend mpi: start the ranks with mpirun -np %d distml train ... "
                          "(without -n)",
                          f.nproc);
    if (f.strategy != NULL && strcmp(f.strategy, "local") == 0)
      dml_cli_usage_error("train", "--strategy local runs one process: drop -n %d", f.nproc);
    dml_launch_opts lo;
    dml_launch_opts_default(&lo);
    lo.name = "train";
    lo.exec_path = "/proc/self/exe";
    lo.prefix_output = 0; /* rank 0 draws the progress bar on the terminal itself */
    if (getenv("OPENBLAS_NUM_THREADS") == NULL && f.threads == 0)
      setenv("OPENBLAS_NUM_THREADS", "1", 1);
    char **rargv = argv_for_ranks(argc, argv);
    int nprocs = f.nproc;
    dml_ps_config roles; /* which ranks serve: the launcher's hook sets DISTML_ROLE from it */
    dml_ps_config_init(&roles);
    roles.colocated = f.servers_colocated;
    roles.num_servers = f.servers_colocated ? 0 : f.servers;
    if (want_ps) {
      nprocs += roles.num_servers;
      lo.child_setup = dml_cli_ps_child_setup;
      lo.failure_policy = dml_cli_ps_failure_policy; /* restart servers, go on without workers */
      roles.checkpoint_dir = f.checkpoint;
      lo.user = &roles;
    }
    int st = dml_launch_run(nprocs, rargv, &lo);
    free(rargv);
    return st;
  }

  dml_comm *comm = NULL;
  dml_err e = {0};
  int world = 1;
  if (launched) {
    dml_cli_pin_local_rank();
    dml_comm_opts co;
    dml_comm_opts_default(&co);
    co.backend = f.backend;
    if (dml_comm_init(&comm, &co, &e) != 0)
      dml_cli_fail("train", "joining the job: %s", dml_err_msg(&e));
    world = dml_comm_size(comm);
    dml_log_set_rank(dml_comm_rank(comm));
    int expect = f.nproc;
    if (f.strategy != NULL && strcmp(f.strategy, "ps") == 0 && !f.servers_colocated)
      expect += f.servers;
    if (f.nproc > 1 && expect != world)
      dml_cli_fail("train", "expected %d processes but the launcher started %d", expect, world);
  }
  int rank = comm ? dml_comm_rank(comm) : 0;
  if (f.threads > 0)
    dml_cli_set_blas_threads(f.threads);
  else if (world > 1)
    dml_cli_set_blas_threads(1);

  dml_train_config cfg;
  dml_train_config_init(&cfg);
  int ps_mode = f.strategy != NULL && strcmp(f.strategy, "ps") == 0;
  dml_ps_config psc;
  dml_ps_config_init(&psc);
  if (ps_mode) {
    if (comm == NULL)
      dml_cli_usage_error("train", "--strategy ps needs processes: -n W (workers) [--servers S]");
    psc.colocated = f.servers_colocated;
    psc.num_servers = f.servers_colocated ? 0 : f.servers;
    psc.handler_threads = f.server_threads;
    if (dml_ps_sync_parse(f.sync, &psc.staleness, &e) != 0)
      dml_cli_usage_error("train", "--sync: %s", dml_err_msg(&e));
    if (dml_ps_num_workers(&psc, world) < 1)
      dml_cli_fail("train", "--strategy ps with %d processes and %d servers leaves no worker",
                   world, psc.num_servers);
  }
  /* under ps the processes are workers and servers (colocated: each is both); -1: not ps */
  int nworkers = ps_mode ? dml_ps_num_workers(&psc, world) : world;
  int nservers = !ps_mode ? -1 : psc.colocated ? world : dml_ps_num_servers(&psc, world);
  cfg.strategy =
      (world > 1 && !ps_mode && (f.strategy == NULL || strcmp(f.strategy, "allreduce") == 0))
          ? DML_STRATEGY_ALLREDUCE
          : DML_STRATEGY_LOCAL;
  if (world > 1 && cfg.strategy == DML_STRATEGY_LOCAL && !ps_mode)
    dml_cli_fail("train", "--strategy local with %d processes: every process would train alone",
                 world);
  dml_model_kind kind;
  if (dml_model_kind_parse(f.model, &kind, &e) != 0)
    dml_cli_usage_error("train", "%s", dml_err_msg(&e));
  dml_model_config_init(&cfg.model, kind, 0, 0);
  if (kind == DML_MODEL_MLP) {
    cfg.model.num_hidden = f.n_hidden;
    for (int i = 0; i < f.n_hidden; i++) cfg.model.hidden[i] = f.hidden[i];
  }
  dml_optim_config_init(&cfg.optim, optim_kind(f.optimizer));
  cfg.optim.lr = (float)f.lr;
  cfg.optim.momentum = (float)f.momentum;
  cfg.optim.weight_decay = (float)f.weight_decay;
  if (cfg.optim.kind == DML_OPT_FTRL) {
    cfg.optim.lr = (float)f.ftrl_alpha;
    cfg.optim.ftrl_beta = (float)f.ftrl_beta;
    cfg.optim.ftrl_l1 = (float)f.l1;
    cfg.optim.ftrl_l2 = (float)f.l2;
  }
  cfg.lr_cosine = strcmp(f.lr_schedule, "cosine") == 0;
  cfg.loader_threads = f.loader_threads;
  cfg.prefetch = f.prefetch;
  if (f.augment != NULL && dml_augment_parse(f.augment, &cfg.augment, &e) != 0)
    dml_cli_usage_error("train", "--augment: %s", dml_err_msg(&e));
  cfg.epochs = f.epochs;
  cfg.batch = f.batch;
  cfg.seed = f.seed;
  cfg.save_path = f.save;
  cfg.metrics_path = f.metrics;
  cfg.trace_path = f.trace;
  cfg.checkpoint_dir = f.checkpoint;
  cfg.checkpoint_every = f.checkpoint_every;
  cfg.checkpoint_every_clocks = f.checkpoint_every_clocks;
  cfg.resume = f.resume;
  cfg.progress = !f.quiet;
  cfg.bucket_mb = f.bucket_mb;
  cfg.accumulate = f.accumulate;
  cfg.sync_every = f.sync_every;
  cfg.wire_dtype = strcmp(f.grad_compress, "fp16") == 0   ? DML_F16
                   : strcmp(f.grad_compress, "bf16") == 0 ? DML_BF16
                                                          : DML_F32;
  const char *stop = getenv("DISTML_TEST_STOP_AFTER_EPOCH");
  if (stop != NULL) cfg.stop_after_epoch = atoi(stop);

  /* A dedicated server of a sparse model never reads the data (dml_train_ps_run): it does not load
   * it, and the first worker says what was loaded. Dense models need its shape everywhere. */
  int serves_only = ps_mode && !psc.colocated && kind == DML_MODEL_LOGREG;
  int no_data = serves_only && dml_ps_is_server(&psc, rank);
  int data_rank = serves_only ? nservers : 0;
  dml_dataset train = {0}, test = {0};
  double l0 = dml_now_s();
  if (!no_data) load_data("train", f.data, &f, &train, 0, 0);
  if (f.test != NULL && !no_data) {
    /* A sparse test set is read against the training set's feature count, so an index the model
     * has no weight for is an error that names the file and line. */
    dml_cli_train_flags ft = f;
    if (train.x == NULL && ft.features == 0) ft.features = train.dim;
    load_data("train", f.test, &ft, &test, train.num_classes, train.x == NULL && f.features == 0);
  }
  if (rank == data_rank && !f.quiet) {
    char servers[48] = "";
    if (ps_mode)
      snprintf(servers, sizeof servers,
               psc.colocated ? " (each serving a shard)" : " and %d server%s", nservers,
               nservers > 1 ? "s" : "");
    dml_log(DML_LOG_INFO,
            "%s: %d rows x %d features, %d classes%s%s (%.1fs); %d worker%s%s, BLAS %s", train.name,
            train.n, train.dim, train.num_classes, f.test ? "; test " : "", f.test ? test.name : "",
            dml_now_s() - l0, nworkers, nworkers > 1 ? "s" : "", servers, dml_cli_blas_info());
  }
  if (f.augment != NULL && train.x == NULL && !no_data)
    dml_cli_usage_error("train",
                        "--augment shifts, flips and adds noise to images; %s is sparse (LIBSVM) "
                        "data, which has no pixels: drop --augment (--loader-threads alone works)",
                        train.name);
  if (f.test != NULL && test.dim != train.dim && !no_data)
    dml_cli_fail("train", "%s has %d features but %s has %d", test.name, test.dim, train.name,
                 train.dim);
  if (!no_data) check_fits(&f, &cfg.model, &train, ps_mode);
  if (cfg.strategy == DML_STRATEGY_ALLREDUCE) { /* keep only this rank's shard in memory */
    int64_t b, en;
    cfg.shard_of_rows = train.n;
    if (dml_shard_range(train.n, rank, world, &b, &en) != 0 ||
        dml_dataset_keep_range(&train, (int)b, (int)en, &e) != 0)
      dml_cli_fail("train", "keeping rank %d's shard: %s", rank, dml_err_msg(&e));
  }
  dml_train_result res;
  int rc = ps_mode ? dml_train_ps_run(&cfg, no_data ? NULL : &train,
                                      f.test && !no_data ? &test : NULL, comm, &psc, &res, &e)
                   : dml_train_run(&cfg, &train, f.test ? &test : NULL, comm, &res, &e);
  if (rc != 0) {
    dml_log(DML_LOG_ERROR, "training failed: %s", dml_err_msg(&e));
    if (comm) dml_comm_abort(comm, dml_err_msg(&e));
    dml_comm_free(comm);
    dml_dataset_free(&train);
    dml_dataset_free(&test);
    fprintf(stderr, "distml train: error: %s\n", dml_err_msg(&e));
    return 1;
  }
  if (rank == 0) {
    if (!f.quiet) {
      if (f.test != NULL)
        fprintf(stderr, "done: test accuracy %.4f, test loss %.4f", res.test_accuracy,
                res.test_loss);
      else
        fprintf(stderr, "done: no test set (--test)");
      if (f.test != NULL && !isnan(res.test_auc)) fprintf(stderr, ", test AUC %.4f", res.test_auc);
      fprintf(stderr, "; %.0f samples/s, %.1fs%s%s\n", res.samples_per_s, res.wall_s,
              f.save ? "; model saved to " : "", f.save ? f.save : "");
    }
    if (f.json) print_json(&res, &f, nworkers, nservers);
  }
  dml_coll_detach(comm);
  dml_comm_free(comm);
  dml_dataset_free(&train);
  dml_dataset_free(&test);
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * eval */

static void eval_usage(void) {
  printf(
      "usage: distml eval --model FILE.safetensors --data SPEC [--format F] [--json]\n"
      "\n"
      "Evaluates a saved model: accuracy, loss and (binary models) AUC.\n"
      "  --model FILE     a model written by distml train --save\n"
      "  --data SPEC      data as in distml train (fashion-mnist:test, a LIBSVM/CSV/IDX file)\n"
      "  --format F       auto|idx|libsvm|csv (default auto)\n"
      "  --label-col N, --header H, --features N   as in distml train\n"
      "  --json           print one JSON object (test_accuracy, test_loss, test_auc, rows)\n");
}

int dml_cli_eval_main(int argc, char **argv) {
  static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                       {"data", required_argument, 0, 'd'},
                                       {"format", required_argument, 0, 'f'},
                                       {"json", no_argument, 0, 'j'},
                                       {"label-col", required_argument, 0, 'l'},
                                       {"header", required_argument, 0, 'H'},
                                       {"features", required_argument, 0, 'F'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  dml_cli_train_flags f;
  memset(&f, 0, sizeof(f));
  f.format = "auto";
  f.header = "auto";
  const char *model_path = NULL;
  int json = 0, c;
  optind = 1;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    switch (c) {
      case 'm': model_path = optarg; break;
      case 'd': f.data = optarg; break;
      case 'f': f.format = optarg; break;
      case 'j': json = 1; break;
      case 'l':
        f.label_col = (int)dml_cli_int("eval", "--label-col", optarg, -100000, 100000);
        break;
      case 'H': f.header = optarg; break;
      case 'F': f.features = dml_cli_int("eval", "--features", optarg, 1, INT32_MAX); break;
      case 'h': eval_usage(); return 0;
      case ':': dml_cli_usage_error("eval", "%s needs a value", argv[optind - 1]);
      default: dml_cli_usage_error("eval", "unknown flag '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) dml_cli_usage_error("eval", "unexpected argument '%s'", argv[optind]);
  if (model_path == NULL) dml_cli_usage_error("eval", "--model FILE is required");
  if (f.data == NULL) dml_cli_usage_error("eval", "--data is required");
  if (strcmp(f.header, "auto") && strcmp(f.header, "yes") && strcmp(f.header, "no"))
    dml_cli_usage_error("eval", "--header: '%s' is not one of auto|yes|no", f.header);
  if (strcmp(f.format, "auto") && strcmp(f.format, "idx") && strcmp(f.format, "libsvm") &&
      strcmp(f.format, "csv"))
    dml_cli_usage_error("eval", "--format: '%s' is not one of auto|idx|libsvm|csv", f.format);
  dml_err e = {0};
  dml_model *m = NULL;
  if (dml_model_load(model_path, 1024, &m, &e) != 0) dml_cli_fail("eval", "%s", dml_err_msg(&e));
  const dml_model_config *mc = dml_model_get_config(m);
  int inferred_features = f.features == 0;
  if (inferred_features && mc->kind == DML_MODEL_LOGREG) f.features = mc->in_dim;
  dml_dataset ds = {0};
  load_data("eval", f.data, &f, &ds, mc->num_classes,
            mc->kind == DML_MODEL_LOGREG && inferred_features);
  if (ds.dim != mc->in_dim && !(ds.x == NULL && ds.dim < mc->in_dim))
    dml_cli_fail("eval", "%s has %d features, the model %s expects %d", ds.name, ds.dim, model_path,
                 mc->in_dim);
  ds.dim = mc->in_dim;
  double acc, loss, auc;
  if (dml_evaluate(m, &ds, NULL, &acc, &loss, &auc, &e) != 0)
    dml_cli_fail("eval", "%s", dml_err_msg(&e));
  if (json) {
    dml_jsonl j;
    dml_jsonl_init_stream(&j, stdout);
    dml_jsonl_begin(&j);
    dml_jsonl_add_double(&j, "test_accuracy", acc);
    dml_jsonl_add_double(&j, "test_loss", loss);
    if (!isnan(auc)) dml_jsonl_add_double(&j, "test_auc", auc);
    dml_jsonl_add_int(&j, "rows", ds.n);
    dml_jsonl_add_str(&j, "model", dml_model_kind_name(mc->kind));
    dml_jsonl_end(&j);
    dml_jsonl_close(&j);
  } else {
    printf("%s on %s: accuracy %.4f, loss %.4f", model_path, ds.name, acc, loss);
    if (!isnan(auc)) printf(", AUC %.4f", auc);
    printf(" (%d rows)\n", ds.n);
  }
  dml_dataset_free(&ds);
  dml_model_free(m);
  return 0;
}
