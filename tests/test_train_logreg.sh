#!/usr/bin/env bash
# Sparse logistic regression with FTRL on a generated data set with a planted model: `distml gen`
# writes train and test files from one model, training reaches a test AUC well above chance,
# `distml eval` reproduces it from the saved model, and two workers reach it too, with all-reduce
# and through parameter servers (BSP, SSP:2, ASP; dedicated and colocated servers; 3 request
# threads per server; dedicated servers leave the data to the workers, the first of which reports
# it), and --server-threads is refused where it cannot apply.
source "$(dirname "$0")/lib.sh"
"$DISTML" gen sparse --rows 40000 --features 100000 --nnz 20 --seed 5 --out "$TMP/train.svm" \
  --test-rows 10000 --test-out "$TMP/test.svm" 2>/dev/null || fail "gen failed"
rows=$(wc -l <"$TMP/train.svm")
[[ $rows -eq 40000 ]] && ok "gen wrote 40000 training rows" || fail "gen wrote $rows rows"
out=$("$DISTML" train --model logreg --data "$TMP/train.svm" --test "$TMP/test.svm" --features 100000 \
  --epochs 3 --json --quiet --save "$TMP/lr.safetensors")
auc=$(json_field test_auc <<<"$out")
ge "$auc" 0.72 && ok "FTRL test AUC $auc >= 0.72" || fail "FTRL test AUC $auc < 0.72"
ev=$("$DISTML" eval --model "$TMP/lr.safetensors" --data "$TMP/test.svm" --json)
eauc=$(json_field test_auc <<<"$ev")
[[ $eauc == "$auc" ]] && ok "eval reproduces AUC $auc" || fail "eval AUC $eauc vs train $auc"
out2=$("$DISTML" train -n 2 --model logreg --data "$TMP/train.svm" --test "$TMP/test.svm" --features 100000 \
  --epochs 3 --json --quiet)
auc2=$(json_field test_auc <<<"$out2")
python3 -c "import sys; sys.exit(0 if abs($auc2 - $auc) <= 0.01 else 1)" && ok "-n 2 AUC $auc2 within 0.01 of $auc" \
  || fail "-n 2 AUC $auc2 vs local $auc"
for v in "--servers 1 --sync bsp" "--servers 2 --sync ssp:2" "--servers colocated --sync asp" \
  "--servers 2 --sync bsp --server-threads 3"; do
  read -r -a flags <<<"$v"
  out3=$("$DISTML" train --strategy ps -n 2 "${flags[@]}" --model logreg --data "$TMP/train.svm" \
    --test "$TMP/test.svm" --features 100000 --epochs 3 --json 2>"$TMP/ps.err")
  auc3=$(json_field test_auc <<<"$out3")
  python3 -c "import sys; sys.exit(0 if $auc3 >= $auc - 0.01 else 1)" && ok "ps $v: AUC $auc3 (local $auc)" \
    || fail "ps $v: AUC $auc3 vs local $auc"
  grep -q "distml ps: rank 0 of .* role" "$TMP/ps.err" && ok "ps $v: the launcher announced the roles" || fail "no role lines: $(head -3 "$TMP/ps.err")"
  # dedicated servers do not load the data: the first worker (rank S) says what it loaded
  S=${flags[1]}
  if [[ $S != colocated ]]; then
    grep -q "^\[distml r$S INFO\] .*/train.svm: 40000 rows x 100000 features.*; 2 workers and $S server" \
      "$TMP/ps.err" && ok "ps $v: the first worker, rank $S, loaded the data" ||
      fail "ps $v: no data line from rank $S: $(grep 'rows x' "$TMP/ps.err")"
  fi
done
# FTRL stopped after 2 of 4 epochs and resumed: the same model as an uninterrupted run, bitwise,
# with a decaying rate too (the weights restored as saved, not recomputed at the base rate)
for sched in constant cosine; do
  common=(--model logreg --data "$TMP/train.svm" --features 100000 --epochs 4 --lr-schedule $sched --quiet)
  "$DISTML" train "${common[@]}" --save "$TMP/straight-$sched.st" 2>/dev/null
  DISTML_TEST_STOP_AFTER_EPOCH=2 "$DISTML" train "${common[@]}" --checkpoint "$TMP/ck-$sched" 2>/dev/null
  "$DISTML" train "${common[@]}" --checkpoint "$TMP/ck-$sched" --resume --save "$TMP/resumed-$sched.st" 2>/dev/null
  cmp -s "$TMP/straight-$sched.st" "$TMP/resumed-$sched.st" && ok "FTRL $sched: resumed == uninterrupted (bitwise)" \
    || fail "FTRL $sched: the resumed model differs"
done
expect_fail 2 "--server-threads" "--checkpoint" -- "$DISTML" train --strategy ps -n 2 \
  --server-threads 2 --checkpoint "$TMP/ck" --model logreg --data "$TMP/train.svm" --features 100000
expect_fail 2 "--server-threads applies to --strategy ps" -- "$DISTML" train -n 2 \
  --server-threads 2 --model logreg --data "$TMP/train.svm" --features 100000
finish
