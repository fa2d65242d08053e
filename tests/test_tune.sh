#!/usr/bin/env bash
# `distml tune`: a grid over two flags runs every trial exactly once on the farm's workers, the
# results are sorted by test accuracy and keyed by the searched flags, a trial's result is what
# `distml train` gives with those flags, --random K runs K distinct points, and bad flags are
# refused before anything starts.
source "$(dirname "$0")/lib.sh"
"$DISTML" gen dense --rows 3000 --dim 20 --classes 4 --seed 2 --out "$TMP/d.svm" --test-rows 1000 \
  --test-out "$TMP/t.svm" 2>/dev/null
out=$("$DISTML" tune -n 2 --data "$TMP/d.svm" --test "$TMP/t.svm" --lr 0.001,0.01,0.1 --hidden 16,8x8 \
  --epochs 2 --json 2>/dev/null)
python3 - "$out" <<'PY' && ok "6 trials, each grid point once, sorted, keyed by lr and hidden" || fail "bad tune output: $out"
import json, sys
t = json.loads(sys.argv[1])["trials"]
points = sorted((x["lr"], str(x["hidden"])) for x in t)
want = sorted((lr, h) for lr in (0.001, 0.01, 0.1) for h in ("16", "8x8"))
acc = [x["test_accuracy"] for x in t]
ok = len(t) == 6 and points == want and acc == sorted(acc, reverse=True) and all("wall_s" in x for x in t)
sys.exit(0 if ok else 1)
PY
best_lr=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['trials'][0]['lr'])" "$out")
best_h=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['trials'][0]['hidden'])" "$out")
best_acc=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['trials'][0]['test_accuracy'])" "$out")
direct=$("$DISTML" train --data "$TMP/d.svm" --test "$TMP/t.svm" --lr "$best_lr" --hidden "${best_h//x/,}" \
  --epochs 2 --threads 1 --json --quiet | json_field test_accuracy)
python3 -c "import sys; sys.exit(0 if abs($direct - $best_acc) < 1e-9 else 1)" \
  && ok "best trial (lr $best_lr, hidden $best_h) = direct train run ($direct)" \
  || fail "best trial $best_acc vs direct train $direct"
out=$("$DISTML" tune -n 2 --data "$TMP/d.svm" --test "$TMP/t.svm" --lr 0.001,0.003,0.01,0.03,0.1 --seed 1,2 \
  --epochs 1 --random 4 --json 2>/dev/null)
python3 -c "import json,sys; t=json.loads(sys.argv[1])['trials']; sys.exit(0 if len(t)==4 and len({(x['lr'],x['seed']) for x in t})==4 else 1)" "$out" \
  && ok "--random 4: 4 distinct trials" || fail "--random 4: $out"
table=$("$DISTML" tune -n 1 --data "$TMP/d.svm" --test "$TMP/t.svm" --lr 0.01,0.1 --epochs 1 2>/dev/null)
grep -q "2 trials on 1 workers" <<<"$table" && ok "table output" || fail "table: $table"
expect_fail 2 "unknown flag" "--bogus" -- "$DISTML" tune --data "$TMP/d.svm" --lr 0.1,0.2 --bogus 1
expect_fail 2 "--lr" "not a number" -- "$DISTML" tune --data "$TMP/d.svm" --lr 0.1,abc
expect_fail 2 "nothing to search" -- "$DISTML" tune --data "$TMP/d.svm" --lr 0.1
expect_fail 2 "--data is required" -- "$DISTML" tune --lr 0.1,0.2
expect_fail 2 "--test" -- "$DISTML" tune --data "$TMP/d.svm" --lr 0.1,0.2
# every value is checked as train checks it, before any trial starts
expect_fail 2 "--epochs" "out of range" -- "$DISTML" tune --data "$TMP/d.svm" --test "$TMP/t.svm" --epochs 0,1
expect_fail 2 "--optimizer" "'foo'" -- "$DISTML" tune --data "$TMP/d.svm" --test "$TMP/t.svm" --optimizer foo,sgd
expect_fail 2 "--hidden" -- "$DISTML" tune --data "$TMP/d.svm" --test "$TMP/t.svm" --hidden 4x0,8
expect_fail 2 "--loader-threads" -- "$DISTML" tune --data "$TMP/d.svm" --test "$TMP/t.svm" --lr 0.1,0.2 --loader-threads abc
# --timeout: a trial still running is killed and reported as such
table=$("$DISTML" tune -n 1 --data "$TMP/d.svm" --test "$TMP/t.svm" --lr 0.01,0.1 --epochs 1000000 --timeout 1 2>/dev/null)
[[ $(grep -c "timed out after 1 s" <<<"$table") -eq 2 ]] && ok "--timeout 1: both trials killed and reported" \
  || fail "--timeout: $table"
finish
