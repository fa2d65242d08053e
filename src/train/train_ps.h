/* The parameter-server training driver (train_ps.c): sparse logistic regression and the dense
 * models trained through dml_ps servers and workers. Declared here rather than in train.h, which its owner keeps; the
 * CLI includes "train/train_ps.h". */
#ifndef DISTML_TRAIN_PS_H
#define DISTML_TRAIN_PS_H

#include "distml/ps.h"
#include "distml/task.h"
#include "distml/train.h"

/* Shared by the trainers (train.c): the input pipeline over rows [first_row, first_row + nrows)
 * of train, batches of batch rows (dense: rows then int32 labels, augmented by cfg->augment;
 * sparse: CSR), on cfg->loader_threads threads, shuffled from seed; drop_last: the last partial
 * batch is dropped. Errors name the data set (--augment on sparse or non-square rows). */
typedef struct dml__loader dml__loader;
int dml__loader_create(const dml_train_config *cfg, const dml_dataset *train, int64_t first_row,
                       int64_t nrows, int batch, uint64_t seed, int drop_last, dml__loader **out,
                       dml_err *err);
dml_pipe *dml__loader_pipe(const dml__loader *l);
void dml__loader_free(dml__loader *l);
/* Starts the pipeline's epoch (the caller holds no batch
 * after it) and records its stats at the start in *st0. */
int dml__train_pipe_epoch(dml_pipe *pipe, int epoch, int *holding, dml_pipe_stats *st0,
                          const char *what, dml_err *err);
/* Ends the pipeline's epoch: gives back the batch held, and puts the input stall since *st0
 * (seconds, and percent of epoch_s) into res. */
void dml__train_pipe_epoch_end(dml_pipe *pipe, dml_pipe_batch *held, int *holding,
                               const dml_pipe_stats *st0, double epoch_s, dml_train_result *res);
/* Gives back the batch held from pipe, if any, and takes the
 * next one as b (dense rows of dim floats then int32 labels, or CSR rows). what prefixes the
 * error message. */
int dml__train_next_batch(dml_pipe *pipe, dml_pipe_batch *held, int *holding, int dim, dml_batch *b,
                          const char *what, dml_err *err);

/* Every rank calls it with the same configs. Ranks 0..S-1 serve (or every rank, colocated), the
 * others train on their shard of train (rows split among the workers; cfg->batch is the global
 * batch, each worker takes batch / W rows per push). cfg->optim is used as the servers' optimizer
 * (ps->optim is ignored). After the last epoch the first worker pulls the whole model once every
 * other worker has finished or died, evaluates it on test, and sends the result to rank 0; result
 * is filled on rank 0 and on the first worker. logreg trains on sparse keys (a batch pulls and
 * pushes only the coordinates it touches); softmax and mlp through the dense API (the whole
 * parameter buffer, as deltas from the seeded initialisation, see train_ps.c). comm must not be NULL. Dedicated servers never read train or test
 * (they may be NULL there); workers need the whole sparse training set (they shard it).
 * Recovery (dedicated servers with cfg->checkpoint_dir): servers write their shards into the
 * directory every cfg->checkpoint_every seconds (for this strategy N counts seconds, not epochs),
 * or every cfg->checkpoint_every_clocks clocks of the slowest worker when that is set;
 * a server process whose environment has DISTML_RESTART >= 1 (the launcher's restart) reloads
 * its shard; when a peer fails every process re-forms the job (ps.h cfg.recover) and the
 * restarted server logs the acknowledged pushes lost since its checkpoint. */
int dml_train_ps_run(const dml_train_config *cfg, const dml_dataset *train, const dml_dataset *test,
                     dml_comm *comm, const dml_ps_config *ps, dml_train_result *result,
                     dml_err *err);

#endif
