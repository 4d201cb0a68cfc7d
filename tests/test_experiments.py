"""Experiments as a user runs them: the run log and its config, plot.py (the curves it draws), sweep.py
(with a failing run, a kill and a restart; a grid over a base config, runs in parallel), sampling
across snapshots, and TensorBoard logging."""

import ast
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SHARED_DATA, TINY_MODEL, run_script, write_char_dataset

from nanogpt.runlog import read_log

TRAIN = [*TINY_MODEL, '--dataset=shakespeare_char', '--eval_interval=10', '--eval_iters=4', '--log_interval=5',
         '--learning_rate=3e-3', '--warmup_iters=5', '--lr_decay_iters=40', '--gradient_accumulation_steps=1']
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def run_with_snapshots(shakespeare_workdir):
    """A 20-iteration run with snapshots at 10 and 20, TensorBoard events, and the whole val set evaluated."""
    run_script('train.py', *TRAIN, '--max_iters=20', '--out_dir=out-exp', '--ckpt_every=10', '--eval_full_val=True',
               '--tensorboard_log=True', cwd=shakespeare_workdir)
    return shakespeare_workdir / 'out-exp'


@pytest.mark.slow
def test_a_run_log_that_cannot_be_written_is_one_line_and_the_old_log_stays(tmp_path):
    from nanogpt.errors import UserError
    from nanogpt.runlog import RunLog
    (tmp_path / 'log.jsonl').write_text('{"iter": 0, "loss": 4.2}\n')
    (tmp_path / 'config.json').mkdir()  # as unwritable as a full disk, and portable
    with pytest.raises(UserError, match=r"could not write .*config.json \(.+\): free some disk space"):
        RunLog(str(tmp_path), {}, {}, start_iter=0)
    assert (tmp_path / 'log.jsonl').read_text() == '{"iter": 0, "loss": 4.2}\n'  # not emptied for nothing
    (tmp_path / 'config.json').rmdir()
    log = RunLog(str(tmp_path), {}, {}, start_iter=0)
    log.file.close()
    log.file = open('/dev/full', 'a')  # every write fails with ENOSPC, as on a full disk
    with pytest.raises(UserError, match=r"could not write .*log.jsonl \(No space left on device\)"):
        log.write(iter=1, loss=4.0)


def test_run_log_records_every_log_and_eval_step_and_the_config(run_with_snapshots):
    entries = read_log(run_with_snapshots / 'log.jsonl')
    assert [e['iter'] for e in entries if 'loss' in e] == [4, 9, 14, 19]
    assert [e['iter'] for e in entries if 'val_loss' in e] == [0, 10, 20]
    assert set(entries[1]) == {'iter', 'loss', 'lr', 'ms_per_iter', 'tokens_per_s', 'wall_s'}  # mfu: none on a CPU
    assert entries[-1]['iter'] == 20 and 3.0 < entries[-1]['val_loss_full'] < 4.5
    saved = json.loads((run_with_snapshots / 'config.json').read_text())
    assert saved['config']['max_iters'] == 20 and saved['config']['n_params'] > 0
    assert saved['provenance']['torch'] and saved['provenance']['code_version']


@pytest.mark.slow
def test_tensorboard_gets_the_same_numbers(run_with_snapshots):
    from tensorboard.backend.event_processing import event_accumulator  # requirements-dev.txt installs it
    events = event_accumulator.EventAccumulator(str(run_with_snapshots / 'tensorboard'))
    events.Reload()
    entries = read_log(run_with_snapshots / 'log.jsonl')
    logged = {e['iter']: e['val_loss'] for e in entries if 'val_loss' in e}
    assert {s.step: pytest.approx(s.value) for s in events.Scalars('val_loss')} == logged
    assert [s.step for s in events.Scalars('loss')] == [4, 9, 14, 19]


@pytest.mark.slow
def test_plot_draws_each_logged_loss_and_refuses_a_missing_log(run_with_snapshots, tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.image

    from nanogpt.runlog import plot_runs
    run_script('plot.py', run_with_snapshots, '--output', tmp_path / 'loss.png', cwd=tmp_path)
    assert (tmp_path / 'loss.png').read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(tmp_path / 'loss.png')
    assert image.shape[:2] == (550, 1430) and image[..., :3].std() > 0.05  # 13 x 5 inches at 110 dpi, not blank
    # the figure that plot.py saves: each curve holds the log's numbers, against iterations and wall time
    figures, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig',
                        lambda fig, *args, **kwargs: [figures.append(fig), save(fig, *args, **kwargs)])
    plot_runs([run_with_snapshots], tmp_path / 'again.png')
    entries = read_log(run_with_snapshots / 'log.jsonl')
    train = [(e['iter'], e['wall_s'], e['loss']) for e in entries if 'loss' in e]
    val = [(e['iter'], e['wall_s'], e['val_loss']) for e in entries if 'val_loss' in e]
    by_iteration, by_time = figures[0].axes
    for ax, x in ((by_iteration, 0), (by_time, 1)):
        lines = [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
        assert lines == [([p[x] for p in train], [p[2] for p in train]), ([p[x] for p in val], [p[2] for p in val])]
    assert [t.get_text() for t in by_iteration.get_legend().get_texts()] == [f"out-exp (val {val[-1][2]:.3f})"]
    proc = run_script('plot.py', tmp_path / 'nothing', cwd=tmp_path, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: no log at {tmp_path / 'nothing' / 'log.jsonl'}: is {tmp_path / 'nothing'} the out_dir of a train.py run?"]


@pytest.mark.slow
def test_sampling_across_snapshots_labels_each_with_its_iteration(run_with_snapshots):
    args = ['--out_dir=out-exp', '--snapshots=True', '--device=cpu', '--num_samples=1', '--max_new_tokens=30',
            '--start=ROMEO:']
    out = run_script('sample.py', *args, cwd=run_with_snapshots.parent).stdout
    assert [line for line in out.splitlines() if line.startswith('===')] == [
        '=== ckpt_0000010.pt: iteration 10 ===', '=== ckpt_0000020.pt: iteration 20 ===']
    samples = [part.split('---------------')[0] for part in out.split('===')[2::2]]
    assert len(samples) == 2 and samples[0] != samples[1] and all('ROMEO:' in s for s in samples)
    # same seed for every snapshot: the run again gives the same text
    assert run_script('sample.py', *args, cwd=run_with_snapshots.parent).stdout == out
    none = run_script('sample.py', '--out_dir=nowhere', '--snapshots=True', cwd=run_with_snapshots.parent, check=False)
    assert none.returncode == 1 and 'no snapshots (ckpt_*.pt) in nowhere' in none.stderr


SWEEP_FILE = f"""
base = {[*TRAIN, '--max_iters=30']!r}
runs = {{'small': {{'n_embd': 32}}, 'wider': {{'n_embd': 48, 'n_head': 2}}, 'broken': {{'norm': 'batchnorm'}}}}
"""


@pytest.fixture
def small_workdir(tmp_path):
    """data/shakespeare_char from the first 40,000 characters of tiny shakespeare: a sweep evaluates every run on
    the whole val set, which here is 4,000 tokens instead of 111,540."""
    text = (SHARED_DATA / 'tinyshakespeare.txt').read_text()[:40_000]
    write_char_dataset(tmp_path / 'data' / 'shakespeare_char', text)
    return tmp_path


@pytest.mark.slow
def test_sweep_reports_every_run_and_a_restart_skips_the_finished_ones(small_workdir, tmp_path):
    sweep_file = tmp_path / 'sweep_tiny.py'
    sweep_file.write_text(SWEEP_FILE)
    out = tmp_path / 'sweep'
    command = [sys.executable, str(REPO / 'sweep.py'), str(sweep_file), f'--out_dir={out}']

    # kill the sweep (and its run) once the second run has written a checkpoint
    proc = subprocess.Popen(command, cwd=small_workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (out / 'wider' / 'ckpt.pt').exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = read_log(out / 'small' / 'log.jsonl')

    restarted = subprocess.run(command, cwd=small_workdir, capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 1  # one run failed
    assert 'small: finished before, skipped' in restarted.stdout
    assert 'resuming wider' in restarted.stdout
    assert read_log(out / 'small' / 'log.jsonl') == first  # not run again
    table = (out / 'results.md').read_text()
    assert table == restarted.stdout[restarted.stdout.index('| run |'):].split('wrote')[0]
    rows = {line.split('|')[1].strip(): line for line in table.splitlines()[2:]}
    assert set(rows) == {'small', 'wider', 'broken'}
    assert rows['small'].endswith('| done |') and rows['wider'].endswith('| done |')
    assert "norm must be one of 'layernorm', 'rmsnorm', 'none', got 'batchnorm'" in rows['broken']
    wider = read_log(out / 'wider' / 'log.jsonl')
    assert [e['iter'] for e in wider if 'loss' in e] == list(range(4, 30, 5))  # resumed: none missing or twice
    assert (out / 'loss.png').read_bytes()[:8] == PNG_SIGNATURE
    assert restarted.stderr.strip().splitlines() == ["error: 1 of 3 runs failed: broken (see the table)"]


def as_python(value):
    """A --key=value override's value as train.py's configurator reads it: a Python literal, or else a string."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


@pytest.mark.slow
def test_sweep_runs_a_grid_over_a_base_config_two_at_a_time_and_tables_the_whole_val_loss(small_workdir, tmp_path):
    base = tmp_path / 'tiny.py'  # the base: a config file, as train.py takes one, with TRAIN's settings
    base.write_text(''.join(f"{key} = {as_python(value)!r}\n" for key, value in (a[2:].split('=', 1) for a in TRAIN)))
    out = tmp_path / 'grid'
    proc = run_script('sweep.py', '--base', base, '--grid', 'learning_rate=[1e-3,3e-3]', '--parallel', '2',
                      f'--out_dir={out}', '--max_iters=10', cwd=small_workdir)
    names = ['learning_rate=0.001', 'learning_rate=0.003']
    for name, lr in zip(names, (1e-3, 3e-3)):
        config = json.loads((out / name / 'config.json').read_text())['config']
        assert (config['learning_rate'], config['n_embd'], config['max_iters']) == (lr, 32, 10)  # grid, base, override
    # two at a time: the second run started before the first ended
    events = [line.split(':')[0] for line in proc.stdout.splitlines() if line.startswith(('starting', *names))]
    assert events[:2] == [f'starting {name}' for name in names] and sorted(events[2:]) == names, proc.stdout
    table = (out / 'results.md').read_text()
    assert table.splitlines()[0].split('|')[7].strip() == 'val loss (whole val set)'
    cells = [[c.strip() for c in line.split('|')[1:-1]] for line in table.splitlines()[2:]]
    rows = {row[0]: row[1:] for row in cells}
    assert list(rows) == names
    for name in names:
        entries = read_log(out / name / 'log.jsonl')
        evals = [e for e in entries if 'val_loss' in e]
        full = [e['val_loss_full'] for e in entries if 'val_loss_full' in e]
        assert len(full) == 1 and rows[name][5] == f"{full[0]:.4f}" and rows[name][4] == f"{evals[-1]['val_loss']:.4f}"
        assert rows[name][6] == 'done'
    assert rows[names[0]][5] != rows[names[1]][5]  # two learning rates, two models


@pytest.mark.slow
def test_an_evaluation_only_run_leaves_the_training_log_alone(run_with_snapshots):
    before = {name: (run_with_snapshots / name).read_bytes() for name in ('log.jsonl', 'config.json')}
    out = run_script('train.py', *TRAIN, '--out_dir=out-exp', '--init_from=resume', '--eval_only=True',
                     '--eval_full_val=True', cwd=run_with_snapshots.parent).stdout
    assert 'val loss on the whole val set' in out
    assert {name: (run_with_snapshots / name).read_bytes() for name in before} == before


def test_sweep_resumes_a_sharded_run_instead_of_restarting_it(tmp_path):
    """A parallelism='fsdp' run's checkpoint is the directory ckpt/: a restarted sweep resumes from it."""
    import sweep
    run_dir = tmp_path / 'run'
    assert sweep.status(run_dir) == 'new'
    (run_dir / 'ckpt').mkdir(parents=True)
    for name in ('state.pt', '.metadata'):
        (run_dir / 'ckpt' / name).touch()
    assert sweep.status(run_dir) == 'resume'
