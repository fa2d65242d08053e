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

/* The buffers and requests of one ring phase. */
typedef struct phase {
  int left, right;
  size_t per, mb, ncmax;
  char *rtmp;          /* reduce-scatter: one receive area per step (step s at rtmp + s*mb) */
  void *stage;         /* compressed wire: values converted to the wire type */
  dml_comm_req **rreq; /* receive of step s, chunk j at rreq[s*ncmax + j] */
} phase;

static int phase_init(dml__coll_ctx *ctx, phase *ph, int rtmp_slot, int rreq_slot,
                      const size_t *blk_off, const size_t *blk_cnt, dml_dtype dt, dml_dtype wire) {
  int p = ctx->size, r = ctx->rank;
  size_t wsz = dml_dtype_size(wire);
  ph->left = (r - 1 + p) % p;
  ph->right = (r + 1) % p;
  ph->per = chunk_elems(ctx, wire);
  ph->mb = max_block(blk_cnt, p);
  ph->ncmax = nchunks(ph->mb, ph->per);
  ph->rtmp = NULL;
  ph->stage = NULL;
  if (rtmp_slot >= 0) {
    ph->rtmp = dml__coll_scratch(ctx, rtmp_slot, (size_t)(p - 1) * ph->mb * wsz);
    if (ph->rtmp == NULL) return DML_ENOMEM;
  }
  ph->rreq =
      dml__coll_scratch(ctx, rreq_slot, ((size_t)(p - 1) * ph->ncmax + 1) * sizeof(*ph->rreq));
  if (ph->rreq == NULL) return DML_ENOMEM;
  if (wire != dt) {
    size_t total = blk_off[p - 1] + blk_cnt[p - 1];
    ph->stage = dml__coll_scratch(ctx, 1, total * wsz);
    if (ph->stage == NULL) return DML_ENOMEM;
  }
  return 0;
}

/* Every receive of a phase is posted before the first send, so that data arriving from the left
 * lands straight in its destination instead of the communicator's unexpected-message queue. */
static int rs_post(dml__coll_ctx *ctx, const phase *ph, const size_t *blk_cnt, dml_dtype wire) {
  int p = ctx->size, r = ctx->rank;
  size_t wsz = dml_dtype_size(wire);
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 2 + 2 * p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, ph->per);
    for (size_t j = 0; j < nc; j++) {
      size_t n = DML__MIN(ph->per, cnt - j * ph->per);
      int rc = dml__coll_irecv(ctx, ph->left, ph->rtmp + ((size_t)s * ph->mb + j * ph->per) * wsz,
                               n * wsz, &ph->rreq[(size_t)s * ph->ncmax + j]);
      if (rc) return rc;
    }
  }
  return 0;
}

static int rs_run(dml__coll_ctx *ctx, const phase *ph, void *buf, const size_t *blk_off,
                  const size_t *blk_cnt, dml_dtype dt, dml_dtype wire, dml_redop op) {
  int p = ctx->size, r = ctx->rank;
  size_t esz = dml_dtype_size(dt), wsz = dml_dtype_size(wire), per = ph->per;
  int rc;
  /* Step 0 sends block r-1 whole; later steps forward each chunk as soon as it is reduced. */
  int sb = (r - 1 + p) % p;
  for (size_t e = 0; e < blk_cnt[sb]; e += per) {
    rc = send_elems(ctx, ph->right, buf, ph->stage, blk_off[sb] + e, DML__MIN(per, blk_cnt[sb] - e),
                    dt, wire, 0);
    if (rc) return rc;
  }
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 2 + 2 * p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, per);
    for (size_t j = 0; j < nc; j++) {
      size_t e0 = blk_off[rb] + j * per, n = DML__MIN(per, cnt - j * per);
      rc = dml__coll_wait(ctx, ph->rreq[(size_t)s * ph->ncmax + j]);
      if (rc) return rc;
      const void *src = ph->rtmp + ((size_t)s * ph->mb + j * per) * wsz;
      if (wire == dt)
        dml__reduce((char *)buf + e0 * esz, src, n, dt, op);
      else
        dml__reduce_wire_into_f32((float *)buf + e0, src, n, wire, op);
      if (s < p - 2) {
        rc = send_elems(ctx, ph->right, buf, ph->stage, e0, n, dt, wire, 0);
        if (rc) return rc;
      }
    }
  }
  return 0;
}

/* Each all-gather step receives a different block: straight into place. Posting these before the
 * reduce-scatter runs is safe: the block's final values can only arrive after this rank's own
 * contribution to that chunk has left (it is part of them). */
static int ag_post(dml__coll_ctx *ctx, const phase *ph, void *buf, const size_t *blk_off,
                   const size_t *blk_cnt, dml_dtype dt, dml_dtype wire) {
  int p = ctx->size, r = ctx->rank;
  size_t wsz = dml_dtype_size(wire);
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 1 + p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, ph->per);
    for (size_t j = 0; j < nc; j++) {
      size_t e0 = blk_off[rb] + j * ph->per, n = DML__MIN(ph->per, cnt - j * ph->per);
      void *dst = wire == dt ? (char *)buf + e0 * wsz : (void *)((uint16_t *)ph->stage + e0);
      int rc = dml__coll_irecv(ctx, ph->left, dst, n * wsz, &ph->rreq[(size_t)s * ph->ncmax + j]);
      if (rc) return rc;
    }
  }
  return 0;
}

static int ag_run(dml__coll_ctx *ctx, const phase *ph, void *buf, const size_t *blk_off,
                  const size_t *blk_cnt, dml_dtype dt, dml_dtype wire) {
  int p = ctx->size, r = ctx->rank;
  size_t per = ph->per;
  int rc;
  if (wire != dt) {
    /* Our own block travels rounded: round it here too so every rank ends with the same values. */
    dml__f32_to_wire((uint16_t *)ph->stage + blk_off[r], (float *)buf + blk_off[r], blk_cnt[r],
                     wire);
    dml__wire_to_f32((float *)buf + blk_off[r], (uint16_t *)ph->stage + blk_off[r], blk_cnt[r],
                     wire);
  }
  for (size_t e = 0; e < blk_cnt[r]; e += per) {
    rc = send_elems(ctx, ph->right, buf, ph->stage, blk_off[r] + e, DML__MIN(per, blk_cnt[r] - e),
                    dt, wire, 1);
    if (rc) return rc;
  }
  for (int s = 0; s < p - 1; s++) {
    int rb = (r - s - 1 + p) % p;
    size_t cnt = blk_cnt[rb], nc = nchunks(cnt, per);
    for (size_t j = 0; j < nc; j++) {
      size_t e0 = blk_off[rb] + j * per, n = DML__MIN(per, cnt - j * per);
      rc = dml__coll_wait(ctx, ph->rreq[(size_t)s * ph->ncmax + j]);
      if (rc) return rc;
      if (s < p - 2) {
        rc = send_elems(ctx, ph->right, buf, ph->stage, e0, n, dt, wire, 1);
        if (rc) return rc;
      }
      if (wire != dt) dml__wire_to_f32((float *)buf + e0, (uint16_t *)ph->stage + e0, n, wire);
    }
  }
  return 0;
}

int dml__reduce_scatter_ring(dml__coll_ctx *ctx, void *buf, const size_t *blk_off,
                             const size_t *blk_cnt, dml_dtype dt, dml_dtype wire, dml_redop op) {
  if (ctx->size == 1) return 0;
  phase ph;
  int rc = phase_init(ctx, &ph, 0, 2, blk_off, blk_cnt, dt, wire);
  if (rc == 0) rc = rs_post(ctx, &ph, blk_cnt, wire);
  if (rc == 0) rc = rs_run(ctx, &ph, buf, blk_off, blk_cnt, dt, wire, op);
  return rc ? rc : dml__coll_wait_all(ctx);
}

int dml__allgather_ring(dml__coll_ctx *ctx, void *buf, const size_t *blk_off, const size_t *blk_cnt,
                        dml_dtype dt, dml_dtype wire) {
  if (ctx->size == 1) return 0;
  phase ph;
  int rc = phase_init(ctx, &ph, -1, 2, blk_off, blk_cnt, dt, wire);
  if (rc == 0) rc = ag_post(ctx, &ph, buf, blk_off, blk_cnt, dt, wire);
  if (rc == 0) rc = ag_run(ctx, &ph, buf, blk_off, blk_cnt, dt, wire);
  return rc ? rc : dml__coll_wait_all(ctx);
}

/* Both phases' receives are posted first, so that the all-gather data a faster neighbour sends
 * while this rank still reduces lands in place rather than in the unexpected-message queue. */
int dml__allreduce_ring(dml__coll_ctx *ctx, void *buf, size_t count, dml_dtype dt, dml_dtype wire,
                        dml_redop op) {
  int p = ctx->size;
  if (p == 1) return 0;
  size_t *off = dml__malloc(2 * (size_t)p * sizeof(size_t));
  if (off == NULL) return dml__coll_fail(ctx, DML_ENOMEM, "%s: out of memory", ctx->what);
  size_t *cnt = off + p;
  size_t base = count / (size_t)p, rem = count % (size_t)p;
  for (int i = 0; i < p; i++) {
    off[i] = (size_t)i * base + DML__MIN((size_t)i, rem);
    cnt[i] = base + ((size_t)i < rem ? 1 : 0);
  }
  phase rs, ag;
  int rc = phase_init(ctx, &rs, 0, 2, off, cnt, dt, wire);
  if (rc == 0) rc = phase_init(ctx, &ag, -1, 3, off, cnt, dt, wire);
  if (rc == 0) rc = rs_post(ctx, &rs, cnt, wire);
  if (rc == 0) rc = ag_post(ctx, &ag, buf, off, cnt, dt, wire);
  if (rc == 0) rc = rs_run(ctx, &rs, buf, off, cnt, dt, wire, op);
  if (rc == 0 && op == DML_AVG) {
    size_t esz = dml_dtype_size(dt);
    dml__scale_avg((char *)buf + off[ctx->rank] * esz, cnt[ctx->rank], dt, p);
  }
  if (rc == 0) rc = ag_run(ctx, &ag, buf, off, cnt, dt, wire);
  if (rc == 0) rc = dml__coll_wait_all(ctx);
  dml__free(off);
  return rc;
}
