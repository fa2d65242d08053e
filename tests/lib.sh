# Helpers for the shell tests: a temp dir removed at exit, and assertions that say what failed.
set -uo pipefail
: "${DISTML:?the path of the distml binary}"
TMP=$(mktemp -d /tmp/distml-test.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }
# expect_fail STATUS TEXT... -- CMD ARGS: CMD exits with STATUS and its stderr contains each TEXT.
expect_fail() {
  local want=$1
  shift
  local texts=()
  while [[ $1 != -- ]]; do texts+=("$1"); shift; done
  shift
  local err status
  err=$("$@" 2>&1 >/dev/null)
  status=$?
  if [[ $status -ne $want ]]; then
    fail "'$*' exited $status, expected $want; stderr: $err"
    return
  fi
  for t in "${texts[@]}"; do
    if [[ $err != *"$t"* ]]; then
      fail "'$*': stderr lacks '$t'; stderr: $err"
      return
    fi
  done
  ok "$* -> $want: ${err%%$'\n'*}"
}
# json_field FIELD: reads the last line of stdin as JSON and prints FIELD.
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
# ge A B: A >= B as floats.
ge() { python3 -c "import sys; sys.exit(0 if float('$1') >= float('$2') else 1)"; }
finish() {
  if [[ $fails -ne 0 ]]; then
    echo "$fails check(s) failed" >&2
    exit 1
  fi
  echo "all checks passed"
}
