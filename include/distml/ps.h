/* distml ps: the parameter-server strategy's building blocks -- a server loop holding a shard of
 * the model (sparse u64 keys in an open-addressing hash map, missing keys read as zero) with a
 * server-side optimizer, and a worker client with non-blocking push/pull/pushpull. It runs over a
 * dml_comm (tagged messages) and knows nothing of data sets or training loops (src/train/train_ps.c).
 *
 * Roles: with S dedicated servers, ranks 0..S-1 are servers and ranks S..N-1 workers; colocated,
 * every rank is a worker and holds a server shard, served by the worker itself (dml_ps_serve) or
 * on a thread. Keys are hashed into 4096 virtual
 * ranges dealt to the servers round-robin.
 * Consistency: a pull sent at worker clock c is answered when every live worker has reached clock
 * c - s (BSP s = 0, SSP s, ASP no wait). A worker that dies or leaves stops counting.
 * Ownership: the caller's buffers are used without copies until the wait for the request's
 * timestamp returns: a dense request's input values may be read (large ones are sent from the
 * caller's buffer) and a pull's output buffer written (replies are filed during dml_ps_wait
 * calls, for its timestamp or any other, and large dense replies are received straight into it)
 * any time until then, so both must stay valid and untouched. A server on the same machine
 * copies them itself, out of and into the caller's memory (direct requests, docs/ps.md); a
 * worker that gives up on a request (after an error) first fails its links to the servers
 * that still owe it such a copy and waits until they have closed them (dml_comm_fence, at most
 * the communicator's timeout: a server that neither answers nor closes is logged as an error),
 * so its buffers are the caller's again once the call returns. Keys, and sparse values, are
 * encoded at the call (they may be reused at once); with dml_ps_serve, values for this process's
 * own shard are applied at the call.
 * Threads: one dml_ps per thread. Wire format: docs/ps.md. */
#ifndef DISTML_PS_H
#define DISTML_PS_H

#include <stddef.h>
#include <stdint.h>

#include "distml/comm.h"
#include "distml/core.h"
#include "distml/ml.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Staleness value for ASP (no wait). */
#define DML_PS_ASP (-1)
/* Keys one sparse request may carry at most (dml_ps_push, _pull, _pushpull, _pull_final): a larger
 * request is refused (DML_EINVAL); the caller splits it into several. */
#define DML_PS_MAX_REQUEST_KEYS (1u << 24)

typedef struct dml_ps_config {
  int num_servers;        /* S >= 1 dedicated servers (ranks 0..S-1); ignored when colocated */
  int colocated;          /* 1: every rank is a worker and holds a shard */
  int staleness;          /* 0 BSP, s > 0 SSP, DML_PS_ASP */
  int sum_only;           /* 1: the server adds pushed values (the worker optimizes) */
  dml_optim_config optim; /* server-side optimizer when !sum_only (SGD, AdaGrad, Adam, FTRL) */
  int max_in_flight;      /* worker: requests outstanding at once (0: 64, at most 65536) */
  int handler_threads;    /* request-handling threads per server process (0: 1, at most 64).
                            The keys (virtual ranges, dense chunks) are dealt over S * K
                            handlers; each has its own thread, tags, shard, clocks and watcher
                            and shares nothing with the others (no lock). Every process must pass
                            the same value. Not with checkpoints or recovery. */
  int sync_aggregate;     /* BSP with an optimizer: the pushes of one clock are summed and their
                            mean applied as one optimizer step once every live worker has passed
                            that clock (1 by default); 0: every push is its own step */
  /* Dense tensors registered up front (may be NULL/0): tensor t holds dense_sizes[t] keys at
   * dml_ps_dense_layout's offset; each is cut into parts of at most 4 MB and at most an even
   * share of all registered keys (so one large tensor spreads over every server), assigned to
   * servers greedily by bytes (largest first); a request travels as frames of at most 512 KB over
   * each run of one server's keys. Dense keys are below 2^62; those past the registered tensors
   * are dealt round-robin in runs of 64K keys. Every process must pass the same list. Not
   * owned. */
  const uint64_t *dense_sizes;
  int num_dense;
  /* Recovery (dedicated servers only; see docs/ps.md "Recovery"). */
  const char *checkpoint_dir;       /* server: write DIR/ps-server-<rank>.safetensors atomically
                                       (NULL: no checkpoints); not owned */
  double checkpoint_every_s;        /* server: at most this often, in seconds (0: not by time) */
  uint64_t checkpoint_every_clocks; /* server: whenever the slowest live worker's clock has
                                       advanced this much since the last one (0: not by clock) */
  int restore;                      /* server: load checkpoint_dir's shard before serving (a
                                       restarted server); a missing file is an error */
  int recover;                      /* 1: on a failed peer, every process re-forms the job: it
                                       leaves its communicator and joins a new one (same rank,
                                       world size, rendezvous), servers keep their shards, workers
                                       resend unacknowledged requests. The replaced communicators
                                       belong to the ps objects (dml_ps_comm). 0: errors are final */
  int max_reforms;                  /* re-forms a process may take part in (0: 8) */
  const dml_comm_opts *comm_opts;   /* options for a re-formed communicator (NULL: defaults, i.e.
                                       the environment); not owned, must outlive the ps objects */
  /* Mirrored tensors (colocated, BSP, sum_only or sync_aggregate, one handler thread, no
   * checkpoints): a registered dense tensor of B bytes with B * (W - 1) <= mirror_bytes is not
   * sharded but held whole by every worker's shard, a replica. A push of it goes to every replica
   * (one exchange, where a sharded one is a request and its reply); each replica applies a
   * clock's pushes in worker order once every live worker has pushed that clock or passed it, so
   * the replicas stay equal bit for bit, and a worker reads its own. For all-reduce-like loops:
   * every worker pushes each mirrored tensor once per clock, the tensors in the same order (a
   * pushpull waits for every other worker's push of its clock, or its next clock: a worker that
   * pushes them in another order can make two wait on each other until the timeout). A worker
   * pushes each of its chunks (8K keys) at most once per clock, and none after a final pull
   * (DML_EINVAL). A pull at clock c is answered once the pushes of clocks < c are applied (in a
   * pull-then-push loop: exactly those); a pushpull's read once those of its own clock are (with
   * an optimizer it reads c + 1 steps, where a sharded one reads c); a push at once unless its
   * clock is 16 or more past its own replica's fold. The tcp backend only (ignored under MPI,
   * where an unanswered push moves only while its receiver tests for it).
   * dml_ps_config_init: 0, never (every tensor sharded); `distml bench ps` uses 32 KB. Every
   * process must pass the same value. */
  uint64_t mirror_bytes;
  /* Summed pushpulls (BSP, sum_only; 0 by default): a dense pushpull is answered once every
   * worker that counts has sent its pushpull of the same keys at the same clock, with all of
   * their pushes added: the server adds them piece by piece in one pass and writes every worker's
   * output from the piece (BytePS's summation; colocated, the ranks serve in step, as a ring
   * all-reduce does). Its answer holds every pushpull of its clock. For data-parallel loops:
   * every worker pushpulls the same dense ranges once per clock; a worker that does not makes
   * the others wait until their timeout. A second pushpull of the same keys and clock from one
   * worker is a protocol error. Mirrored tensors are not affected. Not with recovery
   * (DML_EUNSUPPORTED: a resent pushpull would be added twice). Every process must pass the
   * same value. */
  int summed_pushpull;
} dml_ps_config;

/* Defaults: 1 server, BSP with sync aggregation, FTRL. */
void dml_ps_config_init(dml_ps_config *cfg);
/* "bsp" -> 0, "ssp:S" -> S (1..1000000), "asp" -> DML_PS_ASP. */
int dml_ps_sync_parse(const char *s, int *staleness, dml_err *err);
/* Number of workers and servers in a communicator of size n under cfg. */
int dml_ps_num_workers(const dml_ps_config *cfg, int n);
int dml_ps_num_servers(const dml_ps_config *cfg, int n);
/* The registered dense tensors of cfg in a world of n processes: offsets (cfg->num_dense, may be
 * NULL) gets the first dense key of each tensor; server_bytes (the number of servers, may be
 * NULL) the value bytes each server holds of them. Pure: what every process computes. */
int dml_ps_dense_layout(const dml_ps_config *cfg, int n, uint64_t *offsets, uint64_t *server_bytes,
                        dml_err *err);
/* Keys 0..nkeys-1 of the sparse namespace hashed to servers: server_bytes (S) gets 4 bytes per
 * key each server would hold (the load of a model whose every key is touched). */
void dml_ps_sparse_load(const dml_ps_config *cfg, int n, uint64_t nkeys, uint64_t *server_bytes);
/* This rank's role: 1 if it holds a shard / is a worker. */
int dml_ps_is_server(const dml_ps_config *cfg, int rank);
int dml_ps_is_worker(const dml_ps_config *cfg, int rank, int n);

/* Server statistics after the loop ends. */
typedef struct dml_ps_server_stats {
  uint64_t pushes, pulls, dup_pushes; /* requests served; resent pushes recognised and skipped */
  uint64_t deferred_pulls;            /* requests that waited for other workers' clocks (pulls;
                                         with mirrored tensors pushes too) */
  uint64_t bytes_in;                  /* request bytes received: frames, bodies, and the values
                                         of direct pushes (copied out of the worker) */
  uint64_t direct;                    /* direct requests (a worker on the same machine: its
                                         values copied out of and into its memory) */
  uint64_t summed;                    /* summed_pushpull: groups of pushpulls added together */
  uint64_t keys;                      /* distinct keys held at the end */
  int dropped_peers;                  /* peers dropped for malformed frames or frames that
                                         break the protocol */
  int dead_workers;                   /* workers that died without saying goodbye */
  uint64_t checkpoints;               /* checkpoints written */
  int reforms;                        /* communicators re-formed after a failure */
  int restored;                       /* 1: the shard was loaded from a checkpoint at start */
  uint64_t restored_clock;            /* slowest worker clock in that checkpoint */
  uint64_t lost_pushes;               /* restored server: push frames the workers had seen
                                         acknowledged but the checkpoint did not hold (lost) */
  uint64_t lost_clocks;               /* restored server: sum over workers of (clock at rejoin -
                                         clock in the checkpoint): iterations redone from a stale
                                         shard */
} dml_ps_server_stats;

/* ---------------------------------------------------------------------------------------------
 * Server. A server object can be driven by dml_ps_server_run (blocking loop on the calling
 * thread until every worker has left or died) or started on a thread (colocated). */
typedef struct dml_ps_server dml_ps_server;
int dml_ps_server_create(dml_ps_server **out, dml_comm *c, const dml_ps_config *cfg, dml_err *err);
/* Serves requests until every worker has sent BYE or died; a malformed frame drops its sender
 * (logged with the peer's name) and the loop goes on. */
int dml_ps_server_run(dml_ps_server *s, dml_err *err);
/* Runs dml_ps_server_run on a new thread; dml_ps_server_join waits for it and returns its status. */
int dml_ps_server_start(dml_ps_server *s, dml_err *err);
int dml_ps_server_join(dml_ps_server *s, dml_err *err);
void dml_ps_server_stats_get(const dml_ps_server *s, dml_ps_server_stats *st);
/* Waits for replies still in flight (the communicator must still exist), frees. NULL ok. */
void dml_ps_server_free(dml_ps_server *s);
/* Test hook: handle one already-received frame from src as the loop would (returns the decode or
 * apply status; a reply, if any, is sent through the communicator). */
int dml_ps_server_handle(dml_ps_server *s, int src, const void *frame, size_t bytes, dml_err *err);
/* Writes the shard atomically to path (safetensors: "ps.keys" (n, 2) holds the u64 keys as raw
 * little-endian bits, "ps.values" (n), "ps.optim.<state>" (n) each, metadata: optimizer kind and
 * step, server rank, world size, every worker's clock, last applied push timestamp and pushes
 * applied; dense chunks as "ps.dense.chunks", "ps.dense.steps" (n, 2) raw u64 bits,
 * "ps.dense.values" and "ps.dense.optim.<state>" (n, 8192); metadata "ps.format" 2). Pushes
 * still summed in an open BSP aggregate, or held for a later clock's, are not in it, and its last
 * push timestamps are those of the pushes applied (a resend of a held one is applied after a
 * restore). Call from the thread that runs the loop (or when it is not running). */
int dml_ps_server_checkpoint(dml_ps_server *s, const char *path, dml_err *err);
/* Loads a checkpoint into a fresh server (no key yet: DML_ESTATE otherwise) before it runs. The
 * file is treated as hostile: shapes, the optimizer kind, the server rank and world size, key
 * order and ownership are checked and every error names the file (DML_EFORMAT). */
int dml_ps_server_restore(dml_ps_server *s, const char *path, dml_err *err);
/* The communicator the server uses now: the one it was created with, or after a re-form
 * (cfg.recover) a new one it owns and frees in dml_ps_server_free. Use it, not the original,
 * for any message after dml_ps_server_run. */
dml_comm *dml_ps_server_comm(const dml_ps_server *s);
/* DIR/ps-server-<rank>.safetensors into out (bytes): the file checkpoint_dir holds. */
int dml_ps_checkpoint_path(const char *dir, int rank, char *out, size_t bytes);
/* Value of key on this shard (0 if absent): for tests. */
float dml_ps_server_value(const dml_ps_server *s, uint64_t key);
/* Value of a dense key on this shard (0 if absent): for tests. */
float dml_ps_server_dense_value(const dml_ps_server *s, uint64_t key);

/* ---------------------------------------------------------------------------------------------
 * Worker client. Timestamps are per worker, increasing from 1. */
typedef struct dml_ps dml_ps;
int dml_ps_create(dml_ps **out, dml_comm *c, const dml_ps_config *cfg, dml_err *err);
/* Sends BYE to every server unless dml_ps_finish did (the worker stops counting) and frees,
 * including a communicator the client owns after a re-form. Waits only for requests still in
 * flight whose values a server on this machine copies itself (direct requests, unless the
 * client has failed: those servers are fenced then, see Ownership above). NULL ok. */
void dml_ps_free(dml_ps *ps);
/* Colocated: this worker serves srv, the shard of its own process (created on the same
 * communicator with the same config, one handler thread, not started on a thread), itself: a
 * request to that shard is applied and answered in place (no frame, no copy of the caller's
 * keys and values), and while the worker waits (dml_ps_wait, dml_ps_finish) it answers the other
 * workers' requests to it, polling for DISTML_PS_SPIN_US microseconds (default: 1000 when every
 * local rank has a core, else 0) before it sleeps. No server thread, no hand-off between
 * threads. The shard is served only inside this worker's calls: a worker that computes for long
 * between waits delays the others' requests to its shard by as much. dml_ps_finish serves until
 * every worker has left; then srv is done (stats readable; free it after dml_ps_finish or
 * dml_ps_free). Call before the first request. */
int dml_ps_serve(dml_ps *ps, dml_ps_server *srv, dml_err *err);
/* keys: n strictly increasing keys. push: add/apply vals (n). pull: vals_out (n) filled at wait.
 * pushpull: apply grads then read into vals_out (may alias grads). *ts identifies the request.
 * DML_EINVAL for unsorted keys, DML_EAGAIN when max_in_flight requests are outstanding. */
int dml_ps_push(dml_ps *ps, const uint64_t *keys, const float *vals, size_t n, uint64_t *ts);
int dml_ps_pull(dml_ps *ps, const uint64_t *keys, float *vals_out, size_t n, uint64_t *ts);
int dml_ps_pushpull(dml_ps *ps, const uint64_t *keys, const float *grads, float *vals_out, size_t n,
                    uint64_t *ts);
/* Dense ranges: keys [lo, lo + n) of a separate dense namespace (a dense key and a sparse key with
 * the same number are different parameters), held by the servers in flat arrays in chunks of 8K
 * keys (the registered tensors' parts, see dense_sizes, else runs of 64K keys round-robin); no
 * keys travel on the wire. Same timestamps, wait and errors as above.
 * Under BSP sync aggregation dense pushes are summed per chunk and their mean applied once per
 * clock, like sparse ones. */
int dml_ps_push_dense(dml_ps *ps, uint64_t lo, const float *vals, size_t n, uint64_t *ts);
int dml_ps_pull_dense(dml_ps *ps, uint64_t lo, float *vals_out, size_t n, uint64_t *ts);
int dml_ps_pushpull_dense(dml_ps *ps, uint64_t lo, const float *grads, float *vals_out, size_t n,
                          uint64_t *ts);
/* The dense form of dml_ps_pull_final. */
int dml_ps_pull_dense_final(dml_ps *ps, uint64_t lo, float *vals_out, size_t n, uint64_t *ts);
/* Pull that is answered only when every other worker has left or died (the final model); with
 * mirrored tensors, or is itself in a final pull (the first one tells every server this worker
 * pushes no more: a push after it is DML_EINVAL). */
int dml_ps_pull_final(dml_ps *ps, const uint64_t *keys, float *vals_out, size_t n, uint64_t *ts);
/* Waits for request ts (bounded by the communicator's timeout: a server that stays silent is an
 * error, never a hang). The error names the server. Errors are sticky. A final pull (dedicated
 * servers) waits as long as other workers train, logging each timeout; a server that dies is
 * still an error at once. */
int dml_ps_wait(dml_ps *ps, uint64_t ts);
/* End of an iteration: the worker's clock advances. Servers are told with the worker's next
 * request (its header carries the clock) or, for those it does not reach, by a CLOCK frame sent
 * right after that request, before a wait, a final pull or dml_ps_finish: by the next call. */
int dml_ps_clock(dml_ps *ps);
uint64_t dml_ps_clock_value(const dml_ps *ps);
/* The communicator the client uses now (see dml_ps_server_comm); valid until dml_ps_free, which
 * frees it when the client owns it -- take what you need from it before. */
dml_comm *dml_ps_comm(const dml_ps *ps);
/* Re-forms this client took part in, and request frames it resent after them. */
int dml_ps_reforms(const dml_ps *ps);
uint64_t dml_ps_resent_frames(const dml_ps *ps);
/* Leaves: sends BYE to every server and waits until each server has finished serving every worker
 * (its shutdown message: dedicated servers, as long as other workers train, logging each timeout
 * of the communicator; a server that dies is an error at once), taking part in a re-form
 * meanwhile if a server fails (cfg.recover). Returns 0 or the error; dml_ps_free still frees.
 * The communicator stays usable afterwards (dml_ps_comm) until dml_ps_free. */
int dml_ps_finish(dml_ps *ps);
const char *dml_ps_errmsg(const dml_ps *ps);

#ifdef __cplusplus
}
#endif
#endif
