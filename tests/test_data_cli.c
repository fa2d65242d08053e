/* Bad input through the command line: `distml train --data FILE` on each kind of broken file must
 * exit with status 1 and print one error naming the file and the line or byte offset (the reader
 * messages of src/data, as the user sees them), and a good file must train. The inputs are written
 * to a temporary directory; $DISTML is the CLI under test. */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "testutil.h"

static char g_dir[256];
static char g_err[8192];

static const char *tpath(const char *name) {
  static char bufs[8][512];
  static int k = 0;
  char *b = bufs[k++ % 8];
  snprintf(b, 512, "%s/%s", g_dir, name);
  return b;
}

static void write_bytes(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  T_ASSERT(f != NULL);
  T_ASSERT(fwrite(data, 1, len, f) == len);
  T_ASSERT(fclose(f) == 0);
}

/* Runs $DISTML with args (NULL-terminated) and optional extra env "K=V"; returns the exit status
 * and leaves stderr in g_err. Kills the child (by its pid) after 120 s. */
static int run_cli(const char *env_kv, ...) {
  const char *exe = getenv("DISTML");
  T_ASSERT(exe != NULL);
  char *argv[32];
  int argc = 0;
  argv[argc++] = (char *)exe;
  va_list ap;
  va_start(ap, env_kv);
  const char *a;
  while ((a = va_arg(ap, const char *)) != NULL && argc < 31) argv[argc++] = (char *)a;
  va_end(ap);
  argv[argc] = NULL;
  char errpath[600];
  snprintf(errpath, sizeof(errpath), "%s/stderr.txt", g_dir);
  pid_t pid = fork();
  T_ASSERT(pid >= 0);
  if (pid == 0) {
    int fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int null = open("/dev/null", O_WRONLY);
    if (fd < 0 || null < 0) _exit(127);
    dup2(fd, 2);
    dup2(null, 1);
    if (env_kv != NULL) putenv((char *)env_kv);
    execv(exe, argv);
    _exit(127);
  }
  int status = 0;
  for (int waited = 0;; waited++) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    T_ASSERT(r >= 0);
    if (r == pid) break;
    if (waited > 12000) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      T_FAIL("%s did not finish within 120 s", exe);
    }
    usleep(10000);
  }
  FILE *f = fopen(errpath, "rb");
  T_ASSERT(f != NULL);
  size_t n = fread(g_err, 1, sizeof(g_err) - 1, f);
  g_err[n] = '\0';
  fclose(f);
  T_ASSERT(WIFEXITED(status));
  return WEXITSTATUS(status);
}

/* `distml train --data spec [--format fmt] [extra]` must fail with 1 and name every fragment. */
static void expect_cli_error(const char *spec, const char *fmt, const char *extra_flag,
                             const char *extra_val, const char *env_kv, const char *frag1,
                             const char *frag2) {
  int st = extra_flag ? run_cli(env_kv, "train", "--data", spec, "--format", fmt, "--epochs", "1",
                                "--quiet", extra_flag, extra_val, (char *)NULL)
                      : run_cli(env_kv, "train", "--data", spec, "--format", fmt, "--epochs", "1",
                                "--quiet", (char *)NULL);
  if (st != 1)
    T_FAIL("distml train --data %s: exit status %d, expected 1; stderr: %s", spec, st, g_err);
  T_CONTAINS(g_err, "error:");
  T_CONTAINS(g_err, frag1);
  if (frag2 != NULL) T_CONTAINS(g_err, frag2);
}

static size_t idx_file(unsigned char *p, int ndim, const uint32_t *dims, unsigned char fill) {
  p[0] = 0;
  p[1] = 0;
  p[2] = 8;
  p[3] = (unsigned char)ndim;
  size_t items = 1;
  for (int i = 0; i < ndim; i++) {
    p[4 + 4 * i] = (unsigned char)(dims[i] >> 24);
    p[5 + 4 * i] = (unsigned char)(dims[i] >> 16);
    p[6 + 4 * i] = (unsigned char)(dims[i] >> 8);
    p[7 + 4 * i] = (unsigned char)dims[i];
    items *= dims[i];
  }
  size_t h = 4 + 4 * (size_t)ndim;
  for (size_t i = 0; i < items; i++) p[h + i] = (unsigned char)((i * 37 + fill) % 3);
  return h + items;
}

static unsigned char *gzip_bytes(const void *data, size_t len, size_t *out_len) {
  uLongf cap = compressBound((uLong)len) + 64;
  unsigned char *out = malloc(cap);
  z_stream zs;
  memset(&zs, 0, sizeof(zs));
  T_ASSERT(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  zs.next_in = (Bytef *)(uintptr_t)data;
  zs.avail_in = (uInt)len;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  T_ASSERT(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  *out_len = cap - zs.avail_out;
  deflateEnd(&zs);
  return out;
}

int main(void) {
  snprintf(g_dir, sizeof(g_dir), "%s/distml-data-cli-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  T_ASSERT(mkdtemp(g_dir) != NULL);
  char where[700], spec[1200];

  /* a good LIBSVM file trains (so the failures below come from the data, not the flags) */
  write_bytes(tpath("good.svm"), "1 1:1 2:1\n0 3:1\n1 1:1\n0 2:1 3:1\n", 32);
  int st = run_cli(NULL, "train", "--data", tpath("good.svm"), "--test", tpath("good.svm"),
                   "--model", "logreg", "--batch", "2", "--epochs", "1", "--quiet", (char *)NULL);
  if (st != 0) T_FAIL("training on a good file: exit status %d; stderr: %s", st, g_err);

  /* LIBSVM text */
  static const struct {
    const char *file, *text, *where, *what;
  } svm[] = {
      {"nonnum.svm", "1 1:1\n0 2:abc\n", ":2:5:", "is not a number"},
      {"idx0.svm", "1 1:1\n1 0:1\n", ":2:3:", "feature index 0"},
      {"decr.svm", "1 5:1 3:1\n", ":1:7:", "strictly increasing"},
      {"nan.svm", "1 1:nan\n", ":1:5:", "not finite"},
      {"inf.svm", "1 1:inf\n", ":1:5:", "not finite"},
      {"empty.svm", "", "", "empty file"},
  };
  for (size_t i = 0; i < sizeof(svm) / sizeof(svm[0]); i++) {
    write_bytes(tpath(svm[i].file), svm[i].text, strlen(svm[i].text));
    snprintf(where, sizeof(where), "%s%s", tpath(svm[i].file), svm[i].where);
    expect_cli_error(tpath(svm[i].file), "libsvm", NULL, NULL, NULL, where, svm[i].what);
  }
  write_bytes(tpath("beyond.svm"), "1 1:1\n0 2:1 9:1\n", 16);
  snprintf(where, sizeof(where), "%s:2:7:", tpath("beyond.svm"));
  expect_cli_error(tpath("beyond.svm"), "libsvm", "--features", "5", NULL, where,
                   "declared feature count 5");

  /* CSV */
  write_bytes(tpath("ragged.csv"), "y,a,b\n1,2,3\n0,1\n", 17);
  snprintf(where, sizeof(where), "%s:3:", tpath("ragged.csv"));
  expect_cli_error(tpath("ragged.csv"), "csv", NULL, NULL, NULL, where, "ragged row");
  write_bytes(tpath("nonnum.csv"), "1,2,3\n0,x,1\n", 12);
  snprintf(where, sizeof(where), "%s:2:3:", tpath("nonnum.csv"));
  expect_cli_error(tpath("nonnum.csv"), "csv", NULL, NULL, NULL, where, "not a number");

  /* directory, missing file, missing named data set */
  expect_cli_error(g_dir, "auto", NULL, NULL, NULL, g_dir, "is a directory");
  expect_cli_error(tpath("missing.svm"), "auto", NULL, NULL, NULL, tpath("missing.svm"),
                   "no such file");
  static char envbuf[600];
  snprintf(envbuf, sizeof(envbuf), "DISTML_DATA_DIR=%s", g_dir);
  expect_cli_error("fashion-mnist", "auto", NULL, NULL, envbuf, "fashion-mnist",
                   "apt-get install dataset-fashion-mnist");

  /* IDX */
  static unsigned char img[16 + 8 * 2 * 2], lab[8 + 8], buf[1024];
  uint32_t di[3] = {8, 2, 2}, dl[1] = {8}, dl7[1] = {7};
  size_t il = idx_file(img, 3, di, 0), ll = idx_file(lab, 1, dl, 1);
  write_bytes(tpath("x-labels-idx1-ubyte"), lab, ll);
  memcpy(buf, img, il);
  buf[1] = 0x42;
  write_bytes(tpath("magic-images-idx3-ubyte"), buf, il);
  snprintf(spec, sizeof(spec), "%s,%s", tpath("magic-images-idx3-ubyte"),
           tpath("x-labels-idx1-ubyte"));
  expect_cli_error(spec, "idx", NULL, NULL, NULL, tpath("magic-images-idx3-ubyte"),
                   "wrong IDX magic at byte offset 0");
  snprintf(spec, sizeof(spec), "%s,%s", tpath("x-labels-idx1-ubyte"), tpath("x-labels-idx1-ubyte"));
  expect_cli_error(spec, "idx", NULL, NULL, NULL, "byte offset 3", "dimensions");
  write_bytes(tpath("t-images-idx3-ubyte"), img, il - 1);
  snprintf(spec, sizeof(spec), "%s,%s", tpath("t-images-idx3-ubyte"), tpath("x-labels-idx1-ubyte"));
  expect_cli_error(spec, "idx", NULL, NULL, NULL, tpath("t-images-idx3-ubyte"), "truncated");
  size_t l7 = idx_file(buf, 1, dl7, 1);
  write_bytes(tpath("seven-labels"), buf, l7);
  write_bytes(tpath("c-images-idx3-ubyte"), img, il);
  snprintf(spec, sizeof(spec), "%s,%s", tpath("c-images-idx3-ubyte"), tpath("seven-labels"));
  expect_cli_error(spec, "idx", NULL, NULL, NULL, "8 images", "7 labels");
  size_t gl;
  unsigned char *gz = gzip_bytes(img, il, &gl);
  write_bytes(tpath("gzt-images-idx3-ubyte.gz"), gz, gl - 10);
  snprintf(spec, sizeof(spec), "%s,%s", tpath("gzt-images-idx3-ubyte.gz"),
           tpath("x-labels-idx1-ubyte"));
  snprintf(where, sizeof(where), "byte offset %zu", gl - 10);
  expect_cli_error(spec, "auto", NULL, NULL, NULL, "truncated gzip", where);
  gz[gl - 6] ^= 0x5a; /* CRC */
  write_bytes(tpath("gzc-images-idx3-ubyte.gz"), gz, gl);
  snprintf(spec, sizeof(spec), "%s,%s", tpath("gzc-images-idx3-ubyte.gz"),
           tpath("x-labels-idx1-ubyte"));
  expect_cli_error(spec, "auto", NULL, NULL, NULL, tpath("gzc-images-idx3-ubyte.gz"),
                   "corrupt gzip");
  free(gz);

  char cmd[400];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  printf("test_data_cli: ok\n");
  return 0;
}
