/* Broadcast down a binomial tree rooted at root, chunked so that a large message is pipelined:
 * each chunk is forwarded to the children as soon as it arrives from the parent. log2(p) hops of
 * latency; not bandwidth-optimal for huge messages on many ranks (a scatter + all-gather would be). */
#include "coll/coll_internal.h"

int dml__broadcast_tree(dml__coll_ctx *ctx, void *buf, size_t bytes, int root) {
  int p = ctx->size;
  if (p == 1 || bytes == 0) return p == 1 ? 0 : dml__barrier_dissemination(ctx);
  int vr = (ctx->rank - root + p) % p;
  size_t per = ctx->chunk_bytes ? ctx->chunk_bytes : bytes;
  size_t nc = (bytes + per - 1) / per;
  int parent = -1, mask = 1;
  while (mask < p) {
    if (vr & mask) {
      parent = (vr - mask + root) % p;
      break;
    }
    mask <<= 1;
  }
  int children[32], nchild = 0;
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (vr + mask < p) children[nchild++] = (vr + mask + root) % p;
  int rc;
  dml_comm_req **rreq = NULL;
  if (parent >= 0) {
    rreq = dml__coll_scratch(ctx, 2, nc * sizeof(*rreq));
    if (rreq == NULL) return DML_ENOMEM;
    for (size_t j = 0; j < nc; j++) {
      rc = dml__coll_irecv(ctx, parent, (char *)buf + j * per, DML__MIN(per, bytes - j * per),
                           &rreq[j]);
      if (rc) return rc;
    }
  }
  for (size_t j = 0; j < nc; j++) {
    size_t n = DML__MIN(per, bytes - j * per);
    if (parent >= 0) {
      rc = dml__coll_wait(ctx, rreq[j]);
      if (rc) return rc;
    }
    for (int k = 0; k < nchild; k++) {
      dml_comm_req *req;
      rc = dml__coll_isend(ctx, children[k], (char *)buf + j * per, n, &req);
      if (rc) return rc;
    }
  }
  return dml__coll_wait_all(ctx);
}
