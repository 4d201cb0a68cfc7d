"""parallelism='fsdp' as users run it, on CPUs with gloo: 2 ranks under torchrun train like DDP,
reduce-scatter gradients only on the last micro-step, hold half the gradients and optimizer state
each, compute in the mixed-precision policy's dtype, compile each block, write sharded checkpoints
that survive SIGKILL at any moment and resume exactly, on 2 ranks or on 1; export turns a sharded
checkpoint into the file that sample.py reads, with the weights the run trained; bad input gets one
line. (2 tasks under a real srun: tests/test_slurm.py.) tests/observed.py records, in the runs, what
their output does not show."""

import random
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import OBSERVED, REPO, TINY_MODEL, _kill_processes_under, char_workdir, observations, run_script
from test_distributed import clean_env
from test_train import OPTION_MIXES, files_in, logged_numbers

from nanogpt import checkpoint, checkpoint_file, sharded
from nanogpt.loading import load_model
from nanogpt.runlog import read_log

ITERS = 30
# dropout on, so that the random states matter; 4 micro-steps over 2 ranks: one without gradient sync
TRAIN = [*TINY_MODEL, '--dropout=0.1', '--dataset=shakespeare_char', '--eval_interval=5', '--eval_iters=4',
         '--log_interval=1', '--learning_rate=3e-3', '--warmup_iters=5', f'--lr_decay_iters={ITERS}',
         '--gradient_accumulation_steps=4', f'--max_iters={ITERS}']
UNITS = 2 + 1  # FSDP units of TINY_MODEL: its 2 blocks, and the root (embeddings, final norm, head)

pytestmark = pytest.mark.slow  # every test here trains under FSDP in subprocesses


def torchrun(*args, cwd, nproc=2, observe=None):
    """train.py under `torchrun --standalone`, started and left running; observe: a directory where
    tests/observed.py records what each rank did (see observations)."""
    script = [str(OBSERVED), 'train.py'] if observe else [str(REPO / 'train.py')]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--local_addr=127.0.0.1',
           f'--nproc_per_node={nproc}', *script, *map(str, args)]
    env = clean_env(**({'OBSERVED_DIR': str(observe)} if observe else {}))
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=300):
    log = proc.communicate(timeout=timeout)[0]
    assert proc.returncode == 0, log
    return log


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    return char_workdir(tmp_path_factory, 'fsdp')


@pytest.fixture(scope='module')
def reference(workdir):
    """The same 2-rank run with DDP and with FSDP, uninterrupted: {parallelism: (out_dir, printed log)};
    what each rank did is in observed_dir(out_dir)."""
    runs = {}
    for parallelism in ('ddp', 'fsdp'):
        out = workdir / f'out-{parallelism}'
        runs[parallelism] = out, finish(torchrun(*TRAIN, '--eval_full_val=True', f'--parallelism={parallelism}',
                                                 f'--out_dir={out}', cwd=workdir, observe=observed_dir(out)))
    return runs


def observed_dir(out):
    return out.parent / f'{out.name}-observed'


def both_ranks(directory):
    """What tests/observed.py recorded in directory for each of the 2 ranks (both must have run under it)."""
    seen = observations(directory)
    assert sorted(seen) == [0, 1], directory
    return seen


def memory_figures(log):
    """{kind: (held, unsharded)} in bytes from train.py's 'memory per rank:' line (held: on the rank that holds
    the most)."""
    line = re.search(r'^memory per rank: (.*)$', log, re.MULTILINE)[1]
    units = {'B': 1, 'KiB': 2**10, 'MiB': 2**20, 'GiB': 2**30}
    sizes = [float(n) * units[u] for n, u in re.findall(r'([\d.]+) (B|KiB|MiB|GiB)', line)]
    return dict(zip(('weights', 'gradients', 'optimizer state'), zip(sizes[:3], sizes[3:6])))


# -----------------------------------------------------------------------------
# 2 ranks under torchrun

@pytest.mark.slow
def test_fsdp_gives_the_losses_of_ddp(reference):
    (ddp, _), (fsdp, fsdp_log) = reference['ddp'], reference['fsdp']
    assert 'launched as torchrun with 2 rank(s) on cpu' in fsdp_log and f'done: {ITERS} iterations' in fsdp_log
    ddp_entries, fsdp_entries = read_log(ddp / 'log.jsonl'), read_log(fsdp / 'log.jsonl')
    numbers = ('loss', 'train_loss', 'val_loss', 'val_loss_full')
    assert [sorted(k for k in e if k in numbers) for e in fsdp_entries] == \
           [sorted(k for k in e if k in numbers) for e in ddp_entries]
    assert sum(1 for e in fsdp_entries if 'loss' in e) == ITERS
    for a, b in zip(ddp_entries, fsdp_entries):
        for k in numbers:
            if k in a:  # the same computation, summed in another order: float32 rounding apart
                assert b[k] == pytest.approx(a[k], rel=1e-5), (a, b)
    # the sharded layout: one file of shards per rank, the rest in state.pt, nothing left over
    assert sorted(p.name for p in (fsdp / 'ckpt').iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp', 'state.pt']
    assert not (fsdp / 'ckpt.pt').exists() and not list(fsdp.glob('.ckpt*'))
    weights = checkpoint.load(fsdp / 'ckpt')['model']
    reference_weights = checkpoint.load(ddp / 'ckpt.pt')['model']
    assert all(torch.allclose(weights[k], reference_weights[k], rtol=0, atol=1e-5) for k in reference_weights)


@pytest.mark.slow
def test_accumulation_micro_steps_skip_the_reduce_scatter(reference):
    """2 micro-steps per rank per iteration: the first keeps its gradients local, the second reduce-scatters
    the sum of both, once per unit. (That the sum is right: the losses equal DDP's, above.)"""
    fsdp, ddp = both_ranks(observed_dir(reference['fsdp'][0])), both_ranks(observed_dir(reference['ddp'][0]))
    assert {rank: o['reduce_scatters'] for rank, o in fsdp.items()} == {0: ITERS * UNITS, 1: ITERS * UNITS}
    assert {rank: o['reduce_scatters'] for rank, o in ddp.items()} == {0: 0, 1: 0}  # DDP all-reduces instead


@pytest.mark.slow
def test_optimizer_state_and_gradients_per_rank_fall_by_the_number_of_ranks(reference):
    ddp, fsdp = memory_figures(reference['ddp'][1]), memory_figures(reference['fsdp'][1])
    assert ddp['optimizer state'][0] == ddp['optimizer state'][1] > 0  # DDP: every rank holds it all
    assert fsdp['optimizer state'][1] == ddp['optimizer state'][1]  # the same total...
    # ...of which each of the 2 ranks holds about half (the larger shard, as rows do not split evenly)
    assert 0.45 < fsdp['optimizer state'][0] / ddp['optimizer state'][0] < 0.55
    assert 0.45 < fsdp['weights'][0] / ddp['weights'][0] < 0.55
    # the gradients that each rank's optimizer stepped with, counted in the run: half under FSDP, as the
    # line says (it counts them as the weights' size, its largest rank's)
    held = {parallelism: max(o['gradient_bytes'][0] for o in both_ranks(observed_dir(out)).values())
            for parallelism, (out, _) in reference.items()}
    assert 0.45 < held['fsdp'] / held['ddp'] < 0.55
    assert fsdp['gradients'][0] == pytest.approx(held['fsdp'], rel=1e-3)
    assert ddp['gradients'][0] == pytest.approx(held['ddp'], rel=1e-3)


@pytest.mark.slow
def test_fsdp_resume_after_sigkill_at_random_moments_is_bitwise_identical(reference, workdir, tmp_path):
    reference_out, _ = reference['fsdp']
    out = tmp_path / 'out'
    rng = random.Random()
    kills, start = [], 0  # (iteration seen before the kill, iteration of the checkpoint left)
    while len(kills) < 2 and start < ITERS - 3:
        resume = ['--init_from=resume'] if start else []
        proc = torchrun(*TRAIN, '--parallelism=fsdp', f'--out_dir={out}', *resume, cwd=workdir)
        target = rng.randint(start + 1, ITERS - 3)
        for line in proc.stdout:
            if line.startswith(f'iter {target}:'):
                break
        time.sleep(rng.uniform(0, 0.3))  # anywhere in the next iterations, saves included
        _kill_processes_under(str(out))  # torchrun and both ranks, as if the node had died
        proc.communicate()
        start = checkpoint.load(out / 'ckpt')['iter_num'] if sharded.find_sharded(str(out / 'ckpt')) else 0
        kills.append((target, start))
    log = finish(torchrun(*TRAIN, '--parallelism=fsdp', f'--out_dir={out}', '--init_from=resume', cwd=workdir))
    assert 'resuming training from' in log, log
    resumed, expected = checkpoint.load(out / 'ckpt'), checkpoint.load(reference_out / 'ckpt')
    assert resumed['iter_num'] == ITERS
    for name, weights in expected['model'].items():
        assert torch.equal(resumed['model'][name], weights), (name, kills)
    assert all(torch.equal(a['loader'], b['loader']) for a, b in zip(resumed['rng'], expected['rng']))
    # log.jsonl holds every iteration once, with the numbers of the uninterrupted run
    expected_entries = [e for e in read_log(reference_out / 'log.jsonl') if 'val_loss_full' not in e]
    assert logged_numbers(read_log(out / 'log.jsonl'))[:len(expected_entries)] == logged_numbers(expected_entries), kills


@pytest.mark.slow
def test_compiled_blocks_compose_with_fsdp(reference, workdir):
    out = workdir / 'out-compiled'
    finish(torchrun(*TRAIN, '--compile=True', '--max_iters=10', '--parallelism=fsdp', f'--out_dir={out}', cwd=workdir,
                    observe=observed_dir(out)))
    # the blocks ran compiled: dynamo captured a graph and AOTAutograd its backward, and while training none of
    # a block's layers ran as Python (the root's final norm does, outside the blocks)
    for rank, seen in both_ranks(observed_dir(out)).items():
        dynamo = seen['dynamo']
        assert dynamo.get('stats', {}).get('unique_graphs', 0) >= 1 and dynamo.get('aot_autograd', {}).get('ok', 0) >= 1, \
            (rank, dynamo)
        assert set(seen['eager_training']) == {'LayerNorm'}, (rank, seen['eager_training'])  # ln_f alone
    compiled = {e['iter']: e['loss'] for e in read_log(out / 'log.jsonl') if 'loss' in e}
    eager = {e['iter']: e['loss'] for e in read_log(reference['fsdp'][0] / 'log.jsonl') if 'loss' in e}
    # the same model and batches; only dropout's masks differ (inductor draws them from a generator of its own)
    assert len(compiled) == 10 and all(compiled[i] == pytest.approx(eager[i], rel=1e-2) for i in compiled)
    # each block was compiled in place: the checkpoint's names are the eager model's
    assert checkpoint.load(out / 'ckpt')['model'].keys() == checkpoint.load(reference['fsdp'][0] / 'ckpt')['model'].keys()


# every architecture option, and the two mixed-precision policies (float16 with its GradScaler)
PRECISIONS = ['--dtype=bfloat16', '--dtype=float16', '--dtype=float32', '--dtype=bfloat16']


@pytest.mark.slow
@pytest.mark.parametrize('options', [o + [p] for o, p in zip(OPTION_MIXES, PRECISIONS)],
                         ids=[' '.join(o + [p]) for o, p in zip(OPTION_MIXES, PRECISIONS)])
def test_architecture_options_and_mixed_precision_train_sharded(workdir, tmp_path, options, run_main):
    out = tmp_path / 'out'
    log = finish(torchrun(*TRAIN, *options, '--max_iters=6', '--eval_interval=3', '--parallelism=fsdp',
                          '--peak_flops=1e12', f'--out_dir={out}', cwd=workdir, observe=tmp_path / 'observed'))
    losses = [float(m) for m in re.findall(r'^iter \d+: loss ([\d.]+)', log, re.MULTILINE)]
    assert len(losses) == 6 and losses[-1] < losses[0], log
    saved = checkpoint.load(out / 'ckpt')
    for option in options:
        key, value = option[2:].split('=')
        assert str(saved['model_args' if key != 'dtype' else 'config'][key]) == value
    # the policy was applied: every layer computed with the gathered weights in dtype, while the
    # gradients were reduced in float32 (and the sharded weights the optimizer steps stay float32)
    dtype = options[-1].split('=')[1]
    for rank, seen in both_ranks(tmp_path / 'observed').items():
        assert set(seen['forward_dtypes']) == {f'torch.{dtype}'}, (rank, seen['forward_dtypes'])
        assert set(seen['reduce_dtypes']) == {'torch.float32'}, (rank, seen['reduce_dtypes'])
    trained = torch.load(tmp_path / 'observed' / 'weights.pt')  # what the ranks held at the last save
    assert all(w.dtype == torch.float32 for w in trained.values())
    # export and sample in this process (run_main): what a user sees of them is tested elsewhere
    code, _, err = run_main('checkpoint.py', 'export', out / 'ckpt', tmp_path / 'model.pt', cwd=workdir)
    assert code == 0, err
    exported = checkpoint.load(tmp_path / 'model.pt')['model']
    assert exported.keys() == trained.keys() == saved['model'].keys()
    assert all(torch.equal(exported[k], trained[k]) and torch.equal(saved['model'][k], trained[k]) for k in trained)
    # sample.py's loading: the export and the sharded directory are the same model
    idx = torch.randint(0, saved['model_args']['vocab_size'], (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [load_model(str(path), '')[0].eval()(idx, idx)[0] for path in (tmp_path / 'model.pt', out / 'ckpt')]
    assert torch.equal(*logits)
    code, sample, err = run_main('sample.py', f'--init_from={tmp_path / "model.pt"}', '--device=cpu', '--num_samples=1',
                                 '--max_new_tokens=10', '--start=ROMEO:', cwd=workdir)
    assert code == 0 and sample.startswith('ROMEO:'), err


SAVER = """
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from nanogpt import sharded
if 'RANK' in os.environ:
    dist.init_process_group('gloo')
model = torch.nn.Linear(512, 1024)  # 2 MiB of weights, twice that of moments
if dist.is_initialized():
    fully_shard(model)
optimizer = torch.optim.AdamW(model.parameters())
model(torch.ones(512)).sum().backward()
optimizer.step()
if not dist.is_initialized() or dist.get_rank() == 0:
    print('ready', flush=True)
i = 0
while True:  # every state is consistent: all weights equal to the 'i' that state.pt holds
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(i))
    sharded.save_sharded({'i': i, 'model_args': {}}, model, optimizer, sys.argv[2])
    i += 1
"""


@pytest.mark.slow
@pytest.mark.parametrize('ranks', [1, 2])
def test_sigkill_during_a_sharded_save_leaves_a_loadable_checkpoint(tmp_path, ranks):
    path = tmp_path / 'ckpt'
    launch = [sys.executable] if ranks == 1 else [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                  '--local_addr=127.0.0.1', f'--nproc_per_node={ranks}']
    script = tmp_path / 'saver.py'
    script.write_text(SAVER)
    seen = []
    for delay in random.Random().sample([0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7], 3):
        proc = subprocess.Popen([*launch, str(script), str(REPO), str(path)], env=clean_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout.readline() == 'ready\n'
        time.sleep(delay)
        _kill_processes_under(str(path))
        proc.communicate()
        seen.append(sorted(p.name for p in tmp_path.iterdir() if 'ckpt' in p.name))
        if sharded.find_sharded(str(path)):
            ckpt = checkpoint.load(path)
            assert all(torch.all(w == ckpt['i']) for w in ckpt['model'].values()), (delay, seen)
    assert sharded.find_sharded(str(path)), seen


def test_a_save_killed_between_its_two_renames_loads_the_newer_checkpoint(tmp_path):
    """The one moment a kill can leave no ckpt/: after ckpt/ became .ckpt.old/, before .ckpt.tmp/ became ckpt/."""
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path / 'ckpt'
    for i in (1, 2):
        with torch.no_grad():
            model.weight.fill_(i)
        sharded.save_sharded({'i': i, 'model_args': {}}, model, optimizer, str(path))
        if i == 1:
            shutil.copytree(path, tmp_path / '.ckpt.old')
    path.rename(tmp_path / '.ckpt.tmp')
    assert sharded.find_sharded(str(path)) == str(tmp_path / '.ckpt.tmp')
    assert checkpoint.load(path)['i'] == 2 and torch.all(checkpoint.load(path)['model']['weight'] == 2)
    # the next save completes the swap first, then replaces ckpt/ as usual
    sharded.save_sharded({'i': 3, 'model_args': {}}, model, optimizer, str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt']
    assert checkpoint.load(path)['i'] == 3
    # a .ckpt.tmp/ that a kill left unfinished (no state.pt) is never loaded
    (tmp_path / '.ckpt.tmp').mkdir()
    (tmp_path / '.ckpt.tmp' / '.metadata').write_bytes(b'')
    path.rename(tmp_path / '.ckpt.old')
    assert checkpoint.load(path)['i'] == 3


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_rank_and_exports_for_sample(reference, tmp_path):
    out, _ = reference['fsdp']
    shutil.copytree(out, tmp_path / 'out')
    shutil.copytree(out.parent / 'data', tmp_path / 'data')
    log = run_script('train.py', *TRAIN, f'--max_iters={ITERS + 5}', '--parallelism=fsdp', '--out_dir=out',
                     '--init_from=resume', cwd=tmp_path).stdout
    assert 'launched as single with 1 rank(s)' in log
    assert 'checkpoint has random states for 2 rank(s), this run has 1' in log
    assert re.search(rf'^iter {ITERS + 4}: loss', log, re.MULTILINE)
    ckpt = checkpoint.load(tmp_path / 'out' / 'ckpt')
    assert ckpt['iter_num'] == ITERS + 5 and len(ckpt['rng']) == 1
    assert sorted(p.name for p in (tmp_path / 'out' / 'ckpt').iterdir()) == ['.metadata', '__0_0.distcp', 'state.pt']
    # export needs neither ranks nor a process group; sample.py reads the file, and the directory too
    exported = tmp_path / 'model.pt'
    run_script('checkpoint.py', 'export', out / 'ckpt', exported, cwd=tmp_path)
    weights = checkpoint.load(exported)
    assert 'optimizer' not in weights and weights['iter_num'] == ITERS
    greedy = ['--device=cpu', '--num_samples=1', '--max_new_tokens=30', '--temperature=0', '--start=ROMEO:']
    from_export = run_script('sample.py', f'--init_from={exported}', *greedy, cwd=tmp_path).stdout
    from_directory = run_script('sample.py', f'--out_dir={out}', *greedy, cwd=tmp_path).stdout
    assert from_export == from_directory and from_export.startswith('ROMEO:') and len(from_export) > 36


# -----------------------------------------------------------------------------
# one rank: sharded checkpoints, snapshots, and bad input

@pytest.fixture(scope='module')
def one_rank(workdir):
    """A one-process fsdp run (nothing to shard; checkpoints still sharded), with snapshots."""
    log = run_script('train.py', *TRAIN, '--max_iters=12', '--parallelism=fsdp', '--out_dir=out-one',
                     '--ckpt_every=4', '--keep_last=2', cwd=workdir).stdout
    return workdir, log


def test_one_rank_fsdp_keeps_sharded_snapshots(one_rank):
    workdir, log = one_rank
    assert "note: parallelism='fsdp' on one rank: nothing to shard" in log
    out = workdir / 'out-one'
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(('ckpt', '.ckpt'))) == \
           ['ckpt', 'ckpt_0000008', 'ckpt_0000012']
    assert checkpoint.load(out / 'ckpt_0000008')['iter_num'] == 8
    sample = run_script('sample.py', '--out_dir=out-one', '--snapshots=True', '--device=cpu', '--num_samples=1',
                        '--max_new_tokens=5', cwd=workdir).stdout
    assert '=== ckpt_0000008: iteration 8 ===' in sample and '=== ckpt_0000012: iteration 12 ===' in sample


def break_checkpoint(out, change):
    ckpt = out / 'ckpt'
    if change == 'truncated shard':
        shard = ckpt / '__0_0.distcp'
        shard.write_bytes(shard.read_bytes()[:1000])
    elif change == 'no state.pt':
        (ckpt / 'state.pt').unlink()
    elif change == 'no .metadata':
        (ckpt / '.metadata').unlink()
    elif change == 'ddp checkpoint':  # only a single-file checkpoint, as a DDP run writes
        checkpoint_file.save(checkpoint.inference_state(checkpoint.load(ckpt)), out / 'ckpt.pt')
        shutil.rmtree(ckpt)


BAD_INPUTS = [
    (['--parallelism=zero'], None, r"parallelism must be 'ddp' or 'fsdp', got 'zero'"),
    (['--parallelism=fsdp', '--optimizer=muon'], None,
     r"optimizer='muon' orthogonalizes whole weight matrices, which parallelism='fsdp' splits among the ranks"),
    (['--init_from=resume'], None, r"out/ckpt is the sharded checkpoint of a parallelism='fsdp' run: resume it "
                                   r"with --parallelism=fsdp"),
    (['--init_from=resume', '--parallelism=fsdp'], 'ddp checkpoint',
     r"out/ckpt.pt is the checkpoint of a parallelism='ddp' run: resume it with --parallelism=ddp"),
    (['--init_from=resume', '--parallelism=fsdp'], 'truncated shard', r"checkpoint out/ckpt is corrupt or truncated"),
    (['--init_from=resume', '--parallelism=fsdp'], 'no state.pt', r"out/ckpt is an incomplete sharded checkpoint"),
    (['--init_from=resume', '--parallelism=fsdp'], 'no .metadata', r"out/ckpt is an incomplete sharded checkpoint"),
]


@pytest.mark.parametrize('args, change, message', BAD_INPUTS, ids=[c or ' '.join(a) for a, c, _ in BAD_INPUTS])
def test_bad_input_gets_a_one_line_error_and_changes_nothing(one_rank, tmp_path, args, change, message):
    workdir = tmp_path / 'work'
    shutil.copytree(one_rank[0] / 'data', workdir / 'data')
    shutil.copytree(one_rank[0] / 'out-one', workdir / 'out', ignore=shutil.ignore_patterns('ckpt_*'))
    break_checkpoint(workdir / 'out', change)
    before = files_in(workdir)
    proc = run_script('train.py', *TRAIN, '--out_dir=out', *args, cwd=workdir, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert files_in(workdir) == before


def test_export_of_a_broken_sharded_checkpoint_says_so_in_one_line(one_rank, tmp_path):
    shutil.copytree(one_rank[0] / 'out-one' / 'ckpt', tmp_path / 'ckpt')
    break_checkpoint(tmp_path, 'truncated shard')
    proc = run_script('checkpoint.py', 'export', tmp_path / 'ckpt', tmp_path / 'model.pt', cwd=tmp_path, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and 'is corrupt or truncated' in lines[0], proc.stderr
    assert not (tmp_path / 'model.pt').exists()
