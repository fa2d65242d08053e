/* Parsing and checking of `distml train` flags. Every value is checked here, before any data is
 * read, so a typo costs nothing: an unknown flag, a malformed number or an out-of-range value
 * stops the command with a message that names the flag. */
#include "cli/train_flags.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "distml.h"
#include "distml/ps.h"

enum {
  OPT_DATA = 256,
  OPT_TEST,
  OPT_FORMAT,
  OPT_LABEL_COL,
  OPT_HEADER,
  OPT_FEATURES,
  OPT_MODEL,
  OPT_HIDDEN,
  OPT_EPOCHS,
  OPT_BATCH,
  OPT_LR,
  OPT_OPTIMIZER,
  OPT_MOMENTUM,
  OPT_WD,
  OPT_L1,
  OPT_L2,
  OPT_FTRL_ALPHA,
  OPT_FTRL_BETA,
  OPT_SEED,
  OPT_SAVE,
  OPT_METRICS,
  OPT_JSON,
  OPT_QUIET,
  OPT_THREADS,
  OPT_STRATEGY,
  OPT_BACKEND,
  OPT_BUCKET_MB,
  OPT_ACCUMULATE,
  OPT_SYNC_EVERY,
  OPT_GRAD_COMPRESS,
  OPT_LR_SCHEDULE,
  OPT_SERVERS,
  OPT_SERVER_THREADS,
  OPT_SYNC,
  OPT_LOADER_THREADS,
  OPT_PREFETCH,
  OPT_AUGMENT,
  OPT_TRACE,
  OPT_CHECKPOINT,
  OPT_CHECKPOINT_EVERY,
  OPT_RESUME,
  OPT_HELP
};

static const struct option long_opts[] = {
    {"data", required_argument, 0, OPT_DATA},
    {"test", required_argument, 0, OPT_TEST},
    {"format", required_argument, 0, OPT_FORMAT},
    {"label-col", required_argument, 0, OPT_LABEL_COL},
    {"header", required_argument, 0, OPT_HEADER},
    {"features", required_argument, 0, OPT_FEATURES},
    {"model", required_argument, 0, OPT_MODEL},
    {"hidden", required_argument, 0, OPT_HIDDEN},
    {"epochs", required_argument, 0, OPT_EPOCHS},
    {"batch", required_argument, 0, OPT_BATCH},
    {"lr", required_argument, 0, OPT_LR},
    {"optimizer", required_argument, 0, OPT_OPTIMIZER},
    {"lr-schedule", required_argument, 0, OPT_LR_SCHEDULE},
    {"momentum", required_argument, 0, OPT_MOMENTUM},
    {"weight-decay", required_argument, 0, OPT_WD},
    {"l1", required_argument, 0, OPT_L1},
    {"l2", required_argument, 0, OPT_L2},
    {"ftrl-alpha", required_argument, 0, OPT_FTRL_ALPHA},
    {"ftrl-beta", required_argument, 0, OPT_FTRL_BETA},
    {"seed", required_argument, 0, OPT_SEED},
    {"save", required_argument, 0, OPT_SAVE},
    {"metrics", required_argument, 0, OPT_METRICS},
    {"json", no_argument, 0, OPT_JSON},
    {"quiet", no_argument, 0, OPT_QUIET},
    {"threads", required_argument, 0, OPT_THREADS},
    {"strategy", required_argument, 0, OPT_STRATEGY},
    {"backend", required_argument, 0, OPT_BACKEND},
    {"servers", required_argument, 0, OPT_SERVERS},
    {"server-threads", required_argument, 0, OPT_SERVER_THREADS},
    {"sync", required_argument, 0, OPT_SYNC},
    {"bucket-mb", required_argument, 0, OPT_BUCKET_MB},
    {"accumulate", required_argument, 0, OPT_ACCUMULATE},
    {"sync-every", required_argument, 0, OPT_SYNC_EVERY},
    {"grad-compress", required_argument, 0, OPT_GRAD_COMPRESS},
    {"trace", required_argument, 0, OPT_TRACE},
    {"loader-threads", required_argument, 0, OPT_LOADER_THREADS},
    {"prefetch", required_argument, 0, OPT_PREFETCH},
    {"augment", required_argument, 0, OPT_AUGMENT},
    {"checkpoint", required_argument, 0, OPT_CHECKPOINT},
    {"checkpoint-every", required_argument, 0, OPT_CHECKPOINT_EVERY},
    {"resume", no_argument, 0, OPT_RESUME},
    {"help", no_argument, 0, OPT_HELP},
    {0, 0, 0, 0},
};

static void usage(void) {
  printf(
      "usage: distml train --data SPEC [flags]\n"
      "\n"
      "Trains a model and evaluates it on the test set after every epoch.\n"
      "\n"
      "data:\n"
      "  --data SPEC          training data: fashion-mnist[:train|:test], an IDX images file\n"
      "                       (labels file found beside it), IMAGES,LABELS, or a LIBSVM/CSV file\n"
      "  --test SPEC          test data (default: fashion-mnist:test when --data is "
      "fashion-mnist)\n"
      "  --format F           auto|idx|libsvm|csv (default auto)\n"
      "  --label-col N        CSV: the label column (default 0; negative counts from the end)\n"
      "  --header H           CSV: auto|yes|no (default auto)\n"
      "  --features N         LIBSVM: declared feature count (default: the largest index seen)\n"
      "model and optimizer:\n"
      "  --model M            softmax|mlp|logreg (default mlp)\n"
      "  --hidden H[,H...]    MLP hidden layer sizes (default 256)\n"
      "  --epochs N           (default 10)\n"
      "  --batch B            global batch size, split across workers (default 64)\n"
      "  --optimizer O        sgd|momentum|adam|adagrad|ftrl (default adam; ftrl for logreg)\n"
      "  --lr X               learning rate (default: 0.05 sgd/momentum, 0.001 adam, 0.1 adagrad,\n"
      "                       2 ftrl)\n"
      "  --lr-schedule S      cosine|constant: cosine decays the rate to 0 over the run (default\n"
      "                       cosine; constant for ftrl, whose per-coordinate rates decay already\n"
      "                       and whose weights shrink with its alpha)\n"
      "  --momentum X         (default 0.9)   --weight-decay X (default 0)\n"
      "  --l1 X --l2 X        FTRL regularisation (default 1e-6, 1e-4)\n"
      "  --ftrl-alpha X --ftrl-beta X   FTRL learning-rate parameters (default lr, 1)\n"
      "  --seed N             seed of initialisation and shuffling (default 1)\n"
      "input pipeline (every strategy; dense or sparse data):\n"
      "  --loader-threads T   prepare batches on T threads ahead of training (default 0: on the\n"
      "                       training thread); batches depend on the seed only, not on T\n"
      "  --prefetch K         batches prepared ahead (default 2)\n"
      "  --augment A          random image augmentation: any of shift,flip,noise "
      "(comma-separated),\n"
      "                       all or none; rows are square images (implies --loader-threads 1);\n"
      "                       not for sparse (LIBSVM) data\n"
      "output:\n"
      "  --save FILE          write the trained model (safetensors, atomically)\n"
      "  --metrics FILE       append one JSON object per epoch (JSON lines)\n"
      "  --json               last line of stdout: a JSON summary (test_accuracy, test_loss,\n"
      "                       samples_per_s, wall_s, ...)\n"
      "  --quiet              no progress bar\n"
      "  --threads T          BLAS threads per process (default: 1 with -n > 1, else all cores)\n"
      "distributed:\n"
      "  -n N                 workers on this machine (default 1: local training)\n"
      "  --strategy S         local|allreduce|ps (default: allreduce when -n > 1 or under a "
      "launcher)\n"
      "  --servers S          ps: S server processes besides the -n workers (default 1), or\n"
      "                       'colocated': a server shard inside each worker\n"
      "  --sync M             ps: bsp|ssp:S|asp consistency (default bsp)\n"
      "  --server-threads K   ps: request-handling threads per server process, each with its\n"
      "                       own share of the keys (default 1; not with --checkpoint)\n"
      "  --backend B          tcp|mpi (default tcp; mpi under mpirun)\n"
      "  --bucket-mb X        gradient bucket cap in MB (default 1)\n"
      "  --accumulate K       all-reduce every K micro-batches (gradient accumulation, default 1)\n"
      "  --grad-compress C    none|fp16|bf16 values on the wire (default none)\n"
      "  --sync-every H       local SGD: average the models every H steps instead of gradients\n"
      "  --trace FILE         Chrome trace of every rank's compute, wait and all-reduce\n"
      "  --checkpoint DIR     write checkpoints into DIR (--strategy ps: each server's shard, and\n"
      "                       a dead server is restarted from it)\n"
      "  --checkpoint-every N checkpoint every N epochs (default 1); --strategy ps: every N\n"
      "                       seconds per server, or 'Nclocks': whenever the slowest worker\n"
      "                       has done N more iterations\n"
      "  --resume             restart from the last checkpoint in --checkpoint DIR\n");
}

static int parse_hidden(dml_cli_train_flags *f, const char *s) {
  dml_cli_check_list("train", "--hidden", s);
  char *copy = strdup(s), *save = NULL;
  f->n_hidden = 0;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (f->n_hidden == DML_CLI_MAX_HIDDEN)
      dml_cli_usage_error("train", "--hidden: at most %d layers", DML_CLI_MAX_HIDDEN);
    f->hidden[f->n_hidden++] = (int)dml_cli_int("train", "--hidden", tok, 1, 1 << 16);
  }
  free(copy);
  if (f->n_hidden == 0)
    dml_cli_usage_error("train", "--hidden: expected sizes like 256 or 256,128");
  return 0;
}

static const char *one_of(const char *flag, const char *v, const char *const *allowed) {
  for (int i = 0; allowed[i]; i++)
    if (strcmp(v, allowed[i]) == 0) return allowed[i];
  char list[256] = "";
  for (int i = 0; allowed[i]; i++) {
    strncat(list, allowed[i], sizeof(list) - strlen(list) - 1);
    if (allowed[i + 1]) strncat(list, "|", sizeof(list) - strlen(list) - 1);
  }
  dml_cli_usage_error("train", "%s: '%s' is not one of %s", flag, v, list);
}

int dml_cli_train_flags_parse(dml_cli_train_flags *f, int argc, char **argv) {
  static const char *const formats[] = {"auto", "idx", "libsvm", "csv", NULL};
  static const char *const headers[] = {"auto", "yes", "no", NULL};
  static const char *const models[] = {"softmax", "mlp", "logreg", NULL};
  static const char *const optimizers[] = {"sgd", "momentum", "adam", "adagrad", "ftrl", NULL};
  static const char *const strategies[] = {"local", "allreduce", "ps", NULL};
  static const char *const backends[] = {"tcp", "mpi", NULL};
  static const char *const compress[] = {"none", "fp16", "bf16", NULL};
  static const char *const schedules[] = {"cosine", "constant", NULL};
  memset(f, 0, sizeof(*f));
  f->format = "auto";
  f->header = "auto";
  f->model = "mlp";
  f->hidden[0] = 256;
  f->n_hidden = 1;
  f->epochs = 10;
  f->batch = 64;
  f->momentum = 0.9;
  f->l1 = 1e-6;
  f->l2 = 1e-4;
  f->ftrl_beta = 1.0;
  f->seed = 1;
  f->nproc = 1;
  f->servers = 1;
  f->server_threads = 1;
  f->sync = "bsp";
  f->bucket_mb = 1.0;
  f->accumulate = 1;
  f->grad_compress = "none";
  f->lr_schedule = NULL; /* cosine, or constant for ftrl: decided after parsing */
  f->checkpoint_every = 1;
  int explicit_optimizer = 0;
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":n:", long_opts, NULL)) != -1) {
    switch (c) {
      case OPT_DATA: f->data = optarg; break;
      case OPT_TEST: f->test = optarg; break;
      case OPT_FORMAT: f->format = one_of("--format", optarg, formats); break;
      case OPT_LABEL_COL:
        f->label_col = (int)dml_cli_int("train", "--label-col", optarg, -100000, 100000);
        break;
      case OPT_HEADER: f->header = one_of("--header", optarg, headers); break;
      case OPT_FEATURES:
        f->features = dml_cli_int("train", "--features", optarg, 1, INT32_MAX);
        break;
      case OPT_MODEL: f->model = one_of("--model", optarg, models); break;
      case OPT_HIDDEN: parse_hidden(f, optarg); break;
      case OPT_EPOCHS: f->epochs = (int)dml_cli_int("train", "--epochs", optarg, 1, 1000000); break;
      case OPT_BATCH: f->batch = (int)dml_cli_int("train", "--batch", optarg, 1, 1 << 20); break;
      case OPT_LR: f->lr = dml_cli_double("train", "--lr", optarg, 1e-12, 1e6); break;
      case OPT_OPTIMIZER:
        f->optimizer = one_of("--optimizer", optarg, optimizers);
        explicit_optimizer = 1;
        break;
      case OPT_LR_SCHEDULE: f->lr_schedule = one_of("--lr-schedule", optarg, schedules); break;
      case OPT_MOMENTUM:
        f->momentum = dml_cli_double("train", "--momentum", optarg, 0, 0.999999);
        break;
      case OPT_WD:
        f->weight_decay = dml_cli_double("train", "--weight-decay", optarg, 0, 1e3);
        break;
      case OPT_L1: f->l1 = dml_cli_double("train", "--l1", optarg, 0, 1e6); break;
      case OPT_L2: f->l2 = dml_cli_double("train", "--l2", optarg, 0, 1e6); break;
      case OPT_FTRL_ALPHA:
        f->ftrl_alpha = dml_cli_double("train", "--ftrl-alpha", optarg, 1e-12, 1e6);
        break;
      case OPT_FTRL_BETA:
        f->ftrl_beta = dml_cli_double("train", "--ftrl-beta", optarg, 0, 1e6);
        break;
      case OPT_SEED:
        f->seed = (uint64_t)dml_cli_int("train", "--seed", optarg, 0, INT64_MAX);
        break;
      case OPT_SAVE: f->save = optarg; break;
      case OPT_METRICS: f->metrics = optarg; break;
      case OPT_JSON: f->json = 1; break;
      case OPT_QUIET: f->quiet = 1; break;
      case OPT_THREADS: f->threads = (int)dml_cli_int("train", "--threads", optarg, 1, 1024); break;
      case 'n': f->nproc = (int)dml_cli_int("train", "-n", optarg, 1, 1024); break;
      case OPT_STRATEGY: f->strategy = one_of("--strategy", optarg, strategies); break;
      case OPT_SERVERS:
        if (strcmp(optarg, "colocated") == 0) {
          f->servers_colocated = 1;
          f->servers = 0;
        } else {
          f->servers = (int)dml_cli_int("train", "--servers", optarg, 1, 1024);
        }
        break;
      case OPT_SYNC: {
        int staleness;
        dml_err e = {0};
        if (dml_ps_sync_parse(optarg, &staleness, &e) != 0)
          dml_cli_usage_error("train", "%s", dml_err_msg(&e));
        f->sync = optarg;
        break;
      }
      case OPT_SERVER_THREADS:
        f->server_threads = (int)dml_cli_int("train", "--server-threads", optarg, 1, 64);
        break;
      case OPT_BACKEND: f->backend = one_of("--backend", optarg, backends); break;
      case OPT_BUCKET_MB:
        f->bucket_mb = dml_cli_double("train", "--bucket-mb", optarg, 0.001, 4096);
        break;
      case OPT_ACCUMULATE:
        f->accumulate = (int)dml_cli_int("train", "--accumulate", optarg, 1, 1 << 20);
        break;
      case OPT_SYNC_EVERY:
        f->sync_every = (int)dml_cli_int("train", "--sync-every", optarg, 1, 1 << 30);
        break;
      case OPT_GRAD_COMPRESS: f->grad_compress = one_of("--grad-compress", optarg, compress); break;
      case OPT_TRACE: f->trace = optarg; break;
      case OPT_LOADER_THREADS:
        f->loader_threads = (int)dml_cli_int("train", "--loader-threads", optarg, 0, 256);
        break;
      case OPT_PREFETCH:
        f->prefetch = (int)dml_cli_int("train", "--prefetch", optarg, 1, 1024);
        break;
      case OPT_AUGMENT: f->augment = optarg; break;
      case OPT_CHECKPOINT: f->checkpoint = optarg; break;
      case OPT_CHECKPOINT_EVERY: {
        size_t len = strlen(optarg);
        if (len > 6 && strcmp(optarg + len - 6, "clocks") == 0) { /* ps: Nclocks */
          char num[32];
          if (len - 6 >= sizeof num)
            dml_cli_usage_error("train", "--checkpoint-every %s: not a count of clocks", optarg);
          snprintf(num, sizeof num, "%.*s", (int)(len - 6), optarg);
          f->checkpoint_every_clocks =
              (int)dml_cli_int("train", "--checkpoint-every (Nclocks)", num, 1, 1 << 30);
        } else {
          f->checkpoint_every = (int)dml_cli_int("train", "--checkpoint-every", optarg, 1, 1 << 30);
          f->checkpoint_every_clocks = 0;
        }
        break;
      }
      case OPT_RESUME: f->resume = 1; break;
      case OPT_HELP: usage(); exit(0);
      case ':': dml_cli_usage_error("train", "%s needs a value", argv[optind - 1]);
      default: dml_cli_usage_error("train", "unknown flag '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) dml_cli_usage_error("train", "unexpected argument '%s'", argv[optind]);
  if (f->data == NULL)
    dml_cli_usage_error("train", "--data is required (e.g. --data fashion-mnist)");
  if (!explicit_optimizer) f->optimizer = strcmp(f->model, "logreg") == 0 ? "ftrl" : "adam";
  if (f->lr <= 0) {
    if (strcmp(f->optimizer, "adam") == 0)
      f->lr = 0.001;
    else if (strcmp(f->optimizer, "ftrl") == 0)
      f->lr = 2.0;
    else if (strcmp(f->optimizer, "adagrad") == 0)
      f->lr = 0.1;
    else
      f->lr = 0.05;
  }
  if (f->ftrl_alpha <= 0) f->ftrl_alpha = f->lr;
  if (f->lr_schedule == NULL)
    f->lr_schedule = strcmp(f->optimizer, "ftrl") == 0 ? "constant" : "cosine";
  /* outputs checked once, where the job starts (the launcher, or rank 0 under mpirun): another
   * machine's ranks need not have the directory. --metrics appends, so "-" (stdout), a pipe or a
   * terminal is fine for it. */
  const char *rk = getenv("DISTML_RANK");
  if (rk == NULL || strcmp(rk, "0") == 0) {
    struct stat mst;
    int metrics_stream =
        f->metrics != NULL &&
        (strcmp(f->metrics, "-") == 0 ||
         (stat(f->metrics, &mst) == 0 && !S_ISREG(mst.st_mode) && !S_ISDIR(mst.st_mode)));
    if (f->save != NULL) dml_cli_check_output("train", "--save", f->save);
    if (f->metrics != NULL && !metrics_stream)
      dml_cli_check_output("train", "--metrics", f->metrics);
    if (f->trace != NULL) dml_cli_check_output("train", "--trace", f->trace);
  }
  if (f->resume && f->checkpoint == NULL)
    dml_cli_usage_error("train", "--resume needs --checkpoint DIR");
  int ps = f->strategy != NULL && strcmp(f->strategy, "ps") == 0;
  if (f->server_threads > 1 && !ps)
    dml_cli_usage_error("train", "--server-threads applies to --strategy ps");
  if (f->server_threads > 1 && f->checkpoint != NULL)
    dml_cli_usage_error("train",
                        "--server-threads %d with --checkpoint: server checkpoints and recovery "
                        "need one thread per server (use --server-threads 1)",
                        f->server_threads);
  if (f->test == NULL && strncmp(f->data, "fashion-mnist", 13) == 0) f->test = "fashion-mnist:test";
  return 0;
}
