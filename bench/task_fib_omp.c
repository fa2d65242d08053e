/* fib(N) with OpenMP tasks (libgomp via gcc -fopenmp), one task per call and no cutoff: the peer
 * of `distml bench task --only fib` in bench/task_vs_tbb_omp.sh. Usage: task_fib_omp N THREADS
 * REPS; prints the best wall time of REPS runs. Not part of distml (built by the script only). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static long fib(int n) {
  if (n < 2) return n;
  long x = 0, y = 0;
#pragma omp task shared(x)
  x = fib(n - 1);
  y = fib(n - 2);
#pragma omp taskwait
  return x + y;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s N THREADS REPS\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[1]), threads = atoi(argv[2]), reps = atoi(argv[3]);
  omp_set_num_threads(threads);
  double best = 1e30;
  long r = 0;
  for (int i = 0; i < reps; i++) {
    double t0 = omp_get_wtime();
#pragma omp parallel
#pragma omp single
    r = fib(n);
    double t = omp_get_wtime() - t0;
    if (t < best) best = t;
  }
  printf("omp best_s %.6f fib %ld\n", best, r);
  return 0;
}
