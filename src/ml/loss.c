/* Losses (softmax cross-entropy, logistic) with their gradients, and metrics (accuracy, log-loss,
 * exact AUC). Pure functions over caller-owned arrays; the models call the losses, drivers and
 * the CLI call the metrics. */
#include "core/internal.h"
#include "distml/ml.h"

#include <math.h>
#include <stdlib.h>

void dml_softmax_xent(const float *logits, const int32_t *y, int n, int k, float scale,
                      float *dlogits, double *loss_sum, int *correct) {
  double ls = 0;
  int corr = 0;
  for (int i = 0; i < n; i++) {
    const float *l = logits + (size_t)i * (size_t)k;
    int arg = 0;
    float mx = l[0];
    for (int c = 1; c < k; c++)
      if (l[c] > mx) {
        mx = l[c];
        arg = c;
      }
    int yi = y[i];
    float ly = l[yi];
    float s = 0.0f;
    if (dlogits != NULL) {
      /* In place is safe: l[] is read for the max and l[y] before d[] is written. */
      float *d = dlogits + (size_t)i * (size_t)k;
      for (int c = 0; c < k; c++) {
        float e = expf(l[c] - mx);
        d[c] = e;
        s += e;
      }
      float inv = scale / s;
      for (int c = 0; c < k; c++) d[c] *= inv;
      d[yi] -= scale;
    } else {
      for (int c = 0; c < k; c++) s += expf(l[c] - mx);
    }
    ls += (double)mx + log((double)s) - (double)ly;
    corr += arg == yi;
  }
  if (loss_sum) *loss_sum += ls;
  if (correct) *correct += corr;
}

void dml_logistic_loss(const float *z, const int32_t *y, int n, float scale, float *dz,
                       double *loss_sum, int *correct) {
  double ls = 0;
  int corr = 0;
  for (int i = 0; i < n; i++) {
    float zi = z[i];
    int yi = y[i];
    float e = expf(-fabsf(zi));
    /* log(1 + e^z) - y z = max(z, 0) - y z + log1p(e^-|z|) */
    ls += (double)(zi > 0 ? zi : 0.0f) - (double)yi * zi + log1p((double)e);
    corr += (zi > 0.0f) == (yi == 1);
    if (dz != NULL) {
      float p = zi >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
      dz[i] = (p - (float)yi) * scale;
    }
  }
  if (loss_sum) *loss_sum += ls;
  if (correct) *correct += corr;
}

typedef struct scored {
  float s;
  int32_t y;
} scored;

static int cmp_scored(const void *a, const void *b) {
  float x = ((const scored *)a)->s, y = ((const scored *)b)->s;
  return (x > y) - (x < y);
}

int dml_metric_auc(const float *scores, const int32_t *y, size_t n, double *auc, dml_err *err) {
  uint64_t pos = 0, neg = 0;
  for (size_t i = 0; i < n; i++) {
    if (isnan(scores[i])) return dml_err_set(err, DML_EINVAL, "AUC: score %zu is NaN", i);
    if (y[i] != 0 && y[i] != 1)
      return dml_err_set(err, DML_EINVAL, "AUC: label %zu is %d, want 0 or 1", i, y[i]);
    pos += y[i] == 1;
  }
  neg = n - pos;
  if (pos == 0 || neg == 0)
    return dml_err_set(err, DML_ERANGE, "AUC undefined: %llu positive and %llu negative labels",
                       (unsigned long long)pos, (unsigned long long)neg);
  int ovf = 0;
  size_t bytes = dml__mul_size(n, sizeof(scored), &ovf);
  scored *a = ovf ? NULL : dml__malloc(bytes);
  if (a == NULL) return dml_err_set(err, DML_ENOMEM, "AUC: out of memory for %zu scores", n);
  for (size_t i = 0; i < n; i++) {
    a[i].s = scores[i];
    a[i].y = y[i];
  }
  qsort(a, n, sizeof(scored), cmp_scored);
  /* Sum of the (1-based, tie-averaged) ranks of the positives. */
  double rank_sum = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    uint64_t p = 0;
    while (j < n && a[j].s == a[i].s) p += a[j++].y == 1;
    double avg_rank = ((double)(i + 1) + (double)j) / 2.0;
    rank_sum += avg_rank * (double)p;
    i = j;
  }
  dml__free(a);
  *auc = (rank_sum - (double)pos * ((double)pos + 1) / 2.0) / ((double)pos * (double)neg);
  return 0;
}

double dml_metric_logloss(const float *p, const int32_t *y, size_t n) {
  if (n == 0) return 0.0;
  double s = 0;
  for (size_t i = 0; i < n; i++) {
    double q = p[i];
    if (!(q >= 1e-7)) q = 1e-7; /* also maps NaN to the clip */
    if (q > 1 - 1e-7) q = 1 - 1e-7;
    s -= y[i] == 1 ? log(q) : log(1 - q);
  }
  return s / (double)n;
}

double dml_metric_accuracy(uint64_t correct, uint64_t n) {
  return n == 0 ? 0.0 : (double)correct / (double)n;
}
