#!/bin/bash
# A one-node SLURM on this machine, for the tests of `cvsweep slurm` (and to try it by hand):
#   scripts/slurm_local.sh start   # install (as root, Debian's slurm-wlm + munge) if missing, configure, start
#   scripts/slurm_local.sh stop    # stop the daemons this script started
#   scripts/slurm_local.sh status
# No cgroups (proctrack/linuxproc, task/none): it runs in containers and VMs alike. Jobs run as root.
# It writes /etc/slurm/slurm.conf only when none is there (or it wrote the one there): an existing
# cluster's configuration is never touched.
set -euo pipefail

MARK="# written by cvsweep's scripts/slurm_local.sh"
CONF=/etc/slurm/slurm.conf
BASE=/var/spool/cvsweep-slurm
RUN=/run/cvsweep-slurm
LOG=/var/log/cvsweep-slurm
HOST=$(hostname -s)

say() { echo "slurm_local: $*" >&2; }
die() { say "$*"; exit 1; }

up() {  # the controller answers and this node takes jobs
  scontrol ping 2>/dev/null | grep -q UP || return 1
  sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "SLURM is not installed, and installing it needs root and apt-get (apt-get install slurm-wlm munge)"
  say "installing Debian's slurm-wlm and munge (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: not touching a real cluster's configuration"
  fi
  mkdir -p /etc/slurm "$BASE/ctld" "$BASE/d" "$RUN" "$LOG"
  cat > "$CONF" <<CONF
$MARK
ClusterName=cvsweep-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (120 by default): short for tests.
AuthInfo=cred_expire=10
StateSaveLocation=$BASE/ctld
SlurmdSpoolDir=$BASE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
KillWait=30
MinJobAge=600
NodeName=$HOST CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "munged did not start (see /var/log/munge/munged.log)"
}

start() {
  install
  if up; then say "SLURM is up ($HOST)"; return 0; fi
  [ "$(id -u)" = 0 ] || die "starting SLURM's daemons needs root"
  write_conf
  start_munge
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 150); do
    if up; then say "SLURM is up ($HOST, $(nproc) CPUs)"; return 0; fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 0.2
  done
  die "SLURM did not come up in 30 s; see $LOG/slurmctld.log and $LOG/slurmd.log"
}

stop() {
  for d in slurmd slurmctld; do
    [ -s "$RUN/$d.pid" ] && kill "$(cat "$RUN/$d.pid")" 2>/dev/null || true
  done
  say "stopped slurmd and slurmctld (munged left running)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) up && say "up" || { say "down"; exit 1; } ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
