/* Parameter server over real processes on loopback: exact values under BSP (every worker pushes
 * 1 to each key per iteration, so a pull at clock c reads between W*c and W*c + W-1) with 1 and 2 dedicated servers and
 * colocated; the SSP bound (a pull at clock c reads at least W*(c-s)); ASP; a resent push applied
 * once; BSP sync aggregation with a server-side SGD, sparse and dense (exact values); hostile ranks (garbage, a huge count, unsorted keys) dropped while the job goes on; and a
 * raw TCP clients writing garbage and huge lengths to the server's ports; dense pushes whose
 * announced values never come or come short; registered dense tensors
 * cut into <= 4 MB parts over 2 servers (the second part on the other server); a
 * worker killed mid-run under ASP and BSP: the others finish and the server counts it dead; and
 * several of these with 2-3 request-handling threads per server process; colocated runs where
 * each worker serves its own shard inside its calls (dml_ps_serve) under BSP, SSP, ASP, sync
 * aggregation and the dense API, and one of them killed: the others fail within seconds naming
 * it; mirrored tensors (colocated, every shard a replica): exact reads, replicas equal bit for
 * bit, hostile pushes and pulls of them dropped, bodies, pushes in opposite orders, a worker a
 * clock further than one in a (dense or sparse) final pull; large dense frames as direct requests
 * (counted by the servers; three scenarios with them off, as bodies), and direct requests a server
 * cannot serve (unmapped addresses, a rank out of reach) dropped.
 * test-labels: tsan */
#include <math.h>
#include <signal.h>

#include "distml/coll.h"
#include "distml/ps.h"
#include "ps/ps_internal.h"
#include "test_comm_harness.h"

#define ITERS 12
#define NKEYS 64

typedef struct scenario {
  int servers, colocated, staleness;
  int hostile_from; /* ranks >= this send one bad frame each and leave (0: none) */
  int victim;       /* rank that kills itself after 3 iterations (0: none) */
  int dup;          /* world 2: raw resent push */
  int raw_hostile;  /* the first worker opens raw TCP connections to the server's ports and
                        sends garbage and a huge length before the job starts */
  int dense;        /* the same through the dense API over 200k keys (several parts) */
  int layout;       /* dense, over a registered tensor of 1.2M keys split over 2 servers */
  int handlers;     /* request-handling threads per server process (0: 1) */
  int sgd;          /* server-side SGD lr 1 with BSP sync aggregation: a pull at clock c reads
                        exactly -c (the mean of the W pushes of 1 per clock, one step per clock) */
  int serve;        /* colocated: each worker serves its own shard (dml_ps_serve), no thread */
  int pushpull;     /* one pushpull of ones per iteration. Sum-only BSP: the read at clock c holds
                       this push and all of clocks < c, and at most the other workers' pushes of
                       clocks c and c + 1 (one whose pull at c was answered may push again before
                       this push arrives): [W*c + 1, W*c + 2W - 1]. With sgd: exactly -c (a push
                       of a clock past the open aggregate's waits for it, not mixed in) */
  int lost_shard;   /* colocated, each worker serving: rank `victim` dies after 3 iterations;
                       the others must fail within seconds with an error naming it (its shard is
                       lost), not wait for the timeout */
  int body_hostile; /* with hostile_from: the hostile ranks announce a dense push's values as a
                       body and send none (staying connected) or a body of the wrong length */
  int one_server;   /* one_server_only: each worker's requests go to one server only */
  int extra;        /* pushpull: the last worker runs one iteration more; the first worker's final
                       pull must hold that lone push's step too */
  int slow_leave;   /* communicator timeout 1.5 s; the last worker waits 4 s before leaving: the
                       first worker's final pull and finish wait for it (not a failure) */
  int mirrored;     /* colocated BSP with a mirrored tensor (mirrored_run) */
  int odd;          /* mirrored: values whose sum rounds by its order; replicas must agree */
  int wide;         /* mirrored pushpull: one request over the mirrored and the sharded tensor */
  int big;          /* mirrored: a tensor of 80 KB (its pushes go as bodies) */
  int swap;         /* mirrored: two mirrored tensors pushed in opposite orders */
  int hostile_push; /* mirrored, hostile_from: the hostile rank pushes one chunk twice a clock */
  int sparse_final; /* mirrored, extra: rank 0's final pull is a sparse one */
  int direct_off;   /* DISTML_PS_DIRECT=0: large dense values go as bodies, not direct copies */
  int direct_bad;   /* with hostile_from: direct requests the server cannot serve */
  int fenced;       /* fenced_run (timeout 1.5 s); 2: its pull held first */
  int summed;       /* summed_run: 1 colocated, 2 with .servers dedicated servers, 3 the same
                       and the last rank hostile */
} scenario;

static int check_server(int rank, dml_ps_server *s, const scenario *sc) {
  dml_ps_server_stats st;
  dml_ps_server_stats_get(s, &st);
  int want_dropped = sc->body_hostile ? 2 : sc->hostile_from ? 3 : 0;
  if (st.dropped_peers != want_dropped) {
    fprintf(stderr, "rank %d: dropped %d peers, want %d\n", rank, st.dropped_peers, want_dropped);
    return 1;
  }
  if (sc->victim && st.dead_workers != 1) {
    fprintf(stderr, "rank %d: %d dead workers, want 1\n", rank, st.dead_workers);
    return 1;
  }
  if (sc->layout) { /* key 1.1M is in tensor 0's second part: server 1 holds it, server 0 not */
    float v = dml_ps_server_dense_value(s, 1100000), want = rank == 1 ? 2.0f * ITERS : 0.0f;
    if (v != want) {
      fprintf(stderr, "rank %d: dense key 1100000 holds %g, want %g\n", rank, (double)v,
              (double)want);
      return 1;
    }
  }
  if (sc->handlers > 1 && !sc->dense && !sc->sgd && !sc->victim && !sc->colocated) {
    /* every key of this process, held by the handler that owns it, has all 2 x ITERS pushes */
    for (int i = 0; i < NKEYS; i++) {
      uint64_t key = (uint64_t)i * 1000003u + 7;
      if (dml__ps_owner(key, sc->servers * sc->handlers) % sc->servers != rank) continue;
      if (dml_ps_server_value(s, key) != 2.0f * ITERS) {
        fprintf(stderr, "rank %d: key %llu holds %g, want %d\n", rank, (unsigned long long)key,
                (double)dml_ps_server_value(s, key), 2 * ITERS);
        return 1;
      }
    }
  }
  /* large dense frames from workers on this machine come as direct requests (bodies when off) */
  if (sc->dense && !sc->hostile_from && (sc->direct_off ? st.direct != 0 : st.direct == 0)) {
    fprintf(stderr,
            "rank %d: %llu direct requests served, direct copies %s (on: the CMA probe "
            "must pass between ranks of this machine)\n",
            rank, (unsigned long long)st.direct, sc->direct_off ? "off" : "on");
    return 1;
  }
  if (!sc->victim && st.dead_workers != 0) {
    fprintf(stderr, "rank %d: %d dead workers, want 0\n", rank, st.dead_workers);
    return 1;
  }
  return 0;
}

/* A dense push of 16 values announced as a body: none follows (kind 0, the rank stays connected
 * past the server's wait) or 8 bytes do (kind 1). */
static int hostile_body(int rank, dml_comm *c) {
  unsigned char buf[64];
  dml__ps_msg m;
  memset(&m, 0, sizeof m);
  m.command = DML__PS_PUSH;
  m.sender = (uint32_t)rank;
  m.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_BODY;
  m.timestamp = 1;
  m.key_lo = 0;
  m.key_hi = 15;
  m.nvals = 16;
  m.value_type = DML__PS_VT_F32;
  dml__ps_encode(buf, &m, NULL, NULL);
  RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, buf, sizeof buf));
  if (rank % 2 == 1) {
    RK_OK(dml_comm_send(c, 0, DML__PS_TAG_BODY_IN(0), buf, 8));
  } else {
    struct timespec ts = {2, 600 * 1000000L}; /* past the server's wait (main sets 1.5 s) */
    nanosleep(&ts, NULL);
  }
  return 0;
}

/* A direct dense request whose server cannot do what it asks: a push whose values' address is
 * not mapped (kind 0), a pull whose output's is not (kind 1), a push from a rank whose memory
 * the server cannot reach (kind 2: CMA off there, rank_main). Each is dropped. */
static int hostile_direct(int rank, dml_comm *c) {
  static float vals[16384];
  unsigned char buf[DML__PS_DIRECT_BYTES];
  dml__ps_msg m;
  memset(&m, 0, sizeof m);
  int kind = rank % 3;
  m.command = kind == 1 ? DML__PS_PULL : DML__PS_PUSH;
  m.sender = (uint32_t)rank;
  m.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_DIRECT |
            (kind == 1 ? DML__PS_FLAG_REPLY_BODY : DML__PS_FLAG_BODY);
  m.timestamp = 1;
  m.key_lo = 0;
  m.key_hi = 16383;
  m.nvals = kind == 1 ? 0 : 16384;
  m.value_type = kind == 1 ? DML__PS_VT_NONE : DML__PS_VT_F32;
  m.vals_addr = kind == 0 ? 8 : kind == 2 ? (uint64_t)(uintptr_t)vals : 0;
  m.out_addr = kind == 1 ? 8 : 0;
  dml__ps_encode(buf, &m, NULL, NULL);
  RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, buf, sizeof buf));
  struct timespec ts = {1, 0}; /* connected while the server looks at it */
  nanosleep(&ts, NULL);
  return 0;
}

static int hostile(int rank, dml_comm *c) {
  unsigned char buf[64 + 3 * 12];
  memset(buf, 0, sizeof buf);
  dml__ps_msg m;
  memset(&m, 0, sizeof m);
  uint64_t keys[3] = {5, 3, 9};
  float vals[3] = {1, 1, 1};
  m.command = DML__PS_PUSH;
  m.sender = (uint32_t)rank;
  m.timestamp = 1;
  m.key_lo = 3;
  m.key_hi = 9;
  m.nkeys = m.nvals = 3;
  m.value_type = DML__PS_VT_F32;
  dml__ps_encode(buf, &m, keys, vals); /* unsorted keys */
  int kind = rank % 3;
  if (kind == 0) {
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 37 + 11); /* garbage */
  } else if (kind == 1) {
    for (int i = 0; i < 8; i++) buf[48 + i] = 0xff; /* 2^64-1 keys claimed */
  }
  RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, buf, sizeof buf));
  return 0;
}

static int dup_push(int rank, dml_comm *c) {
  uint64_t key = 5;
  float one = 1.0f;
  unsigned char buf[64 + 12];
  dml__ps_msg m;
  memset(&m, 0, sizeof m);
  m.command = DML__PS_PUSH;
  m.sender = (uint32_t)rank;
  m.timestamp = 1;
  m.key_lo = m.key_hi = key;
  m.nkeys = m.nvals = 1;
  m.value_type = DML__PS_VT_F32;
  dml__ps_encode(buf, &m, &key, &one);
  for (int i = 0; i < 2; i++) {
    RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, buf, sizeof buf)); /* the same push twice */
    void *rep;
    size_t len;
    RK_OK(dml_comm_recv_alloc(c, 0, DML__PS_TAG_REP, &rep, &len, NULL));
    dml_comm_buf_free(rep);
  }
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.sum_only = 1;
  dml_ps *ps;
  dml_err err;
  RK_OK(dml_ps_create(&ps, c, &cfg, &err));
  /* the client's timestamps start at 1 too: its first push would be taken as the resend */
  float v = -1;
  uint64_t ts;
  RK_OK(dml_ps_pull(ps, &key, &v, 1, &ts));
  RK_OK(dml_ps_wait(ps, ts));
  dml_ps_free(ps);
  R_ASSERT(v == 1.0f);
  return 0;
}

/* Connects to 127.0.0.1:port and writes bytes; the connection is closed by us or dropped by them. */
static void raw_send(int port, const void *bytes, size_t len) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((uint16_t)port);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
    ssize_t w = write(fd, bytes, len);
    (void)w;
  }
  close(fd);
}

static void raw_hostile(dml_comm *c, int master_port) {
  const char *name = dml_comm_peer_name(c, 0); /* "rank 0 (127.0.0.1:PORT)" */
  const char *colon = strrchr(name, ':');
  int ports[2] = {master_port, colon ? atoi(colon + 1) : 0};
  unsigned char garbage[256], huge[64];
  for (size_t i = 0; i < sizeof garbage; i++) garbage[i] = (unsigned char)(i * 131 + 7);
  memset(huge, 0xff, sizeof huge); /* every length field at its maximum */
  for (int p = 0; p < 2; p++) {
    if (ports[p] <= 0) continue;
    raw_send(ports[p], garbage, sizeof garbage);
    raw_send(ports[p], huge, sizeof huge);
  }
}

/* lost_shard: dense pulls and pushes over every shard until the victim dies; a survivor's call
 * then fails naming the victim, well before the communicator's 20 s timeout (without the check
 * it waited those 20 s). */
/* Colocated, sum-only BSP: this rank's shard and its worker, which serves it (dml_ps_serve). */
static int colocated_serving(int rank, dml_comm *c, dml_ps_server **srv, dml_ps **ps) {
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.colocated = 1;
  cfg.sum_only = 1;
  dml_err err;
  RK_OK(dml_ps_server_create(srv, c, &cfg, &err));
  RK_OK(dml_ps_create(ps, c, &cfg, &err));
  RK_OK(dml_ps_serve(*ps, *srv, &err));
  return 0;
}

static int lost_shard(int rank, dml_comm *c, const scenario *sc) {
  dml_ps_server *srv;
  dml_ps *ps;
  RK_OK(colocated_serving(rank, c, &srv, &ps));
  enum { N = 4 * 65536 };
  float *v = calloc(N, sizeof(float));
  R_ASSERT(v);
  double t_fail = 0, t0 = dml_now_s();
  int rc = 0;
  for (int it = 0; it < 1000 && rc == 0; it++) {
    if (rank == sc->victim && it == 3) raise(SIGKILL);
    uint64_t ts;
    rc = dml_ps_pull_dense(ps, 0, v, N, &ts);
    if (rc == 0) rc = dml_ps_wait(ps, ts);
    if (rc == 0) rc = dml_ps_push_dense(ps, 0, v, N, &ts);
    if (rc == 0) rc = dml_ps_wait(ps, ts);
    if (rc == 0) rc = dml_ps_clock(ps);
  }
  t_fail = dml_now_s() - t0;
  char want[64];
  snprintf(want, sizeof want, "server rank %d (", sc->victim);
  /* the other survivor may notice first and leave: then this one can find every other rank gone
   * (also within the bound); a pause before leaving makes that rare. When it notices first and
   * fences this rank (it gives up requests this rank's shard owes), this rank's error is that
   * link's, which says why: the other's error, naming the victim. */
  const char *msg = dml_ps_errmsg(ps);
  int ok = rc != 0 && t_fail < 10 &&
           (strstr(msg, want) != NULL || strstr(msg, "every other rank has failed") != NULL);
  struct timespec pause = {1, 0};
  nanosleep(&pause, NULL);
  if (!ok)
    fprintf(stderr, "rank %d: rc %d after %.1f s: %s (want an error naming %s...)\n", rank, rc,
            t_fail, dml_ps_errmsg(ps), want);
  dml_ps_free(ps);
  dml_ps_server_free(srv);
  free(v);
  return ok ? 0 : 1;
}

/* Colocated 2 ranks serving, direct requests: rank 0 stops serving (computes) past rank 1's
 * timeout; rank 1's wait fails, and giving up the request fences rank 0, so that when rank 0
 * comes back and handles the frame (its shard counts it) it copies nothing into rank 1's output
 * (a sentinel written there after the wait stays). deferred: rank 0 has handled the frame before
 * it goes away, but holds its pull (BSP: rank 0 has not passed the clock); when it comes back and
 * passes it, the pull that waited is written into nothing either. */
static int fenced_run(int rank, dml_comm *c, int deferred) {
  dml_err err;
  dml_ps_server *srv;
  dml_ps *ps;
  RK_OK(colocated_serving(rank, c, &srv, &ps));
  enum { N = 4 * 65536 }; /* 2 x 512 KB frames to each shard: direct */
  float *g = malloc(N * sizeof(float)), *v = malloc(N * sizeof(float));
  R_ASSERT(g && v);
  for (int i = 0; i < N; i++) g[i] = 1.0f;
  uint64_t ts;
  RK_OK(dml_ps_pushpull_dense(ps, 0, g, v, N, &ts));
  RK_OK(dml_ps_wait(ps, ts));
  R_ASSERT(v[0] >= 1.0f && v[N - 1] >= 1.0f); /* its own push at least */
  if (!deferred || rank == 1) RK_OK(dml_ps_clock(ps));
  struct timespec away = {3, 0}; /* rank 1's timeout is 1.5 s */
  int rc = 0;
  if (rank == 0) {
    /* serving until rank 1 has its first request's answers too */
    char go = 1;
    dml_comm_req *q;
    int done = 0;
    RK_OK(dml_comm_irecv(c, 1, 76, &go, 1, &q));
    while (!done) {
      int moved = 0;
      RK_OK(dml__ps_server_poll(srv, &moved, &err));
      RK_OK(dml_comm_test(c, q, &done));
    }
    dml_ps_server_stats st;
    dml_ps_server_stats_get(srv, &st);
    uint64_t before = st.direct;
    /* rank 1's next request comes while this rank is away, not in a call */
    RK_OK(dml_comm_send(c, 1, 77, &go, 1));
    if (deferred) { /* or it comes first, and its pull waits for this rank's clock */
      uint64_t held = st.deferred_pulls;
      for (int i = 0; i < 1000 && st.deferred_pulls == held; i++) {
        int moved = 0;
        RK_OK(dml__ps_server_poll(srv, &moved, &err));
        dml_ps_server_stats_get(srv, &st);
        if (!moved) usleep(1000);
      }
      if (st.deferred_pulls == held) {
        fprintf(stderr, "rank 0: rank 1's pull was never held\n");
        rc = 1;
      }
    }
    nanosleep(&away, NULL);
    if (deferred) RK_OK(dml_ps_clock(ps)); /* the held pull is answered, into nothing */
    /* serving again: rank 1's request is still here, its link failed (fenced) */
    for (int i = 0; i < 2000 && st.direct <= before; i++) {
      int moved = 0;
      dml__ps_server_poll(srv, &moved, &err);
      dml_ps_server_stats_get(srv, &st);
      if (!moved) usleep(1000);
    }
    if (st.direct <= before) {
      fprintf(stderr, "rank 0: the shard never handled rank 1's last request (%llu direct)\n",
              (unsigned long long)st.direct);
      rc = 1;
    }
    /* rank 1 said why it failed the link: the error it gave up on */
    R_ASSERT(dml_comm_recv(c, 1, 78, &go, 1) != 0);
    if (!strstr(dml_comm_errmsg(c), "aborted: ps worker 1 gave up a request after: ps: ")) {
      fprintf(stderr, "rank 0: the fenced link does not say why: %s\n", dml_comm_errmsg(c));
      rc = 1;
    }
  } else {
    char go = 1;
    RK_OK(dml_comm_send(c, 0, 76, &go, 1));
    RK_OK(dml_comm_recv(c, 0, 77, &go, 1));
    RK_OK(dml_ps_pushpull_dense(ps, 0, g, v, N, &ts));
    double t0 = dml_now_s();
    rc = dml_ps_wait(ps, ts);
    double waited = dml_now_s() - t0;
    R_ASSERT(rc == DML_ETIMEDOUT && waited < 3.0); /* fenced within 1 s of the timeout */
    for (int i = 0; i < N; i++) v[i] = -7.0f;
    nanosleep(&away, NULL); /* rank 0 serves meanwhile */
    for (int i = 0; i < N; i++)
      if (v[i] != -7.0f) {
        fprintf(stderr, "rank 1: key %d of the output written after the wait gave up: %g\n", i,
                (double)v[i]);
        return 1;
      }
    rc = 0;
  }
  dml_ps_free(ps);
  dml_ps_server_free(srv);
  free(g);
  free(v);
  return rc;
}

/* Two servers, two workers, BSP (dedicated, or colocated with workers serving): worker i pulls
 * and pushes only a dense range that server i holds, so a server learns the other worker's clock
 * only from the CLOCK frames a worker sends to the servers its requests do not reach: a missing
 * one hangs the other worker's pull (an error at the communicator's timeout). Each range has one
 * pusher, so a pull at clock c reads c; worker 1 pauses before each clock, and server 0 must have
 * held worker 0's pulls for it (a clock taken too early would answer them at once). */
/* Server 0 (rank 0) held some of worker 0's pulls until worker 1's clock came. */
static int held_back(int rank, const dml_ps_server *srv) {
  dml_ps_server_stats st;
  dml_ps_server_stats_get(srv, &st);
  if (rank == 0 && st.deferred_pulls == 0) {
    fprintf(stderr, "rank 0: no pull waited for the slower worker's clock\n");
    return 1;
  }
  return 0;
}

static int one_server_only(int rank, dml_comm *c, const scenario *sc) {
  dml_err err;
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.num_servers = 2;
  cfg.colocated = sc->colocated;
  cfg.sum_only = 1;
  static const uint64_t sizes[1] = {200000}; /* runs of 13 and 12 chunks: 106,496 keys on 0 */
  cfg.dense_sizes = sizes;
  cfg.num_dense = 1;
  dml_ps_server *srv = NULL;
  if (dml_ps_is_server(&cfg, rank)) {
    RK_OK(dml_ps_server_create(&srv, c, &cfg, &err));
    if (!cfg.colocated) {
      int rc = dml_ps_server_run(srv, &err);
      if (rc) fprintf(stderr, "rank %d: server: %s\n", rank, err.msg);
      rc = rc ? rc : held_back(rank, srv);
      dml_ps_server_free(srv);
      return rc;
    }
  }
  int widx = cfg.colocated ? rank : rank - 2;
  uint64_t lo = widx == 0 ? 1000 : 150000, N = 4000;
  dml_ps *ps;
  RK_OK(dml_ps_create(&ps, c, &cfg, &err));
  if (srv) RK_OK(dml_ps_serve(ps, srv, &err));
  float ones[4000], got[4000];
  for (uint64_t i = 0; i < N; i++) ones[i] = 1.0f;
  int rc = 0;
  for (int it = 0; it < ITERS && rc == 0; it++) {
    uint64_t ts;
    RK_OK(dml_ps_pull_dense(ps, lo, got, N, &ts));
    RK_OK(dml_ps_wait(ps, ts));
    for (uint64_t i = 0; i < N && rc == 0; i++)
      if (got[i] != (float)it) {
        fprintf(stderr, "rank %d clock %d key %llu: read %g, want %d\n", rank, it,
                (unsigned long long)(lo + i), (double)got[i], it);
        rc = 1;
      }
    RK_OK(dml_ps_push_dense(ps, lo, ones, N, &ts));
    RK_OK(dml_ps_wait(ps, ts));
    if (widx == 1) { /* the slower worker: server 0 must hold worker 0's next pull for it */
      struct timespec pause = {0, 20 * 1000 * 1000};
      nanosleep(&pause, NULL);
    }
    RK_OK(dml_ps_clock(ps));
  }
  if (rc == 0 && dml_ps_finish(ps) != 0) {
    fprintf(stderr, "rank %d: finish: %s\n", rank, dml_ps_errmsg(ps));
    rc = 1;
  }
  if (rc == 0 && srv) rc = held_back(rank, srv);
  dml_ps_free(ps);
  dml_ps_server_free(srv);
  return rc;
}

/* Mirrored tensors, colocated BSP (mirror_bytes 32 KB): tensor 0 (MK keys, its chunk 0..8191
 * mirrored: every shard holds it) and tensor 1 (100,000 keys, sharded). Each iteration a worker
 * pushpulls tensor 0 (with `wide` both tensors in one request), or pulls it and then pushes it.
 * Values: 1 (exact reads: a pull at clock c reads W*c, a pushpull W*(c+1); with SGD lr 1, -c and
 * -(c+1)), or with `odd` 0.1 (rank + 1) + 0.37 i / MK, whose sums round by their order: every
 * replica must still hold the same bits. A second push of a chunk in one clock is refused.
 * `big`: tensor 0 has 20,000 keys (80 KB, mirror_bytes 128 KB): its pushes travel as bodies.
 * `swap`: two mirrored tensors pushed (push only, each waited for) in opposite orders by even and
 * odd ranks for 40 clocks, rank 0 slower (10 ms a clock): the others' pushes are acknowledged
 * at once until they are 16 clocks ahead, then wait. `extra`: the last rank pushpulls once more
 * while rank 0 waits in a final pull (dense, or with `sparse_final` of sparse keys).
 * With hostile_from, the ranks from it send rank 0 a pull of mirrored keys (`hostile_push`: two
 * pushes of one clock) -- a worker reads its own replica, and pushes once per clock -- then tell
 * every rank they leave (BYE) and that their shard has finished, and stay connected (colocated,
 * a rank that dies takes its shard with it: an error) until the others are done: rank 0 drops
 * it, the job goes on without it. */
#define MK 1000
static int mirrored_run(int rank, dml_comm *c, const scenario *sc) {
  int n = dml_comm_size(c), rc = 0;
  dml_err err;
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.colocated = 1;
  cfg.mirror_bytes = sc->big ? 128u << 10 : 32u << 10;
  cfg.sum_only = !sc->sgd;
  if (sc->sgd) {
    dml_optim_config_init(&cfg.optim, DML_OPT_SGD);
    cfg.optim.lr = 1.0f;
  }
  uint64_t mk = sc->big ? 20000 : MK;
  uint64_t sizes[3] = {mk, 100000, 0};
  if (sc->swap) sizes[1] = MK, sizes[2] = 100000; /* tensor 1 mirrored too */
  cfg.dense_sizes = sizes;
  cfg.num_dense = sc->swap ? 3 : 2;
  uint64_t off[3], bytes[8], T1 = sc->big ? 3 * 8192 : 8192;
  RK_OK(dml_ps_dense_layout(&cfg, n, off, bytes, &err));
  R_ASSERT(off[0] == 0 && off[1] == T1);
  uint64_t sharded = 100000; /* held once, over every server */
  uint64_t total = 0;
  for (int k = 0; k < n; k++) total += bytes[k];
  /* tensor 0 (and with swap tensor 1) on every server, the sharded one once */
  R_ASSERT(total == 4 * ((uint64_t)n * (mk + (sc->swap ? MK : 0)) + sharded));
  dml_ps_server *srv = NULL;
  RK_OK(dml_ps_server_create(&srv, c, &cfg, &err));
  if (sc->hostile_from && rank >= sc->hostile_from) {
    unsigned char frame[64 + 16];
    float four[4] = {1, 1, 1, 1};
    dml__ps_msg m;
    memset(&m, 0, sizeof m);
    m.command = sc->hostile_push ? DML__PS_PUSH : DML__PS_PULL;
    m.sender = (uint32_t)rank;
    m.flags = DML__PS_FLAG_DENSE;
    m.key_hi = sc->hostile_push ? 3 : 99;
    m.nvals = sc->hostile_push ? 4 : 0;
    m.value_type = sc->hostile_push ? DML__PS_VT_F32 : DML__PS_VT_NONE;
    m.clock = sc->hostile_push ? 5 : 0; /* ahead: queued, not folded, when it is dropped */
    for (int k = 0; k < (sc->hostile_push ? 2 : 1); k++) {
      m.timestamp = (uint64_t)k + 1;
      dml__ps_encode(frame, &m, NULL, four);
      RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, frame, dml__ps_frame_bytes(0, m.nvals)));
    }
    for (int r = 0; r < sc->hostile_from; r++) {
      memset(&m, 0, sizeof m);
      m.command = DML__PS_BYE;
      m.sender = (uint32_t)rank;
      dml__ps_encode(frame, &m, NULL, NULL);
      RK_OK(dml_comm_send(c, r, DML__PS_TAG_REQ, frame, 64)); /* this worker leaves */
      RK_OK(dml_comm_send(c, r, DML__PS_TAG_REP, frame, 64)); /* its shard is done */
    }
    char done;
    for (int r = 0; r < sc->hostile_from; r++) RK_OK(dml_comm_recv(c, r, 77, &done, 1));
    dml_ps_server_free(srv);
    return 0;
  }
  int W = sc->hostile_from ? sc->hostile_from : n;
  if (!sc->serve) RK_OK(dml_ps_server_start(srv, &err));
  dml_ps *ps;
  RK_OK(dml_ps_create(&ps, c, &cfg, &err));
  if (sc->serve) RK_OK(dml_ps_serve(ps, srv, &err));
  size_t N = sc->wide ? T1 + 100000 : mk;
  float *vals = malloc(N * sizeof(float)), *got = malloc(N * sizeof(float));
  R_ASSERT(vals && got);
  for (size_t i = 0; i < N; i++)
    vals[i] = sc->odd ? 0.1f * (float)(rank + 1) + 0.37f * (float)i / MK : 1.0f;
  int base = sc->swap ? 40 : ITERS, iters = base + (sc->extra && rank == n - 1);
  for (int it = 0; it < iters && rc == 0; it++) {
    uint64_t ts, ts2;
    double c0 = (double)dml_ps_clock_value(ps);
    if (sc->swap) { /* push only, in opposite orders: acknowledged without waiting for others */
      uint64_t first = rank % 2 ? off[1] : 0, second = rank % 2 ? 0 : off[1];
      RK_OK(dml_ps_push_dense(ps, first, vals, MK, &ts));
      RK_OK(dml_ps_wait(ps, ts));
      RK_OK(dml_ps_push_dense(ps, second, vals, MK, &ts));
      RK_OK(dml_ps_wait(ps, ts));
      if (rank == 0) usleep(10000);
      RK_OK(dml_ps_clock(ps));
      continue;
    }
    if (sc->pushpull)
      RK_OK(dml_ps_pushpull_dense(ps, 0, vals, got, N, &ts));
    else
      RK_OK(dml_ps_pull_dense(ps, 0, got, N, &ts));
    RK_OK(dml_ps_wait(ps, ts));
    double want = sc->pushpull ? (sc->sgd ? -(c0 + 1) : W * (c0 + 1)) : sc->sgd ? -c0 : W * c0;
    if (it == ITERS) want = W * c0 + 1; /* extra: the others have left or are done */
    for (size_t i = 0; i < N && !sc->odd && rc == 0; i++) {
      /* the sharded tensor's sum-only pushpull reads [W*c + 1, W*c + 2W - 1] (see pushpull) */
      double lo = i < T1 ? want : W * c0 + 1, hi = i < T1 ? want : W * c0 + 2 * W - 1;
      if (got[i] < lo || got[i] > hi) {
        fprintf(stderr, "rank %d clock %g key %zu: read %g, want [%g, %g]\n", rank, c0, i,
                (double)got[i], lo, hi);
        rc = 1;
      }
    }
    if (!sc->pushpull) {
      RK_OK(dml_ps_push_dense(ps, 0, vals, N, &ts));
      if (it == 0) R_ASSERT(dml_ps_push_dense(ps, 500, vals, 10, &ts2) == DML_EINVAL);
      RK_OK(dml_ps_wait(ps, ts));
    }
    RK_OK(dml_ps_clock(ps));
  }
  double want = sc->sgd ? -(double)base : (double)W * base + (sc->extra ? 1 : 0);
  if (rc == 0 && sc->extra && rank == 0) { /* the last rank pushes once more meanwhile */
    uint64_t ts, ts2, key = 7;
    if (sc->sparse_final)
      RK_OK(dml_ps_pull_final(ps, &key, got, 1, &ts));
    else
      RK_OK(dml_ps_pull_dense_final(ps, 0, got, mk, &ts));
    RK_OK(dml_ps_wait(ps, ts));
    if (!sc->sparse_final && (got[0] != want || got[mk - 1] != want)) {
      fprintf(stderr, "rank 0: final pull read %g, want %g\n", (double)got[0], want);
      rc = 1;
    }
    R_ASSERT(dml_ps_push_dense(ps, 0, vals, mk, &ts2) == DML_EINVAL); /* after a final pull */
    R_ASSERT(dml_ps_push(ps, &key, vals, 1, &ts2) == DML_EINVAL);
  }
  if (rc == 0 && sc->serve && dml_ps_finish(ps) != 0) {
    fprintf(stderr, "rank %d: finish: %s\n", rank, dml_ps_errmsg(ps));
    rc = 1;
  }
  dml_ps_free(ps);
  char done = 1;
  for (int r = sc->hostile_from; sc->hostile_from && r < n; r++)
    RK_OK(dml_comm_send(c, r, 77, &done, 1));
  if (!sc->serve && dml_ps_server_join(srv, &err) != 0) {
    fprintf(stderr, "rank %d: server thread: %s\n", rank, err.msg);
    rc = 1;
  }
  dml_ps_server_stats st;
  dml_ps_server_stats_get(srv, &st);
  if (rc == 0 && sc->swap && rank != 0 && st.deferred_pulls == 0) {
    fprintf(stderr, "rank %d: no push waited for the slower rank 0's clocks\n", rank);
    rc = 1; /* ran 16 clocks ahead of rank 0: its pushes were acknowledged later */
  }
  if (rc == 0 && sc->hostile_from && st.dropped_peers != (rank == 0)) {
    fprintf(stderr, "rank %d: dropped %d peers, want %d\n", rank, st.dropped_peers, rank == 0);
    rc = 1;
  }
  /* every replica holds every clock's pushes, the same bits on every rank (with swap, tensor 1
   * too: its keys follow tensor 0's in the check) */
  size_t nchk = mk + (sc->swap ? MK : 0);
  float *mine = malloc(nchk * sizeof(float)), *mn = malloc(nchk * sizeof(float));
  float *mx = malloc(nchk * sizeof(float));
  R_ASSERT(mine && mn && mx);
  for (size_t i = 0; i < nchk; i++) {
    uint64_t key = i < mk ? i : off[1] + (i - mk);
    mine[i] = mn[i] = mx[i] = dml_ps_server_dense_value(srv, key);
    /* odd: every worker's value of key i, summed over the clocks, up to rounding */
    double sum = 0;
    for (int r = 0; sc->odd && r < W; r++) sum += base * (0.1 * (r + 1) + 0.37 * (double)i / MK);
    double dev = sc->odd ? fabs(mine[i] - sum) : fabs(mine[i] - want);
    if (dev > (sc->odd ? 1e-4 * sum : 0) && rc == 0) {
      fprintf(stderr, "rank %d: replica key %llu holds %g, want %g\n", rank,
              (unsigned long long)key, (double)mine[i], sc->odd ? sum : want);
      rc = 1;
    }
  }
  if (rc == 0 && !sc->hostile_from) {
    RK_OK(dml_allreduce(c, mn, nchk, DML_F32, DML_MIN));
    RK_OK(dml_allreduce(c, mx, nchk, DML_F32, DML_MAX));
    if (memcmp(mn, mine, nchk * sizeof(float)) != 0 ||
        memcmp(mx, mine, nchk * sizeof(float)) != 0) {
      fprintf(stderr, "rank %d: the replicas differ\n", rank);
      rc = 1;
    }
  }
  free(mine);
  free(mn);
  free(mx);
  free(vals);
  free(got);
  dml_ps_server_free(srv);
  return rc;
}

/* Summed pushpulls (BSP, sum-only): every worker pushpulls two registered tensors per clock, a
 * large one (direct frames) and a small one (values in frames); worker w pushes (w + 1 + it +
 * k % 7) to key k at iteration it, so the answer at iteration c must be exactly the sum of every
 * worker's pushes of iterations 0..c, its own clock's included (a pushpull not summed could miss
 * the others' of its clock). With a victim (dedicated servers), that worker is killed at
 * iteration 3: the others' pushpulls go on without it, its pushes of iterations 0-2 counted. */
#define SUMMED_ITERS 12
static int summed_run(int rank, int n, dml_comm *c, const scenario *sc) {
  uint64_t sizes[2] = {4 * 65536, 1000}, off[2];
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.colocated = sc->summed == 1;
  cfg.num_servers = sc->servers;
  cfg.sum_only = 1;
  cfg.summed_pushpull = 1;
  cfg.dense_sizes = sizes;
  cfg.num_dense = 2;
  dml_err err;
  RK_OK(dml_ps_dense_layout(&cfg, n, off, NULL, &err));
  int first = cfg.colocated ? 0 : sc->servers, W = n - first - (sc->summed == 3);
  if (sc->summed == 3 && rank == n - 1) {
    /* a pushpull of the small tensor at a clock nobody reaches, sent twice: dropped, and the
     * group it opened let go, so the others' groups do not wait for it */
    float vals[1000];
    for (int k = 0; k < 1000; k++) vals[k] = 1000.0f;
    dml__ps_msg m;
    memset(&m, 0, sizeof m);
    m.command = DML__PS_PUSHPULL;
    m.flags = DML__PS_FLAG_DENSE;
    m.sender = (uint32_t)rank;
    m.timestamp = 1;
    m.clock = 100;
    m.key_lo = off[1];
    m.key_hi = off[1] + 999;
    m.nvals = 1000;
    m.value_type = DML__PS_VT_F32;
    size_t fb = dml__ps_frame_bytes(0, 1000);
    unsigned char *frame = malloc(fb);
    R_ASSERT(frame != NULL);
    dml__ps_encode(frame, &m, NULL, vals);
    for (int k = 0; k < 2; k++) RK_OK(dml_comm_send(c, 0, DML__PS_TAG_REQ, frame, fb));
    free(frame);
    struct timespec ts = {1, 0}; /* connected while the server looks at it */
    nanosleep(&ts, NULL);
    return 0;
  }
  dml_ps_server *srv = NULL;
  if (dml_ps_is_server(&cfg, rank)) RK_OK(dml_ps_server_create(&srv, c, &cfg, &err));
  int rc = 0;
  if (!cfg.colocated && srv) {
    rc = dml_ps_server_run(srv, &err);
    if (rc) fprintf(stderr, "rank %d: server: %s\n", rank, err.msg);
  } else {
    dml_ps *ps;
    RK_OK(dml_ps_create(&ps, c, &cfg, &err));
    if (srv) RK_OK(dml_ps_serve(ps, srv, &err));
    float *g = malloc(sizes[0] * sizeof(float)), *out = malloc(sizes[0] * sizeof(float));
    R_ASSERT(g && out);
    int w = rank - first;
    for (int it = 0; it < SUMMED_ITERS && rc == 0; it++) {
      if (sc->victim && rank == sc->victim && it == 3) raise(SIGKILL);
      for (int t = 0; t < 2 && rc == 0; t++) {
        for (uint64_t k = 0; k < sizes[t]; k++) g[k] = (float)(w + 1 + it + (int)(k % 7));
        uint64_t ts;
        rc = dml_ps_pushpull_dense(ps, off[t], g, out, sizes[t], &ts);
        if (rc == 0) rc = dml_ps_wait(ps, ts);
        if (rc) {
          fprintf(stderr, "rank %d iteration %d: %s\n", rank, it, dml_ps_errmsg(ps));
          break;
        }
        for (uint64_t k = 0; k < sizes[t]; k++) {
          double want = 0;
          for (int i = 0; i <= it; i++)
            for (int v = 0; v < W; v++)
              if (!sc->victim || v + first != sc->victim || i < 3) want += v + 1 + i + (int)(k % 7);
          if (out[k] != (float)want) {
            fprintf(stderr, "rank %d iteration %d tensor %d key %llu: %g, want %g\n", rank, it, t,
                    (unsigned long long)k, (double)out[k], want);
            rc = 1;
            break;
          }
        }
      }
      if (rc == 0 && (rc = dml_ps_clock(ps)) != 0)
        fprintf(stderr, "rank %d: clock: %s\n", rank, dml_ps_errmsg(ps));
    }
    if (rc == 0 && (rc = dml_ps_finish(ps)) != 0)
      fprintf(stderr, "rank %d: finish: %s\n", rank, dml_ps_errmsg(ps));
    dml_ps_free(ps);
    free(g);
    free(out);
  }
  if (srv && rc == 0) {
    dml_ps_server_stats st;
    dml_ps_server_stats_get(srv, &st);
    if (st.summed == 0) {
      fprintf(stderr, "rank %d: no summed pushpulls\n", rank);
      rc = 1;
    }
    if (sc->summed == 1 && st.direct == 0) {
      fprintf(stderr, "rank %d: no direct requests\n", rank);
      rc = 1;
    }
    if (st.dropped_peers != (sc->summed == 3)) {
      fprintf(stderr, "rank %d: %d peers dropped\n", rank, st.dropped_peers);
      rc = 1;
    }
  }
  dml_ps_server_free(srv);
  return rc ? 1 : 0;
}

static int rank_main(int rank, int n, int port, void *arg) {
  const scenario *sc = arg;
  dml_comm *c;
  if (sc->direct_bad && rank >= sc->hostile_from && rank % 3 == 2) setenv("DISTML_CMA", "0", 1);
  if (sc->direct_off) setenv("DISTML_PS_DIRECT", "0", 1);
  RK_OK(th_join(&c, rank, n, port, sc->slow_leave || sc->fenced ? 1500 : 20000));
  if (sc->fenced) {
    int rc = fenced_run(rank, c, sc->fenced == 2);
    dml_comm_free(c);
    return rc;
  }
  dml_err err;
  if (sc->one_server) {
    int rc = one_server_only(rank, c, sc);
    dml_comm_free(c);
    return rc;
  }
  if (sc->summed) {
    int rc = summed_run(rank, n, c, sc);
    dml_comm_free(c);
    return rc;
  }
  if (sc->lost_shard) {
    int rc = lost_shard(rank, c, sc);
    dml_comm_free(c);
    return rc;
  }
  if (sc->mirrored) {
    int rc = mirrored_run(rank, c, sc);
    dml_comm_free(c);
    return rc ? 1 : 0;
  }
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.num_servers = sc->servers;
  cfg.colocated = sc->colocated;
  cfg.staleness = sc->staleness;
  cfg.sum_only = !sc->sgd;
  cfg.handler_threads = sc->handlers;
  static const uint64_t sizes[2] = {1200000, 200000};
  if (sc->layout) {
    cfg.dense_sizes = sizes;
    cfg.num_dense = 2;
  }
  if (sc->sgd) {
    dml_optim_config_init(&cfg.optim, DML_OPT_SGD);
    cfg.optim.lr = 1.0f;
  }
  int W = dml_ps_num_workers(&cfg, n);
  if (sc->hostile_from) W = sc->hostile_from - sc->servers;
  int rc = 0;
  dml_ps_server *srv = NULL;
  if (dml_ps_is_server(&cfg, rank)) {
    RK_OK(dml_ps_server_create(&srv, c, &cfg, &err));
    if (!cfg.colocated) {
      rc = dml_ps_server_run(srv, &err);
      if (rc) fprintf(stderr, "rank %d: server: %s\n", rank, err.msg);
      if (rc == 0) rc = check_server(rank, srv, sc);
      dml_ps_server_free(srv);
      dml_comm_free(c);
      return rc;
    }
    if (!sc->serve) RK_OK(dml_ps_server_start(srv, &err));
  }
  if (sc->dup) {
    rc = dup_push(rank, c);
    dml_comm_free(c);
    return rc;
  }
  if (sc->hostile_from && rank >= sc->hostile_from) {
    rc = sc->body_hostile ? hostile_body(rank, c)
         : sc->direct_bad ? hostile_direct(rank, c)
                          : hostile(rank, c);
    dml_comm_free(c);
    return rc;
  }
  if (sc->raw_hostile && rank == (cfg.colocated ? 0 : cfg.num_servers)) raw_hostile(c, port);
  dml_ps *ps;
  RK_OK(dml_ps_create(&ps, c, &cfg, &err));
  if (sc->serve) RK_OK(dml_ps_serve(ps, srv, &err));
  /* registered layout: 1.4M keys, an even share 700,000 keys (86 chunks of 8192): tensor 0 (1.2M
   * keys, 147 chunks) is cut into runs of 74 and 73 chunks (606,208 and 593,792 keys), tensor 1
   * stays whole; greedy by bytes: 606,208 -> 0, 593,792 -> 1, tensor 1 -> 1 */
  uint64_t DLO = 1000, DN = 200000;
  if (sc->layout) {
    uint64_t off[2], bytes[2];
    RK_OK(dml_ps_dense_layout(&cfg, n, off, bytes, &err));
    R_ASSERT(off[0] == 0 && off[1] == 147 * 8192); /* 1.2M keys take 147 chunks */
    R_ASSERT(bytes[0] == 4 * 606208 && bytes[1] == 4 * (593792 + 200000));
    DLO = off[0];
    DN = cfg.dense_sizes[0];
  }
  size_t nk = sc->dense ? DN : NKEYS;
  uint64_t keys[NKEYS];
  float *ones = malloc(DN * sizeof(float)), *got = malloc(DN * sizeof(float));
  R_ASSERT(ones && got);
  for (int i = 0; i < NKEYS; i++) keys[i] = (uint64_t)i * 1000003u + 7;
  for (uint64_t i = 0; i < DN; i++) ones[i] = 1.0f;
  int iters = ITERS + (sc->extra && rank == n - 1);
  for (int it = 0; it < iters && rc == 0 && sc->pushpull; it++) {
    uint64_t ts;
    if (sc->dense)
      RK_OK(dml_ps_pushpull_dense(ps, DLO, ones, got, DN, &ts));
    else
      RK_OK(dml_ps_pushpull(ps, keys, ones, got, NKEYS, &ts));
    RK_OK(dml_ps_wait(ps, ts));
    double ck = (double)dml_ps_clock_value(ps);
    /* sync aggregation: this push is held for its clock's mean, the read has every clock's before */
    double lo = sc->sgd ? -ck : W * ck + 1, hi = sc->sgd ? -ck : W * ck + 2 * W - 1;
    for (size_t i = 0; i < nk; i++)
      if (got[i] < lo || got[i] > hi) {
        fprintf(stderr, "rank %d clock %g key %zu: pushpull read %g, want [%g, %g]\n", rank, ck, i,
                (double)got[i], lo, hi);
        rc = 1;
        break;
      }
    RK_OK(dml_ps_clock(ps));
  }
  for (int it = 0; it < ITERS && rc == 0 && !sc->pushpull; it++) {
    if (sc->victim && rank == sc->victim && it == 3) raise(SIGKILL);
    uint64_t ts, ts2;
    if (sc->dense)
      RK_OK(dml_ps_pull_dense(ps, DLO, got, DN, &ts));
    else
      RK_OK(dml_ps_pull(ps, keys, got, NKEYS, &ts));
    RK_OK(dml_ps_wait(ps, ts));
    uint64_t c0 = dml_ps_clock_value(ps);
    for (size_t i = 0; i < nk; i++) {
      /* A pull at clock c sees every push of clocks < c - s from all workers (and all of its own),
       * and a faster worker is at most s + 1 iterations ahead of this one. */
      double S_ = sc->staleness > 0 ? sc->staleness : 0;
      double lo = (double)W * ((double)c0 - S_), hi = (double)W * (double)c0 + (W - 1) * (S_ + 1);
      if (lo < (double)c0) lo = (double)c0;
      if (sc->staleness < 0 || sc->victim) { /* only this worker's own pushes are sure to be in */
        lo = (double)c0;
        hi = 1e9;
      }
      if (sc->sgd) lo = hi = -(double)c0;
      if (got[i] < lo || got[i] > hi) {
        fprintf(stderr, "rank %d clock %llu key %zu: read %g, want [%g, %g]\n", rank,
                (unsigned long long)c0, i, (double)got[i], lo, hi);
        rc = 1;
        break;
      }
    }
    if (sc->dense)
      RK_OK(dml_ps_push_dense(ps, DLO, ones, DN, &ts2));
    else
      RK_OK(dml_ps_push(ps, keys, ones, NKEYS, &ts2));
    RK_OK(dml_ps_wait(ps, ts2));
    RK_OK(dml_ps_clock(ps));
  }
  if (sc->slow_leave && rank == n - 1) usleep(4000000);
  /* the final model: every surviving worker's pushes are in */
  uint64_t ts;
  int first = cfg.colocated ? 0 : cfg.num_servers;
  if (rank == first && rc == 0) {
    R_ASSERT(!sc->dense || dml_ps_pull_dense(ps, DLO, got, DN, &ts) == 0);
    if (!sc->dense) RK_OK(dml_ps_pull_final(ps, keys, got, NKEYS, &ts));
    RK_OK(dml_ps_wait(ps, ts));
    double want = (double)W * ITERS;
    if (sc->victim) want = (double)(W - 1) * ITERS + 3;
    if (sc->sgd) want = -(double)ITERS - (sc->extra ? 1 : 0);
    if (got[0] != want) {
      fprintf(stderr, "rank %d: final value %g, want %g\n", rank, (double)got[0], want);
      rc = 1;
    }
  }
  free(ones);
  free(got);
  if (sc->serve && rc == 0 && dml_ps_finish(ps) != 0) {
    fprintf(stderr, "rank %d: finish: %s\n", rank, dml_ps_errmsg(ps));
    rc = 1;
  }
  dml_ps_free(ps);
  if (srv) {
    int jrc = dml_ps_server_join(srv, &err);
    if (jrc) fprintf(stderr, "rank %d: server thread: %s\n", rank, err.msg);
    if (rc == 0) rc = jrc ? jrc : check_server(rank, srv, sc);
    dml_ps_server_free(srv);
  }
  dml_comm_free(c);
  return rc ? 1 : 0;
}

static void run(const char *what, int n, scenario sc) {
  int port = th_free_port();
  pid_t pid[16];
  for (int r = 0; r < n; r++) pid[r] = th_spawn(r, n, port, rank_main, &sc, NULL);
  int bad = 0;
  for (int r = 0; r < n; r++) {
    int rc = th_wait_pid(pid[r], 120);
    int want = r == sc.victim && sc.victim ? 128 + SIGKILL : 0;
    if (rc != want) {
      fprintf(stderr, "%s: rank %d exited with %d (want %d)\n", what, r, rc, want);
      bad = 1;
    }
  }
  if (bad) T_FAIL("%s failed", what);
  printf("ok: %s\n", what);
}

int main(void) {
  run("BSP 1 server 2 workers: values in bounds", 3, (scenario){.servers = 1});
  run("BSP 2 servers 2 workers: values in bounds", 4, (scenario){.servers = 2});
  run("BSP colocated 3 ranks: values in bounds", 3, (scenario){.colocated = 1});
  run("dense API, BSP 2 servers 2 workers: values in bounds", 4,
      (scenario){.servers = 2, .dense = 1});
  run("dense API, colocated 2 ranks: values in bounds", 2, (scenario){.colocated = 1, .dense = 1});
  run("dense API, registered tensors split into <= 4 MB parts over 2 servers", 4,
      (scenario){.servers = 2, .dense = 1, .layout = 1});
  run("BSP, each worker's requests to one server of 2: its clock still reaches the other", 4,
      (scenario){.servers = 2, .one_server = 1});
  run("BSP colocated, workers serving, each requesting its own shard only: clocks reach the other",
      2, (scenario){.colocated = 1, .serve = 1, .one_server = 1});
  run("BSP sync aggregation, server SGD: exact values", 4, (scenario){.servers = 1, .sgd = 1});
  run("BSP sync aggregation colocated: exact values", 3, (scenario){.colocated = 1, .sgd = 1});
  run("dense BSP sync aggregation, server SGD, 2 servers: exact values", 4,
      (scenario){.servers = 2, .sgd = 1, .dense = 1});
  /* one server: 200k keys from key 1000 go as frames cut inside the run (at chunk boundaries, or
   * a chunk's pushes would count twice in the mean) */
  run("dense BSP sync aggregation, server SGD, 1 server: exact values", 3,
      (scenario){.servers = 1, .sgd = 1, .dense = 1});
  run("SSP:2 1 server 3 workers: bound held", 4, (scenario){.servers = 1, .staleness = 2});
  run("ASP 1 server 2 workers", 3, (scenario){.servers = 1, .staleness = DML_PS_ASP});
  run("resent push applied once", 2, (scenario){.servers = 1, .dup = 1});
  run("a worker leaving 4 s after the others, 1.5 s timeout: the final pull waits for it", 3,
      (scenario){.servers = 1, .slow_leave = 1});
  run("hostile ranks dropped, job goes on", 6, (scenario){.servers = 1, .hostile_from = 3});
  setenv("DISTML_PS_BODY_WAIT_MS", "1500", 1); /* the silent one stays 2.6 s */
  run("dense pushes announcing a body and sending none, or too little: dropped, job goes on", 5,
      (scenario){.servers = 1, .hostile_from = 3, .body_hostile = 1});
  unsetenv("DISTML_PS_BODY_WAIT_MS");
  run("direct requests with unmapped addresses, or from a rank out of reach: dropped, job goes on",
      6, (scenario){.servers = 1, .hostile_from = 3, .direct_bad = 1});
  run("colocated 2 ranks, a direct request given up after a timeout: nothing written after", 2,
      (scenario){.fenced = 1});
  run("colocated 2 ranks, a direct pull held (BSP) and given up: nothing written after", 2,
      (scenario){.fenced = 2});
  run("summed pushpulls, colocated 3 ranks: each answer holds every push of its clock", 3,
      (scenario){.summed = 1});
  run("summed pushpulls, 2 servers 3 workers, a worker killed: the others go on without it", 5,
      (scenario){.summed = 2, .servers = 2, .victim = 4});
  run("summed pushpulls, a rank pushpulling a range twice at a clock: dropped, the others go on", 4,
      (scenario){.summed = 3, .servers = 1});
  run("raw TCP garbage and huge lengths on the server's ports: job goes on", 3,
      (scenario){.servers = 1, .raw_hostile = 1});
  run("worker killed under ASP: run completes", 4,
      (scenario){.servers = 1, .staleness = DML_PS_ASP, .victim = 3});
  run("worker killed under BSP: the others stop waiting", 4, (scenario){.servers = 1, .victim = 3});
  run("BSP 2 servers x 3 handler threads: values in bounds", 4,
      (scenario){.servers = 2, .handlers = 3});
  run("BSP colocated 3 ranks, each worker serving its shard: values in bounds", 3,
      (scenario){.colocated = 1, .serve = 1});
  run("dense API, colocated 2 ranks, each worker serving its shard: values in bounds", 2,
      (scenario){.colocated = 1, .dense = 1, .serve = 1});
  run("dense API, colocated 2 ranks, registered tensors, workers serving: values in bounds", 2,
      (scenario){.colocated = 1, .dense = 1, .layout = 1, .serve = 1});
  run("BSP sync aggregation colocated, workers serving: exact values", 3,
      (scenario){.colocated = 1, .sgd = 1, .serve = 1});
  run("SSP:1 colocated 3 ranks, workers serving: bound held", 3,
      (scenario){.colocated = 1, .staleness = 1, .serve = 1});
  run("ASP colocated 3 ranks, workers serving", 3,
      (scenario){.colocated = 1, .staleness = DML_PS_ASP, .serve = 1});
  run("BSP sync aggregation, server SGD, pushpull: exact values", 3,
      (scenario){.servers = 1, .sgd = 1, .pushpull = 1});
  run("BSP sync aggregation, pushpull, one worker a clock further: the final pull has its step", 3,
      (scenario){.servers = 1, .sgd = 1, .pushpull = 1, .extra = 1});
  run("dense BSP sync aggregation, server SGD, pushpull, 2 servers: exact values", 4,
      (scenario){.servers = 2, .sgd = 1, .dense = 1, .pushpull = 1});
  run("dense BSP sync aggregation colocated, workers serving, pushpull: exact values", 3,
      (scenario){.colocated = 1, .sgd = 1, .dense = 1, .pushpull = 1, .serve = 1});
  run("dense pushpull, BSP 2 servers 2 workers: values in bounds", 4,
      (scenario){.servers = 2, .dense = 1, .pushpull = 1});
  run("dense pushpull, BSP 2 servers 2 workers, no direct copies (bodies): values in bounds", 4,
      (scenario){.servers = 2, .dense = 1, .pushpull = 1, .direct_off = 1});
  run("dense BSP sync aggregation, server SGD, pushpull, 2 servers, bodies: exact values", 4,
      (scenario){.servers = 2, .dense = 1, .sgd = 1, .pushpull = 1, .direct_off = 1});
  run("dense API, colocated 2 ranks, workers serving, bodies: values in bounds", 2,
      (scenario){.colocated = 1, .dense = 1, .serve = 1, .direct_off = 1});
  run("dense pushpull, colocated 3 ranks, workers serving: values in bounds", 3,
      (scenario){.colocated = 1, .dense = 1, .pushpull = 1, .serve = 1});
  run("mirrored tensor, colocated 2 ranks serving, sum-only pushpull: exactly W(c+1)", 2,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1});
  run("mirrored and sharded tensors in one pushpull, 3 ranks serving", 3,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1, .wide = 1});
  run("mirrored tensor, 3 ranks serving, pull then push: exactly Wc; a second push refused", 3,
      (scenario){.mirrored = 1, .serve = 1});
  run("mirrored tensor, 2 ranks, server threads, SGD pushpull: exactly -(c+1)", 2,
      (scenario){.mirrored = 1, .sgd = 1, .pushpull = 1});
  run("mirrored tensor, 3 ranks serving, SGD pull then push: exactly -c", 3,
      (scenario){.mirrored = 1, .sgd = 1, .serve = 1});
  run("mirrored tensor, 3 ranks serving, values whose sums round: replicas equal bit for bit", 3,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1, .odd = 1});
  run("mirrored tensor, 3 ranks: one pulling mirrored keys from another's shard is dropped", 3,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1, .hostile_from = 2});
  run("mirrored tensor, 3 ranks: one pushing a mirrored chunk twice in a clock is dropped", 3,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1, .hostile_from = 2, .hostile_push = 1});
  run("mirrored tensor of 80 KB (bodies), 2 ranks serving, pushpull: exactly W(c+1)", 2,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1, .big = 1});
  run("two mirrored tensors pushed in opposite orders, 3 ranks serving: no wait on each other", 3,
      (scenario){.mirrored = 1, .serve = 1, .swap = 1});
  run("mirrored pushpull, one rank a clock further while rank 0 is in a final pull", 3,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1, .extra = 1});
  run("mirrored pushpull, one rank a clock further while rank 0 is in a sparse final pull", 2,
      (scenario){.mirrored = 1, .serve = 1, .pushpull = 1, .extra = 1, .sparse_final = 1});
  run("colocated 3 ranks, workers serving, one killed: the others fail at once naming it", 3,
      (scenario){.colocated = 1, .serve = 1, .victim = 2, .lost_shard = 1});
  run("dense API, colocated 2 ranks x 2 handler threads", 2,
      (scenario){.colocated = 1, .dense = 1, .handlers = 2});
  run("dense BSP sync aggregation, 2 servers x 2 handler threads: exact values", 4,
      (scenario){.servers = 2, .sgd = 1, .dense = 1, .handlers = 2});
  run("worker killed under BSP, 2 handler threads: the others stop waiting", 4,
      (scenario){.servers = 1, .victim = 3, .handlers = 2});
  return 0;
}
