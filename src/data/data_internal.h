/* Internal helpers shared by the data readers: whole-file input with gzip detection, a bounded
 * streaming reader over plain or gzipped bytes, and the label rules common to the text formats.
 * Not installed; names start with dml__. */
#ifndef DISTML_DATA_INTERNAL_H
#define DISTML_DATA_INTERNAL_H

#include <zlib.h>

#include "core/internal.h"
#include "distml/data.h"

/* Largest class id a text file may use (keeps num_classes sane for the models). */
#define DML__MAX_CLASS_ID (1 << 20)

/* 1 if p starts with the gzip magic bytes 1f 8b. */
int dml__is_gzip(const unsigned char *p, size_t n);

/* Reads all of path into *out (NUL-terminated, *len bytes without the NUL; free with dml__free).
 * A missing file is DML_ENOENT, a directory DML_EISDIR, other failures DML_EIO, each naming path. */
int dml__read_whole_file(const char *path, unsigned char **out, size_t *len, dml_err *err);

/* Decompresses a whole gzip buffer (several members allowed) into *out (NUL-terminated). At most
 * max_out bytes (else DML_EOVERFLOW); truncated or corrupt input is DML_EFORMAT naming name and the
 * compressed byte offset. */
int dml__gunzip_all(const unsigned char *in, size_t in_len, const char *name, size_t max_out,
                    unsigned char **out, size_t *out_len, dml_err *err);

/* Reads path and gunzips it when it starts with the gzip magic (detected by content). */
int dml__read_maybe_gzip(const char *path, unsigned char **out, size_t *len, dml_err *err);
/* Reads path whole (gunzipped if it is gzip) and hands the text to parse; for the text readers. */
typedef int (*dml__text_parser)(const char *text, size_t len, const char *name,
                                const dml_data_opts *opts, dml_dataset *ds, dml_err *err);
int dml__read_text(const char *path, dml__text_parser parse, const dml_data_opts *opts,
                   dml_dataset *ds, dml_err *err);

/* A sequential reader over bytes that are plain or a gzip stream. */
typedef struct dml__bytesrc {
  const char *name;
  const unsigned char *in;
  size_t in_len;
  size_t pos; /* plain: next byte; gzip: bytes of decompressed output delivered */
  int gz;
  int zinit;
  int zend; /* gzip: last member finished and nothing follows */
  z_stream zs;
} dml__bytesrc;
void dml__bytesrc_init(dml__bytesrc *s, const void *data, size_t len, const char *name);
/* Reads up to n bytes into dst; *got < n only at the end of data. Errors: corrupt/truncated gzip. */
int dml__bytesrc_read(dml__bytesrc *s, void *dst, size_t n, size_t *got, dml_err *err);
void dml__bytesrc_close(dml__bytesrc *s);

/* Label rules of the text formats: class ids 0..DML__MAX_CLASS_ID, or -1/+1 (mapped to 0/1 at the
 * end); mixing -1 with anything but +1 is an error naming both lines. */
typedef struct dml__labels {
  int32_t *y;
  size_t n, cap;
  long neg_line;   /* first line with label -1, 0 if none */
  long other_line; /* first line with a label other than -1/+1, 0 if none */
  int32_t other_val;
  int32_t max; /* largest label seen */
} dml__labels;
/* Parses the label token tok[0..len) of line/col and appends it. */
int dml__labels_add(dml__labels *l, const char *tok, size_t len, const char *name, long line,
                    long col, const dml_data_opts *opts, dml_err *err);
/* Maps -1/+1 to 0/1, computes num_classes (checked against opts), hands y over to ds. */
int dml__labels_finish(dml__labels *l, const char *name, const dml_data_opts *opts, dml_dataset *ds,
                       dml_err *err);
void dml__labels_free(dml__labels *l);

/* Parses the number in tok[0..len) (the whole token) as a finite float. Returns 0, or 1 when not a
 * number, 2 when NaN/Inf, 3 when out of float range. */
int dml__parse_float(const char *tok, size_t len, float *out);

/* Grows *p (elements of size elem) to hold at least need elements; 0 or DML_ENOMEM/EOVERFLOW. */
int dml__grow(void **p, size_t *cap, size_t need, size_t elem);
/* The same for a typed pointer lvalue: rc = DML__GROW(ptr, &cap, need). */
#define DML__GROW(rc, ptr, capp, need)                          \
  do {                                                          \
    void *dml__g_ = (ptr);                                      \
    (rc) = dml__grow(&dml__g_, (capp), (need), sizeof(*(ptr))); \
    (ptr) = dml__g_;                                            \
  } while (0)

/* A short printable copy of a token for messages (non-printable bytes as '?', long ones cut). */
const char *dml__tokstr(char *buf, size_t bufsz, const char *tok, size_t len);

#endif
