/* Unit tests of the reduction kernels and the f32 <-> fp16/bf16 conversions (reduce.c), and of
 * the names and parsers of coll.h: known bit patterns, round-to-nearest-even ties, overflow,
 * subnormals, NaN, and every op on every type against a plain loop. No communication here. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "coll/coll_internal.h"
#include "testutil.h"

static uint16_t to_wire(float f, dml_dtype wt) {
  uint16_t h;
  dml__f32_to_wire(&h, &f, 1, wt);
  return h;
}

static float from_wire(uint16_t h, dml_dtype wt) {
  float f;
  dml__wire_to_f32(&f, &h, 1, wt);
  return f;
}

static void test_f16(void) {
  T_EQ_INT(to_wire(0.0f, DML_F16), 0x0000);
  T_EQ_INT(to_wire(-0.0f, DML_F16), 0x8000);
  T_EQ_INT(to_wire(1.0f, DML_F16), 0x3c00);
  T_EQ_INT(to_wire(-2.0f, DML_F16), 0xc000);
  T_EQ_INT(to_wire(65504.0f, DML_F16), 0x7bff); /* largest finite */
  T_EQ_INT(to_wire(65520.0f, DML_F16), 0x7c00); /* rounds up to inf */
  T_EQ_INT(to_wire(1e10f, DML_F16), 0x7c00);
  T_EQ_INT(to_wire(INFINITY, DML_F16), 0x7c00);
  T_EQ_INT(to_wire(ldexpf(1.0f, -24), DML_F16), 0x0001); /* smallest subnormal */
  T_EQ_INT(to_wire(ldexpf(1.0f, -26), DML_F16), 0x0000); /* below half of it */
  T_EQ_INT(to_wire(ldexpf(1.0f, -14), DML_F16), 0x0400); /* smallest normal */
  /* Ties go to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10. */
  T_EQ_INT(to_wire(1.0f + ldexpf(1.0f, -11), DML_F16), 0x3c00);
  T_EQ_INT(to_wire(1.0f + 3 * ldexpf(1.0f, -11), DML_F16), 0x3c02);
  uint16_t nan = to_wire(NAN, DML_F16);
  T_ASSERT((nan & 0x7c00) == 0x7c00 && (nan & 0x3ff) != 0);
  /* Every finite half converts to f32 and back unchanged. */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) == 0x7c00) continue;
    float f = from_wire((uint16_t)h, DML_F16);
    T_EQ_INT(to_wire(f, DML_F16), h);
  }
  T_NEAR(from_wire(0x3555, DML_F16), 0.33325195, 1e-8);
}

static void test_bf16(void) {
  T_EQ_INT(to_wire(1.0f, DML_BF16), 0x3f80);
  T_EQ_INT(to_wire(-1.0f, DML_BF16), 0xbf80);
  T_EQ_INT(to_wire(3.0f, DML_BF16), 0x4040);
  /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1). 1 + 3*2^-8: to 1 + 2^-6. */
  T_EQ_INT(to_wire(1.0f + ldexpf(1.0f, -8), DML_BF16), 0x3f80);
  T_EQ_INT(to_wire(1.0f + 3 * ldexpf(1.0f, -8), DML_BF16), 0x3f82);
  T_EQ_INT(to_wire(INFINITY, DML_BF16), 0x7f80);
  uint16_t nan = to_wire(NAN, DML_BF16);
  T_ASSERT((nan & 0x7f80) == 0x7f80 && (nan & 0x7f) != 0);
  T_ASSERT(from_wire(0x3f80, DML_BF16) == 1.0f);
  float r = 1.2345678f;
  dml__round_f32_to_wire(&r, 1, DML_BF16);
  T_ASSERT(r == from_wire(to_wire(1.2345678f, DML_BF16), DML_BF16));
  T_NEAR(r, 1.2345678, 1.0 / 128);
}

#define N 37

static void test_reduce_all(void) {
  static const dml_dtype dts[] = {DML_F32, DML_F64, DML_I32, DML_I64};
  static const dml_redop ops[] = {DML_SUM, DML_AVG, DML_MAX, DML_MIN};
  for (size_t d = 0; d < 4; d++)
    for (size_t o = 0; o < 4; o++) {
      double a[N], b[N];
      union {
        float f[N];
        double g[N];
        int32_t i[N];
        int64_t l[N];
      } x, y;
      for (int i = 0; i < N; i++) {
        a[i] = (double)((i * 5) % 11) - 5;
        b[i] = (double)((i * 3) % 7) - 3;
        switch (dts[d]) {
          case DML_F32: x.f[i] = (float)a[i], y.f[i] = (float)b[i]; break;
          case DML_F64: x.g[i] = a[i], y.g[i] = b[i]; break;
          case DML_I32: x.i[i] = (int32_t)a[i], y.i[i] = (int32_t)b[i]; break;
          default: x.l[i] = (int64_t)a[i], y.l[i] = (int64_t)b[i]; break;
        }
      }
      dml__reduce(&x, &y, N, dts[d], ops[o]);
      dml__scale_avg(&x, N, dts[d], ops[o] == DML_AVG ? 2 : 1);
      for (int i = 0; i < N; i++) {
        double want = ops[o] == DML_MAX   ? fmax(a[i], b[i])
                      : ops[o] == DML_MIN ? fmin(a[i], b[i])
                                          : a[i] + b[i];
        if (ops[o] == DML_AVG)
          want = (dts[d] == DML_I32 || dts[d] == DML_I64) ? (double)((int64_t)want / 2) : want / 2;
        double got = dts[d] == DML_F32   ? x.f[i]
                     : dts[d] == DML_F64 ? x.g[i]
                     : dts[d] == DML_I32 ? x.i[i]
                                         : (double)x.l[i];
        T_NEAR(got, want, 0);
      }
    }
  /* Wire values accumulated into f32. */
  float acc[3] = {1.0f, -2.0f, 0.5f};
  uint16_t w[3];
  float src[3] = {0.25f, 4.0f, -8.0f};
  dml__f32_to_wire(w, src, 3, DML_F16);
  dml__reduce_wire_into_f32(acc, w, 3, DML_F16, DML_SUM);
  T_ASSERT(acc[0] == 1.25f && acc[1] == 2.0f && acc[2] == -7.5f);
  dml__reduce_wire_into_f32(acc, w, 3, DML_F16, DML_MAX);
  T_ASSERT(acc[0] == 1.25f && acc[1] == 4.0f && acc[2] == -7.5f);
  /* 16-bit types reduce through f32. */
  uint16_t h1[2], h2[2];
  float v1[2] = {1.5f, 3.0f}, v2[2] = {2.25f, -1.0f};
  dml__f32_to_wire(h1, v1, 2, DML_BF16);
  dml__f32_to_wire(h2, v2, 2, DML_BF16);
  dml__reduce(h1, h2, 2, DML_BF16, DML_SUM);
  T_ASSERT(from_wire(h1[0], DML_BF16) == 3.75f && from_wire(h1[1], DML_BF16) == 2.0f);
}

/* The bulk paths (F16C instructions, vectorised bf16) agree with the one-value path (which is
 * the scalar code: a call with n = 1 never reaches the 8-wide loop). */
static void test_bulk_matches_scalar(void) {
  static uint16_t all[65536], back[65536];
  static float f[65536], g[65536];
  for (uint32_t h = 0; h < 65536; h++) all[h] = (uint16_t)h;
  for (int k = 0; k < 2; k++) {
    dml_dtype wt = k == 0 ? DML_F16 : DML_BF16;
    dml__wire_to_f32(f, all, 65536, wt);
    for (uint32_t h = 0; h < 65536; h++) {
      float one = from_wire((uint16_t)h, wt);
      if (isnan(one)) {
        T_ASSERT(isnan(f[h]));
      } else if (memcmp(&one, &f[h], sizeof(one)) != 0) {
        T_FAIL("%s 0x%04x: bulk %g, scalar %g", dml_dtype_name(wt), h, f[h], one);
      }
    }
    /* f32 -> wire on values around every representable one: ties, halfway points, extremes. */
    dml_rng rng;
    dml_rng_seed(&rng, 42 + (uint64_t)k);
    for (uint32_t i = 0; i < 65536; i++) {
      uint32_t bits = (uint32_t)dml_rng_next(&rng);
      if (i % 4 == 0) bits = ((uint32_t)all[i] << 16) | (uint32_t)(i & 3) << 12; /* near bf16 */
      if (i % 4 == 1) {
        float v = from_wire(all[i], DML_F16);
        memcpy(&bits, &v, sizeof(bits));
        bits += (i & 8) ? 0x1000u : 0xfffu; /* around the f16 halfway point */
      }
      memcpy(&g[i], &bits, sizeof(bits));
    }
    dml__f32_to_wire(back, g, 65536, wt);
    for (uint32_t i = 0; i < 65536; i++) {
      uint16_t one = to_wire(g[i], wt);
      if (isnan(g[i]))
        T_ASSERT(isnan(from_wire(back[i], wt)));
      else if (one != back[i])
        T_FAIL("%s of %a: bulk 0x%04x, scalar 0x%04x", dml_dtype_name(wt), (double)g[i], back[i],
               one);
    }
  }
}

static void test_names(void) {
  dml_dtype dt;
  dml_redop op;
  dml_allreduce_algo a;
  T_OK(dml_dtype_parse("bf16", &dt));
  T_EQ_INT(dt, DML_BF16);
  T_EQ_INT(dml_dtype_parse("float", &dt), DML_EINVAL);
  T_EQ_INT(dml_dtype_parse(NULL, &dt), DML_EINVAL);
  T_OK(dml_redop_parse("avg", &op));
  T_EQ_INT(op, DML_AVG);
  T_OK(dml_allreduce_algo_parse("rd", &a));
  T_EQ_INT(a, DML_ALGO_RD);
  T_EQ_INT(dml_allreduce_algo_parse("tree", &a), DML_EINVAL);
  T_EQ_INT(dml_dtype_size(DML_F64), 8);
  T_EQ_INT(dml_dtype_size(DML_F16), 2);
  T_EQ_INT(dml_dtype_size((dml_dtype)99), 0);
  T_ASSERT(dml_dtype_name((dml_dtype)99) == NULL);
  T_ASSERT(strcmp(dml_redop_name(DML_MIN), "min") == 0);
}

int main(void) {
  test_f16();
  test_bf16();
  test_reduce_all();
  test_bulk_matches_scalar();
  test_names();
  printf("reduce_test: ok\n");
  return 0;
}
