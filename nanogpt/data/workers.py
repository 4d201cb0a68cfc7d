"""
Who does the work: an ordered, bounded map (Workers) over Ray tasks (a local Ray, or a cluster with
--ray_address), threads of this process, or plain calls in this process; and choose_workers(), which
picks among them for --num_workers auto. Results come back in order, so the output does not depend on
the worker count.
"""

import collections
import os
import sys
import tempfile
from typing import NamedTuple, Optional

from nanogpt.errors import UserError

MiB = 1 << 20


# Import Ray, start a local Ray with its workers, shut it down: what a run on Ray pays before and after
# its first chunk, measured with bench/prepare_char.py on the machine in docs/data.md ("Choosing the
# workers"). A running cluster (--ray_address) pays none of it.
RAY_FIXED_S = 6.7


class Speed(NamedTuple):
    """A pipeline's measured speed (bench/prepare_char.py, bench/prepare_bpe.py), which --num_workers auto
    weighs against RAY_FIXED_S. The figures are from one machine, but a faster one also starts Ray faster,
    so the corpus size where Ray starts to pay off moves less than either."""
    mb_per_s: float  # one worker in this process, input MB per second
    ray_efficiency: float  # N Ray workers run ray_efficiency * N times as fast as one (the driver's share included)
    gil_share: Optional[float] = None  # share of one worker's time that holds the GIL: N threads of this process
    # run 1 / (gil_share + (1 - gil_share) / N) times as fast as one (Amdahl); None: no threads


class Plan(NamedTuple):
    """How a pipeline runs: 'process' (plain calls here), 'threads' (of this process) or 'ray' (tasks, on a
    local Ray or the cluster at address; workers None: all the cluster's CPUs), and why, for the log."""
    kind: str
    workers: Optional[int]
    reason: str
    address: Optional[str] = None


def choose_workers(requested, n_bytes, speed, ray_address=None, cpus=None):
    """The Plan for --num_workers (a number, or 'auto') on a corpus of about n_bytes (None: unknown, e.g.
    streaming). auto: Ray with --ray_address; else the fastest of one worker in this process, threads
    (where speed allows), or a local Ray on every CPU, counting Ray's fixed start-up and shutdown cost."""
    if isinstance(requested, Plan):  # chosen by the caller (a benchmark)
        return requested
    if requested != 'auto':
        kind = 'process' if requested == 1 and ray_address is None else 'ray'
        return Plan(kind, requested, f"--num_workers {requested}", ray_address)
    if ray_address is not None:
        return Plan('ray', None, f"--ray_address {ray_address}", ray_address)
    cpus = cpus or available_cpus()
    size = f"{n_bytes / 1e6:,.0f} MB" if n_bytes is not None else "corpus size unknown"
    local = Plan('process', 1, '')
    local_speedup = 1.0
    if speed.gil_share is not None and cpus > 1:
        local = Plan('threads', cpus, '')
        local_speedup = 1 / (speed.gil_share + (1 - speed.gil_share) / cpus)
    ray_speedup = speed.ray_efficiency * cpus
    if ray_speedup <= local_speedup:
        return local._replace(reason=f"{size}; on {cpus} CPU{'s' * (cpus > 1)} Ray would run at {ray_speedup:.2f}x "
                                     f"one worker, this process at {local_speedup:.2f}x")
    # Ray wins when the time it saves, n_bytes / rate * (1 / local_speedup - 1 / ray_speedup), exceeds its fixed cost
    threshold = RAY_FIXED_S * speed.mb_per_s * 1e6 / (1 / local_speedup - 1 / ray_speedup)
    why = f"Ray's ~{RAY_FIXED_S:g} s start-up pays off above {threshold / 1e6:,.0f} MB on {cpus} CPUs"
    if n_bytes is not None and n_bytes <= threshold:
        return local._replace(reason=f"{size}; {why}")
    return Plan('ray', cpus, f"{size}; {why}")


def available_cpus(cgroup='/sys/fs/cgroup'):
    """The CPUs this process may really use: os.cpu_count() counts the host's, but a container, a SLURM
    step or taskset may allow fewer (the CPU affinity), and a cgroup quota (cpu.max, or cgroup v1's
    cfs_quota_us / cfs_period_us) caps the CPU time, as a container's --cpus does."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    for quota_file, period_file in (('cpu.max', None), ('cpu/cpu.cfs_quota_us', 'cpu/cpu.cfs_period_us')):
        try:
            with open(os.path.join(cgroup, quota_file)) as f:
                fields = f.read().split()
            if period_file:
                with open(os.path.join(cgroup, period_file)) as f:
                    fields.append(f.read().strip())
            quota, period = fields[0], fields[1]
        except (OSError, IndexError):
            continue
        if quota not in ('max', '-1') and int(period) > 0:
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))  # 1.5 CPUs of time: 2 workers
        break
    return cpus


def start_ray(num_workers=None, address=None):
    """ray.init for the data pipelines: a local Ray with num_workers CPUs, or join the cluster at address.
    Returns the number of workers to keep busy: num_workers, or the cluster's CPUs if it is None."""
    import ray
    # Ray runs its workers at nice 15; preparing the data is the job here, so run them like this process
    os.environ.setdefault('RAY_worker_niceness', '0')
    if not address:
        ray.init(include_dashboard=False, configure_logging=False, num_cpus=num_workers,
                 object_store_memory=max(256 * MiB, 64 * MiB * num_workers))
    else:
        _join_ray(ray, address)
    num_workers = num_workers or max(1, int(ray.cluster_resources().get('CPU', 1)))
    # the first tasks of a new job wait ~0.4 s for their workers to be leased (even a no-op does):
    # pay that here, as part of starting Ray, rather than inside the first pass
    ray.get([ray.remote(num_cpus=1, scheduling_strategy='SPREAD')(_ready).remote() for _ in range(num_workers)])
    return num_workers


def _join_ray(ray, address):
    """ray.init(address), or one line that says why not. While it cannot connect, Ray's C++ client logs a
    warning a second for ~20 s on stderr: that output is shown only if the connection succeeds."""
    # the workers of a running cluster do not inherit this environment: pass on what they read
    env = {k: os.environ[k] for k in ('TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR') if k in os.environ}
    token = ("; a cluster started by `ray start --head` wants its token: set RAY_AUTH_MODE=token for this script "
             "too, and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH if the token is not in ~/.ray/auth_token")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            ray.init(address=address, runtime_env=dict(env_vars=env), include_dashboard=False, configure_logging=False)
        except ray.exceptions.AuthenticationError:
            raise UserError(f"cannot join the Ray cluster at {address}: not authenticated{token}")
        except ConnectionError as e:
            raise UserError(f"cannot join the Ray cluster at {address} ({e}){token}")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        sys.stderr.write(log.read().decode(errors='replace'))


def _ready():
    return True


def _call_each(fn, calls, *shared):
    """One Ray task that makes several calls, so that they share one task's scheduling cost. The node it
    ran on comes back too, for the count of tasks per node."""
    import ray
    return ray.get_runtime_context().get_node_id(), [fn(*args, *shared) for args in calls]


def _groups(items, n):
    """Consecutive items in lists of n (the last one shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


class Workers:
    """An ordered map over the workers of a Plan (choose_workers), with at most 2 calls per worker in
    flight, so memory stays bounded however many chunks there are. 'process': plain calls, so a small job
    pays no Ray start-up. 'threads': a thread pool of this process, for work that releases the GIL.
    'ray': Ray tasks; a Ray already initialised in this process (a benchmark, a test fixture) is reused
    and left running. Says in one line what runs and why, and, on Ray, how many tasks ran on each node."""

    def __init__(self, plan):
        self.kind, self.num_workers, self.ray = plan.kind, plan.workers or 1, None
        self.started_ray = False
        self.tasks_per_node = collections.Counter()
        if self.kind == 'ray':
            try:
                import ray
            except ImportError:
                raise UserError("--num_workers above 1 runs on Ray, which is not installed: pip install ray, "
                                "or pass --num_workers 1")
            self.ray = ray
            if not ray.is_initialized():
                self.num_workers = start_ray(plan.workers, plan.address)
                self.started_ray = True
            elif plan.workers is None:
                self.num_workers = max(1, int(ray.cluster_resources().get('CPU', 1)))
        where = {'process': 'in this process', 'threads': 'threads in this process',
                 'ray': 'Ray workers' + (f' on the cluster at {plan.address}' if plan.address else '')}[self.kind]
        print(f"workers: {self.num_workers} {where} ({plan.reason})", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started_ray:
            self.ray.shutdown()
        if exc[0] is None and self.tasks_per_node:
            nodes = ', '.join(f"{node[:8]} {n}" for node, n in self.tasks_per_node.most_common())
            print(f"ray: {sum(self.tasks_per_node.values())} tasks on {len(self.tasks_per_node)} "
                  f"node{'s' * (len(self.tasks_per_node) > 1)} ({nodes})", flush=True)

    def map(self, fn, arg_tuples, shared=(), group=1):
        """Yield fn(*args, *shared) for each args, in order. shared: arguments that every call gets,
        sent to the workers once (a lookup table). With Ray, each task makes `group` consecutive calls:
        fewer, longer tasks where a task's scheduling would cost a noticeable part of one call."""
        if self.kind == 'process':
            for args in arg_tuples:
                yield fn(*args, *shared)
        elif self.kind == 'threads':
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(self.num_workers) as pool:
                yield from self._ordered((pool.submit(fn, *args, *shared) for args in arg_tuples),
                                         lambda f: [f.result()], lambda f: f.cancel())
        else:
            # in the object store once, rather than serialised again into every task's arguments
            shared = [self.ray.put(x) for x in shared]
            # SPREAD: over all the nodes of a cluster, rather than filling the driver's node first.
            # max_retries: a task whose worker process dies is run again, which is safe because every call
            # is idempotent (it returns its result, or writes its own slice of the output files)
            remote = self.ray.remote(num_cpus=1, scheduling_strategy='SPREAD', max_retries=3)(_call_each)
            yield from self._ordered((remote.remote(fn, calls, *shared) for calls in _groups(arg_tuples, group)),
                                     self._get, self.ray.cancel)

    def _ordered(self, submitted, results, cancel):
        """The results of submitted jobs, in order, with at most 2 per worker in flight."""
        pending = collections.deque()
        try:
            for job in submitted:
                pending.append(job)
                if len(pending) >= 2 * self.num_workers:
                    yield from results(pending.popleft())
            while pending:
                yield from results(pending.popleft())
        finally:
            for job in pending:  # an error or an early stop: do not leave work running
                cancel(job)

    def _get(self, ref):
        try:
            node, results = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):  # e.g. invalid UTF-8 found by a worker
                raise UserError(str(e.cause)) from None
            raise
        self.tasks_per_node[node] += 1
        return results
