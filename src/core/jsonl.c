/* JSON-lines writer: builds one object in memory and writes it as one line, so a reader never
 * sees half an object. Used for --metrics files and the --json summaries. */
#include "core/internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static void put(dml_jsonl *j, const char *s, size_t n) {
  if (j->buf == NULL && j->cap == (size_t)-1) return; /* earlier allocation failure */
  if (j->len + n + 1 > j->cap) {
    size_t cap = j->cap ? j->cap : 256;
    while (cap < j->len + n + 1) cap *= 2;
    char *b = dml__realloc(j->buf, cap);
    if (b == NULL) {
      dml__free(j->buf);
      j->buf = NULL;
      j->cap = (size_t)-1;
      return;
    }
    j->buf = b;
    j->cap = cap;
  }
  memcpy(j->buf + j->len, s, n);
  j->len += n;
  j->buf[j->len] = '\0';
}

static void puts_(dml_jsonl *j, const char *s) {
  put(j, s, strlen(s));
}

static void put_string(dml_jsonl *j, const char *s) {
  put(j, "\"", 1);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    char esc[8];
    if (*c == '"' || *c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*c;
      put(j, esc, 2);
    } else if (*c < 0x20) {
      snprintf(esc, sizeof(esc), "\\u%04x", *c);
      put(j, esc, 6);
    } else {
      put(j, (const char *)c, 1);
    }
  }
  put(j, "\"", 1);
}

static void key(dml_jsonl *j, const char *k) {
  if (j->nfields++ > 0) put(j, ",", 1);
  put_string(j, k);
  put(j, ":", 1);
}

int dml_jsonl_open(dml_jsonl *j, const char *path, dml_err *err) {
  memset(j, 0, sizeof(*j));
  if (strcmp(path, "-") == 0) {
    j->f = stdout;
    return 0;
  }
  j->f = fopen(path, "a");
  if (j->f == NULL)
    return dml_err_set(err, DML_EIO, "%s: cannot open for writing: %s", path, strerror(errno));
  j->owned = 1;
  return 0;
}

void dml_jsonl_init_stream(dml_jsonl *j, FILE *f) {
  memset(j, 0, sizeof(*j));
  j->f = f;
}

void dml_jsonl_begin(dml_jsonl *j) {
  if (j->cap == (size_t)-1) j->cap = 0;
  j->len = 0;
  j->nfields = 0;
  put(j, "{", 1);
}

void dml_jsonl_add_int(dml_jsonl *j, const char *k, int64_t v) {
  char num[32];
  snprintf(num, sizeof(num), "%lld", (long long)v);
  key(j, k);
  puts_(j, num);
}

void dml_jsonl_add_double(dml_jsonl *j, const char *k, double v) {
  char num[40];
  key(j, k);
  if (!isfinite(v)) {
    puts_(j, "null");
    return;
  }
  snprintf(num, sizeof(num), "%.9g", v);
  puts_(j, num);
}

void dml_jsonl_add_str(dml_jsonl *j, const char *k, const char *v) {
  key(j, k);
  put_string(j, v);
}

void dml_jsonl_add_bool(dml_jsonl *j, const char *k, int v) {
  key(j, k);
  puts_(j, v ? "true" : "false");
}

void dml_jsonl_add_raw(dml_jsonl *j, const char *k, const char *json) {
  key(j, k);
  puts_(j, json);
}

int dml_jsonl_end(dml_jsonl *j) {
  put(j, "}\n", 2);
  if (j->buf == NULL) return DML_ENOMEM;
  if (j->f == NULL) return DML_EIO;
  if (fwrite(j->buf, 1, j->len, j->f) != j->len || fflush(j->f) != 0) return DML_EIO;
  return 0;
}

void dml_jsonl_close(dml_jsonl *j) {
  if (j->owned && j->f != NULL) fclose(j->f);
  if (j->cap != (size_t)-1) dml__free(j->buf);
  memset(j, 0, sizeof(*j));
}
