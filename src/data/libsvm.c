/* LIBSVM / SVMlight text reader into CSR: one row per line, "label idx:val idx:val ... [# comment]".
 * A hand-written tokenizer over the whole buffer (no fixed line length, no fscanf); every token is
 * checked and errors give file:line:column. It does not read SVMlight's qid: ranking groups. */
#include "data/data_internal.h"

#include <limits.h>
#include <string.h>

static int is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

typedef struct csr_builder {
  uint64_t *indptr;
  size_t rows_cap;
  uint32_t *indices;
  float *values;
  size_t nnz, nnz_cap;
} csr_builder;

static int csr_reserve(csr_builder *b, size_t need) {
  if (need <= b->nnz_cap) return 0;
  size_t cap = b->nnz_cap, cap2 = b->nnz_cap;
  void *p = b->indices, *q = b->values;
  int rc = dml__grow(&p, &cap, need, sizeof(uint32_t));
  if (rc != 0) return rc;
  b->indices = p;
  rc = dml__grow(&q, &cap2, need, sizeof(float));
  if (rc != 0) return rc;
  b->values = q;
  b->nnz_cap = cap2 < cap ? cap2 : cap;
  return 0;
}

int dml_parse_libsvm_mem(const char *text, size_t len, const char *name, const dml_data_opts *opts,
                         dml_dataset *ds, dml_err *err) {
  memset(ds, 0, sizeof(*ds));
  if (name == NULL) name = "(memory)";
  int64_t declared = opts != NULL ? opts->num_features : 0;
  if (declared < 0 || declared > INT32_MAX)
    return dml_err_set(err, DML_EINVAL, "%s: declared feature count %lld out of range 0..%d", name,
                       (long long)declared, INT32_MAX);
  dml__labels lab = {0};
  csr_builder b = {0};
  int rc = 0;
  char tb[48];
  size_t nrows = 0;
  uint64_t maxidx = 0, dropped = 0;
  long line = 0;
  const char *p = text, *end = text + len;
  if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; /* UTF-8 byte order mark */
  int grc;
  DML__GROW(grc, b.indptr, &b.rows_cap, 1024);
  if (grc != 0 || csr_reserve(&b, DML__MAX(len / 8, (size_t)1024)) != 0) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  b.indptr[0] = 0;
  while (p < end) {
    line++;
    const char *ls = p;
    const char *le = memchr(p, '\n', (size_t)(end - p));
    if (le == NULL) le = end;
    p = le < end ? le + 1 : end;
    const char *q = ls;
    while (q < le && is_blank(*q)) q++;
    if (q == le || *q == '#') continue;
    const char *ts = q;
    while (q < le && !is_blank(*q)) q++;
    rc = dml__labels_add(&lab, ts, (size_t)(q - ts), name, line, (long)(ts - ls + 1), opts, err);
    if (rc != 0) goto fail;
    uint64_t prev = 0;
    for (;;) {
      while (q < le && is_blank(*q)) q++;
      if (q == le || *q == '#') break;
      ts = q;
      while (q < le && !is_blank(*q)) q++;
      long col = (long)(ts - ls + 1);
      size_t tl = (size_t)(q - ts);
      const char *colon = memchr(ts, ':', tl);
      if (colon == NULL) {
        rc = dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: expected INDEX:VALUE, got '%s'", name, line,
                         col, dml__tokstr(tb, sizeof(tb), ts, tl));
        goto fail;
      }
      if (colon - ts == 3 && memcmp(ts, "qid", 3) == 0) {
        rc = dml_err_set(err, DML_EUNSUPPORTED,
                         "%s:%ld:%ld: qid: tokens (SVMlight ranking groups) are not supported",
                         name, line, col);
        goto fail;
      }
      uint64_t idx = 0;
      const char *d = ts;
      for (; d < colon; d++) {
        if (*d < '0' || *d > '9' || idx > ((uint64_t)1 << 40)) break;
        idx = idx * 10 + (uint64_t)(*d - '0');
      }
      if (d != colon || colon == ts) {
        rc = dml_err_set(err, DML_EFORMAT,
                         "%s:%ld:%ld: feature index '%s' is not a positive integer", name, line,
                         col, dml__tokstr(tb, sizeof(tb), ts, (size_t)(colon - ts)));
        goto fail;
      }
      if (idx == 0) {
        rc = dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: feature index 0 (indices are 1-based)",
                         name, line, col);
        goto fail;
      }
      if (idx <= prev) {
        rc = dml_err_set(
            err, DML_EFORMAT,
            "%s:%ld:%ld: feature index %llu %s the previous index %llu (indices must be "
            "strictly increasing)",
            name, line, col, (unsigned long long)idx, idx == prev ? "repeats" : "is less than",
            (unsigned long long)prev);
        goto fail;
      }
      int drop = 0;
      if (declared > 0 && idx > (uint64_t)declared) {
        if (opts != NULL && opts->drop_extra_features) {
          drop = 1;
        } else {
          rc = dml_err_set(err, DML_ERANGE,
                           "%s:%ld:%ld: feature index %llu beyond the declared feature count %lld",
                           name, line, col, (unsigned long long)idx, (long long)declared);
          goto fail;
        }
      }
      if (idx > INT32_MAX && !drop) {
        rc = dml_err_set(err, DML_EOVERFLOW, "%s:%ld:%ld: feature index %llu is larger than %d",
                         name, line, col, (unsigned long long)idx, INT32_MAX);
        goto fail;
      }
      float v;
      int prc = dml__parse_float(colon + 1, (size_t)(q - colon - 1), &v);
      if (prc != 0) {
        static const char *const why[] = {"", "is not a number", "is not finite (NaN/Inf)",
                                          "is out of float range"};
        rc = dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: value '%s' of feature %llu %s", name, line,
                         (long)(colon + 1 - ls + 1),
                         dml__tokstr(tb, sizeof(tb), colon + 1, (size_t)(q - colon - 1)),
                         (unsigned long long)idx, why[prc]);
        goto fail;
      }
      prev = idx;
      if (drop) {
        dropped++;
        continue;
      }
      if (b.nnz == b.nnz_cap && csr_reserve(&b, b.nnz + 1) != 0) {
        rc = dml_err_set(err, DML_ENOMEM, "%s:%ld: out of memory", name, line);
        goto fail;
      }
      b.indices[b.nnz] = (uint32_t)(idx - 1);
      b.values[b.nnz] = v;
      b.nnz++;
    }
    if (prev > maxidx) maxidx = prev;
    if (nrows + 1 > INT32_MAX - 1) {
      rc = dml_err_set(err, DML_EOVERFLOW, "%s:%ld: more than %d rows", name, line, INT32_MAX - 1);
      goto fail;
    }
    DML__GROW(grc, b.indptr, &b.rows_cap, nrows + 2);
    if (grc != 0) {
      rc = dml_err_set(err, DML_ENOMEM, "%s:%ld: out of memory", name, line);
      goto fail;
    }
    b.indptr[++nrows] = b.nnz;
  }
  if (nrows == 0) {
    rc = dml_err_set(err, DML_EFORMAT, "%s: empty file: no data rows%s", name,
                     len > 0 ? " (only blank or comment lines)" : "");
    goto fail;
  }
  ds->n = (int)nrows;
  ds->dim = declared > 0 ? (int)declared : (int)DML__MAX(maxidx, (uint64_t)1);
  ds->indptr = b.indptr;
  ds->indices = b.indices;
  ds->values = b.values;
  b.indptr = NULL;
  b.indices = NULL;
  b.values = NULL;
  ds->name = dml__strdup(name);
  if (ds->name == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  dml__labels_finish(&lab, name, opts, ds, err);
  if (dropped > 0)
    dml_log(DML_LOG_INFO, "%s: dropped %llu entries with a feature index beyond %lld", name,
            (unsigned long long)dropped, (long long)declared);
  return 0;
fail:
  dml__labels_free(&lab);
  dml__free(b.indptr);
  dml__free(b.indices);
  dml__free(b.values);
  dml_dataset_free(ds);
  return rc;
}

int dml_read_libsvm(const char *path, const dml_data_opts *opts, dml_dataset *ds, dml_err *err) {
  return dml__read_text(path, dml_parse_libsvm_mem, opts, ds, err);
}
