#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# daemon_it.sh — integration test of epmoed + epmoectl on the CPU (label mpi).
#   daemon_it.sh MPIEXEC NP BINDIR [MODE [PROBE]]
# PROBE: tests/daemon/daemon_probe (hostile clients: garbage, oversize header,
# half a frame held open, HEALTH/SHUTDOWN with trailing bytes, a foreign uid
# refused by SO_PEERCRED, a header too big for its type, replies never read,
# every connection slot held, idle connections).
# MODE: tiny (default) or faults; both run the step engine's tiny preset on
# the cpu backend (--check against the EP=1 CPU reference).
# faults (NP > 1): a step longer than --step-timeout that computes the whole
# time is not cut off (heartbeats, not wall time); a rank hung mid-step
# (SIGSTOP) is detected by the heartbeats within --liveness-timeout, every
# daemon exits non-zero and the client is told which rank; and a restart over
# the stale socket of a SIGKILLed rank, with --step-delay-ms making each step
# last long enough to hit.
# tiny: starts NP daemons under mpirun with a temporary socket dir and checks, in
# order: readiness, socket/dir modes, a second daemon refusing the same
# sockets, FORWARDs with unequal and zero token counts (inline and memfd)
# against the reference (--check), STATUS answering during a step, a client
# that disconnects before its step ran cancelling it on every rank at once
# (and one that leaves mid-step not wedging the others), two clients reaching
# the ranks in opposite orders both served, --step-timeout failing a
# step on every joined rank with the missing ranks named, Prometheus stats,
# a short bench, and SIGTERM draining to exit 0 with the sockets removed.
# Every wait is bounded; the trap kills what this script started.
set -u
MPIEXEC=$1 NP=$2 BIN=$3 MODE=${4:-tiny} PROBE=${5:-}
PRESET=tiny
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
T=$(mktemp -d /tmp/epmoe-it.XXXXXX)
chmod 755 "$T" # lets the peercred probe reach the 0750 socket dir once it opens it up
S=$T/s
MP=""
fail() { echo "FAIL: $*"; echo "--- daemon log (tail)"; tail -40 "$T/log" 2>/dev/null; exit 1; }
ok() { echo "ok: $*"; }
cleanup() {
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -TERM "$MP" 2>/dev/null; sleep 1; kill -KILL "$MP" 2>/dev/null; fi
  [ -n "${MP2:-}" ] && kill -KILL "$MP2" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT

counts() { # counts A B C D -> first NP of them, comma separated
  local out="" i=0
  for c in "$@"; do [ $i -lt "$NP" ] && out="$out${out:+,}$c"; i=$((i + 1)); done
  echo "$out"
}

# A step longer than --step-timeout is legal while every rank makes progress
# (heartbeats, not wall time). A rank that hangs inside a step (SIGSTOP, as
# Redis' tests do) is not: the heartbeats name it within --liveness-timeout,
# every daemon answers its clients and exits 3 (fail-stop), and mpirun ends
# the group.
faults() {
  S2=$T/s2
  $MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cpu --socket-dir "$S2" --step-timeout 1 \
    --liveness-timeout 2 --step-delay-ms 2500 --warmup-tokens 1 >"$T/log3" 2>&1 &
  MP2=$!
  for _ in $(seq 1 150); do "$CTL" health --socket-dir "$S2" --quiet >/dev/null 2>&1 && break; sleep 0.2; done
  out=$("$CTL" forward --socket-dir "$S2" --tokens-per-rank "$(counts 4 4 4 4)" --check 2>&1) ||
    fail "a 2.5 s step with --step-timeout 1 failed: $out"
  kill -0 "$MP2" 2>/dev/null || fail "the group died during a long legal step"
  ok "a 2.5 s step (every rank computing) with --step-timeout 1: completed, --check PASS"
  victim=$("$CTL" status --socket-dir "$S2" --rank 1 --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
  "$CTL" forward --socket-dir "$S2" --tokens-per-rank "$(counts 4 4 4 4)" >"$T/hung" 2>&1 &
  FWD=$!
  sleep 0.4
  kill -STOP "$victim"
  t0=$(date +%s.%N)
  for _ in $(seq 1 150); do kill -0 "$MP2" 2>/dev/null || break; sleep 0.1; done
  t1=$(date +%s.%N)
  kill -CONT "$victim" 2>/dev/null
  alive=0; kill -0 "$MP2" 2>/dev/null && alive=1
  wait "$FWD"; frc=$?
  [ $alive = 0 ] || fail "group still running 15 s after rank 1 hung inside a step"
  wait "$MP2"; rc=$?; MP2=""
  [ $rc != 0 ] || fail "mpirun exit 0 after a hung rank (want non-zero)"
  [ $frc != 0 ] || fail "the forward through a hung rank reported success"
  grep -q "rank 1 sent no heartbeat" "$T/log3" || fail "no liveness line naming rank 1: $(tail -5 "$T/log3")"
  grep -q "rank 1 sent no heartbeat" "$T/hung" || fail "the client was not told which rank failed: $(cat "$T/hung")"
  awk -v a="$t0" -v b="$t1" 'BEGIN { exit !(b - a < 8) }' || fail "the group took $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') s to end (liveness 2 s)"
  ok "rank 1 hung mid-step (SIGSTOP): heartbeats named it, group ended in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s, exit $rc, client told: $(grep -o 'rank 1 sent no heartbeat[^;]*' "$T/hung" | head -1)"
  # SIGKILL leaves a stale socket behind; a new group removes it and starts
  $MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cpu --socket-dir "$S2" --warmup-tokens 1 >"$T/log4" 2>&1 &
  MP2=$!
  for _ in $(seq 1 150); do "$CTL" health --socket-dir "$S2" --quiet >/dev/null 2>&1 && break; sleep 0.2; done
  victim=$("$CTL" status --socket-dir "$S2" --rank 1 --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
  kill -KILL "$victim"
  for _ in $(seq 1 100); do kill -0 "$MP2" 2>/dev/null || break; sleep 0.1; done
  wait "$MP2"; MP2=""
  [ -S "$S2/epmoe.1.sock" ] || fail "expected a stale socket from the SIGKILLed rank"
  $MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cpu --socket-dir "$S2" --warmup-tokens 1 >"$T/log5" 2>&1 &
  MP2=$!
  for _ in $(seq 1 150); do "$CTL" health --socket-dir "$S2" --quiet >/dev/null 2>&1 && break; sleep 0.2; done
  "$CTL" health --socket-dir "$S2" --quiet || fail "restart over a stale socket failed: $(tail -3 "$T/log5")"
  grep -q "removing stale socket" "$T/log5" || fail "the stale socket was not reported"
  "$CTL" shutdown --socket-dir "$S2" --rank 0 >/dev/null
  wait "$MP2"; rc=$?; MP2=""
  [ $rc = 0 ] || fail "restarted group exit $rc"
  ok "restart over a stale socket (SIGKILLed rank): removed, started, shut down (exit 0)"
}
if [ "$MODE" = faults ]; then
  [ "$NP" -gt 1 ] || fail "the faults mode needs NP > 1 (got $NP)"
  faults
  echo "PASS: daemon faults, $NP ranks, preset $PRESET"
  exit 0
fi
[ "$MODE" = tiny ] || fail "unknown mode '$MODE' (tiny | faults)"

MPORT=$((20000 + $$ % 20000))
"$EPMOED" --bogus-flag >/dev/null 2>&1; [ $? = 64 ] || fail "epmoed --bogus-flag did not exit 64"
EPMOE_MAX_TOKENS_PER_RANK=abc "$EPMOED" >/dev/null 2>&1; [ $? = 64 ] || fail "a bad EPMOE_* value did not exit 64"
"$CTL" forward --bogus >/dev/null 2>&1; [ $? = 64 ] || fail "epmoectl forward --bogus did not exit 64"
# env is read, and the flag wins over it (checked in STATUS below)
export EPMOE_MAX_CONNECTIONS=33 EPMOE_STEP_TIMEOUT=99
# (--x=v and --x v are the same option; both spellings are used here)
$MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset "$PRESET" --backend=cpu --socket-dir "$S" --step-timeout=3 \
  --step-delay-ms 600 --warmup-tokens 2 --metrics-port "$MPORT" --idle-timeout 5 >"$T/log" 2>&1 &
MP=$!
for _ in $(seq 1 150); do
  "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && break
  kill -0 "$MP" 2>/dev/null || fail "daemons exited during start-up"
  sleep 0.2
done
"$CTL" health --socket-dir "$S" || fail "daemons not healthy within 30 s"
ok "all $NP daemons ready (health exit 0)"

[ "$(stat -c %a "$S")" = 750 ] || fail "socket dir mode $(stat -c %a "$S") != 750"
[ "$(stat -c %a "$S/epmoe.0.sock")" = 660 ] || fail "socket mode $(stat -c %a "$S/epmoe.0.sock") != 660"
ok "dir 0750, sockets 0660"
unset EPMOE_MAX_CONNECTIONS EPMOE_STEP_TIMEOUT
st=$("$CTL" status --socket-dir "$S" --rank 0) || fail "status"
echo "$st" | grep -q "^config_max_connections:33" || fail "EPMOE_MAX_CONNECTIONS not applied"
echo "$st" | grep -q "^config_step_timeout:3" || fail "--step-timeout did not win over EPMOE_STEP_TIMEOUT"
"$CTL" status --socket-dir="$S" --rank=0 --json | grep -q '"max-connections":{"value":33,"source":"environment"}' ||
  fail "status --json does not name the environment as the source"
ok "config: bad flag/env exit 64, env applied, flag wins over env"

if [ -n "$PROBE" ]; then
  for m in badmagic oversize partial trailing peercred typecap noread "flood 33" "idle 5"; do
    # $m is a mode and its arguments ("flood 33"): split on purpose.
    # shellcheck disable=SC2086
    out=$("$PROBE" "$S/epmoe.0.sock" $m 2>&1); rc=$?
    [ $rc = 77 ] && { echo "skip: probe $m (needs root)"; continue; }
    [ $rc = 0 ] || fail "probe $m: $out"
    ok "probe $m: $out"
  done
  "$CTL" health --socket-dir "$S" --quiet || fail "daemons unhealthy after the probes"
  [ "$(stat -c %a "$S/epmoe.0.sock")" = 660 ] || fail "socket mode not restored"
fi

timeout 30 "$MPIEXEC" -np "$NP" --oversubscribe "$EPMOED" --preset "$PRESET" --backend cpu --socket-dir "$S" >"$T/log2" 2>&1
rc=$?
[ $rc -ne 0 ] || fail "a second daemon group on the same sockets started (exit 0)"
grep -q "another daemon answers" "$T/log2" || fail "second daemon did not say why it refused: $(tail -3 "$T/log2")"
"$CTL" health --socket-dir "$S" --quiet || fail "first daemons unhealthy after the refused second start"
ok "second daemon on the same socket path refused to start (exit $rc)"

for c in "$(counts 64 0 0 0)" "$(counts 5 17 0 3)" "$(counts 0 0 9 1)" "$(counts 0 0 0 0)"; do
  out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank "$c" --random --seed 3 --check 2>&1) || fail "forward $c: $out"
  echo "$out" | grep -q "PASS" || [ "$c" = "$(counts 0 0 0 0)" ] || fail "forward $c: no PASS: $out"
  out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank "$c" --shm --seed 4 --check 2>&1) || fail "forward --shm $c: $out"
done
ok "FORWARD inline and memfd, tokens per rank $(counts 64 0 0 0) / $(counts 5 17 0 3) / $(counts 0 0 9 1) / all 0: --check PASS"
# --input FILE: bf16 x [M, H] then fp32 logits [M, E]; all-zero data is valid
H=$("$CTL" status --socket-dir "$S" --rank 0 | sed -n 's/^hidden://p' | tr -d '\r')
E=$("$CTL" status --socket-dir "$S" --rank 0 | sed -n 's/^experts://p' | tr -d '\r')
M=6
head -c $((M * H * 2 + M * E * 4)) /dev/zero >"$T/input.bin"
out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank "$(counts 6 0 0 0)" --input "$T/input.bin" --check 2>&1) ||
  fail "forward --input: $out"
head -c 10 /dev/zero >"$T/short.bin"
"$CTL" forward --socket-dir "$S" --tokens-per-rank "$(counts 6 0 0 0)" --input "$T/short.bin" >/dev/null 2>&1 &&
  fail "forward --input accepted a file that is too short"
ok "forward --input FILE (and a short file is refused)"

"$CTL" forward --socket-dir "$S" --tokens-per-rank "$(counts 8 8 8 8)" >"$T/fwd_bg" 2>&1 &
FWD=$!
seen=0
for _ in $(seq 1 40); do
  st=$("$CTL" status --socket-dir "$S" --rank 0 --timeout 500 2>/dev/null) || fail "STATUS failed while a step runs"
  echo "$st" | grep -q "^in_step:1" && { seen=1; break; }
  sleep 0.05
done
wait $FWD || fail "background forward failed: $(cat "$T/fwd_bg")"
[ $seen = 1 ] || fail "never saw in_step:1 in STATUS during a 600 ms step"
ok "STATUS answers during a step (in_step:1)"

# rank 0's client leaves after sending, before the step could run: the step
# is withdrawn from the group, and the other ranks' FORWARDs of it fail at
# once naming the disconnect (not after --step-timeout)
"$CTL" forward --socket-dir "$S" --rank 0 --step-id 100 --tokens-per-rank 4 >/dev/null 2>&1 &
LEAVER=$!
sleep 0.3
kill -KILL $LEAVER 2>/dev/null; wait $LEAVER 2>/dev/null
if [ "$NP" -gt 1 ]; then
  t0=$(date +%s.%N)
  out=$("$CTL" forward --socket-dir "$S" --rank 1 --step-id 100 --tokens-per-rank 3 2>&1) &&
    fail "rank 1's FORWARD of a step whose client left on rank 0 succeeded"
  t1=$(date +%s.%N)
  echo "$out" | grep -q "cancelled (its client on rank 0 disconnected)" || fail "no cancel reason: $out"
  awk -v a="$t0" -v b="$t1" 'BEGIN { exit !(b - a < 1.5) }' || fail "the cancelled step took $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') s to fail"
fi
grep -q "step (layer 0, id 100) cancelled: its client on rank 0 disconnected" "$T/log" || fail "the cancel was not logged"
# a client that leaves after its step started: the step runs, the result is dropped
"$CTL" forward --socket-dir "$S" --tokens-per-rank "$(counts 3 3 3 3)" >/dev/null 2>&1 &
LEAVER=$!
sleep 0.35
kill -KILL $LEAVER 2>/dev/null; wait $LEAVER 2>/dev/null
sleep 0.6
"$CTL" forward --socket-dir "$S" --tokens-per-rank "$(counts 2 2 2 2)" --check >/dev/null 2>&1 || fail "daemons wedged after a client left mid-step"
grep -q "client of connection .* left" "$T/log" || fail "no rank logged the dropped result of a step already running"
ok "a client leaving before its step ran cancels it on every rank at once; one leaving mid-step does not wedge the others"

# Two clients reach the ranks in opposite orders (A first on rank 0, B first
# on the last rank): each rank holds both, the group runs them in one order.
clients=""
t0=$(date +%s.%N)
for i in $(seq 0 $((NP - 1))); do
  "$CTL" forward --socket-dir "$S" --rank "$i" --step-id 1001 --tokens-per-rank 2 >"$T/A.$i" 2>&1 &
  clients="$clients $!"
  "$CTL" forward --socket-dir "$S" --rank $((NP - 1 - i)) --step-id 2001 --tokens-per-rank 3 >"$T/B.$i" 2>&1 &
  clients="$clients $!"
  sleep 0.1
done
for p in $clients; do wait "$p" || fail "two clients in opposite orders: $(cat "$T"/A.* "$T"/B.*)"; done
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { exit !(b - a < 3) }' || fail "two clients in opposite orders took $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') s (--step-timeout 3)"
ok "two clients reaching the ranks in opposite orders: both steps ran in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"

t0=$(date +%s.%N)
out=$("$CTL" forward --socket-dir "$S" --rank 0 --step-id 200 --tokens-per-rank 4 2>&1) && fail "a step with missing ranks succeeded"
t1=$(date +%s.%N)
if [ "$NP" -gt 1 ]; then
  echo "$out" | grep -q "missing ranks 1" || fail "timeout error does not name the missing ranks: $out"
  out=$("$CTL" forward --socket-dir "$S" --rank 1 --step-id 200 --tokens-per-rank 4 2>&1) && fail "a late join of an aborted step succeeded"
  echo "$out" | grep -q "already aborted" || fail "late join error: $out"
fi
awk -v a="$t0" -v b="$t1" 'BEGIN { exit !(b - a < 8) }' || fail "timed-out step took $(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') s (limit 3 s + slack)"
"$CTL" forward --socket-dir "$S" --tokens-per-rank "$(counts 1 2 3 4)" --check >/dev/null 2>&1 || fail "no recovery after a timed-out step"
ok "--step-timeout: step fails on the joined ranks naming the missing ones; late join refused; next step fine"

prom=$("$CTL" stats --socket-dir "$S" --prometheus) || fail "stats --prometheus"
echo "$prom" | grep -q '^epmoe_steps_total{rank="0"} [1-9]' || fail "no epmoe_steps_total in: $(echo "$prom" | head -5)"
echo "$prom" | grep -q 'epmoe_step_seconds_bucket{rank="0",le="+Inf"}' || fail "no step histogram"
dups=$(echo "$prom" | grep '^# TYPE' | sort | uniq -d)
[ -z "$dups" ] || fail "families repeated in the merged exposition: $dups"
[ "$(echo "$prom" | grep -c '^epmoe_steps_total{')" = "$NP" ] || fail "not one epmoe_steps_total per rank"
http_get() { # http_get PORT PATH -> response on stdout (bash /dev/tcp, no curl needed)
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3
  timeout 5 cat <&3
  exec 3<&-
}
resp=$(http_get "$MPORT" /metrics) || fail "no metrics listener on 127.0.0.1:$MPORT"
echo "$resp" | head -1 | grep -q "200 OK" || fail "GET /metrics: $(echo "$resp" | head -1)"
echo "$resp" | grep -q '^epmoe_ready{rank="0"} 1' || fail "GET /metrics lacks epmoe_ready 1"
http_get "$MPORT" /ready | head -1 | grep -q "200 OK" || fail "GET /ready not 200"
ok "Prometheus stats (epmoectl stats --prometheus and http://127.0.0.1:$MPORT/metrics)"

out=$("$CTL" bench --socket-dir "$S" --tokens-per-rank "$(counts 16 0 16 0)" --duration 1 --warmup 1 2>&1) || fail "bench: $out"
echo "$out" | grep -q "tokens/s" || fail "bench output: $out"
ok "bench: $(echo "$out" | grep "steps in")"

pids=$("$CTL" status --socket-dir "$S" --json | tr ',' '\n' | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
[ "$(echo "$pids" | wc -w)" = "$NP" ] || fail "could not read $NP pids from status --json: $pids"
# shellcheck disable=SC2086  # one pid per word
kill -TERM $pids
for _ in $(seq 1 100); do kill -0 "$MP" 2>/dev/null || break; sleep 0.1; done
kill -0 "$MP" 2>/dev/null && fail "daemons still running 10 s after SIGTERM"
wait "$MP"; rc=$?
MP=""
[ $rc = 0 ] || fail "mpirun exit $rc after SIGTERM (want 0)"
[ "$(grep -c 'exit 0' "$T/log")" = "$NP" ] || fail "not every rank logged exit 0"
ls "$S"/*.sock >/dev/null 2>&1 && fail "sockets left behind: $(ls "$S")"
ok "SIGTERM drains: every rank exit 0, sockets removed"
# --model DIR: a ModelOpt-style checkpoint written by `epmoectl ckpt make`;
# every MoE layer served (--layers 0), each rank loading only its experts.
"$CTL" ckpt make --preset tiny --layers 2 --out "$T/ckpt" --seed 5 --quiet || fail "ckpt make"
S3=$T/s3
$MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --model "$T/ckpt" --layers 0 --backend cpu --socket-dir "$S3" \
  --warmup-tokens 1 >"$T/log6" 2>&1 &
MP2=$!
for _ in $(seq 1 150); do "$CTL" health --socket-dir "$S3" --quiet >/dev/null 2>&1 && break; sleep 0.2; done
"$CTL" health --socket-dir "$S3" --quiet || fail "--model daemons not healthy: $(tail -3 "$T/log6")"
for layer in 0 1; do
  out=$("$CTL" forward --socket-dir "$S3" --tokens-per-rank "$(counts 7 0 9 2)" --layer $layer --seed 6 --check 2>&1) ||
    fail "--model forward layer $layer: $out"
done
"$CTL" shutdown --socket-dir "$S3" --rank 0 >/dev/null
wait "$MP2"; rc=$?; MP2=""
[ $rc = 0 ] || fail "--model group exit $rc"
ok "--model DIR (2 MoE layers from a checkpoint): forward --check PASS on both layers"

echo "PASS: daemon integration, $NP ranks, preset $PRESET"
