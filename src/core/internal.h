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

#define DML__MIN(a, b) ((a) < (b) ? (a) : (b))
#define DML__MAX(a, b) ((a) > (b) ? (a) : (b))
#define DML__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
