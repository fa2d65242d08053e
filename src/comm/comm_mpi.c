/* The mpi backend: the communicator interface on MPI point-to-point (MPI_Isend/Irecv/Improbe +
 * MPI_Test in a loop bounded by the timeout, so that no call waits forever). Compiled only when
 * CMake finds MPI (comm_mpi_none.c stands in otherwise). It does not use MPI collectives (coll/
 * may) and has no progress thread: MPI progresses inside our test/wait calls. */
#include "comm/internal.h"

#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { REQ_SEND = 1, REQ_RECV = 2 };

struct dml_comm_req {
  int kind;
  int peer; /* DML_ANY_SOURCE allowed for alloc receives */
  int tag;
  uint32_t seq;
  size_t bytes;
  int alloc;
  int probing; /* alloc receive whose message has not been matched yet */
  MPI_Request mreq;
  uint8_t *abuf;
  size_t alen;
  int src;
  int done, status;
  char msg[400];
  dml_comm_req *all_prev, *all_next;
};

typedef struct mpi_state {
  MPI_Comm comm;
  int multiple;       /* MPI_THREAD_MULTIPLE provided: no serialisation needed */
  pthread_mutex_t mu; /* guards our lists always, and every MPI call when !multiple */
  int n, me;
  int tag_ub; /* largest tag MPI accepts; tag_ub itself carries abort notices */
  int *peer_err;
  char (*peer_msg)[300];
  char (*names)[64];
  uint32_t *send_ops, *recv_ops, any_ops;
  int aborted;
  char abort_msg[300];
  MPI_Request *abort_reqs; /* notices in flight, freed at the end */
  char abort_buf[256];
  dml_comm_req *all;
} mpi_state;

static int g_we_initialized;

static mpi_state *M(const dml_comm *c) {
  return (mpi_state *)c->impl;
}

static void lock(mpi_state *m) {
  pthread_mutex_lock(&m->mu);
}
static void unlock(mpi_state *m) {
  pthread_mutex_unlock(&m->mu);
}

static void finalize_at_exit(void) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

static const char *label(mpi_state *m, int peer) {
  return peer == DML_ANY_SOURCE ? "any rank" : m->names[peer];
}

static void req_finish(mpi_state *m, dml_comm_req *r, int status, const char *detail) {
  r->done = 1;
  r->status = status;
  if (status)
    snprintf(r->msg, sizeof(r->msg), "%s %s %s tag %d seq %u: %s",
             r->kind == REQ_SEND ? "send" : "recv", r->kind == REQ_SEND ? "to" : "from",
             label(m, r->peer), r->tag, (unsigned)r->seq, detail ? detail : dml_strerror(status));
}

static void req_release(mpi_state *m, dml_comm_req *r) {
  if (r->all_prev)
    r->all_prev->all_next = r->all_next;
  else
    m->all = r->all_next;
  if (r->all_next) r->all_next->all_prev = r->all_prev;
  dml__free(r->abuf);
  dml__free(r);
}

static void mpi_errstr(int code, char *out, size_t n) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, s, &len) != MPI_SUCCESS)
    len = snprintf(s, sizeof(s), "MPI error %d", code);
  snprintf(out, n, "%.*s", len, s);
}

static void fail_peer(mpi_state *m, int peer, int code, const char *why) {
  if (peer < 0 || m->peer_err[peer]) return;
  m->peer_err[peer] = code;
  snprintf(m->peer_msg[peer], sizeof(m->peer_msg[peer]), "%s: %s", m->names[peer], why);
  dml_log(DML_LOG_WARN, "peer failed: %s", m->peer_msg[peer]);
}

/* Look for abort notices from peers (under mu). */
static void poll_abort_notices(mpi_state *m) {
  for (;;) {
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, m->tag_ub, m->comm, &flag, &st) != MPI_SUCCESS || !flag) return;
    char reason[257];
    int cnt = 0;
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    if (cnt < 0 || cnt > 256) cnt = 256;
    MPI_Recv(reason, 256, MPI_BYTE, st.MPI_SOURCE, m->tag_ub, m->comm, MPI_STATUS_IGNORE);
    reason[cnt] = 0;
    char why[300];
    snprintf(why, sizeof(why), "aborted: %s", reason);
    fail_peer(m, st.MPI_SOURCE, DML_EPEER, why);
  }
}

/* One step of req (under mu): complete it if MPI says so. */
static void progress(mpi_state *m, dml_comm_req *r) {
  if (r->done) return;
  if (m->aborted) {
    if (!r->probing) {
      MPI_Cancel(&r->mreq);
      MPI_Request_free(&r->mreq);
    }
    req_finish(m, r, DML_EABORTED, m->abort_msg);
    return;
  }
  char why[300];
  if (r->probing) {
    int flag = 0;
    MPI_Message msg;
    MPI_Status st;
    int rc = MPI_Improbe(r->peer == DML_ANY_SOURCE ? MPI_ANY_SOURCE : r->peer, r->tag, m->comm,
                         &flag, &msg, &st);
    if (rc != MPI_SUCCESS) {
      mpi_errstr(rc, why, sizeof(why));
      req_finish(m, r, DML_EIO, why);
      return;
    }
    if (!flag) {
      if (r->peer >= 0 && m->peer_err[r->peer])
        req_finish(m, r, m->peer_err[r->peer], m->peer_msg[r->peer]);
      return;
    }
    int cnt = 0;
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    r->src = st.MPI_SOURCE;
    r->alen = (size_t)cnt;
    r->abuf = dml__malloc(cnt > 0 ? (size_t)cnt : 1);
    if (r->abuf == NULL) {
      MPI_Mrecv(NULL, 0, MPI_BYTE, &msg, MPI_STATUS_IGNORE); /* truncates: we only drain it */
      req_finish(m, r, DML_ENOMEM, "out of memory for the message");
      return;
    }
    MPI_Imrecv(r->abuf, cnt, MPI_BYTE, &msg, &r->mreq);
    r->probing = 0;
  }
  int flag = 0;
  MPI_Status st;
  int rc = MPI_Test(&r->mreq, &flag, &st);
  /* Single-completion calls report errors in their return value (status.MPI_ERROR is not set). */
  if (rc != MPI_SUCCESS) {
    int e = rc;
    int cls = 0;
    MPI_Error_class(e, &cls);
    mpi_errstr(e, why, sizeof(why));
    if (cls == MPI_ERR_TRUNCATE) {
      req_finish(m, r, DML_EPROTO, "message longer than the receive expects");
    } else {
      fail_peer(m, r->peer, DML_EPEER, why);
      req_finish(m, r, DML_EPEER, why);
    }
    return;
  }
  if (!flag) {
    if (r->peer >= 0 && m->peer_err[r->peer] && r->kind == REQ_RECV) {
      /* A receive from a failed peer cannot complete any more: withdraw it. */
      MPI_Cancel(&r->mreq);
      MPI_Request_free(&r->mreq);
      req_finish(m, r, m->peer_err[r->peer], m->peer_msg[r->peer]);
    }
    return;
  }
  if (r->kind == REQ_RECV && !r->alloc) {
    int cnt = 0;
    MPI_Get_count(&st, MPI_BYTE, &cnt);
    r->src = st.MPI_SOURCE;
    if ((size_t)cnt != r->bytes) {
      snprintf(why, sizeof(why), "message of %d bytes, the receive expects %zu", cnt, r->bytes);
      req_finish(m, r, DML_EPROTO, why);
      return;
    }
  }
  req_finish(m, r, 0, NULL);
}

static dml_comm_req *req_new(mpi_state *m, int kind, int peer, int tag, size_t bytes) {
  dml_comm_req *r = dml__calloc(1, sizeof(*r));
  if (r == NULL) return NULL;
  r->kind = kind;
  r->peer = peer;
  r->tag = tag;
  r->bytes = bytes;
  r->src = -1;
  r->mreq = MPI_REQUEST_NULL;
  r->all_next = m->all;
  if (m->all) m->all->all_prev = r;
  m->all = r;
  return r;
}

static int check(dml_comm *c, mpi_state *m, int peer, int tag, size_t bytes, const char *op) {
  if (m->aborted)
    return dml__comm_fail(c, DML_EABORTED, "%s: communicator aborted: %s", op, m->abort_msg);
  if (tag >= m->tag_ub)
    return dml__comm_fail(c, DML_EINVAL, "%s: tag %d above this MPI's limit %d", op, tag,
                          m->tag_ub - 1);
  if (bytes > INT_MAX)
    return dml__comm_fail(c, DML_EOVERFLOW,
                          "%s: %zu bytes exceed what one MPI message carries here", op, bytes);
  if (peer >= 0 && m->peer_err[peer])
    return dml__comm_fail(c, m->peer_err[peer], "%s %s tag %d: peer failed earlier: %s", op,
                          m->names[peer], tag, m->peer_msg[peer]);
  return 0;
}

static int mpi_isend(dml_comm *c, int peer, int tag, const void *buf, size_t bytes,
                     dml_comm_req **out) {
  mpi_state *m = M(c);
  lock(m);
  int rc = check(c, m, peer, tag, bytes, "send to");
  dml_comm_req *r = NULL;
  if (rc == 0 && (r = req_new(m, REQ_SEND, peer, tag, bytes)) == NULL)
    rc = dml__comm_fail(c, DML_ENOMEM, "send: out of memory");
  if (rc == 0) {
    r->seq = m->send_ops[peer]++;
    int e = MPI_Isend(buf, (int)bytes, MPI_BYTE, peer, tag, m->comm, &r->mreq);
    if (e != MPI_SUCCESS) {
      char why[300];
      mpi_errstr(e, why, sizeof(why));
      req_release(m, r);
      rc = dml__comm_fail(c, DML_EIO, "send to %s tag %d: MPI_Isend: %s", m->names[peer], tag, why);
    } else {
      atomic_fetch_add(&c->bytes_sent, bytes);
      *out = r;
    }
  }
  unlock(m);
  return rc;
}

static int mpi_irecv(dml_comm *c, int peer, int tag, void *buf, size_t bytes, int alloc,
                     dml_comm_req **out) {
  mpi_state *m = M(c);
  lock(m);
  int rc = check(c, m, peer, tag, bytes, "recv from");
  dml_comm_req *r = NULL;
  if (rc == 0 && (r = req_new(m, REQ_RECV, peer, tag, bytes)) == NULL)
    rc = dml__comm_fail(c, DML_ENOMEM, "recv: out of memory");
  if (rc == 0) {
    r->seq = peer == DML_ANY_SOURCE ? m->any_ops++ : m->recv_ops[peer]++;
    r->alloc = alloc;
    if (alloc) {
      r->probing = 1;
    } else {
      int e = MPI_Irecv(buf, (int)bytes, MPI_BYTE, peer, tag, m->comm, &r->mreq);
      if (e != MPI_SUCCESS) {
        char why[300];
        mpi_errstr(e, why, sizeof(why));
        req_release(m, r);
        rc = dml__comm_fail(c, DML_EIO, "recv from %s tag %d: MPI_Irecv: %s", m->names[peer], tag,
                            why);
      }
    }
    if (rc == 0) *out = r;
  }
  unlock(m);
  return rc;
}

static int finish(dml_comm *c, mpi_state *m, dml_comm_req *r, int keep) {
  int rc = r->status;
  if (rc) dml__comm_fail(c, rc, "%s", r->msg);
  if (!keep || rc) req_release(m, r);
  return rc;
}

/* Until one of rs is done (0) or timeout_ms pass (DML_ETIMEDOUT); releases nothing. */
static int mpi_wait_any(dml_comm *c, dml_comm_req *const *rs, int n, int timeout_ms) {
  mpi_state *m = M(c);
  uint64_t deadline = dml_now_ns() + (uint64_t)timeout_ms * 1000000ull;
  long sleep_ns = 0;
  for (int spin = 0;; spin++) {
    lock(m);
    if (spin % 64 == 0) poll_abort_notices(m);
    int any = 0;
    for (int i = 0; i < n; i++) {
      progress(m, rs[i]);
      any |= rs[i]->done;
    }
    unlock(m);
    if (any) return 0;
    if (dml_now_ns() >= deadline) return DML_ETIMEDOUT;
    /* Spin briefly for latency, then back off to at most 1 ms so an idle wait costs little. */
    if (spin > 200) {
      sleep_ns = sleep_ns ? DML__MIN(sleep_ns * 2, 1000000L) : 1000L;
      struct timespec ts = {0, sleep_ns};
      nanosleep(&ts, NULL);
    }
  }
}

static int mpi_wait(dml_comm *c, dml_comm_req *r, int timeout_ms, int keep) {
  int rc = mpi_wait_any(c, &r, 1, timeout_ms);
  if (rc) return rc;
  mpi_state *m = M(c);
  lock(m);
  rc = finish(c, m, r, keep);
  unlock(m);
  return rc;
}

static int mpi_test(dml_comm *c, dml_comm_req *r, int *done, int keep) {
  mpi_state *m = M(c);
  lock(m);
  poll_abort_notices(m);
  progress(m, r);
  *done = r->done;
  int rc = r->done ? finish(c, m, r, keep) : 0;
  unlock(m);
  return rc;
}

static int mpi_cancel(dml_comm *c, dml_comm_req *r, int code, int keep) {
  mpi_state *m = M(c);
  lock(m);
  int was_done = r->done; /* completed since the caller's wait timed out */
  if (!was_done) {
    char why[160];
    if (code == DML_ETIMEDOUT)
      snprintf(why, sizeof(why), "timed out after %d ms", c->cfg.timeout_ms);
    else
      snprintf(why, sizeof(why), "canceled (%s)", dml_strerror(code));
    if (!r->probing && r->kind == REQ_RECV && r->alloc) {
      /* An alloc receive past its probe has matched a message already (MPI_Imrecv): it cannot be
       * cancelled, and its buffer is about to be freed: let the message land, then drop it. */
      MPI_Wait(&r->mreq, MPI_STATUS_IGNORE);
    } else if (!r->probing) {
      /* A receive can be cancelled; a send cannot be recalled once MPI has it, so the peer is
       * marked failed and MPI finishes (or drops) it on its own. */
      if (r->kind == REQ_RECV) MPI_Cancel(&r->mreq);
      MPI_Request_free(&r->mreq);
    }
    if (code == DML_ETIMEDOUT || r->kind == REQ_SEND) fail_peer(m, r->peer, code, why);
    req_finish(m, r, code, why);
  }
  int rc = finish(c, m, r, was_done ? keep : 0);
  unlock(m);
  return rc;
}

static void mpi_recv_take(dml_comm *c, dml_comm_req *r, void **buf, size_t *bytes, int *src) {
  mpi_state *m = M(c);
  lock(m);
  *buf = r->abuf;
  *bytes = r->alen;
  *src = r->src;
  r->abuf = NULL;
  req_release(m, r);
  unlock(m);
}

static void mpi_abort(dml_comm *c, const char *reason) {
  mpi_state *m = M(c);
  lock(m);
  if (!m->aborted) {
    m->aborted = 1;
    snprintf(m->abort_msg, sizeof(m->abort_msg), "communicator aborted: %s", reason);
    snprintf(m->abort_buf, sizeof(m->abort_buf), "%s", reason);
    /* Tell every peer (they look for notices while they wait); without MPI_Abort, which would
     * end the processes. */
    for (int i = 0; i < m->n; i++) {
      if (i == m->me || m->peer_err[i]) continue;
      MPI_Isend(m->abort_buf, (int)strlen(m->abort_buf), MPI_BYTE, i, m->tag_ub, m->comm,
                &m->abort_reqs[i]);
    }
  }
  unlock(m);
}

static const char *mpi_peer_name(const dml_comm *c, int peer) {
  return M(c)->names[peer];
}

static void mpi_fini(dml_comm *c) {
  mpi_state *m = M(c);
  if (m == NULL) return;
  int failed = m->aborted;
  for (int i = 0; i < m->n; i++) failed |= m->peer_err[i] != 0;
  while (m->all) {
    dml_comm_req *r = m->all;
    if (!r->done && !r->probing && r->mreq != MPI_REQUEST_NULL) {
      if (r->kind == REQ_RECV) MPI_Cancel(&r->mreq);
      MPI_Request_free(&r->mreq);
    }
    req_release(m, r);
  }
  for (int i = 0; i < m->n; i++)
    if (m->abort_reqs[i] != MPI_REQUEST_NULL) MPI_Request_free(&m->abort_reqs[i]);
  /* Freeing a communicator is collective in principle: skip it when a peer is gone. */
  if (!failed) MPI_Comm_free(&m->comm);
  pthread_mutex_destroy(&m->mu);
  dml__free(m->peer_err);
  dml__free(m->peer_msg);
  dml__free(m->names);
  dml__free(m->send_ops);
  dml__free(m->recv_ops);
  dml__free(m->abort_reqs);
  dml__free(m);
  c->impl = NULL;
}

static int mpi_init(dml_comm *c, dml_err *err) {
  int inited = 0, provided = MPI_THREAD_SINGLE;
  MPI_Initialized(&inited);
  if (!inited) {
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
      return dml_err_set(err, DML_EIO, "MPI_Init_thread failed");
    g_we_initialized = 1;
    atexit(finalize_at_exit);
  } else {
    MPI_Query_thread(&provided);
  }
  mpi_state *m = dml__calloc(1, sizeof(*m));
  if (m == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory");
  c->impl = m;
  pthread_mutex_init(&m->mu, NULL);
  m->multiple = provided >= MPI_THREAD_MULTIPLE;
  if (!m->multiple)
    dml_log(DML_LOG_INFO,
            "MPI provides thread level %d, not MPI_THREAD_MULTIPLE: serialising MPI calls",
            provided);
  /* Our own communicator, so that our tags never meet the application's; errors come back as
   * codes instead of ending the job. */
  MPI_Comm_dup(MPI_COMM_WORLD, &m->comm);
  MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(m->comm, &m->me);
  MPI_Comm_size(m->comm, &m->n);
  int *ub = NULL, flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  m->tag_ub = flag && ub ? *ub : 32767;
  dml__comm_cfg *cfg = &c->cfg;
  if ((cfg->rank >= 0 && cfg->rank != m->me) || (cfg->world_size > 0 && cfg->world_size != m->n)) {
    int r = cfg->rank, s = cfg->world_size, me = m->me, n = m->n;
    MPI_Comm_free(&m->comm);
    pthread_mutex_destroy(&m->mu);
    dml__free(m);
    c->impl = NULL;
    return dml_err_set(err, DML_EMISMATCH,
                       "MPI says rank %d of %d but the options/environment say rank %d of %d", me,
                       n, r, s);
  }
  cfg->rank = m->me;
  cfg->world_size = m->n;
  size_t n = (size_t)m->n;
  m->peer_err = dml__calloc(n, sizeof(*m->peer_err));
  m->peer_msg = dml__calloc(n, sizeof(*m->peer_msg));
  m->names = dml__calloc(n, sizeof(*m->names));
  m->send_ops = dml__calloc(n, sizeof(*m->send_ops));
  m->recv_ops = dml__calloc(n, sizeof(*m->recv_ops));
  m->abort_reqs = dml__calloc(n, sizeof(*m->abort_reqs));
  if (!m->peer_err || !m->peer_msg || !m->names || !m->send_ops || !m->recv_ops || !m->abort_reqs) {
    mpi_fini(c);
    return dml_err_set(err, DML_ENOMEM, "out of memory");
  }
  /* Every rank's host, for messages ("rank 3 (node7)"): one all-gather at init. */
  char *hosts = dml__calloc(n, MPI_MAX_PROCESSOR_NAME);
  char me_host[MPI_MAX_PROCESSOR_NAME] = "";
  int hl = 0;
  MPI_Get_processor_name(me_host, &hl);
  if (hosts)
    MPI_Allgather(me_host, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, hosts, MPI_MAX_PROCESSOR_NAME,
                  MPI_CHAR, m->comm);
  for (int i = 0; i < m->n; i++) {
    m->abort_reqs[i] = MPI_REQUEST_NULL;
    const char *h = hosts ? hosts + (size_t)i * MPI_MAX_PROCESSOR_NAME : "?";
    snprintf(m->names[i], sizeof(m->names[i]), "rank %d (%.40s, mpi)", i, h);
  }
  dml__free(hosts);
  dml_log_set_rank(m->me);
  return 0;
}

const dml__comm_backend dml__comm_mpi = {
    .name = "mpi",
    .init = mpi_init,
    .fini = mpi_fini,
    .isend = mpi_isend,
    .irecv = mpi_irecv,
    .wait = mpi_wait,
    .test = mpi_test,
    .wait_any = mpi_wait_any,
    .cancel = mpi_cancel,
    .recv_take = mpi_recv_take,
    .abort = mpi_abort,
    .peer_name = mpi_peer_name,
};
