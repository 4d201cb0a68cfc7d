"""
Who does the work: an ordered, bounded map (Workers) over Ray tasks (a local Ray, or a cluster with
--ray_address), threads of this process, or plain calls in this process; and choose_workers(), which
picks among them for --num_workers auto, by the pipeline's speed measured on this CPU (measured_speed).
Results come back in order, so the output does not depend on the worker count.
"""

import collections
import hashlib
import os
import random
import sys
import tempfile
import time
from typing import NamedTuple, Optional

from nanogpt.errors import UserError
from nanogpt.files import cache_dir, cached_measurement, record_measurement, recorded_measurement

MiB = 1 << 20


# Import Ray, start a local Ray with its workers, shut it down: what a run on Ray pays before and after
# its first chunk. Every run that starts a local Ray measures it and records it for this CPU model and
# worker count (Workers); auto weighs the fastest of the last RAY_COSTS_KEPT, so that one run on a busy
# machine does not keep Ray out. Until a local Ray has run here, this figure, measured with
# bench/prepare_char.py on the machine in docs/data.md ("Choosing the workers"), stands in. A running
# cluster (--ray_address) pays none of it.
RAY_FIXED_S = 6.7
RAY_COST_FILE = 'ray_fixed_cost.json'
RAY_COSTS_KEPT = 5

# What Ray's driver and scheduling leave of N workers: the CPU time its workers spent in the pipeline's
# calls over N x the wall time of the passes. Measured the same way as the fixed cost, by every run on a
# local Ray whose passes took RAY_SHARE_MIN_S or more (shorter ones are mostly their first and last tasks),
# per pipeline; the best of the last RAY_COSTS_KEPT counts. Until then, a pipeline's own stand-in
# (RAY_EFFICIENCY in char.py and bpe.py) counts. The cores' measured scaling multiplies either.
RAY_SHARE_FILE = 'ray_worker_share.json'
RAY_SHARE_MIN_S = 10.0


# Threads run only where they are predicted to run at least this much faster than one worker: a smaller gain
# is within the noise of a short measurement, and threads that share the GIL slow each other down
THREADS_MIN_SPEEDUP = 1.05

# Part of the cache key of the measured speeds: raised whenever a pipeline's per-chunk work changes speed,
# so that figures cached by older code are measured again (2: BPE threads with an encoder each, bpe.py)
CALIBRATION = 2


class Speed(NamedTuple):
    """A pipeline's speed on this CPU (measured_speed), which --num_workers auto weighs against Ray's fixed cost."""
    mb_per_s: float  # one worker in this process, input MB per second
    ray_efficiency: float  # N Ray workers run ray_efficiency * N times as fast as one (the driver's share included)
    gil_share: Optional[float] = None  # share of one worker's time that holds the GIL: N threads of this process
    # run 1 / (gil_share + (1 - gil_share) / N) times as fast as one (Amdahl); None: no threads
    source: str = ''  # where the figures come from, for the log
    ray_fixed_s: float = RAY_FIXED_S  # seconds to import, start and shut down a local Ray on every CPU


def measured_speed(pipeline, work, sample_bytes, ray_efficiency, threads):
    """A pipeline's Speed on this CPU. work(chunk) runs the pipeline's own per-chunk function on a chunk of
    a .txt file: a fixed sample of sample_bytes (calibration_text), in a temporary folder. It is timed
    alone and (threads: where the work releases the GIL) on 2 threads at once, within about a second,
    once per CPU model, CPU count and pipeline, then read from a cache file. ray_efficiency: what Ray's
    driver and scheduling leave of N workers' speed-up on cores that run N things at once.
    The CPU matters: one worker's speed sets where Ray's start-up pays off, and how well 2 threads scale
    (2 cores, or 2 hyperthreads of one) whether threads, or Ray, beat one worker."""
    cpus = available_cpus()
    (mb_per_s, gil_share, cores, quiet), path = cached_measurement(
        'worker_speed.json', f"{cpus} cpus|{pipeline}|{CALIBRATION}",
        lambda: _calibrate(work, sample_bytes, threads, cpus > 1), valid=_usable)
    where = f"cached in {path}" if quiet else "not cached: other processes were using the CPUs"
    ray_fixed_s = min(_recent(RAY_COST_FILE, f"{cpus} workers"), default=None)
    if ray_fixed_s is not None:
        where += f"; Ray's start-up as measured here ({cache_dir(RAY_COST_FILE)})"
    else:
        ray_fixed_s = RAY_FIXED_S
    ray_share = max(_recent(RAY_SHARE_FILE, f"{cpus} workers|{pipeline}"), default=None)
    if ray_share is not None:
        where += f"; Ray workers' share as measured here ({cache_dir(RAY_SHARE_FILE)})"
        ray_efficiency = ray_share
    # Ray's workers are processes: they scale as the cores do, which 2 hyperthreads of one core, or cores
    # that other jobs hold, do not
    return Speed(mb_per_s, ray_efficiency * min(1.0, cores / 2), gil_share,
                 f"{pipeline} speed measured on this CPU, {where}", ray_fixed_s)


# what the figures of the last runs on a local Ray (Workers) can be: seconds of start-up and shutdown, a share
_PLAUSIBLE = {RAY_COST_FILE: lambda s: 0 < s < 600, RAY_SHARE_FILE: lambda s: 0 < s <= 1}


def _recent(file_name, key):
    """The figures that the last runs on a local Ray recorded for key, less any that a hand-edited file spoilt."""
    figures = recorded_measurement(file_name, key)
    if not isinstance(figures, list):
        return []
    return [x for x in figures if type(x) in (int, float) and _PLAUSIBLE[file_name](x)]  # a bool is no figure


def _remember(file_name, key, figure):
    """Add a run's figure to the last RAY_COSTS_KEPT recorded for key."""
    record_measurement(file_name, key, (_recent(file_name, key) + [figure])[-RAY_COSTS_KEPT:])


def _usable(entry):
    """Whether a cached [MB/s, GIL share or None, 2 cores' speed-up, quiet] (_calibrate) can be used."""
    mb_per_s, gil_share, cores, quiet = entry
    return mb_per_s > 0 and (gil_share is None or 0 <= gil_share <= 1) and 0 < cores <= 2 and quiet is True


def _calibrate(work, sample_bytes, threads, parallel, rounds=3):
    """[one thread's MB/s, the GIL share that explains 2 threads' speed-up (Amdahl) or None, the speed-up of
    2 cores (2 threads hashing, which holds no GIL), quiet]. One and two threads take turns, and the best
    round of each counts. quiet: other processes used under a tenth of a CPU meanwhile; if not, the figures
    hold for this run, on the busy machine, but are measured again next time, so that a busy moment does
    not stay in the cache."""
    from concurrent.futures import ThreadPoolExecutor
    start, others = time.perf_counter(), _others_cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'sample.txt')
        with open(path, 'wb') as f:
            f.write(calibration_text(sample_bytes))
        n_bytes = os.path.getsize(path)
        chunk = ('file', path, 0, n_bytes, True, None)  # as Corpus.chunks cuts a .txt file
        block = os.urandom(4 << 20)
        best = collections.defaultdict(lambda: float('inf'))
        timings = [('one', work, chunk, 1), ('hash', _hash, block, 1)]
        if parallel:
            timings += [('two', work, chunk, 2)] * threads + [('hashes', _hash, block, 2)]
        with ThreadPoolExecutor(2) as pool:
            # first-call costs (imports, each thread's own encoder) are no part of the speed
            list(pool.map(work, [chunk] * 2))
            for _ in range(rounds):
                for name, fn, arg, n in timings:
                    t0 = time.perf_counter()
                    list(pool.map(fn, [arg] * n))
                    best[name] = min(best[name], time.perf_counter() - t0)
    quiet = _others_cpu_seconds() - others < 0.1 * (time.perf_counter() - start)
    # Amdahl with N = 2: 1 / speed-up = g + (1 - g) / 2, where the speed-up is 2 * one / two
    gil_share = min(1.0, max(0.0, best['two'] / best['one'] - 1)) if threads and parallel else None
    cores = min(2.0, 2 * best['hash'] / best['hashes']) if parallel else 1.0
    return [n_bytes / best['one'] / 1e6, gil_share, cores, quiet]


def _hash(block):
    hashlib.sha256(block).digest()


def _others_cpu_seconds():
    """CPU seconds that other processes (and a hypervisor's steal) have used on this process's CPUs, per
    /proc/stat; 0 where there is none to read."""
    try:
        mine = os.sched_getaffinity(0)
        with open('/proc/stat') as f:
            rows = [line.split() for line in f if line.startswith('cpu') and line[3].isdigit()]
    except (OSError, AttributeError):
        return 0.0
    # user nice system [idle iowait] irq softirq steal
    busy = sum(sum(map(int, r[1:4] + r[6:9])) for r in rows if int(r[0][3:]) in mine)
    t = os.times()
    return busy / os.sysconf('SC_CLK_TCK') - t.user - t.system


def calibration_text(n_bytes):
    """About n_bytes of documents separated by <|endoftext|>, as UTF-8: the fixed sample that measured_speed
    times every pipeline on, on any machine. English words, 15% made-up ones (which GPT-2's BPE splits, as
    it does the rarer words of web text: 4.3-4.6 bytes per token, as C4's 4.5) and 1% with multi-byte
    characters (which the char pipeline decodes apart)."""
    words = ("once upon a time there was a little girl named Lily who loved to play in the park with her dog. "
             "The committee’s quarterly report, published on Tuesday, estimated that approximately 1,250 households "
             "would be affected by the proposed infrastructure investments; however, several independent researchers "
             "questioned its methodology (see www.example.org/reports/2024-q3) and recommended a review.").split()
    syllables = "an ber con de er ex in ka lo ment mi or pre qu ri sta tion ul ve zo".split()
    rare = "café naïve résumé 東京 😊".split()
    rng = random.Random(0)

    def word():
        r = rng.random()
        if r < 0.01:
            return rng.choice(rare)
        return ''.join(rng.choices(syllables, k=rng.randrange(2, 5))) if r < 0.16 else rng.choice(words)
    docs = [' '.join(word() for _ in range(rng.randrange(50, 400))) for _ in range(64)]
    block = ''.join(doc + '\n<|endoftext|>\n' for doc in docs).encode()
    return block * max(1, n_bytes // len(block))


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
    (where speed allows), or a local Ray on every CPU, counting Ray's fixed start-up and shutdown cost.
    speed: a Speed, or a function that returns one (measured_speed), called only where auto needs it."""
    if isinstance(requested, Plan):  # chosen by the caller (a benchmark)
        return requested
    if requested != 'auto':
        kind = 'process' if requested == 1 and ray_address is None else 'ray'
        return Plan(kind, requested, f"--num_workers {requested}", ray_address)
    if ray_address is not None:
        return Plan('ray', None, f"--ray_address {ray_address}", ray_address)
    speed = speed() if callable(speed) else speed
    cpus = cpus or available_cpus()
    size = f"{n_bytes / 1e6:,.0f} MB" if n_bytes is not None else "corpus size unknown"
    local = Plan('process', 1, '')
    local_speedup = 1.0
    if speed.gil_share is not None and cpus > 1:
        threads_speedup = 1 / (speed.gil_share + (1 - speed.gil_share) / cpus)
        if threads_speedup >= THREADS_MIN_SPEEDUP:
            local, local_speedup = Plan('threads', cpus, ''), threads_speedup
    ray_speedup = speed.ray_efficiency * cpus
    source = f"; {speed.source}" if speed.source else ''
    if ray_speedup <= local_speedup:
        return local._replace(reason=f"{size}; on {cpus} CPU{'s' * (cpus > 1)} Ray would run at {ray_speedup:.2f}x "
                                     f"one worker, this process at {local_speedup:.2f}x{source}")
    # Ray wins when the time it saves, n_bytes / rate * (1 / local_speedup - 1 / ray_speedup), exceeds its fixed cost
    threshold = speed.ray_fixed_s * speed.mb_per_s * 1e6 / (1 / local_speedup - 1 / ray_speedup)
    why = f"Ray's ~{speed.ray_fixed_s:.1f} s start-up pays off above {threshold / 1e6:,.0f} MB on {cpus} CPUs{source}"
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
    ran on and the CPU seconds the calls took come back too: tasks per node, and Ray workers' share."""
    import ray
    cpu = time.process_time()
    results = [fn(*args, *shared) for args in calls]
    return ray.get_runtime_context().get_node_id(), results, time.process_time() - cpu


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
    and left running; on one it starts and stops, what Ray cost and what share of its workers' time went
    into the pipeline's calls are recorded for --num_workers auto (RAY_FIXED_S, RAY_SHARE_FILE), under
    pipeline's name. Says in one line what runs and why, and, on Ray, how many tasks ran on each node."""

    def __init__(self, plan, pipeline=None):
        self.kind, self.num_workers, self.ray, self.address = plan.kind, plan.workers or 1, None, plan.address
        self.started_ray, self.pipeline = False, pipeline
        self.tasks_per_node = collections.Counter()
        # Ray tasks' CPU seconds in the calls, and of the passes that ran to the end, with those passes' wall time
        self.task_cpu_s = self.passes_cpu_s = self.passes_s = 0.0
        if self.kind == 'ray':
            t0, imported = time.perf_counter(), 'ray' in sys.modules
            try:
                import ray
            except ImportError:
                raise UserError("--num_workers above 1 runs on Ray, which is not installed: pip install ray, "
                                "or pass --num_workers 1")
            self.ray = ray
            if not ray.is_initialized():
                self.num_workers = start_ray(plan.workers, plan.address)
                self.started_ray = True
                # what this run paid to import and start Ray, for --num_workers auto; a process that had
                # imported Ray before (a benchmark) did not pay all of it, and is not timed
                self.ray_start_s = None if imported else time.perf_counter() - t0
            elif plan.workers is None:
                self.num_workers = max(1, int(ray.cluster_resources().get('CPU', 1)))
        where = {'process': 'in this process', 'threads': 'threads in this process',
                 'ray': 'Ray workers' + (f' on the cluster at {plan.address}' if plan.address else '')}[self.kind]
        print(f"workers: {self.num_workers} {where} ({plan.reason})", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started_ray:
            t0 = time.perf_counter()
            self.ray.shutdown()
            if exc[0] is None and not self.address and self.ray_start_s is not None:  # a local Ray, timed whole
                _remember(RAY_COST_FILE, f"{self.num_workers} workers", self.ray_start_s + time.perf_counter() - t0)
            if exc[0] is None and not self.address and self.pipeline and self.passes_s >= RAY_SHARE_MIN_S:
                _remember(RAY_SHARE_FILE, f"{self.num_workers} workers|{self.pipeline}",
                          min(1.0, self.passes_cpu_s / (self.passes_s * self.num_workers)))
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
            start, cpu_s = time.perf_counter(), self.task_cpu_s
            yield from self._ordered((remote.remote(fn, calls, *shared) for calls in _groups(arg_tuples, group)),
                                     self._get, self.ray.cancel)
            # only here, at the end of the pass: one stopped early (--max_tokens, an error) is not counted
            self.passes_s += time.perf_counter() - start
            self.passes_cpu_s += self.task_cpu_s - cpu_s

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
            node, results, cpu_s = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):  # e.g. invalid UTF-8 found by a worker
                raise UserError(str(e.cause)) from None
            raise
        self.tasks_per_node[node] += 1
        self.task_cpu_s += cpu_s
        return results
