"""slurm/train_gpt2.sbatch on a real one-node SLURM cluster, with 2 CPU tasks instead of GPUs:
a full run, a SIGUSR1 that checkpoints and ends the job, and a SIGUSR1 that requeues it so that
it resumes by itself. Resumed runs must end with the same weights as the uninterrupted one.
slurm/train_gpt2_xl.sbatch (FSDP) too, shrunk to the tiny model: it must log DDP's losses, and
its requeued run end with the weights of its uninterrupted run, bit for bit.

Needs a running cluster: `bash .ci/start-slurm.sh` (as root) starts one on this machine. Without
one these tests skip, except under CI (CI=true), where they fail."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_MODEL, run_script, shared_file, write_char_dataset

from nanogpt import checkpoint, runlock
from nanogpt.runlog import read_log

ITERS = 150
TRAIN = [*TINY_MODEL, '--dataset=shakespeare_char', f'--max_iters={ITERS}', '--eval_interval=50', '--eval_iters=4',
         '--log_interval=5', '--learning_rate=3e-3', '--warmup_iters=5', f'--lr_decay_iters={ITERS}',
         '--gradient_accumulation_steps=2']
# the GPU script's resources, overridden for this machine: 2 tasks on 1 node, 1 core each, no GPU
ON_CPUS = ['--nodes=1', '--ntasks-per-node=2', '--cpus-per-task=1', '--gpus-per-node=0', '--time=10']
ENDED = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE')

pytestmark = pytest.mark.slow  # every test here submits SLURM jobs


def slurm_problem():
    """Why the cluster cannot run these tests, or None."""
    if not shutil.which('sbatch'):
        return "SLURM is not installed"
    try:
        ping = subprocess.run(['scontrol', 'ping'], capture_output=True, text=True, timeout=10).stdout
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if 'UP' not in ping:
        return "no SLURM controller answers `scontrol ping`"
    cpus = subprocess.run(['sinfo', '-h', '-o', '%c'], capture_output=True, text=True).stdout.split()
    if not any(c.rstrip('+').isdigit() and int(c.rstrip('+')) >= 2 for c in cpus):
        return "no SLURM node has 2 CPUs"
    return None


@pytest.fixture(scope='module')
def slurm():
    problem = slurm_problem()
    if problem:
        if os.environ.get('CI', '').lower() not in ('', '0', 'false'):
            pytest.fail(f"{problem}; CI must start the cluster first: bash .ci/start-slurm.sh")
        pytest.skip(f"{problem}; start a one-node cluster with `bash .ci/start-slurm.sh` (as root)")


@pytest.fixture(scope='module')
def jobs(slurm):
    """Submits jobs and cancels any that are left when the tests end, passed or failed."""
    submitted = []

    def submit(workdir, *args, options=(), script='train_gpt2.sbatch'):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('SLURM_') and k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                                           'MASTER_PORT')}
        env.update(PYTHON=sys.executable, CODE_DIR=str(REPO), OUT_DIR='out', PYTHONUNBUFFERED='1')
        proc = subprocess.run(['sbatch', '--parsable', *ON_CPUS, *options, f'--chdir={workdir}',
                               f'--output={workdir}/slurm-%j.out', str(REPO / 'slurm' / script),
                               *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        job_id = proc.stdout.strip().split(';')[0]
        submitted.append(job_id)
        return job_id

    yield submit
    for job_id in submitted:
        subprocess.run(['scancel', job_id], capture_output=True)


def job_info(job_id):
    """scontrol's fields for a job (accounting is off: a finished job is visible for MinJobAge)."""
    out = subprocess.run(['scontrol', 'show', 'job', '-o', job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r'(\w+)=(\S*)', out))


def wait_for(job_id, done, what, timeout=120):
    """Poll every 0.5 s (sbatch --wait polls far more slowly) until done(info) holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job_id)
        if done(info):
            return info
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not {what} within {timeout} s: {job_info(job_id)}")


def wait_until_ended(job_id, timeout=120):
    return wait_for(job_id, lambda info: info.get('JobState') in ENDED, 'end', timeout)


def wait_for_training(job_id, log, timeout=120):
    """Until the job's log shows training iterations (the signal must land mid-run)."""
    wait_for(job_id, lambda info: log.exists() and re.search(r'^iter \d+:', log.read_text(), re.MULTILINE)
             or info.get('JobState') in ENDED, 'start training', timeout)
    assert job_info(job_id)['JobState'] == 'RUNNING', log.read_text()


def log_of(workdir, job_id):
    return workdir / f'slurm-{job_id}.out'


def new_workdir(tmp_path_factory, name):
    workdir = tmp_path_factory.mktemp(name)
    write_char_dataset(workdir / 'data' / 'shakespeare_char', shared_file('tinyshakespeare.txt').read_text())
    return workdir


@pytest.fixture(scope='module')
def full_run(jobs, tmp_path_factory):
    """The sbatch script run to the end with 2 ranks: the reference for the resumed runs."""
    workdir = new_workdir(tmp_path_factory, 'slurm-full')
    job_id = jobs(workdir, *TRAIN)
    info = wait_until_ended(job_id)
    log = log_of(workdir, job_id).read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), log
    return workdir, log


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sbatch_script_trains_with_two_ranks(full_run):
    workdir, log = full_run
    assert 'restart 0' in log and 'from scratch' in log
    assert 'launched as slurm with 2 rank(s) on cpu' in log
    assert f'done: {ITERS} iterations' in log
    ckpt = checkpoint.load(workdir / 'out' / 'ckpt.pt')
    assert ckpt['iter_num'] == ITERS and len(ckpt['rng']) == 2


def test_launch_detection_in_a_real_job(jobs, slurm, tmp_path):
    """The variables that the batch shell, srun tasks and a one-task srun really get."""
    show = f"{sys.executable} -c 'from nanogpt import distributed; print(distributed.detect_launch())'"
    script = f"echo batch: $({show}); srun --label {show}; echo one: $(srun -n1 {show})"
    proc = subprocess.run(['sbatch', '--parsable', '--ntasks=2', '--cpus-per-task=1', f'--chdir={tmp_path}',
                           f'--output={tmp_path}/detect.out', '--wrap', script], capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(';')[0]
    info = wait_until_ended(job_id)
    out = (tmp_path / 'detect.out').read_text()
    assert info['JobState'] == 'COMPLETED', out
    port = 20000 + int(job_id) % 10000
    first_node = subprocess.run(['scontrol', 'show', 'hostnames', info['NodeList']], capture_output=True,
                                text=True).stdout.split()[0]
    single = "Launch(rank=0, local_rank=0, world_size=1, node_rank=0, master_addr='127.0.0.1', master_port=29500, launcher='single')"
    assert f"batch: {single}" in out  # SLURM_NTASKS=2 there, but it is not a task of a step
    assert f"one: {single}" in out
    for rank in (0, 1):
        assert (f"{rank}: Launch(rank={rank}, local_rank={rank}, world_size=2, node_rank=0, "
                f"master_addr='{first_node}', master_port={port}, launcher='slurm')") in out


def test_usr1_checkpoints_ends_the_job_and_a_resubmission_resumes_exactly(jobs, full_run, tmp_path_factory):
    workdir = new_workdir(tmp_path_factory, 'slurm-usr1')
    job_id = jobs(workdir, *TRAIN, options=['--no-requeue'])
    log = log_of(workdir, job_id)
    wait_for_training(job_id, log)
    subprocess.run(['scancel', '--signal=USR1', job_id], check=True)  # to every task of the job's steps
    info = wait_until_ended(job_id)
    text = log.read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), text
    stopped = re.search(r'received SIGUSR1: saving a checkpoint at iteration (\d+) and exiting', text)
    assert stopped and int(stopped[1]) < ITERS, text
    assert checkpoint.load(workdir / 'out' / 'ckpt.pt')['iter_num'] == int(stopped[1])
    assert 'was not requeued' in text  # submitted with --no-requeue

    job_id = jobs(workdir, *TRAIN)  # the same submission again
    info = wait_until_ended(job_id)
    text = log_of(workdir, job_id).read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), text
    assert '--init_from=resume' in text and 'resuming training from out/ckpt.pt' in text
    assert f'done: {ITERS} iterations' in text
    assert same_weights(checkpoint.load(workdir / 'out' / 'ckpt.pt')['model'],
                        checkpoint.load(full_run[0] / 'out' / 'ckpt.pt')['model'])


def preempt_and_requeue(job_id, log):
    """Send the job SIGUSR1 once it trains, wait for it to requeue itself and for the requeued
    run to end; return the job's final state."""
    wait_for_training(job_id, log)
    subprocess.run(['scancel', '--signal=USR1', job_id], check=True)
    wait_for(job_id, lambda info: info.get('Restarts') == '1' and info.get('JobState') == 'PENDING', 'requeue')
    # SLURM holds a requeued job for about two minutes (Reason=BeginTime); release it now, once the node
    # has finished with the first run (a node still COMPLETING it can fail the new launch)
    wait_for_node_done()
    subprocess.run(['scontrol', 'update', f'JobId={job_id}', 'StartTime=now'], check=True)
    return wait_until_ended(job_id)


def wait_for_node_done(timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = subprocess.run(['sinfo', '-h', '-o', '%T'], capture_output=True, text=True, check=False).stdout.split()
        if states and not any(state.startswith('completing') for state in states):
            return
        time.sleep(0.2)
    raise AssertionError(f"the node is still completing the first run after {timeout} s: {states}")


def test_usr1_requeues_the_job_which_resumes_by_itself(jobs, full_run, tmp_path_factory):
    workdir = new_workdir(tmp_path_factory, 'slurm-requeue')
    job_id = jobs(workdir, *TRAIN)  # the script asks for --requeue
    log = log_of(workdir, job_id)
    info = preempt_and_requeue(job_id, log)
    text = log.read_text()  # both runs, appended (--open-mode=append)
    # not ExitCode: after a requeue SLURM may keep the first run's (143, its batch shell got the
    # requeue's SIGTERM) although the final run completed; seen once on a loaded machine
    assert (info['JobState'], info['Restarts']) == ('COMPLETED', '1'), text
    assert f'requeued SLURM job {job_id}' in text
    first, second = text.split('(restart 1)')
    assert 'received SIGUSR1' in first and 'from scratch' in first
    assert 'resuming training from out/ckpt.pt' in second and f'done: {ITERS} iterations' in second
    assert same_weights(checkpoint.load(workdir / 'out' / 'ckpt.pt')['model'],
                        checkpoint.load(full_run[0] / 'out' / 'ckpt.pt')['model'])


def test_out_dir_lock_asks_slurm_whether_the_holding_job_still_runs(slurm, tmp_path):
    """A lock record from another node, on a filesystem that does not share flock between nodes:
    the out_dir is held as long as squeue reports the holder's job running, and free after."""
    proc = subprocess.run(['sbatch', '--parsable', '--ntasks=1', '--cpus-per-task=1', f'--chdir={tmp_path}',
                           '--output=/dev/null', '--wrap', 'sleep 300'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(';')[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    try:
        wait_for(job_id, lambda info: info.get('JobState') == 'RUNNING', 'start')
        (tmp_path / 'out').mkdir()
        (tmp_path / 'out' / '.lock').write_text(json.dumps({'host': 'gpu-node-9', 'pid': 4242, 'slurm_job': job_id}))
        refused = run_script('train.py', *TRAIN, '--out_dir=out', cwd=tmp_path, env=env, check=False)  # no data needed
        assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
            f"error: out_dir out is in use by another training run (host gpu-node-9, pid 4242, SLURM job {job_id}): "
            f"wait for it to end, stop it (scancel {job_id}), or choose another --out_dir"], refused.stderr
    finally:
        subprocess.run(['scancel', job_id], capture_output=True)
    wait_until_ended(job_id)
    runlock.acquire(str(tmp_path / 'out')).release()  # the job has ended: the record no longer holds the directory


# the XL script passes config/train_gpt2_xl.py, then these: GPT-2 XL's config, with the DDP run's model and schedule
FSDP_SHRINK = [*TRAIN, '--wandb_log=False', '--min_lr=6e-5']


def fsdp_workdir(tmp_path_factory, name):
    workdir = new_workdir(tmp_path_factory, name)
    (workdir / 'config').symlink_to(REPO / 'config')
    return workdir


@pytest.fixture(scope='module')
def fsdp_full_run(jobs, tmp_path_factory):
    """slurm/train_gpt2_xl.sbatch, shrunk, run to the end with 2 ranks: the reference for the requeued one."""
    workdir = fsdp_workdir(tmp_path_factory, 'slurm-fsdp-full')
    job_id = jobs(workdir, *FSDP_SHRINK, script='train_gpt2_xl.sbatch')
    info = wait_until_ended(job_id, timeout=300)
    log = log_of(workdir, job_id).read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), log
    assert 'received SIGUSR1' not in log and f'done: {ITERS} iterations' in log
    return workdir


@pytest.mark.slow
def test_fsdp_script_trains_like_ddp_and_resumes_from_its_shards_after_a_requeue(jobs, full_run, fsdp_full_run,
                                                                                 tmp_path_factory):
    workdir = fsdp_workdir(tmp_path_factory, 'slurm-fsdp')
    job_id = jobs(workdir, *FSDP_SHRINK, script='train_gpt2_xl.sbatch')
    log = log_of(workdir, job_id)
    info = preempt_and_requeue(job_id, log)
    text = log.read_text()
    assert (info['JobState'], info['Restarts']) == ('COMPLETED', '1'), text
    first, second = text.split('(restart 1)')
    assert "'parallelism': 'fsdp'" in first.replace('"', "'") and 'launched as slurm with 2 rank(s) on cpu' in first
    stopped = re.search(r'received SIGUSR1: saving a checkpoint at iteration (\d+) and exiting', first)
    assert stopped and 'saving checkpoint to out/ckpt' in first, first
    assert 'resuming training from out/ckpt\n' in second and f'done: {ITERS} iterations' in second, second
    assert sorted(p.name for p in (workdir / 'out' / 'ckpt').iterdir()) == \
           ['.metadata', '__0_0.distcp', '__1_0.distcp', 'state.pt']
    # every iteration logged once, with the losses of the DDP run: equal to float32 rounding for a few
    # dozen iterations, after which AdamW amplifies the rounding (the same run under torchrun logs the
    # same numbers bit for bit). The first line after the resume averages only the iterations since
    # the resume, under DDP too.
    fsdp = {e['iter']: e['loss'] for e in read_log(workdir / 'out' / 'log.jsonl') if 'loss' in e}
    ddp = {e['iter']: e['loss'] for e in read_log(full_run[0] / 'out' / 'log.jsonl') if 'loss' in e}
    assert fsdp.keys() == ddp.keys() and len(ddp) == ITERS // 5
    whole = [i for i in ddp if not i - 5 < int(stopped[1]) <= i]
    assert len(whole) == len(ddp) - 1
    assert all(fsdp[i] == pytest.approx(ddp[i], rel=1e-4) for i in whole if i < 30), (fsdp, ddp)
    assert all(fsdp[i] == pytest.approx(ddp[i], rel=1e-2) for i in whole), (fsdp, ddp)
    # the resumed run is the uninterrupted one: the same weights, bit for bit, and the same losses
    resumed, uninterrupted = checkpoint.load(workdir / 'out' / 'ckpt'), checkpoint.load(fsdp_full_run / 'out' / 'ckpt')
    assert resumed['iter_num'] == uninterrupted['iter_num'] == ITERS
    assert same_weights(resumed['model'], uninterrupted['model'])
    reference = {e['iter']: e['loss'] for e in read_log(fsdp_full_run / 'out' / 'log.jsonl') if 'loss' in e}
    assert {i: fsdp[i] for i in whole} == {i: reference[i] for i in whole}
