#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this): set-up, a clang-format check,
# then four builds, each with its CTest run:
#   release   every test, including training on Fashion-MNIST
#   asan      AddressSanitizer+UndefinedBehaviorSanitizer, every test but the "slow" ones and the
#             install check (a program linked against the installed library has no ASan runtime)
#   tsan      ThreadSanitizer, the tests labelled "tsan" (threaded code)
#   fuzz      each libFuzzer target for a short, bounded time on its corpus (clang)
# Ends with one line "N passed, N failed". Exit status is non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/setup.sh || exit 1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# OpenMPI in a container: no shared-memory CMA across the sandbox, keep to what works everywhere.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export LSAN_OPTIONS=suppressions=$root/scripts/lsan.supp:print_suppressions=0
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$root/scripts/tsan.supp

passed=0
failed=0
stage() { # name builddir ctest-args -- cmake-args
  local name=$1 dir=$2
  shift 2
  local ctest_args=()
  while [[ $# -gt 0 && $1 != -- ]]; do ctest_args+=("$1"); shift; done
  shift
  echo "=== $name: build ===" >&2
  if ! scripts/build.sh "$dir" "$@" >"$dir.build.log" 2>&1; then
    tail -n 60 "$dir.build.log" >&2
    echo "=== $name: BUILD FAILED ===" >&2
    failed=$((failed + 1))
    return
  fi
  echo "=== $name: test ===" >&2
  (cd "$dir" && ctest --output-on-failure --timeout 900 "${ctest_args[@]}") | tee "$dir.ctest.log"
  local line
  line=$(grep -E '[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$dir.ctest.log" | tail -n 1)
  if [[ -z $line ]]; then
    if grep -q 'No tests were found' "$dir.ctest.log"; then
      echo "=== $name: no tests ===" >&2
    else
      failed=$((failed + 1))
    fi
    return
  fi
  local nf total
  nf=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$line")
  passed=$((passed + total - nf))
  failed=$((failed + nf))
}

# Formatting: .clang-format decides whitespace; every C/C++ file must already follow it.
echo "=== format: clang-format check ===" >&2
if clang-format --dry-run --Werror $(git ls-files '*.c' '*.h' '*.cpp') >format.log 2>&1; then
  passed=$((passed + 1))
else
  head -n 40 format.log >&2
  echo "=== format: files differ from .clang-format (run clang-format -i on them) ===" >&2
  failed=$((failed + 1))
fi

stage release build -j2 --
stage asan build-asan -j2 -LE 'slow|install' -- -DDISTML_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
stage tsan build-tsan -j2 -L tsan -- -DDISTML_TSAN=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDISTML_MPI=OFF
CC=clang stage fuzz build-fuzz -j2 -L fuzz -- -DDISTML_FUZZ=ON -DDISTML_TESTS=OFF -DDISTML_MPI=OFF

echo "suite: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
