/* Unit tests of the comm layer's internals (links only comm and core): the frame and handshake
 * codecs, and a forged peer -- this process joins a real 2-rank job as rank 1 by speaking the
 * protocol by hand, then sends a bad frame on the data link -- which rank 0 must report as a
 * protocol error naming rank 1, without crashing or allocating the announced length. Also
 * out-of-memory injection on a world of one. */
#include "comm/internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static void test_codecs(void) {
  uint8_t b[DML__FRAME_HDR + 64];
  dml__frame f;
  char why[200];
  dml__frame_encode(b, DML__F_DATA, 77, 5, 1000);
  T_EQ_INT(dml__frame_decode(b, 10, 1 << 20, &f, why, sizeof(why)), DML_EAGAIN);
  T_OK(dml__frame_decode(b, DML__FRAME_HDR, 1 << 20, &f, why, sizeof(why)));
  T_EQ_INT(f.kind, DML__F_DATA);
  T_EQ_INT(f.tag, 77);
  T_EQ_INT(f.seq, 5);
  T_EQ_INT(f.length, 1000);
  T_EQ_INT(dml__frame_decode(b, DML__FRAME_HDR, 999, &f, why, sizeof(why)), DML_EPROTO);
  T_CONTAINS(why, "exceeds the maximum 999");
  dml__frame_encode(b, DML__F_AUTH, 0, 0, DML__CTRL_MAX + 1);
  T_EQ_INT(dml__frame_decode(b, DML__FRAME_HDR, 1ull << 40, &f, why, sizeof(why)), DML_EPROTO);
  T_CONTAINS(why, "exceeds the maximum 4096");
  dml__frame_encode(b, DML__F_DATA, 0, 0, 1);
  b[0] ^= 1;
  T_EQ_INT(dml__frame_decode(b, DML__FRAME_HDR, 100, &f, why, sizeof(why)), DML_EPROTO);
  T_CONTAINS(why, "bad frame magic");
  b[0] ^= 1;
  b[4] = 2;
  T_EQ_INT(dml__frame_decode(b, DML__FRAME_HDR, 100, &f, why, sizeof(why)), DML_EPROTO);
  T_CONTAINS(why, "version 2");
  b[4] = 1;
  b[5] = 99;
  T_EQ_INT(dml__frame_decode(b, DML__FRAME_HDR, 100, &f, why, sizeof(why)), DML_EPROTO);
  T_CONTAINS(why, "kind 99");
  b[5] = 1;
  b[6] = 1;
  T_EQ_INT(dml__frame_decode(b, DML__FRAME_HDR, 100, &f, why, sizeof(why)), DML_EPROTO);
  T_CONTAINS(why, "flags");

  dml__hello h = {.rank = 3, .world_size = 8, .job = 0xabcdef0123456789ull}, h2;
  size_t n = dml__hello_encode(b, &h);
  T_OK(dml__hello_decode(b, n, &h2, why, sizeof(why)));
  T_ASSERT(h2.rank == 3 && h2.world_size == 8 && h2.job == h.job);
  T_EQ_INT(dml__hello_decode(b, n - 1, &h2, why, sizeof(why)), DML_EPROTO);
  {
    uint8_t cb[16];
    uint64_t ad, ln;
    T_EQ_INT((int)dml__cma_encode(cb, 0x7f0012345000ull, 4096), 16);
    T_OK(dml__cma_decode(cb, 16, 1 << 20, &ad, &ln, why, sizeof(why)));
    T_ASSERT(ad == 0x7f0012345000ull && ln == 4096);
    T_EQ_INT(dml__cma_decode(cb, 15, 1 << 20, &ad, &ln, why, sizeof(why)), DML_EPROTO);
    T_EQ_INT(dml__cma_decode(cb, 16, 1024, &ad, &ln, why, sizeof(why)), DML_EPROTO);
    T_CONTAINS(why, "exceeds the maximum");
    dml__cma_encode(cb, UINT64_MAX - 10, 4096); /* wraps around the address space */
    T_EQ_INT(dml__cma_decode(cb, 16, 1 << 20, &ad, &ln, why, sizeof(why)), DML_EPROTO);
    dml__cma_encode(cb, 0, 4096);
    T_EQ_INT(dml__cma_decode(cb, 16, 1 << 20, &ad, &ln, why, sizeof(why)), DML_EPROTO);
  }
  h.rank = 8;
  n = dml__hello_encode(b, &h);
  T_EQ_INT(dml__hello_decode(b, n, &h2, why, sizeof(why)), DML_EPROTO);

  const char *key;
  size_t kl, vn;
  const uint8_t *val;
  n = dml__kv_encode(b, "addr/3", "4 127.0.0.1 5", 13);
  T_OK(dml__kv_decode(b, n, 1, &key, &kl, &val, &vn, why, sizeof(why)));
  T_ASSERT(kl == 6 && memcmp(key, "addr/3", 6) == 0 && vn == 13 &&
           memcmp(val, "4 127.0.0.1 5", 13) == 0);
  T_EQ_INT(dml__kv_decode(b, n, 0, &key, &kl, &val, &vn, why, sizeof(why)),
           DML_EPROTO); /* GET + junk */
  b[0] = 200;           /* key length beyond the message */
  T_EQ_INT(dml__kv_decode(b, n, 1, &key, &kl, &val, &vn, why, sizeof(why)), DML_EPROTO);
  T_CONTAINS(why, "beyond the message");

  /* MACs: same inputs agree, another token differs. */
  uint8_t na[DML__NONCE], nc[DML__NONCE], m1[DML__MAC], m2[DML__MAC];
  dml__random_bytes(na, sizeof(na));
  dml__random_bytes(nc, sizeof(nc));
  dml__auth_mac(m1, "tok", "distml-connector", na, nc);
  dml__auth_mac(m2, "tok", "distml-connector", na, nc);
  T_ASSERT(dml__mac_equal(m1, m2));
  dml__auth_mac(m2, "tok2", "distml-connector", na, nc);
  T_ASSERT(!dml__mac_equal(m1, m2));
  dml__auth_mac(m2, "tok", "distml-acceptor", na, nc);
  T_ASSERT(!dml__mac_equal(m1, m2));
}

static int free_port(void) {
  int fd, port;
  dml_err e = {0};
  T_OK(dml__net_listen("127.0.0.1", 0, &fd, &port, &e));
  close(fd);
  return port;
}

/* Rank 0 of the forged job: expects its receive from rank 1 to fail with a protocol error. */
static int real_rank0(int port, const char *expect, uint64_t max_bytes) {
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  o.rank = 0;
  o.world_size = 2;
  o.master_port = port;
  o.timeout_ms = 10000;
  o.max_message_bytes = max_bytes;
  dml_comm *c;
  dml_err err = {0};
  if (dml_comm_init(&c, &o, &err)) {
    fprintf(stderr, "rank 0 init: %s\n", err.msg);
    return 1;
  }
  uint8_t buf[16];
  int rc = dml_comm_recv(c, 1, 5, buf, sizeof(buf));
  fprintf(stderr, "rank 0 saw: %s\n", dml_comm_errmsg(c));
  int ok = rc == DML_EPROTO && strstr(dml_comm_errmsg(c), "rank 1 (127.0.0.1:") != NULL &&
           strstr(dml_comm_errmsg(c), expect) != NULL;
  /* Sticky. */
  ok = ok && dml_comm_send(c, 1, 5, buf, 1) == DML_EPROTO;
  dml_comm_free(c);
  return ok ? 0 : 1;
}

/* This process as rank 1, by hand: join through the store, connect to rank 0, then send bad. */
/* A cookie this forged rank publishes so that rank 0 finds it can read our memory (CMA). */
static uint64_t g_cookie = 0x5eedf00dcafe1234ull;

static void boot_id(char *out, size_t len) {
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  T_ASSERT(f != NULL && fgets(out, (int)len, f) != NULL);
  out[strcspn(out, "\n")] = 0;
  fclose(f);
}

static void forged_rank1(int port, const uint8_t *bad, size_t bad_len, int cma) {
  dml__comm_cfg cfg = {.rank = 1,
                       .world_size = 2,
                       .master_addr = "127.0.0.1",
                       .master_port = port,
                       .bind_addr = "127.0.0.1",
                       .token = NULL,
                       .timeout_ms = 10000,
                       .max_message_bytes = 1 << 30};
  dml_err e = {0};
  dml__store *st;
  T_OK(dml__store_connect(&st, &cfg, &e));
  if (cma) {
    char boot[64], av[256];
    boot_id(boot, sizeof(boot));
    snprintf(av, sizeof(av), "2 127.0.0.1 9 %s %ld %llx %llx", boot, (long)getpid(),
             (unsigned long long)(uintptr_t)&g_cookie, (unsigned long long)g_cookie);
    T_OK(dml__store_set(st, "addr/1", av, strlen(av), &e));
    T_OK(dml__store_set(st, "cma/1", "0", 1, &e));
  } else {
    T_OK(dml__store_set(st, "addr/1", "2 127.0.0.1 9", 13, &e));
  }
  uint64_t deadline = dml_now_ns() + 10000000000ull;
  char *job, *addr0;
  size_t n;
  T_OK(dml__store_get(st, "job", deadline, &job, &n, &e));
  T_OK(dml__store_get(st, "addr/0", deadline, &addr0, &n, &e));
  int w, p0;
  char host[64];
  T_ASSERT(sscanf(addr0, "%d %63s %d", &w, host, &p0) == 3 && w == 2);
  int fd;
  T_OK(dml__net_connect(host, p0, deadline, &fd, &e));
  T_OK(dml__hs_connect(fd, NULL, "rank 0", deadline, &e));
  dml__hello h = {.rank = 1, .world_size = 2, .job = strtoull(job, NULL, 16)};
  uint8_t pay[32];
  size_t pn = dml__hello_encode(pay, &h);
  T_OK(dml__net_send_frame(fd, DML__F_HELLO, pay, pn, deadline, &e));
  T_OK(dml__net_write_all(fd, bad, bad_len, deadline, &e));
  dml__free(job);
  dml__free(addr0);
  dml__store_close(st);
  /* Keep the link open until rank 0 has judged: it closes its side. */
  char sink[64];
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  while (recv(fd, sink, sizeof(sink), 0) > 0) {
  }
  close(fd);
}

static void run_forged_as(const char *what, const uint8_t *bad, size_t bad_len, const char *expect,
                          uint64_t max, int cma) {
  int port = free_port();
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  T_ASSERT(pid >= 0);
  if (pid == 0) exit(real_rank0(port, expect, max));
  forged_rank1(port, bad, bad_len, cma);
  int st;
  T_ASSERT(waitpid(pid, &st, 0) == pid);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    T_FAIL("forged peer (%s): rank 0 did not report it as expected", what);
  printf("forged peer, %s: ok\n", what);
}

static void run_forged(const char *what, const uint8_t *bad, size_t bad_len, const char *expect,
                       uint64_t max) {
  run_forged_as(what, bad, bad_len, expect, max, 0);
}

static void test_forged_peer(void) {
  uint8_t b[DML__FRAME_HDR + 2048];
  dml__frame_encode(b, DML__F_DATA, 5, 0, 1ull << 40);
  run_forged("1 TiB length", b, DML__FRAME_HDR, "exceeds the maximum", 0);
  memcpy(b, "NOT A DISTML FRAME AT ALL", 25);
  run_forged("garbage", b, 25, "bad frame magic", 0);
  dml__frame_encode(b, DML__F_DATA, 5, 7, 16);
  run_forged("sequence gap", b, DML__FRAME_HDR + 16, "frame sequence 7, expected 0", 0);
  dml__frame_encode(b, DML__F_DATA, 5, 0, 2048);
  memset(b + DML__FRAME_HDR, 1, 2048);
  run_forged("above max_message_bytes", b, DML__FRAME_HDR + 2048, "exceeds the maximum 1024", 1024);
  dml__frame_encode(b, DML__F_SET, 0, 0, 4);
  run_forged("control frame on a data link", b, DML__FRAME_HDR + 4, "unexpected frame kind 7", 0);
  /* CMA (copying out of the sender's memory): only from a peer that proved it can be read, only
   * from addresses that exist, never more than the maximum. */
  dml__frame_encode(b, DML__F_CMA, 5, 0, 16);
  dml__cma_encode(b + DML__FRAME_HDR, (uint64_t)(uintptr_t)&g_cookie, 16);
  run_forged("CMA from a peer we cannot read", b, DML__FRAME_HDR + 16, "cannot read", 0);
  dml__cma_encode(b + DML__FRAME_HDR, 4096, 16);
  run_forged_as("CMA at an unmapped address", b, DML__FRAME_HDR + 16, "could not copy", 0, 1);
  dml__cma_encode(b + DML__FRAME_HDR, (uint64_t)(uintptr_t)&g_cookie, 1ull << 40);
  run_forged_as("CMA of 1 TiB", b, DML__FRAME_HDR + 16, "exceeds the maximum", 0, 1);
  dml__frame_encode(b, DML__F_CMA_ACK, 0, 0, 0);
  run_forged_as("CMA ack for nothing", b, DML__FRAME_HDR, "ack for no message", 0, 1);
}

/* Out-of-memory injection: allocation number fail_at fails. */
static long g_allocs, g_fail_at = -1;
static void *oom_malloc(size_t n) {
  return ++g_allocs == g_fail_at ? NULL : malloc(n);
}
static void *oom_realloc(void *p, size_t n) {
  return ++g_allocs == g_fail_at ? NULL : realloc(p, n);
}
static void *oom_calloc(size_t c, size_t n) {
  return ++g_allocs == g_fail_at ? NULL : calloc(c, n);
}

static int world1_roundtrip(void) {
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  o.rank = 0;
  o.world_size = 1;
  dml_comm *c;
  dml_err err = {0};
  int rc = dml_comm_init(&c, &o, &err);
  if (rc) return rc;
  char in[8] = {0};
  void *ab = NULL;
  size_t an;
  rc = dml_comm_send(c, 0, 1, "abcdefg", 8);
  if (rc == 0) rc = dml_comm_recv(c, 0, 1, in, 8);
  if (rc == 0 && strcmp(in, "abcdefg") != 0) rc = DML_EIO;
  if (rc == 0) rc = dml_comm_send(c, 0, 2, "xy", 3);
  if (rc == 0) rc = dml_comm_recv_alloc(c, 0, 2, &ab, &an, NULL);
  if (rc == 0 && (an != 3 || strcmp(ab, "xy") != 0)) rc = DML_EIO;
  dml_comm_buf_free(ab);
  dml_comm_free(c);
  return rc;
}

static void test_oom(void) {
  T_OK(dml_replace_allocator(oom_malloc, oom_realloc, oom_calloc, free));
  g_fail_at = -1;
  g_allocs = 0;
  T_OK(world1_roundtrip());
  long total = g_allocs;
  T_ASSERT(total > 3);
  int failures = 0;
  for (long k = 1; k <= total; k++) {
    g_allocs = 0;
    g_fail_at = k;
    int rc = world1_roundtrip();
    if (rc != 0) {
      T_EQ_INT(rc, DML_ENOMEM);
      failures++;
    }
  }
  T_ASSERT(failures > 0);
  g_fail_at = -1;
  printf("out of memory at each of %ld allocations: ENOMEM or success, no crash\n", total);
}

/* The coordinator port is taken: rank 0 says so at once instead of waiting for the timeout. */
static void test_port_in_use(void) {
  int fd, port;
  dml_err e = {0};
  T_OK(dml__net_listen("127.0.0.1", 0, &fd, &port, &e));
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  o.rank = 0;
  o.world_size = 2;
  o.master_port = port;
  o.timeout_ms = 30000;
  dml_comm *c;
  T_EQ_INT(dml_comm_init(&c, &o, &e), DML_EEXIST);
  T_ASSERT(c == NULL);
  T_CONTAINS(e.msg, "cannot serve as the coordinator");
  T_CONTAINS(e.msg, "in use");
  close(fd);
  printf("coordinator port in use: ok\n");
}

/* Hostile clients on a rank's own listening port (found through the store, as an attacker on
 * the coordinator port could): dropped with a log line while the real rank joins. */
static int peer_rank_main(int rank, int port) {
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  o.rank = rank;
  o.world_size = 2;
  o.master_port = port;
  o.timeout_ms = 20000;
  dml_comm *c;
  dml_err err = {0};
  if (dml_comm_init(&c, &o, &err)) {
    fprintf(stderr, "rank %d init: %s\n", rank, err.msg);
    return 1;
  }
  char in[4] = {0};
  int rc = dml_comm_sendrecv(c, 1 - rank, 3, "abc", 4, 1 - rank, 3, in, 4);
  dml_comm_free(c);
  return rc == 0 && strcmp(in, "abc") == 0 ? 0 : 1;
}

static void test_hostile_peer_port(void) {
  int port = free_port();
  char log0[64];
  snprintf(log0, sizeof log0, "/tmp/distml_comm_test_peerport.%d.log", (int)getpid());
  fflush(stdout);
  fflush(stderr);
  pid_t p0 = fork();
  T_ASSERT(p0 >= 0);
  if (p0 == 0) {
    FILE *f = freopen(log0, "w", stderr);
    (void)f;
    exit(peer_rank_main(0, port));
  }
  dml__comm_cfg cfg = {.rank = 1,
                       .world_size = 2,
                       .master_addr = "127.0.0.1",
                       .master_port = port,
                       .bind_addr = "127.0.0.1",
                       .timeout_ms = 10000,
                       .max_message_bytes = 1 << 30};
  dml_err e = {0};
  dml__store *st;
  T_OK(dml__store_connect(&st, &cfg, &e));
  char *addr0;
  size_t n;
  T_OK(dml__store_get(st, "addr/0", dml_now_ns() + 10000000000ull, &addr0, &n, &e));
  int w, p;
  char host[64];
  T_ASSERT(sscanf(addr0, "%d %63s %d", &w, host, &p) == 3);
  dml__free(addr0);
  dml__store_close(st);
  int garbage, huge, silent;
  uint64_t deadline = dml_now_ns() + 10000000000ull;
  T_OK(dml__net_connect(host, p, deadline, &garbage, &e));
  T_OK(dml__net_connect(host, p, deadline, &huge, &e));
  T_OK(dml__net_connect(host, p, deadline, &silent, &e));
  static const char junk[] = "\x16\x03\x01 this is not a distml frame at all"; /* > one header */
  T_OK(dml__net_write_all(garbage, junk, sizeof(junk), deadline, &e));
  uint8_t hdr[DML__FRAME_HDR];
  dml__frame_encode(hdr, DML__F_AUTH, 0, 0, 1ull << 50);
  T_OK(dml__net_write_all(huge, hdr, sizeof(hdr), deadline, &e));
  pid_t p1 = fork();
  T_ASSERT(p1 >= 0);
  if (p1 == 0) exit(peer_rank_main(1, port));
  int st0, st1;
  T_ASSERT(waitpid(p1, &st1, 0) == p1 && WIFEXITED(st1) && WEXITSTATUS(st1) == 0);
  T_ASSERT(waitpid(p0, &st0, 0) == p0 && WIFEXITED(st0) && WEXITSTATUS(st0) == 0);
  close(garbage), close(huge), close(silent);
  FILE *f = fopen(log0, "r");
  T_ASSERT(f != NULL);
  char logbuf[8192];
  size_t ln = fread(logbuf, 1, sizeof(logbuf) - 1, f);
  logbuf[ln] = 0;
  fclose(f);
  unlink(log0);
  T_CONTAINS(logbuf, "rank 0: dropped connection from 127.0.0.1");
  T_CONTAINS(logbuf, "bad frame magic");
  T_CONTAINS(logbuf, "exceeds the maximum 4096");
  T_CONTAINS(logbuf, "no HELLO by the time every rank had joined");
  printf("hostile clients on a peer port: ok\n");
}

/* A rank that joins a new job (a re-form) while the coordinator still serves the store of the
 * job before, which has formed: refused as a latecomer, it tries again until the new store
 * serves it, and says so when the timeout comes first. */
typedef struct swap_arg {
  dml__comm_cfg cfg;
  dml__store *old, *fresh;
} swap_arg;

static void *swap_store(void *arg) {
  swap_arg *a = arg;
  struct timespec ts = {0, 300 * 1000000L};
  nanosleep(&ts, NULL);
  dml__store_close(a->old);
  dml_err e = {0};
  T_OK(dml__store_serve(&a->fresh, &a->cfg, &e));
  return NULL;
}

static void test_formed_store(void) {
  swap_arg a = {.cfg = {.rank = 0,
                        .world_size = 2,
                        .master_addr = "127.0.0.1",
                        .master_port = free_port(),
                        .bind_addr = "127.0.0.1",
                        .timeout_ms = 600,
                        .max_message_bytes = 1 << 30}};
  dml_err e = {0};
  T_OK(dml__store_serve(&a.old, &a.cfg, &e));
  dml__store_formed(a.old);
  dml__comm_cfg cc = a.cfg;
  cc.rank = 1;
  dml__store *st = NULL;
  T_EQ_INT(dml__store_connect(&st, &cc, &e), DML_ETIMEDOUT);
  T_ASSERT(st == NULL);
  T_CONTAINS(e.msg, "still served a job that had formed");
  cc.timeout_ms = 10000;
  pthread_t th;
  T_ASSERT(pthread_create(&th, NULL, swap_store, &a) == 0);
  T_OK(dml__store_connect(&st, &cc, &e));
  T_OK(dml__store_set(st, "addr/1", "2 127.0.0.1 9", 13, &e));
  T_ASSERT(pthread_join(th, NULL) == 0);
  char *v;
  size_t n;
  T_OK(dml__store_get(st, "addr/1", dml_now_ns() + 10000000000ull, &v, &n, &e));
  dml__free(v);
  T_ASSERT(dml__store_has(a.fresh, "addr/1")); /* the new store, not the old one */
  dml__store_close(st);
  dml__store_close(a.fresh);
  printf("a job that has formed refuses latecomers, who wait for the next: ok\n");
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  test_formed_store();
  test_codecs();
  printf("codecs: ok\n");
  test_port_in_use();
  test_hostile_peer_port();
  test_forged_peer();
  test_oom();
  return 0;
}
