#!/bin/sh
# bench/run.sh BUILD_DIR [quick|full] — runs the benchmark workloads of issue 7, each in a
# fresh process with a fresh database in a temp directory, and prints the machine, every
# workload's lines (one `RESULT {json}` each) and a summary table.
#
#   make bench        quick profile (under 2 minutes): w1 2000/10000, seq 200, w2 2000/20000,
#                     park 100000, replay 1000, and w1 10000 + seq 200 in `normal` durability;
#                     w1 10000 and seq 200 (full) three times each, the summary shows the median
#   make bench-full   the same plus park 1000000 (takes several minutes to set up)
#
# Environment: WFBENCH_TMP (where temp directories are made; default $TMPDIR or /tmp),
# WFBENCH_LOG (also write the whole output to this file), WFBENCH_STRICT=1 (exit 1 when a
# target is missed, not only when a workload fails to verify).
# Exit status: 0 if every workload ran and verified its result, 1 otherwise.
set -u

BUILD=${1:-build}
PROFILE=${2:-quick}
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=$BUILD/bench/wfbench
TMPBASE=${WFBENCH_TMP:-${TMPDIR:-/tmp}}

if [ ! -x "$BIN" ]; then
  echo "bench/run.sh: $BIN not found (run 'make build' first)" >&2
  exit 2
fi
case $PROFILE in quick|full) ;; *) echo "usage: bench/run.sh BUILD_DIR [quick|full]" >&2; exit 2 ;; esac

LOG=$(mktemp "${TMPDIR:-/tmp}/wfbench-log.XXXXXX")
trap 'rm -f "$LOG" "$LOG.res" "$LOG.sum"' EXIT INT TERM

say() { printf '%s\n' "$*" | tee -a "$LOG"; }

# ---- the machine, once ----------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: *//')
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)
fs=$(df -PT "$TMPBASE" 2>/dev/null | awk 'NR == 2 {print $2}')
dev=$(df -PT "$TMPBASE" 2>/dev/null | awk 'NR == 2 {print $1}')
mnt=$(df -PT "$TMPBASE" 2>/dev/null | awk 'NR == 2 {print $7}')
mopts=$(awk -v m="$mnt" '$2 == m {o = $4} END {print o}' /proc/mounts 2>/dev/null)
rev=$(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$HERE/.." status --porcelain -- host lua 2>/dev/null)" ]; then rev="$rev+local changes"; fi
say "== wfhost benchmarks ($PROFILE profile) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "machine: nproc $(nproc), CPU ${cpu:-unknown}, memory $((${mem_kb:-0} / 1024)) MB, kernel $(uname -srm)"
say "temp dir: $TMPBASE on $fs ($dev, mounted at $mnt, $mopts)"
say "versions: wfhost $rev, SQLite $(pkg-config --modversion sqlite3 2>/dev/null), libuv $(pkg-config --modversion libuv 2>/dev/null), Lua $(pkg-config --modversion lua5.4 2>/dev/null), build $(awk -F= '/^CMAKE_BUILD_TYPE/ {print $2}' "$BUILD/CMakeCache.txt" 2>/dev/null)"
say "MACHINE {\"nproc\":$(nproc),\"cpu\":\"$cpu\",\"mem_mb\":$((${mem_kb:-0} / 1024)),\"kernel\":\"$(uname -r)\",\"fs\":\"$fs\",\"tmp\":\"$TMPBASE\",\"rev\":\"$rev\"}"

# ---- the workloads, one process each ---------------------------------------------------------
status=0
run() {
  say ""
  "$BIN" --tmp "$TMPBASE" "$@" 2>&1 | tee -a "$LOG"
  # POSIX sh has no PIPESTATUS: a workload that fails prints no RESULT, or "verified":false.
}

start=$(date +%s)
# The shared VM varies by 15-30% from run to run: the CPU-bound w1 and the fsync-bound seq run
# three times each, and the summary shows the median run with the range.
run w1 2000
run w1 10000
run w1 10000
run w1 10000
run seq 200
run seq 200
run seq 200
run w2 2000
run w2 20000
run park 100000
run replay 1000
run --durability normal w1 10000
run --durability normal seq 200
if [ "$PROFILE" = full ]; then
  run park 1000000
fi
expected=13
[ "$PROFILE" = full ] && expected=14

# ---- summary ---------------------------------------------------------------------------------
say ""
say "== summary ($PROFILE profile, $(($(date +%s) - start)) s)"
grep '^RESULT ' "$LOG" > "$LOG.res"
lua5.4 "$HERE/summary.lua" < "$LOG.res" > "$LOG.sum"
cat "$LOG.sum"
cat "$LOG.sum" >> "$LOG"
got=$(grep -c '^RESULT ' "$LOG.res")
if [ "$got" -ne "$expected" ]; then
  echo "bench/run.sh: $((expected - got)) workload(s) printed no RESULT line (crashed?)"
  status=1
fi
if grep -q '"verified":false' "$LOG.res"; then status=1; fi
if [ "${WFBENCH_STRICT:-0}" = 1 ] && grep -q '"met":false' "$LOG.res"; then status=1; fi
if [ -n "${WFBENCH_LOG:-}" ]; then cp "$LOG" "$WFBENCH_LOG"; fi
exit $status
