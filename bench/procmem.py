"""Run a command and sample the memory and CPU time of its whole process tree (the prepare
benchmarks use it).

Peak = the largest sum of RSS over the process and all its descendants (Ray's GCS, raylet and
workers included), sampled every 20 ms. Summing RSS counts shared pages (libraries, Ray's object
store) once per process, so it is an upper bound on the memory really used.
CPU = user + system seconds of every process of the tree (the last sample of each): on a shared
machine, wall time says little about scaling when other jobs hold cores, CPU seconds still do.
"""
import subprocess
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
