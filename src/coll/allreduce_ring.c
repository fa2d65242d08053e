/* Ring all-reduce (reduce-scatter then all-gather, Patarasuk & Yuan), and those two phases on
 * their own for dml_reduce_scatter and dml_allgather. Each block is cut into chunks that are
 * pipelined: a chunk is reduced and forwarded as soon as it arrives, while the next ones are
 * still on the wire. Bandwidth-optimal for large messages; the small ones go to allreduce_rd.c. */
#include <string.h>

#include "coll/coll_internal.h"

/* A block's chunks: count elements cut in pieces of at most per elements. */
static size_t nchunks(size_t count, size_t per) {
  return count == 0 ? 0 : (count + per - 1) / per;
}

static size_t chunk_elems(const dml__coll_ctx *ctx, dml_dtype wire) {
  size_t w = dml_dtype_size(wire);
  size_t n = ctx->chunk_bytes / w;
  return n ? n : 1;
}

static size_t max_block(const size_t *blk_cnt, int p) {
  size_t m = 0;
  for (int i = 0; i < p; i++) m = DML__MAX(m, blk_cnt[i]);
  return m;
}

/* Sends chunk [e0, e0+n) of buf: straight from buf, or converted to wire into the staging area
 * at the same element offset (which no other send of this phase uses). */
static int send_elems(dml__coll_ctx *ctx, int peer, void *buf, void *stage, size_t e0, size_t n,
                      dml_dtype dt, dml_dtype wire, int stage_ready) {
  dml_comm_req *req;
  size_t wsz = dml_dtype_size(wire);
  if (wire == dt) return dml__coll_isend(ctx, peer, (char *)buf + e0 * wsz, n * wsz, &req);
  uint16_t *w = (uint16_t *)stage + e0;
  if (!stage_ready) dml__f32_to_wire(w, (float *)buf + e0, n, wire);
  return dml__coll_isend(ctx, peer, w, n * wsz, &req);
}

/* Every receive of a phase is posted before the first send, so that data arriving from the left
 * lands straight in its destination instead of the communicator's unexpected-message queue. */
int dml__reduce_scatter_ring(dml__coll_ctx *ctx, void *buf, const size_t *blk_off,
                             const size_t *blk_cnt, dml_dtype dt, dml_dtype wire, dml_redop op) {
  int p = ctx->size, r = ctx->rank;
  if (p == 1) return 0;
  int right = (r + 1) % p, left = (r - 1 + p) % p;
  size_t esz = dml_dtype_size(dt), wsz = dml_dtype_size(wire);
  size_t per = chunk_elems(ctx, wire);
  size_t mb = max_block(blk_cnt, p), ncmax = nchunks(mb, per);
  /* One receive area per step: step s lands at rtmp + s*mb. */
  char *rtmp = dml__coll_scratch(ctx, 0, (size_t)(p - 1) * mb * wsz);
  void *stage = NULL;
  dml_comm_req **rreq = dml__coll_scratch(ctx, 2, ((size_t)(p - 1) * ncmax + 1) * sizeof(*rreq));
  if (rtmp == NULL || rreq == NULL) return DML_ENOMEM;
  if (wire != dt) {
    size_t total = blk_off[p - 1] + blk_cnt[p - 1];
    stage = dml__coll_scratch(ctx, 1, total * wsz);
    if (stage == NULL) return DML_ENOMEM;
  }
  int rc;
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 2 + 2 * p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, per);
    for (size_t j = 0; j < nc; j++) {
      size_t n = DML__MIN(per, cnt - j * per);
      rc = dml__coll_irecv(ctx, left, rtmp + ((size_t)s * mb + j * per) * wsz, n * wsz,
                           &rreq[(size_t)s * ncmax + j]);
      if (rc) return rc;
    }
  }
  /* Step 0 sends block r-1 whole; later steps forward each chunk as soon as it is reduced. */
  int sb = (r - 1 + p) % p;
  for (size_t e = 0; e < blk_cnt[sb]; e += per) {
    rc = send_elems(ctx, right, buf, stage, blk_off[sb] + e, DML__MIN(per, blk_cnt[sb] - e), dt,
                    wire, 0);
    if (rc) return rc;
  }
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 2 + 2 * p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, per);
    for (size_t j = 0; j < nc; j++) {
      size_t e0 = blk_off[rb] + j * per, n = DML__MIN(per, cnt - j * per);
      rc = dml__coll_wait(ctx, rreq[(size_t)s * ncmax + j]);
      if (rc) return rc;
      const void *src = rtmp + ((size_t)s * mb + j * per) * wsz;
      if (wire == dt)
        dml__reduce((char *)buf + e0 * esz, src, n, dt, op);
      else
        dml__reduce_wire_into_f32((float *)buf + e0, src, n, wire, op);
      if (s < p - 2) {
        rc = send_elems(ctx, right, buf, stage, e0, n, dt, wire, 0);
        if (rc) return rc;
      }
    }
  }
  return dml__coll_wait_all(ctx);
}

int dml__allgather_ring(dml__coll_ctx *ctx, void *buf, const size_t *blk_off, const size_t *blk_cnt,
                        dml_dtype dt, dml_dtype wire) {
  int p = ctx->size, r = ctx->rank;
  if (p == 1) return 0;
  int right = (r + 1) % p, left = (r - 1 + p) % p;
  size_t wsz = dml_dtype_size(wire);
  size_t per = chunk_elems(ctx, wire);
  size_t mb = max_block(blk_cnt, p), ncmax = nchunks(mb, per);
  void *stage = NULL;
  dml_comm_req **rreq = dml__coll_scratch(ctx, 2, ((size_t)(p - 1) * ncmax + 1) * sizeof(*rreq));
  if (rreq == NULL) return DML_ENOMEM;
  if (wire != dt) {
    size_t total = blk_off[p - 1] + blk_cnt[p - 1];
    stage = dml__coll_scratch(ctx, 1, total * wsz);
    if (stage == NULL) return DML_ENOMEM;
    /* Our own block travels rounded: round it here too so every rank ends with the same values. */
    dml__f32_to_wire((uint16_t *)stage + blk_off[r], (float *)buf + blk_off[r], blk_cnt[r], wire);
    dml__wire_to_f32((float *)buf + blk_off[r], (uint16_t *)stage + blk_off[r], blk_cnt[r], wire);
  }
  int rc;
  /* Each step receives a different block: post them all now, straight into place. */
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 1 + p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, per);
    for (size_t j = 0; j < nc; j++) {
      size_t e0 = blk_off[rb] + j * per, n = DML__MIN(per, cnt - j * per);
      void *dst = wire == dt ? (char *)buf + e0 * wsz : (void *)((uint16_t *)stage + e0);
      rc = dml__coll_irecv(ctx, left, dst, n * wsz, &rreq[(size_t)s * ncmax + j]);
      if (rc) return rc;
    }
  }
  for (size_t e = 0; e < blk_cnt[r]; e += per) {
    rc = send_elems(ctx, right, buf, stage, blk_off[r] + e, DML__MIN(per, blk_cnt[r] - e), dt, wire,
                    1);
    if (rc) return rc;
  }
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 1 + p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, per);
    for (size_t j = 0; j < nc; j++) {
      size_t e0 = blk_off[rb] + j * per, n = DML__MIN(per, cnt - j * per);
      rc = dml__coll_wait(ctx, rreq[(size_t)s * ncmax + j]);
      if (rc) return rc;
      if (s < p - 2) {
        rc = send_elems(ctx, right, buf, stage, e0, n, dt, wire, 1);
        if (rc) return rc;
      }
      if (wire != dt) dml__wire_to_f32((float *)buf + e0, (uint16_t *)stage + e0, n, wire);
    }
  }
  return dml__coll_wait_all(ctx);
}

int dml__allreduce_ring(dml__coll_ctx *ctx, void *buf, size_t count, dml_dtype dt, dml_dtype wire,
                        dml_redop op) {
  int p = ctx->size;
  size_t *off = dml__malloc(2 * (size_t)p * sizeof(size_t));
  if (off == NULL) return dml__coll_fail(ctx, DML_ENOMEM, "%s: out of memory", ctx->what);
  size_t *cnt = off + p;
  size_t base = count / (size_t)p, rem = count % (size_t)p;
  for (int i = 0; i < p; i++) {
    off[i] = (size_t)i * base + DML__MIN((size_t)i, rem);
    cnt[i] = base + ((size_t)i < rem ? 1 : 0);
  }
  int rc = dml__reduce_scatter_ring(ctx, buf, off, cnt, dt, wire, op);
  if (rc == 0 && op == DML_AVG) {
    size_t esz = dml_dtype_size(dt);
    dml__scale_avg((char *)buf + off[ctx->rank] * esz, cnt[ctx->rank], dt, p);
  }
  if (rc == 0) rc = dml__allgather_ring(ctx, buf, off, cnt, dt, wire);
  dml__free(off);
  return rc;
}
