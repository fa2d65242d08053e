/* A small harness for the communicator tests: pick a free loopback port, fork N ranks that each
 * run a function with its own communicator options, and collect their exit codes (a rank that
 * does not finish within the watchdog is killed, by pid, and counts as a failure).
 * It is test code only: no part of libdistml. */
#ifndef DISTML_TEST_COMM_HARNESS_H
#define DISTML_TEST_COMM_HARNESS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "distml/comm.h"
#include "testutil.h"

/* A free TCP port on 127.0.0.1 (bound to port 0, read back, closed). */
static inline int th_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  T_ASSERT(fd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  T_ASSERT(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
  socklen_t sl = sizeof(sa);
  T_ASSERT(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
  close(fd);
  return ntohs(sa.sin_port);
}

/* In a forked rank: the environment the launcher would set for rank r of n on loopback, tcp. */
static inline void th_set_rank_env(int r, int n, int port) {
  char b[32];
  snprintf(b, sizeof(b), "%d", r);
  setenv("DISTML_RANK", b, 1);
  snprintf(b, sizeof(b), "%d", n);
  setenv("DISTML_WORLD_SIZE", b, 1);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  snprintf(b, sizeof(b), "%d", port);
  setenv("MASTER_PORT", b, 1);
  setenv("DISTML_BACKEND", "tcp", 1);
}

/* Remove every launcher variable so that options alone decide. */
static inline void th_clear_env(void) {
  const char *vars[] = {
      "DISTML_RANK",          "DISTML_WORLD_SIZE", "RANK",           "WORLD_SIZE",
      "LOCAL_RANK",           "MASTER_ADDR",       "MASTER_PORT",    "OMPI_COMM_WORLD_RANK",
      "OMPI_COMM_WORLD_SIZE", "PMI_RANK",          "PMI_SIZE",       "SLURM_PROCID",
      "SLURM_NTASKS",         "DISTML_TOKEN",      "DISTML_BACKEND", "DISTML_TIMEOUT_MS"};
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) unsetenv(vars[i]);
}

static inline void th_opts(dml_comm_opts *o, int rank, int n, int port, int timeout_ms) {
  dml_comm_opts_default(o);
  o->backend = "tcp";
  o->rank = rank;
  o->world_size = n;
  o->master_addr = "127.0.0.1";
  o->master_port = port;
  o->timeout_ms = timeout_ms;
}

/* A forked rank joins the tcp job on 127.0.0.1:port without inheriting the test's environment;
 * a failure is printed with the rank. */
static inline int th_join(dml_comm **c, int rank, int n, int port, int timeout_ms) {
  dml_comm_opts o;
  th_clear_env();
  th_opts(&o, rank, n, port, timeout_ms);
  dml_err err = {0};
  int rc = dml_comm_init(c, &o, &err);
  if (rc) fprintf(stderr, "rank %d: joining the job: %s\n", rank, err.msg);
  return rc;
}

/* Deterministic content: byte i of the message from src to dst with tag and length. */
static inline uint8_t th_byte(int src, int dst, int tag, size_t len, size_t i) {
  uint64_t x =
      (uint64_t)src * 1000003u + (uint64_t)dst * 7919u + (uint64_t)tag * 131u + len * 31u + i;
  x ^= x >> 13;
  x *= 0x9E3779B97F4A7C15ull;
  return (uint8_t)(x >> 56);
}
static inline void th_fill(uint8_t *b, int src, int dst, int tag, size_t len) {
  for (size_t i = 0; i < len; i++) b[i] = th_byte(src, dst, tag, len, i);
}
/* Index of the first wrong byte, or -1. */
static inline long th_check(const uint8_t *b, int src, int dst, int tag, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (b[i] != th_byte(src, dst, tag, len, i)) return (long)i;
  return -1;
}

typedef int (*th_rank_fn)(int rank, int n, int port, void *arg);

typedef struct th_job {
  pid_t pid[64];
  int n;
} th_job;

/* Fork rank r running fn; the child exits with fn's return value. stderr_path: redirect the
 * child's stderr there (NULL: inherit). */
static inline pid_t th_spawn(int r, int n, int port, th_rank_fn fn, void *arg,
                             const char *stderr_path) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  T_ASSERT(pid >= 0);
  if (pid == 0) {
    if (stderr_path) {
      int fd = open(stderr_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
      }
    }
    exit(fn(r, n, port, arg)); /* exit, not _exit: LeakSanitizer checks the rank at exit */
  }
  return pid;
}

/* Wait for pid up to timeout_s; kill it (by pid) if it overruns. Returns the exit code, 128+sig
 * for a signal, or -1 when it had to be killed by the watchdog. */
static inline int th_wait_pid(pid_t pid, int timeout_s) {
  for (int i = 0; i < timeout_s * 100; i++) {
    int st;
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  return -1;
}

/* Run fn on n ranks; fail the test if any rank fails. */
static inline void th_run(const char *what, int n, th_rank_fn fn, void *arg, int timeout_s) {
  int port = th_free_port();
  pid_t pid[64];
  for (int r = 0; r < n; r++) pid[r] = th_spawn(r, n, port, fn, arg, NULL);
  int bad = 0;
  for (int r = 0; r < n; r++) {
    int rc = th_wait_pid(pid[r], timeout_s);
    if (rc != 0) {
      fprintf(stderr, "%s: rank %d of %d exited with %d%s\n", what, r, n, rc,
              rc == -1 ? " (hung: killed)" : "");
      bad = 1;
    }
  }
  if (bad) T_FAIL("%s with %d ranks failed", what, n);
}

/* Inside a rank: print and return 1 instead of exiting the whole test from a library failure. */
#define RK_OK(expr)                                                                             \
  do {                                                                                          \
    int r_rc_ = (expr);                                                                         \
    if (r_rc_ != 0) {                                                                           \
      fprintf(stderr, "%s:%d: rank %d: %s returned %d (%s)\n", __FILE__, __LINE__, rank, #expr, \
              r_rc_, dml_strerror(r_rc_));                                                      \
      return 1;                                                                                 \
    }                                                                                           \
  } while (0)
#define R_ASSERT(cond)                                                                    \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      fprintf(stderr, "%s:%d: rank %d: assertion %s\n", __FILE__, __LINE__, rank, #cond); \
      return 1;                                                                           \
    }                                                                                     \
  } while (0)

#endif
