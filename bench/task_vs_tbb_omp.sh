#!/usr/bin/env bash
# fib(N) with one task per call, no cutoff, side by side: distml task groups, oneTBB task_group
# (Debian libtbb-dev) and OpenMP tasks (gcc -fopenmp, libgomp). Builds the three programs with
# the same compiler flags into a temporary directory, then runs them in alternating order for
# ROUNDS rounds (each program reports its best of REPS runs per round) and prints the median of
# the rounds per runtime and the ratios. It compares; it does not gate anything.
#
# usage: bench/task_vs_tbb_omp.sh [N=30] [THREADS=2] [ROUNDS=7] [REPS=3]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-30}
threads=${2:-2}
rounds=${3:-7}
reps=${4:-3}
cflags=(-O2 -g -fno-omit-frame-pointer)

[[ -f /usr/include/oneapi/tbb/task_group.h ]] || {
  echo "task_vs_tbb_omp: oneTBB headers missing: apt-get install libtbb-dev" >&2
  exit 1
}
work=$(mktemp -d /tmp/task_vs_tbb_omp.XXXXXX)
trap 'rm -rf "$work"' EXIT

# distml: the task layer and core, compiled straight from the sources with the same flags as the
# peers (no dependence on a build directory or on the other layers).
mapfile -t lib_srcs < <(ls "$src"/src/core/*.c "$src"/src/task/*.c | grep -v -e '_test\.c$' -e '/farm\.c$') # the farm needs comm
gcc -std=c11 -D_GNU_SOURCE -DDISTML_VERSION=\"bench\" "${cflags[@]}" -I"$src/include" -I"$src/src" \
  "$src/bench/task_fib_distml.c" "${lib_srcs[@]}" -o "$work/distml" -lpthread -lm
g++ -std=c++17 "${cflags[@]}" "$src/bench/task_fib_tbb.cpp" -o "$work/tbb" -ltbb -lpthread
gcc -std=c11 "${cflags[@]}" -fopenmp "$src/bench/task_fib_omp.c" -o "$work/omp"

echo "fib($n), $threads threads, $rounds rounds x best of $reps; $(nproc) CPUs, load: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A times
runtimes=(distml tbb omp)
for ((r = 0; r < rounds; r++)); do
  line="round $r:"
  for ((k = 0; k < 3; k++)); do
    rt=${runtimes[$(((r + k) % 3))]} # rotate the order every round
    out=$("$work/$rt" "$n" "$threads" "$reps")
    t=$(awk '{print $3}' <<<"$out")
    res=$(awk '{print $5}' <<<"$out")
    times[$rt]+="$t "
    line+=" $rt $t"
    results[$k]=$res
  done
  [[ ${results[0]} == "${results[1]}" && ${results[1]} == "${results[2]}" ]] || {
    echo "task_vs_tbb_omp: results differ: ${results[*]}" >&2
    exit 1
  }
  echo "$line"
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
md=$(median "${times[distml]}")
mt=$(median "${times[tbb]}")
mo=$(median "${times[omp]}")
printf '%-8s %12s %12s\n' runtime median_s min_s
for rt in "${runtimes[@]}"; do
  printf '%-8s %12s %12s\n' "$rt" "$(median "${times[$rt]}")" "$(tr ' ' '\n' <<<"${times[$rt]}" | grep -v '^$' | sort -g | head -1)"
done
awk -v d="$md" -v t="$mt" -v o="$mo" 'BEGIN {
  printf "distml / tbb = %.2f (goal <= 1.2)\ndistml / omp = %.2f (goal < 1)\n", d / t, d / o }'
