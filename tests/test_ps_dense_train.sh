#!/usr/bin/env bash
# The dense models through the parameter server (issue 5, "Training"): softmax with 2 dedicated
# servers under BSP and an MLP with colocated servers under SSP:1 on Fashion-MNIST reach the local
# run's test accuracy within 0.02 (same global batch, 2 epochs), and the first worker prints the
# per-server byte load of the dense parameters; the same through the input pipeline
# (--loader-threads 2, issue 6), which reports its input stall.
# test-labels: slow
source "${DISTML_SRC:?}/tests/lib.sh"
d="$DISTML"
[[ -d /usr/share/datasets/fashion-mnist ]] ||
  fail "no /usr/share/datasets/fashion-mnist (scripts/setup.sh installs dataset-fashion-mnist)"
common=(--data fashion-mnist --epochs 2 --batch 64 --json --quiet)
for spec in "softmax|--servers 2 --sync bsp" "mlp --hidden 64|--servers colocated --sync ssp:1" \
  "softmax|--servers 1 --sync bsp --loader-threads 2"; do
  model=${spec%%|*}
  ps=${spec#*|}
  read -r -a mflags <<<"--model $model"
  read -r -a pflags <<<"$ps"
  local_acc=$("$d" train "${mflags[@]}" "${common[@]}" 2>/dev/null | json_field test_accuracy)
  out=$("$d" train --strategy ps -n 2 "${pflags[@]}" "${mflags[@]}" "${common[@]}" 2>"$TMP/err")
  acc=$(json_field test_accuracy <<<"$out")
  python3 -c "import sys; sys.exit(0 if $acc >= $local_acc - 0.02 else 1)" &&
    ok "$model, ps $ps: accuracy $acc (local $local_acc)" ||
    fail "$model, ps $ps: accuracy $acc vs local $local_acc; $(tail -5 "$TMP/err")"
  if [[ $ps == *loader-threads* ]]; then
    stall=$(json_field input_stall_pct <<<"$out")
    python3 -c "import sys; sys.exit(0 if 0 <= $stall < 100 else 1)" ||
      fail "$model, ps $ps: input_stall_pct '$stall'"
  fi
  grep -q "ps: load per server for [0-9]* dense parameters: server 0 [0-9]* bytes" \
    "$TMP/err" || fail "$model: no per-server load line: $(head -5 "$TMP/err")"
done
finish
