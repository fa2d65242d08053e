/* Dissemination barrier (Hensgen, Finkel & Manber): in round k every rank signals rank+2^k and
 * waits for rank-2^k, so after ceil(log2 p) rounds each rank has heard, directly or not, from
 * all. One byte per message; it carries no data. */
#include "coll/coll_internal.h"

int dml__barrier_dissemination(dml__coll_ctx *ctx) {
  int p = ctx->size, r = ctx->rank;
  for (int k = 1; k < p; k <<= 1) {
    unsigned char out = 1, in = 0;
    int rc = dml__coll_sendrecv(ctx, (r + k) % p, &out, 1, (r - k + p) % p, &in, 1);
    if (rc) return rc;
  }
  return 0;
}
