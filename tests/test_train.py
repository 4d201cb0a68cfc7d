"""train.py and sample.py as a user runs them: end to end on the real tiny shakespeare, exact
resume after SIGKILL, atomic checkpoints, snapshots, and one-line errors on bad input."""

import argparse
import hashlib
import json
import math
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODEL, run_script

from nanogpt import checkpoint, checkpoint_file
from nanogpt.batches import RandomBatches
from nanogpt.runlog import read_log

TRAIN = [*TINY_MODEL, '--dataset=shakespeare_char', '--eval_interval=10', '--eval_iters=4',
         '--log_interval=1', '--learning_rate=3e-3', '--warmup_iters=5', '--lr_decay_iters=40',
         '--gradient_accumulation_steps=2']


def losses_in(log):
    """{(kind, iteration): numbers} for the train-loss and eval lines of a train.py log."""
    found = {}
    for m in re.finditer(r'^iter (\d+): loss ([\d.]+)', log, re.M):
        found[('iter', int(m[1]))] = m[2]
    for m in re.finditer(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', log, re.M):
        found[('step', int(m[1]))] = (m[2], m[3])
    return found


def files_in(directory):
    return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def trained(shakespeare_workdir):
    """A tiny model trained for 20 iterations: out/ckpt.pt in the shakespeare working directory."""
    run_script('train.py', *TRAIN, '--max_iters=20', '--out_dir=out', cwd=shakespeare_workdir)
    return shakespeare_workdir


@pytest.fixture
def workdir(trained, tmp_path):
    """A private copy of the trained working directory, for tests that change files."""
    return shutil.copytree(trained, tmp_path / 'work')


@pytest.mark.slow
def test_prepare_train_resume_sample_end_to_end(workdir):
    out = workdir / 'out'
    first = checkpoint.load(out / 'ckpt.pt')
    assert first['iter_num'] == 20 and first['vocab']['vocab_size'] == 65
    assert first['best_val_loss'] < math.log(65) - 0.5  # it learned something in 20 iterations
    resumed = run_script('train.py', *TRAIN, '--max_iters=30', '--out_dir=out', '--init_from=resume', cwd=workdir)
    assert 'resuming training from out/ckpt.pt' in resumed.stdout
    assert checkpoint.load(out / 'ckpt.pt')['iter_num'] == 30
    assert min(losses_in(resumed.stdout)) == ('iter', 20)  # continued, did not start over
    sample = run_script('sample.py', '--out_dir=out', '--device=cpu', '--num_samples=2',
                        '--max_new_tokens=50', '--start=ROMEO:', cwd=workdir)
    samples = sample.stdout.split('---------------\n')
    assert len(samples) == 3 and all(s.startswith('ROMEO:') and len(s) >= 56 for s in samples[:2])
    assert 'tokens/s' in sample.stderr


@pytest.mark.slow
def test_nanogpts_readme_commands_for_shakespeare_char_run_unchanged(workdir):
    # nanoGPT's CPU command line, verbatim, then shortened by overrides appended at the end
    nanogpt_cpu = ("config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
                   "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 "
                   "--lr_decay_iters=2000 --dropout=0.0").split()
    (workdir / 'config').symlink_to(REPO / 'config')
    log = run_script('train.py', *nanogpt_cpu, '--max_iters=6', '--eval_interval=3', cwd=workdir).stdout
    assert set(losses_in(log)) >= {('step', 0), ('step', 3), ('step', 6), ('iter', 5)}
    sample = run_script('sample.py', '--out_dir=out-shakespeare-char', '--device=cpu',
                        '--num_samples=1', '--max_new_tokens=20', cwd=workdir)
    assert sample.stdout.endswith('---------------\n')


def test_loader_targets_are_inputs_shifted_by_one_and_in_bounds(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)  # token value == position makes shifts visible
    tokens.tofile(tmp_path / 'train.bin')
    batches = RandomBatches(str(tmp_path / 'train.bin'), 'uint16', block_size=50, batch_size=64,
                            device='cpu', generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        x, y = batches.next()
        assert x.shape == y.shape == (64, 50) and x.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)
        assert x.min() >= 0 and y.max() <= 999


def test_loader_reads_uint32_tokens(tmp_path):
    tokens = np.arange(70000, 71000, dtype=np.uint32)
    tokens.tofile(tmp_path / 'train.bin')
    batches = RandomBatches(str(tmp_path / 'train.bin'), 'uint32', 8, 2, 'cpu', torch.Generator())
    x, y = batches.next()
    assert x.min() >= 70000 and torch.equal(y, x + 1)


EXACT = [*TRAIN, '--max_iters=40', '--dropout=0.1', '--always_save_checkpoint=True']


@pytest.fixture(scope='module')
def uninterrupted(shakespeare_workdir, tmp_path_factory):
    """The reference for exact resume: a 40-iteration run, its checkpoint, its printed log and its log.jsonl."""
    out = tmp_path_factory.mktemp('uninterrupted')
    log = run_script('train.py', *EXACT, f'--out_dir={out}', cwd=shakespeare_workdir).stdout
    return checkpoint.load(out / 'ckpt.pt'), log, read_log(out / 'log.jsonl')


def logged_numbers(entries):
    """log.jsonl entries without what differs between two runs of the same computation: timings."""
    return [{k: v for k, v in e.items() if k not in ('wall_s', 'ms_per_iter', 'tokens_per_s', 'mfu')} for e in entries]


@pytest.mark.slow
@pytest.mark.parametrize('kill_after', [12, 26, 33])
def test_resume_after_sigkill_is_bitwise_identical(trained, uninterrupted, tmp_path, kill_after):
    args = EXACT

    out = tmp_path / 'out'
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *args, f'--out_dir={out}'],
                            cwd=trained, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith(f'iter {kill_after}:'):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.load(out / 'ckpt.pt')['iter_num']
    assert 10 <= killed_at < 40

    resumed_log = run_script('train.py', *args, f'--out_dir={out}', '--init_from=resume', cwd=trained).stdout
    (reference, reference_log, reference_entries), resumed = uninterrupted, checkpoint.load(out / 'ckpt.pt')
    assert resumed['iter_num'] == reference['iter_num'] == 40
    for name, weights in reference['model'].items():
        assert torch.equal(resumed['model'][name], weights), name
    expected = {k: v for k, v in losses_in(reference_log).items() if k[1] >= killed_at}
    assert losses_in(resumed_log) == expected
    # log.jsonl continues where the checkpoint left off: every iteration once, with the same numbers
    entries = read_log(out / 'log.jsonl')
    assert logged_numbers(entries) == logged_numbers(reference_entries)
    wall = [e['wall_s'] for e in entries]
    assert wall == sorted(wall)  # the resumed run's clock continues from the last line kept


SAVER = """
import sys, torch
from nanogpt import checkpoint_file
states = [{'model': {'w': torch.full((1 << 20,), float(i))}, 'i': i} for i in range(2)]
print('ready', flush=True)
i = 0
while True:
    checkpoint_file.save(states[i % 2], sys.argv[2])
    i += 1
"""


@pytest.mark.slow
def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / 'ckpt.pt'
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55):
        proc = subprocess.Popen([sys.executable, '-c', SAVER, str(REPO), str(path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():
            state = checkpoint.load(path)
            assert torch.equal(state['model']['w'], torch.full((1 << 20,), float(state['i'])))
    assert path.exists()
    # the temporary file of a killed save is cleaned up by the next save
    checkpoint_file.save({'model': {}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pt']


@pytest.mark.slow
def test_full_disk_during_save_keeps_the_previous_checkpoint(workdir):
    ckpt_path = workdir / 'out' / 'ckpt.pt'
    before = files_in(workdir)

    def small_file_limit():  # the checkpoint cannot be written whole: as if the disk were full
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (ckpt_path.stat().st_size // 2,) * 2)

    proc = subprocess.run([sys.executable, str(REPO / 'train.py'), *TRAIN, '--max_iters=30', '--out_dir=out',
                           '--init_from=resume'], cwd=workdir, capture_output=True, text=True,
                          preexec_fn=small_file_limit)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: could not write out/ckpt.pt (File too large); the previous checkpoint is untouched. "
        "Free some disk space and resume"]
    # everything but the run's own record of what happened (log.jsonl, config.json) is as it was
    record = {Path('out/log.jsonl'), Path('out/config.json')}
    assert {k: v for k, v in files_in(workdir).items() if k not in record} == \
           {k: v for k, v in before.items() if k not in record}
    assert max(e['iter'] for e in read_log(ckpt_path.parent / 'log.jsonl')) == 30  # the evaluation before the failed save


@pytest.mark.slow
def test_snapshots_are_kept_and_rotated(trained, tmp_path):
    out = tmp_path / 'out'
    run_script('train.py', *TRAIN, '--max_iters=25', f'--out_dir={out}', '--ckpt_iters=[3]',
               '--ckpt_every=5', '--keep_last=3', cwd=trained)
    assert sorted(p.name for p in out.glob('*.pt')) == ['ckpt.pt', 'ckpt_0000015.pt', 'ckpt_0000020.pt', 'ckpt_0000025.pt']
    assert checkpoint.load(out / 'ckpt_0000015.pt')['iter_num'] == 15


@pytest.mark.slow
def test_weights_only_export_is_smaller_and_loads_for_sampling_and_finetuning(trained, tmp_path):
    src, dst = trained / 'out' / 'ckpt.pt', tmp_path / 'model.pt'
    run_script('checkpoint.py', 'export', src, dst, cwd=trained)
    exported = checkpoint.load(dst)
    weight_bytes = sum(t.numel() * t.element_size() for t in {t.data_ptr(): t for t in exported['model'].values()}.values())
    assert src.stat().st_size - dst.stat().st_size > 1.9 * weight_bytes  # AdamW's two moments are gone
    assert 'optimizer' not in exported and 'rng' not in exported and exported['vocab']['vocab_size'] == 65
    greedy = ['--device=cpu', '--num_samples=1', '--max_new_tokens=30', '--temperature=0']
    from_full = run_script('sample.py', '--out_dir=out', *greedy, cwd=trained).stdout
    from_export = run_script('sample.py', f'--init_from={dst}', *greedy, cwd=trained).stdout
    assert from_full == from_export
    finetuned = run_script('train.py', *TRAIN, '--max_iters=5', f'--out_dir={tmp_path / "ft"}',
                           f'--init_from={dst}', cwd=trained)
    assert f'initializing from {dst}' in finetuned.stdout
    refused = run_script('train.py', *TRAIN, '--max_iters=25', f'--out_dir={tmp_path}', '--init_from=resume',
                         cwd=trained, check=False)
    assert refused.returncode == 1 and 'no checkpoint at' in refused.stderr


@pytest.mark.slow
def test_non_finite_loss_stops_without_saving(trained, tmp_path):
    ckpt = checkpoint.load(trained / 'out' / 'ckpt.pt')
    ckpt['model']['lm_head.weight'][0, 0] = float('nan')
    bad = tmp_path / 'nan.pt'
    checkpoint_file.save(checkpoint.inference_state(ckpt), bad)
    out = tmp_path / 'out'
    proc = run_script('train.py', *TRAIN, '--max_iters=20', f'--out_dir={out}', f'--init_from={bad}',
                      cwd=trained, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"error: loss became non-finite \(NaN or inf\) at iteration 0 .*"
                                        r"no checkpoint was saved", lines[0])
    assert not (out / 'ckpt.pt').exists()


# -----------------------------------------------------------------------------
# bad input: one line on stderr, a non-zero exit, no traceback, and no file changed

def corrupt(workdir, change):
    """Apply a change to the working directory before the run."""
    ds = workdir / 'data' / 'shakespeare_char'
    ckpt = workdir / 'out' / 'ckpt.pt'
    if change == 'no data':
        shutil.rmtree(ds)
    elif change == 'odd-sized bin':
        with open(ds / 'val.bin', 'ab') as f:
            f.write(b'\0')
    elif change == 'tiny val':  # as a tiny corpus prepares: meta.json counts the 20 tokens
        (ds / 'val.bin').write_bytes(np.zeros(20, dtype=np.uint16).tobytes())
        (ds / 'meta.json').write_text(json.dumps({**json.loads((ds / 'meta.json').read_text()), 'val_tokens': 20}))
    elif change == 'other vocab':
        meta = json.loads((ds / 'meta.json').read_text())
        meta['itos'][0] = 'é'
        (ds / 'meta.json').write_text(json.dumps(meta))
    elif change == 'broken meta':
        (ds / 'meta.json').write_text('{"tokenizer": "char", "vocab_size": 65, "itos": [')
    elif change == 'truncated ckpt':
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    elif change == 'pickled ckpt':
        torch.save({'model': {}, 'args': argparse.Namespace(lr=1e-3)}, ckpt)  # as old scripts did
    elif change == 'no ckpt':
        ckpt.unlink()
    elif change == 'out_dir is a file':
        (workdir / 'not_a_dir').write_text('')


BAD_INPUTS = [
    ('train.py', [], 'no data', r"data/shakespeare_char/train.bin not found: prepare the dataset first "
                                r"with `python data/shakespeare_char/prepare.py`"),
    ('train.py', [], 'odd-sized bin', r"val.bin has [\d,]+ bytes, but meta.json says [\d,]+ tokens of uint16"),
    ('train.py', [], 'tiny val', r"val.bin holds 20 tokens, too few for block_size=32 \(need at least 33\)"),
    ('train.py', ['--init_from=resume'], 'other vocab', r"the vocabulary in data/shakespeare_char/meta.json "
                                                        r"\(char, 65 tokens\) differs from the checkpoint's"),
    ('train.py', ['--init_from=resume', '--block_size=64'], None, r"block_size=64 is larger than the checkpoint's 32"),
    ('train.py', ['--init_from=resume', '--block_size=16'], None, r"resuming keeps the checkpoint's block_size=32"),
    ('train.py', [], 'broken meta', r"data/shakespeare_char/meta.json is not valid JSON"),
    ('train.py', ['--init_from=resume'], 'no ckpt', r"no checkpoint at out/ckpt.pt"),
    ('train.py', ['--init_from=resume'], 'truncated ckpt', r"checkpoint out/ckpt.pt is corrupt or truncated"),
    ('train.py', ['--init_from=resume'], 'pickled ckpt', r"refusing to load out/ckpt.pt: it holds Python objects"),
    ('train.py', ['--out_dir=not_a_dir/out'], 'out_dir is a file', r"out_dir not_a_dir/out is not writable"),
    ('train.py', ['--device=cuda'], None, r"device=cuda but no CUDA GPU is available; use --device=cpu"),
    ('train.py', ['--batch_size=0'], None, r"batch_size must be at least 1, got 0"),
    ('train.py', ['--block_size=-1'], None, r"block_size must be at least 1, got -1"),
    ('train.py', ['--eval_iters=0'], None, r"eval_iters must be at least 1, got 0"),
    ('train.py', ['--max_iters=-5'], None, r"max_iters must be 0 or more, got -5"),
    ('train.py', ['--learning_rate=0'], None, r"learning_rate must be in \(0, 1\), got 0.0"),
    ('train.py', ['--learning_rate=5'], None, r"learning_rate must be in \(0, 1\), got 5.0"),
    ('train.py', ['--optimizer=muon', '--muon_lr=-0.02'], None, r"muon_lr must be a positive number"),
    ('sample.py', ['--start=Größe'], None, r"the prompt has characters the model's vocabulary lacks: 'ß' 'ö'"),
    ('sample.py', ['--top_p=0'], None, r"top_p must be in \(0, 1\], got 0"),
    ('sample.py', ['--start=FILE:missing.txt'], None, r"prompt file not found: missing.txt"),
    ('sample.py', [], 'truncated ckpt', r"checkpoint out/ckpt.pt is corrupt or truncated"),
]


@pytest.mark.parametrize('script, args, change, message', BAD_INPUTS,
                         ids=[f"{s}-{c or ' '.join(a)}" for s, a, c, _ in BAD_INPUTS])
def test_bad_input_gets_a_one_line_error_and_changes_nothing(workdir, run_main, script, args, change, message):
    """In this process (see run_main); the subprocess test below shows what a user sees."""
    corrupt(workdir, change)
    before = files_in(workdir)
    common = [*TRAIN, '--max_iters=30', '--out_dir=out'] if script == 'train.py' else ['--out_dir=out', '--device=cpu']
    code, out, err = run_main(script, *common, *args, cwd=workdir)
    assert code != 0, out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert files_in(workdir) == before


@pytest.mark.slow
@pytest.mark.parametrize('script, args, change, message', [BAD_INPUTS[0], BAD_INPUTS[-1]], ids=['train.py', 'sample.py'])
def test_a_user_sees_bad_input_as_one_line_on_stderr(workdir, script, args, change, message):
    corrupt(workdir, change)
    common = [*TRAIN, '--max_iters=30', '--out_dir=out'] if script == 'train.py' else ['--out_dir=out', '--device=cpu']
    proc = run_script(script, *common, *args, cwd=workdir, check=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr


@pytest.mark.slow
def test_a_missing_cpu_compiler_is_one_line_before_anything_runs(trained, tmp_path):
    env = {'CXX': str(tmp_path / 'no-such-c++')}
    for script, args in (('train.py', [*TRAIN, f'--out_dir={tmp_path / "out"}']),
                         ('sample.py', ['--out_dir=out', '--device=cpu']),
                         ('bench.py', ['--device=cpu', '--n_layer=1', '--n_embd=32', '--block_size=16'])):
        proc = run_script(script, *args, '--compile=True', cwd=trained, env=env, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: compile=True on a CPU needs a C++ compiler"), lines[0]
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_compiled_training_on_a_cpu_follows_the_eager_run(trained, tmp_path):
    logs = {}
    for mode in ('False', 'True'):
        out = tmp_path / f'compile-{mode}'
        proc = run_script('train.py', *TRAIN, '--max_iters=12', f'--compile={mode}', f'--out_dir={out}',
                          cwd=trained, env={'TORCH_LOGS': 'recompiles'})
        assert 'Recompiling' not in proc.stderr  # evaluation runs the uncompiled model: one compile only
        logs[mode] = read_log(out / 'log.jsonl')
        state = checkpoint.load(out / 'ckpt.pt')['model']
        assert not any(k.startswith('_orig_mod') for k in state)  # the compiled wrapper's names stay out
    eager, compiled = ([(e['iter'], e.get('loss', e.get('val_loss'))) for e in log if 'loss' in e or 'val_loss' in e]
                       for log in (logs['False'], logs['True']))
    assert [i for i, _ in eager] == [i for i, _ in compiled] and len(eager) == 12 + 3  # evaluated at 0, 10, 12
    # float rounding differs (fused kernels, GELU as x * sigmoid(2u)); the run does not
    assert all(c == pytest.approx(e, rel=1e-4) for (_, e), (_, c) in zip(eager, compiled))


# -----------------------------------------------------------------------------
# architecture options, end to end: between them these mixes use every value of every option

OPTION_MIXES = [
    ['--attn_impl=manual', '--pos_enc=rope', '--norm=rmsnorm', '--qk_norm=True', '--mlp=relu2',
     '--tie_embeddings=False', '--logit_softcap=15.0', '--zero_init_proj=True'],
    ['--attn_impl=mha', '--pos_enc=sinusoidal', '--norm=none', '--mlp=swiglu'],
    ['--attention=False', '--pos_enc=none'],
    ['--residual=False'],
]


@pytest.mark.slow
@pytest.mark.parametrize('options', OPTION_MIXES, ids=[' '.join(o) for o in OPTION_MIXES])
def test_architecture_options_train_resume_export_and_sample(trained, tmp_path, run_main, options):
    """The first run as a user starts it; the rest in this process (run_main), which saves three interpreters."""
    out = tmp_path / 'out'
    run_script('train.py', *TRAIN, *options, '--max_iters=10', f'--out_dir={out}', cwd=trained)
    saved = checkpoint.load(out / 'ckpt.pt')
    for option in options:
        key, value = option[2:].split('=')
        assert str(saved['model_args'][key]) == value
    # resume rebuilds the same model from the checkpoint alone: no options on this command line
    code, resumed, err = run_main('train.py', *TRAIN, '--max_iters=15', f'--out_dir={out}', '--init_from=resume',
                                  cwd=trained)
    assert code == 0, err
    assert checkpoint.load(out / 'ckpt.pt')['iter_num'] == 15 and min(losses_in(resumed)) == ('iter', 10)
    assert run_main('checkpoint.py', 'export', out / 'ckpt.pt', tmp_path / 'model.pt', cwd=trained)[0] == 0
    # 80 new tokens run past block_size=32: the cache restarts its window (RoPE re-encodes positions)
    common = ['--device=cpu', '--num_samples=2', '--max_new_tokens=80', '--start=ROMEO:', '--seed=3']
    code, cached, _ = run_main('sample.py', f'--out_dir={out}', *common, cwd=trained)
    _, uncached, _ = run_main('sample.py', f'--init_from={tmp_path / "model.pt"}', *common, '--kv_cache=False',
                              cwd=trained)
    assert code == 0 and cached == uncached and cached.count('ROMEO:') == 2


@pytest.mark.parametrize('options, message', [
    (['--pos_enc=rope', '--n_embd=30', '--n_head=2'], "pos_enc='rope' rotates pairs of features and needs an even head size"),
    (['--norm=batchnorm'], "norm must be one of 'layernorm', 'rmsnorm', 'none', got 'batchnorm'"),
    (['--attn_impl=mha', '--pos_enc=rope'], "attn_impl='mha' computes queries and keys inside nn.MultiheadAttention"),
    (['--init_from=gpt2', '--pos_enc=rope'], "OpenAI's GPT-2 weights need GPT-2's architecture, so pos_enc='rope'"),
])
def test_impossible_architectures_stop_train_py_before_reading_any_data(tmp_path, run_main, options, message):
    code, _, err = run_main('train.py', *TRAIN, *options, cwd=tmp_path)  # tmp_path holds no data at all
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err


# a run that would start over on out_dir's own checkpoint

def test_a_new_run_does_not_overwrite_a_checkpoint_it_did_not_write(workdir, run_main):
    before = files_in(workdir)
    code, _, err = run_main('train.py', *TRAIN, '--max_iters=30', '--out_dir=out', cwd=workdir)
    assert code == 1 and err.strip().splitlines() == [
        "error: out/ckpt.pt would be overwritten by a new run from init_from='scratch': continue it with "
        "--init_from=resume, start over with --init_from=scratch on the command line, or choose another --out_dir"]
    assert files_in(workdir) == before


def test_starting_over_is_allowed_when_the_command_line_asks_for_it(workdir, run_main):
    code, out, err = run_main('train.py', *TRAIN, '--max_iters=3', '--out_dir=out', '--init_from=scratch', cwd=workdir)
    assert code == 0, err
    assert 'initializing a new model from scratch' in out and checkpoint.load(workdir / 'out' / 'ckpt.pt')['iter_num'] == 3


@pytest.mark.parametrize('restart_variable', ['SLURM_RESTART_COUNT', 'TORCHELASTIC_RESTART_COUNT'])
def test_a_restarted_job_resumes_from_its_checkpoint_whatever_its_command_line(workdir, run_main, monkeypatch,
                                                                               restart_variable):
    """SLURM requeues a job after a node failure and torchrun restarts failed workers: both rerun the same command
    line, here from scratch, which must continue the run instead of training over its checkpoint."""
    monkeypatch.setenv(restart_variable, '1')
    code, out, err = run_main('train.py', *TRAIN, '--max_iters=25', '--out_dir=out', '--init_from=scratch',
                              cwd=workdir)
    assert code == 0, err
    assert "note: this job was restarted (1 time(s)): it resumes from out/ckpt.pt, not init_from='scratch'" in out
    assert 'resuming training from out/ckpt.pt' in out and 'iter 20: loss' in out and 'iter 0: loss' not in out
    assert checkpoint.load(workdir / 'out' / 'ckpt.pt')['iter_num'] == 25
