#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py (issue 18).
#
# Installs Debian's slurm-wlm and munge, writes /etc/slurm/slurm.conf (one node = this host,
# CPUs = nproc, RealMemory from /proc/meminfo, no cgroups), starts munged, slurmctld and slurmd
# directly as daemons (no systemd), and waits until the node is idle. Run as root. Idempotent:
# a second run stops the daemons the first one started (by their pid files) and starts them
# again with a fresh configuration and an empty job queue. Any failure is fatal (exit 1) and
# prints the daemons' logs: CI requires SLURM.
#
#   CAIMAN_DASK_SLURM_DIR   state, spool, pid and log files (default /tmp/caiman-dask-slurm)
set -euo pipefail

DIR="${CAIMAN_DASK_SLURM_DIR:-/tmp/caiman-dask-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by caiman_dask .ci/slurm.sh"

die() {
  echo "slurm.sh error: $*" >&2
  for f in "$DIR"/log/*.log; do
    [ -f "$f" ] && { echo "---- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons); run: sudo bash $0"

# ---- packages --------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  echo "slurm.sh: installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends slurm-wlm munge \
    >/dev/null || die "apt-get install slurm-wlm munge failed"
fi

# ---- stop what a previous run of this script started (its pid files only) --------------------
stop() {  # stop <pidfile> <process name>
  local pid
  [ -f "$1" ] || return 0
  pid="$(cat "$1" 2>/dev/null || true)"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$2" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}
stop "$DIR/run/slurmd.pid" slurmd
stop "$DIR/run/slurmctld.pid" slurmctld

# ---- munge: authentication between the SLURM commands and daemons ----------------------------
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key || die "could not create /etc/munge/munge.key"
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munge does not work: munge -n | unmunge failed"
fi

# ---- slurm.conf ------------------------------------------------------------------------------
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; refusing to overwrite a real configuration"
fi
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"  # slurmd sees a bit less
rm -rf "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"  # this script's files only
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log"
mkdir -p /etc/slurm
cat >"$CONF" <<EOF
$MARK: a one-node test cluster on this host.
ClusterName=caimandask
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=60
MailProg=/bin/true
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# ---- daemons ---------------------------------------------------------------------------------
slurmctld -c || die "slurmctld did not start"   # -c: a clean state, no jobs from a previous run
slurmd || die "slurmd did not start"

state=""
for _ in $(seq 120); do
  state="$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null || true)"
  [ "$state" = idle ] && break
  case "$state" in
    down*|drain*|drng*|fail*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
  esac
  sleep 0.5
done
[ "$state" = idle ] || die "node $HOST is not idle after 60 s (sinfo state: '${state:-no answer}')"
echo "slurm.sh: SLURM $(sinfo -V | cut -d' ' -f2) up: node $HOST, $CPUS CPUs, ${MEM_MB} MB," \
  "partition debug (logs in $DIR/log)"
