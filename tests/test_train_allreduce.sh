#!/usr/bin/env bash
# test-labels: slow
# Data-parallel training (issue "Data-parallel training") on Fashion-MNIST: -n 2 and -n 4 reach the
# local run's accuracy; all replicas are bitwise identical after every step; two runs with the
# same seed give bitwise-identical models; a killed worker stops the others with an error naming
# it, and --resume finishes the run.
source "$(dirname "$0")/lib.sh"
common=(--model mlp --hidden 256 --data fashion-mnist --batch 64 --json --quiet)

local_out=$("$DISTML" train "${common[@]}" --epochs 10)
lacc=$(json_field test_accuracy <<<"$local_out")
ok "local accuracy $lacc"
for n in 2 4; do
  out=$("$DISTML" train -n $n "${common[@]}" --epochs 10 --save "$TMP/n$n.safetensors")
  acc=$(json_field test_accuracy <<<"$out")
  python3 -c "import sys; a,l=$acc,$lacc; sys.exit(0 if a >= 0.88 and abs(a-l) <= 0.005 else 1)" \
    && ok "-n $n accuracy $acc (local $lacc)" || fail "-n $n accuracy $acc vs local $lacc (need >= 0.88, within 0.005)"
  w=$(json_field workers <<<"$out")
  [[ $w == "$n" ]] && ok "-n $n ran $w workers" || fail "-n $n reported $w workers"
done

# The communication-saving options train, and their bytes per step are what they should be; the
# trace holds every rank's events: with buckets small enough that the model has more than one,
# the waits for the background all-reduces as well as the last bucket's, run by the trainer.
plain=$("$DISTML" train -n 2 "${common[@]}" --epochs 1)
"$DISTML" train -n 2 "${common[@]}" --epochs 1 --bucket-mb 0.1 --trace "$TMP/trace.json" >/dev/null
pb=$(json_field bytes_per_step <<<"$plain")
ps=$(json_field steps <<<"$plain")
rb=$(json_field ring_bytes_per_step <<<"$plain")
python3 -c "import sys; sys.exit(0 if abs($pb - $rb) <= 0.01 * $rb else 1)" && ok "bytes/step $pb == ring formula $rb"   || fail "bytes/step $pb vs ring formula $rb"
python3 - "$TMP/trace.json" <<'PY' && ok "trace: both ranks, compute and all-reduce events" || fail "bad trace"
import json, sys
ev = json.load(open(sys.argv[1]))["traceEvents"]
pids = {e["pid"] for e in ev if e.get("ph") == "X"}
cats = {e["cat"] for e in ev if e.get("ph") == "X"}
names = {e["name"] for e in ev if e.get("ph") == "X" and e["cat"] == "allreduce"}
sys.exit(0 if pids == {0, 1} and {"compute", "allreduce", "wait"} <= cats and
         {"allreduce b0", "allreduce b1"} <= names else 1)
PY
for v in "--grad-compress fp16|0.5" "--grad-compress bf16|0.5" "--accumulate 4|0.25" "--sync-every 8|0.125"; do
  read -r -a flags <<<"${v%%|*}"
  want=${v#*|}
  out=$("$DISTML" train -n 2 "${common[@]}" --epochs 1 "${flags[@]}")
  acc=$(json_field test_accuracy <<<"$out")
  # Bytes of the whole epoch, so that accumulation (fewer, larger steps) compares fairly.
  b=$(python3 -c "print($(json_field bytes_per_step <<<"$out") * $(json_field steps <<<"$out"))")
  p=$(python3 -c "print($pb * $ps)")
  python3 -c "import sys; a,b,p,w=$acc,$b,$p,$want; sys.exit(0 if a >= 0.80 and abs(b/p - w) <= 0.1*w + 0.01 else 1)" \
    && ok "${flags[*]}: accuracy $acc after 1 epoch, $b bytes sent in the epoch (x$want of plain)" \
    || fail "${flags[*]}: accuracy $acc, $b bytes sent in the epoch vs plain $p (want x$want)"
done

# Replicas identical after every step (the trainer all-gathers a hash of the parameters after
# each step and fails on a difference); determinism across runs.
for run in a b; do
  DISTML_CHECK_REPLICAS=1 "$DISTML" train -n 3 "${common[@]}" --epochs 1 --bucket-mb 0.05 \
    --save "$TMP/det-$run.safetensors" >/dev/null || fail "replica check run $run failed"
done
cmp -s "$TMP/det-a.safetensors" "$TMP/det-b.safetensors" && ok "two runs: bitwise-identical models" \
  || fail "two runs with the same seed differ"

# A killed worker: the others exit non-zero within 30 s, naming it; the launcher reports it.
"$DISTML" train -n 2 "${common[@]}" --epochs 4 --checkpoint "$TMP/ck" >"$TMP/kill.out" 2>"$TMP/kill.err" &
lpid=$!
for _ in $(seq 1 600); do
  [[ -e "$TMP/ck/ckpt-epoch-000001.safetensors" ]] && break
  sleep 0.1
done
victim=$(pgrep -P $lpid | tail -n 1)
if [[ -z $victim ]]; then
  fail "no worker process found under the launcher"
else
  kill -9 "$victim"
  t0=$(date +%s)
  wait $lpid
  status=$?
  dt=$(($(date +%s) - t0))
  [[ $status -ne 0 ]] && ok "launcher exited $status after a worker was killed" || fail "launcher exited 0"
  [[ $dt -le 30 ]] && ok "stopped within ${dt}s" || fail "took ${dt}s to stop"
  grep -q "rank 1" "$TMP/kill.err" && ok "the error names rank 1" || fail "no mention of rank 1: $(tail -5 "$TMP/kill.err")"
  grep -q "killed by signal 9" "$TMP/kill.err" && ok "launcher reports the kill" || fail "launcher did not report the signal: $(tail -5 "$TMP/kill.err")"
  out=$("$DISTML" train -n 2 "${common[@]}" --epochs 4 --checkpoint "$TMP/ck" --resume --save "$TMP/resumed.safetensors")
  r=$(json_field resumed_from_epoch <<<"$out")
  ge "$r" 1 && ok "resumed from epoch $r" || fail "did not resume: $out"
  "$DISTML" train -n 2 "${common[@]}" --epochs 4 --save "$TMP/straight.safetensors" >/dev/null
  cmp -s "$TMP/resumed.safetensors" "$TMP/straight.safetensors" && ok "resumed run == uninterrupted run (bitwise)" \
    || fail "resumed model differs from an uninterrupted run"
  # resumed again with nothing left to train: the same model, evaluated, 4 epochs done
  again=$("$DISTML" train -n 2 "${common[@]}" --epochs 4 --checkpoint "$TMP/ck" --resume 2>/dev/null)
  python3 -c "import json,sys; a=json.loads(sys.argv[1].splitlines()[-1]); b=json.loads(sys.argv[2].splitlines()[-1]); sys.exit(0 if a['epochs']==4 and a['test_accuracy']==b['test_accuracy'] else 1)" "$again" "$out" \
    && ok "resumed with every epoch done: evaluated, epochs 4, the same test accuracy" || fail "resume past the end: $again"
fi
finish
