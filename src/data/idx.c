/* IDX reader (the MNIST / Fashion-MNIST format): an images file (unsigned bytes, 2 to 4 dimensions,
 * scaled to [0,1]) and a labels file (unsigned bytes, 1 dimension), each plain or gzipped. Every
 * header field is checked before anything is allocated; errors name the file and the byte offset
 * (of the decompressed data for gzipped files). Other IDX dtypes are recognised and refused. */
#include "data/data_internal.h"

#include <string.h>

#define IDX_DTYPE_U8 0x08
#define IDX_MAX_DIM (1u << 28)            /* features per item */
#define IDX_MAX_BYTES ((uint64_t)1 << 36) /* data bytes in one file */
/* deflate cannot expand by more than about 1032:1; a header declaring more is lying. */
#define GZIP_MAX_RATIO 1100u

typedef struct idx_header {
  int ndim;
  uint32_t dims[4];
  uint64_t count;   /* dims[0] */
  uint64_t item;    /* product of dims[1..] (1 for labels) */
  uint64_t bytes;   /* count * item */
  size_t hdr_bytes; /* 4 + 4 * ndim */
} idx_header;

static const char *dtype_name(int t) {
  switch (t) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "short";
    case 0x0C: return "int";
    case 0x0D: return "float";
    case 0x0E: return "double";
  }
  return NULL;
}

static const char *where(const dml__bytesrc *s) {
  return s->gz ? " (decompressed)" : "";
}

static int read_header(dml__bytesrc *s, int min_ndim, int max_ndim, const char *kind, idx_header *h,
                       dml_err *err) {
  unsigned char m[4];
  size_t got;
  int rc = dml__bytesrc_read(s, m, 4, &got, err);
  if (rc != 0) return rc;
  if (got == 0)
    return dml_err_set(err, DML_EFORMAT, "%s: empty file (expected an IDX %s file)", s->name, kind);
  if (got < 4)
    return dml_err_set(err, DML_EFORMAT, "%s: truncated IDX header: file ends at byte offset %zu%s",
                       s->name, got, where(s));
  if (m[0] != 0 || m[1] != 0)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: wrong IDX magic at byte offset 0: 0x%02x%02x%02x%02x (expected 0x0000 "
                       "followed by dtype and ndim; not an IDX file)",
                       s->name, m[0], m[1], m[2], m[3]);
  if (m[2] != IDX_DTYPE_U8) {
    const char *dn = dtype_name(m[2]);
    if (dn != NULL)
      return dml_err_set(
          err, DML_EUNSUPPORTED,
          "%s: byte offset 2: IDX dtype 0x%02x (%s) is not supported; %s files must be "
          "0x08 (unsigned byte)",
          s->name, m[2], dn, kind);
    return dml_err_set(err, DML_EFORMAT, "%s: byte offset 2: invalid IDX dtype 0x%02x", s->name,
                       m[2]);
  }
  h->ndim = m[3];
  if (h->ndim < min_ndim || h->ndim > max_ndim) {
    if (min_ndim == max_ndim)
      return dml_err_set(err, DML_EFORMAT,
                         "%s: byte offset 3: %d dimensions, expected %d for an IDX %s file",
                         s->name, h->ndim, min_ndim, kind);
    return dml_err_set(err, DML_EFORMAT,
                       "%s: byte offset 3: %d dimensions, expected %d to %d for an IDX %s file",
                       s->name, h->ndim, min_ndim, max_ndim, kind);
  }
  unsigned char d[16];
  size_t dlen = 4 * (size_t)h->ndim;
  rc = dml__bytesrc_read(s, d, dlen, &got, err);
  if (rc != 0) return rc;
  if (got < dlen)
    return dml_err_set(
        err, DML_EFORMAT,
        "%s: truncated IDX header: file ends at byte offset %zu%s, the %d dimensions "
        "need %zu bytes",
        s->name, 4 + got, where(s), h->ndim, 4 + dlen);
  h->hdr_bytes = 4 + dlen;
  h->item = 1;
  for (int i = 0; i < h->ndim; i++) {
    const unsigned char *p = d + 4 * i;
    h->dims[i] = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    if (h->dims[i] == 0)
      return dml_err_set(err, DML_EFORMAT, "%s: byte offset %d: dimension %d is 0 (empty %s file)",
                         s->name, 4 + 4 * i, i, kind);
    if (i > 0) {
      h->item *= h->dims[i];
      if (h->item > IDX_MAX_DIM)
        return dml_err_set(err, DML_EOVERFLOW,
                           "%s: byte offset %d: item size (product of dimensions 1..%d) exceeds %u "
                           "values",
                           s->name, 4 + 4 * i, i, IDX_MAX_DIM);
    }
  }
  h->count = h->dims[0];
  if (h->count > INT32_MAX)
    return dml_err_set(err, DML_EOVERFLOW, "%s: byte offset 4: %llu items is more than %d", s->name,
                       (unsigned long long)h->count, INT32_MAX);
  h->bytes = h->count * h->item; /* both bounded above: no overflow */
  if (h->bytes > IDX_MAX_BYTES)
    return dml_err_set(err, DML_EOVERFLOW,
                       "%s: header declares %llu data bytes, more than the limit %llu", s->name,
                       (unsigned long long)h->bytes, (unsigned long long)IDX_MAX_BYTES);
  /* Check the declared size against what the file can hold before allocating for it. */
  if (!s->gz) {
    uint64_t have = s->in_len - h->hdr_bytes;
    if (have < h->bytes)
      return dml_err_set(
          err, DML_EFORMAT,
          "%s: truncated: header declares %llu x %llu = %llu data bytes but the file "
          "ends at byte offset %zu (expected %llu)",
          s->name, (unsigned long long)h->count, (unsigned long long)h->item,
          (unsigned long long)h->bytes, s->in_len, (unsigned long long)(h->hdr_bytes + h->bytes));
    if (have > h->bytes)
      return dml_err_set(err, DML_EFORMAT,
                         "%s: %llu unexpected bytes after the declared data, from byte offset %llu",
                         s->name, (unsigned long long)(have - h->bytes),
                         (unsigned long long)(h->hdr_bytes + h->bytes));
  } else if (h->bytes / GZIP_MAX_RATIO > s->in_len) {
    return dml_err_set(
        err, DML_EFORMAT,
        "%s: header declares %llu data bytes, more than %zu bytes of gzip data can hold "
        "(truncated or corrupt file)",
        s->name, (unsigned long long)h->bytes, s->in_len);
  }
  return 0;
}

/* Reads exactly h->bytes of data in chunks through fn, then checks that nothing follows. */
typedef void (*chunk_fn)(void *ctx, const unsigned char *p, size_t n, uint64_t at);
static int read_body(dml__bytesrc *s, const idx_header *h, chunk_fn fn, void *ctx, dml_err *err) {
  unsigned char buf[1 << 16];
  uint64_t done = 0;
  while (done < h->bytes) {
    size_t want = (size_t)DML__MIN((uint64_t)sizeof(buf), h->bytes - done);
    size_t got;
    int rc = dml__bytesrc_read(s, buf, want, &got, err);
    if (rc != 0) return rc;
    fn(ctx, buf, got, done);
    done += got;
    if (got < want)
      return dml_err_set(err, DML_EFORMAT,
                         "%s: truncated: data ends at byte offset %llu%s but the header declares "
                         "%llu x %llu items (end at byte offset %llu)",
                         s->name, (unsigned long long)(h->hdr_bytes + done), where(s),
                         (unsigned long long)h->count, (unsigned long long)h->item,
                         (unsigned long long)(h->hdr_bytes + h->bytes));
  }
  size_t got;
  int rc = dml__bytesrc_read(s, buf, 1, &got, err); /* also runs gzip to its end (CRC check) */
  if (rc != 0) return rc;
  if (got != 0)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: unexpected bytes after the declared data, from byte offset %llu%s",
                       s->name, (unsigned long long)(h->hdr_bytes + h->bytes), where(s));
  return 0;
}

static void images_chunk(void *ctx, const unsigned char *p, size_t n, uint64_t at) {
  float *x = (float *)ctx + at;
  for (size_t i = 0; i < n; i++) x[i] = (float)p[i] * (1.0f / 255.0f);
}

static void labels_chunk(void *ctx, const unsigned char *p, size_t n, uint64_t at) {
  memcpy((unsigned char *)ctx + at, p, n);
}

int dml_parse_idx_mem(const void *images, size_t images_len, const char *images_name,
                      const void *labels, size_t labels_len, const char *labels_name,
                      const dml_data_opts *opts, dml_dataset *ds, dml_err *err) {
  memset(ds, 0, sizeof(*ds));
  dml__bytesrc si, sl;
  dml__bytesrc_init(&si, images, images_len, images_name);
  dml__bytesrc_init(&sl, labels, labels_len, labels_name);
  idx_header hi = {0}, hl = {0};
  unsigned char *lab = NULL;
  int rc = read_header(&si, 2, 4, "images", &hi, err);
  if (rc != 0) goto fail;
  rc = read_header(&sl, 1, 1, "labels", &hl, err);
  if (rc != 0) goto fail;
  if (hi.count != hl.count) {
    rc = dml_err_set(
        err, DML_EFORMAT,
        "%s has %llu images but %s has %llu labels (byte offset 4 of each): count mismatch",
        images_name, (unsigned long long)hi.count, labels_name, (unsigned long long)hl.count);
    goto fail;
  }
  int ovf = 0;
  size_t xbytes = dml__mul_size((size_t)hi.bytes, sizeof(float), &ovf);
  ds->x = ovf ? NULL : dml__malloc(xbytes);
  lab = dml__malloc((size_t)hl.bytes);
  ds->y = dml__malloc((size_t)hl.count * sizeof(int32_t));
  ds->name = dml__strdup(images_name);
  if (ds->x == NULL || lab == NULL || ds->y == NULL || ds->name == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory for %llu x %llu floats", images_name,
                     (unsigned long long)hi.count, (unsigned long long)hi.item);
    goto fail;
  }
  rc = read_body(&si, &hi, images_chunk, ds->x, err);
  if (rc != 0) goto fail;
  rc = read_body(&sl, &hl, labels_chunk, lab, err);
  if (rc != 0) goto fail;
  int maxl = 0;
  int k = opts != NULL ? opts->num_classes : 0;
  for (uint64_t i = 0; i < hl.count; i++) {
    if (k > 0 && lab[i] >= k) {
      rc = dml_err_set(err, DML_ERANGE,
                       "%s: byte offset %llu%s: label %u out of range for %d classes", labels_name,
                       (unsigned long long)(hl.hdr_bytes + i), where(&sl), lab[i], k);
      goto fail;
    }
    if (lab[i] > maxl) maxl = lab[i];
    ds->y[i] = lab[i];
  }
  ds->n = (int)hi.count;
  ds->dim = (int)hi.item;
  ds->num_classes = k > 0 ? k : DML__MAX(2, maxl + 1);
  dml__free(lab);
  dml__bytesrc_close(&si);
  dml__bytesrc_close(&sl);
  return 0;
fail:
  dml__free(lab);
  dml__bytesrc_close(&si);
  dml__bytesrc_close(&sl);
  dml_dataset_free(ds);
  return rc;
}

int dml_read_idx(const char *images_path, const char *labels_path, const dml_data_opts *opts,
                 dml_dataset *ds, dml_err *err) {
  memset(ds, 0, sizeof(*ds));
  char *derived = NULL;
  unsigned char *img = NULL, *lab = NULL;
  size_t img_len = 0, lab_len = 0;
  int rc;
  if (labels_path == NULL) {
    static const char from[] = "images-idx3", to[] = "labels-idx1";
    const char *hit = NULL, *p = images_path;
    while ((p = strstr(p, from)) != NULL) hit = p++;
    if (hit == NULL)
      return dml_err_set(
          err, DML_EINVAL,
          "%s: cannot find the labels file: the name has no 'images-idx3' to replace "
          "with 'labels-idx1'; give both as IMAGES,LABELS",
          images_path);
    derived = dml__strdup(images_path);
    if (derived == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory");
    memcpy(derived + (hit - images_path), to, sizeof(to) - 1);
    labels_path = derived;
  }
  rc = dml__read_whole_file(images_path, &img, &img_len, err);
  if (rc == 0) rc = dml__read_whole_file(labels_path, &lab, &lab_len, err);
  if (rc == 0)
    rc = dml_parse_idx_mem(img, img_len, images_path, lab, lab_len, labels_path, opts, ds, err);
  dml__free(img);
  dml__free(lab);
  dml__free(derived);
  return rc;
}
