#!/usr/bin/env bash
# test-labels: slow mpi
# Data-parallel training under mpirun with the mpi backend: the same run as `distml train -n 2`
# over tcp reaches the same accuracy -- bitwise the same model, since the collectives run the same
# algorithm over either transport. Parameter servers under mpirun: the first S ranks serve, the
# others train, to the AUC of the same run over tcp.
source "$(dirname "$0")/lib.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
common=(--model mlp --hidden 256 --data fashion-mnist --epochs 10 --json --quiet)
tcp=$("$DISTML" train -n 2 "${common[@]}" --save "$TMP/tcp.safetensors")
mpi=$(timeout 600 mpirun -np 2 --oversubscribe "$DISTML" train --backend mpi "${common[@]}" --save "$TMP/mpi.safetensors")
ta=$(json_field test_accuracy <<<"$tcp")
ma=$(json_field test_accuracy <<<"$mpi")
w=$(json_field workers <<<"$mpi")
[[ $w == 2 ]] && ok "mpirun: 2 workers" || fail "mpirun run reported $w workers"
ge "$ma" 0.88 && ok "mpi accuracy $ma >= 0.88" || fail "mpi accuracy $ma < 0.88"
[[ $ma == "$ta" ]] && ok "mpi accuracy $ma == tcp accuracy $ta" || fail "mpi $ma vs tcp $ta"
cmp -s "$TMP/tcp.safetensors" "$TMP/mpi.safetensors" && ok "bitwise-identical models over tcp and mpi" \
  || fail "models differ between tcp and mpi"

# --strategy ps under mpirun: 3 ranks, --servers 1: rank 0 serves, ranks 1 and 2 train
"$DISTML" gen sparse --rows 20000 --features 100000 --nnz 20 --seed 3 --out "$TMP/train.svm" \
  --test-rows 5000 --test-out "$TMP/test.svm" 2>/dev/null || fail "gen failed"
ps=(--strategy ps --servers 1 --model logreg --data "$TMP/train.svm" --test "$TMP/test.svm"
  --features 100000 --epochs 2 --json)
tcp=$("$DISTML" train -n 2 "${ps[@]}" --quiet)
mpi=$(timeout 300 mpirun -np 3 --oversubscribe "$DISTML" train --backend mpi "${ps[@]}" 2>"$TMP/ps.err")
ta=$(json_field test_auc <<<"$tcp")
ma=$(json_field test_auc <<<"$mpi")
w=$(json_field workers <<<"$mpi")
s=$(json_field servers <<<"$mpi")
[[ $w == 2 && $s == 1 ]] && ok "ps under mpirun: 2 workers, 1 server" || fail "ps under mpirun: $w workers, $s servers"
grep -q "^\[distml r0 INFO\] ps server 0:" "$TMP/ps.err" && ok "ps under mpirun: rank 0 is the server" \
  || fail "rank 0 did not report as ps server 0: $(grep 'ps server' "$TMP/ps.err")"
python3 -c "import sys; sys.exit(0 if abs($ma - $ta) <= 0.01 else 1)" \
  && ok "ps under mpirun: AUC $ma, over tcp $ta" || fail "ps under mpirun: AUC $ma vs tcp $ta"
finish
