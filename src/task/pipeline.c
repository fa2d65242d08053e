/* The input pipeline on the pool: per epoch, a plan of element indices (source order, shuffle
 * buffer, batches) made serially up front, then batch slots filled in parallel by map tasks and
 * collated by the task that finishes a slot's last piece, up to prefetch + 1 slots within the
 * byte budget. Because map depends only on (seed, epoch, index), mapping after the shuffle
 * buffer gives exactly what mapping before it would, while holding indices instead of elements.
 * Elements are opaque (callbacks from src/train fill and gather them) or CSR rows, which it
 * copies itself into a batch laid out when the batch is scheduled. It does not read files. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "task/task_internal.h"

enum { SLOT_FREE, SLOT_BUSY, SLOT_READY, SLOT_HELD };

struct slot;

typedef struct chunk {
  dml_pipe *p;
  struct slot *s;
  size_t lo, hi; /* element positions within the batch */
} chunk;

typedef struct slot {
  int state;             /* SLOT_..., guarded by p->mu */
  uint64_t epoch, batch; /* what it holds */
  size_t count;
  unsigned char *elems; /* batch_size x elem_bytes */
  void **elem_ptrs;     /* batch_size pointers into elems */
  unsigned char *data;  /* batch_bytes (CSR mode: data_cap, grown to the largest batch) */
  size_t data_cap;
  uint64_t bytes; /* what this batch counts against the byte budget */
  uint64_t *idx;  /* batch_size */
  /* CSR mode: the batch's arrays inside data, laid out by schedule */
  uint64_t *c_indptr; /* count + 1 */
  int32_t *c_y;       /* count, or NULL */
  uint32_t *c_indices;
  float *c_values;
  chunk *chunks;
  size_t nchunks; /* used by the current batch */
  _Atomic size_t chunks_left;
  _Atomic int started;
  _Atomic int err;
  _Atomic uint64_t err_index; /* element that failed; UINT64_MAX: collate */
  uint64_t t_sched_ns, t_ready_ns;
  dml_task_group g;
} slot;

struct dml_pipe {
  dml_pool *pool;
  dml_pipe_opts o;
  size_t nslots;
  slot *slots;
  size_t chunk_elems, max_chunks;
  uint64_t slot_bytes; /* opaque mode: the fixed bytes of one slot */
  uint64_t budget;
  int csr; /* CSR mode */

  /* the epoch (touched only by the consumer thread, except where noted) */
  uint64_t epoch;
  int started;
  uint64_t *plan;    /* n element indices in batch order */
  uint64_t *buf;     /* shuffle buffer scratch */
  uint64_t nbatches; /* of this epoch */
  uint64_t next_sched, next_deliver, delivered;
  int failed;             /* sticky callback error of this epoch */
  uint64_t blocked_bytes; /* CSR: the next batch's bytes when the budget held it back, else 0 */

  pthread_mutex_t mu; /* slot states */
  pthread_cond_t cv;  /* a slot became ready */

  _Atomic uint64_t map_busy_ns, map_wait_ns, batch_busy_ns;
  uint64_t shuffle_busy_ns, batch_wait_ns, consumer_wait_ns, batches, elements;
  _Atomic uint64_t bytes_live, bytes_peak;
  char errmsg[256];
};

void dml_pipe_opts_default(dml_pipe_opts *opts) {
  memset(opts, 0, sizeof *opts);
}

static void slot_free_buffers(slot *s) {
  dml__free(s->elems);
  dml__free(s->elem_ptrs);
  dml__free(s->data);
  dml__free(s->idx);
  dml__free(s->chunks);
}

int dml_pipe_create(dml_pool *pool, const dml_pipe_opts *opts, dml_pipe **out, dml_err *err) {
  *out = NULL;
  if (pool == NULL || opts == NULL) return dml_err_set(err, DML_EINVAL, "pipe: no pool or options");
  const dml_pipe_opts *o = opts;
  int csr = o->csr.indptr != NULL;
  if (csr) {
    if (o->map != NULL || o->collate != NULL || o->elem_bytes != 0 || o->batch_bytes != 0)
      return dml_err_set(err, DML_EINVAL,
                         "pipe: CSR mode (csr.indptr set) copies the rows itself: map, collate, "
                         "elem_bytes and batch_bytes must be unset");
    if (o->batch_size == 0 || o->batch_size > ((size_t)1 << 30))
      return dml_err_set(err, DML_EINVAL, "pipe: batch_size %zu is not in 1..2^30", o->batch_size);
  } else {
    if (o->map == NULL || o->collate == NULL)
      return dml_err_set(err, DML_EINVAL, "pipe: map and collate callbacks are required");
    if (o->elem_bytes == 0 || o->batch_size == 0 || o->batch_bytes == 0)
      return dml_err_set(
          err, DML_EINVAL,
          "pipe: elem_bytes (%zu), batch_size (%zu) and batch_bytes (%zu) must be > 0",
          o->elem_bytes, o->batch_size, o->batch_bytes);
  }
  if (o->n > ((uint64_t)1 << 40))
    return dml_err_set(err, DML_EINVAL, "pipe: %llu elements per epoch is more than 2^40",
                       (unsigned long long)o->n);
  if (o->shuffle_buffer > ((size_t)1 << 30))
    return dml_err_set(err, DML_EINVAL, "pipe: shuffle buffer of %zu is more than 2^30",
                       o->shuffle_buffer);
  int ovf = 0;
  size_t elems_bytes = dml__mul_size(o->batch_size, o->elem_bytes, &ovf);
  uint64_t slot_bytes = (uint64_t)elems_bytes + o->batch_bytes;
  if (ovf || slot_bytes < elems_bytes)
    return dml_err_set(err, DML_EOVERFLOW, "pipe: batch_size x elem_bytes overflows");
  uint64_t budget = o->byte_budget ? o->byte_budget : (256ull << 20);
  if (!csr && slot_bytes > budget)
    return dml_err_set(err, DML_EINVAL,
                       "pipe: one batch slot needs %llu bytes (%zu x %zu element bytes + %zu batch "
                       "bytes), more than the byte budget of %llu",
                       (unsigned long long)slot_bytes, o->batch_size, o->elem_bytes, o->batch_bytes,
                       (unsigned long long)budget);
  size_t prefetch = o->prefetch ? o->prefetch : 2;
  if (prefetch > 1024)
    return dml_err_set(err, DML_EINVAL, "pipe: prefetch %zu is more than 1024", prefetch);
  size_t nslots = prefetch + 1;
  if (!csr && (uint64_t)nslots > budget / slot_bytes) nslots = (size_t)(budget / slot_bytes);

  dml_pipe *p = dml__calloc(1, sizeof *p);
  if (p == NULL) return dml_err_set(err, DML_ENOMEM, "pipe: out of memory");
  p->pool = pool;
  p->o = *o;
  p->nslots = nslots;
  p->slot_bytes = csr ? 0 : slot_bytes;
  p->budget = budget;
  p->csr = csr;
  unsigned threads = dml_pool_nthreads(pool);
  p->chunk_elems = o->map_chunk ? o->map_chunk : o->batch_size / (2 * (size_t)threads);
  if (p->chunk_elems == 0) p->chunk_elems = 1;
  p->max_chunks = (o->batch_size + p->chunk_elems - 1) / p->chunk_elems;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  int rc = 0;
  p->slots = dml__calloc(nslots, sizeof(slot));
  size_t nplan = (size_t)o->n;
  p->plan = dml__malloc((nplan ? nplan : 1) * sizeof(uint64_t));
  p->buf = dml__malloc((o->shuffle_buffer ? o->shuffle_buffer : 1) * sizeof(uint64_t));
  if (p->slots == NULL || p->plan == NULL || p->buf == NULL) {
    rc = dml_err_set(err, DML_ENOMEM, "pipe: out of memory for %llu plan entries",
                     (unsigned long long)o->n);
    goto fail;
  }
  for (size_t i = 0; i < nslots; i++) {
    slot *s = &p->slots[i];
    s->idx = dml__malloc(o->batch_size * sizeof(uint64_t));
    s->chunks = dml__malloc(p->max_chunks * sizeof(chunk));
    dml_task_group_init(&s->g, pool);
    if (!csr) { /* CSR slots get their batch buffer when a batch is laid out */
      s->elems = dml__malloc(elems_bytes);
      s->elem_ptrs = dml__malloc(o->batch_size * sizeof(void *));
      s->data = dml__malloc(o->batch_bytes);
      s->data_cap = o->batch_bytes;
    }
    if ((!csr && (s->elems == NULL || s->elem_ptrs == NULL || s->data == NULL)) || s->idx == NULL ||
        s->chunks == NULL) {
      rc = dml_err_set(err, DML_ENOMEM, "pipe: out of memory for batch slot %zu (%llu bytes)", i,
                       (unsigned long long)slot_bytes);
      goto fail;
    }
    if (!csr)
      for (size_t k = 0; k < o->batch_size; k++) s->elem_ptrs[k] = s->elems + k * o->elem_bytes;
  }
  *out = p;
  return 0;
fail:
  dml_pipe_destroy(p);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Tasks */

static void add_ns(_Atomic uint64_t *c, uint64_t v) {
  atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static void slot_fail(slot *s, int rc, uint64_t index) {
  int expected = 0;
  if (atomic_compare_exchange_strong(&s->err, &expected, rc)) atomic_store(&s->err_index, index);
}

/* CSR mode's map: copy rows [lo, hi) of the batch to the places schedule laid out for them
 * (row lengths were checked there). */
static void csr_copy_rows(const dml_pipe *p, slot *s, size_t lo, size_t hi) {
  const dml_pipe_csr *m = &p->o.csr;
  for (size_t i = lo; i < hi; i++) {
    uint64_t row = m->first_row + s->idx[i];
    uint64_t b = m->indptr[row], len = s->c_indptr[i + 1] - s->c_indptr[i];
    if (len > 0) {
      memcpy(s->c_indices + s->c_indptr[i], m->indices + b, (size_t)len * sizeof(uint32_t));
      memcpy(s->c_values + s->c_indptr[i], m->values + b, (size_t)len * sizeof(float));
    }
    if (s->c_y != NULL) s->c_y[i] = m->y[row];
  }
}

static int chunk_task(void *arg) {
  chunk *c = arg;
  slot *s = c->s;
  dml_pipe *p = c->p;
  uint64_t t0 = dml_now_ns();
  if (!atomic_exchange_explicit(&s->started, 1, memory_order_relaxed))
    add_ns(&p->map_wait_ns, t0 > s->t_sched_ns ? t0 - s->t_sched_ns : 0);
  if (p->csr) csr_copy_rows(p, s, c->lo, c->hi);
  for (size_t i = c->lo; !p->csr && i < c->hi; i++) {
    if (atomic_load_explicit(&s->err, memory_order_relaxed) != 0) break;
    dml_rng rng;
    dml_rng_seed3(&rng, p->o.seed, s->epoch, s->idx[i]);
    int rc = p->o.map(p->o.ctx, s->epoch, s->idx[i], &rng, s->elem_ptrs[i]);
    if (rc != 0) {
      slot_fail(s, rc, s->idx[i]);
      break;
    }
  }
  uint64_t t1 = dml_now_ns();
  add_ns(&p->map_busy_ns, t1 - t0);
  if (atomic_fetch_sub_explicit(&s->chunks_left, 1, memory_order_acq_rel) == 1) {
    /* The last piece of the batch: collate it here, on the pool. */
    if (atomic_load(&s->err) == 0 && !p->csr) {
      int rc = p->o.collate(p->o.ctx, s->elem_ptrs, s->idx, s->count, s->data);
      if (rc != 0) slot_fail(s, rc, UINT64_MAX);
      add_ns(&p->batch_busy_ns, dml_now_ns() - t1);
    }
    pthread_mutex_lock(&p->mu);
    s->state = SLOT_READY;
    s->t_ready_ns = dml_now_ns();
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
  }
  return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The consumer side */

static void bytes_add(dml_pipe *p, int64_t delta) {
  uint64_t now = atomic_fetch_add(&p->bytes_live, (uint64_t)delta) + (uint64_t)delta;
  uint64_t peak = atomic_load(&p->bytes_peak);
  while (now > peak && !atomic_compare_exchange_weak(&p->bytes_peak, &peak, now)) {
  }
}

/* err_index of a CSR batch whose buffer could not be allocated. */
#define ERR_AT_ALLOC (UINT64_MAX - 1)

/* CSR mode: the size of slot s's batch (*bytes) and, when it fits the budget next to the
 * batches in flight, its layout in s->data: indptr (count + 1 u64), labels (count i32), indices
 * (nnz u32), values (nnz f32); every array stays 4- or 8-byte aligned in that order. Returns 1
 * when laid out, 0 when the budget holds it back, and fails the slot (returning 1) for a row
 * whose indptr decreases or when out of memory. */
static int csr_layout(dml_pipe *p, slot *s, uint64_t *bytes) {
  const dml_pipe_csr *m = &p->o.csr;
  uint64_t nnz = 0;
  for (size_t i = 0; i < s->count; i++) {
    uint64_t row = m->first_row + s->idx[i];
    if (m->indptr[row + 1] < m->indptr[row]) {
      slot_fail(s, DML_ERANGE, s->idx[i]);
      *bytes = 0;
      return 1;
    }
    nnz += m->indptr[row + 1] - m->indptr[row];
  }
  uint64_t head = ((uint64_t)s->count + 1) * sizeof(uint64_t) + (uint64_t)s->count * 4;
  if (nnz > (UINT64_MAX / 2 - head) / 8 || head + nnz * 8 > (uint64_t)SIZE_MAX) {
    slot_fail(s, DML_ENOMEM, ERR_AT_ALLOC);
    *bytes = 0;
    return 1;
  }
  uint64_t need = head + nnz * 8;
  *bytes = need;
  uint64_t live = atomic_load(&p->bytes_live);
  if (live > 0 && live + need > p->budget) return 0;
  if (need > s->data_cap) {
    unsigned char *d = dml__realloc(s->data, (size_t)need);
    if (d == NULL) {
      slot_fail(s, DML_ENOMEM, ERR_AT_ALLOC);
      *bytes = 0;
      return 1;
    }
    s->data = d;
    s->data_cap = (size_t)need;
  }
  s->c_indptr = (uint64_t *)s->data;
  int32_t *y = (int32_t *)(s->c_indptr + s->count + 1);
  s->c_y = m->y != NULL ? y : NULL;
  s->c_indices = (uint32_t *)(y + s->count);
  s->c_values = (float *)(s->c_indices + nnz);
  uint64_t at = 0;
  s->c_indptr[0] = 0;
  for (size_t i = 0; i < s->count; i++) {
    uint64_t row = m->first_row + s->idx[i];
    at += m->indptr[row + 1] - m->indptr[row];
    s->c_indptr[i + 1] = at;
  }
  return 1;
}

/* Put the next batches of the plan into free slots and spawn their map tasks. CSR mode stops at
 * the first batch that does not fit the byte budget (batches are scheduled in order). */
static int schedule(dml_pipe *p) {
  p->blocked_bytes = 0;
  for (size_t i = 0; i < p->nslots && p->next_sched < p->nbatches; i++) {
    slot *s = &p->slots[i];
    pthread_mutex_lock(&p->mu);
    int is_free = s->state == SLOT_FREE;
    if (is_free) s->state = SLOT_BUSY;
    pthread_mutex_unlock(&p->mu);
    if (!is_free) continue;
    uint64_t b = p->next_sched;
    uint64_t first = b * p->o.batch_size;
    uint64_t left = p->o.n - first;
    s->epoch = p->epoch;
    s->batch = b;
    s->count = left < p->o.batch_size ? (size_t)left : p->o.batch_size;
    memcpy(s->idx, p->plan + first, s->count * sizeof(uint64_t));
    atomic_store(&s->started, 0);
    atomic_store(&s->err, 0);
    atomic_store(&s->err_index, 0);
    s->bytes = p->slot_bytes;
    if (p->csr) {
      uint64_t t0 = dml_now_ns();
      int placed = csr_layout(p, s, &s->bytes);
      p->shuffle_busy_ns += dml_now_ns() - t0;
      if (!placed) {
        p->blocked_bytes = s->bytes;
        pthread_mutex_lock(&p->mu);
        s->state = SLOT_FREE;
        pthread_mutex_unlock(&p->mu);
        break;
      }
    }
    p->next_sched++;
    s->t_sched_ns = dml_now_ns();
    bytes_add(p, (int64_t)s->bytes);
    if (atomic_load(&s->err) != 0) { /* failed while being laid out: nothing to map */
      s->nchunks = 0;
      pthread_mutex_lock(&p->mu);
      s->state = SLOT_READY;
      s->t_ready_ns = dml_now_ns();
      pthread_cond_broadcast(&p->cv);
      pthread_mutex_unlock(&p->mu);
      continue;
    }
    s->nchunks = (s->count + p->chunk_elems - 1) / p->chunk_elems;
    atomic_store(&s->chunks_left, s->nchunks);
    for (size_t k = 0; k < s->nchunks; k++) {
      chunk *c = &s->chunks[k];
      c->p = p;
      c->s = s;
      c->lo = k * p->chunk_elems;
      c->hi = DML__MIN(s->count, c->lo + p->chunk_elems);
      int rc = dml_task_spawn(&s->g, chunk_task, c);
      if (rc != 0) chunk_task(c); /* no task record to be had: do the piece here */
    }
  }
  return 0;
}

/* Wait for every slot's tasks, then mark all slots free. */
static void drain(dml_pipe *p) {
  for (size_t i = 0; i < p->nslots; i++) {
    slot *s = &p->slots[i];
    dml_task_group_wait(&s->g);
    pthread_mutex_lock(&p->mu);
    if (s->state != SLOT_FREE) bytes_add(p, -(int64_t)s->bytes);
    s->state = SLOT_FREE;
    pthread_mutex_unlock(&p->mu);
  }
}

/* Source order, shuffle buffer and batching, on indices. */
static void make_plan(dml_pipe *p) {
  uint64_t t0 = dml_now_ns();
  uint64_t n = p->o.n;
  uint64_t *src = p->plan;
  for (uint64_t i = 0; i < n; i++) src[i] = i;
  dml_rng rng;
  if (p->o.shuffle_order) {
    dml_rng_seed3(&rng, p->o.seed, p->epoch, UINT64_MAX);
    for (uint64_t i = n; i > 1; i--) {
      uint64_t j = dml_rng_below(&rng, i);
      uint64_t t = src[i - 1];
      src[i - 1] = src[j];
      src[j] = t;
    }
  }
  size_t sb = p->o.shuffle_buffer;
  if (sb > 1 && n > 0) {
    /* tf.data's shuffle: fill the buffer, then each new element replaces a random one, which is
     * emitted; at the end the buffer drains in random order. Output lands in place: position
     * out never overtakes the input position i. */
    dml_rng_seed3(&rng, p->o.seed, p->epoch, UINT64_MAX - 1);
    uint64_t *buf = p->buf;
    size_t have = 0;
    uint64_t out = 0;
    for (uint64_t i = 0; i < n; i++) {
      uint64_t x = src[i];
      if (have < sb) {
        buf[have++] = x;
      } else {
        size_t j = (size_t)dml_rng_below(&rng, sb);
        src[out++] = buf[j];
        buf[j] = x;
      }
    }
    while (have > 0) {
      size_t j = (size_t)dml_rng_below(&rng, have);
      src[out++] = buf[j];
      buf[j] = buf[--have];
    }
  }
  p->nbatches = n / p->o.batch_size;
  if (!p->o.drop_last && n % p->o.batch_size != 0) p->nbatches++;
  p->shuffle_busy_ns += dml_now_ns() - t0;
}

int dml_pipe_start(dml_pipe *p, uint64_t epoch) {
  if (p == NULL) return DML_EINVAL;
  if (dml_pool_worker_index(p->pool) >= 0) return DML_ESTATE;
  drain(p);
  p->epoch = epoch;
  p->next_sched = p->next_deliver = p->delivered = 0;
  p->failed = 0;
  p->errmsg[0] = '\0';
  make_plan(p);
  p->started = 1;
  return schedule(p);
}

int dml_pipe_next(dml_pipe *p, dml_pipe_batch *out) {
  if (p == NULL || out == NULL) return DML_EINVAL;
  memset(out, 0, sizeof *out);
  if (!p->started) {
    snprintf(p->errmsg, sizeof p->errmsg, "pipe: dml_pipe_start was not called");
    return DML_ESTATE;
  }
  if (dml_pool_worker_index(p->pool) >= 0) {
    snprintf(p->errmsg, sizeof p->errmsg, "pipe: dml_pipe_next called from a pool worker");
    return DML_ESTATE;
  }
  if (p->failed) return p->failed;
  if (p->delivered == p->nbatches) return DML_ECLOSED;
  schedule(p);
  uint64_t t0 = dml_now_ns();
  slot *s = NULL;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    int busy = 0;
    for (size_t i = 0; i < p->nslots; i++) {
      slot *c = &p->slots[i];
      if (c->state == SLOT_BUSY) busy = 1;
      if (c->state != SLOT_READY) continue;
      if (p->o.unordered ? (s == NULL || c->batch < s->batch) : c->batch == p->next_deliver) s = c;
    }
    if (s != NULL) break;
    if (!busy) {
      pthread_mutex_unlock(&p->mu);
      if (p->blocked_bytes > 0)
        snprintf(p->errmsg, sizeof p->errmsg,
                 "pipe: the next batch needs %llu bytes, which next to the %llu bytes of batches "
                 "the consumer holds exceeds the byte budget of %llu; release one first",
                 (unsigned long long)p->blocked_bytes,
                 (unsigned long long)atomic_load(&p->bytes_live), (unsigned long long)p->budget);
      else
        snprintf(p->errmsg, sizeof p->errmsg,
                 "pipe: the consumer holds all %zu batch slots; release one before asking for more",
                 p->nslots);
      return DML_ESTATE;
    }
    pthread_cond_wait(&p->cv, &p->mu);
  }
  s->state = SLOT_HELD;
  pthread_mutex_unlock(&p->mu);
  uint64_t t1 = dml_now_ns();
  p->consumer_wait_ns += t1 - t0;
  p->batch_wait_ns += t1 > s->t_ready_ns ? t1 - s->t_ready_ns : 0;
  dml_task_group_wait(&s->g); /* its tasks have returned; reap them */
  int rc = atomic_load(&s->err);
  if (rc != 0) {
    uint64_t at = atomic_load(&s->err_index);
    if (at == UINT64_MAX)
      snprintf(p->errmsg, sizeof p->errmsg, "pipe: collate failed on batch %llu of epoch %llu: %s",
               (unsigned long long)s->batch, (unsigned long long)s->epoch, dml_strerror(rc));
    else if (at == ERR_AT_ALLOC)
      snprintf(p->errmsg, sizeof p->errmsg,
               "pipe: out of memory for the CSR buffer of batch %llu of epoch %llu",
               (unsigned long long)s->batch, (unsigned long long)s->epoch);
    else if (p->csr)
      snprintf(p->errmsg, sizeof p->errmsg,
               "pipe: CSR row %llu (element %llu, batch %llu, epoch %llu) ends before it begins: "
               "indptr decreases",
               (unsigned long long)(p->o.csr.first_row + at), (unsigned long long)at,
               (unsigned long long)s->batch, (unsigned long long)s->epoch);
    else
      snprintf(p->errmsg, sizeof p->errmsg,
               "pipe: map failed on element %llu (batch %llu, epoch %llu): %s",
               (unsigned long long)at, (unsigned long long)s->batch, (unsigned long long)s->epoch,
               dml_strerror(rc));
    p->failed = rc;
    pthread_mutex_lock(&p->mu);
    s->state = SLOT_FREE;
    pthread_mutex_unlock(&p->mu);
    bytes_add(p, -(int64_t)s->bytes);
    return rc;
  }
  if (!p->o.unordered) p->next_deliver++;
  p->delivered++;
  p->batches++;
  p->elements += s->count;
  out->data = s->data;
  out->count = s->count;
  out->epoch = s->epoch;
  out->number = s->batch;
  out->idx = s->idx;
  out->bytes = (size_t)s->bytes;
  if (p->csr) {
    out->indptr = s->c_indptr;
    out->y = s->c_y;
    out->indices = s->c_indices;
    out->values = s->c_values;
    out->nnz = s->c_indptr[s->count];
  }
  return 0;
}

void dml_pipe_release(dml_pipe *p, dml_pipe_batch *b) {
  if (p == NULL || b == NULL || b->data == NULL) return;
  for (size_t i = 0; i < p->nslots; i++) {
    slot *s = &p->slots[i];
    if (s->data != b->data) continue;
    pthread_mutex_lock(&p->mu);
    int held = s->state == SLOT_HELD;
    if (held) s->state = SLOT_FREE;
    pthread_mutex_unlock(&p->mu);
    if (held) bytes_add(p, -(int64_t)s->bytes);
    break;
  }
  b->data = NULL;
  if (p->started && !p->failed) schedule(p);
}

void dml_pipe_get_stats(const dml_pipe *p, dml_pipe_stats *st) {
  dml_pipe *m = (dml_pipe *)p; /* atomics are read only */
  memset(st, 0, sizeof *st);
  st->map_busy_ns = atomic_load(&m->map_busy_ns);
  st->map_wait_ns = atomic_load(&m->map_wait_ns);
  st->batch_busy_ns = atomic_load(&m->batch_busy_ns);
  st->shuffle_busy_ns = p->shuffle_busy_ns;
  st->batch_wait_ns = p->batch_wait_ns;
  st->consumer_wait_ns = p->consumer_wait_ns;
  st->batches = p->batches;
  st->elements = p->elements;
  st->bytes_live = atomic_load(&m->bytes_live);
  st->bytes_peak = atomic_load(&m->bytes_peak);
  st->slots = p->nslots;
}

const char *dml_pipe_errmsg(const dml_pipe *p) {
  return p->errmsg;
}

void dml_pipe_destroy(dml_pipe *p) {
  if (p == NULL) return;
  if (p->slots != NULL) {
    drain(p);
    for (size_t i = 0; i < p->nslots; i++) slot_free_buffers(&p->slots[i]);
  }
  dml__free(p->slots);
  dml__free(p->plan);
  dml__free(p->buf);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
  dml__free(p);
}
