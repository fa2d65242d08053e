/* Tests of the local launcher (src/cli/launch.c), calling dml_launch_run directly: environment
 * of the ranks, "[rN] " prefixes with stdout and stderr kept apart, failure propagation and the
 * message naming the failed rank, exit statuses, timeout, signal forwarding, per-rank env.
 * The ranks are small sh scripts; each launch runs in a forked child whose output goes to files.
 * test-labels: launch */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/* The launcher is part of the CLI executable, not of libdistml: compile it in. */
#include "cli/launch.c"
#include "cli/util.c"

static char g_dir[256];

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return strdup("");
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  buf[n] = '\0';
  fclose(f);
  return strdup(buf);
}

typedef struct run_result {
  int status; /* what dml_launch_run returned (the subprocess's exit status) */
  char *out, *err;
} run_result;

static int role_setup(int rank, int world_size, void *user) {
  (void)user;
  setenv("DISTML_ROLE", rank == 0 ? "server" : "worker", 1);
  setenv("TEST_LAST", rank == world_size - 1 ? "yes" : "no", 1);
  return 0;
}

/* Runs dml_launch_run(n, sh -c script) in a child with stdout/stderr redirected to files.
 * If signal_after_ready > 0, waits for n "ready" lines and then sends that signal to the
 * launcher. */
static run_result launch_sh(int n, const char *script, double timeout_s, int use_setup,
                            int signal_after_ready) {
  char outp[300], errp[300];
  snprintf(outp, sizeof(outp), "%s/out", g_dir);
  snprintf(errp, sizeof(errp), "%s/err", g_dir);
  unlink(outp); /* so that a stale "ready" is never read */
  unlink(errp);
  pid_t pid = fork();
  T_ASSERT(pid >= 0);
  if (pid == 0) {
    int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fo, 1);
    dup2(fe, 2);
    char *argv[] = {"sh", "-c", (char *)script, NULL};
    dml_launch_opts o;
    dml_launch_opts_default(&o);
    o.timeout_s = timeout_s;
    o.grace_s = 2;
    if (use_setup) o.child_setup = role_setup;
    _exit(dml_launch_run(n, argv, &o));
  }
  if (signal_after_ready) {
    for (int tries = 0; tries < 300; tries++) {
      char *o = slurp(outp);
      int ready = 0;
      for (char *p = o; (p = strstr(p, "ready")) != NULL; p++) ready++;
      free(o);
      if (ready >= n) break;
      usleep(50 * 1000);
    }
    kill(pid, signal_after_ready);
  }
  int st;
  T_ASSERT(waitpid(pid, &st, 0) == pid);
  T_ASSERT(WIFEXITED(st));
  run_result r = {WEXITSTATUS(st), slurp(outp), slurp(errp)};
  return r;
}

static void free_result(run_result *r) {
  free(r->out);
  free(r->err);
}

static void test_env_and_prefixes(void) {
  run_result r =
      launch_sh(3,
                "echo \"hello $DISTML_RANK of $DISTML_WORLD_SIZE rank=$RANK ws=$WORLD_SIZE "
                "local=$LOCAL_RANK addr=$MASTER_ADDR port=$MASTER_PORT\"; "
                "echo \"oops $DISTML_RANK\" >&2; printf 'no newline %s' $DISTML_RANK",
                0, 0, 0);
  T_EQ_INT(r.status, 0);
  for (int i = 0; i < 3; i++) {
    char want[128];
    snprintf(want, sizeof(want),
             "[r%d] hello %d of 3 rank=%d ws=3 local=%d addr=127.0.0.1 port=", i, i, i, i);
    T_CONTAINS(r.out, want);
    snprintf(want, sizeof(want), "[r%d] oops %d\n", i, i);
    T_CONTAINS(r.err, want);
    T_ASSERT(strstr(r.out, want) == NULL); /* stderr stays on stderr */
    snprintf(want, sizeof(want), "[r%d] no newline %d\n", i, i);
    T_CONTAINS(r.out, want);
  }
  /* Every rank got the same port, and it is a number. */
  char *p = strstr(r.out, "port=");
  T_ASSERT(p != NULL);
  int port = atoi(p + 5);
  T_ASSERT(port > 0 && port < 65536);
  char want[64];
  snprintf(want, sizeof(want), "port=%d", port);
  int count = 0;
  for (char *q = r.out; (q = strstr(q, want)) != NULL; q++) count++;
  T_EQ_INT(count, 3);
  free_result(&r);
}

static void test_failure_propagates(void) {
  run_result r = launch_sh(3,
                           "if [ $DISTML_RANK = 1 ]; then echo bye; exit 3; fi; "
                           "echo ready; sleep 30; echo 'should not get here'",
                           0, 0, 0);
  T_EQ_INT(r.status, 3);
  T_CONTAINS(r.err, "rank 1 (pid ");
  T_CONTAINS(r.err, "exited with status 3");
  T_CONTAINS(r.err, "stopping the other 2 ranks");
  T_CONTAINS(r.out, "[r1] bye");
  T_ASSERT(strstr(r.out, "should not get here") == NULL);
  free_result(&r);
}

static void test_killed_rank(void) {
  run_result r = launch_sh(2, "if [ $DISTML_RANK = 1 ]; then kill -9 $$; fi; sleep 30", 0, 0, 0);
  T_EQ_INT(r.status, 128 + 9);
  T_CONTAINS(r.err, "rank 1 (pid ");
  T_CONTAINS(r.err, "killed by signal 9");
  free_result(&r);
}

static void test_timeout(void) {
  run_result r = launch_sh(2, "sleep 30", 0.3, 0, 0);
  T_EQ_INT(r.status, 124);
  T_CONTAINS(r.err, "timed out");
  free_result(&r);
}

static void test_sigterm_forwarded(void) {
  run_result r = launch_sh(2,
                           "trap 'echo got TERM $DISTML_RANK; exit 5' TERM; echo ready; "
                           "while :; do sleep 0.05; done",
                           0, 0, SIGTERM);
  T_EQ_INT(r.status, 128 + SIGTERM);
  T_CONTAINS(r.out, "[r0] got TERM 0");
  T_CONTAINS(r.out, "[r1] got TERM 1");
  T_CONTAINS(r.err, "interrupted by SIGTERM");
  free_result(&r);
}

static void test_sigint_forwarded(void) {
  run_result r = launch_sh(2,
                           "trap 'echo got INT $DISTML_RANK; exit 6' INT; echo ready; "
                           "while :; do sleep 0.05; done",
                           0, 0, SIGINT);
  T_EQ_INT(r.status, 128 + SIGINT);
  T_CONTAINS(r.out, "[r1] got INT 1");
  free_result(&r);
}

static void test_exec_failure(void) {
  char outp[300], errp[300];
  snprintf(outp, sizeof(outp), "%s/out", g_dir);
  snprintf(errp, sizeof(errp), "%s/err", g_dir);
  pid_t pid = fork();
  if (pid == 0) {
    int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fe, 2);
    char *argv[] = {"/nonexistent/distml-test-prog", NULL};
    _exit(dml_launch_run(2, argv, NULL));
  }
  int st;
  T_ASSERT(waitpid(pid, &st, 0) == pid && WIFEXITED(st));
  T_EQ_INT(WEXITSTATUS(st), 127);
  char *e = slurp(errp);
  T_CONTAINS(e, "cannot run '/nonexistent/distml-test-prog'");
  T_CONTAINS(e, "exited with status 127");
  free(e);
}

static void test_child_setup(void) {
  run_result r = launch_sh(3, "echo role=$DISTML_ROLE last=$TEST_LAST", 0, 1, 0);
  T_EQ_INT(r.status, 0);
  T_CONTAINS(r.out, "[r0] role=server last=no");
  T_CONTAINS(r.out, "[r1] role=worker last=no");
  T_CONTAINS(r.out, "[r2] role=worker last=yes");
  free_result(&r);
}

/* The command-line front end: bad flags exit 2 with a message naming the flag. */
static void test_cli_flags(void) {
  const char *cases[][6] = {
      {"launch", "-n", "abc", "--", "true", NULL},     {"launch", "-n", "0", "--", "true", NULL},
      {"launch", "--bogus", "--", "true", NULL, NULL}, {"launch", "-n", "2", NULL, NULL, NULL},
      {"launch", "--timeout", "-1", "-n", "2", NULL},
  };
  const char *expect[] = {"-n", "-n", "unknown flag '--bogus'", "no program", "--timeout"};
  char errp[300];
  snprintf(errp, sizeof(errp), "%s/err", g_dir);
  for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
    pid_t pid = fork();
    if (pid == 0) {
      int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(fe, 2);
      int argc = 0;
      while (argc < 6 && cases[k][argc]) argc++;
      _exit(dml_cli_launch_main(argc, (char **)cases[k]));
    }
    int st;
    T_ASSERT(waitpid(pid, &st, 0) == pid && WIFEXITED(st));
    T_EQ_INT(WEXITSTATUS(st), 2);
    char *e = slurp(errp);
    T_CONTAINS(e, expect[k]);
    free(e);
  }
  /* And a good command line runs the program. */
  const char *ok[] = {"launch", "-n", "2", "--", "sh", "-c", "exit 0", NULL};
  T_EQ_INT(dml_cli_launch_main(7, (char **)ok), 0);
}

int main(void) {
  snprintf(g_dir, sizeof(g_dir), "/tmp/distml-test-launch-%d", (int)getpid());
  T_ASSERT(mkdir(g_dir, 0700) == 0);
  test_env_and_prefixes();
  test_failure_propagates();
  test_killed_rank();
  test_timeout();
  test_sigterm_forwarded();
  test_sigint_forwarded();
  test_exec_failure();
  test_child_setup();
  test_cli_flags();
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
  T_EQ_INT(system(cmd), 0);
  printf("test_launch: ok\n");
  return 0;
}
