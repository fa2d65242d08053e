/* Flags of `distml train` (and the subset `distml eval` shares), parsed and checked before any
 * work starts. */
#ifndef DISTML_CLI_TRAIN_FLAGS_H
#define DISTML_CLI_TRAIN_FLAGS_H

#include <stdint.h>

#define DML_CLI_MAX_HIDDEN 16

typedef struct dml_cli_train_flags {
  const char *data, *test, *format;
  int label_col;      /* CSV */
  const char *header; /* CSV: auto|yes|no */
  int64_t features;   /* LIBSVM declared feature count, 0: infer */
  const char *model;  /* softmax|mlp|logreg */
  int hidden[DML_CLI_MAX_HIDDEN];
  int n_hidden;
  int epochs, batch;
  double lr;               /* <= 0: the optimizer's default */
  const char *optimizer;   /* sgd|momentum|adam|adagrad|ftrl */
  const char *lr_schedule; /* cosine|constant */
  double momentum, weight_decay, l1, l2, ftrl_alpha, ftrl_beta;
  uint64_t seed;
  const char *save, *metrics;
  int json, quiet, threads;
  int loader_threads, prefetch; /* input pipeline */
  const char *augment;          /* NULL: none */
  /* distributed */
  int nproc;             /* -n */
  const char *strategy;  /* local|allreduce|ps */
  int servers;           /* ps: dedicated servers (default 1); 0 with servers_colocated */
  int servers_colocated; /* ps: --servers colocated */
  const char *sync;      /* ps: bsp|ssp:S|asp (default bsp) */
  int server_threads;    /* ps: request-handling threads per server process (default 1) */
  const char *backend;   /* tcp|mpi */
  double bucket_mb;
  int accumulate, sync_every;
  const char *grad_compress; /* none|fp16|bf16 */
  const char *trace, *checkpoint;
  int checkpoint_every, checkpoint_every_clocks, resume;
} dml_cli_train_flags;

/* Fills f from argv (argv[0] is "train"); exits with a usage error on bad flags, 0 after --help. */
int dml_cli_train_flags_parse(dml_cli_train_flags *f, int argc, char **argv);

#endif
