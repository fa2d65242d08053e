/* The tcp backend: bootstrap through the coordinator's store, one authenticated TCP connection per
 * pair of ranks, and a progress engine (one epoll thread) that moves frames while the caller
 * computes. A thread that waits for a request moves the bytes itself (it becomes the "driver" and
 * the progress thread stands aside), as an MPI library's blocking call does: no hand-off between
 * threads on the critical path. Receives match on (source, tag) in posting order; messages that
 * arrive first wait in an unexpected-message queue; a posted receive gets the payload straight into
 * its buffer. Between processes of one machine, a large message can skip the socket: its frame
 * says where it lies and the receiver copies it straight out of the sender's memory
 * (process_vm_readv, "CMA", as Open MPI's shared-memory transport does), then acknowledges.
 * It is not a collective library (coll/ builds on it) and does not use shared memory. */
#include "comm/internal.h"

#include <errno.h>
#include <limits.h>
#include <linux/sockios.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RBUF_BYTES (256 * 1024)
/* A payload at least this long is read straight into its destination, bypassing the staging
 * buffer (the zero-copy path of a posted receive). */
#define DIRECT_MIN (32 * 1024)
/* Bytes one peer may move per turn of the progress loop, so one busy link cannot starve another. */
#define TURN_BUDGET (8u << 20)
#define EV_WAKE UINT32_MAX
/* After a waiter stops driving, the progress thread stays parked this long (ns): waits that follow
 * each other closely (the steps of a collective) then never wake it. */
#define PARK_GRACE_NS 2000000ull
/* Messages at least this long go by CMA to a peer that can read us (DISTML_CMA_MIN_BYTES). */
#define CMA_MIN_DEFAULT (64 * 1024)
/* A driver sleeps in epoll_wait at most this long (ms) before it looks at its request again. */
#define DRIVE_SLICE_MS 5
/* One sendmsg writes at most this much (DISTML_SEND_SLICE_BYTES): each call ends with a push, so
 * the receiver copies one slice out while the sender copies the next in, and the socket buffers
 * stay warm in the cache. One 4 MiB sendmsg is queued whole before the receiver starts: loopback
 * 4 MiB one-way 1.3-1.7 ms unsliced, 0.7-1.0 ms with 512 KiB slices (OpenMPI TCP: 0.8-1.0 ms). */
#define SEND_SLICE_DEFAULT (512 * 1024)

enum { REQ_SEND = 1, REQ_RECV = 2 };
enum { ST_PENDING = 0, ST_ACTIVE = 1, ST_DONE = 2 };

typedef struct umsg umsg;

struct dml_comm_req {
  int kind;
  int peer; /* DML_ANY_SOURCE for an any-source receive */
  int tag;
  uint32_t seq; /* operation number per peer and direction (any-source receives: their own count) */
  const uint8_t *sbuf;
  uint8_t *rbuf;
  size_t bytes;
  int alloc;
  uint8_t *abuf; /* alloc receive: the message */
  size_t alen;
  int src;
  int state;
  int status;
  char msg[400];
  uint8_t hdr[DML__FRAME_HDR];
  int cma;             /* send: goes by CMA (the frame carries cma_pay; done on the peer's ack) */
  int hdr_made;        /* send: hdr holds the frame header (and took a wire sequence number) */
  uint8_t cma_pay[16]; /* address and length of sbuf */
  size_t off;          /* send: bytes of hdr+payload written */
  umsg *claimed;       /* receive matched to an unexpected message still arriving */
  dml_comm_req *next;  /* in a send queue or the posted list */
  dml_comm_req *all_prev, *all_next; /* every live request, for cleanup */
};

struct umsg {
  int src;
  int tag;
  uint8_t *data;
  size_t len;
  int complete;
  dml_comm_req *claim;
  umsg *next;
};

typedef struct peer {
  int fd;
  char host[64];
  int port;
  char name[96];
  int err;
  char errmsg[400];
  dml_comm_req *sq_head, *sq_tail;
  int want_out;
  uint32_t wire_send_seq, wire_recv_seq;
  uint32_t send_ops, recv_ops;
  /* receive state */
  int in_payload;
  uint8_t hdr[DML__FRAME_HDR];
  size_t hgot;
  dml__frame cur;
  uint8_t *dst; /* payload destination; NULL: discard */
  uint64_t pgot;
  dml_comm_req *rreq; /* posted receive being filled */
  umsg *rmsg;         /* unexpected message being filled */
  uint8_t ctrl[DML__CTRL_MAX + 1];
  uint8_t *rbuf;
  size_t rpos, rlen;
  int last_direct; /* the last frame was large: expect another (read its header alone) */
  /* CMA (same machine): we may send it CMA frames (it can read our memory); we can read its. */
  int cma_send, cma_recv;
  pid_t pid;
  dml_comm_req *ack_head, *ack_tail; /* CMA sends written, waiting for the peer's ack */
  uint32_t acks_owed;                /* CMA messages we copied and have not acknowledged yet */
  uint8_t ack_hdr[DML__FRAME_HDR];
  size_t ack_off; /* bytes of the ack frame being written (0: none started) */
  /* direct copies with this peer in progress (dml_comm_peer_read/write); a failure shuts the
   * link only once they are over (shut_pending), so that a peer that sees it closed knows that
   * nothing here copies its memory any more (dml_comm_fence) */
  int copying, shut_pending;
  int fenced; /* dml_comm_fence: 1 the peer closed its side, 2 it did not in time */
} peer;

typedef struct tcp {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dml_comm *c;
  peer *peers;
  int n, me;
  int epfd, evfd;
  pthread_t thread;
  int thread_started;
  int stop;
  int aborted;
  char abort_msg[300];
  dml_comm_req *posted_head, *posted_tail;
  umsg *uq_head, *uq_tail;
  dml_comm_req *all;
  uint32_t any_ops;
  int listen_fd;
  int nwaiters;     /* threads asleep in wait: completions wake them only when there are some */
  int driving;      /* a waiting thread is moving bytes itself (see drive()) */
  pthread_t driver; /* that thread, while driving */
  uint64_t drive_end_ns; /* when the last driver stopped */
  pthread_cond_t pcv;    /* the progress thread parks on it while waiters drive */
  size_t cma_min;        /* 0: CMA off */
  size_t send_slice;     /* bytes per sendmsg at most */
  uint64_t cma_cookie;   /* peers read it to check that they can read our memory */
} tcp;

static tcp *T(const dml_comm *c) {
  return (tcp *)c->impl;
}

/* ---------------------------------------------------------------------------------------------
 * Requests and lists (all under t->mu). */

static dml_comm_req *req_new(tcp *t, int kind, int peer_rank, int tag) {
  dml_comm_req *r = dml__calloc(1, sizeof(*r));
  if (r == NULL) return NULL;
  r->kind = kind;
  r->peer = peer_rank;
  r->tag = tag;
  r->src = -1;
  r->all_next = t->all;
  if (t->all) t->all->all_prev = r;
  t->all = r;
  return r;
}

static void req_release(tcp *t, dml_comm_req *r) {
  if (r->all_prev)
    r->all_prev->all_next = r->all_next;
  else
    t->all = r->all_next;
  if (r->all_next) r->all_next->all_prev = r->all_prev;
  dml__free(r->abuf);
  dml__free(r);
}

static const char *peer_label(tcp *t, int rank) {
  static const char *any = "any rank";
  return rank == DML_ANY_SOURCE ? any : t->peers[rank].name;
}

static void wake_fd(tcp *t);

static void req_done(tcp *t, dml_comm_req *r, int status, const char *detail) {
  r->state = ST_DONE;
  r->status = status;
  if (status != 0)
    snprintf(r->msg, sizeof(r->msg), "%s %s %s tag %d seq %u: %s",
             r->kind == REQ_SEND ? "send" : "recv", r->kind == REQ_SEND ? "to" : "from",
             peer_label(t, r->peer), r->tag, (unsigned)r->seq,
             detail ? detail : dml_strerror(status));
  if (t->nwaiters > 0) pthread_cond_broadcast(&t->cv);
  /* A driver asleep in epoll_wait may be waiting for this request (a self-send, a cancel): wake
   * it, unless it is the thread completing it. */
  if (t->driving && !pthread_equal(t->driver, pthread_self())) wake_fd(t);
}

static void posted_remove(tcp *t, dml_comm_req *r) {
  dml_comm_req **pp = &t->posted_head, *prev = NULL;
  while (*pp && *pp != r) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  if (*pp == NULL) return;
  *pp = r->next;
  if (t->posted_tail == r) t->posted_tail = prev;
  r->next = NULL;
}

static void sendq_remove(peer *p, dml_comm_req *r) {
  dml_comm_req **pp = &p->sq_head, *prev = NULL;
  while (*pp && *pp != r) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  if (*pp == NULL) return;
  *pp = r->next;
  if (p->sq_tail == r) p->sq_tail = prev;
  r->next = NULL;
}

static void umsg_remove(tcp *t, umsg *m) {
  umsg **pp = &t->uq_head, *prev = NULL;
  while (*pp && *pp != m) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  if (*pp == NULL) return;
  *pp = m->next;
  if (t->uq_tail == m) t->uq_tail = prev;
}

static void umsg_append(tcp *t, umsg *m) {
  m->next = NULL;
  if (t->uq_tail)
    t->uq_tail->next = m;
  else
    t->uq_head = m;
  t->uq_tail = m;
}

/* Hand a complete message (data of len bytes from src) to receive r: copy, or give data away for
 * an alloc receive when give != 0 (then *data is set to NULL). */
static void deliver(tcp *t, dml_comm_req *r, int src, uint8_t **data, size_t len, int give) {
  r->src = src;
  if (r->alloc) {
    if (give) {
      r->abuf = *data;
      *data = NULL;
    } else {
      r->abuf = dml__malloc(len ? len : 1);
      if (r->abuf == NULL) {
        req_done(t, r, DML_ENOMEM, "out of memory for the message");
        return;
      }
      if (len) memcpy(r->abuf, *data, len);
    }
    r->alen = len;
    req_done(t, r, 0, NULL);
    return;
  }
  if (len != r->bytes) {
    char d[160];
    snprintf(d, sizeof(d), "message of %zu bytes, the receive expects %zu", len, r->bytes);
    req_done(t, r, DML_EPROTO, d);
    return;
  }
  if (len) memcpy(r->rbuf, *data, len);
  req_done(t, r, 0, NULL);
}

static dml_comm_req *match_posted(tcp *t, int src, int tag) {
  for (dml_comm_req *r = t->posted_head; r; r = r->next)
    if ((r->peer == src || r->peer == DML_ANY_SOURCE) && r->tag == tag) return r;
  return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Peer failure: sticky; fails everything pending on the peer. */

static void fail_peer(tcp *t, peer *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_peer(tcp *t, peer *p, int code, const char *fmt, ...) {
  if (p->err) return;
  char why[240];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  p->err = code;
  snprintf(p->errmsg, sizeof(p->errmsg), "%s: %s", p->name, why);
  int rank = (int)(p - t->peers);
  int busy =
      p->sq_head != NULL || p->ack_head != NULL || p->rreq != NULL || p->in_payload || p->hgot > 0;
  for (dml_comm_req *r = t->posted_head; r && !busy; r = r->next) busy = r->peer == rank;
  /* A peer that leaves between messages with nothing pending on it may simply be done. */
  if (!t->aborted)
    dml_log(busy || code != DML_ECLOSED ? DML_LOG_WARN : DML_LOG_DEBUG, "peer failed: %s",
            p->errmsg);
  if (p->fd >= 0) {
    epoll_ctl(t->epfd, EPOLL_CTL_DEL, p->fd, NULL);
    /* Our side only: the peer's bytes stay unread (nothing reads the link any more), and a
     * socket whose reading is shut would answer more of them with a reset, which hides whether
     * the peer has closed its side (dml_comm_fence waits for that). */
    if (p->copying)
      p->shut_pending = 1; /* tcp_peer_copy shuts it when the last copy ends */
    else
      shutdown(p->fd, SHUT_WR);
  }
  while (p->sq_head) {
    dml_comm_req *r = p->sq_head;
    sendq_remove(p, r);
    req_done(t, r, code, why);
  }
  while (p->ack_head) {
    dml_comm_req *r = p->ack_head;
    p->ack_head = r->next;
    r->next = NULL;
    req_done(t, r, code, why);
  }
  p->ack_tail = NULL;
  if (p->rreq) {
    req_done(t, p->rreq, code, why);
    p->rreq = NULL;
  }
  for (dml_comm_req *r = t->posted_head, *nx; r; r = nx) {
    nx = r->next;
    if (r->peer == rank) {
      posted_remove(t, r);
      req_done(t, r, code, why);
    }
  }
  for (umsg *m = t->uq_head, *nx; m; m = nx) {
    nx = m->next;
    if (m->src == rank && !m->complete) {
      if (m->claim) req_done(t, m->claim, code, why);
      umsg_remove(t, m);
      dml__free(m->data);
      dml__free(m);
    }
  }
  p->rmsg = NULL;
  p->dst = NULL;
  /* Any-source receives wait on everyone: when no other rank is left, they cannot complete. */
  int alive = 0;
  for (int i = 0; i < t->n; i++) alive += i != t->me && t->peers[i].err == 0;
  if (alive == 0) {
    for (dml_comm_req *r = t->posted_head, *nx; r; r = nx) {
      nx = r->next;
      if (r->peer == DML_ANY_SOURCE) {
        posted_remove(t, r);
        req_done(t, r, code, "every other rank has failed");
      }
    }
  }
  pthread_cond_broadcast(&t->cv);
}

/* ---------------------------------------------------------------------------------------------
 * Receiving. */

static void tx(tcp *t, peer *p);

/* Copies the contiguous range at addr in process pid into the local pieces iov[0..n), one after
 * another (process_vm_readv), or with write the other way (process_vm_writev), at most
 * CMA_IOV pieces a call. 0 or an errno value. */
#define CMA_IOV 64
static int cma_copyv(pid_t pid, int write, const struct iovec *iov, int n, uint64_t addr) {
  int i = 0;
  size_t off = 0; /* bytes of iov[i] done */
  while (i < n) {
    struct iovec l[CMA_IOV];
    int k = 0;
    size_t len = 0;
    for (int j = i; j < n && k < CMA_IOV; j++, k++) {
      size_t skip = j == i ? off : 0;
      void *base = skip ? (uint8_t *)iov[j].iov_base + skip : iov[j].iov_base; /* may be NULL */
      l[k] = (struct iovec){base, iov[j].iov_len - skip};
      len += l[k].iov_len;
    }
    struct iovec r = {(void *)(uintptr_t)addr, len};
    ssize_t got = write ? process_vm_writev(pid, l, (unsigned long)k, &r, 1, 0)
                        : process_vm_readv(pid, l, (unsigned long)k, &r, 1, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0 && len > 0) return EFAULT;
    addr += (uint64_t)got;
    for (size_t g = (size_t)got; i < n && (g > 0 || iov[i].iov_len == off);) {
      size_t step = DML__MIN(g, iov[i].iov_len - off);
      g -= step;
      off += step;
      if (off == iov[i].iov_len) {
        i++;
        off = 0;
      }
    }
  }
  return 0;
}

static int cma_read(pid_t pid, uint8_t *dst, uint64_t addr, uint64_t len) {
  struct iovec l = {dst, (size_t)len};
  return cma_copyv(pid, 0, &l, 1, addr);
}

/* A CMA frame's payload is in p->ctrl: copy the message out of the peer's memory into the posted
 * receive that matches it (or a new unexpected message), then owe the peer an ack. */
static void cma_deliver(tcp *t, peer *p) {
  int rank = (int)(p - t->peers);
  char why[200];
  uint64_t addr, len;
  if (dml__cma_decode(p->ctrl, (size_t)p->cur.length, t->c->cfg.max_message_bytes, &addr, &len, why,
                      sizeof(why)) != 0) {
    fail_peer(t, p, DML_EPROTO, "protocol error: %s", why);
    return;
  }
  int tag = (int)p->cur.tag;
  dml_comm_req *r = match_posted(t, rank, tag);
  uint8_t *dst = NULL;
  umsg *m = NULL;
  if (r != NULL) {
    posted_remove(t, r);
    r->state = ST_ACTIVE;
    if (r->alloc) {
      r->abuf = dml__malloc(len ? (size_t)len : 1);
      if (r->abuf == NULL) {
        req_done(t, r, DML_ENOMEM, "out of memory for the message");
        r = NULL;
      } else {
        dst = r->abuf;
      }
    } else if (len != r->bytes) {
      snprintf(why, sizeof(why), "message of %llu bytes, the receive expects %zu",
               (unsigned long long)len, r->bytes);
      req_done(t, r, DML_EPROTO, why);
      r = NULL;
    } else {
      dst = r->rbuf;
    }
  } else {
    m = dml__calloc(1, sizeof(*m));
    uint8_t *data = m ? dml__malloc(len ? (size_t)len : 1) : NULL;
    if (data == NULL) {
      dml__free(m);
      fail_peer(t, p, DML_ENOMEM, "out of memory buffering an unexpected message of %llu bytes",
                (unsigned long long)len);
      return;
    }
    *m = (umsg){.src = rank, .tag = tag, .data = data, .len = (size_t)len, .complete = 1};
    dst = data;
  }
  int e = dst && len ? cma_read(p->pid, dst, addr, len) : 0;
  if (e != 0) {
    if (r) req_done(t, r, DML_EPROTO, "could not copy the message out of the sender's memory");
    if (m) {
      dml__free(m->data);
      dml__free(m);
    }
    fail_peer(t, p, DML_EPROTO, "could not copy a %llu-byte message out of its memory: %s",
              (unsigned long long)len, strerror(e));
    return;
  }
  if (r) {
    r->src = rank;
    if (r->alloc) r->alen = (size_t)len;
    req_done(t, r, 0, NULL);
  } else if (m) {
    umsg_append(t, m);
  }
  p->acks_owed++;
  tx(t, p);
}

static void payload_done(tcp *t, peer *p) {
  int rank = (int)(p - t->peers);
  p->in_payload = 0;
  p->hgot = 0;
  if (p->cur.kind == DML__F_CMA) {
    p->dst = NULL;
    cma_deliver(t, p);
    return;
  }
  if (p->cur.kind == DML__F_ABORT) {
    p->ctrl[p->cur.length] = 0;
    for (uint64_t i = 0; i < p->cur.length; i++)
      if (p->ctrl[i] < 0x20 || p->ctrl[i] > 0x7e) p->ctrl[i] = '?';
    fail_peer(t, p, DML_EPEER, "aborted: %s", (char *)p->ctrl);
    return;
  }
  if (p->rreq) {
    dml_comm_req *r = p->rreq;
    p->rreq = NULL;
    r->src = rank;
    if (r->alloc) r->alen = (size_t)p->cur.length;
    req_done(t, r, 0, NULL);
  } else if (p->rmsg) {
    umsg *m = p->rmsg;
    p->rmsg = NULL;
    m->complete = 1;
    if (m->claim) {
      dml_comm_req *r = m->claim;
      umsg_remove(t, m);
      deliver(t, r, m->src, &m->data, m->len, 1);
      dml__free(m->data);
      dml__free(m);
    }
  }
  p->dst = NULL;
}

/* A whole header is in p->hdr: decide where the payload goes. */
static void on_header(tcp *t, peer *p) {
  int rank = (int)(p - t->peers);
  char why[200];
  int rc = dml__frame_decode(p->hdr, DML__FRAME_HDR, t->c->cfg.max_message_bytes, &p->cur, why,
                             sizeof(why));
  if (rc) {
    fail_peer(t, p, DML_EPROTO, "protocol error: %s", why);
    return;
  }
  p->in_payload = 1;
  p->pgot = 0;
  p->dst = NULL;
  p->last_direct = p->cur.length >= DIRECT_MIN;
  if (p->cur.kind == DML__F_ABORT) {
    p->dst = p->ctrl;
  } else if (p->cur.kind == DML__F_CMA_ACK) {
    dml_comm_req *r = p->ack_head;
    if (r == NULL || p->cur.length != 0) {
      fail_peer(t, p, DML_EPROTO, "protocol error: CMA ack %s",
                r == NULL ? "for no message" : "with a payload");
      return;
    }
    p->ack_head = r->next;
    if (p->ack_head == NULL) p->ack_tail = NULL;
    r->next = NULL;
    atomic_fetch_add(&t->c->bytes_sent, r->bytes);
    req_done(t, r, 0, NULL);
    p->in_payload = 0;
    p->hgot = 0;
    return;
  } else if (p->cur.kind == DML__F_CMA) {
    if (!p->cma_recv || p->cur.length != 16) {
      fail_peer(t, p, DML_EPROTO, "protocol error: %s",
                p->cma_recv ? "CMA frame of the wrong length"
                            : "CMA frame from a peer whose memory we cannot read");
      return;
    }
    if (p->cur.seq != p->wire_recv_seq || p->cur.tag > INT_MAX) {
      fail_peer(t, p, DML_EPROTO, "protocol error: CMA frame sequence %u (expected %u), tag %u",
                (unsigned)p->cur.seq, (unsigned)p->wire_recv_seq, (unsigned)p->cur.tag);
      return;
    }
    p->wire_recv_seq++;
    p->dst = p->ctrl;
  } else if (p->cur.kind != DML__F_DATA) {
    fail_peer(t, p, DML_EPROTO, "protocol error: unexpected frame kind %d on a data link",
              p->cur.kind);
    return;
  } else {
    if (p->cur.seq != p->wire_recv_seq) {
      fail_peer(t, p, DML_EPROTO,
                "protocol error: frame sequence %u, expected %u (lost or corrupt stream)",
                (unsigned)p->cur.seq, (unsigned)p->wire_recv_seq);
      return;
    }
    p->wire_recv_seq++;
    if (p->cur.tag > INT_MAX) {
      fail_peer(t, p, DML_EPROTO, "protocol error: tag %u out of range", (unsigned)p->cur.tag);
      return;
    }
    int tag = (int)p->cur.tag;
    size_t len = (size_t)p->cur.length;
    dml_comm_req *r = match_posted(t, rank, tag);
    if (r != NULL) {
      posted_remove(t, r);
      r->state = ST_ACTIVE;
      /* A request that fails here is completed at once (the caller may release it right away):
       * p->rreq only ever holds one whose payload is still to come; the payload is discarded. */
      if (r->alloc) {
        r->abuf = dml__malloc(len ? len : 1);
        if (r->abuf == NULL) {
          req_done(t, r, DML_ENOMEM, "out of memory for the message");
        } else {
          p->dst = r->abuf;
          p->rreq = r;
        }
      } else if (len != r->bytes) {
        snprintf(why, sizeof(why), "message of %zu bytes, the receive expects %zu", len, r->bytes);
        req_done(t, r, DML_EPROTO, why);
      } else {
        p->dst = r->rbuf;
        p->rreq = r;
      }
    } else {
      umsg *m = dml__calloc(1, sizeof(*m));
      uint8_t *data = m ? dml__malloc(len ? len : 1) : NULL;
      if (data == NULL) {
        dml__free(m);
        fail_peer(t, p, DML_ENOMEM, "out of memory buffering an unexpected message of %zu bytes",
                  len);
        return;
      }
      m->src = rank;
      m->tag = tag;
      m->data = data;
      m->len = len;
      umsg_append(t, m);
      p->rmsg = m;
      p->dst = data;
    }
  }
  if (p->cur.length == 0) payload_done(t, p);
}

static void rx(tcp *t, peer *p) {
  size_t budget = TURN_BUDGET;
  while (p->err == 0) {
    while (p->rpos < p->rlen && p->err == 0) {
      size_t avail = p->rlen - p->rpos;
      if (!p->in_payload) {
        size_t take = DML__MIN(DML__FRAME_HDR - p->hgot, avail);
        memcpy(p->hdr + p->hgot, p->rbuf + p->rpos, take);
        p->hgot += take;
        p->rpos += take;
        if (p->hgot == DML__FRAME_HDR) on_header(t, p);
      } else {
        size_t take = (size_t)DML__MIN((uint64_t)avail, p->cur.length - p->pgot);
        if (p->dst) memcpy(p->dst + p->pgot, p->rbuf + p->rpos, take);
        p->pgot += take;
        p->rpos += take;
        if (p->pgot == p->cur.length) payload_done(t, p);
      }
    }
    if (p->err) return;
    p->rpos = p->rlen = 0;
    if (budget == 0) return; /* level-triggered epoll brings us back */
    ssize_t r;
    size_t asked;
    uint64_t left = p->in_payload ? p->cur.length - p->pgot : 0;
    if (p->in_payload && p->dst && left >= DIRECT_MIN) {
      asked = (size_t)left;
      r = recv(p->fd, p->dst + p->pgot, asked, 0);
      if (r > 0) {
        p->pgot += (uint64_t)r;
        if (p->pgot == p->cur.length) payload_done(t, p);
      }
    } else {
      /* After a large frame read in place, take only the next header, so that the next large
       * payload does not pass through the staging buffer (one more memcpy of up to RBUF_BYTES). */
      asked = !p->in_payload && p->last_direct ? DML__FRAME_HDR - p->hgot : RBUF_BYTES;
      r = recv(p->fd, p->rbuf, asked, 0);
      if (r > 0) p->rlen = (size_t)r;
    }
    if (r > 0) {
      budget = (size_t)r >= budget ? 0 : budget - (size_t)r;
      /* A short read drained the socket: use what came and leave (epoll reports the rest), which
       * saves the recv that would only say EAGAIN. */
      if ((size_t)r < asked) budget = 0;
      continue;
    }
    if (r == 0) {
      fail_peer(t, p, DML_ECLOSED, "connection closed by the peer (process exited or was killed?)");
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (errno == EINTR) continue;
    fail_peer(t, p, errno == ECONNRESET ? DML_ECLOSED : DML_ESYS, "receive failed: %s",
              strerror(errno));
    return;
  }
}

/* ---------------------------------------------------------------------------------------------
 * Sending. */

static void set_want_out(tcp *t, peer *p, int on) {
  if (p->want_out == on || p->fd < 0 || p->err) return;
  struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0)};
  ev.data.u32 = (uint32_t)(p - t->peers);
  epoll_ctl(t->epfd, EPOLL_CTL_MOD, p->fd, &ev);
  p->want_out = on;
}

/* Writes the acks we owe, whole frames only between messages. 0: all written; 1: the socket is
 * full; -1: the peer failed. */
static int tx_acks(tcp *t, peer *p) {
  while (p->ack_off > 0 || p->acks_owed > 0) {
    if (p->ack_off == 0) dml__frame_encode(p->ack_hdr, DML__F_CMA_ACK, 0, 0, 0);
    ssize_t w = send(p->fd, p->ack_hdr + p->ack_off, DML__FRAME_HDR - p->ack_off, MSG_NOSIGNAL);
    if (w > 0) {
      if (p->ack_off == 0) p->acks_owed--;
      p->ack_off += (size_t)w;
      if (p->ack_off == DML__FRAME_HDR) p->ack_off = 0;
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 1;
    if (w < 0 && errno == EINTR) continue;
    int e = w < 0 ? errno : EPIPE;
    fail_peer(t, p, (e == EPIPE || e == ECONNRESET) ? DML_ECLOSED : DML_ESYS, "send failed: %s",
              strerror(e));
    return -1;
  }
  return 0;
}

static void tx(tcp *t, peer *p) {
  size_t budget = TURN_BUDGET;
  int full = 0;
  while (p->err == 0 && !full) {
    dml_comm_req *r = p->sq_head;
    if (p->ack_off > 0 || (p->acks_owed > 0 && (r == NULL || r->off == 0))) {
      int a = tx_acks(t, p);
      if (a < 0) return;
      if (a > 0) break;
    }
    if (r == NULL) break;
    size_t plen = r->cma ? sizeof(r->cma_pay) : r->bytes;
    if (r->off == 0 && !r->hdr_made) {
      dml__frame_encode(r->hdr, r->cma ? DML__F_CMA : DML__F_DATA, (uint32_t)r->tag,
                        p->wire_send_seq++, plen);
      r->hdr_made = 1;
    }
    const uint8_t *pay = r->cma ? r->cma_pay : r->sbuf;
    size_t total = DML__FRAME_HDR + plen;
    struct iovec iov[2];
    int niov = 0;
    size_t left = total - r->off < t->send_slice ? total - r->off : t->send_slice;
    if (r->off < DML__FRAME_HDR) {
      iov[niov++] = (struct iovec){r->hdr + r->off, DML__FRAME_HDR - r->off};
      if (plen) iov[niov++] = (struct iovec){(void *)pay, left - (DML__FRAME_HDR - r->off)};
    } else {
      iov[niov++] = (struct iovec){(void *)(pay + (r->off - DML__FRAME_HDR)), left};
    }
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = iov;
    mh.msg_iovlen = (size_t)niov;
    ssize_t w = sendmsg(p->fd, &mh, MSG_NOSIGNAL);
    if (w > 0) {
      r->off += (size_t)w;
      r->state = ST_ACTIVE;
      if (r->off == total) {
        sendq_remove(p, r);
        if (r->cma) {
          /* Done when the peer says it has copied the message. */
          if (p->ack_tail)
            p->ack_tail->next = r;
          else
            p->ack_head = r;
          p->ack_tail = r;
        } else {
          atomic_fetch_add(&t->c->bytes_sent, r->bytes);
          req_done(t, r, 0, NULL);
        }
      }
      budget = (size_t)w >= budget ? 0 : budget - (size_t)w;
      if (budget == 0) break;
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      full = 1;
      break;
    }
    if (w < 0 && errno == EINTR) continue;
    int e = errno;
    fail_peer(t, p, (e == EPIPE || e == ECONNRESET) ? DML_ECLOSED : DML_ESYS, "send failed: %s",
              strerror(e));
    return;
  }
  if (p->err == 0) set_want_out(t, p, p->sq_head != NULL || p->acks_owed > 0 || p->ack_off > 0);
}

/* ---------------------------------------------------------------------------------------------
 * The progress thread. */

/* Moves the bytes of the n ready events (under t->mu). */
static void handle_events(tcp *t, const struct epoll_event *evs, int n) {
  for (int i = 0; i < n; i++) {
    if (evs[i].data.u32 == EV_WAKE) {
      uint64_t v;
      if (read(t->evfd, &v, sizeof(v)) < 0) {
        /* nothing to drain */
      }
      continue;
    }
    peer *p = &t->peers[evs[i].data.u32];
    if (p->err) continue;
    if (evs[i].events & EPOLLOUT) tx(t, p);
    if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) rx(t, p);
  }
}

static void wake_fd(tcp *t) {
  uint64_t one = 1;
  if (write(t->evfd, &one, sizeof(one)) < 0) {
    /* cannot happen with an eventfd below its maximum */
  }
}

/* The progress thread: moves bytes while nobody waits (so that non-blocking operations advance
 * while the caller computes), and stands aside while a waiter drives and shortly after. */
static void *progress_main(void *arg) {
  tcp *t = arg;
  struct epoll_event evs[64];
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (!t->stop) {
      uint64_t now = dml_now_ns();
      if (!t->driving && now >= t->drive_end_ns + PARK_GRACE_NS) break;
      uint64_t until = t->driving ? now + 5 * PARK_GRACE_NS : t->drive_end_ns + PARK_GRACE_NS;
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      uint64_t abs_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + (until - now);
      ts.tv_sec = (time_t)(abs_ns / 1000000000ull);
      ts.tv_nsec = (long)(abs_ns % 1000000000ull);
      pthread_cond_timedwait(&t->pcv, &t->mu, &ts);
    }
    if (t->stop) break;
    pthread_mutex_unlock(&t->mu);
    /* A finite timeout: a driver may consume the wake-up fini sends. */
    int n = epoll_wait(t->epfd, evs, 64, 200);
    pthread_mutex_lock(&t->mu);
    if (t->stop) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    handle_events(t, evs, n);
    /* A driver that started meanwhile may sleep in epoll_wait on events we just consumed: let it
     * look at its request again. */
    if (t->driving) wake_fd(t);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * The backend slots. */

static int check_state(tcp *t, int peer_rank, const char *op, int tag) {
  if (t->aborted)
    return dml__comm_fail(t->c, DML_EABORTED, "%s %s tag %d: communicator aborted: %s", op,
                          peer_label(t, peer_rank), tag, t->abort_msg);
  if (peer_rank >= 0 && t->peers[peer_rank].err) {
    peer *p = &t->peers[peer_rank];
    uint32_t seq = strcmp(op, "send to") == 0 ? p->send_ops : p->recv_ops;
    return dml__comm_fail(t->c, p->err, "%s %s tag %d seq %u: peer failed earlier: %s", op, p->name,
                          tag, (unsigned)seq, p->errmsg);
  }
  return 0;
}

static void deliver_local(tcp *t, int tag, const void *buf, size_t bytes, int *status) {
  dml_comm_req *r = match_posted(t, t->me, tag);
  uint8_t *copy = dml__malloc(bytes ? bytes : 1);
  if (copy == NULL) {
    *status = DML_ENOMEM;
    return;
  }
  if (bytes) memcpy(copy, buf, bytes);
  if (r != NULL) {
    posted_remove(t, r);
    deliver(t, r, t->me, &copy, bytes, 1);
    dml__free(copy);
  } else {
    umsg *m = dml__calloc(1, sizeof(*m));
    if (m == NULL) {
      dml__free(copy);
      *status = DML_ENOMEM;
      return;
    }
    *m = (umsg){.src = t->me, .tag = tag, .data = copy, .len = bytes, .complete = 1};
    umsg_append(t, m);
  }
  *status = 0;
}

static int tcp_isend(dml_comm *c, int peer_rank, int tag, const void *buf, size_t bytes,
                     dml_comm_req **out) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  int rc = check_state(t, peer_rank, "send to", tag);
  if (rc) {
    pthread_mutex_unlock(&t->mu);
    return rc;
  }
  dml_comm_req *r = req_new(t, REQ_SEND, peer_rank, tag);
  if (r == NULL) {
    pthread_mutex_unlock(&t->mu);
    return dml__comm_fail(c, DML_ENOMEM, "send: out of memory");
  }
  peer *p = &t->peers[peer_rank];
  r->seq = p->send_ops++;
  r->sbuf = buf;
  r->bytes = bytes;
  if (peer_rank == t->me) {
    int st;
    deliver_local(t, tag, buf, bytes, &st);
    req_done(t, r, st, st ? "out of memory" : NULL);
  } else {
    /* The header (and its wire sequence number) is made when the frame starts to leave (tx), so
     * that a send withdrawn before then leaves no gap in the sequence. */
    if (p->cma_send && t->cma_min > 0 && bytes >= t->cma_min) {
      r->cma = 1;
      dml__cma_encode(r->cma_pay, (uint64_t)(uintptr_t)buf, bytes);
    }
    if (p->sq_tail)
      p->sq_tail->next = r;
    else
      p->sq_head = r;
    p->sq_tail = r;
    if (p->sq_head == r) tx(t, p); /* eager: small messages leave from the caller's thread */
  }
  *out = r;
  pthread_mutex_unlock(&t->mu);
  return 0;
}

static int tcp_irecv(dml_comm *c, int peer_rank, int tag, void *buf, size_t bytes, int alloc,
                     dml_comm_req **out) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  int rc = check_state(t, peer_rank, "recv from", tag);
  if (rc == DML_EABORTED) {
    pthread_mutex_unlock(&t->mu);
    return rc;
  }
  umsg *m = t->uq_head;
  for (; m; m = m->next)
    if (!m->claim && (peer_rank == DML_ANY_SOURCE || m->src == peer_rank) && m->tag == tag) break;
  /* A message that arrived whole before its sender failed is still delivered. */
  if (rc && (m == NULL || !m->complete)) {
    pthread_mutex_unlock(&t->mu);
    return rc;
  }
  /* An any-source receive with nothing queued for it, posted once every other rank has failed,
   * cannot complete either (fail_peer fails those posted before): an error now, not a wait. */
  if (m == NULL && peer_rank == DML_ANY_SOURCE && t->n > 1) {
    int alive = 0, last = -1;
    for (int i = 0; i < t->n; i++) {
      if (i == t->me) continue;
      if (t->peers[i].err == 0)
        alive++;
      else
        last = i;
    }
    if (alive == 0 && last >= 0) {
      peer *p = &t->peers[last];
      rc = dml__comm_fail(c, p->err,
                          "recv from any rank tag %d: every other rank has failed (%s: %s)", tag,
                          p->name, p->errmsg);
      pthread_mutex_unlock(&t->mu);
      return rc;
    }
  }
  dml_comm_req *r = req_new(t, REQ_RECV, peer_rank, tag);
  if (r == NULL) {
    pthread_mutex_unlock(&t->mu);
    return dml__comm_fail(c, DML_ENOMEM, "recv: out of memory");
  }
  r->seq = peer_rank == DML_ANY_SOURCE ? t->any_ops++ : t->peers[peer_rank].recv_ops++;
  r->rbuf = buf;
  r->bytes = bytes;
  r->alloc = alloc;
  if (m != NULL) {
    if (m->complete) {
      umsg_remove(t, m);
      deliver(t, r, m->src, &m->data, m->len, 1);
      dml__free(m->data);
      dml__free(m);
    } else {
      m->claim = r;
      r->claimed = m;
      r->state = ST_ACTIVE;
    }
  } else {
    if (t->posted_tail)
      t->posted_tail->next = r;
    else
      t->posted_head = r;
    t->posted_tail = r;
  }
  *out = r;
  pthread_mutex_unlock(&t->mu);
  return 0;
}

static int finish(tcp *t, dml_comm_req *r, int keep) {
  int rc = r->status;
  if (rc) dml__comm_fail(t->c, rc, "%s", r->msg);
  if (!keep || rc) req_release(t, r);
  return rc;
}

static void drive_begin(tcp *t) {
  t->driving = 1;
  t->driver = pthread_self();
}

/* One turn: sleep up to ms in epoll_wait (t->mu released), then move what is ready. Returns
 * whether anything was ready. */
static int drive_turn(tcp *t, int ms) {
  struct epoll_event evs[64];
  pthread_mutex_unlock(&t->mu);
  int n = epoll_wait(t->epfd, evs, 64, ms);
  pthread_mutex_lock(&t->mu);
  if (n > 0) handle_events(t, evs, n);
  return n > 0;
}

/* park: keep the progress thread parked for its grace period (a waiter that slept; not a poll,
 * or a caller that polls often would park it for good). */
static void drive_end(tcp *t, int park) {
  t->driving = 0;
  if (park) t->drive_end_ns = dml_now_ns();
  /* Another waiter may take over. */
  if (t->nwaiters > 0) pthread_cond_broadcast(&t->cv);
}

static int none_done(dml_comm_req *const *rs, int n) {
  for (int i = 0; i < n; i++)
    if (rs[i]->state == ST_DONE) return 0;
  return 1;
}

/* The waiting thread moves the bytes itself until one of rs is done or the deadline passes
 * (under t->mu, released while it sleeps in epoll_wait). */
static void drive(tcp *t, dml_comm_req *const *rs, int n, uint64_t deadline_ns) {
  drive_begin(t);
  /* Poll first if this thread may (dml_comm_set_spin_us), for as long as bytes keep moving and
   * then the budget more: the progress thread stays parked. */
  uint64_t spin_ns = (uint64_t)dml_comm_spin_us() * 1000u, now = dml_now_ns();
  uint64_t spin_end = now + spin_ns;
  while (none_done(rs, n) && !t->stop && now < spin_end && now < deadline_ns) {
    int moved = drive_turn(t, 0);
    now = dml_now_ns();
    if (moved) spin_end = now + spin_ns;
  }
  while (none_done(rs, n) && !t->stop) {
    now = dml_now_ns();
    if (now >= deadline_ns) break;
    uint64_t left_ms = (deadline_ns - now + 999999) / 1000000;
    drive_turn(t, left_ms < DRIVE_SLICE_MS ? (int)left_ms : DRIVE_SLICE_MS);
  }
  drive_end(t, 1);
}

/* Until one of rs is done (0) or timeout_ms pass (DML_ETIMEDOUT); under t->mu. */
static int wait_locked(tcp *t, dml_comm_req *const *rs, int n, int timeout_ms) {
  if (!none_done(rs, n)) return 0;
  uint64_t deadline = dml_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
  struct timespec ts;
  dml__deadline_in_ms(&ts, timeout_ms > 0 ? timeout_ms : 0);
  while (none_done(rs, n)) {
    if (!t->driving && t->thread_started && !t->stop) {
      drive(t, rs, n, deadline);
      if (none_done(rs, n) && dml_now_ns() >= deadline) return DML_ETIMEDOUT;
      continue;
    }
    t->nwaiters++;
    int w = pthread_cond_timedwait(&t->cv, &t->mu, &ts);
    t->nwaiters--;
    if (w == ETIMEDOUT && none_done(rs, n)) return DML_ETIMEDOUT;
  }
  return 0;
}

static int tcp_wait(dml_comm *c, dml_comm_req *r, int timeout_ms, int keep) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  int rc = wait_locked(t, &r, 1, timeout_ms);
  if (rc == 0) rc = finish(t, r, keep);
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static int tcp_wait_any(dml_comm *c, dml_comm_req *const *rs, int n, int timeout_ms) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  int rc = wait_locked(t, rs, n, timeout_ms);
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static int tcp_test(dml_comm *c, dml_comm_req *r, int *done, int keep) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  if (r->state != ST_DONE && !t->driving && t->thread_started && !t->stop) {
    /* Like MPI_Test: move whatever bytes are ready, without sleeping. */
    drive_begin(t);
    drive_turn(t, 0);
    drive_end(t, 0);
  }
  *done = r->state == ST_DONE;
  int rc = *done ? finish(t, r, keep) : 0;
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static int tcp_cancel(dml_comm *c, dml_comm_req *r, int code, int keep) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  int was_done = r->state == ST_DONE; /* completed since the caller's wait timed out */
  if (!was_done) {
    char why[160];
    if (code == DML_ETIMEDOUT)
      snprintf(why, sizeof(why), "timed out after %d ms", c->cfg.timeout_ms);
    else
      snprintf(why, sizeof(why), "canceled (%s) in the middle of a transfer", dml_strerror(code));
    int rank = r->peer;
    if (r->claimed) rank = r->claimed->src;
    if (r->kind == REQ_RECV && r->state == ST_ACTIVE && !r->claimed) {
      for (int i = 0; i < t->n; i++)
        if (t->peers[i].rreq == r) rank = i;
    }
    int started = r->state == ST_ACTIVE;
    if (rank == DML_ANY_SOURCE || (!started && code != DML_ETIMEDOUT) || rank == t->me) {
      /* Nothing of it is on the wire: withdraw it quietly. A header made but not written (the
       * socket was full) gives its sequence number back: only the head of the queue has one. */
      if (r->kind == REQ_SEND) {
        if (r->hdr_made && r->off == 0 && r->peer != t->me) t->peers[r->peer].wire_send_seq--;
        sendq_remove(&t->peers[r->peer], r);
      } else {
        posted_remove(t, r);
      }
      if (r->claimed) r->claimed->claim = NULL;
      req_done(t, r, code, why);
    } else {
      fail_peer(t, &t->peers[rank], code, "%s (%s tag %d seq %u)", why,
                r->kind == REQ_SEND ? "send" : "recv", r->tag, (unsigned)r->seq);
      if (r->state != ST_DONE) req_done(t, r, code, why);
    }
  }
  int rc = finish(t, r, was_done ? keep : 0);
  pthread_mutex_unlock(&t->mu);
  return rc;
}

static void tcp_recv_take(dml_comm *c, dml_comm_req *r, void **buf, size_t *bytes, int *src) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  *buf = r->abuf;
  *bytes = r->alen;
  *src = r->src;
  r->abuf = NULL;
  req_release(t, r);
  pthread_mutex_unlock(&t->mu);
}

/* Reads and drops what arrives on fd (a link nothing else reads) until the peer's end of stream
 * or a reset: 1, it has closed its side or exited; 0 at `until` (dml_now_ns) first. */
static int drain_until_closed(int fd, uint64_t until) {
  for (uint64_t now = dml_now_ns(); now < until; now = dml_now_ns()) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int ready = poll(&pfd, 1, (int)((until - now) / 1000000 + 1));
    if (ready < 0 && errno != EINTR) return 0;
    if (ready <= 0) continue;
    char sink[4096];
    ssize_t got = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
      return 1;
  }
  return 0;
}

/* Tells p why its link fails (an ABORT frame, which the peer reports as "aborted: <reason>"),
 * best effort and only between frames: with a frame half-written the close alone must do. Under
 * t->mu, before fail_peer. */
static void send_abort(peer *p, const char *reason) {
  if (p->fd < 0 || (p->sq_head != NULL && p->sq_head->off != 0) || p->ack_off != 0) return;
  uint8_t buf[DML__FRAME_HDR + 256];
  size_t n = DML__MIN(strlen(reason), (size_t)256);
  dml__frame_encode(buf, DML__F_ABORT, 0, 0, n);
  memcpy(buf + DML__FRAME_HDR, reason, n);
  if (send(p->fd, buf, DML__FRAME_HDR + n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    /* best effort: the close tells the peer anyway */
  }
}

static void tcp_abort(dml_comm *c, const char *reason) {
  tcp *t = T(c);
  pthread_mutex_lock(&t->mu);
  if (t->aborted) {
    pthread_mutex_unlock(&t->mu);
    return;
  }
  t->aborted = 1;
  snprintf(t->abort_msg, sizeof(t->abort_msg), "%s", reason);
  char why[340];
  snprintf(why, sizeof(why), "communicator aborted: %s", reason);
  for (int i = 0; i < t->n; i++) {
    peer *p = &t->peers[i];
    if (i == t->me || p->err || p->fd < 0) continue;
    send_abort(p, reason);
    if (p->ack_head != NULL && !p->copying) {
      /* The peer may still copy CMA messages out of buffers the abort hands back to their
       * owners: wait (at most 1 s) until it closes the link, which it does only after reading
       * every frame before the ABORT. (Not while a direct copy with it is in progress here: its
       * close must then wait for that copy, fail_peer.) */
      shutdown(p->fd, SHUT_WR);
      drain_until_closed(p->fd, dml_now_ns() + 1000000000ull);
    }
    fail_peer(t, p, DML_EABORTED, "%s", why);
  }
  for (dml_comm_req *r = t->posted_head, *nx; r; r = nx) {
    nx = r->next;
    posted_remove(t, r);
    req_done(t, r, DML_EABORTED, why);
  }
  for (umsg *m = t->uq_head; m; m = m->next)
    if (m->claim && m->claim->state != ST_DONE) req_done(t, m->claim, DML_EABORTED, why);
  pthread_cond_broadcast(&t->cv);
  pthread_mutex_unlock(&t->mu);
}

static const char *tcp_peer_name(const dml_comm *c, int peer_rank) {
  return T(c)->peers[peer_rank].name;
}

/* ---------------------------------------------------------------------------------------------
 * Setup and teardown. */

static void tcp_fini(dml_comm *c) {
  tcp *t = T(c);
  if (t == NULL) return;
  if (t->thread_started) {
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_broadcast(&t->pcv);
    pthread_mutex_unlock(&t->mu);
    wake_fd(t);
    pthread_join(t->thread, NULL);
  }
  /* Linger until what we sent is acknowledged (so that closing cannot turn into a reset that
   * loses it), then close. */
  uint64_t deadline = dml_now_ns() + (uint64_t)DML__MIN(c->cfg.timeout_ms, 10000) * 1000000ull;
  for (int i = 0; t->peers && i < t->n; i++) {
    peer *p = &t->peers[i];
    if (p->fd >= 0 && !p->err) shutdown(p->fd, SHUT_WR);
  }
  for (int i = 0; t->peers && i < t->n; i++) {
    peer *p = &t->peers[i];
    if (p->fd < 0) continue;
    while (!p->err && dml_now_ns() < deadline) {
      int outq = 0;
      if (ioctl(p->fd, SIOCOUTQ, &outq) != 0 || outq == 0) break;
      struct pollfd pfd = {.fd = p->fd, .events = POLLIN};
      if (poll(&pfd, 1, 1) > 0) {
        char sink[4096];
        if (recv(p->fd, sink, sizeof(sink), MSG_DONTWAIT) == 0) break;
      }
    }
    close(p->fd);
    p->fd = -1;
  }
  while (t->all) req_release(t, t->all);
  for (umsg *m = t->uq_head, *nx; m; m = nx) {
    nx = m->next;
    dml__free(m->data);
    dml__free(m);
  }
  for (int i = 0; t->peers && i < t->n; i++) dml__free(t->peers[i].rbuf);
  dml__free(t->peers);
  if (t->epfd >= 0) close(t->epfd);
  if (t->evfd >= 0) close(t->evfd);
  if (t->listen_fd >= 0) close(t->listen_fd);
  pthread_mutex_destroy(&t->mu);
  pthread_cond_destroy(&t->cv);
  pthread_cond_destroy(&t->pcv);
  dml__free(t);
  c->impl = NULL;
}

typedef struct pending_accept {
  dml__hs_conn hs;
  int authed;
} pending_accept;

/* Accept the connections of the ranks above us until all have said HELLO or the deadline. */
static int accept_peers(tcp *t, uint64_t job, uint64_t deadline, dml_err *err) {
  const dml__comm_cfg *cfg = &t->c->cfg;
  int missing = t->n - 1 - t->me;
  enum { MAXP = 256 };
  pending_accept *pend = dml__calloc(MAXP, sizeof(*pend));
  struct pollfd *pfd = dml__calloc(MAXP + 1, sizeof(*pfd));
  int np = 0, rc = 0;
  if (pend == NULL || pfd == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "out of memory accepting peers");
    goto out;
  }
  while (missing > 0) {
    int left = dml__ms_left(deadline);
    if (left == 0) {
      char list[256] = "";
      size_t off = 0;
      for (int j = t->me + 1; j < t->n && off < sizeof(list) - 16; j++)
        if (t->peers[j].fd < 0) off += (size_t)snprintf(list + off, sizeof(list) - off, " %d", j);
      rc = dml_err_set(err, DML_ETIMEDOUT, "rank %d: ranks%s did not connect within %d ms", t->me,
                       list, cfg->timeout_ms);
      goto out;
    }
    pfd[0] = (struct pollfd){.fd = t->listen_fd, .events = POLLIN};
    for (int i = 0; i < np; i++)
      pfd[1 + i] = (struct pollfd){.fd = pend[i].hs.fd,
                                   .events = (short)(POLLIN | (pend[i].hs.out_len ? POLLOUT : 0))};
    int n = poll(pfd, (nfds_t)(np + 1), left > 100 ? 100 : left);
    if (n < 0 && errno != EINTR) {
      rc = dml_err_set(err, DML_ESYS, "poll: %s", strerror(errno));
      goto out;
    }
    uint64_t now = dml_now_ns();
    for (int i = np - 1; i >= 0; i--) {
      pending_accept *pa = &pend[i];
      char why[300] = "";
      int drop = 0, keep_fd = 0;
      if (n > 0 && pfd[1 + i].revents) {
        if (!pa->authed) {
          int s = dml__hs_accept_step(&pa->hs, cfg->token, why, sizeof(why));
          if (s == 0)
            pa->authed = 1;
          else if (s != DML_EAGAIN)
            drop = 1;
        }
        if (pa->authed && !drop) {
          dml__frame f;
          uint8_t pay[DML__CTRL_MAX];
          int s = dml__hs_next_frame(&pa->hs, &f, pay, why, sizeof(why));
          if (s == 0) {
            dml__hello h;
            if (f.kind != DML__F_HELLO) {
              snprintf(why, sizeof(why), "expected HELLO, got frame kind %d", f.kind);
              drop = 1;
            } else if (dml__hello_decode(pay, (size_t)f.length, &h, why, sizeof(why)) != 0) {
              drop = 1;
            } else if (h.job != job || (int)h.world_size != t->n) {
              snprintf(why, sizeof(why), "HELLO from another job (world size %u)",
                       (unsigned)h.world_size);
              drop = 1;
            } else if ((int)h.rank <= t->me || t->peers[h.rank].fd >= 0) {
              snprintf(why, sizeof(why),
                       "HELLO from rank %u, which should not connect here (or already did)",
                       (unsigned)h.rank);
              drop = 1;
            } else {
              t->peers[h.rank].fd = pa->hs.fd;
              keep_fd = 1;
              missing--;
            }
          } else if (s != DML_EAGAIN) {
            drop = 1;
          }
        }
      } else if (now > pa->hs.deadline_ns) {
        snprintf(why, sizeof(why), "no handshake within the timeout (silent client)");
        drop = 1;
      }
      if (drop || keep_fd) {
        if (drop) {
          dml_log(DML_LOG_WARN, "rank %d: dropped connection from %s: %s%s", t->me, pa->hs.addr,
                  strstr(why, "token") ? "authentication failed: " : "", why);
          close(pa->hs.fd);
        }
        pend[i] = pend[--np];
      }
    }
    if (n > 0 && (pfd[0].revents & POLLIN)) {
      for (;;) {
        int fd = accept4(t->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        if (np >= MAXP) {
          close(fd);
          continue;
        }
        dml__net_tune(fd);
        memset(&pend[np], 0, sizeof(pend[np]));
        dml__hs_accept_start(&pend[np].hs, fd, cfg->token, deadline);
        np++;
      }
    }
  }
out:
  for (int i = 0; pend && i < np; i++) {
    if (rc == 0)
      dml_log(DML_LOG_WARN,
              "rank %d: dropped connection from %s: no HELLO by the time every rank had joined",
              t->me, pend[i].hs.addr);
    close(pend[i].hs.fd);
  }
  dml__free(pend);
  dml__free(pfd);
  return rc;
}

/* "WORLD HOST PORT BOOT_ID PID COOKIE_ADDR COOKIE": where a rank listens, and what a peer on the
 * same machine needs to check that it can read the rank's memory (see cma_probe). */
typedef struct rank_addr {
  int world, port;
  char host[64];
  char boot[40];
  long pid;
  unsigned long long cookie_addr, cookie;
} rank_addr;

static int parse_addr(const char *v, rank_addr *a) {
  memset(a, 0, sizeof(*a));
  int n = sscanf(v, "%d %63s %d %39s %ld %llx %llx", &a->world, a->host, &a->port, a->boot, &a->pid,
                 &a->cookie_addr, &a->cookie);
  if (n != 3 && n != 7) return -1;
  if (a->port <= 0 || a->port > 65535) return -1;
  if (n == 3) a->boot[0] = 0;
  return 0;
}

/* This machine's boot id ("" when unknown): equal boot ids mean one kernel, so CMA may work. */
static void read_boot_id(char *out, size_t len) {
  out[0] = 0;
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f == NULL) return;
  char b[64];
  if (fgets(b, sizeof(b), f)) {
    b[strcspn(b, "\n ")] = 0;
    if (strlen(b) < len) memcpy(out, b, strlen(b) + 1);
  }
  fclose(f);
}

/* Lets peers read our memory where Yama restricts it to ancestors (as Open MPI does for its
 * shared-memory transport). */
static void cma_allow_peers(void) {
  FILE *f = fopen("/proc/sys/kernel/yama/ptrace_scope", "r");
  if (f == NULL) return;
  int scope = 0;
  if (fscanf(f, "%d", &scope) == 1 && scope == 1) {
    if (prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0) != 0) {
      /* CMA then fails its probe and stays off */
    }
  }
  fclose(f);
}

/* 1 when we can copy out of the peer's memory: its cookie reads back as published. */
static int cma_probe(const rank_addr *a) {
  uint64_t v = 0;
  if (a->pid <= 0 || a->cookie_addr == 0) return 0;
  return cma_read((pid_t)a->pid, (uint8_t *)&v, a->cookie_addr, sizeof(v)) == 0 && v == a->cookie;
}

static int bootstrap(tcp *t, dml_err *err) {
  dml_comm *c = t->c;
  const dml__comm_cfg *cfg = &c->cfg;
  uint64_t deadline = dml_now_ns() + (uint64_t)cfg->timeout_ms * 1000000ull;
  dml__store *st = NULL;
  char *val = NULL;
  size_t vn;
  int rc;
  uint64_t job = 0;
  if (t->me == 0) {
    rc = dml__store_serve(&st, cfg, err);
    if (rc) return rc;
    dml__random_bytes(&job, sizeof(job));
    char jb[32];
    snprintf(jb, sizeof(jb), "%016llx", (unsigned long long)job);
    rc = dml__store_set(st, "job", jb, strlen(jb), err);
    if (rc) goto out;
  } else {
    rc = dml__store_connect(&st, cfg, err);
    if (rc) goto out;
  }
  char host[64];
  dml__store_local_host(st, cfg, host, sizeof(host));
  int port = 0;
  rc = dml__net_listen(host, 0, &t->listen_fd, &port, err);
  if (rc) goto out;
  char key[32], av[192];
  snprintf(key, sizeof(key), "addr/%d", t->me);
  char boot[40];
  read_boot_id(boot, sizeof(boot));
  if (t->cma_min > 0 && boot[0]) {
    cma_allow_peers();
    snprintf(av, sizeof(av), "%d %s %d %s %ld %llx %llx", t->n, host, port, boot, (long)getpid(),
             (unsigned long long)(uintptr_t)&t->cma_cookie, (unsigned long long)t->cma_cookie);
  } else {
    snprintf(av, sizeof(av), "%d %s %d", t->n, host, port);
  }
  rc = dml__store_set(st, key, av, strlen(av), err);
  if (rc) goto out;
  snprintf(t->peers[t->me].host, sizeof(t->peers[t->me].host), "%s", host);
  t->peers[t->me].port = port;
  if (t->me != 0) {
    rc = dml__store_get(st, "job", deadline, &val, &vn, err);
    if (rc) goto out;
    unsigned long long j;
    if (sscanf(val, "%16llx", &j) != 1) {
      rc = dml_err_set(err, DML_EPROTO, "bad job id from the coordinator");
      goto out;
    }
    job = j;
    dml__free(val);
    val = NULL;
  }
  if (t->me == 0) {
    /* The coordinator sees who is missing: say so once after a while, and list them all if the
     * timeout comes. */
    uint64_t stall_at = dml_now_ns() + (uint64_t)DML__MIN(cfg->timeout_ms / 2, 10000) * 1000000ull;
    int warned = 0;
    for (;;) {
      char missing[200] = "";
      size_t off = 0;
      int nmiss = 0, first = -1;
      for (int j = 1; j < t->n; j++) {
        snprintf(key, sizeof(key), "addr/%d", j);
        if (dml__store_has(st, key)) continue;
        if (first < 0) first = j;
        nmiss++;
        if (off < sizeof(missing) - 16)
          off += (size_t)snprintf(missing + off, sizeof(missing) - off, " %d", j);
        else if (off < sizeof(missing) - 4)
          off += (size_t)snprintf(missing + off, sizeof(missing) - off, " ...");
      }
      if (nmiss == 0) {
        dml__store_formed(st);
        break;
      }
      uint64_t now = dml_now_ns();
      if (now >= deadline) {
        rc = dml_err_set(err, DML_ETIMEDOUT,
                         "rank 0: %s%s did not join within %d ms (coordinator %s:%d)",
                         nmiss == 1 ? "rank" : "ranks", missing, cfg->timeout_ms, cfg->master_addr,
                         cfg->master_port);
        goto out;
      }
      if (!warned && now >= stall_at) {
        dml_log(DML_LOG_WARN, "rank 0: still waiting for %s%s to join (coordinator %s:%d)",
                nmiss == 1 ? "rank" : "ranks", missing, cfg->master_addr, cfg->master_port);
        warned = 1;
      }
      snprintf(key, sizeof(key), "addr/%d", first);
      dml_err ignore = {0};
      uint64_t slice = now + 200 * 1000000ull;
      if (dml__store_get(st, key, slice < deadline ? slice : deadline, &val, &vn, &ignore) == 0) {
        dml__free(val);
        val = NULL;
      }
    }
  }
  for (int j = 0; j < t->n; j++) {
    if (j == t->me) continue;
    snprintf(key, sizeof(key), "addr/%d", j);
    rc = dml__store_get(st, key, deadline, &val, &vn, err);
    if (rc) {
      if (rc == DML_ETIMEDOUT)
        dml_err_set(err, rc, "rank %d: rank %d did not join within %d ms (coordinator %s:%d)",
                    t->me, j, cfg->timeout_ms, cfg->master_addr, cfg->master_port);
      goto out;
    }
    peer *p = &t->peers[j];
    rank_addr ra;
    if (parse_addr(val, &ra) != 0) {
      rc =
          dml_err_set(err, DML_EPROTO, "bad address '%s' for rank %d from the coordinator", val, j);
      goto out;
    }
    if (ra.world != t->n) {
      rc = dml_err_set(err, DML_EMISMATCH, "rank %d says world size %d, we have %d", j, ra.world,
                       t->n);
      goto out;
    }
    snprintf(p->host, sizeof(p->host), "%s", ra.host);
    p->port = ra.port;
    if (t->cma_min > 0 && boot[0] && strcmp(ra.boot, boot) == 0) {
      p->pid = (pid_t)ra.pid;
      p->cma_recv = cma_probe(&ra);
    }
    snprintf(p->name, sizeof(p->name), "rank %d (%s:%d)", j, p->host, p->port);
    dml__free(val);
    val = NULL;
  }
  /* Which same-machine peers can read us: each rank publishes whom it can read. */
  if (t->cma_min > 0 && boot[0]) {
    /* The ranks we can read, as a list ("-" for none): short, however large the world. */
    size_t cap = 2, len = 0;
    for (int j = 0; j < t->n; j++) cap += t->peers[j].cma_recv ? 12 : 0;
    char *can = dml__malloc(cap);
    if (can == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "out of memory");
      goto out;
    }
    for (int j = 0; j < t->n; j++)
      if (t->peers[j].cma_recv)
        len += (size_t)snprintf(can + len, cap - len, "%s%d", len ? " " : "", j);
    if (len == 0) len = (size_t)snprintf(can, cap, "-");
    snprintf(key, sizeof(key), "cma/%d", t->me);
    rc = dml__store_set(st, key, can, len, err);
    dml__free(can);
    if (rc) goto out;
    for (int j = 0; j < t->n; j++) {
      if (j == t->me || t->peers[j].pid == 0) continue; /* another machine: it publishes none */
      snprintf(key, sizeof(key), "cma/%d", j);
      rc = dml__store_get(st, key, deadline, &val, &vn, err);
      if (rc) {
        if (rc == DML_ETIMEDOUT)
          dml_err_set(err, rc, "rank %d: rank %d did not finish joining within %d ms", t->me, j,
                      cfg->timeout_ms);
        goto out;
      }
      /* Does rank j list us? The value is a NUL-terminated copy from the store. */
      for (const char *q = val; *q;) {
        char *end;
        long who = strtol(q, &end, 10);
        if (end == q) break;
        if (who == t->me) t->peers[j].cma_send = 1;
        q = end;
        while (*q == ' ') q++;
      }
      if (t->peers[j].cma_send)
        dml_log(DML_LOG_DEBUG,
                "rank %d: messages of %zu bytes or more to rank %d go by CMA (it copies them "
                "out of our memory)",
                t->me, t->cma_min, j);
      dml__free(val);
      val = NULL;
    }
  }
  /* Lower ranks listen, higher ranks connect. */
  for (int j = 0; j < t->me; j++) {
    peer *p = &t->peers[j];
    dml_err e2 = {0};
    rc = dml__net_connect(p->host, p->port, deadline, &p->fd, &e2);
    if (rc == 0) rc = dml__hs_connect(p->fd, cfg->token, p->name, deadline, &e2);
    if (rc == 0) {
      dml__hello h = {.rank = (uint32_t)t->me, .world_size = (uint32_t)t->n, .job = job};
      uint8_t pay[32];
      size_t pn = dml__hello_encode(pay, &h);
      rc = dml__net_send_frame(p->fd, DML__F_HELLO, pay, pn, deadline, &e2);
    }
    if (rc) {
      dml_err_set(err, rc, "rank %d connecting to %s: %s", t->me, p->name, e2.msg);
      goto out;
    }
  }
  rc = accept_peers(t, job, deadline, err);
out:
  dml__free(val);
  dml__store_close(st);
  return rc;
}

static int tcp_init(dml_comm *c, dml_err *err) {
  tcp *t = dml__calloc(1, sizeof(*t));
  if (t == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory");
  c->impl = t;
  t->c = c;
  t->n = c->cfg.world_size;
  t->me = c->cfg.rank;
  t->epfd = t->evfd = t->listen_fd = -1;
  int64_t cma_on = 1, cma_min = CMA_MIN_DEFAULT, slice = SEND_SLICE_DEFAULT;
  dml_err ee = {0};
  if (dml_env_i64("DISTML_CMA", 1, 0, 1, &cma_on, &ee) != 0 ||
      dml_env_i64("DISTML_CMA_MIN_BYTES", CMA_MIN_DEFAULT, 1, INT64_MAX, &cma_min, &ee) != 0 ||
      dml_env_i64("DISTML_SEND_SLICE_BYTES", SEND_SLICE_DEFAULT, 4096, INT64_MAX, &slice, &ee) !=
          0) {
    dml__free(t);
    c->impl = NULL;
    return dml_err_set(err, DML_EINVAL, "%s", ee.msg);
  }
  t->cma_min = cma_on ? (size_t)cma_min : 0;
  t->send_slice = (size_t)slice;
  dml__random_bytes(&t->cma_cookie, sizeof(t->cma_cookie));
  pthread_mutex_init(&t->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&t->cv, &ca);
  pthread_cond_init(&t->pcv, &ca);
  pthread_condattr_destroy(&ca);
  int rc = 0;
  t->peers = dml__calloc((size_t)t->n, sizeof(*t->peers));
  if (t->peers == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "out of memory for %d peers", t->n);
    goto fail;
  }
  for (int i = 0; i < t->n; i++) {
    t->peers[i].fd = -1;
    snprintf(t->peers[i].name, sizeof(t->peers[i].name), "rank %d", i);
  }
  snprintf(t->peers[t->me].name, sizeof(t->peers[t->me].name), "rank %d (self)", t->me);
  dml_log_set_rank(t->me);
  if (t->n == 1) return 0; /* alone: no network at all */
  rc = bootstrap(t, err);
  if (rc) goto fail;
  snprintf(t->peers[t->me].name, sizeof(t->peers[t->me].name), "rank %d (self, %s:%d)", t->me,
           t->peers[t->me].host, t->peers[t->me].port);
  close(t->listen_fd);
  t->listen_fd = -1;
  t->epfd = epoll_create1(EPOLL_CLOEXEC);
  t->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (t->epfd < 0 || t->evfd < 0) {
    rc = dml_err_set(err, DML_ESYS, "epoll/eventfd: %s", strerror(errno));
    goto fail;
  }
  struct epoll_event ev = {.events = EPOLLIN};
  ev.data.u32 = EV_WAKE;
  epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->evfd, &ev);
  for (int i = 0; i < t->n; i++) {
    if (i == t->me) continue;
    t->peers[i].rbuf = dml__malloc(RBUF_BYTES);
    if (t->peers[i].rbuf == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "out of memory for receive buffers");
      goto fail;
    }
    ev.events = EPOLLIN;
    ev.data.u32 = (uint32_t)i;
    if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->peers[i].fd, &ev) != 0) {
      rc = dml_err_set(err, DML_ESYS, "epoll_ctl: %s", strerror(errno));
      goto fail;
    }
  }
  if (pthread_create(&t->thread, NULL, progress_main, t) != 0) {
    rc = dml_err_set(err, DML_ESYS, "cannot start the progress thread");
    goto fail;
  }
  t->thread_started = 1;
  return 0;
fail:
  for (int i = 0; t->peers && i < t->n; i++) t->peers[i].err = rc; /* no linger on a failed join */
  tcp_fini(c);
  return rc;
}

/* Direct copies (dml_comm_direct): a peer on this machine that reads our memory and whose memory
 * we read (the CMA probes of bootstrap both passed). */
static int tcp_direct(const dml_comm *c, int peer_rank) {
  const peer *p = &T(c)->peers[peer_rank];
  return p->cma_send && p->cma_recv;
}

static int tcp_peer_copy(dml_comm *c, int peer_rank, int write, const struct iovec *local, int n,
                         uint64_t addr, size_t len) {
  tcp *t = T(c);
  peer *p = &t->peers[peer_rank];
  /* not with a failed peer: its pid may be another process's soon, and it may have fenced us */
  pthread_mutex_lock(&t->mu);
  int dead = p->err;
  if (!dead) p->copying++;
  pthread_mutex_unlock(&t->mu);
  if (dead)
    return dml__comm_fail(c, DML_EPEER, "direct copy with %s: its link has failed (%s)", p->name,
                          dml_strerror(dead));
  int e = cma_copyv(p->pid, write, local, n, addr);
  pthread_mutex_lock(&t->mu);
  if (--p->copying == 0 && p->shut_pending) {
    shutdown(p->fd, SHUT_WR);
    p->shut_pending = 0;
  }
  pthread_mutex_unlock(&t->mu);
  if (e == 0) return 0;
  if (e == ESRCH)
    return dml__comm_fail(c, DML_EPEER, "direct copy with %s: it has exited", p->name);
  return dml__comm_fail(c, DML_EPROTO, "direct copy %s %s at 0x%llx (%zu bytes): %s",
                        write ? "to" : "from", p->name, (unsigned long long)addr, len, strerror(e));
}

/* dml_comm_fence: why sent to the peer, and the link failed here (unless it has already: our
 * side is shut for writing only, see fail_peer), then the peer's bytes read and dropped (nothing
 * else reads a failed link) until its end of stream or a reset -- it has closed its side, or
 * exited -- for at most the communicator's timeout. */
static int tcp_fence(dml_comm *c, int peer_rank, const char *why) {
  tcp *t = T(c);
  peer *p = &t->peers[peer_rank];
  pthread_mutex_lock(&t->mu);
  if (!p->err && why != NULL) send_abort(p, why);
  fail_peer(t, p, DML_EABORTED, "fenced: this rank no longer lets it copy its memory");
  int fd = p->fd, fenced = p->fenced; /* fd: closed only by fini */
  pthread_mutex_unlock(&t->mu);
  if (fd < 0 || fenced == 1) return 0;
  if (fenced == 0) {
    fenced = drain_until_closed(fd, dml_now_ns() + (uint64_t)c->cfg.timeout_ms * 1000000ull);
    pthread_mutex_lock(&t->mu);
    if (p->fenced != 1) p->fenced = fenced ? 1 : 2; /* one that did not close: not waited again */
    fenced = p->fenced == 1; /* another thread's fence may have seen the close */
    pthread_mutex_unlock(&t->mu);
    if (fenced) return 0;
  }
  return dml__comm_fail(c, DML_ETIMEDOUT, "fence: %s did not close its side within %d ms", p->name,
                        c->cfg.timeout_ms);
}

const dml__comm_backend dml__comm_tcp = {
    .name = "tcp",
    .init = tcp_init,
    .fini = tcp_fini,
    .isend = tcp_isend,
    .irecv = tcp_irecv,
    .wait = tcp_wait,
    .test = tcp_test,
    .wait_any = tcp_wait_any,
    .cancel = tcp_cancel,
    .recv_take = tcp_recv_take,
    .abort = tcp_abort,
    .peer_name = tcp_peer_name,
    .direct = tcp_direct,
    .peer_copy = tcp_peer_copy,
    .fence = tcp_fence,
};
