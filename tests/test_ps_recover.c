/* Parameter-server recovery over real processes on loopback: 2 dedicated servers checkpoint every
 * 4 clocks; once both workers have reached clock 10 (they wait on a marker file, so the kill
 * always lands mid-run) the test SIGKILLs one server by its pid and starts it again with restore;
 * the survivors re-form the job, the workers resend what was not acknowledged, training
 * completes, and the restarted server reports the pushes it lost. Every worker pushes 1 to each
 * key per iteration (sum-only server), so the final value of a key is exactly W * ITERS minus the
 * lost pushes of its server: checked for a key of each server, with the victim rank 1 and with
 * the victim rank 0 (the coordinator, whose restarted process serves the new rendezvous).
 * test-labels: tsan */
#include <signal.h>
#include <sys/stat.h>

#include "distml/ps.h"
#include "ps/ps_internal.h"
#include "test_comm_harness.h"

#define ITERS 24
#define KILL_AT 10
#define NKEYS 64

typedef struct scenario {
  char dir[256];
  int staleness;
  int restore; /* this process is the restarted server */
} scenario;

static int exists(const char *dir, const char *name) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  struct stat st;
  return stat(p, &st) == 0;
}

static void touch(const char *dir, const char *name, const char *text) {
  char p[512], tmp[520];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  snprintf(tmp, sizeof tmp, "%s.tmp", p);
  FILE *f = fopen(tmp, "w");
  if (f == NULL) return;
  fputs(text, f);
  fclose(f);
  rename(tmp, p);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* This rank joins the job (timeout_ms) and gets a sum-only config with recovery, checkpoints
 * into sc->dir, and o for re-formed communicators. */
static int join_recovering(int rank, int n, int port, int timeout_ms, const scenario *sc,
                           dml_comm_opts *o, dml_comm **c, dml_ps_config *cfg) {
  th_clear_env();
  th_opts(o, rank, n, port, timeout_ms);
  dml_err err;
  RK_OK(dml_comm_init(c, o, &err));
  dml_ps_config_init(cfg);
  cfg->sum_only = 1;
  cfg->checkpoint_dir = sc->dir;
  cfg->recover = 1;
  cfg->restore = sc->restore;
  cfg->comm_opts = o;
  return 0;
}

static int rank_main(int rank, int n, int port, void *arg) {
  const scenario *sc = arg;
  dml_comm_opts o;
  dml_comm *c;
  dml_ps_config cfg;
  dml_err err;
  if (join_recovering(rank, n, port, 20000, sc, &o, &c, &cfg) != 0) return 1;
  cfg.num_servers = 2;
  cfg.staleness = sc->staleness;
  cfg.checkpoint_every_clocks = 4;
  int rc = 0;
  if (dml_ps_is_server(&cfg, rank)) {
    dml_ps_server *srv;
    RK_OK(dml_ps_server_create(&srv, c, &cfg, &err));
    rc = dml_ps_server_run(srv, &err);
    if (rc) fprintf(stderr, "rank %d: server: %s\n", rank, err.msg);
    dml_ps_server_stats st;
    dml_ps_server_stats_get(srv, &st);
    char line[128], name[32];
    snprintf(line, sizeof line, "%d %llu %llu %d\n", st.restored,
             (unsigned long long)st.lost_pushes, (unsigned long long)st.checkpoints, st.reforms);
    snprintf(name, sizeof name, "stats-%d-%d", rank, sc->restore);
    touch(sc->dir, name, line);
    dml_ps_server_free(srv);
    dml_comm_free(c);
    return rc ? 1 : 0;
  }
  dml_ps *ps;
  RK_OK(dml_ps_create(&ps, c, &cfg, &err));
  uint64_t keys[NKEYS];
  float ones[NKEYS], got[NKEYS];
  for (int i = 0; i < NKEYS; i++) keys[i] = (uint64_t)i * 1000003u + 7, ones[i] = 1.0f;
  for (int it = 0; it < ITERS && rc == 0; it++) {
    if (it == KILL_AT) {
      char name[32];
      snprintf(name, sizeof name, "ready-%d", rank);
      touch(sc->dir, name, "");
      for (int t = 0; t < 3000 && !exists(sc->dir, "go"); t++) sleep_ms(10);
      R_ASSERT(exists(sc->dir, "go"));
    }
    uint64_t ts;
    if (dml_ps_pull(ps, keys, got, NKEYS, &ts) != 0 || dml_ps_wait(ps, ts) != 0 ||
        dml_ps_push(ps, keys, ones, NKEYS, &ts) != 0 || dml_ps_wait(ps, ts) != 0 ||
        dml_ps_clock(ps) != 0) {
      fprintf(stderr, "rank %d iteration %d: %s\n", rank, it, dml_ps_errmsg(ps));
      rc = 1;
    }
  }
  if (rank == 2 && rc == 0) {
    uint64_t ts;
    if (dml_ps_pull_final(ps, keys, got, NKEYS, &ts) != 0 || dml_ps_wait(ps, ts) != 0) {
      fprintf(stderr, "rank %d final pull: %s\n", rank, dml_ps_errmsg(ps));
      rc = 1;
    }
    /* one key of each server and its final value */
    char line[256] = "";
    int have[2] = {0, 0};
    for (int i = 0; i < NKEYS && rc == 0; i++) {
      int s = dml__ps_owner(keys[i], 2);
      if (have[s]) continue;
      have[s] = 1;
      size_t len = strlen(line);
      snprintf(line + len, sizeof line - len, "%d %g\n", s, (double)got[i]);
    }
    R_ASSERT(have[0] && have[1]);
    touch(sc->dir, "final", line);
  }
  if (rc == 0 && dml_ps_finish(ps) != 0) {
    fprintf(stderr, "rank %d finish: %s\n", rank, dml_ps_errmsg(ps));
    rc = 1;
  }
  char name[32], line[64];
  snprintf(name, sizeof name, "worker-%d", rank);
  snprintf(line, sizeof line, "%d %llu\n", dml_ps_reforms(ps),
           (unsigned long long)dml_ps_resent_frames(ps));
  touch(sc->dir, name, line);
  dml_ps_free(ps);
  dml_comm_free(c);
  return rc;
}

static void read_file(const char *dir, const char *name, char *out, size_t n) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  out[0] = 0;
  FILE *f = fopen(p, "r");
  if (f == NULL) return;
  size_t r = fread(out, 1, n - 1, f);
  out[r] = 0;
  fclose(f);
}

static void run(const char *what, int victim, int staleness) {
  enum { N = 4, W = 2 };
  scenario sc;
  memset(&sc, 0, sizeof sc);
  sc.staleness = staleness;
  snprintf(sc.dir, sizeof sc.dir, "/tmp/distml-ps-recover-XXXXXX");
  T_ASSERT(mkdtemp(sc.dir) != NULL);
  int port = th_free_port();
  pid_t pid[N];
  for (int r = 0; r < N; r++) pid[r] = th_spawn(r, N, port, rank_main, &sc, NULL);
  char ck[64];
  snprintf(ck, sizeof ck, "ps-server-%d.safetensors", victim);
  for (int t = 0; t < 3000 && !(exists(sc.dir, "ready-2") && exists(sc.dir, "ready-3")); t++)
    sleep_ms(10);
  T_ASSERT(exists(sc.dir, "ready-2") && exists(sc.dir, "ready-3"));
  T_ASSERT(exists(sc.dir, ck)); /* checkpoints at clocks 4 and 8 */
  T_ASSERT(kill(pid[victim], SIGKILL) == 0);
  int vrc = th_wait_pid(pid[victim], 30);
  T_EQ_INT(vrc, 128 + SIGKILL);
  scenario again = sc;
  again.restore = 1;
  pid[victim] = th_spawn(victim, N, port, rank_main, &again, NULL);
  touch(sc.dir, "go", "");
  int bad = 0;
  for (int r = 0; r < N; r++) {
    int rc = th_wait_pid(pid[r], 120);
    if (rc != 0) {
      fprintf(stderr, "%s: rank %d exited with %d\n", what, r, rc);
      bad = 1;
    }
  }
  if (bad) T_FAIL("%s failed", what);
  char buf[256], name[32];
  snprintf(name, sizeof name, "stats-%d-1", victim);
  read_file(sc.dir, name, buf, sizeof buf);
  int restored = 0, reforms = 0;
  unsigned long long lost = 0, ckpts = 0;
  T_ASSERT(sscanf(buf, "%d %llu %llu %d", &restored, &lost, &ckpts, &reforms) == 4);
  T_EQ_INT(restored, 1);
  /* the checkpoint was written at clock 8 at the latest and the workers had pushed 10 iterations */
  T_ASSERT(lost >= 1 && lost <= (unsigned long long)W * KILL_AT);
  read_file(sc.dir, "stats-1-0", buf, sizeof buf);
  if (victim == 0) { /* the surviving server re-formed once */
    int r0, rf;
    unsigned long long l0, c0;
    T_ASSERT(sscanf(buf, "%d %llu %llu %d", &r0, &l0, &c0, &rf) == 4);
    T_EQ_INT(r0, 0);
    T_EQ_INT(rf, 1);
  }
  read_file(sc.dir, "final", buf, sizeof buf);
  int s1, s2;
  double v1, v2;
  T_ASSERT(sscanf(buf, "%d %lf %d %lf", &s1, &v1, &s2, &v2) == 4);
  for (int k = 0; k < 2; k++) {
    int s = k ? s2 : s1;
    double v = k ? v2 : v1;
    double want = (double)W * ITERS - (s == victim ? (double)lost : 0);
    if (v != want) T_FAIL("%s: final value on server %d is %g, want %g", what, s, v, want);
  }
  for (int r = 2; r < N; r++) {
    snprintf(name, sizeof name, "worker-%d", r);
    read_file(sc.dir, name, buf, sizeof buf);
    int rf = 0;
    T_ASSERT(sscanf(buf, "%d", &rf) == 1);
    T_EQ_INT(rf, 1);
  }
  printf("ok: %s (%llu pushes lost since the checkpoint)\n", what, lost);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", sc.dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", sc.dir);
}

/* A worker sends a pull, REFORM and its abort in one burst: the server learns of its death when
 * the answer to the pull fails, before it sees the REFORM queued behind the pull. The server
 * must still take part in the re-form rather than end because no worker is left. Rank 1 speaks
 * the protocol by hand to order its frames. */
static int queued_reform_main(int rank, int n, int port, void *arg) {
  const scenario *sc = arg;
  dml_comm_opts o;
  dml_comm *c;
  dml_ps_config cfg;
  dml_err err;
  if (join_recovering(rank, n, port, 5000, sc, &o, &c, &cfg) != 0) return 1;
  cfg.num_servers = 1;
  cfg.staleness = DML_PS_ASP;
  if (rank == 0) {
    dml_ps_server *srv;
    RK_OK(dml_ps_server_create(&srv, c, &cfg, &err));
    int rc = dml_ps_server_run(srv, &err);
    if (rc) fprintf(stderr, "rank 0: server: %s\n", err.msg);
    dml_ps_server_stats st;
    dml_ps_server_stats_get(srv, &st);
    char line[64];
    snprintf(line, sizeof line, "%d\n", st.reforms);
    touch(sc->dir, "queued-stats", line);
    dml_ps_server_free(srv);
    dml_comm_free(c);
    return rc ? 1 : 0;
  }
  uint64_t key = 7;
  unsigned char pull[64 + 8], hdr[DML__PS_HEADER_BYTES];
  dml__ps_msg m;
  memset(&m, 0, sizeof m);
  m.command = DML__PS_PULL;
  m.sender = (uint32_t)rank;
  m.timestamp = 1;
  m.key_lo = m.key_hi = key;
  m.nkeys = 1;
  R_ASSERT(dml__ps_frame_bytes(1, 0) == sizeof pull);
  dml__ps_encode(pull, &m, &key, NULL);
  memset(&m, 0, sizeof m);
  m.command = DML__PS_REFORM;
  m.sender = (uint32_t)rank;
  dml__ps_encode(hdr, &m, NULL, NULL);
  RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, pull, sizeof pull));
  RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, hdr, sizeof hdr));
  dml_comm_abort(c, "test: re-forming the job");
  dml_comm *nc;
  if (dml_comm_init(&nc, &o, &err) != 0) { /* fails when the server has ended instead */
    fprintf(stderr, "rank 1: joining the re-formed job: %s\n", err.msg);
    return 1;
  }
  m.command = DML__PS_REJOIN;
  m.key_hi = 1; /* and leaves */
  dml__ps_encode(hdr, &m, NULL, NULL);
  RK_OK(dml_comm_send(nc, 0, DML__PS_TAG_REQ, hdr, sizeof hdr));
  static const char none = 0;
  RK_OK(dml_comm_send(nc, 0, DML__PS_TAG_WATCH, &none, 0));
  dml_comm_free(nc);
  dml_comm_free(c);
  return 0;
}

static void queued_reform(void) {
  scenario sc;
  memset(&sc, 0, sizeof sc);
  snprintf(sc.dir, sizeof sc.dir, "/tmp/distml-ps-recover-XXXXXX");
  T_ASSERT(mkdtemp(sc.dir) != NULL);
  th_run("a REFORM queued behind the worker's death", 2, queued_reform_main, &sc, 60);
  char buf[64];
  read_file(sc.dir, "queued-stats", buf, sizeof buf);
  int reforms = -1;
  T_ASSERT(sscanf(buf, "%d", &reforms) == 1);
  T_EQ_INT(reforms, 1);
  printf("ok: a REFORM queued behind the worker's death: the server re-forms\n");
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", sc.dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", sc.dir);
}

int main(void) {
  queued_reform();
  run("BSP, server 1 killed and restarted: training completes, lost pushes counted", 1, 0);
  run("BSP, server 0 (the coordinator) killed and restarted", 0, 0);
  run("ASP, server 1 killed and restarted", 1, DML_PS_ASP);
  return 0;
}
