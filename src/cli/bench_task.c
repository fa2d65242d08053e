/* `distml bench task [--threads T] [--fib N] [--reps R] [--farm-tasks N] [--only NAME] [--json]`:
 * measures the task layer. spawn: N empty tasks spawned and joined from inside a worker, N swept, ns per task =
 * slope of a least-squares line through (N, best time); fib: fib(N) with one task per call and no
 * cutoff; unbalanced: a parallel loop whose per-index cost grows linearly (grain 1); tiny: 10^6
 * empty independent tasks; pipeline: an epoch of 60000 augmented 28x28 images through the input
 * pipeline, drained by a consumer that does nothing else; farm: N trivial tasks from this
 * process to 2 forked worker processes over the tcp communicator. Best of R runs each (farm: at
 * most 3). It does not compare with other runtimes (see bench/task_vs_tbb_omp.sh and
 * bench/task_farm_vs_dask.sh). */
#include "cli/bench_task.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/launch.h"
#include "core/internal.h"
#include "distml/core.h"
#include "distml/task.h"

static const char *CMD = "bench task";

typedef struct bench_ctx {
  dml_pool *pool;
  int reps;
} bench_ctx;

static dml_pool *g_pool;

/* ---- fib */
typedef struct fibarg {
  int n;
  long r;
} fibarg;

static int fib_task(void *arg) {
  fibarg *a = arg;
  if (a->n < 2) {
    a->r = a->n;
    return 0;
  }
  fibarg x = {a->n - 1, 0}, y = {a->n - 2, 0};
  dml_task_group g;
  dml_task_group_init(&g, g_pool);
  int rc = dml_task_spawn(&g, fib_task, &x);
  if (rc != 0) return rc;
  rc = fib_task(&y);
  int rc2 = dml_task_group_wait(&g);
  a->r = x.r + y.r;
  return rc != 0 ? rc : rc2;
}

static long fib_serial(int n) {
  long a = 0, b = 1;
  for (int i = 0; i < n; i++) {
    long t = a + b;
    a = b;
    b = t;
  }
  return a;
}

/* Run fn(arg) as one task inside the pool and wait for it from here. */
static int run_in_pool(dml_task_fn fn, void *arg) {
  dml_task_group g;
  dml_task_group_init(&g, g_pool);
  int rc = dml_task_spawn(&g, fn, arg);
  if (rc != 0) return rc;
  return dml_task_group_wait(&g);
}

/* ---- empty tasks: n of them spawned into one group by one task, then joined. */
typedef struct flat {
  long n;
  _Atomic long ran;
} flat;

static int empty_task(void *arg) {
  (void)arg;
  return 0;
}

static int counted_task(void *arg) {
  flat *f = arg;
  atomic_fetch_add_explicit(&f->ran, 1, memory_order_relaxed);
  return 0;
}

static int flat_root(void *arg) {
  flat *f = arg;
  dml_task_group g;
  dml_task_group_init(&g, g_pool);
  for (long i = 0; i < f->n; i++) {
    int rc = dml_task_spawn(&g, f->ran >= 0 ? counted_task : empty_task, f);
    if (rc != 0) {
      dml_task_group_wait(&g);
      return rc;
    }
  }
  return dml_task_group_wait(&g);
}

/* ---- unbalanced loop: index i costs about i units of work. */
typedef struct unbal {
  _Atomic uint64_t sink;
  int64_t unit;
} unbal;

static int unbal_body(int64_t lo, int64_t hi, void *ctx) {
  unbal *u = ctx;
  uint64_t acc = 0;
  for (int64_t i = lo; i < hi; i++) {
    uint64_t x = (uint64_t)i + 1;
    for (int64_t k = 0; k < i * u->unit; k++)
      x = x * 6364136223846793005ull + 1442695040888963407ull;
    acc += x;
  }
  atomic_fetch_add_explicit(&u->sink, acc, memory_order_relaxed);
  return 0;
}

/* ---- pipeline: 28x28 float images (Fashion-MNIST sized) with shift+flip+noise, batches of 64. */
enum { PIPE_H = 28, PIPE_W = 28, PIPE_BS = 64 };

typedef struct pipe_ctx {
  dml_augment aug;
} pipe_ctx;

static int pipe_map(void *vctx, uint64_t epoch, uint64_t index, dml_rng *rng, void *out) {
  pipe_ctx *c = vctx;
  float *img = out;
  (void)epoch;
  for (int p = 0; p < PIPE_H * PIPE_W; p++)
    img[p] = (float)((index * 131 + (uint64_t)p * 7) & 255) / 255.0f;
  float scratch[PIPE_H * PIPE_W];
  return dml_augment_image(&c->aug, rng, img, PIPE_H, PIPE_W, 1, scratch);
}

static int pipe_collate(void *ctx, void *const *elems, const uint64_t *idx, size_t count,
                        void *batch) {
  (void)ctx;
  (void)idx;
  float *b = batch;
  for (size_t i = 0; i < count; i++)
    memcpy(b + i * PIPE_H * PIPE_W, elems[i], sizeof(float) * PIPE_H * PIPE_W);
  return 0;
}

/* One epoch of n elements drained as fast as the consumer can release batches; best of reps. */
static int bench_pipeline(int reps, uint64_t n, double *best_s, dml_pipe_stats *st) {
  pipe_ctx c;
  dml_err err = {0};
  int rc = dml_augment_parse("shift=2,flip,noise=0.05", &c.aug, &err);
  if (rc != 0) return rc;
  dml_pipe_opts o;
  dml_pipe_opts_default(&o);
  o.n = n;
  o.elem_bytes = sizeof(float) * PIPE_H * PIPE_W;
  o.batch_size = PIPE_BS;
  o.batch_bytes = o.elem_bytes * PIPE_BS;
  o.shuffle_order = 1;
  o.shuffle_buffer = 10000;
  o.prefetch = 4;
  o.seed = 1;
  o.map = pipe_map;
  o.collate = pipe_collate;
  o.ctx = &c;
  dml_pipe *p = NULL;
  rc = dml_pipe_create(g_pool, &o, &p, &err);
  if (rc != 0) {
    fprintf(stderr, "distml bench task: %s\n", dml_err_msg(&err));
    return rc;
  }
  *best_s = 1e30;
  for (int r = 0; r < reps && rc == 0; r++) {
    double t0 = dml_now_s();
    rc = dml_pipe_start(p, (uint64_t)r);
    dml_pipe_batch b;
    while (rc == 0 && (rc = dml_pipe_next(p, &b)) == 0) dml_pipe_release(p, &b);
    if (rc == DML_ECLOSED) rc = 0;
    double t = dml_now_s() - t0;
    if (t < *best_s) *best_s = t;
  }
  if (rc != 0) fprintf(stderr, "distml bench task: pipeline: %s\n", dml_pipe_errmsg(p));
  dml_pipe_get_stats(p, st);
  dml_pipe_destroy(p);
  return rc;
}

/* ---- farm: a master (this process) and 2 forked worker processes on loopback, trivial tasks
 * (increment a number), the Dask benchmark's shape. */
static int farm_inc(void *user, const void *in, size_t in_bytes, void *out, size_t out_cap,
                    size_t *out_bytes) {
  (void)user;
  uint64_t x;
  if (in_bytes != sizeof x || out_cap < sizeof x) return DML_EINVAL;
  memcpy(&x, in, sizeof x);
  x++;
  memcpy(out, &x, sizeof x);
  *out_bytes = sizeof x;
  return 0;
}

static void farm_comm_opts(dml_comm_opts *co, int rank, int n, int port) {
  dml_comm_opts_default(co);
  co->backend = "tcp";
  co->rank = rank;
  co->world_size = n;
  co->master_addr = "127.0.0.1";
  co->master_port = port;
  co->timeout_ms = 30000;
}

static void farm_opts(dml_farm_opts *o) {
  dml_farm_opts_default(o);
  o->max_payload_bytes = 64;
  o->max_result_bytes = 64;
  o->prefetch = 8; /* trivial tasks: keep a few queued at each worker */
}

/* One farm job of ntasks, best of reps; forks the 2 workers once for all reps. */
static int bench_farm(size_t ntasks, int reps, double *best_s) {
  enum { NWORK = 2 };
  int port = dml_launch_free_port();
  if (port < 0) return DML_ESYS;
  fflush(stdout);
  fflush(stderr);
  pid_t pid[NWORK];
  for (int w = 0; w < NWORK; w++) {
    pid[w] = fork();
    if (pid[w] < 0) return DML_ESYS;
    if (pid[w] == 0) {
      dml_comm_opts co;
      farm_comm_opts(&co, w + 1, NWORK + 1, port);
      dml_comm *c;
      dml_err e = {0};
      if (dml_comm_init(&c, &co, &e) != 0) _exit(1);
      dml_farm_handler h = {"inc", farm_inc, NULL};
      dml_farm_opts o;
      farm_opts(&o);
      int rc = 0;
      for (int r = 0; r < reps && rc == 0; r++) rc = dml_farm_serve(c, &o, &h, 1, &e);
      dml_comm_free(c);
      _exit(rc == 0 ? 0 : 1);
    }
  }
  dml_comm_opts co;
  farm_comm_opts(&co, 0, NWORK + 1, port);
  dml_comm *c = NULL;
  dml_err e = {0};
  int rc = dml_comm_init(&c, &co, &e);
  uint64_t *xs = dml__calloc(ntasks, sizeof *xs);
  dml_farm_task *tasks = dml__calloc(ntasks, sizeof *tasks);
  dml_farm_result *res = dml__calloc(ntasks, sizeof *res);
  if (rc == 0 && (xs == NULL || tasks == NULL || res == NULL)) rc = DML_ENOMEM;
  *best_s = 1e30;
  for (int r = 0; r < reps && rc == 0; r++) {
    for (size_t t = 0; t < ntasks; t++) {
      xs[t] = t;
      tasks[t] = (dml_farm_task){"inc", &xs[t], sizeof xs[t]};
    }
    dml_farm_opts o;
    farm_opts(&o);
    dml_farm_stats st;
    rc = dml_farm_run(c, &o, tasks, ntasks, res, &st, &e);
    for (size_t t = 0; rc == 0 && t < ntasks; t++) {
      uint64_t y = 0;
      if (res[t].status == 0 && res[t].bytes == sizeof y) memcpy(&y, res[t].data, sizeof y);
      if (y != t + 1) {
        snprintf(e.msg, sizeof e.msg, "farm: task %zu gave a wrong result", t);
        rc = DML_EPROTO;
      }
    }
    dml_farm_results_free(res, ntasks);
    /* wall time of the run itself, without the wait for the workers' goodbye */
    if (rc == 0 && st.wall_s < *best_s) *best_s = st.wall_s;
  }
  if (rc != 0)
    fprintf(stderr, "distml bench task: farm: %s\n", e.msg[0] ? e.msg : dml_strerror(rc));
  dml_comm_free(c);
  for (int w = 0; w < NWORK; w++) {
    int status;
    if (rc != 0) kill(pid[w], SIGKILL);
    waitpid(pid[w], &status, 0);
  }
  dml__free(xs);
  dml__free(tasks);
  dml__free(res);
  return rc;
}

static void report(int json, const char *bench, unsigned threads, uint64_t tasks, double best_s,
                   double ns_per_task, const char *note) {
  double tps = ns_per_task > 0 ? 1e9 / ns_per_task : 0;
  if (json) {
    dml_jsonl j;
    dml_jsonl_init_stream(&j, stdout);
    dml_jsonl_begin(&j);
    dml_jsonl_add_str(&j, "bench", bench);
    dml_jsonl_add_int(&j, "threads", threads);
    dml_jsonl_add_int(&j, "tasks", (int64_t)tasks);
    dml_jsonl_add_double(&j, "best_s", best_s);
    dml_jsonl_add_double(&j, "tasks_per_s", tps);
    dml_jsonl_add_double(&j, "ns_per_task", ns_per_task);
    dml_jsonl_end(&j);
    dml_jsonl_close(&j);
  } else {
    printf("%-11s %7u %10llu %11.6f %13.0f %11.1f  %s\n", bench, threads, (unsigned long long)tasks,
           best_s, tps, ns_per_task, note);
  }
}

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: distml bench task [--threads T] [--fib N] [--reps R] [--farm-tasks N] [--only NAME]\n"
      "                         [--json]\n"
      "  --threads T   worker threads (default: online CPUs)\n"
      "  --fib N       fib(N) with one task per call, no cutoff (default 30)\n"
      "  --reps R      runs of each measurement; the best is reported (default 5; farm: 3 at "
      "most)\n"
      "  --farm-tasks N  trivial tasks per farm run, 2 worker processes (default 20000)\n"
      "  --only NAME   run one of: spawn fib unbalanced tiny pipeline farm\n"
      "  --json        one JSON object per measurement: bench, threads, tasks, best_s,\n"
      "                tasks_per_s, ns_per_task\n");
}

int dml_cli_bench_task_main(int argc, char **argv) {
  unsigned threads = 0;
  int fib_n = 30, reps = 5, json = 0;
  int64_t farm_tasks = 20000;
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "--json") == 0) {
      json = 1;
    } else if (strcmp(a, "--threads") == 0 || strcmp(a, "--fib") == 0 || strcmp(a, "--reps") == 0 ||
               strcmp(a, "--only") == 0 || strcmp(a, "--farm-tasks") == 0) {
      if (v == NULL) dml_cli_usage_error(CMD, "%s needs a value", a);
      if (strcmp(a, "--threads") == 0) threads = (unsigned)dml_cli_int(CMD, a, v, 1, 1024);
      if (strcmp(a, "--fib") == 0) fib_n = (int)dml_cli_int(CMD, a, v, 1, 45);
      if (strcmp(a, "--reps") == 0) reps = (int)dml_cli_int(CMD, a, v, 1, 1000);
      if (strcmp(a, "--farm-tasks") == 0) farm_tasks = dml_cli_int(CMD, a, v, 1, 10000000);
      if (strcmp(a, "--only") == 0) {
        if (strcmp(v, "spawn") != 0 && strcmp(v, "fib") != 0 && strcmp(v, "unbalanced") != 0 &&
            strcmp(v, "tiny") != 0 && strcmp(v, "pipeline") != 0 && strcmp(v, "farm") != 0)
          dml_cli_usage_error(
              CMD,
              "--only: unknown measurement '%s' (spawn, fib, unbalanced, tiny, pipeline, farm)", v);
        only = v;
      }
      i++;
    } else {
      dml_cli_usage_error(CMD, "unknown flag '%s'", a);
    }
  }

  dml_pool_opts o;
  dml_pool_opts_default(&o);
  o.nthreads = threads;
  o.name = "bench";
  dml_err err = {0};
  if (dml_pool_create(&o, &g_pool, &err) != 0) dml_cli_fail(CMD, "%s", dml_err_msg(&err));
  threads = dml_pool_nthreads(g_pool);
  if (!json)
    printf("%-11s %7s %10s %11s %13s %11s\n", "bench", "threads", "tasks", "best_s", "tasks/s",
           "ns/task");
  int rc = 0;

  if (only == NULL || strcmp(only, "spawn") == 0) {
    /* Spawn+join of N empty tasks from one worker, N = 2^13 .. 2^17; the slope of the best times
     * is the cost per task, with the fixed costs (waking workers, the root task) in the offset. */
    enum { NPTS = 5 };
    double xs[NPTS], ys[NPTS];
    for (int k = 0; k < NPTS && rc == 0; k++) {
      flat f = {8192L << k, -1};
      double best = 1e30;
      for (int r = 0; r < reps && rc == 0; r++) {
        double t0 = dml_now_s();
        rc = run_in_pool(flat_root, &f);
        double t = dml_now_s() - t0;
        if (t < best) best = t;
      }
      xs[k] = (double)f.n;
      ys[k] = best;
    }
    if (rc == 0) {
      double mx = 0, my = 0, sxx = 0, sxy = 0;
      for (int k = 0; k < NPTS; k++) {
        mx += xs[k] / NPTS;
        my += ys[k] / NPTS;
      }
      for (int k = 0; k < NPTS; k++) {
        sxx += (xs[k] - mx) * (xs[k] - mx);
        sxy += (xs[k] - mx) * (ys[k] - my);
      }
      double slope_ns = sxy / sxx * 1e9;
      report(json, "spawn", threads, (uint64_t)xs[NPTS - 1], ys[NPTS - 1], slope_ns,
             "slope over N = 8192..131072");
    }
  }

  if (rc == 0 && (only == NULL || strcmp(only, "fib") == 0)) {
    long want = fib_serial(fib_n);
    uint64_t tasks = (uint64_t)fib_serial(fib_n + 1); /* one per inner call, plus the root */
    double best = 1e30;
    for (int r = 0; r < reps && rc == 0; r++) {
      fibarg a = {fib_n, 0};
      double t0 = dml_now_s();
      rc = run_in_pool(fib_task, &a);
      double t = dml_now_s() - t0;
      if (rc == 0 && a.r != want)
        dml_cli_fail(CMD, "fib(%d) = %ld, expected %ld", fib_n, a.r, want);
      if (t < best) best = t;
    }
    char note[64];
    snprintf(note, sizeof note, "fib(%d) = %ld", fib_n, want);
    if (rc == 0) report(json, "fib", threads, tasks, best, best * 1e9 / (double)tasks, note);
  }

  if (rc == 0 && (only == NULL || strcmp(only, "unbalanced") == 0)) {
    const int64_t n = 4096;
    unbal u = {0, 8};
    double best = 1e30;
    for (int r = 0; r < reps && rc == 0; r++) {
      double t0 = dml_now_s();
      rc = dml_parallel_for(g_pool, 0, n, 1, unbal_body, &u);
      double t = dml_now_s() - t0;
      if (t < best) best = t;
    }
    if (rc == 0)
      report(json, "unbalanced", threads, (uint64_t)n, best, best * 1e9 / (double)n,
             "index i costs 8i LCG steps, grain 1");
  }

  if (rc == 0 && (only == NULL || strcmp(only, "tiny") == 0)) {
    const long n = 1000000;
    double best = 1e30;
    for (int r = 0; r < reps && rc == 0; r++) {
      flat f = {n, 0};
      double t0 = dml_now_s();
      rc = run_in_pool(flat_root, &f);
      double t = dml_now_s() - t0;
      if (rc == 0 && atomic_load(&f.ran) != n)
        dml_cli_fail(CMD, "tiny: %ld of %ld tasks ran", atomic_load(&f.ran), n);
      if (t < best) best = t;
    }
    if (rc == 0)
      report(json, "tiny", threads, (uint64_t)n, best, best * 1e9 / (double)n,
             "independent tasks, each one atomic increment");
  }
  if (rc == 0 && (only == NULL || strcmp(only, "pipeline") == 0)) {
    const uint64_t n = 60000;
    double best = 0;
    dml_pipe_stats ps;
    rc = bench_pipeline(reps, n, &best, &ps);
    if (rc == 0) {
      char note[160];
      snprintf(note, sizeof note,
               "28x28 shift+flip+noise, batch 64; map %.2f s, consumer wait %.2f s (all runs)",
               (double)ps.map_busy_ns * 1e-9, (double)ps.consumer_wait_ns * 1e-9);
      report(json, "pipeline", threads, n, best, best * 1e9 / (double)n, note);
    }
  }
  if (rc == 0 && (only == NULL || strcmp(only, "farm") == 0)) {
    /* The pool's threads are not needed by the farm; forking with them idle is safe (the children
     * only use the communicator). */
    const size_t n = (size_t)farm_tasks;
    double best = 0;
    rc = bench_farm(n, reps < 3 ? reps : 3, &best);
    if (rc == 0)
      report(json, "farm", 2, n, best, best * 1e9 / (double)n,
             "master + 2 worker processes on loopback, trivial tasks");
  }
  if (!json && rc == 0) {
    dml_pool_stats st;
    dml_pool_get_stats(g_pool, &st);
    printf("pool: %llu tasks run, %llu stolen, %llu failed steals, %llu sleeps\n",
           (unsigned long long)st.executed, (unsigned long long)st.stolen,
           (unsigned long long)st.steal_fails, (unsigned long long)st.sleeps);
  }
  dml_pool_destroy(g_pool);
  g_pool = NULL;
  if (rc != 0) dml_cli_fail(CMD, "%s", dml_strerror(rc));
  return 0;
}
