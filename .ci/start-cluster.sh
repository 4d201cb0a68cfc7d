#!/usr/bin/env bash
# Start a two-host SLURM cluster on this one machine, for the multi-node tests (tests/test_cluster.py)
# and for trying a multi-node job before spending an allocation. Needs root; works without systemd.
# Idempotent: what already runs is kept, what is missing is (re)built.
#
#   bash .ci/start-cluster.sh          env: CLUSTER_DIR (/tmp/cluster2), CLUSTER_NET (10.77.0)
#   sinfo; srun -N2 hostname           plain commands talk to it (SLURM_CONF=/tmp/cluster2/slurm.conf
#                                      where the one-node cluster of start-slurm.sh runs too)
#   .ci/on-host node2 CMD...           runs CMD on a host (its network and hostname)
#   .ci/link node2 down|up             cuts and restores a host's link
#   bash .ci/stop-cluster.sh           removes all of it
#
# Each host (node1, node2) is a network namespace with its own address plus a UTS namespace that
# holds its hostname. A bridge in the machine's own namespace joins them, so SLURM commands typed
# here reach both. The hosts have no default route: nothing they send can leave the machine. They
# share the filesystem, as a cluster's nodes share their home directories. slurmctld runs on node1,
# one slurmd on each host.
#
# The config lives in CLUSTER_DIR; SLURM's commands read exactly one config, /etc/slurm/slurm.conf
# unless SLURM_CONF names another. Alone, this cluster links /etc/slurm/slurm.conf to its own, so plain
# commands talk to it; beside the one-node cluster of .ci/start-slurm.sh (tests/test_slurm.py, in CI),
# that file is the one-node cluster's and this one is reached with SLURM_CONF.
set -euo pipefail
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/cluster2}
NET=${CLUSTER_NET:-10.77.0}
CONF=$CLUSTER_DIR/slurm.conf
HOSTS=(node1 node2)
export SLURM_CONF=$CONF
cd "$(dirname "$0")"
CI_DIR=$PWD

[ "$(id -u)" = 0 ] || { echo "start-cluster.sh must run as root (it installs packages, builds namespaces and starts daemons)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -q
  # the lock timeout: .ci/start-slurm.sh may be installing the same packages at the same moment
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends \
      slurmctld slurmd slurm-client munge iproute2 util-linux
fi

# --- munge: one daemon for both clusters; its socket is a file, which every namespace reaches
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key --force
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
mkdir -p "$CLUSTER_DIR"/{state,log,ns,spool}
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  touch "$CLUSTER_DIR/started-munged"  # stop-cluster.sh stops munged only if this script started it
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# --- the link: a bridge here (NET.1), a veth pair into each host (eth0 there, c2-HOST here)
if ! ip link show c2br >/dev/null 2>&1; then
  ip link add c2br type bridge
  ip addr add "$NET.1/24" dev c2br
fi
ip link set c2br up
i=10
for h in "${HOSTS[@]}"; do
  i=$((i + 1))
  [ -e "/run/netns/c2-$h" ] || ip netns add "c2-$h"
  if ! ip netns exec "c2-$h" ip link show eth0 >/dev/null 2>&1; then
    ip link del "c2-$h" 2>/dev/null || true  # a half-built pair from an interrupted start
    ip link add "c2-$h" type veth peer name eth0 netns "c2-$h"
    ip netns exec "c2-$h" ip addr add "$NET.$i/24" dev eth0
  fi
  ip link set "c2-$h" master c2br up
  ip netns exec "c2-$h" ip link set eth0 up
  ip netns exec "c2-$h" ip link set lo up
  # A UTS namespace lives only while a process or a mount holds it: bind-mounted on a file, it
  # outlives this script, and every process started in it says `hostname` = the host's name.
  if ! findmnt -rn --mountpoint "$CLUSTER_DIR/ns/$h.uts" >/dev/null; then
    touch "$CLUSTER_DIR/ns/$h.uts"
    unshare --uts="$CLUSTER_DIR/ns/$h.uts" hostname "$h"
  fi
  # both hosts, and SLURM's commands here, must resolve the names: gloo and torchrun's rendezvous
  # connect to MASTER_ADDR by name, and each rank announces its own hostname's address to the others
  grep -q "^$NET\.$i $h # two-host test cluster" /etc/hosts ||
    echo "$NET.$i $h # two-host test cluster" >> /etc/hosts
done

# --- slurm.conf: the controller on node1, one slurmd per host
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 * 4 / 10 ))
cat > "$CONF.new" <<CONF
ClusterName=two
SlurmctldHost=node1($NET.11)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$CLUSTER_DIR/state
SlurmdSpoolDir=$CLUSTER_DIR/spool/%n
SlurmctldPidFile=$CLUSTER_DIR/slurmctld.pid
SlurmdPidFile=$CLUSTER_DIR/slurmd-%n.pid
SlurmctldLogFile=$CLUSTER_DIR/log/slurmctld.log
SlurmdLogFile=$CLUSTER_DIR/log/slurmd-%n.log
MailProg=/bin/true
# a job asking for more than the nodes have fails at once instead of pending forever
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
# a node that was marked DOWN (its link was cut) comes back by itself once its slurmd answers
ReturnToService=2
SlurmctldTimeout=30
# how long a silent node stays in service: a cut link marks it DOWN after this
SlurmdTimeout=30
InactiveLimit=0
# finished jobs stay visible to scontrol for 5 minutes (there is no accounting database)
MinJobAge=300
KillWait=5
Waittime=0
# CPUs=2 on each host although the machine has 2 cores in all: 2 tasks per node must fit
NodeName=node1 NodeAddr=$NET.11 NodeHostname=node1 CPUs=2 RealMemory=$MEM_MB State=UNKNOWN
NodeName=node2 NodeAddr=$NET.12 NodeHostname=node2 CPUs=2 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
if ! cmp -s "$CONF.new" "$CONF"; then mv "$CONF.new" "$CONF"; else rm "$CONF.new"; fi

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
started=
# both daemonize and write their pid files
running "$CLUSTER_DIR/slurmctld.pid" || { "$CI_DIR/on-host" node1 /usr/sbin/slurmctld; started=1; }
for h in "${HOSTS[@]}"; do
  mkdir -p "$CLUSTER_DIR/spool/$h"
  running "$CLUSTER_DIR/slurmd-$h.pid" || { "$CI_DIR/on-host" "$h" /usr/sbin/slurmd -N "$h"; started=1; }
done

# up: taking jobs, whether or not some run; a node left DOWN by an earlier fault (a link cut for
# longer than SlurmdTimeout) is put back
n_up() { sinfo -h -N -o %T 2>/dev/null | grep -cE '^(idle|mixed|allocated|completing)$'; }
for _ in $(seq 150); do
  [ "$(n_up)" = 2 ] && break
  down=$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(down|drain|drained)/ {print $1}' | paste -sd,)
  [ -n "$down" ] && scontrol update nodename="$down" state=resume 2>/dev/null || true
  sleep 0.2
done
if [ "$(n_up)" != 2 ]; then
  echo "the two-host cluster did not come up:" >&2; sinfo -N >&2 || true
  tail -n 20 "$CLUSTER_DIR"/log/*.log >&2 || true
  exit 1
fi
if [ -n "$started" ]; then  # a job step really runs on both hosts (not while jobs may fill them)
  names=$(srun -N2 --ntasks-per-node=1 hostname | sort | paste -sd' ')
  [ "$names" = "node1 node2" ] || { echo "srun -N2 hostname printed '$names', not 'node1 node2'" >&2; exit 1; }
fi
sinfo
# Plain sinfo, srun and sbatch read /etc/slurm/slurm.conf: point it at this cluster unless the one-node
# cluster of .ci/start-slurm.sh owns it (then SLURM_CONF picks this one)
mkdir -p /etc/slurm
if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
  ln -sfn "$CONF" /etc/slurm/slurm.conf
  echo "two-host cluster running: node1 ($NET.11), node2 ($NET.12); sinfo, srun and sbatch talk to it"
else
  echo "two-host cluster running: node1 ($NET.11), node2 ($NET.12); /etc/slurm/slurm.conf is the one-node" \
       "cluster's: export SLURM_CONF=$CONF"
fi
