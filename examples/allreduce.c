/* Example: join a job and all-reduce a vector. Start it with the local launcher,
 *   distml launch -n 4 -- ./example_allreduce
 * or under mpirun with DISTML_BACKEND=mpi. Every rank contributes rank+1 in each slot, so each
 * slot of the sum is n(n+1)/2 on every rank. */
#include <stdio.h>

#include "distml.h"

int main(void) {
  dml_comm_opts opts;
  dml_comm_opts_default(&opts);
  dml_comm *comm = NULL;
  dml_err err = {0};
  if (dml_comm_init(&comm, &opts, &err) != 0) {
    fprintf(stderr, "example: cannot join: %s\n", dml_err_msg(&err));
    return 1;
  }
  int rank = dml_comm_rank(comm), n = dml_comm_size(comm);
  float v[1000];
  for (int i = 0; i < 1000; i++) v[i] = (float)(rank + 1);
  int rc = dml_allreduce(comm, v, 1000, DML_F32, DML_SUM);
  if (rc != 0) {
    fprintf(stderr, "example: rank %d: all-reduce failed: %s\n", rank, dml_coll_errmsg(comm));
  } else {
    int wrong = 0;
    for (int i = 0; i < 1000; i++) wrong += v[i] != (float)(n * (n + 1) / 2);
    printf("rank %d of %d: sum %.0f, %d wrong\n", rank, n, v[0], wrong);
    rc = wrong ? 1 : 0;
  }
  dml_coll_detach(comm);
  dml_comm_free(comm);
  return rc == 0 ? 0 : 1;
}
