#!/usr/bin/env bash
# Farm throughput on trivial tasks: distml's task farm (master + 2 worker processes over the tcp
# communicator on loopback) against Dask distributed (Debian python3-distributed; LocalCluster, 2
# worker processes of 1 thread each), same task count, run alternately ROUNDS times; prints
# each runtime's median tasks/s and the ratio (issue 6 asks for >= 20x).
#
# usage: bench/task_farm_vs_dask.sh [N=5000] [ROUNDS=2]   (DISTML: the distml binary)
# (Dask needs ~3 ms a task here: 5000 tasks x 3 runs x ROUNDS already take a minute or two.)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-5000}
rounds=${2:-2}
distml=${DISTML:-$src/build/distml}
py=${PYTHON:-/usr/bin/python3} # Debian's python, where python3-distributed installs
"$py" -c 'import distributed' 2>/dev/null || {
  echo "task_farm_vs_dask: Dask distributed missing: apt-get install python3-distributed" >&2
  exit 1
}
echo "farm, $n trivial tasks, 2 worker processes; $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
d=()
k=()
for ((r = 0; r < rounds; r++)); do
  a=$("$distml" bench task --only farm --farm-tasks "$n" --reps 3 --json 2>/dev/null | tail -n 1)
  b=$("$py" "$src/bench/task_farm_dask.py" "$n" 3 2>/dev/null | tail -n 1)
  da=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["tasks_per_s"])' "$a")
  db=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["tasks_per_s"])' "$b")
  echo "round $r: distml $da tasks/s, dask $db tasks/s"
  d+=("$da")
  k+=("$db")
done
python3 - "${d[*]}" "${k[*]}" <<'PY'
import statistics, sys
d = [float(x) for x in sys.argv[1].split()]
k = [float(x) for x in sys.argv[2].split()]
md, mk = statistics.median(d), statistics.median(k)
print(f"median tasks/s: distml {md:.0f}, dask {mk:.0f}; distml / dask = {md / mk:.1f}x (goal >= 20x)")
PY
