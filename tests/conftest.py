"""Shared test helpers: the repository's paths, running scripts as a user does, small datasets."""

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from nanogpt import errors, runlock

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# a model small enough for a few dozen iterations in a second or two on a laptop CPU
TINY_MODEL = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
              '--dropout=0.0', '--bias=False', '--device=cpu', '--compile=False']


# train.py (or another script) run by tests/observed.py, which records what the output cannot show
OBSERVED = REPO / 'tests' / 'observed.py'


def observations(directory):
    """{rank: what tests/observed.py recorded for that rank} in its OBSERVED_DIR."""
    return {int(p.stem.removeprefix('rank')): json.loads(p.read_text()) for p in Path(directory).glob('rank*.json')}


def shared_file(name):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def run_script(script, *args, cwd, check=True, env=None, timeout=600):
    """Run one of the repository's scripts in a subprocess, the way a user does."""
    full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{script} {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


_MAINS = {}


def script_main(script):
    """A script's main(argv), imported from its file once (checkpoint.py the script, not nanogpt.checkpoint)."""
    if script not in _MAINS:
        spec = importlib.util.spec_from_file_location(f"script_{script.replace('/', '_')[:-3]}", REPO / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MAINS[script] = module.main
    return _MAINS[script]


@pytest.fixture
def run_main(monkeypatch, capsys):
    """run_main(script, *args, cwd) runs a script's main in this process, as its `__main__` does
    (nanogpt.errors.run), and returns (exit code, stdout, stderr): no new interpreter and no torch
    import, so a matrix of bad inputs costs seconds. A subprocess test per script shows that this is
    what a user sees."""
    locks, acquire = [], runlock.acquire

    def acquire_and_keep(*args, **kwargs):
        locks.append(acquire(*args, **kwargs))
        return locks[-1]

    def run(script, *args, cwd):
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(signal, 'signal', lambda *a: None)  # train.py's stop flag: pytest keeps its handlers
        monkeypatch.setattr(runlock, 'acquire', acquire_and_keep)
        capsys.readouterr()
        try:
            errors.run(script_main(script), [str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            for lock in locks:  # as the process's exit would
                lock.release()
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


def run_prepare(name, *args, env=None):
    """Run data/<name>/prepare.py as a user does; the caller checks the outcome."""
    return run_script(f'data/{name}/prepare.py', *args, cwd=REPO, check=False, env=env, timeout=120)


def load_prepared(out_dir):
    """(meta, train tokens, val tokens) of a prepared dataset."""
    meta = json.loads((Path(out_dir) / 'meta.json').read_text())
    dtype = np.dtype(meta['dtype'])
    return meta, np.fromfile(Path(out_dir) / 'train.bin', dtype), np.fromfile(Path(out_dir) / 'val.bin', dtype)


def write_char_dataset(data_dir, text, train_fraction=0.9):
    """A char-level dataset in the format the prepare scripts write (train.bin, val.bin, meta.json)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    itos = sorted(set(text))
    lut = {c: i for i, c in enumerate(itos)}
    ids = np.array([lut[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * train_fraction)
    ids[:n].tofile(data_dir / 'train.bin')
    ids[n:].tofile(data_dir / 'val.bin')
    (data_dir / 'meta.json').write_text(json.dumps(
        {'tokenizer': 'char', 'vocab_size': len(itos), 'dtype': 'uint16', 'itos': itos}))
    return data_dir


@pytest.fixture(scope='session')
def shakespeare_workdir(tmp_path_factory):
    """A working directory whose data/shakespeare_char was prepared from the real tiny shakespeare
    by data/shakespeare_char/prepare.py. Scripts run with it as their cwd, as from a checkout."""
    workdir = tmp_path_factory.mktemp('shakespeare')
    run_script('data/shakespeare_char/prepare.py', '--input', shared_file('tinyshakespeare.txt'),
               '--out_dir', workdir / 'data' / 'shakespeare_char', cwd=workdir)
    return workdir


@pytest.fixture(scope='module')
def ray_2cpus():
    """One local Ray with 2 CPUs for a module's parallel tests (ray.init costs seconds); shut down afterwards."""
    import ray

    from nanogpt.data.workers import start_ray
    start_ray(2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope='session')
def ray_cluster():
    """A real two-node Ray cluster on this machine: `ray start --head` and a second `ray start --address=...`
    on 127.0.0.1, one CPU each, with token authentication and a token of its own (RAY_AUTH_TOKEN; `ray start
    --head` also turns it on by itself when ~/.ray/auth_token exists). Yields (address, env): a driver joins
    with --ray_address address and env in its environment.
    Stopped afterwards whatever happens, by killing exactly its processes: `ray stop` would stop every Ray on
    the machine."""
    ray_bin = Path(sys.executable).parent / 'ray'
    temp = tempfile.mkdtemp(prefix='ray', dir='/tmp')  # short: Ray's socket paths live under it
    port = free_port()
    address = f'127.0.0.1:{port}'
    env = {'RAY_AUTH_MODE': 'token', 'RAY_AUTH_TOKEN': secrets.token_hex(32), 'RAY_USAGE_STATS_ENABLED': '0'}
    common = ['--node-ip-address=127.0.0.1', '--num-cpus=1', '--disable-usage-stats']
    try:
        for args in (['--head', f'--port={port}', f'--temp-dir={temp}', '--include-dashboard=false'],
                     [f'--address={address}']):
            # a session of their own: the daemons outlive `ray start` and are stopped by process group below
            r = subprocess.run([str(ray_bin), 'start', *args, *common], env={**os.environ, **env}, capture_output=True,
                               text=True, timeout=120, start_new_session=True)
            assert r.returncode == 0, f"ray start {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
        yield address, env
    finally:
        _kill_processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _kill_processes_under(path):
    """SIGKILL the processes whose command line names path, their process groups and their descendants.
    Returns the pids it found."""
    parent, group, matched = {}, {}, set()
    for d in Path('/proc').iterdir():
        try:
            stat = (d / 'stat').read_text()
            fields = stat[stat.rindex(')') + 2:].split()  # after "pid (comm)": state, ppid, pgrp, ...
            pid = int(d.name)
            parent[pid], group[pid] = int(fields[1]), int(fields[2])
            if path.encode() in (d / 'cmdline').read_bytes():
                matched.add(pid)
        except (ValueError, OSError):
            continue
    doomed, grew = set(matched), True
    while grew:  # add descendants (Ray's workers rename themselves and do not name the path)
        new = {pid for pid, ppid in parent.items() if ppid in doomed} - doomed
        doomed |= new
        grew = bool(new)
    for pgid in {group[pid] for pid in doomed} - {os.getpgrp()}:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return doomed


def char_workdir(tmp_path_factory, name):
    """A fresh working directory of its own with data/shakespeare_char written from the real tiny
    shakespeare (for a module whose runs must not share shakespeare_workdir's out_dirs)."""
    workdir = tmp_path_factory.mktemp(name)
    write_char_dataset(workdir / 'data' / 'shakespeare_char', shared_file('tinyshakespeare.txt').read_text())
    return workdir
