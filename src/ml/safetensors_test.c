/* Tests for safetensors files: bit-exact round trip, the byte layout, every kind of corrupt or
 * hostile file rejected with a message naming the file, model save/load (config in metadata,
 * tensors checked against it) and checkpoints that resume bit-identically. */
#include "core/internal.h"
#include "distml/ml.h"
#include "testutil.h"

#include <sys/stat.h>
#include <unistd.h>

static char g_dir[] = "/tmp/distml_st_test_XXXXXX";

static const char *tmp_path(const char *name) {
  static char buf[4][256];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof(buf[k]), "%s/%s", g_dir, name);
  return buf[k];
}

/* Writes a raw file: 8-byte little-endian length of header, header, then ndata data bytes. */
static const char *write_raw(const char *name, uint64_t hlen, const char *header, size_t ndata) {
  const char *p = tmp_path(name);
  FILE *f = fopen(p, "wb");
  T_ASSERT(f != NULL);
  for (int i = 0; i < 8; i++) fputc((int)((hlen >> (8 * i)) & 0xff), f);
  fwrite(header, 1, strlen(header), f);
  for (size_t i = 0; i < ndata; i++) fputc((int)(i * 7 & 0xff), f);
  fclose(f);
  return p;
}

static void expect_reject(const char *path, int code, const char *what) {
  dml_safetensors *st = NULL;
  dml_err err = {0};
  int rc = dml_safetensors_read(path, &st, &err);
  if (rc != code)
    T_FAIL("%s: read returned %d (%s), want %d; msg: %s", path, rc, dml_err_name(rc), code,
           err.msg);
  T_ASSERT(st == NULL);
  T_CONTAINS(err.msg, path);
  T_CONTAINS(err.msg, what);
}

static void test_round_trip(void) {
  float a[6], b[1] = {3.5f}, c[1];
  uint32_t bits[6] = {0x00000000u,
                      0x80000000u,
                      0x00000001u /* subnormal */,
                      0x7f800000u /* inf */,
                      0x7fc12345u /* NaN payload */,
                      0x3f9e0419u};
  memcpy(a, bits, sizeof(a));
  dml_st_tensor ts[3] = {
      {.name = "layer.weight", .ndim = 2, .shape = {2, 3}, .data = a},
      {.name = "scalar", .ndim = 0, .data = b},
      {.name = "empty", .ndim = 2, .shape = {0, 4}, .data = c},
  };
  dml_st_meta meta[2] = {{"step", "42"}, {"note", "quote \" and \\ and \xc3\xa9"}};
  const char *p = tmp_path("rt.safetensors");
  dml_err err = {0};
  if (dml_safetensors_write(p, ts, 3, meta, 2, &err)) T_FAIL("%s", err.msg);

  /* Layout: length is a multiple of 8, the header is JSON padded with spaces, data follows. */
  FILE *f = fopen(p, "rb");
  uint8_t lb[8];
  T_EQ_INT(fread(lb, 1, 8, f), 8);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; i++) hlen |= (uint64_t)lb[i] << (8 * i);
  T_EQ_INT(hlen % 8, 0);
  char *h = dml__calloc(1, hlen + 1);
  T_EQ_INT(fread(h, 1, hlen, f), hlen);
  T_EQ_INT(h[0], '{');
  T_CONTAINS(h, "\"dtype\":\"F32\"");
  T_CONTAINS(h, "\"__metadata__\"");
  fseek(f, 0, SEEK_END);
  T_EQ_INT(ftell(f), (long)(8 + hlen + 7 * 4));
  fclose(f);
  dml__free(h);

  dml_safetensors *st = NULL;
  if (dml_safetensors_read(p, &st, &err)) T_FAIL("%s", err.msg);
  T_EQ_INT(dml_safetensors_count(st), 3);
  const dml_st_tensor *t = dml_safetensors_find(st, "layer.weight");
  T_ASSERT(t != NULL);
  T_EQ_INT(t->ndim, 2);
  T_EQ_INT(t->shape[0], 2);
  T_EQ_INT(t->shape[1], 3);
  T_EQ_INT(memcmp(t->data, bits, sizeof(bits)), 0); /* bit-exact, NaN payload included */
  t = dml_safetensors_find(st, "scalar");
  T_EQ_INT(t->ndim, 0);
  T_EQ_INT(t->data[0] == 3.5f, 1);
  t = dml_safetensors_find(st, "empty");
  T_EQ_INT(t->shape[0], 0);
  T_ASSERT(dml_safetensors_find(st, "nope") == NULL);
  T_EQ_INT(strcmp(dml_safetensors_meta(st, "step"), "42"), 0);
  T_EQ_INT(strcmp(dml_safetensors_meta(st, "note"), meta[1].value), 0);
  T_EQ_INT(dml_safetensors_meta_count(st), 2);
  dml_safetensors_free(st);

  /* Writer refuses duplicate names and the reserved name. */
  ts[1].name = "layer.weight";
  T_EQ_INT(dml_safetensors_write(p, ts, 2, NULL, 0, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "twice");
  ts[1].name = "__metadata__";
  T_EQ_INT(dml_safetensors_write(p, ts, 2, NULL, 0, &err), DML_EINVAL);
  /* ... and the failed writes left the good file in place. */
  T_OK(dml_safetensors_read(p, &st, NULL));
  dml_safetensors_free(st);
}

static void test_corrupt(void) {
  const char *good = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}    ";
  size_t gl = strlen(good);
  dml_safetensors *st;
  T_OK(dml_safetensors_read(write_raw("good", gl, good, 8), &st, NULL));
  dml_safetensors_free(st);

  expect_reject(write_raw("trunc_data", gl, good, 5), DML_EFORMAT,
                "beyond the data section of 5 bytes");
  /* A real file cut short by one byte, and cut inside its header. */
  const char *rt = tmp_path("rt.safetensors");
  struct stat sb;
  T_ASSERT(stat(rt, &sb) == 0);
  T_ASSERT(truncate(rt, sb.st_size - 1) == 0);
  expect_reject(rt, DML_EFORMAT, "beyond the data section");
  T_ASSERT(truncate(rt, 40) == 0);
  expect_reject(rt, DML_EFORMAT, "exceeds the 32 bytes that follow");
  expect_reject(write_raw("trailing", gl, good, 12), DML_EFORMAT, "trailing");
  /* Only 5 bytes: not even the length. */
  const char *p = tmp_path("tiny");
  FILE *f = fopen(p, "wb");
  fwrite("abcde", 1, 5, f);
  fclose(f);
  expect_reject(p, DML_EFORMAT, "too short");
  expect_reject(write_raw("hlen_big", 1ull << 40, good, 8), DML_EFORMAT,
                "header length 1099511627776 exceeds");
  expect_reject(write_raw("hlen_short", gl - 10, good, 0), DML_EFORMAT, "bad JSON");
  expect_reject(write_raw("badjson", 10, "{\"a\": [1, ", 0), DML_EFORMAT, "bad JSON");
  expect_reject(write_raw("notobj", 5, "[1,2]", 0), DML_EFORMAT, "not an object");
  const char *h;
  h = "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
  expect_reject(write_raw("dtype", strlen(h), h, 4), DML_EUNSUPPORTED, "dtype F16");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}";
  expect_reject(write_raw("range", strlen(h), h, 8), DML_EFORMAT, "beyond the data section");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}";
  expect_reject(write_raw("shape", strlen(h), h, 8), DML_EFORMAT,
                "8 data bytes for shape [3] (want 12)");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}";
  expect_reject(write_raw("negshape", strlen(h), h, 8), DML_EFORMAT, "non-negative");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,"
      "8]}}";
  expect_reject(write_raw("overflow", strlen(h), h, 8), DML_EFORMAT, "overflows");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}";
  expect_reject(write_raw("dims", strlen(h), h, 4), DML_EFORMAT, "5 dimensions");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}";
  expect_reject(write_raw("offorder", strlen(h), h, 8), DML_EFORMAT, "begin <= end");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
  expect_reject(write_raw("overlap", strlen(h), h, 12), DML_EFORMAT, "overlaps");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
  expect_reject(write_raw("gap", strlen(h), h, 8), DML_EFORMAT, "unused data bytes");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}";
  expect_reject(write_raw("nooffs", strlen(h), h, 8), DML_EFORMAT, "data_offsets must be");
  h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{}}";
  expect_reject(write_raw("dupkey", strlen(h), h, 8), DML_EFORMAT, "bad JSON");
  h = "{\"__metadata__\":{\"k\":5}}";
  expect_reject(write_raw("metaval", strlen(h), h, 0), DML_EFORMAT, "not a string");
  expect_reject(tmp_path("does_not_exist"), DML_ENOENT, "cannot open");
  expect_reject(g_dir, DML_EISDIR, "directory");
}

/* ---------------------------------------------------------------------------------------------
 * Models and checkpoints. */

static dml_model *make_mlp(int in, const char *hidden, int k, uint64_t seed) {
  dml_model_config cfg;
  dml_model_config_init(&cfg, DML_MODEL_MLP, in, k);
  cfg.seed = seed;
  T_OK(dml_model_config_set_hidden(&cfg, hidden, NULL));
  dml_model *m;
  T_OK(dml_model_create(&m, &cfg, NULL));
  return m;
}

static void test_model_files(void) {
  dml_model *m = make_mlp(12, "7,5", 4, 3);
  const char *p = tmp_path("mlp.safetensors");
  dml_err err = {0};
  dml_st_meta extra[1] = {{"train.epoch", "3"}};
  if (dml_model_save(m, p, NULL, 0, extra, 1, &err)) T_FAIL("%s", err.msg);
  dml_model *l = NULL;
  if (dml_model_load(p, 32, &l, &err)) T_FAIL("%s", err.msg);
  const dml_model_config *c = dml_model_get_config(l);
  T_EQ_INT(c->kind, DML_MODEL_MLP);
  T_EQ_INT(c->in_dim, 12);
  T_EQ_INT(c->num_classes, 4);
  T_EQ_INT(c->num_hidden, 2);
  T_EQ_INT(c->hidden[1], 5);
  T_EQ_INT(c->max_batch, 32);
  T_EQ_INT(dml_model_num_params(l), dml_model_num_params(m));
  T_EQ_INT(
      memcmp(dml_model_params(l), dml_model_params(m), dml_model_num_params(m) * sizeof(float)), 0);
  dml_model_free(l);

  /* The metadata a Python user sees. */
  dml_safetensors *st;
  T_OK(dml_safetensors_read(p, &st, NULL));
  T_EQ_INT(strcmp(dml_safetensors_meta(st, "distml.model"), "mlp"), 0);
  T_EQ_INT(strcmp(dml_safetensors_meta(st, "distml.hidden"), "7,5"), 0);
  T_EQ_INT(strcmp(dml_safetensors_meta(st, "train.epoch"), "3"), 0);
  T_EQ_INT(dml_safetensors_find(st, "fc2.weight")->shape[1], 7);
  dml_safetensors_free(st);

  /* The model's own keys cannot be overridden. */
  dml_st_meta bad[1] = {{"distml.in_dim", "5"}};
  T_EQ_INT(dml_model_save(m, p, NULL, 0, bad, 1, &err), DML_EINVAL);

  /* Files whose tensors do not match their config. */
  float w[12 * 7] = {0}, b[7] = {0};
  dml_st_meta meta[4] = {{"distml.model", "mlp"},
                         {"distml.in_dim", "12"},
                         {"distml.num_classes", "4"},
                         {"distml.hidden", "7"}};
  dml_st_tensor ts[4] = {{.name = "fc1.weight", .ndim = 2, .shape = {7, 11}, .data = w},
                         {.name = "fc1.bias", .ndim = 1, .shape = {7}, .data = b},
                         {.name = "fc2.weight", .ndim = 2, .shape = {4, 7}, .data = w},
                         {.name = "fc2.bias", .ndim = 1, .shape = {4}, .data = b}};
  const char *q = tmp_path("bad_model.safetensors");
  T_OK(dml_safetensors_write(q, ts, 4, meta, 4, NULL));
  T_EQ_INT(dml_model_load(q, 0, &l, &err), DML_EFORMAT);
  T_CONTAINS(err.msg, q);
  T_CONTAINS(err.msg, "tensor 'fc1.weight' has shape [7, 11], model mlp 12-7-4 needs [7, 12]");
  T_ASSERT(l == NULL);
  ts[0].shape[1] = 12;
  T_OK(dml_safetensors_write(q, ts, 3, meta, 4, NULL)); /* fc2.bias missing */
  T_EQ_INT(dml_model_load(q, 0, &l, &err), DML_EFORMAT);
  T_CONTAINS(err.msg, "tensor 'fc2.bias' missing");
  w[5] = NAN;
  T_OK(dml_safetensors_write(q, ts, 4, meta, 4, NULL));
  T_EQ_INT(dml_model_load(q, 0, &l, &err), DML_EFORMAT);
  T_CONTAINS(err.msg, "'fc1.weight' element 5 is not finite");
  w[5] = 0;
  T_OK(dml_safetensors_write(q, ts, 4, meta, 3, NULL)); /* no distml.hidden: softmax-like mlp */
  T_EQ_INT(dml_model_load(q, 0, &l, &err), DML_EFORMAT);
  T_CONTAINS(err.msg, "mlp needs 1..");
  meta[0].value = "cnn";
  T_OK(dml_safetensors_write(q, ts, 4, meta, 4, NULL));
  T_EQ_INT(dml_model_load(q, 0, &l, &err), DML_EFORMAT);
  T_CONTAINS(err.msg, "distml.model");
  T_OK(dml_safetensors_write(q, ts, 4, NULL, 0, NULL));
  T_EQ_INT(dml_model_load(q, 0, &l, &err), DML_EFORMAT);
  T_CONTAINS(err.msg, "not a distml model file");
  dml_model_free(m);
}

static void train_steps(dml_model *m, dml_optim *o, int steps, uint64_t seed) {
  enum { N = 8, D = 12 };
  float x[N * D];
  int32_t y[N];
  dml_rng rng;
  for (int s = 0; s < steps; s++) {
    dml_rng_seed3(&rng, seed, (uint64_t)s, 0);
    for (int i = 0; i < N * D; i++) x[i] = dml_rng_normal(&rng);
    for (int i = 0; i < N; i++) y[i] = (int32_t)dml_rng_below(&rng, 4);
    dml_batch b = {.n = N, .dim = D, .x = x, .y = y};
    T_OK(dml_model_forward_backward(m, &b, NULL, NULL, NULL, NULL, NULL));
    dml_optim_step(o, dml_model_params(m), dml_model_grads(m));
  }
}

static void test_checkpoint(void) {
  dml_optim_config oc;
  dml_optim_config_init(&oc, DML_OPT_ADAM);
  dml_model *a = make_mlp(12, "9", 4, 1), *b = make_mlp(12, "9", 4, 2);
  dml_optim *oa, *ob;
  T_OK(dml_optim_create(&oa, &oc, dml_model_num_params(a), NULL));
  T_OK(dml_optim_create(&ob, &oc, dml_model_num_params(b), NULL));
  train_steps(a, oa, 5, 100);
  const char *p = tmp_path("ckpt.safetensors");
  dml_st_meta meta[1] = {{"train.step", "5"}};
  dml_err err = {0};
  if (dml_checkpoint_save(p, a, oa, meta, 1, &err)) T_FAIL("%s", err.msg);
  dml_safetensors *st = NULL;
  if (dml_checkpoint_restore(p, b, ob, &st, &err)) T_FAIL("%s", err.msg);
  T_EQ_INT(strcmp(dml_safetensors_meta(st, "train.step"), "5"), 0);
  T_ASSERT(dml_safetensors_find(st, "optim.adam.m") != NULL);
  dml_safetensors_free(st);
  T_EQ_INT(dml_optim_step_count(ob), 5);
  /* Continuing from the checkpoint gives bit-identical parameters. */
  train_steps(a, oa, 3, 200);
  train_steps(b, ob, 3, 200);
  T_EQ_INT(
      memcmp(dml_model_params(a), dml_model_params(b), dml_model_num_params(a) * sizeof(float)), 0);

  /* Mismatches are refused before anything is modified. */
  dml_model *c = make_mlp(12, "8", 4, 1);
  float before = dml_model_params(c)[0];
  T_EQ_INT(dml_checkpoint_restore(p, c, NULL, NULL, &err), DML_EMISMATCH);
  T_CONTAINS(err.msg, "checkpoint holds model mlp 12-9-4, this run has mlp 12-8-4");
  T_EQ_INT(dml_model_params(c)[0] == before, 1);
  dml_optim *os;
  dml_optim_config_init(&oc, DML_OPT_MOMENTUM);
  T_OK(dml_optim_create(&os, &oc, dml_model_num_params(b), NULL));
  T_EQ_INT(dml_checkpoint_restore(p, b, os, NULL, &err), DML_EMISMATCH);
  T_CONTAINS(err.msg, "optimizer is adam, this run uses momentum");
  dml_optim_free(os);
  dml_model_free(c);
  dml_model_free(a);
  dml_model_free(b);
  dml_optim_free(oa);
  dml_optim_free(ob);
}

/* ---------------------------------------------------------------------------------------------
 * Out of memory at every allocation in turn: each call fails cleanly with DML_ENOMEM (the
 * ASan build also checks that nothing leaks), and once enough allocations succeed, it works. */
static long g_fail_at = -1, g_allocs;

static int should_fail(void) {
  return g_fail_at >= 0 && g_allocs++ == g_fail_at;
}
static void *oom_malloc(size_t n) {
  return should_fail() ? NULL : malloc(n);
}
static void *oom_realloc(void *p, size_t n) {
  return should_fail() ? NULL : realloc(p, n);
}
static void *oom_calloc(size_t c, size_t n) {
  return should_fail() ? NULL : calloc(c, n);
}

enum { OP_LOAD, OP_SAVE, OP_CREATE, OP_OPTIM, OP_RESTORE, OP_COUNT };

static int run_op(int op, const char *model_path, const char *ckpt_path, dml_model *ref,
                  dml_optim *ref_o, dml_err *err) {
  dml_model *m = NULL;
  dml_optim *o = NULL;
  int rc = 0;
  switch (op) {
    case OP_LOAD: rc = dml_model_load(model_path, 0, &m, err); break;
    case OP_SAVE:
      rc = dml_model_save(ref, tmp_path("oom_save.safetensors"), NULL, 0, NULL, 0, err);
      break;
    case OP_CREATE: rc = dml_model_create(&m, dml_model_get_config(ref), err); break;
    case OP_OPTIM: {
      dml_optim_config oc;
      dml_optim_config_init(&oc, DML_OPT_ADAM);
      rc = dml_optim_create(&o, &oc, 1000, err);
      break;
    }
    case OP_RESTORE: rc = dml_checkpoint_restore(ckpt_path, ref, ref_o, NULL, err); break;
  }
  dml_model_free(m);
  dml_optim_free(o);
  return rc;
}

static void test_out_of_memory(void) {
  dml_model *ref = make_mlp(12, "9,7", 4, 1);
  dml_optim_config oc;
  dml_optim_config_init(&oc, DML_OPT_MOMENTUM);
  dml_optim *ref_o;
  T_OK(dml_optim_create(&ref_o, &oc, dml_model_num_params(ref), NULL));
  char mp[256], cp[256]; /* tmp_path's buffers rotate: keep copies */
  snprintf(mp, sizeof(mp), "%s", tmp_path("oom.safetensors"));
  snprintf(cp, sizeof(cp), "%s", tmp_path("oom_ckpt.safetensors"));
  T_OK(dml_model_save(ref, mp, NULL, 0, NULL, 0, NULL));
  T_OK(dml_checkpoint_save(cp, ref, ref_o, NULL, 0, NULL));
  T_OK(dml_replace_allocator(oom_malloc, oom_realloc, oom_calloc, free));
  for (int op = 0; op < OP_COUNT; op++) {
    long k;
    for (k = 0; k < 1000; k++) {
      dml_err err = {0};
      g_allocs = 0;
      g_fail_at = k;
      int rc = run_op(op, mp, cp, ref, ref_o, &err);
      int failed_alloc = g_allocs > k;
      g_fail_at = -1;
      if (!failed_alloc) {
        if (rc != 0) T_FAIL("op %d with no allocation failing: %s", op, err.msg);
        break;
      }
      /* rc 0 is allowed: core's atomic commit skips the directory fsync if its strdup fails. */
      if (rc != DML_ENOMEM && rc != 0)
        T_FAIL("op %d, allocation %ld failing: rc %d (%s)", op, k, rc, err.msg);
    }
    T_ASSERT(k > 0 && k < 1000);
  }
  g_fail_at = -1;
  T_OK(dml_replace_allocator(malloc, realloc, calloc, free));
  dml_model_free(ref);
  dml_optim_free(ref_o);
}

static void cleanup(void) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
}

/* For tests/test_safetensors_python.sh: "--write-sample DIR" saves an MLP as DIR/model.safetensors
 * and its parameters, one per line in file order, as DIR/model.txt; "--load FILE" loads a model
 * file and prints its config and the sum of its parameters. */
static int tool_main(int argc, char **argv) {
  dml_err err = {0};
  if (argc == 3 && strcmp(argv[1], "--write-sample") == 0) {
    dml_model *m = make_mlp(784, "16", 10, 7);
    char path[512];
    snprintf(path, sizeof(path), "%s/model.safetensors", argv[2]);
    dml_st_meta meta[1] = {{"train.epoch", "2"}};
    if (dml_model_save(m, path, NULL, 0, meta, 1, &err)) T_FAIL("%s", err.msg);
    snprintf(path, sizeof(path), "%s/model.txt", argv[2]);
    FILE *f = fopen(path, "w");
    T_ASSERT(f != NULL);
    const float *p = dml_model_params(m);
    for (size_t i = 0; i < dml_model_num_params(m); i++) fprintf(f, "%.9g\n", (double)p[i]);
    T_ASSERT(fclose(f) == 0);
    dml_model_free(m);
    return 0;
  }
  if (argc == 3 && strcmp(argv[1], "--load") == 0) {
    dml_model *m;
    if (dml_model_load(argv[2], 0, &m, &err)) {
      fprintf(stderr, "%s\n", err.msg);
      return 1;
    }
    const dml_model_config *c = dml_model_get_config(m);
    double sum = 0;
    for (size_t i = 0; i < dml_model_num_params(m); i++) sum += dml_model_params(m)[i];
    printf("%s %d %d %zu %.9g\n", dml_model_kind_name(c->kind), c->in_dim, c->num_classes,
           dml_model_num_params(m), sum);
    dml_model_free(m);
    return 0;
  }
  fprintf(stderr, "usage: safetensors_test [--write-sample DIR | --load FILE]\n");
  return 2;
}

int main(int argc, char **argv) {
  if (argc > 1) return tool_main(argc, argv);
  T_ASSERT(mkdtemp(g_dir) != NULL);
  test_round_trip();
  test_corrupt();
  test_model_files();
  test_checkpoint();
  test_out_of_memory();
  cleanup();
  printf("safetensors_test: ok\n");
  return 0;
}
