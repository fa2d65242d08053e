/* distml core: status codes, the error buffer, allocation hooks, logging, timing, a seeded
 * random generator, a progress bar and a JSON-lines metrics writer. Everything else in distml
 * builds on these; nothing here knows about models, data or the network. */
#ifndef DISTML_CORE_H
#define DISTML_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Status codes. Every library function that can fail returns int: 0 on success, a negative
 * DML_E... code on failure. One table defines the codes, their names and their messages. */
#define DML_ERRNO_MAP(XX)                             \
  XX(EINVAL, -1, "invalid argument")                  \
  XX(ENOMEM, -2, "out of memory")                     \
  XX(EIO, -3, "input/output error")                   \
  XX(ENOENT, -4, "no such file or directory")         \
  XX(EISDIR, -5, "is a directory")                    \
  XX(EFORMAT, -6, "malformed input")                  \
  XX(ERANGE, -7, "value out of range")                \
  XX(EOVERFLOW, -8, "size too large")                 \
  XX(ETIMEDOUT, -9, "timed out")                      \
  XX(EPEER, -10, "peer failed")                       \
  XX(ECLOSED, -11, "connection closed")               \
  XX(ECONNREFUSED, -12, "connection refused")         \
  XX(EAUTH, -13, "authentication failed")             \
  XX(EPROTO, -14, "protocol error")                   \
  XX(EMISMATCH, -15, "mismatch between ranks")        \
  XX(EUNSUPPORTED, -16, "not supported")              \
  XX(ECANCELED, -17, "canceled")                      \
  XX(EABORTED, -18, "aborted")                        \
  XX(EAGAIN, -19, "try again")                        \
  XX(EEXIST, -20, "already exists")                   \
  XX(ESTATE, -21, "invalid state for this operation") \
  XX(ESYS, -22, "system call failed")

typedef enum {
#define DML__XX(name, value, msg) DML_##name = value,
  DML_ERRNO_MAP(DML__XX)
#undef DML__XX
} dml_status;

/* Message for a status code ("success" for 0, "unknown error" for codes not in the table). */
const char *dml_strerror(int code);
/* Name of a status code ("EINVAL"), "OK" for 0. */
const char *dml_err_name(int code);

/* A richer message than the code alone: which file and byte, which peer, which operation.
 * Objects that can fail carry one; functions without an object take a dml_err * (may be NULL). */
typedef struct dml_err {
  int code;      /* the DML_E... code of the last failure, 0 if none */
  char msg[512]; /* human-readable, one line, no trailing newline */
} dml_err;

/* Record code and a printf-style message in err (if non-NULL); returns code. */
int dml_err_set(dml_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Clears err (code 0, empty message). */
void dml_err_clear(dml_err *err);
/* The message, or dml_strerror(code) if none was recorded. */
const char *dml_err_msg(const dml_err *err);

/* ---------------------------------------------------------------------------------------------
 * Allocation. All of distml allocates through these hooks, so an embedding program or a test can
 * replace them (e.g. to inject out-of-memory). Replace before any other distml call. */
typedef void *(*dml_malloc_fn)(size_t size);
typedef void *(*dml_realloc_fn)(void *ptr, size_t size);
typedef void *(*dml_calloc_fn)(size_t count, size_t size);
typedef void (*dml_free_fn)(void *ptr);
int dml_replace_allocator(dml_malloc_fn m, dml_realloc_fn r, dml_calloc_fn c, dml_free_fn f);

/* ---------------------------------------------------------------------------------------------
 * Logging to stderr: "[distml r3 WARN] message". Level from DISTML_LOG (error|warn|info|debug)
 * or dml_log_set_level; rank prefix from dml_log_set_rank (none while rank < 0). */
typedef enum {
  DML_LOG_ERROR = 0,
  DML_LOG_WARN = 1,
  DML_LOG_INFO = 2,
  DML_LOG_DEBUG = 3
} dml_log_level;
void dml_log_set_level(dml_log_level level);
dml_log_level dml_log_get_level(void);
void dml_log_set_rank(int rank);
void dml_log(dml_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dml_vlog(dml_log_level level, const char *fmt, va_list ap);

/* ---------------------------------------------------------------------------------------------
 * Timing: monotonic clock. */
uint64_t dml_now_ns(void);
double dml_now_s(void);

/* ---------------------------------------------------------------------------------------------
 * Random numbers: xoshiro256** seeded through splitmix64. Deterministic for a seed on every
 * platform; one generator per thread (not thread-safe). */
typedef struct dml_rng {
  uint64_t s[4];
} dml_rng;
void dml_rng_seed(dml_rng *rng, uint64_t seed);
/* Seed from several values (e.g. seed, epoch, index) so streams do not overlap. */
void dml_rng_seed3(dml_rng *rng, uint64_t a, uint64_t b, uint64_t c);
uint64_t dml_rng_next(dml_rng *rng);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t dml_rng_below(dml_rng *rng, uint64_t n);
/* Uniform float in [0, 1). */
float dml_rng_uniform(dml_rng *rng);
/* Standard normal (Box-Muller). */
float dml_rng_normal(dml_rng *rng);
/* Fisher-Yates shuffle of idx[0..n). */
void dml_rng_shuffle_u32(dml_rng *rng, uint32_t *idx, size_t n);

/* ---------------------------------------------------------------------------------------------
 * Progress: a bar redrawn in place on a terminal, or a plain line every few seconds (and at the
 * end) when the stream is not a TTY. Not thread-safe. */
typedef struct dml_progress {
  FILE *out;
  int tty; /* 1 if out is a terminal */
  char label[64];
  uint64_t total; /* units of work (e.g. samples) */
  uint64_t done;
  double start_s;
  double last_draw_s;
  double interval_s; /* time between plain lines when not a TTY */
  int active;
} dml_progress;
/* Start a bar for total units on out (stderr if NULL). */
void dml_progress_begin(dml_progress *p, FILE *out, const char *label, uint64_t total);
/* Record done units (absolute) and an optional status text ("loss 0.41"); draws if due. */
void dml_progress_update(dml_progress *p, uint64_t done, const char *status);
/* Final draw with the status text and a newline. */
void dml_progress_end(dml_progress *p, const char *status);

/* ---------------------------------------------------------------------------------------------
 * JSON lines: one object per line. Build the object with the add functions, then end it; the
 * line is written (and flushed) at end. Keys and strings are escaped. */
typedef struct dml_jsonl {
  FILE *f;
  int owned; /* 1 if opened by dml_jsonl_open and closed by dml_jsonl_close */
  char *buf; /* the line being built */
  size_t len, cap;
  int nfields;
} dml_jsonl;
/* Open path for appending ("-" is stdout). */
int dml_jsonl_open(dml_jsonl *j, const char *path, dml_err *err);
/* Write to an already-open stream (not closed by dml_jsonl_close). */
void dml_jsonl_init_stream(dml_jsonl *j, FILE *f);
void dml_jsonl_begin(dml_jsonl *j);
void dml_jsonl_add_int(dml_jsonl *j, const char *key, int64_t v);
void dml_jsonl_add_double(dml_jsonl *j, const char *key, double v); /* non-finite -> null */
void dml_jsonl_add_str(dml_jsonl *j, const char *key, const char *v);
void dml_jsonl_add_bool(dml_jsonl *j, const char *key, int v);
/* Adds key with raw, already-valid JSON text as its value. */
void dml_jsonl_add_raw(dml_jsonl *j, const char *key, const char *json);
/* Writes the line; returns 0 or DML_EIO. */
int dml_jsonl_end(dml_jsonl *j);
void dml_jsonl_close(dml_jsonl *j);

/* ---------------------------------------------------------------------------------------------
 * Parsing numbers from flags and the environment, strictly: the whole string must be a number in
 * range. Sizes take K/M/G suffixes (powers of 1024). On failure err names what was wrong. */
int dml_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out, dml_err *err);
int dml_parse_double(const char *s, double min, double max, double *out, dml_err *err);
int dml_parse_size(const char *s, uint64_t max, uint64_t *out, dml_err *err);
/* Integer from the environment variable name, or def if unset; a set but malformed value is an
 * error (DML_EINVAL, with the name in err). */
int dml_env_i64(const char *name, int64_t def, int64_t min, int64_t max, int64_t *out,
                dml_err *err);

/* ---------------------------------------------------------------------------------------------
 * Files. Atomic write: data goes to "path.tmp.<pid>", is fsynced, then renamed over path; on any
 * failure the temporary is removed and path is untouched. */
typedef struct dml_atomic_file {
  FILE *f; /* write through this */
  char *path;
  char *tmp_path;
} dml_atomic_file;
int dml_atomic_open(dml_atomic_file *af, const char *path, dml_err *err);
/* Flush, fsync, rename (and fsync the directory). Closes af in every case. */
int dml_atomic_commit(dml_atomic_file *af, dml_err *err);
/* Discard: close and remove the temporary. Safe to call on a committed or zeroed af. */
void dml_atomic_abort(dml_atomic_file *af);

/* Library version string ("0.1.0"). */
const char *dml_version(void);

#ifdef __cplusplus
}
#endif
#endif
