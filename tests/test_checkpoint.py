"""Anything given as a checkpoint that cannot be read is one line that says what it is, from
checkpoint.load and from every script that loads: train.py, sample.py, eval.py, checkpoint.py
export (both formats)."""

import argparse
import pickle
import random
import re
import struct
import zipfile

import pytest
import torch
from conftest import TINY_MODEL, run_script, write_char_dataset

from model import GPT, GPTConfig
from nanogpt import checkpoint, checkpoint_file
from nanogpt.errors import UserError
from nanogpt.loading import build_model, source_of

ARGS = dict(n_layer=1, n_head=2, n_embd=16, block_size=8, bias=False, vocab_size=20)


def good_state(**extra):
    torch.manual_seed(0)
    return {'model': GPT(GPTConfig(**ARGS, dropout=0.0)).state_dict(), 'model_args': dict(ARGS), **extra}


def safetensors_bytes():
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    return struct.pack('<Q', len(header)) + header + bytes(4)


def write_kind(kind, path):
    """Write something that is not a usable checkpoint at path."""
    if kind == 'directory':
        path.mkdir()
        (path / 'notes.txt').write_text('not weights')
    elif kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'csv':
        path.write_text('step,loss\n0,4.17\n10,3.20\n')
    elif kind in ('truncated', 'truncated legacy'):
        torch.save(good_state(), path, _use_new_zipfile_serialization=(kind == 'truncated'))
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == 'random bytes':
        path.write_bytes(b'\x13' + random.Random(0).randbytes(4095))
    elif kind == 'pickle':
        with open(path, 'wb') as f:
            pickle.dump({'weights': [0.1, 0.2], 'step': 10}, f)
    elif kind == 'zip':
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('weights.csv', '0.1,0.2\n')
    elif kind == 'safetensors':
        path.write_bytes(safetensors_bytes())
    elif kind == 'python objects':
        torch.save({**good_state(), 'args': argparse.Namespace(lr=1e-3)}, path)
    elif kind == 'bare state_dict':
        torch.save(good_state()['model'], path)
    elif kind == 'newer format':
        torch.save(good_state(format_version=checkpoint_file.FORMAT_VERSION + 1), path)
    elif kind == 'no model_args':
        torch.save({'model': good_state()['model']}, path)
    elif kind == 'newer model option':
        torch.save({**good_state(), 'model_args': {**ARGS, 'parallel_blocks': True}}, path)
    elif kind == 'mismatched weights':
        torch.save({**good_state(), 'model_args': {**ARGS, 'n_embd': 32}}, path)
    elif kind != 'missing':
        raise ValueError(kind)
    return path


# kind: what the one line says (checkpoint.load's words; building the model refuses the last three)
KINDS = {
    'missing': r"no checkpoint at {p}$",
    'directory': r"{p} is a directory",
    'empty': r"{p} is empty \(0 bytes\), not a checkpoint",
    'csv': r"{p} is a text file \(it starts 'step,loss'\), not a checkpoint",
    'truncated': r"checkpoint {p} is corrupt or truncated \(its zip archive has no end: cut short\?\)",
    'truncated legacy': r"checkpoint {p} is corrupt or truncated",
    'random bytes': r"{p} is not a checkpoint: binary data of no format this code knows \(it starts 13 ",
    'pickle': r"{p} is a Python pickle written by another program \(pickle.dump, protocol \d\), not a torch checkpoint",
    'zip': r"{p} is a zip archive but not a torch checkpoint",
    'safetensors': r"{p} is a safetensors file",
    'python objects': r"refusing to load {p}: it holds Python objects that only arbitrary unpickling could load "
                      r"\(argparse.Namespace\)",
    'bare state_dict': r"{p} is a torch file but not a checkpoint of this repository: it holds a dict with keys "
                       r"transformer.wte.weight",
    'newer format': r"{p} was written by a newer version of this code \(checkpoint format 2, this code reads up to 1\)",
}
MODEL_KINDS = {
    'no model_args': r"{p} holds weights but no model_args",
    'newer model option': r"{p} was written by a newer version of this code \(model options parallel_blocks, unknown",
    'mismatched weights': r"{p} is damaged: its weights do not fit the model its model_args describe",
}
HF_DIR = r"{p} is a directory but not a Hugging Face GPT-2 checkpoint \(no config.json\)"


def expected(kind, path, builds_model):
    message = {**KINDS, **MODEL_KINDS}[kind]
    if kind == 'directory' and builds_model:
        message = HF_DIR
    return message.format(p=re.escape(str(path)))


@pytest.mark.parametrize('kind', KINDS)
def test_load_says_what_an_unreadable_file_is(tmp_path, kind):
    path = write_kind(kind, tmp_path / 'ckpt.pt')
    with pytest.raises(UserError) as refused:
        checkpoint.load(path)
    assert re.match(expected(kind, path, builds_model=False), str(refused.value)), str(refused.value)
    assert '\n' not in str(refused.value)


@pytest.mark.parametrize('kind', [*KINDS, *MODEL_KINDS])
def test_building_a_model_says_what_an_unreadable_checkpoint_is(tmp_path, kind):
    path = write_kind(kind, tmp_path / 'ckpt.pt')
    with pytest.raises(UserError) as refused:
        build_model(source_of(str(path), None), {'dropout': 0.0})
    assert re.match(expected(kind, str(path), builds_model=True), str(refused.value)), str(refused.value)


def test_good_checkpoints_load_in_both_torch_formats(tmp_path):
    for zip_format in (True, False):
        torch.save(good_state(), tmp_path / 'ckpt.pt', _use_new_zipfile_serialization=zip_format)
        model, _ = build_model(source_of(str(tmp_path / 'ckpt.pt'), None), {'dropout': 0.0})
        assert model.config.n_embd == 16


# -----------------------------------------------------------------------------
# from each script, as a user runs it: one line on stderr, no traceback

ENTRY_POINTS = {
    'train.py': lambda p: ['train.py', *TINY_MODEL, '--dataset=tiny', '--max_iters=2', '--out_dir=out',
                           f'--init_from={p}'],
    'sample.py': lambda p: ['sample.py', f'--init_from={p}', '--device=cpu', '--max_new_tokens=2'],
    'eval.py': lambda p: ['eval.py', f'--init_from={p}', '--device=cpu', '--tasks=bpb', '--dataset=tiny'],
    'export': lambda p: ['checkpoint.py', 'export', p, 'exported.pt'],
    'export-hf': lambda p: ['checkpoint.py', 'export', p, 'exported', '--format=hf'],
}
BUILDS_MODEL = ('train.py', 'sample.py', 'eval.py')
CASES = [(entry, kind) for entry in ENTRY_POINTS for kind in KINDS] + \
        [(entry, kind) for entry in BUILDS_MODEL for kind in MODEL_KINDS] + \
        [('export-hf', kind) for kind in MODEL_KINDS if kind != 'mismatched weights']  # it reads model_args only


@pytest.mark.parametrize('entry, kind', CASES, ids=[f'{e}-{k}' for e, k in CASES])
def test_every_script_reports_an_unreadable_checkpoint_in_one_line(tmp_path, run_main, entry, kind):
    """In this process (see run_main); test_a_user_sees_one_line_from_every_script runs each script as a user does."""
    write_char_dataset(tmp_path / 'data' / 'tiny', 'abcdefghij klmnopqrs\n' * 50)  # 20 symbols: ARGS' vocab_size
    write_kind(kind, tmp_path / 'given.pt')
    code, _, err = run_main(*ENTRY_POINTS[entry]('given.pt'), cwd=tmp_path)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.match('error: ' + expected(kind, 'given.pt', builds_model=entry in BUILDS_MODEL), lines[0]), lines[0]
    assert not (tmp_path / 'exported.pt').exists() and not (tmp_path / 'exported').exists()


@pytest.mark.slow
@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_a_user_sees_one_line_from_every_script(tmp_path, entry):
    kind = 'mismatched weights' if entry in BUILDS_MODEL else 'truncated'
    write_char_dataset(tmp_path / 'data' / 'tiny', 'abcdefghij klmnopqrs\n' * 50)
    write_kind(kind, tmp_path / 'given.pt')
    proc = run_script(*ENTRY_POINTS[entry]('given.pt'), cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 1 and 'Traceback' not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.match('error: ' + expected(kind, 'given.pt', builds_model=entry in BUILDS_MODEL), lines[0]), lines[0]


@pytest.mark.parametrize('fmt', ['pt', 'hf'])
def test_export_to_a_destination_that_cannot_be_written_is_one_line(tmp_path, fmt):
    torch.save(good_state(), tmp_path / 'ckpt.pt')
    (tmp_path / 'a_file').write_text('not a directory')
    proc = run_script('checkpoint.py', 'export', 'ckpt.pt', 'a_file/exported', f'--format={fmt}', cwd=tmp_path,
                      check=False, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: could not write a_file/exported (Not a directory); choose another destination"], proc.stderr
