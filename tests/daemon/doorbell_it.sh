#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# doorbell_it.sh — the host doorbell against 2 daemons on the CPU (label mpi).
#   doorbell_it.sh MPIEXEC BINDIR CHECK
# CHECK: tests/daemon/doorbell_check. Starts the tiny preset (2 layers) on 2
# ranks with a temporary socket dir and runs: doorbell steps against the CPU
# reference (every option, both layers), skipped and stale sequence numbers
# refused naming both numbers, a short `epmoectl bench --doorbell`; then, on
# a group whose steps last 300 ms (--step-delay-ms) and time out after 3 s, a
# client killed mid-step and one killed after ringing one rank, the daemons
# serving the next client each time. Every wait is bounded; the trap kills
# what this script started.
set -u
MPIEXEC=$1 BIN=$2 CHECK=$3
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
T=$(mktemp -d /tmp/epmoe-db.XXXXXX)
MP=""
fail() { echo "FAIL: $*"; echo "--- daemon log (tail)"; tail -30 "$T"/log* 2>/dev/null; exit 1; }
cleanup() {
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -TERM "$MP" 2>/dev/null; sleep 1; kill -KILL "$MP" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT

start() { # start DIR LOG extra-args...
  local dir=$1 log=$2
  shift 2
  $MPIEXEC -np 2 --oversubscribe "$EPMOED" --preset tiny --layers 2 --backend cpu --socket-dir "$dir" --warmup-tokens 1 \
    --max-tokens-per-rank 64 "$@" >"$log" 2>&1 &
  MP=$!
  for _ in $(seq 1 150); do
    "$CTL" health --socket-dir "$dir" --quiet >/dev/null 2>&1 && return 0
    kill -0 "$MP" 2>/dev/null || fail "daemons exited during start-up"
    sleep 0.2
  done
  fail "daemons not healthy within 30 s"
}
stop() { # stop DIR
  "$CTL" shutdown --socket-dir "$1" --rank 0 >/dev/null || fail "shutdown"
  wait "$MP"; local rc=$?
  MP=""
  [ $rc = 0 ] || fail "mpirun exit $rc after SHUTDOWN"
}

start "$T/s1" "$T/log1" --step-timeout 10
out=$(timeout 120 "$CHECK" "$T/s1" steps 2>&1) || fail "doorbell_check steps: $out"
echo "$out"
out=$(timeout 60 "$CTL" bench --socket-dir "$T/s1" --tokens-per-rank 4,4 --doorbell --duration 1 --warmup 5 2>&1) ||
  fail "bench --doorbell: $out"
echo "$out" | grep -q "doorbell (host): .* overhead p50" || fail "bench --doorbell output: $out"
echo "ok: $(echo "$out" | grep 'doorbell (host)')"
"$CTL" forward --socket-dir "$T/s1" --tokens-per-rank 3,4 --check >/dev/null 2>&1 || fail "FORWARD after the doorbells"
for r in 0 1; do
  "$CTL" stats --socket-dir "$T/s1" --rank $r | grep -q "^forwards_in_flight:0" ||
    fail "rank $r: forwards_in_flight is not 0 after every doorbell step (refused ones included) was answered"
done
grep -q "doorbell closed" "$T/log1" || fail "no 'doorbell closed' line after the clients left"
stop "$T/s1"
echo "ok: FORWARDs still pass after the doorbell clients left; SHUTDOWN exit 0"

start "$T/s2" "$T/log2" --step-timeout 3 --step-delay-ms 300
for mode in die-mid-step die-half-rung; do
  out=$(timeout 120 "$CHECK" "$T/s2" $mode 2>&1) || fail "doorbell_check $mode: $out"
  echo "$out"
done
grep -q "not all ranks joined within" "$T/log2" || fail "the half-rung orphan step did not time out: $(grep doorbell "$T/log2" | tail -3)"
"$CTL" health --socket-dir "$T/s2" --quiet || fail "daemons unhealthy after the dead clients"
stop "$T/s2"
echo "PASS: doorbell integration, 2 ranks"
