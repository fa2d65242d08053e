#!/usr/bin/env bash
# test-labels: slow mpi
# Data-parallel training under mpirun with the mpi backend: the same run as `distml train -n 2`
# over tcp reaches the same accuracy -- bitwise the same model, since the collectives run the same
# algorithm over either transport.
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
finish
