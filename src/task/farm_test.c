/* Tests for the task farm over real processes on loopback: every task's result exactly once and
 * right; a worker killed (SIGKILL, by itself, mid-run) loses nothing; a worker that stops
 * (SIGSTOP) is dropped when its lease runs out and its tasks are re-issued, and one resumed after
 * that is told to stop when the farm ends (it leaves while the master goes on); a task that kills
 * three workers fails with DML_EPEER while the others finish; an unknown handler is an error
 * result, not a crash; a worker sending a corrupt frame is dropped and its tasks re-issued.
 * Processes are forked here and waited by pid.  test-labels: tsan */
#include <signal.h>

#include "distml/task.h"
#include "test_comm_harness.h"

enum { MODE_PLAIN, MODE_KILL, MODE_STOP, MODE_POISON, MODE_HOSTILE, MODE_STOP_RESUME };

typedef struct cfg {
  int mode;
  size_t ntasks;
  int victim; /* rank that kills/stops itself (MODE_KILL, MODE_STOP) */
  int after;  /* ... when it starts its after-th task */
} cfg;

typedef struct wuser {
  const cfg *cf;
  int rank;
  int calls;
} wuser;

static int square(void *user, const void *in, size_t in_bytes, void *out, size_t out_cap,
                  size_t *out_bytes) {
  wuser *u = user;
  uint64_t x;
  if (in_bytes != sizeof x || out_cap < sizeof x) return DML_EINVAL;
  memcpy(&x, in, sizeof x);
  u->calls++;
  if (u->cf->mode == MODE_KILL && u->rank == u->cf->victim && u->calls == u->cf->after)
    raise(SIGKILL);
  if ((u->cf->mode == MODE_STOP || u->cf->mode == MODE_STOP_RESUME) && u->rank == u->cf->victim &&
      u->calls == u->cf->after)
    raise(SIGSTOP);
  if (u->cf->mode == MODE_POISON && x == 7) raise(SIGKILL);
  if (u->cf->mode != MODE_PLAIN) {
    struct timespec ts = {0, 500000}; /* 0.5 ms: the run lasts long enough to lose a worker */
    nanosleep(&ts, NULL);
  }
  uint64_t y = x * x + 1;
  memcpy(out, &y, sizeof y);
  *out_bytes = sizeof y;
  return 0;
}

static void farm_opts(dml_farm_opts *o) {
  dml_farm_opts_default(o);
  o->hb_ms = 20;
  o->lease_ms = 500;
  o->max_payload_bytes = 64;
  o->max_result_bytes = 128;
}

/* The hostile rank: takes one task frame and answers with a result for a task id that does not
 * exist (the frame layout of farm.c: 32-byte header + max_result_bytes). */
static int hostile(dml_comm *c, int rank) {
  unsigned char in[64 + 64], out[32 + 128];
  RK_OK(dml_comm_recv(c, 0, DML_TAG_RESERVED + 0x08006000, in, sizeof in));
  memcpy(out, in, 32);
  uint64_t bogus = 1u << 30;
  memcpy(out + 8, &bogus, 8);
  memset(out + 20, 0, 12);
  RK_OK(dml_comm_send(c, 0, DML_TAG_RESERVED + 0x08006001, out, sizeof out));
  /* The master must not send it more work or wait for it: it hears nothing until the stop. */
  return 0;
}

static int worker_rank(int rank, int n, int port, void *arg) {
  const cfg *cf = arg;
  dml_comm_opts co;
  th_opts(&co, rank, n, port, 20000);
  dml_comm *c;
  dml_err err = {0};
  RK_OK(dml_comm_init(&c, &co, &err));
  if (cf->mode == MODE_HOSTILE && rank == cf->victim) {
    int hrc = hostile(c, rank);
    dml_comm_free(c);
    return hrc;
  }
  wuser u = {cf, rank, 0};
  dml_farm_handler h[1] = {{"square", square, &u}};
  dml_farm_opts o;
  farm_opts(&o);
  int rc = dml_farm_serve(c, &o, h, 1, &err);
  if (rc == 0 && cf->mode == MODE_PLAIN) rc = dml_farm_serve(c, &o, h, 1, &err); /* a second run */
  if (rc != 0) fprintf(stderr, "rank %d: serve: %s\n", rank, dml_err_msg(&err));
  dml_comm_free(c);
  return rc == 0 ? 0 : 1;
}

typedef struct outcome {
  dml_farm_stats st;
  int rc;
} outcome;

static int master_rank(int rank, int n, int port, void *arg) {
  const cfg *cf = arg;
  dml_comm_opts co;
  th_opts(&co, rank, n, port, 20000);
  dml_comm *c;
  dml_err err = {0};
  RK_OK(dml_comm_init(&c, &co, &err));
  size_t nt = cf->ntasks;
  dml_farm_task *tasks = calloc(nt + 1, sizeof *tasks);
  uint64_t *xs = calloc(nt + 1, sizeof *xs);
  dml_farm_result *res = calloc(nt + 1, sizeof *res);
  R_ASSERT(tasks && xs && res);
  for (size_t t = 0; t < nt; t++) {
    xs[t] = t;
    tasks[t] = (dml_farm_task){"square", &xs[t], sizeof xs[t]};
  }
  size_t total = nt;
  if (cf->mode == MODE_PLAIN) tasks[total++] = (dml_farm_task){"nosuch", NULL, 0};
  dml_farm_opts o;
  farm_opts(&o);
  dml_farm_stats st;
  int rc = dml_farm_run(c, &o, tasks, total, res, &st, &err);
  if (rc != 0) fprintf(stderr, "master: %s\n", dml_err_msg(&err));
  RK_OK(rc);
  int bad = 0;
  for (size_t t = 0; t < nt; t++) {
    if (cf->mode == MODE_POISON && t == 7) {
      if (res[t].status != DML_EPEER || res[t].data == NULL ||
          strstr(res[t].data, "task 7") == NULL)
        bad = 1;
      continue;
    }
    uint64_t y = 0;
    if (res[t].status != 0 || res[t].bytes != sizeof y || res[t].worker < 1 || res[t].worker >= n ||
        res[t].attempts < 1) {
      fprintf(stderr, "task %zu: status %d bytes %zu worker %d attempts %d\n", t, res[t].status,
              res[t].bytes, res[t].worker, res[t].attempts);
      bad = 1;
      continue;
    }
    memcpy(&y, res[t].data, sizeof y);
    if (y != (uint64_t)t * t + 1) bad = 1;
  }
  R_ASSERT(!bad);
  fprintf(stderr, "master: done %llu failed %llu reissued %llu duplicates %llu lost %d in %.3f s\n",
          (unsigned long long)st.done, (unsigned long long)st.failed,
          (unsigned long long)st.reissued, (unsigned long long)st.duplicates, st.workers_lost,
          st.wall_s);
  switch (cf->mode) {
    case MODE_PLAIN:
      R_ASSERT(res[nt].status == DML_EINVAL && res[nt].data && strstr(res[nt].data, "nosuch"));
      R_ASSERT(st.done == nt && st.failed == 1 && st.workers_lost == 0 && st.reissued == 0);
      break;
    case MODE_KILL:
    case MODE_STOP:
    case MODE_STOP_RESUME:
    case MODE_HOSTILE:
      R_ASSERT(st.done == nt && st.failed == 0 && st.workers_lost == 1 && st.reissued >= 1);
      for (size_t t = 0; t < nt; t++) R_ASSERT(res[t].worker != cf->victim || res[t].attempts >= 1);
      break;
    case MODE_POISON:
      R_ASSERT(st.done == nt - 1 && st.failed == 1 && st.workers_lost == 3 && res[7].attempts == 3);
      break;
  }
  dml_farm_results_free(res, total);
  if (cf->mode == MODE_STOP_RESUME) {
    /* this process goes on after the farm; the worker it lost, resumed meanwhile, was told to
     * stop too and leaves by itself: its connection closes (not a timeout) */
    uint8_t b;
    R_ASSERT(dml_comm_recv(c, cf->victim, 99, &b, 1) == DML_ECLOSED);
  }
  if (cf->mode == MODE_PLAIN) {
    /* The same communicator carries a second run: nothing of the first one is left over. */
    RK_OK(dml_farm_run(c, &o, tasks, nt, res, &st, &err));
    for (size_t t = 0; t < nt; t++) {
      uint64_t y = 0;
      R_ASSERT(res[t].status == 0 && res[t].bytes == sizeof y);
      memcpy(&y, res[t].data, sizeof y);
      R_ASSERT(y == (uint64_t)t * t + 1);
    }
    R_ASSERT(st.done == nt && st.workers_lost == 0 && st.duplicates == 0);
    dml_farm_results_free(res, nt);
  }
  free(tasks);
  free(xs);
  free(res);
  dml_comm_free(c);
  return 0;
}

/* Run a farm of n ranks; expect the listed ranks to die by signal sig (0: none). */
static void run_farm(const char *what, int n, cfg *cf, int victims_sig) {
  int port = th_free_port();
  pid_t pid[16];
  pid[0] = th_spawn(0, n, port, master_rank, cf, NULL);
  for (int r = 1; r < n; r++) pid[r] = th_spawn(r, n, port, worker_rank, cf, NULL);
  if (cf->mode == MODE_STOP_RESUME) { /* once stopped, past its lease, it is resumed */
    int st = 0;
    while (waitpid(pid[cf->victim], &st, WUNTRACED) < 0 && errno == EINTR) {
    }
    T_ASSERT(WIFSTOPPED(st));
    struct timespec ts = {1, 500000000};
    nanosleep(&ts, NULL);
    T_ASSERT(kill(pid[cf->victim], SIGCONT) == 0);
  }
  int mrc = th_wait_pid(pid[0], 120);
  if (cf->mode == MODE_STOP) kill(pid[cf->victim], SIGKILL); /* the stopped worker, by pid */
  int died = 0;
  for (int r = 1; r < n; r++) {
    int rc = th_wait_pid(pid[r], 30);
    if (rc == 128 + victims_sig && victims_sig != 0) {
      died++;
    } else if (rc != 0) {
      fprintf(stderr, "%s: worker rank %d exited %d\n", what, r, rc);
      T_FAIL("%s: a worker failed", what);
    }
  }
  if (mrc != 0) T_FAIL("%s: master exited %d", what, mrc);
  int want = cf->mode == MODE_POISON ? 3 : (cf->mode == MODE_KILL || cf->mode == MODE_STOP) ? 1 : 0;
  T_EQ_INT(died, want);
  printf("%s: ok\n", what);
}

int main(void) {
  th_clear_env();
  signal(SIGPIPE, SIG_IGN);
  cfg plain = {MODE_PLAIN, 2000, 0, 0};
  run_farm("plain, 3 workers", 4, &plain, 0);
  cfg k = {MODE_KILL, 400, 2, 30};
  run_farm("worker 2 killed at its 30th task", 4, &k, SIGKILL);
  cfg s = {MODE_STOP, 400, 1, 30};
  run_farm("worker 1 stopped at its 30th task", 4, &s, SIGKILL);
  cfg sr = {MODE_STOP_RESUME, 400, 1, 30};
  run_farm("worker 1 stopped past its lease, then resumed: told to stop too", 4, &sr, 0);
  cfg p = {MODE_POISON, 60, 0, 0};
  run_farm("task 7 kills every worker it runs on", 5, &p, SIGKILL);
  cfg h = {MODE_HOSTILE, 200, 3, 0};
  run_farm("worker 3 answers with a corrupt frame", 4, &h, 0);
  printf("farm_test: ok\n");
  return 0;
}
