/* libFuzzer target for the IDX reader (dml_parse_idx_mem), plain and gzipped. The first two input
 * bytes (little-endian) say where the images file ends and the labels file begins; the third byte
 * picks a class count. A successful parse must give pixels in [0,1] and labels in range. */
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
  if (size < 3) return 0;
  size_t rest = size - 3;
  size_t split = ((size_t)data[0] | ((size_t)data[1] << 8)) % (rest + 1);
  dml_data_opts o;
  dml_data_opts_init(&o);
  o.num_classes = data[2] < 128 ? 0 : data[2] - 126;
  const uint8_t *img = data + 3, *lab = data + 3 + split;
  dml_dataset ds;
  dml_err err;
  if (dml_parse_idx_mem(img, split, "fuzz-images", lab, rest - split, "fuzz-labels", &o, &ds,
                        &err) != 0) {
    CHECK(err.code < 0 &&
          (strstr(err.msg, "fuzz-images") != NULL || strstr(err.msg, "fuzz-labels") != NULL));
    CHECK(ds.n == 0 && ds.x == NULL && ds.y == NULL);
    return 0;
  }
  CHECK(ds.n > 0 && ds.dim > 0 && ds.x != NULL && ds.num_classes >= 2);
  for (int i = 0; i < ds.n; i++) CHECK(ds.y[i] >= 0 && ds.y[i] < ds.num_classes);
  for (size_t i = 0; i < (size_t)ds.n * (size_t)ds.dim; i++)
    CHECK(ds.x[i] >= 0.0f && ds.x[i] <= 1.0f);
  dml_dataset_free(&ds);
  return 0;
}
