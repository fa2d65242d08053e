/* libFuzzer target for the parameter server's frame decoder (src/ps/proto.c): any byte string must
 * decode or be rejected with an error, without crashing, over-reading or over-allocating; a frame
 * that decodes must re-encode to the same bytes, and the in-place decoder must agree with the
 * copying one (same verdict, same keys and values; a BODY frame carries none and is 64 bytes, a
 * DIRECT request none and is 80). Not a test of the server's state machine. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ps/ps_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  dml__ps_msg m, v;
  dml_err err;
  int rc = dml__ps_decode(data, size, "fuzz peer", &m, &err);
  /* an 8-byte aligned copy, so the view decoder really reads in place */
  uint64_t *aligned = malloc((size / 8 + 1) * 8);
  if (aligned == NULL) {
    if (rc == 0) dml__ps_msg_free(&m);
    return 0;
  }
  if (size) memcpy(aligned, data, size);
  int vrc = dml__ps_decode_view(aligned, size, "fuzz peer", &v, &err);
  if ((rc == 0) != (vrc == 0)) abort();
  if (rc == 0) {
    /* a BODY frame is the header alone: it announces values that travel as their own message;
     * a DIRECT request is the header and two addresses (its values stay with the worker) */
    int body = (m.flags & (DML__PS_FLAG_BODY | DML__PS_FLAG_DIRECT)) != 0;
    int direct_req = (m.flags & DML__PS_FLAG_DIRECT) && m.command != DML__PS_REPLY;
    size_t bytes = direct_req ? DML__PS_DIRECT_BYTES
                   : body     ? DML__PS_HEADER_BYTES
                              : dml__ps_frame_bytes(m.nkeys, m.nvals);
    if (v.vals_addr != m.vals_addr || v.out_addr != m.out_addr) abort();
    if (bytes != size) abort();
    if (v.nkeys != m.nkeys || v.nvals != m.nvals) abort();
    if (body && (m.vals != NULL || v.vals != NULL || m.nkeys != 0)) abort();
    if (m.nkeys && memcmp(v.keys, m.keys, (size_t)m.nkeys * 8) != 0) abort();
    if (!body && m.nvals && memcmp(v.vals, m.vals, (size_t)m.nvals * 4) != 0) abort();
    unsigned char *again = malloc(bytes);
    if (again != NULL) {
      dml__ps_encode(again, &m, m.keys, m.vals);
      if (memcmp(again, data, size) != 0) abort();
      free(again);
    }
    dml__ps_msg_free(&v);
    dml__ps_msg_free(&m);
  }
  free(aligned);
  return 0;
}
