/* Unit tests of one parameter-server shard driven frame by frame in a one-process communicator:
 * missing keys read as zero, pushes go through the server-side optimizer, a checkpoint restored
 * into a fresh server gives the same values and the same next update (optimizer state and step
 * count kept) for sparse keys and dense chunks, and bad checkpoints are rejected with the file
 * named. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "distml/ps.h"
#include "ps/ps_internal.h"
#include "testutil.h"

static dml_comm *comm;

static void push(dml_ps_server *s, uint64_t ts, const uint64_t *keys, const float *vals, size_t n) {
  dml__ps_msg m;
  memset(&m, 0, sizeof m);
  m.command = DML__PS_PUSH;
  m.timestamp = ts;
  m.key_lo = keys[0];
  m.key_hi = keys[n - 1];
  m.nkeys = m.nvals = n;
  m.value_type = DML__PS_VT_F32;
  size_t bytes = dml__ps_frame_bytes(n, n);
  void *buf = malloc(bytes);
  dml__ps_encode(buf, &m, keys, vals);
  dml_err err;
  T_OK(dml_ps_server_handle(s, 0, buf, bytes, &err));
  free(buf);
  void *rep;
  size_t len;
  T_OK(dml_comm_recv_alloc(comm, 0, DML__PS_TAG_REP, &rep, &len, NULL)); /* the ack */
  dml_comm_buf_free(rep);
}

/* A dense push of n values at keys [lo, lo + n) (inside one chunk). */
static void push_dense(dml_ps_server *s, uint64_t ts, uint64_t lo, const float *vals, size_t n) {
  dml__ps_msg m;
  memset(&m, 0, sizeof m);
  m.command = DML__PS_PUSH;
  m.flags = DML__PS_FLAG_DENSE;
  m.timestamp = ts;
  m.key_lo = lo;
  m.key_hi = lo + n - 1;
  m.nvals = n;
  m.value_type = DML__PS_VT_F32;
  size_t bytes = dml__ps_frame_bytes(0, n);
  void *buf = malloc(bytes);
  dml__ps_encode(buf, &m, NULL, vals);
  dml_err err;
  T_OK(dml_ps_server_handle(s, 0, buf, bytes, &err));
  free(buf);
  void *rep;
  size_t len;
  T_OK(dml_comm_recv_alloc(comm, 0, DML__PS_TAG_REP, &rep, &len, NULL));
  dml_comm_buf_free(rep);
}

static dml_ps_server *make(dml_optim_kind kind) {
  dml_ps_config cfg;
  dml_ps_config_init(&cfg);
  cfg.colocated = 1;
  cfg.staleness = DML_PS_ASP; /* every push is a step */
  dml_optim_config_init(&cfg.optim, kind);
  dml_ps_server *s;
  dml_err err;
  T_OK(dml_ps_server_create(&s, comm, &cfg, &err));
  return s;
}

static void roundtrip(dml_optim_kind kind, const char *path) {
  enum { N = 3000 };
  uint64_t keys[N];
  float g[N];
  for (int i = 0; i < N; i++) {
    keys[i] = (uint64_t)i * 7919u + ((uint64_t)1 << 40); /* sparse, large keys: the map grows */
    g[i] = (float)((i % 13) - 6) * 0.1f;
  }
  dml_ps_server *a = make(kind);
  T_ASSERT(dml_ps_server_value(a, keys[5]) == 0.0f);
  /* dense chunks 24 and 0 too, 24 made first (one timestamp per request: the sparse push, then
   * the dense ones) */
  const uint64_t D3 = 3 * 65536 + 10;
  for (int t = 1; t <= 4; t++) {
    push(a, (uint64_t)(3 * t), keys, g, N);
    push_dense(a, (uint64_t)(3 * t + 1), D3, g + 7, 500);
    push_dense(a, (uint64_t)(3 * t + 2), 0, g, 1000);
  }
  T_ASSERT(dml_ps_server_value(a, keys[0]) != 0.0f); /* g[0] = -0.6: every optimizer moves it */
  T_ASSERT(dml_ps_server_dense_value(a, 0) != 0.0f && dml_ps_server_dense_value(a, D3 + 1) != 0);
  dml_err err;
  T_OK(dml_ps_server_checkpoint(a, path, &err));
  dml_ps_server *b = make(kind);
  T_OK(dml_ps_server_restore(b, path, &err));
  for (int i = 0; i < N; i++)
    T_ASSERT(dml_ps_server_value(a, keys[i]) == dml_ps_server_value(b, keys[i]));
  for (uint64_t k = 0; k < 4 * 65536; k += 37)
    T_ASSERT(dml_ps_server_dense_value(a, k) == dml_ps_server_dense_value(b, k));
  /* the next step depends on the optimizer state and (Adam) the step count */
  push(a, 15, keys, g, N);
  push(b, 15, keys, g, N);
  push_dense(a, 16, D3, g + 7, 500);
  push_dense(b, 16, D3, g + 7, 500);
  for (int i = 0; i < N; i++)
    T_ASSERT(dml_ps_server_value(a, keys[i]) == dml_ps_server_value(b, keys[i]));
  for (uint64_t k = D3; k < D3 + 500; k++)
    T_ASSERT(dml_ps_server_dense_value(a, k) == dml_ps_server_dense_value(b, k));
  T_ASSERT(dml_ps_server_dense_value(b, D3) != dml_ps_server_dense_value(b, D3 + 100000));
  /* a resent push (same timestamp) is applied once, also after a restore */
  float before = dml_ps_server_value(b, keys[0]);
  push(b, 15, keys, g, N);
  T_ASSERT(dml_ps_server_value(b, keys[0]) == before);
  dml_ps_server_stats st;
  dml_ps_server_stats_get(b, &st);
  T_EQ_INT(st.dup_pushes, 1);
  T_EQ_INT(st.keys, N);
  /* restoring into a server that already holds keys is refused */
  T_EQ_INT(dml_ps_server_restore(b, path, &err), DML_ESTATE);
  dml_ps_server_free(a);
  dml_ps_server_free(b);
}

int main(void) {
  dml_comm_opts o;
  dml_comm_opts_default(&o);
  o.backend = "tcp";
  o.rank = 0;
  o.world_size = 1;
  dml_err err;
  T_OK(dml_comm_init(&comm, &o, &err));
  char path[256];
  snprintf(path, sizeof path, "%s/distml_ps_ckpt_%d.safetensors",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
  roundtrip(DML_OPT_FTRL, path);
  roundtrip(DML_OPT_ADAM, path);
  roundtrip(DML_OPT_ADAGRAD, path);
  roundtrip(DML_OPT_SGD, path);

  /* wrong optimizer: the file is named */
  dml_ps_server *s = make(DML_OPT_FTRL);
  int rc = dml_ps_server_restore(s, path, &err); /* written by SGD */
  T_EQ_INT(rc, DML_EFORMAT);
  T_CONTAINS(err.msg, path);
  T_CONTAINS(err.msg, "sgd");
  /* a checkpoint of format 1 (64K-key dense chunks, an older distml): refused by name */
  FILE *f = fopen(path, "rb");
  T_ASSERT(f != NULL);
  static char ck[1 << 20];
  size_t got = fread(ck, 1, sizeof ck, f);
  fclose(f);
  char *fmt = memmem(ck, got, "\"ps.format\":\"2\"", 15);
  T_ASSERT(fmt != NULL);
  fmt[13] = '1';
  f = fopen(path, "wb");
  T_ASSERT(f != NULL && fwrite(ck, 1, got, f) == got);
  fclose(f);
  dml_ps_server *s1 = make(DML_OPT_SGD);
  T_EQ_INT(dml_ps_server_restore(s1, path, &err), DML_EFORMAT);
  T_CONTAINS(err.msg, path);
  T_CONTAINS(err.msg, "format 1");
  dml_ps_server_free(s1);
  /* garbage file */
  f = fopen(path, "wb");
  T_ASSERT(f != NULL);
  fputs("not a checkpoint at all", f);
  fclose(f);
  rc = dml_ps_server_restore(s, path, &err);
  T_ASSERT(rc == DML_EFORMAT || rc == DML_EIO);
  T_CONTAINS(err.msg, path);
  dml_ps_server_free(s);
  remove(path);
  /* summed pushpulls need BSP and a sum-only server: refused otherwise, on either side */
  dml_ps_config sc;
  dml_ps_config_init(&sc);
  sc.summed_pushpull = 1;
  dml_ps_server *bad = NULL;
  T_EQ_INT(dml_ps_server_create(&bad, comm, &sc, &err), DML_EINVAL); /* FTRL */
  T_CONTAINS(err.msg, "summed pushpulls");
  sc.sum_only = 1;
  sc.staleness = 2;
  T_EQ_INT(dml_ps_server_create(&bad, comm, &sc, &err), DML_EINVAL);
  T_ASSERT(bad == NULL);
  sc.staleness = 0;
  sc.recover = 1;
  T_EQ_INT(dml_ps_server_create(&bad, comm, &sc, &err), DML_EUNSUPPORTED);
  T_CONTAINS(err.msg, "not recovered");
  sc.recover = 0;
  sc.staleness = 2;
  sc.colocated = 1;
  dml_ps *bw = NULL;
  T_EQ_INT(dml_ps_create(&bw, comm, &sc, &err), DML_EINVAL);
  T_CONTAINS(err.msg, "summed pushpulls");
  dml_comm_free(comm);
  printf("server_test: ok\n");
  return 0;
}
