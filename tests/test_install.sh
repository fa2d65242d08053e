#!/usr/bin/env bash
# test-labels: install
# `cmake --install` into a temporary prefix gives headers, libraries, the command and a
# relocatable distml.pc: a program built with `pkg-config --cflags --libs distml` (shared) and
# statically against libdistml.a (with the private libraries of `pkg-config --static`) links and
# runs.
source "$(dirname "$0")/lib.sh"
: "${DISTML_BUILD:?}" "${DISTML_SRC:?}"
cmake --install "$DISTML_BUILD" --prefix "$TMP/prefix" >/dev/null || fail "cmake --install failed"
export PKG_CONFIG_PATH=$(dirname "$(find "$TMP/prefix" -name distml.pc | head -n 1)")
[[ -x $TMP/prefix/bin/distml ]] && ok "installed bin/distml" || fail "no bin/distml"
if cc "$DISTML_SRC/examples/allreduce.c" $(pkg-config --cflags --libs distml) \
  -Wl,-rpath,"$(pkg-config --variable=libdir distml)" -o "$TMP/shared"; then
  out=$("$DISTML" launch -n 2 -- "$TMP/shared" 2>&1)
  [[ $(grep -c "0 wrong" <<<"$out") -eq 2 ]] && ok "shared build via pkg-config runs" || fail "shared: $out"
else
  fail "cannot build against the installed shared library"
fi
libs=$(pkg-config --libs --static distml)
if cc "$DISTML_SRC/examples/allreduce.c" $(pkg-config --cflags distml) \
  "$(pkg-config --variable=libdir distml)/libdistml.a" ${libs/-ldistml/} -o "$TMP/static"; then
  out=$("$DISTML" launch -n 2 -- "$TMP/static" 2>&1)
  [[ $(grep -c "0 wrong" <<<"$out") -eq 2 ]] && ok "static build via pkg-config runs" || fail "static: $out"
else
  fail "cannot build against the installed static library"
fi
finish
