#!/usr/bin/env bash
# Stop the cluster that .ci/start-slurm.sh started: cancel all jobs, stop the daemons by
# PID (slurmd, slurmctld, munged), remove the state directory and the config.
SLURM_DIR=${SLURM_DIR:-/tmp/slurm}
scancel --quiet --user=root 2>/dev/null || true
for pid_file in "$SLURM_DIR/slurmd.pid" "$SLURM_DIR/slurmctld.pid" /run/munge/munged.pid; do
  [ -s "$pid_file" ] || continue
  pid=$(cat "$pid_file")
  kill -TERM "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "stopped $(basename "$pid_file" .pid) ($pid)"
done
rm -rf "$SLURM_DIR"
# the config start-slurm.sh wrote (not a two-host test cluster's link to its own)
if [ ! -L /etc/slurm/slurm.conf ] && grep -qx 'ClusterName=ci' /etc/slurm/slurm.conf 2>/dev/null; then
  rm /etc/slurm/slurm.conf
fi
