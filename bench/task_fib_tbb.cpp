// fib(N) with oneTBB's task_group, one task per call and no cutoff: the peer of `distml bench
// task --only fib` in bench/task_vs_tbb_omp.sh. Usage: task_fib_tbb N THREADS REPS; prints the
// best wall time of REPS runs. Not part of distml (C++, built by the script only).
#include <tbb/global_control.h>
#include <tbb/task_group.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

static long fib(int n) {
  if (n < 2) return n;
  long x = 0, y = 0;
  tbb::task_group g;
  g.run([&] { x = fib(n - 1); });
  y = fib(n - 2);
  g.wait();
  return x + y;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s N THREADS REPS\n", argv[0]);
    return 2;
  }
  int n = std::atoi(argv[1]), threads = std::atoi(argv[2]), reps = std::atoi(argv[3]);
  // The calling thread counts as one of the THREADS, as in TBB's own arena.
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism, threads);
  double best = 1e30;
  long r = 0;
  for (int i = 0; i < reps; i++) {
    auto t0 = std::chrono::steady_clock::now();
    r = fib(n);
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t < best) best = t;
  }
  std::printf("tbb best_s %.6f fib %ld\n", best, r);
  return 0;
}
