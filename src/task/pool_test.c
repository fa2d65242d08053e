/* Tests for the work-stealing pool: fib with nested groups, parallel-for sums and coverage,
 * futures and the order of their dependencies, first-error reporting and cancellation, many tiny
 * tasks from inside and outside the pool, an idle pool going to sleep, out-of-memory on create.
 * Every expected value is computed here, serially. test-labels: tsan */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "distml/task.h"
#include "task/task_internal.h"
#include "testutil.h"

static dml_pool *g_pool;

static dml_pool *make_pool(unsigned n) {
  dml_pool_opts o;
  dml_pool_opts_default(&o);
  o.nthreads = n;
  o.name = "test";
  dml_pool *p = NULL;
  dml_err e = {0};
  int rc = dml_pool_create(&o, &p, &e);
  if (rc != 0) T_FAIL("dml_pool_create: %s", dml_err_msg(&e));
  T_EQ_INT(dml_pool_nthreads(p), n);
  return p;
}

/* ---- fib: each call spawns one child and computes the other itself, then waits. */
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
  fib_task(&y);
  rc = dml_task_group_wait(&g);
  a->r = x.r + y.r;
  return rc;
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

static void test_fib(unsigned threads, int n) {
  g_pool = make_pool(threads);
  fibarg a = {n, 0};
  dml_task_group g;
  dml_task_group_init(&g, g_pool);
  T_OK(dml_task_spawn(&g, fib_task, &a)); /* from outside: through the injector */
  T_OK(dml_task_group_wait(&g));
  T_EQ_INT(a.r, fib_serial(n));
  dml_pool_stats st;
  dml_pool_get_stats(g_pool, &st);
  /* fib(n) spawns fib(n+1) - 1 tasks in all: one per inner call, plus the root. */
  T_EQ_INT(st.spawned + st.injected, fib_serial(n + 1));
  T_EQ_INT(st.executed, st.spawned + st.injected);
  printf("fib(%d) on %u threads: %ld; spawned %llu stolen %llu\n", n, threads, a.r,
         (unsigned long long)st.spawned, (unsigned long long)st.stolen);
  dml_pool_destroy(g_pool);
  g_pool = NULL;
}

/* ---- parallel-for: every index exactly once, sums match. */
typedef struct pfctx {
  _Atomic int64_t sum;
  _Atomic unsigned char *hits;
  _Atomic int64_t pieces;
  int64_t grain;
  int bad_piece;
} pfctx;

static int pf_body(int64_t lo, int64_t hi, void *arg) {
  pfctx *c = arg;
  if (hi - lo > c->grain || hi <= lo) c->bad_piece = 1;
  int64_t s = 0;
  for (int64_t i = lo; i < hi; i++) {
    s += i * 3 + 1;
    atomic_fetch_add_explicit(&c->hits[i], 1, memory_order_relaxed);
  }
  atomic_fetch_add(&c->sum, s);
  atomic_fetch_add(&c->pieces, 1);
  return 0;
}

static void test_parallel_for(void) {
  g_pool = make_pool(2);
  const int64_t n = 100003; /* odd, prime: uneven halves */
  _Atomic unsigned char *hits = dml__calloc((size_t)n, 1);
  T_ASSERT(hits != NULL);
  int64_t grains[] = {0, 1, 7, 1000, n, 10 * n};
  for (size_t gi = 0; gi < DML__ARRAY_LEN(grains); gi++) {
    for (int64_t i = 0; i < n; i++) atomic_store(&hits[i], 0);
    pfctx c = {0};
    c.hits = hits;
    c.grain = grains[gi] ? grains[gi] : n; /* auto grain: only the piece bound n applies */
    T_OK(dml_parallel_for(g_pool, 0, n, grains[gi], pf_body, &c));
    int64_t want = 0;
    for (int64_t i = 0; i < n; i++) want += i * 3 + 1;
    T_EQ_INT(atomic_load(&c.sum), want);
    for (int64_t i = 0; i < n; i++)
      if (atomic_load(&hits[i]) != 1)
        T_FAIL("grain %lld: index %lld hit %d times", (long long)grains[gi], (long long)i,
               atomic_load(&hits[i]));
    T_EQ_INT(c.bad_piece, 0);
    if (grains[gi] > 0) /* halving gives at least ceil(n / grain) pieces */
      T_ASSERT(atomic_load(&c.pieces) >= (n + grains[gi] - 1) / grains[gi]);
  }
  /* Empty and reversed ranges do nothing. */
  pfctx c = {0};
  c.hits = hits;
  c.grain = 1;
  T_OK(dml_parallel_for(g_pool, 5, 5, 1, pf_body, &c));
  T_OK(dml_parallel_for(g_pool, 9, 2, 1, pf_body, &c));
  T_EQ_INT(atomic_load(&c.pieces), 0);
  T_EQ_INT(dml_parallel_for(g_pool, 0, 10, -1, pf_body, &c), DML_EINVAL);
  dml__free((void *)hits);
  dml_pool_destroy(g_pool);
  g_pool = NULL;
}

/* A parallel-for whose body fails on one piece: the error comes back. */
static int pf_fail_body(int64_t lo, int64_t hi, void *arg) {
  (void)arg;
  return (lo <= 5000 && 5000 < hi) ? DML_EIO : 0;
}

/* ---- futures */
static _Atomic int g_seq;

typedef struct node {
  int order; /* when it ran (0-based), -1 if never */
  long value;
  long add;
  int fail; /* return this status */
  struct node *in[2];
  int nin;
} node;

static int node_fn(void *arg, void **value) {
  node *nd = arg;
  nd->order = atomic_fetch_add(&g_seq, 1);
  long v = nd->add;
  for (int i = 0; i < nd->nin; i++) v += nd->in[i]->value;
  nd->value = v;
  *value = nd;
  return nd->fail;
}

static void test_futures(void) {
  g_pool = make_pool(2);
  /* Diamond: a -> b, a -> c, (b, c) -> d. */
  atomic_store(&g_seq, 0);
  node a = {-1, 0, 1, 0, {0}, 0}, b = {-1, 0, 10, 0, {&a}, 1}, c = {-1, 0, 100, 0, {&a}, 1};
  node d = {-1, 0, 1000, 0, {&b, &c}, 2};
  dml_future *fa, *fb, *fc, *fd;
  T_OK(dml_future_async(g_pool, node_fn, &a, NULL, 0, &fa));
  T_OK(dml_future_async(g_pool, node_fn, &b, &fa, 1, &fb));
  T_OK(dml_future_async(g_pool, node_fn, &c, &fa, 1, &fc));
  dml_future *dd[2] = {fb, fc};
  T_OK(dml_future_async(g_pool, node_fn, &d, dd, 2, &fd));
  void *v = NULL;
  T_OK(dml_future_wait(fd, &v));
  T_ASSERT(v == &d);
  T_ASSERT(dml_future_is_done(fd));
  T_EQ_INT(d.value, 1000 + (10 + 1) + (100 + 1));
  T_ASSERT(a.order < b.order && a.order < c.order);
  T_ASSERT(b.order < d.order && c.order < d.order);
  T_OK(dml_future_wait(fa, NULL)); /* waiting again is fine */
  dml_future_release(fa);
  dml_future_release(fb);
  dml_future_release(fc);
  dml_future_release(fd);

  /* A chain of 2000, each released right away except the last: order must be the chain order. */
  enum { CHAIN = 2000 };
  static node chain[CHAIN];
  atomic_store(&g_seq, 0);
  dml_future *prev = NULL;
  for (int i = 0; i < CHAIN; i++) {
    chain[i] = (node){-1, 0, 1, 0, {i ? &chain[i - 1] : NULL}, i ? 1 : 0};
    dml_future *f;
    T_OK(dml_future_async(g_pool, node_fn, &chain[i], prev ? &prev : NULL, prev ? 1 : 0, &f));
    dml_future_release(prev);
    prev = f;
  }
  T_OK(dml_future_wait(prev, NULL));
  dml_future_release(prev);
  for (int i = 0; i < CHAIN; i++) T_EQ_INT(chain[i].order, i);
  T_EQ_INT(chain[CHAIN - 1].value, CHAIN);

  /* Failure propagates: x fails, y depends on x and is not run, z depends on y and on an ok w. */
  atomic_store(&g_seq, 0);
  node x = {-1, 0, 1, DML_EIO, {0}, 0}, y = {-1, 0, 1, 0, {&x}, 1};
  node w = {-1, 0, 1, 0, {0}, 0}, z = {-1, 0, 1, 0, {&y, &w}, 2};
  dml_future *fx, *fy, *fw, *fz;
  T_OK(dml_future_async(g_pool, node_fn, &x, NULL, 0, &fx));
  T_OK(dml_future_async(g_pool, node_fn, &y, &fx, 1, &fy));
  T_OK(dml_future_async(g_pool, node_fn, &w, NULL, 0, &fw));
  dml_future *zz[2] = {fy, fw};
  T_OK(dml_future_async(g_pool, node_fn, &z, zz, 2, &fz));
  T_EQ_INT(dml_future_wait(fz, NULL), DML_EIO);
  T_EQ_INT(dml_future_wait(fy, NULL), DML_EIO);
  T_EQ_INT(dml_future_wait(fx, NULL), DML_EIO);
  T_OK(dml_future_wait(fw, NULL));
  T_ASSERT(x.order >= 0 && w.order >= 0);
  T_EQ_INT(y.order, -1);
  T_EQ_INT(z.order, -1);
  dml_future_release(fx);
  dml_future_release(fy);
  dml_future_release(fw);
  dml_future_release(fz);

  /* Futures never waited on are finished by dml_pool_destroy. */
  static node loose[50];
  for (int i = 0; i < 50; i++) {
    loose[i] = (node){-1, 0, 1, 0, {0}, 0};
    dml_future *f;
    T_OK(dml_future_async(g_pool, node_fn, &loose[i], NULL, 0, &f));
    dml_future_release(f);
  }
  dml_pool_destroy(g_pool);
  g_pool = NULL;
  for (int i = 0; i < 50; i++) T_ASSERT(loose[i].order >= 0);
}

/* ---- errors and cancellation */
static _Atomic int g_gate;
static _Atomic int g_ran;

static int gate_task(void *arg) {
  (void)arg;
  while (!atomic_load(&g_gate)) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static int count_task(void *arg) {
  (void)arg;
  atomic_fetch_add(&g_ran, 1);
  return 0;
}

static int fail_task(void *arg) {
  int code = *(int *)arg;
  atomic_fetch_add(&g_ran, 1);
  return code;
}

static dml_task_group *g_err_group;

/* Runs until its group is cancelled (by another task's error), then fails with another code. */
static int late_fail_task(void *arg) {
  (void)arg;
  while (!dml_task_group_is_canceled(g_err_group)) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  atomic_fetch_add(&g_ran, 1);
  return DML_EFORMAT;
}

static void test_errors(void) {
  g_pool = make_pool(1);
  /* Cancel before anything could run: the one worker is held by the gate task. */
  dml_task_group g;
  dml_task_group_init(&g, g_pool);
  atomic_store(&g_gate, 0);
  atomic_store(&g_ran, 0);
  T_OK(dml_task_spawn(&g, gate_task, NULL));
  for (int i = 0; i < 100; i++) T_OK(dml_task_spawn(&g, count_task, NULL));
  dml_task_group_cancel(&g);
  T_ASSERT(dml_task_group_is_canceled(&g));
  T_EQ_INT(dml_task_spawn(&g, count_task, NULL), DML_ECANCELED);
  atomic_store(&g_gate, 1);
  T_EQ_INT(dml_task_group_wait(&g), DML_ECANCELED);
  T_EQ_INT(atomic_load(&g_ran), 0);
  /* The group is reusable after the wait. */
  T_ASSERT(!dml_task_group_is_canceled(&g));
  T_OK(dml_task_spawn(&g, count_task, NULL));
  T_OK(dml_task_group_wait(&g));
  T_EQ_INT(atomic_load(&g_ran), 1);

  /* First error wins: the late task fails only after the group was cancelled by the first
   * (two workers, so both run at once). */
  dml_pool *p2 = make_pool(2);
  dml_task_group g2;
  dml_task_group_init(&g2, p2);
  atomic_store(&g_ran, 0);
  int e1 = DML_EIO;
  g_err_group = &g2;
  T_OK(dml_task_spawn(&g2, late_fail_task, NULL));
  T_OK(dml_task_spawn(&g2, fail_task, &e1));
  T_EQ_INT(dml_task_group_wait(&g2), DML_EIO);
  T_EQ_INT(atomic_load(&g_ran), 2);
  dml_pool_destroy(p2);

  /* A child group is cancelled with its parent. */
  dml_task_group parent, child;
  dml_task_group_init(&parent, g_pool);
  dml_task_group_init_child(&child, &parent);
  atomic_store(&g_gate, 0);
  atomic_store(&g_ran, 0);
  T_OK(dml_task_spawn(&parent, gate_task, NULL));
  for (int i = 0; i < 10; i++) T_OK(dml_task_spawn(&child, count_task, NULL));
  dml_task_group_cancel(&parent);
  T_ASSERT(dml_task_group_is_canceled(&child));
  atomic_store(&g_gate, 1);
  T_EQ_INT(dml_task_group_wait(&child), DML_ECANCELED);
  T_EQ_INT(dml_task_group_wait(&parent), DML_ECANCELED);
  T_EQ_INT(atomic_load(&g_ran), 0);

  /* parallel-for reports the body's error. */
  T_EQ_INT(dml_parallel_for(g_pool, 0, 10000, 100, pf_fail_body, NULL), DML_EIO);
  T_EQ_INT(dml_task_spawn(&g, NULL, NULL), DML_EINVAL);
  dml_pool_destroy(g_pool);
  g_pool = NULL;
}

/* ---- many tiny tasks, spawned from outside and from inside (each outer task spawns 100). */
static _Atomic long g_tiny;

static int tiny_task(void *arg) {
  (void)arg;
  atomic_fetch_add_explicit(&g_tiny, 1, memory_order_relaxed);
  return 0;
}

static int fan_task(void *arg) {
  (void)arg;
  dml_task_group g;
  dml_task_group_init(&g, g_pool);
  for (int i = 0; i < 100; i++) {
    int rc = dml_task_spawn(&g, tiny_task, NULL);
    if (rc != 0) return rc;
  }
  return dml_task_group_wait(&g);
}

typedef struct ext_arg {
  dml_task_group *g;
  int n;
} ext_arg;

static void *external_spawner(void *arg) {
  ext_arg *a = arg;
  dml_task_group g;
  dml_task_group_init(&g, g_pool);
  for (int i = 0; i < a->n; i++)
    if (dml_task_spawn(&g, tiny_task, NULL) != 0) return (void *)1;
  return dml_task_group_wait(&g) == 0 ? NULL : (void *)1;
}

static int index_task(void *arg) {
  int idx = dml_pool_worker_index(g_pool);
  *(int *)arg = idx;
  return (idx >= 0 && idx < (int)dml_pool_nthreads(g_pool)) ? 0 : DML_ESTATE;
}

static void test_stress(void) {
  for (int round = 0; round < 3; round++) {
    g_pool = make_pool(round == 0 ? 1 : 2 + (unsigned)round);
    atomic_store(&g_tiny, 0);
    dml_task_group g;
    dml_task_group_init(&g, g_pool);
    for (int i = 0; i < 500; i++) T_OK(dml_task_spawn(&g, fan_task, NULL));
    /* Two outside threads inject at the same time as the fan-out runs. */
    pthread_t th[2];
    ext_arg ea = {NULL, 20000};
    for (int i = 0; i < 2; i++) T_EQ_INT(pthread_create(&th[i], NULL, external_spawner, &ea), 0);
    T_OK(dml_task_group_wait(&g));
    for (int i = 0; i < 2; i++) {
      void *r;
      pthread_join(th[i], &r);
      T_ASSERT(r == NULL);
    }
    T_EQ_INT(atomic_load(&g_tiny), 500 * 100 + 2 * 20000);
    int idx = -2;
    T_OK(dml_task_spawn(&g, index_task, &idx));
    T_OK(dml_task_group_wait(&g));
    T_ASSERT(idx >= 0);
    T_EQ_INT(dml_pool_worker_index(g_pool), -1);

    /* Idle: every worker ends up asleep (polled, with a generous bound rather than a time). */
    dml_pool_stats st;
    int tries = 0;
    do {
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
      dml_pool_get_stats(g_pool, &st);
    } while (st.sleeping != dml_pool_nthreads(g_pool) && ++tries < 10000);
    T_EQ_INT(st.sleeping, dml_pool_nthreads(g_pool));
    uint64_t sleeps = st.sleeps;
    /* ... and a sleeping pool still runs new work. */
    T_OK(dml_task_spawn(&g, tiny_task, NULL));
    T_OK(dml_task_group_wait(&g));
    dml_pool_get_stats(g_pool, &st);
    T_ASSERT(st.sleeps >= sleeps);
    dml_pool_destroy(g_pool);
    g_pool = NULL;
  }
}

/* ---- out of memory while creating a pool: every failure point gives DML_ENOMEM, no leak. */
static _Atomic long g_alloc_budget = -1;
static void *oom_malloc(size_t n) {
  if (atomic_load(&g_alloc_budget) >= 0 && atomic_fetch_sub(&g_alloc_budget, 1) <= 0) return NULL;
  return malloc(n);
}
static void *oom_calloc(size_t c, size_t n) {
  if (atomic_load(&g_alloc_budget) >= 0 && atomic_fetch_sub(&g_alloc_budget, 1) <= 0) return NULL;
  return calloc(c, n);
}
static void *oom_realloc(void *p, size_t n) {
  return realloc(p, n);
}

static void test_oom(void) {
  T_OK(dml_replace_allocator(oom_malloc, oom_realloc, oom_calloc, free));
  int failures = 0;
  for (long budget = 0; budget < 20; budget++) {
    atomic_store(&g_alloc_budget, budget);
    dml_pool_opts o;
    dml_pool_opts_default(&o);
    o.nthreads = 2;
    dml_pool *p = NULL;
    dml_err e = {0};
    int rc = dml_pool_create(&o, &p, &e);
    atomic_store(&g_alloc_budget, -1);
    if (rc != 0) {
      T_EQ_INT(rc, DML_ENOMEM);
      T_ASSERT(p == NULL);
      T_CONTAINS(e.msg, "out of memory");
      failures++;
    } else {
      dml_pool_destroy(p);
    }
  }
  T_ASSERT(failures > 0);
  T_OK(dml_replace_allocator(malloc, realloc, calloc, free));
}

int main(void) {
  test_fib(1, 18);
  test_fib(2, 22);
  test_fib(4, 20);
  test_parallel_for();
  test_futures();
  test_errors();
  test_stress();
  test_oom();
  printf("pool_test: ok\n");
  return 0;
}
