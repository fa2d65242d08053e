#!/usr/bin/env bash
# Benchmark (not a test) of the data-parallel strategy on the Fashion-MNIST MLP 784-256-10, Adam,
# one BLAS thread per worker, runs alternating, best of R rounds:
#  1. scaling at a per-worker batch where compute dominates (256): -n 2 over -n 1 samples/s;
#  2. distml -n 2 against PyTorch DistributedDataParallel (gloo, 2 processes, 1 thread each),
#     same model, global batch and optimizer;
#  3. at a per-worker batch of 64, where the 0.8 MB gradient per step dominates: what overlap,
#     fp16 compression, accumulation and local SGD buy (samples/s and test accuracy).
# Usage: bench/dp_scaling.sh [ROUNDS (default 5)] [EPOCHS]   (needs scripts/setup.sh --bench for PyTorch)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
epochs=${2:-1}
distml=${DISTML:-build/distml}
[[ -x $distml ]] || scripts/build.sh build >/dev/null
export OPENBLAS_NUM_THREADS=1
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
run() { "$distml" train --model mlp --hidden 256 --data fashion-mnist --epochs "$epochs" --threads 1 --json --quiet "$@" 2>/dev/null; }
best() { printf '%s\n' "$@" | sort -g | tail -n 1; }

n1=() n2=() ddp=() tddp=()
for r in $(seq 1 "$rounds"); do
  # output parsed after each run exits: a parser on a pipe would take CPU from the ranks
  out=$(run --batch 256)
  n1+=("$(field samples_per_s <<<"$out")")
  out=$(run -n 2 --batch 512)
  n2+=("$(field samples_per_s <<<"$out")")
  out=$(cd bench && OPENBLAS_CORETYPE=SkylakeX /usr/bin/python3 pytorch_ddp.py -n 2 --batch 512 --epochs "$epochs" 2>/dev/null)
  ddp+=("$(field samples_per_s <<<"$out")")
  echo "round $r: distml -n1 ${n1[-1]}  -n2 ${n2[-1]}  DDP ${ddp[-1]} samples/s" >&2
done
b1=$(best "${n1[@]}") b2=$(best "${n2[@]}") bd=$(best "${ddp[@]}")
python3 - "$b1" "$b2" "$bd" <<'PY'
import sys
n1, n2, d = map(float, sys.argv[1:])
print("per-worker batch 256 (global 256 for -n 1, 512 for -n 2), 1 thread per worker, best of rounds:")
print(f"  distml -n 1                 {n1:10.0f} samples/s")
print(f"  distml -n 2                 {n2:10.0f} samples/s   scaling {n2 / n1:.2f}x ({100 * n2 / n1 / 2:.0f}% efficiency)")
print(f"  PyTorch DDP (gloo) 2 procs  {d:10.0f} samples/s   distml/DDP {n2 / d:.2f}x")
PY

echo "per-worker batch 64 (-n 2, global batch 128), $epochs epoch(s):"
printf '  %-34s %12s %10s %10s %10s\n' variant samples/s test_acc overlap% KB/step
for v in "default (1 MB cap: one bucket)|" "bucket 0.1 MB (fc2, fc1 apart)|--bucket-mb 0.1" \
  "fp16 on the wire|--grad-compress fp16" "bf16 on the wire|--grad-compress bf16" \
  "accumulate 4|--accumulate 4" "local SGD, average every 8|--sync-every 8"; do
  name=${v%%|*}
  read -r -a flags <<<"${v#*|}"
  out=$(run -n 2 --batch 128 "${flags[@]}")
  python3 - "$name" "$out" <<'PY'
import json, sys
name, out = sys.argv[1], json.loads(sys.argv[2].strip().splitlines()[-1])
print(f"  {name:34s} {out['samples_per_s']:12.0f} {out['test_accuracy']:10.4f} {max(0.0, out.get('overlap_pct', 0)):10.1f} {out.get('bytes_per_step', 0) / 1024:10.1f}")
PY
done
