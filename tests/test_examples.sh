#!/usr/bin/env bash
# The examples build against the public API and do what they say: an all-reduce over 3 ranks and
# a task farm with a master and 2 workers, both started with `distml launch`.
source "$(dirname "$0")/lib.sh"
: "${DISTML_BUILD:?}"
out=$("$DISTML" launch -n 3 -- "$DISTML_BUILD/example_allreduce" 2>&1)
[[ $(grep -c "sum 6, 0 wrong" <<<"$out") -eq 3 ]] && ok "example_allreduce: 3 ranks agree" || fail "example_allreduce: $out"
out=$("$DISTML" launch -n 3 -- "$DISTML_BUILD/example_farm" 2>&1)
grep -q "= 328350 (expected 328350)" <<<"$out" && ok "example_farm: all 100 results" || fail "example_farm: $out"
finish
