/* Internal helpers shared by every layer of distml (names start with dml__). Not installed. */
#ifndef DISTML_CORE_INTERNAL_H
#define DISTML_CORE_INTERNAL_H

#include "distml/core.h"

#include <stddef.h>

/* Allocation through the replaceable hooks (dml_replace_allocator). free accepts NULL. */
void *dml__malloc(size_t size);
void *dml__calloc(size_t count, size_t size);
void *dml__realloc(void *ptr, size_t size);
void dml__free(void *ptr);
char *dml__strdup(const char *s);
/* count * size, or 0 and *overflow set when it does not fit in size_t. */
size_t dml__mul_size(size_t count, size_t size, int *overflow);

struct timespec;
/* *ts = CLOCK_MONOTONIC now + ms (ms >= 0): a deadline for pthread_cond_timedwait on a condition
 * variable set to that clock. */
void dml__deadline_in_ms(struct timespec *ts, int ms);

/* How long a thread waiting for a peer should poll before it sleeps, by default: polling pays
 * when every local rank has a core of its own (a sleeping rank on an idle virtual CPU takes
 * 50-200 us to wake; measured: 8-byte all-reduce 80-200 -> 5-9 us, 2 ranks on 2 cores); with
 * more ranks than cores a polling rank would hold the core its peer needs. 200 us when the local
 * rank count (LOCAL_WORLD_SIZE or OMPI_COMM_WORLD_LOCAL_SIZE) fits the allowed CPUs or the
 * launcher pinned this rank (DISTML_PINNED_CPU); unknown count: 0. */
int dml__default_spin_us(void);

#define DML__MIN(a, b) ((a) < (b) ? (a) : (b))
#define DML__MAX(a, b) ((a) > (b) ? (a) : (b))
#define DML__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
