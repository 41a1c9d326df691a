#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# slurm_it.sh — deploy/slurm/epmoed.sbatch on a real single-node Slurm
# (label slurm). As root: installs slurm-wlm + munge when missing (apt-get),
# starts a private munged/slurmctld/slurmd (tests/slurm/slurm_local.sh), then
#   1. submits the recipe unchanged except for sbatch flags that override its
#      #SBATCH lines for a CPU node (1 node, 2 tasks, no GPUs) and the CPU
#      backend with --preset tiny from the environment;
#   2. waits for the recipe's own "all 2 ranks ready" line;
#   3. runs `epmoectl forward --all --random --check` against the job's sockets;
#   4. scancel, then checks the job ended CANCELLED, both ranks logged the
#      SIGTERM drain and "exit 0", their processes are gone and the sockets
#      were removed;
#   5. checks the recipe fails fast: a missing model (a clear line, the job
#      FAILED within seconds, no allocation held) and cuda without GPUs.
# Exit 77 only when Slurm cannot be installed (not root, no apt-get, or the
# install failed). Every wait is bounded.
#   slurm_it.sh SOURCE_DIR BINDIR
set -u
SRC=$1 BIN=$2
RECIPE=$SRC/deploy/slurm/epmoed.sbatch
need_pkgs=(slurm-wlm slurmctld slurmd slurm-client munge)

have_slurm() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null &&
  command -v munged >/dev/null && command -v mungekey >/dev/null; }
if ! have_slurm; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "SKIP: Slurm/munge not installed and cannot install them (needs root and apt-get)"; exit 77
  fi
  echo "installing ${need_pkgs[*]}"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null ||
         { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
           apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null; }; } || ! have_slurm; then
    echo "SKIP: apt-get could not install ${need_pkgs[*]}"; exit 77
  fi
fi
[ "$(id -u)" = 0 ] || { echo "SKIP: starting slurmctld/slurmd needs root"; exit 77; }

T=$(mktemp -d /tmp/epmoe-slurm-it.XXXXXX)
chmod 0755 "$T"
S=$T/slurm
export SLURM_CONF=$S/slurm.conf
JOBS=()
fail() {
  echo "FAIL: $*"
  for f in "$T"/job-*.out; do [ -f "$f" ] && { echo "--- $f (tail)"; tail -25 "$f"; }; done
  echo "--- slurmd.log (tail)"; tail -15 "$S/log/slurmd.log" 2>/dev/null
  exit 1
}
cleanup() {
  for j in "${JOBS[@]}"; do scancel "$j" 2>/dev/null; done
  [ "${#JOBS[@]}" -gt 0 ] && sleep 1
  bash "$SRC/tests/slurm/slurm_local.sh" down "$S"
  rm -rf "$T"
}
trap cleanup EXIT

t0=$SECONDS
bash "$SRC/tests/slurm/slurm_local.sh" up "$S" || fail "could not start the single-node Slurm"
echo "ok: slurmctld + slurmd up in $(( SECONDS - t0 )) s"

job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
wait_end() { # wait_end JOB SECONDS -> prints the final state
  local st=""
  for _ in $(seq 1 $(( $2 * 4 ))); do
    st=$(job_state "$1")
    case "$st" in PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|"") sleep 0.25 ;; *) break ;; esac
  done
  echo "$st"
}
# The recipe's #SBATCH lines ask for 2 nodes x 4 GPUs x 16 CPUs; these flags
# override them for one CPU node, as an operator would on the command line.
CPU_FLAGS=(--nodes=1 --ntasks=2 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 --time=00:05:00)
submit() { # submit OUTNAME ENV... -- prints the job id
  local name=$1; shift
  env "$@" sbatch --parsable "${CPU_FLAGS[@]}" -o "$T/job-$name.out" "$RECIPE"
}

# 1-2. start, wait for the recipe to report every rank ready
J=$(submit main EPMOE_BIN="$BIN" EPMOE_PRESET=tiny EPMOE_BACKEND=cpu EPMOE_RUN_DIR="$T/run") || fail "sbatch refused the recipe"
JOBS+=("$J")
OUT=$T/job-main.out
t0=$SECONDS
for _ in $(seq 1 240); do
  grep -q 'all 2 ranks ready' "$OUT" 2>/dev/null && break
  case "$(job_state "$J")" in PENDING|CONFIGURING|RUNNING|"") ;; *) fail "job $J ended before it was ready ($(job_state "$J"))" ;; esac
  sleep 0.25
done
grep -q 'all 2 ranks ready' "$OUT" || fail "no 'all 2 ranks ready' within 60 s"
echo "ok: job $J: $(grep 'all 2 ranks ready' "$OUT") ($(( SECONDS - t0 )) s after submit)"
SOCK=$T/run/$J
[ "$(stat -c %a "$T/run")" = 750 ] || fail "EPMOE_RUN_DIR created with mode $(stat -c %a "$T/run"), expected 750"
[ "$(stat -c %a "$SOCK")" = 750 ] || fail "socket dir mode $(stat -c %a "$SOCK"), expected 750"
echo "ok: socket dir $SOCK and its parent created 0750"

# 3. one checked collective FORWARD through the job's sockets
"$BIN/epmoectl" forward --all --socket-dir "$SOCK" --tokens-per-rank 16,5 --random --check ||
  fail "epmoectl forward --check against the Slurm job"
echo "ok: forward --check through the job's sockets"

mapfile -t pids < <(sed -n 's/.*rank [0-9]* of 2, pid \([0-9]*\).*/\1/p' "$OUT")
[ "${#pids[@]}" = 2 ] || fail "expected 2 'rank r of 2, pid N' lines, got ${#pids[@]}"
for p in "${pids[@]}"; do
  leaked=$(tr '\0' '\n' <"/proc/$p/environ" | grep -E '^EPMOE_(PREFIX|BIN|RUN_DIR|READY_TIMEOUT)=')
  [ -z "$leaked" ] || fail "the recipe's own settings reached epmoed (pid $p): $leaked"
done
echo "ok: the recipe's own EPMOE_* settings stay out of the daemons' environment"

# 4. scancel: every rank drains and exits 0
scancel "$J"
st=$(wait_end "$J" 30)
[ "$st" = CANCELLED ] || fail "job state after scancel: '$st', expected CANCELLED"
for r in 0 1; do
  grep -q "r$r/2 .*SIGTERM: draining" "$OUT" || fail "rank $r did not log the SIGTERM drain"
  grep -q "r$r/2 .*exit 0" "$OUT" || fail "rank $r did not log 'exit 0'"
done
for p in "${pids[@]}"; do
  for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$p" 2>/dev/null && fail "epmoed pid $p still running after the job ended"
done
ls "$SOCK"/*.sock >/dev/null 2>&1 && fail "sockets left in $SOCK"
echo "ok: scancel -> CANCELLED; ranks 0 and 1 drained and logged exit 0; processes and sockets gone"

# 5. fail fast
J=$(submit nomodel EPMOE_BIN="$BIN" EPMOE_MODEL="$T/no-such-model" EPMOE_BACKEND=cpu EPMOE_RUN_DIR="$T/run") ||
  fail "sbatch (missing model)"
JOBS+=("$J")
t0=$SECONDS
st=$(wait_end "$J" 30)
[ "$st" = FAILED ] || fail "missing model: job state '$st', expected FAILED"
grep -q "no readable $T/no-such-model/config.json" "$T/job-nomodel.out" || fail "missing model: no clear message"
echo "ok: missing model -> FAILED in $(( SECONDS - t0 )) s: $(grep -m1 'no readable' "$T/job-nomodel.out")"

J=$(submit nogpu EPMOE_BIN="$BIN" EPMOE_PRESET=tiny EPMOE_BACKEND=cuda EPMOE_RUN_DIR="$T/run") || fail "sbatch (cuda)"
JOBS+=("$J")
st=$(wait_end "$J" 30)
[ "$st" = FAILED ] || fail "cuda without GPUs: job state '$st', expected FAILED"
grep -q "EPMOE_BACKEND=cuda but the job has no GPUs" "$T/job-nogpu.out" || fail "cuda without GPUs: no clear message"
echo "ok: EPMOE_BACKEND=cuda without GPUs -> FAILED with a clear message"
echo PASS
