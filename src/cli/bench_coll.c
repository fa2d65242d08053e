/* The collective benchmarks of `distml bench`: warm-up, then timed iterations per size, in the
 * style of nccl-tests (time, algbw, busbw, wrong), with the ring alpha-beta prediction beside
 * the measurement when a ping-pong fit is asked for. One process is one rank; started outside a
 * launcher, it re-executes itself as N local ranks through the launcher (launch.c). */
#include "cli/bench_coll.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/launch.h"
#include "core/internal.h"
#include "distml/coll.h"
#include "distml/comm.h"
#include "distml/core.h"

typedef enum { B_ALLREDUCE, B_REDUCESCATTER, B_ALLGATHER, B_BROADCAST, B_PINGPONG } bench_kind;

static const char *const k_kinds[] = {"allreduce", "reducescatter", "allgather", "broadcast",
                                      "pingpong"};

typedef struct bench_cfg {
  bench_kind kind;
  int n;               /* -n: ranks (0: not given) */
  const char *backend; /* NULL: environment / tcp */
  uint64_t sizes[64];
  int nsizes;
  dml_allreduce_algo algo;
  dml_dtype dt;
  dml_redop op;
  dml_dtype compress; /* DML_F32: none; F16/BF16: dml_allreduce_f32_compressed */
  int warmup, iters;
  int json;
  int model; /* fit alpha/beta with a ping-pong first and print the ring model */
} bench_cfg;

static void bench_usage(FILE *f) {
  fprintf(
      f,
      "usage: distml bench allreduce|reducescatter|allgather|broadcast|pingpong [flags]\n"
      "       distml bench task ...   (task pool and farm: distml bench task --help)\n"
      "       distml bench ps ...     (parameter server: distml bench ps --help)\n"
      "\n"
      "  -n N              ranks to start on this machine (when not already under mpirun or\n"
      "                    distml launch); default 2\n"
      "  --backend B       tcp (default) or mpi (run under mpirun)\n"
      "  --sizes LIST      message sizes in bytes, comma-separated, K/M/G suffixes\n"
      "                    (default 8,1K,64K,1M,4M,16M,64M)\n"
      "  --algo A          all-reduce algorithm: auto (default), ring, rd\n"
      "  --dtype T         f32 (default), f64, i32, i64\n"
      "  --op OP           sum (default), avg, max, min\n"
      "  --compress W      all-reduce f32 values sent as f16 or bf16\n"
      "  --warmup W        untimed iterations per size (default 5)\n"
      "  --iters I         timed iterations per size (default 20)\n"
      "  --model           fit alpha/beta with a ping-pong first; print the ring prediction\n"
      "                    2(p-1)alpha + 2(p-1)/p n beta beside each measurement\n"
      "  --json            one JSON object per size (bytes, ranks, algo, time_us, algbw_GBps,\n"
      "                    busbw_GBps, wrong)\n"
      "\n"
      "busbw = algbw x 2(p-1)/p (allreduce), (p-1)/p (reducescatter, allgather), 1 (broadcast).\n"
      "Sizes are the whole buffer: per rank for allreduce and broadcast, the gathered (or\n"
      "scattered) total for allgather and reducescatter.\n");
}

static void parse_sizes(const char *v, bench_cfg *c) {
  dml_cli_check_list("bench", "--sizes", v);
  char buf[1024];
  snprintf(buf, sizeof(buf), "%s", v);
  c->nsizes = 0;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (c->nsizes == (int)DML__ARRAY_LEN(c->sizes))
      dml_cli_usage_error("bench", "--sizes: at most %d sizes", (int)DML__ARRAY_LEN(c->sizes));
    dml_err e = {0};
    uint64_t s;
    if (dml_parse_size(tok, (uint64_t)1 << 33, &s, &e) != 0)
      dml_cli_usage_error("bench", "--sizes: %s", e.msg);
    c->sizes[c->nsizes++] = s;
  }
  if (c->nsizes == 0) dml_cli_usage_error("bench", "--sizes: empty list");
}

static int in_launcher(void) {
  static const char *const vars[] = {"DISTML_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                     "SLURM_PROCID"};
  for (size_t i = 0; i < DML__ARRAY_LEN(vars); i++)
    if (getenv(vars[i])) return 1;
  return 0;
}

static double busbw_factor(bench_kind k, int p) {
  switch (k) {
    case B_ALLREDUCE: return 2.0 * (p - 1) / p;
    case B_REDUCESCATTER:
    case B_ALLGATHER: return (double)(p - 1) / p;
    default: return 1.0;
  }
}

/* Value rank r puts at element i: small integers, so sums are exact in every type. */
static double init_value(size_t i, int r) {
  return (double)(i % 16) + r;
}

static void put(void *b, dml_dtype dt, size_t i, double v) {
  switch (dt) {
    case DML_F32: ((float *)b)[i] = (float)v; break;
    case DML_F64: ((double *)b)[i] = v; break;
    case DML_I32: ((int32_t *)b)[i] = (int32_t)v; break;
    case DML_I64: ((int64_t *)b)[i] = (int64_t)v; break;
    default: break;
  }
}

static double get(const void *b, dml_dtype dt, size_t i) {
  switch (dt) {
    case DML_F32: return ((const float *)b)[i];
    case DML_F64: return ((const double *)b)[i];
    case DML_I32: return ((const int32_t *)b)[i];
    case DML_I64: return (double)((const int64_t *)b)[i];
    default: return 0;
  }
}

static double expect_reduce(size_t i, int p, dml_redop op, dml_dtype dt) {
  double acc = init_value(i, 0);
  for (int r = 1; r < p; r++) {
    double v = init_value(i, r);
    acc = op == DML_MAX ? fmax(acc, v) : op == DML_MIN ? fmin(acc, v) : acc + v;
  }
  if (op == DML_AVG) acc = (dt == DML_I32 || dt == DML_I64) ? (double)((int64_t)acc / p) : acc / p;
  return acc;
}

static int values_differ(double got, double want, dml_dtype dt) {
  double tol = dt == DML_F32 ? 1e-5 * fmax(1.0, fabs(want)) : 1e-12 * fmax(1.0, fabs(want));
  return !(fabs(got - want) <= tol);
}

/* One run of the collective on freshly initialised buffers; returns the number of wrong
 * elements on this rank, or a negative DML_E... code. */
static long check_once(dml_comm *c, const bench_cfg *cfg, size_t count, void *a, void *b) {
  int p = dml_comm_size(c), r = dml_comm_rank(c);
  dml_dtype dt = cfg->dt;
  long wrong = 0;
  int rc = 0;
  switch (cfg->kind) {
    case B_ALLREDUCE:
      for (size_t i = 0; i < count; i++) put(a, dt, i, init_value(i, r));
      rc = cfg->compress != DML_F32
               ? dml_allreduce_f32_compressed(c, a, count, cfg->compress, cfg->op)
               : dml_allreduce_with(c, a, count, dt, cfg->op, cfg->algo);
      for (size_t i = 0; rc == 0 && i < count; i++)
        wrong += values_differ(get(a, dt, i), expect_reduce(i, p, cfg->op, dt), dt);
      break;
    case B_REDUCESCATTER:
      for (size_t i = 0; i < count * (size_t)p; i++) put(a, dt, i, init_value(i, r));
      rc = dml_reduce_scatter(c, a, b, count, dt, cfg->op);
      for (size_t i = 0; rc == 0 && i < count; i++)
        wrong +=
            values_differ(get(b, dt, i), expect_reduce((size_t)r * count + i, p, cfg->op, dt), dt);
      break;
    case B_ALLGATHER:
      for (size_t i = 0; i < count; i++) put(a, dt, i, init_value(i, r));
      rc = dml_allgather(c, a, b, count, dt);
      for (int k = 0; rc == 0 && k < p; k++)
        for (size_t i = 0; i < count; i++)
          wrong += values_differ(get(b, dt, (size_t)k * count + i), init_value(i, k), dt);
      break;
    case B_BROADCAST:
      for (size_t i = 0; i < count; i++) put(a, dt, i, r == 0 ? init_value(i, 7) : -1.0);
      rc = dml_broadcast(c, a, count, dt, 0);
      for (size_t i = 0; rc == 0 && i < count; i++)
        wrong += values_differ(get(a, dt, i), init_value(i, 7), dt);
      break;
    default: break;
  }
  return rc ? rc : wrong;
}

static int run_once(dml_comm *c, const bench_cfg *cfg, size_t count, void *a, void *b) {
  switch (cfg->kind) {
    case B_ALLREDUCE:
      return cfg->compress != DML_F32
                 ? dml_allreduce_f32_compressed(c, a, count, cfg->compress, cfg->op)
                 : dml_allreduce_with(c, a, count, cfg->dt, cfg->op, cfg->algo);
    case B_REDUCESCATTER: return dml_reduce_scatter(c, a, b, count, cfg->dt, cfg->op);
    case B_ALLGATHER: return dml_allgather(c, a, b, count, cfg->dt);
    case B_BROADCAST: return dml_broadcast(c, a, count, cfg->dt, 0);
    default: return 0;
  }
}

/* Ping-pong between ranks 0 and 1: half round-trip time (s) for bytes. */
static int pingpong_time(dml_comm *c, size_t bytes, void *buf, int iters, double *t_s) {
  int r = dml_comm_rank(c);
  int rc = 0;
  double t0 = 0;
  for (int it = -2; it < iters && rc == 0; it++) {
    if (it == 0) t0 = dml_now_s();
    if (r == 0) {
      rc = dml_comm_send(c, 1, 11, buf, bytes);
      if (rc == 0) rc = dml_comm_recv(c, 1, 12, buf, bytes);
    } else if (r == 1) {
      rc = dml_comm_recv(c, 0, 11, buf, bytes);
      if (rc == 0) rc = dml_comm_send(c, 0, 12, buf, bytes);
    }
  }
  *t_s = (dml_now_s() - t0) / (2.0 * iters);
  return rc;
}

/* Fits t(n) = alpha + n beta: alpha from the 8-byte ping-pong, beta as the least-squares slope
 * of the sizes from 64 KiB up. Prints the table on rank 0; every rank gets alpha and beta. */
static int fit_alpha_beta(dml_comm *c, int print, double *alpha, double *beta) {
  static const size_t sz[] = {8, 1024, 65536, 262144, 1048576, 4194304};
  double t[DML__ARRAY_LEN(sz)];
  char *buf = dml__calloc(1, sz[DML__ARRAY_LEN(sz) - 1]);
  if (buf == NULL) return DML_ENOMEM;
  int rc = 0;
  double ab[2] = {0, 0};
  if (dml_comm_size(c) >= 2) {
    for (size_t k = 0; k < DML__ARRAY_LEN(sz) && rc == 0; k++) {
      int iters = sz[k] <= 65536 ? 200 : 20;
      rc = pingpong_time(c, sz[k], buf, iters, &t[k]);
    }
    if (rc == 0 && dml_comm_rank(c) == 0) {
      ab[0] = t[0];
      double sx = 0, sy = 0, sxx = 0, sxy = 0;
      int m = 0;
      for (size_t k = 2; k < DML__ARRAY_LEN(sz); k++, m++) {
        double x = (double)sz[k], y = t[k] - t[0];
        sx += x, sy += y, sxx += x * x, sxy += x * y;
      }
      ab[1] = (m * sxy - sx * sy) / (m * sxx - sx * sx);
      if (print) {
        printf("# ping-pong rank 0 <-> rank 1 (half round trip):\n");
        for (size_t k = 0; k < DML__ARRAY_LEN(sz); k++)
          printf("#   %10zu B  %10.2f us  %8.3f GB/s\n", sz[k], t[k] * 1e6, sz[k] / t[k] / 1e9);
        printf("# fit: alpha = %.2f us, beta = %.4f ns/B (%.3f GB/s)\n", ab[0] * 1e6, ab[1] * 1e9,
               ab[1] > 0 ? 1e-9 / ab[1] : 0.0);
      }
    }
  }
  dml__free(buf);
  if (rc == 0) rc = dml_broadcast(c, ab, 2, DML_F64, 0);
  *alpha = ab[0];
  *beta = ab[1];
  return rc;
}

static const char *algo_used(const bench_cfg *cfg, size_t bytes, int p) {
  switch (cfg->kind) {
    case B_ALLREDUCE: {
      dml_allreduce_algo a = cfg->algo;
      if (cfg->compress != DML_F32) bytes /= 2; /* the size rule looks at the wire bytes */
      if (a == DML_ALGO_AUTO) {
        const char *e = getenv("DISTML_ALLREDUCE_ALGO");
        if (e && dml_allreduce_algo_parse(e, &a) != 0) a = DML_ALGO_AUTO;
      }
      if (a == DML_ALGO_AUTO)
        a = bytes <= dml_allreduce_threshold_bytes(p) ? DML_ALGO_RD : DML_ALGO_RING;
      return dml_allreduce_algo_name(a);
    }
    case B_BROADCAST: return "tree";
    default: return "ring";
  }
}

static int run_rank(const bench_cfg *cfg) {
  dml_cli_pin_local_rank();
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  if (cfg->backend) o.backend = cfg->backend;
  dml_comm *c = NULL;
  dml_err e = {0};
  int rc = dml_comm_init(&c, &o, &e);
  if (rc) {
    fprintf(stderr, "distml bench: error: cannot join the job: %s\n", dml_err_msg(&e));
    return 1;
  }
  int p = dml_comm_size(c), r = dml_comm_rank(c);
  dml_log_set_rank(r);
  if (cfg->n > 0 && cfg->n != p && r == 0)
    fprintf(stderr, "distml bench: warning: -n %d but the job has %d ranks; using %d\n", cfg->n, p,
            p);
  int status = 0;
  double alpha = 0, beta = 0;
  if (cfg->model || cfg->kind == B_PINGPONG) {
    if (p < 2) {
      if (r == 0) fprintf(stderr, "distml bench: error: the ping-pong needs 2 ranks or more\n");
      status = 1;
      goto out;
    }
    rc = fit_alpha_beta(c, r == 0, &alpha, &beta);
    if (rc) goto fail;
    if (cfg->kind == B_PINGPONG) goto out;
  }
  size_t esz = dml_dtype_size(cfg->dt);
  dml_jsonl jl;
  dml_jsonl_init_stream(&jl, stdout);
  if (r == 0 && !cfg->json) {
    printf(
        "# distml bench %s: %d ranks, backend %s, dtype %s, op %s, algo %s%s%s, warmup %d, iters "
        "%d\n",
        k_kinds[cfg->kind], p, dml_comm_backend(c), dml_dtype_name(cfg->dt),
        dml_redop_name(cfg->op), dml_allreduce_algo_name(cfg->algo),
        cfg->compress != DML_F32 ? ", wire " : "",
        cfg->compress != DML_F32 ? dml_dtype_name(cfg->compress) : "", cfg->warmup, cfg->iters);
    printf("#%11s %12s %5s %5s %5s %11s %12s %12s %6s%s\n", "size(B)", "count", "type", "redop",
           "algo", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "wrong",
           cfg->model ? "  ring_model(us)" : "");
  }
  for (int k = 0; k < cfg->nsizes; k++) {
    uint64_t bytes = cfg->sizes[k];
    size_t count = (size_t)(bytes / esz); /* elements per rank, or in total (allgather/rs) */
    if (cfg->kind == B_ALLGATHER || cfg->kind == B_REDUCESCATTER) count /= (size_t)p;
    size_t total =
        (cfg->kind == B_ALLGATHER || cfg->kind == B_REDUCESCATTER) ? count * (size_t)p : count;
    size_t real_bytes = total * esz;
    void *a = dml__malloc(total * esz + 8), *b = dml__malloc(total * esz + 8);
    if (a == NULL || b == NULL) {
      dml__free(a);
      dml__free(b);
      fprintf(stderr, "distml bench: error: out of memory for %zu bytes\n", real_bytes);
      status = 1;
      goto out;
    }
    long wrong = check_once(c, cfg, count, a, b);
    if (wrong < 0) {
      rc = (int)wrong;
      dml__free(a);
      dml__free(b);
      goto fail;
    }
    for (int it = 0; it < cfg->warmup && rc == 0; it++) rc = run_once(c, cfg, count, a, b);
    if (rc == 0) rc = dml_barrier(c);
    double t0 = dml_now_s();
    for (int it = 0; it < cfg->iters && rc == 0; it++) rc = run_once(c, cfg, count, a, b);
    double t_s = (dml_now_s() - t0) / cfg->iters;
    dml__free(a);
    dml__free(b);
    if (rc) goto fail;
    /* Report the slowest rank's time and the total of wrong elements. */
    double agg[2] = {t_s, (double)wrong};
    double tmax = t_s;
    rc = dml_allreduce(c, &tmax, 1, DML_F64, DML_MAX);
    if (rc == 0) rc = dml_allreduce(c, &agg[1], 1, DML_F64, DML_SUM);
    if (rc) goto fail;
    if (r == 0) {
      double algbw = real_bytes / tmax / 1e9;
      double busbw = algbw * busbw_factor(cfg->kind, p);
      double model = 2.0 * (p - 1) * alpha + 2.0 * (p - 1) / p * (double)real_bytes * beta;
      const char *an = algo_used(cfg, real_bytes, p);
      if (cfg->json) {
        dml_jsonl_begin(&jl);
        dml_jsonl_add_int(&jl, "bytes", (int64_t)real_bytes);
        dml_jsonl_add_int(&jl, "ranks", p);
        dml_jsonl_add_str(&jl, "algo", an);
        dml_jsonl_add_double(&jl, "time_us", tmax * 1e6);
        dml_jsonl_add_double(&jl, "algbw_GBps", algbw);
        dml_jsonl_add_double(&jl, "busbw_GBps", busbw);
        dml_jsonl_add_int(&jl, "wrong", (int64_t)agg[1]);
        if (cfg->model) dml_jsonl_add_double(&jl, "model_ring_us", model * 1e6);
        dml_jsonl_end(&jl);
      } else {
        printf("%12zu %12zu %5s %5s %5s %11.2f %12.3f %12.3f %6ld", real_bytes, count,
               dml_dtype_name(cfg->compress != DML_F32 ? cfg->compress : cfg->dt),
               dml_redop_name(cfg->op), an, tmax * 1e6, algbw, busbw, (long)agg[1]);
        if (cfg->model) printf("  %14.2f", model * 1e6);
        printf("\n");
        fflush(stdout);
      }
      if (agg[1] > 0) status = 1;
    }
  }
  dml_jsonl_close(&jl);
  goto out;
fail:
  fprintf(stderr, "distml bench: error: rank %d: %s: %s\n", r, dml_strerror(rc),
          *dml_coll_errmsg(c) ? dml_coll_errmsg(c) : dml_comm_errmsg(c));
  status = 1;
out:
  dml_coll_detach(c);
  dml_comm_free(c);
  return status;
}

int dml_cli_bench_main(int argc, char **argv) {
  int i = 0;
  if (argc > 0 && strcmp(argv[0], "bench") == 0) i = 1;
  if (i >= argc || strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
    bench_usage(i >= argc ? stderr : stdout);
    return i >= argc ? 2 : 0;
  }
  bench_cfg cfg;
  memset(&cfg, 0, sizeof(cfg));
  int kind = -1;
  for (size_t k = 0; k < DML__ARRAY_LEN(k_kinds); k++)
    if (strcmp(argv[i], k_kinds[k]) == 0) kind = (int)k;
  if (kind < 0)
    dml_cli_usage_error("bench",
                        "unknown benchmark '%s' (allreduce, reducescatter, allgather, "
                        "broadcast, pingpong)",
                        argv[i]);
  cfg.kind = (bench_kind)kind;
  cfg.algo = DML_ALGO_AUTO;
  cfg.dt = DML_F32;
  cfg.op = DML_SUM;
  cfg.compress = DML_F32;
  cfg.warmup = 5;
  cfg.iters = 20;
  parse_sizes("8,1K,64K,1M,4M,16M,64M", &cfg);
  int first_flag = i + 1;
  for (int a = first_flag; a < argc; a++) {
    const char *f = argv[a];
    if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) {
      bench_usage(stdout);
      return 0;
    }
    if (strcmp(f, "--json") == 0) {
      cfg.json = 1;
      continue;
    }
    if (strcmp(f, "--model") == 0) {
      cfg.model = 1;
      continue;
    }
    static const char *const valued[] = {"-n",   "--backend",  "--sizes",  "--algo", "--dtype",
                                         "--op", "--compress", "--warmup", "--iters"};
    int known = 0;
    for (size_t k = 0; k < DML__ARRAY_LEN(valued); k++) known |= strcmp(f, valued[k]) == 0;
    if (!known) dml_cli_usage_error("bench", "unknown flag '%s'", f);
    if (a + 1 >= argc) dml_cli_usage_error("bench", "%s needs a value", f);
    const char *v = argv[++a];
    if (strcmp(f, "-n") == 0) {
      cfg.n = (int)dml_cli_int("bench", "-n", v, 1, 1024);
    } else if (strcmp(f, "--backend") == 0) {
      if (strcmp(v, "tcp") != 0 && strcmp(v, "mpi") != 0)
        dml_cli_usage_error("bench", "--backend: '%s' is not tcp or mpi", v);
      cfg.backend = v;
    } else if (strcmp(f, "--sizes") == 0) {
      parse_sizes(v, &cfg);
    } else if (strcmp(f, "--algo") == 0) {
      if (dml_allreduce_algo_parse(v, &cfg.algo) != 0)
        dml_cli_usage_error("bench", "--algo: '%s' is not auto, ring or rd", v);
    } else if (strcmp(f, "--dtype") == 0) {
      if (dml_dtype_parse(v, &cfg.dt) != 0 || cfg.dt == DML_F16 || cfg.dt == DML_BF16)
        dml_cli_usage_error("bench", "--dtype: '%s' is not f32, f64, i32 or i64", v);
    } else if (strcmp(f, "--op") == 0) {
      if (dml_redop_parse(v, &cfg.op) != 0)
        dml_cli_usage_error("bench", "--op: '%s' is not sum, avg, max or min", v);
    } else if (strcmp(f, "--compress") == 0) {
      if (dml_dtype_parse(v, &cfg.compress) != 0 ||
          (cfg.compress != DML_F16 && cfg.compress != DML_BF16))
        dml_cli_usage_error("bench", "--compress: '%s' is not f16 or bf16", v);
    } else if (strcmp(f, "--warmup") == 0) {
      cfg.warmup = (int)dml_cli_int("bench", "--warmup", v, 0, 1000000);
    } else {
      cfg.iters = (int)dml_cli_int("bench", "--iters", v, 1, 1000000);
    }
  }
  if (cfg.compress != DML_F32 && (cfg.kind != B_ALLREDUCE || cfg.dt != DML_F32))
    dml_cli_usage_error("bench", "--compress works with allreduce of f32 only");
  if (in_launcher()) return run_rank(&cfg);
  int n = cfg.n > 0 ? cfg.n : 2;
  if (cfg.kind == B_PINGPONG && n < 2) dml_cli_usage_error("bench", "pingpong needs -n 2 or more");
  if (cfg.backend && strcmp(cfg.backend, "mpi") == 0)
    dml_cli_usage_error("bench",
                        "--backend mpi: start it under mpirun (mpirun -n %d distml bench ...)", n);
  if (n == 1 && cfg.kind != B_PINGPONG) return run_rank(&cfg);
  /* Start n ranks of ourselves: same arguments, the launcher sets the environment. The ranks use
   * no BLAS: keep OpenBLAS from starting threads that spin on the cores the ranks need. */
  setenv("OPENBLAS_NUM_THREADS", "1", 0);
  char **av = dml__calloc((size_t)(argc - i) + 3, sizeof(char *));
  if (av == NULL) dml_cli_fail("bench", "out of memory");
  int m = 0;
  av[m++] = "distml";
  av[m++] = "bench";
  for (int a = i; a < argc; a++) av[m++] = argv[a];
  av[m] = NULL;
  dml_launch_opts lo;
  dml_launch_opts_default(&lo);
  lo.name = "bench";
  lo.exec_path = "/proc/self/exe";
  lo.prefix_output = 0; /* rank 0 prints the table; errors carry their rank already */
  int st = dml_launch_run(n, av, &lo);
  dml__free(av);
  return st;
}
