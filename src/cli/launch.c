/* `distml launch`: fork N ranks of a program with the rendezvous environment, relay their output
 * with "[rN] " prefixes through pipes and a poll loop (stdout and stderr kept apart), forward
 * SIGINT/SIGTERM, and stop the others (SIGTERM, then SIGKILL after a grace period) when one rank
 * fails. It starts processes on this machine only; it is not a cluster scheduler. */
#include "cli/launch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/internal.h"
#include "distml/core.h"

#define LINE_MAX_BYTES 65536

typedef struct stream {
  int fd;     /* read end, -1 once closed */
  int out_fd; /* 1 or 2 */
  char *buf;  /* partial line */
  size_t len;
} stream;

typedef struct child {
  pid_t pid;
  int alive;
  int status; /* from waitpid */
  int restarts;
  int lost;   /* failed under the continue policy: the others went on without it */
  int exited; /* reaped in this pass, not handled yet */
  stream s[2];
} child;

static volatile sig_atomic_t g_sig_int, g_sig_term;
static int g_wake[2] = {-1, -1};

static void on_signal(int sig) {
  int saved = errno;
  if (sig == SIGINT) g_sig_int++;
  if (sig == SIGTERM) g_sig_term++;
  if (g_wake[1] >= 0) {
    char b = 1;
    ssize_t w = write(g_wake[1], &b, 1);
    (void)w;
  }
  errno = saved;
}

void dml_launch_opts_default(dml_launch_opts *o) {
  memset(o, 0, sizeof(*o));
  o->prefix_output = 1;
}

int dml_launch_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return; /* closed stdout (EPIPE): drop the output, keep supervising */
    }
    p += w;
    n -= (size_t)w;
  }
}

/* Writes "[rN] " + line + "\n" in one write so lines of different ranks never interleave. */
static void emit_line(int out_fd, int rank, const char *line, size_t n) {
  char pre[32];
  int pl = snprintf(pre, sizeof(pre), "[r%d] ", rank);
  char *tmp = dml__malloc((size_t)pl + n + 1);
  if (tmp == NULL) {
    write_all(out_fd, pre, (size_t)pl);
    write_all(out_fd, line, n);
    write_all(out_fd, "\n", 1);
    return;
  }
  memcpy(tmp, pre, (size_t)pl);
  memcpy(tmp + pl, line, n);
  tmp[(size_t)pl + n] = '\n';
  write_all(out_fd, tmp, (size_t)pl + n + 1);
  dml__free(tmp);
}

/* Reads what is available on s; emits complete lines; at EOF emits the rest and closes. */
static void pump(stream *s, int rank) {
  char chunk[16384];
  ssize_t r = read(s->fd, chunk, sizeof(chunk));
  if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (r <= 0) {
    if (s->len) emit_line(s->out_fd, rank, s->buf, s->len);
    s->len = 0;
    close(s->fd);
    s->fd = -1;
    return;
  }
  size_t i = 0;
  while (i < (size_t)r) {
    char *nl = memchr(chunk + i, '\n', (size_t)r - i);
    size_t take = nl ? (size_t)(nl - (chunk + i)) : (size_t)r - i;
    if (s->len + take > LINE_MAX_BYTES || (nl && s->len == 0)) {
      /* Whole line in this chunk (or an over-long one): emit without copying into buf. */
      if (s->len) {
        emit_line(s->out_fd, rank, s->buf, s->len);
        s->len = 0;
      }
      if (nl || take > 0) emit_line(s->out_fd, rank, chunk + i, take);
      i += take + (nl ? 1 : 0);
      continue;
    }
    memcpy(s->buf + s->len, chunk + i, take);
    s->len += take;
    i += take;
    if (nl) {
      emit_line(s->out_fd, rank, s->buf, s->len);
      s->len = 0;
      i++;
    }
  }
}

static void signal_all(child *ch, int n, int sig) {
  for (int i = 0; i < n; i++)
    if (ch[i].alive && ch[i].pid > 0) kill(-ch[i].pid, sig); /* its process group */
}

static void describe(const child *c, int rank, char *out, size_t outsz) {
  if (WIFSIGNALED(c->status)) {
    int sig = WTERMSIG(c->status);
    snprintf(out, outsz, "rank %d (pid %d) killed by signal %d (%s)", rank, (int)c->pid, sig,
             strsignal(sig));
  } else {
    snprintf(out, outsz, "rank %d (pid %d) exited with status %d", rank, (int)c->pid,
             WEXITSTATUS(c->status));
  }
}

static int failed(const child *c) {
  return WIFSIGNALED(c->status) || (WIFEXITED(c->status) && WEXITSTATUS(c->status) != 0);
}

/* Rank i exited non-zero and is the first failure seen. If it only exited with a status, it may
 * have been reacting to a peer killed an instant earlier that is not reaped yet (a peer's memory
 * goes before the peer becomes a zombie): give the others up to 500 ms to show a death by a
 * signal, and return that rank as the cause (reaped and marked exited, handled by the caller's
 * loop), else i. */
static int killed_sibling(child *ch, int started, int i) {
  if (WIFSIGNALED(ch[i].status)) return i;
  for (int tries = 0; tries < 250; tries++) {
    int running = 0;
    for (int j = 0; j < started; j++) {
      if (j == i || !ch[j].alive) continue;
      if (!ch[j].exited) ch[j].exited = waitpid(ch[j].pid, &ch[j].status, WNOHANG) == ch[j].pid;
      if (ch[j].exited && WIFSIGNALED(ch[j].status)) return j;
      running += !ch[j].exited;
    }
    if (running == 0) break; /* nobody left who could still turn out to be the cause */
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  return i;
}

static void set_env_int(const char *name, long v) {
  char b[32];
  snprintf(b, sizeof(b), "%ld", v);
  setenv(name, b, 1);
}

/* In the child: never returns. */
static void exec_child(int rank, int n, int port, char *const argv[], const dml_launch_opts *o,
                       int restart, int out_fd, int err_fd) {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGINT, &dfl, NULL);
  sigaction(SIGTERM, &dfl, NULL);
  sigaction(SIGCHLD, &dfl, NULL);
  sigaction(SIGPIPE, &dfl, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  setpgid(0, 0);
  if (out_fd >= 0) {
    dup2(out_fd, 1);
    dup2(err_fd, 2);
  }
  set_env_int("DISTML_RANK", rank);
  set_env_int("DISTML_WORLD_SIZE", n);
  set_env_int("RANK", rank);
  set_env_int("WORLD_SIZE", n);
  set_env_int("LOCAL_RANK", rank);
  set_env_int("LOCAL_WORLD_SIZE", n);
  setenv("MASTER_ADDR", "127.0.0.1", 1);
  set_env_int("MASTER_PORT", port);
  if (restart > 0)
    set_env_int("DISTML_RESTART", restart);
  else
    unsetenv("DISTML_RESTART");
  if (o->child_setup && o->child_setup(rank, n, o->user) != 0) _exit(127);
  const char *path = o->exec_path ? o->exec_path : argv[0];
  execvp(path, argv);
  char msg[512];
  int len = snprintf(msg, sizeof(msg), "distml %s: cannot run '%s': %s\n",
                     o->name ? o->name : "launch", path, strerror(errno));
  if (len > 0) write_all(2, msg, (size_t)len < sizeof(msg) ? (size_t)len : sizeof(msg) - 1);
  _exit(127);
}

/* Forks rank i (its restart-th start) with its output pipes; 0 or -1 (printed). */
static int spawn_rank(child *c, int i, int n, int port, char *const argv[],
                      const dml_launch_opts *opts, const char *name) {
  int po[2] = {-1, -1}, pe[2] = {-1, -1};
  if (opts->prefix_output) {
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0) {
      fprintf(stderr, "distml %s: error: pipe: %s\n", name, strerror(errno));
      if (po[0] >= 0) close(po[0]), close(po[1]);
      return -1;
    }
  }
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "distml %s: error: fork for rank %d: %s\n", name, i, strerror(errno));
    if (po[0] >= 0) close(po[0]), close(po[1]), close(pe[0]), close(pe[1]);
    return -1;
  }
  if (pid == 0) exec_child(i, n, port, argv, opts, c->restarts, po[1], pe[1]);
  setpgid(pid, pid);
  c->pid = pid;
  c->alive = 1;
  for (int k = 0; k < 2; k++) {
    int *pp = k == 0 ? po : pe;
    c->s[k].out_fd = k + 1;
    if (pp[0] >= 0) {
      close(pp[1]);
      c->s[k].fd = pp[0];
      c->s[k].len = 0;
      if (c->s[k].buf == NULL) c->s[k].buf = dml__malloc(LINE_MAX_BYTES);
      if (c->s[k].buf == NULL) {
        close(pp[0]);
        c->s[k].fd = -1;
      }
    }
  }
  return 0;
}

/* A dead rank's pipes before it is started again: relay what is left (its writers are gone). */
static void drain_streams(child *c, int rank) {
  for (int k = 0; k < 2; k++)
    for (int guard = 0; c->s[k].fd >= 0 && guard < 4096; guard++) {
      struct pollfd p = {c->s[k].fd, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) {
        close(c->s[k].fd); /* a grandchild keeps it open: stop relaying it */
        c->s[k].fd = -1;
        break;
      }
      pump(&c->s[k], rank);
    }
}

int dml_launch_run(int n, char *const argv[], const dml_launch_opts *opts) {
  dml_launch_opts dflt;
  if (opts == NULL) {
    dml_launch_opts_default(&dflt);
    opts = &dflt;
  }
  const char *name = opts->name ? opts->name : "launch";
  if (n < 1 || argv == NULL || argv[0] == NULL) {
    fprintf(stderr, "distml %s: error: need at least one rank and a program\n", name);
    return 2;
  }
  int port = opts->master_port > 0 ? opts->master_port : dml_launch_free_port();
  if (port <= 0) {
    fprintf(stderr, "distml %s: error: cannot find a free port on 127.0.0.1: %s\n", name,
            strerror(errno));
    return 1;
  }
  double grace = opts->grace_s > 0 ? opts->grace_s : 5.0;
  child *ch = dml__calloc((size_t)n, sizeof(*ch));
  if (ch == NULL) {
    fprintf(stderr, "distml %s: error: out of memory\n", name);
    return 1;
  }
  for (int i = 0; i < n; i++) ch[i].s[0].fd = ch[i].s[1].fd = -1;

  if (pipe2(g_wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    fprintf(stderr, "distml %s: error: pipe: %s\n", name, strerror(errno));
    dml__free(ch);
    return 1;
  }
  g_sig_int = g_sig_term = 0;
  struct sigaction sa, old_int, old_term, old_chld, old_pipe;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGCHLD, &sa, &old_chld);
  struct sigaction ign;
  memset(&ign, 0, sizeof(ign));
  ign.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ign, &old_pipe);
  fflush(stdout);
  fflush(stderr);

  int status = 0, first_fail = -1, started = 0;
  for (int i = 0; i < n; i++) {
    if (spawn_rank(&ch[i], i, n, port, argv, opts, name) != 0) {
      status = 1;
      break;
    }
    started++;
  }
  int max_restarts = opts->max_restarts > 0 ? opts->max_restarts : 3;

  double t0 = dml_now_s();
  int stopping = status != 0; /* a failed start stops the ranks already running */
  double kill_at = stopping ? t0 + grace : 0;
  int timed_out = 0, interrupted = 0, killed = 0;
  if (stopping) signal_all(ch, started, SIGTERM);
  int seen_int = 0, seen_term = 0;
  double pipes_deadline = 0;
  struct pollfd *pfd = dml__calloc((size_t)(2 * started + 1), sizeof(*pfd));
  stream **pst = dml__calloc((size_t)(2 * started + 1), sizeof(*pst));
  int *prank = dml__calloc((size_t)(2 * started + 1), sizeof(*prank));
  if (pfd == NULL || pst == NULL || prank == NULL) {
    fprintf(stderr, "distml %s: error: out of memory; killing the ranks\n", name);
    signal_all(ch, started, SIGKILL);
    stopping = 1, killed = 1, status = 1;
  }

  for (;;) {
    int alive = 0, open_streams = 0;
    for (int i = 0; i < started; i++) {
      alive += ch[i].alive;
      open_streams += (ch[i].s[0].fd >= 0) + (ch[i].s[1].fd >= 0);
    }
    if (alive == 0 && open_streams == 0) break;
    double now = dml_now_s();
    if (alive == 0) {
      /* A grandchild may hold a pipe open: give it a moment, then stop relaying. */
      if (pipes_deadline == 0) pipes_deadline = now + 1.0;
      if (now >= pipes_deadline) {
        for (int i = 0; i < started; i++)
          for (int k = 0; k < 2; k++)
            if (ch[i].s[k].fd >= 0) {
              close(ch[i].s[k].fd);
              ch[i].s[k].fd = -1;
            }
        break;
      }
    }
    if (pfd == NULL) {
      /* Out of memory: no relaying, just reap. */
      for (int i = 0; i < started; i++)
        if (ch[i].alive && waitpid(ch[i].pid, &ch[i].status, 0) == ch[i].pid) ch[i].alive = 0;
      for (int i = 0; i < started; i++)
        for (int k = 0; k < 2; k++)
          if (ch[i].s[k].fd >= 0) close(ch[i].s[k].fd), ch[i].s[k].fd = -1;
      continue;
    }
    int np = 0;
    pfd[np].fd = g_wake[0];
    pfd[np].events = POLLIN;
    np++;
    for (int i = 0; i < started; i++)
      for (int k = 0; k < 2; k++)
        if (ch[i].s[k].fd >= 0) {
          pfd[np].fd = ch[i].s[k].fd;
          pfd[np].events = POLLIN;
          pst[np] = &ch[i].s[k];
          prank[np] = i;
          np++;
        }
    double wait_s = 1.0;
    if (opts->timeout_s > 0 && !stopping) wait_s = DML__MIN(wait_s, t0 + opts->timeout_s - now);
    if (stopping && !killed) wait_s = DML__MIN(wait_s, kill_at - now);
    if (pipes_deadline > 0) wait_s = DML__MIN(wait_s, pipes_deadline - now);
    int wait_ms = wait_s <= 0 ? 0 : (int)(wait_s * 1000) + 1;
    int pr = poll(pfd, (nfds_t)np, wait_ms);
    if (pr > 0) {
      if (pfd[0].revents) {
        char drain[64];
        while (read(g_wake[0], drain, sizeof(drain)) > 0) {
        }
      }
      for (int j = 1; j < np; j++)
        if (pfd[j].revents) pump(pst[j], prank[j]);
    }
    /* Reap every rank that has exited, then handle those killed by a signal first: a killed
     * rank's peers fail right after it (their links to it broke), often within one pass, and the
     * cause to report is the killed rank, not the first index. */
    for (int i = 0; i < started; i++)
      if (!ch[i].exited) /* (killed_sibling may have reaped one already) */
        ch[i].exited = ch[i].alive && waitpid(ch[i].pid, &ch[i].status, WNOHANG) == ch[i].pid;
    for (int k = 0; k < 2 * started; k++) {
      int i = k % started;
      if (!ch[i].exited || (k < started && !WIFSIGNALED(ch[i].status))) continue;
      ch[i].exited = 0;
      ch[i].alive = 0;
      int policy = failed(&ch[i]) && !stopping && opts->failure_policy
                       ? opts->failure_policy(i, n, opts->user)
                       : DML_LAUNCH_STOP_ALL;
      if (policy == DML_LAUNCH_RESTART && ch[i].restarts < max_restarts) {
        char what[160];
        describe(&ch[i], i, what, sizeof(what));
        ch[i].restarts++;
        fprintf(stderr, "distml %s: %s; restarting it (restart %d of %d)\n", name, what,
                ch[i].restarts, max_restarts);
        drain_streams(&ch[i], i);
        if (spawn_rank(&ch[i], i, n, port, argv, opts, name) == 0) continue;
      } else if (policy == DML_LAUNCH_RESTART) {
        char what[160];
        describe(&ch[i], i, what, sizeof(what));
        fprintf(stderr, "distml %s: %s after %d restarts; giving up\n", name, what, ch[i].restarts);
      }
      if (policy == DML_LAUNCH_CONTINUE) {
        int others = 0;
        for (int j = 0; j < started; j++) others += ch[j].alive;
        char what[160];
        describe(&ch[i], i, what, sizeof(what));
        fprintf(stderr, "distml %s: %s; the other %d rank%s go on without it\n", name, what, others,
                others == 1 ? "" : "s");
        ch[i].lost = 1;
        continue;
      }
      if (failed(&ch[i]) && !stopping) {
        first_fail = killed_sibling(ch, started, i);
        stopping = 1;
        kill_at = dml_now_s() + grace;
        int others = 0;
        for (int j = 0; j < started; j++) others += ch[j].alive && !ch[j].exited;
        char what[160], also[160];
        describe(&ch[first_fail], first_fail, what, sizeof(what));
        describe(&ch[i], i, also, sizeof(also));
        if (first_fail != i) /* both: the kill first, as the likely cause */
          fprintf(stderr, "distml %s: %s; %s too\n", name, what, also);
        if (others)
          fprintf(stderr, "distml %s: %s; stopping the other %d rank%s\n", name, what, others,
                  others == 1 ? "" : "s");
        signal_all(ch, started, SIGTERM);
      }
    }
    now = dml_now_s();
    /* Signals to forward. */
    if (g_sig_int != seen_int || g_sig_term != seen_term) {
      int sig = g_sig_term != seen_term ? SIGTERM : SIGINT;
      seen_int = g_sig_int;
      seen_term = g_sig_term;
      if (interrupted) {
        signal_all(ch, started, SIGKILL); /* a second signal: no more patience */
        killed = 1;
      } else {
        interrupted = sig;
        signal_all(ch, started, sig);
        if (!stopping) {
          stopping = 1;
          kill_at = now + grace;
        }
      }
    }
    if (opts->timeout_s > 0 && !stopping && now - t0 >= opts->timeout_s) {
      timed_out = 1;
      stopping = 1;
      kill_at = now + grace;
      fprintf(stderr, "distml %s: timed out after %g s; stopping all ranks\n", name,
              opts->timeout_s);
      signal_all(ch, started, SIGTERM);
    }
    if (stopping && !killed && now >= kill_at) {
      int left = 0;
      for (int i = 0; i < started; i++) left += ch[i].alive;
      if (left)
        fprintf(stderr, "distml %s: %d rank%s still running after %g s; sending SIGKILL\n", name,
                left, left == 1 ? "" : "s", grace);
      signal_all(ch, started, SIGKILL);
      killed = 1;
    }
  }

  if (status == 0) {
    if (first_fail >= 0) {
      char what[160];
      describe(&ch[first_fail], first_fail, what, sizeof(what));
      fprintf(stderr, "distml %s: failed: %s\n", name, what);
      status = WIFSIGNALED(ch[first_fail].status) ? 128 + WTERMSIG(ch[first_fail].status)
                                                  : WEXITSTATUS(ch[first_fail].status);
    } else if (timed_out) {
      status = 124;
    } else if (interrupted) {
      fprintf(stderr, "distml %s: interrupted by %s; stopped %d rank%s\n", name,
              interrupted == SIGINT ? "SIGINT" : "SIGTERM", started, started == 1 ? "" : "s");
      status = 128 + interrupted;
    } else {
      int lost = 0, ok = 0;
      for (int i = 0; i < started; i++) {
        if (ch[i].lost)
          lost++;
        else if (failed(&ch[i]))
          status = 1;
        else
          ok++;
      }
      if (status == 0 && lost > 0 && ok == 0) status = 1; /* nobody finished */
      if (status == 0 && lost > 0) {
        char list[256] = "";
        size_t off = 0;
        for (int i = 0; i < started && off < sizeof(list) - 16; i++)
          if (ch[i].lost)
            off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%d", off ? ", " : "", i);
        fprintf(stderr, "distml %s: completed without rank%s %s (failed and left behind)\n", name,
                lost == 1 ? "" : "s", list);
      }
    }
  }

  for (int i = 0; i < n; i++)
    for (int k = 0; k < 2; k++) {
      if (ch[i].s[k].fd >= 0) close(ch[i].s[k].fd);
      dml__free(ch[i].s[k].buf);
    }
  dml__free(pfd);
  dml__free(pst);
  dml__free(prank);
  dml__free(ch);
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  sigaction(SIGCHLD, &old_chld, NULL);
  sigaction(SIGPIPE, &old_pipe, NULL);
  close(g_wake[0]);
  close(g_wake[1]);
  g_wake[0] = g_wake[1] = -1;
  return status;
}

/* `distml launch --restart/--continue`: the policy of each rank (n entries). */
static int policy_of_rank(int rank, int world_size, void *user) {
  const unsigned char *p = user;
  return rank < world_size ? p[rank] : DML_LAUNCH_STOP_ALL;
}

/* "all" or a comma-separated list of ranks below n: sets their policy. */
static void parse_rank_list(const char *flag, const char *v, int n, int policy, unsigned char *p) {
  if (strcmp(v, "all") == 0) {
    for (int r = 0; r < n; r++) p[r] = (unsigned char)policy;
    return;
  }
  const char *q = v;
  do { /* digits, then a comma and more digits, or the end: "", "0,", " 1" and "0,,1" are not */
    char *end;
    errno = 0;
    long r = *q >= '0' && *q <= '9' ? strtol(q, &end, 10) : -1;
    if (r < 0 || errno || r >= n || (*end != ',' && *end != 0) || (*end == ',' && end[1] == 0))
      dml_cli_usage_error("launch", "%s %s: want 'all' or ranks in 0..%d separated by commas", flag,
                          v, n - 1);
    p[r] = (unsigned char)policy;
    q = *end ? end + 1 : end;
  } while (*q);
}

static void launch_usage(FILE *f) {
  fprintf(
      f,
      "usage: distml launch -n N [--timeout S] [--grace S] [--port P] [--no-prefix]\n"
      "                     [--restart R [--max-restarts K]] [--continue R] -- PROG [ARGS...]\n"
      "\n"
      "Starts N processes of PROG on this machine with DISTML_RANK, DISTML_WORLD_SIZE, RANK,\n"
      "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and MASTER_PORT (a free port) set, prefixes\n"
      "each output line with its rank ([r1] ...), forwards SIGINT/SIGTERM, and when one rank\n"
      "fails stops the others and exits non-zero naming it.\n"
      "\n"
      "  -n N          number of ranks (1..1024)\n"
      "  --timeout S   stop everything after S seconds (exit status 124); default: none\n"
      "  --grace S     seconds between SIGTERM and SIGKILL when stopping (default 5)\n"
      "  --port P      MASTER_PORT to use instead of a free one\n"
      "  --no-prefix   let the ranks write to this terminal directly\n"
      "  --restart R   ranks R ('all' or a list: 0,2) are started again when they fail\n"
      "                (DISTML_RESTART=k in the k-th restart's environment)\n"
      "  --max-restarts K  restarts allowed per rank (default 3), then all stop\n"
      "  --continue R  when ranks R fail the others go on; the launch succeeds if they do\n"
      "\n"
      "exit status: 0 if every rank succeeded; else the failing rank's status (128+signal\n"
      "if it was killed), 124 on timeout, 128+signal if interrupted, 2 for usage errors.\n");
}

int dml_cli_launch_main(int argc, char **argv) {
  int n = -1;
  dml_launch_opts o;
  dml_launch_opts_default(&o);
  o.name = "launch";
  const char *restart = NULL, *cont = NULL;
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      launch_usage(stdout);
      return 0;
    }
    if (a[0] != '-') break; /* the program */
    int has_value = strcmp(a, "-n") == 0 || strcmp(a, "--timeout") == 0 ||
                    strcmp(a, "--grace") == 0 || strcmp(a, "--port") == 0 ||
                    strcmp(a, "--restart") == 0 || strcmp(a, "--continue") == 0 ||
                    strcmp(a, "--max-restarts") == 0;
    if (strcmp(a, "--no-prefix") == 0) {
      o.prefix_output = 0;
      continue;
    }
    if (!has_value) dml_cli_usage_error("launch", "unknown flag '%s'", a);
    if (i + 1 >= argc) dml_cli_usage_error("launch", "%s needs a value", a);
    const char *v = argv[++i];
    if (strcmp(a, "-n") == 0)
      n = (int)dml_cli_int("launch", "-n", v, 1, 1024);
    else if (strcmp(a, "--timeout") == 0)
      o.timeout_s = dml_cli_double("launch", "--timeout", v, 0.001, 1e7);
    else if (strcmp(a, "--grace") == 0)
      o.grace_s = dml_cli_double("launch", "--grace", v, 0.001, 3600);
    else if (strcmp(a, "--restart") == 0)
      restart = v;
    else if (strcmp(a, "--continue") == 0)
      cont = v;
    else if (strcmp(a, "--max-restarts") == 0)
      o.max_restarts = (int)dml_cli_int("launch", "--max-restarts", v, 1, 1000);
    else
      o.master_port = (int)dml_cli_int("launch", "--port", v, 1, 65535);
  }
  if (n < 0) dml_cli_usage_error("launch", "-n N is required");
  if (o.max_restarts > 0 && restart == NULL)
    dml_cli_usage_error("launch",
                        "--max-restarts counts the restarts of the ranks --restart names");
  if (i >= argc)
    dml_cli_usage_error("launch", "no program given (distml launch -n N -- PROG ARGS)");
  unsigned char *policy = NULL;
  if (restart || cont) {
    policy = dml__calloc((size_t)n, 1);
    if (policy == NULL) dml_cli_fail("launch", "out of memory");
    if (restart) parse_rank_list("--restart", restart, n, DML_LAUNCH_RESTART, policy);
    if (cont) parse_rank_list("--continue", cont, n, DML_LAUNCH_CONTINUE, policy);
    o.failure_policy = policy_of_rank;
    o.user = policy;
  }
  int st = dml_launch_run(n, argv + i, &o);
  dml__free(policy);
  return st;
}
