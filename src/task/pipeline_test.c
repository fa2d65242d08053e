/* Tests for the input pipeline and image augmentation: 1, 2 and 3 threads give bitwise-identical
 * batches for a seed (with shuffling and random augmentation on), unordered delivery gives the
 * same batches, each epoch is a permutation, the byte budget caps the slots, callback errors
 * name the element, and the augmentation functions do what they say. CSR rows: batches equal a
 * serial gather of their indices for 1, 2, 3 threads and odd batch sizes, with empty rows; the
 * budget counts CSR bytes; a bad indptr names the row.
 * test-labels: tsan */
#include <stdatomic.h>
#include <stdint.h>

#include "distml/task.h"
#include "task/task_internal.h"
#include "testutil.h"

enum { H = 8, W = 8, PIX = H * W };

typedef struct elem {
  float img[PIX];
  uint64_t index;
} elem;

typedef struct ctx {
  dml_augment aug;
  _Atomic uint64_t fail_at; /* map fails on this element (UINT64_MAX: never); changed while
                                other batches of a failed epoch may still be mapped */
  _Atomic long maps;
} ctx;

static int map_fn(void *vctx, uint64_t epoch, uint64_t index, dml_rng *rng, void *out) {
  ctx *c = vctx;
  elem *e = out;
  (void)epoch;
  if (index == atomic_load(&c->fail_at)) return DML_EFORMAT;
  for (int p = 0; p < PIX; p++) e->img[p] = (float)((index * 31 + (uint64_t)p * 7) % 17) / 17.0f;
  e->index = index;
  atomic_fetch_add(&c->maps, 1);
  return dml_augment_image(&c->aug, rng, e->img, H, W, 1, NULL);
}

static int collate_fn(void *vctx, void *const *elems, const uint64_t *idx, size_t count,
                      void *batch) {
  (void)vctx;
  elem *b = batch;
  for (size_t i = 0; i < count; i++) {
    const elem *e = elems[i];
    if (e->index != idx[i]) return DML_ESTATE; /* the element is the one announced */
    b[i] = *e;
  }
  return 0;
}

enum { N = 1003, BS = 32 };

static void base_opts(dml_pipe_opts *o, ctx *c) {
  dml_pipe_opts_default(o);
  o->n = N;
  o->elem_bytes = sizeof(elem);
  o->batch_size = BS;
  o->batch_bytes = BS * sizeof(elem);
  o->shuffle_order = 1;
  o->shuffle_buffer = 37;
  o->seed = 1234;
  o->map = map_fn;
  o->collate = collate_fn;
  o->ctx = c;
}

static dml_pool *make_pool(unsigned n) {
  dml_pool_opts po;
  dml_pool_opts_default(&po);
  po.nthreads = n;
  dml_pool *pool = NULL;
  dml_err e = {0};
  if (dml_pool_create(&po, &pool, &e) != 0) T_FAIL("pool: %s", dml_err_msg(&e));
  return pool;
}

/* One epoch into out: batches placed by batch number (nb of them, each BS elements wide). */
static size_t run_epoch(dml_pipe *p, uint64_t epoch, elem *out, size_t max_batches,
                        size_t *counts) {
  T_OK(dml_pipe_start(p, epoch));
  size_t nb = 0;
  dml_pipe_batch b;
  int rc;
  while ((rc = dml_pipe_next(p, &b)) == 0) {
    T_ASSERT(b.number < max_batches);
    T_EQ_INT(b.epoch, epoch);
    memcpy(out + b.number * BS, b.data, b.count * sizeof(elem));
    counts[b.number] = b.count;
    for (size_t i = 0; i < b.count; i++) T_EQ_INT(b.idx[i], ((elem *)b.data)[i].index);
    nb++;
    dml_pipe_release(p, &b);
    T_ASSERT(b.data == NULL);
  }
  if (rc != DML_ECLOSED) T_FAIL("dml_pipe_next: %s (%s)", dml_strerror(rc), dml_pipe_errmsg(p));
  T_EQ_INT(dml_pipe_next(p, &b), DML_ECLOSED); /* stays closed */
  return nb;
}

static void test_deterministic(void) {
  const size_t maxb = N / BS + 1;
  elem *ref[2], *got = dml__calloc(maxb * BS, sizeof(elem));
  size_t ref_counts[2][N / BS + 1], counts[N / BS + 1];
  T_ASSERT(got != NULL);
  unsigned threads[] = {1, 2, 3, 2};
  for (size_t t = 0; t < DML__ARRAY_LEN(threads); t++) {
    dml_pool *pool = make_pool(threads[t]);
    ctx c = {{0}, UINT64_MAX, 0};
    dml_err e = {0};
    T_OK(dml_augment_parse("shift=2,flip,noise=0.1", &c.aug, &e));
    dml_pipe_opts o;
    base_opts(&o, &c);
    o.unordered = (t == 3); /* last round: 2 threads, batches handed out as they finish */
    o.map_chunk = (t == 2) ? 5 : 0;
    dml_pipe *p = NULL;
    if (dml_pipe_create(pool, &o, &p, &e) != 0) T_FAIL("create: %s", dml_err_msg(&e));
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
      memset(got, 0, maxb * BS * sizeof(elem));
      memset(counts, 0, sizeof counts);
      size_t nb = run_epoch(p, epoch, got, maxb, counts);
      T_EQ_INT(nb, maxb); /* 31 full batches and a last one of 11 */
      T_EQ_INT(counts[maxb - 1], N % BS);
      /* a permutation of 0..N-1 */
      static unsigned char seen[N];
      memset(seen, 0, sizeof seen);
      for (size_t b = 0; b < maxb; b++)
        for (size_t i = 0; i < counts[b]; i++) {
          uint64_t ix = got[b * BS + i].index;
          T_ASSERT(ix < N);
          T_EQ_INT(seen[ix], 0);
          seen[ix] = 1;
        }
      if (t == 0) {
        ref[epoch] = dml__malloc(maxb * BS * sizeof(elem));
        T_ASSERT(ref[epoch] != NULL);
        memcpy(ref[epoch], got, maxb * BS * sizeof(elem));
        memcpy(ref_counts[epoch], counts, sizeof counts);
      } else {
        T_EQ_INT(memcmp(counts, ref_counts[epoch], sizeof counts), 0);
        if (memcmp(got, ref[epoch], maxb * BS * sizeof(elem)) != 0)
          T_FAIL("%u threads%s: epoch %llu batches differ from 1 thread", threads[t],
                 o.unordered ? " (unordered)" : "", (unsigned long long)epoch);
      }
    }
    dml_pipe_stats st;
    dml_pipe_get_stats(p, &st);
    T_EQ_INT(st.batches, 2 * maxb);
    T_EQ_INT(st.elements, 2 * N);
    T_EQ_INT(atomic_load(&c.maps), 2 * N);
    T_ASSERT(st.map_busy_ns > 0 && st.batch_busy_ns > 0);
    T_EQ_INT(st.bytes_live, 0);
    T_ASSERT(st.bytes_peak > 0 && st.bytes_peak <= st.slots * (BS * sizeof(elem) * 2));
    dml_pipe_destroy(p);
    dml_pool_destroy(pool);
  }
  /* Different epochs (and the shuffling) give different orders. */
  T_ASSERT(memcmp(ref[0], ref[1], maxb * BS * sizeof(elem)) != 0);
  int identity = 1;
  for (size_t i = 0; i < N; i++)
    if (ref[0][i].index != i) identity = 0;
  T_EQ_INT(identity, 0);
  dml__free(ref[0]);
  dml__free(ref[1]);
  dml__free(got);
}

static void test_plain_order_and_budget(void) {
  dml_pool *pool = make_pool(2);
  ctx c = {{0}, UINT64_MAX, 0};
  dml_pipe_opts o;
  base_opts(&o, &c);
  o.shuffle_order = 0;
  o.shuffle_buffer = 0;
  o.drop_last = 1;
  o.prefetch = 8;
  const uint64_t slot = 2 * BS * sizeof(elem);
  o.byte_budget = slot * 2 + slot / 2; /* room for 2 slots, not 9 */
  dml_pipe *p = NULL;
  dml_err e = {0};
  T_OK(dml_pipe_create(pool, &o, &p, &e));
  T_OK(dml_pipe_start(p, 0));
  dml_pipe_batch b[3];
  T_OK(dml_pipe_next(p, &b[0]));
  T_OK(dml_pipe_next(p, &b[1]));
  /* The consumer holds both slots: asking for a third is an error, not a hang. */
  T_EQ_INT(dml_pipe_next(p, &b[2]), DML_ESTATE);
  T_CONTAINS(dml_pipe_errmsg(p), "holds all 2 batch slots");
  for (int k = 0; k < 2; k++) {
    T_EQ_INT(b[k].number, k);
    for (size_t i = 0; i < BS; i++) T_EQ_INT(b[k].idx[i], (uint64_t)k * BS + i); /* no shuffling */
  }
  dml_pipe_release(p, &b[0]);
  dml_pipe_release(p, &b[1]);
  uint64_t total = 2 * BS;
  int rc;
  while ((rc = dml_pipe_next(p, &b[0])) == 0) {
    T_EQ_INT(b[0].count, BS); /* drop_last: only full batches */
    T_EQ_INT(b[0].idx[0], total);
    total += b[0].count;
    dml_pipe_release(p, &b[0]);
  }
  T_EQ_INT(rc, DML_ECLOSED);
  T_EQ_INT(total, (N / BS) * BS);
  dml_pipe_stats st;
  dml_pipe_get_stats(p, &st);
  T_EQ_INT(st.slots, 2);
  T_ASSERT(st.bytes_peak <= o.byte_budget);
  dml_pipe_destroy(p);

  /* A budget smaller than one slot, and other bad options, are refused with a reason. */
  o.byte_budget = slot - 1;
  T_EQ_INT(dml_pipe_create(pool, &o, &p, &e), DML_EINVAL);
  T_ASSERT(p == NULL);
  T_CONTAINS(e.msg, "byte budget");
  o.byte_budget = 0;
  o.batch_size = 0;
  T_EQ_INT(dml_pipe_create(pool, &o, &p, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "batch_size");
  o.batch_size = BS;
  o.map = NULL;
  T_EQ_INT(dml_pipe_create(pool, &o, &p, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "callbacks");
  o.map = map_fn;
  o.elem_bytes = SIZE_MAX / 2;
  T_EQ_INT(dml_pipe_create(pool, &o, &p, &e), DML_EOVERFLOW);
  dml_pool_destroy(pool);
}

static void test_errors(void) {
  dml_pool *pool = make_pool(2);
  ctx c = {{0}, 77, 0};
  dml_pipe_opts o;
  base_opts(&o, &c);
  o.shuffle_order = 0;
  o.shuffle_buffer = 0;
  dml_pipe *p = NULL;
  dml_err e = {0};
  T_OK(dml_pipe_create(pool, &o, &p, &e));
  dml_pipe_batch b;
  T_EQ_INT(dml_pipe_next(p, &b), DML_ESTATE); /* not started */
  T_OK(dml_pipe_start(p, 3));
  int rc;
  int good = 0;
  while ((rc = dml_pipe_next(p, &b)) == 0) {
    good++;
    dml_pipe_release(p, &b);
  }
  T_EQ_INT(rc, DML_EFORMAT);
  T_EQ_INT(good, 77 / BS); /* the batches before the one holding element 77 */
  T_CONTAINS(dml_pipe_errmsg(p), "element 77");
  T_CONTAINS(dml_pipe_errmsg(p), "epoch 3");
  T_EQ_INT(dml_pipe_next(p, &b), DML_EFORMAT); /* sticky */
  atomic_store(&c.fail_at, UINT64_MAX);
  T_OK(dml_pipe_start(p, 4)); /* a new epoch starts clean */
  T_OK(dml_pipe_next(p, &b));
  /* Starting again while holding a batch takes it back. */
  T_OK(dml_pipe_start(p, 5));
  dml_pipe_stats st;
  dml_pipe_get_stats(p, &st);
  T_ASSERT(st.bytes_live <= st.slots * 2 * BS * sizeof(elem));
  dml_pipe_destroy(p);
  /* An empty epoch is closed at once. */
  o.n = 0;
  T_OK(dml_pipe_create(pool, &o, &p, &e));
  T_OK(dml_pipe_start(p, 0));
  T_EQ_INT(dml_pipe_next(p, &b), DML_ECLOSED);
  dml_pipe_destroy(p);
  dml_pool_destroy(pool);
}

static void test_augment(void) {
  dml_augment a;
  dml_err e = {0};
  T_OK(dml_augment_parse("none", &a, &e));
  T_EQ_INT(a.flags, 0);
  T_OK(dml_augment_parse("shift=3,flip", &a, &e));
  T_EQ_INT(a.flags, DML_AUG_SHIFT | DML_AUG_FLIP);
  T_EQ_INT(a.max_shift, 3);
  T_OK(dml_augment_parse("all", &a, &e));
  T_EQ_INT(a.flags, DML_AUG_SHIFT | DML_AUG_FLIP | DML_AUG_NOISE);
  T_EQ_INT(dml_augment_parse("flip,bogus", &a, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "'bogus'");
  T_EQ_INT(dml_augment_parse("shift=x", &a, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "shift=x");
  T_EQ_INT(dml_augment_parse("flip,,noise", &a, &e), DML_EINVAL);

  enum { AH = 5, AW = 7, AC = 2 };
  float img[AH * AW * AC], orig[AH * AW * AC];
  for (int i = 0; i < AH * AW * AC; i++) orig[i] = (float)i + 1.0f;
  dml_rng rng;
  /* flip: either unchanged or each row mirrored, pixel channels kept together; both happen. */
  int flipped = 0, kept = 0;
  a = (dml_augment){DML_AUG_FLIP, 0, 0};
  for (uint64_t s = 0; s < 64; s++) {
    memcpy(img, orig, sizeof img);
    dml_rng_seed3(&rng, 1, 2, s);
    T_OK(dml_augment_image(&a, &rng, img, AH, AW, AC, NULL));
    if (memcmp(img, orig, sizeof img) == 0) {
      kept++;
      continue;
    }
    flipped++;
    for (int y = 0; y < AH; y++)
      for (int x = 0; x < AW; x++)
        for (int k = 0; k < AC; k++)
          T_EQ_INT(img[(y * AW + x) * AC + k], orig[(y * AW + (AW - 1 - x)) * AC + k]);
  }
  T_ASSERT(flipped > 0 && kept > 0);
  /* shift: the image moves as a whole by at most max_shift, zero filled; with scratch or not. */
  a = (dml_augment){DML_AUG_SHIFT, 2, 0};
  float scratch[AH * AW * AC] = {0};
  int moved = 0;
  for (uint64_t s = 0; s < 64; s++) {
    memcpy(img, orig, sizeof img);
    dml_rng_seed3(&rng, 9, 9, s);
    T_OK(dml_augment_image(&a, &rng, img, AH, AW, AC, (s & 1) ? scratch : NULL));
    /* find the shift from where pixel value orig[(y,x)] went: the value encodes its position */
    int found = 0;
    for (int dy = -2; dy <= 2 && !found; dy++)
      for (int dx = -2; dx <= 2 && !found; dx++) {
        int ok = 1;
        for (int y = 0; y < AH && ok; y++)
          for (int x = 0; x < AW && ok; x++)
            for (int k = 0; k < AC; k++) {
              int sy = y - dy, sx = x - dx;
              float want =
                  (sy < 0 || sy >= AH || sx < 0 || sx >= AW) ? 0.0f : orig[(sy * AW + sx) * AC + k];
              if (img[(y * AW + x) * AC + k] != want) ok = 0;
            }
        if (ok) {
          found = 1;
          if (dx != 0 || dy != 0) moved++;
        }
      }
    T_ASSERT(found);
  }
  T_ASSERT(moved > 0);
  /* noise: mean about 0 and spread about noise_std, over many pixels; same stream, same image. */
  enum { NP = 20000 };
  static float big[NP], big2[NP];
  a = (dml_augment){DML_AUG_NOISE, 0, 0.5f};
  dml_rng_seed3(&rng, 5, 6, 7);
  T_OK(dml_augment_image(&a, &rng, big, 1, NP, 1, NULL));
  dml_rng_seed3(&rng, 5, 6, 7);
  T_OK(dml_augment_image(&a, &rng, big2, NP, 1, 1, NULL));
  T_EQ_INT(memcmp(big, big2, sizeof big), 0);
  double m = 0, v = 0;
  for (int i = 0; i < NP; i++) m += big[i] / NP;
  for (int i = 0; i < NP; i++) v += (big[i] - m) * (big[i] - m) / NP;
  T_NEAR(m, 0.0, 0.02);
  T_NEAR(sqrt(v), 0.5, 0.02);
}

/* ---------------------------------------------------------------------------------------------
 * CSR rows. The reference is a serial gather with dml_dataset_gather's contract (data.h: rows in
 * the given order, repeats allowed, indptr rebased to 0, labels alongside); this unit test links
 * only the task layer, so it carries its own copy of that contract rather than calling it. */

enum { SR = 1001, SDIM = 700, SFIRST = 13 }; /* rows in the matrix, columns, the shard's start */

typedef struct csr_mat {
  uint64_t indptr[SR + SFIRST + 1];
  uint32_t *indices;
  float *values;
  int32_t y[SR + SFIRST];
} csr_mat;

/* Rows of lengths 0..40, every 7th row empty, strictly increasing columns, values from the row. */
static void csr_make(csr_mat *m) {
  uint64_t nnz = 0;
  for (int r = 0; r < SR + SFIRST; r++) nnz += (r % 7 == 0) ? 0 : (uint64_t)((r * 13) % 41);
  m->indices = dml__malloc(nnz * sizeof(uint32_t) + 4);
  m->values = dml__malloc(nnz * sizeof(float) + 4);
  T_ASSERT(m->indices != NULL && m->values != NULL);
  uint64_t at = 0;
  m->indptr[0] = 0;
  for (int r = 0; r < SR + SFIRST; r++) {
    int len = (r % 7 == 0) ? 0 : (r * 13) % 41;
    uint32_t col = (uint32_t)(r % 5);
    for (int k = 0; k < len; k++) {
      col += 1 + (uint32_t)((r + k) % 16);
      m->indices[at] = col;
      m->values[at] = (float)r + (float)k / 64.0f;
      at++;
    }
    T_ASSERT(col < SDIM);
    m->indptr[r + 1] = at;
    m->y[r] = (r * 7) % 3;
  }
  T_EQ_INT(at, nnz);
}

static void csr_opts(dml_pipe_opts *o, csr_mat *m, size_t batch) {
  dml_pipe_opts_default(o);
  o->n = SR;
  o->batch_size = batch;
  o->shuffle_order = 1;
  o->shuffle_buffer = 29;
  o->seed = 99;
  o->csr.indptr = m->indptr;
  o->csr.indices = m->indices;
  o->csr.values = m->values;
  o->csr.y = m->y;
  o->csr.first_row = SFIRST;
}

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
  const unsigned char *c = data;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
  return h;
}

/* b equals the reference gather of its indices (shifted by the shard start); returns a hash of
 * its arrays. */
static uint64_t csr_check_batch(const csr_mat *m, const dml_pipe_batch *b) {
  T_ASSERT(b->indptr != NULL && b->y != NULL);
  T_EQ_INT(b->indptr[0], 0);
  uint64_t at = 0;
  for (size_t i = 0; i < b->count; i++) {
    uint64_t row = SFIRST + b->idx[i];
    uint64_t beg = m->indptr[row], len = m->indptr[row + 1] - beg;
    T_EQ_INT(b->y[i], m->y[row]);
    T_EQ_INT(b->indptr[i + 1] - b->indptr[i], len);
    T_EQ_INT(b->indptr[i], at);
    if (len > 0) {
      T_ASSERT(memcmp(b->indices + at, m->indices + beg, len * sizeof(uint32_t)) == 0);
      T_ASSERT(memcmp(b->values + at, m->values + beg, len * sizeof(float)) == 0);
    }
    at += len;
  }
  T_EQ_INT(b->nnz, at);
  /* The byte budget counts exactly the CSR arrays. */
  T_EQ_INT(b->bytes, (b->count + 1) * 8 + b->count * 4 + at * 8);
  uint64_t h = fnv(0xcbf29ce484222325ull, b->indptr, (b->count + 1) * sizeof(uint64_t));
  h = fnv(h, b->y, b->count * sizeof(int32_t));
  h = fnv(h, b->indices, at * sizeof(uint32_t));
  h = fnv(h, b->values, at * sizeof(float));
  return fnv(h, b->idx, b->count * sizeof(uint64_t));
}

static void test_csr_batches(void) {
  csr_mat *m = dml__calloc(1, sizeof *m);
  T_ASSERT(m != NULL);
  csr_make(m);
  size_t sizes[] = {1, 7, 64, SR + 5}; /* odd sizes, and one batch bigger than the epoch */
  for (size_t si = 0; si < DML__ARRAY_LEN(sizes); si++) {
    size_t bs = sizes[si], nb = (SR + bs - 1) / bs;
    uint64_t *ref = dml__calloc(2 * nb, sizeof(uint64_t));
    uint64_t *got = dml__calloc(2 * nb, sizeof(uint64_t));
    unsigned char *seen = dml__calloc(SR, 1);
    T_ASSERT(ref != NULL && got != NULL && seen != NULL);
    unsigned threads[] = {1, 2, 3};
    for (size_t t = 0; t < DML__ARRAY_LEN(threads); t++) {
      dml_pool *pool = make_pool(threads[t]);
      dml_pipe_opts o;
      csr_opts(&o, m, bs);
      o.unordered = t == 2;
      o.map_chunk = t == 1 ? 3 : 0;
      dml_pipe *p = NULL;
      dml_err e = {0};
      if (dml_pipe_create(pool, &o, &p, &e) != 0) T_FAIL("create: %s", dml_err_msg(&e));
      for (uint64_t epoch = 0; epoch < 2; epoch++) {
        T_OK(dml_pipe_start(p, epoch));
        memset(seen, 0, SR);
        dml_pipe_batch b;
        int rc;
        size_t k = 0;
        while ((rc = dml_pipe_next(p, &b)) == 0) {
          T_ASSERT(b.number < nb);
          T_EQ_INT(b.count, b.number + 1 < nb ? bs : SR - (nb - 1) * bs);
          for (size_t i = 0; i < b.count; i++) seen[b.idx[i]]++;
          got[epoch * nb + b.number] = csr_check_batch(m, &b);
          dml_pipe_release(p, &b);
          k++;
        }
        T_EQ_INT(rc, DML_ECLOSED);
        T_EQ_INT(k, nb);
        for (size_t r = 0; r < SR; r++) T_EQ_INT(seen[r], 1); /* a permutation */
      }
      dml_pipe_stats st;
      dml_pipe_get_stats(p, &st);
      T_EQ_INT(st.elements, 2 * SR);
      T_EQ_INT(st.bytes_live, 0);
      dml_pipe_destroy(p);
      dml_pool_destroy(pool);
      if (t == 0)
        memcpy(ref, got, 2 * nb * sizeof(uint64_t));
      else /* bitwise the same batches whatever the threads */
        T_ASSERT(memcmp(ref, got, 2 * nb * sizeof(uint64_t)) == 0);
    }
    if (nb > 1) T_ASSERT(memcmp(ref, ref + nb, nb * sizeof(uint64_t)) != 0); /* epochs differ */
    dml__free(ref);
    dml__free(got);
    dml__free(seen);
  }
  dml__free(m->indices);
  dml__free(m->values);
  dml__free(m);
}

static void test_csr_budget_and_errors(void) {
  csr_mat *m = dml__calloc(1, sizeof *m);
  T_ASSERT(m != NULL);
  csr_make(m);
  dml_pool *pool = make_pool(2);
  dml_pipe_opts o;
  csr_opts(&o, m, 50);
  o.shuffle_order = 0;
  o.shuffle_buffer = 0;
  o.prefetch = 6;
  /* The largest batch of 50 rows in plain order: the budget holds two of them at most. */
  uint64_t maxb = 0;
  for (size_t b0 = 0; b0 < SR; b0 += 50) {
    size_t cnt = DML__MIN((size_t)50, SR - b0);
    uint64_t nnz = m->indptr[SFIRST + b0 + cnt] - m->indptr[SFIRST + b0];
    uint64_t bytes = (cnt + 1) * 8 + cnt * 4 + nnz * 8;
    if (bytes > maxb) maxb = bytes;
  }
  o.byte_budget = 2 * maxb + maxb / 2;
  dml_pipe *p = NULL;
  dml_err e = {0};
  T_OK(dml_pipe_create(pool, &o, &p, &e));
  T_OK(dml_pipe_start(p, 0));
  dml_pipe_batch b;
  int rc;
  uint64_t next_row = 0;
  while ((rc = dml_pipe_next(p, &b)) == 0) {
    T_EQ_INT(b.idx[0], next_row);
    (void)csr_check_batch(m, &b);
    next_row += b.count;
    dml_pipe_release(p, &b);
  }
  T_EQ_INT(rc, DML_ECLOSED);
  T_EQ_INT(next_row, SR);
  dml_pipe_stats st;
  dml_pipe_get_stats(p, &st);
  T_ASSERT(st.bytes_peak <= o.byte_budget);
  T_ASSERT(st.bytes_peak >= maxb);
  /* Holding batches until the next does not fit: an error naming the budget, not a hang. */
  T_OK(dml_pipe_start(p, 1));
  dml_pipe_batch held[8];
  int nheld = 0;
  while ((rc = dml_pipe_next(p, &held[nheld])) == 0) {
    nheld++;
    T_ASSERT(nheld < 8);
  }
  T_EQ_INT(rc, DML_ESTATE);
  T_ASSERT(nheld >= 2);
  T_CONTAINS(dml_pipe_errmsg(p), "byte budget");
  for (int i = 0; i < nheld; i++) dml_pipe_release(p, &held[i]);
  T_OK(dml_pipe_next(p, &b)); /* released: it goes on */
  T_EQ_INT(b.number, (uint64_t)nheld);
  dml_pipe_release(p, &b);
  dml_pipe_destroy(p);

  /* A budget below one batch: each batch is still prepared, alone. */
  o.byte_budget = 1;
  T_OK(dml_pipe_create(pool, &o, &p, &e));
  T_OK(dml_pipe_start(p, 0));
  int nb = 0;
  while ((rc = dml_pipe_next(p, &b)) == 0) {
    nb++;
    dml_pipe_release(p, &b);
  }
  T_EQ_INT(rc, DML_ECLOSED);
  T_EQ_INT(nb, (SR + 49) / 50);
  dml_pipe_get_stats(p, &st);
  T_EQ_INT(st.bytes_peak, maxb);
  dml_pipe_destroy(p);

  /* Options that mix the modes are refused with a reason. */
  o.byte_budget = 0;
  o.map = map_fn;
  T_EQ_INT(dml_pipe_create(pool, &o, &p, &e), DML_EINVAL);
  T_ASSERT(p == NULL);
  T_CONTAINS(e.msg, "CSR mode");
  o.map = NULL;
  o.batch_size = 0;
  T_EQ_INT(dml_pipe_create(pool, &o, &p, &e), DML_EINVAL);
  T_CONTAINS(e.msg, "batch_size");
  o.batch_size = 50;

  /* A row whose indptr decreases fails its batch with the row named; earlier batches arrive. */
  uint64_t saved = m->indptr[SFIRST + 120 + 1];
  m->indptr[SFIRST + 120 + 1] = m->indptr[SFIRST + 120] - 1;
  o.prefetch = 1;
  T_OK(dml_pipe_create(pool, &o, &p, &e));
  T_OK(dml_pipe_start(p, 2));
  int good = 0;
  while ((rc = dml_pipe_next(p, &b)) == 0) {
    good++;
    dml_pipe_release(p, &b);
  }
  T_EQ_INT(rc, DML_ERANGE);
  T_EQ_INT(good, 2);
  T_CONTAINS(dml_pipe_errmsg(p), "CSR row 133 (element 120");
  T_EQ_INT(dml_pipe_next(p, &b), DML_ERANGE); /* sticky */
  dml_pipe_destroy(p);
  m->indptr[SFIRST + 120 + 1] = saved;

  /* A matrix with no entries at all (NULL arrays, as a reader may leave them): empty rows. */
  uint64_t zero[SR + SFIRST + 1];
  memset(zero, 0, sizeof zero);
  o.csr.indptr = zero;
  o.csr.indices = NULL;
  o.csr.values = NULL;
  o.csr.y = NULL;
  T_OK(dml_pipe_create(pool, &o, &p, &e));
  T_OK(dml_pipe_start(p, 0));
  nb = 0;
  while ((rc = dml_pipe_next(p, &b)) == 0) {
    T_EQ_INT(b.nnz, 0);
    T_ASSERT(b.y == NULL);
    for (size_t i = 0; i <= b.count; i++) T_EQ_INT(b.indptr[i], 0);
    nb++;
    dml_pipe_release(p, &b);
  }
  T_EQ_INT(rc, DML_ECLOSED);
  T_EQ_INT(nb, (SR + 49) / 50);
  dml_pipe_destroy(p);
  dml_pool_destroy(pool);
  dml__free(m->indices);
  dml__free(m->values);
  dml__free(m);
}

int main(void) {
  test_augment();
  test_deterministic();
  test_plain_order_and_budget();
  test_errors();
  test_csr_batches();
  test_csr_budget_and_errors();
  printf("pipeline_test: ok\n");
  return 0;
}
