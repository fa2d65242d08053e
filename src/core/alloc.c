/* Allocation hooks. Every allocation in distml goes through dml__malloc and friends so that a
 * program can substitute its allocator and tests can inject failures. */
#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

static dml_malloc_fn g_malloc = malloc;
static dml_realloc_fn g_realloc = realloc;
static dml_calloc_fn g_calloc = calloc;
static dml_free_fn g_free = free;

int dml_replace_allocator(dml_malloc_fn m, dml_realloc_fn r, dml_calloc_fn c, dml_free_fn f) {
  if (m == NULL || r == NULL || c == NULL || f == NULL) return DML_EINVAL;
  g_malloc = m;
  g_realloc = r;
  g_calloc = c;
  g_free = f;
  return 0;
}

void *dml__malloc(size_t size) {
  return g_malloc(size ? size : 1);
}
void *dml__calloc(size_t count, size_t size) {
  return g_calloc(count ? count : 1, size ? size : 1);
}
void *dml__realloc(void *ptr, size_t size) {
  return g_realloc(ptr, size ? size : 1);
}

void dml__free(void *ptr) {
  if (ptr != NULL) g_free(ptr);
}

char *dml__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = dml__malloc(n);
  if (d != NULL) memcpy(d, s, n);
  return d;
}

size_t dml__mul_size(size_t count, size_t size, int *overflow) {
  if (size != 0 && count > SIZE_MAX / size) {
    *overflow = 1;
    return 0;
  }
  return count * size;
}
