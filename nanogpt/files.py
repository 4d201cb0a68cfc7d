"""
Writing files so that a kill at any moment (SIGKILL, a full disk, a power cut) leaves either the
old file or the new one, never a part of either; and the one folder where downloads and
measurements are kept between runs.
"""

import contextlib
import glob
import os


def cache_dir(*parts):
    """$XDG_CACHE_HOME/nanogpt (default ~/.cache/nanogpt), joined with parts: HellaSwag's download,
    the CPU's measured peak FLOP/s."""
    root = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
    return os.path.join(root, 'nanogpt', *parts)


@contextlib.contextmanager
def atomic_write(path, mode='wb', remove_stale=False):
    """Open a temporary file beside path for writing; when the block ends without an error, its
    bytes reach the disk, it is renamed over path, and the rename reaches the disk too. On any error
    (KeyboardInterrupt included) the temporary file is removed and path is untouched.
    remove_stale: first delete the temporary files of earlier writes of path that were killed (only
    where one process writes path at a time, such as rank 0's checkpoint; several ranks downloading
    the same file must leave each other's alone)."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = os.path.join(directory, f".{name}.tmp")
    if remove_stale:
        for stale in glob.glob(glob.escape(prefix) + '*'):
            os.remove(stale)
    tmp = f"{prefix}{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(directory)  # make the rename itself durable, so a power cut cannot bring back the old file


def commit(tmp, path):
    """Move a finished temporary file (written in place, e.g. by several workers at once) over path,
    with the same durability as atomic_write."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
