#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# notify_it.sh — epmoed speaks systemd's notify protocol as the unit in
# deploy/systemd expects (Type=notify, NotifyAccess=all, WatchdogSec=), checked
# against a stand-in notification socket (notify_recv.py), the way systemd
# would see it:
#   - STATUS= while loading, then exactly one READY=1, sent only once every
#     rank answers HEALTH ok;
#   - WATCHDOG=1 at half the WATCHDOG_USEC interval while ready;
#   - STOPPING=1 when the group drains (SHUTDOWN, as the unit's ExecStop does);
#   - every datagram from the same process, world rank 0 (the other ranks
#     inherit NOTIFY_SOCKET from mpirun and must stay quiet);
#   - the daemons exit 0.
#   notify_it.sh MPIEXEC BINDIR RECEIVER_PY
set -u
MPIEXEC=$1 BIN=$2 RECV=$3
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
T=$(mktemp -d /tmp/epmoe-notify.XXXXXX)
S=$T/s N=$T/notify.sock M=$T/messages
MP="" RP=""
fail() { echo "FAIL: $*"; echo "--- notifications"; cat "$M" 2>/dev/null; echo "--- daemon log (tail)"; tail -30 "$T/log"; exit 1; }
cleanup() {
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -TERM "$MP"; sleep 1; kill -KILL "$MP" 2>/dev/null; fi
  if [ -n "$RP" ] && kill -0 "$RP" 2>/dev/null; then kill "$RP"; fi
  rm -rf "$T"
}
trap cleanup EXIT

python3 "$RECV" "$N" "$M" 60 &
RP=$!
for _ in $(seq 1 50); do grep -q '^bound' "$M" 2>/dev/null && break; sleep 0.1; done
grep -q '^bound' "$M" || fail "the receiver did not bind $N"

# 400 ms watchdog: pings every >= 200 ms, i.e. on every tick of epmoed's 200 ms timer.
NOTIFY_SOCKET=$N WATCHDOG_USEC=400000 "$MPIEXEC" -np 2 --oversubscribe "$EPMOED" --preset tiny --backend cpu \
  --socket-dir "$S" >"$T/log" 2>&1 &
MP=$!
ready_at=""
for _ in $(seq 1 300); do
  if grep -q 'READY=1' "$M"; then ready_at=1; break; fi
  kill -0 "$MP" 2>/dev/null || fail "daemons exited before READY=1"
  sleep 0.1
done
[ -n "$ready_at" ] || fail "no READY=1 within 30 s"
"$CTL" health --all --socket-dir "$S" || fail "READY=1 was sent but a rank is not healthy"
echo "ok: READY=1 arrived and every rank answers HEALTH ok"
sleep 1.5
"$CTL" shutdown --rank 0 --socket-dir "$S" >/dev/null || fail "epmoectl shutdown"
for _ in $(seq 1 100); do kill -0 "$MP" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MP" 2>/dev/null && fail "daemons still running 10 s after SHUTDOWN"
wait "$MP"; rc=$?
MP=""
[ "$rc" = 0 ] || fail "mpirun exited $rc after the drain"
sleep 0.3 # let the last datagram land
echo "--- notifications (pid, seconds, text)"
sed 1d "$M"

rank0=$(sed -n 's/.*r0\/2 .*rank 0 of 2, pid \([0-9]*\).*/\1/p' "$T/log" | head -1)
[ -n "$rank0" ] || fail "no 'rank 0 of 2, pid N' line in the daemon log"
pids=$(sed 1d "$M" | cut -f1 | sort -u | tr '\n' ' ')
[ "$pids" = "$rank0 " ] || fail "notifications came from pids '$pids', expected rank 0 (pid $rank0) only"
texts=$(sed 1d "$M" | cut -f3)
[ "$(head -1 <<<"$texts")" = "STATUS=loading weights" ] || fail "the first notification is not STATUS=loading weights"
[ "$(grep -c '^READY=1' <<<"$texts")" = 1 ] || fail "READY=1 sent $(grep -c '^READY=1' <<<"$texts") times"
grep -q '^READY=1|STATUS=ready: 2 ranks, model tiny, backend cpu$' <<<"$texts" || fail "READY=1 without the expected STATUS"
pings=$(grep -c '^WATCHDOG=1$' <<<"$texts")
# >= 1.5 s between READY and SHUTDOWN at one ping per 200 ms tick
[ "$pings" -ge 5 ] || fail "only $pings WATCHDOG=1 in >= 1.5 s with WATCHDOG_USEC=400000"
grep -q '^STOPPING=1|STATUS=draining: ' <<<"$texts" || fail "no STOPPING=1 on drain"
[ "$(grep -n '' <<<"$texts" | grep -m1 'STOPPING=1' | cut -d: -f1)" -gt \
  "$(grep -n '' <<<"$texts" | grep -m1 'READY=1' | cut -d: -f1)" ] || fail "STOPPING=1 before READY=1"
echo "ok: STATUS, one READY=1, $pings WATCHDOG=1, STOPPING=1, all from rank 0 (pid $rank0); exit 0"
echo "PASS"
