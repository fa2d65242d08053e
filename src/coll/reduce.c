/* Reduction kernels of the collectives (sum, max, min over f32, f64, i32, i64, and fp16/bf16
 * through f32) and the conversions between f32 and the 16-bit wire types (round to nearest
 * even). Pure computation: no communication and no allocation here. */
#include <string.h>

#include "coll/coll_internal.h"

/* GCC's -O2 "very cheap" vectoriser leaves loops of unknown length scalar; these kernels are on
 * the all-reduce's critical path, so ask for -O3 here (clang vectorises them at -O2 already). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#endif

static uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof(x));
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t exp = (x >> 23) & 0xffu;
  uint32_t mant = x & 0x7fffffu;
  if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
  int e = (int)exp - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000u;
    int shift = 14 - e;
    uint32_t m = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (m & 1u))) m++;
    return (uint16_t)(sign | m);
  }
  uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* a carry rounds up the exponent */
  return (uint16_t)h;
}

static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    float f = (float)mant * 5.9604644775390625e-8f; /* 2^-24 */
    return sign ? -f : f;
  }
  if (exp == 31)
    x = sign | 0x7f800000u | (mant << 13);
  else
    x = sign | ((exp + 112) << 23) | (mant << 13);
  float f;
  memcpy(&f, &x, sizeof(f));
  return f;
}

static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof(x));
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

static float bf16_to_f32(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, sizeof(f));
  return f;
}

static float wire_get(const uint16_t *w, size_t i, dml_dtype wt) {
  return wt == DML_F16 ? f16_to_f32(w[i]) : bf16_to_f32(w[i]);
}

#define DML__REDUCE_LOOP(T)                                              \
  do {                                                                   \
    T *restrict d = (T *)dst;                                            \
    const T *restrict s = (const T *)src;                                \
    switch (op) {                                                        \
      case DML_SUM:                                                      \
      case DML_AVG:                                                      \
        for (size_t i = 0; i < n; i++) d[i] += s[i];                     \
        break;                                                           \
      case DML_MAX:                                                      \
        for (size_t i = 0; i < n; i++) d[i] = s[i] > d[i] ? s[i] : d[i]; \
        break;                                                           \
      case DML_MIN:                                                      \
        for (size_t i = 0; i < n; i++) d[i] = s[i] < d[i] ? s[i] : d[i]; \
        break;                                                           \
    }                                                                    \
  } while (0)

static float apply_f32(float a, float b, dml_redop op) {
  switch (op) {
    case DML_MAX: return b > a ? b : a;
    case DML_MIN: return b < a ? b : a;
    default: return a + b;
  }
}

void dml__reduce(void *dst, const void *src, size_t n, dml_dtype dt, dml_redop op) {
  switch (dt) {
    case DML_F32: DML__REDUCE_LOOP(float); break;
    case DML_F64: DML__REDUCE_LOOP(double); break;
    case DML_I32: DML__REDUCE_LOOP(int32_t); break;
    case DML_I64: DML__REDUCE_LOOP(int64_t); break;
    case DML_F16:
    case DML_BF16: {
      uint16_t *d = (uint16_t *)dst;
      const uint16_t *s = (const uint16_t *)src;
      for (size_t i = 0; i < n; i++) {
        float r = apply_f32(wire_get(d, i, dt), wire_get(s, i, dt), op);
        d[i] = dt == DML_F16 ? f32_to_f16(r) : f32_to_bf16(r);
      }
      break;
    }
  }
}

void dml__scale_avg(void *buf, size_t n, dml_dtype dt, int p) {
  switch (dt) {
    case DML_F32: {
      float *b = (float *)buf;
      float inv = 1.0f / (float)p;
      for (size_t i = 0; i < n; i++) b[i] *= inv;
      break;
    }
    case DML_F64: {
      double *b = (double *)buf;
      for (size_t i = 0; i < n; i++) b[i] /= (double)p;
      break;
    }
    case DML_I32: {
      int32_t *b = (int32_t *)buf;
      for (size_t i = 0; i < n; i++) b[i] /= p;
      break;
    }
    case DML_I64: {
      int64_t *b = (int64_t *)buf;
      for (size_t i = 0; i < n; i++) b[i] /= p;
      break;
    }
    case DML_F16:
    case DML_BF16: {
      uint16_t *b = (uint16_t *)buf;
      for (size_t i = 0; i < n; i++) {
        float v = wire_get(b, i, dt) / (float)p;
        b[i] = dt == DML_F16 ? f32_to_f16(v) : f32_to_bf16(v);
      }
      break;
    }
  }
}

void dml__reduce_wire_into_f32(float *acc, const void *wire, size_t n, dml_dtype wt, dml_redop op) {
  const uint16_t *w = (const uint16_t *)wire;
  for (size_t i = 0; i < n; i++) acc[i] = apply_f32(acc[i], wire_get(w, i, wt), op);
}

void dml__f32_to_wire(void *wire, const float *src, size_t n, dml_dtype wt) {
  uint16_t *w = (uint16_t *)wire;
  if (wt == DML_F16)
    for (size_t i = 0; i < n; i++) w[i] = f32_to_f16(src[i]);
  else
    for (size_t i = 0; i < n; i++) w[i] = f32_to_bf16(src[i]);
}

void dml__wire_to_f32(float *dst, const void *wire, size_t n, dml_dtype wt) {
  const uint16_t *w = (const uint16_t *)wire;
  for (size_t i = 0; i < n; i++) dst[i] = wire_get(w, i, wt);
}

void dml__round_f32_to_wire(float *buf, size_t n, dml_dtype wt) {
  for (size_t i = 0; i < n; i++) {
    uint16_t h = wt == DML_F16 ? f32_to_f16(buf[i]) : f32_to_bf16(buf[i]);
    buf[i] = wire_get(&h, 0, wt);
  }
}
