#!/usr/bin/env bash
# The collectives' grid (tests/test_coll_grid.c, one process per rank) under mpirun on the mpi
# backend: ranks 1, 2, 3, 4, 5, 8 (oversubscribed on this machine). Needs OpenMPI and a build
# with the mpi backend; it fails (it does not skip) when either is missing.
# test-labels: mpi coll
set -euo pipefail
grid="${DISTML_BUILD:?}/test_coll_grid"
[ -x "$grid" ] || { echo "test_coll_mpi: $grid not built" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "test_coll_mpi: mpirun not found" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export DISTML_BACKEND=mpi DISTML_TIMEOUT_MS=60000
# Under AddressSanitizer: OpenMPI unloads its plugins at MPI_Finalize, so their allocations are
# reported as leaks from unknown modules that no suppression can name. Leaks of distml's own
# collectives are checked by test_coll_grid on tcp (same code above the backend).
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
for p in 1 2 3 4 5 8; do
  # Loopback only; shared memory between the ranks as OpenMPI chooses.
  timeout 300 mpirun --oversubscribe -n "$p" --mca oob_tcp_if_include lo --mca btl self,vader,tcp \
    --mca btl_tcp_if_include lo "$grid"
  echo "mpi world of $p ranks: ok"
done
echo "test_coll_mpi: ok"
