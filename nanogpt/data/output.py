"""
What a preparation writes: the train/val split by documents with a fixed seed (val_mask), and train.bin /
val.bin / meta.json, written to hidden temporary files and moved into place only when all is written
(Output), so a failed or interrupted run never leaves half-written bins behind.
"""

import errno
import glob
import json
import os
import socket
import sys

import numpy as np

from nanogpt.errors import UserError
from nanogpt.files import atomic_write, commit


def val_mask(first_doc, n_docs, seed, val_fraction):
    """Which of the documents first_doc .. first_doc+n_docs-1 go to val. A hash of (seed, global document
    index), so the answer does not depend on how the corpus was cut into chunks or on the worker count."""
    x = np.arange(first_doc, first_doc + n_docs, dtype=np.uint64)
    x = x + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
    # splitmix64 finaliser: a cheap, well-mixed 64-bit hash
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) < val_fraction


def split_runs(doc_ends, is_val):
    """(is_val, start, stop) for each run of consecutive documents that go to the same split, given where
    each document ends: writing runs instead of masking every token keeps the split cheap."""
    if not len(doc_ends):
        return []
    change = np.flatnonzero(is_val[1:] != is_val[:-1]) + 1  # first document of each run
    starts = np.concatenate([[0], doc_ends[change - 1]]).tolist()
    stops = np.concatenate([doc_ends[change - 1], doc_ends[-1:]]).tolist()
    return zip(is_val[np.concatenate([[0], change])].tolist(), starts, stops)


def dtype_for(vocab_size):
    """uint16 halves the files and the loader's reads; a vocabulary over 65,535 symbols needs uint32."""
    return np.uint16 if vocab_size <= 65535 else np.uint32


def write_error(path, e):
    """A UserError for an OSError while writing path: what went wrong and what to do (the previous bins are
    untouched: only temporary files were written)."""
    what = {errno.ENOSPC: "free some disk space or choose another --out_dir",
            errno.EFBIG: "the file size limit (ulimit -f) or the filesystem's is reached: raise it or choose "
                         "another --out_dir",
            errno.EDQUOT: "the disk quota is used up: free some space or choose another --out_dir",
            errno.EACCES: "choose an --out_dir you may write to", errno.EPERM: "choose an --out_dir you may write to",
            errno.EROFS: "the filesystem is read-only: choose another --out_dir",
            errno.EEXIST: "--out_dir must be a directory (or not exist yet)",
            errno.ENOTDIR: "--out_dir must be a directory (or not exist yet)"}.get(e.errno, "check --out_dir")
    return UserError(f"cannot write {path} ({e.strerror or e}): {what}; the previous train.bin / val.bin "
                     f"are untouched")


class Output:
    """train.bin / val.bin / meta.json in out_dir, written as hidden temporary files and renamed into
    place by commit(), so a failed or interrupted run never leaves half-written bins behind. An OSError
    while writing (a full disk, no permission, --out_dir a file) is a one-line UserError (write_error),
    raised as early as it can be known: the temporary files are created at once."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.final = {s: os.path.join(out_dir, f'{s}.bin') for s in ('train', 'val')}
        # the host and process in the name tell a killed run's files from those of a run still writing
        tag = f'{socket.gethostname()}.{os.getpid()}'
        self.tmp = {s: os.path.join(out_dir, f'.{s}.bin.{tag}.tmp') for s in ('train', 'val')}
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise write_error(out_dir, e) from None
        remove_stale(out_dir)
        for s in ('train', 'val'):
            with self.open(s):
                pass

    def open(self, split, mode='wb'):
        """A split's temporary file, opened (a UserError if it cannot be)."""
        try:
            return open(self.tmp[split], mode)
        except OSError as e:
            raise write_error(self.tmp[split], e) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.tmp.values():  # still there only if commit() did not run
            if os.path.exists(p):
                os.remove(p)

    def presize(self, split, n_tokens, dtype):
        with self.open(split) as f:
            try:
                f.truncate(n_tokens * np.dtype(dtype).itemsize)
            except OSError as e:
                raise write_error(self.tmp[split], e) from None

    def commit(self, meta, files=None):
        """Move the finished bins into place, then write files ({name: text}, e.g. tokenizer.json) and
        meta.json. (A kill between these few renames can leave new bins beside an old meta.json: prepare
        again.)"""
        path = os.path.join(self.out_dir, 'meta.json')
        try:
            for s in ('train', 'val'):
                commit(self.tmp[s], self.final[s])
            for name, text in (files or {}).items():
                with atomic_write(os.path.join(self.out_dir, name)) as f:
                    f.write(text.encode('utf-8'))
            with atomic_write(path, 'w') as f:
                json.dump(meta, f, ensure_ascii=False)
        except OSError as e:
            raise write_error(e.filename or path, e) from None


def remove_stale(out_dir):
    """Delete the temporary bins of earlier runs into out_dir that were killed (SIGKILL, a lost node): those
    of this host whose process is gone. Another host's are left alone: their process cannot be seen here."""
    host = socket.gethostname()
    for path in glob.glob(os.path.join(glob.escape(out_dir), '.*.bin.*.tmp')):
        name_host, _, pid = os.path.basename(path).split('.bin.', 1)[1][:-len('.tmp')].rpartition('.')
        if name_host != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running (another prepare into the same folder)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's process
        try:
            os.remove(path)
            print(f"removed {path}, left by a run that was killed", file=sys.stderr)
        except OSError:
            pass


def write_at(f, offset, arr):
    """Write arr into the pre-sized, open file f at element offset, in place: the file is the flat array
    that np.memmap reads, and os.pwrite is the memmap write without mapping pages into this process."""
    buf = memoryview(np.ascontiguousarray(arr)).cast('B')
    pos = offset * arr.itemsize
    while len(buf):
        try:
            n = os.pwrite(f.fileno(), buf, pos)
        except OSError as e:  # e.g. the disk is full: a UserError, also from a Ray worker (Workers._get)
            raise write_error(f.name, e) from None
        buf, pos = buf[n:], pos + n


def progress(total, desc, unit='B'):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1000, smoothing=0.1,
                dynamic_ncols=True, file=sys.stderr)
