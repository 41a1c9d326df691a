#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# fault_gpu.sh — the fault matrix's GPU rows: daemons on the cuda
# backend + NCCL, one GPU per rank, and one rank failing inside a step.
#   fault_gpu.sh MPIEXEC BINDIR [NP]
# Case 1, hung rank (SIGSTOP): the survivors are inside an NCCL collective;
#   the heartbeats (--liveness-timeout) must name it and every daemon exit 3,
#   mpirun must end the group, and the client must get an error.
# Case 2, killed rank (SIGKILL): the group must end (no survivor left waiting
#   in NCCL) and the client must get an error, within a bounded time.
# Prints the measured time from the fault to the end of the group.
# Exit 77 with fewer than 2 GPUs.
set -u
MPIEXEC=$1 BIN=$2
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "${ngpu:-0}" -ge 2 ] || { echo "fewer than 2 GPUs: skip"; exit 77; }
NP=${3:-$ngpu}
[ "$NP" -le "$ngpu" ] || NP=$ngpu
T=$(mktemp -d /tmp/epmoe-fault.XXXXXX)
MP=""
fail() { echo "FAIL: $*"; tail -20 "$T/log" 2>/dev/null; exit 1; }
cleanup() { [ -n "$MP" ] && kill -KILL "$MP" 2>/dev/null; pkill -KILL -f "$EPMOED" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
list() { local v=$1 out="" r; for ((r = 0; r < NP; r++)); do out="$out${out:+,}$v"; done; echo "$out"; }

start_group() { # socket dir
  $MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cuda --socket-dir "$1" \
    --step-timeout 3 --step-delay-ms 1500 >"$T/log" 2>&1 &
  MP=$!
  for _ in $(seq 1 300); do "$CTL" health --socket-dir "$1" --quiet >/dev/null 2>&1 && return 0
    kill -0 "$MP" 2>/dev/null || fail "daemons exited before ready"; sleep 0.2; done
  fail "not healthy within 60 s"
}

for sig in STOP KILL; do
  S=$T/s$sig
  start_group "$S"
  victim=$("$CTL" status --socket-dir "$S" --rank 1 --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
  [ -n "$victim" ] || fail "no pid for rank 1"
  "$CTL" forward --socket-dir "$S" --tokens-per-rank "$(list 32)" --random >"$T/fwd" 2>&1 &
  FWD=$!
  sleep 0.7 # every rank is inside its step (delay 1.5 s before the collectives)
  kill -"$sig" "$victim"
  t0=$(date +%s.%N)
  for _ in $(seq 1 300); do kill -0 "$MP" 2>/dev/null || break; sleep 0.1; done
  t1=$(date +%s.%N)
  alive=0
  kill -0 "$MP" 2>/dev/null && alive=1
  [ "$sig" = STOP ] && kill -CONT "$victim" 2>/dev/null
  wait "$FWD"; frc=$?
  [ $alive = 0 ] || fail "SIG$sig of rank 1: group still running 30 s later"
  wait "$MP"; rc=$?; MP=""
  [ $rc != 0 ] || fail "SIG$sig: mpirun exit 0 after a failed rank"
  [ $frc != 0 ] || fail "SIG$sig: the forward reported success: $(cat "$T/fwd")"
  if [ "$sig" = STOP ]; then
    grep -q "exiting 3" "$T/log" || fail "no watchdog line after SIGSTOP"
  fi
  printf 'PASS: SIG%s of rank 1 of %d mid-step on cuda+nccl: group ended %.1f s after the fault (mpirun exit %d), client error: %s\n' \
    "$sig" "$NP" "$(awk "BEGIN{print $t1 - $t0}")" "$rc" "$(tail -1 "$T/fwd")"
done
