#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# slurm_local.sh up|down STATE_DIR — a private single-node Slurm for tests:
# munged + slurmctld + slurmd started by hand (no systemd), as root, with
# every file under STATE_DIR (config, munge key and socket, spool, logs, pid
# files) and their own ports, so a Slurm or munge already on the machine is
# neither used nor disturbed. Clients find it through SLURM_CONF:
#   export SLURM_CONF=STATE_DIR/slurm.conf
# `up` prints the node state when the node is idle; `down` stops exactly the
# daemons whose pid files are in STATE_DIR (checking each pid's command name).
# Facts this relies on (Debian 12, Slurm 22.05, munge 0.5.15): see
# /work/shared/spec/slurm-ci.md and docs/DEPLOY.md "Slurm".
set -euo pipefail
cmd=$1 S=$2

stop_pidfile() { # stop_pidfile FILE COMM
  local f=$1 comm=$2 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$comm" ]; then
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$f"
}

if [ "$cmd" = down ]; then
  stop_pidfile "$S/slurmd.pid" slurmd
  stop_pidfile "$S/slurmctld.pid" slurmctld
  stop_pidfile "$S/munged.pid" munged
  exit 0
fi
[ "$cmd" = up ] || { echo "usage: slurm_local.sh up|down STATE_DIR" >&2; exit 2; }

host=$(hostname -s)
getent hosts "$host" >/dev/null || { echo "slurm_local: $host does not resolve (add it to /etc/hosts)" >&2; exit 1; }
mkdir -p "$S/spool/ctld" "$S/spool/d" "$S/log"
chmod 0755 "$S"
# Two ranks plus the recipe's one-task helper steps must fit even on a 1-core
# runner: claim at least 4 CPUs (config_overrides lets slurmd accept more CPUs
# than the hardware has instead of draining the node).
ncpu=$(nproc)
[ "$ncpu" -ge 4 ] || ncpu=4
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))
# Ports derived from the state dir so two runs on one machine do not collide.
port=$(( 20000 + $(cksum <<<"$S" | cut -d' ' -f1) % 20000 ))

# munge: private key, socket, pid, log and seed files.
[ -s "$S/munge.key" ] || mungekey --create --keyfile="$S/munge.key" >/dev/null
chmod 0600 "$S/munge.key"
if ! { [ -s "$S/munged.pid" ] && kill -0 "$(cat "$S/munged.pid")" 2>/dev/null; }; then
  munged --force --socket="$S/munge.sock" --key-file="$S/munge.key" --pid-file="$S/munged.pid" \
    --log-file="$S/log/munged.log" --seed-file="$S/munged.seed"
fi
munge --socket="$S/munge.sock" -n | unmunge --socket="$S/munge.sock" >/dev/null

cat >"$S/slurm.conf" <<EOF
# written by tests/slurm/slurm_local.sh for one test run
ClusterName=epmoeci
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$(( port + 1 ))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/munge.sock
MailProg=/bin/true
StateSaveLocation=$S/spool/ctld
SlurmdSpoolDir=$S/spool/d
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ReturnToService=2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
MpiDefault=none
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$ncpu RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$S/slurm.conf
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive "$S/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
alive "$S/slurmd.pid" || slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  case "$(sinfo -h -n "$host" -o %t 2>/dev/null || true)" in
    idle*|mix*|alloc*) sinfo; exit 0 ;;
  esac
  sleep 0.5
done
echo "slurm_local: node $host not idle after 30 s" >&2
sinfo -R >&2 || true
tail -5 "$S/log/slurmctld.log" "$S/log/slurmd.log" >&2 || true
exit 1
