#!/usr/bin/env bash
# Parameter-server recovery through the CLI (issue 5, "Must show"): `distml train --strategy ps
# -n 2 --servers 2 --checkpoint DIR` with a server SIGKILLed mid-run (rank 1, and rank 0, which is
# also the job's coordinator) -- the launcher restarts it, it reloads its checkpoint, the job
# re-forms, training completes with a sound AUC and the lost pushes are reported; servers
# checkpoint by clocks when asked to; and a worker SIGKILLed under ASP (and under BSP) -- the
# others finish, the run succeeds and says it went on without that worker. Processes are killed
# by the pids the launcher announces.
source "${DISTML_SRC:?}/tests/lib.sh"
d="$DISTML"
"$d" gen sparse --rows 40000 --features 100000 --nnz 20 --seed 5 --out "$TMP/train.svm" \
  --test-rows 10000 --test-out "$TMP/test.svm" 2>/dev/null || fail "gen failed"
common=(--model logreg --data "$TMP/train.svm" --test "$TMP/test.svm" --features 100000
  --batch 64 --json)

# pid_of RANK ERRFILE: the pid the launcher announced for RANK (waits for the line)
pid_of() {
  local p=""
  for _ in $(seq 200); do
    p=$(grep -o "rank $1 of 4 role [a-z]* pid [0-9]*" "$2" 2>/dev/null | head -1 | awk '{print $NF}')
    [[ -n $p ]] && break
    sleep 0.05
  done
  echo "$p"
}
# kill_and_wait PID JOB WHAT ERRFILE: SIGKILL one rank; the job must still end with status 0.
kill_and_wait() {
  kill -9 "$1" || fail "$3 (pid $1) was not running to be killed"
  wait "$2"
  local st=$?
  [[ $st == 0 ]] || fail "$3 killed: job status $st; stderr: $(tail -20 "$4")"
}

# 1. a server dies (rank 1, then rank 0: the coordinator); it is restarted from its checkpoint,
# written every second (rank 1) or every 20 clocks (rank 0: then the 2 workers redo at most the
# 20 iterations since, and the one each may have had in flight)
for v in 1 0; do
  rm -rf "$TMP/ck"
  every=1
  [[ $v == 0 ]] && every=20clocks
  "$d" train --strategy ps -n 2 --servers 2 --sync bsp "${common[@]}" --epochs 15 \
    --checkpoint "$TMP/ck" --checkpoint-every $every >"$TMP/s.json" 2>"$TMP/s.err" &
  job=$!
  for _ in $(seq 600); do [[ -f $TMP/ck/ps-server-$v.safetensors ]] && break; sleep 0.05; done
  [[ -f $TMP/ck/ps-server-$v.safetensors ]] || fail "server $v wrote no checkpoint: $(cat "$TMP/s.err")"
  sleep 0.3
  victim=$(pid_of $v "$TMP/s.err")
  kill_and_wait "$victim" $job "server $v" "$TMP/s.err"
  grep -q "rank $v (pid $victim) killed by signal 9 (Killed); restarting it (restart 1 of 3)" \
    "$TMP/s.err" || fail "no restart message: $(cat "$TMP/s.err")"
  grep -q "ps server $v: restarted from .*ps-server-$v.safetensors" "$TMP/s.err" ||
    fail "the restarted server $v did not load its checkpoint"
  lost=$(grep -o "ps server $v: restarted from its checkpoint .*: [0-9]* acknowledged pushes lost" \
    "$TMP/s.err" | grep -o "[0-9]* acknowledged" | awk '{print $1}')
  [[ -n $lost ]] || fail "the lost pushes were not reported: $(cat "$TMP/s.err")"
  redo=$(grep -o "[0-9]* worker iterations since the checkpoint" "$TMP/s.err" | awk '{print $1}')
  [[ $every == 1 || ( -n $redo && $redo -le 44 ) ]] ||
    fail "server $v checkpointing every 20 clocks: '$redo' iterations to redo: $(grep 'ps server' "$TMP/s.err")"
  grep -q "ps worker 2: re-formed the job" "$TMP/s.err" && grep -q "ps worker 3: re-formed the job" \
    "$TMP/s.err" || fail "the workers did not re-form"
  auc=$(json_field test_auc <"$TMP/s.json")
  ge "$auc" 0.70 && ok "server $v killed and restarted (checkpoints every $every): run completes, AUC $auc, $lost pushes lost, ${redo:-?} iterations redone" ||
    fail "AUC $auc after server $v's restart"
done

# 2. checkpoints by clocks (--checkpoint-every Nclocks) rather than seconds: with 2 x 313
# iterations per worker, every 20 clocks makes at least 20; a run checkpointing every 1000 s none
n_ck() {
  rm -rf "$TMP/ckc"
  "$d" train --strategy ps -n 2 --servers 1 "${common[@]}" --epochs 2 --checkpoint "$TMP/ckc" \
    --checkpoint-every "$1" 2>&1 >/dev/null | grep -o "[0-9]* checkpoints" | awk '{print $1}'
}
by_time=$(n_ck 1000)
by_clocks=$(n_ck 20clocks)
[[ -n $by_clocks && $by_clocks -ge 20 && -f $TMP/ckc/ps-server-0.safetensors && $by_time == 0 ]] &&
  ok "--checkpoint-every 20clocks: $by_clocks checkpoints (every 1000 s: $by_time)" ||
  fail "--checkpoint-every 20clocks: '$by_clocks' checkpoints, every 1000 s: '$by_time'"

# 3. a worker dies under ASP, and under BSP: the others finish
for sync in asp bsp; do
  "$d" train --strategy ps -n 3 --servers 1 --sync $sync "${common[@]}" --epochs 12 \
    >"$TMP/w.json" 2>"$TMP/w.err" &
  job=$!
  victim=$(pid_of 3 "$TMP/w.err")
  for _ in $(seq 600); do grep -q "rows x" "$TMP/w.err" && break; sleep 0.05; done
  sleep 0.5
  kill_and_wait "$victim" $job "$sync: worker 3" "$TMP/w.err"
  grep -q "rank 3 (pid $victim) killed by signal 9 (Killed); the other 3 ranks go on without it" \
    "$TMP/w.err" || fail "$sync: no continue message: $(cat "$TMP/w.err")"
  grep -q "completed without rank 3" "$TMP/w.err" || fail "$sync: no summary"
  grep -q "ps server 0: 1 worker died; training went on without it" "$TMP/w.err" ||
    fail "$sync: the server did not report the dead worker: $(cat "$TMP/w.err")"
  auc=$(json_field test_auc <"$TMP/w.json")
  ge "$auc" 0.70 && ok "$sync: worker killed, the run completes (AUC $auc)" ||
    fail "$sync: AUC $auc after losing a worker"
done
finish
