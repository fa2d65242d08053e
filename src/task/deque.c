/* The Chase-Lev work-stealing deque with the C11 memory orders of Le et al., "Correct and
 * efficient work-stealing for weak memory models" (PPoPP 2013), Fig. 1. Two deliberate
 * strengthenings, free on x86 and ARMv8 alike: the slot is written with release and read with
 * acquire, so the contents of a task are published by the slot itself (ThreadSanitizer does not
 * model stand-alone fences, and a thief may read a bottom restored by take rather than the one
 * published by push). It stores pointers only; it knows nothing about tasks. */
#include "task/task_internal.h"

#include <stdlib.h>

static dml__deque_array *array_new(int64_t cap) {
  int overflow = 0;
  size_t bytes = dml__mul_size((size_t)cap, sizeof(_Atomic(void *)), &overflow);
  if (overflow || bytes > SIZE_MAX - sizeof(dml__deque_array)) return NULL;
  dml__deque_array *a = dml__malloc(sizeof(dml__deque_array) + bytes);
  if (a == NULL) return NULL;
  a->cap = cap;
  a->prev = NULL;
  for (int64_t i = 0; i < cap; i++) atomic_init(&a->slot[i], NULL);
  return a;
}

int dml__deque_init(dml__deque *q, unsigned log2) {
  if (log2 < 1 || log2 > 30) return DML_EINVAL;
  dml__deque_array *a = array_new((int64_t)1 << log2);
  if (a == NULL) return DML_ENOMEM;
  atomic_init(&q->top, 0);
  atomic_init(&q->bottom, 0);
  atomic_init(&q->array, a);
  return 0;
}

void dml__deque_free(dml__deque *q) {
  dml__deque_array *a = atomic_load_explicit(&q->array, memory_order_relaxed);
  while (a != NULL) {
    dml__deque_array *prev = a->prev;
    dml__free(a);
    a = prev;
  }
  atomic_store_explicit(&q->array, NULL, memory_order_relaxed);
}

/* Owner only: copy the live items [t, b) into an array twice as big. */
static dml__deque_array *grow(dml__deque *q, dml__deque_array *a, int64_t t, int64_t b) {
  if (a->cap > ((int64_t)1 << 40)) return NULL;
  dml__deque_array *na = array_new(a->cap * 2);
  if (na == NULL) return NULL;
  for (int64_t i = t; i < b; i++) {
    void *x = atomic_load_explicit(&a->slot[i & (a->cap - 1)], memory_order_relaxed);
    atomic_store_explicit(&na->slot[i & (na->cap - 1)], x, memory_order_relaxed);
  }
  na->prev = a;
  atomic_store_explicit(&q->array, na, memory_order_release);
  return na;
}

int dml__deque_push(dml__deque *q, void *item, int *was_empty) {
  int64_t b = atomic_load_explicit(&q->bottom, memory_order_relaxed);
  int64_t t = atomic_load_explicit(&q->top, memory_order_acquire);
  if (was_empty != NULL) *was_empty = b <= t;
  dml__deque_array *a = atomic_load_explicit(&q->array, memory_order_relaxed);
  if (b - t > a->cap - 1) {
    a = grow(q, a, t, b);
    if (a == NULL) return DML_ENOMEM;
  }
  atomic_store_explicit(&a->slot[b & (a->cap - 1)], item, memory_order_release);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&q->bottom, b + 1, memory_order_release);
  return 0;
}

void *dml__deque_take(dml__deque *q) {
  int64_t b = atomic_load_explicit(&q->bottom, memory_order_relaxed) - 1;
  dml__deque_array *a = atomic_load_explicit(&q->array, memory_order_relaxed);
  atomic_store_explicit(&q->bottom, b, memory_order_relaxed);
  atomic_thread_fence(memory_order_seq_cst);
  int64_t t = atomic_load_explicit(&q->top, memory_order_relaxed);
  void *x = NULL;
  if (t <= b) {
    x = atomic_load_explicit(&a->slot[b & (a->cap - 1)], memory_order_relaxed);
    if (t == b) {
      /* The last item: race the thieves for it. */
      if (!atomic_compare_exchange_strong_explicit(&q->top, &t, t + 1, memory_order_seq_cst,
                                                   memory_order_relaxed))
        x = NULL;
      atomic_store_explicit(&q->bottom, b + 1, memory_order_relaxed);
    }
  } else {
    atomic_store_explicit(&q->bottom, b + 1, memory_order_relaxed);
  }
  return x;
}

void *dml__deque_steal(dml__deque *q, int *lost) {
  int64_t t = atomic_load_explicit(&q->top, memory_order_acquire);
  atomic_thread_fence(memory_order_seq_cst);
  int64_t b = atomic_load_explicit(&q->bottom, memory_order_acquire);
  if (t >= b) return NULL;
  dml__deque_array *a = atomic_load_explicit(&q->array, memory_order_acquire);
  void *x = atomic_load_explicit(&a->slot[t & (a->cap - 1)], memory_order_acquire);
  if (!atomic_compare_exchange_strong_explicit(&q->top, &t, t + 1, memory_order_seq_cst,
                                               memory_order_relaxed)) {
    if (lost != NULL) *lost = 1;
    return NULL;
  }
  return x;
}

int64_t dml__deque_size(dml__deque *q) {
  int64_t b = atomic_load_explicit(&q->bottom, memory_order_seq_cst);
  int64_t t = atomic_load_explicit(&q->top, memory_order_seq_cst);
  return b > t ? b - t : 0;
}
