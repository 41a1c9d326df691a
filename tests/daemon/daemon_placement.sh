#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# daemon_placement.sh — epmoed on expert placements (label mpi).
#   daemon_placement.sh MPIEXEC NP BINDIR
# NP daemons of the tiny preset (16 experts; run at NP 3 and 5, which do not
# divide 16) on the cpu backend, in order:
#   1 default split + --redundant-experts 2: ready, `forward --check
#     --tolerance 0` (bit-identical to the EP=1 reference) with unequal and
#     zero token counts, inline and memfd
#   2 the per-expert load: STATS JSON (summed over the ranks it is top_k x
#     every token stepped, warm-up included), the STATS text and Prometheus
#     (epmoe_expert_tokens_total) series
#   3 `epmoectl placement --socket-dir` computes a balanced map from the live
#     daemons; the group drains (SHUTDOWN) and restarts with --placement
#     FILE: ready, forward --check --tolerance 0 again, the map logged
#   4 refusals at start-up: a map with an expert id out of range and a map of
#     another EP size; every rank fails and the log names the entry / sizes
# Every wait is bounded; the trap kills what this script started.
set -u
MPIEXEC=$1 NP=$2 BIN=$3
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
T=$(mktemp -d /tmp/epmoe-place.XXXXXX)
S=$T/s
MP=""
fail() { { echo "FAIL: $*"; echo "--- daemon log (tail)"; tail -30 "$T/log" 2>/dev/null; } >&2; exit 1; }
ok() { echo "ok: $*"; }
cleanup() {
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -TERM "$MP" 2>/dev/null; sleep 1; kill -KILL "$MP" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT
counts() { # counts A B C D E -> the first NP of them
  local out="" i=0
  for c in "$@"; do [ $i -lt "$NP" ] && out="$out${out:+,}$c"; i=$((i + 1)); done
  echo "$out"
}
start() { # start ARGS... : NP daemons, wait until healthy
  $MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cpu --socket-dir "$S" --warmup-tokens 2 "$@" \
    >"$T/log" 2>&1 &
  MP=$!
  for _ in $(seq 1 150); do
    "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && return 0
    kill -0 "$MP" 2>/dev/null || fail "daemons exited during start-up"
    sleep 0.2
  done
  fail "daemons not healthy within 30 s"
}
stop() {
  "$CTL" shutdown --socket-dir "$S" --rank 0 >/dev/null || fail "shutdown"
  wait "$MP"; rc=$?; MP=""
  [ $rc = 0 ] || fail "daemons exit $rc after SHUTDOWN"
}
forwards() { # the token sets of one phase; prints the tokens sent
  local sent=0
  for c in "$(counts 5 0 9 3 7)" "$(counts 0 12 1 0 4)"; do
    out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank "$c" --seed 5 --check --tolerance 0 2>&1) ||
      fail "forward $c: $out"
    echo "$out" | grep -q "PASS" || fail "forward $c: no PASS: $out"
    out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank "$c" --seed 6 --shm --check --tolerance 0 2>&1) ||
      fail "forward --shm $c: $out"
    for n in ${c//,/ }; do sent=$((sent + 2 * n)); done
  done
  echo "$sent"
}

# 1 the default split of 16 + 2 slots
start --redundant-experts 2
grep -q "slots \[0, +$(( (18 + NP - 1) / NP ))) of 18 here, placement default" "$T/log" || fail "no placement line in the log"
sent=$(forwards) || exit 1
ok "$NP ranks, 16 experts + 2 redundant: forward --check --tolerance 0 (inline and memfd) bit-identical to EP=1"

# 2 the load: top_k (4) x tokens stepped, warm-up (2 per rank) included
"$CTL" stats --socket-dir "$S" --json >"$T/stats.json" || fail "stats --json"
python3 - "$T/stats.json" "$NP" "$sent" <<'PY' || fail "STATS load"
import json, sys
# `stats --json` is one line {"ranks": [{"rank": R, ...STATS JSON...}, ...]}
objs = json.load(open(sys.argv[1]))["ranks"]
np_, sent = int(sys.argv[2]), int(sys.argv[3])
assert len(objs) == np_, len(objs)
tot = [0] * 16
for o in objs:
    ex = o["experts"]
    assert ex["num_experts"] == 16 and len(ex["tokens_total"]) == 16 and len(ex["tokens_last_step"]) == 16, ex
    tot = [a + b for a, b in zip(tot, ex["tokens_total"])]
want = 4 * (sent + 2 * np_)
assert sum(tot) == want, (sum(tot), want)
assert sum(1 for x in tot if x > 0) > 8, tot  # random routing reaches most experts
print("load over ranks:", tot)
PY
"$CTL" stats --socket-dir "$S" --rank 0 | grep -q "^expert_tokens:[0-9]*\(,[0-9]*\)\{15\}$" || fail "STATS text: no expert_tokens"
prom=$("$CTL" stats --socket-dir "$S" --prometheus) || fail "stats --prometheus"
[ "$(echo "$prom" | grep -c '^epmoe_expert_tokens_total{rank="[0-9]*",expert="[0-9]*"} [0-9]*$')" = $((16 * NP)) ] ||
  fail "Prometheus: want 16 x $NP epmoe_expert_tokens_total samples"
[ "$(echo "$prom" | grep -c '^# TYPE epmoe_expert_tokens_total counter')" = 1 ] || fail "Prometheus: one TYPE line"
ok "per-expert load in STATS JSON (sum = top_k x tokens), text and Prometheus"

# 3 a balanced map from the live daemons, then a restart with it
"$CTL" placement --socket-dir "$S" --redundant-experts 3 --out "$T/map.json" >"$T/place.out" 2>&1 ||
  fail "epmoectl placement: $(cat "$T/place.out")"
cat "$T/place.out"
grep -q "from $NP ranks' STATS" "$T/place.out" || fail "placement did not read $NP ranks"
stop
start --placement "$T/map.json"
grep -q "of 19 here, placement $T/map.json" "$T/log" || fail "the map is not in the log"
forwards >/dev/null || exit 1
ok "restarted with the balanced map (19 slots): forward --check --tolerance 0 bit-identical"
stop

# 4 refusals: an expert id out of range, a map of another EP size
sed '0,/    \[[0-9]*, /s//    [16, /' "$T/map.json" >"$T/bad.json"
$MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cpu --socket-dir "$S" --placement "$T/bad.json" \
  >"$T/log" 2>&1 &
MP=$!
for _ in $(seq 1 150); do kill -0 "$MP" 2>/dev/null || break; sleep 0.2; done
wait "$MP"; rc=$?; MP=""
[ $rc != 0 ] || fail "a map with expert 16 was accepted"
[ "$(grep -c 'ranks\[0\]\[0\] must be an expert id in \[0, num_experts 16)' "$T/log")" -ge "$NP" ] ||
  fail "every rank should name ranks[0][0]"
"$CTL" placement --from-stats "$T/map.json" --ep $((NP + 1)) --out "$T/other.json" >/dev/null 2>&1 || fail "map for NP+1"
$MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cpu --socket-dir "$S" --placement "$T/other.json" \
  >"$T/log" 2>&1 &
MP=$!
for _ in $(seq 1 150); do kill -0 "$MP" 2>/dev/null || break; sleep 0.2; done
wait "$MP"; rc=$?; MP=""
[ $rc != 0 ] || fail "a map of $((NP + 1)) ranks was accepted on $NP"
grep -q "the placement maps 16 experts over $((NP + 1)) ranks, but model tiny has 16 experts and the group $NP ranks" \
  "$T/log" || fail "EP size mismatch not named"
ok "refused at start-up: expert id out of range (every rank names the entry), map of $((NP + 1)) ranks"
echo "PASS: daemon placement, $NP ranks"
