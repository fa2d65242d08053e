#!/usr/bin/env bash
# Every bad-input case of the readers and the CLI flags, through the distml command: exit status,
# and an error that names the file and the line (as FILE:LINE:COL) or byte offset and what was wrong.
source "$(dirname "$0")/lib.sh"
D=$TMP

# --- LIBSVM
printf '1 1:0.5 3:1\n0 2:abc\n' >"$D/nonnum.svm"
expect_fail 1 "nonnum.svm" ":2:" -- "$DISTML" train --model logreg --data "$D/nonnum.svm" --epochs 1
printf '1 0:0.5\n' >"$D/idx0.svm"
expect_fail 1 "idx0.svm" ":1:" "index" -- "$DISTML" train --model logreg --data "$D/idx0.svm" --epochs 1
printf '1 1:1 5:1\n0 4:1 2:1\n' >"$D/decr.svm"
expect_fail 1 "decr.svm" ":2:" "increasing" -- "$DISTML" train --model logreg --data "$D/decr.svm" --epochs 1
printf '1 1:1 2:nan\n' >"$D/nan.svm"
expect_fail 1 "nan.svm" ":1:" -- "$DISTML" train --model logreg --data "$D/nan.svm" --epochs 1
printf '1 1:1 2:inf\n' >"$D/inf.svm"
expect_fail 1 "inf.svm" ":1:" -- "$DISTML" train --model logreg --data "$D/inf.svm" --epochs 1
printf '1 1:1 9:1\n' >"$D/beyond.svm"
expect_fail 1 "beyond.svm" ":1:" "9" -- "$DISTML" train --model logreg --data "$D/beyond.svm" --features 5 --epochs 1
: >"$D/empty.svm"
expect_fail 1 "empty.svm" "empty" -- "$DISTML" train --model logreg --data "$D/empty.svm" --format libsvm --epochs 1
mkdir "$D/adir"
expect_fail 1 "adir" "directory" -- "$DISTML" train --data "$D/adir" --epochs 1
expect_fail 1 "missing.svm" -- "$DISTML" train --data "$D/missing.svm" --epochs 1

# --- CSV
printf '1,0.5,0.25\n0,0.1\n' >"$D/ragged.csv"
expect_fail 1 "ragged.csv" ":2:" -- "$DISTML" train --model softmax --data "$D/ragged.csv" --epochs 1
printf '1,0.5\n0,x\n' >"$D/nonnum.csv"
expect_fail 1 "nonnum.csv" ":2:" -- "$DISTML" train --model softmax --data "$D/nonnum.csv" --epochs 1
printf '1,0.5\n0,nan\n' >"$D/nan.csv"
expect_fail 1 "nan.csv" ":2:" -- "$DISTML" train --model softmax --data "$D/nan.csv" --epochs 1
: >"$D/empty.csv"
expect_fail 1 "empty.csv" "empty" -- "$DISTML" train --model softmax --data "$D/empty.csv" --epochs 1

# --- IDX: a valid tiny pair, then broken variants
python3 - "$D" <<'PY'
import gzip, struct, sys
d = sys.argv[1]
n, r, c = 4, 2, 2
img = struct.pack(">IIII", 0x00000803, n, r, c) + bytes(range(n * r * c))
lab = struct.pack(">II", 0x00000801, n) + bytes([0, 1, 2, 1])
open(f"{d}/ok-images-idx3-ubyte", "wb").write(img)
open(f"{d}/ok-labels-idx1-ubyte", "wb").write(lab)
open(f"{d}/magic-images-idx3-ubyte", "wb").write(struct.pack(">I", 0x00000903) + img[4:])
open(f"{d}/magic-labels-idx1-ubyte", "wb").write(lab)
open(f"{d}/dims-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 0x00000803, n, 0, c) + img[16:])
open(f"{d}/dims-labels-idx1-ubyte", "wb").write(lab)
open(f"{d}/count-images-idx3-ubyte", "wb").write(img)
open(f"{d}/count-labels-idx1-ubyte", "wb").write(struct.pack(">II", 0x00000801, 3) + bytes([0, 1, 2]))
open(f"{d}/short-images-idx3-ubyte", "wb").write(img[:-5])
open(f"{d}/short-labels-idx1-ubyte", "wb").write(lab)
gz = gzip.compress(img)
open(f"{d}/trunc-images-idx3-ubyte.gz", "wb").write(gz[: len(gz) // 2])
open(f"{d}/trunc-labels-idx1-ubyte.gz", "wb").write(gzip.compress(lab))
bad = bytearray(gz); bad[len(bad) // 2] ^= 0xFF; bad[len(bad) // 2 + 1] ^= 0x55
open(f"{d}/corrupt-images-idx3-ubyte.gz", "wb").write(bytes(bad))
open(f"{d}/corrupt-labels-idx1-ubyte.gz", "wb").write(gzip.compress(lab))
PY
expect_fail 1 "magic-images-idx3-ubyte" "magic" -- "$DISTML" train --model softmax --data "$D/magic-images-idx3-ubyte" --format idx --epochs 1
expect_fail 1 "dims-images-idx3-ubyte" -- "$DISTML" train --model softmax --data "$D/dims-images-idx3-ubyte" --format idx --epochs 1
expect_fail 1 "count-labels-idx1-ubyte" "4" "3" -- "$DISTML" train --model softmax --data "$D/count-images-idx3-ubyte" --format idx --epochs 1
expect_fail 1 "short-images-idx3-ubyte" "truncated" -- "$DISTML" train --model softmax --data "$D/short-images-idx3-ubyte" --format idx --epochs 1
expect_fail 1 "trunc-images-idx3-ubyte.gz" -- "$DISTML" train --model softmax --data "$D/trunc-images-idx3-ubyte.gz" --format idx --epochs 1
expect_fail 1 "corrupt-images-idx3-ubyte.gz" -- "$DISTML" train --model softmax --data "$D/corrupt-images-idx3-ubyte.gz" --format idx --epochs 1

# --- flags
expect_fail 2 "unknown flag" "--bogus" -- "$DISTML" train --data fashion-mnist --bogus
expect_fail 2 "--epochs" "not an integer" -- "$DISTML" train --data fashion-mnist --epochs ten
expect_fail 2 "--lr" "out of range" -- "$DISTML" train --data fashion-mnist --lr -1
expect_fail 2 "--model" "not one of" -- "$DISTML" train --data fashion-mnist --model cnn
expect_fail 2 "--data is required" -- "$DISTML" train
expect_fail 2 "needs a value" -- "$DISTML" train --data
expect_fail 2 "unknown command" -- "$DISTML" frobnicate
expect_fail 2 "--rows" -- "$DISTML" gen sparse --features 10 --out "$D/x.svm"
expect_fail 2 "--model FILE is required" -- "$DISTML" eval --data fashion-mnist:test

expect_fail 2 "--sync" "bsp" -- "$DISTML" train --data fashion-mnist --sync foo
expect_fail 2 "--hidden" "empty item" -- "$DISTML" train --data fashion-mnist --hidden 256,,128
expect_fail 2 "--sizes" "empty item" -- "$DISTML" bench allreduce --sizes 4K,,8
expect_fail 2 "--lr" "empty item" -- "$DISTML" tune --data fashion-mnist --lr 0.1,
expect_fail 2 "--restart" "0..1" -- "$DISTML" launch -n 2 --restart 0, -- true
expect_fail 2 "--restart" "0..1" -- "$DISTML" launch -n 2 --restart " 1" -- true
expect_fail 2 "--max-restarts" "--restart" -- "$DISTML" launch -n 2 --max-restarts 2 -- true
expect_fail 2 "--dim" "dense" -- "$DISTML" gen sparse --rows 5 --features 3 --dim 4 --out "$D/k.svm"
expect_fail 2 "--nnz" "sparse" -- "$DISTML" gen dense --rows 5 --dim 3 --nnz 2 --out "$D/k.svm"
expect_fail 2 "--format" "'foo'" -- "$DISTML" eval --model "$D/none.safetensors" --data fashion-mnist:test --format foo
expect_fail 2 "--features" "out of range" -- "$DISTML" gen sparse --rows 5 --features 3000000000 --out "$D/k.svm"
expect_fail 2 "--save" "cannot write in directory" -- "$DISTML" train --data fashion-mnist --save "$D/no/such/dir/m.safetensors"
expect_fail 2 "unknown flag '--bogus'" -- "$DISTML" bench ps --bogus
expect_fail 2 "--iters needs a value" -- "$DISTML" bench ps --iters
expect_fail 2 "--layouts" "'3x3'" -- "$DISTML" bench ps --layouts colocated2,3x3
expect_fail 2 "above --max-bytes" -- "$DISTML" bench ps --min-bytes 1M --max-bytes 64K
expect_fail 2 "--mirror-bytes x" -- "$DISTML" bench ps --mirror-bytes x
"$DISTML" bench ps --help | grep -q "usage: distml bench ps" && ok "bench ps --help: usage on stdout, status 0" \
  || fail "bench ps --help"

# --- outputs: one file for two outputs, and a target that is not a regular file (never replaced)
expect_fail 2 "same file" -- "$DISTML" gen sparse --rows 5 --features 3 --nnz 2 --out "$D/g.svm" --test-rows 2 --test-out "$D/g.svm"
[[ ! -e $D/g.svm ]] && ok "nothing written for --out = --test-out" || fail "gen wrote $D/g.svm"
mkfifo "$D/fifo"
expect_fail 1 "fifo" "not a regular file" -- "$DISTML" gen sparse --rows 5 --features 3 --nnz 2 --out "$D/fifo"
[[ -p $D/fifo ]] && ok "the fifo is still a fifo" || fail "gen replaced the fifo"
expect_fail 2 "--save" "not a regular file" -- "$DISTML" train --data fashion-mnist --save "$D/fifo"

# set_meta FILE KEY VALUE: rewrites one __metadata__ entry of a safetensors file
set_meta() {
  python3 - "$@" <<'PY'
import json, struct, sys
path, key, value = sys.argv[1:4]
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n])
head["__metadata__"][key] = value
new = json.dumps(head).encode()
new += b" " * ((8 - len(new) % 8) % 8)
open(path, "wb").write(struct.pack("<Q", len(new)) + new + raw[8 + n:])
PY
}

# --- LIBSVM rows without any feature are valid: a batch of them trains
printf '1\n0 1:1\n1\n' >"$D/emptyrows.svm"
for seed in 1 2 3; do
  "$DISTML" train --model logreg --data "$D/emptyrows.svm" --batch 1 --epochs 1 --seed $seed --quiet \
    && ok "empty LIBSVM rows, seed $seed" || fail "empty LIBSVM rows, seed $seed"
done

# --- what the data asks of the model, refused before training, naming the file and row
printf '0 1:1\n2 1:1\n' >"$D/label2.svm"
expect_fail 1 "label2.svm" "row 2" "label 2" "binary" -- "$DISTML" train --model logreg --data "$D/label2.svm" --batch 1 --epochs 1
# the largest index the reader takes: 34 GB of model per worker, with enough workers for twice
# this machine's memory
printf '1 2147483647:1\n0 1:1\n' >"$D/hugeidx.svm"
nw=$(awk '/^MemTotal:/ { n = int($2 * 1024 * 2 / 34.4e9) + 1; print (n < 2 ? 2 : n) }' /proc/meminfo)
expect_fail 1 "hugeidx.svm" "2147483647" "row 1" "more than this machine" -- "$DISTML" train --model logreg --data "$D/hugeidx.svm" --batch "$nw" --epochs 1 -n "$nw"
"$DISTML" train --data fashion-mnist --epochs 1 --batch 60000 --quiet --metrics - >"$D/metrics.out" 2>/dev/null \
  && grep -q '"epoch"' "$D/metrics.out" && ok "--metrics - writes to stdout" || fail "--metrics -"

# --- checkpoints by clocks are for parameter servers only, and take a count
expect_fail 2 "--checkpoint-every 5clocks" "--strategy ps" -- "$DISTML" train --model logreg --data "$D/emptyrows.svm" --checkpoint "$D/ck" --checkpoint-every 5clocks
expect_fail 2 "--checkpoint-every 5clocks" "--checkpoint DIR" -- "$DISTML" train --strategy ps -n 2 --model logreg --data "$D/emptyrows.svm" --checkpoint-every 5clocks
expect_fail 2 "--checkpoint-every" "'x'" -- "$DISTML" train --strategy ps -n 2 --checkpoint-every xclocks
expect_fail 2 "--checkpoint-every" "out of range" -- "$DISTML" train --strategy ps -n 2 --checkpoint-every 0clocks

# --- a training checkpoint whose step is not a number is refused by name
"$DISTML" train --model logreg --data "$D/emptyrows.svm" --batch 1 --epochs 1 --quiet --checkpoint "$D/ck" \
  || fail "checkpointed run"
set_meta "$(ls "$D"/ck/ckpt-epoch-*.safetensors | tail -1)" train.step abc
expect_fail 1 "ckpt-epoch-" "train.step" -- "$DISTML" train --model logreg --data "$D/emptyrows.svm" --batch 1 --epochs 2 --checkpoint "$D/ck" --resume

# --- binary data that is not IDX, read with --format auto
printf '\x7fELF\x02\x01\x01\x00\x00\x00' >"$D/elf.bin"
expect_fail 1 "elf.bin" "binary data that is not an IDX file" -- "$DISTML" train --data "$D/elf.bin" --epochs 1

# --- a checkpoint whose FTRL n (a sum of squares) holds a negative value is refused by name
"$DISTML" train --model logreg --data "$D/emptyrows.svm" --batch 1 --epochs 1 --quiet --checkpoint "$D/ck2" \
  || fail "checkpointed run"
python3 - "$(ls "$D"/ck2/ckpt-epoch-*.safetensors | tail -1)" <<'PY'
import json, struct, sys
path = sys.argv[1]
raw = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
begin = json.loads(raw[8:8 + n])["optim.ftrl.n"]["data_offsets"][0]
raw[8 + n + begin:8 + n + begin + 4] = struct.pack("<f", -1.0)
open(path, "wb").write(raw)
PY
expect_fail 1 "ckpt-epoch-" "optim.ftrl.n" "element 0" "not negative" -- "$DISTML" train --model logreg --data "$D/emptyrows.svm" --batch 1 --epochs 2 --checkpoint "$D/ck2" --resume

# --- a model file of another format version is refused by name
"$DISTML" train --model logreg --data "$D/emptyrows.svm" --batch 1 --epochs 1 --quiet --save "$D/m.safetensors" \
  || fail "saved model"
set_meta "$D/m.safetensors" distml.format 2
expect_fail 1 "m.safetensors" "distml.format '2'" -- "$DISTML" eval --model "$D/m.safetensors" --data "$D/emptyrows.svm"

# --- a model file whose metadata promise a 2G-parameter model and hold no tensor: refused before
# any allocation
python3 - "$D/promise.safetensors" <<'PY'
import json, struct, sys
meta = {"distml.format": "1", "distml.model": "softmax", "distml.in_dim": "268435456",
        "distml.num_classes": "8", "distml.hidden": "", "distml.seed": "1"}
b = json.dumps({"__metadata__": meta}).encode()
b += b" " * ((8 - len(b) % 8) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(b)) + b)
PY
expect_fail 1 "promise.safetensors" "2147483656 parameters" "holds 0 values" -- "$DISTML" eval --model "$D/promise.safetensors" --data "$D/emptyrows.svm"

# --- a model file that is not one
printf 'not a safetensors file at all' >"$D/bad.safetensors"
expect_fail 1 "bad.safetensors" -- "$DISTML" eval --model "$D/bad.safetensors" --data "$D/ok-images-idx3-ubyte"

finish
