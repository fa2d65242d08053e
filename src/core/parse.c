/* Strict number parsing for flags and environment variables (the whole string must be a number,
 * in range, or the caller gets an error that says which and why), and the environment's default
 * polling budget for waits. */
#include "core/internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

int dml_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out, dml_err *err) {
  if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
    return dml_err_set(err, DML_EINVAL, "'%s' is not an integer", s ? s : "");
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (*end != '\0') return dml_err_set(err, DML_EINVAL, "'%s' is not an integer", s);
  if (errno == ERANGE || v < min || v > max)
    return dml_err_set(err, DML_ERANGE, "%s is out of range [%lld, %lld]", s, (long long)min,
                       (long long)max);
  *out = v;
  return 0;
}

int dml_parse_double(const char *s, double min, double max, double *out, dml_err *err) {
  if (s == NULL || *s == '\0' || isspace((unsigned char)*s))
    return dml_err_set(err, DML_EINVAL, "'%s' is not a number", s ? s : "");
  errno = 0;
  char *end;
  double v = strtod(s, &end);
  if (*end != '\0') return dml_err_set(err, DML_EINVAL, "'%s' is not a number", s);
  if (!isfinite(v) || errno == ERANGE || v < min || v > max)
    return dml_err_set(err, DML_ERANGE, "%s is out of range [%g, %g]", s, min, max);
  *out = v;
  return 0;
}

int dml_parse_size(const char *s, uint64_t max, uint64_t *out, dml_err *err) {
  if (s == NULL || !isdigit((unsigned char)*s))
    return dml_err_set(err, DML_EINVAL, "'%s' is not a size (e.g. 8, 4K, 64M)", s ? s : "");
  errno = 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  uint64_t mult = 1;
  if (*end == 'K' || *end == 'k') mult = 1ull << 10;
  if (*end == 'M' || *end == 'm') mult = 1ull << 20;
  if (*end == 'G' || *end == 'g') mult = 1ull << 30;
  if (mult != 1) end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end != '\0') return dml_err_set(err, DML_EINVAL, "'%s' is not a size (e.g. 8, 4K, 64M)", s);
  if (errno == ERANGE || v > max / mult)
    return dml_err_set(err, DML_ERANGE, "size %s is larger than %llu bytes", s,
                       (unsigned long long)max);
  *out = v * mult;
  return 0;
}

int dml_env_i64(const char *name, int64_t def, int64_t min, int64_t max, int64_t *out,
                dml_err *err) {
  const char *s = getenv(name);
  if (s == NULL || *s == '\0') {
    *out = def;
    return 0;
  }
  dml_err e = {0};
  int rc = dml_parse_i64(s, min, max, out, &e);
  if (rc != 0) return dml_err_set(err, rc, "environment variable %s: %s", name, e.msg);
  return 0;
}

int dml__default_spin_us(void) {
  const char *v = getenv("LOCAL_WORLD_SIZE");
  if (v == NULL) v = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  long n = v ? strtol(v, NULL, 10) : 0;
  cpu_set_t allowed;
  if (n < 1 || sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return 0;
  /* A rank the launcher pinned has one core of its own (dml_cli_pin_local_rank). */
  int own_core = getenv("DISTML_PINNED_CPU") != NULL;
  return n <= CPU_COUNT(&allowed) || own_core ? 200 : 0;
}
