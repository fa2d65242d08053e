#!/usr/bin/env bash
# `distml bench task` through the command: --json prints one object per measurement with the keys
# of issue 6 and numbers that agree with each other; bad flags are refused with the flag named.
# Small sizes only: this checks the output, it does not measure anything.
source "$(dirname "$0")/lib.sh"

out=$("$DISTML" bench task --threads 2 --fib 18 --reps 1 --farm-tasks 500 --json 2>"$TMP/err")
status=$?
if [[ $status -ne 0 ]]; then
  fail "distml bench task --json exited $status: $(cat "$TMP/err")"
else
  python3 - "$out" <<'EOF' && ok "bench task --json: keys and values consistent" || fail "bench task --json output: $out"
import json, sys
lines = [l for l in sys.argv[1].splitlines() if l.strip()]
seen = set()
for l in lines:
    o = json.loads(l)
    for k in ("bench", "threads", "tasks", "best_s", "tasks_per_s", "ns_per_task"):
        assert k in o, (k, o)
    assert o["threads"] == 2, o
    assert o["best_s"] > 0 and o["ns_per_task"] > 0, o
    # tasks/s and ns/task are two views of one number
    assert abs(o["tasks_per_s"] * o["ns_per_task"] - 1e9) < 1e9 * 1e-6, o
    seen.add(o["bench"])
assert {"spawn", "fib", "unbalanced", "tiny", "pipeline", "farm"} <= seen, seen
fib = [json.loads(l) for l in lines if json.loads(l)["bench"] == "fib"][0]
# fib(18) with one task per call: fib(19) = 4181 tasks
assert fib["tasks"] == 4181, fib
EOF
fi

out=$("$DISTML" bench task --threads 1 --fib 15 --reps 1 --only fib 2>&1)
if [[ $out == *"fib(15) = 610"* ]]; then ok "bench task --only fib: human table"; else fail "human output: $out"; fi

expect_fail 2 "--threads" -- "$DISTML" bench task --threads 0
expect_fail 2 "--fib" -- "$DISTML" bench task --fib x
expect_fail 2 "--only" "nosuch" -- "$DISTML" bench task --only nosuch
expect_fail 2 "--bogus" -- "$DISTML" bench task --bogus
finish
