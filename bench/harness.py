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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.pipeline import parse_size  # noqa: E402


def import_psutil():
    try:
        import psutil
    except ImportError:  # Ray ships its own copy and puts it on sys.path when imported
        import ray  # noqa: F401
        import psutil
    return psutil


def run_with_peak_rss(cmd, interval=0.02):
    """(returncode, stdout, wall seconds, peak bytes, CPU seconds) of cmd, stderr discarded."""
    psutil = import_psutil()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
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
    return dict(res[0], wall=wall, peak=peak, cpu=cpu)


def parser(doc, size, chunk_size, work_dir_name, skip_reference_help):
    """The command line of a prepare benchmark; the hidden --_ options run one variant as the child."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--size', type=parse_size, default=parse_size(size), help=f'corpus size (default {size})')
    p.add_argument('--workers', type=int, default=os.cpu_count(), help='N for the parallel run (default: cpu count)')
    p.add_argument('--chunk_size', type=parse_size, default=parse_size(chunk_size))
    p.add_argument('--work_dir', default=os.path.join(tempfile.gettempdir(), work_dir_name))
    p.add_argument('--repeat', type=int, default=1, help='runs per variant; the fastest is reported (default 1)')
    p.add_argument('--skip_reference', action='store_true', help=skip_reference_help)
    p.add_argument('--_child'), p.add_argument('--_workers', type=int), p.add_argument('--_corpus'), p.add_argument('--_out')
    return p


def variants(args):
    """(mode, workers) pairs, side by side in one run: the reference, then 1 and N pipeline workers."""
    return ([] if args.skip_reference else [('reference', 1)]) + [('pipeline', 1), ('pipeline', args.workers)]


def measure(script, args, mode, workers, corpus, out_dir):
    """The fastest of --repeat runs (slower ones were disturbed by other work on the machine), with the
    largest peak memory seen; each run in a fresh process (and a fresh Ray)."""
    runs = [measure_variant(script, mode, workers, corpus, out_dir, args.chunk_size) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r['seconds'])
    fastest_of = {k: min(r[k] for r in runs) for k in ('warm',) if k in best}
    return dict(best, **fastest_of, peak=max(r['peak'] for r in runs), all_seconds=[round(r['seconds'], 2) for r in runs])


def same_bins(dir_a, dir_b):
    """Whether two prepared datasets have byte-identical train.bin and val.bin."""
    return all(open(os.path.join(dir_a, f), 'rb').read() == open(os.path.join(dir_b, f), 'rb').read()
               for f in ('train.bin', 'val.bin'))


def load_average():
    return ' '.join(f'{x:.1f}' for x in os.getloadavg())
