/* libFuzzer target for the safetensors reader and the model loader on top of it: any input must
 * be rejected cleanly or give tensors whose data lies inside the input. */
#include "distml/ml.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dml_safetensors *st = NULL;
  dml_err err = {0};
  if (dml_safetensors_read_mem(data, size, "fuzz.safetensors", &st, &err) != 0) {
    if (strstr(err.msg, "fuzz.safetensors") == NULL) __builtin_trap(); /* must name the file */
    return 0;
  }
  float sum = 0;
  for (int i = 0; i < dml_safetensors_count(st); i++) {
    const dml_st_tensor *t = dml_safetensors_get(st, i);
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    for (uint64_t k = 0; k < n; k++) sum += t->data[k]; /* ASan checks every byte is in bounds */
  }
  (void)sum;
  dml_model *m = NULL;
  if (dml_model_from_safetensors(st, 4, &m, &err) == 0) dml_model_free(m);
  dml_safetensors_free(st);
  return 0;
}
