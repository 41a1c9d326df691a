#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# fault_matrix.sh — the rank-death matrix (label fault): a daemon rank is
# killed (SIGKILL), stopped (SIGSTOP), exits (_exit 0) or aborts (abort()) in
# each phase of its life — idle, rendezvous (joined, before GO), dispatch,
# experts, combine — at NP ranks on the cpu backend, one case at a time. Each
# case asserts that nothing hangs: the client's FORWARD fails within BOUND
# seconds of the fault with an error, every survivor ends within BOUND, each
# survivor's end is an error (the heartbeats' verdict, or the launcher ending
# the job after a rank died), and mpirun exits non-zero.
#   fault_matrix.sh MPIEXEC NP BINDIR [LIVENESS_S [CASES]]
# LIVENESS_S: --liveness-timeout (default: the daemon's default, 5 s); the
# bound is LIVENESS_S + 5 s (a heartbeat period, the watchdog tick, the exit
# and the launcher's teardown): 10 s at the default.
# The fault comes from the daemon's test hook (EPMOE_TEST_FAULT=RANK:PHASE:ACTION,
# daemon/srv_step.c), so the rank is caught inside the phase, not near it.
# The victim rotates over the ranks (the coordinator, rank 0, included).
# CASES: "ACTION:PHASE ..." to run a subset (default: all 20).
set -u
MPIEXEC=$1 NP=$2 BIN=$3 LIVE=${4:-5} CASES=${5:-}
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
BOUND=$(awk -v l="$LIVE" 'BEGIN { print l + 5 }')
T=$(mktemp -d /tmp/epmoe-fault.XXXXXX)
chmod 755 "$T"
MP="" FWD="" VICTIM_PID=""
fail() { echo "FAIL [$case]: $*"; echo "--- daemon log (tail)"; tail -25 "$T/log" 2>/dev/null; exit 1; }
cleanup() {
  [ -n "$VICTIM_PID" ] && kill -CONT "$VICTIM_PID" 2>/dev/null
  [ -n "$FWD" ] && kill -KILL "$FWD" 2>/dev/null
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -KILL "$MP" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
within() { awk -v a="$1" -v b="$(now)" -v l="$2" 'BEGIN { exit !(b - a <= l) }'; }
counts() { local out="" _; for _ in $(seq 1 "$NP"); do out="$out${out:+,}4"; done; echo "$out"; }

actions="kill stop exit abort"
phases="idle rendezvous dispatch experts combine"
[ -n "$CASES" ] || for a in $actions; do for p in $phases; do CASES="$CASES $a:$p"; done; done
n=0 worst=0
for case in $CASES; do
  action=${case%%:*} phase=${case#*:}
  victim=$((n % NP))
  n=$((n + 1))
  S=$T/s$n
  EPMOE_TEST_FAULT="$victim:$phase:$action" $MPIEXEC -np "$NP" --oversubscribe -x EPMOE_TEST_FAULT "$EPMOED" \
    --preset tiny --backend cpu --socket-dir "$S" --liveness-timeout "$LIVE" --step-timeout 30 --warmup-tokens 1 \
    >"$T/log" 2>&1 &
  MP=$!
  up=0
  for _ in $(seq 1 150); do
    "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && { up=1; break; }
    kill -0 "$MP" 2>/dev/null || break
    sleep 0.1
  done
  [ $up = 1 ] || fail "the group did not come up: $(grep -m1 -i fatal "$T/log")"
  VICTIM_PID=$("$CTL" status --socket-dir "$S" --rank "$victim" --json 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
  # idle: the hook fires 0.5 s after ready, with nothing in flight; the
  # client comes after it, into a group with a dead or stopped member
  [ "$phase" = idle ] && sleep 1
  t0=$(now)
  "$CTL" forward --socket-dir "$S" --tokens-per-rank "$(counts)" --timeout 60000 >"$T/client" 2>&1 &
  FWD=$!
  # the client must fail, with an error, within the bound
  while kill -0 "$FWD" 2>/dev/null && within "$t0" "$BOUND"; do sleep 0.1; done
  kill -0 "$FWD" 2>/dev/null && fail "the client still waits $(since "$t0") s after the fault (bound $BOUND s)"
  wait "$FWD"; frc=$?; FWD=""
  t_client=$(since "$t0")
  [ $frc != 0 ] || fail "the client reported success: $(cat "$T/client")"
  grep -q "^epmoectl forward: " "$T/client" || fail "the client printed no error: $(cat "$T/client")"
  # every survivor ends within the bound, and the launcher reports the failure
  while kill -0 "$MP" 2>/dev/null && within "$t0" "$BOUND"; do sleep 0.1; done
  if kill -0 "$MP" 2>/dev/null; then
    left=$(pgrep -P "$MP" -d, 2>/dev/null)
    fail "the group still runs $(since "$t0") s after the fault (processes $left)"
  fi
  wait "$MP"; mrc=$?; MP=""
  t_group=$(since "$t0")
  [ -n "$VICTIM_PID" ] && kill -CONT "$VICTIM_PID" 2>/dev/null
  VICTIM_PID=""
  [ $mrc != 0 ] || fail "mpirun exited 0 after rank $victim's $action"
  grep -q "test hook: rank $victim at $phase: $action" "$T/log" || fail "the fault hook did not fire"
  # each survivor's end is an error: the group-failed verdict, or (a rank
  # that died) the launcher ending the job
  for r in $(seq 0 $((NP - 1))); do
    [ "$r" = "$victim" ] && continue
    grep -qE "r$r/$NP ERROR .*(the group failed|group failed)" "$T/log" && continue
    grep -qE "(exited on signal|returned a non-zero exit code|exiting improperly|terminated|aborted|abort)" "$T/log" &&
      continue
    fail "survivor rank $r reported no error"
  done
  how=$(grep -m1 -oE "the group failed: [^;]*" "$T/log" | head -1)
  [ -n "$how" ] || how="launcher ended the job ($(grep -m1 -oE "exited on signal [0-9]+|returned a non-zero exit code|exiting improperly" "$T/log"))"
  echo "ok: rank $victim $action in $phase: client failed after $t_client s, group ended after $t_group s (exit $mrc); $how"
  worst=$(awk -v a="$worst" -v b="$t_group" 'BEGIN { print (b > a) ? b : a }')
done
echo "PASS: rank-death matrix, $n cases at $NP ranks, liveness $LIVE s; slowest end $worst s (bound $BOUND s)"
