/* `distml bench ps`: parameter-server push+pull latency and bytes per server against message size
 * and workers x servers (1x1, 2x1, 2x2, colocated 2), each beside the cost model and beside
 * distml's all-reduce of the same bytes. Measurement only. */
#ifndef DISTML_CLI_BENCH_PS_H
#define DISTML_CLI_BENCH_PS_H

/* argv[0] is "ps"; returns the exit status. Forks its own local ranks (loopback). */
int dml_cli_bench_ps_main(int argc, char **argv);

#endif
