/* Failure tests of the tcp communicator on loopback: a rank killed with SIGKILL, a silent rank
 * (timeout), an aborting rank, a wrong or missing token, and hostile clients on the coordinator
 * port (garbage, a huge length, a silent connection). Each must give an error that names the
 * peer -- never a hang -- and the hostile clients must not stop the job.
 * test-labels: tsan */
#include "test_comm_harness.h"

#include <poll.h>

#include "comm/internal.h" /* frame encoder, to forge a header with a huge length */

typedef struct fail_arg {
  int ready_fd;    /* write end: a rank writes one byte after joining */
  int release_fd;  /* read end: a rank blocks on it until the parent closes the write end */
  int release_wfd; /* that write end (closed in the children) */
  const char *token[8];
  int timeout_ms;
} fail_arg;

static int join(int rank, int n, int port, fail_arg *a, dml_comm **c) {
  dml_comm_opts o;
  th_opts(&o, rank, n, port, a->timeout_ms);
  o.token = a->token[rank];
  dml_err err = {0};
  int rc = dml_comm_init(c, &o, &err);
  if (rc) fprintf(stderr, "rank %d: init: %d %s\n", rank, rc, err.msg);
  return rc;
}

static void signal_ready(fail_arg *a) {
  if (write(a->ready_fd, "r", 1) != 1) _exit(3);
}

static void wait_released(fail_arg *a) {
  char b;
  close(a->release_wfd);
  while (read(a->release_fd, &b, 1) > 0) {
  }
}

/* ---- a killed rank ---------------------------------------------------------------------- */
static int killed_main(int rank, int n, int port, void *arg) {
  fail_arg *a = arg;
  dml_comm *c;
  if (join(rank, n, port, a, &c)) return 1;
  signal_ready(a);
  if (rank == 2) {
    for (;;) pause(); /* the parent kills us */
  }
  uint8_t buf[64];
  /* A receive from the dead rank fails with "closed", not a timeout: while pending, or at once
   * when the death was already seen. */
  dml_comm_req *req;
  int rc = dml_comm_irecv(c, 2, 5, buf, sizeof(buf), &req);
  if (rc == 0) rc = dml_comm_wait(c, req, -1);
  fprintf(stderr, "rank %d saw: %s\n", rank, dml_comm_errmsg(c));
  R_ASSERT(rc == DML_ECLOSED);
  R_ASSERT(strstr(dml_comm_errmsg(c), "rank 2 (127.0.0.1:") != NULL);
  R_ASSERT(strstr(dml_comm_errmsg(c), "recv from") != NULL);
  R_ASSERT(strstr(dml_comm_errmsg(c), "seq 0") != NULL);
  /* Sticky: the next operations on it fail at once with the same code and name it. */
  R_ASSERT(dml_comm_send(c, 2, 5, buf, 8) == DML_ECLOSED);
  R_ASSERT(strstr(dml_comm_errmsg(c), "rank 2") != NULL);
  R_ASSERT(dml_comm_recv(c, 2, 6, buf, 8) == DML_ECLOSED);
  /* The survivors still talk to each other. */
  int other = 1 - rank;
  uint8_t in[40];
  th_fill(buf, rank, other, 9, 40);
  RK_OK(dml_comm_sendrecv(c, other, 9, buf, 40, other, 9, in, 40));
  R_ASSERT(th_check(in, other, rank, 9, 40) == -1);
  dml_comm_free(c);
  return 0;
}

/* Starts n ranks of fn, kills the last once every rank has joined, and expects the others to
 * exit 0 (each asserts what it saw of the death). */
static void kill_last_rank(int n, th_rank_fn fn) {
  int ready[2];
  T_ASSERT(pipe(ready) == 0);
  fail_arg a = {.ready_fd = ready[1], .timeout_ms = 30000};
  int port = th_free_port();
  pid_t pid[8];
  for (int r = 0; r < n; r++) pid[r] = th_spawn(r, n, port, fn, &a, NULL);
  close(ready[1]);
  char b[8];
  size_t got = 0;
  while (got < (size_t)n) {
    ssize_t k = read(ready[0], b + got, (size_t)n - got);
    T_ASSERT(k > 0);
    got += (size_t)k;
  }
  close(ready[0]);
  T_ASSERT(kill(pid[n - 1], SIGKILL) == 0);
  T_EQ_INT(th_wait_pid(pid[n - 1], 10), 128 + SIGKILL);
  for (int r = 0; r < n - 1; r++) T_EQ_INT(th_wait_pid(pid[r], 60), 0);
}

static void test_killed_rank(void) {
  kill_last_rank(3, killed_main);
}

/* ---- every other rank dead: a new any-source receive fails at once ------------------------ */

static int alone_main(int rank, int n, int port, void *arg) {
  fail_arg *a = arg;
  dml_comm *c;
  if (join(rank, n, port, a, &c)) return 1;
  signal_ready(a);
  if (rank == 1) {
    for (;;) pause(); /* the parent kills us */
  }
  uint8_t buf[8];
  R_ASSERT(dml_comm_recv(c, 1, 5, buf, sizeof(buf)) == DML_ECLOSED); /* its death is seen */
  /* posted after it: nothing can ever match, so the call itself fails, naming the dead rank */
  dml_comm_req *req = NULL;
  R_ASSERT(dml_comm_irecv_alloc(c, DML_ANY_SOURCE, 7, &req) == DML_ECLOSED);
  R_ASSERT(strstr(dml_comm_errmsg(c), "every other rank has failed") != NULL);
  R_ASSERT(strstr(dml_comm_errmsg(c), "rank 1") != NULL);
  /* a message already queued from itself is still delivered */
  RK_OK(dml_comm_send(c, 0, 8, "self", 5));
  void *got = NULL;
  size_t len = 0;
  RK_OK(dml_comm_recv_alloc(c, DML_ANY_SOURCE, 8, &got, &len, NULL));
  R_ASSERT(len == 5 && memcmp(got, "self", 5) == 0);
  dml_comm_buf_free(got);
  dml_comm_free(c);
  return 0;
}

static void test_alone(void) {
  kill_last_rank(2, alone_main);
}

/* ---- a silent rank: timeout ------------------------------------------------------------- */
static int silent_main(int rank, int n, int port, void *arg) {
  fail_arg *a = arg;
  dml_comm *c;
  if (join(rank, n, port, a, &c)) return 1;
  if (rank == 1) {
    wait_released(a); /* alive but never sends */
    dml_comm_free(c);
    return 0;
  }
  uint8_t buf[8];
  int rc = dml_comm_recv(c, 1, 5, buf, sizeof(buf));
  fprintf(stderr, "rank 0 saw: %s\n", dml_comm_errmsg(c));
  R_ASSERT(rc == DML_ETIMEDOUT);
  R_ASSERT(strstr(dml_comm_errmsg(c), "recv from rank 1 (127.0.0.1:") != NULL);
  R_ASSERT(strstr(dml_comm_errmsg(c), "tag 5 seq 0") != NULL);
  R_ASSERT(strstr(dml_comm_errmsg(c), "timed out") != NULL);
  R_ASSERT(dml_comm_send(c, 1, 5, buf, 8) == DML_ETIMEDOUT); /* sticky */
  /* A non-blocking wait that runs out leaves the request valid and the peer healthy. */
  dml_comm_req *req;
  RK_OK(dml_comm_irecv(c, 0, 77, buf, sizeof(buf), &req));
  R_ASSERT(dml_comm_wait(c, req, 10) == DML_ETIMEDOUT);
  RK_OK(dml_comm_send(c, 0, 77, "selfmsg", 8));
  RK_OK(dml_comm_wait(c, req, -1));
  R_ASSERT(memcmp(buf, "selfmsg", 8) == 0);
  dml_comm_free(c);
  return 0;
}

static void test_silent_rank(void) {
  int rel[2];
  T_ASSERT(pipe(rel) == 0);
  fail_arg a = {.release_fd = rel[0], .release_wfd = rel[1], .timeout_ms = 1500};
  int port = th_free_port();
  pid_t p0 = th_spawn(0, 2, port, silent_main, &a, NULL);
  pid_t p1 = th_spawn(1, 2, port, silent_main, &a, NULL);
  close(rel[0]);
  T_EQ_INT(th_wait_pid(p0, 60), 0);
  close(rel[1]);
  T_EQ_INT(th_wait_pid(p1, 60), 0);
}

/* ---- abort ------------------------------------------------------------------------------ */
static int abort_main(int rank, int n, int port, void *arg) {
  fail_arg *a = arg;
  dml_comm *c;
  if (join(rank, n, port, a, &c)) return 1;
  uint8_t buf[8] = {0};
  if (rank == 1) {
    RK_OK(dml_comm_send(c, 0, 1, buf, 8)); /* rank 0 is surely in its recv below after this */
    dml_comm_abort(c, "test abort reason");
    R_ASSERT(dml_comm_send(c, 0, 2, buf, 8) == DML_EABORTED);
    R_ASSERT(strstr(dml_comm_errmsg(c), "test abort reason") != NULL);
    dml_comm_free(c);
    return 0;
  }
  RK_OK(dml_comm_recv(c, 1, 1, buf, 8));
  int rc = dml_comm_recv(c, 1, 2, buf, 8);
  fprintf(stderr, "rank 0 saw: %s\n", dml_comm_errmsg(c));
  R_ASSERT(rc == DML_EPEER || rc == DML_ECLOSED);
  R_ASSERT(strstr(dml_comm_errmsg(c), "rank 1") != NULL);
  if (rc == DML_EPEER) R_ASSERT(strstr(dml_comm_errmsg(c), "aborted: test abort reason") != NULL);
  dml_comm_free(c);
  return 0;
}

static void test_abort(void) {
  fail_arg a = {.timeout_ms = 20000};
  th_run("abort", 2, abort_main, &a, 60);
}

/* ---- authentication --------------------------------------------------------------------- */
static int auth_main(int rank, int n, int port, void *arg) {
  fail_arg *a = arg;
  dml_comm *c;
  int rc = join(rank, n, port, a, &c);
  if (rc) return rc == DML_EAUTH ? 10 : rc == DML_ETIMEDOUT ? 11 : 12;
  uint8_t buf[16], in[16];
  int other = 1 - rank;
  if (n == 2) {
    th_fill(buf, rank, other, 4, 16);
    RK_OK(dml_comm_sendrecv(c, other, 4, buf, 16, other, 4, in, 16));
    R_ASSERT(th_check(in, other, rank, 4, 16) == -1);
  }
  dml_comm_free(c);
  return 0;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return strdup("");
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  buf[n] = 0;
  fclose(f);
  return buf;
}

static void test_auth(void) {
  /* Right token: the job runs. */
  fail_arg good = {.timeout_ms = 20000, .token = {"s3cret", "s3cret"}};
  th_run("auth ok", 2, auth_main, &good, 60);

  /* Wrong token on rank 1: it is refused with a message saying so, and rank 0 logs why (rank 0
   * itself then times out waiting for rank 1). */
  char log0[64], log1[64]; /* this run's own: another run at the same time has its own */
  snprintf(log0, sizeof log0, "/tmp/distml_test_comm_auth0.%d.log", (int)getpid());
  snprintf(log1, sizeof log1, "/tmp/distml_test_comm_auth1.%d.log", (int)getpid());
  for (int variant = 0; variant < 2; variant++) {
    fail_arg bad = {.timeout_ms = 3000, .token = {"s3cret", variant == 0 ? "wrong" : NULL}};
    int port = th_free_port();
    pid_t p0 = th_spawn(0, 2, port, auth_main, &bad, log0);
    pid_t p1 = th_spawn(1, 2, port, auth_main, &bad, log1);
    T_EQ_INT(th_wait_pid(p1, 60), 10); /* DML_EAUTH */
    T_EQ_INT(th_wait_pid(p0, 60), 11); /* DML_ETIMEDOUT: rank 1 never joined */
    char *l1 = strdup(slurp(log1));
    T_CONTAINS(l1, "wrong token");
    T_CONTAINS(l1, "refused");
    free(l1);
    T_CONTAINS(slurp(log0), "authentication failed: wrong token");
    T_CONTAINS(slurp(log0), "rank 1 did not join");
  }
  unlink(log0);
  unlink(log1);
}

/* ---- ranks that never join ---------------------------------------------------------------- */
static int missing_main(int rank, int n, int port, void *arg) {
  fail_arg *a = arg;
  dml_comm_opts o;
  th_opts(&o, rank, n, port, a->timeout_ms);
  dml_comm *c;
  dml_err err = {0};
  int rc = dml_comm_init(&c, &o, &err);
  fprintf(stderr, "rank %d: init: %s\n", rank, err.msg);
  /* Rank 2 may instead see the coordinator close when rank 0 gives up first. */
  R_ASSERT((rc == DML_ETIMEDOUT || (rank != 0 && rc == DML_ECLOSED)) && c == NULL);
  if (rank == 0) R_ASSERT(strstr(err.msg, "ranks 1 3 did not join within 1500 ms") != NULL);
  return 0;
}

static void test_missing_ranks(void) {
  fail_arg a = {.timeout_ms = 1500};
  int port = th_free_port();
  pid_t p0 = th_spawn(0, 4, port, missing_main, &a, NULL);
  pid_t p2 = th_spawn(2, 4, port, missing_main, &a, NULL);
  T_EQ_INT(th_wait_pid(p0, 60), 0);
  T_EQ_INT(th_wait_pid(p2, 60), 0);
}

/* ---- hostile clients on the coordinator port --------------------------------------------- */
static int connect_port(int port) {
  for (int i = 0; i < 500; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) return fd;
    close(fd);
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  T_FAIL("cannot connect to the coordinator port %d", port);
}

/* Read until the other side closes (or 10 s pass): the coordinator dropped us. */
static int read_until_closed(int fd) {
  char b[256];
  for (int i = 0; i < 1000; i++) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10) == 1) {
      ssize_t k = read(fd, b, sizeof(b));
      if (k <= 0) return 1;
    }
  }
  return 0;
}

static void test_hostile(void) {
  char log0[64];
  snprintf(log0, sizeof log0, "/tmp/distml_test_comm_hostile0.%d.log", (int)getpid());
  fail_arg a = {.timeout_ms = 20000};
  int port = th_free_port();
  pid_t p0 = th_spawn(0, 2, port, auth_main, &a, log0);
  /* 1. Garbage. */
  int g = connect_port(port);
  const char junk[] = "GET / HTTP/1.1\r\nHost: distml\r\n\r\n";
  T_ASSERT(write(g, junk, sizeof(junk)) == (ssize_t)sizeof(junk));
  /* 2. A well-formed header announcing 1 TiB. */
  int h = connect_port(port);
  uint8_t hdr[DML__FRAME_HDR];
  dml__frame_encode(hdr, DML__F_AUTH, 0, 0, 1ull << 40);
  T_ASSERT(write(h, hdr, sizeof(hdr)) == (ssize_t)sizeof(hdr));
  /* 3. Silent (slow-loris): connects and says nothing. */
  int s = connect_port(port);
  T_ASSERT(read_until_closed(g));
  T_ASSERT(read_until_closed(h));
  /* Now the real rank joins and the job runs while the silent client still hangs on. */
  pid_t p1 = th_spawn(1, 2, port, auth_main, &a, NULL);
  T_EQ_INT(th_wait_pid(p1, 60), 0);
  T_EQ_INT(th_wait_pid(p0, 60), 0);
  close(g), close(h), close(s);
  const char *l = slurp(log0);
  T_CONTAINS(l, "dropped connection from 127.0.0.1");
  T_CONTAINS(l, "bad frame magic");
  T_CONTAINS(l, "exceeds the maximum");
  T_CONTAINS(l, "silent");
  unlink(log0);
}

/* Under mpirun with DISTML_BACKEND=mpi (tests/test_comm_mpi.sh): rank 1 aborts while rank 0 waits
 * for it; rank 0 must get the reason, not hang (MPI_Abort is never called). */
static int mpi_abort_check(void) {
  dml_comm *c;
  dml_err err = {0};
  if (dml_comm_init(&c, NULL, &err)) {
    fprintf(stderr, "init: %s\n", err.msg);
    return 1;
  }
  int rank = dml_comm_rank(c);
  uint8_t buf[8] = {0};
  if (rank == 1) {
    dml_comm_abort(c, "mpi abort reason");
    R_ASSERT(dml_comm_send(c, 0, 2, buf, 8) == DML_EABORTED);
  } else if (rank == 0) {
    int rc = dml_comm_recv(c, 1, 2, buf, 8);
    fprintf(stderr, "rank 0 saw: %s\n", dml_comm_errmsg(c));
    R_ASSERT(rc == DML_EPEER);
    R_ASSERT(strstr(dml_comm_errmsg(c), "rank 1") != NULL);
    R_ASSERT(strstr(dml_comm_errmsg(c), "aborted: mpi abort reason") != NULL);
  }
  printf("rank %d: mpi abort ok\n", rank);
  fflush(stdout);
  dml_comm_free(c);
  return 0;
}

int main(void) {
  const char *be = getenv("DISTML_BACKEND");
  if (be && strcmp(be, "mpi") == 0) return mpi_abort_check();
  th_clear_env();
  signal(SIGPIPE, SIG_IGN);
  test_killed_rank();
  printf("killed rank: ok\n");
  test_alone();
  printf("every other rank dead: a new any-source receive fails at once: ok\n");
  test_silent_rank();
  printf("silent rank (timeout): ok\n");
  test_abort();
  printf("abort: ok\n");
  test_auth();
  printf("auth: ok\n");
  test_missing_ranks();
  printf("ranks that never join: ok\n");
  test_hostile();
  printf("hostile clients: ok\n");
  return 0;
}
