#!/usr/bin/env bash
# The launcher's per-rank failure policies through `distml launch` (the parameter server's
# recovery relies on them): --restart starts a failed rank again with DISTML_RESTART=k and the run
# succeeds when the restart does; a rank that keeps failing is given up after --max-restarts;
# --continue lets the others finish and the launch succeeds, naming the rank it lost; a rank with
# no policy still stops everything; `distml tune` goes on when a farm worker dies (its trial is
# run by another).
# test-labels: launch
source "${DISTML_SRC:?}/tests/lib.sh"
d="$DISTML"

# rank 1 fails on its first start only
out=$("$d" launch -n 3 --restart 1 -- sh -c \
  'if [ "$DISTML_RANK" = 1 ] && [ -z "${DISTML_RESTART:-}" ]; then exit 5; fi; sleep 0.3; echo "up $DISTML_RANK restart=${DISTML_RESTART:-0}"' \
  2>"$TMP/err")
st=$?
[[ $st == 0 ]] || fail "restart: status $st, want 0; stderr: $(cat "$TMP/err")"
grep -q "rank 1 (pid [0-9]*) exited with status 5; restarting it (restart 1 of 3)" "$TMP/err" ||
  fail "restart: message: $(cat "$TMP/err")"
grep -qx "\[r1\] up 1 restart=1" <<<"$out" || fail "restart: the restarted rank's output: $out"
grep -qx "\[r0\] up 0 restart=0" <<<"$out" || fail "restart: rank 0 output: $out"
ok "--restart: a failed rank is started again and the run succeeds"

# a rank that always fails is given up after --max-restarts, and the others are stopped
"$d" launch -n 2 --restart all --max-restarts 2 -- sh -c \
  'if [ "$DISTML_RANK" = 1 ]; then exit 4; fi; sleep 30' 2>"$TMP/err"
st=$?
[[ $st == 4 ]] || fail "max restarts: status $st, want 4"
[[ $(grep -c "restarting it" "$TMP/err") == 2 ]] || fail "max restarts: $(cat "$TMP/err")"
grep -q "exited with status 4 after 2 restarts; giving up" "$TMP/err" ||
  fail "max restarts: message: $(cat "$TMP/err")"
ok "--max-restarts: given up after 2 restarts, status of the failure"

# rank 2 is killed; the others go on and the launch succeeds, saying what it lost
out=$("$d" launch -n 3 --continue 2 -- sh -c \
  'if [ "$DISTML_RANK" = 2 ]; then kill -9 $$; fi; sleep 0.3; echo "done $DISTML_RANK"' 2>"$TMP/err")
st=$?
[[ $st == 0 ]] || fail "continue: status $st, want 0; stderr: $(cat "$TMP/err")"
grep -q "rank 2 (pid [0-9]*) killed by signal 9 (Killed); the other 2 ranks go on without it" \
  "$TMP/err" || fail "continue: message: $(cat "$TMP/err")"
grep -q "completed without rank 2" "$TMP/err" || fail "continue: summary: $(cat "$TMP/err")"
grep -qx "\[r0\] done 0" <<<"$out" && grep -qx "\[r1\] done 1" <<<"$out" ||
  fail "continue: the others did not finish: $out"
ok "--continue: the others finish, status 0"

# a rank without a policy still stops everything
expect_fail 3 "rank 0 (pid" "exited with status 3" -- \
  "$d" launch -n 3 --continue 2 -- sh -c 'if [ "$DISTML_RANK" = 0 ]; then exit 3; fi; sleep 30'
expect_fail 2 "--continue 7" -- "$d" launch -n 2 --continue 7 -- true
# distml tune: a farm worker killed mid-search (with its trial) does not stop the search; its
# trial goes to the other worker and every trial has a result
"$d" gen dense --rows 3000 --dim 20 --classes 4 --seed 2 --out "$TMP/d.svm" --test-rows 1000 \
  --test-out "$TMP/t.svm" 2>/dev/null || fail "gen dense"
"$d" tune -n 2 --data "$TMP/d.svm" --test "$TMP/t.svm" --lr 0.001,0.002,0.005,0.01,0.02,0.05 \
  --epochs 40 --json >"$TMP/tune.json" 2>"$TMP/tune.err" &
job=$!
victim=""
for _ in $(seq 200); do
  for p in $(pgrep -P $job); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "DISTML_RANK=2"; then victim=$p; fi
  done
  [[ -n $victim ]] && break
  sleep 0.05
done
sleep 1
[[ -n $victim ]] && kill -9 -- "-$victim" || fail "tune: no farm worker rank 2 to kill"
wait $job
st=$?
[[ $st == 0 ]] || fail "tune with a dead worker: status $st; $(cat "$TMP/tune.err")"
grep -q "rank 2 (pid $victim) killed by signal 9 (Killed); the other 2 ranks go on without it" \
  "$TMP/tune.err" || fail "tune: no continue message: $(cat "$TMP/tune.err")"
python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['trials']; sys.exit(0 if len(t)==6 and all('test_accuracy' in x for x in t) else 1)" \
  "$TMP/tune.json" && ok "tune: a dead farm worker does not stop the search; 6 of 6 trials done" ||
  fail "tune results: $(cat "$TMP/tune.json")"
finish
