/* Internal parts of the parameter server shared by the files of src/ps: the wire frame (encode and the
 * pure decoder), the key-to-server map and the message tags. Not installed; the public worker and
 * server API is include/distml/ps.h, and the wire format is documented in docs/ps.md. */
#ifndef DISTML_PS_INTERNAL_H
#define DISTML_PS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "distml/comm.h"
#include "distml/core.h"
#include "distml/ps.h"

/* Tags above the collectives' range, the task farm's and the train trace's (see farm.c, trace.c). */
#define DML__PS_TAG_REQ (DML_TAG_RESERVED + 0x09100000) /* worker -> server requests */
#define DML__PS_TAG_REP (DML_TAG_RESERVED + 0x09100001) /* server -> worker replies */
#define DML__PS_TAG_WATCH \
  (DML_TAG_RESERVED + 0x09100002) /* never sent: a receive that fails when the peer dies */
#define DML__PS_TAG_RESULT (DML_TAG_RESERVED + 0x09100003) /* train driver: result to rank 0 */
/* Handler h of a server process uses the request, reply and watch tags above plus h * this. */
#define DML__PS_TAG_HANDLER_STEP 0x100
#define DML__PS_MAX_HANDLERS 64

#define DML__PS_MAGIC 0x53504d44u /* "DMPS" little-endian */
#define DML__PS_VERSION 1
#define DML__PS_HEADER_BYTES 64
/* A frame holds at most this many keys (16M: 192 MB with values); the client refuses a larger
 * request (the caller splits it: train_ps pulls a large final model in pieces). */
#define DML__PS_MAX_KEYS DML_PS_MAX_REQUEST_KEYS
/* Pull clock meaning "answer when every other live worker has finished". */
#define DML__PS_CLOCK_FINAL UINT64_MAX

enum {
  DML__PS_PUSH = 1,     /* keys + values: apply */
  DML__PS_PULL = 2,     /* keys: read */
  DML__PS_PUSHPULL = 3, /* keys + values: apply, then read the same keys */
  DML__PS_REPLY = 4,    /* server -> worker: ack (no keys) or the values of a pull */
  DML__PS_CLOCK = 5,    /* worker finished iteration `clock` - 1 (its clock is now `clock`) */
  DML__PS_BYE = 6,      /* worker leaves: its clock no longer holds anyone back; server ->
                           worker on the reply tag: the server has finished (orderly shutdown) */
  DML__PS_REFORM = 7, /* worker -> server: a peer failed, every process joins a new communicator */
  DML__PS_REJOIN = 8  /* worker -> server, first frame on a re-formed communicator: clock = the
                           worker's clock, key_lo = push frames this server acknowledged to it,
                           key_hi = 1 if the worker has left (sent BYE) */
};
enum { DML__PS_VT_NONE = 0, DML__PS_VT_F32 = 1 };
/* Header flags (byte 14). DENSE: no keys on the wire; the frame covers every key of
 * [key_lo, key_hi], at most DML__PS_DENSE_MAX_PART keys, every chunk of which the receiving
 * server owns (or every chunk of which is mirrored: held by every server). Dense keys are a
 * namespace of their own, separate from sparse keys. */
#define DML__PS_FLAG_DENSE 1u
/* BODY (dense PUSH, PUSHPULL or REPLY): the frame is the 64-byte header alone and announces nvals
 * values that follow from the same sender as one message of nvals * 4 bytes, sent from the
 * sender's buffer: on tag DML__PS_TAG_BODY_IN(handler) right after a request (the server takes it
 * next, waiting at most DISTML_PS_BODY_WAIT_MS), on DML__PS_TAG_BODY(handler, timestamp) for a
 * reply. REPLY_BODY (dense PULL or PUSHPULL): "send the values of the reply as a body" (the
 * requester has posted a receive for them straight into its output buffer). */
#define DML__PS_FLAG_BODY 2u
#define DML__PS_FLAG_REPLY_BODY 4u
/* DIRECT (a dense PUSH, PULL or PUSHPULL to a server on the same machine that can read and write
 * the worker's memory: dml_comm_direct): the frame is the header and two u64, the address of the
 * values in the worker's memory (pushes; else 0) and of its output buffer (pulls; else 0), with
 * BODY set when it pushes and REPLY_BODY when it pulls. The server copies the values out of the
 * worker (dml_comm_peer_read) as it applies them and writes a pull's values into the output
 * (dml_comm_peer_write); its REPLY (DENSE | DIRECT, the header alone) says they are there. */
#define DML__PS_FLAG_DIRECT 8u
#define DML__PS_DIRECT_BYTES (DML__PS_HEADER_BYTES + 16)
/* Dense frames (and replies) of at least this many value bytes go as header + body. */
#define DML__PS_BODY_MIN_BYTES (64u * 1024)
/* A request's body follows its header at once (written to the socket right after it; with CMA
 * only a 16-byte frame): a peer that has not sent it within this long is dropped, and a hostile
 * one stalls its server no longer (DISTML_PS_BODY_WAIT_MS). Bodies are used on the tcp backend
 * only: MPI moves a large message only while its sender is inside an MPI call, which a worker
 * computing between its push and its wait is not. */
#define DML__PS_BODY_WAIT_MS 5000
#define DML__PS_TAG_BODY_IN(h) (DML__PS_TAG_REQ + 4 + (int)(h)*DML__PS_TAG_HANDLER_STEP)
/* Reply bodies: a tag per (handler, request timestamp modulo 2^16): a worker has fewer requests in
 * flight than that (max_in_flight <= 65536), so its posted receives never share a tag, and the
 * frames of one request are answered by one server in order. Above the other ps tags. */
#define DML__PS_TAG_BODY(h, ts) \
  (DML_TAG_RESERVED + 0x0A000000 + (int)(h)*0x10000 + (int)((ts)&0xFFFF))
/* A dense chunk: the unit of ownership and of a server's storage (32 KB of f32). */
#define DML__PS_DENSE_PART ((uint64_t)1 << 13)
/* Dense keys outside the registered tensors are dealt round-robin in runs of this many keys
 * (whole chunks). */
#define DML__PS_DENSE_DEAL ((uint64_t)1 << 16)
/* Registered dense tensors (dml_ps_config.dense_sizes) are cut into parts, each a run of whole
 * chunks of at most this many keys (4 MB of f32); a dense frame covers at most this many keys
 * too (a run of consecutive chunks of one server). */
#define DML__PS_DENSE_MAX_PART ((uint64_t)1 << 20)
/* Dense keys are below this (a range's end, lo + n, never wraps). */
#define DML__PS_DENSE_KEY_END ((uint64_t)1 << 62)
/* A worker cuts a server's run into frames of at most this many keys (512 KB), at chunk
 * boundaries (a chunk is in one frame of a request: a BSP mean counts each push once). A 2 MB run
 * as one frame is added whole before its reply can leave; four let the peer read one reply while
 * the next frame is added (colocated 4 MB pushpull 1.8-1.9 -> 1.3-1.4 ms, 1 MB 0.35-0.37 -> 0.31;
 * 64K-key frames were slower again, 1.6-1.8 ms). */
#define DML__PS_FRAME_KEYS ((uint64_t)1 << 17)

/* Where the registered dense tensors live: tensor t starts at offset[t] (chunk-aligned, in order)
 * and is cut into parts of near-equal whole chunks, no larger than 4 MB nor than an even share of
 * all registered keys (total / S, rounded up to chunks), so that one large tensor spreads over
 * every server; the parts are assigned greedily by bytes, largest first, each to the server with
 * the fewest bytes so far (ties: the lower index), so every process computes the same table. */
typedef struct dml__ps_dense_layout {
  int S, ntensors;
  uint64_t nchunks;   /* chunks covered by the registered tensors, from key 0 */
  uint64_t nmirrored; /* of them, chunks of mirrored tensors */
  int *owner;         /* (nchunks) server of each chunk, or DML__PS_MIRRORED */
  uint64_t *offset;   /* (ntensors) first key of each tensor */
  uint64_t *bytes;    /* (S) value bytes of the registered tensors on each server */
} dml__ps_dense_layout;
/* A registered tensor of at most mirror_keys keys (0: none) is not cut: every server holds all of
 * it (a mirrored tensor, owner DML__PS_MIRRORED, its bytes counted on every server) and the others
 * share the even split. */
int dml__ps_dense_layout_build(dml__ps_dense_layout *l, const uint64_t *sizes, int ntensors, int S,
                               uint64_t mirror_keys, dml_err *err);
void dml__ps_dense_layout_free(dml__ps_dense_layout *l);
/* Mirrored tensors (colocated BSP; docs/ps.md "Mirrored tensors"): every worker's shard holds a
 * replica; a worker sends its push of such a chunk to every shard -- its own as the request it
 * is, the others' as a PUSH they apply and never answer -- and reads its own replica only. Each
 * replica folds a chunk's pushes clock by clock, in sender order, once every live worker has
 * pushed that clock or passed it, so the replicas stay equal bit for bit. One push per worker per
 * chunk per clock. */
#define DML__PS_MIRRORED (-1)
/* The largest registered tensor (keys) that cfg mirrors in a world of n processes: 0 unless
 * colocated, BSP, sum-only or sync aggregation, one handler thread and no checkpoints or
 * recovery; then mirror_bytes / (W - 1) / 4. */
uint64_t dml__ps_mirror_keys(const dml_ps_config *cfg, int n);
/* DML_EINVAL (err says why) when a replica might have to drop an honest worker for the pushes of
 * cfg's mirrored tensors it must hold (max_in_flight and the bytes per clock, see server.c). */
int dml__ps_mirror_check(const dml_ps_config *cfg, int n, dml_err *err);
/* Refuses summed pushpulls (cfg->summed_pushpull) without BSP and a sum-only server
 * (DML_EINVAL) or with recovery (DML_EUNSUPPORTED); 0 otherwise. Server and worker both ask. */
int dml__ps_summed_check(const dml_ps_config *cfg, dml_err *err);
/* The server of dense key (DML__PS_MIRRORED: every server): from the table inside the registered
 * range, round-robin beyond. */
int dml__ps_dense_owner(const dml__ps_dense_layout *l, uint64_t key);

typedef struct dml__ps_msg {
  uint32_t command;
  uint32_t sender;
  uint32_t value_type;
  uint32_t flags;          /* DML__PS_FLAG_* */
  uint64_t timestamp;      /* request id, per sender, increasing */
  uint64_t clock;          /* sender's clock when it sent the request */
  uint64_t key_lo, key_hi; /* every key is in [key_lo, key_hi] */
  uint64_t nkeys, nvals;
  uint64_t *keys; /* (nkeys) strictly increasing; owned by the msg (dml__ps_msg_free) unless
                     borrowed */
  float *vals;    /* (nvals) == nkeys or 0 */
  uint64_t vals_addr, out_addr; /* DIRECT: in the sender's memory (0: none) */
  int borrowed; /* keys and vals point into the decoded buffer (dml__ps_decode_view) */
} dml__ps_msg;

/* Bytes of a frame with nkeys keys and nvals values. */
size_t dml__ps_frame_bytes(uint64_t nkeys, uint64_t nvals);
/* The flags of an encoded frame's header (at least DML__PS_HEADER_BYTES bytes, as encoded here). */
unsigned dml__ps_header_flags(const void *frame);
/* Writes header and body into buf (dml__ps_frame_bytes bytes). Keys and vals may be NULL when
 * their count is 0; keys are taken as given (the caller ensures the order). A body reply
 * (DML__PS_FLAG_BODY on a REPLY) is the header alone: 64 bytes, vals unused. */
void dml__ps_encode(void *buf, const dml__ps_msg *m, const uint64_t *keys, const float *vals);
/* Pure decoder: checks magic, version, command, value type, counts against the frame length,
 * key order and range before allocating; on success *m owns copies of keys and values (a body
 * reply: nvals is the announced count, vals NULL). peer names
 * the sender in err ("rank 3 (127.0.0.1:4000)"). Returns 0, DML_EPROTO or DML_ENOMEM. */
int dml__ps_decode(const void *buf, size_t len, const char *peer, dml__ps_msg *m, dml_err *err);
/* The same checks without copies: keys and vals point into buf (which must stay valid and
 * unchanged while m is used) when buf is aligned for them on a little-endian host; otherwise
 * this copies like dml__ps_decode. dml__ps_msg_free releases either kind. */
int dml__ps_decode_view(const void *buf, size_t len, const char *peer, dml__ps_msg *m,
                        dml_err *err);
/* Makes a borrowed message own copies of its keys and values (before its buffer goes away). */
int dml__ps_msg_own(dml__ps_msg *m);
void dml__ps_msg_free(dml__ps_msg *m);

/* The server that owns key among nservers: the key is hashed into one of DML__PS_VRANGES virtual
 * ranges and the ranges are dealt to the servers round-robin. */
#define DML__PS_VRANGES 4096

/* A server served by the worker of its own process (colocated, dml_ps_serve) instead of a thread:
 * attach posts the receive for requests and starts the watcher (one handler thread only, no
 * checkpoints); poll handles the requests that have arrived without waiting -- until one of them
 * answers a request of this process's worker in place (it returns to the worker then) -- and
 * sets *moved if it handled any; inreq is the posted receive (NULL once no worker is left: wait
 * on it with dml_comm_wait_any, never complete it); local handles the worker's own request m
 * (keys and values borrowed from the caller, copied only when a pull must wait or a push of
 * mirrored chunks is queued): a pull's values go to out and *answered = 1, or the request waits
 * (a dense one is answered in place later, see local_done; a sparse pull's reply comes as a
 * frame through the communicator); live counts the workers still to serve; detach ends it
 * (cancels the receive, stops the watcher, waits for replies in flight and, once no worker is
 * left, tells every other worker this server has finished and returns 1: it has finished for
 * this process's worker too; 0 otherwise, and after the first call). Errors other than a dropped
 * hostile peer are fatal. */
int dml__ps_server_attach(dml_ps_server *s, dml_err *err);
int dml__ps_server_poll(dml_ps_server *s, int *moved, dml_err *err);
dml_comm_req *dml__ps_server_inreq(const dml_ps_server *s);
int dml__ps_server_local(dml_ps_server *s, dml__ps_msg *m, float *out, int *answered, dml_err *err);
int dml__ps_server_live(const dml_ps_server *s);
/* 1 if the server's watcher has seen worker rank die (colocated: that rank's shard too). */
int dml__ps_server_worker_dead(const dml_ps_server *s, int rank);
/* A dense request of the worker that had to wait (local: *answered 0) and has since been answered
 * in place (a pull into the out it gave; a push of mirrored chunks once its clock is folded): 1
 * and its timestamp and key_lo, or 0 when there is none. */
int dml__ps_server_local_done(dml_ps_server *s, uint64_t *timestamp, uint64_t *key_lo);
/* The worker gave up request timestamp (an error): its pulls still waiting here are dropped, and
 * nothing is written into its buffers any more. */
void dml__ps_server_forget(dml_ps_server *s, uint64_t timestamp);
int dml__ps_server_detach(dml_ps_server *s);
int dml__ps_owner(uint64_t key, int nservers);

#endif
