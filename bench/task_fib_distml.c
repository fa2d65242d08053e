/* fib(N) with distml task groups, one task per call and no cutoff, written against the public
 * API the way a user would: the distml side of bench/task_vs_tbb_omp.sh (same timing and output
 * as its TBB and OpenMP peers). Usage: task_fib_distml N THREADS REPS. */
#include <stdio.h>
#include <stdlib.h>

#include "distml/task.h"

static dml_pool *pool;

typedef struct fibarg {
  int n;
  long r;
} fibarg;

static int fib_task(void *arg) {
  fibarg *a = arg;
  if (a->n < 2) {
    a->r = a->n;
    return 0;
  }
  fibarg x = {a->n - 1, 0}, y = {a->n - 2, 0};
  dml_task_group g;
  dml_task_group_init(&g, pool);
  int rc = dml_task_spawn(&g, fib_task, &x);
  if (rc != 0) return rc;
  fib_task(&y);
  rc = dml_task_group_wait(&g);
  a->r = x.r + y.r;
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s N THREADS REPS\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[1]), threads = atoi(argv[2]), reps = atoi(argv[3]);
  dml_pool_opts o;
  dml_pool_opts_default(&o);
  o.nthreads = (unsigned)threads; /* the calling thread only waits (sleeps) */
  dml_err err = {0};
  if (dml_pool_create(&o, &pool, &err) != 0) {
    fprintf(stderr, "task_fib_distml: %s\n", dml_err_msg(&err));
    return 1;
  }
  double best = 1e30;
  fibarg a = {n, 0};
  for (int i = 0; i < reps; i++) {
    a.n = n;
    double t0 = dml_now_s();
    dml_task_group g;
    dml_task_group_init(&g, pool);
    int rc = dml_task_spawn(&g, fib_task, &a);
    if (rc == 0) rc = dml_task_group_wait(&g);
    double t = dml_now_s() - t0;
    if (rc != 0) {
      fprintf(stderr, "task_fib_distml: %s\n", dml_strerror(rc));
      return 1;
    }
    if (t < best) best = t;
  }
  printf("distml best_s %.6f fib %ld\n", best, a.r);
  dml_pool_destroy(pool);
  return 0;
}
