#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tests/run.sh — the test command: installs what is missing (Debian/Ubuntu, as
# root), configures, builds and runs ctest. Used by .ci/run and by developers.
#
#   ./tests/run.sh                  normal build in build/, all labels but fuzz
#   ./tests/run.sh --sanitize       ASan+UBSan build in build-san/, no 'large'
#   ./tests/run.sh -L cpu           only tests with that label (ctest -L)
#   ./tests/run.sh -L fuzz          the libFuzzer runs (excluded otherwise; .ci/run
#                                   calls tests/fuzz/run_fuzz.sh itself)
#   ./tests/run.sh --no-install     never call apt-get/pip
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0 install=1 labels="" exclude="" jobs="$(nproc 2>/dev/null || echo 2)"
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --no-install) install=0 ;;
    -L) labels="$2"; shift ;;
    -LE) exclude="$2"; shift ;;
    -j) jobs="$2"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "tests/run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '== %s\n' "$*"; }

need_pkgs() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v mpicc >/dev/null || missing+=(libopenmpi-dev openmpi-bin)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v clang >/dev/null || missing+=(clang) # the libFuzzer targets (tests/fuzz)
  for pc in libuv jansson cmocka; do
    pkg-config --exists "$pc" 2>/dev/null || case "$pc" in
      libuv) missing+=(libuv1-dev) ;; jansson) missing+=(libjansson-dev) ;; cmocka) missing+=(libcmocka-dev) ;;
    esac
  done
  printf '%s\n' "${missing[@]+"${missing[@]}"}"
}

if [ "$install" = 1 ]; then
  mapfile -t missing < <(need_pkgs)
  if [ "${#missing[@]}" -gt 0 ] && [ -n "${missing[0]}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "tests/run.sh: missing packages: ${missing[*]} (install them, or run as root)" >&2
      exit 1
    fi
  fi
  # The safetensors interop test uses the reference Python implementation.
  if command -v python3 >/dev/null && ! python3 -c 'import safetensors, numpy' 2>/dev/null; then
    say "installing python safetensors + numpy"
    python3 -m pip install -q safetensors numpy 2>/dev/null || echo "tests/run.sh: pip install failed; interop tests will skip" >&2
  fi
fi

if [ -d /usr/local/cuda/bin ]; then export PATH="$PATH:/usr/local/cuda/bin"; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

if [ "$sanitize" = 1 ]; then
  bdir=build-san
  cfg=("-DEPMOE_SANITIZE=address,undefined" -DEPMOE_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug)
  # DeepSeek-size and >2^31 work is far too slow under ASan on 2 cores.
  # The fault suite asserts detection bounds in seconds, which ASan's
  # slowdown on 2 cores would make flaky: it runs in the normal build.
  exclude="${exclude:+$exclude|}large|fault"
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
else
  bdir=build
  cfg=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
fi

# The fuzz label rebuilds the project with clang and runs for minutes: only
# when asked for (-L fuzz).
case "$labels" in *fuzz*) ;; *) exclude="${exclude:+$exclude|}fuzz" ;; esac

say "configure $bdir"
cmake -S . -B "$bdir" "${cfg[@]}" -DEPMOE_WERROR=ON >"$bdir.configure.log" 2>&1 || { cat "$bdir.configure.log"; exit 1; }
grep -E 'epmoe:' "$bdir.configure.log" || true
say "build $bdir (-j$jobs)"
cmake --build "$bdir" -j "$jobs"
say "ctest $bdir ${labels:+-L $labels} ${exclude:+-LE $exclude}"
args=(--test-dir "$bdir" --output-on-failure -j "$jobs")
[ -n "$labels" ] && args+=(-L "$labels")
[ -n "$exclude" ] && args+=(-LE "$exclude")
ctest "${args[@]}"
