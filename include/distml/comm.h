/* distml communicator: rank, size and tagged point-to-point messages between the processes of
 * one job, over a backend chosen at run time ("tcp" by default, "mpi" under mpirun/srun).
 * It moves bytes only: collectives are built on it in coll.h, and it knows nothing of models.
 *
 * Ownership: the caller owns every buffer passed in; a buffer given to a non-blocking call must
 * stay valid and untouched until that request completes (wait/test reports done) or fails.
 * Errors are sticky per peer: once a peer has failed, every later call involving it returns the
 * same error, and dml_comm_errmsg() names the peer rank and host, the operation and its
 * sequence number. The library never exits on a dead peer or bad input.
 * Threads: every function may be called from several threads at once on one communicator
 * (except dml_comm_free, which must be the last call). A blocking call that passes the timeout
 * marks its peer failed (a half-moved message cannot be resumed); a non-blocking wait that runs
 * out does not. Wire format, bootstrap, authentication and variables: docs/comm.md. */
#ifndef DISTML_COMM_H
#define DISTML_COMM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "distml/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dml_comm dml_comm;
typedef struct dml_comm_req dml_comm_req;

/* For dml_comm_recv_alloc: accept a message from any rank. */
#define DML_ANY_SOURCE (-1)
/* Tags at or above this value are reserved for distml's own layers (coll, ps, task farm). */
#define DML_TAG_RESERVED 0x40000000

typedef struct dml_comm_opts {
  const char *backend;        /* "tcp" (default) or "mpi"; NULL: DISTML_BACKEND or "tcp" */
  int rank;                   /* -1: from the environment (DISTML_RANK, RANK, OMPI_COMM_WORLD_RANK,
                               PMI_RANK, SLURM_PROCID); no variables at all: rank 0 of 1 */
  int world_size;             /* -1: from the environment likewise */
  const char *master_addr;    /* coordinator host; NULL: MASTER_ADDR or 127.0.0.1 */
  int master_port;            /* coordinator port; 0: MASTER_PORT (required when world_size > 1) */
  const char *bind_addr;      /* address rank 0 listens on; NULL: DISTML_BIND_ADDR, else loopback
                               unless master_addr is not a loopback address (then master_addr) */
  const char *token;          /* shared secret for joining; NULL: DISTML_TOKEN (unset: no auth) */
  int timeout_ms;             /* limit for each blocking operation and for joining;
                               0: DISTML_TIMEOUT_MS or 60000 */
  uint64_t max_message_bytes; /* a frame longer than this is a protocol error; 0: 1 GiB */
} dml_comm_opts;

/* Defaults: every field "from the environment". */
void dml_comm_opts_default(dml_comm_opts *opts);

/* Join the job: rendezvous, authenticate, connect to every peer. Blocks up to timeout_ms.
 * opts NULL: all defaults. World size 1 opens no socket and starts no thread.
 * On failure *out is NULL and err says which peer or address and why (DML_EAUTH: refused for a
 * wrong or missing token; DML_ETIMEDOUT: a rank did not join; DML_EINVAL: bad options or
 * environment, naming the variable; DML_EUNSUPPORTED: mpi requested but not built). */
int dml_comm_init(dml_comm **out, const dml_comm_opts *opts, dml_err *err);
/* Leave the job and free everything. Accepts NULL. Outstanding requests are cancelled. */
void dml_comm_free(dml_comm *c);

int dml_comm_rank(const dml_comm *c);
int dml_comm_size(const dml_comm *c);
const char *dml_comm_backend(const dml_comm *c);
/* The operation timeout in effect (ms). */
int dml_comm_timeout_ms(const dml_comm *c);
/* "rank 3 (127.0.0.1:40213)": for error messages. */
const char *dml_comm_peer_name(const dml_comm *c, int peer);
/* The last error message on this communicator ("" if none). */
const char *dml_comm_errmsg(const dml_comm *c);

/* Blocking send of bytes to peer with tag. Returns when buf may be reused. */
int dml_comm_send(dml_comm *c, int peer, int tag, const void *buf, size_t bytes);
/* Blocking receive of exactly bytes from peer with tag; a message of another length is
 * DML_EPROTO. Messages between one pair with one tag arrive in the order they were sent. */
int dml_comm_recv(dml_comm *c, int peer, int tag, void *buf, size_t bytes);
/* Send to one peer and receive from another at once (ring steps). */
int dml_comm_sendrecv(dml_comm *c, int dst, int send_tag, const void *sendbuf, size_t send_bytes,
                      int src, int recv_tag, void *recvbuf, size_t recv_bytes);
/* Blocking receive of a message of any length up to the communicator's maximum from peer (or
 * DML_ANY_SOURCE) with tag; *buf is allocated by the library and freed by the caller with
 * dml_comm_buf_free (also for 0 bytes). *src (may be NULL) gets the sender. On failure *buf is
 * NULL. */
int dml_comm_recv_alloc(dml_comm *c, int peer, int tag, void **buf, size_t *bytes, int *src);
void dml_comm_buf_free(void *buf);

/* Non-blocking forms: progress happens in the background while the caller computes.
 * *req is owned by the library; it is released by a wait or test that reports completion or
 * failure, and must not be used after that. */
int dml_comm_isend(dml_comm *c, int peer, int tag, const void *buf, size_t bytes,
                   dml_comm_req **req);
int dml_comm_irecv(dml_comm *c, int peer, int tag, void *buf, size_t bytes, dml_comm_req **req);
/* Wait up to timeout_ms (-1: the communicator's timeout). Returns the request's status (the
 * message in dml_comm_errmsg) and releases req; DML_ETIMEDOUT leaves req valid and pending. */
int dml_comm_wait(dml_comm *c, dml_comm_req *req, int timeout_ms);
/* *done = 1 when complete (then req is released; the return value is the request's status). */
int dml_comm_test(dml_comm *c, dml_comm_req *req, int *done);
/* The non-blocking form of dml_comm_recv_alloc (peer may be DML_ANY_SOURCE): complete it with
 * dml_comm_test_alloc or dml_comm_wait_alloc (dml_comm_test and dml_comm_wait would drop the
 * message). */
int dml_comm_irecv_alloc(dml_comm *c, int peer, int tag, dml_comm_req **req);
/* *done = 1 when complete: then req is released and, on success, *buf (free with
 * dml_comm_buf_free), *bytes and *src (may be NULL) are the message's; on failure *buf is NULL. */
int dml_comm_test_alloc(dml_comm *c, dml_comm_req *req, int *done, void **buf, size_t *bytes,
                        int *src);
/* Wait up to timeout_ms (-1: the communicator's timeout) for an alloc receive; as
 * dml_comm_test_alloc once complete; DML_ETIMEDOUT leaves req valid and pending. */
int dml_comm_wait_alloc(dml_comm *c, dml_comm_req *req, int timeout_ms, void **buf, size_t *bytes,
                        int *src);
/* Wait up to timeout_ms (-1: the communicator's timeout) until at least one of the n requests
 * is complete: returns 0 and releases nothing (dml_comm_test or dml_comm_test_alloc then reports
 * which), or DML_ETIMEDOUT. For a thread that waits for whichever of several messages comes. */
int dml_comm_wait_any(dml_comm *c, dml_comm_req *const *reqs, int n, int timeout_ms);
/* Withdraw a pending request nobody will complete (a receive for a message that will not come;
 * a message already on its way is lost and, if partly moved, its peer marked failed; on the mpi
 * backend an alloc receive MPI has matched is let complete first) and release it. Returns
 * DML_ECANCELED, or the request's status if it had completed (its message dropped). */
int dml_comm_cancel(dml_comm *c, dml_comm_req *req);
/* The calling thread's waits (dml_comm_wait and the blocking calls) poll for up to us
 * microseconds before they sleep (tcp backend; 0, the default, sleeps at once). Polling saves the
 * wake-up of a sleeping thread (tens of microseconds on a virtual machine) but takes the core: set
 * it only in a thread that has its core to itself while it waits. Per thread. */
void dml_comm_set_spin_us(int us);
int dml_comm_spin_us(void);

/* Mark the communicator failed with reason: every pending and later call returns DML_EABORTED,
 * and peers see the connection close. */
void dml_comm_abort(dml_comm *c, const char *reason);

/* Bytes this process has sent through c so far (payload, not headers). */
uint64_t dml_comm_bytes_sent(const dml_comm *c);

/* Direct copies between this process's memory and a peer's (the tcp backend, where the peer
 * runs on the same machine and each can read and write the other's memory: the CMA that large
 * messages use). dml_comm_direct: 1 if available with peer both ways, else 0 (always 0 on MPI and
 * for this rank itself). dml_comm_peer_read copies len bytes at address addr in peer's memory
 * into dst; dml_comm_peer_write copies len bytes of src to address addr in peer's memory. They
 * do not block on the network. DML_EUNSUPPORTED where direct copies are not available with
 * peer; DML_EPEER when its link has failed or its process has exited; DML_EPROTO when the range
 * is not mapped (readable, or writable) in the peer (an address the peer gave is bad: nothing
 * beyond the first failing page is copied) or the copy fails otherwise. */
int dml_comm_direct(const dml_comm *c, int peer);
int dml_comm_peer_read(dml_comm *c, int peer, void *dst, uint64_t addr, size_t len);
int dml_comm_peer_write(dml_comm *c, int peer, uint64_t addr, const void *src, size_t len);
/* The n pieces of src, one after another, to address addr in peer's memory (one copy). */
int dml_comm_peer_writev(dml_comm *c, int peer, uint64_t addr, const struct iovec *src, int n);
/* Makes sure peer copies no more to or from this process's memory (a caller that gave it
 * addresses and gives up waiting for it, before it hands the buffers back): the link to peer is
 * failed here (DML_EABORTED from then on, unless it had failed already), why (NULL: none) is
 * sent to it first when the link is between frames, so that its own error says why the link
 * failed ("aborted: <why>") rather than only that it closed, and this waits at most
 * the communicator's timeout until peer has closed its side (or exited), which it does only
 * once no direct copy of it with this rank is in progress (none starts on a failed link). 0;
 * DML_ETIMEDOUT (peer stopped, say) when it did not close in time, at once on later calls.
 * Nothing to do on MPI or with oneself. */
int dml_comm_fence(dml_comm *c, int peer, const char *why);

#ifdef __cplusplus
}
#endif
#endif
