/* libFuzzer target for the decoders of distml's wire format (src/comm/frame.c): frame headers and
 * the handshake and store payloads that a hostile client can send before authentication. The
 * input is read as a stream of frames, as the coordinator would read it; every decoder must
 * reject bad input with a reason and never read outside the buffer or allocate. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "comm/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The first byte picks the data-frame limit, so both the accept and the reject side of the
   * length check are reached. */
  if (size < 1) return 0;
  uint64_t max_data = (uint64_t)1 << (data[0] % 40);
  data++, size--;
  while (size > 0) {
    dml__frame f;
    char why[200];
    int rc = dml__frame_decode(data, size, max_data, &f, why, sizeof(why));
    if (rc == DML_EAGAIN) break;
    if (rc != 0) {
      if (why[0] == '\0') __builtin_trap(); /* a rejection must say why */
      break;
    }
    if (f.kind == DML__F_DATA ? f.length > max_data : f.length > DML__CTRL_MAX) __builtin_trap();
    data += DML__FRAME_HDR, size -= DML__FRAME_HDR;
    size_t n = f.length < size ? (size_t)f.length : size;
    const uint8_t *p = data;
    switch (f.kind) {
      case DML__F_CHALLENGE: {
        dml__challenge ch;
        if (dml__challenge_decode(p, n, &ch, why, sizeof(why)) == 0) {
          uint8_t out[64];
          if (dml__challenge_encode(out, &ch) != n || memcmp(out, p, n) != 0) __builtin_trap();
        }
        break;
      }
      case DML__F_AUTH: {
        dml__auth a;
        if (dml__auth_decode(p, n, &a, why, sizeof(why)) == 0) {
          uint8_t out[128];
          if (dml__auth_encode(out, &a) != n || memcmp(out, p, n) != 0) __builtin_trap();
        }
        break;
      }
      case DML__F_CMA: {
        uint64_t addr, len;
        if (dml__cma_decode(p, n, max_data, &addr, &len, why, sizeof(why)) == 0) {
          uint8_t out[16];
          if (len > max_data || dml__cma_encode(out, addr, len) != n || memcmp(out, p, n) != 0)
            __builtin_trap();
        } else if (why[0] == '\0') {
          __builtin_trap();
        }
        break;
      }
      case DML__F_HELLO: {
        dml__hello h;
        if (dml__hello_decode(p, n, &h, why, sizeof(why)) == 0 && h.rank >= h.world_size)
          __builtin_trap();
        break;
      }
      case DML__F_SET:
      case DML__F_GET:
      case DML__F_VAL: {
        const char *key;
        size_t kl, vn;
        const uint8_t *val;
        if (dml__kv_decode(p, n, f.kind != DML__F_GET, &key, &kl, &val, &vn, why, sizeof(why)) ==
            0) {
          if (kl == 0 || kl > 255 || (const uint8_t *)key < p ||
              (const uint8_t *)key + kl + vn > p + n)
            __builtin_trap();
          char k[256];
          memcpy(k, key, kl);
          k[kl] = 0;
          uint8_t out[DML__CTRL_MAX + 300];
          if (n <= DML__CTRL_MAX && dml__kv_encode(out, k, val, vn) != n) __builtin_trap();
        }
        break;
      }
      default: break;
    }
    data += n, size -= n;
  }
  return 0;
}
