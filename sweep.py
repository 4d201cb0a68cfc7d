"""
Run a set of train.py runs that differ in a few overrides, and compare them in a table and a plot:
an ablation study, a learning-rate grid, any list of variants.

$ python sweep.py config/sweep_ablation_char.py                 # the runs the sweep file names
$ python sweep.py config/sweep_ablation_char.py --parallel 2    # two at a time, each with its share of the cores
$ python sweep.py config/sweep_ablation_char.py --max_iters=200 # any other --key=value goes to every run
$ python sweep.py --base config/train_shakespeare_char_cpu.py --grid learning_rate=[1e-3,3e-3] --grid n_layer=[2,4]

A sweep file is Python that sets some of:
    base = ['config/study_shakespeare_char_cpu.py']   # train.py's arguments, common to every run
    runs = {'original': {}, 'no_norm': {'norm': 'none'}}   # named runs and their overrides
    grid = {'learning_rate': [1e-3, 3e-3]}            # every combination of these, on top of each run
    out_dir = 'sweeps/ablation'                       # where the runs go (default: sweeps/<file name>)

Each run trains in its own out_dir under the sweep's folder, its output in sweep.log there, with
the whole val set evaluated at the end. The sweep then prints a markdown table (also written to
results.md) and writes loss.png with every run's curves. Restarted after an interruption, it skips
finished runs and resumes an unfinished one from its checkpoint; a run that fails is reported in
the table with its one-line error, and the sweep goes on.
"""

import argparse
import ast
import itertools
import json
import os
import subprocess
import sys
import time

import configurator
from nanogpt import checkpoint
from nanogpt.errors import ConfigError, UserError, run
from nanogpt.runlog import plot_runs, read_log

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')


def read_sweep_file(path):
    namespace = configurator.read_python_file(path, 'sweep file')
    unknown = set(namespace) - {'base', 'runs', 'grid', 'out_dir'}
    if unknown:
        raise ConfigError(f"{path} sets {', '.join(sorted(unknown))}; a sweep file sets base, runs, grid and out_dir")
    return namespace


def parse_grid(items):
    """--grid key=[v1,v2] arguments as {key: [v1, v2]}."""
    grid = {}
    for item in items:
        key, sep, text = item.partition('=')
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values = None
        if not sep or not isinstance(values, (list, tuple)):
            raise ConfigError(f"--grid expects key=[value, ...], got {item!r}")
        grid[key] = list(values)
    return grid


def expand(runs, grid):
    """{run name: overrides}: each named run, times every combination of the grid."""
    runs = runs or {'': {}}
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    expanded = {}
    for (name, overrides), combo in itertools.product(runs.items(), combos):
        label = ','.join([name] * bool(name) + [f"{k}={v}" for k, v in combo.items()])
        expanded[label or 'run'] = {**overrides, **combo}
    return expanded


def as_argument(key, value):
    return f"--{key}={value if isinstance(value, str) else repr(value)}"


def status(run_dir):
    """'done' (the whole val set was evaluated), 'resume' (a checkpoint to continue from) or 'new'."""
    log = os.path.join(run_dir, 'log.jsonl')
    if os.path.exists(log) and any('val_loss_full' in e for e in read_log(log)):
        return 'done'
    return 'resume' if checkpoint.resumable(run_dir) else 'new'


def start(name, overrides, run_dir, base, extra, threads):
    os.makedirs(run_dir, exist_ok=True)
    state = status(run_dir)
    args = [*base, *(as_argument(k, v) for k, v in overrides.items()), *extra, f'--out_dir={run_dir}',
            '--eval_full_val=True', *(['--init_from=resume'] if state == 'resume' else [])]
    env = dict(os.environ)
    if threads:  # a fair share of the cores for each of the runs going at once
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"{'resuming' if state == 'resume' else 'starting'} {name}: python train.py {' '.join(args)}", flush=True)
    output = open(os.path.join(run_dir, 'sweep.log'), 'a')
    start_offset = output.tell()  # this attempt's output starts here
    proc = subprocess.Popen([sys.executable, TRAIN, *args], stdout=output, stderr=subprocess.STDOUT, env=env)
    return proc, output, start_offset


def error_line(run_dir, start_offset):
    """The one-line cause of a failed run, from this attempt's output."""
    with open(os.path.join(run_dir, 'sweep.log')) as f:
        f.seek(start_offset)
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith('error:')]
    return (errors or lines or ['failed without output'])[-1]


def has_losses(run_dir):
    log = os.path.join(run_dir, 'log.jsonl')
    return os.path.exists(log) and any('loss' in e or 'val_loss' in e for e in read_log(log))


def result_row(name, overrides, run_dir, error):
    log = os.path.join(run_dir, 'log.jsonl')
    entries = read_log(log) if os.path.exists(log) else []
    evals = [e for e in entries if 'val_loss' in e]
    full = [e['val_loss_full'] for e in entries if 'val_loss_full' in e]
    config_path = os.path.join(run_dir, 'config.json')
    n_params = None
    if os.path.exists(config_path):
        with open(config_path) as f:
            n_params = json.load(f)['config'].get('n_params')
    fmt = lambda x, spec: format(x, spec) if x is not None else '–'  # noqa: E731
    return (f"| {name} | {' '.join(as_argument(k, v) for k, v in overrides.items()) or '(base)'} | "
            f"{fmt(n_params and n_params / 1e6, '.2f')}M | {fmt(entries[-1]['wall_s'] if entries else None, '.0f')} s | "
            f"{fmt(evals[-1]['train_loss'] if evals else None, '.4f')} | {fmt(evals[-1]['val_loss'] if evals else None, '.4f')} | "
            f"{fmt(full[-1] if full else None, '.4f')} | {error or 'done'} |")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sweep_file', nargs='?', help="a Python file setting base, runs, grid, out_dir")
    parser.add_argument('--base', nargs='*', default=None, help="train.py arguments common to every run")
    parser.add_argument('--grid', action='append', default=[], help="key=[v1,v2,...]; repeat for a grid")
    parser.add_argument('--parallel', type=int, default=1, help="runs at once (default 1)")
    parser.add_argument('--out_dir', help="the sweep's folder")
    args, extra = parser.parse_known_args(argv)
    if any(not a.startswith('--') or '=' not in a for a in extra):
        raise ConfigError(f"unexpected arguments {' '.join(extra)}; train.py overrides are --key=value")
    spec = read_sweep_file(args.sweep_file) if args.sweep_file else {}
    base = args.base if args.base is not None else list(spec.get('base', []))
    runs = expand(spec.get('runs'), {**spec.get('grid', {}), **parse_grid(args.grid)})
    name = os.path.splitext(os.path.basename(args.sweep_file))[0] if args.sweep_file else 'sweep'
    out_dir = args.out_dir or spec.get('out_dir') or os.path.join('sweeps', name)
    if args.parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {args.parallel}")
    threads = max(1, (os.cpu_count() or 1) // args.parallel) if args.parallel > 1 else None

    errors, pending, running = {}, list(runs), {}
    t0 = time.time()
    while pending or running:
        while pending and len(running) < args.parallel:
            run_name = pending.pop(0)
            run_dir = os.path.join(out_dir, run_name)
            if os.path.isdir(run_dir) and status(run_dir) == 'done':
                print(f"{run_name}: finished before, skipped")
                continue
            running[run_name] = start(run_name, runs[run_name], run_dir, base, extra, threads)
        time.sleep(0.2)
        for run_name, (proc, output, start_offset) in list(running.items()):
            if proc.poll() is None:
                continue
            output.close()
            del running[run_name]
            run_dir = os.path.join(out_dir, run_name)
            if proc.returncode != 0:
                errors[run_name] = error_line(run_dir, start_offset)
            elif status(run_dir) != 'done':  # stopped by a signal, with a checkpoint to resume from
                errors[run_name] = "stopped before the end; run the sweep again to resume it"
            print(f"{run_name}: {errors.get(run_name, 'done')} ({time.time() - t0:.0f} s into the sweep)", flush=True)

    rows = [result_row(n, runs[n], os.path.join(out_dir, n), errors.get(n)) for n in runs]
    table = '\n'.join(["| run | overrides | parameters | wall time | train loss | val loss | val loss (whole val set) | status |",
                       "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |", *rows])
    with open(os.path.join(out_dir, 'results.md'), 'w') as f:
        f.write(table + '\n')
    print(table)
    plotted = [os.path.join(out_dir, n) for n in runs if has_losses(os.path.join(out_dir, n))]
    if plotted:
        print(f"wrote {plot_runs(plotted, os.path.join(out_dir, 'loss.png'), title=name)}")
    if errors:
        raise UserError(f"{len(errors)} of {len(runs)} runs failed: {', '.join(errors)} (see the table)")


if __name__ == '__main__':
    run(main, sys.argv[1:])
