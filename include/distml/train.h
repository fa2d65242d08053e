/* distml train: the training strategies as drivers over the layers below -- local (one process)
 * and allreduce (data-parallel replicas, bucketed gradient all-reduce overlapped with backward,
 * with accumulation, compression on the wire and local SGD as options). A driver owns the loop:
 * epochs, sharding, batches, optimizer steps, evaluation, metrics, checkpoints; the caller owns the
 * data sets and the communicator.
 *
 * Determinism: for a fixed seed, rank count and bucket plan, two runs give bitwise-identical
 * models, and every replica is bitwise identical to the others after every step. */
#ifndef DISTML_TRAIN_H
#define DISTML_TRAIN_H

#include <stdint.h>

#include "distml/coll.h"
#include "distml/comm.h"
#include "distml/core.h"
#include "distml/data.h"
#include "distml/ml.h"
#include "distml/task.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DML_STRATEGY_LOCAL = 0, DML_STRATEGY_ALLREDUCE = 1 } dml_strategy;

typedef struct dml_train_config {
  dml_strategy strategy;
  dml_model_config model; /* in_dim/num_classes 0: taken from the training data */
  dml_optim_config optim;
  int epochs;                 /* >= 1 */
  int batch;                  /* GLOBAL batch: rows per optimizer step over all ranks, split as
                                evenly as possible (lower ranks get the extra rows); the
                                gradient is the mean over the global batch, so the learning rate
                                means what it means in a local run with the same batch */
  uint64_t seed;              /* initialisation and data order */
  const char *save_path;      /* model file written by rank 0 at the end (NULL: none) */
  const char *metrics_path;   /* JSON lines, one per epoch, rank 0 (NULL: none) */
  const char *trace_path;     /* Chrome trace of every rank (NULL: none) */
  const char *checkpoint_dir; /* checkpoints by rank 0 (NULL: none) */
  int checkpoint_every;       /* epochs between checkpoints (>= 1) */
  int resume;                 /* start from the last checkpoint in checkpoint_dir */
  int progress;               /* progress bar/lines on stderr (rank 0) */
  /* allreduce strategy */
  double bucket_mb;      /* gradient bucket cap in MB (the first bucket is at most 1/8 of it) */
  int accumulate;        /* micro-batches of `batch` rows per optimizer step (>= 1); the
                                all-reduce runs once per step: the effective batch is K*batch */
  dml_dtype wire_dtype;  /* DML_F32 (default), DML_F16 or DML_BF16 on the wire */
  int sync_every;        /* local SGD: 0 = all-reduce gradients every step; H > 0 = every
                                rank steps on its own gradients and the parameters are averaged
                                every H steps (and at the end of each epoch) */
  int64_t shard_of_rows; /* 0: train is the whole training set (each rank uses its shard of
                                it); N > 0: train already is this rank's dml_shard_range shard of
                                a set of N rows (the other rows were never kept) */
  int loader_threads;    /* 0: batches are gathered on the training thread; T > 0: the input
                                pipeline (task.h) prepares them on a pool of T threads ahead of
                                the trainer (dense rows or CSR rows, every strategy); batches
                                depend on the seed only, not on T */
  int prefetch;          /* pipeline: batches prepared ahead (0: 2) */
  dml_augment augment;   /* pipeline: random image augmentation (flags 0: none); rows are
                                taken as square single-channel images; refused for sparse data */
  int lr_cosine;         /* 1: the learning rate follows a cosine from optim.lr at the first
                                step to 0 after the last (per optimizer step); 0: constant */
  int stop_after_epoch;  /* testing: return DML_ECANCELED after this epoch (0: never) */
  /* ps strategy with checkpoint_dir: N > 0: servers checkpoint whenever the slowest worker's
   * clock has moved N past the last checkpoint's, instead of every checkpoint_every seconds */
  int checkpoint_every_clocks;
} dml_train_config;

/* Defaults: local, 10 epochs, batch 64, seed 1, bucket 1 MB, accumulate 1, F32, checkpoint every 1. */
void dml_train_config_init(dml_train_config *cfg);

typedef struct dml_train_result {
  double test_accuracy, test_loss, test_auc; /* last epoch; auc NaN unless binary */
  double train_loss, train_accuracy;         /* last epoch, over all ranks */
  double samples_per_s;                      /* training samples (all ranks) / training time */
  double wall_s;                             /* whole run incl. evaluation */
  double train_s;                            /* time in training steps only */
  uint64_t steps;                            /* optimizer steps done */
  int epochs_done;
  int resumed_from_epoch; /* 0 when not resumed */
  /* allreduce strategy, per step averages */
  double comm_s, wait_s;                      /* all-reduce busy time, time the trainer waited */
  double overlap_pct;                         /* 100 * (1 - wait / comm): communication hidden */
  double bytes_per_step, ring_bytes_per_step; /* measured sent bytes vs the ring formula */
  double input_stall_s;                       /* last epoch: time the trainer waited for batches */
  double input_stall_pct;                     /* ... as a share of the epoch's training time */
} dml_train_result;

/* Trains on train (this rank's shard of it is used) and evaluates on test (may be NULL) after
 * every epoch. comm may be NULL (one process). Every rank calls it with the same config.
 * Returns 0 or a DML_E... code; err says what failed and, for a peer, which rank. */
int dml_train_run(const dml_train_config *cfg, const dml_dataset *train, const dml_dataset *test,
                  dml_comm *comm, dml_train_result *result, dml_err *err);

/* Evaluation of a model on a data set (this rank's shard, reduced over comm if not NULL):
 * accuracy, mean loss and, for binary models, AUC. */
int dml_evaluate(dml_model *m, const dml_dataset *ds, dml_comm *comm, double *accuracy,
                 double *loss, double *auc, dml_err *err);

#ifdef __cplusplus
}
#endif
#endif
