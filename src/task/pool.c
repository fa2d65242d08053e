/* The work-stealing pool: worker threads each with a Chase-Lev deque (deque.c), an injection
 * queue for tasks submitted from outside, random-victim stealing, spin-then-sleep idling, task
 * groups, parallel-for and futures. The spawn path of a worker touches only its own deque, its own
 * free list of task records and the group's counter (Cilk's work-first rule: one global atomic
 * there costs more than everything else). It does not know about pipelines or processes.
 *
 * Wake-ups: a worker whose push makes its deque non-empty fences and then checks whether anyone
 * sleeps, so that push cannot be missed by a worker falling asleep. Pushes onto a deque that
 * already held tasks skip the fence (it would cost ~10% of fib); such a push can be missed only
 * if a thief emptied the deque at that very moment, and that thief is awake and will find it.
 * Progress never depends on a wake-up: the pushing worker runs its own tasks when nobody steals
 * them. Pushes from outside the pool (the injector) and the completions that a sleeping waiter
 * needs use a full fence and cannot be lost. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "task/task_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define TASKS_PER_SLAB 256

struct group_impl;
struct worker;

/* One task record: 64 bytes, from the spawning thread's free list. */
typedef struct task {
  dml_task_fn fn;
  void *arg;                /* user argument, or payload below for internal tasks */
  struct group_impl *group; /* NULL for future tasks (counted in pool->detached) */
  struct task *next;        /* free list / injection queue link */
  struct worker *owner;     /* free list the record returns to; NULL: the pool's shared one */
  uint64_t payload[3];
} task;

typedef struct slab {
  struct slab *next;
  task tasks[TASKS_PER_SLAB];
} slab;

/* What a sleeping thread waits on: its own condition variable, signalled by wake_one/wake_all. */
typedef struct sleeper {
  pthread_cond_t cv;
  int woken;
  struct sleeper *next;
} sleeper;

typedef struct group_impl {
  dml_pool *pool;
  struct group_impl *parent;
  _Atomic int64_t state; /* 2 x tasks not yet finished, + 1 while the waiter is asleep */
  _Atomic int error;     /* first error */
  _Atomic int canceled;
} group_impl;
_Static_assert(sizeof(group_impl) <= sizeof(dml_task_group), "dml_task_group too small");
_Static_assert(_Alignof(group_impl) <= _Alignof(dml_task_group), "dml_task_group misaligned");

/* Counters written only by their worker (load+store, no lock prefix), read by anyone. */
typedef struct counters {
  _Atomic uint64_t spawned, executed, stolen, steal_fails, sleeps, idle_ns;
} counters;

typedef struct worker {
  dml__deque dq;
  _Alignas(DML__CACHE_LINE) dml_pool *pool;
  unsigned index;
  uint64_t rng;
  task *free;  /* private free list */
  slab *slabs; /* slabs this worker allocated (freed by the pool) */
  counters c;
  pthread_t thread;
  int started;
  sleeper sl;
  _Alignas(DML__CACHE_LINE) _Atomic(task *) remote_free; /* records freed by other threads */
} worker;

struct dml_pool {
  unsigned n;
  unsigned spin_us;
  worker *workers; /* n of them, cache-line aligned inside workers_raw */
  void *workers_raw;
  char name[12];

  _Alignas(DML__CACHE_LINE) pthread_mutex_t inj_mu; /* injector, shared free list, counters */
  task *inj_head, *inj_tail;
  _Atomic int64_t inj_count;
  task *shared_free;
  slab *shared_slabs;
  _Atomic uint64_t injected;
  _Atomic uint64_t ext_executed, ext_stolen; /* tasks run by threads outside the pool */

  _Alignas(DML__CACHE_LINE) pthread_mutex_t sleep_mu;
  sleeper *sleepers;     /* workers asleep (idle, or waiting and out of work to help with) */
  sleeper *waiters;      /* threads outside the pool waiting for a group or future */
  _Atomic int nsleeping; /* length of the sleepers list */
  _Atomic int nworkers_asleep;
  _Atomic int shutdown;

  _Alignas(DML__CACHE_LINE) _Atomic int64_t detached; /* future tasks not yet finished */
};

static _Thread_local worker *tls_worker;

static inline void count(_Atomic uint64_t *c, uint64_t v) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v, memory_order_relaxed);
}

static inline worker *current_worker(const dml_pool *pool) {
  worker *w = tls_worker;
  return (w != NULL && w->pool == pool) ? w : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Task records */

static slab *slab_new(task **list, worker *owner) {
  slab *s = dml__malloc(sizeof(slab));
  if (s == NULL) return NULL;
  for (int i = 0; i < TASKS_PER_SLAB; i++) {
    s->tasks[i].owner = owner;
    s->tasks[i].next = (i + 1 < TASKS_PER_SLAB) ? &s->tasks[i + 1] : *list;
  }
  *list = &s->tasks[0];
  return s;
}

static task *task_alloc_local(worker *w) {
  task *t = w->free;
  if (t == NULL) {
    t = atomic_exchange_explicit(&w->remote_free, NULL, memory_order_acquire);
    if (t == NULL) {
      slab *s = slab_new(&w->free, w);
      if (s == NULL) return NULL;
      s->next = w->slabs;
      w->slabs = s;
      t = w->free;
    }
  }
  w->free = t->next;
  return t;
}

/* Caller holds pool->inj_mu. */
static task *task_alloc_shared(dml_pool *pool) {
  if (pool->shared_free == NULL) {
    slab *s = slab_new(&pool->shared_free, NULL);
    if (s == NULL) return NULL;
    s->next = pool->shared_slabs;
    pool->shared_slabs = s;
  }
  task *t = pool->shared_free;
  pool->shared_free = t->next;
  return t;
}

static void task_free(dml_pool *pool, worker *self, task *t) {
  worker *o = t->owner;
  if (o != NULL && o == self) {
    t->next = self->free;
    self->free = t;
  } else if (o != NULL) {
    task *head = atomic_load_explicit(&o->remote_free, memory_order_relaxed);
    do {
      t->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&o->remote_free, &head, t, memory_order_release,
                                                    memory_order_relaxed));
  } else {
    pthread_mutex_lock(&pool->inj_mu);
    t->next = pool->shared_free;
    pool->shared_free = t;
    pthread_mutex_unlock(&pool->inj_mu);
  }
}

/* ---------------------------------------------------------------------------------------------
 * Sleeping and waking */

static int has_work(dml_pool *pool) {
  if (atomic_load_explicit(&pool->inj_count, memory_order_seq_cst) > 0) return 1;
  for (unsigned i = 0; i < pool->n; i++)
    if (dml__deque_size(&pool->workers[i].dq) > 0) return 1;
  return 0;
}

static void wake_one(dml_pool *pool) {
  pthread_mutex_lock(&pool->sleep_mu);
  sleeper *s = pool->sleepers;
  if (s != NULL) {
    pool->sleepers = s->next;
    atomic_fetch_sub_explicit(&pool->nsleeping, 1, memory_order_relaxed);
    s->woken = 1;
    pthread_cond_signal(&s->cv);
  }
  pthread_mutex_unlock(&pool->sleep_mu);
}

static void wake_all(dml_pool *pool) {
  pthread_mutex_lock(&pool->sleep_mu);
  while (pool->sleepers != NULL) {
    sleeper *s = pool->sleepers;
    pool->sleepers = s->next;
    atomic_fetch_sub_explicit(&pool->nsleeping, 1, memory_order_relaxed);
    s->woken = 1;
    pthread_cond_signal(&s->cv);
  }
  while (pool->waiters != NULL) {
    sleeper *s = pool->waiters;
    pool->waiters = s->next;
    s->woken = 1;
    pthread_cond_signal(&s->cv);
  }
  pthread_mutex_unlock(&pool->sleep_mu);
}

static inline void maybe_wake(dml_pool *pool) {
  if (atomic_load_explicit(&pool->nsleeping, memory_order_relaxed) > 0) wake_one(pool);
}

/* What a waiting thread waits for, besides new work. */
typedef struct wait_cond {
  int (*done)(void *ctx);
  void (*mark)(void *ctx, int sleeping); /* announce/retract a sleeping waiter */
  void *ctx;
} wait_cond;

/* Sleep until woken, unless there is work, shutdown, or the condition already holds. The
 * registration and the re-check are ordered (seq_cst) against the pushes and completions that
 * read nsleeping or the waiter mark, so a wake-up cannot fall between them. */
enum { SLEEP_IDLE_WORKER, SLEEP_HELPER, SLEEP_WAITER };

static void sleep_until_woken(dml_pool *pool, sleeper *sl, const wait_cond *wc, int kind) {
  int is_worker = kind == SLEEP_IDLE_WORKER;
  pthread_mutex_lock(&pool->sleep_mu);
  /* Threads that can run tasks go on the sleepers list (wake_one picks from it); outside
   * waiters go on their own list, woken only by completions (wake_all). */
  sleeper **list = kind == SLEEP_WAITER ? &pool->waiters : &pool->sleepers;
  sl->woken = 0;
  sl->next = *list;
  *list = sl;
  if (kind != SLEEP_WAITER) atomic_fetch_add_explicit(&pool->nsleeping, 1, memory_order_seq_cst);
  atomic_thread_fence(memory_order_seq_cst);
  if (wc != NULL) wc->mark(wc->ctx, 1);
  int skip = atomic_load_explicit(&pool->shutdown, memory_order_seq_cst) ||
             (kind != SLEEP_WAITER && has_work(pool)) || (wc != NULL && wc->done(wc->ctx));
  if (!skip) {
    if (is_worker) atomic_fetch_add_explicit(&pool->nworkers_asleep, 1, memory_order_relaxed);
    while (!sl->woken) pthread_cond_wait(&sl->cv, &pool->sleep_mu);
    if (is_worker) atomic_fetch_sub_explicit(&pool->nworkers_asleep, 1, memory_order_relaxed);
  } else if (!sl->woken) {
    /* Still on the list: take it off. */
    for (sleeper **pp = list; *pp != NULL; pp = &(*pp)->next) {
      if (*pp == sl) {
        *pp = sl->next;
        if (kind != SLEEP_WAITER)
          atomic_fetch_sub_explicit(&pool->nsleeping, 1, memory_order_relaxed);
        break;
      }
    }
  }
  if (wc != NULL) wc->mark(wc->ctx, 0);
  pthread_mutex_unlock(&pool->sleep_mu);
}

/* ---------------------------------------------------------------------------------------------
 * Injection queue */

static void inject(dml_pool *pool, task *t) {
  /* caller holds inj_mu */
  t->next = NULL;
  if (pool->inj_tail != NULL)
    pool->inj_tail->next = t;
  else
    pool->inj_head = t;
  pool->inj_tail = t;
  atomic_fetch_add_explicit(&pool->inj_count, 1, memory_order_relaxed);
  count(&pool->injected, 1);
}

static task *inj_pop(dml_pool *pool) {
  pthread_mutex_lock(&pool->inj_mu);
  task *t = pool->inj_head;
  if (t != NULL) {
    pool->inj_head = t->next;
    if (pool->inj_head == NULL) pool->inj_tail = NULL;
    atomic_fetch_sub_explicit(&pool->inj_count, 1, memory_order_relaxed);
  }
  pthread_mutex_unlock(&pool->inj_mu);
  return t;
}

/* ---------------------------------------------------------------------------------------------
 * Finding and running tasks */

static inline uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  *s = x;
  return x;
}

static task *steal_any(dml_pool *pool, worker *w) {
  static _Thread_local uint64_t ext_rng;
  uint64_t *rng = w != NULL ? &w->rng : &ext_rng;
  if (*rng == 0) *rng = (uint64_t)(uintptr_t)&ext_rng ^ 0x9e3779b97f4a7c15ull;
  unsigned n = pool->n;
  unsigned start = (unsigned)(xorshift(rng) % n);
  for (unsigned i = 0; i < n; i++) {
    unsigned v = start + i < n ? start + i : start + i - n;
    if (w != NULL && v == w->index) continue;
    int lost = 0;
    task *t = dml__deque_steal(&pool->workers[v].dq, &lost);
    if (t != NULL) {
      if (w != NULL)
        count(&w->c.stolen, 1);
      else
        atomic_fetch_add_explicit(&pool->ext_stolen, 1, memory_order_relaxed);
      /* More work where that came from: wake a helper (cascading wake-up). */
      if (dml__deque_size(&pool->workers[v].dq) > 0) maybe_wake(pool);
      return t;
    }
    if (w != NULL) count(&w->c.steal_fails, 1);
  }
  return NULL;
}

static task *find_work(dml_pool *pool, worker *w) {
  task *t;
  if (w != NULL && (t = dml__deque_take(&w->dq)) != NULL) return t;
  if (atomic_load_explicit(&pool->inj_count, memory_order_relaxed) > 0 &&
      (t = inj_pop(pool)) != NULL)
    return t;
  return steal_any(pool, w);
}

static int group_is_canceled(const group_impl *g) {
  for (; g != NULL; g = g->parent)
    if (atomic_load_explicit(&g->canceled, memory_order_relaxed)) return 1;
  return 0;
}

static void group_finish_one(group_impl *g) {
  dml_pool *pool = g->pool; /* g may be gone once the count reaches 0 */
  int64_t old = atomic_fetch_sub_explicit(&g->state, 2, memory_order_acq_rel);
  if (old == 3) wake_all(pool); /* the last task, and the waiter sleeps */
}

static void run_task(dml_pool *pool, worker *w, task *t) {
  group_impl *g = t->group;
  if (g == NULL || !group_is_canceled(g)) {
    int rc = t->fn(t->arg);
    if (rc != 0 && g != NULL) {
      int expected = 0;
      atomic_compare_exchange_strong_explicit(&g->error, &expected, rc, memory_order_relaxed,
                                              memory_order_relaxed);
      atomic_store_explicit(&g->canceled, 1, memory_order_relaxed);
    }
  }
  if (w != NULL)
    count(&w->c.executed, 1);
  else
    atomic_fetch_add_explicit(&pool->ext_executed, 1, memory_order_relaxed);
  task_free(pool, w, t);
  if (g != NULL) group_finish_one(g);
}

/* Wait for wc->done. A worker of the pool runs other tasks meanwhile (it must: the tasks it waits
 * for may sit in its own deque); it spins for spin_us looking for work, then sleeps until new work
 * or the completion. A thread outside the pool does not run tasks (the pool has exactly the
 * threads it was given): it spins for spin_us, then sleeps until the completion. */
static void help_until(dml_pool *pool, const wait_cond *wc) {
  worker *w = current_worker(pool);
  if (w == NULL) {
    sleeper ext_sleeper;
    uint64_t deadline = dml_now_ns() + (uint64_t)pool->spin_us * 1000u;
    while (!wc->done(wc->ctx) && dml_now_ns() < deadline)
      for (int i = 0; i < 32; i++) CPU_RELAX();
    if (wc->done(wc->ctx)) return;
    pthread_cond_init(&ext_sleeper.cv, NULL);
    while (!wc->done(wc->ctx)) sleep_until_woken(pool, &ext_sleeper, wc, SLEEP_WAITER);
    pthread_cond_destroy(&ext_sleeper.cv);
    return;
  }
  while (!wc->done(wc->ctx)) {
    task *t = find_work(pool, w);
    if (t != NULL) {
      run_task(pool, w, t);
      continue;
    }
    uint64_t deadline = dml_now_ns() + (uint64_t)pool->spin_us * 1000u;
    while (t == NULL && !wc->done(wc->ctx) && dml_now_ns() < deadline) {
      for (int i = 0; i < 32; i++) CPU_RELAX();
      t = find_work(pool, w);
    }
    if (t != NULL) {
      run_task(pool, w, t);
      continue;
    }
    if (wc->done(wc->ctx)) break;
    sleep_until_woken(pool, &w->sl, wc, SLEEP_HELPER);
  }
}

static void *worker_main(void *arg) {
  worker *w = arg;
  dml_pool *pool = w->pool;
  tls_worker = w;
  for (;;) {
    task *t = find_work(pool, w);
    if (t != NULL) {
      run_task(pool, w, t);
      continue;
    }
    uint64_t idle_start = dml_now_ns();
    uint64_t deadline = idle_start + (uint64_t)pool->spin_us * 1000u;
    while (t == NULL && dml_now_ns() < deadline &&
           !atomic_load_explicit(&pool->shutdown, memory_order_relaxed)) {
      for (int i = 0; i < 32; i++) CPU_RELAX();
      t = find_work(pool, w);
    }
    if (t == NULL) {
      if (atomic_load_explicit(&pool->shutdown, memory_order_acquire)) break;
      count(&w->c.sleeps, 1);
      sleep_until_woken(pool, &w->sl, NULL, SLEEP_IDLE_WORKER);
    }
    count(&w->c.idle_ns, dml_now_ns() - idle_start);
    if (t != NULL) run_task(pool, w, t);
  }
  tls_worker = NULL;
  return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Spawning */

static int spawn_task(dml_pool *pool, group_impl *g, dml_task_fn fn, void *arg,
                      const uint64_t *payload) {
  worker *w = current_worker(pool);
  task *t;
  if (w != NULL) {
    t = task_alloc_local(w);
    if (t == NULL) return DML_ENOMEM;
  } else {
    pthread_mutex_lock(&pool->inj_mu);
    t = task_alloc_shared(pool);
    pthread_mutex_unlock(&pool->inj_mu);
    if (t == NULL) return DML_ENOMEM;
  }
  t->fn = fn;
  t->group = g;
  if (payload != NULL) {
    memcpy(t->payload, payload, sizeof t->payload);
    t->arg = t->payload;
  } else {
    t->arg = arg;
  }
  if (g != NULL) atomic_fetch_add_explicit(&g->state, 2, memory_order_relaxed);
  if (w != NULL) {
    int was_empty = 0;
    if (dml__deque_push(&w->dq, t, &was_empty) != 0) {
      if (g != NULL) atomic_fetch_sub_explicit(&g->state, 2, memory_order_relaxed);
      task_free(pool, w, t);
      return DML_ENOMEM;
    }
    count(&w->c.spawned, 1);
    /* Making the deque non-empty is what a worker falling asleep must not miss: order the push
     * before the look at nsleeping (Dekker with sleep_until_woken). Pushes onto a non-empty
     * deque skip the fence; see the note at the top of the file. */
    if (was_empty) atomic_thread_fence(memory_order_seq_cst);
    maybe_wake(pool);
  } else {
    pthread_mutex_lock(&pool->inj_mu);
    inject(pool, t);
    pthread_mutex_unlock(&pool->inj_mu);
    atomic_thread_fence(memory_order_seq_cst);
    maybe_wake(pool);
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Pool */

void dml_pool_opts_default(dml_pool_opts *opts) {
  memset(opts, 0, sizeof *opts);
}

int dml_pool_create(const dml_pool_opts *opts, dml_pool **out, dml_err *err) {
  dml_pool_opts o;
  if (opts != NULL)
    o = *opts;
  else
    dml_pool_opts_default(&o);
  *out = NULL;
  unsigned n = o.nthreads;
  if (n == 0) {
    int64_t v;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus < 1) cpus = 1;
    int rc = dml_env_i64("DISTML_THREADS", cpus, 1, 1024, &v, err);
    if (rc != 0) return rc;
    n = (unsigned)v;
  }
  if (n > 1024) return dml_err_set(err, DML_EINVAL, "pool: %u threads is more than 1024", n);
  unsigned log2 = o.deque_log2 ? o.deque_log2 : 10;
  if (log2 > 24) return dml_err_set(err, DML_EINVAL, "pool: deque_log2 %u is more than 24", log2);

  dml_pool *pool = dml__calloc(1, sizeof *pool);
  if (pool == NULL) return dml_err_set(err, DML_ENOMEM, "pool: out of memory");
  pool->n = n;
  pool->spin_us = o.spin_us ? o.spin_us : 50;
  snprintf(pool->name, sizeof pool->name, "%.10s", o.name ? o.name : "dml");
  pthread_mutex_init(&pool->inj_mu, NULL);
  pthread_mutex_init(&pool->sleep_mu, NULL);
  int rc = 0;
  pool->workers_raw = dml__calloc(1, (size_t)n * sizeof(worker) + DML__CACHE_LINE);
  if (pool->workers_raw == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "pool: out of memory for %u workers", n);
    goto fail;
  }
  uintptr_t p =
      ((uintptr_t)pool->workers_raw + DML__CACHE_LINE - 1) & ~(uintptr_t)(DML__CACHE_LINE - 1);
  pool->workers = (worker *)p;
  for (unsigned i = 0; i < n; i++) {
    worker *w = &pool->workers[i];
    w->pool = pool;
    w->index = i;
    w->rng = 0x9e3779b97f4a7c15ull * (i + 1) + 1;
    atomic_init(&w->remote_free, NULL);
    pthread_cond_init(&w->sl.cv, NULL);
  }
  for (unsigned i = 0; i < n; i++) {
    worker *w = &pool->workers[i];
    if (dml__deque_init(&w->dq, log2) != 0) {
      rc = dml_err_set(err, DML_ENOMEM, "pool: out of memory for the deque of worker %u", i);
      goto fail;
    }
  }
  for (unsigned i = 0; i < n; i++) {
    worker *w = &pool->workers[i];
    int e = pthread_create(&w->thread, NULL, worker_main, w);
    if (e != 0) {
      rc = dml_err_set(err, DML_ESYS, "pool: cannot start worker thread %u of %u: %s", i, n,
                       strerror(e));
      goto fail;
    }
    w->started = 1;
    char tname[32];
    snprintf(tname, sizeof tname, "%s-%u", pool->name, i);
    tname[15] = '\0'; /* the kernel's limit */
    pthread_setname_np(w->thread, tname);
  }
  *out = pool;
  return 0;
fail:
  dml_pool_destroy(pool);
  return rc;
}

static int detached_done(void *ctx) {
  return atomic_load_explicit(&((dml_pool *)ctx)->detached, memory_order_acquire) == 0;
}

void dml_pool_destroy(dml_pool *pool) {
  if (pool == NULL) return;
  if (pool->workers != NULL) {
    /* Finish the futures: help, and poll (their completion does not wake this thread). */
    while (!detached_done(pool)) {
      task *t = find_work(pool, NULL);
      if (t != NULL) {
        run_task(pool, NULL, t);
      } else {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
      }
    }
    atomic_store_explicit(&pool->shutdown, 1, memory_order_seq_cst);
    wake_all(pool);
    for (unsigned i = 0; i < pool->n; i++) {
      worker *w = &pool->workers[i];
      if (w->started) pthread_join(w->thread, NULL);
    }
    for (unsigned i = 0; i < pool->n; i++) {
      worker *w = &pool->workers[i];
      while (w->slabs != NULL) {
        slab *s = w->slabs;
        w->slabs = s->next;
        dml__free(s);
      }
      dml__deque_free(&w->dq);
      pthread_cond_destroy(&w->sl.cv);
    }
  }
  while (pool->shared_slabs != NULL) {
    slab *s = pool->shared_slabs;
    pool->shared_slabs = s->next;
    dml__free(s);
  }
  dml__free(pool->workers_raw);
  pthread_mutex_destroy(&pool->inj_mu);
  pthread_mutex_destroy(&pool->sleep_mu);
  dml__free(pool);
}

unsigned dml_pool_nthreads(const dml_pool *pool) {
  return pool->n;
}

int dml_pool_worker_index(const dml_pool *pool) {
  worker *w = current_worker(pool);
  return w != NULL ? (int)w->index : -1;
}

void dml_pool_get_stats(const dml_pool *pool, dml_pool_stats *st) {
  memset(st, 0, sizeof *st);
  for (unsigned i = 0; i < pool->n; i++) {
    const counters *c = &pool->workers[i].c;
    st->spawned += atomic_load_explicit(&c->spawned, memory_order_relaxed);
    st->executed += atomic_load_explicit(&c->executed, memory_order_relaxed);
    st->stolen += atomic_load_explicit(&c->stolen, memory_order_relaxed);
    st->steal_fails += atomic_load_explicit(&c->steal_fails, memory_order_relaxed);
    st->sleeps += atomic_load_explicit(&c->sleeps, memory_order_relaxed);
    st->idle_ns += atomic_load_explicit(&c->idle_ns, memory_order_relaxed);
  }
  dml_pool *mp = (dml_pool *)pool; /* atomics are read-only here */
  st->injected = atomic_load_explicit(&mp->injected, memory_order_relaxed);
  st->executed += atomic_load_explicit(&mp->ext_executed, memory_order_relaxed);
  st->stolen += atomic_load_explicit(&mp->ext_stolen, memory_order_relaxed);
  st->sleeping = (unsigned)atomic_load_explicit(&mp->nworkers_asleep, memory_order_relaxed);
}

/* ---------------------------------------------------------------------------------------------
 * Task groups */

static inline group_impl *gi(const dml_task_group *g) {
  return (group_impl *)(uintptr_t)g;
}

void dml_task_group_init(dml_task_group *g, dml_pool *pool) {
  group_impl *x = gi(g);
  x->pool = pool;
  x->parent = NULL;
  atomic_init(&x->state, 0);
  atomic_init(&x->error, 0);
  atomic_init(&x->canceled, 0);
}

void dml_task_group_init_child(dml_task_group *g, dml_task_group *parent) {
  dml_task_group_init(g, gi(parent)->pool);
  gi(g)->parent = gi(parent);
}

int dml_task_spawn(dml_task_group *g, dml_task_fn fn, void *arg) {
  group_impl *x = gi(g);
  if (fn == NULL) return DML_EINVAL;
  if (group_is_canceled(x)) return DML_ECANCELED;
  return spawn_task(x->pool, x, fn, arg, NULL);
}

static int group_done(void *ctx) {
  return (atomic_load_explicit(&((group_impl *)ctx)->state, memory_order_acquire) >> 1) == 0;
}

static void group_mark(void *ctx, int sleeping) {
  group_impl *x = ctx;
  if (sleeping)
    atomic_fetch_or_explicit(&x->state, 1, memory_order_seq_cst);
  else
    atomic_fetch_and_explicit(&x->state, ~(int64_t)1, memory_order_seq_cst);
}

int dml_task_group_wait(dml_task_group *g) {
  group_impl *x = gi(g);
  if (!group_done(x)) {
    wait_cond wc = {group_done, group_mark, x};
    help_until(x->pool, &wc);
  }
  int rc = atomic_load_explicit(&x->error, memory_order_relaxed);
  if (rc == 0 && group_is_canceled(x)) rc = DML_ECANCELED;
  atomic_store_explicit(&x->error, 0, memory_order_relaxed);
  atomic_store_explicit(&x->canceled, 0, memory_order_relaxed);
  return rc;
}

void dml_task_group_cancel(dml_task_group *g) {
  atomic_store_explicit(&gi(g)->canceled, 1, memory_order_relaxed);
}

int dml_task_group_is_canceled(const dml_task_group *g) {
  return group_is_canceled(gi(g));
}

/* ---------------------------------------------------------------------------------------------
 * Parallel-for: a range task keeps the left half and spawns the right half until it is no
 * bigger than the grain, so the first steals take the biggest pieces. */

typedef struct pfor {
  dml_range_fn body;
  void *ctx;
  int64_t grain;
  group_impl *g;
} pfor;

static int pfor_task(void *arg) {
  const uint64_t *p = arg;
  int64_t lo = (int64_t)p[0], hi = (int64_t)p[1];
  pfor *pf = (pfor *)(uintptr_t)p[2];
  while (hi - lo > pf->grain) {
    if (group_is_canceled(pf->g)) return 0;
    int64_t mid = lo + (hi - lo) / 2;
    uint64_t right[3] = {(uint64_t)mid, (uint64_t)hi, (uint64_t)(uintptr_t)pf};
    int rc = spawn_task(pf->g->pool, pf->g, pfor_task, NULL, right);
    if (rc != 0) {
      rc = pfor_task(right); /* out of task records: do it here */
      if (rc != 0) return rc;
    }
    hi = mid;
  }
  return pf->body(lo, hi, pf->ctx);
}

int dml_parallel_for(dml_pool *pool, int64_t lo, int64_t hi, int64_t grain, dml_range_fn body,
                     void *ctx) {
  if (pool == NULL || body == NULL || grain < 0) return DML_EINVAL;
  if (hi <= lo) return 0;
  if (grain == 0) {
    grain = (hi - lo) / (8 * (int64_t)pool->n);
    if (grain < 1) grain = 1;
  }
  dml_task_group g;
  dml_task_group_init(&g, pool);
  pfor pf = {body, ctx, grain, gi(&g)};
  uint64_t root[3] = {(uint64_t)lo, (uint64_t)hi, (uint64_t)(uintptr_t)&pf};
  int rc = spawn_task(pool, gi(&g), pfor_task, NULL, root);
  if (rc != 0) return rc;
  return dml_task_group_wait(&g);
}

/* ---------------------------------------------------------------------------------------------
 * Futures. A future counts its unfinished inputs (plus one held while it registers with them);
 * the input that brings the count to zero schedules it. Each future carries one link per input,
 * which that input threads onto its list of dependents. */

typedef struct succ_link {
  struct dml_future *dependent;
  struct succ_link *next;
} succ_link;

struct dml_future {
  dml_pool *pool;
  dml_future_fn fn;
  void *arg;
  _Atomic int refs;
  _Atomic int deps_left;
  _Atomic int dep_error;
  _Atomic int done;
  _Atomic int sleepers; /* waiters asleep */
  pthread_mutex_t mu;   /* guards succ, status, value */
  int status;
  void *value;
  succ_link *succ;
  size_t nlinks;
  succ_link links[];
};

static void future_unref(dml_future *f) {
  if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) {
    pthread_mutex_destroy(&f->mu);
    dml__free(f);
  }
}

static int future_task(void *arg);

static void future_schedule(dml_future *f) {
  if (spawn_task(f->pool, NULL, future_task, f, NULL) != 0) {
    /* No task record to be had: run it on this thread rather than lose it. */
    future_task(f);
  }
}

static void future_input_done(dml_future *f, int input_status) {
  if (input_status != 0) {
    int expected = 0;
    atomic_compare_exchange_strong_explicit(&f->dep_error, &expected, input_status,
                                            memory_order_relaxed, memory_order_relaxed);
  }
  if (atomic_fetch_sub_explicit(&f->deps_left, 1, memory_order_acq_rel) == 1) future_schedule(f);
}

static int future_task(void *arg) {
  dml_future *f = arg;
  dml_pool *pool = f->pool;
  void *value = NULL;
  int status = atomic_load_explicit(&f->dep_error, memory_order_relaxed);
  if (status == 0) status = f->fn(f->arg, &value);
  pthread_mutex_lock(&f->mu);
  f->status = status;
  f->value = value;
  succ_link *l = f->succ;
  f->succ = NULL;
  atomic_store_explicit(&f->done, 1, memory_order_seq_cst);
  pthread_mutex_unlock(&f->mu);
  if (atomic_load_explicit(&f->sleepers, memory_order_seq_cst) > 0) wake_all(pool);
  while (l != NULL) {
    succ_link *next = l->next; /* l lives in the dependent, which may be freed once notified */
    future_input_done(l->dependent, status);
    l = next;
  }
  future_unref(f); /* the reference held for running */
  atomic_fetch_sub_explicit(&pool->detached, 1, memory_order_release);
  return 0;
}

int dml_future_async(dml_pool *pool, dml_future_fn fn, void *arg, dml_future *const *deps,
                     size_t ndeps, dml_future **out) {
  *out = NULL;
  if (pool == NULL || fn == NULL || (ndeps > 0 && deps == NULL) || ndeps > (1u << 20))
    return DML_EINVAL;
  dml_future *f = dml__calloc(1, sizeof *f + ndeps * sizeof(succ_link));
  if (f == NULL) return DML_ENOMEM;
  f->pool = pool;
  f->fn = fn;
  f->arg = arg;
  f->nlinks = ndeps;
  pthread_mutex_init(&f->mu, NULL);
  atomic_init(&f->refs, 2); /* the caller's, and the one held until it has run */
  atomic_init(&f->deps_left, (int)ndeps + 1);
  atomic_init(&f->dep_error, 0);
  atomic_init(&f->done, 0);
  atomic_init(&f->sleepers, 0);
  atomic_fetch_add_explicit(&pool->detached, 1, memory_order_relaxed);
  for (size_t i = 0; i < ndeps; i++) {
    dml_future *d = deps[i];
    pthread_mutex_lock(&d->mu);
    if (atomic_load_explicit(&d->done, memory_order_relaxed)) {
      int st = d->status;
      pthread_mutex_unlock(&d->mu);
      future_input_done(f, st); /* cannot reach 0: the registration reference is still held */
    } else {
      f->links[i].dependent = f;
      f->links[i].next = d->succ;
      d->succ = &f->links[i];
      pthread_mutex_unlock(&d->mu);
    }
  }
  *out = f;
  future_input_done(f, 0);
  return 0;
}

static int future_done_pred(void *ctx) {
  return atomic_load_explicit(&((dml_future *)ctx)->done, memory_order_acquire);
}

static void future_mark(void *ctx, int sleeping) {
  dml_future *f = ctx;
  atomic_fetch_add_explicit(&f->sleepers, sleeping ? 1 : -1, memory_order_seq_cst);
}

int dml_future_wait(dml_future *f, void **value) {
  if (f == NULL) return DML_EINVAL;
  if (!future_done_pred(f)) {
    wait_cond wc = {future_done_pred, future_mark, f};
    help_until(f->pool, &wc);
  }
  pthread_mutex_lock(&f->mu);
  int st = f->status;
  if (value != NULL) *value = f->value;
  pthread_mutex_unlock(&f->mu);
  return st;
}

int dml_future_is_done(const dml_future *f) {
  return future_done_pred((void *)(uintptr_t)f);
}

void dml_future_release(dml_future *f) {
  if (f != NULL) future_unref(f);
}
