/* Tests for core: status table, error buffer, parsing, RNG determinism, JSON lines, atomic files. */
#include "core/internal.h"
#include "testutil.h"

#include <unistd.h>

static void test_status(void) {
  T_EQ_INT(strcmp(dml_strerror(0), "success"), 0);
  T_EQ_INT(strcmp(dml_strerror(DML_ETIMEDOUT), "timed out"), 0);
  T_EQ_INT(strcmp(dml_err_name(DML_EFORMAT), "EFORMAT"), 0);
  T_EQ_INT(strcmp(dml_strerror(-9999), "unknown error"), 0);
  dml_err e = {0};
  T_EQ_INT(dml_err_set(&e, DML_EIO, "file %s byte %d", "x.idx", 16), DML_EIO);
  T_EQ_INT(strcmp(dml_err_msg(&e), "file x.idx byte 16"), 0);
}

static void test_parse(void) {
  int64_t v;
  double d;
  uint64_t sz;
  dml_err e = {0};
  T_OK(dml_parse_i64("42", 0, 100, &v, &e));
  T_EQ_INT(v, 42);
  T_EQ_INT(dml_parse_i64("42x", 0, 100, &v, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "not an integer");
  T_EQ_INT(dml_parse_i64("101", 0, 100, &v, &e), DML_ERANGE);
  T_EQ_INT(dml_parse_i64("", 0, 100, &v, &e), DML_EINVAL);
  T_OK(dml_parse_double("0.05", 0, 1, &d, &e));
  T_NEAR(d, 0.05, 1e-12);
  T_EQ_INT(dml_parse_double("nan", 0, 1, &d, &e), DML_ERANGE);
  T_OK(dml_parse_size("4K", UINT64_MAX, &sz, &e));
  T_EQ_INT(sz, 4096);
  T_OK(dml_parse_size("64M", UINT64_MAX, &sz, &e));
  T_EQ_INT(sz, 64ull << 20);
  T_EQ_INT(dml_parse_size("4Q", UINT64_MAX, &sz, &e), DML_EINVAL);
  T_EQ_INT(dml_parse_size("99999999999999999999", UINT64_MAX, &sz, &e), DML_ERANGE);
}

static void test_rng(void) {
  dml_rng a, b;
  dml_rng_seed(&a, 7);
  dml_rng_seed(&b, 7);
  for (int i = 0; i < 100; i++) T_EQ_INT(dml_rng_next(&a), dml_rng_next(&b));
  uint32_t idx[100];
  for (uint32_t i = 0; i < 100; i++) idx[i] = i;
  dml_rng_shuffle_u32(&a, idx, 100);
  int seen[100] = {0}, moved = 0;
  for (int i = 0; i < 100; i++) {
    T_ASSERT(idx[i] < 100);
    seen[idx[i]]++;
    moved += idx[i] != (uint32_t)i;
  }
  for (int i = 0; i < 100; i++) T_EQ_INT(seen[i], 1);
  T_ASSERT(moved > 50);
  double mean = 0;
  for (int i = 0; i < 10000; i++) mean += dml_rng_uniform(&a);
  T_NEAR(mean / 10000, 0.5, 0.02);
  for (int i = 0; i < 1000; i++) T_ASSERT(dml_rng_below(&a, 3) < 3);
}

static void test_jsonl(void) {
  char path[] = "/tmp/distml_core_test_XXXXXX";
  int fd = mkstemp(path);
  T_ASSERT(fd >= 0);
  close(fd);
  unlink(path);
  dml_jsonl j;
  T_OK(dml_jsonl_open(&j, path, NULL));
  dml_jsonl_begin(&j);
  dml_jsonl_add_int(&j, "step", 3);
  dml_jsonl_add_double(&j, "loss", 0.5);
  dml_jsonl_add_str(&j, "name", "a\"b");
  dml_jsonl_add_double(&j, "bad", NAN);
  T_OK(dml_jsonl_end(&j));
  dml_jsonl_close(&j);
  FILE *f = fopen(path, "r");
  char line[256];
  T_ASSERT(fgets(line, sizeof(line), f) != NULL);
  fclose(f);
  unlink(path);
  T_EQ_INT(strcmp(line, "{\"step\":3,\"loss\":0.5,\"name\":\"a\\\"b\",\"bad\":null}\n"), 0);
}

static void test_atomic(void) {
  char dir[] = "/tmp/distml_atomic_XXXXXX";
  T_ASSERT(mkdtemp(dir) != NULL);
  char path[128];
  snprintf(path, sizeof(path), "%s/model.bin", dir);
  dml_atomic_file af;
  T_OK(dml_atomic_open(&af, path, NULL));
  fputs("old", af.f);
  T_OK(dml_atomic_commit(&af, NULL));
  T_OK(dml_atomic_open(&af, path, NULL));
  fputs("new but abandoned", af.f);
  dml_atomic_abort(&af);
  FILE *f = fopen(path, "r");
  char buf[32] = {0};
  T_ASSERT(fgets(buf, sizeof(buf), f) != NULL);
  fclose(f);
  T_EQ_INT(strcmp(buf, "old"), 0);
  /* Nothing but the committed file is left in the directory. */
  char cmd[256];
  snprintf(cmd, sizeof(cmd), "test $(ls %s | wc -l) -eq 1", dir);
  T_EQ_INT(system(cmd), 0);
  dml_err e = {0};
  T_EQ_INT(dml_atomic_open(&af, "/nonexistent-dir/x", &e), DML_EIO);
  T_CONTAINS(e.msg, "/nonexistent-dir/x");
  unlink(path);
  rmdir(dir);
}

int main(void) {
  test_status();
  test_parse();
  test_rng();
  test_jsonl();
  test_atomic();
  printf("core_test ok\n");
  return 0;
}
