#!/usr/bin/env bash
# test-labels: slow
# Local training on the real Fashion-MNIST (Debian's dataset-fashion-mnist): the accuracy the
# Foundation issue asks for, the --json summary, the metrics file, and eval on the saved model
# reproducing the accuracy train printed.
source "$(dirname "$0")/lib.sh"

out=$("$DISTML" train --model softmax --data fashion-mnist --epochs 10 --json --quiet \
  --save "$TMP/softmax.safetensors" --metrics "$TMP/softmax.jsonl")
acc=$(json_field test_accuracy <<<"$out")
ge "$acc" 0.84 && ok "softmax test accuracy $acc >= 0.84" || fail "softmax test accuracy $acc < 0.84"
lines=$(wc -l <"$TMP/softmax.jsonl")
[[ $lines -eq 10 ]] && ok "metrics: 10 lines" || fail "metrics file has $lines lines, expected 10"
for k in test_loss samples_per_s wall_s; do
  v=$(json_field "$k" <<<"$out") && ge "$v" 0 && ok "$k = $v" || fail "--json lacks $k: $out"
done
ev=$("$DISTML" eval --model "$TMP/softmax.safetensors" --data fashion-mnist:test --json)
eacc=$(json_field test_accuracy <<<"$ev")
[[ $eacc == "$acc" ]] && ok "eval reproduces $acc" || fail "eval gives $eacc, train printed $acc"

out=$("$DISTML" train --model mlp --hidden 256 --data fashion-mnist --epochs 10 --json --quiet \
  --save "$TMP/mlp.safetensors")
acc=$(json_field test_accuracy <<<"$out")
ge "$acc" 0.88 && ok "mlp test accuracy $acc >= 0.88" || fail "mlp test accuracy $acc < 0.88"
ev=$("$DISTML" eval --model "$TMP/mlp.safetensors" --data fashion-mnist:test --json)
eacc=$(json_field test_accuracy <<<"$ev")
[[ $eacc == "$acc" ]] && ok "eval reproduces $acc" || fail "eval gives $eacc, train printed $acc"
finish
