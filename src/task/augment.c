/* Random image augmentation for the input pipeline: shift (zero fill), left-right flip and
 * Gaussian noise over one float image, drawing every random number from the generator it is
 * given, in a fixed order, so a (seed, epoch, index) stream always gives the same image. It knows
 * nothing of data sets or file formats; the caller decides which images to augment. */
#include <string.h>

#include "task/task_internal.h"

int dml_augment_parse(const char *spec, dml_augment *a, dml_err *err) {
  memset(a, 0, sizeof *a);
  a->max_shift = 2;
  a->noise_std = 0.05f;
  if (spec == NULL || *spec == '\0' || strcmp(spec, "none") == 0) return 0;
  const char *p = spec;
  while (*p != '\0') {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    char word[64];
    if (len == 0 || len >= sizeof word)
      return dml_err_set(err, DML_EINVAL, "--augment '%s': empty or too long item at offset %zu",
                         spec, (size_t)(p - spec));
    memcpy(word, p, len);
    word[len] = '\0';
    char *val = strchr(word, '=');
    if (val != NULL) *val++ = '\0';
    if (strcmp(word, "all") == 0 && val == NULL) {
      a->flags |= DML_AUG_SHIFT | DML_AUG_FLIP | DML_AUG_NOISE;
    } else if (strcmp(word, "flip") == 0 && val == NULL) {
      a->flags |= DML_AUG_FLIP;
    } else if (strcmp(word, "shift") == 0) {
      a->flags |= DML_AUG_SHIFT;
      if (val != NULL) {
        int64_t v;
        dml_err e = {0};
        if (dml_parse_i64(val, 0, 64, &v, &e) != 0)
          return dml_err_set(err, DML_EINVAL, "--augment '%s': shift=%s: %s", spec, val, e.msg);
        a->max_shift = (int)v;
      }
    } else if (strcmp(word, "noise") == 0) {
      a->flags |= DML_AUG_NOISE;
      if (val != NULL) {
        double v;
        dml_err e = {0};
        if (dml_parse_double(val, 0, 10, &v, &e) != 0)
          return dml_err_set(err, DML_EINVAL, "--augment '%s': noise=%s: %s", spec, val, e.msg);
        a->noise_std = (float)v;
      }
    } else {
      return dml_err_set(err, DML_EINVAL,
                         "--augment '%s': unknown item '%s' (expected shift[=pixels], flip, "
                         "noise[=std], all or none)",
                         spec, word);
    }
    p += len;
    if (*p == ',') p++;
  }
  return 0;
}

int dml_augment_image(const dml_augment *a, dml_rng *rng, float *img, size_t h, size_t w, size_t c,
                      float *scratch) {
  if (a == NULL || rng == NULL) return DML_EINVAL;
  int ovf = 0;
  size_t n = dml__mul_size(dml__mul_size(h, w, &ovf), c, &ovf);
  if (ovf) return DML_EOVERFLOW;
  if (n == 0) return 0;
  if (img == NULL) return DML_EINVAL;
  if (a->flags & DML_AUG_SHIFT) {
    long s = a->max_shift;
    if (s < 0 || s > (1 << 20)) return DML_EINVAL;
    long dy = (long)dml_rng_below(rng, 2 * (uint64_t)s + 1) - s;
    long dx = (long)dml_rng_below(rng, 2 * (uint64_t)s + 1) - s;
    if (dx != 0 || dy != 0) {
      float *tmp = scratch;
      if (tmp == NULL) {
        tmp = dml__malloc(n * sizeof(float));
        if (tmp == NULL) return DML_ENOMEM;
      }
      memcpy(tmp, img, n * sizeof(float));
      for (size_t y = 0; y < h; y++) {
        long sy = (long)y - dy;
        for (size_t x = 0; x < w; x++) {
          long sx = (long)x - dx;
          float *dst = img + (y * w + x) * c;
          if (sy < 0 || sy >= (long)h || sx < 0 || sx >= (long)w)
            memset(dst, 0, c * sizeof(float));
          else
            memcpy(dst, tmp + ((size_t)sy * w + (size_t)sx) * c, c * sizeof(float));
        }
      }
      if (scratch == NULL) dml__free(tmp);
    }
  }
  if ((a->flags & DML_AUG_FLIP) && (dml_rng_next(rng) >> 63)) {
    for (size_t y = 0; y < h; y++) {
      float *row = img + y * w * c;
      for (size_t x = 0; x < w / 2; x++) {
        float *l = row + x * c, *r = row + (w - 1 - x) * c;
        for (size_t k = 0; k < c; k++) {
          float t = l[k];
          l[k] = r[k];
          r[k] = t;
        }
      }
    }
  }
  if (a->flags & DML_AUG_NOISE) {
    /* Approximately Gaussian: the sum of four 16-bit uniforms from one 64-bit draw, centred and
     * scaled to unit variance (Irwin-Hall, bounded at +-3.46 sd). Ten times cheaper than
     * Box-Muller per pixel, which matters at 784 pixels per image. */
    const float scale = a->noise_std * 1.7320508f / 65536.0f; /* sqrt(12 / 4) per unit of sum */
    for (size_t i = 0; i < n; i++) {
      uint64_t r = dml_rng_next(rng);
      float sum = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) +
                  (float)(r >> 48);
      img[i] += (sum - 2.0f * 65535.0f) * scale;
    }
  }
  return 0;
}
