/* Point-to-point tests of the communicator over the tcp backend on loopback: forked ranks for
 * world sizes 1..8 exchange messages of 0, 1, 7, 1023 and 2^20+3 bytes with send/recv, sendrecv,
 * isend/irecv/test and recv_alloc, out of tag order and before the receive is posted, and check
 * every byte; one of three threads sharing the communicator polls before its waits sleep
 * (dml_comm_set_spin_us); ranks 0 and 1 copy straight between their memories (dml_comm_peer_read
 * and _write; bad addresses refused), which a pair with CMA off cannot. With DISTML_BACKEND=mpi set (tests/test_comm_mpi.sh under mpirun) the same checks
 * run once on the mpi backend with the ranks mpirun started.
 * test-labels: tsan */
#include "test_comm_harness.h"

#include <pthread.h>

static const size_t g_sizes[] = {0, 1, 7, 1023, (1u << 20) + 3};
#define NSIZES (sizeof(g_sizes) / sizeof(g_sizes[0]))

/* Several threads of one rank use the communicator at once, each on its own tag around the ring
 * (the collectives run on a background thread while the main thread also sends). */
#define NTHREADS 3
typedef struct thr_arg {
  dml_comm *c;
  int tid;
  int failed;
} thr_arg;

static void *thread_ring(void *p) {
  thr_arg *a = p;
  dml_comm *c = a->c;
  int rank = dml_comm_rank(c), n = dml_comm_size(c);
  int dst = (rank + 1) % n, src = (rank + n - 1) % n, tag = 200 + a->tid;
  size_t len = 65536 + (size_t)a->tid;
  uint8_t *sb = malloc(len), *rb = malloc(len);
  /* Thread 1 polls before its waits sleep (a per-thread budget): it drives beside sleepers. */
  if (a->tid == 1) {
    dml_comm_set_spin_us(-3);
    if (dml_comm_spin_us() != 0) a->failed = 1;
    dml_comm_set_spin_us(300);
    if (dml_comm_spin_us() != 300) a->failed = 1;
  }
  for (int it = 0; it < 20 && sb && rb; it++) {
    th_fill(sb, rank, dst, tag + it, len);
    dml_comm_req *r, *s;
    if (dml_comm_irecv(c, src, tag, rb, len, &r) || dml_comm_isend(c, dst, tag, sb, len, &s) ||
        dml_comm_wait(c, s, -1) || dml_comm_wait(c, r, -1) ||
        th_check(rb, src, rank, tag + it, len) != -1) {
      a->failed = 1;
      break;
    }
  }
  if (!sb || !rb) a->failed = 1;
  free(sb);
  free(rb);
  return NULL;
}

static int threaded(dml_comm *c) {
  int rank = dml_comm_rank(c);
  pthread_t th[NTHREADS];
  thr_arg a[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    a[i] = (thr_arg){c, i, 0};
    R_ASSERT(pthread_create(&th[i], NULL, thread_ring, &a[i]) == 0);
  }
  int bad = 0;
  for (int i = 0; i < NTHREADS; i++) {
    pthread_join(th[i], NULL);
    bad |= a[i].failed;
  }
  R_ASSERT(!bad);
  R_ASSERT(dml_comm_spin_us() == 0); /* thread 1's budget was its own */
  return 0;
}

/* Every check, on an initialised communicator. */
static int exercise(dml_comm *c) {
  int rank = dml_comm_rank(c), n = dml_comm_size(c);
  size_t maxb = g_sizes[NSIZES - 1];
  uint8_t *sb = malloc(maxb), *rb = malloc(maxb);
  R_ASSERT(sb && rb);

  /* 1. Ring with sendrecv, every size. */
  for (size_t k = 0; k < NSIZES; k++) {
    size_t len = g_sizes[k];
    int dst = (rank + 1) % n, src = (rank + n - 1) % n;
    th_fill(sb, rank, dst, 10 + (int)k, len);
    memset(rb, 0xEE, maxb);
    RK_OK(dml_comm_sendrecv(c, dst, 10 + (int)k, sb, len, src, 10 + (int)k, rb, len));
    R_ASSERT(th_check(rb, src, rank, 10 + (int)k, len) == -1);
  }

  /* 2. All pairs with blocking send then blocking recv (on tcp sends complete because the
   *    receiver's progress engine buffers unexpected messages; MPI may wait for the receive, so
   *    there each pair goes in turn, lower rank sending first). */
  int buffered = strcmp(dml_comm_backend(c), "tcp") == 0;
  for (size_t k = 0; k < NSIZES && !buffered; k++) {
    size_t len = g_sizes[k];
    for (int j = 0; j < n; j++) {
      if (j == rank) continue;
      th_fill(sb, rank, j, 100 + (int)k, len);
      for (int step = 0; step < 2; step++) {
        if ((step == 0) == (rank < j)) {
          RK_OK(dml_comm_send(c, j, 100 + (int)k, sb, len));
        } else {
          memset(rb, 0xEE, maxb);
          RK_OK(dml_comm_recv(c, j, 100 + (int)k, rb, len));
          R_ASSERT(th_check(rb, j, rank, 100 + (int)k, len) == -1);
        }
      }
    }
  }
  for (size_t k = 0; k < NSIZES && buffered; k++) {
    size_t len = g_sizes[k];
    for (int j = 0; j < n; j++) {
      if (j == rank) continue;
      th_fill(sb, rank, j, 100 + (int)k, len);
      RK_OK(dml_comm_send(c, j, 100 + (int)k, sb, len));
    }
    for (int j = 0; j < n; j++) {
      if (j == rank) continue;
      memset(rb, 0xEE, maxb);
      RK_OK(dml_comm_recv(c, j, 100 + (int)k, rb, len));
      long bad = th_check(rb, j, rank, 100 + (int)k, len);
      if (bad >= 0)
        fprintf(stderr, "rank %d: from %d size %zu wrong at byte %ld\n", rank, j, len, bad);
      R_ASSERT(bad == -1);
    }
  }

  /* 3. Non-blocking: irecv from everyone, isend to everyone, then test until all are done. */
  {
    uint8_t **in = calloc((size_t)n, sizeof(*in)), **out = calloc((size_t)n, sizeof(*out));
    dml_comm_req **rr = calloc((size_t)n, sizeof(*rr)), **sr = calloc((size_t)n, sizeof(*sr));
    R_ASSERT(in && out && rr && sr);
    size_t len = g_sizes[NSIZES - 1];
    for (int j = 0; j < n; j++) {
      if (j == rank) continue;
      in[j] = malloc(len);
      out[j] = malloc(len);
      R_ASSERT(in[j] && out[j]);
      th_fill(out[j], rank, j, 7, len);
      RK_OK(dml_comm_irecv(c, j, 7, in[j], len, &rr[j]));
    }
    for (int j = 0; j < n; j++)
      if (j != rank) RK_OK(dml_comm_isend(c, j, 7, out[j], len, &sr[j]));
    int left = 2 * (n - 1);
    while (left > 0) {
      for (int j = 0; j < n; j++) {
        int done;
        if (rr[j]) {
          RK_OK(dml_comm_test(c, rr[j], &done));
          if (done) rr[j] = NULL, left--;
        }
        if (sr[j]) {
          RK_OK(dml_comm_test(c, sr[j], &done));
          if (done) sr[j] = NULL, left--;
        }
      }
    }
    for (int j = 0; j < n; j++) {
      if (j == rank) continue;
      R_ASSERT(th_check(in[j], j, rank, 7, len) == -1);
      free(in[j]);
      free(out[j]);
    }
    free(in), free(out), free(rr), free(sr);
  }

  /* 4. recv_alloc from any source: everyone sends rank 0 a message whose length depends on the
   *    sender; rank 0 must see each sender exactly once with its length and content. */
  if (rank == 0) {
    int *seen = calloc((size_t)n, sizeof(int));
    R_ASSERT(seen);
    for (int k = 1; k < n; k++) {
      void *buf;
      size_t len;
      int src = -1;
      RK_OK(dml_comm_recv_alloc(c, DML_ANY_SOURCE, 3, &buf, &len, &src));
      R_ASSERT(src >= 1 && src < n && !seen[src]);
      seen[src] = 1;
      R_ASSERT(len == g_sizes[src % NSIZES]);
      R_ASSERT(th_check(buf, src, 0, 3, len) == -1);
      dml_comm_buf_free(buf);
    }
    free(seen);
  } else {
    size_t len = g_sizes[rank % NSIZES];
    th_fill(sb, rank, 0, 3, len);
    RK_OK(dml_comm_send(c, 0, 3, sb, len));
  }

  /* 4b. The same with a non-blocking alloc receive completed by polling (test_alloc) and by
   *     waits with a short timeout (wait_alloc); then one more receive posted for a message that
   *     never comes is withdrawn (cancel) and the tag stays usable. */
  if (rank == 0) {
    int *seen = calloc((size_t)n, sizeof(int));
    R_ASSERT(seen);
    for (int k = 1; k < n; k++) {
      dml_comm_req *q;
      RK_OK(dml_comm_irecv_alloc(c, DML_ANY_SOURCE, 4, &q));
      void *buf = NULL;
      size_t len = 0;
      int src = -1, done = 0, rc;
      if (k % 2) {
        while (!done) RK_OK(dml_comm_test_alloc(c, q, &done, &buf, &len, &src));
      } else {
        while ((rc = dml_comm_wait_alloc(c, q, 1, &buf, &len, &src)) == DML_ETIMEDOUT) {
        }
        RK_OK(rc);
      }
      R_ASSERT(buf != NULL || len == 0);
      R_ASSERT(src >= 1 && src < n && !seen[src]);
      seen[src] = 1;
      R_ASSERT(len == g_sizes[(src + 1) % NSIZES]);
      R_ASSERT(th_check(buf, src, 0, 4, len) == -1);
      dml_comm_buf_free(buf);
    }
    free(seen);
    dml_comm_req *q;
    RK_OK(dml_comm_irecv_alloc(c, DML_ANY_SOURCE, 4, &q));
    int done = 1;
    void *buf = NULL;
    size_t len = 0;
    RK_OK(dml_comm_test_alloc(c, q, &done, &buf, &len, NULL));
    R_ASSERT(!done);
    /* wait_any over that silent receive and one on tag 6 that each other rank sends to: it
     * returns when one is complete, which is always tag 6's */
    for (int k = 1; k < n; k++) {
      dml_comm_req *q6, *both[2];
      RK_OK(dml_comm_irecv_alloc(c, DML_ANY_SOURCE, 6, &q6));
      both[0] = q;
      both[1] = q6;
      int rc;
      while ((rc = dml_comm_wait_any(c, both, 2, 1)) == DML_ETIMEDOUT) {
      }
      RK_OK(rc);
      RK_OK(dml_comm_test_alloc(c, q, &done, &buf, &len, NULL));
      R_ASSERT(!done);
      RK_OK(dml_comm_test_alloc(c, q6, &done, &buf, &len, NULL));
      R_ASSERT(done && len == 3);
      dml_comm_buf_free(buf);
    }
    R_ASSERT(dml_comm_wait_any(c, &q, 1, 5) == DML_ETIMEDOUT);
    R_ASSERT(dml_comm_cancel(c, q) == DML_ECANCELED);
  } else {
    size_t len = g_sizes[(rank + 1) % NSIZES];
    th_fill(sb, rank, 0, 4, len);
    RK_OK(dml_comm_send(c, 0, 4, sb, len));
    RK_OK(dml_comm_send(c, 0, 6, "abc", 3));
  }

  /* 5. Out-of-order tags: rank 0 sends tags 21, 22, 23 to rank n-1, which receives 23, 21, 22;
   *    each message must match its own tag. */
  if (n > 1) {
    if (rank == 0) {
      for (int tag = 21; tag <= 23; tag++) {
        th_fill(sb, 0, n - 1, tag, 1000 + (size_t)tag);
        RK_OK(dml_comm_send(c, n - 1, tag, sb, 1000 + (size_t)tag));
      }
    } else if (rank == n - 1) {
      const int order[] = {23, 21, 22};
      for (int i = 0; i < 3; i++) {
        RK_OK(dml_comm_recv(c, 0, order[i], rb, 1000 + (size_t)order[i]));
        R_ASSERT(th_check(rb, 0, n - 1, order[i], 1000 + (size_t)order[i]) == -1);
      }
    }
    /* 6. Same tag twice: messages of one pair and tag arrive in order. */
    if (rank == 0) {
      th_fill(sb, 0, 1, 31, 5);
      RK_OK(dml_comm_send(c, 1, 31, sb, 5));
      th_fill(sb, 0, 1, 31, 9);
      RK_OK(dml_comm_send(c, 1, 31, sb, 9));
    } else if (rank == 1) {
      void *buf;
      size_t len;
      int src;
      RK_OK(dml_comm_recv_alloc(c, 0, 31, &buf, &len, &src));
      R_ASSERT(len == 5 && src == 0 && th_check(buf, 0, 1, 31, 5) == -1);
      dml_comm_buf_free(buf);
      RK_OK(dml_comm_recv_alloc(c, 0, 31, &buf, &len, &src));
      R_ASSERT(len == 9 && th_check(buf, 0, 1, 31, 9) == -1);
      dml_comm_buf_free(buf);
    }
    /* 7. A receive of the wrong length is a protocol error on that request only. */
    if (rank == 0) {
      RK_OK(dml_comm_send(c, 1, 41, sb, 16));
      RK_OK(dml_comm_send(c, 1, 42, sb, 8));
    } else if (rank == 1) {
      int rc = dml_comm_recv(c, 0, 41, rb, 32);
      R_ASSERT(rc == DML_EPROTO);
      R_ASSERT(strstr(dml_comm_errmsg(c), "16 bytes") != NULL);
      RK_OK(dml_comm_recv(c, 0, 42, rb, 8));
    }
  }

  /* 8. To and from oneself. */
  th_fill(sb, rank, rank, 51, 77);
  RK_OK(dml_comm_send(c, rank, 51, sb, 77));
  RK_OK(dml_comm_recv(c, rank, 51, rb, 77));
  R_ASSERT(th_check(rb, rank, rank, 51, 77) == -1);

  /* 9. Bad arguments. */
  R_ASSERT(dml_comm_send(c, n, 1, sb, 1) == DML_EINVAL);
  R_ASSERT(dml_comm_send(c, 0, -1, sb, 1) == DML_EINVAL);
  R_ASSERT(dml_comm_recv(c, DML_ANY_SOURCE, 1, rb, 1) == DML_EINVAL);

  /* 9b. Direct copies: on tcp between ranks of this machine, rank 0 reads rank 1's buffer and
   * writes into another (their addresses sent in a message); a bad address is DML_EPROTO. None
   * on MPI, nor with oneself. */
  R_ASSERT(dml_comm_direct(c, rank) == 0);
  if (n >= 2 && rank <= 1) {
    int tcp = strcmp(dml_comm_backend(c), "tcp") == 0;
    if (dml_comm_direct(c, 1 - rank) != tcp) {
      fprintf(stderr,
              "rank %d: direct copies %s with rank %d on %s: on tcp the CMA probe must pass "
              "between ranks of this machine (ptrace_scope 2-3? a seccomp filter?)\n",
              rank, tcp ? "not available" : "available", 1 - rank, dml_comm_backend(c));
      return 1;
    }
    size_t len = (1u << 20) + 3;
    uint8_t *mine = malloc(len), *into = calloc(1, len);
    R_ASSERT(mine && into);
    if (!tcp) {
      R_ASSERT(dml_comm_peer_read(c, 1 - rank, mine, 4096, 8) == DML_EUNSUPPORTED);
    } else if (rank == 1) {
      th_fill(mine, 1, 0, 61, len);
      uint64_t addr[2] = {(uint64_t)(uintptr_t)mine, (uint64_t)(uintptr_t)into};
      RK_OK(dml_comm_send(c, 0, 61, addr, sizeof addr));
      RK_OK(dml_comm_recv(c, 0, 62, sb, 1)); /* rank 0 has written */
      R_ASSERT(th_check(into, 0, 1, 63, len) == -1);
    } else {
      uint64_t addr[2];
      RK_OK(dml_comm_recv(c, 1, 61, addr, sizeof addr));
      RK_OK(dml_comm_peer_read(c, 1, into, addr[0], len));
      R_ASSERT(th_check(into, 1, 0, 61, len) == -1);
      th_fill(mine, 0, 1, 63, len);
      struct iovec pieces[3] = {{mine, 0}, {mine, 100}, {mine + 100, len - 100}};
      RK_OK(dml_comm_peer_writev(c, 1, addr[1], pieces, 3));         /* one after another */
      R_ASSERT(dml_comm_peer_read(c, 1, into, 8, 16) == DML_EPROTO); /* unmapped */
      R_ASSERT(strstr(dml_comm_errmsg(c), "direct copy from rank 1") != NULL);
      R_ASSERT(dml_comm_peer_write(c, 1, 0, mine, 16) == DML_EPROTO);
      R_ASSERT(dml_comm_peer_write(c, 1, UINT64_MAX - 7, mine, 16) == DML_EPROTO); /* wraps */
      RK_OK(dml_comm_send(c, 1, 62, sb, 1));
    }
    free(mine);
    free(into);
  }

  /* 10. Concurrent use from several threads. */
  if (threaded(c)) return 1;

  /* Everyone done before anyone leaves (a final exchange on a fresh tag). */
  for (int j = 0; j < n; j++)
    if (j != rank) RK_OK(dml_comm_send(c, j, 99, sb, 1));
  for (int j = 0; j < n; j++)
    if (j != rank) RK_OK(dml_comm_recv(c, j, 99, rb, 1));
  free(sb);
  free(rb);
  return 0;
}

static int rank_main(int rank, int n, int port, void *arg) {
  (void)arg;
  dml_comm_opts o;
  th_opts(&o, rank, n, port, 30000);
  dml_comm *c;
  dml_err err = {0};
  int rc = dml_comm_init(&c, &o, &err);
  if (rc) {
    fprintf(stderr, "rank %d: init: %s\n", rank, err.msg);
    return 1;
  }
  if (dml_comm_rank(c) != rank || dml_comm_size(c) != n) return 1;
  rc = exercise(c);
  dml_comm_free(c);
  return rc;
}

/* DISTML_CMA=0 (large messages over the socket): no direct copies either. */
static int rank_no_cma(int rank, int n, int port, void *arg) {
  (void)arg;
  setenv("DISTML_CMA", "0", 1);
  dml_comm *c;
  RK_OK(th_join(&c, rank, n, port, 30000));
  uint8_t b[8];
  R_ASSERT(dml_comm_direct(c, 1 - rank) == 0);
  R_ASSERT(dml_comm_peer_read(c, 1 - rank, b, (uint64_t)(uintptr_t)b, sizeof b) ==
           DML_EUNSUPPORTED);
  R_ASSERT(strstr(dml_comm_errmsg(c), "not available") != NULL);
  RK_OK(dml_comm_send(c, 1 - rank, 5, b, 1)); /* both checked before either leaves */
  RK_OK(dml_comm_recv(c, 1 - rank, 5, b, 1));
  dml_comm_free(c);
  return 0;
}

/* dml_comm_fence: rank 1 gives rank 0 the address of a buffer, rank 0 reads it, then rank 1
 * fences rank 0: it returns once rank 0 has closed the link, rank 0's copies fail from then
 * on, and its error on the link says why rank 1 fenced it. */
static int rank_fence(int rank, int n, int port, void *arg) {
  (void)arg;
  dml_comm *c;
  RK_OK(th_join(&c, rank, n, port, 30000));
  uint64_t word = 0x1234567890abcdefull, got = 0, addr = (uint64_t)(uintptr_t)&word;
  uint8_t b = 0;
  if (rank == 1) {
    RK_OK(dml_comm_send(c, 0, 7, &addr, sizeof addr));
    RK_OK(dml_comm_recv(c, 0, 8, &b, 1)); /* rank 0 has read it */
    RK_OK(dml_comm_fence(c, 0, "a test gave up on rank 0"));
    R_ASSERT(dml_comm_send(c, 0, 9, &b, 1) == DML_EABORTED); /* the link failed here */
    RK_OK(dml_comm_fence(c, 0, "again"));                    /* again: nothing to do */
    usleep(1500000); /* alive (its memory readable) while rank 0 finds its copies refused */
  } else {
    RK_OK(dml_comm_recv(c, 1, 7, &addr, sizeof addr));
    RK_OK(dml_comm_peer_read(c, 1, &got, addr, sizeof got));
    R_ASSERT(got == word);
    RK_OK(dml_comm_send(c, 1, 8, &b, 1));
    /* the fence fails the link from rank 1's side; once this rank has seen it, no copy */
    int rc = 0;
    for (int i = 0; i < 1000 && rc == 0; i++) {
      rc = dml_comm_peer_read(c, 1, &got, addr, sizeof got);
      if (rc == 0) usleep(1000);
    }
    R_ASSERT(rc != 0 && rc != DML_EPROTO);
    R_ASSERT(dml_comm_recv(c, 1, 9, &b, 1) != 0);
    R_ASSERT(strstr(dml_comm_errmsg(c), "aborted: a test gave up on rank 0") != NULL);
  }
  dml_comm_free(c);
  return 0;
}

/* Environment resolution, in this process (no network needed for world size 1). */
static void test_env(void) {
  th_clear_env();
  dml_comm *c;
  dml_err err = {0};
  T_OK(dml_comm_init(&c, NULL, &err));
  T_EQ_INT(dml_comm_rank(c), 0);
  T_EQ_INT(dml_comm_size(c), 1);
  T_ASSERT(strcmp(dml_comm_backend(c), "tcp") == 0);
  T_EQ_INT(dml_comm_timeout_ms(c), 60000);
  T_ASSERT(exercise(c) == 0);
  dml_comm_free(c);

  setenv("RANK", "0", 1);
  setenv("WORLD_SIZE", "1", 1);
  setenv("DISTML_TIMEOUT_MS", "1234", 1);
  T_OK(dml_comm_init(&c, NULL, &err));
  T_EQ_INT(dml_comm_timeout_ms(c), 1234);
  dml_comm_free(c);

  setenv("WORLD_SIZE", "2", 1); /* no MASTER_PORT */
  T_EQ_INT(dml_comm_init(&c, NULL, &err), DML_EINVAL);
  T_ASSERT(c == NULL);
  T_CONTAINS(err.msg, "MASTER_PORT");

  th_clear_env();
  setenv("SLURM_PROCID", "3", 1);
  setenv("SLURM_NTASKS", "2", 1);
  T_EQ_INT(dml_comm_init(&c, NULL, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "out of range");

  th_clear_env();
  setenv("PMI_RANK", "0", 1);
  T_EQ_INT(dml_comm_init(&c, NULL, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "PMI_SIZE");

  th_clear_env();
  setenv("DISTML_RANK", "x", 1);
  setenv("DISTML_WORLD_SIZE", "1", 1);
  T_EQ_INT(dml_comm_init(&c, NULL, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "DISTML_RANK");

  th_clear_env();
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  o.backend = "carrier-pigeon";
  T_EQ_INT(dml_comm_init(&c, &o, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "carrier-pigeon");
  th_clear_env();
}

int main(void) {
  const char *be = getenv("DISTML_BACKEND");
  if (be && strcmp(be, "mpi") == 0) {
    /* Under mpirun: this process is one rank. */
    dml_comm *c;
    dml_err err = {0};
    int rc = dml_comm_init(&c, NULL, &err);
    if (rc) {
      fprintf(stderr, "mpi init: %s\n", err.msg);
      return 1;
    }
    int rank = dml_comm_rank(c);
    rc = exercise(c);
    dml_comm_free(c);
    if (rc == 0) printf("rank %d: mpi p2p ok\n", rank);
    return rc;
  }
  test_env();
  th_run("p2p, no direct copies where CMA is off", 2, rank_no_cma, NULL, 60);
  th_run("p2p, a fence stops the other rank's direct copies", 2, rank_fence, NULL, 60);
  for (int n = 1; n <= 8; n++) th_run("p2p", n, rank_main, NULL, 120);
  printf("comm p2p: world sizes 1..8 ok\n");
  return 0;
}
