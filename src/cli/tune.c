/* `distml tune`: hyperparameter search on the task farm. Every searched flag takes a comma list
 * of values; the trials are their grid (or --random K of it). `distml tune -n W` starts W worker
 * processes plus a coordinator (rank 0) through the local launcher; the coordinator hands each
 * worker a trial as it finishes its last (task.h's farm: a dead worker's trial goes to another),
 * each trial is one `distml train ... --json` run in a child process, and the results come back
 * as a table sorted by test accuracy, or with --json as {"trials": [...]}. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/cli.h"
#include "cli/launch.h"
#include "cli/train_flags.h"
#include "distml.h"

#define MAX_AXES 12
#define MAX_VALUES 64
#define MAX_TRIALS 4096
#define MAX_FIXED 64

/* Flags that may take a list of values to search over (all are `distml train` flags). */
static const char *const k_searchable[] = {
    "lr",       "hidden",       "batch",      "epochs",    "optimizer",
    "momentum", "weight-decay", "l1",         "l2",        "model",
    "seed",     "lr-schedule",  "ftrl-alpha", "ftrl-beta", NULL};
/* Flags passed through unchanged to every trial. */
static const char *const k_fixed[] = {
    "data", "test", "format", "label-col", "header", "features", "augment", "loader-threads", NULL};

typedef struct axis {
  const char *flag;
  char *storage; /* the copy of the value list that values[] point into (owned) */
  char *values[MAX_VALUES];
  int n;
} axis;

static void usage(void) {
  printf(
      "usage: distml tune -n W [--random K] [--search-seed S] [--timeout S] [--json] --data SPEC\n"
      "                   [--test SPEC] [train flags]\n"
      "\n"
      "Hyperparameter search: every trial is one `distml train` run, handed to W worker\n"
      "processes as they become free (a task farm; a worker that dies loses its trial to\n"
      "another). Searched flags take comma-separated values and make a grid:\n"
      "  --lr 0.01,0.05,0.1  --hidden 128,256  --batch 32,64  --epochs  --optimizer  --momentum\n"
      "  --weight-decay  --l1  --l2  --model  --seed  --lr-schedule  --ftrl-alpha  --ftrl-beta\n"
      "(a multi-layer MLP is written with x inside one value: --hidden 256x128,512).\n"
      "Passed to every trial: --data --test --format --label-col --header --features\n"
      "--augment --loader-threads.\n"
      "  -n W          worker processes (default 2)\n"
      "  --random K    run K trials drawn from the grid (seeded by --search-seed) instead of all\n"
      "  --search-seed S   (default 1)\n"
      "  --timeout S   give up on a trial after S seconds (default 3600)\n"
      "  --json        print {\"trials\": [{flag: value, ..., \"test_accuracy\", \"wall_s\"}, "
      "...]}\n"
      "Results are sorted by test accuracy, best first: --test is required unless --data is\n"
      "fashion-mnist. Every value is checked as distml train checks it before a trial starts.\n");
}

/* Value k of ax as train takes it: its flag ("--lr") and value (256x128 in tune is 256,128). */
static void axis_arg(const axis *ax, int k, char flag[64], char value[128]) {
  snprintf(flag, 64, "--%s", ax->flag);
  snprintf(value, 128, "%s", ax->values[k]);
  if (strcmp(ax->flag, "hidden") == 0)
    for (char *x = value; *x; x++)
      if (*x == 'x') *x = ',';
}

static int in_list(const char *const *list, const char *s) {
  for (int i = 0; list[i]; i++)
    if (strcmp(list[i], s) == 0) return 1;
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The worker side: run one trial (payload: NUL-separated train arguments). */

static int g_timeout_s = 3600; /* --timeout: a trial still running after this is killed */

static int run_trial(void *user, const void *in, size_t in_bytes, void *out, size_t out_cap,
                     size_t *out_bytes) {
  (void)user;
  char *args[2 * MAX_AXES + 2 * MAX_FIXED + 16];
  int na = 0;
  args[na++] = "distml";
  args[na++] = "train";
  const char *p = in, *end = (const char *)in + in_bytes;
  if (in_bytes == 0 || ((const char *)in)[in_bytes - 1] != '\0') return DML_EINVAL;
  while (p < end && na < (int)(sizeof(args) / sizeof(args[0])) - 5) {
    args[na++] = (char *)p;
    p += strlen(p) + 1;
  }
  args[na++] = "--json";
  args[na++] = "--quiet";
  args[na++] = "--threads";
  args[na++] = "1";
  args[na] = NULL;
  int fd[2];
  if (pipe(fd) != 0) return DML_ESYS;
  pid_t pid = fork();
  if (pid < 0) {
    close(fd[0]);
    close(fd[1]);
    return DML_ESYS;
  }
  if (pid == 0) {
    dup2(fd[1], STDOUT_FILENO);
    close(fd[0]);
    close(fd[1]);
    /* Not a rank of this job: the trial trains alone. */
    static const char *const vars[] = {"DISTML_RANK", "DISTML_WORLD_SIZE", "RANK",
                                       "WORLD_SIZE",  "LOCAL_RANK",        "LOCAL_WORLD_SIZE",
                                       "MASTER_ADDR", "MASTER_PORT"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) unsetenv(vars[i]);
    execv("/proc/self/exe", args);
    _exit(127);
  }
  close(fd[1]);
  char buf[65536];
  size_t len = 0;
  ssize_t r = 0;
  double deadline = dml_now_s() + g_timeout_s;
  int timed_out = 0;
  for (;;) {
    double left = deadline - dml_now_s();
    struct pollfd pfd = {fd[0], POLLIN, 0};
    int pr = left > 0 ? poll(&pfd, 1, left > 1e6 ? 1000000000 : (int)(left * 1000) + 1) : 0;
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) { /* the trial ran out of time: it is killed and reported */
      timed_out = 1;
      kill(pid, SIGKILL);
      break;
    }
    r = read(fd[0], buf + len, sizeof(buf) - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    len += (size_t)r;
    if (len == sizeof(buf) - 1) len = 0; /* keep only the tail: the summary is the last line */
  }
  close(fd[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  buf[len] = '\0';
  while (len > 0 && buf[len - 1] == '\n') buf[--len] = '\0';
  const char *last = strrchr(buf, '\n');
  last = last ? last + 1 : buf;
  int failed = !WIFEXITED(st) || WEXITSTATUS(st) != 0 || last[0] != '{';
  /* A failed trial reports {"error": ...} so the table can say why. */
  int n = timed_out ? snprintf(out, out_cap, "{\"error\":\"timed out after %d s (--timeout)\"}",
                               g_timeout_s)
          : failed  ? snprintf(out, out_cap, "{\"error\":\"train exited with status %d\"}",
                              WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st))
                    : snprintf(out, out_cap, "%s", last);
  if (n < 0 || (size_t)n >= out_cap) return DML_EOVERFLOW;
  *out_bytes = (size_t)n + 1;
  return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The launcher's policy: the farm gives a dead worker's trial to another, so a worker rank that
 * dies must not stop the search; the coordinator (rank 0) holds the search and stops it. */
static int farm_rank_policy(int rank, int world_size, void *user) {
  (void)world_size;
  (void)user;
  return rank == 0 ? DML_LAUNCH_STOP_ALL : DML_LAUNCH_CONTINUE;
}

/* The coordinator: the grid, the farm, the table. */

typedef struct trial {
  int choice[MAX_AXES]; /* value index per axis */
  char payload[4096];
  size_t bytes;
  json_t *result; /* parsed train summary, or NULL */
  const char *error;
  char why[160]; /* the trial's own error ("train exited with status 1", "timed out ...") */
} trial;

static int append(char *buf, size_t cap, size_t *len, const char *s) {
  size_t n = strlen(s) + 1;
  if (*len + n > cap) return -1;
  memcpy(buf + *len, s, n);
  *len += n;
  return 0;
}

static double acc_of(const trial *t) {
  json_t *a = t->result ? json_object_get(t->result, "test_accuracy") : NULL;
  return a ? json_number_value(a) : -1.0;
}

static int cmp_trials(const void *a, const void *b) {
  double x = acc_of(*(trial *const *)a), y = acc_of(*(trial *const *)b);
  return x < y ? 1 : x > y ? -1 : 0;
}

/* A searched value as JSON: a number when it is one, else a string ("256x128", "adam"). */
static json_t *value_json(const char *v) {
  char *end;
  long long i = strtoll(v, &end, 10);
  if (*v != '\0' && *end == '\0') return json_integer(i);
  double d = strtod(v, &end);
  if (*v != '\0' && *end == '\0') return json_real(d);
  return json_string(v);
}

static int coordinator(dml_comm *comm, axis *axes, int naxes, char **fixed, int nfixed,
                       int random_k, uint64_t search_seed, int json_out) {
  size_t total = 1;
  for (int a = 0; a < naxes; a++) {
    total *= (size_t)axes[a].n;
    if (total > 1000000)
      dml_cli_fail("tune", "the grid has more than a million trials: use --random K");
  }
  size_t ntrials = random_k > 0 && (size_t)random_k < total ? (size_t)random_k : total;
  if (ntrials > MAX_TRIALS)
    dml_cli_fail("tune", "%zu trials: at most %d (use --random K)", ntrials, MAX_TRIALS);
  /* Grid order, or K distinct points of it drawn with a seeded shuffle. */
  size_t *pick = malloc(sizeof(size_t) * total);
  for (size_t i = 0; i < total; i++) pick[i] = i;
  if (ntrials < total) {
    dml_rng rng;
    dml_rng_seed(&rng, search_seed);
    for (size_t i = 0; i < ntrials; i++) {
      size_t j = i + (size_t)dml_rng_below(&rng, total - i);
      size_t tmp = pick[i];
      pick[i] = pick[j];
      pick[j] = tmp;
    }
  }
  trial *trials = calloc(ntrials, sizeof(trial));
  dml_farm_task *tasks = calloc(ntrials, sizeof(dml_farm_task));
  dml_farm_result *results = calloc(ntrials, sizeof(dml_farm_result));
  for (size_t t = 0; t < ntrials; t++) {
    size_t code = pick[t];
    trial *tr = &trials[t];
    for (int a = 0; a < naxes; a++) {
      tr->choice[a] = (int)(code % (size_t)axes[a].n);
      code /= (size_t)axes[a].n;
    }
    int bad = 0;
    for (int i = 0; i < nfixed; i++)
      bad |= append(tr->payload, sizeof(tr->payload), &tr->bytes, fixed[i]);
    for (int a = 0; a < naxes; a++) {
      char flag[64], val[128];
      axis_arg(&axes[a], tr->choice[a], flag, val);
      bad |= append(tr->payload, sizeof(tr->payload), &tr->bytes, flag);
      bad |= append(tr->payload, sizeof(tr->payload), &tr->bytes, val);
    }
    if (bad)
      dml_cli_fail("tune", "the flags of one trial are longer than %zu bytes", sizeof(tr->payload));
    tasks[t].handler = "trial";
    tasks[t].payload = tr->payload;
    tasks[t].bytes = tr->bytes;
  }
  dml_farm_opts fo;
  dml_farm_opts_default(&fo);
  fo.max_payload_bytes = 4096;
  fo.max_result_bytes = 4096;
  fo.progress = !json_out;
  fo.prefetch = 0;
  dml_farm_stats stats;
  dml_err e = {0};
  double t0 = dml_now_s();
  int rc = dml_farm_run(comm, &fo, tasks, ntrials, results, &stats, &e);
  if (rc != 0) dml_cli_fail("tune", "the search failed: %s", dml_err_msg(&e));
  trial **order = malloc(sizeof(trial *) * ntrials);
  for (size_t t = 0; t < ntrials; t++) {
    order[t] = &trials[t];
    if (results[t].status != 0) {
      trials[t].error = dml_strerror(results[t].status);
      continue;
    }
    json_error_t je;
    json_t *j = results[t].data ? json_loads(results[t].data, 0, &je) : NULL;
    json_t *err = j ? json_object_get(j, "error") : NULL;
    if (j == NULL || err != NULL) {
      snprintf(trials[t].why, sizeof trials[t].why, "%s",
               json_is_string(err) ? json_string_value(err) : "train failed");
      trials[t].error = trials[t].why;
      json_decref(j);
      continue;
    }
    trials[t].result = j;
  }
  qsort(order, ntrials, sizeof(trial *), cmp_trials);
  if (json_out) {
    json_t *root = json_object(), *arr = json_array();
    for (size_t i = 0; i < ntrials; i++) {
      trial *tr = order[i];
      json_t *o = json_object();
      for (int a = 0; a < naxes; a++)
        json_object_set_new(o, axes[a].flag, value_json(axes[a].values[tr->choice[a]]));
      static const char *const keep[] = {"test_accuracy", "test_loss", "test_auc", "wall_s",
                                         "samples_per_s"};
      for (size_t k = 0; k < sizeof(keep) / sizeof(keep[0]); k++) {
        json_t *v = tr->result ? json_object_get(tr->result, keep[k]) : NULL;
        if (v) json_object_set(o, keep[k], v);
      }
      if (tr->error) json_object_set_new(o, "error", json_string(tr->error));
      json_array_append_new(arr, o);
    }
    json_object_set_new(root, "trials", arr);
    json_object_set_new(root, "wall_s", json_real(dml_now_s() - t0));
    char *s = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9));
    printf("%s\n", s);
    free(s);
    json_decref(root);
  } else {
    printf("%4s", "rank");
    for (int a = 0; a < naxes; a++) printf(" %12s", axes[a].flag);
    printf(" %13s %10s %8s\n", "test_accuracy", "test_loss", "wall_s");
    for (size_t i = 0; i < ntrials; i++) {
      trial *tr = order[i];
      printf("%4zu", i + 1);
      for (int a = 0; a < naxes; a++) printf(" %12s", axes[a].values[tr->choice[a]]);
      if (tr->result)
        printf(" %13.4f %10.4f %8.1f\n", acc_of(tr),
               json_number_value(json_object_get(tr->result, "test_loss")),
               json_number_value(json_object_get(tr->result, "wall_s")));
      else
        printf("  failed: %s\n", tr->error ? tr->error : "?");
    }
    printf("%zu trials on %d workers in %.1fs (%llu re-issued after a worker was lost)\n", ntrials,
           dml_comm_size(comm) - 1, dml_now_s() - t0, (unsigned long long)stats.reissued);
  }
  int failures = 0;
  for (size_t t = 0; t < ntrials; t++) {
    failures += trials[t].result == NULL;
    json_decref(trials[t].result);
  }
  dml_farm_results_free(results, ntrials);
  free(results);
  free(tasks);
  free(trials);
  free(order);
  free(pick);
  return failures == (int)ntrials ? 1 : 0;
}

int dml_cli_tune_main(int argc, char **argv) {
  int nworkers = 2, random_k = 0, json_out = 0;
  uint64_t search_seed = 1;
  axis axes[MAX_AXES];
  int naxes = 0;
  char *fixed[2 * MAX_FIXED];
  int nfixed = 0;
  const char *data = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage();
      return 0;
    }
    if (strcmp(a, "--json") == 0) {
      json_out = 1;
      continue;
    }
    if (strncmp(a, "--", 2) != 0 && strcmp(a, "-n") != 0)
      dml_cli_usage_error("tune", "unexpected argument '%s'", a);
    if (i + 1 >= argc) dml_cli_usage_error("tune", "%s needs a value", a);
    const char *v = argv[++i];
    if (strcmp(a, "-n") == 0) {
      nworkers = (int)dml_cli_int("tune", "-n", v, 1, 256);
    } else if (strcmp(a, "--random") == 0) {
      random_k = (int)dml_cli_int("tune", "--random", v, 1, MAX_TRIALS);
    } else if (strcmp(a, "--search-seed") == 0) {
      search_seed = (uint64_t)dml_cli_int("tune", "--search-seed", v, 0, INT64_MAX);
    } else if (strcmp(a, "--timeout") == 0) {
      g_timeout_s = (int)dml_cli_int("tune", "--timeout", v, 1, 30 * 24 * 3600);
    } else if (in_list(k_searchable, a + 2)) {
      if (naxes == MAX_AXES) dml_cli_usage_error("tune", "too many searched flags");
      axis *ax = &axes[naxes++];
      ax->flag = a + 2;
      ax->n = 0;
      dml_cli_check_list("tune", a, v);
      char *copy = strdup(v), *save = NULL;
      ax->storage = copy;
      for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (ax->n == MAX_VALUES)
          dml_cli_usage_error("tune", "%s: at most %d values", a, MAX_VALUES);
        ax->values[ax->n++] = tok;
      }
      if (ax->n == 0) dml_cli_usage_error("tune", "%s: no values", a);
      if (ax->n == 1) { /* one value: not searched, passed to every trial as it is */
        free(ax->storage);
        naxes--;
        if (nfixed + 2 > 2 * MAX_FIXED) dml_cli_usage_error("tune", "too many flags");
        fixed[nfixed++] = argv[i - 1];
        fixed[nfixed++] = argv[i];
      }
    } else if (in_list(k_fixed, a + 2)) {
      if (nfixed + 2 > 2 * MAX_FIXED) dml_cli_usage_error("tune", "too many flags");
      fixed[nfixed++] = argv[i - 1];
      fixed[nfixed++] = argv[i];
      if (strcmp(a, "--data") == 0) data = v;
    } else {
      dml_cli_usage_error(
          "tune", "unknown flag '%s' (tune searches or passes on train flags; see --help)", a);
    }
  }
  if (data == NULL) dml_cli_usage_error("tune", "--data is required");
  if (naxes == 0)
    dml_cli_usage_error("tune",
                        "nothing to search: give at least one flag a list (e.g. --lr 0.01,0.1)");
  /* Every value must be one train accepts: each is checked here by train's own parser, with the
   * flags passed to every trial (it exits with train's error naming the flag and value). */
  char *check[2 * MAX_FIXED + 4];
  dml_cli_train_flags tf;
  int nc = 0;
  check[nc++] = "train";
  for (int k = 0; k < nfixed; k++) check[nc++] = fixed[k];
  check[nc] = NULL;
  dml_cli_train_flags_parse(&tf, nc, check);
  int have_test = tf.test != NULL;
  for (int a = 0; a < naxes; a++)
    for (int k = 0; k < axes[a].n; k++) {
      char flag[64], value[128];
      axis_arg(&axes[a], k, flag, value);
      check[nc] = flag;
      check[nc + 1] = value;
      check[nc + 2] = NULL;
      dml_cli_train_flags_parse(&tf, nc + 2, check);
    }
  if (!have_test)
    dml_cli_usage_error("tune", "trials are ranked by test accuracy: give --test SPEC");

  const char *ws = getenv("DISTML_WORLD_SIZE");
  if (ws == NULL) { /* start the coordinator and the workers */
    dml_launch_opts lo;
    dml_launch_opts_default(&lo);
    lo.name = "tune";
    lo.exec_path = "/proc/self/exe";
    lo.prefix_output = 0;
    lo.failure_policy = farm_rank_policy;
    char **rargv = calloc((size_t)argc + 2, sizeof(char *));
    rargv[0] = "distml";
    for (int i = 0; i < argc; i++) rargv[i + 1] = argv[i];
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    int st = dml_launch_run(nworkers + 1, rargv, &lo);
    free(rargv);
    for (int a = 0; a < naxes; a++) free(axes[a].storage);
    return st;
  }
  dml_comm_opts co;
  dml_comm_opts_default(&co);
  dml_comm *comm = NULL;
  dml_err e = {0};
  if (dml_comm_init(&comm, &co, &e) != 0) dml_cli_fail("tune", "joining: %s", dml_err_msg(&e));
  dml_log_set_rank(dml_comm_rank(comm));
  int status;
  if (dml_comm_rank(comm) == 0) {
    status = coordinator(comm, axes, naxes, fixed, nfixed, random_k, search_seed, json_out);
  } else {
    dml_farm_opts fo;
    dml_farm_opts_default(&fo);
    fo.max_payload_bytes = 4096;
    fo.max_result_bytes = 4096;
    fo.prefetch = 0;
    dml_farm_handler h = {"trial", run_trial, NULL};
    status = dml_farm_serve(comm, &fo, &h, 1, &e) == 0 ? 0 : 1;
    if (status) dml_log(DML_LOG_ERROR, "worker: %s", dml_err_msg(&e));
  }
  dml_comm_free(comm);
  for (int a = 0; a < naxes; a++) free(axes[a].storage);
  return status;
}
