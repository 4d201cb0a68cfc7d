#!/usr/bin/env bash
# Start a one-node SLURM cluster (munge + slurmctld + slurmd) on this machine, for the tests
# in tests/test_slurm.py. Needs root; works without systemd (CI containers). Idempotent: when
# a controller already answers, it only checks that the node is idle.
#
#   bash .ci/start-slurm.sh        (env: SLURM_NODE=localhost, SLURM_DIR=/tmp/slurm)
#   bash .ci/stop-slurm.sh         cancels the jobs, stops the daemons, removes SLURM_DIR
set -euo pipefail
SLURM_NODE=${SLURM_NODE:-localhost}  # 'localhost' needs no hostname or DNS setup
SLURM_DIR=${SLURM_DIR:-/tmp/slurm}

wait_idle() {
  for _ in $(seq 100); do
    [ "$(sinfo -h -n "$SLURM_NODE" -o %T 2>/dev/null)" = idle ] && return 0
    sleep 0.2
  done
  echo "SLURM node $SLURM_NODE is not idle:" >&2; sinfo >&2 || true
  tail -n 30 "$SLURM_DIR"/log/*.log >&2 || true
  return 1
}

# /etc/slurm/slurm.conf is this cluster's: a two-host test cluster started first lent it its own (a link)
if [ -L /etc/slurm/slurm.conf ]; then rm /etc/slurm/slurm.conf; fi
if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
  wait_idle && { echo "SLURM already running"; exit 0; }
fi

[ "$(id -u)" = 0 ] || { echo "start-slurm.sh must run as root (it installs packages and starts daemons)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurmctld slurmd slurm-client munge
fi

# --- munge: authenticates every message between the SLURM commands and daemons
if [ ! -s /etc/munge/munge.key ]; then  # Debian's postinst normally creates it
  mungekey --create --keyfile=/etc/munge/munge.key --force
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge | grep 'STATUS: *Success' >/dev/null  # not grep -q: with pipefail, a SIGPIPE would fail it

# --- slurm.conf: one node with all cores, no accounting, no cgroups
mkdir -p "$SLURM_DIR"/{state,spool,log} /etc/slurm
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=${SLURM_NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${SLURM_DIR}/state
SlurmdSpoolDir=${SLURM_DIR}/spool
SlurmctldPidFile=${SLURM_DIR}/slurmctld.pid
SlurmdPidFile=${SLURM_DIR}/slurmd.pid
SlurmctldLogFile=${SLURM_DIR}/log/slurmctld.log
SlurmdLogFile=${SLURM_DIR}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# a job asking for more than the node has fails at once instead of pending forever
EnforcePartLimits=ALL
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# finished jobs stay visible to scontrol for 5 minutes (there is no accounting database)
MinJobAge=300
KillWait=5
Waittime=0
NodeName=${SLURM_NODE} NodeAddr=127.0.0.1 NodeHostname=${SLURM_NODE} CPUs=$(nproc) RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${SLURM_NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

# --- daemons, in order; both daemonize and write their pid files
/usr/sbin/slurmctld
/usr/sbin/slurmd -N "$SLURM_NODE"  # -N: do not rely on gethostname() matching NodeName
wait_idle
srun -N1 -n1 true  # a job step really runs
echo "SLURM running: node $SLURM_NODE, $(nproc) CPUs, state in $SLURM_DIR"
