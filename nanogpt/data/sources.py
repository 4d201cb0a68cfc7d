"""
Where the text comes from and how it is cut: local files (.txt, .jsonl, .jsonl.gz, .parquet) and Hugging
Face datasets, read as chunks of whole documents of about --chunk_size bytes (the Corpus), so that
memory stays bounded whatever the corpus size and a chunk never needs its neighbours.
"""

import gzip
import json
import os
import sys
import urllib.request

from nanogpt.errors import UserError
from nanogpt.files import atomic_write

TEXT_EXTS = ('.txt',)
ROW_EXTS = ('.jsonl', '.jsonl.gz', '.parquet')
MiB = 1 << 20


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
    with atomic_write(path) as f:  # several processes (the ranks of a run) may download at once
        f.write(data)


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
