#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/quickstart.sh — the first command on a fresh machine:
#   installs missing packages (Debian/Ubuntu, when run as root), builds epmoed
#   and epmoectl, starts `mpirun -np 2 epmoed --preset tiny` (cuda backend when
#   a GPU is visible, else cpu) in the background, waits for health, runs
#   `epmoectl health --all`, `epmoectl forward --all --tokens-per-rank 64,0
#   --random --check`, `epmoectl status`, a 3-second bench, and shuts the
#   daemons down. Prints each command; ends with a one-line summary; the exit
#   code is 0 only when everything passed.
#     ./deploy/quickstart.sh [--no-install] [--keep]   (--keep: leave the daemons running)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
install=1 keep=0
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "quickstart: unknown option '$a' (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
summary() { echo; echo "quickstart: $*"; }

# 1. packages ------------------------------------------------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(build-essential)
command -v mpirun >/dev/null || missing+=(openmpi-bin libopenmpi-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
for pc in libuv:libuv1-dev jansson:libjansson-dev cmocka:libcmocka-dev; do
  pkg-config --exists "${pc%%:*}" 2>/dev/null || missing+=("${pc#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$install" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]}"
    if ! { run apt-get update -qq && DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
      summary "FAILED installing packages"; exit 1
    fi
  else
    echo "quickstart: missing packages: ${missing[*]} (install them, or run as root)" >&2
    summary "FAILED: missing packages"; exit 1
  fi
fi

# 2. build ---------------------------------------------------------------------
say "building (build/)"
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
echo '$ cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo   (output in build.quickstart.log)'
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >build.quickstart.log 2>&1 ||
  { tail -20 build.quickstart.log; summary "FAILED: cmake configure (build.quickstart.log)"; exit 1; }
echo '$ cmake --build build --target epmoed epmoectl'
cmake --build build -j "$(nproc 2>/dev/null || echo 2)" --target epmoed epmoectl >>build.quickstart.log 2>&1 ||
  { tail -30 build.quickstart.log; summary "FAILED: build (build.quickstart.log)"; exit 1; }
CTL=build/daemon/epmoectl EPMOED=build/daemon/epmoed

# 3. start two daemons ----------------------------------------------------------
backend=cpu
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU' && grep -q EPMOE_HAVE_CUDA build/CMakeCache.txt 2>/dev/null &&
   grep -q 'EPMOE_HAVE_CUDA:INTERNAL=ON' build/CMakeCache.txt 2>/dev/null; then
  backend=cuda
fi
base=${XDG_RUNTIME_DIR:-/tmp}
SOCK=$(mktemp -d "$base/epmoe-quickstart.XXXXXX")/s
LOG=${SOCK%/s}/epmoed.log
export EPMOE_SOCKET_DIR=$SOCK
# Open MPI: allow root (containers) and 2 ranks on a 1-core machine.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
say "starting 2 daemons, backend $backend, sockets in $SOCK (log $LOG)"
printf '$ mpirun -np 2 %s --preset tiny --backend %s --socket-dir %s &\n' "$EPMOED" "$backend" "$SOCK"
mpirun -np 2 "$EPMOED" --preset tiny --backend "$backend" --socket-dir "$SOCK" >"$LOG" 2>&1 &
MP=$!
stop() {
  if kill -0 "$MP" 2>/dev/null; then
    "$CTL" shutdown --all >/dev/null 2>&1
    for _ in $(seq 1 50); do kill -0 "$MP" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$MP" 2>/dev/null
  fi
}
[ "$keep" = 1 ] || trap stop EXIT

ready=0
for _ in $(seq 1 300); do
  "$CTL" health --all --quiet >/dev/null 2>&1 && { ready=1; break; }
  kill -0 "$MP" 2>/dev/null || break
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  tail -20 "$LOG"; summary "FAILED: daemons not healthy within 60 s (log $LOG)"; exit 1
fi

# 4. talk to them ----------------------------------------------------------------
say "health"
run "$CTL" health --all || { summary "FAILED: health"; exit 1; }
say "one collective FORWARD: 64 tokens on rank 0, none on rank 1, checked against the CPU reference"
out=$(run "$CTL" forward --all --tokens-per-rank 64,0 --random --check 2>&1); rc=$?
echo "$out"
[ $rc = 0 ] || { tail -20 "$LOG"; summary "FAILED: forward --check"; exit 1; }
check=$(echo "$out" | sed -n 's/.*max relative error \([^ ]*\).*/\1/p')
say "status (rank 0)"
run "$CTL" status --rank 0 | sed -n '1,/^# Config/p' | grep -v '^# Config'
say "bench (3 s, 64 tokens per rank)"
bench=$(run "$CTL" bench --all --tokens-per-rank 64,64 --duration 3 2>&1); echo "$bench"
tps=$(echo "$bench" | sed -n 's/.* \([0-9.]*\) tokens\/s.*/\1/p')

# 5. shut down -------------------------------------------------------------------
if [ "$keep" = 1 ]; then
  summary "OK: 2 daemons ($backend) healthy, forward --check PASS (max rel err $check), ${tps:-?} tokens/s; left running (EPMOE_SOCKET_DIR=$SOCK)"
  exit 0
fi
say "shutdown"
run "$CTL" shutdown --all
for _ in $(seq 1 50); do kill -0 "$MP" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$MP" 2>/dev/null; then summary "FAILED: daemons did not exit after shutdown"; exit 1; fi
wait "$MP"; rc=$?
trap - EXIT
[ $rc = 0 ] || { tail -10 "$LOG"; summary "FAILED: daemons exited with $rc"; exit 1; }
summary "OK: 2 daemons ($backend) healthy, forward --check PASS (max rel err $check), bench ${tps:-?} tokens/s, clean shutdown (exit 0)"
