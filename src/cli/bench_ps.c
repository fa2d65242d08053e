/* `distml bench ps [--max-bytes B] [--json]`: forks local ranks for each layout (1 worker x 1
 * server, 2x1, 2x2, colocated 2) and times dense push, pull and pushpull (values only, of one
 * registered tensor; sum-only server, BSP) of M bytes of values per worker per iteration for
 * M = 4 KB .. B, each beside the bytes each server received per iteration, the cost model's
 * prediction and distml's all-reduce of the same M bytes over the same processes (as it picks
 * its algorithm, and forced to the ring, whose steps the colocated PS's push and pull mirror),
 * measured side by side: rounds of all-reduce blocks then a PS block, medians reported. Time per
 * iteration: the slowest worker's. Colocated, each worker serves its own shard (dml_ps_serve).
 * Measurement only: nothing is tuned here. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/bench_ps.h"
#include "cli/cli.h"
#include "cli/launch.h"
#include "core/internal.h"
#include "distml/coll.h"
#include "distml/ps.h"
#include "ps/ps_internal.h"

typedef struct layout {
  const char *name;
  int workers, servers, colocated;
  int summed; /* summed pushpulls (dml_ps_config.summed_pushpull): pushpull only */
} layout;

static int g_iters;    /* --iters: timed iterations per figure (0: by size) */
static int g_handlers; /* --handlers: request-handling threads per server process (0: 1) */
static uint64_t g_mirror_bytes = 32u << 10; /* --mirror-bytes */

static int iters_for(size_t bytes) {
  if (g_iters > 0) return g_iters;
  size_t it = (size_t)(64u << 20) / bytes;
  return it < 20 ? 20 : it > 200 ? 200 : (int)it;
}

enum { OP_PUSH, OP_PULL, OP_PUSHPULL, NOPS };
static const char *const k_op_name[NOPS] = {"push", "pull", "pushpull"};

/* The cost model, bytes per iteration. in: what one server receives (values of the pushes: W*M/S
 * with S dedicated servers -- one server takes W*M -- nothing but headers for a pull). wire: what
 * the busiest process moves over the network: a dedicated server takes W*M/S in (push) and sends
 * W*M/S out (pull); colocated, a process sends and receives the (W-1)/W of M that other shards
 * hold, 2(W-1)M/W for a pushpull -- the same as a ring all-reduce. A mirrored tensor: every
 * replica takes every worker's push (W*M in, (W-1)M each way on the wire), a pull nothing. */
static void cost_model(const layout *L, int op, double M, int mirrored, double *in, double *wire) {
  double W = L->workers, S = L->colocated ? L->workers : L->servers;
  double push = op != OP_PULL, pull = op != OP_PUSH;
  *in = push * W * M / S;
  if (mirrored) {
    *in = push * W * M;
    *wire = push * (W - 1) * M;
  } else if (L->colocated)
    *wire = (push + pull) * (W - 1) * M / W;
  else
    *wire = (push + pull) * W * M / S > M * (push + pull) ? (push + pull) * W * M / S
                                                          : M * (push + pull);
}

static void report(int json, const layout *L, int op, size_t bytes, int mirrored, int iters,
                   double t_ps, double per_server_bytes, double t_ar, double t_ring) {
  double in, wire;
  cost_model(L, op, (double)bytes, mirrored, &in, &wire);
  if (json) {
    dml_jsonl j;
    dml_jsonl_init_stream(&j, stdout);
    dml_jsonl_begin(&j);
    dml_jsonl_add_str(&j, "bench", "ps");
    dml_jsonl_add_str(&j, "layout", L->name);
    dml_jsonl_add_str(&j, "op", k_op_name[op]);
    dml_jsonl_add_int(&j, "workers", L->workers);
    dml_jsonl_add_int(&j, "servers", L->colocated ? L->workers : L->servers);
    dml_jsonl_add_int(&j, "colocated", L->colocated);
    dml_jsonl_add_int(&j, "mirrored", mirrored);
    dml_jsonl_add_int(&j, "bytes", (int64_t)bytes);
    dml_jsonl_add_int(&j, "iters", iters);
    dml_jsonl_add_double(&j, "ms", t_ps * 1e3);
    dml_jsonl_add_double(&j, "server_frame_bytes_per_iter", per_server_bytes);
    dml_jsonl_add_double(&j, "model_server_value_bytes_per_iter", in);
    dml_jsonl_add_double(&j, "model_wire_bytes_per_iter", wire);
    dml_jsonl_add_double(&j, "allreduce_ms", t_ar * 1e3);
    dml_jsonl_add_double(&j, "ratio_to_allreduce", t_ar > 0 ? t_ps / t_ar : 0.0);
    dml_jsonl_add_double(&j, "ring_allreduce_ms", t_ring * 1e3);
    dml_jsonl_add_double(&j, "ratio_to_ring", t_ring > 0 ? t_ps / t_ring : 0.0);
    dml_jsonl_end(&j);
    dml_jsonl_close(&j);
  } else {
    printf("%-10s %-8s %9zu %5d %10.3f %12.0f %12.0f %12.0f %10.3f %6.2f %10.3f %6.2f %8d\n",
           L->name, k_op_name[op], bytes, iters, t_ps * 1e3, per_server_bytes, in, wire, t_ar * 1e3,
           t_ar > 0 ? t_ps / t_ar : 0.0, t_ring * 1e3, t_ring > 0 ? t_ps / t_ring : 0.0, mirrored);
  }
  fflush(stdout);
}

#define MAX_ROUNDS 15
static int g_rounds = 3; /* --rounds */

static double median(double *x, int n) {
  for (int i = 1; i < n; i++) /* insertion sort: a handful of rounds */
    for (int j = i; j > 0 && x[j] < x[j - 1]; j--) {
      double t = x[j];
      x[j] = x[j - 1];
      x[j - 1] = t;
    }
  return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

/* distml's all-reduce of the same bytes over the same processes (algo: AUTO as dml_allreduce picks,
 * or RING): seconds per iteration. */
static int allreduce_block(dml_comm *c, float *v, size_t K, dml_allreduce_algo algo, int iters,
                           double *t, dml_err *e) {
  const int warm = 2;
  double t0 = 0;
  int rc = 0;
  for (int it = 0; rc == 0 && it < warm + iters; it++) {
    if (it == warm) t0 = dml_now_s();
    rc = dml_allreduce_with(c, v, K, DML_F32, DML_SUM, algo);
  }
  *t = (dml_now_s() - t0) / iters;
  if (rc) snprintf(e->msg, sizeof e->msg, "allreduce: %s", dml_comm_errmsg(c));
  return rc;
}

/* One PS block: a fresh server (and shard) and client, 2 warm-up and iters timed iterations of
 * op; *t the slowest worker's seconds per iteration; *sbytes the request bytes all servers
 * received per iteration (on every rank). */
static int ps_block(const layout *L, dml_comm *c, const dml_ps_config *cfg, int op, const float *g,
                    float *v, size_t K, int iters, double *t, double *sbytes, dml_err *e) {
  const int warm = 2;
  int n = dml_comm_size(c), rank = dml_comm_rank(c), rc = 0;
  dml_ps_server *srv = NULL;
  double t_ps = 0;
  if (dml_ps_is_server(cfg, rank)) {
    rc = dml_ps_server_create(&srv, c, cfg, e);
    if (rc == 0 && !L->colocated) rc = dml_ps_server_run(srv, e);
  }
  if (rc == 0 && dml_ps_is_worker(cfg, rank, n)) {
    dml_ps *ps = NULL;
    rc = dml_ps_create(&ps, c, cfg, e);
    /* colocated: the worker serves its own shard (no server thread) */
    if (rc == 0 && L->colocated) rc = dml_ps_serve(ps, srv, e);
    double t0 = 0;
    for (int it = 0; rc == 0 && it < warm + iters; it++) {
      if (it == warm) t0 = dml_now_s();
      uint64_t ts;
      rc = op == OP_PUSH   ? dml_ps_push_dense(ps, 0, g, K, &ts)
           : op == OP_PULL ? dml_ps_pull_dense(ps, 0, v, K, &ts)
                           : dml_ps_pushpull_dense(ps, 0, g, v, K, &ts);
      if (rc == 0) rc = dml_ps_wait(ps, ts);
      if (rc == 0) rc = dml_ps_clock(ps);
      if (rc) snprintf(e->msg, sizeof e->msg, "%s", dml_ps_errmsg(ps));
    }
    t_ps = (dml_now_s() - t0) / iters;
    if (rc == 0 && (rc = dml_ps_finish(ps)) != 0)
      snprintf(e->msg, sizeof e->msg, "%s", dml_ps_errmsg(ps));
    dml_ps_free(ps);
  }
  /* every rank's figures reduced (the collectives, on the same processes): the request bytes the
   * servers received per iteration, summed, and the slowest worker's time per iteration */
  double sb = 0;
  if (rc == 0 && srv) {
    dml_ps_server_stats st;
    dml_ps_server_stats_get(srv, &st);
    sb = (double)st.bytes_in / (warm + iters);
  }
  dml_ps_server_free(srv);
  if (rc == 0 && ((rc = dml_allreduce(c, &sb, 1, DML_F64, DML_SUM)) != 0 ||
                  (rc = dml_allreduce(c, &t_ps, 1, DML_F64, DML_MAX)) != 0))
    snprintf(e->msg, sizeof e->msg, "gathering the figures: %s", dml_comm_errmsg(c));
  *t = t_ps;
  *sbytes = sb;
  return rc;
}

/* One rank of one layout: for each size and op, rounds of all-reduce and PS blocks. */
static int bench_rank(const layout *L, int rank, int port, size_t min_bytes, size_t max_bytes,
                      int json) {
  int n = L->colocated ? L->workers : L->workers + L->servers;
  dml_comm_opts co;
  dml_comm_opts_default(&co);
  co.backend = "tcp";
  co.rank = rank;
  co.world_size = n;
  co.master_addr = "127.0.0.1";
  co.master_port = port;
  co.timeout_ms = 60000;
  dml_comm *c = NULL;
  dml_err e = {0};
  int rc = dml_comm_init(&c, &co, &e);
  if (rc) {
    fprintf(stderr, "distml bench ps: rank %d: %s\n", rank, e.msg);
    return 1;
  }
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.num_servers = L->servers;
  cfg.colocated = L->colocated;
  cfg.summed_pushpull = L->summed;
  cfg.sum_only = 1;
  cfg.staleness = 0;
  cfg.handler_threads = g_handlers;
  cfg.mirror_bytes = g_mirror_bytes;
  cfg.max_in_flight = 1; /* one request at a time here (and room for mirroring large tensors) */
  int S = dml_ps_num_servers(&cfg, n), first = L->colocated ? 0 : L->servers;
  for (size_t bytes = min_bytes; bytes <= max_bytes && rc == 0; bytes *= 4) {
    size_t K = bytes / 4;
    int iters = iters_for(bytes);
    /* the M bytes are one registered tensor (keys 0..K-1), spread over the servers */
    uint64_t tensor = K;
    cfg.dense_sizes = &tensor;
    cfg.num_dense = 1;
    int mirrored = dml__ps_mirror_keys(&cfg, n) >= K; /* held whole by every shard (tcp) */
    float *g = dml__malloc(K * sizeof(float)), *v = dml__malloc(K * sizeof(float));
    if (!g || !v) rc = DML_ENOMEM;
    for (size_t k = 0; rc == 0 && k < K; k++) g[k] = 1.0f;
    for (int op = L->summed ? OP_PUSHPULL : 0; op < NOPS && rc == 0; op++) {
      /* side by side: g_rounds rounds of (all-reduce blocks, PS block); medians are reported */
      double t_ar[MAX_ROUNDS], t_ring[MAX_ROUNDS], t_ps[MAX_ROUNDS], sbytes = 0;
      for (int round = 0; round < g_rounds && rc == 0; round++) {
        rc = allreduce_block(c, v, K, DML_ALGO_AUTO, iters, &t_ar[round], &e);
        if (rc == 0) rc = allreduce_block(c, v, K, DML_ALGO_RING, iters, &t_ring[round], &e);
        if (rc == 0) rc = ps_block(L, c, &cfg, op, g, v, K, iters, &t_ps[round], &sbytes, &e);
      }
      if (rc == 0 && rank == first)
        report(json, L, op, bytes, mirrored, iters, median(t_ps, g_rounds), sbytes / S,
               median(t_ar, g_rounds), median(t_ring, g_rounds));
    }
    dml__free(g);
    dml__free(v);
  }
  if (rc)
    fprintf(stderr, "distml bench ps: rank %d: %s\n", rank, e.msg[0] ? e.msg : dml_strerror(rc));
  if (rc == 0) dml_coll_detach(c); /* a clean end, not a failure, for the other ranks */
  dml_comm_free(c);
  return rc ? 1 : 0;
}

static int run_layout(const layout *L, size_t min_bytes, size_t max_bytes, int json) {
  int n = L->colocated ? L->workers : L->workers + L->servers;
  int port = dml_launch_free_port();
  if (port < 0) return 1;
  fflush(stdout);
  fflush(stderr);
  pid_t pid[8];
  for (int r = 0; r < n; r++) {
    pid[r] = fork();
    if (pid[r] < 0) return 1;
    if (pid[r] == 0) {
      /* what the launcher tells and does to its ranks: how many share this machine (the
       * polling policy), and each on a core of its own when there are enough */
      char lws[16], lr[16];
      snprintf(lws, sizeof lws, "%d", n);
      snprintf(lr, sizeof lr, "%d", r);
      setenv("LOCAL_WORLD_SIZE", lws, 1);
      setenv("LOCAL_RANK", lr, 1);
      dml_cli_pin_local_rank();
      _exit(bench_rank(L, r, port, min_bytes, max_bytes, json));
    }
  }
  int bad = 0;
  for (int r = 0; r < n; r++) {
    int st;
    waitpid(pid[r], &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad = 1;
  }
  return bad;
}

static void usage(FILE *to) {
  fprintf(to,
          "usage: distml bench ps [--min-bytes B] [--max-bytes B] [--layouts L,L] [--iters N] "
          "[--rounds R] [--handlers K] [--mirror-bytes B] [--json]\n"
          "  layouts: 1x1, 2x1, 2x2, colocated2, summed2 (default: all); sizes B, 4B, 16B ...\n"
          "  summed2: colocated2 with summed pushpulls (a pushpull answered once both workers' "
          "of its clock\n"
          "  are in, with both added: dml_ps_config.summed_pushpull), pushpull only\n"
          "  dense push, pull and pushpull of M value bytes per worker per iteration (M = 4K, "
          "16K, ... B; default 4K to 4M)\n"
          "  columns: layout (WxS), op, M, iterations, ms per iteration, request bytes in per "
          "server per iteration (frames, bodies, values copied in directly),\n"
          "  the cost model's value bytes in per server (W*M/S; pull: 0) and wire bytes of the "
          "busiest process\n"
          "  (dedicated: W*M/S per direction; colocated: 2(W-1)M/W for pushpull), distml's "
          "all-reduce of M bytes\n"
          "  (ms, as it picks its algorithm: one exchange of M below 256K for 2 ranks) and "
          "ps/allreduce, and the\n"
          "  same forced to the ring (ms, ps/ring: reduce-scatter then all-gather, the two "
          "trips of a pushpull)\n"
          "  each figure: the median of R rounds (default 3) of the all-reduce blocks followed "
          "by a PS block\n"
          "  --mirror-bytes B: colocated, a tensor of M bytes with M*(W-1) <= B is held whole by "
          "every shard\n"
          "  (mirrored: a push is one exchange; default 32K, 0: every tensor sharded); last "
          "column: 1 if mirrored\n"
          "  (its cost model: every replica takes W*M in, (W-1)M each way on the wire)\n");
}

/* A usage error naming the flag: returns the exit status 2. */
static int bad_flag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad_flag(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "distml bench ps: error: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see 'distml bench ps --help')\n");
  va_end(ap);
  return 2;
}

int dml_cli_bench_ps_main(int argc, char **argv) {
  int json = 0;
  uint64_t max_bytes = 4u << 20, min_bytes = 4096;
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    dml_err e = {0};
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(a, "--json") == 0) {
      json = 1;
      continue;
    }
    int known = strcmp(a, "--layouts") == 0 || strcmp(a, "--handlers") == 0 ||
                strcmp(a, "--mirror-bytes") == 0 || strcmp(a, "--iters") == 0 ||
                strcmp(a, "--rounds") == 0 || strcmp(a, "--min-bytes") == 0 ||
                strcmp(a, "--max-bytes") == 0;
    if (!known) return bad_flag("unknown flag '%s'", a);
    if (i + 1 >= argc) return bad_flag("%s needs a value", a);
    const char *v = argv[++i];
    int64_t n;
    if (strcmp(a, "--layouts") == 0) {
      only = v;
    } else if (strcmp(a, "--handlers") == 0) {
      if (dml_parse_i64(v, 1, 64, &n, &e) != 0) return bad_flag("--handlers %s: want 1..64", v);
      g_handlers = (int)n;
    } else if (strcmp(a, "--mirror-bytes") == 0) {
      uint64_t b;
      if (dml_parse_size(v, (uint64_t)1 << 30, &b, &e) != 0)
        return bad_flag("--mirror-bytes %s: want a size from 0 to 1G", v);
      g_mirror_bytes = b;
    } else if (strcmp(a, "--iters") == 0) {
      if (dml_parse_i64(v, 1, 100000, &n, &e) != 0)
        return bad_flag("--iters %s: want 1..100000", v);
      g_iters = (int)n;
    } else if (strcmp(a, "--rounds") == 0) {
      if (dml_parse_i64(v, 1, MAX_ROUNDS, &n, &e) != 0)
        return bad_flag("--rounds %s: want 1..%d", v, MAX_ROUNDS);
      g_rounds = (int)n;
    } else {
      uint64_t *dst = strcmp(a, "--min-bytes") == 0 ? &min_bytes : &max_bytes;
      if (dml_parse_size(v, (uint64_t)1 << 30, dst, &e) != 0 || *dst < 4096)
        return bad_flag("%s %s: want a size from 4K to 1G", a, v);
    }
  }
  const layout layouts[] = {{"1x1", 1, 1, 0, 0},
                            {"2x1", 2, 1, 0, 0},
                            {"2x2", 2, 2, 0, 0},
                            {"colocated2", 2, 2, 1, 0},
                            {"summed2", 2, 2, 1, 1}};
  const size_t nlayouts = sizeof layouts / sizeof layouts[0];
  if (min_bytes > max_bytes) {
    return bad_flag("--min-bytes %llu is above --max-bytes %llu", (unsigned long long)min_bytes,
                    (unsigned long long)max_bytes);
  }
  for (const char *p = only; p != NULL; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
    size_t len = strcspn(p, ","), i = 0;
    while (i < nlayouts && (strlen(layouts[i].name) != len || strncmp(p, layouts[i].name, len)))
      i++;
    if (i == nlayouts) {
      return bad_flag("--layouts %s: '%.*s' is not one of 1x1, 2x1, 2x2, colocated2, summed2", only,
                      (int)len, p);
    }
  }
  if (!json)
    printf("%-10s %-8s %9s %5s %10s %12s %12s %12s %10s %6s %10s %6s %8s\n", "layout", "op",
           "bytes", "iters", "ms", "srv_in_B", "model_in_B", "model_wire_B", "allred_ms", "ratio",
           "ring_ms", "ratio", "mirrored");
  int bad = 0;
  for (size_t i = 0; i < nlayouts; i++) {
    if (only != NULL) {
      size_t nl = strlen(layouts[i].name);
      const char *p = strstr(only, layouts[i].name);
      if (p == NULL || (p != only && p[-1] != ',') || (p[nl] != 0 && p[nl] != ',')) continue;
    }
    bad |= run_layout(&layouts[i], min_bytes, max_bytes, json);
  }
  return bad ? 1 : 0;
}
