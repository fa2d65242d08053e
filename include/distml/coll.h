/* distml collectives: all-reduce, reduce-scatter, all-gather, broadcast and barrier over a
 * communicator (comm.h), blocking and non-blocking, plus an all-reduce whose values travel as
 * fp16/bf16. They use only the communicator's point-to-point calls (tags at or above
 * DML_TAG_RESERVED); they know nothing of models, and gradient bucketing lives above them.
 *
 * Ownership: the caller owns every buffer. A blocking collective returns when its buffers may be
 * reused; a buffer given to a non-blocking one must stay valid and untouched until its request
 * completes (dml_coll_wait/dml_coll_test report done, with success or failure).
 *
 * Ordering: every rank must issue the same collectives on a communicator in the same order
 * (blocking and non-blocking alike). Non-blocking collectives run in issue order on one
 * background thread per communicator, so they overlap the caller's compute; a blocking call first
 * waits for the ones issued before it. Each collective gets a per-communicator sequence number
 * that selects its tag, so back-to-back collectives never mix.
 *
 * Failure: a dead or silent peer makes the collective return a negative DML_E... code (never a
 * hang: every wait is bounded by the communicator's timeout) and dml_coll_errmsg() names the rank
 * that failed. A failed collective aborts the communicator (dml_comm_abort), because the ranks no
 * longer agree on which messages are in flight; later collectives on it return the same error.
 * After DISTML_STALL_S seconds (default 10) without progress a WARN log lists the peers awaited.
 *
 * Call dml_coll_detach(comm) on every rank before dml_comm_free(comm), once every request on it
 * has been waited for: it stops the background thread, says goodbye to the other ranks (so a
 * clean exit is not mistaken for a failure) and frees the state kept for that communicator. */
#ifndef DISTML_COLL_H
#define DISTML_COLL_H

#include <stddef.h>
#include <stdint.h>

#include "distml/comm.h"
#include "distml/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types. F16 (IEEE half) and BF16 are wire types for dml_allreduce_f32_compressed; the
 * plain collectives move them too (all-gather, broadcast) and reduce them through f32. */
typedef enum {
  DML_F32 = 0,
  DML_F64 = 1,
  DML_I32 = 2,
  DML_I64 = 3,
  DML_F16 = 4,
  DML_BF16 = 5
} dml_dtype;

/* Reductions. AVG is SUM divided by the world size (integer division, truncated, for I32/I64). */
typedef enum { DML_SUM = 0, DML_AVG = 1, DML_MAX = 2, DML_MIN = 3 } dml_redop;

/* All-reduce algorithms. AUTO picks RD up to a size threshold and RING above it; the
 * environment variable DISTML_ALLREDUCE_ALGO=ring|rd forces one for AUTO calls. */
typedef enum {
  DML_ALGO_AUTO = 0,
  DML_ALGO_RING = 1, /* chunked, pipelined ring: reduce-scatter then all-gather */
  DML_ALGO_RD = 2    /* recursive doubling; extra ranks of a non-power-of-two are folded in */
} dml_allreduce_algo;

/* Bytes per element (0 for an unknown type). */
size_t dml_dtype_size(dml_dtype dt);
/* "f32", "bf16", ...; NULL for an unknown type. */
const char *dml_dtype_name(dml_dtype dt);
/* "sum", "avg", "max", "min"; NULL for an unknown op. */
const char *dml_redop_name(dml_redop op);
/* "auto", "ring", "rd". */
const char *dml_allreduce_algo_name(dml_allreduce_algo a);
/* Parse "f32" etc. / "sum" etc. / "auto|ring|rd"; 0 or DML_EINVAL. */
int dml_dtype_parse(const char *s, dml_dtype *out);
int dml_redop_parse(const char *s, dml_redop *out);
int dml_allreduce_algo_parse(const char *s, dml_allreduce_algo *out);
/* Size in bytes at and below which AUTO uses RD for world_size ranks (measured here: 256 KiB for
 * 2 ranks, 64 KiB for more); env DISTML_ALLREDUCE_RD_MAX_BYTES overrides. */
size_t dml_allreduce_threshold_bytes(int world_size);

/* ---------------------------------------------------------------------------------------------
 * Blocking collectives. count is in elements. Every rank passes the same count, dtype, op, root.
 * count 0 is valid (the ranks still synchronise). */

/* In place: buf[i] = op over ranks of buf[i]. */
int dml_allreduce(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op);
/* The same with the algorithm chosen by the caller (AUTO: as dml_allreduce). */
int dml_allreduce_with(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op,
                       dml_allreduce_algo algo);
/* sendbuf holds size*recvcount elements; rank r receives block r of the reduction in recvbuf
 * (recvcount elements). sendbuf is not modified; the buffers must not overlap. */
int dml_reduce_scatter(dml_comm *c, const void *sendbuf, void *recvbuf, size_t recvcount,
                       dml_dtype dt, dml_redop op);
/* recvbuf (size*sendcount elements) gets every rank's sendbuf, rank r's at block r. sendbuf may
 * be recvbuf + r*sendcount (in place). */
int dml_allgather(dml_comm *c, const void *sendbuf, void *recvbuf, size_t sendcount, dml_dtype dt);
/* buf of root is copied into buf of every rank. */
int dml_broadcast(dml_comm *c, void *buf, size_t count, dml_dtype dt, int root);
/* Returns once every rank has entered the barrier. */
int dml_barrier(dml_comm *c);
/* All-reduce of f32 values sent as wire (DML_F16 or DML_BF16): every partial sum accumulates in
 * f32 and only the transfers are rounded; op SUM, AVG, MAX or MIN. The result is the same on
 * every rank (each rank rounds its own contribution like the ones it receives). */
int dml_allreduce_f32_compressed(dml_comm *c, float *buf, size_t count, dml_dtype wire,
                                 dml_redop op);

/* ---------------------------------------------------------------------------------------------
 * Non-blocking forms: queue the collective on the communicator's background thread and return.
 * *req is owned by the library and released by a dml_coll_wait or dml_coll_test that reports
 * completion (whatever the status); it must not be used after that. An argument error is
 * reported at once (no request is made). */
typedef struct dml_coll_req dml_coll_req;

int dml_iallreduce(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op,
                   dml_coll_req **req);
int dml_iallreduce_with(dml_comm *c, void *buf, size_t count, dml_dtype dt, dml_redop op,
                        dml_allreduce_algo algo, dml_coll_req **req);
int dml_ireduce_scatter(dml_comm *c, const void *sendbuf, void *recvbuf, size_t recvcount,
                        dml_dtype dt, dml_redop op, dml_coll_req **req);
int dml_iallgather(dml_comm *c, const void *sendbuf, void *recvbuf, size_t sendcount, dml_dtype dt,
                   dml_coll_req **req);
int dml_ibroadcast(dml_comm *c, void *buf, size_t count, dml_dtype dt, int root,
                   dml_coll_req **req);
int dml_ibarrier(dml_comm *c, dml_coll_req **req);
int dml_iallreduce_f32_compressed(dml_comm *c, float *buf, size_t count, dml_dtype wire,
                                  dml_redop op, dml_coll_req **req);

/* Wait up to timeout_ms (-1: no limit of its own; the collective itself is bounded by the
 * communicator's timeout). Returns the collective's status and releases req, or DML_ETIMEDOUT
 * and leaves req valid. */
int dml_coll_wait(dml_coll_req *req, int timeout_ms);
/* dml_coll_wait that also tells when the collective itself ran: *start_ns when the background
 * thread started it (after the collectives queued before it), *done_ns when it completed, on the
 * dml_now_ns() clock (both 0 if it never ran). Either pointer may be NULL. */
int dml_coll_wait_timed(dml_coll_req *req, int timeout_ms, uint64_t *start_ns, uint64_t *done_ns);
/* *done = 1 when complete: then req is released and the return value is its status. */
int dml_coll_test(dml_coll_req *req, int *done);

/* The message of the last failed collective on c ("" if none): names the operation, its
 * sequence number and the peer. Valid until the next collective on c fails or detach. */
const char *dml_coll_errmsg(dml_comm *c);
/* Stop the background thread (after the queued collectives finish or fail), exchange a goodbye
 * with the other ranks (collective: every rank calls it; waits at most min(timeout, 10 s) for a
 * rank that does not) and free the state kept for c. Call before dml_comm_free(c), after waiting
 * for every request on c. Accepts NULL and a communicator never used here. */
void dml_coll_detach(dml_comm *c);

#ifdef __cplusplus
}
#endif
#endif
