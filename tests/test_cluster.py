"""Multi-node training on a real two-host SLURM cluster (.ci/start-cluster.sh: node1 and node2, each a
network and hostname namespace of this machine, joined by a link that can be cut): DDP across both
hosts under sbatch/srun and under torchrun's rendezvous (by hand, and started by srun with two ranks
per host and FSDP), a host lost mid-run (its process killed, its link cut) and the job resubmitted, a
bug on one host's rank, preemption and requeue of a two-node job, the out_dir lock seen from the
other host, and slurm/prepare_ray.sbatch's Ray cluster over both hosts with a worker killed.

One uninterrupted two-node run is the reference for the others; it must equal, bit for bit, the same
two ranks run by torchrun on one host.

Needs the cluster: `bash .ci/start-cluster.sh` (as root). Without it these tests skip, except under
CI (CI=true), where they fail. Its config is CLUSTER_DIR/slurm.conf (/tmp/cluster2), passed to
every SLURM command as SLURM_CONF: /etc/slurm/slurm.conf belongs to the one-node cluster of
tests/test_slurm.py, which may run at the same time."""

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_DATA, TINY_MODEL, _kill_processes_under, char_workdir, run_prepare
from test_data_cluster import BINS, tasks_per_node

from nanogpt import checkpoint
from nanogpt.runlog import read_log

CLUSTER_DIR = Path(os.environ.get('CLUSTER_DIR', '/tmp/cluster2'))
SLURM_CONF = CLUSTER_DIR / 'slurm.conf'
HOSTS = ('node1', 'node2')
ITERS = 150  # long enough (a second or two) that a signal sent once training shows lands mid-run
TRAIN = [*TINY_MODEL, '--dataset=shakespeare_char', f'--max_iters={ITERS}', '--eval_interval=50', '--eval_iters=2',
         '--log_interval=5', '--learning_rate=3e-3', '--warmup_iters=5', f'--lr_decay_iters={ITERS}',
         '--gradient_accumulation_steps=2']
# micro-steps over all ranks: each of the 2 ranks runs 1 micro-step of batch_size 4 x block_size 32
TOKENS_PER_ITER = 2 * 4 * 32
# runs that only end when something stops them
ENDLESS = [*TRAIN, '--max_iters=1000000', '--eval_interval=1000000']
DDP_TIMEOUT = 12
# the GPU script's resources, overridden for this cluster: one CPU task per host, no GPU
TWO_NODES = ['--nodes=2', '--ntasks-per-node=1', '--cpus-per-task=1', '--gpus-per-node=0', '--time=10']
ENDED = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE')
LAUNCH_VARS = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'MASTER_ADDR', 'MASTER_PORT')

pytestmark = pytest.mark.slow


def clean_env(**extra):
    """This environment without launcher variables (the tests may themselves run under SLURM), with the
    two-host cluster's config for every SLURM command, and for those in the jobs (scontrol requeue, squeue)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_') and k not in LAUNCH_VARS}
    return {**env, 'SLURM_CONF': str(SLURM_CONF), 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', **extra}


def slurm(*args, check=True, timeout=60):
    proc = subprocess.run(list(args), env=clean_env(), capture_output=True, text=True, timeout=timeout, check=False)
    assert not check or proc.returncode == 0, f"{' '.join(args)} failed: {proc.stderr}"
    return proc


def cluster_problem():
    """Why the two-host cluster cannot run these tests, or None."""
    if not shutil.which('sbatch'):
        return "SLURM is not installed"
    if not SLURM_CONF.exists():
        return f"no two-host cluster ({SLURM_CONF} is missing)"
    try:
        if 'UP' not in slurm('scontrol', 'ping', check=False, timeout=15).stdout:
            return f"the two-host cluster's controller does not answer (SLURM_CONF={SLURM_CONF} scontrol ping)"
        states = dict(line.split() for line in slurm('sinfo', '-h', '-N', '-o', '%N %T', check=False).stdout.splitlines())
    except subprocess.TimeoutExpired:
        return "the two-host cluster's controller does not answer in time"
    if not all(states.get(h, '').rstrip('*') in ('idle', 'mixed', 'allocated') for h in HOSTS):
        return f"the two-host cluster's nodes are not all up: {states}"
    if os.geteuid() != 0:
        return "cutting a host's link needs root"
    return None


@pytest.fixture(scope='module')
def cluster():
    problem = cluster_problem()
    if problem:
        if os.environ.get('CI', '').lower() not in ('', '0', 'false'):
            pytest.fail(f"{problem}; CI must start it first: bash .ci/start-cluster.sh")
        pytest.skip(f"{problem}; start the two-host cluster with `bash .ci/start-cluster.sh` (as root)")


@pytest.fixture(scope='module')
def jobs(cluster):
    """Submits slurm/train_gpt2.sbatch, the script users submit (or another script), and cancels whatever
    is left when the tests end, passed or failed."""
    submitted = []

    def submit(workdir, *args, options=(), nodes=TWO_NODES, code_dir=REPO, script=REPO / 'slurm' / 'train_gpt2.sbatch'):
        env = clean_env(PYTHON=sys.executable, CODE_DIR=str(code_dir), OUT_DIR='out')
        proc = subprocess.run(['sbatch', '--parsable', *nodes, *options, f'--chdir={workdir}',
                               f'--output={workdir}/slurm-%j.out', str(script), *args],
                              cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        job_id = proc.stdout.strip().split(';')[0]
        submitted.append(job_id)
        return job_id

    yield submit
    for job_id in submitted:
        slurm('scancel', job_id, check=False)


def job_info(job_id):
    """scontrol's fields for a job (accounting is off: a finished job is visible for MinJobAge)."""
    out = slurm('scontrol', 'show', 'job', '-o', job_id, check=False).stdout
    return dict(re.findall(r'(\w+)=(\S*)', out))


def wait_for(job_id, done, what, timeout=120):
    """Poll every 0.2 s (sbatch --wait polls far more slowly) until done(info) holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job_id)
        if done(info):
            return info
        time.sleep(0.2)
    info = job_info(job_id)
    log = Path(info.get('StdOut', '/nonexistent'))
    tail = '\n'.join(log.read_text().splitlines()[-15:]) if log.is_file() else '(no log)'
    hung = info.get('JobState') == 'RUNNING' and tail.rstrip().rpartition('\n')[2].startswith('done:')
    raise AssertionError(f"job {job_id} did not {what} within {timeout} s"
                         f"{' (training ended, but a rank never exited)' if hung else ''}: {info}\n"
                         f"its log ends with:\n{tail}")


def wait_until_ended(job_id, timeout=120):
    return wait_for(job_id, lambda info: info.get('JobState') in ENDED, 'end', timeout)


def log_of(workdir, job_id):
    return workdir / f'slurm-{job_id}.out'


def wait_for_training(job_id, log, ready=r'^iter \d+:', timeout=120):
    """Until the job's log shows training iterations, or what ready matches (a fault must land mid-run)."""
    wait_for(job_id, lambda info: log.exists() and re.search(ready, log.read_text(), re.MULTILINE)
             or info.get('JobState') in ENDED, 'start training', timeout)
    assert job_info(job_id)['JobState'] == 'RUNNING', log.read_text()


def ranks_hosts(log):
    """The hosts train.py's rank 0 names for the ranks, in rank order, and the rendezvous address."""
    m = re.search(r'^hosts by rank: ([\w ]+); rendezvous at (\S+)$', log, re.MULTILINE)
    assert m, log
    return m[1].split(), m[2]


def training_pids(host, workdir, script=REPO / 'train.py'):
    """The train.py processes that run on a host (in its network namespace) for this working directory."""
    pids = subprocess.run(['ip', 'netns', 'pids', f'c2-{host}'], capture_output=True, text=True, check=False).stdout.split()
    found = []
    for pid in pids:
        try:
            cmdline = Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
            # python train.py, not the srun that started it (its command line names train.py too)
            if cmdline[1:2] == [str(script).encode()] and os.readlink(f'/proc/{pid}/cwd') == str(workdir):
                found.append(int(pid))
        except OSError:
            continue  # ended meanwhile
    return found


def running(pid):
    """Whether a process runs (a zombie that its parent has not reaped yet has ended)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return False
    return stat[stat.rindex(')') + 2] != 'Z'


def wait_exit(pid, timeout):
    """Seconds until pid ended; fails after timeout."""
    start = time.time()
    while running(pid):
        assert time.time() - start < timeout, f"process {pid} still runs after {timeout} s"
        time.sleep(0.1)
    return time.time() - start


def start(cmd, cwd):
    """A launcher in a session of its own, so that stop() also ends the ranks it started."""
    return subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(out_dir):
    return {e['iter']: e['loss'] for e in read_log(out_dir / 'log.jsonl') if 'loss' in e}


@pytest.fixture(scope='module')
def reference(jobs, tmp_path_factory):
    """The uninterrupted two-node run (one rank per host, sbatch + srun) and, at the same time, the same
    training by torchrun on this one machine: (workdir of the two-node run, its log, torchrun's out_dir,
    its output)."""
    workdir = char_workdir(tmp_path_factory, 'cluster-ddp')
    cmd = [str(Path(sys.executable).parent / 'torchrun'), '--standalone', '--local_addr=127.0.0.1',
           '--nproc_per_node=2', str(REPO / 'train.py'), *TRAIN, '--out_dir=out-one-host']
    one_host = start(cmd, workdir)
    try:
        job_id = jobs(workdir, *TRAIN)
        info = wait_until_ended(job_id)
        one_host_log = one_host.communicate(timeout=180)[0]
    finally:
        stop(one_host)
    log = log_of(workdir, job_id).read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), log
    assert one_host.returncode == 0, one_host_log
    return workdir, log, job_id, workdir / 'out-one-host', one_host_log


def test_ddp_under_slurm_runs_a_rank_on_each_host_and_trains_as_on_one_host(reference):
    workdir, log, job_id, one_host_out, one_host_log = reference
    hosts, rendezvous = ranks_hosts(log)
    # two ranks on two different hosts: on one host (or with no link between them) this fails
    assert hosts == ['node1', 'node2'], log
    # MASTER_ADDR from SLURM's node list: the first node, by name, on the job's own port
    assert rendezvous == f'node1:{20000 + int(job_id) % 10000}'
    assert 'launched as slurm with 2 rank(s) on cpu' in log and f'done: {ITERS} iterations' in log
    # gradient accumulation divides by the world size, across hosts as on one
    assert f'tokens per iteration will be: {TOKENS_PER_ITER:,}' in log
    assert f'tokens per iteration will be: {TOKENS_PER_ITER:,}' in one_host_log
    assert ranks_hosts(one_host_log)[0] == [os.uname().nodename] * 2
    ddp, one_host = losses(workdir / 'out'), losses(one_host_out)
    assert len(ddp) == ITERS // 5 and ddp == one_host  # every logged loss, bit for bit
    ckpt = checkpoint.load(workdir / 'out' / 'ckpt.pt')
    assert ckpt['iter_num'] == ITERS and len(ckpt['rng']) == 2
    assert same_weights(ckpt['model'], checkpoint.load(one_host_out / 'ckpt.pt')['model'])


def lost_host_run(jobs, workdir, fault, restore=lambda: None, args=ENDLESS, ready=r'^iter \d+:'):
    """Start an endless two-node run, apply fault() to node2 once its log shows `ready`, and measure how
    long rank 0 (on node1) takes to exit. Returns (seconds until rank 0 exited, its log, the job's final info)."""
    job_id = jobs(workdir, *args, f'--ddp_timeout={DDP_TIMEOUT}', options=['--no-requeue'])
    log = log_of(workdir, job_id)
    wait_for_training(job_id, log, ready)
    assert ranks_hosts(log.read_text())[0] == ['node1', 'node2']
    [rank0], [rank1] = training_pids('node1', workdir), training_pids('node2', workdir)
    try:
        fault(rank1)
        exited = wait_exit(rank0, timeout=DDP_TIMEOUT + 60)
    finally:
        restore()
    info = wait_until_ended(job_id, timeout=60)
    return exited, log.read_text(), info


def assert_one_line_about_lost_contact(text):
    """Rank 0's error, one line that names the rank and host it lost; rank 1 may have written its own
    (when its link came back), nothing else."""
    errors = [line for line in text.splitlines() if line.startswith('error:')]
    lost = {'error: rank 0 on node1 lost contact with rank 1 on node2 (',
            'error: rank 1 on node2 lost contact with rank 0 on node1 ('}
    assert errors and all(line[:len(next(iter(lost)))] in lost for line in errors), text
    assert len(errors) == len({line[:13] for line in errors}), text  # one line per rank
    assert 'Traceback' not in text, text
    [rank0] = [line for line in errors if line.startswith('error: rank 0')]
    return rank0


def test_a_killed_rank_on_the_other_host_ends_the_survivor_and_the_job_at_once_and_a_resubmission_resumes(
        jobs, tmp_path_factory):
    workdir = char_workdir(tmp_path_factory, 'cluster-kill')
    exited, text, info = lost_host_run(jobs, workdir, lambda pid: os.kill(pid, signal.SIGKILL),
                                       args=[*ENDLESS, '--eval_interval=50'], ready=r'^saving checkpoint to out/ckpt.pt')
    print(f"rank 0 exited {exited:.1f} s after node2's rank was SIGKILLed")
    # the killed process's sockets close: the survivor learns it at its next collective, not after ddp_timeout
    assert exited < 10
    print(assert_one_line_about_lost_contact(text))
    assert info['JobState'] == 'FAILED', text  # srun --kill-on-bad-exit: the step ends, so does the job

    # the same job submitted again: the out_dir lock lets it in, and it goes on from the last checkpoint
    saved = checkpoint.load(workdir / 'out' / 'ckpt.pt')['iter_num']
    job_id = jobs(workdir, *ENDLESS, '--eval_interval=50', f'--max_iters={saved + 10}')
    info = wait_until_ended(job_id)
    text = log_of(workdir, job_id).read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), text
    assert 'resuming training from out/ckpt.pt' in text and f'done: {saved + 10} iterations' in text, text
    assert re.findall(r'^iter (\d+):', text, re.MULTILINE)[0] == str(saved + 4)  # its first log line (log_interval=5)


def test_a_cut_link_ends_the_survivor_within_ddp_timeout_and_the_job_ends(jobs, tmp_path_factory):
    workdir = char_workdir(tmp_path_factory, 'cluster-cut')
    link = str(REPO / '.ci' / 'link')
    restored = []

    def restore():  # at once when rank 0 has exited, or when the test fails: the link must come back
        subprocess.run([link, 'node2', 'up'], check=True)
        restored.append(time.time())

    exited, text, info = lost_host_run(jobs, workdir, lambda pid: subprocess.run([link, 'node2', 'down'], check=True),
                                       restore)
    print(f"rank 0 exited {exited:.1f} s after node2's link was cut (ddp_timeout={DDP_TIMEOUT})")
    # no reset reaches rank 0: only gloo's timeout (ddp_timeout) tells it, and then it exits by itself
    assert DDP_TIMEOUT - 2 < exited < DDP_TIMEOUT + 15
    print(assert_one_line_about_lost_contact(text))
    assert info['JobState'] in ('FAILED', 'NODE_FAIL'), text
    print(f"the job ended {time.time() - restored[0]:.1f} s after the link came back")
    # SLURM may have marked node2 DOWN meanwhile (SlurmdTimeout): it returns once its slurmd answers
    slurm('scontrol', 'update', 'nodename=node2', 'state=resume', check=False)
    wait_for_nodes_up()


# train.py with a bug on rank 3 (node2's second rank): once the file raise-now exists in the working
# directory, its next training batch divides by zero
BUGGY_TRAIN = """
import os, runpy, sys
sys.path.insert(0, {repo!r})
from nanogpt.batches import RandomBatches

if os.environ['SLURM_PROCID'] == '3':
    next_batch = RandomBatches.next

    def buggy_next(self):
        if os.path.exists('raise-now'):
            return 1 / 0
        return next_batch(self)
    RandomBatches.next = buggy_next
sys.argv[0] = {train!r}
runpy.run_path({train!r}, run_name='__main__')
"""


def test_a_bug_on_one_rank_stops_all_four_on_both_hosts_at_once_with_one_line_naming_rank_host_and_cause(
        jobs, tmp_path_factory):
    workdir = char_workdir(tmp_path_factory, 'cluster-bug')
    (workdir / 'buggy').mkdir()
    (workdir / 'buggy' / 'train.py').write_text(BUGGY_TRAIN.format(repo=str(REPO), train=str(REPO / 'train.py')))
    # two ranks per host, started by srun; ddp_timeout stays at its 600 s
    job_id = jobs(workdir, *ENDLESS, '--gradient_accumulation_steps=4', code_dir=workdir / 'buggy',
                  nodes=['--nodes=2', '--ntasks-per-node=2', '--cpus-per-task=1', '--gpus-per-node=0', '--time=10'])
    log = log_of(workdir, job_id)
    wait_for_training(job_id, log)
    assert ranks_hosts(log.read_text())[0] == ['node1', 'node1', 'node2', 'node2']
    node1_ranks = training_pids('node1', workdir, script=workdir / 'buggy' / 'train.py')
    assert len(node1_ranks) == 2
    (workdir / 'raise-now').touch()
    exited = max(wait_exit(pid, timeout=60) for pid in node1_ranks)
    print(f"node1's ranks exited {exited:.1f} s after the bug was armed on node2's rank 3")
    assert exited < 10
    info = wait_until_ended(job_id, timeout=60)
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith('error:')]
    # every rank, the same line with the cause: not a lost contact, not a wait for ddp_timeout
    assert errors == ["error: rank 3 on node2: failed with ZeroDivisionError: division by zero"] * 4, text
    assert text.count('Traceback') == 1 and 'in buggy_next' in text, text  # the rank with the bug keeps its own
    assert info['JobState'] == 'FAILED', text


def wait_for_nodes_up(timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = dict(line.split() for line in slurm('sinfo', '-h', '-N', '-o', '%N %T').stdout.splitlines())
        if all(states.get(h) in ('idle', 'mixed') for h in HOSTS):
            return
        time.sleep(0.5)
    raise AssertionError(f"the nodes did not come back: {states}")


def test_torchrun_started_by_hand_on_each_host_trains_as_under_slurm(reference):
    """`torchrun --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=node1:PORT` typed on each host: the
    agents meet at node1 over the link and train the reference run's model."""
    workdir = reference[0]
    torchrun = Path(sys.executable).parent / 'torchrun'
    cmd = [str(torchrun), '--nnodes=2', '--nproc-per-node=1', '--rdzv-backend=c10d', '--rdzv-endpoint=node1:29400',
           '--rdzv-id=cluster-test', str(REPO / 'train.py'), *TRAIN, '--out_dir=out-torchrun']
    procs = [start([str(REPO / '.ci' / 'on-host'), host, *cmd], workdir) for host in HOSTS]
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0, 0], logs
    [log] = [log for log in logs if 'launched as torchrun with 2 rank(s)' in log]  # rank 0's agent
    hosts, rendezvous = ranks_hosts(log)
    assert sorted(hosts) == ['node1', 'node2'], log  # which host gets rank 0 is the rendezvous' choice
    assert rendezvous.split(':')[0] == hosts[0]  # torchrun's MASTER_ADDR: rank 0's host
    assert f'tokens per iteration will be: {TOKENS_PER_ITER:,}' in log
    assert losses(workdir / 'out-torchrun') == losses(workdir / 'out')
    assert same_weights(checkpoint.load(workdir / 'out-torchrun' / 'ckpt.pt')['model'],
                        checkpoint.load(workdir / 'out' / 'ckpt.pt')['model'])


# docs/cluster.md's launch of torchrun by srun, one agent per host, with two ranks on each host
SRUN_TORCHRUN = """#!/bin/bash
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
srun --ntasks-per-node=1 {torchrun} --nnodes=$SLURM_NNODES --nproc-per-node=2 --rdzv-backend=c10d \\
    --rdzv-endpoint=$HEAD:29400 --rdzv-id=$SLURM_JOB_ID {train} "$@"
"""


def test_fsdp_under_srun_torchrun_shards_from_both_hosts_then_resumes_exports_and_samples_on_one(
        jobs, tmp_path_factory, run_main):
    workdir = char_workdir(tmp_path_factory, 'cluster-fsdp')
    script = workdir / 'fsdp.sbatch'
    script.write_text(SRUN_TORCHRUN.format(torchrun=Path(sys.executable).parent / 'torchrun', train=REPO / 'train.py'))
    fsdp = [*TRAIN, '--parallelism=fsdp', '--gradient_accumulation_steps=4', '--eval_interval=10', '--out_dir=out']
    job_id = jobs(workdir, *fsdp, '--max_iters=20', script=script)
    info = wait_until_ended(job_id, timeout=180)
    log = log_of(workdir, job_id).read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), log
    assert 'launched as torchrun with 4 rank(s)' in log
    hosts, rendezvous = ranks_hosts(log)
    assert sorted(hosts) == ['node1', 'node1', 'node2', 'node2'], log  # two ranks on each host
    assert rendezvous.split(':')[0] == hosts[0]
    assert f'tokens per iteration will be: {4 * 4 * 32:,}' in log  # 4 ranks x 1 micro-step x batch 4 x block 32
    # the sharded checkpoint: every rank wrote its shards, from both hosts, into the shared out_dir
    assert sorted(p.name for p in (workdir / 'out' / 'ckpt').glob('*.distcp')) == [
        f'__{rank}_0.distcp' for rank in range(4)]
    trained = checkpoint.load(workdir / 'out' / 'ckpt')
    assert trained['iter_num'] == 20 and len(trained['rng']) == 4

    # on one host, in one process: resume the shards, export the weights whole, sample from them
    code, out, err = run_main('train.py', *fsdp, '--max_iters=25', '--init_from=resume', cwd=workdir)
    assert code == 0 and 'resuming training from out/ckpt' in out and 'done: 25 iterations' in out, out + err
    code, out, err = run_main('checkpoint.py', 'export', 'out/ckpt', 'model.pt', cwd=workdir)
    assert code == 0, err
    resumed = checkpoint.load(workdir / 'out' / 'ckpt')
    assert resumed['iter_num'] == 25 and same_weights(checkpoint.load(workdir / 'model.pt')['model'], resumed['model'])
    code, out, err = run_main('sample.py', '--init_from=model.pt', '--device=cpu', '--num_samples=1',
                              '--max_new_tokens=40', '--start=ROMEO:', cwd=workdir)
    assert code == 0 and out.startswith('ROMEO:') and len(out.split('---------------')[0]) > 40, out + err


# data/tinystories_char/prepare.py whose Ray tasks note their host in a file, and whose first task on node2
# SIGKILLs its own worker process: Ray runs that task again (max_retries), on either host
FLAKY_PREPARE = """
import os, runpy, signal, socket, sys
from nanogpt.data import workers

call_each = workers._call_each


def call_each_or_die(*args):
    host = socket.gethostname()
    with open({hosts!r}, 'a') as f:
        f.write(host + '\\n')
    if host == 'node2':
        try:  # the first time only
            os.close(os.open({mark!r}, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return call_each(*args)


workers._call_each = call_each_or_die
sys.argv[0] = {prepare!r}
runpy.run_path({prepare!r}, run_name='__main__')
"""


def test_prepare_ray_sbatch_spreads_over_both_hosts_and_a_killed_worker_on_node2_is_retried(jobs, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('cluster-ray')
    corpus = SHARED_DATA / 'tinystories_train_head2MiB.txt'
    prepare = workdir / 'flaky_prepare.py'
    prepare.write_text(FLAKY_PREPARE.format(hosts=str(workdir / 'task-hosts'), mark=str(workdir / 'node2-worker-killed'),
                                            prepare=str(REPO / 'data' / 'tinystories_char' / 'prepare.py')))
    # small chunks: many tasks, so that both hosts get some whichever worker starts first
    job_id = jobs(workdir, str(prepare), '--input', str(corpus), '--out_dir', str(workdir / 'out'), '--chunk_size', '16K',
                  script=REPO / 'slurm' / 'prepare_ray.sbatch',
                  nodes=['--nodes=2', '--ntasks-per-node=1', '--cpus-per-task=1', '--time=10'])
    try:
        info = wait_until_ended(job_id, timeout=240)
    finally:
        left = _kill_processes_under(f'/tmp/ray_{job_id}')  # the head's temp dir
    log = log_of(workdir, job_id).read_text()
    assert (info['JobState'], info['ExitCode']) == ('COMPLETED', '0:0'), log
    assert re.search(r"head 10\.77\.0\.11:\d+", log) and '2 of 2 node(s) joined' in log, log  # node1's address
    assert 'workers: 2 Ray workers on the cluster' in log, log
    hosts = collections.Counter((workdir / 'task-hosts').read_text().split())
    print(f"tasks per host: {dict(hosts)}; {log[log.index('ray: '):].splitlines()[0]}")
    assert hosts.keys() == {'node1', 'node2'}, hosts  # tasks ran on both hosts
    assert sum(tasks_per_node(log).values()) == hosts.total() - 1  # all but the killed one completed
    assert (workdir / 'node2-worker-killed').exists(), log  # a task on node2 killed its worker ...
    assert not left, f"the job left Ray processes running: {left}"
    local = run_prepare('tinystories_char', '--input', corpus, '--out_dir', workdir / 'local', '--num_workers', '1')
    assert local.returncode == 0, local.stderr
    # ... and its retry wrote the same bytes: the bins equal those of one in-process worker
    assert [(workdir / 'out' / f).read_bytes() for f in BINS] == [(workdir / 'local' / f).read_bytes() for f in BINS]


def test_preempted_two_node_job_stops_everywhere_requeues_and_ends_like_the_uninterrupted_run(jobs, reference,
                                                                                                tmp_path_factory):
    workdir = char_workdir(tmp_path_factory, 'cluster-requeue')
    job_id = jobs(workdir, *TRAIN)  # the script asks for --requeue
    log = log_of(workdir, job_id)
    wait_for_training(job_id, log)
    slurm('scancel', '--signal=USR1', job_id)  # what SLURM sends before the time limit: to every task, both hosts
    wait_for(job_id, lambda info: info.get('Restarts') == '1' and info.get('JobState') == 'PENDING', 'requeue')
    # SLURM holds a requeued job for about two minutes (Reason=BeginTime); release it now, once the nodes
    # have finished with the first run (a node still COMPLETING it can fail the new launch)
    wait_for_nodes_up()
    slurm('scontrol', 'update', f'JobId={job_id}', 'StartTime=now')
    info = wait_until_ended(job_id)
    text = log.read_text()  # both runs, appended (--open-mode=append)
    assert (info['JobState'], info['Restarts']) == ('COMPLETED', '1'), text
    first, second = text.split('(restart 1)')
    assert ranks_hosts(first)[0] == ranks_hosts(second)[0] == ['node1', 'node2']
    stopped = re.search(r'received SIGUSR1: saving a checkpoint at iteration (\d+) and exiting', first)
    assert stopped and int(stopped[1]) < ITERS, first
    assert f'requeued SLURM job {job_id}' in first
    assert 'resuming training from out/ckpt.pt' in second and f'done: {ITERS} iterations' in second, second
    # the ranks stopped at one iteration and resumed there: any other way the weights would differ
    assert same_weights(checkpoint.load(workdir / 'out' / 'ckpt.pt')['model'],
                        checkpoint.load(reference[0] / 'out' / 'ckpt.pt')['model'])


# a user's own batch script that names init_from on its command line, as nanoGPT's users write them
FROM_SCRATCH = """#!/bin/bash
srun --kill-on-bad-exit=1 {python} {train} "$@" --init_from=scratch
"""


def test_a_job_that_slurm_requeues_resumes_from_its_checkpoint_whatever_its_command_line_says(jobs, reference,
                                                                                               tmp_path_factory):
    workdir = char_workdir(tmp_path_factory, 'cluster-restart')
    script = workdir / 'from_scratch.sbatch'
    script.write_text(FROM_SCRATCH.format(python=sys.executable, train=REPO / 'train.py'))
    job_id = jobs(workdir, *TRAIN, '--out_dir=out', script=script, options=['--requeue', '--open-mode=append'])
    log = log_of(workdir, job_id)
    wait_for_training(job_id, log, ready=r'^saving checkpoint to out/ckpt.pt')
    # what SLURM does by itself to a job that lost a node: stop it, queue it again, rerun the same script
    slurm('scontrol', 'requeue', job_id)
    wait_for(job_id, lambda info: info.get('Restarts') == '1' and info.get('JobState') == 'PENDING', 'requeue')
    wait_for_nodes_up()  # (see the preemption test)
    slurm('scontrol', 'update', f'JobId={job_id}', 'StartTime=now')
    info = wait_until_ended(job_id)
    text = log.read_text()
    assert (info['JobState'], info['Restarts']) == ('COMPLETED', '1'), text
    assert ("note: this job was restarted (1 time(s)): it resumes from out/ckpt.pt, not init_from='scratch'"
            in text and f'done: {ITERS} iterations' in text), text
    # it went on from the checkpoint rather than over it: the weights of the uninterrupted run, bit for bit
    assert same_weights(checkpoint.load(workdir / 'out' / 'ckpt.pt')['model'],
                        checkpoint.load(reference[0] / 'out' / 'ckpt.pt')['model'])


def test_out_dir_lock_refuses_a_job_on_the_other_host_and_lets_one_in_once_the_holder_is_killed(jobs,
                                                                                                 tmp_path_factory):
    workdir = char_workdir(tmp_path_factory, 'cluster-lock')
    holder = jobs(workdir, *ENDLESS, nodes=['--nodes=1', '--ntasks-per-node=1', '--cpus-per-task=1', '--gpus-per-node=0',
                                           '--time=10', '--nodelist=node1'])
    wait_for_training(holder, log_of(workdir, holder))

    def train_on_node2(*args):
        return slurm('srun', '--nodes=1', '--ntasks=1', '--nodelist=node2', f'--chdir={workdir}', sys.executable,
                     str(REPO / 'train.py'), *TRAIN, '--out_dir=out', *args, check=False, timeout=120)

    refused = train_on_node2()
    errors = [line for line in refused.stderr.splitlines() if line.startswith('error:')]
    assert refused.returncode == 1 and len(errors) == 1, refused.stdout + refused.stderr
    assert re.fullmatch(rf"error: out_dir out is in use by another training run \(host node1, pid \d+, SLURM job "
                        rf"{holder}, started [^)]*\): wait for it to end, stop it \(scancel {holder}\), or choose "
                        rf"another --out_dir", errors[0]), errors[0]

    # SIGKILLed, the holder leaves its record behind: node2 asks SLURM whether that job still runs
    [pid] = training_pids('node1', workdir)
    os.kill(pid, signal.SIGKILL)
    assert wait_until_ended(holder)['JobState'] == 'FAILED'
    # and it wrote no checkpoint, which a new run from scratch would refuse to overwrite
    assert not (workdir / 'out' / 'ckpt.pt').exists()
    admitted = train_on_node2('--max_iters=10')
    assert admitted.returncode == 0, admitted.stdout + admitted.stderr
    assert 'done: 10 iterations' in admitted.stdout
