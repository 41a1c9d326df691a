#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# shellcheck disable=SC2086  # $common and $split hold several words on purpose
# step_runs.sh — checks of `epmoectl step` that need more than one mpirun or
# an exit-code/message check. Usage: step_runs.sh CASE MPIEXEC EPMOECTL
#   repeat   two separate jobs of the same problem print the same checksum
#   split    EP=4: the splits 3,5,0,8 / 4,4,4,4 / 0,0,16,0 of the same 16
#            tokens give bit-identical global outputs (each row's partials
#            are summed over the same ranks in the same order wherever the
#            row lives), and so does a second job
#   badlen   a list of 3 counts in a job of 2 ranks -> exit 64 with a message
#   badexp   2 experts over 3 ranks (a rank without a slot) -> exit 64 naming the fix
#   cuda     (label gpu; exit 77 without a GPU) the cuda backend + NCCL comm
#            against the EP=1 CPU reference: EP 1, and EP 2 with 2 GPUs;
#            tolerance 0.05 = the kernels' documented max|diff|/max|ref| vs
#            the reference (tests/gpu/test_gpu_moe.c), repeats bit-identical
#   json     --json --check prints one JSON object whose checksum and check
#            agree with the text output of the same job (python3 parses it)
#   modes    EP=4: --dispatch allgather / alltoall / auto on the splits
#            3,5,0,8 and 0,0,16,0 all print one checksum (the alltoall sum
#            adds the same terms in the same rank order)
#   calibrate --calibrate-dispatch --json: one object, latencies >= 0,
#            bandwidths > 0, and the flags line that feeds them back is
#            accepted by a step with --dispatch auto
#   overflow --recv-capacity 2 with 16 tokens: every rank exits with the
#            capacity error naming a rank and the numbers (exit 1, no hang)
set -u
case_="$1" mpiexec="$2" ctl="$3"
run() { # NP ARGS... -> stdout of the job; exit status in $rc
  np="$1"; shift
  out=$("$mpiexec" -np "$np" --oversubscribe "$ctl" step "$@" 2>"$tmp.err"); rc=$?
}
fnv() { printf '%s\n' "$out" | sed -n 's/^checksum fnv1a64 \([0-9a-f]*\).*/\1/p'; }
fail() { echo "FAIL: $*"; cat "$tmp.err" 2>/dev/null; exit 1; }
tmp=$(mktemp); trap 'rm -f "$tmp" "$tmp.err"' EXIT
common="--preset tiny --seed 11"

case "$case_" in
  repeat)
    run 4 $common --tokens-per-rank 3,5,0,8; [ $rc = 0 ] || fail "first job rc $rc"; a=$(fnv)
    run 4 $common --tokens-per-rank 3,5,0,8; [ $rc = 0 ] || fail "second job rc $rc"; b=$(fnv)
    echo "job 1 $a, job 2 $b"
    { [ -n "$a" ] && [ "$a" = "$b" ]; } || fail "checksums differ across jobs: $a vs $b"
    ;;
  split)
    sums=""
    for split in 3,5,0,8 4,4,4,4 0,0,16,0 3,5,0,8; do
      run 4 $common --tokens-per-rank $split; [ $rc = 0 ] || fail "split $split rc $rc"
      s=$(fnv); echo "split $split: $s"; [ -n "$s" ] || fail "no checksum for $split"
      sums="$sums $s"
    done
    [ "$(printf '%s\n' $sums | sort -u | wc -l)" = 1 ] || fail "splits of one token set differ:$sums"
    ;;
  badlen)
    run 2 $common --tokens-per-rank 1,2,3
    cat "$tmp.err"
    [ $rc = 64 ] || fail "expected exit 64, got $rc"
    grep -q "has 3 values but the job has 2 ranks" "$tmp.err" || fail "message missing"
    [ "$(grep -c 'has 3 values' "$tmp.err")" = 1 ] || fail "message printed more than once"
    ;;
  badexp)
    run 3 $common --experts 2 --routing topk --top-k 1 --tokens-per-rank 1,2,3
    cat "$tmp.err"
    [ $rc = 64 ] || fail "expected exit 64, got $rc"
    grep -q "2 slots (2 experts + 0 redundant) cannot give each of 3 ranks a slot; use at most 2 ranks or add redundant experts" "$tmp.err" || fail "message missing"
    ;;
  json)
    run 4 $common --tokens-per-rank 3,5,0,8 --check; [ $rc = 0 ] || fail "text job rc $rc"; a=$(fnv)
    run 4 $common --tokens-per-rank 3,5,0,8 --check --json; [ $rc = 0 ] || fail "json job rc $rc"
    command -v python3 >/dev/null || { echo "no python3: skipping the parse"; echo PASS; exit 0; }
    printf '%s\n' "$out" | python3 -c '
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
assert len(lines) == 1, "expected one line of JSON, got %d" % len(lines)
j = json.loads(lines[0])
assert j["ep"] == 4 and j["tokens_per_rank"] == [3, 5, 0, 8] and j["tokens"] == 16, j
assert [r["tokens"] for r in j["ranks"]] == [3, 5, 0, 8]
for r in j["ranks"]:
    assert set(r["stage_ms"]) == {"route", "quantize", "sizes", "allgather", "a2a_dispatch", "experts", "reduce_scatter", "a2a_combine", "shared", "total"}, r
    assert all(v >= 0 for v in r["stage_ms"].values()), r
    assert set(r["dispatch"]) == {"alltoall_steps", "expert_rows", "expert_chunks", "dispatch_sent", "dispatch_recv", "combine_sent", "combine_recv"}, r
    assert r["dispatch"]["alltoall_steps"] == 0 and r["dispatch"]["expert_rows"] == 16 and r["dispatch"]["expert_chunks"] == 1, r
    M, m = 16, r["tokens"]; Bd = 256 // 2 + 256 // 16 + 8 * 4; Bc = 4 * 256  # tiny: H 256, top-4
    assert r["dispatch"]["dispatch_sent"] == 3 * m * Bd and r["dispatch"]["dispatch_recv"] == (M - m) * Bd, r
    assert r["dispatch"]["combine_sent"] == (M - m) * Bc and r["dispatch"]["combine_recv"] == 3 * m * Bc, r
assert j["dispatch"] == "allgather", j["dispatch"]
assert j["check"]["pass"] is True and j["check"]["max_err"] <= j["check"]["tolerance"], j["check"]
assert j["checksum"]["fnv1a64"] == sys.argv[1], (j["checksum"], sys.argv[1])
print("json ok:", j["checksum"]["fnv1a64"])
' "$a" || fail "bad JSON"
    ;;
  modes)
    sums=""
    for mode in allgather alltoall auto; do
      for split in 3,5,0,8 0,0,16,0; do
        run 4 $common --tokens-per-rank $split --dispatch $mode; [ $rc = 0 ] || fail "$mode $split rc $rc"
        s=$(fnv); echo "$mode $split: $s"; [ -n "$s" ] || fail "no checksum for $mode $split"
        sums="$sums $s"
      done
    done
    [ "$(printf '%s\n' $sums | sort -u | wc -l)" = 1 ] || fail "modes or splits differ:$sums"
    ;;
  calibrate)
    run 3 $common --experts 24 --tokens-per-rank 1,1,1 --calibrate-dispatch --json; [ $rc = 0 ] || fail "calibrate rc $rc"
    command -v python3 >/dev/null || { echo "no python3: skipping the parse"; echo PASS; exit 0; }
    flags=$(printf '%s\n' "$out" | python3 -c '
import json, sys
lines = [l for l in sys.stdin.read().splitlines() if l.strip()]
assert len(lines) == 1, lines
j = json.loads(lines[0])
assert j["comm"] == "mpi" and j["ep"] == 3, j
for m in ("allgather", "alltoall"):
    assert j["latency_us"][m] >= 0 and j["gbps"][m] > 0, j
print(j["flags"])
') || fail "bad calibration JSON: $out"
    echo "calibrated: $flags"
    run 3 $common --experts 24 --tokens-per-rank 2,0,5 --dispatch auto --check $flags
    [ $rc = 0 ] || fail "auto step with the calibrated terms rc $rc"
    ;;
  a2a_placed)
    # alltoall on an uneven split (16 experts on 3 ranks): bit-identical to
    # EP=1; with redundant experts it is refused on every rank, naming the fix.
    run 3 $common --tokens-per-rank 4,0,6 --dispatch alltoall --check --tolerance 0
    printf '%s\n' "$out"
    [ $rc = 0 ] || fail "alltoall on 16 experts over 3 ranks: exit $rc"
    printf '%s\n' "$out" | grep -q "PASS" || fail "no PASS line"
    run 3 $common --tokens-per-rank 4,0,6 --dispatch alltoall --redundant-experts 2
    cat "$tmp.err"
    [ $rc = 64 ] || fail "alltoall with redundant experts: expected exit 64, got $rc"
    grep -q "alltoall dispatch needs one slot per expert, but expert 0 has 2 copies" "$tmp.err" || fail "message missing"
    ;;
  overflow)
    run 4 $common --tokens-per-rank 3,5,0,8 --dispatch alltoall --recv-capacity 2
    cat "$tmp.err"
    [ $rc = 1 ] || fail "expected exit 1, got $rc"
    n=$(grep -c "EPM_ERR_OVERFLOW: alltoall dispatch: rank [0-3] would receive [0-9]* token rows this step.*above its receive capacity of 2 rows" "$tmp.err")
    [ "$n" = 4 ] || fail "expected the capacity error from all 4 ranks, got $n"
    ;;
  cuda)
    ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    [ "${ngpu:-0}" -ge 1 ] || { echo "no GPU: skipped"; exit 77; }
    run 1 $common --backend cuda --tokens-per-rank 13 --check --tolerance 0.05 --repeat 2
    printf '%s\n' "$out"; [ $rc = 0 ] || fail "EP 1 on cuda rc $rc"
    run 1 $common --backend cuda --tokens-per-rank 7 --check --tolerance 0.05 --scale dynamic --routing llama4
    printf '%s\n' "$out"; [ $rc = 0 ] || fail "EP 1 on cuda, dynamic scale + llama4 rc $rc"
    if [ "$ngpu" -ge 2 ]; then
      run 2 $common --backend cuda --tokens-per-rank 5,8 --check --tolerance 0.05 --repeat 2
      printf '%s\n' "$out"; [ $rc = 0 ] || fail "EP 2 on cuda rc $rc"
      run 2 --preset deepseek-r1 --experts 16 --seed 3 --backend cuda --tokens-per-rank 3,6 --check --tolerance 0.05
      printf '%s\n' "$out"; [ $rc = 0 ] || fail "EP 2 DeepSeek dims on cuda rc $rc"
    fi
    ;;
  *) echo "unknown case $case_"; exit 2 ;;
esac
echo PASS
