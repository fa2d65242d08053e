/* The distml command: dispatches to the subcommands (train, eval, gen, launch, bench). */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "cli/bench_coll.h"
#include "cli/bench_ps.h"
#include "cli/bench_task.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "distml.h"

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: distml <command> [flags]\n"
      "\n"
      "commands:\n"
      "  train    train a model (local, or -n N workers with all-reduce)\n"
      "  eval     evaluate a saved model on a data set\n"
      "  gen      write a synthetic data set (LIBSVM text)\n"
      "  tune     hyperparameter search: trials of train run as tasks on N worker processes\n"
      "  launch   start N processes of a program on this machine, wired together\n"
      "  bench    benchmarks: allreduce, reducescatter, allgather, broadcast, pingpong, task, ps\n"
      "\n"
      "  distml <command> --help   flags of a command\n"
      "  distml --version          version and BLAS in use\n");
}

int main(int argc, char **argv) {
  /* Message buffers of hundreds of KB are allocated and freed every step (parameter-server
   * frames, received messages). glibc would hand each back to the kernel (mmap above its
   * threshold, or trimming the top of the heap past 2x the threshold) and fault its pages in
   * again on the next: measured 13% of a colocated 4 MB push+pull in page faults, 5.3 -> 2.4 ms
   * per iteration without. Keep freed memory in the process up to these sizes. */
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  dml_cli_select_blas(argv);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("distml %s\nBLAS: %s\n", dml_version(), dml_cli_blas_info());
    return 0;
  }
  if (strcmp(cmd, "train") == 0) return dml_cli_train_main(argc - 1, argv + 1);
  if (strcmp(cmd, "eval") == 0) return dml_cli_eval_main(argc - 1, argv + 1);
  if (strcmp(cmd, "gen") == 0) return dml_cli_gen_main(argc - 1, argv + 1);
  if (strcmp(cmd, "tune") == 0) return dml_cli_tune_main(argc - 1, argv + 1);
  if (strcmp(cmd, "launch") == 0) return dml_cli_launch_main(argc - 1, argv + 1);
  if (strcmp(cmd, "bench") == 0) {
    if (argc >= 3 && strcmp(argv[2], "task") == 0)
      return dml_cli_bench_task_main(argc - 2, argv + 2);
    if (argc >= 3 && strcmp(argv[2], "ps") == 0) return dml_cli_bench_ps_main(argc - 2, argv + 2);
    return dml_cli_bench_main(argc - 1, argv + 1);
  }
  fprintf(stderr, "distml: error: unknown command '%s'\n", cmd);
  usage(stderr);
  return 2;
}
