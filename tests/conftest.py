"""Shared test helpers: the repository's paths, running scripts as a user does, small datasets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# a model small enough for a few dozen iterations in a second or two on a laptop CPU
TINY_MODEL = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
              '--dropout=0.0', '--bias=False', '--device=cpu', '--compile=False']


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
