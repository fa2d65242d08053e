/* Error reporting and flag-value parsing for the distml command. */
#include "cli/cli.h"

#include <errno.h>
#include <libgen.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

void dml_cli_check_list(const char *cmd, const char *flag, const char *value) {
  size_t n = strlen(value);
  if (n == 0 || value[0] == ',' || value[n - 1] == ',' || strstr(value, ",,") != NULL)
    dml_cli_usage_error(cmd, "%s %s: an empty item in the list", flag, value);
}

void dml_cli_check_output(const char *cmd, const char *flag, const char *path) {
  struct stat st;
  if (path[0] == 0) dml_cli_usage_error(cmd, "%s: an empty file name", flag);
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    dml_cli_usage_error(cmd, "%s %s: exists and is not a regular file", flag, path);
  char *copy = strdup(path);
  if (copy == NULL) dml_cli_fail(cmd, "out of memory");
  const char *dir = dirname(copy);
  int bad = stat(dir, &st) != 0 ? errno : !S_ISDIR(st.st_mode) ? ENOTDIR : 0;
  if (bad == 0 && access(dir, W_OK | X_OK) != 0) bad = errno;
  if (bad) {
    char d[512];
    snprintf(d, sizeof d, "%s", dir);
    free(copy);
    dml_cli_usage_error(cmd, "%s %s: cannot write in directory %s: %s", flag, path, d,
                        strerror(bad));
  }
  free(copy);
}

/* A rank started by the local launcher runs on one core of its own when the process may use at
 * least as many cores as there are local ranks: its communication threads then share that core
 * with its compute instead of preempting another rank's (measured: 2 ranks on 2 cores, per-worker
 * batch 256, +15% samples/s), and a rank that polls never shares a core with its peer. Rank i
 * takes the i-th core of the allowed set. Called before any thread exists, so every thread
 * inherits it; DISTML_PINNED_CPU tells the collectives. DISTML_NO_PIN=1 or more ranks than cores
 * leave scheduling alone. */
void dml_cli_pin_local_rank(void) {
  const char *lr = getenv("LOCAL_RANK"), *lws = getenv("LOCAL_WORLD_SIZE");
  if (lr == NULL || lws == NULL || getenv("DISTML_NO_PIN") != NULL) return;
  int rank = atoi(lr), n = atoi(lws);
  cpu_set_t allowed;
  if (n < 2 || rank < 0 || rank >= n || sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
    return;
  if (CPU_COUNT(&allowed) < n) return;
  int cpu = -1;
  for (int c = 0, k = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &allowed) && k++ == rank) {
      cpu = c;
      break;
    }
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    dml_log(DML_LOG_DEBUG, "could not pin rank %d to cpu %d", rank, cpu);
    return;
  }
  char v[16];
  snprintf(v, sizeof v, "%d", cpu);
  setenv("DISTML_PINNED_CPU", v, 1); /* the collectives may poll: the core is this rank's */
}
