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

/* Branch-free (a select), so that loops over it vectorise. */
static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof(x));
  uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  uint32_t quiet_nan = (x >> 16) | 0x40u;
  return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

static float bf16_to_f32(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, sizeof(f));
  return f;
}

/* Bulk conversions. fp16 uses the CPU's F16C instructions when it has them (checked at run
 * time: one vcvtps2ph/vcvtph2ps per 8 values, same round-to-nearest-even as the scalar code);
 * bf16 is a shift and a branch-free rounding that the compiler vectorises. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define DML__F16C_PATH 1
__attribute__((target("avx,f16c"))) static void f16_to_f32_f16c(float *dst, const uint16_t *src,
                                                                size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  for (; i < n; i++) dst[i] = f16_to_f32(src[i]);
}
__attribute__((target("avx,f16c"))) static void f32_to_f16_f16c(uint16_t *dst, const float *src,
                                                                size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}
static int have_f16c(void) {
  static _Atomic int cached = -1;
  int v = cached;
  if (v < 0) {
    /* cpuid rather than __builtin_cpu_supports: clang 14 does not know the "f16c" feature
     * string. AVX also needs the OS to save the YMM registers (OSXSAVE and XCR0 bits 1-2). */
    unsigned a, b, c, d;
    v = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_OSXSAVE) && (c & bit_AVX) && (c & bit_F16C)) {
      unsigned lo, hi;
      __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
      v = (lo & 6u) == 6u;
    }
    cached = v;
  }
  return v;
}
#endif

static void wire_to_f32_bulk(float *dst, const uint16_t *w, size_t n, dml_dtype wt) {
  if (wt == DML_F16) {
#ifdef DML__F16C_PATH
    if (have_f16c()) {
      f16_to_f32_f16c(dst, w, n);
      return;
    }
#endif
    for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(w[i]);
    return;
  }
  for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(w[i]);
}

static void f32_to_wire_bulk(uint16_t *w, const float *src, size_t n, dml_dtype wt) {
  if (wt == DML_F16) {
#ifdef DML__F16C_PATH
    if (have_f16c()) {
      f32_to_f16_f16c(w, src, n);
      return;
    }
#endif
    for (size_t i = 0; i < n; i++) w[i] = f32_to_f16(src[i]);
    return;
  }
  for (size_t i = 0; i < n; i++) w[i] = f32_to_bf16(src[i]);
}

/* Elements per block when a conversion goes through a stack buffer. */
#define BLOCK 512

static void apply_block(float *restrict acc, const float *restrict v, size_t n, dml_redop op) {
  switch (op) {
    case DML_MAX:
      for (size_t i = 0; i < n; i++) acc[i] = v[i] > acc[i] ? v[i] : acc[i];
      break;
    case DML_MIN:
      for (size_t i = 0; i < n; i++) acc[i] = v[i] < acc[i] ? v[i] : acc[i];
      break;
    default:
      for (size_t i = 0; i < n; i++) acc[i] += v[i];
      break;
  }
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
      float a[BLOCK], b[BLOCK];
      for (size_t i = 0; i < n; i += BLOCK) {
        size_t m = DML__MIN((size_t)BLOCK, n - i);
        wire_to_f32_bulk(a, d + i, m, dt);
        wire_to_f32_bulk(b, s + i, m, dt);
        apply_block(a, b, m, op);
        f32_to_wire_bulk(d + i, a, m, dt);
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
      float a[BLOCK];
      for (size_t i = 0; i < n; i += BLOCK) {
        size_t m = DML__MIN((size_t)BLOCK, n - i);
        wire_to_f32_bulk(a, b + i, m, dt);
        for (size_t k = 0; k < m; k++) a[k] /= (float)p;
        f32_to_wire_bulk(b + i, a, m, dt);
      }
      break;
    }
  }
}

void dml__reduce_wire_into_f32(float *acc, const void *wire, size_t n, dml_dtype wt, dml_redop op) {
  const uint16_t *w = (const uint16_t *)wire;
  float v[BLOCK];
  for (size_t i = 0; i < n; i += BLOCK) {
    size_t m = DML__MIN((size_t)BLOCK, n - i);
    wire_to_f32_bulk(v, w + i, m, wt);
    apply_block(acc + i, v, m, op);
  }
}

void dml__f32_to_wire(void *wire, const float *src, size_t n, dml_dtype wt) {
  f32_to_wire_bulk((uint16_t *)wire, src, n, wt);
}

void dml__wire_to_f32(float *dst, const void *wire, size_t n, dml_dtype wt) {
  wire_to_f32_bulk(dst, (const uint16_t *)wire, n, wt);
}

void dml__round_f32_to_wire(float *buf, size_t n, dml_dtype wt) {
  uint16_t h[BLOCK];
  for (size_t i = 0; i < n; i += BLOCK) {
    size_t m = DML__MIN((size_t)BLOCK, n - i);
    f32_to_wire_bulk(h, buf + i, m, wt);
    wire_to_f32_bulk(buf + i, h, m, wt);
  }
}
