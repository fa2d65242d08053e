/* `distml bench allreduce|reducescatter|allgather|broadcast|pingpong`: nccl-tests style
 * benchmarks of the collectives (time, algbw, busbw, a wrong count) and a point-to-point
 * ping-pong that fits the alpha-beta cost model. Measurement only: no tuning happens here. */
#ifndef DISTML_CLI_BENCH_COLL_H
#define DISTML_CLI_BENCH_COLL_H

/* argv[0] is "bench" (or the benchmark name itself); returns the exit status. Run under mpirun
 * or `distml launch` it is one rank; otherwise it starts -n local ranks of itself. */
int dml_cli_bench_main(int argc, char **argv);

#endif
