"""
How this process was launched, and the distributed plumbing that follows from it.

The same train.py runs unchanged under each launcher:

    python train.py ...                                  one process
    torchrun --standalone --nproc_per_node=8 train.py    torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*
    srun python train.py ...                             SLURM sets SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, ...
    srun torchrun ... train.py                           torchrun's variables win over SLURM's

Preemption: SIGUSR1 / SIGTERM (what `sbatch --signal` and time limits send) only set a
flag; the training loop checks it once per iteration, all ranks agree on the stop, and
rank 0 writes a checkpoint before exiting.
"""

import datetime
import os
import re
import signal
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from configurator import UserError


@dataclass
class Launch:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = '127.0.0.1'
    master_port: int = 29500
    launcher: str = 'single'  # 'single' | 'torchrun' | 'slurm'

    @property
    def ddp(self):
        return self.world_size > 1

    @property
    def is_master(self):
        return self.rank == 0


def detect_launch(env=None):
    """Read the launcher's environment variables (torchrun's first, then SLURM's)."""
    env = os.environ if env is None else env
    if 'RANK' in env and 'WORLD_SIZE' in env:
        return Launch(rank=int(env['RANK']), local_rank=int(env.get('LOCAL_RANK', 0)),
                      world_size=int(env['WORLD_SIZE']),
                      master_addr=env.get('MASTER_ADDR', '127.0.0.1'),
                      master_port=int(env.get('MASTER_PORT', 29500)), launcher='torchrun')
    # SLURM_STEP_NUM_TASKS is set in the tasks that srun starts, not in an sbatch script's own
    # shell, where a plain `python train.py` must run as one process although SLURM_NTASKS > 1.
    if 'SLURM_PROCID' in env and int(env.get('SLURM_STEP_NUM_TASKS', 1)) > 1:
        job_id = int(env.get('SLURM_JOB_ID', 0))
        return Launch(rank=int(env['SLURM_PROCID']), local_rank=int(env.get('SLURM_LOCALID', 0)),
                      world_size=int(env['SLURM_STEP_NUM_TASKS']),
                      master_addr=env.get('MASTER_ADDR') or first_host(env.get('SLURM_STEP_NODELIST')
                                                                       or env['SLURM_JOB_NODELIST']),
                      # a port per job, so two jobs sharing a node do not collide
                      master_port=int(env.get('MASTER_PORT', 20000 + job_id % 10000)), launcher='slurm')
    return Launch()


def expand_hostlist(nodelist):
    """Expand SLURM's compressed node lists: 'gpu[01-03,07],login1' -> ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'login1']."""
    hosts = []
    # split on commas that are not inside brackets
    for part in re.findall(r'[^,\[]+(?:\[[^\]]*\][^,\[]*)*', nodelist):
        m = re.fullmatch(r'([^\[]*)\[([^\]]*)\](.*)', part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(','):
            lo, _, hi = r.partition('-')
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.extend(h for h in expand_hostlist(f"{prefix}{str(i).zfill(len(lo))}{suffix}"))
    return hosts


def first_host(nodelist):
    try:  # scontrol knows every syntax the cluster's SLURM version accepts
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_hostlist(nodelist)[0]


def setup(launch, device, backend='auto', timeout_s=600):
    """Join the process group when there are several ranks; return the device this rank uses."""
    if not launch.ddp:
        return device
    if device.startswith('cuda'):
        device = f'cuda:{launch.local_rank}'
        torch.cuda.set_device(device)
    if backend == 'auto':
        backend = 'nccl' if device.startswith('cuda') else 'gloo'
    os.environ.setdefault('MASTER_ADDR', launch.master_addr)
    os.environ.setdefault('MASTER_PORT', str(launch.master_port))
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return device


def cleanup(launch):
    if launch.ddp and dist.is_initialized():
        dist.destroy_process_group()


def all_average(value, launch, device):
    """Mean of a float over all ranks (each rank evaluates its own batches)."""
    if not launch.ddp:
        return value
    t = torch.tensor(value, dtype=torch.float64 if device == 'cpu' else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / launch.world_size


class StopSignal:
    """Turns SIGUSR1 / SIGTERM into a flag that the training loop polls between iterations."""

    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.received = None
        for s in signals:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def should_stop(self, launch, device):
        """True on every rank as soon as any rank got a signal (a collective: call it on all ranks)."""
        if not launch.ddp:
            return self.received is not None
        flag = torch.tensor(int(self.received is not None), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def requeue_slurm_job():
    """Put this SLURM job back in the queue (when submitted with --requeue); it resumes on restart."""
    job_id = os.environ.get('SLURM_JOB_ID')
    if not job_id:
        return False
    result = subprocess.run(['scontrol', 'requeue', job_id], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"could not requeue SLURM job {job_id}: {result.stderr.strip()}")
        return False
    return True
