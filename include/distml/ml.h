/* distml ml: the batch type, models (softmax regression, MLP, sparse binary logistic regression),
 * losses, metrics, optimizers over a flat parameter buffer, and safetensors model files.
 * It computes on one process and one thread of its own (dense math through CBLAS); moving
 * gradients or parameters between processes is the job of the train, coll and ps layers.
 *
 * Ownership: every object (dml_model, dml_optim, dml_safetensors) is created by a *_create/read
 * function, owned by the caller and released with its *_free function (which accepts NULL).
 * Pointers returned by accessors (parameters, gradients, tensor tables, touched indices, metadata
 * strings) point into the object: they stay valid until the object is freed, and the parameter and
 * gradient buffers never move. A dml_batch is borrowed for the duration of one call only.
 * No function here keeps a pointer to the caller's memory after it returns.
 * Threads: objects are not thread-safe; use one model (and its optimizer) per thread, or serialise.
 * The gradient-ready callback runs on the calling thread; another thread may read and overwrite
 * (all-reduce in place) a reported gradient range while backward continues on the others. */
#ifndef DISTML_ML_H
#define DISTML_ML_H

#include <stddef.h>
#include <stdint.h>

#include "distml/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* clang-format off */
typedef struct dml_batch {
  int n;                    /* rows in the batch */
  int dim;                  /* features per row */
  const float *x;           /* dense rows (n, dim) row-major, or NULL for sparse */
  const uint64_t *indptr;   /* CSR (n+1), indptr[0] == 0, or NULL for dense */
  const uint32_t *indices;  /* CSR column indices (0-based, strictly increasing per row) */
  const float *values;      /* CSR values */
  const int32_t *y;         /* labels (n): class ids 0..K-1 (binary: 0/1) */
} dml_batch;
/* clang-format on */

/* ---------------------------------------------------------------------------------------------
 * Named tensors. A tensor is a window of floats in a flat buffer (parameters, gradients, optimizer
 * state), described by name, shape and offset. */
#define DML_TENSOR_NAME_MAX 64
#define DML_TENSOR_MAX_DIMS 4

typedef struct dml_tensor_info {
  char name[DML_TENSOR_NAME_MAX];     /* "fc1.weight", "fc1.bias", "weight", ... */
  int ndim;                           /* 1 or 2 for model tensors */
  int64_t shape[DML_TENSOR_MAX_DIMS]; /* row-major; weights are (out, in) as in PyTorch */
  size_t offset;                      /* first float of the tensor in the flat buffer */
  size_t count;                       /* floats: product of shape */
} dml_tensor_info;

/* ---------------------------------------------------------------------------------------------
 * Models.
 *
 * Layout: all parameters are ONE float allocation, tensors stored in forward order, each layer's
 * weight then bias adjacent ([fc1.weight fc1.bias fc2.weight fc2.bias ...]). The gradient buffer
 * is a second single allocation with the identical layout (grads[i] is d loss / d params[i]).
 * A "layer" is one weight+bias pair, i.e. one contiguous range of the buffer; backward finishes
 * layers last to first, so the ranges reported to the callback walk the buffer from its end back
 * to offset 0 and any run of consecutive callbacks is one contiguous range (a gradient bucket).
 *
 *  softmax: "fc.weight" (K, in), "fc.bias" (K)                                       1 layer
 *  mlp:     "fc1.weight" (h1, in), "fc1.bias" (h1), ..., "fc<L>.weight" (K, h<L-1>),
 *           "fc<L>.bias" (K); ReLU after every hidden layer, softmax output          L layers
 *  logreg:  "weight" (in), "bias" (1); binary, logit = x . weight + bias             1 layer
 *           (parameter index j < in_dim is feature j; the bias is index in_dim)
 *
 * Initialisation (seeded with dml_rng): MLP hidden layers He-uniform (limit sqrt(6/fan_in)),
 * output layers and softmax Xavier-uniform (limit sqrt(6/(fan_in+fan_out))), biases zero;
 * logreg starts at all zeros (convex model; keeps FTRL and sparse updates sparse). */
typedef enum {
  DML_MODEL_SOFTMAX = 1, /* softmax regression, dense (or CSR, densified) input, K classes */
  DML_MODEL_MLP = 2,     /* multi-layer perceptron, ReLU hidden layers, softmax output */
  DML_MODEL_LOGREG = 3   /* binary logistic regression, CSR (or dense) input */
} dml_model_kind;

#define DML_MODEL_MAX_HIDDEN 32

typedef struct dml_model_config {
  dml_model_kind kind;
  int in_dim;                       /* input features */
  int num_classes;                  /* K >= 2 (softmax, mlp); logreg: 2 (0 is taken as 2) */
  int num_hidden;                   /* mlp: hidden layers, 1..DML_MODEL_MAX_HIDDEN; else 0 */
  int hidden[DML_MODEL_MAX_HIDDEN]; /* mlp: width of each hidden layer */
  int max_batch;                    /* rows per forward_backward call; workspaces are sized for
                                       it at create time (0: 256). evaluate takes any n. */
  uint64_t seed;                    /* initialisation seed */
} dml_model_config;

/* Fills a config with defaults (max_batch 256, seed 1) for kind. */
void dml_model_config_init(dml_model_config *cfg, dml_model_kind kind, int in_dim, int num_classes);
/* Parses "256" or "256,128" into cfg->hidden / num_hidden. err names the bad token. */
int dml_model_config_set_hidden(dml_model_config *cfg, const char *list, dml_err *err);
/* "softmax", "mlp", "logreg"; NULL for an unknown kind. */
const char *dml_model_kind_name(dml_model_kind kind);
/* Inverse of dml_model_kind_name; DML_EINVAL (err lists the valid names) if unknown. */
int dml_model_kind_parse(const char *name, dml_model_kind *out, dml_err *err);

typedef struct dml_model dml_model;

/* Builds and initialises a model (cfg->seed). All memory (parameters, gradients, activation
 * workspaces for cfg->max_batch rows) is allocated here, none per step; a CSR batch for softmax/mlp
 * additionally allocates its densifying workspace once, on first use. */
int dml_model_create(dml_model **out, const dml_model_config *cfg, dml_err *err);
void dml_model_free(dml_model *m);
/* Re-initialises the parameters from seed (as create does) and zeroes the gradients. */
void dml_model_init_params(dml_model *m, uint64_t seed);

const dml_model_config *dml_model_get_config(const dml_model *m);
size_t dml_model_num_params(const dml_model *m); /* floats in the params/grads buffers */
/* The parameters a model of cfg would have (in_dim and num_classes as given; logreg: in_dim + 1),
 * without making it: for checks before an allocation. */
uint64_t dml_model_config_params(const dml_model_config *cfg);
float *dml_model_params(dml_model *m); /* (num_params), owned by m */
float *dml_model_grads(dml_model *m);  /* (num_params), same layout */
int dml_model_num_tensors(const dml_model *m);
const dml_tensor_info *dml_model_tensor(const dml_model *m, int i); /* NULL if out of range */
const dml_tensor_info *dml_model_find_tensor(const dml_model *m, const char *name);
/* Layers in forward order; layer i covers floats [offset, offset+count) of the buffers. */
int dml_model_num_layers(const dml_model *m);
int dml_model_layer_range(const dml_model *m, int layer, size_t *offset, size_t *count);

/* Called by backward as soon as the gradients in [offset, offset+count) (floats) are final, for
 * each layer, last layer first. Backward never touches that range again in this call, so the
 * callee may start reducing it in place (but must not modify the parameters until
 * forward_backward has returned). A non-zero return stops backward and forward_backward returns
 * it. May be NULL. */
typedef int (*dml_grad_ready_fn)(void *ctx, size_t offset, size_t count);

/* One training step's computation on batch (n <= max_batch rows):
 * *loss = mean loss over the rows (cross-entropy with stable log-softmax; logistic for logreg),
 * *correct = rows whose argmax (logreg: logit > 0 vs label) equals the label, and the gradient of
 * the MEAN loss in the gradient buffer. Gradients OVERWRITE the buffer by default; with
 * dml_model_set_accumulate(m, 1) they are ADDED to it (sum of per-call means; clear with
 * dml_model_zero_grads). loss/correct may be NULL. Labels outside 0..K-1, CSR indices >= in_dim,
 * a dense dim != in_dim or n > max_batch are DML_EINVAL with the row in err (checked before any
 * gradient is written).
 * logreg: the gradient buffer always holds the full gradient, but only the touched coordinates are
 * written (the rest are kept zero at sparse cost), see dml_model_touched. */
int dml_model_forward_backward(dml_model *m, const dml_batch *batch, float *loss, int *correct,
                               dml_grad_ready_fn cb, void *ctx, dml_err *err);

/* Accumulate mode (0 = overwrite, the default). */
void dml_model_set_accumulate(dml_model *m, int on);
/* Multiplies every gradient forward_backward writes by scale (default 1), at no cost: it is
 * folded into the loss gradient. A data-parallel trainer sets local rows / global rows so that
 * the all-reduced sum is the global mean without a pass over the buffer. */
void dml_model_set_grad_scale(dml_model *m, float scale);
/* Zeroes the gradient buffer (logreg: only the touched coordinates) and the touched set. */
void dml_model_zero_grads(dml_model *m);

/* logreg: the parameter indices whose gradient the last forward_backward call(s) wrote (since the
 * last overwrite step or zero_grads): the features present in the batch, ascending, then the bias
 * (index in_dim) last. Dense input touches every feature. For softmax/mlp this is NULL and 0.
 * The array belongs to m and changes at the next forward_backward. */
int dml_model_touched(const dml_model *m, const uint32_t **indices, size_t *count);

/* logreg: the parameter indices a batch will read and write, computed before forward_backward (a
 * parameter-server worker pulls exactly these): the batch's distinct features ascending, then the
 * bias (in_dim); after forward_backward on the same batch in overwrite mode dml_model_touched is
 * the same list. The array belongs to m and changes at the next call. DML_EUNSUPPORTED for
 * softmax/mlp. */
int dml_model_batch_keys(dml_model *m, const dml_batch *batch, const uint32_t **indices,
                         size_t *count, dml_err *err);

/* Forward only, for any number of rows (done in chunks of max_batch): *loss_sum = sum (not mean)
 * of the per-row losses (double), *correct as above. scores_out, if non-NULL, receives n floats:
 * P(class 1) for a two-class model (logreg, or K == 2); for K > 2 it is DML_EINVAL (use
 * dml_model_predict_proba). loss_sum/correct may be NULL. */
int dml_model_evaluate(dml_model *m, const dml_batch *batch, double *loss_sum, int *correct,
                       float *scores_out, dml_err *err);
/* Class probabilities (n, K) row-major (logreg: K = 2) for any number of rows; labels unused
 * (batch->y may be NULL). */
int dml_model_predict_proba(dml_model *m, const dml_batch *batch, float *probs_out, dml_err *err);

/* ---------------------------------------------------------------------------------------------
 * Losses (building blocks the models use; public for drivers and tests). */

/* Softmax cross-entropy over n rows of K logits, with a max-shifted log-sum-exp. Adds the sum of
 * the losses to *loss_sum and the number of rows whose argmax == y to *correct (either may be
 * NULL). If dlogits != NULL it receives (softmax - onehot) * scale, (n, K); it may equal logits
 * (in place). */
void dml_softmax_xent(const float *logits, const int32_t *y, int n, int k, float scale,
                      float *dlogits, double *loss_sum, int *correct);
/* Logistic loss on n logits z with labels 0/1: log(1 + e^z) - y z, computed stably. dz as above:
 * (sigmoid(z) - y) * scale. */
void dml_logistic_loss(const float *z, const int32_t *y, int n, float scale, float *dz,
                       double *loss_sum, int *correct);

/* ---------------------------------------------------------------------------------------------
 * Metrics. */

/* Exact ROC AUC of scores for binary labels (0/1): the Mann-Whitney statistic from one sort, ties
 * get their average rank. DML_EINVAL if a score is NaN or a label is not 0/1, DML_ERANGE if only
 * one class is present (AUC undefined). Allocates n indices for the sort. */
int dml_metric_auc(const float *scores, const int32_t *y, size_t n, double *auc, dml_err *err);
/* Mean binary log-loss of probabilities p (clipped to [1e-7, 1-1e-7]) against labels 0/1. */
double dml_metric_logloss(const float *p, const int32_t *y, size_t n);
/* correct / n, 0 when n == 0. */
double dml_metric_accuracy(uint64_t correct, uint64_t n);

/* ---------------------------------------------------------------------------------------------
 * Optimizers over a flat buffer of n floats (a model's params and grads). State (momentum,
 * Adam moments, AdaGrad sums, FTRL z and n) is one allocation of the same length per state
 * vector, exposed as named tensors for checkpoints.
 *
 * Steps: dml_optim_step() updates the whole buffer. For bucketed or sparse updates, call
 * dml_optim_begin_step() once per step (it advances the step count that Adam's bias correction
 * uses), then dml_optim_update_range() / dml_optim_update_sparse() on any disjoint pieces.
 * Weight decay wd is L2 added to the gradient (g + wd * w) for SGD, momentum, Adam and AdaGrad;
 * FTRL uses its own l1/l2. */
typedef enum {
  DML_OPT_SGD = 1,      /* w -= lr g */
  DML_OPT_MOMENTUM = 2, /* v = mu v + g; w -= lr v   (PyTorch SGD(momentum=mu) convention) */
  DML_OPT_ADAM = 3,     /* Kingma & Ba with bias correction; PyTorch Adam convention */
  DML_OPT_ADAGRAD = 4,  /* s += g^2; w -= lr g / (sqrt(s) + eps) */
  DML_OPT_FTRL = 5      /* FTRL-Proximal (McMahan et al. 2013), per-coordinate z, n. For linear
                           models: the weights are a function of (z, n), so an update overwrites
                           any initialisation (logreg starts at zero, which is consistent) */
} dml_optim_kind;

typedef struct dml_optim_config {
  dml_optim_kind kind;
  float lr;           /* learning rate; FTRL: alpha */
  float momentum;     /* momentum: mu (default 0.9) */
  float beta1, beta2; /* adam (0.9, 0.999) */
  float eps;          /* adam 1e-8, adagrad 1e-10 */
  float weight_decay; /* L2 coefficient added to the gradient (0) */
  float adagrad_init; /* initial accumulator value (0) */
  float ftrl_beta;    /* FTRL beta (1) */
  float ftrl_l1;      /* FTRL L1 (0) */
  float ftrl_l2;      /* FTRL L2 (0) */
} dml_optim_config;

/* Defaults for kind (lr: sgd 0.1, momentum 0.05, adam 1e-3, adagrad 0.05, ftrl alpha 0.5). */
void dml_optim_config_init(dml_optim_config *cfg, dml_optim_kind kind);
/* "sgd", "momentum", "adam", "adagrad", "ftrl"; NULL for an unknown kind. */
const char *dml_optim_kind_name(dml_optim_kind kind);
int dml_optim_kind_parse(const char *name, dml_optim_kind *out, dml_err *err);

typedef struct dml_optim dml_optim;

/* Optimizer for a buffer of n floats; state zeroed (step count 0). */
int dml_optim_create(dml_optim **out, const dml_optim_config *cfg, size_t n, dml_err *err);
void dml_optim_free(dml_optim *o);
const dml_optim_config *dml_optim_get_config(const dml_optim *o);
/* Changes the learning rate (schedules). */
void dml_optim_set_lr(dml_optim *o, float lr);
/* Full step: begin_step + update_range(0, n). */
void dml_optim_step(dml_optim *o, float *params, const float *grads);
void dml_optim_begin_step(dml_optim *o);
/* Updates params[offset .. offset+count) from grads at the same indices. DML_ERANGE if the range
 * is outside the buffer. */
int dml_optim_update_range(dml_optim *o, float *params, const float *grads, size_t offset,
                           size_t count);
/* Updates only params[idx[i]] for i < nidx (indices need not be sorted but must be distinct).
 * grads is the full buffer (grads[idx[i]]) or, if compact, nidx values (grads[i] goes with
 * idx[i]) as a parameter server receives them. DML_ERANGE if an index is >= n. Lazy semantics:
 * coordinates not listed do not move and their state does not decay. */
int dml_optim_update_sparse(dml_optim *o, float *params, const float *grads, const uint32_t *idx,
                            size_t nidx, int compact);
/* FTRL keeps the weights as a function of (z, n): after restoring state or to start from the
 * state (not the current weights) call this to set every params[i] from z and n. No-op for the
 * other kinds. */
void dml_optim_ftrl_weights(const dml_optim *o, float *params);

uint64_t dml_optim_step_count(const dml_optim *o);
void dml_optim_set_step_count(dml_optim *o, uint64_t step);
/* State tensors: "momentum.v"; "adam.m", "adam.v"; "adagrad.sum"; "ftrl.z", "ftrl.n" (each shape
 * (n), offset into the state allocation); SGD has none. The float pointer is writable (restore). */
int dml_optim_num_state(const dml_optim *o);
const dml_tensor_info *dml_optim_state_tensor(const dml_optim *o, int i);
float *dml_optim_state_data(dml_optim *o); /* the one state allocation (NULL for SGD) */

/* ---------------------------------------------------------------------------------------------
 * safetensors files (https://huggingface.co/docs/safetensors): 8-byte little-endian header length
 * N, N bytes of JSON header (padded with spaces to a multiple of 8), raw little-endian data.
 * Only F32 tensors are read and written. */

typedef struct dml_st_tensor {
  const char *name;
  int ndim; /* 0 (scalar) .. DML_TENSOR_MAX_DIMS */
  int64_t shape[DML_TENSOR_MAX_DIMS];
  const float *data; /* product(shape) floats */
} dml_st_tensor;

typedef struct dml_st_meta {
  const char *key;
  const char *value;
} dml_st_meta;

/* Writes the tensors (in the given order, contiguous) and string metadata atomically (temp file,
 * fsync, rename). Names must be distinct and not "__metadata__". */
int dml_safetensors_write(const char *path, const dml_st_tensor *tensors, int ntensors,
                          const dml_st_meta *meta, int nmeta, dml_err *err);

typedef struct dml_safetensors dml_safetensors;

/* Maximum JSON header length accepted by the reader (100 MiB). */
#define DML_SAFETENSORS_MAX_HEADER (100u << 20)

/* Reads and validates a whole file, treating it as hostile: header length against the file size
 * and DML_SAFETENSORS_MAX_HEADER, JSON syntax, dtype F32, shapes (no overflow), data_offsets in
 * range, non-overlapping and covering the data exactly, byte count == 4 * product(shape),
 * metadata values strings. Every failure names the file and what was wrong (DML_EFORMAT, DML_EIO,
 * DML_ENOENT, DML_EISDIR, DML_EUNSUPPORTED for other dtypes). Memory is bounded by the file size
 * (plus jansson's parse tree of the header). */
int dml_safetensors_read(const char *path, dml_safetensors **out, dml_err *err);
/* The same checks on a file already in memory (received over the network, fuzzing); name is used
 * in messages. The data is copied: the caller's buffer may be reused after the call. */
int dml_safetensors_read_mem(const void *data, size_t len, const char *name, dml_safetensors **out,
                             dml_err *err);
void dml_safetensors_free(dml_safetensors *st);
const char *dml_safetensors_path(const dml_safetensors *st);
/* Tensors in file order (by data offset). */
int dml_safetensors_count(const dml_safetensors *st);
const dml_st_tensor *dml_safetensors_get(const dml_safetensors *st, int i);
const dml_st_tensor *dml_safetensors_find(const dml_safetensors *st, const char *name);
/* Metadata value for key, NULL if absent. */
const char *dml_safetensors_meta(const dml_safetensors *st, const char *key);
int dml_safetensors_meta_count(const dml_safetensors *st);
const dml_st_meta *dml_safetensors_meta_get(const dml_safetensors *st, int i);

/* ---------------------------------------------------------------------------------------------
 * Model files: the model's tensors plus __metadata__ "distml.format" = "1", "distml.model" =
 * kind name, "distml.in_dim", "distml.num_classes", "distml.hidden" ("256,128", "" when none),
 * "distml.seed". extra tensors and metadata are written after the model's (names must not clash
 * with the model's tensors or metadata keys); dml_checkpoint_save uses this. */
int dml_model_save(const dml_model *m, const char *path, const dml_st_tensor *extra, int nextra,
                   const dml_st_meta *extra_meta, int nextra_meta, dml_err *err);
/* Loads a model file: config from the metadata, every tensor the config needs present with the
 * exact shape and finite values (other tensors are ignored). max_batch as in the config (0: 256).
 */
int dml_model_load(const char *path, int max_batch, dml_model **out, dml_err *err);
/* Same from an already-read file (so a checkpoint reader can then restore other tensors). */
int dml_model_from_safetensors(const dml_safetensors *st, int max_batch, dml_model **out,
                               dml_err *err);

/* Checkpoints: one safetensors file holding the model (as dml_model_save), the optimizer state as
 * tensors "optim.<state name>" (e.g. "optim.adam.m"), metadata "distml.optim" (kind name) and
 * "distml.optim.step", plus the caller's metadata (e.g. "train.epoch", "train.step"). */
int dml_checkpoint_save(const char *path, const dml_model *m, const dml_optim *o,
                        const dml_st_meta *meta, int nmeta, dml_err *err);
/* Restores parameters, optimizer state and step count into existing objects, after checking that
 * the file's model config (kind, in_dim, num_classes, hidden) and optimizer kind match them and
 * every tensor is present with the right shape. Nothing is modified unless everything checks out.
 * If st_out is non-NULL it receives the open file (for the caller's metadata; free it with
 * dml_safetensors_free). o may be NULL to restore only the model. */
int dml_checkpoint_restore(const char *path, dml_model *m, dml_optim *o, dml_safetensors **st_out,
                           dml_err *err);

#ifdef __cplusplus
}
#endif
#endif
