#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# limits.sh — the listeners under floods (label fault), one daemon started
# with a low descriptor limit (ulimit -n 64) and the metrics port on:
#  1 200 Unix connections past the descriptors: accept fails with EMFILE; the
#    daemon backs off instead of spinning (CPU time stays low), logs it a few
#    times instead of once per loop turn, and an established client keeps
#    getting STATUS answers within a second;
#  2 100 idle TCP connections to the metrics port: at most 16 are held (the
#    daemon's descriptors stay flat), the rest are closed at once, the held
#    ones after the 5 s header timeout; GET /metrics answers afterwards;
#  3 --metrics-bind: the address is used, and a bad one is refused at start.
#   limits.sh MPIEXEC BINDIR PROBE
set -u
MPIEXEC=$1 BIN=$2 PROBE=$3
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
T=$(mktemp -d /tmp/epmoe-limits.XXXXXX)
S=$T/s
MPORT=$((30000 + $$ % 20000))
MP=""
fail() { echo "FAIL: $*"; echo "--- daemon log (tail)"; tail -c 3000 "$T/log" 2>/dev/null; exit 1; }
ok() { echo "ok: $*"; }
cleanup() {
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -TERM "$MP"; sleep 1; kill -KILL "$MP" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # user + system CPU, clock ticks

(ulimit -n 64 && exec $MPIEXEC -np 1 "$EPMOED" --preset tiny --backend cpu --socket-dir "$S" --warmup-tokens 1 \
  --max-connections 4096 --metrics-port "$MPORT" --metrics-bind 127.0.0.1 >"$T/log" 2>&1) &
MP=$!
for _ in $(seq 1 100); do "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && break; sleep 0.2; done
"$CTL" health --socket-dir "$S" --quiet || fail "daemon did not come up"
PID=$("$CTL" status --socket-dir "$S" --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
[ -n "$PID" ] || fail "no pid from status"
grep -q "metrics on http://127.0.0.1:$MPORT/metrics (at most 16 connections" "$T/log" ||
  fail "the metrics listener did not report its address and cap"

# 1
t0=$(ticks "$PID")
out=$("$PROBE" "$S/epmoe.0.sock" unixflood 200 4) || fail "an established client was starved: $out"
used=$(( $(ticks "$PID") - t0 ))
lines=$(grep -c "accept on .* failed" "$T/log")
hz=$(getconf CLK_TCK)
[ "$lines" -ge 1 ] || fail "no accept failure logged: the flood did not exhaust the descriptors ($out)"
[ "$lines" -le 3 ] || fail "$lines accept failures logged in 4 s (want a few, rate-limited)"
[ "$used" -le $((hz * 6 / 10)) ] || fail "the daemon used $used CPU ticks (of $hz/s) in 4 s of EMFILE: it spins"
ok "descriptor exhaustion: $out; $lines log line(s), $used CPU ticks in 4 s"

# 2
base=$(find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
"$PROBE" "127.0.0.1:$MPORT" tcpflood 100 9 >"$T/tcp" &
FL=$!
sleep 1.5
during=$(find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
wait "$FL"
[ "$during" -le $((base + 18)) ] || fail "the daemon held $((during - base)) more descriptors during a metrics flood"
grep -q "100 closed by the server within [0-8]\." "$T/tcp" || fail "idle metrics connections were not all closed: $(cat "$T/tcp")"
exec 3<>"/dev/tcp/127.0.0.1/$MPORT" || fail "metrics port unreachable after the flood"
printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3
resp=$(timeout 5 cat <&3)
exec 3<&-
echo "$resp" | head -1 | grep -q "200 OK" || fail "GET /metrics after the flood: $(echo "$resp" | head -1)"
echo "$resp" | grep -q '^epmoe_metrics_refused_total{rank="0"} [1-9]' || fail "refused metrics connections not counted"
"$CTL" health --socket-dir "$S" --quiet || fail "daemon unhealthy after the floods"
ok "metrics flood: $(cat "$T/tcp"); descriptors $base -> $during; GET /metrics answers afterwards"

"$CTL" shutdown --socket-dir "$S" >/dev/null
wait "$MP"; rc=$?; MP=""
[ $rc = 0 ] || fail "exit $rc after SHUTDOWN"

# 3
if $MPIEXEC -np 1 "$EPMOED" --preset tiny --backend cpu --socket-dir "$T/s2" --metrics-port "$MPORT" \
  --metrics-bind 300.1.2.3 >"$T/log2" 2>&1; then
  fail "a bad --metrics-bind started"
fi
grep -q "metrics-bind '300.1.2.3' is not an IPv4 or IPv6 address" "$T/log2" || fail "bad --metrics-bind: $(grep -m1 fatal "$T/log2")"
ok "--metrics-bind: 127.0.0.1 used; 300.1.2.3 refused at start"
echo "PASS: listener limits"
