/* Error reporting and flag-value parsing for the distml command. */
#include "cli/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "distml/core.h"

static void vreport(const char *cmd, const char *fmt, va_list ap) {
  fprintf(stderr, "distml%s%s: error: ", cmd ? " " : "", cmd ? cmd : "");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

void dml_cli_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(cmd, fmt, ap);
  va_end(ap);
  fprintf(stderr, "(see 'distml %s --help')\n", cmd ? cmd : "");
  exit(2);
}

void dml_cli_fail(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(cmd, fmt, ap);
  va_end(ap);
  exit(1);
}

int64_t dml_cli_int(const char *cmd, const char *flag, const char *value, int64_t min,
                    int64_t max) {
  int64_t v;
  dml_err e = {0};
  if (dml_parse_i64(value, min, max, &v, &e) != 0) dml_cli_usage_error(cmd, "%s: %s", flag, e.msg);
  return v;
}

double dml_cli_double(const char *cmd, const char *flag, const char *value, double min,
                      double max) {
  double v;
  dml_err e = {0};
  if (dml_parse_double(value, min, max, &v, &e) != 0)
    dml_cli_usage_error(cmd, "%s: %s", flag, e.msg);
  return v;
}
