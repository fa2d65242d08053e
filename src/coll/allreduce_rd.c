/* Recursive-doubling all-reduce for small messages: log2(p) exchanges of the whole buffer, so
 * latency-optimal but it moves n*log2(p) bytes (large messages go to allreduce_ring.c). With a
 * rank count that is not a power of two, the first 2*extra ranks fold in pairs before and
 * unfold after. Float sums are commutative, so every rank ends with bitwise identical values. */
#include <string.h>

#include "coll/coll_internal.h"

/* Real rank of a rank numbered among the power-of-two participants. */
static int real_rank(int nr, int extra) {
  return nr < extra ? 2 * nr + 1 : nr + extra;
}

/* Sends our values (as wire, from stage, when compressed) and receives the peer's into rtmp. */
static int exchange(dml__coll_ctx *ctx, int peer, void *buf, void *stage, void *rtmp, size_t count,
                    dml_dtype dt, dml_dtype wire) {
  size_t bytes = count * dml_dtype_size(wire);
  const void *src = buf;
  if (wire != dt) {
    /* Round our own values first, so both partners add the same two numbers. */
    dml__round_f32_to_wire((float *)buf, count, wire);
    dml__f32_to_wire(stage, (const float *)buf, count, wire);
    src = stage;
  }
  return dml__coll_sendrecv(ctx, peer, src, bytes, peer, rtmp, bytes);
}

static void combine(void *buf, const void *rtmp, size_t count, dml_dtype dt, dml_dtype wire,
                    dml_redop op) {
  if (wire == dt)
    dml__reduce(buf, rtmp, count, dt, op);
  else
    dml__reduce_wire_into_f32((float *)buf, rtmp, count, wire, op);
}

int dml__allreduce_rd(dml__coll_ctx *ctx, void *buf, size_t count, dml_dtype dt, dml_dtype wire,
                      dml_redop op) {
  int p = ctx->size, r = ctx->rank;
  if (p == 1 || count == 0) {
    /* Nothing to combine, but the ranks still meet so that count 0 synchronises like the ring. */
    return p == 1 ? 0 : dml__barrier_dissemination(ctx);
  }
  size_t wsz = dml_dtype_size(wire), bytes = count * wsz;
  void *rtmp = dml__coll_scratch(ctx, 0, bytes);
  void *stage = wire != dt ? dml__coll_scratch(ctx, 1, bytes) : NULL;
  if (rtmp == NULL || (wire != dt && stage == NULL)) return DML_ENOMEM;
  int pof2 = 1;
  while (pof2 * 2 <= p) pof2 *= 2;
  int extra = p - pof2;
  int rc;
  int nr; /* our rank among the pof2 participants, -1 if folded out */
  if (r < 2 * extra) {
    if (r % 2 == 0) {
      const void *src = buf;
      if (wire != dt) {
        dml__f32_to_wire(stage, (const float *)buf, count, wire);
        src = stage;
      }
      dml_comm_req *req;
      rc = dml__coll_isend(ctx, r + 1, src, bytes, &req);
      if (rc == 0) rc = dml__coll_wait(ctx, req);
      if (rc) return rc;
      nr = -1;
    } else {
      dml_comm_req *req;
      if (wire != dt) dml__round_f32_to_wire((float *)buf, count, wire);
      rc = dml__coll_irecv(ctx, r - 1, rtmp, bytes, &req);
      if (rc == 0) rc = dml__coll_wait(ctx, req);
      if (rc) return rc;
      combine(buf, rtmp, count, dt, wire, op);
      nr = r / 2;
    }
  } else {
    nr = r - extra;
  }
  if (nr >= 0) {
    for (int mask = 1; mask < pof2; mask <<= 1) {
      int peer = real_rank(nr ^ mask, extra);
      rc = exchange(ctx, peer, buf, stage, rtmp, count, dt, wire);
      if (rc) return rc;
      combine(buf, rtmp, count, dt, wire, op);
    }
    if (op == DML_AVG) dml__scale_avg(buf, count, dt, p);
    if (wire != dt) dml__round_f32_to_wire((float *)buf, count, wire);
  }
  if (r < 2 * extra) {
    dml_comm_req *req;
    if (r % 2 == 1) {
      const void *src = buf;
      if (wire != dt) {
        dml__f32_to_wire(stage, (const float *)buf, count, wire);
        src = stage;
      }
      rc = dml__coll_isend(ctx, r - 1, src, bytes, &req);
      if (rc == 0) rc = dml__coll_wait(ctx, req);
    } else {
      void *dst = wire == dt ? buf : rtmp;
      rc = dml__coll_irecv(ctx, r + 1, dst, bytes, &req);
      if (rc == 0) rc = dml__coll_wait(ctx, req);
      if (rc == 0 && wire != dt) dml__wire_to_f32((float *)buf, rtmp, count, wire);
    }
    if (rc) return rc;
  }
  return 0;
}
