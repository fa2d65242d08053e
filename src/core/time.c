/* Monotonic time. */
#include "core/internal.h"

#include <time.h>

uint64_t dml_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double dml_now_s(void) {
  return (double)dml_now_ns() * 1e-9;
}
