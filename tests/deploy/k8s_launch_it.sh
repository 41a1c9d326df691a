#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# k8s_launch_it.sh — deploy/k8s/epmoe-launch.sh (the MPIJob launcher's
# command) run for real on this host, standing in for one worker pod with two
# slots (mpirun without the operator's hostfile starts the ranks locally
# instead of over ssh; everything else is the script as the pod runs it):
#   1. it creates the readiness file only once every rank answers HEALTH ok,
#      and a checked FORWARD works through the sockets;
#   2. SIGTERM (pod deletion) drains the group through rank 0's socket: both
#      ranks log "exit 0", the script exits 0 and removes the readiness file;
#   3. it fails fast with a line naming the model when EPMOE_MODEL is missing,
#      and refuses to start without EPMOE_WORKERS.
#   k8s_launch_it.sh SOURCE_DIR BINDIR
set -u
SRC=$1 BIN=$2
LAUNCH=$SRC/deploy/k8s/epmoe-launch.sh
T=$(mktemp -d /tmp/epmoe-k8s.XXXXXX)
LP=""
fail() { echo "FAIL: $*"; echo "--- launcher output (tail)"; tail -30 "$T/out" 2>/dev/null; exit 1; }
cleanup() {
  if [ -n "$LP" ] && kill -0 "$LP" 2>/dev/null; then kill -TERM "$LP"; sleep 2; kill -KILL "$LP" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT
export EPMOE_BIN=$BIN EPMOE_WORKERS=1 EPMOE_SLOTS=2 EPMOE_BACKEND=cpu
export EPMOE_SOCKET_DIR=$T/sock EPMOE_READY_FILE=$T/ready

EPMOE_PRESET=tiny bash "$LAUNCH" >"$T/out" 2>&1 &
LP=$!
for _ in $(seq 1 300); do
  [ -e "$T/ready" ] && break
  kill -0 "$LP" 2>/dev/null || fail "the launcher exited before ready"
  sleep 0.2
done
[ -e "$T/ready" ] || fail "no readiness file within 60 s"
"$BIN/epmoectl" health --all --quiet || fail "readiness file exists but a rank is not healthy"
grep -q 'all 2 ranks ready' "$T/out" || fail "no 'all 2 ranks ready' line"
echo "ok: readiness file created once both ranks were healthy"
"$BIN/epmoectl" forward --all --tokens-per-rank 7,9 --random --check >/dev/null || fail "forward --check"
echo "ok: forward --check through the launcher's group"
mapfile -t pids < <(sed -n 's/.*rank [0-9]* of 2, pid \([0-9]*\).*/\1/p' "$T/out")
[ "${#pids[@]}" = 2 ] || fail "expected 2 'rank r of 2, pid N' lines, got ${#pids[@]}"
for p in "${pids[@]}"; do
  leaked=$(tr '\0' '\n' <"/proc/$p/environ" | grep -E '^EPMOE_(WORKERS|SLOTS|PREFIX|BIN|READY_FILE|READY_TIMEOUT|DRAIN_TIMEOUT)=')
  [ -z "$leaked" ] || fail "the launcher's own settings reached epmoed (pid $p): $leaked"
  tr '\0' '\n' <"/proc/$p/environ" | grep -q '^EPMOE_PRESET=tiny$' || fail "EPMOE_PRESET did not reach epmoed (pid $p)"
done
echo "ok: EPMOE_PRESET reaches the daemons, the launcher's own EPMOE_* settings do not"

kill -TERM "$LP"
for _ in $(seq 1 150); do kill -0 "$LP" 2>/dev/null || break; sleep 0.2; done
kill -0 "$LP" 2>/dev/null && fail "the launcher still runs 30 s after SIGTERM"
wait "$LP"; rc=$?
LP=""
[ "$rc" = 0 ] || fail "the launcher exited $rc after SIGTERM, expected 0 (a clean drain)"
for r in 0 1; do grep -q "r$r/2 .*exit 0" "$T/out" || fail "rank $r did not log 'exit 0'"; done
[ -e "$T/ready" ] && fail "the readiness file outlived the group"
echo "ok: SIGTERM drained the group: both ranks exit 0, launcher exit 0, readiness file removed"

out=$(EPMOE_MODEL=$T/no-model bash "$LAUNCH" 2>&1); rc=$?
[ "$rc" = 2 ] || fail "missing model: exit $rc, expected 2"
grep -q "no readable $T/no-model/config.json" <<<"$out" || fail "missing model: no clear line: $out"
grep -q 'starting' <<<"$out" && fail "missing model: daemons were started anyway"
echo "ok: missing model -> exit 2: $(grep -m1 'no readable' <<<"$out")"
out=$(env -u EPMOE_WORKERS EPMOE_PRESET=tiny bash "$LAUNCH" 2>&1); rc=$?
if [ "$rc" = 0 ] || ! grep -q 'EPMOE_WORKERS' <<<"$out"; then fail "no EPMOE_WORKERS: exit $rc: $out"; fi
echo "ok: refuses to start without EPMOE_WORKERS"
echo PASS
