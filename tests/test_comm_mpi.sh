#!/bin/bash
# The communicator's point-to-point tests on the mpi backend: test_comm_p2p (every size, tags out
# of order, recv_alloc from any source, wrong lengths), test_comm_pingpong and the abort check of
# test_comm_fail run as ranks of `mpirun -np 1/2/3` with DISTML_BACKEND=mpi. A missing mpirun
# or a build without MPI is a failure (scripts/setup.sh installs OpenMPI).
# test-labels: mpi
set -euo pipefail
build=${DISTML_BUILD:?DISTML_BUILD must point at the build directory}
p2p=$build/test_comm_p2p
pp=$build/test_comm_pingpong
if ! command -v mpirun >/dev/null; then
  echo "FAIL: mpirun not found (scripts/setup.sh installs openmpi-bin)"
  exit 1
fi
# OpenMPI's plugins allocate memory they never free and are unloaded at exit, before
# LeakSanitizer could even name them: leak checking stays off for these processes only.
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
for b in "$p2p" "$pp" "$build/test_comm_fail"; do
  [ -x "$b" ] || { echo "FAIL: $b not built"; exit 1; }
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Loopback only, and no network probing of other interfaces.
mpiopts=(--oversubscribe --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -x DISTML_BACKEND=mpi
         -x DISTML_TIMEOUT_MS=30000)
if ! out=$(timeout 60 mpirun -np 1 "${mpiopts[@]}" "$p2p" 2>&1); then
  echo "$out"
  echo "FAIL: mpirun -np 1 test_comm_p2p"
  exit 1
fi
grep -q "rank 0: mpi p2p ok" <<<"$out"
for np in 2 3; do
  out=$(timeout 300 mpirun -np $np "${mpiopts[@]}" "$p2p" 2>&1) || { echo "$out"; echo "FAIL: np $np"; exit 1; }
  n=$(grep -c "mpi p2p ok" <<<"$out" || true)
  if [ "$n" != "$np" ]; then
    echo "$out"
    echo "FAIL: $n of $np ranks reported ok"
    exit 1
  fi
  echo "mpi p2p with $np ranks: ok"
done
timeout 120 mpirun -np 2 "${mpiopts[@]}" "$pp" || { echo "FAIL: mpi pingpong"; exit 1; }
echo "mpi pingpong: ok"
# An aborting rank: the other gets its reason instead of hanging.
out=$(timeout 120 mpirun -np 2 "${mpiopts[@]}" "$build/test_comm_fail" 2>&1) || { echo "$out"; echo "FAIL: mpi abort"; exit 1; }
if [ "$(grep -c "mpi abort ok" <<<"$out")" != 2 ]; then
  echo "$out"
  echo "FAIL: mpi abort"
  exit 1
fi
echo "mpi abort: ok"
