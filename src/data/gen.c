/* LIBSVM output: the writer for a data set in memory and the synthetic generators behind
 * `distml gen` (sparse binary with a planted weight vector, dense multi-class Gaussian blobs). The
 * generators stream rows straight to the file; they never build the data set in memory. */
#include "data/data_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct outbuf {
  FILE *f;
  size_t n;
  int failed;
  char buf[1 << 16];
} outbuf;

static void ob_flush(outbuf *o) {
  if (o->n > 0 && fwrite(o->buf, 1, o->n, o->f) != o->n) o->failed = 1;
  o->n = 0;
}

static void ob_reserve(outbuf *o, size_t k) {
  if (o->n + k > sizeof(o->buf)) ob_flush(o);
}

static void ob_u64(outbuf *o, uint64_t v) {
  char t[24];
  int i = 0;
  do {
    t[i++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  ob_reserve(o, 24);
  while (i > 0) o->buf[o->n++] = t[--i];
}

static void ob_char(outbuf *o, char c) {
  ob_reserve(o, 1);
  o->buf[o->n++] = c;
}

/* Shortest of %.6g..%.9g that reads back as the same float: round trips exactly. */
static void ob_float(outbuf *o, float v) {
  if (v == 1.0f) {
    ob_char(o, '1');
    return;
  }
  char t[32];
  int len = 0;
  for (int prec = 6; prec <= 9; prec++) {
    len = snprintf(t, sizeof(t), "%.*g", prec, (double)v);
    if (strtof(t, NULL) == v) break;
  }
  ob_reserve(o, (size_t)len);
  memcpy(o->buf + o->n, t, (size_t)len);
  o->n += (size_t)len;
}

static int ob_finish(outbuf *o, const char *name, dml_err *err) {
  ob_flush(o);
  if (o->failed || ferror(o->f) || fflush(o->f) != 0)
    return dml_err_set(err, DML_EIO, "%s: write failed", name);
  return 0;
}

static outbuf *ob_new(FILE *f) {
  outbuf *o = dml__malloc(sizeof(*o));
  if (o != NULL) {
    o->f = f;
    o->n = 0;
    o->failed = 0;
  }
  return o;
}

int dml_libsvm_write(FILE *f, const char *name, const dml_dataset *ds, dml_err *err) {
  if (name == NULL) name = "(stream)";
  outbuf *o = ob_new(f);
  if (o == NULL) return dml_err_set(err, DML_ENOMEM, "%s: out of memory", name);
  for (int i = 0; i < ds->n && !o->failed; i++) {
    ob_u64(o, (uint64_t)ds->y[i]);
    if (ds->indptr != NULL) {
      for (uint64_t k = ds->indptr[i]; k < ds->indptr[i + 1]; k++) {
        ob_char(o, ' ');
        ob_u64(o, (uint64_t)ds->indices[k] + 1);
        ob_char(o, ':');
        ob_float(o, ds->values[k]);
      }
    } else {
      const float *row = ds->x + (size_t)i * (size_t)ds->dim;
      for (int j = 0; j < ds->dim; j++) {
        if (row[j] == 0.0f) continue;
        ob_char(o, ' ');
        ob_u64(o, (uint64_t)j + 1);
        ob_char(o, ':');
        ob_float(o, row[j]);
      }
    }
    ob_char(o, '\n');
  }
  int rc = ob_finish(o, name, err);
  dml__free(o);
  return rc;
}

int dml_libsvm_write_file(const char *path, const dml_dataset *ds, dml_err *err) {
  dml_atomic_file af;
  int rc = dml_atomic_open(&af, path, err);
  if (rc != 0) return rc;
  rc = dml_libsvm_write(af.f, path, ds, err);
  if (rc != 0) {
    dml_atomic_abort(&af);
    return rc;
  }
  return dml_atomic_commit(&af, err);
}

/* ------------------------------------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return (x > y) - (x < y);
}

/* nnz distinct sorted column ids in [0, features). Dense rows (2 nnz > features) are drawn
 * uniformly by selection sampling; sparse ones as floor(features * u^5) (density ~ x^(-4/5)), so
 * low ids are frequent and their weights learnable (plain SGD logistic regression on 200k x 1M x 20
 * reaches a held-out AUC of about 0.74; the planted weights themselves give about 0.9). */
static void draw_columns(dml_rng *rng, uint32_t *cols, int nnz, int64_t features) {
  if ((int64_t)nnz * 2 > features) {
    int64_t need = nnz;
    int k = 0;
    for (int64_t j = 0; j < features && need > 0; j++) {
      if ((int64_t)dml_rng_below(rng, (uint64_t)(features - j)) < need) {
        cols[k++] = (uint32_t)j;
        need--;
      }
    }
    return;
  }
  int have = 0;
  while (have < nnz) {
    for (int k = have; k < nnz; k++) {
      double u = (double)(dml_rng_next(rng) >> 11) * 0x1.0p-53;
      int64_t c = (int64_t)((double)features * u * u * u * u * u);
      if (c >= features) c = features - 1;
      cols[k] = (uint32_t)c;
    }
    qsort(cols, (size_t)nnz, sizeof(uint32_t), cmp_u32);
    have = 1;
    for (int k = 1; k < nnz; k++)
      if (cols[k] != cols[have - 1]) cols[have++] = cols[k];
  }
}

int dml_gen_sparse_binary(FILE *f, int64_t rows, int64_t features, int nnz_per_row, uint64_t seed,
                          float *w_out, dml_err *err) {
  if (rows < 1 || features < 1 || features > INT32_MAX || nnz_per_row < 1 || nnz_per_row > features)
    return dml_err_set(err, DML_EINVAL,
                       "gen: need rows >= 1, 1 <= features <= %d and 1 <= nnz per row <= features "
                       "(got %lld, %lld, %d)",
                       INT32_MAX, (long long)rows, (long long)features, nnz_per_row);
  float *w = w_out != NULL ? w_out : dml__malloc((size_t)features * sizeof(float));
  uint32_t *cols = dml__malloc((size_t)nnz_per_row * sizeof(uint32_t));
  outbuf *o = ob_new(f);
  int rc = 0;
  if (w == NULL || cols == NULL || o == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "gen: out of memory for %lld weights", (long long)features);
    goto done;
  }
  dml_rng rng;
  dml_rng_seed3(&rng, seed, 1, 0);
  float scale = 3.0f / sqrtf((float)nnz_per_row);
  for (int64_t j = 0; j < features; j++) w[j] = dml_rng_normal(&rng) * scale;
  dml_rng_seed3(&rng, seed, 2, 0);
  for (int64_t i = 0; i < rows && !o->failed; i++) {
    draw_columns(&rng, cols, nnz_per_row, features);
    double z = 0;
    for (int k = 0; k < nnz_per_row; k++) z += w[cols[k]];
    double p = 1.0 / (1.0 + exp(-z));
    ob_char(o, dml_rng_uniform(&rng) < p ? '1' : '0');
    for (int k = 0; k < nnz_per_row; k++) {
      ob_char(o, ' ');
      ob_u64(o, (uint64_t)cols[k] + 1);
      ob_reserve(o, 2);
      o->buf[o->n++] = ':';
      o->buf[o->n++] = '1';
    }
    ob_char(o, '\n');
  }
  rc = ob_finish(o, "gen", err);
done:
  if (w != w_out) dml__free(w);
  dml__free(cols);
  dml__free(o);
  return rc;
}

int dml_gen_sparse_binary_file(const char *path, int64_t rows, int64_t features, int nnz_per_row,
                               uint64_t seed, float *w_out, dml_err *err) {
  dml_atomic_file af;
  int rc = dml_atomic_open(&af, path, err);
  if (rc != 0) return rc;
  rc = dml_gen_sparse_binary(af.f, rows, features, nnz_per_row, seed, w_out, err);
  if (rc != 0) {
    if (rc == DML_EIO) dml_err_set(err, rc, "%s: write failed", path);
    dml_atomic_abort(&af);
    return rc;
  }
  return dml_atomic_commit(&af, err);
}

int dml_gen_dense_multiclass(FILE *f, int64_t rows, int dim, int classes, uint64_t seed,
                             dml_err *err) {
  if (rows < 1 || dim < 1 || classes < 2 || classes > DML__MAX_CLASS_ID)
    return dml_err_set(err, DML_EINVAL,
                       "gen: need rows >= 1, dim >= 1 and 2 <= classes <= %d (got %lld, %d, %d)",
                       DML__MAX_CLASS_ID, (long long)rows, dim, classes);
  int ovf = 0;
  size_t nc = dml__mul_size((size_t)classes, (size_t)dim, &ovf);
  float *centres = ovf ? NULL : dml__malloc(nc * sizeof(float));
  outbuf *o = ob_new(f);
  int rc = 0;
  if (centres == NULL || o == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "gen: out of memory for %d x %d centres", classes, dim);
    goto done;
  }
  dml_rng rng;
  dml_rng_seed3(&rng, seed, 3, 0);
  for (size_t i = 0; i < nc; i++) centres[i] = 1.5f * dml_rng_normal(&rng);
  dml_rng_seed3(&rng, seed, 4, 0);
  for (int64_t i = 0; i < rows && !o->failed; i++) {
    int k = (int)dml_rng_below(&rng, (uint64_t)classes);
    ob_u64(o, (uint64_t)k);
    const float *c = centres + (size_t)k * (size_t)dim;
    for (int j = 0; j < dim; j++) {
      char t[32];
      int len = snprintf(t, sizeof(t), " %d:%.5g", j + 1, (double)(c[j] + dml_rng_normal(&rng)));
      ob_reserve(o, (size_t)len);
      memcpy(o->buf + o->n, t, (size_t)len);
      o->n += (size_t)len;
    }
    ob_char(o, '\n');
  }
  rc = ob_finish(o, "gen", err);
done:
  dml__free(centres);
  dml__free(o);
  return rc;
}

int dml_gen_dense_multiclass_file(const char *path, int64_t rows, int dim, int classes,
                                  uint64_t seed, dml_err *err) {
  dml_atomic_file af;
  int rc = dml_atomic_open(&af, path, err);
  if (rc != 0) return rc;
  rc = dml_gen_dense_multiclass(af.f, rows, dim, classes, seed, err);
  if (rc != 0) {
    if (rc == DML_EIO) dml_err_set(err, rc, "%s: write failed", path);
    dml_atomic_abort(&af);
    return rc;
  }
  return dml_atomic_commit(&af, err);
}
