/* Model files and checkpoints on safetensors: the model config goes in __metadata__, the
 * parameters as named tensors, a checkpoint adds the optimizer state. Loading checks that the
 * file's tensors are exactly what its config needs. The file format itself is in safetensors.c. */
#include "core/internal.h"
#include "distml/ml.h"

#include <math.h>
#include <string.h>

#define MAX_META 16
#define OPTIM_PREFIX "optim."

/* "mlp 784-256-10" */
static const char *describe(const dml_model_config *c, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "%s %d", dml_model_kind_name(c->kind), c->in_dim);
  for (int i = 0; i < c->num_hidden && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "-%d", c->hidden[i]);
  if (k < n) snprintf(buf + k, n - k, "-%d", c->kind == DML_MODEL_LOGREG ? 1 : c->num_classes);
  return buf;
}

static void hidden_str(const dml_model_config *c, char *buf, size_t n) {
  size_t k = 0;
  buf[0] = '\0';
  for (int i = 0; i < c->num_hidden && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%d", i ? "," : "", c->hidden[i]);
}

static int is_model_key(const char *key) {
  static const char *keys[] = {"distml.format",      "distml.model",  "distml.in_dim",
                               "distml.num_classes", "distml.hidden", "distml.seed"};
  for (size_t i = 0; i < DML__ARRAY_LEN(keys); i++)
    if (strcmp(key, keys[i]) == 0) return 1;
  return 0;
}

int dml_model_save(const dml_model *m, const char *path, const dml_st_tensor *extra, int nextra,
                   const dml_st_meta *extra_meta, int nextra_meta, dml_err *err) {
  const dml_model_config *c = dml_model_get_config(m);
  if (nextra < 0 || nextra_meta < 0 || (nextra > 0 && extra == NULL) ||
      (nextra_meta > 0 && extra_meta == NULL))
    return dml_err_set(err, DML_EINVAL, "%s: bad extra tensor or metadata list", path);
  int nt = dml_model_num_tensors(m);
  char in_dim[24], ncls[24], hidden[DML_MODEL_MAX_HIDDEN * 12], seed[24];
  snprintf(in_dim, sizeof(in_dim), "%d", c->in_dim);
  snprintf(ncls, sizeof(ncls), "%d", c->num_classes);
  snprintf(seed, sizeof(seed), "%llu", (unsigned long long)c->seed);
  hidden_str(c, hidden, sizeof(hidden));
  dml_st_meta base[] = {{"distml.format", "1"},    {"distml.model", dml_model_kind_name(c->kind)},
                        {"distml.in_dim", in_dim}, {"distml.num_classes", ncls},
                        {"distml.hidden", hidden}, {"distml.seed", seed}};
  int nbase = (int)DML__ARRAY_LEN(base);
  for (int i = 0; i < nextra_meta; i++)
    if (extra_meta[i].key != NULL && is_model_key(extra_meta[i].key))
      return dml_err_set(err, DML_EINVAL, "%s: metadata key '%s' is written by the model itself",
                         path, extra_meta[i].key);
  dml_st_tensor *ts = dml__calloc((size_t)(nt + nextra), sizeof(dml_st_tensor));
  dml_st_meta *ms = dml__calloc((size_t)(nbase + nextra_meta), sizeof(dml_st_meta));
  int rc;
  if (ts == NULL || ms == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "%s: out of memory", path);
    goto done;
  }
  const float *params = dml_model_params((dml_model *)m);
  for (int i = 0; i < nt; i++) {
    const dml_tensor_info *t = dml_model_tensor(m, i);
    ts[i].name = t->name;
    ts[i].ndim = t->ndim;
    memcpy(ts[i].shape, t->shape, sizeof(ts[i].shape));
    ts[i].data = params + t->offset;
  }
  for (int i = 0; i < nextra; i++) ts[nt + i] = extra[i];
  memcpy(ms, base, sizeof(base));
  for (int i = 0; i < nextra_meta; i++) ms[nbase + i] = extra_meta[i];
  rc = dml_safetensors_write(path, ts, nt + nextra, ms, nbase + nextra_meta, err);
done:
  dml__free(ts);
  dml__free(ms);
  return rc;
}

/* Model config from a file's metadata. */
static int config_from_file(const dml_safetensors *st, int max_batch, dml_model_config *cfg,
                            dml_err *err) {
  const char *path = dml_safetensors_path(st);
  const char *kind = dml_safetensors_meta(st, "distml.model");
  const char *in_dim = dml_safetensors_meta(st, "distml.in_dim");
  const char *ncls = dml_safetensors_meta(st, "distml.num_classes");
  const char *hidden = dml_safetensors_meta(st, "distml.hidden");
  const char *seed = dml_safetensors_meta(st, "distml.seed");
  if (kind == NULL)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: no distml.model in __metadata__ (not a distml model file)", path);
  const char *fmt = dml_safetensors_meta(st, "distml.format");
  if (fmt != NULL && strcmp(fmt, "1") != 0)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: distml.format '%s': this distml reads model files of format 1", path,
                       fmt);
  if (in_dim == NULL || ncls == NULL)
    return dml_err_set(err, DML_EFORMAT,
                       "%s: __metadata__ lacks distml.in_dim or distml.num_classes", path);
  dml_err e = {0};
  dml_model_kind k;
  int64_t d, nc, sd = 1;
  if (dml_model_kind_parse(kind, &k, &e) != 0)
    return dml_err_set(err, DML_EFORMAT, "%s: metadata distml.model: %s", path, e.msg);
  if (dml_parse_i64(in_dim, 1, INT32_MAX - 1, &d, &e) != 0)
    return dml_err_set(err, DML_EFORMAT, "%s: metadata distml.in_dim: %s", path, e.msg);
  if (dml_parse_i64(ncls, 2, 1000000, &nc, &e) != 0)
    return dml_err_set(err, DML_EFORMAT, "%s: metadata distml.num_classes: %s", path, e.msg);
  if (seed != NULL && dml_parse_i64(seed, 0, INT64_MAX, &sd, &e) != 0)
    return dml_err_set(err, DML_EFORMAT, "%s: metadata distml.seed: %s", path, e.msg);
  dml_model_config_init(cfg, k, (int)d, (int)nc);
  cfg->num_classes = (int)nc;
  cfg->max_batch = max_batch;
  cfg->seed = (uint64_t)sd;
  if (hidden != NULL && dml_model_config_set_hidden(cfg, hidden, &e) != 0)
    return dml_err_set(err, DML_EFORMAT, "%s: metadata distml.hidden: %s", path, e.msg);
  return 0;
}

/* Every tensor of m present in st with the same shape and finite values. */
static int check_model_tensors(const dml_safetensors *st, const dml_model *m, dml_err *err) {
  const char *path = dml_safetensors_path(st);
  char desc[256];
  describe(dml_model_get_config(m), desc, sizeof(desc));
  for (int i = 0; i < dml_model_num_tensors(m); i++) {
    const dml_tensor_info *t = dml_model_tensor(m, i);
    const dml_st_tensor *f = dml_safetensors_find(st, t->name);
    if (f == NULL)
      return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s' missing (model %s needs it)", path,
                         t->name, desc);
    int same = f->ndim == t->ndim;
    for (int dim = 0; same && dim < t->ndim; dim++) same = f->shape[dim] == t->shape[dim];
    if (!same) {
      char a[96], b[96];
      size_t k = 0;
      a[0] = b[0] = '\0';
      for (int dim = 0; dim < f->ndim && k < sizeof(a); dim++)
        k += (size_t)snprintf(a + k, sizeof(a) - k, "%s%lld", dim ? ", " : "",
                              (long long)f->shape[dim]);
      k = 0;
      for (int dim = 0; dim < t->ndim && k < sizeof(b); dim++)
        k += (size_t)snprintf(b + k, sizeof(b) - k, "%s%lld", dim ? ", " : "",
                              (long long)t->shape[dim]);
      return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s' has shape [%s], model %s needs [%s]",
                         path, t->name, a, desc, b);
    }
    for (size_t j = 0; j < t->count; j++)
      if (!isfinite(f->data[j]))
        return dml_err_set(err, DML_EFORMAT, "%s: tensor '%s' element %zu is not finite", path,
                           t->name, j);
  }
  return 0;
}

static void copy_model_tensors(const dml_safetensors *st, dml_model *m) {
  float *p = dml_model_params(m);
  for (int i = 0; i < dml_model_num_tensors(m); i++) {
    const dml_tensor_info *t = dml_model_tensor(m, i);
    memcpy(p + t->offset, dml_safetensors_find(st, t->name)->data, t->count * sizeof(float));
  }
}

int dml_model_from_safetensors(const dml_safetensors *st, int max_batch, dml_model **out,
                               dml_err *err) {
  *out = NULL;
  dml_model_config cfg;
  int rc = config_from_file(st, max_batch, &cfg, err);
  if (rc) return rc;
  /* the values the metadata promise must be in the file before a large model is made (a small
   * hostile file would otherwise allocate and initialise gigabytes first); a small one is made and
   * checked tensor by tensor, which names the tensor and shape that is wrong */
  uint64_t want = dml_model_config_params(&cfg), have = 0;
  for (int i = 0; i < dml_safetensors_count(st); i++) {
    const dml_st_tensor *t = dml_safetensors_get(st, i);
    uint64_t c = 1;
    for (int d = 0; d < t->ndim; d++) c *= (uint64_t)t->shape[d];
    have += c;
  }
  if (want > have && want > ((uint64_t)1 << 24))
    return dml_err_set(err, DML_EFORMAT,
                       "%s: its metadata describe a model of %llu parameters but the file holds "
                       "%llu values",
                       dml_safetensors_path(st), (unsigned long long)want,
                       (unsigned long long)have);
  dml_model *m = NULL;
  dml_err e = {0};
  if ((rc = dml_model_create(&m, &cfg, &e)) != 0)
    return dml_err_set(err, rc == DML_ENOMEM ? rc : DML_EFORMAT, "%s: %s", dml_safetensors_path(st),
                       e.msg);
  if ((rc = check_model_tensors(st, m, err)) != 0) {
    dml_model_free(m);
    return rc;
  }
  copy_model_tensors(st, m);
  *out = m;
  return 0;
}

int dml_model_load(const char *path, int max_batch, dml_model **out, dml_err *err) {
  *out = NULL;
  dml_safetensors *st = NULL;
  int rc = dml_safetensors_read(path, &st, err);
  if (rc) return rc;
  rc = dml_model_from_safetensors(st, max_batch, out, err);
  dml_safetensors_free(st);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Checkpoints. */

int dml_checkpoint_save(const char *path, const dml_model *m, const dml_optim *o,
                        const dml_st_meta *meta, int nmeta, dml_err *err) {
  if (nmeta < 0 || nmeta > MAX_META || (nmeta > 0 && meta == NULL))
    return dml_err_set(err, DML_EINVAL, "%s: at most %d caller metadata entries", path, MAX_META);
  dml_st_tensor ts[2];
  char names[2][DML_TENSOR_NAME_MAX + 8];
  int ns = 0;
  dml_st_meta ms[MAX_META + 2];
  char step[24];
  if (o != NULL) {
    ns = dml_optim_num_state(o);
    const float *state = dml_optim_state_data((dml_optim *)o);
    for (int i = 0; i < ns; i++) {
      const dml_tensor_info *t = dml_optim_state_tensor(o, i);
      snprintf(names[i], sizeof(names[i]), OPTIM_PREFIX "%s", t->name);
      ts[i].name = names[i];
      ts[i].ndim = 1;
      memset(ts[i].shape, 0, sizeof(ts[i].shape));
      ts[i].shape[0] = t->shape[0];
      ts[i].data = state + t->offset;
    }
    snprintf(step, sizeof(step), "%llu", (unsigned long long)dml_optim_step_count(o));
    ms[0].key = "distml.optim";
    ms[0].value = dml_optim_kind_name(dml_optim_get_config(o)->kind);
    ms[1].key = "distml.optim.step";
    ms[1].value = step;
  }
  int nm = o != NULL ? 2 : 0;
  for (int i = 0; i < nmeta; i++) ms[nm++] = meta[i];
  return dml_model_save(m, path, ts, ns, ms, nm, err);
}

int dml_checkpoint_restore(const char *path, dml_model *m, dml_optim *o, dml_safetensors **st_out,
                           dml_err *err) {
  if (st_out) *st_out = NULL;
  dml_safetensors *st = NULL;
  int rc = dml_safetensors_read(path, &st, err);
  if (rc) return rc;
  dml_model_config cfg = {0};
  const dml_model_config *mc = dml_model_get_config(m);
  if ((rc = config_from_file(st, mc->max_batch, &cfg, err)) != 0) goto done;
  int same = cfg.kind == mc->kind && cfg.in_dim == mc->in_dim &&
             cfg.num_classes == mc->num_classes && cfg.num_hidden == mc->num_hidden;
  for (int i = 0; same && i < cfg.num_hidden; i++) same = cfg.hidden[i] == mc->hidden[i];
  if (!same) {
    char a[256], b[256];
    rc = dml_err_set(err, DML_EMISMATCH, "%s: checkpoint holds model %s, this run has %s", path,
                     describe(&cfg, a, sizeof(a)), describe(mc, b, sizeof(b)));
    goto done;
  }
  if ((rc = check_model_tensors(st, m, err)) != 0) goto done;
  uint64_t step = 0;
  if (o != NULL) {
    const char *kind = dml_safetensors_meta(st, "distml.optim");
    const char *want = dml_optim_kind_name(dml_optim_get_config(o)->kind);
    if (kind == NULL || strcmp(kind, want) != 0) {
      rc = dml_err_set(err, DML_EMISMATCH, "%s: checkpoint optimizer is %s, this run uses %s", path,
                       kind ? kind : "(none)", want);
      goto done;
    }
    const char *s = dml_safetensors_meta(st, "distml.optim.step");
    int64_t v;
    dml_err e = {0};
    if (s == NULL || dml_parse_i64(s, 0, INT64_MAX, &v, &e) != 0) {
      rc = dml_err_set(err, DML_EFORMAT, "%s: metadata distml.optim.step missing or bad", path);
      goto done;
    }
    step = (uint64_t)v;
    for (int i = 0; i < dml_optim_num_state(o); i++) {
      const dml_tensor_info *t = dml_optim_state_tensor(o, i);
      char name[DML_TENSOR_NAME_MAX + 8];
      snprintf(name, sizeof(name), OPTIM_PREFIX "%s", t->name);
      const dml_st_tensor *f = dml_safetensors_find(st, name);
      if (f == NULL || f->ndim != 1 || f->shape[0] != t->shape[0]) {
        rc =
            dml_err_set(err, DML_EFORMAT, "%s: optimizer state '%s' missing or not of shape [%lld]",
                        path, name, (long long)t->shape[0]);
        goto done;
      }
      /* finite, and the sums of squares (Adam's v, AdaGrad's sum, FTRL's n) not negative: one
       * bad value would turn the model NaN at the next step */
      int squares = strcmp(t->name, "adam.v") == 0 || strcmp(t->name, "adagrad.sum") == 0 ||
                    strcmp(t->name, "ftrl.n") == 0;
      for (int64_t j = 0; j < f->shape[0]; j++)
        if (!isfinite(f->data[j]) || (squares && f->data[j] < 0.0f)) {
          rc = dml_err_set(err, DML_EFORMAT, "%s: optimizer state '%s' element %lld is %g%s", path,
                           name, (long long)j, (double)f->data[j],
                           isfinite(f->data[j]) ? " (a sum of squares, not negative)" : "");
          goto done;
        }
    }
  }
  /* Everything checked: now copy. */
  copy_model_tensors(st, m);
  dml_model_zero_grads(m);
  if (o != NULL) {
    float *state = dml_optim_state_data(o);
    for (int i = 0; i < dml_optim_num_state(o); i++) {
      const dml_tensor_info *t = dml_optim_state_tensor(o, i);
      char name[DML_TENSOR_NAME_MAX + 8];
      snprintf(name, sizeof(name), OPTIM_PREFIX "%s", t->name);
      memcpy(state + t->offset, dml_safetensors_find(st, name)->data, t->count * sizeof(float));
    }
    dml_optim_set_step_count(o, step);
  }
done:
  if (rc == 0 && st_out)
    *st_out = st;
  else
    dml_safetensors_free(st);
  return rc;
}
