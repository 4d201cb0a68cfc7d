"""DDP as users launch it, on CPUs with gloo: torchrun, and two processes with the variables that
srun sets (no SLURM needed). Plus launch detection and SLURM host lists as unit tests.

Run as a script (`torchrun ... tests/test_distributed.py ARGS`), this file is train.py that also
saves the weights each rank holds at the end, so that a test can compare the ranks."""

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_MODEL, char_workdir

from model import GPT, GPTConfig
from nanogpt import checkpoint, distributed, runlock
from nanogpt.batches import RandomBatches
from nanogpt.distributed import Launch, detect_launch, expand_hostlist
from nanogpt.tokenizer import read_vocab

ITERS = 20
TRAIN = [*TINY_MODEL, '--dataset=shakespeare_char', '--eval_interval=10', '--eval_iters=4', '--log_interval=5',
         '--learning_rate=3e-3', '--warmup_iters=5', f'--lr_decay_iters={ITERS}', '--gradient_accumulation_steps=2']
LAUNCH_VARS = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'MASTER_ADDR', 'MASTER_PORT')

pytestmark = pytest.mark.slow  # every test here starts several processes


def clean_env(**extra):
    """This environment without launcher variables (the tests may themselves run under SLURM)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_') and k not in LAUNCH_VARS}
    return {**env, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', **extra}


def free_port():
    """A free TCP port in 20000-29999, where the port derived from a SLURM job id lies."""
    for port in range(20000 + os.getpid() % 5000, 30000):
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def start_like_srun(args, cwd, world_size=2, extra_env=None):
    """The ranks of `srun -n2 python train.py ARGS` on one node: the variables srun sets in each
    task (measured on a real SLURM), and no torchrun."""
    job_id = free_port() - 20000  # train.py takes MASTER_PORT = 20000 + job id % 10000
    procs = []
    for rank in range(world_size):
        env = clean_env(SLURM_JOB_ID=str(job_id), SLURM_JOB_NODELIST='localhost', SLURM_STEP_NODELIST='localhost',
                        SLURM_NNODES='1', SLURM_NODEID='0', SLURM_NTASKS=str(world_size),
                        SLURM_STEP_NUM_TASKS=str(world_size), SLURM_STEP_ID='0',
                        SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), **(extra_env or {}))
        procs.append(subprocess.Popen([sys.executable, str(REPO / 'train.py'), *args], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def wait_all(procs, timeout=120):
    logs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        logs.append(out)
    return logs


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return char_workdir(tmp_path_factory, 'ddp')


@pytest.fixture(scope='module')
def torchrun_run(workdir):
    """ITERS iterations on 2 ranks under torchrun; each rank also saved the weights it holds."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--local_addr=127.0.0.1',
           '--nproc_per_node=2', __file__, *TRAIN, f'--max_iters={ITERS}', '--out_dir=out-torchrun']
    proc = subprocess.run(cmd, cwd=workdir, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return workdir / 'out-torchrun', proc.stdout


@pytest.fixture(scope='module')
def srun_run(workdir):
    """The same training, started the way srun starts it."""
    logs = wait_all(start_like_srun([*TRAIN, f'--max_iters={ITERS}', '--out_dir=out-srun'], workdir))
    return workdir / 'out-srun', logs


# -----------------------------------------------------------------------------
# end to end

def test_torchrun_ranks_hold_identical_weights(torchrun_run):
    out, log = torchrun_run
    assert 'launched as torchrun with 2 rank(s) on cpu' in log
    assert f'done: {ITERS} iterations' in log
    rank0, rank1 = (torch.load(out / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    # the ranks trained on different batches (seed + rank): only working gradient averaging keeps them equal
    assert same_weights(rank0, rank1)
    ckpt = checkpoint.load(out / 'ckpt.pt')
    assert ckpt['iter_num'] == ITERS and len(ckpt['rng']) == 2
    assert same_weights(ckpt['model'], rank0)
    assert not torch.equal(ckpt['rng'][0]['loader'], ckpt['rng'][1]['loader'])  # per-rank data streams


@pytest.mark.slow
def test_muon_under_torchrun_applies_the_same_update_on_every_rank(workdir):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--local_addr=127.0.0.1',
           '--nproc_per_node=2', __file__, *TRAIN, '--max_iters=10', '--optimizer=muon', '--out_dir=out-muon']
    proc = subprocess.run(cmd, cwd=workdir, env=clean_env(PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rank0, rank1 = (torch.load(workdir / 'out-muon' / f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert same_weights(rank0, rank1)


def test_two_rank_checkpoint_resumes_in_one_process(torchrun_run, tmp_path):
    out, _ = torchrun_run
    workdir = out.parent
    shutil.copytree(out, tmp_path / 'out')
    shutil.copytree(workdir / 'data', tmp_path / 'data')
    proc = subprocess.run([sys.executable, str(REPO / 'train.py'), *TRAIN, f'--max_iters={ITERS + 10}',
                           '--out_dir=out', '--init_from=resume'], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'launched as single with 1 rank(s)' in proc.stdout
    assert 'checkpoint has random states for 2 rank(s), this run has 1' in proc.stdout
    assert re.search(rf'^iter {ITERS + 4}: loss', proc.stdout, re.M)  # continued where it stopped
    assert checkpoint.load(tmp_path / 'out' / 'ckpt.pt')['iter_num'] == ITERS + 10


def test_srun_style_launch_trains_the_same_model_as_torchrun(srun_run, torchrun_run):
    out, logs = srun_run
    assert all('Traceback' not in log for log in logs), logs
    assert 'launched as slurm with 2 rank(s) on cpu' in logs[0]
    assert logs[1].count('\n') < logs[0].count('\n') // 2  # rank 1 does not log the run
    # same seeds, same ranks, same data: the launcher must not change a single bit
    assert same_weights(checkpoint.load(out / 'ckpt.pt')['model'],
                        checkpoint.load(torchrun_run[0] / 'ckpt.pt')['model'])


def test_validation_loss_is_the_mean_over_ranks(srun_run, workdir):
    # Recompute the loss at step 0 (the initial model) on each rank's eval batches.
    _, logs = srun_run
    logged = float(re.search(r'^step 0: train loss [\d.]+, val loss ([\d.]+)', logs[0], re.M)[1])
    data_dir = workdir / 'data' / 'shakespeare_char'
    torch.manual_seed(1337)  # train.py's default seed, as every rank builds the initial model
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, dropout=0.0,
                          vocab_size=read_vocab(data_dir)['vocab_size']))
    model.eval()
    per_rank = []
    for rank in (0, 1):
        batches = RandomBatches(str(data_dir / 'val.bin'), 'uint16', 32, 4, 'cpu',
                                torch.Generator().manual_seed(1337 + 1_000_000 + rank))
        with torch.no_grad():
            per_rank.append(sum(model(*batches.next())[1].item() for _ in range(2)) / 2)  # eval_iters=4 / 2 ranks
    assert abs(per_rank[0] - per_rank[1]) > 1e-3  # else this test could not tell the mean from rank 0 alone
    assert logged == pytest.approx(sum(per_rank) / 2, abs=1e-4)


def test_signal_to_one_rank_stops_all_at_the_same_iteration_with_a_checkpoint(workdir):
    procs = start_like_srun([*TRAIN, '--max_iters=100000', '--eval_interval=100000', '--out_dir=out-signal'],
                            workdir)
    first_line = ''
    while not first_line.startswith('iter '):  # training is under way
        first_line = procs[0].stdout.readline()
        assert first_line or procs[0].poll() is None, "train.py ended before training"
    procs[1].send_signal(signal.SIGUSR1)  # as if only rank 1 had been warned
    logs = wait_all(procs, timeout=60)
    assert [p.returncode for p in procs] == [0, 0], logs
    stopped = re.search(r'received SIGUSR1: saving a checkpoint at iteration (\d+) and exiting', logs[0])
    assert stopped, logs[0]
    ckpt = checkpoint.load(workdir / 'out-signal' / 'ckpt.pt')
    assert ckpt['iter_num'] == int(stopped[1]) and len(ckpt['rng']) == 2
    assert f"done: {stopped[1]} iterations" in logs[0]


def test_a_hung_rank_makes_the_others_exit_with_a_clear_error(workdir):
    procs = start_like_srun([*TRAIN, '--max_iters=100000', '--eval_interval=100000', '--ddp_timeout=4',
                             '--out_dir=out-hung'], workdir)
    while not procs[0].stdout.readline().startswith('iter '):
        assert procs[0].poll() is None, "train.py ended before training"
    procs[1].send_signal(signal.SIGSTOP)  # alive but stuck: without a timeout rank 0 would wait forever
    try:
        start = time.time()
        log = procs[0].communicate(timeout=60)[0]
        assert time.time() - start < 30
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert procs[0].returncode == 1
    errors = [line for line in log.splitlines() if line.startswith('error:')]
    host = socket.gethostname()
    assert len(errors) == 1 and errors[0].startswith(f'error: rank 0 on {host} lost contact with rank 1 on {host} ('), log
    assert 'Traceback' not in log


def test_a_failed_save_on_rank_0_stops_every_rank_at_once_with_its_cause(workdir, tmp_path):
    def small_file_limit():  # no checkpoint can be written whole: as if the disk were full
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    # each rank's stderr in a file of its own; stdout comes through, to see when the save starts
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--local_addr=127.0.0.1',
           '--nproc_per_node=2', f'--log-dir={tmp_path}', '--redirects=2', str(REPO / 'train.py'), *TRAIN,
           '--max_iters=20', '--eval_interval=5', '--out_dir=out-full']
    proc = subprocess.Popen(cmd, cwd=workdir, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, preexec_fn=small_file_limit)
    for line in proc.stdout:
        if line.startswith('saving checkpoint to out-full/ckpt.pt'):
            break
    start = time.time()
    proc.communicate(timeout=120)
    assert time.time() - start < 30 and proc.returncode != 0
    stderr = [p.read_text() for p in sorted(tmp_path.glob('*/attempt_0/*/stderr.log'), key=lambda p: p.parent.name)]
    assert len(stderr) == 2
    for log in stderr:
        assert log.strip().splitlines() == [
            f"error: rank 0 on {socket.gethostname()}: could not write out-full/ckpt.pt (File too large); the previous "
            f"checkpoint is untouched. Free some disk space and resume"], stderr


def test_every_rank_of_a_refused_run_stops_with_the_holder_named(workdir):
    (workdir / 'out-held').mkdir()
    held = runlock.acquire(str(workdir / 'out-held'))  # a training run that is still going on
    try:
        procs = start_like_srun([*TRAIN, '--max_iters=5', '--out_dir=out-held'], workdir)
        start = time.time()
        logs = wait_all(procs, timeout=60)
        assert time.time() - start < 30
    finally:
        held.release()
    assert [p.returncode for p in procs] == [1, 1]
    errors = [[line for line in log.splitlines() if line.startswith('error:')] for log in logs]
    assert errors[0] == errors[1] and len(errors[0]) == 1, logs
    assert re.match(rf"error: rank 0 on {socket.gethostname()}: out_dir out-held is in use by another training run \(host \S+, pid {os.getpid()}, "
                    rf"started [^)]*\): wait for it to end, stop it \(kill {os.getpid()}\)", errors[0][0])


def test_a_wrong_network_interface_is_one_line_that_names_it(workdir):
    procs = start_like_srun([*TRAIN, '--max_iters=5', '--out_dir=out-ifname'], workdir,
                            extra_env={'GLOO_SOCKET_IFNAME': 'nosuch0'})
    logs = wait_all(procs, timeout=60)
    assert [p.returncode for p in procs] == [1, 1], logs
    for rank, log in enumerate(logs):
        [error] = [line for line in log.splitlines() if line.startswith('error:')]
        assert error.startswith(f"error: rank {rank} on {socket.gethostname()} could not join the other ranks at "
                                f"localhost:"), log
        assert 'nosuch0' in error and error.endswith("and that GLOO_SOCKET_IFNAME=nosuch0 names this host's "
                                                     "network interface"), log
        assert 'Traceback' not in log


def test_gradient_accumulation_must_divide_among_the_ranks(workdir):
    # a torchrun environment for rank 0 of 2: the error comes before joining, so no peer is needed
    env = clean_env(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()))
    proc = subprocess.run([sys.executable, str(REPO / 'train.py'), *TRAIN, '--gradient_accumulation_steps=3',
                           '--out_dir=out-bad'], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: gradient_accumulation_steps (3) must be divisible by the number "
                                   "of ranks (2)")


# -----------------------------------------------------------------------------
# launch detection, on the variables each launcher sets (measured on SLURM 22.05 and torchrun)

SRUN_TASK_1 = {  # `srun -n2 python train.py` in a one-node job: task 1
    'SLURM_JOB_ID': '4242', 'SLURM_JOB_NODELIST': 'gpu[07-08]', 'SLURM_STEP_NODELIST': 'gpu[07-08]',
    'SLURM_NNODES': '2', 'SLURM_NODEID': '1', 'SLURM_NTASKS': '16', 'SLURM_STEP_NUM_TASKS': '16',
    'SLURM_STEP_ID': '0', 'SLURM_PROCID': '9', 'SLURM_LOCALID': '1'}
SBATCH_SHELL = {  # the batch script itself: SLURM_PROCID and SLURM_NTASKS, but no step
    'SLURM_JOB_ID': '4242', 'SLURM_JOB_NODELIST': 'gpu[07-08]', 'SLURM_NNODES': '2', 'SLURM_NODEID': '0',
    'SLURM_NTASKS': '16', 'SLURM_NPROCS': '16', 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}
TORCHRUN_WORKER = {'RANK': '5', 'LOCAL_RANK': '1', 'WORLD_SIZE': '8', 'LOCAL_WORLD_SIZE': '4', 'GROUP_RANK': '1',
                   'MASTER_ADDR': 'node3', 'MASTER_PORT': '29400'}


def test_detects_torchrun():
    assert detect_launch(TORCHRUN_WORKER) == Launch(rank=5, local_rank=1, world_size=8, node_rank=1,
                                                    master_addr='node3', master_port=29400, launcher='torchrun')


def test_detects_srun_tasks_and_takes_the_first_node_as_master():
    assert detect_launch(SRUN_TASK_1) == Launch(rank=9, local_rank=1, world_size=16, node_rank=1,
                                                master_addr='gpu07', master_port=24242, launcher='slurm')
    custom = detect_launch({**SRUN_TASK_1, 'MASTER_ADDR': '10.0.0.1', 'MASTER_PORT': '12345'})
    assert (custom.master_addr, custom.master_port) == ('10.0.0.1', 12345)


def test_torchrun_variables_win_under_srun():
    # `srun torchrun ...`: every worker inherits the srun task's SLURM_PROCID
    assert detect_launch({**SRUN_TASK_1, **TORCHRUN_WORKER}).launcher == 'torchrun'
    assert detect_launch({**SRUN_TASK_1, **TORCHRUN_WORKER}).rank == 5


@pytest.mark.parametrize('env', [{}, SBATCH_SHELL, {**SRUN_TASK_1, 'SLURM_NTASKS': '1', 'SLURM_STEP_NUM_TASKS': '1',
                                                    'SLURM_PROCID': '0'}],
                         ids=['plain', 'sbatch-shell', 'srun-one-task'])
def test_runs_as_a_single_process(env):
    launch = detect_launch(env)
    assert launch == Launch() and not launch.ddp and launch.is_master


@pytest.mark.parametrize('nodelist, hosts', [
    ('localhost', ['localhost']),
    ('node[01-04,07]', ['node01', 'node02', 'node03', 'node04', 'node07']),
    ('gpu[8-11],login1', ['gpu8', 'gpu9', 'gpu10', 'gpu11', 'login1']),
    ('a1,b[1-2],c[009-010]', ['a1', 'b1', 'b2', 'c009', 'c010']),
    ('rack[1-2]-n[1,3]', ['rack1-n1', 'rack1-n3', 'rack2-n1', 'rack2-n3']),
    ('gpu-a[01-02],gpu-b[10-11]', ['gpu-a01', 'gpu-a02', 'gpu-b10', 'gpu-b11']),
])
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts
    if shutil.which('scontrol'):  # the reference, where SLURM is installed
        out = subprocess.run(['scontrol', 'show', 'hostnames', nodelist], capture_output=True, text=True)
        assert out.stdout.split() == hosts


def test_stop_signal_reports_what_was_received_and_sigterm_wins():
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        stop = distributed.StopSignal()
        assert stop.check(Launch()) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.check(Launch()) == 'SIGUSR1'  # the process is still alive: the handler only set a flag
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.check(Launch()) == 'SIGTERM'
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_lost_rank_errors_pass_through_without_a_process_group():
    def crash():
        raise RuntimeError("Connection closed by peer")  # not distributed: a bug, keep the traceback
    with pytest.raises(RuntimeError):
        distributed.stop_every_rank_on_failure(crash)()


# -----------------------------------------------------------------------------

if __name__ == '__main__':
    # train.py under this file's name: after training, every rank saves the weights it holds
    import train
    models = []

    class RecordingDDP(train.DDP):
        def __init__(self, module, *args, **kwargs):
            super().__init__(module, *args, **kwargs)
            models.append(module)

    train.DDP = RecordingDDP
    train.main(sys.argv[1:])
    out_dir = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--out_dir=')][-1]
    torch.save(models[0].state_dict(), os.path.join(out_dir, f"rank{os.environ['RANK']}.pt"))
