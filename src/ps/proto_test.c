/* Unit tests of the parameter server's wire frame: encode/decode round trip, and rejection of
 * short frames, bad magic/version/command, counts larger than the frame (before allocating),
 * unsorted or out-of-range keys, wrong value counts, BODY and DIRECT frames of the wrong shape;
 * and the key-to-server map's balance.
 * With an argument DIR it also writes the fuzz seed corpus there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ps/ps_internal.h"
#include "testutil.h"

static size_t make_push(unsigned char *buf, uint64_t nkeys, const uint64_t *keys,
                        const float *vals) {
  dml__ps_msg m;
  memset(&m, 0, sizeof(m));
  m.command = DML__PS_PUSH;
  m.sender = 3;
  m.timestamp = 7;
  m.clock = 2;
  m.key_lo = nkeys ? keys[0] : 0;
  m.key_hi = nkeys ? keys[nkeys - 1] : 0;
  m.nkeys = m.nvals = nkeys;
  m.value_type = nkeys ? DML__PS_VT_F32 : DML__PS_VT_NONE;
  dml__ps_encode(buf, &m, keys, vals);
  return dml__ps_frame_bytes(nkeys, nkeys);
}

static void put64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void expect_reject(const unsigned char *buf, size_t len, const char *what) {
  dml__ps_msg m;
  dml_err err;
  dml_err_clear(&err);
  int rc = dml__ps_decode(buf, len, "rank 9 (test)", &m, &err);
  if (rc != DML_EPROTO) T_FAIL("%s: decode returned %d, want DML_EPROTO", what, rc);
  T_CONTAINS(err.msg, "rank 9 (test)");
  T_ASSERT(m.keys == NULL && m.vals == NULL);
}

static void write_seed(const char *dir, const char *name, const void *buf, size_t len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  T_ASSERT(f != NULL);
  T_ASSERT(fwrite(buf, 1, len, f) == len);
  fclose(f);
}

int main(int argc, char **argv) {
  uint64_t keys[5] = {1, 5, 9, 1000, (uint64_t)1 << 40};
  float vals[5] = {0.5f, -1.0f, 2.25f, 3.0f, -0.125f};
  unsigned char buf[256];
  size_t len = make_push(buf, 5, keys, vals);
  T_EQ_INT(len, 64 + 5 * 8 + 5 * 4);
  dml__ps_msg m;
  dml_err err;
  T_OK(dml__ps_decode(buf, len, "peer", &m, &err));
  T_EQ_INT(m.command, DML__PS_PUSH);
  T_EQ_INT(m.sender, 3);
  T_EQ_INT(m.timestamp, 7);
  T_EQ_INT(m.clock, 2);
  T_EQ_INT(m.nkeys, 5);
  for (int i = 0; i < 5; i++) {
    T_ASSERT(m.keys[i] == keys[i]);
    T_ASSERT(m.vals[i] == vals[i]);
  }
  dml__ps_msg_free(&m);
  /* the view decoder: the same message, keys and values inside the (aligned) frame, until owned */
  {
    uint64_t *abuf = malloc(len + 8); /* 8-byte aligned */
    memcpy(abuf, buf, len);
    T_OK(dml__ps_decode_view(abuf, len, "peer", &m, &err));
    T_ASSERT(m.borrowed && (void *)m.keys == (unsigned char *)abuf + 64);
    T_ASSERT((void *)m.vals == (unsigned char *)abuf + 64 + 40);
    for (int i = 0; i < 5; i++) T_ASSERT(m.keys[i] == keys[i] && m.vals[i] == vals[i]);
    T_OK(dml__ps_msg_own(&m));
    memset(abuf, 0, len); /* the owned copy survives its frame */
    T_ASSERT(!m.borrowed && m.keys[4] == keys[4] && m.vals[4] == vals[4]);
    dml__ps_msg_free(&m);
    unsigned char *odd = (unsigned char *)abuf + 1; /* misaligned: decoded by copy */
    memmove(odd, buf, len);
    T_OK(dml__ps_decode_view(odd, len, "peer", &m, &err));
    T_ASSERT(!m.borrowed && m.keys[2] == keys[2]);
    dml__ps_msg_free(&m);
    free(abuf);
  }
  /* little-endian on the wire whatever the host */
  T_EQ_INT(buf[0], 0x44);
  T_EQ_INT(buf[48], 5);

  unsigned char bad[256];
  expect_reject(buf, 63, "short header");
  memcpy(bad, buf, len);
  bad[0] ^= 1;
  expect_reject(bad, len, "bad magic");
  memcpy(bad, buf, len);
  bad[4] = 9;
  expect_reject(bad, len, "bad version");
  memcpy(bad, buf, len);
  bad[6] = 77;
  expect_reject(bad, len, "unknown command");
  memcpy(bad, buf, len);
  put64(bad + 24, UINT64_MAX); /* the final clock is a final pull's, never a push's */
  expect_reject(bad, len, "push with the final clock");
  memcpy(bad, buf, len);
  put64(bad + 48, UINT64_MAX / 2); /* huge key count: must be refused before any allocation */
  expect_reject(bad, len, "huge nkeys");
  memcpy(bad, buf, len);
  put64(bad + 56, (uint64_t)1 << 62);
  expect_reject(bad, len, "huge nvals");
  expect_reject(buf, len - 1, "truncated body");
  memcpy(bad, buf, len);
  put64(bad + 64 + 8, 0); /* keys 1, 0, ...: not increasing */
  expect_reject(bad, len, "unsorted keys");
  memcpy(bad, buf, len);
  put64(bad + 64, 1); /* duplicate of the next? make keys[1] == keys[0] */
  put64(bad + 72, 1);
  expect_reject(bad, len, "duplicate keys");
  memcpy(bad, buf, len);
  put64(bad + 40, 999); /* key_hi below the last keys */
  expect_reject(bad, len, "key out of range");
  memcpy(bad, buf, len);
  bad[12] = 0; /* value type none with values */
  expect_reject(bad, len, "value type");
  /* a pull with values, a clock with keys */
  memcpy(bad, buf, len);
  bad[6] = DML__PS_PULL;
  expect_reject(bad, len, "pull with values");
  memcpy(bad, buf, len);
  bad[6] = DML__PS_CLOCK;
  expect_reject(bad, len, "clock with keys");
  /* dense frames: no keys, a range of at most DML__PS_DENSE_MAX_PART keys */
  {
    float dv[4] = {1, 2, 3, 4};
    dml__ps_msg d;
    memset(&d, 0, sizeof d);
    d.command = DML__PS_PULL;
    d.flags = DML__PS_FLAG_DENSE;
    d.timestamp = 1;
    d.key_lo = 5;
    d.key_hi = 5 + DML__PS_DENSE_MAX_PART; /* one key too many */
    unsigned char db[64 + 16];
    dml__ps_encode(db, &d, NULL, NULL);
    expect_reject(db, 64, "dense range over the largest frame");
    d.key_hi--;
    dml__ps_encode(db, &d, NULL, NULL);
    T_OK(dml__ps_decode(db, 64, "peer", &m, &err));
    dml__ps_msg_free(&m);
    d.key_lo = DML__PS_DENSE_KEY_END - 8; /* ends past the dense namespace (2^62) */
    d.key_hi = DML__PS_DENSE_KEY_END;
    dml__ps_encode(db, &d, NULL, NULL);
    expect_reject(db, 64, "dense range past 2^62");
    d.key_lo = UINT64_MAX - 8191; /* the top chunk of the key space */
    d.key_hi = UINT64_MAX;
    dml__ps_encode(db, &d, NULL, NULL);
    expect_reject(db, 64, "dense range at the top of the key space");
    d.command = DML__PS_PUSH;
    d.key_lo = DML__PS_DENSE_PART - 2;
    d.key_hi = DML__PS_DENSE_PART + 1; /* over two chunks: one server's run */
    d.nvals = 4;
    d.value_type = DML__PS_VT_F32;
    dml__ps_encode(db, &d, NULL, dv);
    T_OK(dml__ps_decode(db, sizeof db, "peer", &m, &err));
    T_ASSERT(m.key_lo == DML__PS_DENSE_PART - 2 && m.nvals == 4 && m.vals[0] == 1.0f);
    dml__ps_msg_free(&m);
    d.key_lo = 2 * DML__PS_DENSE_PART;
    d.key_hi = d.key_lo + 3;
    dml__ps_encode(db, &d, NULL, dv);
    T_OK(dml__ps_decode(db, sizeof db, "peer", &m, &err));
    T_ASSERT(m.nkeys == 0 && m.nvals == 4 && m.vals[3] == 4.0f && (m.flags & DML__PS_FLAG_DENSE));
    dml__ps_msg_free(&m);
    if (argc > 1) write_seed(argv[1], "dense", db, sizeof db);
    d.key_hi = d.key_lo + 2; /* 3 keys, 4 values */
    dml__ps_encode(db, &d, NULL, dv);
    expect_reject(db, sizeof db, "dense count mismatch");
    d.key_hi = d.key_lo + 3;
    d.flags = 0x8001;
    dml__ps_encode(db, &d, NULL, dv);
    expect_reject(db, sizeof db, "unknown flag");
    /* BODY: a dense push or reply is the 64-byte header announcing its values (which come as
     * their own message); REPLY_BODY: a dense pull asks for its reply so; anything else with
     * them is refused */
    d.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_BODY;
    dml__ps_encode(db, &d, NULL, dv);
    expect_reject(db, sizeof db, "body push longer than its header");
    unsigned char hb[64];
    dml__ps_encode(hb, &d, NULL, dv);
    T_OK(dml__ps_decode(hb, sizeof hb, "peer", &m, &err));
    T_ASSERT(m.command == DML__PS_PUSH && m.nvals == 4 && m.vals == NULL);
    dml__ps_msg_free(&m);
    if (argc > 1) write_seed(argv[1], "body_push", hb, sizeof hb);
    d.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_REPLY_BODY;
    dml__ps_encode(db, &d, NULL, dv);
    expect_reject(db, sizeof db, "reply body asked by a push");
    d.command = DML__PS_PULL;
    d.nvals = 0;
    d.value_type = DML__PS_VT_NONE;
    dml__ps_encode(hb, &d, NULL, NULL);
    T_OK(dml__ps_decode(hb, sizeof hb, "peer", &m, &err));
    T_ASSERT(m.command == DML__PS_PULL && (m.flags & DML__PS_FLAG_REPLY_BODY) && m.nvals == 0);
    dml__ps_msg_free(&m);
    d.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_BODY;
    dml__ps_encode(hb, &d, NULL, NULL);
    expect_reject(hb, sizeof hb, "body on a pull");
    d.command = DML__PS_REPLY;
    d.nvals = 4;
    d.value_type = DML__PS_VT_F32;
    dml__ps_encode(hb, &d, NULL, NULL);
    T_OK(dml__ps_decode(hb, sizeof hb, "peer", &m, &err));
    T_ASSERT(m.command == DML__PS_REPLY && m.nvals == 4 && m.vals == NULL);
    dml__ps_msg_free(&m);
    if (argc > 1) write_seed(argv[1], "body_reply", hb, sizeof hb);
    d.nvals = 3; /* announces fewer values than its range holds */
    dml__ps_encode(hb, &d, NULL, NULL);
    expect_reject(hb, sizeof hb, "body reply count");
    d.nvals = 4;
    d.value_type = DML__PS_VT_NONE;
    dml__ps_encode(hb, &d, NULL, NULL);
    expect_reject(hb, sizeof hb, "body reply without a value type");
    d.value_type = DML__PS_VT_F32;
    d.flags = DML__PS_FLAG_BODY; /* not dense */
    dml__ps_encode(hb, &d, NULL, NULL);
    expect_reject(hb, sizeof hb, "sparse body");
    d.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_BODY;
    unsigned char lb[64 + 16]; /* a body reply carrying values in the frame as well */
    memset(lb, 0, sizeof lb);
    dml__ps_encode(lb, &d, NULL, NULL);
    expect_reject(lb, sizeof lb, "body reply longer than its header");

    /* DIRECT: a dense request of the header and the addresses of its values (pushes) and of its
     * output (pulls), with the body flags of what it does; a reply of the header alone */
    unsigned char xb[DML__PS_DIRECT_BYTES];
    static const struct {
      uint32_t command, flags;
      uint64_t vals_addr, out_addr;
    } ok[3] = {
        {DML__PS_PUSH, DML__PS_FLAG_BODY, 0x7f0000001000ull, 0},
        {DML__PS_PULL, DML__PS_FLAG_REPLY_BODY, 0, 0x7f0000002000ull},
        {DML__PS_PUSHPULL, DML__PS_FLAG_BODY | DML__PS_FLAG_REPLY_BODY, 0x7f0000001000ull,
         0x7f0000002000ull},
    };
    for (int k = 0; k < 3; k++) {
      dml__ps_msg x;
      memset(&x, 0, sizeof x);
      x.command = ok[k].command;
      x.sender = 2;
      x.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_DIRECT | ok[k].flags;
      x.timestamp = 9;
      x.key_lo = 3 * DML__PS_DENSE_PART;
      x.key_hi = x.key_lo + 99;
      x.nvals = ok[k].vals_addr ? 100 : 0;
      x.value_type = x.nvals ? DML__PS_VT_F32 : DML__PS_VT_NONE;
      x.vals_addr = ok[k].vals_addr;
      x.out_addr = ok[k].out_addr;
      dml__ps_encode(xb, &x, NULL, NULL);
      T_OK(dml__ps_decode(xb, sizeof xb, "peer", &m, &err));
      T_ASSERT(m.command == x.command && m.flags == x.flags && m.nvals == x.nvals &&
               m.vals == NULL && m.vals_addr == x.vals_addr && m.out_addr == x.out_addr);
      dml__ps_msg_free(&m);
      if (argc > 1 && k == 2) write_seed(argv[1], "direct_pushpull", xb, sizeof xb);
      expect_reject(xb, 64, "direct request without its addresses");
      unsigned char yb[DML__PS_DIRECT_BYTES + 4];
      memcpy(yb, xb, sizeof xb);
      memset(yb + sizeof xb, 0, 4);
      expect_reject(yb, sizeof yb, "direct request longer than header and addresses");
      x.flags &= ~DML__PS_FLAG_DENSE;
      dml__ps_encode(xb, &x, NULL, NULL);
      expect_reject(xb, sizeof xb, "sparse direct request");
      x.flags |= DML__PS_FLAG_DENSE;
      x.flags ^= ok[k].flags; /* without the body flags of what it does */
      dml__ps_encode(xb, &x, NULL, NULL);
      expect_reject(xb, sizeof xb, "direct request without its body flags");
      x.flags ^= ok[k].flags;
      x.vals_addr = x.vals_addr ? 0 : 64; /* an address missing, or one it has no use for */
      dml__ps_encode(xb, &x, NULL, NULL);
      expect_reject(xb, sizeof xb, "direct request with the wrong addresses");
      x.vals_addr = ok[k].vals_addr;
      x.out_addr = x.out_addr ? 0 : 64;
      dml__ps_encode(xb, &x, NULL, NULL);
      expect_reject(xb, sizeof xb, "direct request with the wrong output address");
      x.out_addr = ok[k].out_addr ? UINT64_MAX - 200 : 0; /* 100 values run past 2^64 */
      x.vals_addr = ok[k].vals_addr ? UINT64_MAX - 200 : 0;
      dml__ps_encode(xb, &x, NULL, NULL);
      expect_reject(xb, sizeof xb, "direct addresses that wrap");
      x.out_addr = ok[k].out_addr ? UINT64_MAX - 400 : 0; /* the values end at 2^64 - 1 */
      x.vals_addr = ok[k].vals_addr ? UINT64_MAX - 400 : 0;
      dml__ps_encode(xb, &x, NULL, NULL);
      T_OK(dml__ps_decode(xb, sizeof xb, "peer", &m, &err));
      dml__ps_msg_free(&m);
    }
    dml__ps_msg x;
    memset(&x, 0, sizeof x);
    x.command = DML__PS_REPLY;
    x.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_DIRECT;
    x.timestamp = 9;
    x.key_lo = 0;
    x.key_hi = 99;
    dml__ps_encode(xb, &x, NULL, NULL);
    T_OK(dml__ps_decode(xb, 64, "peer", &m, &err));
    T_ASSERT(m.command == DML__PS_REPLY && (m.flags & DML__PS_FLAG_DIRECT) && m.nvals == 0);
    dml__ps_msg_free(&m);
    expect_reject(xb, sizeof xb, "direct reply with addresses");
    x.flags |= DML__PS_FLAG_BODY;
    x.nvals = 100;
    x.value_type = DML__PS_VT_F32;
    dml__ps_encode(xb, &x, NULL, NULL);
    expect_reject(xb, 64, "direct reply announcing a body");
    x.command = DML__PS_CLOCK;
    x.flags = DML__PS_FLAG_DENSE | DML__PS_FLAG_DIRECT;
    x.nvals = 0;
    x.value_type = DML__PS_VT_NONE;
    dml__ps_encode(xb, &x, NULL, NULL);
    expect_reject(xb, 64, "direct clock");
  }
  /* every prefix of a valid frame is rejected, never read past */
  for (size_t l = 0; l < len; l++) {
    unsigned char *copy = malloc(l ? l : 1);
    memcpy(copy, buf, l);
    dml__ps_msg mm;
    T_ASSERT(dml__ps_decode(copy, l, "peer", &mm, &err) == DML_EPROTO);
    free(copy);
  }

  /* recovery commands: REJOIN carries clock and counts in the header, no keys; keys are refused */
  {
    unsigned char rj[64 + 12];
    dml__ps_msg r, back;
    memset(&r, 0, sizeof r);
    r.command = DML__PS_REJOIN;
    r.sender = 2;
    r.clock = 99;
    r.key_lo = 1234; /* push frames acknowledged */
    r.key_hi = 1;    /* the worker has left */
    dml__ps_encode(rj, &r, NULL, NULL);
    T_OK(dml__ps_decode(rj, 64, "peer", &back, &err));
    T_EQ_INT(back.command, DML__PS_REJOIN);
    T_ASSERT(back.clock == 99 && back.key_lo == 1234 && back.key_hi == 1);
    dml__ps_msg_free(&back);
    uint64_t k = 5;
    float v = 1;
    r.command = DML__PS_REFORM;
    r.key_lo = r.key_hi = 5;
    r.nkeys = r.nvals = 1;
    r.value_type = DML__PS_VT_F32;
    dml__ps_encode(rj, &r, &k, &v);
    expect_reject(rj, sizeof rj, "REFORM with keys");
    rj[6] = DML__PS_REJOIN + 1;
    expect_reject(rj, 64, "command past REJOIN");
  }

  /* dense layout: parts of <= 1M keys (4 MB), chunk-aligned tensors, greedy by bytes */
  {
    const uint64_t M = 1048576, C = DML__PS_DENSE_PART, D = DML__PS_DENSE_DEAL;
    uint64_t sizes[5] = {3 * M, M, 300000, 65536, 1};
    dml__ps_dense_layout l;
    T_OK(dml__ps_dense_layout_build(&l, sizes, 5, 2, 0, &err));
    /* parts 1M x4 (in key order), 300000, 65536, 1 -> 0, 1, 0, 1, 0 (+300000), 1, 1 */
    T_ASSERT(l.bytes[0] == 4 * (2 * M + 300000) && l.bytes[1] == 4 * (2 * M + 65536 + 1));
    T_ASSERT(l.offset[0] == 0 && l.offset[1] == 3 * M && l.offset[2] == 4 * M);
    T_ASSERT(l.offset[3] == 4 * M + (300000 + C - 1) / C * C && l.offset[4] == l.offset[3] + 65536);
    T_EQ_INT(dml__ps_dense_owner(&l, 0), 0);
    T_EQ_INT(dml__ps_dense_owner(&l, M - 1), 0);
    T_EQ_INT(dml__ps_dense_owner(&l, M), 1);
    T_EQ_INT(dml__ps_dense_owner(&l, 2 * M + 5), 0);
    T_EQ_INT(dml__ps_dense_owner(&l, 3 * M), 1);
    T_EQ_INT(dml__ps_dense_owner(&l, l.offset[2]), 0);
    T_EQ_INT(dml__ps_dense_owner(&l, l.offset[3]), 1);
    T_EQ_INT(dml__ps_dense_owner(&l, l.offset[4]), 1);
    uint64_t past = l.nchunks * C; /* beyond the tensors: dealt round-robin in runs of D keys */
    T_EQ_INT(dml__ps_dense_owner(&l, past), (int)(past / D % 2));
    T_EQ_INT(dml__ps_dense_owner(&l, past + D), (int)((past / D + 1) % 2));
    T_EQ_INT(dml__ps_dense_owner(&l, (past / D + 2) * D - 1), (int)((past / D + 1) % 2));
    dml__ps_dense_layout_free(&l);
    /* one tensor spreads over every server: 200,000 keys (25 chunks), S = 2: an even share is
     * 100,000 keys (13 chunks): runs of 13 and 12 chunks */
    uint64_t one = 200000;
    T_OK(dml__ps_dense_layout_build(&l, &one, 1, 2, 0, &err));
    T_ASSERT(l.bytes[0] == 4 * 13 * C && l.bytes[1] == 4 * (one - 13 * C));
    T_EQ_INT(dml__ps_dense_owner(&l, 13 * C - 1), 0);
    T_EQ_INT(dml__ps_dense_owner(&l, 13 * C), 1);
    dml__ps_dense_layout_free(&l);
    for (int S = 3; S <= 5; S++) { /* S runs, one a server, none above a share + one chunk */
      T_OK(dml__ps_dense_layout_build(&l, &one, 1, S, 0, &err));
      uint64_t sum = 0;
      for (int k = 0; k < S; k++) {
        T_ASSERT(l.bytes[k] > 0 && l.bytes[k] <= 4 * (one / (uint64_t)S + C));
        sum += l.bytes[k];
      }
      T_ASSERT(sum == 4 * one);
      dml__ps_dense_layout_free(&l);
    }
    /* 3 servers: every byte placed once, no server above the lightest by more than one part */
    T_OK(dml__ps_dense_layout_build(&l, sizes, 5, 3, 0, &err));
    uint64_t total = 0, lo = UINT64_MAX, hi = 0;
    for (int k = 0; k < 3; k++) {
      total += l.bytes[k];
      lo = l.bytes[k] < lo ? l.bytes[k] : lo;
      hi = l.bytes[k] > hi ? l.bytes[k] : hi;
    }
    T_ASSERT(total == 4 * (4 * M + 300000 + 65536 + 1) && hi - lo <= 4 * M);
    dml__ps_dense_layout_free(&l);
    /* mirrored: tensors of at most 65536 keys are held whole by every server (their bytes
     * counted on each), the others split as if they were alone: 3M and 1M keys over 2 servers
     * in runs of 1M, 0, 1, 0 (+300000 as its own part), 1 */
    T_OK(dml__ps_dense_layout_build(&l, sizes, 5, 2, 65536, &err));
    T_ASSERT(l.nmirrored == 65536 / C + 1 && l.offset[3] == 4 * M + (300000 + C - 1) / C * C);
    T_EQ_INT(dml__ps_dense_owner(&l, l.offset[3]), DML__PS_MIRRORED);
    T_EQ_INT(dml__ps_dense_owner(&l, l.offset[3] + 65535), DML__PS_MIRRORED);
    T_EQ_INT(dml__ps_dense_owner(&l, l.offset[4]), DML__PS_MIRRORED);
    T_EQ_INT(dml__ps_dense_owner(&l, l.offset[2]), 0);
    T_ASSERT(l.bytes[0] == 4 * (2 * M + 300000 + 65537) && l.bytes[1] == 4 * (2 * M + 65537));
    dml__ps_dense_layout_free(&l);
    T_OK(dml__ps_dense_layout_build(&l, &one, 1, 2, one, &err)); /* all mirrored: no part */
    T_ASSERT(l.nmirrored == 25 && l.bytes[0] == 4 * one && l.bytes[1] == 4 * one);
    T_EQ_INT(dml__ps_dense_owner(&l, one - 1), DML__PS_MIRRORED);
    dml__ps_dense_layout_free(&l);
    /* what a config mirrors: colocated BSP (sum-only or sync aggregation), one handler */
    dml_ps_config mc;
    dml_ps_config_init(&mc);
    mc.colocated = 1;
    T_ASSERT(dml__ps_mirror_keys(&mc, 2) == 0); /* opt-in */
    mc.mirror_bytes = 32u << 10;
    T_ASSERT(dml__ps_mirror_keys(&mc, 2) == (32u << 10) / 4); /* 32 KB / (W - 1) */
    T_ASSERT(dml__ps_mirror_keys(&mc, 3) == (32u << 10) / 2 / 4);
    T_ASSERT(dml__ps_mirror_keys(&mc, 1) == 0);
    mc.staleness = 1;
    T_ASSERT(dml__ps_mirror_keys(&mc, 2) == 0); /* SSP, ASP: replicas would apply in any order */
    mc.staleness = 0;
    mc.sync_aggregate = 0;
    T_ASSERT(dml__ps_mirror_keys(&mc, 2) == 0); /* an optimizer step per push: order matters */
    mc.sum_only = 1;
    T_ASSERT(dml__ps_mirror_keys(&mc, 2) == (32u << 10) / 4);
    mc.handler_threads = 2;
    T_ASSERT(dml__ps_mirror_keys(&mc, 2) == 0);
    mc.handler_threads = 1;
    mc.mirror_bytes = 0;
    T_ASSERT(dml__ps_mirror_keys(&mc, 2) == 0);
    /* a replica must be able to hold every worker's pushes it may have to: requests in flight
     * (<= 1008) times the mirrored bytes per clock within 256 MB / processes */
    mc.handler_threads = 1;
    mc.mirror_bytes = 32u << 10;
    uint64_t small[3] = {100, 8000, 100000};
    mc.dense_sizes = small;
    mc.num_dense = 3;
    T_OK(dml__ps_mirror_check(&mc, 2, &err));
    mc.max_in_flight = 2000;
    T_ASSERT(dml__ps_mirror_check(&mc, 2, &err) == DML_EINVAL);
    T_CONTAINS(err.msg, "in flight");
    mc.max_in_flight = 0;
    uint64_t many[1200];
    for (int t = 0; t < 1200; t++) many[t] = 8000; /* 38 MB per clock */
    mc.dense_sizes = many;
    mc.num_dense = 1200;
    T_ASSERT(dml__ps_mirror_check(&mc, 2, &err) == DML_EINVAL);
    T_CONTAINS(err.msg, "lower mirror_bytes");
    mc.dense_sizes = NULL;
    mc.num_dense = 0;
    mc.mirror_bytes = 1 << 20;
    mc.colocated = 0;
    T_ASSERT(dml__ps_mirror_keys(&mc, 4) == 0); /* dedicated servers: never */
    uint64_t zero = 0;
    T_ASSERT(dml__ps_dense_layout_build(&l, &zero, 1, 2, 0, &err) == DML_EINVAL);
    T_CONTAINS(err.msg, "dense tensor 0");
    dml__ps_dense_layout_free(&l);
  }

  /* owners: every server gets a share of 100k keys within 20% of even */
  for (int S = 1; S <= 5; S++) {
    int count[5] = {0};
    for (uint64_t k = 0; k < 100000; k++) {
      int o = dml__ps_owner(k, S);
      T_ASSERT(o >= 0 && o < S);
      count[o]++;
    }
    for (int s = 0; s < S; s++)
      T_ASSERT(count[s] > 0.8 * 100000 / S && count[s] < 1.2 * 100000 / S);
  }

  if (argc > 1) {
    write_seed(argv[1], "push5", buf, len);
    unsigned char hdr[64];
    dml__ps_msg c;
    memset(&c, 0, sizeof c);
    c.command = DML__PS_CLOCK;
    c.sender = 1;
    c.clock = 4;
    dml__ps_encode(hdr, &c, NULL, NULL);
    write_seed(argv[1], "clock", hdr, 64);
    c.command = DML__PS_REJOIN;
    c.key_lo = 17;
    dml__ps_encode(hdr, &c, NULL, NULL);
    write_seed(argv[1], "rejoin", hdr, 64);
    memcpy(bad, buf, len);
    put64(bad + 64 + 8, 0);
    write_seed(argv[1], "unsorted", bad, len);
    memcpy(bad, buf, len);
    put64(bad + 48, UINT64_MAX / 2);
    write_seed(argv[1], "hugecount", bad, len);
  }
  printf("proto_test: ok\n");
  return 0;
}
