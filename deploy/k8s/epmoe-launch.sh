#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/k8s/epmoe-launch.sh — the MPIJob launcher's command (deploy/k8s/mpijob.yaml),
# installed as $PREFIX/share/epmoe/deploy/k8s/epmoe-launch.sh.
#   epmoe-launch.sh [epmoed flags...]
# Environment:
#   EPMOE_WORKERS, EPMOE_SLOTS  worker pods and ranks per worker (= Worker
#                 replicas and slotsPerWorker = GPUs per worker); required
#   EPMOE_MODEL   checkpoint dir on every worker (or EPMOE_PRESET for tests)
#   EPMOE_PREFIX  install prefix on the workers (default /opt/epmoe); EPMOE_BIN overrides its bin/
#   EPMOE_SOCKET_DIR  on the workers (default /run/epmoe/sock: a directory the
#                 daemon creates 0750 inside the pod's shared emptyDir /run/epmoe,
#                 which itself is world-writable and would be refused)
#   EPMOE_READY_FILE  created here once every rank is healthy (default
#                 /tmp/epmoe-ready): the launcher's readinessProbe tests it
#   EPMOE_READY_TIMEOUT  seconds (default 1800)
#   EPMOE_DRAIN_TIMEOUT  seconds a drain may take on SIGTERM (default 60)
# Every other EPMOE_* variable is passed to every rank (mpirun -x); the ones
# above that are this script's own are kept away from the daemons, which
# treat EPMOE_* as their settings.
# Readiness is this script's job: the workers are Ready as soon as their sshd
# listens (that is what launcherCreationPolicy: WaitForWorkersReady waits for),
# and the group is ready when this script has created EPMOE_READY_FILE.
# Fault model: fail-stop. If a rank dies mpirun ends, this script exits non-zero
# and the MPIJob's backoffLimit recreates the whole group.
set -euo pipefail
say() { echo "epmoe-launch: $*"; }
die() { echo "epmoe-launch: error: $*" >&2; exit 2; }

workers=${EPMOE_WORKERS:?set EPMOE_WORKERS to the number of worker pods}
slots=${EPMOE_SLOTS:?set EPMOE_SLOTS to the ranks (GPUs) per worker}
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "EPMOE_WORKERS='$workers' is not a positive integer"
[[ "$slots" =~ ^[1-9][0-9]*$ ]] || die "EPMOE_SLOTS='$slots' is not a positive integer"
if [ -z "${EPMOE_MODEL:-}" ] && [ -z "${EPMOE_PRESET:-}" ]; then
  die "set EPMOE_MODEL to the NVFP4 checkpoint dir (or EPMOE_PRESET=tiny for a test)"
fi
BIN=${EPMOE_BIN:-${EPMOE_PREFIX:-/opt/epmoe}/bin}
export EPMOE_SOCKET_DIR=${EPMOE_SOCKET_DIR:-/run/epmoe/sock}
ready_file=${EPMOE_READY_FILE:-/tmp/epmoe-ready}
rm -f "$ready_file"
np=$(( workers * slots ))

own=(EPMOE_WORKERS EPMOE_SLOTS EPMOE_PREFIX EPMOE_BIN EPMOE_READY_FILE EPMOE_READY_TIMEOUT EPMOE_DRAIN_TIMEOUT)
fwd=() clean=()
for v in "${own[@]}"; do clean+=(-u "$v"); done
while IFS= read -r v; do
  [[ " ${own[*]} " == *" $v "* ]] || fwd+=(-x "$v")
done < <(compgen -e | grep '^EPMOE_' || true)
# mpirun: ranks on this host would inherit our whole environment.
mpirun() { env "${clean[@]}" mpirun "$@"; }
per_worker() { mpirun -np "$workers" --map-by ppr:1:node "${fwd[@]}" "$@"; }

# Fail fast, naming the worker, when the model is not where the ranks will look.
if [ -n "${EPMOE_MODEL:-}" ]; then
  # shellcheck disable=SC2016  # expanded by the shell on each worker
  per_worker bash -c 'test -r "$EPMOE_MODEL/config.json" ||
    { echo "epmoe-launch: error: $(hostname): no readable $EPMOE_MODEL/config.json" >&2; exit 1; }' ||
    die "the model is missing on a worker (see above)"
fi

say "starting $np ranks ($workers workers x $slots): ${EPMOE_MODEL:-preset ${EPMOE_PRESET:-}}, sockets in $EPMOE_SOCKET_DIR"
mpirun -np "$np" "${fwd[@]}" "$BIN/epmoed" "$@" &
MP=$!
# Leaving for any other reason (an error below) must not leave the group running.
trap 'kill -0 "$MP" 2>/dev/null && kill -TERM "$MP"' EXIT

# SIGTERM (pod deletion): drain the group through rank 0's socket (mpirun
# itself would SIGKILL the ranks shortly after forwarding SIGTERM), then wait.
# shellcheck disable=SC2317  # called from the trap below
drain() {
  say "SIGTERM: draining the group"
  rm -f "$ready_file"
  mpirun -np 1 "${fwd[@]}" "$BIN/epmoectl" shutdown --rank 0 >/dev/null 2>&1 || true
  for _ in $(seq 1 $(( ${EPMOE_DRAIN_TIMEOUT:-60} * 5 ))); do kill -0 "$MP" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$MP" 2>/dev/null && { say "drain timed out; stopping mpirun"; kill -TERM "$MP"; }
  rc=0
  wait "$MP" || rc=$?
  say "group exited with status $rc"
  exit "$rc"
}
trap drain TERM INT

timeout=${EPMOE_READY_TIMEOUT:-1800}
start=$SECONDS
until per_worker "$BIN/epmoectl" health --all --quiet >/dev/null 2>&1; do
  if ! kill -0 "$MP" 2>/dev/null; then
    rc=0
    wait "$MP" || rc=$?
    die "the daemons exited (status $rc) before they were ready"
  fi
  [ $(( SECONDS - start )) -lt "$timeout" ] || die "not every rank was healthy within ${timeout} s (EPMOE_READY_TIMEOUT)"
  sleep 2
done
touch "$ready_file"
say "all $np ranks ready after $(( SECONDS - start )) s"
rc=0
wait "$MP" || rc=$?
# `wait` also returns early when a trapped signal arrives; drain() exits itself.
say "group exited with status $rc"
exit "$rc"
