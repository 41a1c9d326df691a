#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# soak.sh — a long run of checked steps (label large): NP daemons on the cpu
# backend take FORWARDs back to back for DURATION seconds, with random token
# counts per rank (zeros and all-zero steps included), inline and memfd data,
# every result compared with the CPU reference (--check), STATUS and HEALTH in
# between. Every rank's RSS and open descriptor count are sampled between
# steps; after a warm-up the descriptors must not change and the RSS must not
# grow (the last third's mean within 5 % + 4 MiB of the first third's).
#   soak.sh MPIEXEC NP BINDIR [DURATION_S]      (default 600)
set -u
MPIEXEC=$1 NP=$2 BIN=$3 DURATION=${4:-600}
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
T=$(mktemp -d /tmp/epmoe-soak.XXXXXX)
S=$T/s
MP=""
fail() { echo "FAIL: $*"; echo "--- daemon log (tail)"; tail -20 "$T/log" 2>/dev/null; exit 1; }
cleanup() {
  if [ -n "$MP" ] && kill -0 "$MP" 2>/dev/null; then kill -TERM "$MP"; sleep 1; kill -KILL "$MP" 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT
$MPIEXEC -np "$NP" --oversubscribe "$EPMOED" --preset tiny --backend cpu --socket-dir "$S" --warmup-tokens 1 \
  --max-tokens-per-rank 256 >"$T/log" 2>&1 &
MP=$!
for _ in $(seq 1 150); do "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && break; sleep 0.2; done
"$CTL" health --socket-dir "$S" --quiet || fail "daemons not healthy"
pids=$("$CTL" status --socket-dir "$S" --json | tr ',' '\n' | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
[ "$(echo "$pids" | wc -w)" = "$NP" ] || fail "could not read $NP pids"
sample() { # one line: t then, per rank, rss_kib fds
  local line t
  t=$(date +%s)
  line="$t"
  for p in $pids; do
    line="$line $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status") $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 | wc -l)"
  done
  echo "$line" >>"$T/samples"
}
RANDOM=$$
t_end=$(( $(date +%s) + DURATION ))
steps=0 zeros=0 shm=0 last_sample=0
while [ "$(date +%s)" -lt "$t_end" ]; do
  counts="" all0=1
  for _ in $(seq 1 "$NP"); do
    if [ $((RANDOM % 4)) = 0 ]; then c=0; else c=$((RANDOM % 256)); fi
    [ "$c" != 0 ] && all0=0
    counts="$counts${counts:+,}$c"
  done
  [ $((RANDOM % 10)) = 0 ] && { counts=$(printf '0%.0s,' $(seq 1 "$NP")); counts=${counts%,}; all0=1; }
  mode=""
  [ $((RANDOM % 2)) = 0 ] && { mode=--shm; shm=$((shm + 1)); }
  out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank "$counts" --random --seed "$RANDOM" --check $mode 2>&1) ||
    fail "step $steps ($counts $mode): $out"
  [ $all0 = 1 ] && zeros=$((zeros + 1))
  echo "$out" | grep -q "PASS" || [ $all0 = 1 ] || fail "step $steps ($counts): no PASS: $out"
  steps=$((steps + 1))
  if [ $((steps % 50)) = 0 ]; then
    "$CTL" status --socket-dir "$S" >/dev/null || fail "STATUS failed after $steps steps"
    "$CTL" health --socket-dir "$S" --quiet || fail "HEALTH failed after $steps steps"
  fi
  now=$(date +%s)
  if [ $((now - last_sample)) -ge 2 ]; then sample; last_sample=$now; fi
done
sample
kill -0 "$MP" 2>/dev/null || fail "the daemons died during the soak"
# flat: descriptors equal after warm-up; RSS mean of the last third within 5 % + 4 MiB of the first third
verdict=$(awk -v np="$NP" '
  { n++; for (r = 0; r < np; r++) { rss[n, r] = $(2 + 2 * r); fd[n, r] = $(3 + 2 * r) } }
  END {
    w = int(n / 5); if (w < 1) w = 1;          # warm-up samples dropped
    m = n - w; third = int(m / 3); if (third < 1) { print "FEW " n; exit }
    bad = ""
    for (r = 0; r < np; r++) {
      a = 0; b = 0
      for (i = w + 1; i <= w + third; i++) a += rss[i, r]
      for (i = n - third + 1; i <= n; i++) b += rss[i, r]
      a /= third; b /= third
      if (b > a * 1.05 + 4096) bad = bad sprintf(" rank %d RSS %.0f -> %.0f KiB;", r, a, b)
      for (i = w + 1; i <= n; i++) if (fd[i, r] != fd[w + 1, r]) { bad = bad sprintf(" rank %d fds %d -> %d;", r, fd[w + 1, r], fd[i, r]); break }
      summary = summary sprintf(" rank %d RSS %.0f -> %.0f KiB, fds %d -> %d;", r, a, b, fd[w + 1, r], fd[n, r])
    }
    print (bad == "" ? "FLAT" : "GROWS" bad) " |" summary " (" n " samples)"
  }' "$T/samples")
case "$verdict" in
  FLAT*) ;;
  *) fail "resources not flat: $verdict" ;;
esac
"$CTL" shutdown --socket-dir "$S" >/dev/null
wait "$MP"; rc=$?; MP=""
[ $rc = 0 ] || fail "exit $rc after the soak"
echo "ok: $steps checked steps in ${DURATION} s ($zeros all-zero, $shm memfd); ${verdict#FLAT |}"
echo "PASS: soak"
