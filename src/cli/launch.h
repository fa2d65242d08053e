/* The local launcher behind `distml launch` and `distml train -n N`: starts N copies of a program
 * on this machine with the rendezvous environment set, relays their output line by line with a
 * rank prefix, forwards SIGINT/SIGTERM, and when one fails stops them all, restarts it or goes on
 * without it (a per-rank policy). It starts processes
 * only; the processes find each other themselves (comm.h reads the environment it sets). */
#ifndef DISTML_CLI_LAUNCH_H
#define DISTML_CLI_LAUNCH_H

typedef struct dml_launch_opts {
  const char *name;      /* command name in messages ("launch", "train"); NULL: "launch" */
  const char *exec_path; /* file to execute; NULL: argv[0], searched in PATH */
  double timeout_s;      /* stop everything after this long (status 124); 0: no limit */
  double grace_s;        /* delay between SIGTERM and SIGKILL when stopping; 0: 5 s */
  int prefix_output;     /* 1: relay stdout/stderr with "[rN] " line prefixes; 0: inherit them */
  int master_port;       /* 0: pick a free port on 127.0.0.1 */
  /* Called in each child after fork and before exec, with DISTML_RANK etc. already set: it may
   * setenv() per-rank variables (e.g. DISTML_ROLE). Non-zero: the child exits with status 127.
   * It runs in a forked child: no locks, no stdio buffers shared with the parent. */
  int (*child_setup)(int rank, int world_size, void *user);
  void *user; /* passed to child_setup and failure_policy */
  /* What to do when a rank fails (non-zero exit or a signal), asked per rank in the parent:
   * DML_LAUNCH_STOP_ALL (NULL hook: every rank) stops the others and the launch fails;
   * DML_LAUNCH_RESTART starts the rank again (same rank and environment, plus DISTML_RESTART=k
   * for its k-th restart) up to max_restarts times, then stops all; DML_LAUNCH_CONTINUE lets the
   * others go on without it: the launch succeeds if every other rank does, and says which rank
   * it lost. Not asked once the launcher is stopping (timeout, signal, another failure). */
  int (*failure_policy)(int rank, int world_size, void *user);
  int max_restarts; /* restarts allowed per rank (0: 3) */
} dml_launch_opts;

enum { DML_LAUNCH_STOP_ALL = 0, DML_LAUNCH_RESTART = 1, DML_LAUNCH_CONTINUE = 2 };

/* A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and released), or -1. */
int dml_launch_free_port(void);

/* Defaults: prefix_output 1, everything else 0/NULL. */
void dml_launch_opts_default(dml_launch_opts *o);

/* Runs n copies of argv (NULL-terminated; argv[0] is the program) with DISTML_RANK,
 * DISTML_WORLD_SIZE, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and
 * MASTER_PORT set, and waits for all of them. Returns the status for the command to exit with:
 * 0 when every rank exited 0; else the first failing rank's exit status (128+signal if it was
 * killed), 124 on timeout, 128+signal when interrupted. What failed is printed on stderr
 * ("distml launch: rank 1 (pid 1234) killed by signal 9 (Killed)"). Blocks; installs its own
 * SIGINT/SIGTERM/SIGCHLD handlers while it runs and restores the previous ones. */
int dml_launch_run(int n, char *const argv[], const dml_launch_opts *o);

/* `distml launch -n N [--timeout S] [--grace S] [--no-prefix] [--port P] -- PROG ARGS`;
 * argv[0] is "launch". Returns the exit status. */
int dml_cli_launch_main(int argc, char **argv);

#endif
