/* The wire format of distml's TCP connections: frame headers and the handshake and store
 * payloads, encoded and decoded as pure functions over byte buffers (so that fuzz/fuzz_frame.c
 * can hammer them), plus the HMAC helpers of the authentication handshake. No sockets here. */
#include "comm/internal.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

static void put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get_u32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static int why_set(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int why_set(char *why, size_t why_len, const char *fmt, ...) {
  if (why != NULL && why_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
  }
  return DML_EPROTO;
}

void dml__frame_encode(uint8_t *out, int kind, uint32_t tag, uint32_t seq, uint64_t length) {
  put_u32(out, DML__FRAME_MAGIC);
  out[4] = DML__FRAME_VERSION;
  out[5] = (uint8_t)kind;
  put_u16(out + 6, 0);
  put_u32(out + 8, tag);
  put_u32(out + 12, seq);
  put_u64(out + 16, length);
}

int dml__frame_decode(const uint8_t *buf, size_t n, uint64_t max_data_bytes, dml__frame *f,
                      char *why, size_t why_len) {
  if (n < DML__FRAME_HDR) return DML_EAGAIN;
  uint32_t magic = get_u32(buf);
  if (magic != DML__FRAME_MAGIC)
    return why_set(why, why_len, "bad frame magic 0x%08x (expected 0x%08x, \"DMLF\")",
                   (unsigned)magic, (unsigned)DML__FRAME_MAGIC);
  if (buf[4] != DML__FRAME_VERSION)
    return why_set(why, why_len, "unsupported frame version %u (this build speaks %d)", buf[4],
                   DML__FRAME_VERSION);
  int kind = buf[5];
  if (kind < DML__F_DATA || kind > DML__F_KIND_MAX)
    return why_set(why, why_len, "unknown frame kind %d", kind);
  if (get_u16(buf + 6) != 0)
    return why_set(why, why_len, "nonzero frame flags 0x%04x", get_u16(buf + 6));
  uint64_t len = get_u64(buf + 16);
  uint64_t max = kind == DML__F_DATA ? max_data_bytes : DML__CTRL_MAX;
  if (len > max)
    return why_set(why, why_len, "frame length %llu exceeds the maximum %llu for kind %d",
                   (unsigned long long)len, (unsigned long long)max, kind);
  f->kind = kind;
  f->tag = get_u32(buf + 8);
  f->seq = get_u32(buf + 12);
  f->length = len;
  return 0;
}

int dml__challenge_decode(const uint8_t *p, size_t n, dml__challenge *out, char *why,
                          size_t why_len) {
  if (n != 1 + DML__NONCE)
    return why_set(why, why_len, "CHALLENGE of %zu bytes (expected %d)", n, 1 + DML__NONCE);
  if (p[0] > 1) return why_set(why, why_len, "CHALLENGE auth flag %u (expected 0 or 1)", p[0]);
  out->auth_required = p[0];
  memcpy(out->nonce, p + 1, DML__NONCE);
  return 0;
}

size_t dml__challenge_encode(uint8_t *out, const dml__challenge *c) {
  out[0] = (uint8_t)(c->auth_required ? 1 : 0);
  memcpy(out + 1, c->nonce, DML__NONCE);
  return 1 + DML__NONCE;
}

int dml__auth_decode(const uint8_t *p, size_t n, dml__auth *out, char *why, size_t why_len) {
  if (n != 1 + DML__NONCE + DML__MAC)
    return why_set(why, why_len, "AUTH of %zu bytes (expected %d)", n, 1 + DML__NONCE + DML__MAC);
  if (p[0] > 1) return why_set(why, why_len, "AUTH token flag %u (expected 0 or 1)", p[0]);
  out->has_token = p[0];
  memcpy(out->nonce, p + 1, DML__NONCE);
  memcpy(out->mac, p + 1 + DML__NONCE, DML__MAC);
  return 0;
}

size_t dml__auth_encode(uint8_t *out, const dml__auth *a) {
  out[0] = (uint8_t)(a->has_token ? 1 : 0);
  memcpy(out + 1, a->nonce, DML__NONCE);
  memcpy(out + 1 + DML__NONCE, a->mac, DML__MAC);
  return 1 + DML__NONCE + DML__MAC;
}

int dml__hello_decode(const uint8_t *p, size_t n, dml__hello *out, char *why, size_t why_len) {
  if (n != 16) return why_set(why, why_len, "HELLO of %zu bytes (expected 16)", n);
  out->rank = get_u32(p);
  out->world_size = get_u32(p + 4);
  out->job = get_u64(p + 8);
  if (out->world_size == 0 || out->rank >= out->world_size)
    return why_set(why, why_len, "HELLO with rank %u of world size %u", (unsigned)out->rank,
                   (unsigned)out->world_size);
  return 0;
}

int dml__cma_decode(const uint8_t *p, size_t n, uint64_t max_bytes, uint64_t *addr, uint64_t *len,
                    char *why, size_t why_len) {
  if (n != 16) return why_set(why, why_len, "CMA frame of %zu bytes (expected 16)", n);
  *addr = get_u64(p);
  *len = get_u64(p + 8);
  if (*len > max_bytes)
    return why_set(why, why_len, "CMA message of %llu bytes exceeds the maximum %llu",
                   (unsigned long long)*len, (unsigned long long)max_bytes);
  if (*len > 0 && (*addr == 0 || *addr + *len < *addr))
    return why_set(why, why_len, "CMA message at a bad address (0x%llx, %llu bytes)",
                   (unsigned long long)*addr, (unsigned long long)*len);
  return 0;
}

size_t dml__cma_encode(uint8_t *out, uint64_t addr, uint64_t len) {
  put_u64(out, addr);
  put_u64(out + 8, len);
  return 16;
}

size_t dml__hello_encode(uint8_t *out, const dml__hello *h) {
  put_u32(out, h->rank);
  put_u32(out + 4, h->world_size);
  put_u64(out + 8, h->job);
  return 16;
}

int dml__kv_decode(const uint8_t *p, size_t n, int with_value, const char **key, size_t *key_len,
                   const uint8_t **value, size_t *value_len, char *why, size_t why_len) {
  if (n < 2) return why_set(why, why_len, "store message of %zu bytes (too short)", n);
  size_t kl = get_u16(p);
  if (kl == 0 || kl > 255)
    return why_set(why, why_len, "store key length %zu (expected 1..255)", kl);
  if (kl > n - 2)
    return why_set(why, why_len, "store key length %zu beyond the message (%zu bytes)", kl, n);
  for (size_t i = 0; i < kl; i++)
    if (p[2 + i] < 0x21 || p[2 + i] > 0x7e)
      return why_set(why, why_len, "store key byte %zu is not printable (0x%02x)", i, p[2 + i]);
  if (!with_value && n != 2 + kl)
    return why_set(why, why_len, "store GET with %zu trailing bytes", n - 2 - kl);
  *key = (const char *)(p + 2);
  *key_len = kl;
  if (value != NULL) *value = with_value ? p + 2 + kl : NULL;
  if (value_len != NULL) *value_len = with_value ? n - 2 - kl : 0;
  return 0;
}

size_t dml__kv_encode(uint8_t *out, const char *key, const void *value, size_t value_len) {
  size_t kl = strlen(key);
  put_u16(out, (uint16_t)kl);
  memcpy(out + 2, key, kl);
  if (value_len > 0) memcpy(out + 2 + kl, value, value_len);
  return 2 + kl + value_len;
}

void dml__auth_mac(uint8_t out[DML__MAC], const char *token, const char *label, const uint8_t *a,
                   const uint8_t *b) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, (const unsigned char *)token, strlen(token));
  crypto_auth_hmacsha256_update(&st, (const unsigned char *)label, strlen(label));
  crypto_auth_hmacsha256_update(&st, a, DML__NONCE);
  crypto_auth_hmacsha256_update(&st, b, DML__NONCE);
  crypto_auth_hmacsha256_final(&st, out);
  sodium_memzero(&st, sizeof(st));
}

int dml__mac_equal(const uint8_t *a, const uint8_t *b) {
  return sodium_memcmp(a, b, DML__MAC) == 0;
}

void dml__random_bytes(void *buf, size_t n) {
  /* sodium_init is idempotent and thread-safe; its failure leaves randombytes on /dev/urandom. */
  if (sodium_init() < 0) {
    /* libsodium could not initialise; randombytes_buf still reads the system generator */
  }
  randombytes_buf(buf, n);
}
