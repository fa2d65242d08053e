/* Socket helpers of the tcp backend and the bootstrap store: listen, connect with retries,
 * reads and writes bounded by a deadline, and both sides of the connection handshake
 * (challenge-response HMAC-SHA256 when a token is set). It knows nothing of ranks or messages. */
#include "comm/internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { HS_WAIT_AUTH = 1, HS_FLUSH_OK, HS_DONE, HS_FAILED };

int dml__ms_left(uint64_t deadline_ns) {
  uint64_t now = dml_now_ns();
  if (now >= deadline_ns) return 0;
  uint64_t ms = (deadline_ns - now + 999999) / 1000000;
  return ms > INT_MAX ? INT_MAX : (int)ms;
}

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL, 0);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static int resolve(const char *host, int port, struct sockaddr_in *sa, dml_err *err) {
  memset(sa, 0, sizeof(*sa));
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &sa->sin_addr) == 1) return 0;
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(host, NULL, &hints, &res);
  if (rc != 0 || res == NULL)
    return dml_err_set(err, DML_EINVAL, "cannot resolve host '%s': %s", host, gai_strerror(rc));
  sa->sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
  freeaddrinfo(res);
  return 0;
}

int dml__net_listen(const char *host, int port, int *fd_out, int *port_out, dml_err *err) {
  struct sockaddr_in sa;
  int rc = resolve(host, port, &sa, err);
  if (rc) return rc;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return dml_err_set(err, DML_ESYS, "socket: %s", strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    int e = errno;
    close(fd);
    return dml_err_set(err, e == EADDRINUSE ? DML_EEXIST : DML_ESYS, "cannot listen on %s:%d: %s",
                       host, port, strerror(e));
  }
  if (listen(fd, 1024) != 0) {
    int e = errno;
    close(fd);
    return dml_err_set(err, DML_ESYS, "listen on %s:%d: %s", host, port, strerror(e));
  }
  socklen_t sl = sizeof(sa);
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  *fd_out = fd;
  if (port_out) *port_out = ntohs(sa.sin_port);
  return 0;
}

#ifndef SOCKBUF_DEFAULT
#define SOCKBUF_DEFAULT (16 << 20)
#endif

void dml__net_tune(int fd) {
  set_nonblock(fd);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  /* DISTML_SOCKBUF (bytes) sets the socket buffers; 0 leaves the kernel's autotuning. As root the
   * FORCE variants pass the rmem_max/wmem_max caps; otherwise the kernel caps the request. */
  int64_t v = 0;
  if (dml_env_i64("DISTML_SOCKBUF", SOCKBUF_DEFAULT, 0, 1 << 30, &v, NULL) != 0)
    v = SOCKBUF_DEFAULT;
  int sz = (int)v;
  if (sz == 0) return;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) != 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) != 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}

int dml__net_connect(const char *host, int port, uint64_t deadline_ns, int *fd_out, dml_err *err) {
  struct sockaddr_in sa;
  int rc = resolve(host, port, &sa, err);
  if (rc) return rc;
  int last = 0;
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return dml_err_set(err, DML_ESYS, "socket: %s", strerror(errno));
    dml__net_tune(fd);
    int e = 0;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
      e = errno;
      if (e == EINPROGRESS) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int left = dml__ms_left(deadline_ns);
        int n = poll(&pfd, 1, left > 1000 ? 1000 : left);
        if (n == 1) {
          socklen_t sl = sizeof(e);
          getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl);
        } else {
          e = ETIMEDOUT;
        }
      }
    }
    if (e == 0) {
      *fd_out = fd;
      return 0;
    }
    close(fd);
    last = e;
    if (e != ECONNREFUSED && e != ETIMEDOUT && e != ECONNRESET && e != EAGAIN && e != EINTR) break;
    if (dml__ms_left(deadline_ns) == 0) break;
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return dml_err_set(err,
                     last == ECONNREFUSED ? DML_ECONNREFUSED
                     : last == ETIMEDOUT  ? DML_ETIMEDOUT
                                          : DML_ESYS,
                     "cannot connect to %s:%d: %s", host, port, strerror(last));
}

static int wait_fd(int fd, short events, uint64_t deadline_ns) {
  struct pollfd pfd = {.fd = fd, .events = events};
  int left = dml__ms_left(deadline_ns);
  if (left == 0) return DML_ETIMEDOUT;
  int n = poll(&pfd, 1, left);
  if (n == 0) return DML_ETIMEDOUT;
  return 0;
}

int dml__net_write_all(int fd, const void *buf, size_t n, uint64_t deadline_ns, dml_err *err) {
  const uint8_t *p = buf;
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      if (wait_fd(fd, POLLOUT, deadline_ns) != 0)
        return dml_err_set(err, DML_ETIMEDOUT, "write timed out");
      continue;
    }
    int e = errno;
    return dml_err_set(err, e == EPIPE || e == ECONNRESET ? DML_ECLOSED : DML_ESYS, "write: %s",
                       strerror(e));
  }
  return 0;
}

int dml__net_read_all(int fd, void *buf, size_t n, uint64_t deadline_ns, dml_err *err) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t r = recv(fd, p, n, 0);
    if (r > 0) {
      p += r;
      n -= (size_t)r;
      continue;
    }
    if (r == 0) return dml_err_set(err, DML_ECLOSED, "connection closed by the other side");
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      if (wait_fd(fd, POLLIN, deadline_ns) != 0)
        return dml_err_set(err, DML_ETIMEDOUT, "read timed out");
      continue;
    }
    int e = errno;
    return dml_err_set(err, e == ECONNRESET ? DML_ECLOSED : DML_ESYS, "read: %s", strerror(e));
  }
  return 0;
}

int dml__net_send_frame(int fd, int kind, const void *payload, size_t n, uint64_t deadline_ns,
                        dml_err *err) {
  uint8_t buf[DML__FRAME_HDR + DML__CTRL_MAX];
  if (n > DML__CTRL_MAX) return dml_err_set(err, DML_EOVERFLOW, "control frame of %zu bytes", n);
  dml__frame_encode(buf, kind, 0, 0, n);
  if (n > 0) memcpy(buf + DML__FRAME_HDR, payload, n);
  return dml__net_write_all(fd, buf, DML__FRAME_HDR + n, deadline_ns, err);
}

int dml__net_recv_frame(int fd, dml__frame *f, uint8_t *payload, uint64_t deadline_ns,
                        dml_err *err) {
  uint8_t hdr[DML__FRAME_HDR];
  int rc = dml__net_read_all(fd, hdr, sizeof(hdr), deadline_ns, err);
  if (rc) return rc;
  char why[200];
  rc = dml__frame_decode(hdr, sizeof(hdr), 0, f, why, sizeof(why));
  if (rc) return dml_err_set(err, DML_EPROTO, "%s", why);
  if (f->kind == DML__F_DATA)
    return dml_err_set(err, DML_EPROTO, "unexpected DATA frame during handshake");
  return dml__net_read_all(fd, payload, (size_t)f->length, deadline_ns, err);
}

void dml__net_peer_addr(int fd, char *out, size_t out_len) {
  struct sockaddr_in sa;
  socklen_t sl = sizeof(sa);
  if (getpeername(fd, (struct sockaddr *)&sa, &sl) != 0 || sa.sin_family != AF_INET) {
    snprintf(out, out_len, "?");
    return;
  }
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip));
  snprintf(out, out_len, "%s:%d", ip, ntohs(sa.sin_port));
}

/* ---------------------------------------------------------------------------------------------
 * Connector side. */
int dml__hs_connect(int fd, const char *token, const char *who, uint64_t deadline_ns,
                    dml_err *err) {
  dml__frame f;
  uint8_t pay[DML__CTRL_MAX + 1];
  dml_err e2 = {0};
  int rc = dml__net_recv_frame(fd, &f, pay, deadline_ns, &e2);
  if (rc)
    return dml_err_set(err, rc, "handshake with %s: waiting for its challenge: %s", who, e2.msg);
  if (f.kind == DML__F_REFUSE) {
    pay[f.length] = 0;
    return dml_err_set(err, strcmp((char *)pay, DML__HS_FORMED) == 0 ? DML_EAGAIN : DML_EAUTH,
                       "%s refused the connection: %s", who, (char *)pay);
  }
  char why[200];
  dml__challenge ch;
  if (f.kind != DML__F_CHALLENGE)
    return dml_err_set(err, DML_EPROTO, "handshake with %s: expected CHALLENGE, got frame kind %d",
                       who, f.kind);
  if (dml__challenge_decode(pay, (size_t)f.length, &ch, why, sizeof(why)) != 0)
    return dml_err_set(err, DML_EPROTO, "handshake with %s: %s", who, why);
  dml__auth a;
  memset(&a, 0, sizeof(a));
  a.has_token = token != NULL;
  dml__random_bytes(a.nonce, DML__NONCE);
  if (token) dml__auth_mac(a.mac, token, "distml-connector", ch.nonce, a.nonce);
  size_t n = dml__auth_encode(pay, &a);
  rc = dml__net_send_frame(fd, DML__F_AUTH, pay, n, deadline_ns, &e2);
  if (rc) return dml_err_set(err, rc, "handshake with %s: sending AUTH: %s", who, e2.msg);
  rc = dml__net_recv_frame(fd, &f, pay, deadline_ns, &e2);
  if (rc) return dml_err_set(err, rc, "handshake with %s: waiting for its answer: %s", who, e2.msg);
  if (f.kind == DML__F_REFUSE) {
    pay[f.length] = 0;
    dml_log(DML_LOG_ERROR, "%s refused us: %s", who, (char *)pay);
    return dml_err_set(err, DML_EAUTH, "authentication failed: %s refused the connection: %s", who,
                       (char *)pay);
  }
  if (f.kind != DML__F_AUTH_OK || f.length != DML__MAC)
    return dml_err_set(err, DML_EPROTO, "handshake with %s: expected AUTH_OK, got frame kind %d",
                       who, f.kind);
  if (token) {
    uint8_t want[DML__MAC];
    dml__auth_mac(want, token, "distml-acceptor", a.nonce, ch.nonce);
    if (!dml__mac_equal(want, pay)) {
      dml_log(DML_LOG_ERROR, "%s did not prove it knows the token (HMAC mismatch): refusing it",
              who);
      return dml_err_set(err, DML_EAUTH,
                         "authentication failed: %s does not know our token (HMAC mismatch)", who);
    }
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Acceptor side. */
int dml__hs_flush(dml__hs_conn *h) {
  while (h->out_off < h->out_len) {
    ssize_t w = send(h->fd, h->out + h->out_off, h->out_len - h->out_off, MSG_NOSIGNAL);
    if (w > 0) {
      h->out_off += (size_t)w;
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return DML_EAGAIN;
    return DML_ECLOSED;
  }
  h->out_off = h->out_len = 0;
  return 0;
}

int dml__hs_queue(dml__hs_conn *h, int kind, const void *payload, size_t n) {
  if (n > DML__CTRL_MAX || h->out_len + DML__FRAME_HDR + n > sizeof(h->out)) return DML_EOVERFLOW;
  dml__frame_encode(h->out + h->out_len, kind, 0, 0, n);
  if (n > 0) memcpy(h->out + h->out_len + DML__FRAME_HDR, payload, n);
  h->out_len += DML__FRAME_HDR + n;
  int rc = dml__hs_flush(h);
  return rc == DML_EAGAIN ? 0 : rc;
}

void dml__hs_accept_start(dml__hs_conn *h, int fd, const char *token, uint64_t deadline_ns) {
  memset(h, 0, sizeof(*h));
  h->fd = fd;
  h->deadline_ns = deadline_ns;
  dml__net_peer_addr(fd, h->addr, sizeof(h->addr));
  dml__random_bytes(h->nonce, DML__NONCE);
  dml__challenge ch;
  ch.auth_required = token != NULL;
  memcpy(ch.nonce, h->nonce, DML__NONCE);
  uint8_t pay[64];
  size_t n = dml__challenge_encode(pay, &ch);
  (void)dml__hs_queue(h, DML__F_CHALLENGE, pay, n);
  h->state = HS_WAIT_AUTH;
}

int dml__hs_next_frame(dml__hs_conn *h, dml__frame *f, uint8_t *payload, char *why,
                       size_t why_len) {
  /* Read only up to the end of the current frame: whatever follows belongs to the next owner of
   * the socket (the data engine after a peer handshake). */
  for (;;) {
    size_t want = DML__FRAME_HDR;
    int have_hdr = 0;
    if (h->in_len >= DML__FRAME_HDR) {
      int rc = dml__frame_decode(h->in, h->in_len, 0, f, why, why_len);
      if (rc) return rc;
      if (f->kind == DML__F_DATA) {
        snprintf(why, why_len, "DATA frame before the handshake finished");
        return DML_EPROTO;
      }
      have_hdr = 1;
      want = DML__FRAME_HDR + (size_t)f->length;
    }
    if (have_hdr && h->in_len == want) {
      memcpy(payload, h->in + DML__FRAME_HDR, (size_t)f->length);
      h->in_len = 0;
      return 0;
    }
    ssize_t r = recv(h->fd, h->in + h->in_len, want - h->in_len, 0);
    if (r > 0) {
      h->in_len += (size_t)r;
      continue;
    }
    if (r == 0) {
      snprintf(why, why_len, "closed the connection");
      return DML_ECLOSED;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return DML_EAGAIN;
    snprintf(why, why_len, "read: %s", strerror(errno));
    return DML_ESYS;
  }
}

static int refuse(dml__hs_conn *h, int code, const char *reason, char *why, size_t why_len) {
  (void)dml__hs_queue(h, DML__F_REFUSE, reason, strlen(reason));
  snprintf(why, why_len, "%s", reason);
  h->state = HS_FAILED;
  return code;
}

int dml__hs_accept_step(dml__hs_conn *h, const char *token, char *why, size_t why_len) {
  if (h->state == HS_DONE) return 0;
  if (h->state == HS_FAILED) {
    snprintf(why, why_len, "handshake already failed");
    return DML_ESTATE;
  }
  int rc = dml__hs_flush(h);
  if (rc != 0 && rc != DML_EAGAIN) {
    snprintf(why, why_len, "closed the connection during the handshake");
    return rc;
  }
  if (h->state == HS_FLUSH_OK) {
    if (rc == DML_EAGAIN) return DML_EAGAIN;
    h->state = HS_DONE;
    return 0;
  }
  dml__frame f;
  uint8_t pay[DML__CTRL_MAX];
  rc = dml__hs_next_frame(h, &f, pay, why, why_len);
  if (rc == DML_EAGAIN) return rc;
  if (rc) {
    h->state = HS_FAILED;
    return rc;
  }
  if (f.kind != DML__F_AUTH) {
    snprintf(why, why_len, "expected AUTH, got frame kind %d", f.kind);
    h->state = HS_FAILED;
    return DML_EPROTO;
  }
  dml__auth a;
  if (dml__auth_decode(pay, (size_t)f.length, &a, why, why_len) != 0) {
    h->state = HS_FAILED;
    return DML_EPROTO;
  }
  if (token != NULL && !a.has_token)
    return refuse(h, DML_EAUTH,
                  "wrong token: this job requires a token (DISTML_TOKEN) and none was given", why,
                  why_len);
  if (token == NULL && a.has_token)
    return refuse(h, DML_EAUTH,
                  "wrong token: this job has no token but the connecting side sent one", why,
                  why_len);
  uint8_t mac[DML__MAC];
  memset(mac, 0, sizeof(mac));
  if (token != NULL) {
    uint8_t want[DML__MAC];
    dml__auth_mac(want, token, "distml-connector", h->nonce, a.nonce);
    if (!dml__mac_equal(want, a.mac))
      return refuse(h, DML_EAUTH, "wrong token (HMAC-SHA256 of our challenge does not match)", why,
                    why_len);
    dml__auth_mac(mac, token, "distml-acceptor", a.nonce, h->nonce);
  }
  rc = dml__hs_queue(h, DML__F_AUTH_OK, mac, sizeof(mac));
  if (rc) {
    snprintf(why, why_len, "closed the connection during the handshake");
    h->state = HS_FAILED;
    return rc;
  }
  if (h->out_len > 0) {
    h->state = HS_FLUSH_OK;
    return DML_EAGAIN;
  }
  h->state = HS_DONE;
  return 0;
}
