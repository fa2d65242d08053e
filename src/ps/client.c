/* The parameter server's worker client: splits a request's sorted keys by owning server, sends one
 * frame per server without blocking, and matches replies to requests by timestamp in wait. It is
 * not a server (server.c) and keeps no copy of the model. */
#include <string.h>

#include "core/internal.h"
#include "distml/ps.h"
#include "ps/ps_internal.h"

typedef struct request {
  int active;
  uint64_t ts;
  int command;
  float *out; /* pull results (n), caller's */
  size_t n;
  size_t *pos;          /* (n) caller positions grouped by server */
  size_t *soff;         /* (S+1) offsets into pos */
  void **frames;        /* (fcap) encoded frames kept until wait (a re-form resends them) */
  size_t *fbytes;       /* (fcap) */
  int *fdst;            /* (fcap) server index of each frame */
  uint64_t *flo;        /* (fcap) key_lo of each frame (dense replies are matched by it) */
  unsigned char *fdone; /* (fcap) 1 once the frame's reply arrived */
  dml_comm_req **sreq;  /* (fcap) */
  dml_comm_req **brecv; /* (fcap) posted receive of a body reply's values (REPLY_BODY) */
  dml_comm_req **bsend; /* (fcap) send of a body request's values, from the caller's buffer */
  int nframes, fcap;
  int *pending; /* (S) replies outstanding from each server */
  int npending;
  int dense; /* keys are the range [dense_lo, dense_lo + n) of the dense namespace */
  int final; /* a final pull: answered once every other worker has left, however long that is */
  uint64_t dense_lo;
} request;

struct dml_ps {
  dml_comm *c;
  dml_ps_config cfg;
  int me, n, S; /* S: virtual servers (server processes x handler threads) */
  int Sproc;    /* server processes */
  uint64_t next_ts, clock;
  request *rq;
  int nrq;
  uint64_t *kscratch;
  float *vscratch;
  size_t scratch_cap;
  int sticky;
  dml_err err;
  int own_comm;    /* c was made by a re-form: freed by dml_ps_free */
  int reforms;     /* re-forms taken part in */
  uint64_t resent; /* frames resent after re-forms */
  uint64_t *acked; /* (S) push frames each server acknowledged */
  uint64_t *told;  /* (S) the clock each server has from this worker (a request's header carries
                      it; a CLOCK frame goes only to a server no request told: flush_clocks) */
  size_t *fill;    /* (S) scratch: where the next key of each server goes in a request's pos */
  dml__ps_dense_layout layout;
  uint64_t *mpushed; /* (layout.nchunks, when some are mirrored) 1 + the clock of this worker's
                        last push of each mirrored chunk: one per clock */
  int left;          /* BYE sent (dml_ps_finish) */
  int final_told;    /* mirrored chunks: every server was told this worker pushes no more (a
                        CLOCK of DML__PS_CLOCK_FINAL, before its first final pull) */
  int in_reform;
  /* dml_ps_serve: the shard of this process, served in place by this worker */
  dml_ps_server *local;
  dml_comm_req *repq;  /* attached: the posted receive of the next reply (any server) */
  int shutdowns;       /* attached: servers that said they have finished */
  unsigned char *shut; /* attached: (Sproc) 1 once that server said so */
  int bodies;          /* large dense values as bodies: tcp backend, no recovery */
  int spin_us;         /* attached: polling before a wait sleeps (DISTML_PS_SPIN_US) */
  /* (S) with bodies: 1 where the server reads and writes this worker's memory (dml_comm_direct,
   * DISTML_PS_DIRECT not 0): its large dense frames go DIRECT */
  unsigned char *direct;
};

static int reform(dml_ps *ps, const char *why);
static int flush_clocks(dml_ps *ps);
static int tell_final(dml_ps *ps);

static int fail(dml_ps *ps, int code, const char *fmt, const char *a, const char *b) {
  if (ps->sticky == 0) {
    ps->sticky = code;
    dml_err_set(&ps->err, code, fmt, a, b);
  }
  return ps->sticky;
}

const char *dml_ps_errmsg(const dml_ps *ps) {
  return ps->err.msg;
}
uint64_t dml_ps_clock_value(const dml_ps *ps) {
  return ps->clock;
}
dml_comm *dml_ps_comm(const dml_ps *ps) {
  return ps->c;
}
int dml_ps_reforms(const dml_ps *ps) {
  return ps->reforms;
}
uint64_t dml_ps_resent_frames(const dml_ps *ps) {
  return ps->resent;
}

/* A communicator call failed with rc: with recovery, re-form the job and return 0 (the caller
 * goes on; unanswered frames have been resent); otherwise the sticky error. */
static int comm_failed(dml_ps *ps, int rc, const char *what, int s) {
  char why[400];
  snprintf(why, sizeof why, "%s server %s: %s", what, dml_comm_peer_name(ps->c, s),
           dml_comm_errmsg(ps->c));
  if (ps->cfg.recover && !ps->in_reform && ps->sticky == 0) return reform(ps, why);
  return fail(ps, rc, "ps: %s%s", why, "");
}

/* Virtual server s (of S = servers * handlers): handler s / servers of server process
 * s % servers, whose rank is that index (dedicated servers are ranks 0..S-1; colocated, every
 * rank). */
static int server_rank(const dml_ps *ps, int s) {
  return s % ps->Sproc;
}
static int req_tag(const dml_ps *ps, int s) {
  return DML__PS_TAG_REQ + (s / ps->Sproc) * DML__PS_TAG_HANDLER_STEP;
}
static int rep_tag(const dml_ps *ps, int s) {
  return DML__PS_TAG_REP + (s / ps->Sproc) * DML__PS_TAG_HANDLER_STEP;
}

/* Leaving in order: an empty message on each server's watch tag completes the receive the
 * server keeps posted to notice this worker's death, so that nothing is pending on this worker
 * when it exits (the communicator would log its exit as a failure). */
static void retire_watch(dml_ps *ps) {
  static const char none = 0;
  for (int s = 0; s < ps->S; s++)
    if (server_rank(ps, s) != ps->me)
      dml_comm_send(ps->c, server_rank(ps, s),
                    DML__PS_TAG_WATCH + (s / ps->Sproc) * DML__PS_TAG_HANDLER_STEP, &none, 0);
}

int dml_ps_create(dml_ps **out, dml_comm *c, const dml_ps_config *cfg, dml_err *err) {
  *out = NULL;
  int n = dml_comm_size(c), me = dml_comm_rank(c);
  if (!dml_ps_is_worker(cfg, me, n))
    return dml_err_set(err, DML_EINVAL, "ps: rank %d is not a worker", me);
  if (cfg->colocated && cfg->recover)
    return dml_err_set(err, DML_EUNSUPPORTED,
                       "ps: recovery needs dedicated servers (not --servers colocated)");
  int rc = dml__ps_summed_check(cfg, err);
  if (rc) return rc;
  dml_ps *ps = dml__calloc(1, sizeof(*ps));
  if (ps == NULL) return dml_err_set(err, DML_ENOMEM, "ps: out of memory");
  ps->c = c;
  ps->cfg = *cfg;
  ps->me = me;
  ps->n = n;
  ps->Sproc = dml_ps_num_servers(cfg, n);
  int K = cfg->handler_threads > 0 ? cfg->handler_threads : 1;
  if (K > DML__PS_MAX_HANDLERS) {
    dml__free(ps);
    return dml_err_set(err, DML_EINVAL, "ps: %d handler threads (at most %d)", K,
                       DML__PS_MAX_HANDLERS);
  }
  if (cfg->max_in_flight > 65536) { /* reply bodies have a tag per request modulo 2^16 */
    dml__free(ps);
    return dml_err_set(err, DML_EINVAL, "ps: %d requests in flight (at most 65536)",
                       cfg->max_in_flight);
  }
  ps->S = ps->Sproc * K;
  const char *be = dml_comm_backend(c);
  ps->bodies = be && strcmp(be, "tcp") == 0 && !cfg->recover;
  int64_t direct = 1;
  int erc = dml_env_i64("DISTML_PS_DIRECT", 1, 0, 1, &direct, err);
  if (erc == 0 && (ps->direct = dml__calloc((size_t)ps->S, 1)) == NULL)
    erc = dml_err_set(err, DML_ENOMEM, "ps: out of memory");
  if (erc) {
    dml__free(ps);
    return erc;
  }
  for (int s = 0; s < ps->S; s++)
    ps->direct[s] = ps->bodies && direct && dml_comm_direct(c, server_rank(ps, s));
  ps->next_ts = 1;
  ps->nrq = cfg->max_in_flight > 0 ? cfg->max_in_flight : 64;
  ps->rq = dml__calloc((size_t)ps->nrq, sizeof(request));
  ps->acked = dml__calloc((size_t)ps->S, sizeof(uint64_t));
  ps->told = dml__calloc((size_t)ps->S, sizeof(uint64_t));
  ps->fill = dml__calloc((size_t)ps->S, sizeof(size_t));
  if (ps->rq == NULL || ps->acked == NULL || ps->told == NULL || ps->fill == NULL) {
    dml__free(ps->rq);
    dml__free(ps->acked);
    dml__free(ps->told);
    dml__free(ps->direct);
    dml__free(ps->fill);
    dml__free(ps);
    return dml_err_set(err, DML_ENOMEM, "ps: out of memory");
  }
  /* mirrored tensors on the tcp backend only (as the servers decide: create_handler) */
  if (be == NULL || strcmp(be, "tcp") != 0) ps->cfg.mirror_bytes = 0;
  cfg = &ps->cfg;
  int lrc = dml__ps_dense_layout_build(&ps->layout, cfg->dense_sizes, cfg->num_dense, ps->S,
                                       dml__ps_mirror_keys(cfg, n), err);
  if (lrc == 0 && ps->layout.nmirrored) lrc = dml__ps_mirror_check(cfg, n, err);
  if (lrc == 0 && ps->layout.nmirrored &&
      (ps->mpushed = dml__calloc((size_t)ps->layout.nchunks, sizeof(uint64_t))) == NULL)
    lrc = dml_err_set(err, DML_ENOMEM, "ps: out of memory");
  if (lrc) {
    dml__ps_dense_layout_free(&ps->layout);
    dml__free(ps->rq);
    dml__free(ps->acked);
    dml__free(ps->told);
    dml__free(ps->direct);
    dml__free(ps->fill);
    dml__free(ps);
    return lrc;
  }
  for (int i = 0; i < ps->nrq; i++) {
    request *r = &ps->rq[i];
    r->soff = dml__calloc((size_t)ps->S + 1, sizeof(size_t));
    r->fcap = ps->S;
    r->frames = dml__calloc((size_t)r->fcap, sizeof(void *));
    r->fbytes = dml__calloc((size_t)r->fcap, sizeof(size_t));
    r->fdst = dml__calloc((size_t)r->fcap, sizeof(int));
    r->flo = dml__calloc((size_t)r->fcap, sizeof(uint64_t));
    r->fdone = dml__calloc((size_t)r->fcap, 1);
    r->sreq = dml__calloc((size_t)r->fcap, sizeof(dml_comm_req *));
    r->brecv = dml__calloc((size_t)r->fcap, sizeof(dml_comm_req *));
    r->bsend = dml__calloc((size_t)r->fcap, sizeof(dml_comm_req *));
    r->pending = dml__calloc((size_t)ps->S, sizeof(int));
    if (!r->soff || !r->frames || !r->sreq || !r->brecv || !r->bsend || !r->pending || !r->fbytes ||
        !r->fdst || !r->flo || !r->fdone) {
      ps->nrq = i + 1;
      dml_ps_free(ps);
      return dml_err_set(err, DML_ENOMEM, "ps: out of memory");
    }
  }
  *out = ps;
  return 0;
}

/* Waits for a send whose buffer is about to be freed or handed back; one still pending after the
 * communicator's timeout is given up (its peer marked failed), never left reading. */
static void settle_send(dml_ps *ps, dml_comm_req **q) {
  if (*q && dml_comm_wait(ps->c, *q, -1) == DML_ETIMEDOUT) dml_comm_cancel(ps->c, *q);
  *q = NULL;
}

/* The flags frame f of r was sent with (its encoded header, kept until wait; none for a frame
 * handled in place by this process's own shard). */
static unsigned frame_flags(const request *r, int f) {
  return r->frames[f] ? dml__ps_header_flags(r->frames[f]) : 0;
}

/* 1 if frame f of r went DIRECT and is not answered: its server would copy to or from the
 * caller's buffers when it gets to it. */
static int direct_owed(const request *r, int f) {
  return !r->fdone[f] && (frame_flags(r, f) & DML__PS_FLAG_DIRECT);
}

/* Before r's buffers go back to the caller while servers still owe DIRECT frames of it (this
 * worker gives up on r: an error, or dml_ps_free), each such server is fenced (dml_comm_fence:
 * its link fails, and once it has closed its side it copies nothing more). The server is told
 * why: this worker's error, which names the rank that failed first, so that the fenced rank's
 * own error (colocated, it is a worker too) names that rank and not only this one. */
static void fence_direct(dml_ps *ps, request *r) {
  char why[sizeof ps->err.msg + 64]; /* the peer is sent its first 256 bytes */
  snprintf(why, sizeof why, "ps worker %d gave up a request%s%s", ps->me,
           ps->sticky ? " after: " : " (freed)", ps->sticky ? ps->err.msg : "");
  for (int f = 0; f < r->nframes; f++) {
    if (!direct_owed(r, f)) continue;
    int g = 0; /* each server once */
    while (g < f && !(direct_owed(r, g) && r->fdst[g] == r->fdst[f])) g++;
    if (g < f) continue;
    int sv = server_rank(ps, r->fdst[f]);
    if (dml_comm_fence(ps->c, sv, why) == DML_ETIMEDOUT) {
      dml_log(DML_LOG_ERROR,
              "ps worker %d: server %s neither answered nor closed its link in %d ms: it may "
              "still copy into buffers of a request given up",
              ps->me, dml_comm_peer_name(ps->c, sv), dml_comm_timeout_ms(ps->c));
      fail(ps, DML_ETIMEDOUT, "ps: server %s did not answer a direct request nor close%s",
           dml_comm_peer_name(ps->c, sv), "");
    }
  }
}

static void request_release(dml_ps *ps, request *r) {
  fence_direct(ps, r);
  if (ps->local && r->npending > 0) /* its pulls still waiting at this process's shard */
    dml__ps_server_forget(ps->local, r->ts);
  for (int f = 0; f < r->nframes; f++) {
    settle_send(ps, &r->sreq[f]);
    settle_send(ps, &r->bsend[f]);
    if (r->brecv[f]) dml_comm_cancel(ps->c, r->brecv[f]); /* failed: nothing more is written */
    r->brecv[f] = NULL;
    dml__free(r->frames[f]);
    r->frames[f] = NULL;
  }
  r->nframes = 0;
  for (int s = 0; s < ps->S; s++) r->pending[s] = 0;
  r->dense = 0;
  dml__free(r->pos);
  r->pos = NULL;
  r->active = 0;
  r->npending = 0;
}

/* A new frame entry of request r for server s (its buffer and send set by the caller); -1 when
 * out of memory (sticky error set). */
static int add_frame(dml_ps *ps, request *r, int s, uint64_t key_lo) {
  if (r->nframes == r->fcap) {
    int nc = 2 * r->fcap;
    void **nf = dml__realloc(r->frames, (size_t)nc * sizeof(void *));
    if (nf) r->frames = nf;
    dml_comm_req **nr = dml__realloc(r->sreq, (size_t)nc * sizeof(dml_comm_req *));
    if (nr) r->sreq = nr;
    size_t *nb = dml__realloc(r->fbytes, (size_t)nc * sizeof(size_t));
    if (nb) r->fbytes = nb;
    int *nd = dml__realloc(r->fdst, (size_t)nc * sizeof(int));
    if (nd) r->fdst = nd;
    uint64_t *nl = dml__realloc(r->flo, (size_t)nc * sizeof(uint64_t));
    if (nl) r->flo = nl;
    unsigned char *ndn = dml__realloc(r->fdone, (size_t)nc);
    if (ndn) r->fdone = ndn;
    dml_comm_req **nbr = dml__realloc(r->brecv, (size_t)nc * sizeof(dml_comm_req *));
    if (nbr) r->brecv = nbr;
    dml_comm_req **nbs = dml__realloc(r->bsend, (size_t)nc * sizeof(dml_comm_req *));
    if (nbs) r->bsend = nbs;
    if (!nf || !nr || !nb || !nd || !nl || !ndn || !nbr || !nbs) {
      fail(ps, DML_ENOMEM, "ps: no memory for a frame%s%s", "", "");
      return -1;
    }
    r->fcap = nc;
  }
  int f = r->nframes++;
  r->frames[f] = NULL;
  r->sreq[f] = NULL;
  r->brecv[f] = NULL;
  r->bsend[f] = NULL;
  r->fbytes[f] = 0;
  r->fdst[f] = s;
  r->flo[f] = key_lo;
  r->fdone[f] = 0;
  r->pending[s]++;
  r->npending++;
  return f;
}

/* Hands m to this process's own shard (dml_ps_serve), in place; a failure is the sticky error. */
static int local_handle(dml_ps *ps, dml__ps_msg *m, float *out, int *answered) {
  dml_err e;
  dml_err_clear(&e);
  int rc = dml__ps_server_local(ps->local, m, out, answered, &e);
  return rc ? fail(ps, rc, "%s%s", dml_err_msg(&e), "") : 0;
}

/* Encodes m (keys/vals as given) into a new frame of request r and sends it to server s; with
 * dml_ps_serve, a request to this process's own shard is handled in place instead: no frame, and
 * a pull's values go straight to out (answered), unless the pull must wait for other workers. */
static int send_frame(dml_ps *ps, request *r, int s, dml__ps_msg *m, const uint64_t *keys,
                      const float *vals, float *out, int *answered) {
  *answered = 0;
  if (ps->local && server_rank(ps, s) == ps->me) {
    m->keys = (uint64_t *)(uintptr_t)keys; /* borrowed, read only */
    m->vals = (float *)(uintptr_t)vals;
    if (local_handle(ps, m, out, answered) != 0) return ps->sticky;
    if (!*answered && add_frame(ps, r, s, m->key_lo) < 0) return ps->sticky;
    return 0;
  }
  int direct = (m->flags & DML__PS_FLAG_DIRECT) != 0;
  size_t bytes = direct                           ? DML__PS_DIRECT_BYTES
                 : (m->flags & DML__PS_FLAG_BODY) ? DML__PS_HEADER_BYTES
                                                  : dml__ps_frame_bytes(m->nkeys, m->nvals);
  void *frame = dml__malloc(bytes);
  if (frame == NULL) return fail(ps, DML_ENOMEM, "ps: no memory for a frame%s%s", "", "");
  int f = add_frame(ps, r, s, m->key_lo);
  if (f < 0) {
    dml__free(frame);
    return ps->sticky;
  }
  r->frames[f] = frame;
  r->fbytes[f] = bytes;
  dml__ps_encode(frame, m, keys, vals);
  int rc;
  if ((m->flags & DML__PS_FLAG_REPLY_BODY) && !direct) {
    /* posted before the request leaves: the reply's values land in out (a DIRECT frame's are
     * written there by its server, even when it answers later) */
    size_t vbytes = (size_t)(m->key_hi - m->key_lo + 1) * sizeof(float);
    rc = dml_comm_irecv(ps->c, server_rank(ps, s), DML__PS_TAG_BODY(s / ps->Sproc, m->timestamp),
                        out, vbytes, &r->brecv[f]);
    if (rc) {
      r->brecv[f] = NULL;
      return comm_failed(ps, rc, "receiving from", server_rank(ps, s));
    }
  }
  rc = dml_comm_isend(ps->c, server_rank(ps, s), req_tag(ps, s), frame, bytes, &r->sreq[f]);
  if (rc) {
    r->sreq[f] = NULL;
    return comm_failed(ps, rc, "sending to", server_rank(ps, s)); /* a re-form resends it */
  }
  if (m->clock != DML__PS_CLOCK_FINAL && m->clock > ps->told[s]) ps->told[s] = m->clock;
  if ((m->flags & DML__PS_FLAG_BODY) && !direct) { /* the values, from the caller's buffer */
    rc = dml_comm_isend(ps->c, server_rank(ps, s), DML__PS_TAG_BODY_IN(s / ps->Sproc), vals,
                        (size_t)m->nvals * sizeof(float), &r->bsend[f]);
    if (rc) {
      r->bsend[f] = NULL;
      return comm_failed(ps, rc, "sending to", server_rank(ps, s));
    }
  }
  return 0;
}

/* The next timestamp: increasing, and never equal modulo 2^16 to one still in flight (reply
 * bodies have a tag per timestamp modulo 2^16: DML__PS_TAG_BODY). */
static uint64_t next_timestamp(dml_ps *ps) {
  for (;;) {
    uint64_t ts = ps->next_ts++;
    int clash = 0;
    for (int i = 0; i < ps->nrq && !clash; i++)
      clash = ps->rq[i].active && ((ps->rq[i].ts ^ ts) & 0xFFFF) == 0;
    if (!clash) return ts;
  }
}

static request *free_slot(dml_ps *ps) {
  for (int i = 0; i < ps->nrq; i++)
    if (!ps->rq[i].active) return &ps->rq[i];
  dml_err_set(&ps->err, DML_EAGAIN, "ps: %d requests already in flight", ps->nrq);
  return NULL;
}

/* Frame [a, b) of dense request r (one server's run), with its values from vals and its pull's
 * output to out (either may be NULL). unanswered: a push no reply will come for (a mirrored
 * chunk's copy): never DIRECT, since the server would read vals after this worker's wait. */
static int post_dense_frame(dml_ps *ps, request *r, int command, uint64_t clock, int owner,
                            uint64_t a, uint64_t b, const float *vals, float *out, int unanswered) {
  dml__ps_msg m;
  memset(&m, 0, sizeof(m));
  m.command = (uint32_t)command;
  m.sender = (uint32_t)ps->me;
  m.flags = DML__PS_FLAG_DENSE;
  m.timestamp = r->ts;
  m.clock = clock;
  m.key_lo = a;
  m.key_hi = b - 1;
  m.nvals = vals ? b - a : 0;
  m.value_type = vals ? DML__PS_VT_F32 : DML__PS_VT_NONE;
  /* a large frame goes as header + values sent from the caller's buffer, and a large reply
   * comes as header + values received straight into out (tcp only, and not with recovery: a
   * re-form resends frames, not bodies) */
  if (ps->bodies && (b - a) * sizeof(float) >= DML__PS_BODY_MIN_BYTES &&
      !(ps->local && server_rank(ps, owner) == ps->me)) {
    if (vals) m.flags |= DML__PS_FLAG_BODY;
    if (out) m.flags |= DML__PS_FLAG_REPLY_BODY;
    /* on this machine: the server copies the values out of vals and into out itself */
    if (ps->direct[owner] && !unanswered) {
      m.flags |= DML__PS_FLAG_DIRECT;
      m.vals_addr = (uint64_t)(uintptr_t)vals;
      m.out_addr = (uint64_t)(uintptr_t)out;
    }
  }
  int answered;
  return send_frame(ps, r, owner, &m, NULL, vals, out, &answered);
}

/* The frames of run [a, b) of mirrored chunks for this pass: a push goes to every other replica
 * as a PUSH they never answer (pass 0); the request itself to this worker's own replica (the
 * last pass: with dml_ps_serve, after the frames to the others). */
static int post_mirrored(dml_ps *ps, request *r, int command, uint64_t clock, int pass, uint64_t a,
                         uint64_t b, const float *vals, float *out) {
  if (pass == 0 && vals) {
    for (int s = 0; s < ps->S; s++) {
      if (s == ps->me) continue;
      if (post_dense_frame(ps, r, DML__PS_PUSH, clock, s, a, b, vals, NULL, 1) != 0)
        return ps->sticky;
      int f = r->nframes - 1; /* no reply comes for it: kept only until its send completes */
      r->fdone[f] = 1;
      r->pending[s]--;
      r->npending--;
    }
  }
  if (pass != (ps->local ? 1 : 0)) return 0;
  return post_dense_frame(ps, r, command, clock, ps->me, a, b, vals, out, 0);
}

/* 1 (the error set) for a push after this worker told the servers it has passed every clock
 * (tell_final: with mirrored chunks, a final pull) -- they count it out now. */
static int push_after_final(dml_ps *ps) {
  if (!ps->final_told) return 0;
  dml_err_set(&ps->err, DML_EINVAL,
              "ps: a push after a final pull (with mirrored tensors the servers count this worker "
              "out from its first final pull)");
  return 1;
}

/* A push of [lo, lo + n) at clock: refused if it covers a mirrored chunk this worker has pushed at
 * this clock already (each replica folds one push per worker per clock); else noted. */
static int mirror_push_once(dml_ps *ps, uint64_t clock, uint64_t lo, size_t n) {
  uint64_t first = lo / DML__PS_DENSE_PART, last = (lo + n - 1) / DML__PS_DENSE_PART;
  for (uint64_t ch = first; ch <= last && ch < ps->layout.nchunks; ch++) {
    if (ps->layout.owner[ch] != DML__PS_MIRRORED) continue;
    unsigned long long a = ch * DML__PS_DENSE_PART, b = a + DML__PS_DENSE_PART - 1;
    if (ps->mpushed[ch] == clock + 1)
      return dml_err_set(&ps->err, DML_EINVAL,
                         "ps: dense keys [%llu, %llu] of a mirrored tensor were pushed already at "
                         "clock %llu (once per clock: dml_ps_clock between)",
                         a, b, (unsigned long long)clock);
  }
  for (uint64_t ch = first; ch <= last && ch < ps->layout.nchunks; ch++)
    if (ps->layout.owner[ch] == DML__PS_MIRRORED) ps->mpushed[ch] = clock + 1;
  return 0;
}

static int post_dense(dml_ps *ps, int command, uint64_t clock, uint64_t lo, const float *vals,
                      float *out, size_t n, uint64_t *ts) {
  *ts = 0;
  if (ps->sticky) return ps->sticky;
  if (n == 0 || lo >= DML__PS_DENSE_KEY_END || n > DML__PS_DENSE_KEY_END - lo)
    return dml_err_set(&ps->err, DML_EINVAL,
                       "ps: dense range of %zu keys at %llu (want 1 or more keys below 2^62)", n,
                       (unsigned long long)lo);
  if ((command != DML__PS_PULL && vals == NULL) || (command != DML__PS_PUSH && out == NULL))
    return dml_err_set(&ps->err, DML_EINVAL, "ps: dense %s of %zu keys with no %s buffer",
                       command == DML__PS_PUSH   ? "push"
                       : command == DML__PS_PULL ? "pull"
                                                 : "pushpull",
                       n, command != DML__PS_PULL && vals == NULL ? "values" : "output");
  request *r = free_slot(ps);
  if (r == NULL) return DML_EAGAIN;
  if (command != DML__PS_PULL && push_after_final(ps)) return DML_EINVAL;
  if (ps->mpushed && command != DML__PS_PULL && mirror_push_once(ps, clock, lo, n) != 0)
    return DML_EINVAL;
  /* a final pull's frames carry no clock: the servers hear this worker's first */
  if (clock == DML__PS_CLOCK_FINAL && (flush_clocks(ps) != 0 || tell_final(ps) != 0))
    return ps->sticky;
  r->ts = next_timestamp(ps); /* before it counts as in flight: its old number is no clash */
  r->active = 1;
  r->command = command;
  r->final = clock == DML__PS_CLOCK_FINAL;
  r->out = out;
  r->n = n;
  r->dense = 1;
  r->dense_lo = lo;
  int with_vals = command == DML__PS_PUSH || command == DML__PS_PUSHPULL;
  /* With dml_ps_serve, the frames to other servers leave first and this process's own parts are
   * done after (pass 1), so the other workers' shards can work on them meanwhile. */
  for (int pass = 0; pass < (ps->local ? 2 : 1); pass++) {
    for (uint64_t a = lo, b; a < lo + n; a = b) {
      /* a frame: the run of consecutive chunks of one server from a, at most DML__PS_FRAME_KEYS */
      int owner = dml__ps_dense_owner(&ps->layout, a);
      uint64_t cap =
          DML__MIN(lo + n, a / DML__PS_DENSE_PART * DML__PS_DENSE_PART + DML__PS_FRAME_KEYS);
      b = a;
      do b = DML__MIN((b / DML__PS_DENSE_PART + 1) * DML__PS_DENSE_PART, cap);
      while (b < cap && dml__ps_dense_owner(&ps->layout, b) == owner);
      if (owner == DML__PS_MIRRORED) {
        if (post_mirrored(ps, r, command, clock, pass, a, b, with_vals ? vals + (a - lo) : NULL,
                          out ? out + (a - lo) : NULL) != 0) {
          request_release(ps, r);
          return ps->sticky;
        }
        continue;
      }
      if ((ps->local && server_rank(ps, owner) == ps->me) != pass) continue;
      if (post_dense_frame(ps, r, command, clock, owner, a, b, with_vals ? vals + (a - lo) : NULL,
                           out ? out + (a - lo) : NULL, 0) != 0) {
        request_release(ps, r);
        return ps->sticky;
      }
    }
  }
  *ts = r->ts;
  return flush_clocks(ps);
}

int dml_ps_push_dense(dml_ps *ps, uint64_t lo, const float *vals, size_t n, uint64_t *ts) {
  return post_dense(ps, DML__PS_PUSH, ps->clock, lo, vals, NULL, n, ts);
}
int dml_ps_pull_dense(dml_ps *ps, uint64_t lo, float *vals_out, size_t n, uint64_t *ts) {
  return post_dense(ps, DML__PS_PULL, ps->clock, lo, NULL, vals_out, n, ts);
}
int dml_ps_pull_dense_final(dml_ps *ps, uint64_t lo, float *vals_out, size_t n, uint64_t *ts) {
  return post_dense(ps, DML__PS_PULL, DML__PS_CLOCK_FINAL, lo, NULL, vals_out, n, ts);
}
int dml_ps_pushpull_dense(dml_ps *ps, uint64_t lo, const float *grads, float *vals_out, size_t n,
                          uint64_t *ts) {
  return post_dense(ps, DML__PS_PUSHPULL, ps->clock, lo, grads, vals_out, n, ts);
}

static int post(dml_ps *ps, int command, uint64_t clock, const uint64_t *keys, const float *vals,
                float *out, size_t n, uint64_t *ts) {
  *ts = 0;
  if (ps->sticky) return ps->sticky;
  if (n > DML__PS_MAX_KEYS)
    return dml_err_set(&ps->err, DML_EINVAL, "ps: %zu keys in one request (max %u)", n,
                       DML__PS_MAX_KEYS);
  for (size_t i = 1; i < n; i++)
    if (keys[i] <= keys[i - 1])
      return dml_err_set(&ps->err, DML_EINVAL, "ps: key #%zu (%llu) is not above the previous one",
                         i, (unsigned long long)keys[i]);
  request *r = free_slot(ps);
  if (r == NULL) return DML_EAGAIN;
  if (command != DML__PS_PULL && push_after_final(ps)) return DML_EINVAL;
  if (clock == DML__PS_CLOCK_FINAL && (flush_clocks(ps) != 0 || tell_final(ps) != 0)) /* as above */
    return ps->sticky;
  if (n > ps->scratch_cap) {
    uint64_t *nk = dml__realloc(ps->kscratch, n * sizeof(uint64_t));
    if (nk) ps->kscratch = nk;
    float *nv = dml__realloc(ps->vscratch, n * sizeof(float));
    if (nv) ps->vscratch = nv;
    if (!nk || !nv) return dml_err_set(&ps->err, DML_ENOMEM, "ps: no memory for %zu keys", n);
    ps->scratch_cap = n;
  }
  r->pos = n ? dml__malloc(n * sizeof(size_t)) : NULL;
  if (n && r->pos == NULL)
    return dml_err_set(&ps->err, DML_ENOMEM, "ps: no memory for %zu keys", n);
  memset(r->soff, 0, ((size_t)ps->S + 1) * sizeof(size_t));
  /* owners computed twice (count, place) rather than stored: no per-key allocation */
  for (size_t i = 0; i < n; i++) r->soff[dml__ps_owner(keys[i], ps->S) + 1]++;
  for (int s = 0; s < ps->S; s++) r->soff[s + 1] += r->soff[s];
  for (int s = 0; s < ps->S; s++) ps->fill[s] = r->soff[s];
  for (size_t i = 0; i < n; i++) r->pos[ps->fill[dml__ps_owner(keys[i], ps->S)]++] = i;
  r->ts = next_timestamp(ps); /* before it counts as in flight: its old number is no clash */
  r->active = 1;
  r->command = command;
  r->final = clock == DML__PS_CLOCK_FINAL;
  r->out = out;
  r->n = n;
  int with_vals = command == DML__PS_PUSH || command == DML__PS_PUSHPULL;
  for (int s = 0; s < ps->S; s++) {
    size_t cnt = r->soff[s + 1] - r->soff[s];
    if (cnt == 0) continue;
    for (size_t j = 0; j < cnt; j++) {
      size_t p = r->pos[r->soff[s] + j];
      ps->kscratch[j] = keys[p];
      if (with_vals) ps->vscratch[j] = vals[p];
    }
    dml__ps_msg m;
    memset(&m, 0, sizeof(m));
    m.command = (uint32_t)command;
    m.sender = (uint32_t)ps->me;
    m.timestamp = r->ts;
    m.clock = clock;
    m.key_lo = ps->kscratch[0];
    m.key_hi = ps->kscratch[cnt - 1];
    m.nkeys = cnt;
    m.nvals = with_vals ? cnt : 0;
    m.value_type = with_vals ? DML__PS_VT_F32 : DML__PS_VT_NONE;
    int answered;
    if (send_frame(ps, r, s, &m, ps->kscratch, with_vals ? ps->vscratch : NULL, ps->vscratch,
                   &answered) != 0) {
      request_release(ps, r);
      return ps->sticky;
    }
    if (answered && command != DML__PS_PUSH)
      for (size_t j = 0; j < cnt; j++) out[r->pos[r->soff[s] + j]] = ps->vscratch[j];
  }
  *ts = r->ts;
  return flush_clocks(ps);
}

int dml_ps_push(dml_ps *ps, const uint64_t *keys, const float *vals, size_t n, uint64_t *ts) {
  return post(ps, DML__PS_PUSH, ps->clock, keys, vals, NULL, n, ts);
}
int dml_ps_pull(dml_ps *ps, const uint64_t *keys, float *vals_out, size_t n, uint64_t *ts) {
  return post(ps, DML__PS_PULL, ps->clock, keys, NULL, vals_out, n, ts);
}
int dml_ps_pushpull(dml_ps *ps, const uint64_t *keys, const float *grads, float *vals_out, size_t n,
                    uint64_t *ts) {
  return post(ps, DML__PS_PUSHPULL, ps->clock, keys, grads, vals_out, n, ts);
}
int dml_ps_pull_final(dml_ps *ps, const uint64_t *keys, float *vals_out, size_t n, uint64_t *ts) {
  return post(ps, DML__PS_PULL, DML__PS_CLOCK_FINAL, keys, NULL, vals_out, n, ts);
}

static void frame_answered(dml_ps *ps, request *r, int f) {
  int s = r->fdst[f];
  r->fdone[f] = 1;
  r->pending[s]--;
  r->npending--;
  if (r->command == DML__PS_PUSH || r->command == DML__PS_PUSHPULL) ps->acked[s]++;
}

/* Files a message (buf, freed here) from virtual server s with its request. Returns 1 for a
 * server's shutdown message, 0 or the sticky error otherwise. */
static int file_reply(dml_ps *ps, int s, void *buf, size_t bytes) {
  const char *peer = dml_comm_peer_name(ps->c, server_rank(ps, s));
  int rc;
  dml__ps_msg m;
  dml_err derr;
  rc = dml__ps_decode_view(buf, bytes, peer, &m, &derr); /* m may point into buf */
  if (rc) {
    dml_comm_buf_free(buf);
    return fail(ps, rc, "%s%s", dml_err_msg(&derr), "");
  }
  if (m.command == DML__PS_BYE) { /* a server's shutdown: dml_ps_finish counts them */
    dml__ps_msg_free(&m);
    dml_comm_buf_free(buf);
    return 1;
  }
  request *r = NULL;
  for (int i = 0; i < ps->nrq; i++)
    if (ps->rq[i].active && ps->rq[i].ts == m.timestamp && ps->rq[i].pending[s]) r = &ps->rq[i];
  int f = -1;
  for (int k = 0; r && k < r->nframes && f < 0; k++)
    if (r->fdst[k] == s && !r->fdone[k] && (!r->dense || r->flo[k] == m.key_lo)) f = k;
  if (m.command != DML__PS_REPLY || r == NULL || f < 0) {
    dml__ps_msg_free(&m);
    dml_comm_buf_free(buf);
    return fail(ps, DML_EPROTO, "ps: server %s answered a request this worker did not make%s", peer,
                "");
  }
  if (r->dense) {
    uint64_t cnt = m.nvals;
    int bad = !(m.flags & DML__PS_FLAG_DENSE) || m.key_lo < r->dense_lo ||
              m.key_hi >= r->dense_lo + r->n ||
              (r->command != DML__PS_PUSH && !(m.flags & DML__PS_FLAG_DIRECT) &&
               cnt != m.key_hi - m.key_lo + 1);
    if (bad) {
      dml__ps_msg_free(&m);
      dml_comm_buf_free(buf);
      return fail(ps, DML_EPROTO,
                  "ps: server %s returned a dense range this request did not ask for%s", peer, "");
    }
    /* DIRECT: the server wrote the values into out (a frame sent so, pulling) */
    int direct = (m.flags & DML__PS_FLAG_DIRECT) != 0;
    unsigned sent = frame_flags(r, f);
    if (direct && (sent & (DML__PS_FLAG_DIRECT | DML__PS_FLAG_REPLY_BODY)) !=
                      (DML__PS_FLAG_DIRECT | DML__PS_FLAG_REPLY_BODY)) {
      dml__ps_msg_free(&m);
      dml_comm_buf_free(buf);
      return fail(ps, DML_EPROTO, "ps: server %s answered directly a request not made so%s", peer,
                  "");
    }
    if ((m.flags & DML__PS_FLAG_BODY) && r->brecv[f] == NULL) {
      dml__ps_msg_free(&m);
      dml_comm_buf_free(buf);
      return fail(ps, DML_EPROTO, "ps: server %s sent a body this request did not ask for%s", peer,
                  "");
    }
    if (r->brecv[f] && !(m.flags & DML__PS_FLAG_BODY) && cnt) { /* inline after all */
      dml_comm_cancel(ps->c, r->brecv[f]);
      r->brecv[f] = NULL;
    }
    if (r->command != DML__PS_PUSH && !(m.flags & DML__PS_FLAG_BODY) && !direct)
      memcpy(r->out + (m.key_lo - r->dense_lo), m.vals, (size_t)cnt * sizeof(float));
    dml__ps_msg_free(&m);
    dml_comm_buf_free(buf);
    frame_answered(ps, r, f);
    return 0;
  }
  size_t cnt = r->soff[s + 1] - r->soff[s];
  if (r->command != DML__PS_PUSH) {
    if (m.nkeys != cnt || m.nvals != cnt) {
      dml__ps_msg_free(&m);
      dml_comm_buf_free(buf);
      return fail(ps, DML_EPROTO, "ps: server %s returned the wrong number of values%s", peer, "");
    }
    for (size_t j = 0; j < cnt; j++) r->out[r->pos[r->soff[s] + j]] = m.vals[j];
  }
  dml__ps_msg_free(&m);
  dml_comm_buf_free(buf);
  frame_answered(ps, r, f);
  return 0;
}

/* Receives one message from server s and files it (file_reply). */
/* patient: a final pull's answer or a server's last word, which come once every other worker has
 * left: each timeout there is logged and the wait goes on (other workers still training; a server
 * that dies closes its connection, which is still an error at once) -- not a failure to re-form. */
static int receive_one(dml_ps *ps, int s, int patient) {
  int srank = server_rank(ps, s);
  void *buf = NULL;
  size_t bytes = 0;
  int rc;
  if (!patient) {
    rc = dml_comm_recv_alloc(ps->c, srank, rep_tag(ps, s), &buf, &bytes, NULL);
  } else { /* a posted receive: its timeout leaves it posted, and the peer healthy */
    dml_comm_req *q = NULL;
    rc = dml_comm_irecv_alloc(ps->c, srank, rep_tag(ps, s), &q);
    while (rc == 0 &&
           (rc = dml_comm_wait_alloc(ps->c, q, -1, &buf, &bytes, NULL)) == DML_ETIMEDOUT) {
      dml_log(DML_LOG_INFO,
              "ps worker %d: still waiting for server %s: other workers have not "
              "finished",
              ps->me, dml_comm_peer_name(ps->c, srank));
      rc = 0;
    }
  }
  if (rc) return comm_failed(ps, rc, "waiting for", srank);
  return file_reply(ps, s, buf, bytes);
}

/* ---------------------------------------------------------------------------------------------
 * dml_ps_serve: the worker serves its own shard inside its calls. Every reply (the other
 * servers', and its own server's for a pull that had to wait) comes through one posted receive
 * from any rank; every request to its shard through the server's. */

/* Files the dense pulls of this worker that waited at its own shard and have been answered in
 * place since (their values are in the caller's buffer). Returns how many. */
static int local_answers(dml_ps *ps) {
  uint64_t ts, lo;
  int n = 0;
  while (dml__ps_server_local_done(ps->local, &ts, &lo)) {
    n++;
    for (int i = 0; i < ps->nrq; i++) {
      request *r = &ps->rq[i];
      if (!r->active || r->ts != ts) continue;
      for (int f = 0; f < r->nframes; f++)
        if (r->fdst[f] == ps->me && !r->fdone[f] && r->flo[f] == lo) {
          frame_answered(ps, r, f);
          break;
        }
    }
  }
  return n;
}

/* Server rank sv said it has finished; a second word from it counts nothing. */
static void server_finished(dml_ps *ps, int sv) {
  if (ps->shut[sv]) return;
  ps->shut[sv] = 1;
  ps->shutdowns++;
}

/* Longest sleep of one wait before the timeout is looked at again (ms). */
#define SERVE_SLICE_MS 50

/* Serves what has come to the shard, then files the next reply if it has come; first, with
 * block_ms, sleeps until a reply or a request comes (at most block_ms). *moved: anything
 * happened. The reply receive is posted only here, while the caller still needs one: a receive
 * from any rank fails once every other rank has left. */
static int attached_step(dml_ps *ps, int block_ms, int only_local, int *moved) {
  int rc;
  *moved = 0;
  dml_comm_req *inreq = dml__ps_server_inreq(ps->local);
  only_local = only_local && inreq != NULL;
  if (ps->repq == NULL && !only_local &&
      (rc = dml_comm_irecv_alloc(ps->c, DML_ANY_SOURCE, DML__PS_TAG_REP, &ps->repq)) != 0) {
    ps->repq = NULL;
    return fail(ps, rc, "ps: waiting for replies: %s%s", dml_comm_errmsg(ps->c), "");
  }
  if (block_ms > 0) {
    dml_comm_req *rs[2] = {inreq, ps->repq};
    rc = only_local || ps->repq == NULL
             ? dml_comm_wait_any(ps->c, rs, 1, block_ms)
             : dml_comm_wait_any(ps->c, inreq ? rs : rs + 1, inreq ? 2 : 1, block_ms);
    if (rc == DML_ETIMEDOUT) return 0;
    if (rc) return fail(ps, rc, "ps: waiting for replies: %s%s", dml_comm_errmsg(ps->c), "");
  }
  dml_err e;
  dml_err_clear(&e);
  if ((rc = dml__ps_server_poll(ps->local, moved, &e)) != 0)
    return fail(ps, rc, "%s%s", dml_err_msg(&e), "");
  if (local_answers(ps)) *moved = 1;
  if (ps->repq == NULL) return 0; /* only this process's shard owes the request anything */
  void *buf = NULL;
  size_t bytes = 0;
  int src = -1, done = 0;
  rc = dml_comm_test_alloc(ps->c, ps->repq, &done, &buf, &bytes, &src);
  if (!done) return 0;
  ps->repq = NULL;
  if (rc) return fail(ps, rc, "ps: waiting for replies: %s%s", dml_comm_errmsg(ps->c), "");
  *moved = 1;
  if (src < 0 || src >= ps->Sproc) {
    dml_comm_buf_free(buf);
    return fail(ps, DML_EPROTO, "ps: %s, not a server, sent a reply%s",
                dml_comm_peer_name(ps->c, src < 0 ? 0 : src), "");
  }
  rc = file_reply(ps, src, buf, bytes);
  if (rc == 1) server_finished(ps, src);
  return rc == 1 ? 0 : rc;
}

/* Serves and files replies until request r has all its replies, or (r NULL: leaving) until no
 * worker is left to serve and every server has said it has finished. Waits in slices (polling
 * spin_us first); nothing at all for the communicator's timeout is an error naming a server still
 * owing a reply. */
static int attached_wait(dml_ps *ps, request *r) {
  uint64_t timeout_ns = (uint64_t)dml_comm_timeout_ms(ps->c) * 1000000u;
  uint64_t last = dml_now_ns();
  /* The communicator's wait polls (as the driver: its progress thread stands aside) before it
   * sleeps; polling by repeated tests instead let the progress thread take the core and the
   * lock in between (measured: 16 KB pushpull 0.025 ms, or 0.08-0.15 ms in one run of three). */
  int spin0 = dml_comm_spin_us();
  dml_comm_set_spin_us(ps->spin_us);
  while (ps->sticky == 0) {
    if (r == NULL && dml__ps_server_live(ps->local) == 0 && dml__ps_server_detach(ps->local))
      server_finished(ps, ps->me); /* detach told every other worker */
    if (r ? r->npending == 0 : dml__ps_server_live(ps->local) == 0 && ps->shutdowns == ps->S) break;
    int moved = 0;
    /* a dense request only this process's shard owes (mirrored chunks, or its own shard's) is
     * answered in place: no reply can come for it, and no receive for one is looked at */
    attached_step(ps, SERVE_SLICE_MS, r && r->dense && r->npending == r->pending[ps->me], &moved);
    /* Colocated, every server is a worker the shard's watcher keeps an eye on: one that died
     * will not answer (and its shard is lost): an error naming it now, not at the timeout. */
    for (int sv = 0; sv < ps->Sproc && ps->sticky == 0; sv++) {
      int owed = r ? r->pending[sv] > 0 : !ps->shut[sv];
      if (owed && sv != ps->me && dml__ps_server_worker_dead(ps->local, sv))
        fail(ps, DML_EPEER, "ps: server %s died before answering this worker%s",
             dml_comm_peer_name(ps->c, sv), " (its shard is lost: no recovery when colocated)");
    }
    uint64_t now = dml_now_ns();
    if (moved) {
      last = now;
    } else if (now - last > timeout_ns) {
      int s = 0;
      while (r && s < ps->S - 1 && !r->pending[s]) s++;
      char why[64];
      snprintf(why, sizeof why, " in %d ms%s", dml_comm_timeout_ms(ps->c),
               r ? "" : " (leaving: it has not finished)");
      fail(ps, DML_ETIMEDOUT, "ps: nothing from server %s%s",
           dml_comm_peer_name(ps->c, server_rank(ps, s)), why);
    }
  }
  dml_comm_set_spin_us(spin0);
  return ps->sticky;
}

int dml_ps_serve(dml_ps *ps, dml_ps_server *srv, dml_err *err) {
  if (!ps->cfg.colocated || ps->local || ps->next_ts != 1 || ps->S != ps->Sproc)
    return dml_err_set(err, DML_ESTATE,
                       "ps: a worker serves its shard itself only colocated, with one handler "
                       "thread, once, before its first request");
  if (dml_ps_server_comm(srv) != ps->c)
    return dml_err_set(err, DML_EINVAL,
                       "ps: the shard a worker serves must be on the worker's communicator");
  ps->shut = dml__calloc((size_t)ps->Sproc, 1);
  if (ps->shut == NULL) return dml_err_set(err, DML_ENOMEM, "ps: out of memory");
  int rc = dml__ps_server_attach(srv, err);
  if (rc) return rc;
  /* Polling where every local rank has a core: 1 ms, not the collectives' 200 us: a worker's
   * wait often outlasts 200 us (it waits for a peer that is serving, not only for bytes). With
   * unpinned ranks, 16 KB colocated pushpull fell into a slow mode (0.027 -> 0.07-0.21 ms per
   * iteration) in 2 runs of 15 at 200 us, 1 of 30 at 500 us and 1 of 18 at 1000 us; with ranks
   * pinned a core each, as the launcher does, in none of 24. */
  int64_t v = dml__default_spin_us() > 0 ? 1000 : 0;
  if ((rc = dml_env_i64("DISTML_PS_SPIN_US", v, 0, 1000000, &v, err)) != 0) {
    dml__ps_server_detach(srv);
    return rc;
  }
  ps->spin_us = (int)v;
  ps->local = srv;
  return 0;
}

int dml_ps_wait(dml_ps *ps, uint64_t ts) {
  request *r = NULL;
  for (int i = 0; i < ps->nrq; i++)
    if (ps->rq[i].active && ps->rq[i].ts == ts) r = &ps->rq[i];
  if (r == NULL)
    return ps->sticky ? ps->sticky
                      : dml_err_set(&ps->err, DML_EINVAL, "ps: no request %llu in flight",
                                    (unsigned long long)ts);
  if (r->npending > 0) flush_clocks(ps); /* nobody waits for this worker's clock meanwhile */
  if (ps->local) attached_wait(ps, r);
  while (r->npending > 0 && ps->sticky == 0) {
    int s = 0;
    while (!r->pending[s]) s++;
    receive_one(ps, s, r->final);
  }
  /* body replies: each server sent the values right after the header */
  for (int f = 0; f < r->nframes && ps->sticky == 0; f++) {
    if (r->brecv[f] == NULL) continue;
    int rc = dml_comm_wait(ps->c, r->brecv[f], -1);
    if (rc == DML_ETIMEDOUT) { /* still posted: request_release withdraws it */
      fail(ps, rc, "ps: no values from server %s after its reply%s",
           dml_comm_peer_name(ps->c, server_rank(ps, r->fdst[f])), "");
      break;
    }
    r->brecv[f] = NULL;
    if (rc) comm_failed(ps, rc, "receiving values from", server_rank(ps, r->fdst[f]));
  }
  request_release(ps, r);
  return ps->sticky;
}

/* Which servers send_to addresses: every one; those that do not have this worker's clock yet
 * (a CLOCK); of those, only this process's own shard (dml_ps_serve). */
enum { TO_ALL, TO_STALE, TO_STALE_OWN };

/* Sends a header-only command carrying clock to the servers `to` names (a shard of this
 * process's own is told in place); *bad: the first server that failed. */
static int send_to(dml_ps *ps, int command, int to, uint64_t clock, int *bad) {
  dml__ps_msg m;
  memset(&m, 0, sizeof(m));
  m.command = (uint32_t)command;
  m.sender = (uint32_t)ps->me;
  m.clock = clock;
  unsigned char buf[DML__PS_HEADER_BYTES];
  dml__ps_encode(buf, &m, NULL, NULL);
  int first = 0;
  for (int s = 0; s < ps->S; s++) {
    int own = ps->local && server_rank(ps, s) == ps->me;
    if ((to != TO_ALL && ps->told[s] >= clock) || (to == TO_STALE_OWN && !own)) continue;
    /* told even if the send fails: the error is final, or a re-form's REJOIN carries the clock */
    if (command == DML__PS_CLOCK) ps->told[s] = clock;
    if (own) {
      int answered;
      dml__ps_msg lm = m;
      int lrc = local_handle(ps, &lm, NULL, &answered);
      if (lrc && !first) {
        first = lrc;
        *bad = ps->me;
      }
      continue;
    }
    int rc = dml_comm_send(ps->c, server_rank(ps, s), req_tag(ps, s), buf, sizeof buf);
    if (rc && !first) {
      first = rc;
      *bad = server_rank(ps, s);
    }
  }
  return first;
}

static int send_all(dml_ps *ps, int command, int *bad) {
  return send_to(ps, command, TO_ALL, ps->clock, bad);
}

/* Tells the new clock to the servers that have not had it with a request: called after each
 * request is sent and before a wait, so a clock reaches every server by this worker's next call
 * (a worker that sends a request right after dml_ps_clock, as training loops do, sends no CLOCK
 * frame to the servers that request goes to). */
static int flush_clocks(dml_ps *ps) {
  if (ps->sticky) return ps->sticky;
  int bad = -1;
  int rc = send_to(ps, DML__PS_CLOCK, TO_STALE, ps->clock, &bad);
  if (rc) return comm_failed(ps, rc, "telling the clock to", bad); /* REJOIN carries it */
  return 0;
}

/* Before a final pull, with mirrored chunks: every server hears that this worker has passed
 * every clock (it pushes no more), so no replica waits for its pushes to fold a clock -- the
 * others may still train while it waits for them to leave. Once. */
static int tell_final(dml_ps *ps) {
  if (ps->mpushed == NULL || ps->final_told) return 0;
  ps->final_told = 1;
  int bad = -1, rc = send_to(ps, DML__PS_CLOCK, TO_ALL, DML__PS_CLOCK_FINAL, &bad);
  return rc ? comm_failed(ps, rc, "telling the clock to", bad) : 0;
}

int dml_ps_clock(dml_ps *ps) {
  if (ps->sticky) return ps->sticky;
  ps->clock++;
  int bad; /* this process's own shard hears it at once, in place (a failure is sticky) */
  return ps->local ? send_to(ps, DML__PS_CLOCK, TO_STALE_OWN, ps->clock, &bad) : 0;
}

/* Leaves the failed communicator and joins a new one with every process of the job, tells each
 * server this worker's clock, acknowledged pushes and whether it has left (REJOIN), and resends
 * every frame that has no reply yet (servers apply a resent push once). */
static int reform(dml_ps *ps, const char *why) {
  int max = ps->cfg.max_reforms > 0 ? ps->cfg.max_reforms : 8;
  if (ps->reforms >= max)
    return fail(ps, DML_ECLOSED, "ps: %s (after %s re-forms)", why, max == 8 ? "8" : "the allowed");
  ps->in_reform = 1;
  dml_log(DML_LOG_WARN, "ps worker %d: %s; re-forming the job", ps->me, why);
  int ignore;
  send_all(ps, DML__PS_REFORM, &ignore); /* servers that are alive re-form too */
  dml_comm_abort(ps->c, "ps: re-forming the job after a failure");
  for (int i = 0; i < ps->nrq; i++) {
    request *r = &ps->rq[i];
    for (int f = 0; r->active && f < r->nframes; f++)
      if (r->sreq[f]) {
        dml_comm_wait(ps->c, r->sreq[f], -1); /* fails at once: the communicator is aborted */
        r->sreq[f] = NULL;
      }
  }
  if (ps->own_comm) dml_comm_free(ps->c);
  ps->c = NULL;
  ps->own_comm = 0;
  dml_err ierr;
  dml_err_clear(&ierr);
  dml_comm *nc = NULL;
  int rc = dml_comm_init(&nc, ps->cfg.comm_opts, &ierr);
  if (rc == 0 && (dml_comm_rank(nc) != ps->me || dml_comm_size(nc) != ps->n)) {
    rc = dml_err_set(&ierr, DML_EMISMATCH, "the new communicator has rank %d of %d",
                     dml_comm_rank(nc), dml_comm_size(nc));
    dml_comm_free(nc);
  }
  ps->in_reform = 0;
  if (rc) {
    ps->c = NULL;
    return fail(ps, rc, "ps: re-forming the job after %s: %s", why, dml_err_msg(&ierr));
  }
  ps->c = nc;
  ps->own_comm = 1;
  ps->reforms++;
  for (int s = 0; s < ps->S; s++) {
    dml__ps_msg m;
    memset(&m, 0, sizeof(m));
    m.command = DML__PS_REJOIN;
    m.sender = (uint32_t)ps->me;
    m.clock = ps->told[s] = ps->clock;
    m.key_lo = ps->acked[s];
    m.key_hi = ps->left ? 1 : 0;
    unsigned char buf[DML__PS_HEADER_BYTES];
    dml__ps_encode(buf, &m, NULL, NULL);
    rc = dml_comm_send(ps->c, server_rank(ps, s), req_tag(ps, s), buf, sizeof buf);
    if (rc)
      return fail(ps, rc, "ps: rejoining server %s: %s", dml_comm_peer_name(ps->c, s),
                  dml_comm_errmsg(ps->c));
  }
  if (ps->left) retire_watch(ps); /* the new servers' watches, as in dml_ps_finish */
  for (int i = 0; i < ps->nrq; i++) {
    request *r = &ps->rq[i];
    for (int f = 0; r->active && f < r->nframes; f++) {
      if (r->fdone[f]) continue;
      rc = dml_comm_isend(ps->c, server_rank(ps, r->fdst[f]), req_tag(ps, r->fdst[f]), r->frames[f],
                          r->fbytes[f], &r->sreq[f]);
      if (rc) {
        r->sreq[f] = NULL;
        return fail(ps, rc, "ps: resending to server %s: %s", dml_comm_peer_name(ps->c, r->fdst[f]),
                    dml_comm_errmsg(ps->c));
      }
      ps->resent++;
    }
  }
  dml_log(DML_LOG_INFO, "ps worker %d: re-formed the job (re-form %d, %llu frames resent so far)",
          ps->me, ps->reforms, (unsigned long long)ps->resent);
  return 0;
}

int dml_ps_finish(dml_ps *ps) {
  if (ps->sticky) return ps->sticky;
  for (int i = 0; i < ps->nrq; i++)
    if (ps->rq[i].active) dml_ps_wait(ps, ps->rq[i].ts);
  if (ps->sticky || flush_clocks(ps) != 0) return ps->sticky; /* its last clock, then goodbye */
  ps->left = 1;
  int bad = -1;
  int rc = send_all(ps, DML__PS_BYE, &bad);
  if (rc && (rc = comm_failed(ps, rc, "saying goodbye to", bad)) != 0) return rc;
  retire_watch(ps);
  if (ps->local) return attached_wait(ps, NULL);
  for (int s = 0; s < ps->S && ps->sticky == 0; s++) {
    /* after a re-form every server answers again: start over */
    int gen = ps->reforms;
    rc = receive_one(ps, s, 1);
    if (ps->reforms != gen)
      s = -1;
    else if (rc != 1)
      s--;
  }
  return ps->sticky;
}

void dml_ps_free(dml_ps *ps) {
  if (ps == NULL) return;
  /* requests whose direct frames are unanswered: waited for first (a fence would fail the links
   * to their servers, and the job would count this worker dead) */
  for (int i = 0; ps->rq && i < ps->nrq && ps->sticky == 0; i++) {
    request *r = &ps->rq[i];
    int owed = 0;
    for (int f = 0; r->active && !r->final && f < r->nframes && !owed; f++)
      owed = direct_owed(r, f);
    if (owed) dml_ps_wait(ps, r->ts); /* not a final pull: it waits as long as others train */
  }
  if (ps->rq)
    for (int i = 0; i < ps->nrq; i++) {
      request *r = &ps->rq[i];
      if (r->active) request_release(ps, r);
      dml__free(r->soff);
      dml__free(r->frames);
      dml__free(r->fbytes);
      dml__free(r->fdst);
      dml__free(r->flo);
      dml__free(r->fdone);
      dml__free(r->sreq);
      dml__free(r->brecv);
      dml__free(r->bsend);
      dml__free(r->pending);
    }
  int ignore;
  if (!ps->left && ps->c) {
    send_all(ps, DML__PS_BYE, &ignore);
    retire_watch(ps);
  }
  if (ps->repq) dml_comm_cancel(ps->c, ps->repq);
  if (ps->own_comm) dml_comm_free(ps->c);
  dml__free(ps->acked);
  dml__free(ps->told);
  dml__free(ps->direct);
  dml__free(ps->fill);
  dml__free(ps->shut);
  dml__ps_dense_layout_free(&ps->layout);
  dml__free(ps->mpushed);
  dml__free(ps->rq);
  dml__free(ps->kscratch);
  dml__free(ps->vscratch);
  dml__free(ps);
}
