/* Ping-pong between two forked ranks over the tcp backend on loopback. As a test (no argument)
 * it bounces a few messages of each size and checks every byte of the returned copy; with
 * "--bench" it also times round trips per size and prints latency and bandwidth (printed, never
 * asserted: tests do not assert wall-clock times). The alpha-beta fit of the point-to-point
 * cost model (time = alpha + bytes * beta) is printed at the end of a --bench run.
 * Usage: test_comm_pingpong [--bench] [--max BYTES] [--backend tcp|mpi (under mpirun)] */
#include "test_comm_harness.h"

typedef struct pp_arg {
  int bench;
  size_t max_bytes;
} pp_arg;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int pingpong(dml_comm *c, pp_arg *a) {
  int rank = dml_comm_rank(c);
  int other = 1 - rank;
  if (rank > 1) return 0;
  uint8_t *buf = malloc(a->max_bytes ? a->max_bytes : 1),
          *ref = malloc(a->max_bytes ? a->max_bytes : 1);
  R_ASSERT(buf && ref);
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  int npts = 0;
  size_t step = a->bench ? 4 : 64;
  for (size_t len = 1;; len = len * step < a->max_bytes ? len * step : a->max_bytes) {
    int iters = a->bench ? (len <= 65536 ? 2000 : len <= (4u << 20) ? 50 : 8) : 3;
    int warm = a->bench ? iters / 10 + 1 : 0;
    th_fill(ref, 0, 1, 1, len);
    double t0 = 0;
    for (int it = 0; it < warm + iters; it++) {
      if (it == warm) t0 = now_s();
      /* The copies that make the check possible are kept out of the timed iterations, except
       * the last (timing the network, not memcpy). */
      int checked = !a->bench || it == warm + iters - 1 || it == 0;
      if (rank == 0) {
        if (checked) memcpy(buf, ref, len);
        RK_OK(dml_comm_send(c, other, 1, buf, len));
        if (checked) memset(buf, 0, len);
        RK_OK(dml_comm_recv(c, other, 2, buf, len));
        if (checked) R_ASSERT(memcmp(buf, ref, len) == 0);
      } else {
        RK_OK(dml_comm_recv(c, other, 1, buf, len));
        RK_OK(dml_comm_send(c, other, 2, buf, len));
      }
    }
    double dt = (now_s() - t0) / iters / 2; /* one way */
    if (a->bench && rank == 0) {
      printf("%10zu bytes  %10.2f us one-way  %8.3f GB/s\n", len, dt * 1e6, (double)len / dt / 1e9);
      fflush(stdout);
      /* Least squares on relative error (weights 1/t^2), so that latency-bound small messages
       * and bandwidth-bound large ones both count. */
      double w = 1.0 / (dt * dt);
      sw += w, sx += w * (double)len, sy += w * dt, sxx += w * (double)len * (double)len,
          sxy += w * (double)len * dt, npts++;
    }
    if (len >= a->max_bytes) break;
  }
  if (a->bench && rank == 0 && npts > 1) {
    double beta = (sw * sxy - sx * sy) / (sw * sxx - sx * sx);
    double alpha = (sy - beta * sx) / sw;
    printf("alpha-beta fit: alpha = %.2f us, beta = %.4f ns/byte (%.2f GB/s)\n", alpha * 1e6,
           beta * 1e9, 1.0 / beta / 1e9);
  }
  free(buf);
  free(ref);
  return 0;
}

static int rank_main(int rank, int n, int port, void *arg) {
  dml_comm_opts o;
  th_opts(&o, rank, n, port, 60000);
  dml_comm *c;
  dml_err err = {0};
  if (dml_comm_init(&c, &o, &err)) {
    fprintf(stderr, "rank %d: init: %s\n", rank, err.msg);
    return 1;
  }
  int rc = pingpong(c, arg);
  dml_comm_free(c);
  return rc;
}

int main(int argc, char **argv) {
  pp_arg a = {.bench = 0, .max_bytes = (8u << 20) + 5};
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--bench") == 0) {
      a.bench = 1;
      a.max_bytes = 64u << 20;
    } else if (strcmp(argv[i], "--max") == 0 && i + 1 < argc) {
      a.max_bytes = (size_t)strtoull(argv[++i], NULL, 10);
    }
  }
  const char *be = getenv("DISTML_BACKEND");
  if (be && strcmp(be, "mpi") == 0) { /* one rank of an mpirun job */
    dml_comm *c;
    dml_err err = {0};
    if (dml_comm_init(&c, NULL, &err)) {
      fprintf(stderr, "init: %s\n", err.msg);
      return 1;
    }
    int rc = pingpong(c, &a);
    dml_comm_free(c);
    return rc;
  }
  th_clear_env();
  th_run("pingpong", 2, rank_main, &a, a.bench ? 600 : 60);
  printf("comm pingpong: ok\n");
  return 0;
}
