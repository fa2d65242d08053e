/* Tiny assertion macros for distml's C tests: on failure print where and what, and exit 1.
 * Tests run as separate programs under CTest, so exiting is the right way to fail. */
#ifndef DISTML_TESTUTIL_H
#define DISTML_TESTUTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_FAIL(...)                                       \
  do {                                                    \
    fprintf(stderr, "%s:%d: FAIL: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__);                         \
    fprintf(stderr, "\n");                                \
    exit(1);                                              \
  } while (0)
#define T_ASSERT(c)                       \
  do {                                    \
    if (!(c)) T_FAIL("assertion %s", #c); \
  } while (0)
#define T_EQ_INT(a, b)                                                      \
  do {                                                                      \
    long long t_a_ = (long long)(a), t_b_ = (long long)(b);                 \
    if (t_a_ != t_b_) T_FAIL("%s == %s: %lld != %lld", #a, #b, t_a_, t_b_); \
  } while (0)
#define T_OK(expr)                                                                    \
  do {                                                                                \
    int t_rc_ = (expr);                                                               \
    if (t_rc_ != 0) T_FAIL("%s returned %d (%s)", #expr, t_rc_, dml_strerror(t_rc_)); \
  } while (0)
#define T_NEAR(a, b, tol)                                                          \
  do {                                                                             \
    double t_a_ = (double)(a), t_b_ = (double)(b);                                 \
    if (!(fabs(t_a_ - t_b_) <= (tol)))                                             \
      T_FAIL("%s ~ %s: %.9g vs %.9g (tol %g)", #a, #b, t_a_, t_b_, (double)(tol)); \
  } while (0)
#define T_CONTAINS(hay, needle)                                               \
  do {                                                                        \
    const char *t_h_ = (hay);                                                 \
    if (t_h_ == NULL || strstr(t_h_, (needle)) == NULL)                       \
      T_FAIL("'%s' does not contain '%s'", t_h_ ? t_h_ : "(null)", (needle)); \
  } while (0)

#endif
