/* Internals shared by the collective algorithms: the per-collective context (tag, sequence,
 * scratch buffers, requests in flight), bounded waits that watch for dead peers, and the
 * reduction kernels. Not installed; the algorithms include only this and comm.h. */
#ifndef DISTML_COLL_INTERNAL_H
#define DISTML_COLL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/internal.h"
#include "distml/coll.h"
#include "distml/comm.h"

/* Collectives use tags DML_TAG_RESERVED + [0, DML__COLL_TAG_SPAN): seq modulo the span selects
 * the tag. The failure notices use one tag just past that range. Other layers (ps, task farm)
 * must use reserved tags at or above DML__COLL_TAG_END. */
#define DML__COLL_TAG_SPAN 0x08000000
#define DML__COLL_TAG_NOTICE (DML_TAG_RESERVED + DML__COLL_TAG_SPAN)
#define DML__COLL_TAG_END (DML__COLL_TAG_NOTICE + 1)

typedef struct dml__coll_state dml__coll_state;

/* One collective in progress. The algorithms send and receive through the helpers below, which
 * keep every request in flight in pend[] so that a failure can drain them before the buffers
 * are released. Scratch buffers belong to the state and are reused between collectives. */
typedef struct dml__coll_ctx {
  dml__coll_state *st;
  dml_comm *comm;
  int rank, size;
  int tag;
  uint32_t seq;
  const char *what;    /* "allreduce" etc., for messages */
  int timeout_ms;      /* no progress for this long: DML_ETIMEDOUT */
  double stall_s;      /* no progress for this long: WARN once */
  size_t chunk_bytes;  /* ring pipelining unit (DISTML_RING_CHUNK_BYTES) */
  dml_comm_req **pend; /* requests in flight */
  int *pend_peer;      /* the peer of each */
  size_t npend, cappend;
  char err[512]; /* message of the failure, if any */
} dml__coll_ctx;

/* Scratch buffer i (0..3) of at least bytes; valid until the collective ends. NULL: out of memory
 * (the error is recorded in ctx). */
void *dml__coll_scratch(dml__coll_ctx *ctx, int i, size_t bytes);

/* Start a send/receive; the request is tracked by ctx. */
int dml__coll_isend(dml__coll_ctx *ctx, int peer, const void *buf, size_t bytes,
                    dml_comm_req **req);
int dml__coll_irecv(dml__coll_ctx *ctx, int peer, void *buf, size_t bytes, dml_comm_req **req);
/* Wait for req (to or from peer), in slices, checking the failure notices of the other ranks;
 * warns after stall_s and fails after timeout_ms without completion. */
int dml__coll_wait(dml__coll_ctx *ctx, dml_comm_req *req);
/* Wait for every request still tracked. */
int dml__coll_wait_all(dml__coll_ctx *ctx);
/* Exchange: send sbuf to dst and receive rbuf from src, both at once. */
int dml__coll_sendrecv(dml__coll_ctx *ctx, int dst, const void *sbuf, size_t sbytes, int src,
                       void *rbuf, size_t rbytes);
/* Record a failure message in ctx (first one wins); returns code. */
int dml__coll_fail(dml__coll_ctx *ctx, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reduction kernels (reduce.c). dst[i] = op(dst[i], src[i]) for n elements of dt (F16/BF16
 * through f32). AVG reduces as SUM; dml__scale_avg divides by p afterwards. */
void dml__reduce(void *dst, const void *src, size_t n, dml_dtype dt, dml_redop op);
void dml__scale_avg(void *buf, size_t n, dml_dtype dt, int p);
/* f32 accumulator += wire values (F16/BF16), with op. */
void dml__reduce_wire_into_f32(float *acc, const void *wire, size_t n, dml_dtype wt, dml_redop op);
/* f32 -> wire (round to nearest even) and back. */
void dml__f32_to_wire(void *wire, const float *src, size_t n, dml_dtype wt);
void dml__wire_to_f32(float *dst, const void *wire, size_t n, dml_dtype wt);
/* Round f32 values to wire precision in place (to wire and back). */
void dml__round_f32_to_wire(float *buf, size_t n, dml_dtype wt);

/* Algorithms. buf holds count elements of dt; wire is dt, or F16/BF16 with dt == F32 for the
 * compressed all-reduce (accumulate in f32, transfer as wire). */
int dml__allreduce_ring(dml__coll_ctx *ctx, void *buf, size_t count, dml_dtype dt, dml_dtype wire,
                        dml_redop op);
int dml__allreduce_rd(dml__coll_ctx *ctx, void *buf, size_t count, dml_dtype dt, dml_dtype wire,
                      dml_redop op);
/* Ring phases on buf split into size blocks of blk_count elements each: reduce-scatter leaves
 * block rank reduced (AVG not applied); all-gather starts from block rank and fills the rest. */
int dml__reduce_scatter_ring(dml__coll_ctx *ctx, void *buf, const size_t *blk_off,
                             const size_t *blk_cnt, dml_dtype dt, dml_dtype wire, dml_redop op);
int dml__allgather_ring(dml__coll_ctx *ctx, void *buf, const size_t *blk_off, const size_t *blk_cnt,
                        dml_dtype dt, dml_dtype wire);
int dml__broadcast_tree(dml__coll_ctx *ctx, void *buf, size_t bytes, int root);
int dml__barrier_dissemination(dml__coll_ctx *ctx);

#endif
