/* The mpi backend when distml was built without MPI (CMake did not find it): every entry point
 * says so. The real backend is comm_mpi.c; CMake compiles exactly one of the two. */
#include "comm/internal.h"

static int none_init(dml_comm *c, dml_err *err) {
  (void)c;
  return dml_err_set(err, DML_EUNSUPPORTED,
                     "the mpi backend is not available: distml was built without MPI "
                     "(install an MPI implementation, e.g. libopenmpi-dev, and rebuild; or use "
                     "DISTML_BACKEND=tcp)");
}

static void none_fini(dml_comm *c) {
  (void)c;
}

/* Never reached: init fails, so no communicator with this backend exists. */
static int none_isend(dml_comm *c, int peer, int tag, const void *buf, size_t bytes,
                      dml_comm_req **req) {
  (void)c, (void)peer, (void)tag, (void)buf, (void)bytes, (void)req;
  return DML_EUNSUPPORTED;
}
static int none_irecv(dml_comm *c, int peer, int tag, void *buf, size_t bytes, int alloc,
                      dml_comm_req **req) {
  (void)c, (void)peer, (void)tag, (void)buf, (void)bytes, (void)alloc, (void)req;
  return DML_EUNSUPPORTED;
}
static int none_wait(dml_comm *c, dml_comm_req *req, int timeout_ms, int keep) {
  (void)c, (void)req, (void)timeout_ms, (void)keep;
  return DML_EUNSUPPORTED;
}
static int none_test(dml_comm *c, dml_comm_req *req, int *done, int keep) {
  (void)c, (void)req, (void)keep;
  *done = 1;
  return DML_EUNSUPPORTED;
}
static int none_wait_any(dml_comm *c, dml_comm_req *const *reqs, int n, int timeout_ms) {
  (void)c, (void)reqs, (void)n, (void)timeout_ms;
  return DML_EUNSUPPORTED;
}
static int none_cancel(dml_comm *c, dml_comm_req *req, int code, int keep) {
  (void)c, (void)req, (void)keep;
  return code;
}
static void none_recv_take(dml_comm *c, dml_comm_req *req, void **buf, size_t *bytes, int *src) {
  (void)c, (void)req;
  *buf = NULL;
  *bytes = 0;
  *src = -1;
}
static void none_abort(dml_comm *c, const char *reason) {
  (void)c, (void)reason;
}
static const char *none_peer_name(const dml_comm *c, int peer) {
  (void)c, (void)peer;
  return "rank ? (mpi unavailable)";
}

const dml__comm_backend dml__comm_mpi = {
    .name = "mpi",
    .init = none_init,
    .fini = none_fini,
    .isend = none_isend,
    .irecv = none_irecv,
    .wait = none_wait,
    .test = none_test,
    .wait_any = none_wait_any,
    .cancel = none_cancel,
    .recv_take = none_recv_take,
    .abort = none_abort,
    .peer_name = none_peer_name,
};
