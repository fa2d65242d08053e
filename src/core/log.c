/* Logging to stderr with a level and a rank prefix. One line per call, written with a single
 * fprintf so lines from threads do not interleave mid-line. */
#include "core/internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_int g_level = -1; /* -1: not yet read from DISTML_LOG */
static atomic_int g_rank = -1;

static int level_from_env(void) {
  const char *s = getenv("DISTML_LOG");
  if (s == NULL) return DML_LOG_INFO;
  if (strcmp(s, "error") == 0) return DML_LOG_ERROR;
  if (strcmp(s, "warn") == 0) return DML_LOG_WARN;
  if (strcmp(s, "debug") == 0) return DML_LOG_DEBUG;
  return DML_LOG_INFO;
}

void dml_log_set_level(dml_log_level level) {
  atomic_store(&g_level, (int)level);
}

dml_log_level dml_log_get_level(void) {
  int l = atomic_load(&g_level);
  if (l < 0) {
    l = level_from_env();
    atomic_store(&g_level, l);
  }
  return (dml_log_level)l;
}

void dml_log_set_rank(int rank) {
  atomic_store(&g_rank, rank);
}

void dml_vlog(dml_log_level level, const char *fmt, va_list ap) {
  static const char *names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
  if ((int)level > (int)dml_log_get_level()) return;
  char msg[1024];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  int rank = atomic_load(&g_rank);
  if (rank >= 0)
    fprintf(stderr, "[distml r%d %s] %s\n", rank, names[level], msg);
  else
    fprintf(stderr, "[distml %s] %s\n", names[level], msg);
}

void dml_log(dml_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  dml_vlog(level, fmt, ap);
  va_end(ap);
}
