#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# multi_gpu.sh — the checks and benchmarks that need several GPUs on one host.
# Run on a GPU node after building into BUILD:
#
#   tests/gpu/multi_gpu.sh N BUILD [NCCL_TESTS_DIR]
#
# 1. ctest -L gpu (non-large): kernels vs the CPU reference, NCCL vs MPI comm
#    at 2 ranks, the cuda step at EP 1/2, the daemon on GPUs.
# 2. NCCL comm vs MPI comm at N ranks.
# 3. `epmoectl step --backend cuda --check` at EP N against the EP=1 CPU
#    reference: unequal and zero token counts, tiny and DeepSeek-R1 dims.
# 4. Benchmarks (not pass/fail): the step's collectives (bench_comm --nccl)
#    beside nccl-tests all_gather_perf / reduce_scatter_perf at the same byte
#    counts, and the whole MoE layer at DeepSeek-R1 dims per stage.
# Exits non-zero if any check in 1-3 failed; prints a summary line.
set -u
N=${1:?number of GPUs}
B=${2:?build dir}
NT=${3:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPI=(mpirun --oversubscribe --bind-to none -np)
failed=()

run() { # name cmd...
  local name=$1
  shift
  echo "== $name: $*"
  "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "== FAILED ($rc): $name"
    failed+=("$name")
  fi
}

# A token list for N ranks with a zero, an odd count and a big one.
tokens() { # base
  local b=$1 out="" r
  for ((r = 0; r < N; r++)); do
    case $((r % 4)) in 0) t=$b ;; 1) t=0 ;; 2) t=$((b * 2 + 3)) ;; 3) t=$((b / 3 + 1)) ;; esac
    out="$out${out:+,}$t"
  done
  echo "$out"
}

run ctest-gpu ctest --test-dir "$B" -L gpu -LE large --output-on-failure
if [ "$N" -gt 2 ]; then
  run "comm-nccl-np$N" "${MPI[@]}" "$N" "$B/tests/test_comm_nccl"
fi
C=("$B/daemon/epmoectl" step --backend cuda --check --tolerance 0.05)
run "step-tiny-ep$N" "${MPI[@]}" "$N" "${C[@]}" --preset tiny --seed 5 --tokens-per-rank "$(tokens 64)" --repeat 2
run "step-tiny-allzero-ep$N" "${MPI[@]}" "$N" "${C[@]}" --preset tiny --seed 5 --tokens-per-rank "$(seq 2 "$N" | sed 's/.*/0/' | tr '\n' ',')0"
run "step-deepseek-ep$N" "${MPI[@]}" "$N" "${C[@]}" --preset deepseek-r1 --experts $((8 * N)) --seed 3 \
  --tokens-per-rank "$(tokens 96)"

echo "== benchmarks (not pass/fail)"
for m in 128 1024 4096; do
  "${MPI[@]}" "$N" "$B/tests/bench_comm" --nccl "$m" 7168 8 20
done
if [ -n "$NT" ] && [ -x "$NT/build/all_gather_perf" ]; then
  # Same byte counts as bench_comm's rows: allgather M*(H/2+H/16+8k) B total,
  # reduce-scatter M*H*2 B (bf16) total, M = N*m.
  for m in 128 1024 4096; do
    ag=$((N * m * (3584 + 448 + 64)))
    rs=$((N * m * 7168 * 2))
    "${MPI[@]}" "$N" "$NT/build/all_gather_perf" -b "$ag" -e "$ag" -g 1 -n 20 -w 5 -c 0 | grep -E '^ +[0-9]'
    "${MPI[@]}" "$N" "$NT/build/reduce_scatter_perf" -b "$rs" -e "$rs" -g 1 -n 20 -w 5 -c 0 -d bfloat16 | grep -E '^ +[0-9]'
  done
fi
for m in 128 1024; do
  "${MPI[@]}" "$N" "$B/daemon/epmoectl" step --backend cuda --preset deepseek-r1 --experts $((8 * N)) --seed 1 \
    --tokens-per-rank "$(printf "$m%.0s," $(seq 2 "$N"))$m" --warmup 2 --repeat 10
done

if [ ${#failed[@]} -eq 0 ]; then
  echo "multi_gpu: N=$N all checks passed"
else
  echo "multi_gpu: N=$N FAILED: ${failed[*]}"
  exit 1
fi
