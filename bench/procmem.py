"""Run a command and sample the memory and CPU time of its whole process tree; run one variant of
the prepare benchmarks that way.

Peak = the largest sum of RSS over the process and all its descendants (Ray's GCS, raylet and
workers included), sampled every 20 ms. Summing RSS counts shared pages (libraries, Ray's object
store) once per process, so it is an upper bound on the memory really used.
CPU = user + system seconds of every process of the tree (the last sample of each): on a shared
machine, wall time says little about scaling when other jobs hold cores, CPU seconds still do.
"""
import json
import os
import shutil
import subprocess
import sys
import time


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
