/* Internals of the task layer shared between its files: the Chase-Lev work-stealing deque.
 * Not installed; nothing outside src/task includes it (except the deque's own unit test). */
#ifndef DISTML_TASK_INTERNAL_H
#define DISTML_TASK_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/internal.h"
#include "distml/task.h"

#define DML__CACHE_LINE 64

/* A ring of atomic slots; grown arrays keep a link to the one they replaced, which stays
 * allocated until the deque is freed (a thief may still be reading it). */
typedef struct dml__deque_array {
  int64_t cap; /* power of two */
  struct dml__deque_array *prev;
  _Atomic(void *) slot[];
} dml__deque_array;

/* Chase-Lev deque (Le, Pop, Cohen, Zappa Nardelli, PPoPP 2013): the owner pushes and takes at
 * the bottom, any thread steals at the top. Items are non-NULL pointers. */
typedef struct dml__deque {
  _Alignas(DML__CACHE_LINE) _Atomic int64_t top;
  _Alignas(DML__CACHE_LINE) _Atomic int64_t bottom;
  _Atomic(dml__deque_array *) array;
} dml__deque;

/* Capacity 2^log2 to start with. Returns 0 or DML_ENOMEM. */
int dml__deque_init(dml__deque *q, unsigned log2);
void dml__deque_free(dml__deque *q);
/* Owner only. Returns 0, or DML_ENOMEM when the deque is full and cannot grow. *was_empty (if
 * not NULL) tells whether the owner saw the deque empty just before this push. */
int dml__deque_push(dml__deque *q, void *item, int *was_empty);
/* Owner only. The most recently pushed item, or NULL when empty. */
void *dml__deque_take(dml__deque *q);
/* Any thread. The oldest item, or NULL when empty or when another thread won the race for it
 * (then *lost is set to 1). */
void *dml__deque_steal(dml__deque *q, int *lost);
/* Number of items; exact only when the deque is quiet. */
int64_t dml__deque_size(dml__deque *q);

#endif
