"""Run a command and sample the memory of its whole process tree (the prepare benchmarks use it).

Peak = the largest sum of RSS over the process and all its descendants (Ray's GCS, raylet and
workers included), sampled every 20 ms. Summing RSS counts shared pages (libraries, Ray's object
store) once per process, so it is an upper bound on the memory really used.
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
    """(returncode, stdout, wall seconds, peak bytes) of cmd, stderr discarded."""
    psutil = import_psutil()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        rss = 0
        try:
            for p in [root] + root.children(recursive=True):
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, rss)
        time.sleep(interval)
    out = proc.stdout.read()
    return proc.returncode, out, time.perf_counter() - t0, peak
