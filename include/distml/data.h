/* distml data: the in-memory data set (dense or CSR rows with integer class labels), its readers
 * (IDX gzipped or plain, LIBSVM/SVMlight text, CSV), sharding by rank, seeded epoch order, batch
 * gathering, a LIBSVM writer and synthetic generators. It does not train, cache or stream from
 * the network: a data set is read whole into memory and then only read from.
 *
 * Ownership: a dml_dataset filled by a reader owns every array in it (and name) and is released
 * with dml_dataset_free. A dml_batch_buf owns the buffers that dml_dataset_gather fills; the
 * dml_batch it produces points into that buffer and stays valid until the next gather into the
 * same buffer or dml_batch_buf_free. Readers never keep a pointer to the caller's input.
 *
 * Errors: every function returns 0 or a negative DML_E... code and fills the dml_err (may be
 * NULL) with a message naming the file and the line (text; and column) or byte offset (binary). */
#ifndef DISTML_DATA_H
#define DISTML_DATA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "distml/core.h"
#include "distml/ml.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A data set in memory: n rows of dim features, either dense (x) or CSR (indptr/indices/values),
 * exactly one of the two; labels are class ids 0..num_classes-1. */
typedef struct dml_dataset {
  char *name;        /* where it came from (path or spec), for messages; owned */
  int n;             /* rows */
  int dim;           /* features per row */
  int num_classes;   /* classes (>= 2); labels are in [0, num_classes) */
  int32_t *y;        /* labels (n) */
  float *x;          /* dense rows (n, dim) row-major, or NULL when sparse */
  uint64_t *indptr;  /* CSR (n+1), indptr[0] == 0, or NULL when dense */
  uint32_t *indices; /* CSR column indices, 0-based, strictly increasing within a row */
  float *values;     /* CSR values (indptr[n]) */
} dml_dataset;

/* Releases every array and zeroes ds. Accepts NULL and a zeroed or already-freed data set. */
void dml_dataset_free(dml_dataset *ds);
/* Non-zeros of a sparse data set (indptr[n]), n*dim for a dense one. */
uint64_t dml_dataset_nnz(const dml_dataset *ds);

/* CSV header handling. */
typedef enum {
  DML_CSV_HEADER_AUTO = 0,
  DML_CSV_HEADER_YES = 1,
  DML_CSV_HEADER_NO = 2
} dml_csv_header;

/* Reader options. Initialise with dml_data_opts_init (or pass NULL for the defaults). */
typedef struct dml_data_opts {
  int csv_label_col; /* CSV: label column; negative counts from the end (-1 = last). Default 0 */
  dml_csv_header csv_header; /* CSV: header row auto-detected (default), forced present or absent */
  int64_t num_features;      /* LIBSVM: declared feature count (an index beyond it is an error);
                                0 (default) = the largest index seen */
  int num_classes;           /* expected classes (a label >= it is an error); 0 (default) = inferred
                                as max(2, largest label + 1) */
  int drop_extra_features;   /* LIBSVM with num_features set: entries with a larger index are
                                dropped (and counted in an info log line) instead of failing; for a
                                test set read against a training set's feature count. Default 0 */
} dml_data_opts;
void dml_data_opts_init(dml_data_opts *opts);

/* Loads a data set. spec is a path, "IMAGES,LABELS" (IDX pair), or "fashion-mnist",
 * "fashion-mnist:train", "fashion-mnist:test" (also "mnist[:split]"), which resolve to
 * $DISTML_DATA_DIR/<name>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] with DISTML_DATA_DIR
 * defaulting to /usr/share/datasets (Debian's dataset-fashion-mnist package). format is "auto"
 * (NULL too: IDX by magic bytes, then by extension .csv/.svm/.libsvm, then by content),
 * "idx", "libsvm" or "csv". On failure ds is left zeroed. */
int dml_dataset_load(const char *spec, const char *format, const dml_data_opts *opts,
                     dml_dataset *ds, dml_err *err);

/* IDX: images (idx3 unsigned bytes, scaled to [0,1]) and labels (idx1 unsigned bytes), each gzipped
 * (detected by magic bytes) or plain. labels_path NULL derives it from images_path by replacing
 * "images-idx3" with "labels-idx1". opts may be NULL (only num_classes is used). */
int dml_read_idx(const char *images_path, const char *labels_path, const dml_data_opts *opts,
                 dml_dataset *ds, dml_err *err);
/* The same from memory (gzipped or plain); the names are used in messages. */
int dml_parse_idx_mem(const void *images, size_t images_len, const char *images_name,
                      const void *labels, size_t labels_len, const char *labels_name,
                      const dml_data_opts *opts, dml_dataset *ds, dml_err *err);

/* LIBSVM/SVMlight text: "label idx:val idx:val ... [# comment]" per line; labels 0/1, -1/+1
 * (mapped to 0/1) or class ids; indices 1-based (stored 0-based) and strictly increasing; '#'
 * comment lines and blank lines are skipped; qid: is rejected. Gzipped files are accepted. */
int dml_read_libsvm(const char *path, const dml_data_opts *opts, dml_dataset *ds, dml_err *err);
int dml_parse_libsvm_mem(const char *text, size_t len, const char *name, const dml_data_opts *opts,
                         dml_dataset *ds, dml_err *err);

/* CSV (dense): comma-separated numbers, one row per line, the label in column opts->csv_label_col,
 * the other columns the features; optional header row; blank lines skipped. Gzip accepted. */
int dml_read_csv(const char *path, const dml_data_opts *opts, dml_dataset *ds, dml_err *err);
int dml_parse_csv_mem(const char *text, size_t len, const char *name, const dml_data_opts *opts,
                      dml_dataset *ds, dml_err *err);

/* ---------------------------------------------------------------------------------------------
 * Sharding and order. */

/* Contiguous shard [*begin, *end) of n rows for rank in [0, world): sizes differ by at most one,
 * the lower ranks get the larger ones. DML_EINVAL for n < 0, world < 1 or rank out of range. */
int dml_shard_range(int64_t n, int rank, int world, int64_t *begin, int64_t *end);
/* Fills idx[0..n) with a permutation of 0..n-1 that depends only on (seed, epoch). For a shard,
 * call with its size and add its begin. */
void dml_epoch_order(uint32_t *idx, size_t n, uint64_t seed, uint64_t epoch);

/* Keeps only rows [begin, end) of ds (a rank's shard), releasing the rest; dim, num_classes and
 * name are unchanged. On failure ds is untouched. */
int dml_dataset_keep_range(dml_dataset *ds, int begin, int end, dml_err *err);

/* Reusable buffers for gathered batches; zero-initialise, then gather into it as often as needed;
 * it grows to the largest batch seen. Free with dml_batch_buf_free. */
typedef struct dml_batch_buf {
  float *x; /* dense rows; capacity x_cap floats */
  size_t x_cap;
  uint64_t *indptr; /* capacity indptr_cap entries */
  size_t indptr_cap;
  uint32_t *indices; /* capacity nnz_cap entries, as values */
  float *values;
  size_t nnz_cap;
  int32_t *y; /* capacity y_cap entries */
  size_t y_cap;
} dml_batch_buf;
void dml_batch_buf_free(dml_batch_buf *buf);

/* Copies rows[0..count) of ds (in that order, repeats allowed) into buf as contiguous dense or CSR
 * arrays and points out at them (out->indptr[0] == 0). DML_ERANGE for a row >= ds->n, DML_ENOMEM. */
int dml_dataset_gather(const dml_dataset *ds, const uint32_t *rows, int count, dml_batch_buf *buf,
                       dml_batch *out, dml_err *err);
/* A view of rows [begin, begin+count) without copying (CSR: indptr is rebased into buf). */
int dml_dataset_slice(const dml_dataset *ds, int begin, int count, dml_batch_buf *buf,
                      dml_batch *out, dml_err *err);

/* ---------------------------------------------------------------------------------------------
 * Writers and generators (for `distml gen`). All write LIBSVM text: "label idx:val ..." with
 * 1-based indices and labels 0..K-1. The *_file variants write atomically (temp, fsync, rename). */

/* Writes ds (dense rows: non-zero entries only). name is used in messages ("-" / NULL ok). */
int dml_libsvm_write(FILE *f, const char *name, const dml_dataset *ds, dml_err *err);
int dml_libsvm_write_file(const char *path, const dml_dataset *ds, dml_err *err);

/* Sparse binary classification with a planted weight vector w ~ N(0, (3/sqrt(nnz))^2) per
 * feature: each row has nnz_per_row distinct features with value 1, drawn with a skew
 * towards low indices (id = features * u^5: frequent features, as in click logs), and
 * label ~ Bernoulli(sigmoid(w.x)).
 * Streams row by row (memory O(features)). w_out (features floats) receives w if non-NULL. */
int dml_gen_sparse_binary(FILE *f, int64_t rows, int64_t features, int nnz_per_row, uint64_t seed,
                          float *w_out, dml_err *err);
int dml_gen_sparse_binary_file(const char *path, int64_t rows, int64_t features, int nnz_per_row,
                               uint64_t seed, float *w_out, dml_err *err);

/* Dense multi-class Gaussian blobs: class centres ~ N(0, 1.5^2) per feature, rows = centre of a
 * uniformly drawn class + N(0, 1) noise; every feature written. */
int dml_gen_dense_multiclass(FILE *f, int64_t rows, int dim, int classes, uint64_t seed,
                             dml_err *err);
int dml_gen_dense_multiclass_file(const char *path, int64_t rows, int dim, int classes,
                                  uint64_t seed, dml_err *err);

#ifdef __cplusplus
}
#endif
#endif
