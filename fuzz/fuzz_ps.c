/* libFuzzer target for the parameter server's frame decoder (src/ps/proto.c): any byte string must
 * decode or be rejected with an error, without crashing, over-reading or over-allocating; a frame
 * that decodes must re-encode to the same bytes. Not a test of the server's state machine. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ps/ps_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dml__ps_msg m;
  dml_err err;
  if (dml__ps_decode(data, size, "fuzz peer", &m, &err) == 0) {
    size_t bytes = dml__ps_frame_bytes(m.nkeys, m.nvals);
    if (bytes != size) abort();
    unsigned char *again = malloc(bytes);
    if (again != NULL) {
      dml__ps_encode(again, &m, m.keys, m.vals);
      if (memcmp(again, data, size) != 0) abort();
      free(again);
    }
    dml__ps_msg_free(&m);
  }
  return 0;
}
