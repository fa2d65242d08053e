#!/usr/bin/env bash
# test-labels: slow
# Training fed by the input pipeline (issue "Task-parallel"): the batches depend on the seed, not
# on the number of loader threads, so 1 and 2 threads train the same model (same accuracy and
# loss to the last digit), with and without augmentation; the input stall is reported; an
# unknown augmentation is refused clearly. Sparse data through the pipeline (every strategy):
# test_train_pipeline_sparse.sh.
source "$(dirname "$0")/lib.sh"
common=(--model mlp --hidden 128 --data fashion-mnist --epochs 2 --json --quiet --threads 1)
for aug in "" "--augment shift,flip,noise"; do
  read -r -a a <<<"$aug"
  o1=$("$DISTML" train "${common[@]}" --loader-threads 1 "${a[@]}" --save "$TMP/p1.safetensors")
  o2=$("$DISTML" train "${common[@]}" --loader-threads 2 "${a[@]}" --save "$TMP/p2.safetensors")
  a1=$(json_field test_accuracy <<<"$o1")
  a2=$(json_field test_accuracy <<<"$o2")
  cmp -s "$TMP/p1.safetensors" "$TMP/p2.safetensors" && [[ $a1 == "$a2" ]] \
    && ok "${aug:-no augmentation}: 1 and 2 loader threads give the same model (accuracy $a1)" \
    || fail "${aug:-no augmentation}: 1 thread $a1, 2 threads $a2, models differ"
  ge "$a2" 0.75 && ok "accuracy $a2 after 2 epochs" || fail "accuracy $a2 after 2 epochs"
  s=$(json_field input_stall_pct <<<"$o2")
  ge "$s" 0 && ok "input stall reported: $s% of the epoch" || fail "no input_stall_pct: $o2"
done
expect_fail 2 "--augment" "rotate" -- "$DISTML" train --data fashion-mnist --augment rotate
finish
