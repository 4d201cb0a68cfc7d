#!/usr/bin/env bash
# Remove the two-host cluster that .ci/start-cluster.sh built: its jobs, its daemons (by PID),
# whatever still runs on its hosts, the link, the namespaces, its /etc/hosts lines and CLUSTER_DIR.
# The one-node cluster of .ci/start-slurm.sh, if it runs, is left as it is.
CLUSTER_DIR=${CLUSTER_DIR:-/tmp/cluster2}
HOSTS=(node1 node2)
export SLURM_CONF=$CLUSTER_DIR/slurm.conf

stop_pid() {  # TERM, up to 5 s to exit, then KILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}

# with a host's link down the controller waits for it: restore links before asking anything
for h in "${HOSTS[@]}"; do ip link set "c2-$h" up 2>/dev/null; done
[ -f "$SLURM_CONF" ] && timeout 20 scancel --quiet --user=root 2>/dev/null
for f in "$CLUSTER_DIR"/slurmd-*.pid "$CLUSTER_DIR/slurmctld.pid"; do
  [ -s "$f" ] && stop_pid "$(cat "$f")" && echo "stopped $(basename "$f" .pid)"
done
for h in "${HOSTS[@]}"; do
  # job steps and anything started with .ci/on-host: every process still in the host's network
  for pid in $(ip netns pids "c2-$h" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
  ip link del "c2-$h" 2>/dev/null  # deletes its peer, eth0, too
  ip netns del "c2-$h" 2>/dev/null
  umount "$CLUSTER_DIR/ns/$h.uts" 2>/dev/null
done
ip link del c2br 2>/dev/null
sed -i '/ # two-host test cluster$/d' /etc/hosts
[ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ] && rm -f /etc/slurm/slurm.conf

# munged serves the one-node cluster too: stop it only if this cluster started it and no
# controller of the other one is left to need it
one_node_ctld=${SLURM_DIR:-/tmp/slurm}/slurmctld.pid
if [ -e "$CLUSTER_DIR/started-munged" ] && ! { [ -s "$one_node_ctld" ] && kill -0 "$(cat "$one_node_ctld")" 2>/dev/null; }; then
  [ -s /run/munge/munged.pid ] && stop_pid "$(cat /run/munge/munged.pid)" && echo "stopped munged"
fi
rm -rf "$CLUSTER_DIR"
echo "two-host cluster removed"
exit 0
