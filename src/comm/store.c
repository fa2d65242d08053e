/* The bootstrap key-value store (Gloo's rendezvous store): rank 0 serves it on the coordinator
 * address from a background thread, the other ranks connect, authenticate and set/get keys.
 * It carries only who-is-where (a few short keys), never training data; a hostile or slow client
 * is dropped with a log line without holding up the others. */
#include "comm/internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONNS 256
#define MAX_KEYS 4096
#define MAX_PENDING 8

typedef struct kv {
  char *key;
  uint8_t *val;
  size_t n;
} kv;

typedef struct srv_conn {
  dml__hs_conn hs;
  int authed;
  char pending[MAX_PENDING][256]; /* keys this client waits for */
  int npending;
} srv_conn;

struct dml__store {
  int is_server;
  int timeout_ms;
  char *token; /* owned copy, NULL without auth */
  /* client */
  int fd;
  char who[96];
  /* server */
  pthread_t thread;
  int thread_started;
  int listen_fd;
  int wake[2]; /* pipe: wakes the server loop (stop, or a local set) */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop;
  int formed; /* every rank has joined: a new connection is refused as a latecomer */
  kv *keys;
  size_t nkeys;
  srv_conn *conns[MAX_CONNS];
  int nconns;
};

static kv *find_key(dml__store *s, const char *key, size_t kl) {
  for (size_t i = 0; i < s->nkeys; i++)
    if (strlen(s->keys[i].key) == kl && memcmp(s->keys[i].key, key, kl) == 0) return &s->keys[i];
  return NULL;
}

/* Under mu. Returns 0, DML_EEXIST (same key with another value), DML_ENOMEM or DML_EOVERFLOW. */
static int put_key(dml__store *s, const char *key, size_t kl, const uint8_t *val, size_t n) {
  kv *e = find_key(s, key, kl);
  if (e != NULL) return (e->n == n && memcmp(e->val, val, n) == 0) ? 0 : DML_EEXIST;
  if (s->nkeys >= MAX_KEYS) return DML_EOVERFLOW;
  kv *nk = dml__realloc(s->keys, (s->nkeys + 1) * sizeof(*nk));
  if (nk == NULL) return DML_ENOMEM;
  s->keys = nk;
  char *k = dml__malloc(kl + 1);
  uint8_t *v = dml__malloc(n + 1);
  if (k == NULL || v == NULL) {
    dml__free(k);
    dml__free(v);
    return DML_ENOMEM;
  }
  memcpy(k, key, kl);
  k[kl] = 0;
  if (n) memcpy(v, val, n);
  v[n] = 0;
  s->keys[s->nkeys++] = (kv){k, v, n};
  pthread_cond_broadcast(&s->cv);
  return 0;
}

static void drop_conn(dml__store *s, int i, dml_log_level lvl, const char *why) {
  srv_conn *c = s->conns[i];
  if (why != NULL) dml_log(lvl, "coordinator: dropped connection from %s: %s", c->hs.addr, why);
  close(c->hs.fd);
  dml__free(c);
  s->conns[i] = s->conns[--s->nconns];
}

/* Answer the GETs of conn i whose keys now exist. Under mu. 0, or an error (drop the conn). */
static int answer_pending(dml__store *s, srv_conn *c) {
  for (int k = 0; k < c->npending;) {
    kv *e = find_key(s, c->pending[k], strlen(c->pending[k]));
    if (e == NULL) {
      k++;
      continue;
    }
    uint8_t pay[DML__CTRL_MAX];
    if (2 + strlen(e->key) + e->n > DML__CTRL_MAX) return DML_EOVERFLOW;
    size_t n = dml__kv_encode(pay, e->key, e->val, e->n);
    int rc = dml__hs_queue(&c->hs, DML__F_VAL, pay, n);
    if (rc) return rc;
    memmove(c->pending[k], c->pending[c->npending - 1], sizeof(c->pending[k]));
    c->npending--;
  }
  return 0;
}

/* Handle what conn i has to say. Returns 0 to keep it, else drops it (with a log line). */
static void serve_conn(dml__store *s, int i) {
  srv_conn *c = s->conns[i];
  char why[256];
  if (!c->authed) {
    int rc = dml__hs_accept_step(&c->hs, s->token, why, sizeof(why));
    if (rc == DML_EAGAIN) return;
    if (rc) {
      char msg[400];
      snprintf(msg, sizeof(msg), "%s%s", rc == DML_EAUTH ? "authentication failed: " : "", why);
      drop_conn(s, i, DML_LOG_WARN, msg);
      return;
    }
    c->authed = 1;
  }
  for (;;) {
    int rc = dml__hs_flush(&c->hs);
    if (rc != 0 && rc != DML_EAGAIN) {
      drop_conn(s, i, DML_LOG_DEBUG, "closed");
      return;
    }
    dml__frame f;
    uint8_t pay[DML__CTRL_MAX];
    rc = dml__hs_next_frame(&c->hs, &f, pay, why, sizeof(why));
    if (rc == DML_EAGAIN) return;
    if (rc == DML_ECLOSED) {
      drop_conn(s, i, DML_LOG_DEBUG, "closed by the client");
      return;
    }
    if (rc) {
      drop_conn(s, i, DML_LOG_WARN, why);
      return;
    }
    const char *key;
    size_t kl, vn;
    const uint8_t *val;
    if (f.kind == DML__F_SET || f.kind == DML__F_GET) {
      if (dml__kv_decode(pay, (size_t)f.length, f.kind == DML__F_SET, &key, &kl, &val, &vn, why,
                         sizeof(why))) {
        drop_conn(s, i, DML_LOG_WARN, why);
        return;
      }
    } else {
      snprintf(why, sizeof(why), "unexpected frame kind %d on the store", f.kind);
      drop_conn(s, i, DML_LOG_WARN, why);
      return;
    }
    pthread_mutex_lock(&s->mu);
    if (f.kind == DML__F_SET) {
      rc = put_key(s, key, kl, val, vn);
      if (rc == DML_EEXIST) {
        snprintf(why, sizeof(why),
                 "key '%.*s' is already set to another value (two processes with one rank?)",
                 (int)kl, key);
        (void)dml__hs_queue(&c->hs, DML__F_REFUSE, why, strlen(why));
      } else if (rc) {
        snprintf(why, sizeof(why), "cannot store key '%.*s': %s", (int)kl, key, dml_strerror(rc));
      }
      for (int j = 0; rc == 0 && j < s->nconns; j++)
        if (s->conns[j]->authed && s->conns[j]->npending > 0 && answer_pending(s, s->conns[j]) != 0)
          s->conns[j]->npending = -1; /* marks a connection that could not be answered */
    } else {
      if (c->npending < 0 || c->npending >= MAX_PENDING) {
        snprintf(why, sizeof(why), "more than %d keys awaited at once", MAX_PENDING);
        rc = DML_EOVERFLOW;
      } else {
        memcpy(c->pending[c->npending], key, kl);
        c->pending[c->npending][kl] = 0;
        c->npending++;
        rc = answer_pending(s, c);
        if (rc) snprintf(why, sizeof(why), "cannot answer: %s", dml_strerror(rc));
      }
    }
    /* this connection itself could not be answered by its own SET: dropped now (its pending list
     * is no more; a GET on it would index it at -1) */
    int unanswerable = c->npending < 0;
    pthread_mutex_unlock(&s->mu);
    if (rc || unanswerable) {
      drop_conn(s, i, DML_LOG_WARN, rc ? why : "could not be answered (it does not read)");
      return;
    }
  }
}

static void *server_main(void *arg) {
  dml__store *s = arg;
  struct pollfd pfd[MAX_CONNS + 2];
  for (;;) {
    pthread_mutex_lock(&s->mu);
    int stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    if (stop) break;
    /* Deadlines: a client that has not finished the handshake in time is dropped. */
    uint64_t now = dml_now_ns();
    for (int i = 0; i < s->nconns;) {
      if (s->conns[i]->npending < 0) {
        drop_conn(s, i, DML_LOG_WARN, "could not queue an answer (client not reading)");
      } else if (!s->conns[i]->authed && now > s->conns[i]->hs.deadline_ns) {
        drop_conn(s, i, DML_LOG_WARN, "no handshake within the timeout (silent client)");
      } else {
        i++;
      }
    }
    int n = 0;
    pfd[n++] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
    pfd[n++] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
    for (int i = 0; i < s->nconns; i++)
      pfd[n++] =
          (struct pollfd){.fd = s->conns[i]->hs.fd,
                          .events = (short)(POLLIN | (s->conns[i]->hs.out_len ? POLLOUT : 0))};
    int nconns = s->nconns;
    int rc = poll(pfd, (nfds_t)n, 100);
    if (rc <= 0) continue;
    if (pfd[0].revents) {
      char b[64];
      while (read(s->wake[0], b, sizeof(b)) > 0) {
      }
      /* A local set may have answered someone's GET: flush what was queued. */
      pthread_mutex_lock(&s->mu);
      for (int i = 0; i < s->nconns; i++)
        if (s->conns[i]->authed && s->conns[i]->npending > 0 && answer_pending(s, s->conns[i]) != 0)
          s->conns[i]->npending = -1;
      pthread_mutex_unlock(&s->mu);
    }
    /* Connections in reverse so that dropping (swap with the last) keeps indices valid. */
    for (int i = nconns - 1; i >= 0; i--)
      if (pfd[2 + i].revents) serve_conn(s, i);
    if (pfd[1].revents & POLLIN) {
      for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        if (s->nconns >= MAX_CONNS) {
          char addr[64];
          dml__net_peer_addr(fd, addr, sizeof(addr));
          dml_log(DML_LOG_WARN, "coordinator: dropped connection from %s: too many connections",
                  addr);
          close(fd);
          continue;
        }
        pthread_mutex_lock(&s->mu);
        int formed = s->formed;
        pthread_mutex_unlock(&s->mu);
        if (formed) {
          /* A rank joining a later job (a re-form) whose coordinator has not yet closed the
           * store of this one: told so, and it tries again. */
          dml_err ignore = {0};
          (void)dml__net_send_frame(fd, DML__F_REFUSE, DML__HS_FORMED, strlen(DML__HS_FORMED),
                                    dml_now_ns() + 100 * 1000000ull, &ignore);
          close(fd);
          continue;
        }
        srv_conn *c = dml__calloc(1, sizeof(*c));
        if (c == NULL) {
          close(fd);
          continue;
        }
        dml__net_tune(fd);
        dml__hs_accept_start(&c->hs, fd, s->token,
                             dml_now_ns() + (uint64_t)s->timeout_ms * 1000000ull);
        s->conns[s->nconns++] = c;
      }
    }
  }
  for (int i = s->nconns - 1; i >= 0; i--)
    drop_conn(
        s, i, DML_LOG_WARN,
        s->conns[i]->authed ? NULL : "silent client (no handshake) when the coordinator closed");
  return NULL;
}

static dml__store *store_new(const dml__comm_cfg *cfg) {
  dml__store *s = dml__calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->fd = s->listen_fd = s->wake[0] = s->wake[1] = -1;
  s->timeout_ms = cfg->timeout_ms;
  if (cfg->token != NULL && (s->token = dml__strdup(cfg->token)) == NULL) {
    dml__free(s);
    return NULL;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cv, &ca);
  pthread_condattr_destroy(&ca);
  return s;
}

int dml__store_serve(dml__store **out, const dml__comm_cfg *cfg, dml_err *err) {
  *out = NULL;
  dml__store *s = store_new(cfg);
  if (s == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory for the store");
  s->is_server = 1;
  dml_err e2 = {0};
  int rc = dml__net_listen(cfg->bind_addr, cfg->master_port, &s->listen_fd, NULL, &e2);
  if (rc) {
    dml_err_set(err, rc,
                "rank 0 cannot serve as the coordinator: %s (is another job using MASTER_PORT?)",
                e2.msg);
    goto fail;
  }
  if (pipe2(s->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
    rc = dml_err_set(err, DML_ESYS, "pipe: %s", strerror(errno));
    goto fail;
  }
  if (pthread_create(&s->thread, NULL, server_main, s) != 0) {
    rc = dml_err_set(err, DML_ESYS, "cannot start the coordinator thread");
    goto fail;
  }
  s->thread_started = 1;
  *out = s;
  return 0;
fail:
  dml__store_close(s);
  return rc;
}

void dml__store_formed(dml__store *s) {
  pthread_mutex_lock(&s->mu);
  s->formed = 1;
  pthread_mutex_unlock(&s->mu);
}

int dml__store_connect(dml__store **out, const dml__comm_cfg *cfg, dml_err *err) {
  *out = NULL;
  dml__store *s = store_new(cfg);
  if (s == NULL) return dml_err_set(err, DML_ENOMEM, "out of memory for the store");
  snprintf(s->who, sizeof(s->who), "coordinator %s:%d", cfg->master_addr, cfg->master_port);
  uint64_t deadline = dml_now_ns() + (uint64_t)cfg->timeout_ms * 1000000ull;
  dml_err e2 = {0};
  int rc, formed = 0; /* refused: the coordinator still served a job that had formed */
  for (;;) {
    rc = dml__net_connect(cfg->master_addr, cfg->master_port, deadline, &s->fd, &e2);
    if (rc == 0) rc = dml__hs_connect(s->fd, cfg->token, s->who, deadline, &e2);
    /* Refused by the store of a job that has formed (the one this rank re-forms from, whose
     * coordinator has not closed it yet), or closed as that store shuts down: again. */
    if (rc != DML_EAGAIN && rc != DML_ECLOSED && !(formed && rc == DML_ETIMEDOUT)) break;
    formed |= rc == DML_EAGAIN;
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
    if (dml__ms_left(deadline) == 0) {
      if (formed)
        rc = dml_err_set(err, DML_ETIMEDOUT,
                         "rank %d: the %s still served a job that had formed after %d ms",
                         cfg->rank, s->who, cfg->timeout_ms);
      else
        dml_err_set(err, rc, "rank %d joining: %s", cfg->rank, e2.msg);
      goto fail;
    }
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
  }
  if (rc && s->fd < 0) {
    dml_err_set(err, rc, "rank %d cannot reach the %s within %d ms: %s", cfg->rank, s->who,
                cfg->timeout_ms, e2.msg);
    goto fail;
  }
  if (rc) {
    dml_err_set(err, rc, "rank %d joining: %s", cfg->rank, e2.msg);
    goto fail;
  }
  *out = s;
  return 0;
fail:
  dml__store_close(s);
  return rc;
}

int dml__store_set(dml__store *s, const char *key, const void *value, size_t n, dml_err *err) {
  size_t kl = strlen(key);
  if (kl == 0 || kl > 255 || 2 + kl + n > DML__CTRL_MAX)
    return dml_err_set(err, DML_EINVAL, "store key '%s' or its value (%zu bytes) too long", key, n);
  if (s->is_server) {
    pthread_mutex_lock(&s->mu);
    int rc = put_key(s, key, kl, value, n);
    pthread_mutex_unlock(&s->mu);
    if (write(s->wake[1], "w", 1) < 0) {
      /* the pipe is full: the loop is already due to wake */
    }
    if (rc) return dml_err_set(err, rc, "store: cannot set '%s': %s", key, dml_strerror(rc));
    return 0;
  }
  uint8_t pay[DML__CTRL_MAX];
  size_t pn = dml__kv_encode(pay, key, value, n);
  dml_err e2 = {0};
  int rc = dml__net_send_frame(s->fd, DML__F_SET, pay, pn,
                               dml_now_ns() + (uint64_t)s->timeout_ms * 1000000ull, &e2);
  if (rc) return dml_err_set(err, rc, "store: setting '%s' on the %s: %s", key, s->who, e2.msg);
  return 0;
}

int dml__store_get(dml__store *s, const char *key, uint64_t deadline_ns, char **value, size_t *n,
                   dml_err *err) {
  *value = NULL;
  size_t kl = strlen(key);
  if (kl == 0 || kl > 255) return dml_err_set(err, DML_EINVAL, "store key '%s' too long", key);
  if (s->is_server) {
    pthread_mutex_lock(&s->mu);
    kv *e;
    int rc = 0;
    while ((e = find_key(s, key, kl)) == NULL) {
      struct timespec ts = {(time_t)(deadline_ns / 1000000000ull),
                            (long)(deadline_ns % 1000000000ull)};
      if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT &&
          find_key(s, key, kl) == NULL) {
        rc = DML_ETIMEDOUT;
        break;
      }
    }
    if (rc == 0) {
      *value = dml__malloc(e->n + 1);
      if (*value == NULL) {
        rc = DML_ENOMEM;
      } else {
        memcpy(*value, e->val, e->n + 1);
        *n = e->n;
      }
    }
    pthread_mutex_unlock(&s->mu);
    if (rc == DML_ETIMEDOUT)
      return dml_err_set(err, rc, "store: key '%s' did not appear in time", key);
    if (rc) return dml_err_set(err, rc, "store: out of memory");
    return 0;
  }
  uint8_t pay[DML__CTRL_MAX + 1];
  size_t pn = dml__kv_encode(pay, key, NULL, 0);
  dml_err e2 = {0};
  int rc = dml__net_send_frame(s->fd, DML__F_GET, pay, pn, deadline_ns, &e2);
  if (rc) return dml_err_set(err, rc, "store: asking the %s for '%s': %s", s->who, key, e2.msg);
  dml__frame f;
  rc = dml__net_recv_frame(s->fd, &f, pay, deadline_ns, &e2);
  if (rc)
    return dml_err_set(err, rc, "store: waiting for '%s' from the %s: %s", key, s->who, e2.msg);
  if (f.kind == DML__F_REFUSE) {
    pay[f.length] = 0;
    return dml_err_set(err, DML_EMISMATCH, "the %s refused us: %s", s->who, (char *)pay);
  }
  const char *k;
  size_t gkl, vn;
  const uint8_t *v;
  char why[200];
  if (f.kind != DML__F_VAL ||
      dml__kv_decode(pay, (size_t)f.length, 1, &k, &gkl, &v, &vn, why, sizeof(why)) != 0 ||
      gkl != kl || memcmp(k, key, kl) != 0)
    return dml_err_set(err, DML_EPROTO, "store: bad answer from the %s for '%s'", s->who, key);
  *value = dml__malloc(vn + 1);
  if (*value == NULL) return dml_err_set(err, DML_ENOMEM, "store: out of memory");
  memcpy(*value, v, vn);
  (*value)[vn] = 0;
  *n = vn;
  return 0;
}

int dml__store_has(dml__store *s, const char *key) {
  if (!s->is_server) return 0;
  pthread_mutex_lock(&s->mu);
  int has = find_key(s, key, strlen(key)) != NULL;
  pthread_mutex_unlock(&s->mu);
  return has;
}

void dml__store_local_host(dml__store *s, const dml__comm_cfg *cfg, char *out, size_t out_len) {
  if (s->is_server || s->fd < 0) {
    snprintf(out, out_len, "%s",
             strcmp(cfg->bind_addr, "0.0.0.0") == 0 ? cfg->master_addr : cfg->bind_addr);
    return;
  }
  struct sockaddr_in sa;
  socklen_t sl = sizeof(sa);
  if (getsockname(s->fd, (struct sockaddr *)&sa, &sl) != 0 || sa.sin_family != AF_INET ||
      inet_ntop(AF_INET, &sa.sin_addr, out, (socklen_t)out_len) == NULL)
    snprintf(out, out_len, "%s", cfg->bind_addr);
}

void dml__store_close(dml__store *s) {
  if (s == NULL) return;
  if (s->thread_started) {
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_mutex_unlock(&s->mu);
    if (write(s->wake[1], "s", 1) < 0) {
      /* the loop also checks stop every 100 ms */
    }
    pthread_join(s->thread, NULL);
  }
  if (s->fd >= 0) close(s->fd);
  if (s->listen_fd >= 0) close(s->listen_fd);
  if (s->wake[0] >= 0) close(s->wake[0]);
  if (s->wake[1] >= 0) close(s->wake[1]);
  for (size_t i = 0; i < s->nkeys; i++) {
    dml__free(s->keys[i].key);
    dml__free(s->keys[i].val);
  }
  dml__free(s->keys);
  dml__free(s->token);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  dml__free(s);
}
