/* The parameter server's wire frame: a fixed 64-byte little-endian header followed by strictly
 * increasing u64 keys and f32 values (docs/ps.md), with an encoder and a pure decoder over a byte
 * buffer, and the maps from keys to servers (hashed sparse keys, the dense layout). It does no
 * I/O and knows nothing of servers' state, clocks or optimizers. */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "ps/ps_internal.h"

static void put_u16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
}
static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint16_t get_u16(const unsigned char *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get_u32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

/* On a little-endian host the wire layout of keys and values is the memory layout: bulk copies. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_LE 1
#else
#define HOST_LE 0
#endif

unsigned dml__ps_header_flags(const void *frame) {
  return get_u16((const unsigned char *)frame + 14);
}

size_t dml__ps_frame_bytes(uint64_t nkeys, uint64_t nvals) {
  return DML__PS_HEADER_BYTES + (size_t)nkeys * 8 + (size_t)nvals * 4;
}

/* Header layout (offsets): 0 magic u32, 4 version u16, 6 command u16, 8 sender u32,
 * 12 value type u16, 14 flags u16 (bit 0 dense, bit 1 body, bit 2 reply body, bit 3 direct,
 * others 0),
 * 16 timestamp u64, 24 clock u64, 32 key_lo u64, 40 key_hi u64, 48 nkeys u64, 56 nvals u64. */
void dml__ps_encode(void *buf, const dml__ps_msg *m, const uint64_t *keys, const float *vals) {
  unsigned char *p = buf;
  put_u32(p, DML__PS_MAGIC);
  put_u16(p + 4, DML__PS_VERSION);
  put_u16(p + 6, (uint16_t)m->command);
  put_u32(p + 8, m->sender);
  put_u16(p + 12, (uint16_t)m->value_type);
  put_u16(p + 14, (uint16_t)m->flags);
  put_u64(p + 16, m->timestamp);
  put_u64(p + 24, m->clock);
  put_u64(p + 32, m->key_lo);
  put_u64(p + 40, m->key_hi);
  put_u64(p + 48, m->nkeys);
  put_u64(p + 56, m->nvals);
  if ((m->flags & DML__PS_FLAG_DIRECT) && m->command != DML__PS_REPLY) {
    put_u64(p + DML__PS_HEADER_BYTES, m->vals_addr);
    put_u64(p + DML__PS_HEADER_BYTES + 8, m->out_addr);
    return;
  }
  /* a BODY frame announces its values; they travel as their own message */
  uint64_t nv = (m->flags & DML__PS_FLAG_BODY) ? 0 : m->nvals;
  unsigned char *k = p + DML__PS_HEADER_BYTES;
  unsigned char *v = k + 8 * m->nkeys;
  if (HOST_LE) {
    if (m->nkeys) memcpy(k, keys, (size_t)m->nkeys * 8);
    if (nv) memcpy(v, vals, (size_t)nv * 4);
    return;
  }
  for (uint64_t i = 0; i < m->nkeys; i++) put_u64(k + 8 * i, keys[i]);
  for (uint64_t i = 0; i < nv; i++) {
    uint32_t bits;
    memcpy(&bits, &vals[i], 4);
    put_u32(v + 4 * i, bits);
  }
}

void dml__ps_msg_free(dml__ps_msg *m) {
  if (m == NULL) return;
  if (!m->borrowed) {
    dml__free(m->keys);
    dml__free(m->vals);
  }
  m->keys = NULL;
  m->vals = NULL;
  m->borrowed = 0;
}

int dml__ps_msg_own(dml__ps_msg *m) {
  if (!m->borrowed) return 0;
  uint64_t *k = m->nkeys ? dml__malloc((size_t)m->nkeys * 8) : NULL;
  float *v = m->nvals ? dml__malloc((size_t)m->nvals * 4) : NULL;
  if ((m->nkeys && k == NULL) || (m->nvals && v == NULL)) {
    dml__free(k);
    dml__free(v);
    return DML_ENOMEM;
  }
  if (k) memcpy(k, m->keys, (size_t)m->nkeys * 8);
  if (v) memcpy(v, m->vals, (size_t)m->nvals * 4);
  m->keys = k;
  m->vals = v;
  m->borrowed = 0;
  return 0;
}

static int decode(const void *buf, size_t len, const char *peer, dml__ps_msg *m, dml_err *err,
                  int view);

int dml__ps_decode(const void *buf, size_t len, const char *peer, dml__ps_msg *m, dml_err *err) {
  return decode(buf, len, peer, m, err, 0);
}

int dml__ps_decode_view(const void *buf, size_t len, const char *peer, dml__ps_msg *m,
                        dml_err *err) {
  return decode(buf, len, peer, m, err, 1);
}

static int decode(const void *buf, size_t len, const char *peer, dml__ps_msg *m, dml_err *err,
                  int view) {
  const unsigned char *p = buf;
  memset(m, 0, sizeof(*m));
  if (peer == NULL) peer = "peer";
  if (len < DML__PS_HEADER_BYTES)
    return dml_err_set(err, DML_EPROTO,
                       "ps: %s sent a %zu-byte frame, shorter than the %d-byte header", peer, len,
                       DML__PS_HEADER_BYTES);
  uint32_t magic = get_u32(p);
  if (magic != DML__PS_MAGIC)
    return dml_err_set(err, DML_EPROTO, "ps: %s sent bad magic 0x%08x at byte 0 (want 0x%08x)",
                       peer, magic, DML__PS_MAGIC);
  uint16_t version = get_u16(p + 4);
  if (version != DML__PS_VERSION)
    return dml_err_set(err, DML_EPROTO, "ps: %s speaks version %u at byte 4 (this build speaks %d)",
                       peer, version, DML__PS_VERSION);
  m->command = get_u16(p + 6);
  if (m->command < DML__PS_PUSH || m->command > DML__PS_REJOIN)
    return dml_err_set(err, DML_EPROTO, "ps: %s sent unknown command %u at byte 6", peer,
                       m->command);
  m->sender = get_u32(p + 8);
  m->value_type = get_u16(p + 12);
  m->flags = get_u16(p + 14);
  if (m->flags &
      ~(DML__PS_FLAG_DENSE | DML__PS_FLAG_BODY | DML__PS_FLAG_REPLY_BODY | DML__PS_FLAG_DIRECT))
    return dml_err_set(err, DML_EPROTO, "ps: %s sent unknown flags 0x%x at byte 14", peer,
                       m->flags);
  /* DIRECT: a dense request of the header and two addresses (checked here; the rest of the frame
   * is checked as a BODY one), or a reply of the header alone. */
  if (m->flags & DML__PS_FLAG_DIRECT) {
    int pushes = m->command == DML__PS_PUSH || m->command == DML__PS_PUSHPULL;
    int pulls = m->command == DML__PS_PULL || m->command == DML__PS_PUSHPULL;
    unsigned want = DML__PS_FLAG_DENSE | DML__PS_FLAG_DIRECT | (pushes ? DML__PS_FLAG_BODY : 0) |
                    (pulls ? DML__PS_FLAG_REPLY_BODY : 0);
    size_t want_len = pushes || pulls ? DML__PS_DIRECT_BYTES : DML__PS_HEADER_BYTES;
    if ((!pushes && !pulls && m->command != DML__PS_REPLY) || m->flags != want || len != want_len)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s sent flags 0x%x at byte 14 with command %u in a %zu-byte frame "
                         "(a direct request is a dense push or pull of %d bytes with its body "
                         "flags, a direct reply a dense header alone)",
                         peer, m->flags, m->command, len, DML__PS_DIRECT_BYTES);
    if (pushes || pulls) {
      m->vals_addr = get_u64(p + DML__PS_HEADER_BYTES);
      m->out_addr = get_u64(p + DML__PS_HEADER_BYTES + 8);
      if ((m->vals_addr != 0) != pushes || (m->out_addr != 0) != pulls)
        return dml_err_set(err, DML_EPROTO,
                           "ps: %s sent direct addresses 0x%llx and 0x%llx at byte 64 with command "
                           "%u (a push needs the first, a pull the second, nothing else)",
                           peer, (unsigned long long)m->vals_addr, (unsigned long long)m->out_addr,
                           m->command);
      len = DML__PS_HEADER_BYTES;
    }
  }
  /* BODY: a dense push or reply whose values come as their own message (the frame is the header
   * alone; the count it announces is checked against the dense range below). REPLY_BODY: a dense
   * pull asking for its reply's values so. */
  int body_vals = (m->flags & DML__PS_FLAG_BODY) != 0;
  int with_vals =
      m->command == DML__PS_REPLY || m->command == DML__PS_PUSH || m->command == DML__PS_PUSHPULL;
  int pulls = m->command == DML__PS_PULL || m->command == DML__PS_PUSHPULL;
  if ((m->flags & (DML__PS_FLAG_BODY | DML__PS_FLAG_REPLY_BODY)) &&
      (!(m->flags & DML__PS_FLAG_DENSE) || (body_vals && !with_vals) ||
       (body_vals && len != DML__PS_HEADER_BYTES) ||
       ((m->flags & DML__PS_FLAG_REPLY_BODY) && !pulls)))
    return dml_err_set(err, DML_EPROTO,
                       "ps: %s sent flags 0x%x at byte 14 with command %u in a %zu-byte frame "
                       "(a body goes with a dense push or reply of 64 bytes, a reply body with a "
                       "dense pull)",
                       peer, m->flags, m->command, len);
  m->timestamp = get_u64(p + 16);
  m->clock = get_u64(p + 24);
  if (m->clock == DML__PS_CLOCK_FINAL &&
      (m->command == DML__PS_PUSH || m->command == DML__PS_PUSHPULL))
    return dml_err_set(err, DML_EPROTO,
                       "ps: %s sent a push with the final clock at byte 24 (only a final pull has "
                       "it)",
                       peer);
  m->key_lo = get_u64(p + 32);
  m->key_hi = get_u64(p + 40);
  m->nkeys = get_u64(p + 48);
  m->nvals = get_u64(p + 56);
  size_t body = len - DML__PS_HEADER_BYTES;
  /* A BODY frame's values are not in it: their count is checked against its dense range. */
  uint64_t announced = 0;
  if (body_vals) {
    announced = m->nvals;
    if (announced == 0 || announced > DML__PS_DENSE_MAX_PART || m->key_lo > m->key_hi ||
        m->key_hi - m->key_lo + 1 != announced || m->value_type != DML__PS_VT_F32)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s announced a body of %llu values (type %u) for [%llu, %llu]", peer,
                         (unsigned long long)announced, m->value_type,
                         (unsigned long long)m->key_lo, (unsigned long long)m->key_hi);
    m->nvals = 0;
    m->value_type = DML__PS_VT_NONE;
  }
  /* Counts are checked against the frame before anything is multiplied or allocated. */
  if (m->nkeys > body / 8 || m->nkeys > DML__PS_MAX_KEYS)
    return dml_err_set(
        err, DML_EPROTO,
        "ps: %s claims %llu keys at byte 48 but the %zu-byte frame holds at most %zu", peer,
        (unsigned long long)m->nkeys, len, body / 8);
  if (m->nvals > (body - m->nkeys * 8) / 4)
    return dml_err_set(err, DML_EPROTO,
                       "ps: %s claims %llu values at byte 56 but only %zu bytes follow the keys",
                       peer, (unsigned long long)m->nvals, (size_t)(body - m->nkeys * 8));
  if (m->nkeys * 8 + m->nvals * 4 != body)
    return dml_err_set(err, DML_EPROTO,
                       "ps: %s sent a %zu-byte frame; %llu keys and %llu values need %zu", peer,
                       len, (unsigned long long)m->nkeys, (unsigned long long)m->nvals,
                       dml__ps_frame_bytes(m->nkeys, m->nvals));
  if (m->value_type != (m->nvals ? DML__PS_VT_F32 : DML__PS_VT_NONE))
    return dml_err_set(err, DML_EPROTO, "ps: %s sent value type %u at byte 12 with %llu values",
                       peer, m->value_type, (unsigned long long)m->nvals);
  if (body_vals) { /* the frame is the header alone; the rules below apply to what it announces */
    m->nvals = announced;
    m->value_type = DML__PS_VT_F32;
  }
  int needs_vals = m->command == DML__PS_PUSH || m->command == DML__PS_PUSHPULL;
  int no_keys = m->command == DML__PS_CLOCK || m->command == DML__PS_BYE ||
                m->command == DML__PS_REFORM || m->command == DML__PS_REJOIN;
  if (m->flags & DML__PS_FLAG_DENSE) {
    /* a dense frame: no keys, a range [key_lo, key_hi] of at most DML__PS_DENSE_MAX_PART, below
     * DML__PS_DENSE_KEY_END */
    if (no_keys || m->nkeys != 0 || m->key_lo > m->key_hi ||
        m->key_hi - m->key_lo >= DML__PS_DENSE_MAX_PART || m->key_hi >= DML__PS_DENSE_KEY_END)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s sent a dense command %u with %llu keys over [%llu, %llu] (want no "
                         "keys, at most %llu in the range, below 2^62)",
                         peer, m->command, (unsigned long long)m->nkeys,
                         (unsigned long long)m->key_lo, (unsigned long long)m->key_hi,
                         (unsigned long long)DML__PS_DENSE_MAX_PART);
    uint64_t cnt = m->key_hi - m->key_lo + 1;
    /* a DIRECT request's values and output fit below 2^64 */
    if ((m->vals_addr && m->vals_addr > UINT64_MAX - 4 * cnt) ||
        (m->out_addr && m->out_addr > UINT64_MAX - 4 * cnt))
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s sent direct addresses 0x%llx and 0x%llx at byte 64 whose %llu "
                         "values run past 2^64",
                         peer, (unsigned long long)m->vals_addr, (unsigned long long)m->out_addr,
                         (unsigned long long)cnt);
    int ok = needs_vals                   ? m->nvals == cnt
             : m->command == DML__PS_PULL ? m->nvals == 0
                                          : (m->nvals == 0 || m->nvals == cnt);
    if (!ok)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s sent a dense command %u with %llu values for %llu keys", peer,
                         m->command, (unsigned long long)m->nvals, (unsigned long long)cnt);
  } else {
    if (m->nvals != 0 && m->nvals != m->nkeys)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s sent %llu values for %llu keys (want 0 or one per key)", peer,
                         (unsigned long long)m->nvals, (unsigned long long)m->nkeys);
    if ((needs_vals && m->nvals != m->nkeys) || (m->command == DML__PS_PULL && m->nvals != 0) ||
        (no_keys && m->nkeys != 0))
      return dml_err_set(err, DML_EPROTO, "ps: %s sent command %u with %llu keys and %llu values",
                         peer, m->command, (unsigned long long)m->nkeys,
                         (unsigned long long)m->nvals);
    if (m->nkeys > 0 && m->key_lo > m->key_hi)
      return dml_err_set(err, DML_EPROTO, "ps: %s sent an empty key range [%llu, %llu]", peer,
                         (unsigned long long)m->key_lo, (unsigned long long)m->key_hi);
  }
  const unsigned char *k = p + DML__PS_HEADER_BYTES;
  uint64_t prev = 0;
  for (uint64_t i = 0; i < m->nkeys; i++) {
    uint64_t key;
    if (HOST_LE)
      memcpy(&key, k + 8 * i, 8);
    else
      key = get_u64(k + 8 * i);
    if (key < m->key_lo || key > m->key_hi)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s sent key %llu (#%llu, byte %zu) outside its range [%llu, %llu]",
                         peer, (unsigned long long)key, (unsigned long long)i,
                         (size_t)(DML__PS_HEADER_BYTES + 8 * i), (unsigned long long)m->key_lo,
                         (unsigned long long)m->key_hi);
    if (i > 0 && key <= prev)
      return dml_err_set(err, DML_EPROTO,
                         "ps: %s sent key %llu (#%llu, byte %zu) not above the previous one", peer,
                         (unsigned long long)key, (unsigned long long)i,
                         (size_t)(DML__PS_HEADER_BYTES + 8 * i));
    prev = key;
  }
  const unsigned char *vp = k + 8 * m->nkeys;
  if (body_vals) { /* nothing to copy: the values come as their own message */
    m->nvals = announced;
    m->value_type = DML__PS_VT_F32;
    m->borrowed = 1; /* owns nothing: vals, once the body is in, belong to whoever received it */
    return 0;
  }
  if (view && HOST_LE && ((uintptr_t)k % 8) == 0 && ((uintptr_t)vp % 4) == 0) {
    m->keys = m->nkeys ? (uint64_t *)(void *)k : NULL;
    m->vals = m->nvals ? (float *)(void *)vp : NULL;
    m->borrowed = 1;
    return 0;
  }
  if (m->nkeys) {
    m->keys = dml__malloc((size_t)m->nkeys * 8);
    if (m->keys == NULL)
      return dml_err_set(err, DML_ENOMEM, "ps: no memory for %llu keys from %s",
                         (unsigned long long)m->nkeys, peer);
    if (HOST_LE)
      memcpy(m->keys, k, (size_t)m->nkeys * 8);
    else
      for (uint64_t i = 0; i < m->nkeys; i++) m->keys[i] = get_u64(k + 8 * i);
  }
  if (m->nvals) {
    m->vals = dml__malloc((size_t)m->nvals * 4);
    if (m->vals == NULL) {
      dml__ps_msg_free(m);
      return dml_err_set(err, DML_ENOMEM, "ps: no memory for %llu values from %s",
                         (unsigned long long)m->nvals, peer);
    }
    const unsigned char *v = k + 8 * m->nkeys;
    if (HOST_LE) memcpy(m->vals, v, (size_t)m->nvals * 4);
    for (uint64_t i = 0; !HOST_LE && i < m->nvals; i++) {
      uint32_t bits = get_u32(v + 4 * i);
      memcpy(&m->vals[i], &bits, 4);
    }
  }
  return 0;
}

static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

int dml__ps_owner(uint64_t key, int nservers) {
  if (nservers <= 1) return 0;
  return (int)((mix64(key) % DML__PS_VRANGES) % (uint64_t)nservers);
}

typedef struct dense_piece {
  uint64_t first_chunk, nchunks, keys;
} dense_piece;

static int piece_cmp(const void *a, const void *b) {
  const dense_piece *x = a, *y = b;
  if (x->keys != y->keys) return x->keys > y->keys ? -1 : 1; /* largest first */
  return x->first_chunk < y->first_chunk ? -1 : x->first_chunk > y->first_chunk;
}

void dml__ps_dense_layout_free(dml__ps_dense_layout *l) {
  if (l == NULL) return;
  dml__free(l->owner);
  dml__free(l->offset);
  dml__free(l->bytes);
  memset(l, 0, sizeof(*l));
}

int dml__ps_dense_layout_build(dml__ps_dense_layout *l, const uint64_t *sizes, int ntensors, int S,
                               uint64_t mirror_keys, dml_err *err) {
  memset(l, 0, sizeof(*l));
  l->S = S > 0 ? S : 1;
  l->ntensors = ntensors > 0 ? ntensors : 0;
  l->bytes = dml__calloc((size_t)l->S, sizeof(uint64_t));
  if (l->bytes == NULL) return dml_err_set(err, DML_ENOMEM, "ps: out of memory");
  if (l->ntensors == 0) return 0;
  uint64_t nchunks = 0, npieces = 0, total = 0;
  for (int t = 0; t < ntensors; t++) {
    if (sizes[t] == 0 || sizes[t] > ((uint64_t)1 << 40)) {
      dml__ps_dense_layout_free(l);
      return dml_err_set(err, DML_EINVAL, "ps: dense tensor %d has %llu keys (want 1..2^40)", t,
                         (unsigned long long)sizes[t]);
    }
    nchunks += (sizes[t] + DML__PS_DENSE_PART - 1) / DML__PS_DENSE_PART;
    if (sizes[t] > mirror_keys) total += sizes[t];
  }
  if (nchunks > ((uint64_t)1 << 26)) {
    dml__ps_dense_layout_free(l);
    return dml_err_set(err, DML_EINVAL, "ps: %llu dense chunks registered (max 2^26)",
                       (unsigned long long)nchunks);
  }
  /* chunks in a part at most: 4 MB, and an even share of the whole (one large tensor spreads) */
  uint64_t share = (total + (uint64_t)l->S - 1) / (uint64_t)l->S;
  uint64_t per_part =
      (DML__MIN(share, DML__PS_DENSE_MAX_PART) + DML__PS_DENSE_PART - 1) / DML__PS_DENSE_PART;
  if (per_part == 0) per_part = 1; /* every tensor mirrored: no piece */
  for (int t = 0; t < ntensors; t++) {
    uint64_t c = (sizes[t] + DML__PS_DENSE_PART - 1) / DML__PS_DENSE_PART;
    if (sizes[t] > mirror_keys) npieces += (c + per_part - 1) / per_part;
  }
  l->owner = dml__malloc((size_t)nchunks * sizeof(int));
  l->offset = dml__malloc((size_t)ntensors * sizeof(uint64_t));
  dense_piece *pc = dml__malloc((size_t)DML__MAX(npieces, 1) * sizeof(dense_piece));
  if (l->owner == NULL || l->offset == NULL || pc == NULL) {
    dml__free(pc);
    dml__ps_dense_layout_free(l);
    return dml_err_set(err, DML_ENOMEM, "ps: no memory for a layout of %llu dense chunks",
                       (unsigned long long)nchunks);
  }
  l->nchunks = nchunks;
  uint64_t chunk = 0, np = 0;
  for (int t = 0; t < ntensors; t++) {
    l->offset[t] = chunk * DML__PS_DENSE_PART;
    uint64_t c = (sizes[t] + DML__PS_DENSE_PART - 1) / DML__PS_DENSE_PART;
    if (sizes[t] <= mirror_keys) { /* held whole by every server */
      for (uint64_t i = 0; i < c; i++) l->owner[chunk + i] = DML__PS_MIRRORED;
      for (int s = 0; s < l->S; s++) l->bytes[s] += sizes[t] * sizeof(float);
      l->nmirrored += c;
      chunk += c;
      continue;
    }
    uint64_t k = (c + per_part - 1) / per_part, left = sizes[t];
    for (uint64_t i = 0; i < k; i++) { /* near-equal runs: the first c % k get one chunk more */
      uint64_t nc = c / k + (i < c % k);
      pc[np].first_chunk = chunk;
      pc[np].nchunks = nc;
      pc[np].keys = DML__MIN(left, nc * DML__PS_DENSE_PART);
      chunk += nc;
      left -= pc[np].keys;
      np++;
    }
  }
  qsort(pc, (size_t)np, sizeof(dense_piece), piece_cmp);
  for (uint64_t i = 0; i < np; i++) {
    int best = 0;
    for (int s = 1; s < l->S; s++)
      if (l->bytes[s] < l->bytes[best]) best = s;
    l->bytes[best] += pc[i].keys * sizeof(float);
    for (uint64_t c = 0; c < pc[i].nchunks; c++) l->owner[pc[i].first_chunk + c] = best;
  }
  dml__free(pc);
  return 0;
}

int dml__ps_dense_owner(const dml__ps_dense_layout *l, uint64_t key) {
  uint64_t chunk = key / DML__PS_DENSE_PART;
  if (chunk < l->nchunks) return l->owner[chunk];
  return (int)((key / DML__PS_DENSE_DEAL) % (uint64_t)l->S);
}
