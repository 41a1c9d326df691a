#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# daemon_gpu.sh — epmoed on the cuda backend (label gpu; exit 77 without a GPU).
#   daemon_gpu.sh MPIEXEC BINDIR
# One daemon per GPU (at most 2): readiness, FORWARD inline / memfd / CUDA
# device memory (cuMemCreate fd over SCM_RIGHTS, and the legacy
# cudaIpcMemHandle_t fallback) with --check against the
# EP=1 CPU reference, a short bench per data path, clean shutdown.
set -u
MPIEXEC=$1 BIN=$2
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "${ngpu:-0}" -ge 1 ] || { echo "no GPU: skip"; exit 77; }
NP=$((ngpu >= 2 ? 2 : 1))
T=$(mktemp -d /tmp/epmoe-gpu.XXXXXX)
S=$T/s MP=""
fail() { echo "FAIL: $*"; tail -30 "$T/log"; exit 1; }
cleanup() { [ -n "$MP" ] && kill -TERM "$MP" 2>/dev/null; sleep 1; [ -n "$MP" ] && kill -KILL "$MP" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
counts=$([ $NP = 2 ] && echo 64,0 || echo 64)
both=$([ $NP = 2 ] && echo 64,64 || echo 64)

$MPIEXEC -np $NP --oversubscribe "$EPMOED" --preset tiny --backend cuda --socket-dir "$S" >"$T/log" 2>&1 &
MP=$!
for _ in $(seq 1 300); do "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && break; kill -0 $MP 2>/dev/null || fail "daemons exited"; sleep 0.2; done
"$CTL" health --socket-dir "$S" || fail "not healthy within 60 s"
"$CTL" status --socket-dir "$S" --rank 0 | grep -q '^backend:cuda' || fail "backend is not cuda"
for mode in "" --shm --devmem --devipc; do
  out=$("$CTL" forward --socket-dir "$S" --tokens-per-rank "$counts" --random --check $mode 2>&1) || fail "forward $mode: $out"
  echo "$out" | tail -1
  "$CTL" bench --socket-dir "$S" --tokens-per-rank "$both" --duration 2 $mode 2>&1 | tail -2 || fail "bench $mode"
done
"$CTL" shutdown --socket-dir "$S" --rank 0 >/dev/null || fail "shutdown"
for _ in $(seq 1 100); do kill -0 $MP 2>/dev/null || break; sleep 0.1; done
wait $MP; rc=$?; MP=""
[ $rc = 0 ] || fail "exit $rc after shutdown"
echo "PASS: daemon on cuda, $NP GPU(s), inline + memfd + device memory (fd + IPC handle)"
