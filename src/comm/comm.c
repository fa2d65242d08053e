/* The public communicator API: option and environment resolution, the backend registry, argument
 * checks, and the blocking calls built as wait(isend/irecv) with the communicator's timeout.
 * Transports live behind dml__comm_backend (comm_tcp.c, comm_mpi.c); nothing here touches a
 * socket. */
#include "comm/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const dml__comm_backend *const g_backends[] = {&dml__comm_tcp, &dml__comm_mpi};

void dml_comm_opts_default(dml_comm_opts *opts) {
  memset(opts, 0, sizeof(*opts));
  opts->rank = -1;
  opts->world_size = -1;
}

int dml__comm_fail(dml_comm *c, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char msg[sizeof(c->err.msg)];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&c->err_mu);
  c->err.code = code;
  memcpy(c->err.msg, msg, sizeof(msg));
  pthread_mutex_unlock(&c->err_mu);
  return code;
}

/* The launcher families, in order of precedence: the first whose rank variable is set gives both
 * rank and world size. */
static const char *const g_env_rank[] = {"DISTML_RANK", "RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                                         "SLURM_PROCID"};
static const char *const g_env_size[] = {"DISTML_WORLD_SIZE", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE",
                                         "PMI_SIZE", "SLURM_NTASKS"};

static int env_int(const char *name, int64_t min, int64_t max, int *out, dml_err *err) {
  int64_t v;
  int rc = dml_env_i64(name, -1, min, max, &v, err);
  if (rc) return rc;
  *out = (int)v;
  return 0;
}

static int resolve_rank_size(const dml_comm_opts *o, int *rank, int *size, int mpi, dml_err *err) {
  *rank = o->rank;
  *size = o->world_size;
  if (*rank < 0 || *size < 0) {
    for (size_t i = 0; i < DML__ARRAY_LEN(g_env_rank); i++) {
      if (getenv(g_env_rank[i]) == NULL) continue;
      int r = -1, s = -1;
      int rc = env_int(g_env_rank[i], 0, 1 << 20, &r, err);
      if (rc) return rc;
      rc = env_int(g_env_size[i], 1, 1 << 20, &s, err);
      if (rc) return rc;
      if (s < 0)
        return dml_err_set(err, DML_EINVAL,
                           "%s is set but %s is not: set both (rank and world size)", g_env_rank[i],
                           g_env_size[i]);
      if (*rank < 0) *rank = r;
      if (*size < 0) *size = s;
      break;
    }
  }
  if (*rank < 0 && *size < 0 && !mpi) {
    *rank = 0;
    *size = 1;
  }
  if (mpi) return 0; /* MPI knows its own rank and size; the backend checks any given values */
  if (*size < 1)
    return dml_err_set(err, DML_EINVAL, "world size is not set (DISTML_WORLD_SIZE or WORLD_SIZE)");
  if (*rank < 0) return dml_err_set(err, DML_EINVAL, "rank is not set (DISTML_RANK or RANK)");
  if (*rank >= *size)
    return dml_err_set(err, DML_EINVAL, "rank %d is out of range for world size %d", *rank, *size);
  return 0;
}

static int is_loopback(const char *host) {
  return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0;
}

static int resolve_cfg(dml_comm *c, const dml_comm_opts *o, const dml__comm_backend *be,
                       dml_err *err) {
  dml__comm_cfg *cfg = &c->cfg;
  int mpi = strcmp(be->name, "mpi") == 0;
  int rc = resolve_rank_size(o, &cfg->rank, &cfg->world_size, mpi, err);
  if (rc) return rc;
  const char *ma = o->master_addr ? o->master_addr : getenv("MASTER_ADDR");
  if (ma == NULL || *ma == '\0') ma = "127.0.0.1";
  cfg->master_port = o->master_port;
  if (cfg->master_port == 0) {
    int p = -1;
    rc = env_int("MASTER_PORT", 1, 65535, &p, err);
    if (rc) return rc;
    cfg->master_port = p > 0 ? p : 0;
  } else if (cfg->master_port < 0 || cfg->master_port > 65535) {
    return dml_err_set(err, DML_EINVAL, "master_port %d out of range 1..65535", cfg->master_port);
  }
  if (!mpi && cfg->world_size > 1 && cfg->master_port == 0)
    return dml_err_set(
        err, DML_EINVAL,
        "world size %d needs the coordinator port: set MASTER_PORT (or opts.master_port)",
        cfg->world_size);
  const char *ba = o->bind_addr ? o->bind_addr : getenv("DISTML_BIND_ADDR");
  if (ba == NULL || *ba == '\0') ba = is_loopback(ma) ? "127.0.0.1" : ma;
  const char *tok = o->token ? o->token : getenv("DISTML_TOKEN");
  if (tok != NULL && *tok == '\0') tok = NULL;
  c->master_addr = dml__strdup(ma);
  c->bind_addr = dml__strdup(ba);
  c->token = tok ? dml__strdup(tok) : NULL;
  if (c->master_addr == NULL || c->bind_addr == NULL || (tok && c->token == NULL))
    return dml_err_set(err, DML_ENOMEM, "out of memory");
  cfg->master_addr = c->master_addr;
  cfg->bind_addr = c->bind_addr;
  cfg->token = c->token;
  cfg->timeout_ms = o->timeout_ms;
  if (cfg->timeout_ms == 0) {
    rc = env_int("DISTML_TIMEOUT_MS", 1, 1 << 30, &cfg->timeout_ms, err);
    if (rc) return rc;
    if (cfg->timeout_ms <= 0) cfg->timeout_ms = 60000;
  } else if (cfg->timeout_ms < 0) {
    return dml_err_set(err, DML_EINVAL, "timeout_ms %d must be positive", cfg->timeout_ms);
  }
  cfg->max_message_bytes = o->max_message_bytes ? o->max_message_bytes : (uint64_t)1 << 30;
  return 0;
}

int dml_comm_init(dml_comm **out, const dml_comm_opts *opts, dml_err *err) {
  if (out == NULL) return dml_err_set(err, DML_EINVAL, "dml_comm_init: out is NULL");
  *out = NULL;
  dml_comm_opts def;
  if (opts == NULL) {
    dml_comm_opts_default(&def);
    opts = &def;
  }
  const char *name = opts->backend ? opts->backend : getenv("DISTML_BACKEND");
  if (name == NULL || *name == '\0') name = "tcp";
  const dml__comm_backend *be = NULL;
  for (size_t i = 0; i < DML__ARRAY_LEN(g_backends); i++)
    if (strcmp(g_backends[i]->name, name) == 0) be = g_backends[i];
  if (be == NULL)
    return dml_err_set(err, DML_EINVAL, "unknown communicator backend '%s' (tcp or mpi)", name);
  dml_comm *c = dml__calloc(1, sizeof(*c));
  if (c == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory for the communicator");
  c->ops = be;
  pthread_mutex_init(&c->err_mu, NULL);
  atomic_init(&c->bytes_sent, 0);
  int rc = resolve_cfg(c, opts, be, err);
  if (rc == 0) rc = be->init(c, err);
  if (rc) {
    c->impl = NULL;
    dml_comm_free(c);
    return rc;
  }
  *out = c;
  return 0;
}

void dml_comm_free(dml_comm *c) {
  if (c == NULL) return;
  if (c->impl != NULL) c->ops->fini(c);
  dml__free(c->master_addr);
  dml__free(c->bind_addr);
  if (c->token) {
    memset(c->token, 0, strlen(c->token));
    dml__free(c->token);
  }
  pthread_mutex_destroy(&c->err_mu);
  dml__free(c);
}

int dml_comm_rank(const dml_comm *c) {
  return c ? c->cfg.rank : -1;
}
int dml_comm_size(const dml_comm *c) {
  return c ? c->cfg.world_size : 0;
}
const char *dml_comm_backend(const dml_comm *c) {
  return c ? c->ops->name : "";
}
int dml_comm_timeout_ms(const dml_comm *c) {
  return c ? c->cfg.timeout_ms : 0;
}
uint64_t dml_comm_bytes_sent(const dml_comm *c) {
  return c ? atomic_load(&((dml_comm *)c)->bytes_sent) : 0;
}

int dml_comm_direct(const dml_comm *c, int peer) {
  if (c == NULL || c->ops->direct == NULL || peer < 0 || peer >= c->cfg.world_size ||
      peer == c->cfg.rank)
    return 0;
  return c->ops->direct(c, peer);
}

static int peer_copy(dml_comm *c, int peer, int write, const struct iovec *local, int n,
                     uint64_t addr) {
  if (c == NULL) return DML_EINVAL;
  size_t len = 0;
  for (int i = 0; i < n; i++) {
    if (local[i].iov_base == NULL && local[i].iov_len > 0)
      return dml__comm_fail(c, DML_EINVAL, "direct copy: NULL buffer");
    if (len + local[i].iov_len < len)
      return dml__comm_fail(c, DML_EINVAL, "direct copy: pieces longer than memory");
    len += local[i].iov_len;
  }
  if (!dml_comm_direct(c, peer))
    return dml__comm_fail(c, DML_EUNSUPPORTED, "direct copy with %s: not available",
                          dml_comm_peer_name(c, peer));
  if (len == 0) return 0;
  if (addr == 0 || addr + len < addr)
    return dml__comm_fail(c, DML_EPROTO, "direct copy with %s: bad address 0x%llx (%zu bytes)",
                          dml_comm_peer_name(c, peer), (unsigned long long)addr, len);
  return c->ops->peer_copy(c, peer, write, local, n, addr, len);
}

int dml_comm_peer_read(dml_comm *c, int peer, void *dst, uint64_t addr, size_t len) {
  struct iovec l = {dst, len};
  return peer_copy(c, peer, 0, &l, 1, addr);
}

int dml_comm_peer_write(dml_comm *c, int peer, uint64_t addr, const void *src, size_t len) {
  struct iovec l = {(void *)(uintptr_t)src, len};
  return peer_copy(c, peer, 1, &l, 1, addr);
}

int dml_comm_peer_writev(dml_comm *c, int peer, uint64_t addr, const struct iovec *src, int n) {
  if (n < 0 || (n > 0 && src == NULL))
    return c ? dml__comm_fail(c, DML_EINVAL, "direct copy: %d pieces", n) : DML_EINVAL;
  return peer_copy(c, peer, 1, src, n, addr);
}

int dml_comm_fence(dml_comm *c, int peer, const char *why) {
  if (c == NULL || peer < 0 || peer >= c->cfg.world_size) return DML_EINVAL;
  if (peer == c->cfg.rank || c->ops->fence == NULL) return 0;
  return c->ops->fence(c, peer, why);
}

const char *dml_comm_peer_name(const dml_comm *c, int peer) {
  if (c == NULL || peer < 0 || peer >= c->cfg.world_size) return "rank ? (no such rank)";
  return c->ops->peer_name(c, peer);
}

const char *dml_comm_errmsg(const dml_comm *c) {
  if (c == NULL) return "";
  dml_comm *m = (dml_comm *)c;
  pthread_mutex_lock(&m->err_mu);
  memcpy(m->errmsg_copy, m->err.msg, sizeof(m->errmsg_copy));
  pthread_mutex_unlock(&m->err_mu);
  return m->errmsg_copy;
}

static int check_peer(dml_comm *c, const char *op, int peer, int tag, const void *buf, size_t bytes,
                      int any_ok) {
  if (peer < 0 || peer >= c->cfg.world_size) {
    if (!(any_ok && peer == DML_ANY_SOURCE))
      return dml__comm_fail(c, DML_EINVAL, "%s: rank %d out of range (world size %d)", op, peer,
                            c->cfg.world_size);
  }
  if (tag < 0) return dml__comm_fail(c, DML_EINVAL, "%s: negative tag %d", op, tag);
  if (buf == NULL && bytes > 0)
    return dml__comm_fail(c, DML_EINVAL, "%s: NULL buffer of %zu bytes", op, bytes);
  if ((uint64_t)bytes > c->cfg.max_message_bytes)
    return dml__comm_fail(c, DML_EOVERFLOW, "%s: %zu bytes exceed the maximum message size %llu",
                          op, bytes, (unsigned long long)c->cfg.max_message_bytes);
  return 0;
}

int dml_comm_isend(dml_comm *c, int peer, int tag, const void *buf, size_t bytes,
                   dml_comm_req **req) {
  if (c == NULL || req == NULL) return DML_EINVAL;
  int rc = check_peer(c, "send", peer, tag, buf, bytes, 0);
  if (rc) return rc;
  return c->ops->isend(c, peer, tag, buf, bytes, req);
}

int dml_comm_irecv(dml_comm *c, int peer, int tag, void *buf, size_t bytes, dml_comm_req **req) {
  if (c == NULL || req == NULL) return DML_EINVAL;
  int rc = check_peer(c, "recv", peer, tag, buf, bytes, 0);
  if (rc) return rc;
  return c->ops->irecv(c, peer, tag, buf, bytes, 0, req);
}

int dml_comm_wait(dml_comm *c, dml_comm_req *req, int timeout_ms) {
  if (c == NULL || req == NULL) return DML_EINVAL;
  if (timeout_ms < 0) timeout_ms = c->cfg.timeout_ms;
  return c->ops->wait(c, req, timeout_ms, 0);
}

static _Thread_local int spin_us;

void dml_comm_set_spin_us(int us) {
  spin_us = us > 0 ? us : 0;
}

int dml_comm_spin_us(void) {
  return spin_us;
}

int dml_comm_test(dml_comm *c, dml_comm_req *req, int *done) {
  if (c == NULL || req == NULL || done == NULL) return DML_EINVAL;
  return c->ops->test(c, req, done, 0);
}

/* Wait for a request of a blocking call; on timeout give it up (the peer is marked failed). */
static int wait_blocking(dml_comm *c, dml_comm_req *req, int keep) {
  int rc = c->ops->wait(c, req, c->cfg.timeout_ms, keep);
  if (rc == DML_ETIMEDOUT) rc = c->ops->cancel(c, req, DML_ETIMEDOUT, keep);
  return rc;
}

int dml_comm_send(dml_comm *c, int peer, int tag, const void *buf, size_t bytes) {
  dml_comm_req *req;
  int rc = dml_comm_isend(c, peer, tag, buf, bytes, &req);
  if (rc) return rc;
  return wait_blocking(c, req, 0);
}

int dml_comm_recv(dml_comm *c, int peer, int tag, void *buf, size_t bytes) {
  dml_comm_req *req;
  int rc = dml_comm_irecv(c, peer, tag, buf, bytes, &req);
  if (rc) return rc;
  return wait_blocking(c, req, 0);
}

int dml_comm_sendrecv(dml_comm *c, int dst, int send_tag, const void *sendbuf, size_t send_bytes,
                      int src, int recv_tag, void *recvbuf, size_t recv_bytes) {
  dml_comm_req *rreq, *sreq;
  int rc = dml_comm_irecv(c, src, recv_tag, recvbuf, recv_bytes, &rreq);
  if (rc) return rc;
  rc = dml_comm_isend(c, dst, send_tag, sendbuf, send_bytes, &sreq);
  if (rc) {
    (void)c->ops->cancel(c, rreq, DML_ECANCELED, 0);
    return rc;
  }
  int rs = wait_blocking(c, sreq, 0);
  if (rs) {
    (void)c->ops->cancel(c, rreq, DML_ECANCELED, 0);
    return rs;
  }
  return wait_blocking(c, rreq, 0);
}

int dml_comm_recv_alloc(dml_comm *c, int peer, int tag, void **buf, size_t *bytes, int *src) {
  if (c == NULL || buf == NULL || bytes == NULL) return DML_EINVAL;
  *buf = NULL;
  *bytes = 0;
  int rc = check_peer(c, "recv", peer, tag, NULL, 0, 1);
  if (rc) return rc;
  dml_comm_req *req;
  rc = c->ops->irecv(c, peer, tag, NULL, 0, 1, &req);
  if (rc) return rc;
  rc = wait_blocking(c, req, 1);
  if (rc) return rc;
  int s;
  c->ops->recv_take(c, req, buf, bytes, &s);
  if (src) *src = s;
  return 0;
}

int dml_comm_irecv_alloc(dml_comm *c, int peer, int tag, dml_comm_req **req) {
  if (c == NULL || req == NULL) return DML_EINVAL;
  int rc = check_peer(c, "recv", peer, tag, NULL, 0, 1);
  if (rc) return rc;
  return c->ops->irecv(c, peer, tag, NULL, 0, 1, req);
}

/* A completed alloc receive kept by the backend: hand its message over. */
static void take(dml_comm *c, dml_comm_req *req, void **buf, size_t *bytes, int *src) {
  int s;
  c->ops->recv_take(c, req, buf, bytes, &s);
  if (src) *src = s;
}

int dml_comm_test_alloc(dml_comm *c, dml_comm_req *req, int *done, void **buf, size_t *bytes,
                        int *src) {
  if (c == NULL || req == NULL || done == NULL || buf == NULL || bytes == NULL) return DML_EINVAL;
  *buf = NULL;
  *bytes = 0;
  int rc = c->ops->test(c, req, done, 1);
  if (*done && rc == 0) take(c, req, buf, bytes, src);
  return rc;
}

int dml_comm_wait_alloc(dml_comm *c, dml_comm_req *req, int timeout_ms, void **buf, size_t *bytes,
                        int *src) {
  if (c == NULL || req == NULL || buf == NULL || bytes == NULL) return DML_EINVAL;
  *buf = NULL;
  *bytes = 0;
  if (timeout_ms < 0) timeout_ms = c->cfg.timeout_ms;
  int rc = c->ops->wait(c, req, timeout_ms, 1);
  if (rc == 0) take(c, req, buf, bytes, src);
  return rc;
}

int dml_comm_wait_any(dml_comm *c, dml_comm_req *const *reqs, int n, int timeout_ms) {
  if (c == NULL || reqs == NULL || n < 1) return DML_EINVAL;
  for (int i = 0; i < n; i++)
    if (reqs[i] == NULL) return DML_EINVAL;
  if (timeout_ms < 0) timeout_ms = c->cfg.timeout_ms;
  return c->ops->wait_any(c, reqs, n, timeout_ms);
}

int dml_comm_cancel(dml_comm *c, dml_comm_req *req) {
  if (c == NULL || req == NULL) return DML_EINVAL;
  return c->ops->cancel(c, req, DML_ECANCELED, 0);
}

void dml_comm_buf_free(void *buf) {
  dml__free(buf);
}

void dml_comm_abort(dml_comm *c, const char *reason) {
  if (c == NULL) return;
  if (reason == NULL) reason = "aborted by the application";
  dml__comm_fail(c, DML_EABORTED, "aborted: %s", reason);
  c->ops->abort(c, reason);
}
