/* safetensors files: a generic writer and a reader of named float32 tensors with string metadata.
 * The reader treats every file as hostile (lengths, JSON, dtypes, shapes and offsets are all
 * checked before any data is trusted) and bounds its memory by the file's size. Model save/load
 * on top of this lives in model_io.c. */
#include "core/internal.h"
#include "distml/ml.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HOST_BIG_ENDIAN 1
#else
#define HOST_BIG_ENDIAN 0
#endif

struct dml_safetensors {
  char *path;
  int ntensors;
  dml_st_tensor *tensors; /* sorted by data offset */
  char **names;
  int nmeta;
  dml_st_meta *meta;
  char **meta_strs; /* 2 * nmeta owned strings */
  void *data_raw;   /* the data section, one allocation */
};

static uint32_t swap32(uint32_t v) {
  return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}

/* ---------------------------------------------------------------------------------------------
 * Writer. */

/* Writes count floats little-endian. */
static int write_floats_le(FILE *f, const float *data, size_t count) {
  if (!HOST_BIG_ENDIAN) return fwrite(data, sizeof(float), count, f) == count ? 0 : DML_EIO;
  uint32_t buf[1024];
  for (size_t i = 0; i < count;) {
    size_t n = DML__MIN(count - i, DML__ARRAY_LEN(buf));
    for (size_t k = 0; k < n; k++) {
      uint32_t u;
      memcpy(&u, &data[i + k], 4);
      buf[k] = swap32(u);
    }
    if (fwrite(buf, 4, n, f) != n) return DML_EIO;
    i += n;
  }
  return 0;
}

/* Byte count of a tensor: 4 * product(shape), or an error for bad shapes. */
static int tensor_bytes(int ndim, const int64_t *shape, uint64_t *bytes) {
  if (ndim < 0 || ndim > DML_TENSOR_MAX_DIMS) return DML_EINVAL;
  uint64_t count = 1;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0) return DML_EINVAL;
    uint64_t s = (uint64_t)shape[d];
    if (s != 0 && count > (UINT64_MAX / 4) / s) return DML_EOVERFLOW;
    count *= s;
  }
  *bytes = count * 4;
  return 0;
}

int dml_safetensors_write(const char *path, const dml_st_tensor *tensors, int ntensors,
                          const dml_st_meta *meta, int nmeta, dml_err *err) {
  int rc = 0;
  json_t *root = NULL;
  char *header = NULL;
  dml_atomic_file af = {0};
  if (ntensors < 0 || nmeta < 0 || (ntensors > 0 && tensors == NULL) || (nmeta > 0 && meta == NULL))
    return dml_err_set(err, DML_EINVAL, "%s: bad tensor or metadata list", path);
  root = json_object();
  if (root == NULL) return dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
  if (nmeta > 0) {
    json_t *m = json_object();
    if (m == NULL || json_object_set_new(root, "__metadata__", m) != 0) {
      rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    for (int i = 0; i < nmeta; i++) {
      if (meta[i].key == NULL || meta[i].value == NULL) {
        rc = dml_err_set(err, DML_EINVAL, "%s: metadata entry %d has no key or value", path, i);
        goto done;
      }
      if (json_object_get(m, meta[i].key) != NULL) {
        rc = dml_err_set(err, DML_EINVAL, "%s: metadata key '%s' given twice", path, meta[i].key);
        goto done;
      }
      json_t *v = json_string(meta[i].value);
      if (v == NULL || json_object_set_new(m, meta[i].key, v) != 0) {
        rc =
            dml_err_set(err, DML_EINVAL, "%s: metadata '%s' is not valid UTF-8", path, meta[i].key);
        goto done;
      }
    }
  }
  uint64_t offset = 0;
  for (int i = 0; i < ntensors; i++) {
    const dml_st_tensor *t = &tensors[i];
    uint64_t bytes;
    if (t->name == NULL || t->name[0] == '\0' || strcmp(t->name, "__metadata__") == 0) {
      rc = dml_err_set(err, DML_EINVAL, "%s: tensor %d has an empty or reserved name", path, i);
      goto done;
    }
    if (json_object_get(root, t->name) != NULL) {
      rc = dml_err_set(err, DML_EINVAL, "%s: tensor name '%s' given twice", path, t->name);
      goto done;
    }
    if (tensor_bytes(t->ndim, t->shape, &bytes) != 0 || (bytes > 0 && t->data == NULL)) {
      rc =
          dml_err_set(err, DML_EINVAL, "%s: tensor '%s' has a bad shape or no data", path, t->name);
      goto done;
    }
    json_t *shape = json_array(), *offs = json_array(), *entry = json_object();
    int bad = shape == NULL || offs == NULL || entry == NULL;
    for (int d = 0; !bad && d < t->ndim; d++)
      bad = json_array_append_new(shape, json_integer(t->shape[d])) != 0;
    bad = bad || json_array_append_new(offs, json_integer((json_int_t)offset)) != 0 ||
          json_array_append_new(offs, json_integer((json_int_t)(offset + bytes))) != 0;
    bad = bad || json_object_set_new(entry, "dtype", json_string("F32")) != 0;
    if (bad || json_object_set_new(entry, "shape", shape) != 0) {
      json_decref(shape);
      json_decref(offs);
      json_decref(entry);
      rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    if (json_object_set_new(entry, "data_offsets", offs) != 0) {
      json_decref(entry);
      rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    if (json_object_set_new(root, t->name, entry) != 0) {
      rc = dml_err_set(err, DML_EINVAL, "%s: tensor name '%s' is not valid UTF-8", path, t->name);
      goto done;
    }
    offset += bytes;
  }
  header = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (header == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: cannot encode the header", path);
    goto done;
  }
  size_t hlen = strlen(header), padded = (hlen + 7) & ~(size_t)7;
  uint8_t len_le[8];
  for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  if ((rc = dml_atomic_open(&af, path, err)) != 0) goto done;
  int ok = fwrite(len_le, 1, 8, af.f) == 8 && fwrite(header, 1, hlen, af.f) == hlen;
  for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', af.f) != EOF;
  for (int i = 0; ok && i < ntensors; i++) {
    uint64_t bytes = 0;
    tensor_bytes(tensors[i].ndim, tensors[i].shape, &bytes);
    ok = write_floats_le(af.f, tensors[i].data, (size_t)(bytes / 4)) == 0;
  }
  if (!ok) {
    rc = dml_err_set(err, DML_EIO, "%s: write failed: %s", path, strerror(errno));
    dml_atomic_abort(&af);
    goto done;
  }
  rc = dml_atomic_commit(&af, err);
done:
  free(header); /* allocated by jansson */
  json_decref(root);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Reader. */

void dml_safetensors_free(dml_safetensors *st) {
  if (st == NULL) return;
  for (int i = 0; i < st->ntensors && st->names; i++) dml__free(st->names[i]);
  for (int i = 0; i < 2 * st->nmeta && st->meta_strs; i++) dml__free(st->meta_strs[i]);
  dml__free(st->names);
  dml__free(st->tensors);
  dml__free(st->meta);
  dml__free(st->meta_strs);
  dml__free(st->data_raw);
  dml__free(st->path);
  dml__free(st);
}

typedef struct entry {
  const char *name; /* points into the JSON tree while parsing */
  int ndim;
  int64_t shape[DML_TENSOR_MAX_DIMS];
  uint64_t begin, end;
} entry;

static int cmp_entry(const void *a, const void *b) {
  const entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return (x->end > y->end) - (x->end < y->end);
}

/* Formats a shape as "[2, 3]" into buf. */
static const char *shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int d = 0; d < ndim && k < n; d++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (k < n) snprintf(buf + k, n - k, "]");
  return buf;
}

/* Parses one tensor entry of the header. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t data_len, entry *e,
                       dml_err *err) {
  if (name[0] == '\0') return dml_err_set(err, DML_EFORMAT, "%s: a tensor has an empty name", path);
  if (!json_is_object(v))
    return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s': header entry is not an object", path,
                       name);
  json_t *dtype = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
         *offs = json_object_get(v, "data_offsets");
  if (!json_is_string(dtype))
    return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s': missing or non-string dtype", path,
                       name);
  if (strcmp(json_string_value(dtype), "F32") != 0)
    return dml_err_set(err, DML_EUNSUPPORTED,
                       "%s: tensor '%s': dtype %.32s is not supported (only F32)", path, name,
                       json_string_value(dtype));
  if (!json_is_array(shape))
    return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s': missing or non-array shape", path, name);
  size_t nd = json_array_size(shape);
  if (nd > DML_TENSOR_MAX_DIMS)
    return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s': %zu dimensions (at most %d)", path, name,
                       nd, DML_TENSOR_MAX_DIMS);
  e->name = name;
  e->ndim = (int)nd;
  for (size_t d = 0; d < nd; d++) {
    json_t *s = json_array_get(shape, d);
    if (!json_is_integer(s) || json_integer_value(s) < 0)
      return dml_err_set(err, DML_EFORMAT,
                         "%s: tensor '%s': shape entry %zu is not a non-negative integer", path,
                         name, d);
    e->shape[d] = (int64_t)json_integer_value(s);
  }
  uint64_t bytes;
  if (tensor_bytes(e->ndim, e->shape, &bytes) != 0)
    return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s': shape too large (overflows)", path,
                       name);
  if (!json_is_array(offs) || json_array_size(offs) != 2 ||
      !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
    return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s': data_offsets must be [begin, end]", path,
                       name);
  json_int_t b = json_integer_value(json_array_get(offs, 0)),
             en = json_integer_value(json_array_get(offs, 1));
  if (b < 0 || en < b)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] are not 0 <= begin <= end", path,
                       name, (long long)b, (long long)en);
  e->begin = (uint64_t)b;
  e->end = (uint64_t)en;
  if (e->end > data_len)
    return dml_err_set(
        err, DML_EFORMAT,
        "%s: tensor '%s': data_offsets [%llu, %llu] beyond the data section of %llu bytes", path,
        name, (unsigned long long)e->begin, (unsigned long long)e->end,
        (unsigned long long)data_len);
  if (e->end - e->begin != bytes) {
    char sb[128];
    return dml_err_set(err, DML_EFORMAT,
                       "%s: tensor '%s': %llu data bytes for shape %s (want %llu)", path, name,
                       (unsigned long long)(e->end - e->begin),
                       shape_str(sb, sizeof(sb), e->ndim, e->shape), (unsigned long long)bytes);
  }
  if (e->begin % 4 != 0)
    return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s': data offset %llu not 4-byte aligned",
                       path, name, (unsigned long long)e->begin);
  return 0;
}

/* Where the bytes come from: an open file read sequentially, or a memory buffer. */
typedef struct source {
  FILE *f;
  const uint8_t *mem;
  uint64_t size; /* total bytes */
  uint64_t pos;
} source;

static int source_read(source *s, void *dst, size_t n) {
  if (n > s->size - s->pos) return -1;
  if (s->f != NULL) {
    if (fread(dst, 1, n, s->f) != n) return -1;
  } else if (n > 0) {
    memcpy(dst, s->mem + s->pos, n);
  }
  s->pos += n;
  return 0;
}

static int read_source(source *src, const char *path, dml_safetensors **out, dml_err *err);

int dml_safetensors_read(const char *path, dml_safetensors **out, dml_err *err) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    int e = errno;
    return dml_err_set(err, e == ENOENT ? DML_ENOENT : DML_EIO, "%s: cannot open: %s", path,
                       strerror(e));
  }
  int rc;
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0) {
    rc = dml_err_set(err, DML_EIO, "%s: cannot stat: %s", path, strerror(errno));
  } else if (S_ISDIR(sb.st_mode)) {
    rc = dml_err_set(err, DML_EISDIR, "%s: is a directory, not a safetensors file", path);
  } else {
    source src = {.f = f, .size = (uint64_t)sb.st_size};
    rc = read_source(&src, path, out, err);
  }
  fclose(f);
  return rc;
}

int dml_safetensors_read_mem(const void *data, size_t len, const char *name, dml_safetensors **out,
                             dml_err *err) {
  *out = NULL;
  if (data == NULL && len > 0) return dml_err_set(err, DML_EINVAL, "%s: no data", name);
  source src = {.mem = data, .size = len};
  return read_source(&src, name, out, err);
}

static int read_source(source *src, const char *path, dml_safetensors **out, dml_err *err) {
  int rc = 0;
  char *hbuf = NULL;
  json_t *root = NULL;
  entry *ents = NULL;
  dml_safetensors *st = NULL;
  uint64_t fsize = src->size;
  uint8_t lb[8];
  if (fsize < 8 || source_read(src, lb, 8) != 0) {
    rc = dml_err_set(err, DML_EFORMAT, "%s: %llu bytes: too short for the 8-byte header length",
                     path, (unsigned long long)fsize);
    goto done;
  }
  uint64_t hlen = 0;
  for (int i = 0; i < 8; i++) hlen |= (uint64_t)lb[i] << (8 * i);
  if (hlen > fsize - 8) {
    rc = dml_err_set(
        err, DML_EFORMAT,
        "%s: byte 0: header length %llu exceeds the %llu bytes that follow it (truncated "
        "or not a safetensors file)",
        path, (unsigned long long)hlen, (unsigned long long)(fsize - 8));
    goto done;
  }
  if (hlen > DML_SAFETENSORS_MAX_HEADER) {
    rc = dml_err_set(err, DML_EFORMAT,
                     "%s: byte 0: header length %llu exceeds the limit of %u bytes", path,
                     (unsigned long long)hlen, DML_SAFETENSORS_MAX_HEADER);
    goto done;
  }
  if (hlen < 2) {
    rc = dml_err_set(err, DML_EFORMAT,
                     "%s: byte 0: header length %llu is too small for a JSON object", path,
                     (unsigned long long)hlen);
    goto done;
  }
  hbuf = dml__malloc((size_t)hlen);
  if (hbuf == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory for a %llu-byte header", path,
                     (unsigned long long)hlen);
    goto done;
  }
  if (source_read(src, hbuf, (size_t)hlen) != 0) {
    rc = dml_err_set(err, DML_EIO, "%s: read failed in the header", path);
    goto done;
  }
  json_error_t jerr;
  root = json_loadb(hbuf, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
  if (root == NULL) {
    rc = dml_err_set(err, DML_EFORMAT, "%s: byte %lld: bad JSON header: %s", path,
                     (long long)jerr.position + 8, jerr.text);
    goto done;
  }
  if (!json_is_object(root)) {
    rc = dml_err_set(err, DML_EFORMAT, "%s: byte 8: JSON header is not an object", path);
    goto done;
  }
  uint64_t data_len = fsize - 8 - hlen;
  size_t nkeys = json_object_size(root);
  st = dml__calloc(1, sizeof(*st));
  ents = dml__calloc(nkeys ? nkeys : 1, sizeof(entry));
  if (st == NULL || ents == NULL || (st->path = dml__strdup(path)) == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
    goto done;
  }
  const char *key;
  json_t *val;
  int ne = 0;
  json_t *meta = NULL;
  json_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) {
      meta = val;
      continue;
    }
    if ((rc = parse_entry(path, key, val, data_len, &ents[ne], err)) != 0) goto done;
    ne++;
  }
  if (meta != NULL) {
    if (!json_is_object(meta)) {
      rc = dml_err_set(err, DML_EFORMAT, "%s: __metadata__ is not an object", path);
      goto done;
    }
    size_t nm = json_object_size(meta);
    st->meta = dml__calloc(nm ? nm : 1, sizeof(dml_st_meta));
    st->meta_strs = dml__calloc(2 * (nm ? nm : 1), sizeof(char *));
    if (st->meta == NULL || st->meta_strs == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    json_object_foreach(meta, key, val) {
      if (!json_is_string(val)) {
        rc = dml_err_set(err, DML_EFORMAT, "%s: __metadata__ '%s': value is not a string", path,
                         key);
        goto done;
      }
      char *k = dml__strdup(key), *v = dml__strdup(json_string_value(val));
      st->meta_strs[2 * st->nmeta] = k;
      st->meta_strs[2 * st->nmeta + 1] = v;
      st->meta[st->nmeta].key = k;
      st->meta[st->nmeta].value = v;
      st->nmeta++;
      if (k == NULL || v == NULL) {
        rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
        goto done;
      }
    }
  }
  /* The tensors must tile the data section exactly: sorted by offset, each starts where the
   * previous ended, the last ends at the end of the file. */
  qsort(ents, (size_t)ne, sizeof(entry), cmp_entry);
  uint64_t cursor = 0;
  for (int i = 0; i < ne; i++) {
    if (ents[i].begin < cursor) {
      rc = dml_err_set(err, DML_EFORMAT, "%s: tensor '%s' (bytes %llu..%llu) overlaps tensor '%s'",
                       path, ents[i].name, (unsigned long long)ents[i].begin,
                       (unsigned long long)ents[i].end, ents[i - 1].name);
      goto done;
    }
    if (ents[i].begin > cursor) {
      rc = dml_err_set(err, DML_EFORMAT, "%s: %llu unused data bytes before tensor '%s'", path,
                       (unsigned long long)(ents[i].begin - cursor), ents[i].name);
      goto done;
    }
    cursor = ents[i].end;
  }
  if (cursor != data_len) {
    rc = dml_err_set(err, DML_EFORMAT,
                     "%s: the tensors cover %llu bytes but the data section has %llu (truncated or "
                     "trailing garbage)",
                     path, (unsigned long long)cursor, (unsigned long long)data_len);
    goto done;
  }
  st->tensors = dml__calloc((size_t)(ne ? ne : 1), sizeof(dml_st_tensor));
  st->names = dml__calloc((size_t)(ne ? ne : 1), sizeof(char *));
  st->data_raw = dml__malloc(data_len ? (size_t)data_len : 1);
  if (st->tensors == NULL || st->names == NULL || st->data_raw == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory for %llu data bytes", path,
                     (unsigned long long)data_len);
    goto done;
  }
  if (source_read(src, st->data_raw, (size_t)data_len) != 0) {
    rc = dml_err_set(err, DML_EIO, "%s: read failed in the data section", path);
    goto done;
  }
  if (HOST_BIG_ENDIAN) {
    uint32_t *u = st->data_raw;
    for (uint64_t i = 0; i < data_len / 4; i++) u[i] = swap32(u[i]);
  }
  st->ntensors = ne;
  for (int i = 0; i < ne; i++) {
    st->names[i] = dml__strdup(ents[i].name);
    if (st->names[i] == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    dml_st_tensor *t = &st->tensors[i];
    t->name = st->names[i];
    t->ndim = ents[i].ndim;
    memcpy(t->shape, ents[i].shape, sizeof(t->shape));
    t->data = (const float *)((const char *)st->data_raw + ents[i].begin);
  }
done:
  dml__free(hbuf);
  dml__free(ents);
  json_decref(root);
  if (rc != 0) {
    dml_safetensors_free(st);
    return rc;
  }
  *out = st;
  return 0;
}

const char *dml_safetensors_path(const dml_safetensors *st) {
  return st->path;
}
int dml_safetensors_count(const dml_safetensors *st) {
  return st->ntensors;
}

const dml_st_tensor *dml_safetensors_get(const dml_safetensors *st, int i) {
  return i >= 0 && i < st->ntensors ? &st->tensors[i] : NULL;
}

const dml_st_tensor *dml_safetensors_find(const dml_safetensors *st, const char *name) {
  for (int i = 0; i < st->ntensors; i++)
    if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
  return NULL;
}

const char *dml_safetensors_meta(const dml_safetensors *st, const char *key) {
  for (int i = 0; i < st->nmeta; i++)
    if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
  return NULL;
}

int dml_safetensors_meta_count(const dml_safetensors *st) {
  return st->nmeta;
}

const dml_st_meta *dml_safetensors_meta_get(const dml_safetensors *st, int i) {
  return i >= 0 && i < st->nmeta ? &st->meta[i] : NULL;
}
