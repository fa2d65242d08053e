/* Progress display: a bar redrawn with '\r' on a terminal; on a pipe or file, a plain line every
 * interval_s seconds and at the end, so logs stay readable. */
#include "core/internal.h"

#include <string.h>
#include <unistd.h>

static void draw(dml_progress *p, const char *status, int final) {
  double el = dml_now_s() - p->start_s;
  double frac = p->total ? (double)p->done / (double)p->total : 1.0;
  if (frac > 1.0) frac = 1.0;
  double eta = (frac > 0 && frac < 1.0) ? el / frac - el : 0.0;
  const char *st = status ? status : "";
  if (p->tty) {
    char bar[31];
    int fill = (int)(frac * 30.0);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    fprintf(p->out, "\r\033[K%s [%s] %3.0f%% %.1fs eta %.1fs %s%s", p->label, bar, frac * 100.0, el,
            eta, st, final ? "\n" : "");
  } else {
    fprintf(p->out, "%s %llu/%llu (%.0f%%) %.1fs %s\n", p->label, (unsigned long long)p->done,
            (unsigned long long)p->total, frac * 100.0, el, st);
  }
  fflush(p->out);
  p->last_draw_s = dml_now_s();
}

void dml_progress_begin(dml_progress *p, FILE *out, const char *label, uint64_t total) {
  memset(p, 0, sizeof(*p));
  p->out = out ? out : stderr;
  p->tty = isatty(fileno(p->out));
  snprintf(p->label, sizeof(p->label), "%s", label ? label : "");
  p->total = total;
  p->start_s = dml_now_s();
  p->last_draw_s = p->start_s;
  p->interval_s = p->tty ? 0.1 : 10.0;
  p->active = 1;
}

void dml_progress_update(dml_progress *p, uint64_t done, const char *status) {
  if (!p->active) return;
  p->done = done;
  if (dml_now_s() - p->last_draw_s >= p->interval_s) draw(p, status, 0);
}

void dml_progress_end(dml_progress *p, const char *status) {
  if (!p->active) return;
  draw(p, status, 1);
  p->active = 0;
}
