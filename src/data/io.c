/* Input plumbing for the data readers: whole-file reads that tell a missing file from a directory,
 * gzip detected by magic bytes and decompressed either whole or as a bounded stream, and the label
 * and number rules the text formats share. It knows nothing of any one file format. */
#include "data/data_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int dml__is_gzip(const unsigned char *p, size_t n) {
  return n >= 2 && p[0] == 0x1f && p[1] == 0x8b;
}

int dml__grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t ncap = *cap ? *cap : 16;
  while (ncap < need) {
    if (ncap > SIZE_MAX / 2) return DML_EOVERFLOW;
    ncap *= 2;
  }
  int ovf = 0;
  size_t bytes = dml__mul_size(ncap, elem, &ovf);
  if (ovf) return DML_EOVERFLOW;
  void *q = dml__realloc(*p, bytes);
  if (q == NULL) return DML_ENOMEM;
  *p = q;
  *cap = ncap;
  return 0;
}

const char *dml__tokstr(char *buf, size_t bufsz, const char *tok, size_t len) {
  size_t max = bufsz - 4, i;
  for (i = 0; i < len && i < max; i++) {
    unsigned char c = (unsigned char)tok[i];
    buf[i] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
  }
  if (i < len) {
    memcpy(buf + i, "...", 3);
    i += 3;
  }
  buf[i] = '\0';
  return buf;
}

int dml__parse_float(const char *tok, size_t len, float *out) {
  char buf[128];
  if (len == 0 || len >= sizeof(buf)) return 1;
  memcpy(buf, tok, len);
  buf[len] = '\0';
  /* strtod would skip leading blanks; the tokenizers never hand one over, but be strict. */
  if (buf[0] == ' ' || buf[0] == '\t') return 1;
  char *end = NULL;
  errno = 0;
  float v = strtof(buf, &end); /* correctly rounded to float: exact round trips */
  if (end != buf + len) return 1;
  if (isnan(v)) return 2;
  if (isinf(v)) return errno == ERANGE ? 3 : 2; /* overflow vs a literal inf */
  *out = v;
  return 0;
}

int dml__read_whole_file(const char *path, unsigned char **out, size_t *len, dml_err *err) {
  *out = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT || e == ENOTDIR) return dml_err_set(err, DML_ENOENT, "%s: no such file", path);
    return dml_err_set(err, DML_EIO, "%s: cannot open: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return dml_err_set(err, DML_EIO, "%s: cannot stat: %s", path, strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return dml_err_set(err, DML_EISDIR, "%s: is a directory, not a data file", path);
  }
  size_t cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : 65536;
  unsigned char *buf = dml__malloc(cap);
  if (buf == NULL) {
    close(fd);
    return dml_err_set(err, DML_ENOMEM, "%s: out of memory reading %zu bytes", path, cap);
  }
  size_t n = 0;
  for (;;) {
    if (n + 1 >= cap) {
      void *p = buf;
      if (dml__grow(&p, &cap, cap + 1, 1) != 0) {
        dml__free(buf);
        close(fd);
        return dml_err_set(err, DML_ENOMEM, "%s: out of memory after %zu bytes", path, n);
      }
      buf = p;
    }
    ssize_t r = read(fd, buf + n, cap - 1 - n);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      dml__free(buf);
      close(fd);
      if (e == EISDIR)
        return dml_err_set(err, DML_EISDIR, "%s: is a directory, not a data file", path);
      return dml_err_set(err, DML_EIO, "%s: read failed at byte offset %zu: %s", path, n,
                         strerror(e));
    }
    if (r == 0) break;
    n += (size_t)r;
  }
  close(fd);
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

static int gz_error(dml_err *err, const char *name, int zrc, const z_stream *zs, size_t off,
                    size_t in_len) {
  if (zrc == Z_MEM_ERROR) return dml_err_set(err, DML_ENOMEM, "%s: out of memory in zlib", name);
  if (zrc == Z_BUF_ERROR || zrc == Z_OK)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: truncated gzip stream: the file ends at byte offset %zu before the end "
                       "of the compressed data",
                       name, in_len);
  /* zlib has consumed the offending byte: report the last one it took. */
  return dml_err_set(err, DML_EFORMAT, "%s: corrupt gzip data near compressed byte offset %zu (%s)",
                     name, off > 0 ? off - 1 : 0, zs->msg ? zs->msg : "zlib error");
}

int dml__gunzip_all(const unsigned char *in, size_t in_len, const char *name, size_t max_out,
                    unsigned char **out, size_t *out_len, dml_err *err) {
  *out = NULL;
  *out_len = 0;
  dml__bytesrc s;
  dml__bytesrc_init(&s, in, in_len, name);
  size_t cap = in_len < ((size_t)1 << 40) / 4 ? in_len * 4 + 1024 : in_len;
  if (cap > max_out + 1) cap = max_out + 1;
  unsigned char *buf = dml__malloc(cap);
  if (buf == NULL) {
    dml__bytesrc_close(&s);
    return dml_err_set(err, DML_ENOMEM, "%s: out of memory decompressing", name);
  }
  size_t n = 0;
  int rc = 0;
  for (;;) {
    if (n + 1 >= cap) {
      if (n >= max_out) {
        rc = dml_err_set(err, DML_EOVERFLOW, "%s: decompressed data larger than %zu bytes", name,
                         max_out);
        break;
      }
      void *p = buf;
      if (dml__grow(&p, &cap, cap + 1, 1) != 0) {
        rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory decompressing", name);
        break;
      }
      buf = p;
    }
    size_t got = 0, want = cap - 1 - n;
    rc = dml__bytesrc_read(&s, buf + n, want, &got, err);
    if (rc != 0) break;
    n += got;
    if (got < want) break;
  }
  dml__bytesrc_close(&s);
  if (rc != 0) {
    dml__free(buf);
    return rc;
  }
  buf[n] = '\0';
  *out = buf;
  *out_len = n;
  return 0;
}

int dml__read_maybe_gzip(const char *path, unsigned char **out, size_t *len, dml_err *err) {
  unsigned char *raw;
  size_t raw_len;
  int rc = dml__read_whole_file(path, &raw, &raw_len, err);
  if (rc != 0) return rc;
  if (!dml__is_gzip(raw, raw_len)) {
    *out = raw;
    *len = raw_len;
    return 0;
  }
  rc = dml__gunzip_all(raw, raw_len, path, (size_t)1 << 40, out, len, err);
  dml__free(raw);
  return rc;
}

void dml__bytesrc_init(dml__bytesrc *s, const void *data, size_t len, const char *name) {
  memset(s, 0, sizeof(*s));
  s->name = name;
  s->in = data;
  s->in_len = len;
  s->gz = dml__is_gzip(data, len);
}

int dml__bytesrc_read(dml__bytesrc *s, void *dst, size_t n, size_t *got, dml_err *err) {
  *got = 0;
  if (!s->gz) {
    size_t k = DML__MIN(n, s->in_len - s->pos);
    memcpy(dst, s->in + s->pos, k);
    s->pos += k;
    *got = k;
    return 0;
  }
  if (!s->zinit) {
    /* 16 + MAX_WBITS: gzip wrapper only, so CRC and length are checked at the end. */
    if (inflateInit2(&s->zs, 16 + MAX_WBITS) != Z_OK)
      return dml_err_set(err, DML_ENOMEM, "%s: cannot initialise zlib", s->name);
    s->zinit = 1;
    s->zs.next_in = (Bytef *)(uintptr_t)s->in;
    s->zs.avail_in = 0;
  }
  unsigned char *d = dst;
  while (*got < n && !s->zend) {
    size_t consumed = (size_t)(s->zs.next_in - s->in);
    if (s->zs.avail_in == 0 && consumed < s->in_len)
      s->zs.avail_in = (uInt)DML__MIN(s->in_len - consumed, (size_t)1 << 30);
    size_t want = DML__MIN(n - *got, (size_t)1 << 30);
    s->zs.next_out = d + *got;
    s->zs.avail_out = (uInt)want;
    int zrc = inflate(&s->zs, Z_NO_FLUSH);
    size_t produced = want - s->zs.avail_out;
    *got += produced;
    s->pos += produced;
    consumed = (size_t)(s->zs.next_in - s->in);
    if (zrc == Z_STREAM_END) {
      /* Another gzip member may follow (concatenated .gz files); anything else is garbage. */
      size_t left = s->in_len - consumed;
      if (left == 0) {
        s->zend = 1;
        break;
      }
      if (!dml__is_gzip(s->in + consumed, left))
        return dml_err_set(
            err, DML_EFORMAT,
            "%s: unexpected bytes after the end of the gzip stream at byte offset %zu", s->name,
            consumed);
      inflateReset(&s->zs);
      continue;
    }
    if (zrc == Z_OK) continue;
    /* Z_BUF_ERROR: no progress possible, i.e. all input consumed before the stream's end. */
    if (zrc == Z_BUF_ERROR && consumed < s->in_len) continue;
    return gz_error(err, s->name, zrc, &s->zs, consumed, s->in_len);
  }
  return 0;
}

void dml__bytesrc_close(dml__bytesrc *s) {
  if (s->zinit) inflateEnd(&s->zs);
  s->zinit = 0;
}

/* ------------------------------------------------------------------------------------------- */

int dml__labels_add(dml__labels *l, const char *tok, size_t len, const char *name, long line,
                    long col, const dml_data_opts *opts, dml_err *err) {
  char tb[48];
  float fv = 0;
  int prc = dml__parse_float(tok, len, &fv);
  if (prc == 1)
    return dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: label '%s' is not a number", name, line, col,
                       dml__tokstr(tb, sizeof(tb), tok, len));
  if (prc != 0)
    return dml_err_set(err, DML_EFORMAT, "%s:%ld:%ld: label '%s' is not finite", name, line, col,
                       dml__tokstr(tb, sizeof(tb), tok, len));
  double v = fv;
  if (v != floor(v) || v < -1 || v > DML__MAX_CLASS_ID)
    return dml_err_set(
        err, DML_ERANGE,
        "%s:%ld:%ld: label '%s' is not a class id (expected 0/1, -1/+1 or an integer "
        "0..%d)",
        name, line, col, dml__tokstr(tb, sizeof(tb), tok, len), DML__MAX_CLASS_ID);
  int32_t iv = (int32_t)v;
  if (iv == -1 && l->neg_line == 0) l->neg_line = line;
  if (iv != -1 && iv != 1 && l->other_line == 0) {
    l->other_line = line;
    l->other_val = iv;
  }
  if (l->neg_line != 0 && l->other_line != 0)
    return dml_err_set(err, DML_ERANGE,
                       "%s:%ld: label %d mixed with label -1 (line %ld): labels must be 0/1, -1/+1 "
                       "or class ids 0..K-1",
                       name, DML__MAX(l->neg_line, l->other_line), l->other_val, l->neg_line);
  int32_t mapped = iv == -1 ? 0 : iv;
  if (opts != NULL && opts->num_classes > 0 && mapped >= opts->num_classes)
    return dml_err_set(err, DML_ERANGE, "%s:%ld:%ld: label %d out of range for %d classes", name,
                       line, col, iv, opts->num_classes);
  void *p = l->y;
  if (dml__grow(&p, &l->cap, l->n + 1, sizeof(int32_t)) != 0)
    return dml_err_set(err, DML_ENOMEM, "%s:%ld: out of memory", name, line);
  l->y = p;
  l->y[l->n++] = iv;
  if (iv > l->max) l->max = iv;
  return 0;
}

int dml__labels_finish(dml__labels *l, const char *name, const dml_data_opts *opts, dml_dataset *ds,
                       dml_err *err) {
  (void)name;
  (void)err;
  if (l->neg_line != 0) {
    for (size_t i = 0; i < l->n; i++)
      if (l->y[i] == -1) l->y[i] = 0;
  }
  int k = l->max + 1;
  if (k < 2) k = 2;
  if (opts != NULL && opts->num_classes > 0) k = opts->num_classes;
  ds->num_classes = k;
  ds->y = l->y;
  l->y = NULL;
  l->n = l->cap = 0;
  return 0;
}

void dml__labels_free(dml__labels *l) {
  dml__free(l->y);
  memset(l, 0, sizeof(*l));
}

int dml__read_text(const char *path, dml__text_parser parse, const dml_data_opts *opts,
                   dml_dataset *ds, dml_err *err) {
  memset(ds, 0, sizeof(*ds));
  unsigned char *buf;
  size_t len;
  int rc = dml__read_maybe_gzip(path, &buf, &len, err);
  if (rc != 0) return rc;
  rc = parse((const char *)buf, len, path, opts, ds, err);
  dml__free(buf);
  return rc;
}
