/* CSV reader into a dense data set: comma-separated numbers, one row per line, one column the
 * label, an optional header row (auto-detected or forced). Every row must have the same number of
 * fields; errors give file:line:column and the field number. Quoted fields may hold only a number or
 * a header name (no embedded commas or newlines in data rows). */
#include "data/data_internal.h"

#include <limits.h>
#include <string.h>

static int is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Next field of [*q, le): trims blanks and one pair of surrounding double quotes. Returns the
 * field's start and length, and moves *q past the comma (or to le). */
static const char *next_field(const char **q, const char *le, size_t *flen) {
  const char *s = *q;
  int inq = 0;
  const char *e = s;
  while (e < le && (inq || *e != ',')) {
    if (*e == '"') inq = !inq;
    e++;
  }
  *q = e < le ? e + 1 : le;
  while (s < e && is_blank(*s)) s++;
  while (e > s && is_blank(e[-1])) e--;
  if (e - s >= 2 && *s == '"' && e[-1] == '"') {
    s++;
    e--;
  }
  *flen = (size_t)(e - s);
  return s;
}

static long count_fields(const char *q, const char *le) {
  long n = 1;
  int inq = 0;
  for (; q < le; q++) {
    if (*q == '"')
      inq = !inq;
    else if (*q == ',' && !inq)
      n++;
  }
  return n;
}

int dml_parse_csv_mem(const char *text, size_t len, const char *name, const dml_data_opts *opts,
                      dml_dataset *ds, dml_err *err) {
  memset(ds, 0, sizeof(*ds));
  if (name == NULL) name = "(memory)";
  dml_data_opts def;
  if (opts == NULL) {
    dml_data_opts_init(&def);
    opts = &def;
  }
  dml__labels lab = {0};
  float *x = NULL;
  size_t xcap = 0, nx = 0, nrows = 0;
  long ncols = -1, ncols_line = 0, lc = 0, line = 0;
  int header_seen = 0, rc = 0;
  char tb[48];
  const char *p = text, *end = text + len;
  if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3; /* UTF-8 byte order mark */
  while (p < end) {
    line++;
    const char *ls = p;
    const char *le = memchr(p, '\n', (size_t)(end - p));
    if (le == NULL) le = end;
    p = le < end ? le + 1 : end;
    const char *q = ls;
    while (q < le && is_blank(*q)) q++;
    if (q == le) continue;
    long nf = count_fields(ls, le);
    if (ncols < 0) {
      ncols = nf;
      ncols_line = line;
      if (ncols < 2) {
        rc =
            dml_err_set(err, DML_EFORMAT,
                        "%s:%ld: only one column: a CSV data set needs a label column and at least "
                        "one feature column (comma-separated)",
                        name, line);
        goto fail;
      }
      if (ncols > INT32_MAX) {
        rc = dml_err_set(err, DML_EOVERFLOW, "%s:%ld: too many columns", name, line);
        goto fail;
      }
      lc = opts->csv_label_col < 0 ? ncols + opts->csv_label_col : opts->csv_label_col;
      if (lc < 0 || lc >= ncols) {
        rc = dml_err_set(err, DML_EINVAL, "%s:%ld: label column %d out of range for %ld columns",
                         name, line, opts->csv_label_col, ncols);
        goto fail;
      }
      int is_header = opts->csv_header == DML_CSV_HEADER_YES;
      if (opts->csv_header == DML_CSV_HEADER_AUTO) {
        const char *f = ls;
        for (long i = 0; i < nf && !is_header; i++) {
          size_t fl;
          const char *fs = next_field(&f, le, &fl);
          float v;
          if (dml__parse_float(fs, fl, &v) == 1 && fl > 0) is_header = 1;
        }
      }
      if (is_header) {
        header_seen = 1;
        continue;
      }
    } else if (nf != ncols) {
      rc = dml_err_set(err, DML_EFORMAT,
                       "%s:%ld: ragged row: %ld fields, expected %ld (as on %s line %ld)", name,
                       line, nf, ncols, header_seen ? "the header" : "the first row", ncols_line);
      goto fail;
    }
    size_t need = nx + (size_t)ncols - 1;
    if (need > xcap) {
      int grc;
      DML__GROW(grc, x, &xcap, need);
      if (grc != 0) {
        rc = dml_err_set(err, DML_ENOMEM, "%s:%ld: out of memory", name, line);
        goto fail;
      }
    }
    q = ls;
    for (long i = 0; i < ncols; i++) {
      size_t fl;
      const char *fs = next_field(&q, le, &fl);
      long col = (long)(fs - ls + 1);
      if (i == lc) {
        if (fl == 0) {
          rc = dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: field %ld (the label) is empty", name,
                           line, col, i + 1);
          goto fail;
        }
        rc = dml__labels_add(&lab, fs, fl, name, line, col, opts, err);
        if (rc != 0) goto fail;
        continue;
      }
      float v;
      int prc = dml__parse_float(fs, fl, &v);
      if (prc != 0) {
        static const char *const why[] = {"", "is not a number", "is not finite (NaN/Inf)",
                                          "is out of float range"};
        if (fl == 0)
          rc = dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: field %ld is empty", name, line, col,
                           i + 1);
        else
          rc = dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: field %ld '%s' %s", name, line, col,
                           i + 1, dml__tokstr(tb, sizeof(tb), fs, fl), why[prc]);
        goto fail;
      }
      x[nx++] = v;
    }
    nrows++;
    if (nrows >= INT32_MAX) {
      rc = dml_err_set(err, DML_EOVERFLOW, "%s:%ld: more than %d rows", name, line, INT32_MAX - 1);
      goto fail;
    }
  }
  if (nrows == 0) {
    rc = dml_err_set(err, DML_EFORMAT, "%s: empty file: no data rows%s", name,
                     header_seen ? " after the header" : "");
    goto fail;
  }
  ds->n = (int)nrows;
  ds->dim = (int)(ncols - 1);
  ds->x = x;
  x = NULL;
  ds->name = dml__strdup(name);
  if (ds->name == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", name);
    goto fail;
  }
  dml__labels_finish(&lab, name, opts, ds, err);
  return 0;
fail:
  dml__free(x);
  dml__labels_free(&lab);
  dml_dataset_free(ds);
  return rc;
}

int dml_read_csv(const char *path, const dml_data_opts *opts, dml_dataset *ds, dml_err *err) {
  return dml__read_text(path, dml_parse_csv_mem, opts, ds, err);
}
