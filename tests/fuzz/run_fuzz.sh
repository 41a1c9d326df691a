#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# run_fuzz.sh [SECONDS] — build the three libFuzzer targets (frame decoder,
# safetensors reader, checkpoint directory parser) with clang and
# -fsanitize=fuzzer,address,undefined into build-fuzz/ (a separate configure
# of the project, only the fuzz targets built) and run each for SECONDS
# (default: $EPMOE_FUZZ_SECONDS, else 30) from its corpus in
# tests/fuzz/corpus/<target>/. New inputs go to build-fuzz/corpus/<target>/,
# findings to build-fuzz/artifacts/. Exit 0 clean, 1 on a finding or a build
# failure, 77 without clang. The command for an unlimited run: tests/fuzz/README.md.
#   env: EPMOE_FUZZ_BUILD (build dir), EPMOE_FUZZ_TARGETS ("frame safetensors model_config")
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-${EPMOE_FUZZ_SECONDS:-30}}
bdir=${EPMOE_FUZZ_BUILD:-$root/build-fuzz}
targets=${EPMOE_FUZZ_TARGETS:-frame safetensors model_config}
if ! command -v clang >/dev/null || ! command -v clang++ >/dev/null; then
  echo "SKIP: clang not found (apt-get install clang)"
  exit 77
fi

echo "== fuzz: configure $bdir (clang, fuzzer-no-link,address,undefined)"
mkdir -p "$bdir"
cmake -S "$root" -B "$bdir" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DEPMOE_CUDA=OFF \
  -DEPMOE_SANITIZE=fuzzer-no-link,address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  >"$bdir/configure.log" 2>&1 || { cat "$bdir/configure.log"; exit 1; }
bins=()
for t in $targets; do bins+=("fuzz_$t"); done
echo "== fuzz: build ${bins[*]}"
cmake --build "$bdir" -j "$(nproc 2>/dev/null || echo 2)" --target "${bins[@]}" >"$bdir/build.log" 2>&1 ||
  { tail -50 "$bdir/build.log"; exit 1; }

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in $targets; do
  mkdir -p "$bdir/corpus/$t" "$bdir/artifacts"
  args=(-max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
        -artifact_prefix="$bdir/artifacts/$t-")
  [ -f "$root/tests/fuzz/$t.dict" ] && args+=(-dict="$root/tests/fuzz/$t.dict")
  echo "== fuzz: $t for ${secs} s"
  if ! "$bdir/tests/fuzz_$t" "${args[@]}" "$bdir/corpus/$t" "$root/tests/fuzz/corpus/$t" 2>"$bdir/$t.log"; then
    tail -60 "$bdir/$t.log"
    echo "FAIL: fuzz_$t found a problem; inputs in $bdir/artifacts/ (replay: $bdir/tests/fuzz_$t FILE)"
    status=1
    continue
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$bdir/$t.log" |
    tr '\n' ' ' | sed "s/^/fuzz_$t: /"
  echo
done
exit "$status"
