#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# placement_runs.sh — expert placement from the command line.
# Usage: placement_runs.sh CASE MPIEXEC EPMOECTL
#   tools   `epmoectl placement --from-stats` on a skewed load (a few hot
#           experts) lowers the expected max/mean rank load below the
#           default split's and writes a map file; `epmoectl plan
#           --placement --load` reports the same numbers; STATS-format input
#           (one object per rank) gives the EP size; refusals exit 64
#   step    `epmoectl step --placement FILE --check --tolerance 0` on 3 ranks
#           with that map: bit-identical to EP=1
#   refuse  a map entry out of range, a map of another EP size and a
#           --redundant-experts count leaving a rank empty are refused with
#           messages naming the entry / the numbers
set -u
case_="$1" mpiexec="$2" ctl="$3"
tmp=$(mktemp -d /tmp/epm_place_XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; cat "$tmp/err" 2>/dev/null; exit 1; }
# 16 experts, 3 hot ones (tiny's expert count)
printf '[900, 40, 850, 35, 30, 45, 38, 700, 42, 33, 36, 41, 39, 44, 37, 34]\n' >"$tmp/load.json"
num() { # num PATTERN FILE -> the number after PATTERN on the first matching line
  sed -n "s|.*$1 \([0-9.]*\).*|\1|p" "$2" | head -1
}
mkmap() {
  "$ctl" placement --from-stats "$tmp/load.json" --ep 3 --redundant-experts 2 --out "$tmp/map.json" >"$tmp/out" 2>"$tmp/err" ||
    fail "placement exit $?"
}

case "$case_" in
  tools)
    mkmap
    cat "$tmp/out"
    d=$(num "default split (18 slots over 3 ranks): max/mean rank load" "$tmp/out")
    b=$(num "balanced map  (2 redundant): max/mean rank load" "$tmp/out")
    { [ -n "$d" ] && [ -n "$b" ]; } || fail "no imbalance lines"
    awk -v d="$d" -v b="$b" 'BEGIN { exit !(b < d && b < 1.1 && d > 1.3) }' || fail "balanced $b vs default $d"
    grep -q "wrote $tmp/map.json" "$tmp/out" || fail "no 'wrote' line"
    # the map file: 3 ranks, 18 slots, every expert placed, the hot ones twice
    python3 - "$tmp/map.json" <<'PY' || fail "map file"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["format"] == "epmoe-placement" and m["version"] == 1, m
assert m["num_experts"] == 16 and m["ep_size"] == 3 and m["redundant_experts"] == 2, m
slots = [e for r in m["ranks"] for e in r]
assert [len(r) for r in m["ranks"]] == [6, 6, 6], m["ranks"]
assert sorted(set(slots)) == list(range(16)), slots
assert sorted(e for e in set(slots) if slots.count(e) == 2) == [0, 2], slots
print("map ok:", m["ranks"], "imbalance", m["imbalance"])
PY
    # plan reports the same expected imbalance for the map and the load
    "$ctl" plan --preset tiny --ep 3 --tokens-per-rank 8 --placement "$tmp/map.json" --load "$tmp/load.json" >"$tmp/plan" ||
      fail "plan exit $?"
    grep "^placement" "$tmp/plan"
    p=$(num "max/mean" "$tmp/plan")
    awk -v p="$p" -v b="$b" 'BEGIN { exit !(p - b < 1e-3 && b - p < 1e-3) }' || fail "plan says $p, placement said $b"
    "$ctl" plan --preset tiny --ep 3 --tokens-per-rank 8 --redundant-experts 2 --load "$tmp/load.json" --json \
      >"$tmp/plan.json" || fail "plan --json"
    python3 - "$tmp/plan.json" "$d" <<'PY' || fail "plan JSON"
import json, sys
j = json.load(open(sys.argv[1]))
pl = j["placement"]
assert pl["source"] == "default" and pl["num_slots"] == 18 and pl["slots_per_rank"] == [6, 6, 6], pl
assert j["local_experts"] == 6 and j["num_slots"] == 18, j
assert abs(pl["imbalance"] - float(sys.argv[2])) < 1e-3, (pl["imbalance"], sys.argv[2])
assert abs(max(pl["rank_load"]) / (sum(pl["rank_load"]) / 3) - pl["imbalance"]) < 1e-9, pl
print("plan json ok:", pl["imbalance"])
PY
    # STATS input: two ranks' objects concatenated -> EP size 2 from the file
    printf '{"rank":0,"experts":{"num_experts":4,"tokens_total":[10,0,0,2]}}\n{"rank":1,"experts":{"num_experts":4,"tokens_total":[6,1,1,0]}}\n' >"$tmp/stats.json"
    "$ctl" placement --from-stats "$tmp/stats.json" >"$tmp/m2" 2>"$tmp/err" || fail "stats input exit $?"
    grep -q "load: 4 experts, 20 tokens from 2 ranks' STATS" "$tmp/err" || fail "summary: $(cat "$tmp/err")"
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); assert m["ep_size"]==2 and m["load"]==[16,1,1,2], m' "$tmp/m2" ||
      fail "map from STATS"
    # refusals
    "$ctl" placement --from-stats "$tmp/load.json" >/dev/null 2>"$tmp/err"; rc=$?
    { [ $rc = 64 ] && grep -q "say how many ranks with --ep P" "$tmp/err"; } || fail "no --ep: rc $rc"
    "$ctl" placement --from-stats "$tmp/load.json" --ep 20 >/dev/null 2>"$tmp/err"; rc=$?
    { [ $rc = 64 ] && grep -q "cannot give each of 20 ranks a slot" "$tmp/err"; } || fail "--ep 20: rc $rc"
    printf '[1, -2]' >"$tmp/neg.json"
    "$ctl" placement --from-stats "$tmp/neg.json" --ep 1 >/dev/null 2>"$tmp/err"; rc=$?
    { [ $rc = 1 ] && grep -q "entry 1 is not a number >= 0" "$tmp/err"; } || fail "negative load: rc $rc"
    "$ctl" placement --from-stats "$tmp/none.json" --ep 1 >/dev/null 2>"$tmp/err"; rc=$?
    [ $rc = 1 ] || fail "missing file: rc $rc"
    ;;
  step)
    mkmap
    "$mpiexec" -np 3 --oversubscribe "$ctl" step --preset tiny --seed 9 --placement "$tmp/map.json" --check --tolerance 0 \
      --tokens-per-rank 21,0,13 --repeat 2 >"$tmp/out" 2>"$tmp/err" || fail "step exit $?"
    cat "$tmp/out"
    grep -q "placement $tmp/map.json: 18 slots (2 redundant), 6..6 per rank" "$tmp/out" || fail "placement line"
    grep -q "0 of 8704 elements differ, tolerance 0: PASS" "$tmp/out" || fail "not bit-identical"
    ;;
  refuse)
    mkmap
    sed '0,/    \[[0-9]*, /s//    [99, /' "$tmp/map.json" >"$tmp/bad.json" # rank 0's first slot: expert 99
    "$mpiexec" -np 3 --oversubscribe "$ctl" step --preset tiny --seed 9 --placement "$tmp/bad.json" \
      --tokens-per-rank 1,1,1 >/dev/null 2>"$tmp/err"; rc=$?
    cat "$tmp/err"
    { [ $rc != 0 ] && grep -q "ranks\[0\]\[0\] must be an expert id in \[0, num_experts 16)" "$tmp/err"; } || fail "bad entry: rc $rc"
    "$ctl" placement --from-stats "$tmp/load.json" --ep 4 --out "$tmp/map4.json" >/dev/null 2>&1 || fail "map4"
    "$mpiexec" -np 3 --oversubscribe "$ctl" step --preset tiny --seed 9 --placement "$tmp/map4.json" \
      --tokens-per-rank 1,1,1 >/dev/null 2>"$tmp/err"; rc=$?
    cat "$tmp/err"
    { [ $rc = 64 ] && grep -q "the placement maps 16 experts over 4 ranks, but model tiny has 16 experts and the group 3 ranks" \
      "$tmp/err"; } || fail "EP size mismatch: rc $rc"
    "$mpiexec" -np 3 --oversubscribe "$ctl" step --preset tiny --seed 9 --experts 2 --routing topk --top-k 1 \
      --redundant-experts 1 --tokens-per-rank 1,1,1 --check --tolerance 0 >"$tmp/out" 2>"$tmp/err" ||
      fail "2 experts + 1 redundant on 3 ranks should run: $(cat "$tmp/err")"
    grep -q "PASS" "$tmp/out" || fail "2 experts + 1 redundant: no PASS"
    ;;
  *) echo "unknown case $case_"; exit 2 ;;
esac
echo PASS
