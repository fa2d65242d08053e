#!/usr/bin/env bash
# The input pipeline feeding sparse (LIBSVM) training, every strategy (issue "Task-parallel"): on a
# generated set, local logreg with 1 and 2 loader threads saves the same model bit for bit (the
# batches depend on the seed, not on the threads) and reaches the AUC of the run without the
# pipeline (the same rows, in another seeded order, so not the same bits); all-reduce and the
# parameter server (BSP) with --loader-threads 2 reach it too, and the PS run reports its input
# stall in --json and per epoch in --metrics; --augment on sparse data is refused with the reason.
source "$(dirname "$0")/lib.sh"
"$DISTML" gen sparse --rows 12000 --features 30000 --nnz 20 --seed 7 --out "$TMP/train.svm" \
  --test-rows 3000 --test-out "$TMP/test.svm" 2>/dev/null || fail "gen failed"
common=(--model logreg --data "$TMP/train.svm" --test "$TMP/test.svm" --features 30000 --epochs 3
  --json --quiet)
auc_of() { json_field test_auc <<<"$1"; }
near() { python3 -c "import sys; sys.exit(0 if abs(float('$1') - float('$2')) <= $3 else 1)"; }

o0=$("$DISTML" train "${common[@]}" --save "$TMP/m0.safetensors")
a0=$(auc_of "$o0")
ge "$a0" 0.70 && ok "without the pipeline: AUC $a0" || fail "without the pipeline: AUC $a0 < 0.70"
o1=$("$DISTML" train "${common[@]}" --loader-threads 1 --save "$TMP/m1.safetensors")
o2=$("$DISTML" train "${common[@]}" --loader-threads 2 --prefetch 3 --save "$TMP/m2.safetensors")
a1=$(auc_of "$o1")
a2=$(auc_of "$o2")
cmp -s "$TMP/m1.safetensors" "$TMP/m2.safetensors" && [[ $a1 == "$a2" ]] \
  && ok "1 and 2 loader threads save the same model (AUC $a1)" \
  || fail "1 loader thread AUC $a1, 2 threads AUC $a2, models differ"
near "$a2" "$a0" 0.01 && ok "pipeline AUC $a2 within 0.01 of $a0" || fail "pipeline AUC $a2 vs $a0"
s=$(json_field input_stall_pct <<<"$o2")
ge "$s" 0 && ok "local: input stall $s% of the epoch" || fail "local: no input_stall_pct: $o2"

o3=$("$DISTML" train -n 2 "${common[@]}" --loader-threads 2)
a3=$(auc_of "$o3")
near "$a3" "$a0" 0.01 && ok "allreduce -n 2 with the pipeline: AUC $a3" || fail "allreduce AUC $a3 vs $a0"

o4=$("$DISTML" train --strategy ps -n 2 --servers 1 --sync bsp "${common[@]}" --loader-threads 2 \
  --metrics "$TMP/ps.jsonl" 2>"$TMP/ps.err")
a4=$(auc_of "$o4")
near "$a4" "$a0" 0.01 && ok "ps bsp with the pipeline: AUC $a4 (local $a0)" \
  || fail "ps bsp with the pipeline: AUC $a4 vs local $a0; $(tail -3 "$TMP/ps.err")"
s4=$(json_field input_stall_pct <<<"$o4")
ge "$s4" 0 && ok "ps: --json reports input stall $s4%" || fail "ps: no input_stall_pct in $o4"
python3 - "$TMP/ps.jsonl" <<'PY' && ok "ps: --metrics has the input stall for each of 3 epochs" \
  || fail "ps: metrics $(cat "$TMP/ps.jsonl")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["epoch"] for l in lines] == [1, 2, 3], lines
for l in lines:
    assert l["input_stall_s"] >= 0 and 0 <= l["input_stall_pct"] <= 100, l
    assert l["epoch_s"] > 0 and l["loss"] > 0, l
PY

expect_fail 2 "--augment" "sparse" "no pixels" -- "$DISTML" train --model logreg \
  --data "$TMP/train.svm" --loader-threads 2 --augment flip --epochs 1
expect_fail 2 "--augment" "no pixels" -- "$DISTML" train --strategy ps -n 1 --servers 1 \
  --model logreg --data "$TMP/train.svm" --augment shift --epochs 1
finish
