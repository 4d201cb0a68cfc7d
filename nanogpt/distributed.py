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
import socket
import subprocess
import sys
import threading
import time
import traceback
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
rank_hosts = [os.uname().nodename]  # every rank's host name, in rank order (setup() gathers them)
_board = None  # the FailureBoard of a run with several ranks


def setup(launch, device, backend='auto', timeout_s=600):
    """Join the process group when there are several ranks; return the device this rank uses."""
    global _cpu_group, rank_hosts, _board
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
    try:
        dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size, timeout=timeout)
    except RuntimeError as e:  # DistError (a peer never came) included; gloo's own errors are plain RuntimeErrors
        interfaces = ', '.join(f"{k}={os.environ[k]}" for k in ('GLOO_SOCKET_IFNAME', 'NCCL_SOCKET_IFNAME')
                               if k in os.environ)
        raise UserError(f"rank {launch.rank} on {os.uname().nodename} could not join the other ranks at "
                        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({_gist(e)}): check that all of "
                        f"them started and reach that address" + (f", and that {interfaces} names this host's "
                                                                   f"network interface" if interfaces else "")) from None
    _cpu_group = None if backend == 'gloo' else dist.new_group(backend='gloo', timeout=timeout)
    rank_hosts = [None] * launch.world_size
    dist.all_gather_object(rank_hosts, os.uname().nodename, group=_cpu_group)
    _board = FailureBoard(launch)
    return device


def cleanup(launch):
    global _board
    if launch.ddp and dist.is_initialized():
        # wait for every rank (rank 0 may still be writing a checkpoint): tearing down a gloo
        # group while a peer still uses it can abort the process ("terminate called ...")
        dist.barrier()
        _board.close()  # after the barrier: no rank can fail any more
        _board = None
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


class FailureBoard:
    """One rank's failure, seen by every rank within moments, however busy or stuck they are.

    A rank that fails posts one line (its rank, its host and the cause) to the key-value store that
    the ranks met at (the TCPStore at MASTER_ADDR:MASTER_PORT). Every rank runs a thread that waits
    on it; the others print that line and exit at once. They exit from the thread (os._exit) because
    their main thread may be inside a collective that waits for the failed rank: until ddp_timeout
    with gloo, and under NCCL possibly for good. No rank exits before all have read the line (or a few
    seconds have passed): the exit of the rank that hosts the store (rank 0 under srun) takes it along.
    Checkpoints are written atomically, so a rank that exits mid-save leaves the previous one whole."""

    def __init__(self, launch):
        # keys of their own per torchrun restart: its store outlives the workers of a failed attempt
        prefix = f"nanogpt/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.failure_key, self.seen_key, self.left_key = f'{prefix}/failure', f'{prefix}/seen', f'{prefix}/left'
        self.wake_keys = [f'{prefix}/wake/{rank}' for rank in range(launch.world_size)]
        self.rank, self.world_size = launch.rank, launch.world_size
        self.closing = False
        # two connections of their own: a store client serves one call at a time, and the watcher's
        # wait blocks its connection for the whole run
        self.store, self.watched = (dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']),
                                                  is_master=False, wait_for_workers=False,
                                                  timeout=datetime.timedelta(days=365)) for _ in range(2))
        self.watcher = threading.Thread(target=self._watch, name='failure-board', daemon=True)
        self.watcher.start()

    def _watch(self):
        try:
            self.watched.wait([self.wake_keys[self.rank]])
            if self.closing:
                return
            line = self.watched.get(self.failure_key).decode()
        except RuntimeError:  # the store is gone (rank 0 ended): the main thread's next collective says so
            return
        print(f"error: {line}", file=sys.stderr, flush=True)
        self._read(self.watched)
        self._wait_for_readers(self.watched, wait_s=5)
        self._leave(self.watched)
        os._exit(1)

    def post(self, line, wait_s=10):
        """Tell every other rank that this one failed, and wait (at most wait_s: a rank that is already
        gone never answers) until they have read it. Returns the line they were told: another rank's
        if it posted first."""
        self.close()  # this rank reports from its main thread
        try:
            told = self.store.compare_set(self.failure_key, '', line).decode()
        except RuntimeError:  # the store is gone: rank 0 ended, and every rank learns it from its collectives
            return line
        if told == line:
            with contextlib.suppress(RuntimeError):
                for rank, key in enumerate(self.wake_keys):
                    if rank != self.rank:
                        self.store.set(key, '')
        else:  # another rank failed a moment earlier: this one is among its readers
            self._read(self.store)
        self._wait_for_readers(self.store, wait_s)
        self._leave(self.store)
        return told

    def _read(self, store):
        with contextlib.suppress(RuntimeError):
            store.add(self.seen_key, 1)

    def _wait_for_readers(self, store, wait_s):
        """Until every rank but the one that posted has read the line, or wait_s has passed."""
        deadline = time.time() + wait_s
        with contextlib.suppress(RuntimeError):
            while store.add(self.seen_key, 0) < self.world_size - 1 and time.time() < deadline:
                time.sleep(0.02)

    def _leave(self, store, wait_s=5):
        """Rank 0 leaves last: under srun it hosts the store, and its end would cut off the others' calls."""
        deadline = time.time() + wait_s
        with contextlib.suppress(RuntimeError):
            if self.rank != 0:
                store.add(self.left_key, 1)
                return
            while store.add(self.left_key, 0) < self.world_size - 1 and time.time() < deadline:
                time.sleep(0.02)

    def failure(self):
        """The line another rank posted, if one did."""
        with contextlib.suppress(RuntimeError):
            if self.store.check([self.failure_key]):
                return self.store.get(self.failure_key).decode()
        return None

    def close(self):
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(RuntimeError):
            self.store.set(self.wake_keys[self.rank], '')
        self.watcher.join(timeout=5)


def _gist(error):
    """The fact in a distributed error: gloo's messages start with a source location and go on with advice."""
    return re.sub(r'^\[[^\]]*\]\s*', '', ' '.join(str(error).split())).split('. ')[0][:200]


def _lost_peer(error):
    """'rank R on HOST' for the peer a collective lost, where the error or the world size tells which."""
    others = [rank for rank in range(len(rank_hosts)) if rank != dist.get_rank()]
    if len(others) == 1:
        return f"rank {others[0]} on {rank_hosts[others[0]]}"
    addresses = set(re.findall(r'\[([0-9a-fA-F.:]+)\]:\d+', str(error)))
    for rank in others:
        with contextlib.suppress(OSError):
            if socket.gethostbyname(rank_hosts[rank]) in addresses:
                return f"rank {rank} on {rank_hosts[rank]}"
    return "the other ranks"


def stop_every_rank_on_failure(main):
    """Wrap main so that a failure on any rank ends every rank promptly, all with the same one line
    that names the rank, its host and the cause. A bug keeps its traceback on the rank that met it.
    A rank that loses contact with another (killed, partitioned, hung past ddp_timeout) says which."""
    lost = re.compile(r'closed by peer|reset by peer|broken pipe|timed out|timeout|connection refused', re.I)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as e:
            if _board is None:  # one process, or not joined yet
                raise
            here = f"rank {dist.get_rank()} on {rank_hosts[dist.get_rank()]}"
            if isinstance(e, RuntimeError) and (isinstance(e, dist.DistError) or lost.search(str(e))):
                # most likely the consequence of another rank's failure: if it posted its cause, this rank's
                # watcher prints it and ends the process (let it, rather than print the line twice)
                posted = _board.failure()
                if posted:
                    _board.watcher.join(timeout=15)
                line = posted or (
                    f"{here} lost contact with {_lost_peer(e)} ({_gist(e)}): it crashed, was killed, or hung "
                    f"or was cut off for longer than ddp_timeout; see its log, then resubmit the job (it resumes)")
            else:
                cause = str(e) if isinstance(e, UserError) else f"failed with {type(e).__name__}: {_gist(e)}"
                if not isinstance(e, UserError):
                    traceback.print_exc()
                line = _board.post(f"{here}: {cause}")
            raise UserError(line) from None
        finally:
            if _board is not None:  # stop the watcher before the store's end can raise in it at exit
                _board.close()
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
