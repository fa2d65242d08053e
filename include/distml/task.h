/* distml task layer: a work-stealing thread pool (one Chase-Lev deque per worker, a shared
 * injection queue for work submitted from other threads), task groups with first-error reporting
 * and cancellation, futures with dependencies, parallel-for, and the input pipeline that feeds
 * training (source -> shuffle -> batch -> map -> prefetch), and a task farm that hands tasks to
 * worker processes over a communicator (comm.h). It moves no model data and knows no models.
 *
 * Ownership:
 *  - dml_pool: created by dml_pool_create, freed by dml_pool_destroy. Every task group must have
 *    been waited before the pool is destroyed; outstanding futures are finished by destroy.
 *  - dml_task_group: caller-owned storage (stack is fine), initialised with dml_task_group_init,
 *    must be waited (dml_task_group_wait) before it goes out of scope. One thread waits a group.
 *  - Task arguments (void *arg) stay owned by the caller and must stay valid until the task ran.
 *  - dml_future: created by dml_future_async with one reference for the caller, released with
 *    dml_future_release; the pool keeps its own reference while the task is pending or running.
 *  - dml_pipe: created by dml_pipe_create, freed by dml_pipe_destroy; a batch returned by
 *    dml_pipe_next belongs to the caller until it gives it back with dml_pipe_release.
 *
 * Threads: every function may be called from any thread, inside or outside the pool, except
 * where noted. Waiting inside a pool worker runs other tasks instead of blocking. */
#ifndef DISTML_TASK_H
#define DISTML_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "distml/comm.h"
#include "distml/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* =============================================================================================
 * Pool */

typedef struct dml_pool dml_pool;

typedef struct dml_pool_opts {
  unsigned nthreads;   /* worker threads; 0: DISTML_THREADS or the number of online CPUs */
  unsigned spin_us;    /* how long an idle worker looks for work before it sleeps; 0: 50 us */
  unsigned deque_log2; /* initial per-worker deque capacity (2^n tasks, grows); 0: 10 */
  const char *name;    /* thread names "<name>-<i>" (for perf/gdb), at most 10 chars; NULL: "dml" */
} dml_pool_opts;

/* Defaults: every field 0/NULL. */
void dml_pool_opts_default(dml_pool_opts *opts);

/* Start the worker threads. opts may be NULL (defaults). On failure *out is NULL and err says
 * why (DML_ENOMEM, DML_ESYS when a thread cannot be started, DML_EINVAL for bad options). */
int dml_pool_create(const dml_pool_opts *opts, dml_pool **out, dml_err *err);
/* Finish outstanding futures, stop and join the workers, free everything. Accepts NULL.
 * Must not be called from a worker of this pool. */
void dml_pool_destroy(dml_pool *pool);
/* Number of worker threads. */
unsigned dml_pool_nthreads(const dml_pool *pool);
/* Index of the calling thread among the pool's workers (0..nthreads-1), or -1 when the calling
 * thread is not a worker of this pool. Useful for per-worker scratch buffers. */
int dml_pool_worker_index(const dml_pool *pool);

/* Counters, summed over the workers (each worker counts in its own cache line; the sum is read
 * without stopping the pool, so it is a snapshot, exact once the pool is quiet). */
typedef struct dml_pool_stats {
  uint64_t spawned;     /* tasks pushed by workers onto their own deques */
  uint64_t injected;    /* tasks submitted from threads outside the pool */
  uint64_t executed;    /* tasks run (or skipped because their group was cancelled) */
  uint64_t stolen;      /* tasks taken from another worker's deque */
  uint64_t steal_fails; /* steal attempts that found nothing or lost a race */
  uint64_t sleeps;      /* times a worker went to sleep after spinning */
  unsigned sleeping;    /* workers asleep right now */
  uint64_t idle_ns;     /* time workers spent looking for work or asleep (all workers) */
} dml_pool_stats;
void dml_pool_get_stats(const dml_pool *pool, dml_pool_stats *stats);

/* =============================================================================================
 * Tasks and task groups */

/* A task: returns 0, or a negative DML_E... code (any non-zero value is an error) which becomes
 * the group's error and cancels the group. */
typedef int (*dml_task_fn)(void *arg);

/* Caller-owned storage for a group; the fields are private to the pool. */
typedef struct dml_task_group {
  uint64_t opaque[6];
} dml_task_group;

/* Prepare g for tasks on pool. */
void dml_task_group_init(dml_task_group *g, dml_pool *pool);
/* Like dml_task_group_init, and cancelling parent (or its parent...) also cancels g. parent must
 * outlive g. */
void dml_task_group_init_child(dml_task_group *g, dml_task_group *parent);

/* Run fn(arg) on the pool as part of g. From a worker the task goes onto the worker's own deque
 * (no lock, no allocation once warm); from any other thread through the injection queue.
 * Returns 0, DML_ECANCELED if g is already cancelled (the task is not run), DML_ENOMEM. */
int dml_task_spawn(dml_task_group *g, dml_task_fn fn, void *arg);
/* Wait until every task of g has finished, running other tasks meanwhile. Returns 0, the first
 * error a task returned, or DML_ECANCELED if g was cancelled without an error. After the wait g
 * may be reused (it is reset: no error, not cancelled). */
int dml_task_group_wait(dml_task_group *g);
/* Tasks of g that have not started yet are skipped; running ones may poll
 * dml_task_group_is_canceled. Thread-safe, idempotent. */
void dml_task_group_cancel(dml_task_group *g);
/* 1 if g or one of its ancestors was cancelled (or a task failed), else 0. */
int dml_task_group_is_canceled(const dml_task_group *g);

/* Run body over [lo, hi) cut into pieces of at most grain indices (grain 0: about 8 pieces per
 * worker), by recursive halving so idle workers steal the biggest pieces. body returns 0 or an
 * error; the first error stops pieces not yet started and is returned. */
typedef int (*dml_range_fn)(int64_t lo, int64_t hi, void *ctx);
int dml_parallel_for(dml_pool *pool, int64_t lo, int64_t hi, int64_t grain, dml_range_fn body,
                     void *ctx);

/* =============================================================================================
 * Futures: a task that runs once all its input futures are done, and whose status and value can
 * be waited on. If an input failed (or was cancelled), the task is not run and its future fails
 * with the input's error. Futures allocate (one block each); use groups for fine-grained work. */

typedef struct dml_future dml_future;
/* Compute and store a value in *value (initially NULL; owned by whoever reads it). */
typedef int (*dml_future_fn)(void *arg, void **value);

/* Schedule fn(arg) to run when all ndeps futures in deps are done (deps may be NULL when ndeps
 * is 0; the same future may appear twice). *out gets a reference. Returns 0 or DML_ENOMEM. */
int dml_future_async(dml_pool *pool, dml_future_fn fn, void *arg, dml_future *const *deps,
                     size_t ndeps, dml_future **out);
/* Wait (running other tasks meanwhile) until f is done; returns its status (0 or the error of
 * fn or of a failed input) and stores its value in *value if value is non-NULL. Several threads
 * may wait on the same future. */
int dml_future_wait(dml_future *f, void **value);
/* 1 when f has finished (successfully or not), else 0. Does not block. */
int dml_future_is_done(const dml_future *f);
/* Drop the caller's reference. Accepts NULL. The task still runs if it has not yet. */
void dml_future_release(dml_future *f);

/* =============================================================================================
 * Input pipeline: elements are indices 0..n-1 of an epoch (e.g. dataset rows); stages
 *   source (epoch order, shuffled or not) -> shuffle buffer -> batch -> map (parallel on the
 *   pool) -> collate -> prefetch (k batches prepared ahead of the consumer)
 * with a byte budget bounding the memory of elements and batches in flight. The shuffle buffer
 * and the batching work on indices (a buffer of shuffle_buffer indices gives the same order as
 * tf.data's buffer of elements would, without holding elements), so which elements make up a
 * batch is fixed by (seed, epoch) before any element is mapped; map then runs in parallel on the
 * pool and a batch is collated by whichever task maps its last piece. Results depend only on
 * (seed, epoch), never on thread timing: map gets a generator seeded from (seed, epoch, element
 * index). Two kinds of element:
 *  - opaque, of a fixed size: map fills an element buffer of elem_bytes, collate gathers the
 *    elements of a batch into a buffer of batch_bytes (the pipeline knows nothing of the type);
 *  - rows of a CSR matrix (opts.csr): the pipeline itself copies each batch's rows into one CSR
 *    batch (indptr, indices, values, labels), the same rows in the same order as
 *    dml_dataset_gather (data.h) gives for the batch's indices. Rows differ in length, so the
 *    batch buffers are sized per batch and the byte budget counts the CSR bytes of the batches
 *    in flight. No map or collate callbacks, and no augmentation (nothing here knows what a
 *    sparse row means). */

typedef struct dml_pipe dml_pipe;

/* Produce element number index of the epoch into out (elem_bytes bytes, uninitialised). rng is
 * seeded from (seed, epoch, index) so augmentation is reproducible. Runs on pool workers,
 * concurrently with other calls. Returns 0 or an error (which fails the batch). */
typedef int (*dml_pipe_map_fn)(void *ctx, uint64_t epoch, uint64_t index, dml_rng *rng, void *out);
/* Gather count elements (pointers to their buffers, in batch order) into batch (batch_bytes).
 * idx[i] is the index of element i. count < batch_size only for a last partial batch. Runs on
 * a pool worker, concurrently with other batches' collates. */
typedef int (*dml_pipe_collate_fn)(void *ctx, void *const *elems, const uint64_t *idx, size_t count,
                                   void *batch);

/* Rows of a CSR matrix as the pipeline's elements: element index i is row first_row + i, which
 * is [indptr[r], indptr[r + 1]) of indices/values. The arrays stay owned by the caller and must
 * not change while the pipeline runs; indptr must have first_row + n + 1 entries. */
typedef struct dml_pipe_csr {
  const uint64_t *indptr;  /* non-NULL selects CSR mode */
  const uint32_t *indices; /* may be NULL when the matrix has no entries */
  const float *values;
  const int32_t *y;   /* a label per row, or NULL (then the batches carry no labels) */
  uint64_t first_row; /* element 0 is this row (a rank's shard) */
} dml_pipe_csr;

typedef struct dml_pipe_opts {
  uint64_t n;            /* elements per epoch */
  size_t elem_bytes;     /* size of one mapped element (> 0; 0 in CSR mode) */
  size_t batch_size;     /* elements per batch (> 0) */
  size_t batch_bytes;    /* size of one collated batch (> 0; 0 in CSR mode) */
  int drop_last;         /* 1: drop a last partial batch */
  int shuffle_order;     /* 1: the source visits 0..n-1 in a random order per (seed, epoch) */
  size_t shuffle_buffer; /* shuffle buffer (indices) after the source; 0 or 1: none */
  int unordered;         /* 1: hand out whichever batch is ready first (a slow batch does not
                               hold up the others); batch contents stay deterministic */
  size_t prefetch;       /* batches prepared ahead of the one the consumer holds; 0: 2 */
  size_t map_chunk;      /* elements per map task; 0: batch_size / (2 x threads), at least 1 */
  uint64_t byte_budget;  /* cap on bytes of batch slots (elements + batch); 0: 256 MiB. The
                               number of slots (prefetch + 1) is cut to fit; one must fit.
                               CSR mode: cap on the CSR bytes of the batches scheduled, ready
                               or held; a batch waits until it fits (one larger than the whole
                               budget is prepared when no other batch is in flight). */
  uint64_t seed;
  dml_pipe_map_fn map;         /* NULL in CSR mode */
  dml_pipe_collate_fn collate; /* NULL in CSR mode */
  void *ctx;                   /* passed to map and collate */
  dml_pipe_csr csr;            /* CSR mode when csr.indptr != NULL */
} dml_pipe_opts;

/* One batch handed to the consumer. */
typedef struct dml_pipe_batch {
  void *data;   /* batch_bytes bytes filled by collate (CSR mode: bytes bytes holding the
                   arrays below); owned by the pipeline */
  size_t count; /* elements in it (batch_size, or fewer for a last partial batch) */
  uint64_t epoch;
  uint64_t number;     /* batch number within the epoch */
  const uint64_t *idx; /* the element indices, count of them, in batch order */
  /* CSR mode only (NULL/0 otherwise), pointing into data: */
  const uint64_t *indptr;  /* count + 1, indptr[0] == 0 */
  const uint32_t *indices; /* indptr[count] column indices */
  const float *values;     /* indptr[count] values */
  const int32_t *y;        /* count labels, or NULL when opts.csr.y is NULL */
  uint64_t nnz;            /* indptr[count] */
  size_t bytes;            /* bytes of data this batch uses (what the byte budget counts) */
} dml_pipe_batch;

/* Per-stage times in ns, summed over threads. map_busy: inside map callbacks; map_wait: from a
 * batch being scheduled to its first map task starting (queueing in the pool); shuffle_busy:
 * source order + shuffle buffer + batching of indices; batch_busy: inside collate; batch_wait:
 * ready batches waiting for the consumer (how far the pipeline is ahead); consumer_wait: time
 * dml_pipe_next blocked, the input stall a trainer sees. */
typedef struct dml_pipe_stats {
  uint64_t map_busy_ns, map_wait_ns;
  uint64_t shuffle_busy_ns;
  uint64_t batch_busy_ns, batch_wait_ns;
  uint64_t consumer_wait_ns;
  uint64_t batches, elements;      /* delivered */
  uint64_t bytes_live, bytes_peak; /* bytes of slots in use now, and the most at once (CSR
                                      mode: CSR bytes of the batches in flight) */
  size_t slots;                    /* batch slots the budget allowed */
} dml_pipe_stats;

void dml_pipe_opts_default(dml_pipe_opts *opts);
/* Validate opts and allocate the pipeline's buffers. Nothing runs until dml_pipe_start.
 * On failure *out is NULL and err says which option is wrong (DML_EINVAL) or DML_ENOMEM. */
int dml_pipe_create(dml_pool *pool, const dml_pipe_opts *opts, dml_pipe **out, dml_err *err);
/* Begin epoch: waits for the batches of a previous epoch still being prepared and takes back
 * any the consumer still holds (their data becomes invalid). */
int dml_pipe_start(dml_pipe *p, uint64_t epoch);
/* Next batch of the epoch in *out (blocking). Must be called from a thread outside the pool.
 * Returns 0, DML_ECLOSED at the end of the epoch, DML_ESTATE when the consumer holds every slot
 * (CSR mode: or holds so many bytes that the next batch does not fit the budget), or the error
 * of a map/collate callback (dml_pipe_errmsg names the element index; CSR mode: DML_ENOMEM for
 * a batch buffer, DML_ERANGE for a row whose indptr decreases); after such an error the epoch
 * is over (later calls return the same error until dml_pipe_start).
 * A batch must be given back with dml_pipe_release for its slot to be reused. */
int dml_pipe_next(dml_pipe *p, dml_pipe_batch *out);
void dml_pipe_release(dml_pipe *p, dml_pipe_batch *b);
void dml_pipe_get_stats(const dml_pipe *p, dml_pipe_stats *stats);
const char *dml_pipe_errmsg(const dml_pipe *p);
/* Wait for running map tasks and free. Accepts NULL. */
void dml_pipe_destroy(dml_pipe *p);

/* Random image augmentation, in place, over one float image of h rows by w columns (c channels
 * interleaved: pixel (y, x, k) at img[(y * w + x) * c + k]). Which changes apply is a bit mask. */
enum {
  DML_AUG_SHIFT = 1, /* shift by up to max_shift pixels in each direction, zero fill */
  DML_AUG_FLIP = 2,  /* mirror left-right with probability 1/2 */
  DML_AUG_NOISE = 4  /* add noise of standard deviation noise_std (approximately Gaussian: a
                        centred sum of four uniforms, bounded at 3.46 standard deviations) */
};
typedef struct dml_augment {
  unsigned flags;  /* DML_AUG_... */
  int max_shift;   /* pixels; 0: 2 */
  float noise_std; /* 0: 0.05 */
} dml_augment;
/* Parse "shift,flip,noise" (any subset; "all"; "none") into a->flags with default amounts.
 * On error err names the unknown word. */
int dml_augment_parse(const char *spec, dml_augment *a, dml_err *err);
/* Apply a to img using rng (from dml_pipe's map callback for reproducibility). scratch must
 * hold h * w * c floats (or be NULL: then DML_AUG_SHIFT allocates temporarily). */
int dml_augment_image(const dml_augment *a, dml_rng *rng, float *img, size_t h, size_t w, size_t c,
                      float *scratch);

/* =============================================================================================
 * Task farm across processes (on a dml_comm): rank 0 is the master, every other rank a worker.
 * The master hands each worker a task as it finishes its last (one running plus `prefetch`
 * queued per worker, so no worker idles for a round trip); a worker that dies (connection lost)
 * or falls silent (no heartbeat for lease_ms) loses its tasks, which go back to the front of the
 * queue; a task that was running on max_kills workers when they died fails with an error naming
 * it; results are kept once per task (the first wins, later duplicates are counted and dropped).
 * Execution is at-least-once, so handlers must be idempotent. Tasks name a registered handler
 * and carry a byte payload; payloads and results have a fixed maximum size (frames are padded
 * to it). Needs the tcp backend's thread-safe sends (the worker's heartbeat thread sends while
 * its main thread runs tasks).
 *
 * Ownership: the master's task payloads stay owned by the caller; result data is allocated by
 * the library (dml__malloc) and freed with dml_farm_results_free. */

/* Run one task: read in (in_bytes), write up to out_cap bytes of result to out and set
 * *out_bytes. Returns 0 or an error code (which becomes the task's status; it is not retried). */
typedef int (*dml_farm_fn)(void *user, const void *in, size_t in_bytes, void *out, size_t out_cap,
                           size_t *out_bytes);

typedef struct dml_farm_handler {
  const char *name; /* at most 31 bytes */
  dml_farm_fn fn;
  void *user;
} dml_farm_handler;

typedef struct dml_farm_opts {
  int hb_ms;                /* worker heartbeat interval; 0: 100 */
  int lease_ms;             /* a worker silent this long is presumed dead; 0: 20 x hb_ms */
  int max_kills;            /* a task that was running on this many dying workers fails; 0: 3 */
  int prefetch;             /* tasks queued at a worker beyond the running one; 0: 1 */
  size_t max_payload_bytes; /* largest task payload; 0: 4096 */
  size_t max_result_bytes;  /* largest result; 0: 4096 */
  int progress;             /* 1: progress bar (done / total / ETA) on stderr */
} dml_farm_opts;

typedef struct dml_farm_task {
  const char *handler; /* name of a handler the workers registered */
  const void *payload;
  size_t bytes;
} dml_farm_task;

typedef struct dml_farm_result {
  int status; /* 0, the handler's error, DML_EPEER (killed max_kills workers), DML_EINVAL */
  void *data; /* result bytes (NULL if none); freed by dml_farm_results_free */
  size_t bytes;
  int worker;   /* rank that produced it (-1: none) */
  int attempts; /* times it was handed out */
} dml_farm_result;

typedef struct dml_farm_stats {
  uint64_t done, failed, reissued, duplicates;
  int workers_lost;
  double wall_s;
} dml_farm_stats;

void dml_farm_opts_default(dml_farm_opts *opts);
/* Master (rank 0): run ntasks tasks on the workers and fill results[ntasks]. Returns 0 when every
 * task has a result (check each status), DML_EPEER when no worker is left (err names the last),
 * or another error; tells every worker still alive to stop before returning. */
int dml_farm_run(dml_comm *c, const dml_farm_opts *opts, const dml_farm_task *tasks, size_t ntasks,
                 dml_farm_result *results, dml_farm_stats *stats, dml_err *err);
void dml_farm_results_free(dml_farm_result *results, size_t ntasks);
/* Worker (rank > 0): serve tasks with these handlers until the master says stop (returns 0) or
 * is lost (returns the error, err says why). */
int dml_farm_serve(dml_comm *c, const dml_farm_opts *opts, const dml_farm_handler *handlers,
                   size_t nhandlers, dml_err *err);

#ifdef __cplusplus
}
#endif
#endif
