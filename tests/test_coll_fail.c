/* A rank killed in the middle of a job: every other rank's collective must return an error whose
 * message names the killed rank, within the communicator's timeout (no hang), for both all-reduce
 * algorithms, and later collectives on that communicator must fail the same way. Also the
 * environment checks of the collectives (a bad DISTML_ALLREDUCE_ALGO). tcp backend, forked ranks.
 * test-labels: coll tsan */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "distml/coll.h"
#include "distml/comm.h"
#include "test_comm_harness.h"
#include "testutil.h"

static dml_comm *join(void) {
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  dml_comm *c = NULL;
  dml_err e = {0};
  if (dml_comm_init(&c, &o, &e) != 0) T_FAIL("dml_comm_init: %s", dml_err_msg(&e));
  return c;
}

/* Rank `victim` kills itself before iteration 3; the others must see an error naming it. */
static int rank_main_victim(int victim, size_t count, dml_allreduce_algo algo) {
  dml_comm *c = join();
  int r = dml_comm_rank(c);
  float *b = calloc(count, sizeof(float));
  T_ASSERT(b);
  for (int it = 0; it < 50; it++) {
    if (it == 3 && r == victim) raise(SIGKILL);
    int rc = dml_allreduce_with(c, b, count, DML_F32, DML_SUM, algo);
    if (rc != 0) {
      T_ASSERT(it >= 3);
      char want[32];
      snprintf(want, sizeof(want), "rank %d", victim);
      const char *msg = dml_coll_errmsg(c);
      fprintf(stderr, "rank %d got the expected error: %s\n", r, msg);
      /* The rank blamed first in the message is the victim, not a rank that saw it die. */
      const char *first = strstr(msg, "rank ");
      T_ASSERT(first != NULL);
      if (atoi(first + 5) != victim) T_FAIL("rank %d blames the wrong rank: %s", r, msg);
      T_CONTAINS(msg, want);
      /* Sticky: the next collective fails at once with the same code. */
      T_EQ_INT(dml_barrier(c), rc);
      dml_coll_detach(c);
      dml_comm_free(c);
      free(b);
      return 0;
    }
  }
  T_FAIL("rank %d: no error although rank %d was killed", r, victim);
}

static void run_world(int p, int victim, size_t count, dml_allreduce_algo algo) {
  int port = th_free_port();
  fflush(NULL); /* the ranks exit(): nothing buffered here may be written twice */
  pid_t pids[16];
  for (int r = 0; r < p; r++) {
    pids[r] = fork();
    T_ASSERT(pids[r] >= 0);
    if (pids[r] == 0) {
      th_set_rank_env(r, p, port);
      setenv("DISTML_TIMEOUT_MS", "10000", 1);
      alarm(60);
      exit(rank_main_victim(victim, count, algo)); /* exit: leak checks run */
    }
  }
  for (int r = 0; r < p; r++) {
    int st;
    T_ASSERT(waitpid(pids[r], &st, 0) == pids[r]);
    if (r == victim) {
      T_ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      T_FAIL("world %d, victim %d, %s: rank %d %s %d", p, victim, dml_allreduce_algo_name(algo), r,
             WIFEXITED(st) ? "exited with" : "killed by signal",
             WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
  }
  printf("world %d, rank %d killed, %s: every other rank named it\n", p, victim,
         dml_allreduce_algo_name(algo));
}

/* A malformed DISTML_ALLREDUCE_ALGO is an error naming the variable, not a silent default. */
static void test_bad_env(void) {
  pid_t pid = fork();
  if (pid == 0) {
    unsetenv("DISTML_RANK");
    setenv("DISTML_WORLD_SIZE", "1", 1);
    setenv("DISTML_RANK", "0", 1);
    setenv("DISTML_ALLREDUCE_ALGO", "fastest", 1);
    dml_comm *c = join();
    float x = 1;
    T_EQ_INT(dml_allreduce(c, &x, 1, DML_F32, DML_SUM), DML_EINVAL);
    T_CONTAINS(dml_coll_errmsg(c), "DISTML_ALLREDUCE_ALGO");
    dml_coll_detach(c);
    dml_comm_free(c);
    _exit(0);
  }
  int st;
  T_ASSERT(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A rank that is late but alive: after DISTML_STALL_S the waiting rank logs a WARN naming it,
 * and the collective still succeeds once it arrives. */
static void test_stall_warning(void) {
  int port = th_free_port();
  char logpath[64];
  snprintf(logpath, sizeof(logpath), "/tmp/distml-test-stall-%d.log", (int)getpid());
  pid_t pids[2];
  for (int r = 0; r < 2; r++) {
    pids[r] = fork();
    T_ASSERT(pids[r] >= 0);
    if (pids[r] == 0) {
      th_set_rank_env(r, 2, port);
      setenv("DISTML_STALL_S", "1", 1);
      alarm(60);
      if (r == 0) T_ASSERT(freopen(logpath, "w", stderr) != NULL);
      dml_comm *c = join();
      if (r == 1) sleep(2);
      float x = (float)(r + 1);
      T_OK(dml_allreduce(c, &x, 1, DML_F32, DML_SUM));
      T_ASSERT(x == 3.0f);
      dml_coll_detach(c);
      dml_comm_free(c);
      fflush(stderr); /* a file after freopen: buffered */
      _exit(0);
    }
  }
  for (int r = 0; r < 2; r++) {
    int st;
    T_ASSERT(waitpid(pids[r], &st, 0) == pids[r] && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  FILE *f = fopen(logpath, "r");
  T_ASSERT(f != NULL);
  char log[4096];
  size_t n = fread(log, 1, sizeof(log) - 1, f);
  log[n] = '\0';
  fclose(f);
  unlink(logpath);
  T_CONTAINS(log, "WARN");
  T_CONTAINS(log, "no progress for");
  T_CONTAINS(log, "waiting for rank 1");
  printf("stall warning: ok\n");
}

int main(void) {
  test_bad_env();
  test_stall_warning();
  run_world(4, 2, (size_t)1 << 18, DML_ALGO_RING);
  run_world(5, 1, 16, DML_ALGO_RD);
  run_world(3, 0, (size_t)1 << 16, DML_ALGO_RING);
  printf("test_coll_fail: ok\n");
  return 0;
}
