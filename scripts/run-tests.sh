#!/bin/sh
# Runs every test suite and ends with one line across all of them: "N passed, N failed".
# Exits non-zero if anything failed or a suite could not run.
#   scripts/run-tests.sh BUILD_DIR ASAN_BUILD_DIR
set -u
build=${1:-build}
asan=${2:-build-asan}
passed=0
failed=0
status=0

# ctest prints "NN% tests passed, F tests failed out of T".
run_ctest() {
  label=$1 dir=$2
  echo "== C tests ($label)"
  out=$(cd "$dir" && ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} ctest --output-on-failure 2>&1)
  rc=$?
  printf '%s\n' "$out" | tail -n 40
  line=$(printf '%s\n' "$out" | grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' | tail -n 1)
  if [ -z "$line" ]; then
    echo "ctest ($label) did not report results"
    failed=$((failed + 1)); status=1; return
  fi
  f=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/')
  t=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/')
  passed=$((passed + t - f)); failed=$((failed + f))
  # A runner that failed without counting a failure (a crash after its summary) still counts.
  [ "$rc" -eq 0 ] || { status=1; [ "$f" -gt 0 ] || failed=$((failed + 1)); }
}

run_ctest "default build" "$build"
run_ctest "AddressSanitizer + UndefinedBehaviorSanitizer" "$asan"

# busted prints "S successes / F failures / E errors / P pending : T seconds".
echo "== busted specs"
out=$(LUA_CPATH="$build/lua/?.so;;" lua5.4 "$(command -v busted)" --cpath="$build/lua/?.so" 2>&1)
rc=$?
printf '%s\n' "$out" | tail -n 60
line=$(printf '%s\n' "$out" | grep -E '[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors?' | tail -n 1)
if [ -z "$line" ]; then
  echo "busted did not report results"
  failed=$((failed + 1)); status=1
else
  s=$(echo "$line" | sed -E 's/^([0-9]+) success.*/\1/')
  f=$(echo "$line" | sed -E 's/.* ([0-9]+) failures? .*/\1/')
  e=$(echo "$line" | sed -E 's/.* ([0-9]+) errors? .*/\1/')
  passed=$((passed + s)); failed=$((failed + f + e))
  [ "$rc" -eq 0 ] || { status=1; [ $((f + e)) -gt 0 ] || failed=$((failed + 1)); }
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] || status=1
exit $status
