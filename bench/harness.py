"""What the prepare benchmarks (bench/prepare_char.py, bench/prepare_bpe.py) share: their command
line, and running each variant in a fresh process while sampling the memory and CPU time of its
whole process tree.

Peak = the largest sum of RSS over the process and all its descendants (Ray's GCS, raylet and
workers included), sampled every 20 ms. Summing RSS counts shared pages (libraries, Ray's object
store) once per process, so it is an upper bound on the memory really used.
CPU = user + system seconds of every process of the tree (the last sample of each): on a shared
machine, wall time says little about scaling when other jobs hold cores, CPU seconds still do.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from nanogpt.data.cli import parse_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_psutil():
    try:
        import psutil
    except ImportError:  # Ray ships its own copy and puts it on sys.path when imported
        import ray  # noqa: F401, I001  (first: it puts its psutil on sys.path)
        import psutil
    return psutil


WAIT_IDLE = False  # --wait_idle: start each timed run only once the machine is idle


def _cpu_times():
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait


def wait_idle(min_idle=0.9, timeout=900):
    """On a shared machine (Linux): wait until the CPUs were at least min_idle idle over the last second,
    so that a timed run does not share its cores with someone else's job from the start."""
    if not WAIT_IDLE:
        return
    t_end = time.time() + timeout
    total, idle = _cpu_times()
    while time.time() < t_end:
        time.sleep(1)
        total2, idle2 = _cpu_times()
        if (idle2 - idle) / max(1, total2 - total) >= min_idle:
            return
        total, idle = total2, idle2


def run_with_peak_rss(cmd, interval=0.02, cwd=None):
    """(returncode, stdout, wall seconds, peak bytes, CPU seconds) of cmd, stderr discarded."""
    psutil = import_psutil()
    wait_idle()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd)
    root, peak, cpu = psutil.Process(proc.pid), 0, {}
    while proc.poll() is None:
        rss = 0
        try:
            for p in [root] + root.children(recursive=True):
                try:
                    with p.oneshot():
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, rss)
        time.sleep(interval)
    out = proc.stdout.read()
    return proc.returncode, out, time.perf_counter() - t0, peak, sum(cpu.values())


def measure_variant(script, mode, workers, corpus, out_dir, chunk_size):
    """Run one variant of a prepare benchmark (`script --_child mode ...`) in a fresh process, into an
    empty out_dir; its RESULT line plus wall time, peak RSS and CPU seconds of its process tree."""
    shutil.rmtree(out_dir, ignore_errors=True)  # replacing big old bins costs time we do not want to count
    os.makedirs(out_dir)
    os.sync()  # start with no dirty pages of the previous run being flushed (not timed)
    cmd = [sys.executable, os.path.abspath(script), '--_child', mode, '--_workers', str(workers),
           '--_corpus', corpus, '--_out', out_dir, '--chunk_size', str(chunk_size)]
    rc, out, wall, peak, cpu = run_with_peak_rss(cmd)
    res = [json.loads(line[7:]) for line in out.splitlines() if line.startswith('RESULT ')]
    if rc or not res:
        sys.exit(f"{mode} with {workers} worker(s) failed:\n{out}")
    chose = next((line for line in out.splitlines() if line.startswith('workers:')), '')
    return dict(res[0], wall=wall, peak=peak, cpu=cpu, chose=chose)


def run_script(script, args, out_dir):
    """Run a prepare script as a user does, in a fresh process, into an empty out_dir: wall seconds (Python
    start, imports, Ray's start and stop included), peak RSS, CPU seconds and its "workers:" line."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.sync()
    # from the script's checkout: Ray's workers import data.* from the driver's working directory first
    cwd = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(script))))
    rc, out, wall, peak, cpu = run_with_peak_rss([sys.executable, script, *args, '--out_dir', out_dir], cwd=cwd)
    if rc:
        sys.exit(f"{script} {' '.join(args)} failed:\n{out}")
    chose = next((line for line in out.splitlines() if line.startswith('workers:')), '')
    return dict(wall=wall, peak=peak, cpu=cpu, chose=chose)


def end_to_end(script, corpus, workers, repeat, work_dir, baseline=None):
    """The prepare script (a path relative to the repository) as a user runs it: the default (--num_workers
    auto) beside --num_workers 1 and N, and the default of another checkout (baseline, e.g. the commit
    before a change), interleaved so that other work on the machine disturbs them alike; the fastest of
    repeat runs of each. Prints one line per variant and how the default compares."""
    here = os.path.join(REPO, script)
    variants = {'default': (here, []), '1 worker': (here, ['--num_workers', '1']),
                f'{workers} workers': (here, ['--num_workers', str(workers)])}
    if baseline:
        variants['baseline default'] = (os.path.join(os.path.abspath(baseline), script), [])
    runs = {name: [] for name in variants}
    for _ in range(repeat):
        for name, (path, args) in variants.items():
            out_dir = os.path.join(work_dir, 'e2e_' + name.split()[0])
            runs[name].append(run_script(path, ['--input', corpus, *args], out_dir))
    best = {name: min(r, key=lambda x: x['wall']) for name, r in runs.items()}
    for name, r in best.items():
        print(f"  {name:>10}: {r['wall']:6.2f} s end to end (runs {[round(x['wall'], 2) for x in runs[name]]}), "
              f"peak RSS {r['peak'] / 2**20:5.0f} MiB  {r['chose']}", flush=True)
    fastest = min(best['1 worker']['wall'], best[f'{workers} workers']['wall'])
    same = same_bins(*(os.path.join(work_dir, 'e2e_' + n.split()[0]) for n in ('default', '1')))
    vs = f"; baseline default / default {best['baseline default']['wall'] / best['default']['wall']:.2f}" \
        if baseline else ''
    print(f"  default / faster of 1 and {workers} workers: {best['default']['wall'] / fastest:.2f}{vs}; "
          f"identical bins: {same}; load average: {load_average()}", flush=True)
    return best


# the options --num_workers auto chooses among (choose_workers), as --num_workers values or a Plan
OPTIONS = ('1 worker', 'threads', 'Ray', 'auto')


def option(mode, workers):
    """What a --choice child passes as num_workers for an option: as the command line does, or a Plan for
    threads, which only auto can choose."""
    from nanogpt.data.workers import Plan
    return {'1 worker': 1, 'threads': Plan('threads', workers, 'benchmark: threads'), 'Ray': workers,
            'auto': 'auto'}[mode]


def choice(script, args, corpus, references=()):
    """--choice: every option of --num_workers auto (OPTIONS, N = --workers) and the references, each a
    fresh process timed whole (Python start, imports, the speed measurement or Ray's start and shutdown
    included), the fastest of --repeat runs; the order rotates each round, so that no option always runs
    after the same one. Prints each, auto's time over the best option's, each reference's over auto's, and
    whether auto's bins equal one worker's."""
    names = list(OPTIONS) + list(references)
    runs = {name: [] for name in names}
    for i in range(args.repeat):
        for name in names[i % len(names):] + names[:i % len(names)]:
            out_dir = os.path.join(args.work_dir, 'choice_' + name.replace(' ', '_'))
            runs[name].append(measure_variant(script, name, args.workers, corpus, out_dir, args.chunk_size))
    best = {name: min(r, key=lambda x: x['wall']) for name, r in runs.items()}
    for name in names:
        print(f"  {name:>16}: {best[name]['wall']:7.2f} s (runs {[round(r['wall'], 2) for r in runs[name]]}), CPU "
              f"{best[name]['cpu']:6.1f} s, peak RSS {best[name]['peak'] / 2**20:5.0f} MiB  {best[name]['chose']}",
              flush=True)
    fastest = min(OPTIONS[:-1], key=lambda name: best[name]['wall'])  # the options auto chooses among
    line = f"  auto / best option ({fastest}): {best['auto']['wall'] / best[fastest]['wall']:.2f}"
    for ref in references:
        line += f"; {ref} / auto: {best[ref]['wall'] / best['auto']['wall']:.2f}x"
    same = same_bins(*(os.path.join(args.work_dir, 'choice_' + n) for n in ('auto', '1_worker')))
    print(f"{line}; identical bins: {same}; load average: {load_average()}", flush=True)
    return best


def derived_figures(one, ray_n, threads_n, workers, mb):
    """The figures --num_workers auto weighs (nanogpt.data.workers: Speed, RAY_FIXED_S), from the variants' results:
    one worker's MB/s, Ray's efficiency (speed-up / N), the GIL share that explains the threads' speed-up
    (Amdahl: speed-up = 1 / (g + (1 - g) / N)) and Ray's fixed cost (import, start, shutdown)."""
    line = f"figures for nanogpt/data/workers.py: one worker {mb / one['seconds']:.1f} MB/s"
    if ray_n:
        fixed = ray_n['ray_import'] + ray_n['ray_init'] + ray_n['ray_shutdown']
        line += (f"; Ray {workers} workers {one['seconds'] / ray_n['seconds']:.2f}x, efficiency "
                 f"{one['seconds'] / ray_n['seconds'] / workers:.2f}; Ray fixed cost {fixed:.2f} s (import "
                 f"{ray_n['ray_import']:.2f} + start {ray_n['ray_init']:.2f} + shutdown {ray_n['ray_shutdown']:.2f})")
    if threads_n:
        speedup = one['seconds'] / threads_n['seconds']
        gil = min(1.0, max(0.0, (1 / speedup - 1 / workers) / (1 - 1 / workers)))
        line += f"; {workers} threads {speedup:.2f}x, GIL share {gil:.2f}"
    print(line, flush=True)


def parser(doc, size, chunk_size, work_dir_name, skip_reference_help):
    """The command line of a prepare benchmark; the hidden --_ options run one variant as the child."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', type=parse_size, default=parse_size(size), help=f'corpus size (default {size})')
    p.add_argument('--workers', type=int, default=os.cpu_count(), help='N for the parallel run (default: cpu count)')
    p.add_argument('--chunk_size', type=parse_size, default=parse_size(chunk_size))
    p.add_argument('--work_dir', default=os.path.join(tempfile.gettempdir(), work_dir_name))
    p.add_argument('--repeat', type=int, default=1, help='runs per variant; the fastest is reported (default 1)')
    p.add_argument('--skip_reference', action='store_true', help=skip_reference_help)
    p.add_argument('--threads', action='store_true', help='also run the pipeline on N threads of one process')
    p.add_argument('--end_to_end', action='store_true',
                   help='run the prepare script as a user does: the default (--num_workers auto) beside 1 and N '
                        'workers')
    p.add_argument('--wait_idle', action='store_true',
                   help='on a shared machine: start each timed run only once the CPUs are idle')
    p.add_argument('--baseline', metavar='DIR', help='with --end_to_end: also time the default of the checkout in DIR')
    p.add_argument('--choice', action='store_true',
                   help="time every option --num_workers auto chooses among (1 worker, N threads, N Ray workers) and "
                        "auto itself, each process timed whole: auto's time over the best option's")
    p.add_argument('--_child'), p.add_argument('--_workers', type=int), p.add_argument('--_corpus'), p.add_argument('--_out')
    return p


def variants(args, references=('reference',)):
    """(mode, workers) pairs, side by side in one run: the references, then 1 and N pipeline workers (Ray),
    and N threads with --threads."""
    return ([] if args.skip_reference else [(r, 1) for r in references]) \
        + [('pipeline', 1), ('pipeline', args.workers)] + ([('threads', args.workers)] if args.threads else [])


def start_ray_timed(workers):
    """In the child: start a local Ray as the pipelines do; seconds to import Ray and to start it."""
    t0 = time.perf_counter()
    import ray  # noqa: F401
    t1 = time.perf_counter()
    from nanogpt.data.workers import start_ray
    start_ray(workers)
    return dict(ray_import=t1 - t0, ray_init=time.perf_counter() - t1)


def stop_ray_timed():
    import ray
    t0 = time.perf_counter()
    ray.shutdown()
    return dict(ray_shutdown=time.perf_counter() - t0)


def plan(mode, workers):
    """The nanogpt.data.workers.Plan of a benchmark variant."""
    from nanogpt.data.workers import Plan
    kind = 'threads' if mode == 'threads' else 'process' if workers == 1 else 'ray'
    return Plan(kind, workers, f'benchmark: {mode}')


def measure(script, args, mode, workers, corpus, out_dir):
    """The fastest of --repeat runs (slower ones were disturbed by other work on the machine), with the
    largest peak memory seen; each run in a fresh process (and a fresh Ray)."""
    runs = [measure_variant(script, mode, workers, corpus, out_dir, args.chunk_size) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r['seconds'])
    fastest_of = {k: min(r[k] for r in runs) for k in ('warm', 'ray_import', 'ray_init', 'ray_shutdown') if k in best}
    return dict(best, **fastest_of, peak=max(r['peak'] for r in runs), all_seconds=[round(r['seconds'], 2) for r in runs])


def same_bins(dir_a, dir_b):
    """Whether two prepared datasets have byte-identical train.bin and val.bin."""
    return all(open(os.path.join(dir_a, f), 'rb').read() == open(os.path.join(dir_b, f), 'rb').read()
               for f in ('train.bin', 'val.bin'))


def load_average():
    return ' '.join(f'{x:.1f}' for x in os.getloadavg())
