/* The collectives against references computed here, over the grid of issue 3: ranks 1, 2, 3,
 * 4, 5, 8 x counts 0, 1, 7, 1023, 2^20+3 x dtypes x ops x both all-reduce algorithms, plus
 * reduce-scatter, all-gather, broadcast, barrier, the compressed all-reduce, and non-blocking
 * forms overlapping with compute. Without a launcher's environment it forks the ranks itself
 * (tcp backend); started by mpirun (tests/test_coll_mpi.sh) or `distml launch`, it is one rank.
 * test-labels: coll tsan */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
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

#define BIG ((size_t)(1u << 20) + 3)
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static int g_rank, g_size;

/* Integers in [-9, 9]: sums are exact in every type. */
static double val(int r, size_t i, int seed) {
  return (double)((int)((i * 7 + (size_t)r * 13 + (size_t)seed * 5) % 19) - 9);
}

static void put(void *b, dml_dtype dt, size_t i, double v) {
  switch (dt) {
    case DML_F32: ((float *)b)[i] = (float)v; break;
    case DML_F64: ((double *)b)[i] = v; break;
    case DML_I32: ((int32_t *)b)[i] = (int32_t)v; break;
    case DML_I64: ((int64_t *)b)[i] = (int64_t)v; break;
    default: T_FAIL("bad dtype");
  }
}

static double get(const void *b, dml_dtype dt, size_t i) {
  switch (dt) {
    case DML_F32: return ((const float *)b)[i];
    case DML_F64: return ((const double *)b)[i];
    case DML_I32: return ((const int32_t *)b)[i];
    case DML_I64: return (double)((const int64_t *)b)[i];
    default: T_FAIL("bad dtype");
  }
}

static double reference(size_t i, int p, dml_redop op, dml_dtype dt, int seed) {
  double acc = val(0, i, seed);
  for (int r = 1; r < p; r++) {
    double v = val(r, i, seed);
    acc = op == DML_MAX ? fmax(acc, v) : op == DML_MIN ? fmin(acc, v) : acc + v;
  }
  if (op == DML_AVG) {
    if (dt == DML_I32 || dt == DML_I64) return (double)((int64_t)acc / p); /* C truncation */
    return acc / p;
  }
  return acc;
}

static void expect_equal(double got, double want, dml_dtype dt, const char *what, size_t i) {
  double tol = dt == DML_F32 ? 1e-6 * fmax(1.0, fabs(want)) : 1e-12 * fmax(1.0, fabs(want));
  if (!(fabs(got - want) <= tol))
    T_FAIL("rank %d of %d: %s: element %zu is %.9g, want %.9g", g_rank, g_size, what, i, got, want);
}

static void check_rc(dml_comm *c, int rc, const char *what) {
  if (rc != 0)
    T_FAIL("rank %d of %d: %s returned %s: %s", g_rank, g_size, what, dml_strerror(rc),
           dml_coll_errmsg(c));
}

static void test_allreduce(dml_comm *c, size_t count, dml_dtype dt, dml_redop op,
                           dml_allreduce_algo algo, int seed) {
  size_t esz = dml_dtype_size(dt);
  void *b = malloc(count * esz + 1);
  T_ASSERT(b != NULL);
  for (size_t i = 0; i < count; i++) put(b, dt, i, val(g_rank, i, seed));
  char what[128];
  snprintf(what, sizeof(what), "allreduce count %zu %s %s %s", count, dml_dtype_name(dt),
           dml_redop_name(op), dml_allreduce_algo_name(algo));
  check_rc(c, dml_allreduce_with(c, b, count, dt, op, algo), what);
  for (size_t i = 0; i < count; i++)
    expect_equal(get(b, dt, i), reference(i, g_size, op, dt, seed), dt, what, i);
  free(b);
}

static void test_reduce_scatter(dml_comm *c, size_t count, dml_dtype dt, dml_redop op, int seed) {
  size_t esz = dml_dtype_size(dt), total = count * (size_t)g_size;
  void *s = malloc(total * esz + 1), *o = malloc(count * esz + 1), *keep = malloc(total * esz + 1);
  T_ASSERT(s && o && keep);
  for (size_t i = 0; i < total; i++) put(s, dt, i, val(g_rank, i, seed));
  memcpy(keep, s, total * esz);
  char what[128];
  snprintf(what, sizeof(what), "reduce_scatter count %zu %s %s", count, dml_dtype_name(dt),
           dml_redop_name(op));
  check_rc(c, dml_reduce_scatter(c, s, o, count, dt, op), what);
  T_ASSERT(memcmp(s, keep, total * esz) == 0); /* sendbuf untouched */
  for (size_t i = 0; i < count; i++)
    expect_equal(get(o, dt, i), reference((size_t)g_rank * count + i, g_size, op, dt, seed), dt,
                 what, i);
  free(s);
  free(o);
  free(keep);
}

static void test_allgather(dml_comm *c, size_t count, dml_dtype dt, int in_place, int seed) {
  size_t esz = dml_dtype_size(dt), total = count * (size_t)g_size;
  void *s = malloc(count * esz + 1), *o = malloc(total * esz + 1);
  T_ASSERT(s && o);
  for (size_t i = 0; i < total; i++) put(o, dt, i, 99);
  void *src = in_place ? (char *)o + (size_t)g_rank * count * esz : s;
  for (size_t i = 0; i < count; i++) put(src, dt, i, val(g_rank, i, seed));
  char what[128];
  snprintf(what, sizeof(what), "allgather count %zu %s%s", count, dml_dtype_name(dt),
           in_place ? " in place" : "");
  check_rc(c, dml_allgather(c, src, o, count, dt), what);
  for (int r = 0; r < g_size; r++)
    for (size_t i = 0; i < count; i++)
      expect_equal(get(o, dt, (size_t)r * count + i), val(r, i, seed), dt, what, i);
  free(s);
  free(o);
}

static void test_broadcast(dml_comm *c, size_t count, dml_dtype dt, int root, int seed) {
  size_t esz = dml_dtype_size(dt);
  void *b = malloc(count * esz + 1);
  T_ASSERT(b);
  for (size_t i = 0; i < count; i++) put(b, dt, i, g_rank == root ? val(root, i, seed) : 77);
  char what[128];
  snprintf(what, sizeof(what), "broadcast count %zu %s root %d", count, dml_dtype_name(dt), root);
  check_rc(c, dml_broadcast(c, b, count, dt, root), what);
  for (size_t i = 0; i < count; i++) expect_equal(get(b, dt, i), val(root, i, seed), dt, what, i);
  free(b);
}

/* fp16/bf16 on the wire: close to the exact f32 sum, and bitwise the same on every rank. */
static void test_compressed(dml_comm *c, size_t count, dml_dtype wire, dml_redop op) {
  float *b = malloc(count * sizeof(float) + 4), *hi = malloc(count * sizeof(float) + 4),
        *lo = malloc(count * sizeof(float) + 4);
  T_ASSERT(b && hi && lo);
  for (size_t i = 0; i < count; i++) b[i] = (float)(val(g_rank, i, 3) * 0.37 + 0.01 * g_rank);
  char what[128];
  snprintf(what, sizeof(what), "compressed allreduce count %zu wire %s %s", count,
           dml_dtype_name(wire), dml_redop_name(op));
  check_rc(c, dml_allreduce_f32_compressed(c, b, count, wire, op), what);
  double rel = wire == DML_F16 ? 2e-3 : 1.6e-2; /* a few roundings of 11 or 8 bits */
  for (size_t i = 0; i < count; i++) {
    double want = 0;
    for (int r = 0; r < g_size; r++) {
      double v = (float)(val(r, i, 3) * 0.37 + 0.01 * r);
      want = r == 0 ? v : op == DML_MAX ? fmax(want, v) : op == DML_MIN ? fmin(want, v) : want + v;
    }
    if (op == DML_AVG) want /= g_size;
    double tol = rel * g_size * (fabs(want) + 3.4);
    if (!(fabs(b[i] - want) <= tol))
      T_FAIL("rank %d of %d: %s: element %zu is %.9g, want %.9g", g_rank, g_size, what, i, b[i],
             want);
  }
  memcpy(hi, b, count * sizeof(float));
  memcpy(lo, b, count * sizeof(float));
  check_rc(c, dml_allreduce(c, hi, count, DML_F32, DML_MAX), "max of compressed results");
  check_rc(c, dml_allreduce(c, lo, count, DML_F32, DML_MIN), "min of compressed results");
  for (size_t i = 0; i < count; i++)
    if (hi[i] != b[i] || lo[i] != b[i])
      T_FAIL("rank %d of %d: %s: element %zu differs between ranks (%g..%g)", g_rank, g_size, what,
             i, lo[i], hi[i]);
  free(b);
  free(hi);
  free(lo);
}

/* Non-blocking: the collectives progress on the background thread while we compute; several
 * in flight at once complete in issue order; waits may come in any order. */
static void test_nonblocking(dml_comm *c) {
  size_t n = (size_t)1 << 17;
  float *a = malloc(n * sizeof(float)), *s = malloc(n * (size_t)g_size * sizeof(float)),
        *o = malloc(n * sizeof(float)), *g = malloc(n * (size_t)g_size * sizeof(float));
  double *bc = malloc(1000 * sizeof(double));
  T_ASSERT(a && s && o && g && bc);
  for (size_t i = 0; i < n; i++) a[i] = (float)val(g_rank, i, 9);
  for (size_t i = 0; i < n * (size_t)g_size; i++) s[i] = (float)val(g_rank, i, 10);
  for (size_t i = 0; i < 1000; i++) bc[i] = g_rank == 0 ? (double)i * 0.5 : -1;
  dml_coll_req *r1, *r2, *r3, *r4, *r5;
  check_rc(c, dml_iallreduce(c, a, n, DML_F32, DML_SUM, &r1), "iallreduce");
  check_rc(c, dml_ireduce_scatter(c, s, o, n, DML_F32, DML_MAX, &r2), "ireduce_scatter");
  check_rc(c, dml_ibroadcast(c, bc, 1000, DML_F64, 0, &r3), "ibroadcast");
  check_rc(c, dml_ibarrier(c, &r4), "ibarrier");
  /* Compute while they run; the last request must complete without our waiting on it. */
  volatile double sink = 0;
  int done = 0, polls = 0;
  while (!done) {
    for (int k = 0; k < 20000; k++) sink += sqrt((double)k + sink * 1e-9);
    int rc = dml_coll_test(r4, &done);
    check_rc(c, rc, "test of ibarrier");
    T_ASSERT(++polls < 2000000);
  }
  (void)sink;
  check_rc(c, dml_coll_wait(r3, -1), "wait ibroadcast");
  check_rc(c, dml_coll_wait(r1, 60000), "wait iallreduce");
  check_rc(c, dml_coll_wait(r2, -1), "wait ireduce_scatter");
  for (size_t i = 0; i < n; i++)
    expect_equal(a[i], reference(i, g_size, DML_SUM, DML_F32, 9), DML_F32, "iallreduce", i);
  for (size_t i = 0; i < n; i++)
    expect_equal(o[i], reference((size_t)g_rank * n + i, g_size, DML_MAX, DML_F32, 10), DML_F32,
                 "ireduce_scatter", i);
  for (size_t i = 0; i < 1000; i++) expect_equal(bc[i], (double)i * 0.5, DML_F64, "ibroadcast", i);
  /* A blocking collective after queued ones runs after them. */
  for (size_t i = 0; i < n; i++) o[i] = (float)val(g_rank, i, 11);
  check_rc(c, dml_iallgather(c, o, g, n, DML_F32, &r5), "iallgather");
  float one = 1;
  check_rc(c, dml_allreduce(c, &one, 1, DML_F32, DML_SUM), "allreduce after iallgather");
  T_ASSERT(one == (float)g_size);
  check_rc(c, dml_coll_wait(r5, -1), "wait iallgather");
  for (int r = 0; r < g_size; r++)
    for (size_t i = 0; i < n; i++)
      expect_equal(g[(size_t)r * n + i], val(r, i, 11), DML_F32, "iallgather", i);
  /* Compressed non-blocking. */
  for (size_t i = 0; i < 1000; i++) a[i] = 1.5f;
  check_rc(c, dml_iallreduce_f32_compressed(c, a, 1000, DML_BF16, DML_SUM, &r1), "icompressed");
  check_rc(c, dml_coll_wait(r1, -1), "wait icompressed");
  for (size_t i = 0; i < 1000; i++) expect_equal(a[i], 1.5 * g_size, DML_F32, "icompressed", i);
  free(a);
  free(s);
  free(o);
  free(g);
  free(bc);
}

static void test_bad_arguments(dml_comm *c) {
  float x = 0;
  T_EQ_INT(dml_allreduce(c, NULL, 4, DML_F32, DML_SUM), DML_EINVAL);
  T_EQ_INT(dml_allreduce(c, &x, 1, (dml_dtype)42, DML_SUM), DML_EINVAL);
  T_EQ_INT(dml_allreduce(c, &x, 1, DML_F32, (dml_redop)9), DML_EINVAL);
  T_EQ_INT(dml_broadcast(c, &x, 1, DML_F32, g_size), DML_EINVAL);
  T_EQ_INT(dml_broadcast(c, &x, 1, DML_F32, -1), DML_EINVAL);
  T_EQ_INT(dml_allreduce_f32_compressed(c, &x, 1, DML_F32, DML_SUM), DML_EINVAL);
  T_EQ_INT(dml_iallreduce(c, &x, 1, DML_F32, DML_SUM, NULL), DML_EINVAL);
  T_EQ_INT(dml_allreduce(NULL, &x, 1, DML_F32, DML_SUM), DML_EINVAL);
}

static void run_grid(dml_comm *c) {
  static const size_t counts[] = {0, 1, 7, 1023};
  static const dml_dtype dts[] = {DML_F32, DML_F64, DML_I32, DML_I64};
  static const dml_redop ops[] = {DML_SUM, DML_AVG, DML_MAX, DML_MIN};
  static const dml_allreduce_algo algos[] = {DML_ALGO_RING, DML_ALGO_RD};
  int seed = 0;
  test_bad_arguments(c);
  for (size_t k = 0; k < ARRAY_LEN(counts); k++)
    for (size_t d = 0; d < 4; d++)
      for (size_t o = 0; o < 4; o++)
        for (size_t a = 0; a < 2; a++)
          test_allreduce(c, counts[k], dts[d], ops[o], algos[a], seed++);
  /* The large count: every algorithm once; more types where the rank count keeps it fast. */
  test_allreduce(c, BIG, DML_F32, DML_SUM, DML_ALGO_RING, seed++);
  if (g_size <= 4) {
    test_allreduce(c, BIG, DML_F32, DML_AVG, DML_ALGO_RD, seed++);
    test_allreduce(c, BIG, DML_I64, DML_MAX, DML_ALGO_RING, seed++);
    test_allreduce(c, BIG, DML_F64, DML_MIN, DML_ALGO_AUTO, seed++);
  }
  for (size_t k = 0; k < ARRAY_LEN(counts); k++)
    for (size_t d = 0; d < 4; d++) {
      test_reduce_scatter(c, counts[k], dts[d], ops[d], seed++); /* one op per type */
      test_allgather(c, counts[k], dts[d], (int)(d % 2), seed++);
      test_broadcast(c, counts[k], dts[d], (int)(d % (size_t)g_size), seed++);
      test_broadcast(c, counts[k], dts[d], g_size - 1, seed++);
    }
  test_reduce_scatter(c, BIG / (size_t)g_size + 1, DML_F32, DML_SUM, seed++);
  test_allgather(c, BIG / (size_t)g_size + 1, DML_F32, 0, seed++);
  test_broadcast(c, BIG, DML_F32, g_size / 2, seed++);
  for (int i = 0; i < 5; i++) check_rc(c, dml_barrier(c), "barrier");
  static const dml_dtype wires[] = {DML_F16, DML_BF16};
  for (size_t w = 0; w < 2; w++)
    for (size_t o = 0; o < 4; o++) {
      test_compressed(c, 1023, wires[w], ops[o]);
      test_compressed(c, 7, wires[w], ops[o]);
    }
  test_compressed(c, (size_t)1 << 18, DML_BF16, DML_SUM); /* large: the ring */
  test_compressed(c, (size_t)1 << 18, DML_F16, DML_AVG);
  test_nonblocking(c);
}

static int run_rank(void) {
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  dml_comm *c = NULL;
  dml_err e = {0};
  int rc = dml_comm_init(&c, &o, &e);
  if (rc) T_FAIL("dml_comm_init: %s", dml_err_msg(&e));
  g_rank = dml_comm_rank(c);
  g_size = dml_comm_size(c);
  if (g_rank == 0) {
    printf("%d ranks on the %s backend\n", g_size, dml_comm_backend(c));
    fflush(stdout);
  }
  run_grid(c);
  dml_coll_detach(c);
  dml_comm_free(c);
  return 0;
}

/* Forks p ranks on loopback with the environment the launcher would set; all must exit 0.
 * cma: -1 leaves large messages to the default (copied out of the sender's memory between
 * processes of this machine), 0 turns that off for every rank (sockets only), r > 0 for rank r
 * only (a mixed world). */
static void run_world(int p, int cma) {
  int port = th_free_port();
  fflush(NULL); /* the ranks exit(): nothing buffered here may be written twice */
  pid_t pids[16];
  for (int r = 0; r < p; r++) {
    pids[r] = fork();
    T_ASSERT(pids[r] >= 0);
    if (pids[r] == 0) {
      th_set_rank_env(r, p, port);
      if (cma == 0 || cma == r) setenv("DISTML_CMA", "0", 1);
      alarm(240);       /* a hang fails the test instead of stalling CTest */
      exit(run_rank()); /* exit, not _exit: LeakSanitizer checks the rank */
    }
  }
  int failed = 0;
  for (int r = 0; r < p; r++) {
    int st;
    T_ASSERT(waitpid(pids[r], &st, 0) == pids[r]);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "world %d: rank %d %s %d\n", p, r,
              WIFEXITED(st) ? "exited with" : "killed by signal",
              WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
      failed = 1;
    }
  }
  if (failed) T_FAIL("world of %d ranks failed", p);
  printf("world of %d ranks%s: ok\n", p,
         cma == 0  ? " (sockets only)"
         : cma > 0 ? " (one rank without CMA)"
                   : "");
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (getenv("DISTML_RANK") || getenv("OMPI_COMM_WORLD_RANK") || getenv("PMI_RANK"))
    return run_rank();
  static const int worlds[] = {1, 2, 3, 4, 5, 8};
  if (getenv("DISTML_TIMEOUT_MS") == NULL) setenv("DISTML_TIMEOUT_MS", "60000", 1);
  for (size_t i = 0; i < ARRAY_LEN(worlds); i++) {
    if (argc > 1 && atoi(argv[1]) != worlds[i]) continue; /* one world size: test_coll_grid P */
    run_world(worlds[i], -1);
  }
  if (argc <= 1) {
    run_world(2, 0);
    run_world(3, 1);
  }
  printf("test_coll_grid: ok\n");
  return 0;
}
