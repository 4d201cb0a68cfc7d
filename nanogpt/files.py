"""
Writing files so that a kill at any moment (SIGKILL, a full disk, a power cut) leaves either the
old file or the new one, never a part of either; and the one folder where downloads and
measurements are kept between runs, with the measurements of this machine's CPU in it.
"""

import contextlib
import glob
import json
import os
import platform


def cache_dir(*parts):
    """$XDG_CACHE_HOME/nanogpt (default ~/.cache/nanogpt), joined with parts: HellaSwag's download,
    the CPU's measured peak FLOP/s, the data pipelines' speed on this CPU."""
    root = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
    return os.path.join(root, 'nanogpt', *parts)


def cached_measurement(file_name, key, measure, valid):
    """What measure() gives on this CPU for key (e.g. a thread count and a dtype), measured once per CPU
    model and key, then read from cache_dir(file_name): (value, the cache file's path). An entry that is
    missing, or that valid(entry) rejects (a file edited or cut short), is measured again."""
    value = recorded_measurement(file_name, key)
    try:
        ok = valid(value)
    except (IndexError, TypeError, ValueError):
        ok = False
    if not ok:
        value = measure()
        record_measurement(file_name, key, value)
    return value, cache_dir(file_name)


def recorded_measurement(file_name, key):
    """The value recorded for key on this CPU model in cache_dir(file_name), or None."""
    return _read_measurements(cache_dir(file_name)).get(_cpu_key(key))


def record_measurement(file_name, key, value):
    """Record value for key on this CPU model in cache_dir(file_name), beside the other entries. A cache that
    cannot be written is skipped: the figure is measured again next time."""
    path = cache_dir(file_name)
    cache = _read_measurements(path)
    cache[_cpu_key(key)] = value
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, 'w') as f:  # several processes may measure at once
            json.dump(cache, f, indent=1)
    except OSError:
        pass


def _cpu_key(key):
    return f"{platform.processor() or platform.machine()}|{cpu_model()}|{key}"


def _read_measurements(path):
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), '')
    except OSError:
        return ''


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
