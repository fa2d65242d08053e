/* Tests for the Chase-Lev deque alone: LIFO for the owner, FIFO for thieves, growth, and a race
 * of one owner against thieves in which every item must come out exactly once.
 * test-labels: tsan */
#include <pthread.h>
#include <stdatomic.h>

#include "task/task_internal.h"
#include "testutil.h"

#define NITEMS 200000
#define NTHIEVES 2

static dml__deque g_q;
static _Atomic int g_seen[NITEMS + 1];
static _Atomic int g_done;
static uintptr_t g_items[NITEMS + 1];

static void test_sequential(void) {
  dml__deque q;
  T_OK(dml__deque_init(&q, 1)); /* capacity 2: pushing 100 forces several growths */
  static int vals[100];
  for (int i = 0; i < 100; i++) {
    int was_empty = -1;
    T_OK(dml__deque_push(&q, &vals[i], &was_empty));
    T_EQ_INT(was_empty, i == 0);
  }
  T_EQ_INT(dml__deque_size(&q), 100);
  int lost = 0;
  T_ASSERT(dml__deque_steal(&q, &lost) == &vals[0]); /* oldest */
  T_ASSERT(dml__deque_take(&q) == &vals[99]);        /* newest */
  for (int i = 98; i >= 1; i--) T_ASSERT(dml__deque_take(&q) == &vals[i]);
  T_ASSERT(dml__deque_take(&q) == NULL);
  T_ASSERT(dml__deque_steal(&q, &lost) == NULL);
  T_EQ_INT(lost, 0);
  dml__deque_free(&q);
  T_EQ_INT(dml__deque_init(&q, 0), DML_EINVAL);
}

static void record(void *x) {
  uintptr_t v = *(uintptr_t *)x;
  if (v < 1 || v > NITEMS) T_FAIL("item value %lu out of range", (unsigned long)v);
  int prev = atomic_fetch_add(&g_seen[v], 1);
  if (prev != 0) T_FAIL("item %lu seen twice", (unsigned long)v);
}

static void *thief(void *arg) {
  long *got = arg;
  while (!atomic_load(&g_done) || dml__deque_size(&g_q) > 0) {
    void *x = dml__deque_steal(&g_q, NULL);
    if (x != NULL) {
      record(x);
      (*got)++;
    }
  }
  return NULL;
}

static void test_race(void) {
  T_OK(dml__deque_init(&g_q, 3));
  for (uintptr_t i = 1; i <= NITEMS; i++) g_items[i] = i;
  pthread_t th[NTHIEVES];
  long got[NTHIEVES] = {0};
  for (int i = 0; i < NTHIEVES; i++) T_EQ_INT(pthread_create(&th[i], NULL, thief, &got[i]), 0);
  long owner_got = 0;
  /* Bursts of pushes with some takes in between, so the deque grows and shrinks. */
  for (uintptr_t i = 1; i <= NITEMS; i++) {
    T_OK(dml__deque_push(&g_q, &g_items[i], NULL));
    if (i % 3 == 0) {
      void *x = dml__deque_take(&g_q);
      if (x != NULL) {
        record(x);
        owner_got++;
      }
    }
  }
  void *x;
  while ((x = dml__deque_take(&g_q)) != NULL) {
    record(x);
    owner_got++;
  }
  atomic_store(&g_done, 1);
  long total = owner_got;
  for (int i = 0; i < NTHIEVES; i++) {
    pthread_join(th[i], NULL);
    total += got[i];
  }
  T_EQ_INT(total, NITEMS);
  for (int i = 1; i <= NITEMS; i++)
    if (atomic_load(&g_seen[i]) != 1) T_FAIL("item %d seen %d times", i, atomic_load(&g_seen[i]));
  dml__deque_free(&g_q);
  printf("deque race: owner took %ld, thieves %ld\n", owner_got, total - owner_got);
}

int main(void) {
  test_sequential();
  test_race();
  printf("deque_test: ok\n");
  return 0;
}
