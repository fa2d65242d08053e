/* `distml bench task`: measurements of the work-stealing pool (spawn+join overhead fitted over N,
 * fib(N) with one task per call, an unbalanced parallel loop, 10^6 tiny independent tasks).
 * Measurement only; the peer comparison with oneTBB and OpenMP is bench/task_vs_tbb_omp.sh. */
#ifndef DISTML_CLI_BENCH_TASK_H
#define DISTML_CLI_BENCH_TASK_H

/* argv[0] is "task" (the benchmark name); returns the process exit status. */
int dml_cli_bench_task_main(int argc, char **argv);

#endif
