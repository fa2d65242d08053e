/* Internals of the communicator layer: the communicator object shared by every backend, the
 * backend table (one const struct of function pointers per transport, registered by name), the
 * wire frame and handshake codecs (pure functions over byte buffers, fuzzed in fuzz/fuzz_frame.c),
 * the bootstrap key-value store and the socket helpers. Not installed; nothing above comm may
 * include it. */
#ifndef DISTML_COMM_INTERNAL_H
#define DISTML_COMM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/internal.h"
#include "distml/comm.h"

/* ---------------------------------------------------------------------------------------------
 * Resolved options: what dml_comm_init hands to a backend after reading opts and the
 * environment. Strings point into the dml_comm (owned by it, freed with it). */
typedef struct dml__comm_cfg {
  int rank, world_size;
  const char *master_addr; /* never NULL */
  int master_port;         /* 0 only when world_size == 1 */
  const char *bind_addr;   /* never NULL */
  const char *token;       /* NULL: no authentication */
  int timeout_ms;          /* > 0 */
  uint64_t max_message_bytes;
} dml__comm_cfg;

typedef struct dml__comm_backend dml__comm_backend;

/* The communicator. The public wrappers (comm.c) check arguments and hand over to ops. */
struct dml_comm {
  const dml__comm_backend *ops;
  dml__comm_cfg cfg;
  char *master_addr, *bind_addr, *token; /* owned copies behind cfg's strings */
  void *impl;                            /* the backend's state */
  pthread_mutex_t err_mu;                /* guards err (several threads may fail at once) */
  dml_err err;                           /* last failure message */
  char errmsg_copy[512];                 /* what dml_comm_errmsg returned last */
  atomic_uint_fast64_t bytes_sent;
};

/* Record a failure message on c (thread-safe); returns code. */
int dml__comm_fail(dml_comm *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------------------------------------
 * The backend table. Every slot is called with valid arguments (the wrappers check rank, tag,
 * NULL pointers and sizes) and may be called from several threads at once unless said otherwise.
 * A request (dml_comm_req) is backend-defined; the wrappers only pass it through. */
struct dml__comm_backend {
  const char *name;
  /* Join the job described by c->cfg and set c->impl. Blocks up to cfg.timeout_ms. On failure
   * returns a DML_E... code with the reason in err, and leaves c->impl NULL and nothing open
   * (no thread, no socket). Called once, from one thread. */
  int (*init)(dml_comm *c, dml_err *err);
  /* Cancel every outstanding request, close every connection, free c->impl. Never blocks longer
   * than the timeout (it lingers until sent bytes are acknowledged). Called once, with no other
   * call in flight. Must accept c->impl == NULL. */
  void (*fini)(dml_comm *c);
  /* Start sending bytes of buf to peer with tag. Does not block (at most it writes what the
   * socket accepts now). On success *req is set and buf belongs to the library until the request
   * completes or fails. On failure (peer already failed: its sticky code; aborted: DML_EABORTED;
   * out of memory) *req is untouched, nothing was queued, buf is the caller's again and the
   * message is in c->err. */
  int (*isend)(dml_comm *c, int peer, int tag, const void *buf, size_t bytes, dml_comm_req **req);
  /* Post a receive of exactly bytes from peer (DML_ANY_SOURCE allowed only with alloc) with tag.
   * alloc != 0: buf is ignored and the library allocates the message (any length up to
   * max_message_bytes), fetched with recv_take. Does not block. Ownership and failure as isend. */
  int (*irecv)(dml_comm *c, int peer, int tag, void *buf, size_t bytes, int alloc,
               dml_comm_req **req);
  /* Wait up to timeout_ms (>= 0) for req. Complete: returns the request's status, with the
   * message in c->err on failure; the request is released, except a successful one when
   * keep != 0 (an alloc receive: recv_take must follow).
   * DML_ETIMEDOUT: req stays valid and pending, the peer is not marked failed. */
  int (*wait)(dml_comm *c, dml_comm_req *req, int timeout_ms, int keep);
  /* Non-blocking wait: *done = 1 and the status when complete (req released, except a successful
   * one when keep != 0, as in wait), else *done = 0, returns 0 and req stays valid. */
  int (*test)(dml_comm *c, dml_comm_req *req, int *done, int keep);
  /* Wait up to timeout_ms (>= 0) until at least one of reqs (n >= 1) is complete: 0 (nothing is
   * released: test tells which), or DML_ETIMEDOUT. */
  int (*wait_any)(dml_comm *c, dml_comm_req *const *reqs, int n, int timeout_ms);
  /* Give up on a pending request whose caller stops waiting (the blocking calls on timeout):
   * the peer involved is marked failed with code (sticky; a half-transferred frame cannot be
   * resumed) and req is released. Returns the code. A request that completed meanwhile (between
   * the caller's timed-out wait and this call) is finished as test would: its status returned,
   * and a successful one kept when keep != 0 (an alloc receive whose message the caller takes). */
  int (*cancel)(dml_comm *c, dml_comm_req *req, int code, int keep);
  /* For a completed alloc receive kept by wait: hand the buffer (free with dml_comm_buf_free),
   * its length and sender to the caller and release req. */
  void (*recv_take)(dml_comm *c, dml_comm_req *req, void **buf, size_t *bytes, int *src);
  /* Fail every pending and later call with DML_EABORTED and close the connections so that the
   * peers see it. Does not block. Idempotent. */
  void (*abort)(dml_comm *c, const char *reason);
  /* "rank 3 (127.0.0.1:40213)"; the string lives as long as c. */
  const char *(*peer_name)(const dml_comm *c, int peer);
  /* Optional (NULL: never): 1 if peer's memory can be read and written directly (dml_comm_direct),
   * and the copy itself between the n local pieces, one after another, and the len bytes at addr
   * in peer's memory (write != 0: to the peer); peer is never this rank, len the pieces' sum. */
  int (*direct)(const dml_comm *c, int peer);
  int (*peer_copy)(dml_comm *c, int peer, int write, const struct iovec *local, int n,
                   uint64_t addr, size_t len);
  /* Optional (NULL: nothing to do, no direct copies): dml_comm_fence; peer is never this rank. */
  int (*fence)(dml_comm *c, int peer, const char *why);
};

extern const dml__comm_backend dml__comm_tcp;
extern const dml__comm_backend dml__comm_mpi; /* comm_mpi.c, or the stub in comm_mpi_none.c */

/* ---------------------------------------------------------------------------------------------
 * Wire frames (docs/comm.md). Every message on every distml TCP connection -- coordinator store,
 * peer handshakes and data -- is a 24-byte little-endian header followed by length bytes:
 *   magic u32 "DMLF" | version u8 | kind u8 | flags u16 (0) | tag u32 | seq u32 | length u64 */
#define DML__FRAME_MAGIC 0x464c4d44u /* bytes 'D' 'M' 'L' 'F' */
#define DML__FRAME_VERSION 1
#define DML__FRAME_HDR 24
/* Control frames (everything but DATA) carry at most this many payload bytes. */
#define DML__CTRL_MAX 4096
#define DML__NONCE 32
#define DML__MAC 32

typedef enum {
  DML__F_DATA = 1,      /* payload: the message; tag and seq meaningful */
  DML__F_CHALLENGE = 2, /* acceptor -> connector: u8 auth_required, nonce[32] */
  DML__F_AUTH = 3,      /* connector -> acceptor: u8 has_token, nonce[32], mac[32] */
  DML__F_AUTH_OK = 4,   /* acceptor -> connector: mac[32] (zeros without a token) */
  DML__F_REFUSE = 5,    /* either way: reason text, then the sender closes */
  DML__F_HELLO = 6,     /* connector -> acceptor on a peer link: u32 rank, u32 world, u64 job */
  DML__F_SET = 7,       /* store: u16 key length, key, value */
  DML__F_GET = 8,       /* store: key; answered with VAL when the key exists */
  DML__F_VAL = 9,       /* store: u16 key length, key, value */
  DML__F_ABORT = 10,    /* peer link: reason text; the sender then closes */
  DML__F_CMA = 11,      /* peer link, same host: a message the receiver copies out of the sender's
                           memory (process_vm_readv); payload u64 address, u64 length; tag and
                           seq as DATA */
  DML__F_CMA_ACK = 12,  /* peer link: the oldest CMA message has been copied; no payload */
  DML__F_KIND_MAX = 12
} dml__frame_kind;

typedef struct dml__frame {
  int kind;
  uint32_t tag, seq;
  uint64_t length;
} dml__frame;

/* Encode a header into out[DML__FRAME_HDR]. */
void dml__frame_encode(uint8_t *out, int kind, uint32_t tag, uint32_t seq, uint64_t length);
/* Decode the header at buf[0..n). Returns 0 and fills *f; DML_EAGAIN when n < DML__FRAME_HDR;
 * DML_EPROTO with what was wrong in why (bad magic, version, kind, flags, or a length above
 * max_data_bytes for DATA or DML__CTRL_MAX for control frames). Pure: no allocation, no I/O. */
int dml__frame_decode(const uint8_t *buf, size_t n, uint64_t max_data_bytes, dml__frame *f,
                      char *why, size_t why_len);

/* Handshake and store payloads: decoders check the exact length and field ranges, write what
 * was wrong into why, and never allocate; pointers returned point into p. */
typedef struct dml__challenge {
  int auth_required;
  uint8_t nonce[DML__NONCE];
} dml__challenge;
typedef struct dml__auth {
  int has_token;
  uint8_t nonce[DML__NONCE];
  uint8_t mac[DML__MAC];
} dml__auth;
typedef struct dml__hello {
  uint32_t rank, world_size;
  uint64_t job;
} dml__hello;
int dml__challenge_decode(const uint8_t *p, size_t n, dml__challenge *out, char *why,
                          size_t why_len);
int dml__auth_decode(const uint8_t *p, size_t n, dml__auth *out, char *why, size_t why_len);
int dml__hello_decode(const uint8_t *p, size_t n, dml__hello *out, char *why, size_t why_len);
/* CMA: where the message lies in the sender's memory; a length above max_bytes, a null address
 * or a range that wraps is an error. */
int dml__cma_decode(const uint8_t *p, size_t n, uint64_t max_bytes, uint64_t *addr, uint64_t *len,
                    char *why, size_t why_len);
size_t dml__cma_encode(uint8_t *out, uint64_t addr, uint64_t len);
/* SET/VAL: key (1..255 bytes, printable) and value; GET: key only (value_len 0, value NULL). */
int dml__kv_decode(const uint8_t *p, size_t n, int with_value, const char **key, size_t *key_len,
                   const uint8_t **value, size_t *value_len, char *why, size_t why_len);
/* Encoders return the payload length written to out (callers size out with DML__CTRL_MAX). */
size_t dml__challenge_encode(uint8_t *out, const dml__challenge *c);
size_t dml__auth_encode(uint8_t *out, const dml__auth *a);
size_t dml__hello_encode(uint8_t *out, const dml__hello *h);
size_t dml__kv_encode(uint8_t *out, const char *key, const void *value, size_t value_len);

/* HMAC-SHA256 over label || a || b with token as the key (libsodium). */
void dml__auth_mac(uint8_t out[DML__MAC], const char *token, const char *label, const uint8_t *a,
                   const uint8_t *b);
/* Constant-time comparison of two MACs: 1 if equal. */
int dml__mac_equal(const uint8_t *a, const uint8_t *b);
/* Fill buf with n random bytes. */
void dml__random_bytes(void *buf, size_t n);

/* ---------------------------------------------------------------------------------------------
 * Sockets (net.c). All sockets are non-blocking; "deadline" is a dml_now_ns() value. */
/* Listen on host:port (port 0: any free port); *port_out gets the bound port. */
int dml__net_listen(const char *host, int port, int *fd_out, int *port_out, dml_err *err);
/* Connect to host:port, retrying refused connections until deadline. */
int dml__net_connect(const char *host, int port, uint64_t deadline_ns, int *fd_out, dml_err *err);
/* Tune a connected data socket: TCP_NODELAY, large buffers, non-blocking, close-on-exec. */
void dml__net_tune(int fd);
/* Write all n bytes / read exactly n bytes before deadline. 0, DML_ETIMEDOUT, DML_ECLOSED
 * (orderly close by the other side while reading) or DML_ESYS (errno in err). */
int dml__net_write_all(int fd, const void *buf, size_t n, uint64_t deadline_ns, dml_err *err);
int dml__net_read_all(int fd, void *buf, size_t n, uint64_t deadline_ns, dml_err *err);
/* Send one control frame; read one frame (header + payload up to DML__CTRL_MAX into payload). */
int dml__net_send_frame(int fd, int kind, const void *payload, size_t n, uint64_t deadline_ns,
                        dml_err *err);
int dml__net_recv_frame(int fd, dml__frame *f, uint8_t *payload, uint64_t deadline_ns,
                        dml_err *err);
/* "host:port" of the remote end of fd (for logs). */
void dml__net_peer_addr(int fd, char *out, size_t out_len);
/* Milliseconds left until deadline (0 if past), capped at INT_MAX. */
int dml__ms_left(uint64_t deadline_ns);

/* Connector side of the handshake (after connect): read CHALLENGE, answer AUTH, read AUTH_OK
 * (checking the acceptor's MAC when token is set). who names the other side for messages
 * ("coordinator 127.0.0.1:29500", "rank 2 (127.0.0.1:41000)"). DML_EAUTH when refused;
 * DML_EAGAIN when the acceptor's first frame is REFUSE with DML__HS_FORMED. */
#define DML__HS_FORMED "the job has formed: no more ranks join it"
int dml__hs_connect(int fd, const char *token, const char *who, uint64_t deadline_ns, dml_err *err);

/* Acceptor side as a non-blocking state machine, so that one thread can serve many clients and
 * a slow or hostile one never holds up the others. */
typedef struct dml__hs_conn {
  int fd;
  int state;            /* internal */
  char addr[64];        /* remote "host:port" */
  uint64_t deadline_ns; /* dropped when the handshake is not done by then */
  uint8_t nonce[DML__NONCE];
  uint8_t in[DML__FRAME_HDR + DML__CTRL_MAX];
  size_t in_len;
  uint8_t out[DML__FRAME_HDR + DML__CTRL_MAX + DML__FRAME_HDR + DML__CTRL_MAX];
  size_t out_len, out_off;
} dml__hs_conn;
/* Start the handshake on an accepted socket: queue CHALLENGE. */
void dml__hs_accept_start(dml__hs_conn *h, int fd, const char *token, uint64_t deadline_ns);
/* Advance on readiness (reads and writes what it can without blocking). Returns DML_EAGAIN while
 * in progress, 0 when authenticated (frames after AUTH may already sit in h->in), or an error
 * with the reason in why (the caller logs it and closes; a REFUSE has been attempted). */
int dml__hs_accept_step(dml__hs_conn *h, const char *token, char *why, size_t why_len);
/* Queue a frame on h->out and flush what can be written now; DML_EOVERFLOW if it does not fit. */
int dml__hs_queue(dml__hs_conn *h, int kind, const void *payload, size_t n);
/* Flush h->out without blocking: 0 when empty, DML_EAGAIN if bytes remain, else an error. */
int dml__hs_flush(dml__hs_conn *h);
/* Take the next complete frame from h->in (reading what the socket has): 0 with *f and payload
 * copied into payload; DML_EAGAIN when incomplete; DML_ECLOSED / DML_EPROTO / DML_ESYS. */
int dml__hs_next_frame(dml__hs_conn *h, dml__frame *f, uint8_t *payload, char *why, size_t why_len);

/* ---------------------------------------------------------------------------------------------
 * Bootstrap store (store.c): a tiny key-value store that rank 0 serves on MASTER_ADDR:MASTER_PORT
 * and every rank uses to publish its listen address and read the others' (Gloo's rendezvous
 * store). Keys are set once; get blocks until the key exists. */
typedef struct dml__store dml__store;
/* Rank 0: serve on cfg's bind address and master port, in a background thread. */
int dml__store_serve(dml__store **out, const dml__comm_cfg *cfg, dml_err *err);
/* Rank 0, once every rank has joined: later connections are refused with DML__HS_FORMED. */
void dml__store_formed(dml__store *s);
/* Other ranks: connect to the coordinator and authenticate, retrying refused connections and
 * coordinators that serve a job that has formed (a re-form racing the last job's store) until
 * the timeout. */
int dml__store_connect(dml__store **out, const dml__comm_cfg *cfg, dml_err *err);
int dml__store_set(dml__store *s, const char *key, const void *value, size_t n, dml_err *err);
/* Wait for key until deadline; *value is allocated (dml__free), NUL-terminated. */
int dml__store_get(dml__store *s, const char *key, uint64_t deadline_ns, char **value, size_t *n,
                   dml_err *err);
/* Server side only: 1 if key is set (no waiting), 0 otherwise (and always 0 on a client). */
int dml__store_has(dml__store *s, const char *key);
/* The local IP address this process uses towards the coordinator (rank 0: the bind address, or
 * the master address when binding all interfaces): what the other ranks should connect to. */
void dml__store_local_host(dml__store *s, const dml__comm_cfg *cfg, char *out, size_t out_len);
/* Stop serving / disconnect, and free. Accepts NULL. */
void dml__store_close(dml__store *s);

#endif
