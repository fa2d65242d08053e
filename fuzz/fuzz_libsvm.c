/* libFuzzer target for the LIBSVM reader (dml_parse_libsvm_mem). The first input byte picks the
 * options (declared feature count, class count); the rest is the file. A successful parse must
 * give a well-formed CSR data set that survives a write/read round trip unchanged. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distml/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                     \
  do {                                               \
    if (!(c)) {                                      \
      fprintf(stderr, "invariant failed: %s\n", #c); \
      __builtin_trap();                              \
    }                                                \
  } while (0)

static void check_csr(const dml_dataset *ds) {
  CHECK(ds->n > 0 && ds->dim > 0 && ds->num_classes >= 2 && ds->indptr[0] == 0);
  for (int i = 0; i < ds->n; i++) {
    CHECK(ds->y[i] >= 0 && ds->y[i] < ds->num_classes);
    CHECK(ds->indptr[i + 1] >= ds->indptr[i]);
    for (uint64_t k = ds->indptr[i]; k < ds->indptr[i + 1]; k++) {
      CHECK(ds->indices[k] < (uint32_t)ds->dim);
      CHECK(k == ds->indptr[i] || ds->indices[k] > ds->indices[k - 1]);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_features = (data[0] & 0x0f) == 0 ? 0 : (data[0] & 0x0f) * 3;
  o.num_classes = (data[0] >> 4) == 0 ? 0 : (data[0] >> 4) + 1;
  dml_dataset ds;
  dml_err err;
  if (dml_parse_libsvm_mem((const char *)data + 1, size - 1, "fuzz.svm", &o, &ds, &err) != 0) {
    CHECK(err.code < 0 && strstr(err.msg, "fuzz.svm") != NULL);
    CHECK(ds.n == 0 && ds.y == NULL && ds.indptr == NULL);
    return 0;
  }
  check_csr(&ds);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  CHECK(f != NULL);
  CHECK(dml_libsvm_write(f, "mem", &ds, &err) == 0);
  fclose(f);
  dml_dataset back;
  o.num_features = ds.dim;
  o.num_classes = ds.num_classes;
  CHECK(dml_parse_libsvm_mem(text, len, "back.svm", &o, &back, &err) == 0);
  CHECK(back.n == ds.n && back.dim == ds.dim);
  CHECK(memcmp(back.indptr, ds.indptr, (size_t)(ds.n + 1) * sizeof(uint64_t)) == 0);
  CHECK(memcmp(back.indices, ds.indices, ds.indptr[ds.n] * sizeof(uint32_t)) == 0);
  CHECK(memcmp(back.values, ds.values, ds.indptr[ds.n] * sizeof(float)) == 0 ||
        ds.indptr[ds.n] == 0);
  /* labels: -1/+1 files come back as 0/1, which is what ds already holds */
  CHECK(memcmp(back.y, ds.y, (size_t)ds.n * sizeof(int32_t)) == 0);
  free(text);
  dml_dataset_free(&back);
  /* gather a few rows */
  uint32_t rows[4] = {0, (uint32_t)ds.n - 1, (uint32_t)ds.n / 2, 0};
  dml_batch_buf buf = {0};
  dml_batch b;
  CHECK(dml_dataset_gather(&ds, rows, 4, &buf, &b, &err) == 0);
  CHECK(b.n == 4 && b.indptr[4] == b.indptr[3] + (ds.indptr[1] - ds.indptr[0]));
  dml_batch_buf_free(&buf);
  dml_dataset_free(&ds);
  return 0;
}
