"""
One training run per out_dir. The run holds out_dir/.lock from start-up to exit; a second run
on the same out_dir stops at start-up with one line that names the holder.

- The lock is an OS file lock (flock). The kernel drops it when the process ends in any way,
  SIGKILL included, so a killed run never leaves a stale lock behind.
- The file also records the holder: host, pid, SLURM job id, start time. Some cluster
  filesystems do not carry flock between machines (NFS mounted without lock support, Lustre
  without -o flock). There flock either fails, or succeeds on every machine at once. So a record
  from another host is checked too: a SLURM job that is still running is a live run. Where flock
  fails, a record from this host is checked by its pid. A record that cannot be checked (another
  host, no SLURM) is reported, and the run goes on, so a crash cannot block the directory forever.
- A requeued SLURM job keeps its job id. A record with this job's id comes from an earlier run of
  the same job, which SLURM ended before it started this one.
- A clean exit empties the record. Only training takes the lock: sample.py, eval.py,
  checkpoint.py export and eval_only runs only read.
"""

import atexit
import fcntl
import json
import os
import socket
import subprocess
import time

from nanogpt.errors import UserError

LOCK_FILE = '.lock'
# squeue states in which a job's processes may still run and write
LIVE_JOB_STATES = {'RUNNING', 'COMPLETING', 'CONFIGURING', 'SUSPENDED', 'STOPPED', 'SIGNALING', 'STAGE_OUT',
                   'RESIZING', 'REQUEUED'}


class RunLock:
    def __init__(self, fd):
        self.fd = fd

    def release(self):
        """Empty the record and drop the lock (which the process's end would drop anyway)."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def acquire(out_dir, log=print):
    """Lock out_dir for this run, or raise a UserError that names the run holding it."""
    path = os.path.join(out_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot open {path} ({e.strerror}); choose another --out_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocked = True
    except BlockingIOError:  # a live process holds it
        holder = read_record(fd)
        os.close(fd)
        raise UserError(refusal(out_dir, holder)) from None
    except OSError:  # this filesystem cannot flock (ENOLCK, EOPNOTSUPP, ...): the record decides alone
        flocked = False
    holder = read_record(fd)
    state = holder_state(holder, flocked) if holder else 'gone'
    if state == 'alive':
        os.close(fd)
        raise UserError(refusal(out_dir, holder))
    if state == 'unknown':
        log(f"note: {path} names a run that cannot be checked from here ({describe(holder)}); "
            f"going on as if it had ended")
    record = {'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start': process_start(os.getpid()),
              'slurm_job': os.environ.get('SLURM_JOB_ID'), 'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)
    except OSError as e:
        os.close(fd)
        raise UserError(f"cannot write {path} ({e.strerror}); free some space or choose another --out_dir") from None
    lock = RunLock(fd)
    atexit.register(lock.release)  # an error exit empties the record too; only a kill leaves it behind
    return lock


def read_record(fd):
    """The holder's record, or None (empty: released cleanly, or not written yet)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b'null')
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def holder_state(holder, flocked):
    """'alive', 'gone' or 'unknown' for the run a record names, when flock did not refuse us."""
    job = holder.get('slurm_job')
    if job and job == os.environ.get('SLURM_JOB_ID'):
        return 'gone'  # an earlier run of this job (requeued, or an earlier step)
    if holder.get('host') == socket.gethostname():
        if flocked:  # on one machine flock is exact
            return 'gone'
        return 'alive' if process_alive(holder.get('pid'), holder.get('pid_start')) else 'gone'
    if job:
        states = job_states(job)
        if states is not None:
            return 'alive' if LIVE_JOB_STATES & set(states) else 'gone'
    return 'unknown'


def process_alive(pid, start):
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    # the same pid with another start time is a new process that reuses the number
    return start is None or process_start(pid) in (None, start)


def process_start(pid):
    """When the process started (clock ticks since boot, from /proc), or None."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
        return int(stat[stat.rindex(')') + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def job_states(job):
    """The states squeue reports for a SLURM job ([] when SLURM no longer knows it), or None when
    there is no SLURM to ask."""
    try:
        out = subprocess.run(['squeue', '-h', '-j', str(job), '-o', '%T'], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # 'Invalid job id specified': ended long enough ago to be forgotten
        return [] if 'invalid job id' in out.stderr.lower() else None
    return out.stdout.split()


def describe(holder):
    parts = [f"host {holder.get('host', '?')}", f"pid {holder.get('pid', '?')}"]
    if holder.get('slurm_job'):
        parts.append(f"SLURM job {holder['slurm_job']}")
    if holder.get('started'):
        parts.append(f"started {holder['started']}")
    return ', '.join(parts)


def refusal(out_dir, holder):
    if not holder:
        return (f"out_dir {out_dir} is in use by another training run (it has not recorded itself in "
                f"{os.path.join(out_dir, LOCK_FILE)} yet): wait for it to end, or choose another --out_dir")
    stop = f"scancel {holder['slurm_job']}" if holder.get('slurm_job') else f"kill {holder.get('pid')}"
    return (f"out_dir {out_dir} is in use by another training run ({describe(holder)}): wait for it to end, "
            f"stop it ({stop}), or choose another --out_dir")
