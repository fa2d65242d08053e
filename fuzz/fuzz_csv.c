/* libFuzzer target for the CSV reader (dml_parse_csv_mem). The first input byte picks the label
 * column (-4..11) and the header mode; the rest is the file. A successful parse must give a dense
 * data set with finite values and labels in range. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.csv_label_col = (data[0] & 0x0f) - 4;
  o.csv_header = (dml_csv_header)((data[0] >> 4) % 3);
  dml_dataset ds;
  dml_err err;
  if (dml_parse_csv_mem((const char *)data + 1, size - 1, "fuzz.csv", &o, &ds, &err) != 0) {
    CHECK(err.code < 0 && strstr(err.msg, "fuzz.csv") != NULL);
    CHECK(ds.n == 0 && ds.x == NULL && ds.y == NULL);
    return 0;
  }
  CHECK(ds.n > 0 && ds.dim > 0 && ds.x != NULL && ds.indptr == NULL && ds.num_classes >= 2);
  for (int i = 0; i < ds.n; i++) CHECK(ds.y[i] >= 0 && ds.y[i] < ds.num_classes);
  for (size_t i = 0; i < (size_t)ds.n * (size_t)ds.dim; i++) CHECK(isfinite(ds.x[i]));
  uint32_t rows[3] = {(uint32_t)ds.n - 1, 0, (uint32_t)ds.n / 2};
  dml_batch_buf buf = {0};
  dml_batch b;
  CHECK(dml_dataset_gather(&ds, rows, 3, &buf, &b, &err) == 0);
  CHECK(memcmp(b.x, ds.x + (size_t)(ds.n - 1) * (size_t)ds.dim, (size_t)ds.dim * sizeof(float)) ==
        0);
  dml_batch_buf_free(&buf);
  dml_dataset_free(&ds);
  return 0;
}
