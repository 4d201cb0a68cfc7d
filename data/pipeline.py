"""The shared engine of the data preparation scripts (char.py and bpe.py build on it).

What lives here, once:
- cli(), which runs a prepare script so that a UserError is a single line on stderr and exit code 1;
- input sources: local files (.txt, .jsonl, .jsonl.gz, .parquet) and Hugging Face datasets, cut into
  chunks of about --chunk_size bytes so that memory stays bounded whatever the corpus size;
- Workers: an ordered, bounded map over Ray tasks, threads of this process, or plain in-process calls;
  choose_workers() picks among them for --num_workers auto, from measured speeds;
- the train/val split by documents with a fixed seed (val_mask);
- the output: train.bin / val.bin written to temporary files and renamed into place at the end,
  meta.json beside them.
A chunk is a whole number of documents, so a task never needs its neighbours; results come back
in order, so the output does not depend on the worker count.
"""
import argparse
import collections
import errno
import gzip
import json
import os
import sys
import tempfile
import urllib.request
from typing import NamedTuple, Optional

import numpy as np

from configurator import ConfigError, UserError, run  # the repository's one kind of user error

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_EXTS = ('.txt',)
ROW_EXTS = ('.jsonl', '.jsonl.gz', '.parquet')
MiB = 1 << 20


def cli(main):
    """Run a prepare script's main(): a UserError is one line on stderr (configurator.run), and so is Ctrl-C."""
    try:
        run(main)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad option is one line on stderr and exit status 2 (ConfigError), as every
    other mistake a user can fix, rather than the usage text and the error. The description is printed
    as written (a script's docstring)."""

    def __init__(self, **kw):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message):
        raise ConfigError(f"{message} (see --help)")


def add_common_args(p, chunk_size, out_dir, val_fraction=0.0005, seed=2357, split_unit='documents (seeded)',
                    rows=True):
    """The options the prepare scripts share. A script offers only those it uses: chunk_size=None, no
    --chunk_size (a corpus held in memory); seed=None, no --seed (a split that is not random); rows=False,
    .txt inputs only and no --text_field."""
    if rows:
        p.add_argument('--input', nargs='+', metavar='PATH',
                       help='local files instead of downloading: .txt, .jsonl, .jsonl.gz or .parquet')
        p.add_argument('--text_field', default='text', metavar='NAME',
                       help='the field (column) that holds the text in .jsonl / .parquet inputs and Hugging Face '
                            'datasets (default: %(default)s)')
    else:
        p.add_argument('--input', nargs='+', metavar='PATH', help='a local .txt file instead of downloading')
    p.add_argument('--out_dir', default=out_dir, help='where train.bin, val.bin and meta.json go (default: %(default)s)')
    p.add_argument('--num_workers', type=parse_workers, default='auto',
                   help="'auto' (default): this process, or Ray where the corpus is large enough for Ray's start-up "
                        "to pay off (always with --ray_address); N: exactly N workers, 1 in this process without Ray, "
                        "N > 1 as Ray tasks")
    if chunk_size is not None:
        p.add_argument('--chunk_size', type=parse_size, default=chunk_size,
                       help='bytes of text per chunk, e.g. 16M or 1000000; a worker holds one chunk at a time '
                            '(default: %(default)s)')
    p.add_argument('--ray_address', default=None,
                   help='join a running Ray cluster (e.g. "auto" or host:port) instead of starting a local one')
    p.add_argument('--val_fraction', type=float, default=val_fraction,
                   help=f'fraction of the {split_unit} that go to val.bin (default: %(default)s)')
    if seed is not None:
        p.add_argument('--seed', type=int, default=seed, help='seed of the train/val split (default: %(default)s)')
    return p


def parse_size(s):
    """'16M' -> 16 MiB, '512K' -> 512 KiB, '1000' -> 1000 bytes."""
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    s = str(s).strip().upper().rstrip('B')
    try:
        n = int(float(s[:-1]) * units[s[-1]]) if s and s[-1] in units else int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (use e.g. 16M, 512K or a number of bytes)")
    if n < 64:
        raise argparse.ArgumentTypeError("chunk size must be at least 64 bytes")
    return n


def parse_workers(s):
    """--num_workers: 'auto' or a positive number."""
    if str(s).strip().lower() == 'auto':
        return 'auto'
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of workers, got {s!r}")
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (or 'auto')")
    return n


def check_args(args):
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError("--val_fraction must be in [0, 1)")
    if getattr(args, 'text_field', 'text') != 'text' and args.input and all(map(is_text_file, args.input)):
        raise UserError("--text_field names a field of .jsonl / .parquet inputs or of a dataset; .txt inputs "
                        "have none (their documents are separated by <|endoftext|>)")


# ----------------------------------------------------------------------------- input sources

def check_inputs(paths, exts=TEXT_EXTS + ROW_EXTS, text_field='text'):
    """Fail early, in one line, on a missing file, an extension we cannot read or a missing text field."""
    for p in paths:
        if not os.path.isfile(p):
            raise UserError(f"input file not found: {p}")
        if not p.lower().endswith(exts):
            raise UserError(f"unsupported input {p}: expected one of {', '.join(exts)}")
        if not is_text_file(p):  # a wrong schema is reported now, not after the progress bars started
            next(_iter_texts(p, text_field), None)
    return list(paths)


def is_text_file(path):
    return path.lower().endswith(TEXT_EXTS)


def text_ranges(path, chunk_size, sep=None):
    """Cut a text file into byte ranges of about chunk_size. A range never splits a UTF-8 character and,
    when sep is given, always ends just after a separator (or at the end of the file), so that no
    document is cut in two. Only a few bytes around each boundary are read here."""
    size = os.path.getsize(path)
    start = 0
    with open(path, 'rb') as f:
        while start < size:
            end = min(start + chunk_size, size)
            if end < size:
                end = _next_boundary(f, end, size, sep)
            yield start, end
            start = end


def _next_boundary(f, pos, size, sep):
    if sep is None:  # step over UTF-8 continuation bytes (0b10xxxxxx)
        f.seek(pos)
        for i, b in enumerate(f.read(4)):
            if b & 0xC0 != 0x80:
                return pos + i
        return min(pos + 4, size)
    pos = max(pos - len(sep) + 1, 0)  # a separator may straddle the nominal boundary
    while pos < size:
        f.seek(pos)
        window = f.read(64 << 10)  # documents are KBs long: a separator is usually in the first window
        i = window.find(sep)
        if i >= 0:
            return pos + i + len(sep)
        if pos + len(window) >= size:
            break
        pos += len(window) - len(sep) + 1
    return size


def read_range(path, start, end):
    with open(path, 'rb') as f:
        f.seek(start)
        return f.read(end - start)


def iter_row_batches(path, batch_bytes, text_field='text'):
    """Lists of documents (the text_field of each row) of about batch_bytes characters from .jsonl(.gz) or .parquet."""
    return _batched(_iter_texts(path, text_field), batch_bytes)


def _batched(texts, batch_bytes):
    """Consecutive texts, grouped into lists of about batch_bytes characters."""
    batch, n = [], 0
    for text in texts:
        batch.append(text)
        n += len(text)
        if n >= batch_bytes:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


def _iter_texts(path, field):
    if path.lower().endswith('.parquet'):
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(path)
        if field not in pf.schema_arrow.names:
            raise UserError(f"{path} has no {field!r} column (columns: {', '.join(pf.schema_arrow.names)}); "
                            f"name the one with the text with --text_field")
        for rb in pf.iter_batches(batch_size=1024, columns=[field]):
            yield from (t for t in rb.column(0).to_pylist() if t is not None)
        return
    opener = gzip.open if path.lower().endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            yield from _parse_jsonl(f, path, field)
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}")


def _parse_jsonl(lines, path, field):
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row[field]
        except (ValueError, TypeError):
            raise UserError(f"{path}: expected one JSON object per line, got "
                            f"{bytes(line[:60]).decode('utf-8', 'replace')!r}")
        except KeyError:
            raise UserError(f"{path}: a row has no {field!r} field (fields: {', '.join(map(str, row))}); "
                            f"name the one with the text with --text_field")
        if text is not None:
            yield text


def load_hf_dataset(name, config=None, split='train', streaming=False, revision=None):
    """A Hugging Face dataset, or a one-line error that says how to work offline."""
    if 'datasets' not in sys.modules and not _hub_reachable():
        # without this the hub client retries for ~25 s, printing a warning each time, before failing;
        # offline mode still finds a dataset downloaded earlier in the local cache
        os.environ['HF_HUB_OFFLINE'] = '1'
    try:
        import datasets
        return datasets.load_dataset(name, config, split=split, streaming=streaming, revision=revision)
    except Exception as e:  # the hub raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if 'scripts are no longer supported' in first:  # datasets >= 4 runs no loading scripts
            raise UserError(f"{name} still ships a loading script, which datasets >= 4 does not run: try "
                            f"--revision refs/convert/parquet (the hub's parquet export), or download its files "
                            f"and pass them with --input")
        raise UserError(f"cannot load the Hugging Face dataset {name}{'/' + config if config else ''} ({first}); "
                        f"offline, pass local files with --input FILE [FILE ...] (.txt, .jsonl, .jsonl.gz or .parquet "
                        f"with a 'text' field, or another one named by --text_field)")


TINY_SHAKESPEARE = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def download(url, path, offline="pass a local copy of the text with --input PATH"):
    """A small file (tiny shakespeare, HellaSwag) to path, whole or not at all, or a one-line error that says how
    to work offline."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise UserError(f"cannot download {url} ({getattr(e, 'reason', e)}); offline, {offline} (or save it as {path})")
    tmp = f"{path}.{os.getpid()}.part"  # several processes (the ranks of a run) may download at once
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def _hub_reachable(timeout=5):
    """A quick look for the Hugging Face hub (behind a proxy we cannot tell: assume yes)."""
    if os.environ.get('HF_HUB_OFFLINE') or os.environ.get('HF_DATASETS_OFFLINE'):
        return False
    if any(os.environ.get(k) for k in ('https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY')):
        return True
    import socket
    import urllib.parse
    url = urllib.parse.urlparse(os.environ.get('HF_ENDPOINT') or 'https://huggingface.co')
    try:  # a mirror may run on a port of its own (HF_ENDPOINT=http://mirror:8080)
        port = url.port or (80 if url.scheme == 'http' else 443)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):  # ValueError: a port that is not a number
        return False


def iter_hf_batches(ds, batch_bytes, text_field='text', rows_per_read=1000):
    """Lists of documents (the text_field column) of about batch_bytes characters from a HF dataset (streaming
    or not)."""
    return _batched(_hf_texts(ds, text_field, rows_per_read), batch_bytes)


def _check_hf_column(columns, field):
    if field not in columns:
        raise UserError(f"the dataset has no {field!r} column (columns: {', '.join(columns)}); "
                        f"name the one with the text with --text_field")


def _hf_texts(ds, field, rows_per_read):
    for rows in ds.iter(batch_size=rows_per_read):
        _check_hf_column(rows, field)
        yield from rows[field]


# ----------------------------------------------------------------------------- corpus

SEPARATOR = '<|endoftext|>'  # between documents in .txt inputs, as in the TinyStories and OpenWebText dumps
# text bytes per byte on disk of compressed inputs (c4_sample_1000docs.jsonl.gz, and it as snappy parquet)
COMPRESSION = {'.jsonl.gz': 2.4, '.parquet': 1.65}


class Corpus:
    """The text to prepare: local files (--input), a Hugging Face dataset, or batches of documents in
    memory, handed out as chunks of whole documents of about chunk_size bytes. A chunk is a small
    description: ('file', path, start, end, last, text_field) for a byte range of a .txt or .jsonl file
    (the worker reads it itself, so the text never passes through this process), or ('texts', [documents])
    for rows of .jsonl.gz / .parquet / a dataset. text_field: the field of a row (.jsonl, .parquet, a
    dataset) that holds its text. chunks() can be called again for a second pass."""

    def __init__(self, paths=None, dataset=None, name=None, batches=None, text_field='text'):
        self.paths, self.dataset, self.batches, self.text_field = paths, dataset, batches, text_field
        if dataset is not None and getattr(dataset, 'column_names', None):  # None: a stream that does not know yet
            _check_hf_column(dataset.column_names, text_field)
        self.name = name or (', '.join(os.path.basename(p) for p in paths) if paths else 'a dataset')
        # every chunk a byte range that the worker reads itself (.txt and .jsonl files only)
        self.byte_ranges = bool(paths) and all(_is_byte_range_file(p) for p in paths)
        if batches is not None:  # documents already in memory (tiny shakespeare)
            self.total_bytes = sum(len(d) for b in batches for d in b)
        elif paths:  # exact for byte ranges; compressed and columnar files are counted in text bytes
            self.total_bytes = sum(os.path.getsize(p) for p in paths) if self.byte_ranges else None
        else:
            try:  # an estimate (Arrow buffers) for a downloaded dataset; unknown when streaming
                self.total_bytes = dataset.data.nbytes
            except AttributeError:
                self.total_bytes = None

    def text_bytes(self):
        """About how many bytes of text there are, to choose the workers (None: unknown, a streamed dataset).
        Compressed files count as COMPRESSION times their size on disk."""
        if self.total_bytes is not None or not self.paths:
            return self.total_bytes
        return int(sum(os.path.getsize(p) * next((r for ext, r in COMPRESSION.items() if p.lower().endswith(ext)), 1)
                       for p in self.paths))

    def chunks_per_task(self, chunk_size, num_workers):
        """How many consecutive chunks one Ray task should run. A task costs milliseconds of scheduling
        across the driver, the raylet and the worker, CPU that a small machine takes from the work
        (bench/prepare_char.py shows the difference). Byte ranges of local files are grouped to about
        two tasks per worker, at most 16 chunks each to keep progress and load balance fine-grained:
        their description is all a task receives, and it reads and processes one chunk at a time,
        so memory stays one chunk per worker. Chunks that carry their documents are not grouped."""
        if not self.byte_ranges:
            return 1
        n_chunks = self.total_bytes // chunk_size + 1
        return max(1, min(16, n_chunks // (2 * num_workers)))

    def chunks(self, chunk_size, sep=SEPARATOR):
        sep_b = sep.encode() if sep else None
        if self.batches is not None:
            yield from (('texts', b) for b in self.batches)
            return
        if self.dataset is not None:
            for texts in iter_hf_batches(self.dataset, chunk_size, self.text_field):
                yield ('texts', texts)
            return
        for path in self.paths:
            if _is_byte_range_file(path):  # byte ranges, read by the workers
                ranges = list(text_ranges(path, chunk_size, sep_b if is_text_file(path) else b'\n'))
                for i, (start, end) in enumerate(ranges):
                    yield ('file', path, start, end, i == len(ranges) - 1, self.text_field)
            else:  # compressed or columnar: read here, documents shipped to the workers
                for texts in iter_row_batches(path, chunk_size, self.text_field):
                    yield ('texts', texts)


def _is_byte_range_file(path):
    return is_text_file(path) or path.lower().endswith('.jsonl')


def chunk_progress(chunk, n_text_bytes):
    """Bytes to count on a progress bar for a chunk: file bytes for byte ranges, text bytes for rows."""
    return chunk[3] - chunk[2] if chunk[0] == 'file' else n_text_bytes


def chunk_documents(chunk):
    """The documents of a chunk. In a .txt file they are the text between separators; the text around a
    separator is kept as it is, only a whitespace-only remainder after a file's last separator (its final
    newline) is dropped. In .jsonl they are the rows' text fields."""
    if chunk[0] == 'texts':
        return chunk[1]
    _, path, start, end, last, field = chunk
    buf = read_range(path, start, end)
    if path.lower().endswith('.jsonl'):
        return list(_parse_jsonl(buf.splitlines(), path, field))
    try:
        text = buf.decode('utf-8')
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 (byte {start + e.start})")
    docs = text.split(SEPARATOR)
    if docs[-1] == '' or (last and not docs[-1].strip()):
        docs.pop()
    return docs


# ----------------------------------------------------------------------------- choosing the workers

# Import Ray, start a local Ray with its workers, shut it down: what a run on Ray pays before and after
# its first chunk, measured with bench/prepare_char.py on the machine in the README ("Choosing the
# workers"). A running cluster (--ray_address) pays none of it.
RAY_FIXED_S = 6.7


class Speed(NamedTuple):
    """A pipeline's measured speed (bench/prepare_char.py, bench/prepare_bpe.py), which --num_workers auto
    weighs against RAY_FIXED_S. The figures are from one machine, but a faster one also starts Ray faster,
    so the corpus size where Ray starts to pay off moves less than either."""
    mb_per_s: float  # one worker in this process, input MB per second
    ray_efficiency: float  # N Ray workers run ray_efficiency * N times as fast as one (the driver's share included)
    gil_share: Optional[float] = None  # share of one worker's time that holds the GIL: N threads of this process
    # run 1 / (gil_share + (1 - gil_share) / N) times as fast as one (Amdahl); None: no threads


class Plan(NamedTuple):
    """How a pipeline runs: 'process' (plain calls here), 'threads' (of this process) or 'ray' (tasks, on a
    local Ray or the cluster at address; workers None: all the cluster's CPUs), and why, for the log."""
    kind: str
    workers: Optional[int]
    reason: str
    address: Optional[str] = None


def choose_workers(requested, n_bytes, speed, ray_address=None, cpus=None):
    """The Plan for --num_workers (a number, or 'auto') on a corpus of about n_bytes (None: unknown, e.g.
    streaming). auto: Ray with --ray_address; else the fastest of one worker in this process, threads
    (where speed allows), or a local Ray on every CPU, counting Ray's fixed start-up and shutdown cost."""
    if isinstance(requested, Plan):  # chosen by the caller (a benchmark)
        return requested
    if requested != 'auto':
        kind = 'process' if requested == 1 and ray_address is None else 'ray'
        return Plan(kind, requested, f"--num_workers {requested}", ray_address)
    if ray_address is not None:
        return Plan('ray', None, f"--ray_address {ray_address}", ray_address)
    cpus = cpus or os.cpu_count() or 1
    size = f"{n_bytes / 1e6:,.0f} MB" if n_bytes is not None else "corpus size unknown"
    local = Plan('process', 1, '')
    local_speedup = 1.0
    if speed.gil_share is not None and cpus > 1:
        local = Plan('threads', cpus, '')
        local_speedup = 1 / (speed.gil_share + (1 - speed.gil_share) / cpus)
    ray_speedup = speed.ray_efficiency * cpus
    if ray_speedup <= local_speedup:
        return local._replace(reason=f"{size}; on {cpus} CPU{'s' * (cpus > 1)} Ray would run at {ray_speedup:.2f}x "
                                     f"one worker, this process at {local_speedup:.2f}x")
    # Ray wins when the time it saves, n_bytes / rate * (1 / local_speedup - 1 / ray_speedup), exceeds its fixed cost
    threshold = RAY_FIXED_S * speed.mb_per_s * 1e6 / (1 / local_speedup - 1 / ray_speedup)
    why = f"Ray's ~{RAY_FIXED_S:g} s start-up pays off above {threshold / 1e6:,.0f} MB on {cpus} CPUs"
    if n_bytes is not None and n_bytes <= threshold:
        return local._replace(reason=f"{size}; {why}")
    return Plan('ray', cpus, f"{size}; {why}")


# ----------------------------------------------------------------------------- workers

def start_ray(num_workers=None, address=None):
    """ray.init for the data pipelines: a local Ray with num_workers CPUs, or join the cluster at address.
    Returns the number of workers to keep busy: num_workers, or the cluster's CPUs if it is None."""
    import ray
    # the workers import data.* by name: make the repository importable for them
    os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')]))
    # Ray runs its workers at nice 15; preparing the data is the job here, so run them like this process
    os.environ.setdefault('RAY_worker_niceness', '0')
    if not address:
        ray.init(include_dashboard=False, configure_logging=False, num_cpus=num_workers,
                 object_store_memory=max(256 * MiB, 64 * MiB * num_workers))
    else:
        _join_ray(ray, address)
    num_workers = num_workers or max(1, int(ray.cluster_resources().get('CPU', 1)))
    # the first tasks of a new job wait ~0.4 s for their workers to be leased (even a no-op does):
    # pay that here, as part of starting Ray, rather than inside the first pass
    ray.get([ray.remote(num_cpus=1, scheduling_strategy='SPREAD')(_ready).remote() for _ in range(num_workers)])
    return num_workers


def _join_ray(ray, address):
    """ray.init(address), or one line that says why not. While it cannot connect, Ray's C++ client logs a
    warning a second for ~20 s on stderr: that output is shown only if the connection succeeds."""
    # the workers of a running cluster do not inherit this environment: pass on what they read
    env = {k: os.environ[k] for k in ('PYTHONPATH', 'TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR') if k in os.environ}
    token = ("; a cluster started by `ray start --head` wants its token: set RAY_AUTH_MODE=token for this script "
             "too, and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH if the token is not in ~/.ray/auth_token")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            ray.init(address=address, runtime_env=dict(env_vars=env), include_dashboard=False, configure_logging=False)
        except ray.exceptions.AuthenticationError:
            raise UserError(f"cannot join the Ray cluster at {address}: not authenticated{token}")
        except ConnectionError as e:
            raise UserError(f"cannot join the Ray cluster at {address} ({e}){token}")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        sys.stderr.write(log.read().decode(errors='replace'))


def _ready():
    return True


def _call_each(fn, calls, *shared):
    """One Ray task that makes several calls, so that they share one task's scheduling cost. The node it
    ran on comes back too, for the count of tasks per node."""
    import ray
    return ray.get_runtime_context().get_node_id(), [fn(*args, *shared) for args in calls]


def _groups(items, n):
    """Consecutive items in lists of n (the last one shorter)."""
    group = []
    for item in items:
        group.append(item)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


class Workers:
    """An ordered map over the workers of a Plan (choose_workers), with at most 2 calls per worker in
    flight, so memory stays bounded however many chunks there are. 'process': plain calls, so a small job
    pays no Ray start-up. 'threads': a thread pool of this process, for work that releases the GIL.
    'ray': Ray tasks; a Ray already initialised in this process (a benchmark, a test fixture) is reused
    and left running. Says in one line what runs and why, and, on Ray, how many tasks ran on each node."""

    def __init__(self, plan):
        self.kind, self.num_workers, self.ray = plan.kind, plan.workers or 1, None
        self.started_ray = False
        self.tasks_per_node = collections.Counter()
        if self.kind == 'ray':
            try:
                import ray
            except ImportError:
                raise UserError("--num_workers above 1 runs on Ray, which is not installed: pip install ray, "
                                "or pass --num_workers 1")
            self.ray = ray
            if not ray.is_initialized():
                self.num_workers = start_ray(plan.workers, plan.address)
                self.started_ray = True
            elif plan.workers is None:
                self.num_workers = max(1, int(ray.cluster_resources().get('CPU', 1)))
        where = {'process': 'in this process', 'threads': 'threads in this process',
                 'ray': 'Ray workers' + (f' on the cluster at {plan.address}' if plan.address else '')}[self.kind]
        print(f"workers: {self.num_workers} {where} ({plan.reason})", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started_ray:
            self.ray.shutdown()
        if exc[0] is None and self.tasks_per_node:
            nodes = ', '.join(f"{node[:8]} {n}" for node, n in self.tasks_per_node.most_common())
            print(f"ray: {sum(self.tasks_per_node.values())} tasks on {len(self.tasks_per_node)} "
                  f"node{'s' * (len(self.tasks_per_node) > 1)} ({nodes})", flush=True)

    def map(self, fn, arg_tuples, shared=(), group=1):
        """Yield fn(*args, *shared) for each args, in order. shared: arguments that every call gets,
        sent to the workers once (a lookup table). With Ray, each task makes `group` consecutive calls:
        fewer, longer tasks where a task's scheduling would cost a noticeable part of one call."""
        if self.kind == 'process':
            for args in arg_tuples:
                yield fn(*args, *shared)
        elif self.kind == 'threads':
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(self.num_workers) as pool:
                yield from self._ordered((pool.submit(fn, *args, *shared) for args in arg_tuples),
                                         lambda f: [f.result()], lambda f: f.cancel())
        else:
            # in the object store once, rather than serialised again into every task's arguments
            shared = [self.ray.put(x) for x in shared]
            # SPREAD: over all the nodes of a cluster, rather than filling the driver's node first.
            # max_retries: a task whose worker process dies is run again, which is safe because every call
            # is idempotent (it returns its result, or writes its own slice of the output files)
            remote = self.ray.remote(num_cpus=1, scheduling_strategy='SPREAD', max_retries=3)(_call_each)
            yield from self._ordered((remote.remote(fn, calls, *shared) for calls in _groups(arg_tuples, group)),
                                     self._get, self.ray.cancel)

    def _ordered(self, submitted, results, cancel):
        """The results of submitted jobs, in order, with at most 2 per worker in flight."""
        pending = collections.deque()
        try:
            for job in submitted:
                pending.append(job)
                if len(pending) >= 2 * self.num_workers:
                    yield from results(pending.popleft())
            while pending:
                yield from results(pending.popleft())
        finally:
            for job in pending:  # an error or an early stop: do not leave work running
                cancel(job)

    def _get(self, ref):
        try:
            node, results = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, UserError):  # e.g. invalid UTF-8 found by a worker
                raise UserError(str(e.cause)) from None
            raise
        self.tasks_per_node[node] += 1
        return results


# ----------------------------------------------------------------------------- split and output

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
        self.tmp = {s: os.path.join(out_dir, f'.{s}.bin.{os.getpid()}.tmp') for s in ('train', 'val')}
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise write_error(out_dir, e) from None
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

    def commit(self, meta):
        meta_tmp = os.path.join(self.out_dir, f'.meta.json.{os.getpid()}.tmp')
        try:
            try:
                with open(meta_tmp, 'w') as f:
                    json.dump(meta, f, ensure_ascii=False)
                for s in ('train', 'val'):
                    os.replace(self.tmp[s], self.final[s])
                os.replace(meta_tmp, os.path.join(self.out_dir, 'meta.json'))
            except OSError as e:
                raise write_error(e.filename or meta_tmp, e) from None
        finally:
            if os.path.exists(meta_tmp):
                os.remove(meta_tmp)


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
