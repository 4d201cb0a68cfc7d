"""
How this process was launched, and the distributed plumbing that follows from it.

The same train.py runs unchanged under each launcher:

    python train.py ...                                  one process
    torchrun --standalone --nproc_per_node=8 train.py    torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*
    srun python train.py ...                             SLURM sets SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, ...
    srun torchrun ... train.py                           torchrun's variables win over SLURM's

With parallelism='fsdp', shard_model() shards the model across the ranks with PyTorch's FSDP2
(fully_shard): each rank holds 1/N of the weights, gradients and optimizer state.

Preemption: SIGUSR1 and SIGTERM (what `sbatch --signal=USR1@N`, `scancel` and time limits
send) only set a flag; the training loop polls it once per iteration, all ranks agree on
the iteration to stop at, they write a checkpoint (rank 0 the file; with fsdp every rank its
shards), and after SIGUSR1 the job requeues itself (see requeue_slurm_job).
"""

import contextlib
import datetime
import functools
import os
import re
import signal
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nanogpt.errors import UserError


@dataclass
class Launch:
    rank: int = 0
    local_rank: int = 0  # the rank within this node: picks the GPU
    world_size: int = 1
    node_rank: int = 0
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
    """Read the launcher's environment variables: torchrun's first, then those of an srun task."""
    env = os.environ if env is None else env
    # torchrun; under `srun torchrun` every worker also inherits SLURM_PROCID=0, so these come first
    if 'RANK' in env and 'WORLD_SIZE' in env:
        return Launch(rank=int(env['RANK']), local_rank=int(env.get('LOCAL_RANK', 0)),
                      world_size=int(env['WORLD_SIZE']), node_rank=int(env.get('GROUP_RANK', 0)),
                      master_addr=env.get('MASTER_ADDR', '127.0.0.1'),
                      master_port=int(env.get('MASTER_PORT', 29500)), launcher='torchrun')
    # Only the tasks that srun starts have SLURM_STEP_ID. An sbatch script's own shell has
    # SLURM_PROCID=0 and SLURM_NTASKS=N as well, and a plain `python train.py` there is one process.
    world_size = int(env.get('SLURM_STEP_NUM_TASKS') or env.get('SLURM_NTASKS') or 1)
    if 'SLURM_STEP_ID' in env and 'SLURM_PROCID' in env and world_size > 1:
        # rank 0 runs on the first node of the step (srun's block and cyclic distributions agree)
        nodelist = env.get('SLURM_STEP_NODELIST') or env['SLURM_JOB_NODELIST']
        # a port per job, so that two jobs sharing a node do not collide
        port = env.get('MASTER_PORT') or 20000 + int(env.get('SLURM_JOB_ID', 0)) % 10000
        return Launch(rank=int(env['SLURM_PROCID']), local_rank=int(env.get('SLURM_LOCALID', 0)),
                      world_size=world_size, node_rank=int(env.get('SLURM_NODEID', 0)),
                      master_addr=env.get('MASTER_ADDR') or first_host(nodelist),
                      master_port=int(port), launcher='slurm')
    return Launch()


def expand_hostlist(nodelist):
    """SLURM's compressed node list as host names: 'gpu[01-03,07],login1' -> gpu01 gpu02 gpu03 gpu07 login1.

    Handles several bracket groups in one name ('rack[1-2]-n[1-2]') and keeps zero padding."""
    # split on the commas that are not inside brackets
    parts, depth, start = [], 0, 0
    for i, c in enumerate(nodelist):
        depth += (c == '[') - (c == ']')
        if c == ',' and depth == 0:
            parts.append(nodelist[start:i])
            start = i + 1
    parts.append(nodelist[start:])
    hosts = []
    for part in filter(None, parts):
        m = re.fullmatch(r'([^\[]*)\[([^\]]*)\](.*)', part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, rest = m.groups()
        for r in ranges.split(','):
            lo, _, hi = r.partition('-')
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.extend(expand_hostlist(f"{prefix}{i:0{len(lo)}d}{rest}"))
    return hosts


def first_host(nodelist):
    try:  # scontrol knows every syntax the cluster's SLURM version accepts
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass  # no SLURM client here: expand it ourselves
    return expand_hostlist(nodelist)[0]


# A CPU process group for the stop flag: polling it over NCCL would make the CPU wait for the
# GPU every iteration; over gloo it is one small message and the GPU keeps its queue.
_cpu_group = None


def setup(launch, device, backend='auto', timeout_s=600):
    """Join the process group when there are several ranks; return the device this rank uses."""
    global _cpu_group
    if not launch.ddp:
        return device
    if device.startswith('cuda'):
        n_gpus = torch.cuda.device_count()
        # a task that SLURM bound to its own GPU (--gpus-per-task=1) sees just that one, as cuda:0
        index = 0 if n_gpus == 1 else launch.local_rank
        if index >= n_gpus:
            raise UserError(f"rank {launch.rank} has local rank {launch.local_rank} but sees {n_gpus} GPU(s): "
                            f"start one process per GPU (torchrun --nproc_per_node, srun --ntasks-per-node)")
        device = f'cuda:{index}'
        torch.cuda.set_device(device)
    if backend == 'auto':
        backend = 'nccl' if device.startswith('cuda') else 'gloo'
    if launch.launcher == 'slurm' and 'OMP_NUM_THREADS' not in os.environ:
        # torchrun sets OMP_NUM_THREADS=1, srun does not: without this, every rank on a node
        # starts one thread per core and they fight over the cores
        torch.set_num_threads(int(os.environ.get('SLURM_CPUS_PER_TASK', 1)))
    os.environ.setdefault('MASTER_ADDR', launch.master_addr)
    os.environ.setdefault('MASTER_PORT', str(launch.master_port))
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size, timeout=timeout)
    _cpu_group = None if backend == 'gloo' else dist.new_group(backend='gloo', timeout=timeout)
    return device


def cleanup(launch):
    if launch.ddp and dist.is_initialized():
        # wait for every rank (rank 0 may still be writing a checkpoint): tearing down a gloo
        # group while a peer still uses it can abort the process ("terminate called ...")
        dist.barrier()
        dist.destroy_process_group()


def all_average(value, launch, device):
    """Mean of a float over all ranks (each rank evaluates its own batches)."""
    if not launch.ddp:
        return value
    t = torch.tensor(value, dtype=torch.float64 if device == 'cpu' else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / launch.world_size


def all_gather(obj, launch):
    """[every rank's obj], in rank order (a collective); [obj] in a single process."""
    if not launch.ddp:
        return [obj]
    gathered = [None] * launch.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def share_failure(error, launch):
    """Every rank passes the error it met (or None); then every rank raises the first one, so
    that all stop at once with the same one-line cause. Without this, a rank that fails alone
    (rank 0 writing a checkpoint to a full disk) leaves the others waiting at their next
    collective: with gloo they blame lost contact, with NCCL they wait for ddp_timeout first.
    A collective (one small message over the CPU group): call it on every rank at the same
    point, where the run would stop anyway or is rare (start-up, saving), never per step."""
    if launch.ddp:
        # a UserError travels as itself; a bug as a line, and its own rank keeps the traceback
        mine = error if isinstance(error, UserError) or error is None else \
            UserError(f"rank {launch.rank} failed ({type(error).__name__}: {error}); see its traceback")
        everyone = [None] * launch.world_size
        dist.all_gather_object(everyone, mine, group=_cpu_group)
        first = next((e for e in everyone if e is not None), None)
        if first is not None and (error is None or isinstance(error, UserError)):
            raise first from None
    if error is not None:
        raise error


@contextlib.contextmanager
def fail_together(launch):
    """`with fail_together(launch):` around a block that may fail on some ranks only (what only
    rank 0 checks or writes): every rank enters it, and if it fails anywhere, it fails everywhere
    with the same error (see share_failure)."""
    error = None
    try:
        yield
    except Exception as e:
        error = e
    share_failure(error, launch)


def shard_model(model, dtype, compile_blocks=False):
    """FSDP2, in place: every transformer block is one unit, and the root unit holds the rest
    (embeddings, final norm, output head: the tied embedding and head are one Parameter, so they
    must share a unit). Each rank keeps 1/N of every weight, of its gradient and, once the
    optimizer is built on the sharded weights, of its moments; a unit's full weights are
    gathered just before it runs and freed after. Moves each unit to the device as it shards it.

    dtype bfloat16/float16: the gathered weights are cast to it for compute, while the sharded
    master weights, the gradient reduction and the optimizer stay float32; autocast still picks
    float32 for the ops that need it (norms, softmax, loss). float32: no casts.
    compile_blocks: each block is compiled before it is sharded, so FSDP's gathers stay outside
    the compiled graphs (compiling the whole sharded model is not what FSDP2 supports best)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # here: its import takes seconds
    policy = MixedPrecisionPolicy()
    if dtype != 'float32':
        policy = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    for block in model.transformer.h:
        if compile_blocks:
            block.compile()  # in place: the weights keep their names in checkpoints
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def set_gradient_sync(model, sync):
    """Whether the next backward shares the gradients among the ranks: DDP all-reduces them,
    FSDP reduce-scatters them. Accumulation micro-steps keep them local and skip it."""
    if isinstance(model, DDP):
        model.require_backward_grad_sync = sync
    else:
        model.set_requires_gradient_sync(sync)


def memory_per_rank(model, optimizer):
    """{kind: (bytes this rank holds, bytes unsharded)} for the weights, their gradients and the
    optimizer state, from the tensors' numel and dtypes (a DTensor counts its local shard).
    Gradients are the weights' size: the optimizer sees float32 gradients of the weights' shards."""
    from torch.distributed.tensor import DTensor

    def size(tensors):
        tensors = list(tensors)
        local = sum((t.to_local() if isinstance(t, DTensor) else t).numel() * t.element_size() for t in tensors)
        return local, sum(t.numel() * t.element_size() for t in tensors)
    weights = size(model.parameters())
    state = size(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return {'weights': weights, 'gradients': weights, 'optimizer state': state}


def memory_report(model, optimizer, launch, device):
    """One log line: what memory_per_rank() counts, on the rank that holds the most (a
    collective), and the peak that PyTorch allocated on this GPU."""
    counted = memory_per_rank(model, optimizer)
    held = torch.tensor([held for held, _ in counted.values()], dtype=torch.float64)
    if launch.ddp:
        dist.all_reduce(held, op=dist.ReduceOp.MAX, group=_cpu_group)
    text = ", ".join(f"{kind} {_bytes(h)}" for kind, h in zip(counted, held.tolist()))
    text = f"memory per rank: {text} (unsharded: {', '.join(_bytes(full) for _, full in counted.values())})"
    if str(device).startswith('cuda'):
        text += f"; peak allocated on {device}: {_bytes(torch.cuda.max_memory_allocated(device))}"
    return text


def _bytes(n):
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return f"{n:.4g} {unit}" if unit != 'B' else f"{int(n)} B"
        n /= 1024


def explain_lost_ranks(main):
    """Wrap main so that losing another rank (it crashed, was killed, or hung for longer than
    ddp_timeout) ends this one with a one-line error instead of a traceback from deep inside
    a collective. Other errors pass through unchanged."""
    lost = re.compile(r'closed by peer|reset by peer|broken pipe|timed out|timeout|connection refused', re.I)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except RuntimeError as e:  # gloo raises plain RuntimeErrors; DistError is a subclass
            if not (dist.is_available() and (dist.is_initialized() or isinstance(e, dist.DistError))):
                raise
            if not (isinstance(e, dist.DistError) or lost.search(str(e))):
                raise
            # gloo's messages start with its source location and go on with advice; keep the fact
            detail = re.sub(r'^\[[^\]]*\]\s*', '', ' '.join(str(e).split())).split('. ')[0][:200]
            if not dist.is_initialized():  # still joining
                raise UserError(f"could not connect to the other ranks ({detail}): check that all of them "
                                f"started and reach MASTER_ADDR:MASTER_PORT ({os.environ.get('MASTER_ADDR')}:"
                                f"{os.environ.get('MASTER_PORT')})") from None
            raise UserError(f"rank {dist.get_rank()} lost contact with the other ranks ({detail}). Another rank "
                            f"crashed, was killed or hung longer than ddp_timeout: see its log, then restart "
                            f"with --init_from=resume") from None
    return wrapper


class StopSignal:
    """Turns SIGUSR1 / SIGTERM into a flag that the training loop polls between iterations.

    Install it early: until then, SIGUSR1's default action kills the process."""

    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.received = set()
        for s in signals:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.received.add(signal.Signals(signum).name)

    def check(self, launch):
        """The stop signal that any rank received, or None; the same answer on every rank (a
        collective: call it on all ranks at the same point). SIGTERM wins over SIGUSR1: it means
        the job is ending (scancel, time limit), so it must not be requeued."""
        got = [int('SIGUSR1' in self.received), int('SIGTERM' in self.received)]
        if launch.ddp:
            flags = torch.tensor(got)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=_cpu_group)
            got = flags.tolist()
        return 'SIGTERM' if got[1] else 'SIGUSR1' if got[0] else None


def requeue_slurm_job():
    """Put this SLURM batch job back in the queue, where it waits (about two minutes, SLURM's
    delay for requeued jobs) and then starts again from the top of its script, which resumes
    from the checkpoint. Only after SIGUSR1: `scontrol requeue` also succeeds on a job that is
    being cancelled, and would bring back a job that its user just cancelled."""
    job_id = os.environ.get('SLURM_JOB_ID')
    if not job_id:
        return False
    try:
        result = subprocess.run(['scontrol', 'requeue', job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        print(f"could not requeue SLURM job {job_id}: {e}")
        return False
    if result.returncode != 0:
        # e.g. 'Requested operation is presently disabled' for a job submitted with --no-requeue
        print(f"SLURM job {job_id} was not requeued ({result.stderr.strip()}); "
              f"resubmit it to continue from the checkpoint")
        return False
    print(f"requeued SLURM job {job_id}: it will resume from the checkpoint")
    return True
