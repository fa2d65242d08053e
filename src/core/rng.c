/* Deterministic random numbers: xoshiro256** (Blackman and Vigna) seeded through splitmix64, so
 * that a seed gives the same stream on every machine and run. */
#include "core/internal.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void dml_rng_seed(dml_rng *rng, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

void dml_rng_seed3(dml_rng *rng, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t x = a;
  uint64_t h = splitmix64(&x);
  x = h ^ b;
  h = splitmix64(&x);
  x = h ^ c;
  dml_rng_seed(rng, splitmix64(&x));
}

static inline uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

uint64_t dml_rng_next(dml_rng *rng) {
  uint64_t *s = rng->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

uint64_t dml_rng_below(dml_rng *rng, uint64_t n) {
  /* Rejection sampling: discard the top partial copy of [0, n). */
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do {
    r = dml_rng_next(rng);
  } while (r >= limit);
  return r % n;
}

float dml_rng_uniform(dml_rng *rng) {
  return (float)(dml_rng_next(rng) >> 40) * 0x1.0p-24f;
}

float dml_rng_normal(dml_rng *rng) {
  double u1 = ((double)(dml_rng_next(rng) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
  double u2 = (double)(dml_rng_next(rng) >> 11) * 0x1.0p-53;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

void dml_rng_shuffle_u32(dml_rng *rng, uint32_t *idx, size_t n) {
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)dml_rng_below(rng, i);
    uint32_t t = idx[i - 1];
    idx[i - 1] = idx[j];
    idx[j] = t;
  }
}
