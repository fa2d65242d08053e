/* The data set object and what is done with it once loaded: freeing, the load dispatcher (named
 * data sets, IDX pairs, format detection by content and extension), sharding by rank, the seeded
 * epoch order and batch gathering. The formats themselves live in idx.c, libsvm.c and csv.c. */
#include "data/data_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_DATA_DIR "/usr/share/datasets"

void dml_dataset_free(dml_dataset *ds) {
  if (ds == NULL) return;
  dml__free(ds->name);
  dml__free(ds->y);
  dml__free(ds->x);
  dml__free(ds->indptr);
  dml__free(ds->indices);
  dml__free(ds->values);
  memset(ds, 0, sizeof(*ds));
}

uint64_t dml_dataset_nnz(const dml_dataset *ds) {
  if (ds->indptr != NULL) return ds->indptr[ds->n];
  return (uint64_t)ds->n * (uint64_t)ds->dim;
}

void dml_data_opts_init(dml_data_opts *opts) {
  memset(opts, 0, sizeof(*opts));
  opts->csv_label_col = 0;
  opts->csv_header = DML_CSV_HEADER_AUTO;
}

/* ------------------------------------------------------------------------------------------- */

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* "fashion-mnist" and "mnist", optionally ":train" / ":test": resolves the two files. */
static int load_named(const char *spec, size_t base_len, const dml_data_opts *opts, dml_dataset *ds,
                      dml_err *err) {
  char set[32];
  memcpy(set, spec, base_len);
  set[base_len] = '\0';
  const char *split = spec[base_len] == ':' ? spec + base_len + 1 : "train";
  const char *prefix;
  if (strcmp(split, "train") == 0)
    prefix = "train";
  else if (strcmp(split, "test") == 0 || strcmp(split, "t10k") == 0)
    prefix = "t10k";
  else
    return dml_err_set(err, DML_EINVAL, "%s: unknown split '%s' (expected %s:train or %s:test)",
                       spec, split, set, set);
  const char *dir = getenv("DISTML_DATA_DIR");
  if (dir == NULL || dir[0] == '\0') dir = DEFAULT_DATA_DIR;
  static const char *const layouts[] = {"%s/%s/%s-%s-ubyte.gz", "%s/%s/%s-%s-ubyte",
                                        "%s/%.0s%s-%s-ubyte.gz", "%s/%.0s%s-%s-ubyte"};
  char img[4096], lab[4096];
  for (size_t i = 0; i < DML__ARRAY_LEN(layouts); i++) {
    snprintf(img, sizeof(img), layouts[i], dir, set, prefix, "images-idx3");
    snprintf(lab, sizeof(lab), layouts[i], dir, set, prefix, "labels-idx1");
    if (file_exists(img) && file_exists(lab)) {
      dml_data_opts o;
      if (opts != NULL)
        o = *opts;
      else
        dml_data_opts_init(&o);
      if (o.num_classes == 0) o.num_classes = 10;
      return dml_read_idx(img, lab, &o, ds, err);
    }
  }
  snprintf(img, sizeof(img), layouts[0], dir, set, prefix, "images-idx3");
  if (strcmp(set, "fashion-mnist") == 0)
    return dml_err_set(err, DML_ENOENT,
                       "%s: data set not found (%s missing); install it with "
                       "'apt-get install dataset-fashion-mnist' or set DISTML_DATA_DIR",
                       spec, img);
  return dml_err_set(err, DML_ENOENT,
                     "%s: data set not found (%s missing); put the IDX files there or set "
                     "DISTML_DATA_DIR",
                     spec, img);
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Picks "idx", "csv" or "libsvm" for path by its first bytes (decompressed), then its name. */
static int sniff_format(const char *path, const char **fmt, dml_err *err) {
  /* The first 64 KiB are enough to decompress the first 4 KiB of any sane gzip file. */
  enum { PREFIX = 1 << 16 };
  unsigned char *raw = dml__malloc(PREFIX);
  if (raw == NULL) return dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    dml__free(raw);
    return dml_err_set(err, errno == ENOENT ? DML_ENOENT : DML_EIO, "%s: cannot open: %s", path,
                       strerror(errno));
  }
  size_t raw_len = fread(raw, 1, PREFIX, f);
  fclose(f);
  unsigned char head[4096];
  size_t n = 0;
  dml__bytesrc s;
  dml__bytesrc_init(&s, raw, raw_len, path);
  dml_err ignored;
  /* A prefix of a gzip stream reads as truncated: keep what was decompressed before that. */
  if (dml__bytesrc_read(&s, head, sizeof(head) - 1, &n, &ignored) != 0 && !s.gz) n = 0;
  dml__bytesrc_close(&s);
  dml__free(raw);
  head[n] = '\0';
  if (n >= 4 && head[0] == 0 && head[1] == 0 && head[2] >= 0x08 && head[2] <= 0x0E &&
      head[3] >= 1 && head[3] <= 4) {
    *fmt = "idx";
    return 0;
  }
  /* text formats have no NUL byte: binary data that is not IDX gets its own error, not a LIBSVM
   * parse of garbage */
  if (memchr(head, 0, n) != NULL)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: binary data that is not an IDX file (it starts %02x %02x %02x %02x; an "
                       "IDX file starts 00 00 08..0e 01..04)",
                       path, n > 0 ? head[0] : 0, n > 1 ? head[1] : 0, n > 2 ? head[2] : 0,
                       n > 3 ? head[3] : 0);
  char base[4096];
  snprintf(base, sizeof(base), "%s", path);
  if (ends_with(base, ".gz")) base[strlen(base) - 3] = '\0';
  if (ends_with(base, ".csv")) {
    *fmt = "csv";
    return 0;
  }
  if (ends_with(base, ".svm") || ends_with(base, ".libsvm") || ends_with(base, ".svmlight")) {
    *fmt = "libsvm";
    return 0;
  }
  /* First line that is not blank or a comment: "a:b" tokens mean LIBSVM, commas mean CSV. */
  const char *p = (const char *)head;
  *fmt = "libsvm";
  while (*p != '\0') {
    const char *le = strchr(p, '\n');
    size_t l = le ? (size_t)(le - p) : strlen(p);
    const char *q = p;
    while (q < p + l && (*q == ' ' || *q == '\t' || *q == '\r')) q++;
    if (q < p + l && *q != '#') {
      if (memchr(q, ':', (size_t)(p + l - q)) != NULL)
        *fmt = "libsvm";
      else if (memchr(q, ',', (size_t)(p + l - q)) != NULL)
        *fmt = "csv";
      return 0;
    }
    if (le == NULL) break;
    p = le + 1;
  }
  return 0;
}

int dml_dataset_load(const char *spec, const char *format, const dml_data_opts *opts,
                     dml_dataset *ds, dml_err *err) {
  memset(ds, 0, sizeof(*ds));
  if (spec == NULL || spec[0] == '\0') return dml_err_set(err, DML_EINVAL, "no data set given");
  if (format == NULL || format[0] == '\0') format = "auto";
  if (strcmp(format, "auto") != 0 && strcmp(format, "idx") != 0 && strcmp(format, "libsvm") != 0 &&
      strcmp(format, "csv") != 0)
    return dml_err_set(err, DML_EINVAL,
                       "unknown data format '%s' (expected auto, idx, libsvm or csv)", format);
  int is_auto = strcmp(format, "auto") == 0;
  static const char *const named[] = {"fashion-mnist", "mnist"};
  for (size_t i = 0; i < DML__ARRAY_LEN(named); i++) {
    size_t l = strlen(named[i]);
    if (strncmp(spec, named[i], l) == 0 && (spec[l] == '\0' || spec[l] == ':')) {
      if (!is_auto && strcmp(format, "idx") != 0)
        return dml_err_set(err, DML_EINVAL, "%s is an IDX data set, not %s", spec, format);
      return load_named(spec, l, opts, ds, err);
    }
  }
  const char *comma = strchr(spec, ',');
  if (comma != NULL && (is_auto || strcmp(format, "idx") == 0)) {
    size_t l = (size_t)(comma - spec);
    char *images = dml__malloc(l + 1);
    if (images == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory");
    memcpy(images, spec, l);
    images[l] = '\0';
    int rc = dml_read_idx(images, comma + 1, opts, ds, err);
    dml__free(images);
    return rc;
  }
  struct stat st;
  if (stat(spec, &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return dml_err_set(err, DML_ENOENT, "%s: no such file", spec);
    return dml_err_set(err, DML_EIO, "%s: cannot access: %s", spec, strerror(errno));
  }
  if (S_ISDIR(st.st_mode))
    return dml_err_set(err, DML_EISDIR, "%s: is a directory, not a data file", spec);
  if (is_auto) {
    int rc = sniff_format(spec, &format, err);
    if (rc != 0) return rc;
  }
  if (strcmp(format, "idx") == 0) return dml_read_idx(spec, NULL, opts, ds, err);
  if (strcmp(format, "csv") == 0) return dml_read_csv(spec, opts, ds, err);
  return dml_read_libsvm(spec, opts, ds, err);
}

/* ------------------------------------------------------------------------------------------- */

int dml_shard_range(int64_t n, int rank, int world, int64_t *begin, int64_t *end) {
  if (n < 0 || world < 1 || rank < 0 || rank >= world) return DML_EINVAL;
  int64_t q = n / world, r = n % world;
  *begin = (int64_t)rank * q + DML__MIN((int64_t)rank, r);
  *end = *begin + q + (rank < r ? 1 : 0);
  return 0;
}

void dml_epoch_order(uint32_t *idx, size_t n, uint64_t seed, uint64_t epoch) {
  for (size_t i = 0; i < n; i++) idx[i] = (uint32_t)i;
  dml_rng rng;
  dml_rng_seed3(&rng, seed, epoch, 0x6f72646572ull /* "order": a stream of its own */);
  dml_rng_shuffle_u32(&rng, idx, n);
}

void dml_batch_buf_free(dml_batch_buf *buf) {
  if (buf == NULL) return;
  dml__free(buf->x);
  dml__free(buf->indptr);
  dml__free(buf->indices);
  dml__free(buf->values);
  dml__free(buf->y);
  memset(buf, 0, sizeof(*buf));
}

static int grow_buf(dml_batch_buf *buf, size_t nrows, size_t nx, size_t nnz, int sparse) {
  int rc;
  DML__GROW(rc, buf->y, &buf->y_cap, nrows);
  if (rc != 0) return rc;
  if (!sparse) {
    DML__GROW(rc, buf->x, &buf->x_cap, nx);
    return rc;
  }
  DML__GROW(rc, buf->indptr, &buf->indptr_cap, nrows + 1);
  if (rc != 0 || nnz <= buf->nnz_cap) return rc;
  size_t c1 = buf->nnz_cap, c2 = buf->nnz_cap;
  DML__GROW(rc, buf->indices, &c1, nnz);
  if (rc != 0) return rc;
  DML__GROW(rc, buf->values, &c2, nnz);
  if (rc != 0) return rc;
  buf->nnz_cap = DML__MIN(c1, c2);
  return 0;
}

int dml_dataset_gather(const dml_dataset *ds, const uint32_t *rows, int count, dml_batch_buf *buf,
                       dml_batch *out, dml_err *err) {
  memset(out, 0, sizeof(*out));
  if (count < 0) return dml_err_set(err, DML_EINVAL, "gather: negative row count %d", count);
  int sparse = ds->indptr != NULL;
  uint64_t nnz = 0;
  for (int i = 0; i < count; i++) {
    if (rows[i] >= (uint32_t)ds->n)
      return dml_err_set(err, DML_ERANGE, "gather: row %u out of range (%s has %d rows)", rows[i],
                         ds->name ? ds->name : "data set", ds->n);
    if (sparse) nnz += ds->indptr[rows[i] + 1] - ds->indptr[rows[i]];
  }
  int ovf = 0;
  size_t nx = sparse ? 0 : dml__mul_size((size_t)count, (size_t)ds->dim, &ovf);
  if (ovf || grow_buf(buf, (size_t)count, nx, (size_t)nnz, sparse) != 0)
    return dml_err_set(err, DML_ENOMEM, "gather: out of memory for a batch of %d rows", count);
  for (int i = 0; i < count; i++) buf->y[i] = ds->y[rows[i]];
  if (sparse) {
    uint64_t at = 0;
    buf->indptr[0] = 0;
    for (int i = 0; i < count; i++) {
      uint64_t b = ds->indptr[rows[i]], e = ds->indptr[rows[i] + 1];
      if (e == b) { /* an empty row: the arrays may be NULL when the whole set has no entries */
        buf->indptr[i + 1] = at;
        continue;
      }
      memcpy(buf->indices + at, ds->indices + b, (size_t)(e - b) * sizeof(uint32_t));
      memcpy(buf->values + at, ds->values + b, (size_t)(e - b) * sizeof(float));
      at += e - b;
      buf->indptr[i + 1] = at;
    }
    out->indptr = buf->indptr;
    out->indices = buf->indices;
    out->values = buf->values;
  } else {
    size_t d = (size_t)ds->dim;
    for (int i = 0; i < count; i++)
      memcpy(buf->x + (size_t)i * d, ds->x + (size_t)rows[i] * d, d * sizeof(float));
    out->x = buf->x;
  }
  out->n = count;
  out->dim = ds->dim;
  out->y = buf->y;
  return 0;
}

int dml_dataset_slice(const dml_dataset *ds, int begin, int count, dml_batch_buf *buf,
                      dml_batch *out, dml_err *err) {
  memset(out, 0, sizeof(*out));
  if (begin < 0 || count < 0 || begin > ds->n || count > ds->n - begin)
    return dml_err_set(err, DML_ERANGE, "slice [%d, %d+%d) out of range (%s has %d rows)", begin,
                       begin, count, ds->name ? ds->name : "data set", ds->n);
  out->n = count;
  out->dim = ds->dim;
  out->y = ds->y + begin;
  if (ds->indptr == NULL) {
    out->x = ds->x + (size_t)begin * (size_t)ds->dim;
    return 0;
  }
  int rc;
  DML__GROW(rc, buf->indptr, &buf->indptr_cap, (size_t)count + 1);
  if (rc != 0) return dml_err_set(err, DML_ENOMEM, "slice: out of memory");
  uint64_t base = ds->indptr[begin];
  for (int i = 0; i <= count; i++) buf->indptr[i] = ds->indptr[begin + i] - base;
  out->indptr = buf->indptr;
  out->indices = ds->indices ? ds->indices + base : NULL; /* NULL when the set has no entries */
  out->values = ds->values ? ds->values + base : NULL;
  return 0;
}

int dml_dataset_keep_range(dml_dataset *ds, int begin, int end, dml_err *err) {
  if (begin < 0 || end < begin || end > ds->n)
    return dml_err_set(err, DML_ERANGE, "rows [%d, %d) out of range (%s has %d rows)", begin, end,
                       ds->name ? ds->name : "data set", ds->n);
  int n = end - begin;
  int32_t *y = dml__malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
  float *x = NULL, *values = NULL;
  uint64_t *indptr = NULL;
  uint32_t *indices = NULL;
  int ok = y != NULL;
  if (ok && ds->x != NULL) {
    x = dml__malloc(sizeof(float) * (size_t)(n ? n : 1) * (size_t)ds->dim);
    ok = x != NULL;
    if (ok)
      memcpy(x, ds->x + (size_t)begin * (size_t)ds->dim,
             sizeof(float) * (size_t)n * (size_t)ds->dim);
  } else if (ok) {
    uint64_t base = ds->indptr[begin], nnz = ds->indptr[end] - base;
    indptr = dml__malloc(sizeof(uint64_t) * ((size_t)n + 1));
    indices = dml__malloc(sizeof(uint32_t) * (size_t)(nnz ? nnz : 1));
    values = dml__malloc(sizeof(float) * (size_t)(nnz ? nnz : 1));
    ok = indptr != NULL && indices != NULL && values != NULL;
    if (ok) {
      for (int i = 0; i <= n; i++) indptr[i] = ds->indptr[begin + i] - base;
      if (nnz > 0) {
        memcpy(indices, ds->indices + base, sizeof(uint32_t) * nnz);
        memcpy(values, ds->values + base, sizeof(float) * nnz);
      }
    }
  }
  if (!ok) {
    dml__free(y);
    dml__free(x);
    dml__free(indptr);
    dml__free(indices);
    dml__free(values);
    return dml_err_set(err, DML_ENOMEM, "%s: out of memory keeping rows [%d, %d)", ds->name, begin,
                       end);
  }
  memcpy(y, ds->y + begin, sizeof(int32_t) * (size_t)n);
  dml__free(ds->y);
  dml__free(ds->x);
  dml__free(ds->indptr);
  dml__free(ds->indices);
  dml__free(ds->values);
  ds->y = y;
  ds->x = x;
  ds->indptr = indptr;
  ds->indices = indices;
  ds->values = values;
  ds->n = n;
  return 0;
}
