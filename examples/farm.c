/* Example: a task farm across processes. Rank 0 hands out 100 tasks ("square" of a number) to the
 * other ranks as each finishes its last; a worker that dies loses its tasks to the others.
 *   distml launch -n 3 -- ./example_farm */
#include <stdio.h>
#include <string.h>

#include "distml.h"

static int square(void *user, const void *in, size_t in_bytes, void *out, size_t out_cap,
                  size_t *out_bytes) {
  (void)user;
  long long x;
  if (in_bytes != sizeof(x) || out_cap < sizeof(x)) return DML_EINVAL;
  memcpy(&x, in, sizeof(x));
  x *= x;
  memcpy(out, &x, sizeof(x));
  *out_bytes = sizeof(x);
  return 0;
}

int main(void) {
  dml_comm_opts co;
  dml_comm_opts_default(&co);
  dml_comm *comm = NULL;
  dml_err err = {0};
  if (dml_comm_init(&comm, &co, &err) != 0) {
    fprintf(stderr, "example: cannot join: %s\n", dml_err_msg(&err));
    return 1;
  }
  if (dml_comm_size(comm) < 2) {
    fprintf(stderr, "example: needs a master and at least one worker: distml launch -n 3 -- %s\n",
            "example_farm");
    dml_comm_free(comm);
    return 1;
  }
  int rc;
  if (dml_comm_rank(comm) == 0) {
    enum { N = 100 };
    long long in[N];
    dml_farm_task tasks[N];
    dml_farm_result results[N];
    for (int i = 0; i < N; i++) {
      in[i] = i;
      tasks[i] = (dml_farm_task){.handler = "square", .payload = &in[i], .bytes = sizeof(in[i])};
    }
    dml_farm_stats stats;
    rc = dml_farm_run(comm, NULL, tasks, N, results, &stats, &err);
    if (rc == 0) {
      long long sum = 0;
      for (int i = 0; i < N; i++) {
        long long v;
        memcpy(&v, results[i].data, sizeof(v));
        sum += v;
      }
      printf("sum of squares 0..99 = %lld (expected 328350), %llu tasks in %.3fs\n", sum,
             (unsigned long long)stats.done, stats.wall_s);
      rc = sum == 328350 ? 0 : 1;
      dml_farm_results_free(results, N);
    } else {
      fprintf(stderr, "example: farm failed: %s\n", dml_err_msg(&err));
    }
  } else {
    dml_farm_handler h = {"square", square, NULL};
    rc = dml_farm_serve(comm, NULL, &h, 1, &err);
    if (rc != 0) fprintf(stderr, "example: worker: %s\n", dml_err_msg(&err));
  }
  dml_comm_free(comm);
  return rc == 0 ? 0 : 1;
}
