"""One training run per out_dir: a second run on a live out_dir is refused with the holder named,
a killed run leaves no lock behind, and where flock cannot be trusted (cluster filesystems) the
recorded holder is checked: its pid on this host, its SLURM job elsewhere."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import REPO, TINY_MODEL, run_script, write_char_dataset

from nanogpt import runlock
from nanogpt.errors import UserError

TRAIN = [*TINY_MODEL, '--dataset=tiny', '--eval_interval=100000', '--eval_iters=2', '--log_interval=1',
         '--gradient_accumulation_steps=1', '--out_dir=out']


@pytest.fixture
def workdir(tmp_path):
    write_char_dataset(tmp_path / 'data' / 'tiny', 'to be or not to be, that is the question. ' * 200)
    return tmp_path


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


@pytest.mark.slow
def test_second_run_on_a_live_out_dir_is_refused_and_a_run_after_a_sigkill_starts(workdir):
    first = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *TRAIN, '--max_iters=1000000'], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not first.stdout.readline().startswith('iter '):  # training is under way
            assert first.poll() is None, "the first run ended before training"
        second = run_script('train.py', *TRAIN, '--max_iters=5', cwd=workdir, check=False)
        assert second.returncode == 1
        assert error_lines(second) == [
            f"error: out_dir out is in use by another training run (host {socket.gethostname()}, pid {first.pid}, "
            f"started {json.loads((workdir / 'out' / '.lock').read_text())['started']}): wait for it to end, "
            f"stop it (kill {first.pid}), or choose another --out_dir"]
        assert first.poll() is None  # the refused run left the first one alone
    finally:
        first.send_signal(signal.SIGKILL)  # the lock's record stays behind, the OS lock does not
        first.wait()
    after = run_script('train.py', *TRAIN, '--max_iters=5', cwd=workdir)
    assert 'done: 5 iterations' in after.stdout
    assert (workdir / 'out' / '.lock').read_text() == ''  # a clean exit empties the record


@pytest.mark.slow
def test_eval_only_takes_no_lock(workdir):
    run_script('train.py', *TRAIN, '--max_iters=2', '--eval_interval=2', cwd=workdir)
    held = runlock.acquire(str(workdir / 'out'))  # as if a training run were going on
    try:
        proc = run_script('train.py', *TRAIN, '--init_from=resume', '--eval_only=True', cwd=workdir)
        assert 'step 2: train loss' in proc.stdout
    finally:
        held.release()


def test_a_refused_run_names_the_holder_even_before_it_wrote_its_record(tmp_path):
    import fcntl
    (tmp_path / runlock.LOCK_FILE).touch()
    fd = os.open(tmp_path / runlock.LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds it but has not written its record yet
    try:
        with pytest.raises(UserError, match="it has not recorded itself"):
            runlock.acquire(str(tmp_path))
    finally:
        os.close(fd)


# -----------------------------------------------------------------------------
# where flock cannot be trusted: the record decides

def without_flock(monkeypatch, code=errno.ENOLCK):
    """A filesystem without flock (NFS mounted nolock, Lustre without -o flock)."""
    def flock(fd, op):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(runlock.fcntl, 'flock', flock)


@pytest.fixture
def no_flock(monkeypatch):
    without_flock(monkeypatch)


@pytest.fixture
def squeue(tmp_path, monkeypatch):
    """A fake squeue on PATH that reports the given job states, or that SLURM no longer knows the job."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    monkeypatch.setenv('PATH', f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv('SLURM_JOB_ID', raising=False)

    def answer(state):
        script = (f'echo {state}' if state else
                  'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')
        (bin_dir / 'squeue').write_text(f'#!/bin/sh\n{script}\n')
        (bin_dir / 'squeue').chmod(0o755)
    return answer


def write_record(directory, **record):
    (directory / runlock.LOCK_FILE).write_text(json.dumps(record) + '\n')


def test_without_flock_a_live_pid_on_this_host_holds_the_lock(tmp_path, no_flock):
    holder = subprocess.Popen(['sleep', '60'])
    try:
        write_record(tmp_path, host=socket.gethostname(), pid=holder.pid, pid_start=runlock.process_start(holder.pid))
        with pytest.raises(UserError, match=rf"in use by another training run \(host .*, pid {holder.pid}\)"):
            runlock.acquire(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    runlock.acquire(str(tmp_path)).release()  # the holder is gone


def test_without_flock_a_reused_pid_does_not_hold_the_lock(tmp_path, no_flock):
    other = subprocess.Popen(['sleep', '60'])  # alive, but not the process that wrote the record
    try:
        write_record(tmp_path, host=socket.gethostname(), pid=other.pid, pid_start=runlock.process_start(other.pid) - 1)
        lock = runlock.acquire(str(tmp_path))
        assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())['pid'] == os.getpid()
        lock.release()
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize('flock_works', [True, False], ids=['flock-local-only', 'no-flock'])
def test_a_running_slurm_job_on_another_host_holds_the_lock(tmp_path, squeue, monkeypatch, flock_works):
    if not flock_works:
        without_flock(monkeypatch, errno.EOPNOTSUPP)
    write_record(tmp_path, host='gpu-node-7', pid=4242, slurm_job='777', started='2030-01-01 00:00:00')
    squeue('RUNNING')
    with pytest.raises(UserError) as refused:
        runlock.acquire(str(tmp_path))
    assert str(refused.value) == (f"out_dir {tmp_path} is in use by another training run (host gpu-node-7, pid 4242, "
                                  f"SLURM job 777, started 2030-01-01 00:00:00): wait for it to end, stop it "
                                  f"(scancel 777), or choose another --out_dir")
    squeue('')  # the job has ended and SLURM has forgotten it
    runlock.acquire(str(tmp_path)).release()


def test_a_requeued_job_takes_over_the_lock_of_its_earlier_run(tmp_path, squeue, monkeypatch, no_flock):
    write_record(tmp_path, host='gpu-node-7', pid=4242, slurm_job='777')
    squeue('RUNNING')  # the job itself runs again: it is this very run
    monkeypatch.setenv('SLURM_JOB_ID', '777')
    lock = runlock.acquire(str(tmp_path))
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())['slurm_job'] == '777'
    lock.release()


def test_a_record_that_cannot_be_checked_is_reported_and_let_through(tmp_path, monkeypatch, no_flock):
    monkeypatch.setenv('PATH', str(tmp_path))  # no squeue
    monkeypatch.delenv('SLURM_JOB_ID', raising=False)
    write_record(tmp_path, host='elsewhere', pid=1, slurm_job='5')
    notes = []
    runlock.acquire(str(tmp_path), log=notes.append).release()
    assert len(notes) == 1 and 'names a run that cannot be checked from here (host elsewhere, pid 1' in notes[0]


def test_release_empties_the_record(tmp_path):
    lock = runlock.acquire(str(tmp_path))
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())['pid'] == os.getpid()
    lock.release()
    lock.release()  # twice is harmless (atexit calls it again)
    assert (tmp_path / runlock.LOCK_FILE).read_text() == ''
