/* `distml gen`: synthetic data sets written as LIBSVM text. A training and a test file drawn from
 * the same model are one stream of rows cut in two (the first --rows lines, then --test-rows), so
 * both share the planted weights or class centres. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "distml.h"

static void usage(void) {
  printf(
      "usage: distml gen sparse --rows N --features F [--nnz K] [--seed S] --out FILE\n"
      "                         [--test-rows M --test-out FILE]\n"
      "       distml gen dense  --rows N --dim D [--classes K] [--seed S] --out FILE\n"
      "                         [--test-rows M --test-out FILE]\n"
      "\n"
      "sparse: binary classification, K features per row (value 1) drawn with a skew towards\n"
      "        low indices, label ~ Bernoulli(sigmoid(w.x)) for a planted weight vector w.\n"
      "dense:  K-class Gaussian blobs in D dimensions.\n"
      "Files are written atomically (temp file, fsync, rename). Defaults: --nnz 20, --classes 10,\n"
      "--seed 1, no test file.\n");
}

/* A stream that sends the first `limit` lines to a and the rest to b. */
typedef struct split_stream {
  FILE *a, *b;
  long long lines, limit;
} split_stream;

static ssize_t split_write(void *cookie, const char *buf, size_t n) {
  split_stream *s = cookie;
  size_t done = 0;
  while (done < n) {
    FILE *dst = s->lines < s->limit ? s->a : s->b;
    const char *nl = memchr(buf + done, '\n', n - done);
    size_t len = nl ? (size_t)(nl - (buf + done)) + 1 : n - done;
    if (fwrite(buf + done, 1, len, dst) != len) return -1;
    if (nl) s->lines++;
    done += len;
  }
  return (ssize_t)n;
}

int dml_cli_gen_main(int argc, char **argv) {
  static const struct option opts[] = {{"rows", required_argument, 0, 'r'},
                                       {"features", required_argument, 0, 'f'},
                                       {"dim", required_argument, 0, 'd'},
                                       {"nnz", required_argument, 0, 'k'},
                                       {"classes", required_argument, 0, 'c'},
                                       {"seed", required_argument, 0, 's'},
                                       {"out", required_argument, 0, 'o'},
                                       {"test-rows", required_argument, 0, 'R'},
                                       {"test-out", required_argument, 0, 'O'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    usage();
    return 0;
  }
  if (argc < 2 || (strcmp(argv[1], "sparse") != 0 && strcmp(argv[1], "dense") != 0))
    dml_cli_usage_error("gen", "the first argument is the kind of data set: sparse or dense");
  int sparse = strcmp(argv[1], "sparse") == 0;
  int64_t rows = 0, features = 0, dim = 0, nnz = 20, classes = 10, test_rows = 0;
  uint64_t seed = 1;
  const char *out = NULL, *test_out = NULL;
  int c, dense_flag = 0, sparse_flag = 0; /* a flag of the other kind was given */
  optind = 2;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
    switch (c) {
      case 'r': rows = dml_cli_int("gen", "--rows", optarg, 1, INT32_MAX); break;
      case 'f':
        features = dml_cli_int("gen", "--features", optarg, 1, INT32_MAX);
        sparse_flag = 1;
        break;
      case 'd':
        dim = dml_cli_int("gen", "--dim", optarg, 1, 1 << 20);
        dense_flag = 1;
        break;
      case 'k':
        nnz = dml_cli_int("gen", "--nnz", optarg, 1, 1 << 20);
        sparse_flag = 1;
        break;
      case 'c':
        classes = dml_cli_int("gen", "--classes", optarg, 2, 1 << 16);
        dense_flag = 1;
        break;
      case 's': seed = (uint64_t)dml_cli_int("gen", "--seed", optarg, 0, INT64_MAX); break;
      case 'o': out = optarg; break;
      case 'R': test_rows = dml_cli_int("gen", "--test-rows", optarg, 1, INT32_MAX); break;
      case 'O': test_out = optarg; break;
      case 'h': usage(); return 0;
      case ':': dml_cli_usage_error("gen", "%s needs a value", argv[optind - 1]);
      default: dml_cli_usage_error("gen", "unknown flag '%s'", argv[optind - 1]);
    }
  }
  if (optind < argc) dml_cli_usage_error("gen", "unexpected argument '%s'", argv[optind]);
  if (rows == 0) dml_cli_usage_error("gen", "--rows is required");
  if (out == NULL) dml_cli_usage_error("gen", "--out FILE is required");
  if ((test_rows > 0) != (test_out != NULL))
    dml_cli_usage_error("gen", "--test-rows and --test-out go together");
  struct stat so, st;
  if (test_out != NULL &&
      (strcmp(out, test_out) == 0 || (stat(out, &so) == 0 && stat(test_out, &st) == 0 &&
                                      so.st_dev == st.st_dev && so.st_ino == st.st_ino)))
    dml_cli_usage_error("gen", "--out and --test-out are the same file '%s'", out);
  if (sparse && dense_flag)
    dml_cli_usage_error("gen",
                        "sparse: --dim and --classes are for dense data (sparse has 2 "
                        "classes and --features)");
  if (!sparse && sparse_flag)
    dml_cli_usage_error("gen", "dense: --features and --nnz are for sparse data (dense has --dim)");
  if (sparse && features == 0) dml_cli_usage_error("gen", "sparse: --features is required");
  if (sparse && nnz > features)
    dml_cli_usage_error("gen", "--nnz %lld is more than --features %lld", (long long)nnz,
                        (long long)features);
  if (!sparse && dim == 0) dml_cli_usage_error("gen", "dense: --dim is required");
  if (rows + test_rows > INT32_MAX) dml_cli_usage_error("gen", "--rows + --test-rows is too large");

  dml_err e = {0};
  dml_atomic_file a = {0}, b = {0};
  if (dml_atomic_open(&a, out, &e) != 0) dml_cli_fail("gen", "%s", dml_err_msg(&e));
  if (test_out != NULL && dml_atomic_open(&b, test_out, &e) != 0) {
    dml_atomic_abort(&a);
    dml_cli_fail("gen", "%s", dml_err_msg(&e));
  }
  split_stream ss = {a.f, b.f, 0, rows};
  cookie_io_functions_t io = {.write = split_write};
  FILE *stream = test_out ? fopencookie(&ss, "w", io) : a.f;
  int64_t total = rows + test_rows;
  int rc = sparse ? dml_gen_sparse_binary(stream, total, features, (int)nnz, seed, NULL, &e)
                  : dml_gen_dense_multiclass(stream, total, (int)dim, (int)classes, seed, &e);
  if (test_out != NULL && fclose(stream) != 0 && rc == 0)
    rc = dml_err_set(&e, DML_EIO, "%s: write failed", out);
  if (rc == 0) rc = dml_atomic_commit(&a, &e);
  if (rc == 0 && test_out != NULL) rc = dml_atomic_commit(&b, &e);
  if (rc != 0) {
    dml_atomic_abort(&a);
    dml_atomic_abort(&b);
    dml_cli_fail("gen", "%s", dml_err_msg(&e));
  }
  fprintf(stderr, "wrote %lld rows to %s", (long long)rows, out);
  if (test_out) fprintf(stderr, " and %lld rows to %s", (long long)test_rows, test_out);
  fprintf(stderr, "\n");
  return 0;
}
