#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# doorbell_gpu.sh — the device-mode doorbell in a CUDA graph (label gpu; exit
# 77 without a GPU): one daemon on the cuda backend (tiny preset, 2 layers),
# tests/gpu/doorbell_gpu.c as its client, clean shutdown.
#   doorbell_gpu.sh MPIEXEC BINDIR PROGRAM
set -u
MPIEXEC=$1 BIN=$2 PROG=$3
CTL=$BIN/epmoectl EPMOED=$BIN/epmoed
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
[ "${ngpu:-0}" -ge 1 ] || { echo "no GPU: skip"; exit 77; }
T=$(mktemp -d /tmp/epmoe-dbgpu.XXXXXX)
S=$T/s MP=""
fail() { echo "FAIL: $*"; tail -30 "$T/log"; exit 1; }
cleanup() { [ -n "$MP" ] && kill -TERM "$MP" 2>/dev/null; sleep 1; [ -n "$MP" ] && kill -KILL "$MP" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
$MPIEXEC -np 1 --oversubscribe "$EPMOED" --preset tiny --layers 2 --backend cuda --socket-dir "$S" >"$T/log" 2>&1 &
MP=$!
for _ in $(seq 1 300); do "$CTL" health --socket-dir "$S" --quiet >/dev/null 2>&1 && break; kill -0 $MP 2>/dev/null || fail "daemon exited"; sleep 0.2; done
"$CTL" health --socket-dir "$S" || fail "not healthy within 60 s"
timeout 120 "$PROG" "$S" || fail "doorbell_gpu"
"$CTL" shutdown --socket-dir "$S" --rank 0 >/dev/null || fail "shutdown"
wait $MP; rc=$?; MP=""
[ $rc = 0 ] || fail "exit $rc after shutdown"
echo "PASS: device-mode doorbell in a CUDA graph"
