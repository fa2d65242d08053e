/* Tests of the data layer: IDX (plain and gzipped), LIBSVM and CSV readers on good input and on
 * every kind of bad input (asserting the code and that the message names the file and the line or
 * byte offset), the load dispatcher, sharding, epoch order, gathering, the LIBSVM writer and the
 * generators (round trips, determinism, planted signal), out-of-memory paths, and the real
 * Fashion-MNIST files. Inputs are written to a fresh temporary directory. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "distml/data.h"
#include "testutil.h"

static char g_dir[256];

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

static void write_text(const char *path, const char *text) {
  write_bytes(path, text, strlen(text));
}

static unsigned char *gzip_bytes(const void *data, size_t len, size_t *out_len) {
  z_stream zs;
  memset(&zs, 0, sizeof(zs));
  T_ASSERT(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  size_t cap = deflateBound(&zs, (uLong)len) + 64;
  unsigned char *out = malloc(cap);
  zs.next_in = (Bytef *)(uintptr_t)data;
  zs.avail_in = (uInt)len;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  T_ASSERT(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  *out_len = cap - zs.avail_out;
  deflateEnd(&zs);
  return out;
}

/* An IDX header: magic 0 0 dtype ndim, then big-endian dims. Returns bytes written. */
static size_t idx_header(unsigned char *p, int dtype, int ndim, const uint32_t *dims) {
  p[0] = 0;
  p[1] = 0;
  p[2] = (unsigned char)dtype;
  p[3] = (unsigned char)ndim;
  for (int i = 0; i < ndim; i++) {
    p[4 + 4 * i] = (unsigned char)(dims[i] >> 24);
    p[5 + 4 * i] = (unsigned char)(dims[i] >> 16);
    p[6 + 4 * i] = (unsigned char)(dims[i] >> 8);
    p[7 + 4 * i] = (unsigned char)dims[i];
  }
  return 4 + 4 * (size_t)ndim;
}

/* n images of r x c with pixel (i, j) = (i * 7 + j) % 256, labels i % k. */
static size_t make_images(unsigned char *buf, uint32_t n, uint32_t r, uint32_t c) {
  uint32_t dims[3] = {n, r, c};
  size_t h = idx_header(buf, 0x08, 3, dims);
  for (size_t i = 0; i < (size_t)n * r * c; i++)
    buf[h + i] = (unsigned char)((i / (r * c)) * 7 + i % (r * c));
  return h + (size_t)n * r * c;
}

static size_t make_labels(unsigned char *buf, uint32_t n, int k) {
  uint32_t dims[1] = {n};
  size_t h = idx_header(buf, 0x08, 1, dims);
  for (uint32_t i = 0; i < n; i++) buf[h + i] = (unsigned char)(i % (uint32_t)k);
  return h + n;
}

/* rc must be code, and the message must contain every given fragment (list ended by T_END). */
#define T_END ((const char *)NULL)
static void expect_fail(int rc, int code, const dml_err *err, const dml_dataset *ds, ...) {
  if (rc != code)
    T_FAIL("expected %s, got %s: %s", dml_err_name(code), dml_err_name(rc), dml_err_msg(err));
  T_EQ_INT(err->code, code);
  T_ASSERT(ds->x == NULL && ds->y == NULL && ds->indptr == NULL && ds->n == 0);
  va_list ap;
  va_start(ap, ds);
  const char *s;
  while ((s = va_arg(ap, const char *)) != NULL) T_CONTAINS(err->msg, s);
  va_end(ap);
}

/* ------------------------------------------------------------------------------------------- */

static void test_idx_good(void) {
  static unsigned char img[16 + 5 * 3 * 4], lab[8 + 5];
  size_t il = make_images(img, 5, 3, 4), ll = make_labels(lab, 5, 3);
  write_bytes(tpath("a-images-idx3-ubyte"), img, il);
  write_bytes(tpath("a-labels-idx1-ubyte"), lab, ll);
  size_t gil, gll;
  unsigned char *gi = gzip_bytes(img, il, &gil), *gl = gzip_bytes(lab, ll, &gll);
  write_bytes(tpath("g-images-idx3-ubyte.gz"), gi, gil);
  write_bytes(tpath("g-labels-idx1-ubyte.gz"), gl, gll);
  /* gzip detected by content, not by name */
  write_bytes(tpath("plainname-images-idx3"), gi, gil);
  write_bytes(tpath("plainname-labels-idx1"), gl, gll);
  free(gi);
  free(gl);
  const char *specs[] = {tpath("a-images-idx3-ubyte"), tpath("g-images-idx3-ubyte.gz"),
                         tpath("plainname-images-idx3")};
  for (int s = 0; s < 3; s++) {
    dml_dataset ds;
    dml_err err = {0};
    T_OK(dml_dataset_load(specs[s], "auto", NULL, &ds, &err));
    T_EQ_INT(ds.n, 5);
    T_EQ_INT(ds.dim, 12);
    T_EQ_INT(ds.num_classes, 3);
    T_ASSERT(ds.x != NULL && ds.indptr == NULL);
    for (int i = 0; i < 5; i++) {
      T_EQ_INT(ds.y[i], i % 3);
      for (int j = 0; j < 12; j++)
        T_NEAR(ds.x[i * 12 + j], (double)((i * 7 + j) % 256) / 255.0, 1e-7);
    }
    T_CONTAINS(ds.name, specs[s]);
    dml_dataset_free(&ds);
    dml_dataset_free(&ds); /* idempotent */
  }
  /* explicit pair, and explicit format */
  char pair[1100];
  snprintf(pair, sizeof(pair), "%s,%s", tpath("a-images-idx3-ubyte"),
           tpath("g-labels-idx1-ubyte.gz"));
  dml_dataset ds;
  dml_err err = {0};
  T_OK(dml_dataset_load(pair, "idx", NULL, &ds, &err));
  T_EQ_INT(ds.n, 5);
  dml_dataset_free(&ds);
}

static void test_idx_bad(void) {
  static unsigned char img[16 + 6 * 2 * 2], lab[8 + 6], buf[4096];
  size_t il = make_images(img, 6, 2, 2), ll = make_labels(lab, 6, 10);
  char L[512];
  snprintf(L, sizeof(L), "%s", tpath("ok-labels-idx1-ubyte"));
  write_bytes(L, lab, ll);
  dml_dataset ds;
  dml_err err;
  int rc;
  char off[64];

  /* wrong magic */
  memcpy(buf, img, il);
  buf[0] = 0x1a;
  write_bytes(tpath("magic"), buf, il);
  rc = dml_read_idx(tpath("magic"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("magic"), "wrong IDX magic", "byte offset 0",
              T_END);

  /* unsupported dtype (float) */
  memcpy(buf, img, il);
  buf[2] = 0x0D;
  write_bytes(tpath("dtype"), buf, il);
  rc = dml_read_idx(tpath("dtype"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EUNSUPPORTED, &err, &ds, tpath("dtype"), "byte offset 2", "float", T_END);

  /* wrong number of dimensions: a labels file with 3 */
  rc = dml_read_idx(tpath("ok-labels-idx1-ubyte"), tpath("ok-labels-idx1-ubyte"), NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, "byte offset 3", "1 dimensions, expected 2 to 4", T_END);
  write_bytes(tpath("img3"), img, il);
  rc = dml_read_idx(tpath("img3"), tpath("img3"), NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("img3"), "byte offset 3",
              "3 dimensions, expected 1", T_END);

  /* a zero dimension */
  uint32_t d0[3] = {6, 0, 2};
  size_t h = idx_header(buf, 8, 3, d0);
  write_bytes(tpath("zerodim"), buf, h);
  rc = dml_read_idx(tpath("zerodim"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("zerodim"), "byte offset 8", "dimension 1 is 0",
              T_END);

  /* absurd dimensions: product overflow / too large */
  uint32_t dbig[3] = {6, 0xffffffffu, 0xffffffffu};
  h = idx_header(buf, 8, 3, dbig);
  write_bytes(tpath("huge"), buf, h + 10);
  rc = dml_read_idx(tpath("huge"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EOVERFLOW, &err, &ds, tpath("huge"), "byte offset 8", T_END);

  /* header cut short */
  write_bytes(tpath("shorthdr"), img, 10);
  rc = dml_read_idx(tpath("shorthdr"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("shorthdr"), "truncated IDX header",
              "byte offset 10", T_END);

  /* declared size vs file length (plain): truncated, and trailing bytes */
  write_bytes(tpath("trunc"), img, il - 3);
  rc = dml_read_idx(tpath("trunc"), L, NULL, &ds, &err);
  snprintf(off, sizeof(off), "byte offset %zu", il - 3);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("trunc"), "truncated", off, T_END);
  memcpy(buf, img, il);
  buf[il] = 1;
  write_bytes(tpath("trail"), buf, il + 1);
  rc = dml_read_idx(tpath("trail"), L, NULL, &ds, &err);
  snprintf(off, sizeof(off), "byte offset %zu", il);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("trail"), "unexpected bytes", off, T_END);

  /* image/label count mismatch */
  static unsigned char lab5[8 + 5];
  size_t l5 = make_labels(lab5, 5, 3);
  write_bytes(tpath("five-labels"), lab5, l5);
  write_bytes(tpath("six-images"), img, il);
  rc = dml_read_idx(tpath("six-images"), tpath("five-labels"), NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("six-images"), tpath("five-labels"), "6 images",
              "5 labels", "count mismatch", T_END);

  /* label out of range for a declared class count */
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_classes = 4;
  rc = dml_read_idx(tpath("six-images"), L, &o, &ds, &err);
  expect_fail(rc, DML_ERANGE, &err, &ds, L, "byte offset 12", "label 4 out of range for 4 classes",
              T_END);

  /* gzip: truncated, corrupt CRC, corrupt deflate block, garbage after the stream, and a gzipped
   * file whose decompressed data is shorter than its header declares */
  size_t gl;
  unsigned char *gz = gzip_bytes(img, il, &gl);
  write_bytes(tpath("gztrunc"), gz, gl / 2);
  rc = dml_read_idx(tpath("gztrunc"), L, NULL, &ds, &err);
  snprintf(off, sizeof(off), "byte offset %zu", gl / 2);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("gztrunc"), "truncated gzip", off, T_END);
  memcpy(buf, gz, gl);
  buf[gl - 8] ^= 0x55; /* CRC32 of the trailer */
  write_bytes(tpath("gzcrc"), buf, gl);
  rc = dml_read_idx(tpath("gzcrc"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("gzcrc"), "corrupt gzip", "byte offset", T_END);
  memcpy(buf, gz, gl);
  buf[10] = 0xff; /* first deflate block: reserved block type */
  write_bytes(tpath("gzblock"), buf, gl);
  rc = dml_read_idx(tpath("gzblock"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("gzblock"), "corrupt gzip", "byte offset 10",
              T_END);
  memcpy(buf, gz, gl);
  memcpy(buf + gl, "junk", 4);
  write_bytes(tpath("gzjunk"), buf, gl + 4);
  rc = dml_read_idx(tpath("gzjunk"), L, NULL, &ds, &err);
  snprintf(off, sizeof(off), "byte offset %zu", gl);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("gzjunk"), "after the end of the gzip stream", off,
              T_END);
  free(gz);
  gz = gzip_bytes(img, il - 5, &gl);
  write_bytes(tpath("gzshort"), gz, gl);
  rc = dml_read_idx(tpath("gzshort"), L, NULL, &ds, &err);
  snprintf(off, sizeof(off), "byte offset %zu (decompressed)", il - 5);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("gzshort"), "truncated", off, T_END);
  free(gz);
  /* a small gzip claiming a huge body: refused before allocating it */
  uint32_t dlie[3] = {60000, 1000, 1000};
  h = idx_header(buf, 8, 3, dlie);
  gz = gzip_bytes(buf, h + 100, &gl);
  write_bytes(tpath("gzlie"), gz, gl);
  free(gz);
  rc = dml_read_idx(tpath("gzlie"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("gzlie"), "more than", T_END);

  /* empty file, labels path that cannot be derived, missing labels file */
  write_bytes(tpath("empty-images-idx3"), "", 0);
  rc = dml_read_idx(tpath("empty-images-idx3"), L, NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("empty-images-idx3"), "empty file", T_END);
  rc = dml_read_idx(tpath("six-images"), NULL, NULL, &ds, &err);
  expect_fail(rc, DML_EINVAL, &err, &ds, tpath("six-images"), "images-idx3", T_END);
  write_bytes(tpath("lonely-images-idx3-ubyte"), img, il);
  rc = dml_dataset_load(tpath("lonely-images-idx3-ubyte"), "auto", NULL, &ds, &err);
  expect_fail(rc, DML_ENOENT, &err, &ds, tpath("lonely-labels-idx1-ubyte"), "no such file", T_END);
}

/* ------------------------------------------------------------------------------------------- */

static void test_libsvm_good(void) {
  const char *text =
      "# a comment line\n"
      "+1 1:0.5 3:-2 10:1e-3\n"
      "\n"
      "-1 2:4   # trailing comment\n"
      "  -1\t4:0.25 5:7\r\n"
      "1"; /* last line without newline, no features */
  write_text(tpath("good.svm"), text);
  dml_dataset ds;
  dml_err err = {0};
  T_OK(dml_read_libsvm(tpath("good.svm"), NULL, &ds, &err));
  T_EQ_INT(ds.n, 4);
  T_EQ_INT(ds.dim, 10);
  T_EQ_INT(ds.num_classes, 2);
  T_ASSERT(ds.x == NULL);
  int32_t ey[4] = {1, 0, 0, 1};
  uint64_t eptr[5] = {0, 3, 4, 6, 6};
  uint32_t eidx[6] = {0, 2, 9, 1, 3, 4};
  float eval[6] = {0.5f, -2.0f, 1e-3f, 4.0f, 0.25f, 7.0f};
  for (int i = 0; i < 4; i++) T_EQ_INT(ds.y[i], ey[i]);
  for (int i = 0; i < 5; i++) T_EQ_INT(ds.indptr[i], eptr[i]);
  for (int i = 0; i < 6; i++) {
    T_EQ_INT(ds.indices[i], eidx[i]);
    T_ASSERT(ds.values[i] == eval[i]);
  }
  T_EQ_INT(dml_dataset_nnz(&ds), 6);
  dml_dataset_free(&ds);

  /* class ids, and a declared feature count larger than the largest index */
  write_text(tpath("multi.svm"), "0 1:1\n2 2:1\n1 3:1\n7 1:2\n");
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_features = 50;
  T_OK(dml_read_libsvm(tpath("multi.svm"), &o, &ds, &err));
  T_EQ_INT(ds.dim, 50);
  T_EQ_INT(ds.num_classes, 8);
  T_EQ_INT(ds.y[3], 7);
  dml_dataset_free(&ds);

  /* a very long line (no fixed-size line buffer): 200000 features on one row */
  size_t cap = 200000 * 16 + 16, n = 0;
  char *big = malloc(cap);
  n += (size_t)snprintf(big + n, cap - n, "1");
  for (int j = 1; j <= 200000; j++) n += (size_t)snprintf(big + n, cap - n, " %d:%d", j, j % 7 + 1);
  big[n++] = '\n';
  write_bytes(tpath("long.svm"), big, n);
  free(big);
  T_OK(dml_read_libsvm(tpath("long.svm"), NULL, &ds, &err));
  T_EQ_INT(ds.n, 1);
  T_EQ_INT(ds.indptr[1], 200000);
  T_EQ_INT(ds.indices[199999], 199999);
  T_ASSERT(ds.values[199999] == (float)(200000 % 7 + 1));
  dml_dataset_free(&ds);

  /* gzipped LIBSVM, found by content */
  size_t gl;
  unsigned char *gz = gzip_bytes(text, strlen(text), &gl);
  write_bytes(tpath("good.svm.gz"), gz, gl);
  free(gz);
  T_OK(dml_dataset_load(tpath("good.svm.gz"), "libsvm", NULL, &ds, &err));
  T_EQ_INT(ds.n, 4);
  T_EQ_INT(ds.indptr[4], 6);
  dml_dataset_free(&ds);
}

typedef struct bad_case {
  const char *file, *text;
  int code;
  const char *where, *what;
} bad_case;

static void test_libsvm_bad(void) {
  const bad_case cases[] = {
      {"nonnum.svm", "1 1:1\n0 2:abc\n", DML_EFORMAT,
       ":2:5:", "value 'abc' of feature 2 is not a number"},
      {"badlabel.svm", "1 1:1\nyes 2:1\n", DML_EFORMAT, ":2:1:", "label 'yes' is not a number"},
      {"fraclabel.svm", "0.5 1:1\n", DML_ERANGE, ":1:1:", "not a class id"},
      {"neglabel.svm", "-3 1:1\n", DML_ERANGE, ":1:1:", "not a class id"},
      {"mixed.svm", "-1 1:1\n1 1:1\n2 1:1\n", DML_ERANGE,
       ":3:", "label 2 mixed with label -1 (line 1)"},
      {"badidx.svm", "1 x:1\n", DML_EFORMAT,
       ":1:3:", "feature index 'x' is not a positive integer"},
      {"negidx.svm", "1 -4:1\n", DML_EFORMAT, ":1:3:", "not a positive integer"},
      {"idx0.svm", "1 1:1\n1 0:1 2:1\n", DML_EFORMAT,
       ":2:3:", "feature index 0 (indices are 1-based)"},
      {"decr.svm", "1 1:1\n\n1 5:1 3:1\n", DML_EFORMAT,
       ":3:7:", "3 is less than the previous index 5"},
      {"dup.svm", "1 2:1 2:1\n", DML_EFORMAT, ":1:7:", "2 repeats the previous index 2"},
      {"nan.svm", "1 1:nan\n", DML_EFORMAT, ":1:5:", "not finite"},
      {"inf.svm", "1 1:1\n0 1:2 2:-inf\n", DML_EFORMAT, ":2:9:", "not finite"},
      {"huge.svm", "1 1:1e300\n", DML_EFORMAT, ":1:5:", "out of float range"},
      {"nocolon.svm", "1 1:2 3\n", DML_EFORMAT, ":1:7:", "expected INDEX:VALUE, got '3'"},
      {"novalue.svm", "1 1:\n", DML_EFORMAT, ":1:5:", "value '' of feature 1 is not a number"},
      {"qid.svm", "1 qid:3 1:1\n", DML_EUNSUPPORTED, ":1:3:", "qid"},
      {"bigidx.svm", "1 99999999999:1\n", DML_EOVERFLOW, ":1:3:", "larger than"},
      {"empty.svm", "", DML_EFORMAT, "empty.svm", "empty file: no data rows"},
      {"comments.svm", "# nothing\n\n   \n", DML_EFORMAT, "comments.svm",
       "only blank or comment lines"},
      {"nul.svm",
       "1 1:1\n1 2:3\0"
       "4\n",
       DML_EFORMAT, ":2:5:", "is not a number"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const bad_case *c = &cases[i];
    size_t len = strcmp(c->file, "nul.svm") == 0 ? 15 : strlen(c->text);
    write_bytes(tpath(c->file), c->text, len);
    dml_dataset ds;
    dml_err err;
    int rc = dml_read_libsvm(tpath(c->file), NULL, &ds, &err);
    char where[600];
    snprintf(where, sizeof(where), "%s%s", tpath(c->file), c->where[0] == ':' ? c->where : "");
    expect_fail(rc, c->code, &err, &ds, where, c->what, T_END);
  }
  /* index beyond a declared feature count */
  write_text(tpath("beyond.svm"), "1 1:1 4:1\n0 2:1 5:1\n");
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_features = 4;
  dml_dataset ds;
  dml_err err;
  int rc = dml_read_libsvm(tpath("beyond.svm"), &o, &ds, &err);
  char where[600];
  snprintf(where, sizeof(where), "%s:2:7:", tpath("beyond.svm"));
  expect_fail(rc, DML_ERANGE, &err, &ds, where,
              "feature index 5 beyond the declared feature count 4", T_END);
  /* ... or dropped on request (a test set read against a training set's feature count) */
  o.drop_extra_features = 1;
  T_OK(dml_read_libsvm(tpath("beyond.svm"), &o, &ds, &err));
  T_EQ_INT(ds.dim, 4);
  T_EQ_INT(ds.indptr[1], 2);
  T_EQ_INT(ds.indptr[2], 3);
  T_EQ_INT(ds.indices[2], 1);
  dml_dataset_free(&ds);
  write_text(tpath("beyond2.svm"), "1 1:1 5:nan\n");
  rc = dml_read_libsvm(tpath("beyond2.svm"), &o, &ds, &err); /* still checked */
  expect_fail(rc, DML_EFORMAT, &err, &ds, "beyond2.svm:1:9:", "not finite", T_END);
  o.drop_extra_features = 0;
  /* label beyond a declared class count */
  o.num_features = 0;
  o.num_classes = 3;
  write_text(tpath("classes.svm"), "0 1:1\n3 1:1\n");
  rc = dml_read_libsvm(tpath("classes.svm"), &o, &ds, &err);
  snprintf(where, sizeof(where), "%s:2:1:", tpath("classes.svm"));
  expect_fail(rc, DML_ERANGE, &err, &ds, where, "label 3 out of range for 3 classes", T_END);
  /* directory and missing file, through the reader and through the dispatcher */
  rc = dml_read_libsvm(g_dir, NULL, &ds, &err);
  expect_fail(rc, DML_EISDIR, &err, &ds, g_dir, "is a directory", T_END);
  rc = dml_dataset_load(g_dir, "auto", NULL, &ds, &err);
  expect_fail(rc, DML_EISDIR, &err, &ds, g_dir, "is a directory", T_END);
  rc = dml_read_libsvm(tpath("nope.svm"), NULL, &ds, &err);
  expect_fail(rc, DML_ENOENT, &err, &ds, tpath("nope.svm"), "no such file", T_END);
  rc = dml_dataset_load(tpath("nope.svm"), "libsvm", NULL, &ds, &err);
  expect_fail(rc, DML_ENOENT, &err, &ds, tpath("nope.svm"), "no such file", T_END);
  rc = dml_dataset_load(tpath("good.svm"), "parquet", NULL, &ds, &err);
  expect_fail(rc, DML_EINVAL, &err, &ds, "parquet", T_END);
  /* corrupt gzip text */
  write_bytes(tpath("bad.svm.gz"), "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff", 12);
  rc = dml_read_libsvm(tpath("bad.svm.gz"), NULL, &ds, &err);
  expect_fail(rc, DML_EFORMAT, &err, &ds, tpath("bad.svm.gz"), "corrupt gzip", "byte offset 10",
              T_END);
}

/* ------------------------------------------------------------------------------------------- */

static void test_csv(void) {
  dml_dataset ds;
  dml_err err = {0};
  dml_data_opts o;
  dml_data_opts_init(&o);
  /* header auto-detected, label in column 0 */
  write_text(tpath("h.csv"), "label,a,b\n1, 0.5,2\n\n0,-1,\"3\"\n2,1e2,0\n");
  T_OK(dml_read_csv(tpath("h.csv"), NULL, &ds, &err));
  T_EQ_INT(ds.n, 3);
  T_EQ_INT(ds.dim, 2);
  T_EQ_INT(ds.num_classes, 3);
  float ex[6] = {0.5f, 2, -1, 3, 100, 0};
  for (int i = 0; i < 6; i++) T_ASSERT(ds.x[i] == ex[i]);
  T_EQ_INT(ds.y[0], 1);
  T_EQ_INT(ds.y[2], 2);
  dml_dataset_free(&ds);
  /* a UTF-8 byte order mark (spreadsheet exports) is skipped */
  write_text(tpath("bom.csv"),
             "\xEF\xBB\xBF"
             "1,2\n0,3\n");
  T_OK(dml_read_csv(tpath("bom.csv"), NULL, &ds, &err));
  T_EQ_INT(ds.n, 2);
  T_EQ_INT(ds.y[0], 1);
  dml_dataset_free(&ds);
  /* no header, label last (negative column) */
  write_text(tpath("n.csv"), "0.5,2,1\n-1,3,0\n");
  o.csv_label_col = -1;
  T_OK(dml_read_csv(tpath("n.csv"), &o, &ds, &err));
  T_EQ_INT(ds.n, 2);
  T_EQ_INT(ds.dim, 2);
  T_ASSERT(ds.x[2] == -1.0f && ds.x[3] == 3.0f);
  T_EQ_INT(ds.y[0], 1);
  dml_dataset_free(&ds);
  /* header forced: the numeric first row is skipped */
  o.csv_header = DML_CSV_HEADER_YES;
  T_OK(dml_read_csv(tpath("n.csv"), &o, &ds, &err));
  T_EQ_INT(ds.n, 1);
  dml_dataset_free(&ds);
  /* header forced off: a text first row is an error at line 1 */
  o.csv_header = DML_CSV_HEADER_NO;
  o.csv_label_col = 0;
  int rc = dml_read_csv(tpath("h.csv"), &o, &ds, &err);
  char where[600];
  snprintf(where, sizeof(where), "%s:1:1:", tpath("h.csv"));
  expect_fail(rc, DML_EFORMAT, &err, &ds, where, "label 'label' is not a number", T_END);
  dml_data_opts_init(&o);
  /* detection through the dispatcher */
  T_OK(dml_dataset_load(tpath("h.csv"), "auto", NULL, &ds, &err));
  T_ASSERT(ds.x != NULL && ds.n == 3);
  dml_dataset_free(&ds);
  write_text(tpath("noext"), "1,2,3\n0,1,1\n");
  T_OK(dml_dataset_load(tpath("noext"), NULL, NULL, &ds, &err));
  T_ASSERT(ds.x != NULL && ds.n == 2);
  dml_dataset_free(&ds);

  const bad_case cases[] = {
      {"ragged.csv", "y,a,b\n1,2,3\n0,1\n", DML_EFORMAT,
       ":3:", "ragged row: 2 fields, expected 3 (as on the header line 1)"},
      {"ragged2.csv", "1,2,3\n\n0,1,2,4\n", DML_EFORMAT,
       ":3:", "4 fields, expected 3 (as on the first row line 1)"},
      {"nonnum.csv", "1,2,3\n0,x1,2\n", DML_EFORMAT, ":2:3:", "field 2 'x1' is not a number"},
      {"nan.csv", "1,2,3\n0,1,NaN\n", DML_EFORMAT, ":2:5:", "field 3 'NaN' is not finite"},
      {"inf.csv", "1,inf,3\n", DML_EFORMAT, ":1:3:", "field 2 'inf' is not finite"},
      {"emptyfield.csv", "1,2,3\n0,,3\n", DML_EFORMAT, ":2:3:", "field 2 is empty"},
      {"empty.csv", "", DML_EFORMAT, "empty.csv", "empty file: no data rows"},
      {"onlyheader.csv", "y,a\n", DML_EFORMAT, "onlyheader.csv", "no data rows after the header"},
      {"onecol.csv", "1\n2\n", DML_EFORMAT, ":1:", "only one column"},
      {"labelfrac.csv", "1,2\n0.5,1\n", DML_ERANGE, ":2:1:", "not a class id"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const bad_case *c = &cases[i];
    write_text(tpath(c->file), c->text);
    rc = dml_read_csv(tpath(c->file), NULL, &ds, &err);
    snprintf(where, sizeof(where), "%s%s", tpath(c->file), c->where[0] == ':' ? c->where : "");
    expect_fail(rc, c->code, &err, &ds, where, c->what, T_END);
  }
  o.csv_label_col = 5;
  rc = dml_read_csv(tpath("n.csv"), &o, &ds, &err);
  expect_fail(rc, DML_EINVAL, &err, &ds, tpath("n.csv"),
              "label column 5 out of range for 3 columns", T_END);
  rc = dml_dataset_load(g_dir, "csv", NULL, &ds, &err);
  expect_fail(rc, DML_EISDIR, &err, &ds, g_dir, T_END);
}

/* ------------------------------------------------------------------------------------------- */

static void test_shard_and_order(void) {
  int64_t ns[] = {0, 1, 7, 10, 60000, 99991};
  for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
    for (int world = 1; world <= 9; world++) {
      int64_t prev_end = 0, minsz = INT64_MAX, maxsz = 0;
      for (int r = 0; r < world; r++) {
        int64_t b, e;
        T_OK(dml_shard_range(ns[a], r, world, &b, &e));
        T_EQ_INT(b, prev_end);
        T_ASSERT(e >= b);
        prev_end = e;
        if (e - b < minsz) minsz = e - b;
        if (e - b > maxsz) maxsz = e - b;
      }
      T_EQ_INT(prev_end, ns[a]);
      T_ASSERT(maxsz - minsz <= 1);
    }
  }
  int64_t b, e;
  T_EQ_INT(dml_shard_range(10, 3, 3, &b, &e), DML_EINVAL);
  T_EQ_INT(dml_shard_range(10, -1, 3, &b, &e), DML_EINVAL);
  T_EQ_INT(dml_shard_range(10, 0, 0, &b, &e), DML_EINVAL);

  enum { N = 1000 };
  static uint32_t o1[N], o2[N], o3[N];
  static unsigned char seen[N];
  dml_epoch_order(o1, N, 42, 0);
  dml_epoch_order(o2, N, 42, 0);
  dml_epoch_order(o3, N, 42, 1);
  T_ASSERT(memcmp(o1, o2, sizeof(o1)) == 0);
  T_ASSERT(memcmp(o1, o3, sizeof(o1)) != 0);
  int fixed = 0;
  for (int i = 0; i < N; i++) {
    T_ASSERT(o1[i] < N && !seen[o1[i]]);
    seen[o1[i]] = 1;
    fixed += o1[i] == (uint32_t)i;
  }
  T_ASSERT(fixed < 20); /* a shuffle, not the identity (expected about 1 fixed point) */
  dml_epoch_order(o2, N, 43, 0);
  T_ASSERT(memcmp(o1, o2, sizeof(o1)) != 0);
}

static void test_gather(void) {
  dml_dataset ds;
  dml_err err = {0};
  write_text(tpath("g.svm"), "1 1:1 3:3\n0\n1 2:2\n0 1:4 2:5 3:6\n");
  T_OK(dml_read_libsvm(tpath("g.svm"), NULL, &ds, &err));
  dml_batch_buf buf = {0};
  dml_batch b;
  uint32_t rows[5] = {3, 1, 0, 3, 2};
  T_OK(dml_dataset_gather(&ds, rows, 5, &buf, &b, &err));
  T_EQ_INT(b.n, 5);
  T_EQ_INT(b.dim, 3);
  T_ASSERT(b.x == NULL);
  for (int i = 0; i < 5; i++) {
    T_EQ_INT(b.y[i], ds.y[rows[i]]);
    uint64_t len = ds.indptr[rows[i] + 1] - ds.indptr[rows[i]];
    T_EQ_INT(b.indptr[i + 1] - b.indptr[i], len);
    for (uint64_t k = 0; k < len; k++) {
      T_EQ_INT(b.indices[b.indptr[i] + k], ds.indices[ds.indptr[rows[i]] + k]);
      T_ASSERT(b.values[b.indptr[i] + k] == ds.values[ds.indptr[rows[i]] + k]);
    }
  }
  T_EQ_INT(b.indptr[0], 0);
  T_EQ_INT(b.indptr[5], 9);
  uint32_t bad[2] = {0, 4};
  T_EQ_INT(dml_dataset_gather(&ds, bad, 2, &buf, &b, &err), DML_ERANGE);
  T_CONTAINS(err.msg, "row 4 out of range");
  T_OK(dml_dataset_slice(&ds, 2, 2, &buf, &b, &err));
  T_EQ_INT(b.n, 2);
  T_EQ_INT(b.indptr[0], 0);
  T_EQ_INT(b.indptr[2], 4);
  T_EQ_INT(b.indices[0], 1);
  T_ASSERT(b.values[3] == 6.0f);
  T_EQ_INT(dml_dataset_slice(&ds, 3, 2, &buf, &b, &err), DML_ERANGE);
  dml_dataset_free(&ds);

  write_text(tpath("g.csv"), "0,1,2\n1,3,4\n2,5,6\n");
  T_OK(dml_read_csv(tpath("g.csv"), NULL, &ds, &err));
  uint32_t r2[3] = {2, 2, 0};
  T_OK(dml_dataset_gather(&ds, r2, 3, &buf, &b, &err));
  T_ASSERT(b.indptr == NULL && b.x != NULL);
  float ex[6] = {5, 6, 5, 6, 1, 2};
  for (int i = 0; i < 6; i++) T_ASSERT(b.x[i] == ex[i]);
  T_EQ_INT(b.y[0], 2);
  T_EQ_INT(b.y[2], 0);
  T_OK(dml_dataset_slice(&ds, 1, 2, &buf, &b, &err));
  T_ASSERT(b.x[0] == 3.0f && b.y[1] == 2);
  dml_dataset_free(&ds);
  dml_batch_buf_free(&buf);
}

/* ------------------------------------------------------------------------------------------- */

static void test_write_roundtrip(void) {
  /* a sparse data set with awkward floats, written and read back exactly */
  dml_dataset ds;
  dml_err err = {0};
  write_text(tpath("rt.svm"),
             "3 1:0.1 7:-1.17549435e-38 9:3.40282347e+38\n0 2:1e-45 4:123456.789\n1\n");
  T_OK(dml_read_libsvm(tpath("rt.svm"), NULL, &ds, &err));
  T_OK(dml_libsvm_write_file(tpath("rt2.svm"), &ds, &err));
  dml_dataset back;
  T_OK(dml_read_libsvm(tpath("rt2.svm"), NULL, &back, &err));
  T_EQ_INT(back.n, ds.n);
  T_EQ_INT(back.dim, ds.dim);
  for (int i = 0; i < ds.n; i++) T_EQ_INT(back.y[i], ds.y[i]);
  for (int i = 0; i <= ds.n; i++) T_EQ_INT(back.indptr[i], ds.indptr[i]);
  for (uint64_t k = 0; k < ds.indptr[ds.n]; k++) {
    T_EQ_INT(back.indices[k], ds.indices[k]);
    T_ASSERT(memcmp(&back.values[k], &ds.values[k], sizeof(float)) == 0);
  }
  dml_dataset_free(&back);
  dml_dataset_free(&ds);
  /* dense: zeros dropped, values kept */
  write_text(tpath("rt.csv"), "1,0.25,0,-3\n0,0,0,0\n");
  T_OK(dml_read_csv(tpath("rt.csv"), NULL, &ds, &err));
  T_OK(dml_libsvm_write_file(tpath("rt3.svm"), &ds, &err));
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_features = 3;
  T_OK(dml_read_libsvm(tpath("rt3.svm"), &o, &back, &err));
  T_EQ_INT(back.n, 2);
  T_EQ_INT(back.dim, 3);
  T_EQ_INT(back.indptr[1], 2);
  T_EQ_INT(back.indptr[2], 2);
  T_ASSERT(back.values[0] == 0.25f && back.indices[1] == 2 && back.values[1] == -3.0f);
  dml_dataset_free(&back);
  dml_dataset_free(&ds);
  /* a writer into an unwritable place fails cleanly and leaves no file */
  char bad[600];
  snprintf(bad, sizeof(bad), "%s/no/such/dir/x.svm", g_dir);
  T_OK(dml_read_csv(tpath("rt.csv"), NULL, &ds, &err));
  T_EQ_INT(dml_libsvm_write_file(bad, &ds, &err), DML_EIO);
  T_CONTAINS(err.msg, bad);
  dml_dataset_free(&ds);
}

static double auc_of(const double *score, const int32_t *y, int n) {
  /* pairs (pos, neg) ordered correctly, ties half: O(n^2) is fine for the sizes here */
  double good = 0, pairs = 0;
  for (int i = 0; i < n; i++) {
    if (y[i] != 1) continue;
    for (int j = 0; j < n; j++) {
      if (y[j] != 0) continue;
      pairs += 1;
      good += score[i] > score[j] ? 1.0 : score[i] == score[j] ? 0.5 : 0.0;
    }
  }
  return good / pairs;
}

static void test_generators(void) {
  enum { ROWS = 2000, FEAT = 5000, NNZ = 12 };
  static float w[FEAT];
  dml_err err = {0};
  T_OK(dml_gen_sparse_binary_file(tpath("gen.svm"), ROWS, FEAT, NNZ, 7, w, &err));
  dml_dataset ds;
  T_OK(dml_read_libsvm(tpath("gen.svm"), NULL, &ds, &err));
  T_EQ_INT(ds.n, ROWS);
  T_ASSERT(ds.dim <= FEAT && ds.dim > FEAT / 2);
  T_EQ_INT(ds.num_classes, 2);
  int pos = 0;
  static double score[ROWS];
  for (int i = 0; i < ROWS; i++) {
    T_EQ_INT(ds.indptr[i + 1] - ds.indptr[i], NNZ);
    T_ASSERT(ds.y[i] == 0 || ds.y[i] == 1);
    pos += ds.y[i];
    double z = 0;
    for (uint64_t k = ds.indptr[i]; k < ds.indptr[i + 1]; k++) {
      T_ASSERT(ds.values[k] == 1.0f);
      z += w[ds.indices[k]];
    }
    score[i] = z;
  }
  T_ASSERT(pos > ROWS / 5 && pos < ROWS * 4 / 5); /* both classes well represented */
  double auc = auc_of(score, ds.y, ROWS);
  fprintf(stderr, "gen sparse: planted-weight AUC %.3f, positives %d/%d\n", auc, pos, ROWS);
  T_ASSERT(auc > 0.75); /* labels follow the planted weights */
  /* skew: the lowest 1%% of feature ids carries far more than 1%% of the non-zeros */
  uint64_t low = 0;
  for (uint64_t k = 0; k < ds.indptr[ds.n]; k++) low += ds.indices[k] < FEAT / 100;
  T_ASSERT(low > ds.indptr[ds.n] / 10);
  dml_dataset_free(&ds);
  /* deterministic for a seed, different for another */
  T_OK(dml_gen_sparse_binary_file(tpath("gen2.svm"), ROWS, FEAT, NNZ, 7, NULL, &err));
  T_OK(dml_gen_sparse_binary_file(tpath("gen3.svm"), ROWS, FEAT, NNZ, 8, NULL, &err));
  unsigned char *a = NULL, *b = NULL, *c = NULL;
  size_t la = 0, lb = 0, lc = 0;
  FILE *f;
  T_ASSERT((f = fopen(tpath("gen.svm"), "rb")) != NULL);
  a = malloc(1 << 22);
  la = fread(a, 1, 1 << 22, f);
  fclose(f);
  T_ASSERT((f = fopen(tpath("gen2.svm"), "rb")) != NULL);
  b = malloc(1 << 22);
  lb = fread(b, 1, 1 << 22, f);
  fclose(f);
  T_ASSERT((f = fopen(tpath("gen3.svm"), "rb")) != NULL);
  c = malloc(1 << 22);
  lc = fread(c, 1, 1 << 22, f);
  fclose(f);
  T_ASSERT(la == lb && memcmp(a, b, la) == 0);
  T_ASSERT(la != lc || memcmp(a, c, la) != 0);
  free(a);
  free(b);
  free(c);
  /* all features in every row (dense path of the column sampler) */
  T_OK(dml_gen_sparse_binary_file(tpath("gen4.svm"), 10, 6, 6, 1, NULL, &err));
  T_OK(dml_read_libsvm(tpath("gen4.svm"), NULL, &ds, &err));
  T_EQ_INT(ds.indptr[10], 60);
  dml_dataset_free(&ds);
  T_EQ_INT(dml_gen_sparse_binary_file(tpath("x.svm"), 10, 5, 6, 1, NULL, &err), DML_EINVAL);
  T_ASSERT(access(tpath("x.svm"), F_OK) != 0);

  /* dense blobs: a nearest-class-mean rule (fit on the data) beats chance by far */
  enum { DR = 600, DD = 8, DK = 4 };
  T_OK(dml_gen_dense_multiclass_file(tpath("blobs.svm"), DR, DD, DK, 3, &err));
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_features = DD;
  T_OK(dml_read_libsvm(tpath("blobs.svm"), &o, &ds, &err));
  T_EQ_INT(ds.n, DR);
  T_EQ_INT(ds.dim, DD);
  T_EQ_INT(ds.num_classes, DK);
  double mean[DK][DD] = {{0}};
  int cnt[DK] = {0};
  for (int i = 0; i < DR; i++) {
    T_EQ_INT(ds.indptr[i + 1] - ds.indptr[i], DD);
    cnt[ds.y[i]]++;
    for (int j = 0; j < DD; j++) mean[ds.y[i]][j] += ds.values[ds.indptr[i] + (uint64_t)j];
  }
  for (int k = 0; k < DK; k++) {
    T_ASSERT(cnt[k] > DR / DK / 2);
    for (int j = 0; j < DD; j++) mean[k][j] /= cnt[k];
  }
  int correct = 0;
  for (int i = 0; i < DR; i++) {
    int best = 0;
    double bd = 1e300;
    for (int k = 0; k < DK; k++) {
      double d = 0;
      for (int j = 0; j < DD; j++) {
        double t = ds.values[ds.indptr[i] + (uint64_t)j] - mean[k][j];
        d += t * t;
      }
      if (d < bd) {
        bd = d;
        best = k;
      }
    }
    correct += best == ds.y[i];
  }
  fprintf(stderr, "gen dense: nearest-mean accuracy %.3f\n", (double)correct / DR);
  T_ASSERT(correct > DR * 0.6);
  dml_dataset_free(&ds);
}

/* ------------------------------------------------------------------------------------------- */

static long g_fail_after = -1;
static void *fail_malloc(size_t n) {
  return g_fail_after-- == 0 ? NULL : malloc(n);
}
static void *fail_realloc(void *p, size_t n) {
  return g_fail_after-- == 0 ? NULL : realloc(p, n);
}
static void *fail_calloc(size_t c, size_t n) {
  return g_fail_after-- == 0 ? NULL : calloc(c, n);
}

static void test_out_of_memory(void) {
  static unsigned char img[16 + 3 * 2 * 2], lab[8 + 3];
  size_t il = make_images(img, 3, 2, 2), ll = make_labels(lab, 3, 2);
  T_OK(dml_replace_allocator(fail_malloc, fail_realloc, fail_calloc, free));
  const char *svm = "1 1:1 2:2\n0 3:1\n";
  const char *csv = "a,b\n1,2\n0,3\n";
  for (int which = 0; which < 3; which++) {
    int ok = 0;
    for (long k = 0; k < 200 && !ok; k++) {
      dml_dataset ds;
      dml_err err;
      g_fail_after = k;
      int rc = which == 0   ? dml_parse_libsvm_mem(svm, strlen(svm), "mem.svm", NULL, &ds, &err)
               : which == 1 ? dml_parse_csv_mem(csv, strlen(csv), "mem.csv", NULL, &ds, &err)
                            : dml_parse_idx_mem(img, il, "i", lab, ll, "l", NULL, &ds, &err);
      if (rc == 0) {
        ok = 1;
        T_EQ_INT(ds.n, which == 2 ? 3 : 2);
        dml_dataset_free(&ds);
      } else {
        T_EQ_INT(rc, DML_ENOMEM);
        T_ASSERT(ds.x == NULL && ds.y == NULL && ds.indptr == NULL);
      }
    }
    T_ASSERT(ok);
  }
  g_fail_after = -1;
  T_OK(dml_replace_allocator(malloc, realloc, calloc, free));
}

static void test_named(void) {
  dml_dataset ds;
  dml_err err;
  setenv("DISTML_DATA_DIR", g_dir, 1);
  int rc = dml_dataset_load("fashion-mnist", "auto", NULL, &ds, &err);
  expect_fail(rc, DML_ENOENT, &err, &ds, "apt-get install dataset-fashion-mnist", g_dir, T_END);
  rc = dml_dataset_load("fashion-mnist:validation", "auto", NULL, &ds, &err);
  expect_fail(rc, DML_EINVAL, &err, &ds, "unknown split 'validation'", T_END);
  rc = dml_dataset_load("fashion-mnist", "csv", NULL, &ds, &err);
  expect_fail(rc, DML_EINVAL, &err, &ds, "fashion-mnist", T_END);
  /* a fake data dir with small files in the Debian layout */
  char d[600];
  snprintf(d, sizeof(d), "%s/fashion-mnist", g_dir);
  T_ASSERT(mkdir(d, 0755) == 0);
  static unsigned char img[16 + 4 * 2 * 2], lab[8 + 4];
  size_t il = make_images(img, 4, 2, 2), ll = make_labels(lab, 4, 3);
  write_bytes(tpath("fashion-mnist/t10k-images-idx3-ubyte"), img, il);
  write_bytes(tpath("fashion-mnist/t10k-labels-idx1-ubyte"), lab, ll);
  T_OK(dml_dataset_load("fashion-mnist:test", NULL, NULL, &ds, &err));
  T_EQ_INT(ds.n, 4);
  T_EQ_INT(ds.num_classes, 10); /* known for the named set, whatever labels appear */
  dml_dataset_free(&ds);
  unsetenv("DISTML_DATA_DIR");
}

static void test_real_fashion_mnist(void) {
  dml_dataset tr, te;
  dml_err err = {0};
  int rc = dml_dataset_load("fashion-mnist", "auto", NULL, &tr, &err);
  if (rc != 0) T_FAIL("%s (the install script installs dataset-fashion-mnist)", err.msg);
  T_OK(dml_dataset_load("fashion-mnist:test", "idx", NULL, &te, &err));
  T_EQ_INT(tr.n, 60000);
  T_EQ_INT(te.n, 10000);
  T_EQ_INT(tr.dim, 784);
  T_EQ_INT(te.dim, 784);
  T_EQ_INT(tr.num_classes, 10);
  T_EQ_INT(te.num_classes, 10);
  int hist[10] = {0};
  float mn = 1, mx = 0;
  for (int i = 0; i < tr.n; i++) hist[tr.y[i]]++;
  for (size_t i = 0; i < (size_t)tr.n * 784; i++) {
    if (tr.x[i] < mn) mn = tr.x[i];
    if (tr.x[i] > mx) mx = tr.x[i];
  }
  for (int k = 0; k < 10; k++) T_EQ_INT(hist[k], 6000); /* the training split is balanced */
  T_ASSERT(mn == 0.0f && mx == 1.0f);
  dml_dataset_free(&tr);
  dml_dataset_free(&te);
}

int main(void) {
  snprintf(g_dir, sizeof(g_dir), "%s/distml-data-test-XXXXXX",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
  T_ASSERT(mkdtemp(g_dir) != NULL);
  test_idx_good();
  test_idx_bad();
  test_libsvm_good();
  test_libsvm_bad();
  test_csv();
  test_shard_and_order();
  test_gather();
  test_write_roundtrip();
  test_generators();
  test_out_of_memory();
  test_named();
  test_real_fashion_mnist();
  char cmd[400];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  printf("data_test: ok\n");
  return 0;
}
