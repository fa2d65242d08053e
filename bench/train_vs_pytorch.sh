#!/usr/bin/env bash
# Benchmark (not a test): one epoch of the 784-256-10 MLP on Fashion-MNIST, batch 64,
# Adam (lr 0.001), one thread, distml vs PyTorch (Debian's python3-torch), alternating, R rounds each.
# PyTorch runs as installed and with OPENBLAS_CORETYPE=SkylakeX; the ratio is against its faster
# figure. Usage: bench/train_vs_pytorch.sh [ROUNDS]   (needs scripts/setup.sh --bench)
set -euo pipefail
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 # one thread on both sides, BLAS included
cd "$(dirname "$0")/.."
rounds=${1:-3}
distml=${DISTML:-build/distml}
[[ -x $distml ]] || scripts/build.sh build >/dev/null
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
best() { sort -g | tail -n 1; }
d=() t=() ts=()
for r in $(seq 1 "$rounds"); do
  d+=("$("$distml" train --model mlp --hidden 256 --data fashion-mnist --epochs 1 --batch 64 \
    --optimizer adam --lr 0.001 --threads 1 --json --quiet | field samples_per_s)")
  t+=("$(env -u OPENBLAS_CORETYPE /usr/bin/python3 bench/pytorch_mlp.py --optimizer adam --lr 0.001 --epochs 1 --batch 64 --threads 1 | field samples_per_s)")
  ts+=("$(OPENBLAS_CORETYPE=SkylakeX /usr/bin/python3 bench/pytorch_mlp.py --optimizer adam --lr 0.001 --epochs 1 --batch 64 --threads 1 | field samples_per_s)")
  echo "round $r: distml ${d[-1]}  pytorch ${t[-1]}  pytorch(SkylakeX) ${ts[-1]} samples/s" >&2
done
bd=$(printf '%s\n' "${d[@]}" | best)
bt=$(printf '%s\n' "${t[@]}" | best)
bts=$(printf '%s\n' "${ts[@]}" | best)
python3 - "$bd" "$bt" "$bts" <<'PY'
import sys
d, t, ts = map(float, sys.argv[1:])
peer = max(t, ts)
print(f"MLP 784-256-10, 1 epoch, batch 64, 1 thread (best of rounds):")
print(f"  distml                          {d:10.0f} samples/s")
print(f"  pytorch (as installed)          {t:10.0f} samples/s")
print(f"  pytorch (OPENBLAS_CORETYPE=SkylakeX) {ts:6.0f} samples/s")
print(f"  distml / faster pytorch         {d / peer:10.2f}x")
PY
