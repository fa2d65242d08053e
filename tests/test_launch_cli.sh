#!/usr/bin/env bash
# `distml launch` and `distml bench` through the real binary ($DISTML): rank prefixes, a failing
# rank's status and message, --help, usage errors, and a 2-rank all-reduce benchmark whose
# JSON lines have the keys of issue 3 and no wrong element.
# test-labels: launch
set -uo pipefail
d="${DISTML:?}"
fail() { echo "test_launch_cli: FAIL: $*" >&2; exit 1; }
tmp="$(mktemp -d /tmp/distml-launch-cli.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT

"$d" launch --help | grep -q "usage: distml launch" || fail "launch --help"
out="$("$d" launch -n 3 -- sh -c 'echo "hi $DISTML_RANK/$DISTML_WORLD_SIZE"' 2>"$tmp/err")" || fail "launch -n 3 exited $?"
for r in 0 1 2; do grep -qx "\[r$r\] hi $r/3" <<<"$out" || fail "no '[r$r] hi $r/3' in: $out"; done

"$d" launch -n 2 -- sh -c 'if [ $DISTML_RANK = 1 ]; then exit 7; fi; sleep 20' 2>"$tmp/err"
st=$?
[ "$st" = 7 ] || fail "failing rank: status $st, want 7"
grep -q "rank 1 (pid [0-9]*) exited with status 7" "$tmp/err" || fail "message: $(cat "$tmp/err")"

# A rank killed by a signal just after another exited non-zero (as a peer's link to a killed rank
# breaks before the killed rank is reaped) is reported as the cause, the exit beside it.
"$d" launch -n 2 -- sh -c 'if [ $DISTML_RANK = 1 ]; then sleep 0.05; kill -9 $$; fi; exit 1' 2>"$tmp/err"
st=$?
[ "$st" = 137 ] || fail "killed rank after an exit: status $st, want 137: $(cat "$tmp/err")"
grep -q "failed: rank 1 (pid [0-9]*) killed by signal 9" "$tmp/err" || fail "cause: $(cat "$tmp/err")"
grep -q "rank 0 (pid [0-9]*) exited with status 1 too" "$tmp/err" || fail "the exit: $(cat "$tmp/err")"

"$d" launch -n x -- true 2>"$tmp/err"
st=$?
[ "$st" = 2 ] || fail "bad -n: status $st, want 2"
grep -q -- "-n" "$tmp/err" || fail "bad -n message: $(cat "$tmp/err")"

"$d" bench allreduce -n 2 --sizes 8,4K,1M --iters 3 --warmup 1 --json >"$tmp/bench" 2>"$tmp/err" ||
  fail "bench exited $?: $(cat "$tmp/err")"
[ "$(wc -l <"$tmp/bench")" = 3 ] || fail "bench: want 3 lines: $(cat "$tmp/bench")"
python3 - "$tmp/bench" <<'PY' || fail "bench json: $(cat "$tmp/bench")"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["bytes"] for r in rows] == [8, 4096, 1048576], rows
for r in rows:
    assert set(r) >= {"bytes", "ranks", "algo", "time_us", "algbw_GBps", "busbw_GBps", "wrong"}, r
    assert r["ranks"] == 2 and r["wrong"] == 0 and r["time_us"] > 0, r
    assert abs(r["busbw_GBps"] - r["algbw_GBps"]) <= 1e-6 * max(1, r["algbw_GBps"]), r  # 2(n-1)/n = 1
PY
# Ranks of one machine copy large messages out of each other's memory (CMA), unless told not to;
# either way the results are right.
DISTML_LOG=debug "$d" bench allreduce -n 2 --sizes 1M --iters 2 --warmup 1 --json >"$tmp/bench" 2>"$tmp/err" ||
  fail "bench (CMA) exited $?: $(cat "$tmp/err")"
grep -q "go by CMA" "$tmp/err" || fail "no rank uses CMA on this machine: $(cat "$tmp/err")"
grep -q '"wrong":0' "$tmp/bench" || fail "bench (CMA) wrong results: $(cat "$tmp/bench")"
DISTML_CMA=0 DISTML_LOG=debug "$d" bench allreduce -n 2 --sizes 1M --iters 2 --warmup 1 --json >"$tmp/bench" 2>"$tmp/err" ||
  fail "bench (no CMA) exited $?: $(cat "$tmp/err")"
! grep -q "go by CMA" "$tmp/err" || fail "DISTML_CMA=0 still uses CMA"
grep -q '"wrong":0' "$tmp/bench" || fail "bench (no CMA) wrong results: $(cat "$tmp/bench")"
DISTML_CMA=2 "$d" bench allreduce -n 2 --sizes 8 2>"$tmp/err"
[ $? != 0 ] && grep -q "DISTML_CMA" "$tmp/err" || fail "bad DISTML_CMA not refused: $(cat "$tmp/err")"
"$d" bench allreduce --sizes 12Q 2>"$tmp/err"
[ $? = 2 ] || fail "bench bad size: want status 2"
grep -q "12Q" "$tmp/err" || fail "bench bad size message: $(cat "$tmp/err")"
echo "test_launch_cli: ok"
