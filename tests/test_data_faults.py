"""Faults during data preparation: a Ray worker killed mid-run, and operating-system errors while writing the
outputs (a full disk, --out_dir a file). Nothing is lost or corrupted, and the previous bins stay as they were."""
import errno
import json
import os
import resource
import signal
import subprocess
import sys

import pytest
from conftest import REPO, SHARED_DATA

from nanogpt.data import bpe, char
from nanogpt.data.sources import Corpus
from nanogpt.errors import UserError

SEP = '<|endoftext|>'
BINS = ('train.bin', 'val.bin', 'meta.json')
needs_tiktoken = pytest.mark.skipif(not (SHARED_DATA / 'tiktoken_cache').is_dir(),
                                    reason='../shared/data/tiktoken_cache not present')


@pytest.fixture(scope='module', autouse=True)
def tiktoken_cache():
    """The GPT-2 files, offline, for this module's tests and the Ray workers they start (set before them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TIKTOKEN_CACHE_DIR', str(SHARED_DATA / 'tiktoken_cache'))
        yield


def stories(n, seed=0):
    return [f"Story {i + seed}: {'ä' * (i % 5)}{'the fox ran. ' * (1 + i % 9)}The end." for i in range(n)]


def write_corpus(path, docs):
    path.write_text(SEP.join(docs) + SEP, encoding='utf-8')
    return path


def read_bins(out_dir):
    return [(out_dir / f).read_bytes() for f in BINS]


def kill_own_worker_once(fn, marker):
    """fn, except that the first call anywhere (marked by creating the file marker) SIGKILLs its own process
    before doing anything: a Ray worker dying in the middle of a run. Defined inside a function, so Ray ships
    it by value; fn itself is shipped by reference (data.char / data.bpe, importable on the workers)."""
    def call(chunk, *args):
        if chunk[0] == 'file' and chunk[2] > 0:  # not the first chunk: the run is under way
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return fn(chunk, *args)
    return call


@pytest.mark.slow
def test_killed_ray_worker_is_retried_and_the_bins_are_identical(tmp_path, ray_2cpus, monkeypatch):
    path = write_corpus(tmp_path / 'c.txt', stories(600))
    char.prepare(Corpus([str(path)]), tmp_path / 'local', stories=True, val_fraction=0.1, seed=3, num_workers=1)
    # pass 2 writes each chunk's tokens into the shared files: a killed task that is run again must not leave
    # a hole (zeros) or write anything twice
    monkeypatch.setattr(char, 'encode_chunk', kill_own_worker_once(char.encode_chunk, str(tmp_path / 'killed2')))
    char.prepare(Corpus([str(path)]), tmp_path / 'ray', stories=True, val_fraction=0.1, seed=3, num_workers=2,
                 chunk_size=4096)
    assert (tmp_path / 'killed2').exists()  # a worker was killed
    assert read_bins(tmp_path / 'ray') == read_bins(tmp_path / 'local')
    monkeypatch.undo()
    monkeypatch.setattr(char, 'scan_chunk', kill_own_worker_once(char.scan_chunk, str(tmp_path / 'killed1')))
    char.prepare(Corpus([str(path)]), tmp_path / 'ray1', stories=True, val_fraction=0.1, seed=3, num_workers=2,
                 chunk_size=4096)
    assert (tmp_path / 'killed1').exists()
    assert read_bins(tmp_path / 'ray1') == read_bins(tmp_path / 'local')


@pytest.mark.slow
@needs_tiktoken
def test_killed_ray_worker_is_retried_for_bpe(tmp_path, ray_2cpus, monkeypatch):
    path = tmp_path / 'c.jsonl'
    path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in stories(400)), encoding='utf-8')
    bpe.prepare(Corpus([str(path)]), tmp_path / 'local', val_fraction=0.1, seed=3, num_workers=1)
    monkeypatch.setattr(bpe, 'encode_chunk', kill_own_worker_once(bpe.encode_chunk, str(tmp_path / 'killed')))
    bpe.prepare(Corpus([str(path)]), tmp_path / 'ray', val_fraction=0.1, seed=3, num_workers=2, chunk_size=2048)
    assert (tmp_path / 'killed').exists()
    assert read_bins(tmp_path / 'ray') == read_bins(tmp_path / 'local')


def run_with_file_limit(args, limit, env=None):
    """A prepare script that may write no file larger than limit bytes: a disk that fills up."""
    def small_file_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, preexec_fn=small_file_limit)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bars, if any
    assert last.startswith('error: ') and all(n in last for n in needles), proc.stderr


def files_in(path):
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize('script', ['tinystories_char', 'openwebtext'])
def test_full_disk_is_one_line_and_keeps_the_previous_bins(tmp_path, script):
    env = None
    if script == 'openwebtext' and not (SHARED_DATA / 'tiktoken_cache').is_dir():
        pytest.skip('../shared/data/tiktoken_cache not present')
    out = tmp_path / 'out'
    small = write_corpus(tmp_path / 'small.txt', stories(20))
    big = write_corpus(tmp_path / 'big.txt', stories(3000, seed=1))  # ~400 KB of text
    prepare = REPO / 'data' / script / 'prepare.py'
    r = run_with_file_limit([prepare, '--input', small, '--out_dir', out, '--num_workers', '1'], 1 << 30, env)
    assert r.returncode == 0, r.stderr
    before = read_bins(out)
    r = run_with_file_limit([prepare, '--input', big, '--out_dir', out, '--num_workers', '1'], 64 << 10, env)
    assert_one_line_error(r, str(out / '.train.bin.'), 'File too large', '--out_dir', 'untouched')
    assert read_bins(out) == before and files_in(out) == sorted(BINS)  # no temporary files left either


def test_disk_full_in_the_middle_of_writing_tokens_is_a_user_error(tmp_path, monkeypatch):
    path = write_corpus(tmp_path / 'c.txt', stories(50))
    char.prepare(Corpus([str(path)]), tmp_path / 'o', stories=True, val_fraction=0.1)
    before = read_bins(tmp_path / 'o')

    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, 'pwrite', full)
    with pytest.raises(UserError, match=r"cannot write .*\.(train|val)\.bin\..*No space left on device.*free some disk "
                                        r"space or choose another --out_dir"):
        char.prepare(Corpus([str(path)]), tmp_path / 'o', stories=True, val_fraction=0.2)
    assert read_bins(tmp_path / 'o') == before and files_in(tmp_path / 'o') == sorted(BINS)


@pytest.mark.parametrize('script', ['tinystories_char', 'shakespeare_char', 'openwebtext', 'shakespeare'])
def test_out_dir_that_is_a_file_is_one_line(tmp_path, script):
    path = write_corpus(tmp_path / 'c.txt', stories(5))
    not_a_dir = tmp_path / 'file'
    not_a_dir.write_text('mine')
    env = os.environ
    for out in (not_a_dir, not_a_dir / 'sub'):
        r = subprocess.run([sys.executable, str(REPO / 'data' / script / 'prepare.py'), '--input', str(path),
                            '--out_dir', str(out)], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
        assert_one_line_error(r, str(out), '--out_dir must be a directory')
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # found before any work started
    assert not_a_dir.read_text() == 'mine'


def test_a_killed_runs_temporary_bins_are_removed_by_the_next_run(tmp_path):
    """A SIGKILLed prepare leaves its hidden .train.bin.<host>.<pid>.tmp behind; the next run into the same
    folder removes it, but not the files of a run still writing, nor another host's (whose process it cannot see)."""
    import socket
    out = tmp_path / 'o'
    out.mkdir()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    host = socket.gethostname()
    killed = [out / f'.{s}.bin.{host}.{dead.pid}.tmp' for s in ('train', 'val')]
    kept = [out / f'.train.bin.{host}.{os.getppid()}.tmp', out / f'.train.bin.other-host.{dead.pid}.tmp']
    for p in killed + kept:
        p.write_bytes(b'\0' * 10)
    char.prepare(Corpus([str(write_corpus(tmp_path / 's.txt', stories(20)))]), out, stories=True, val_fraction=0.1)
    assert not any(p.exists() for p in killed) and all(p.exists() for p in kept)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) == sorted(p.name for p in kept)
