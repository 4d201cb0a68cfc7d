"""Character-level tokenization of corpora of any size, in two streamed passes over chunks of the text.

Pass 1 (scan_chunk) finds, per chunk, the characters used and the length of each document in
characters. The vocabulary is the sorted set of characters, as in nanoGPT (plus <|endoftext|> in
stories mode), and the lengths fix where each chunk's tokens go in train.bin / val.bin.
Pass 2 (encode_chunk) encodes each chunk and writes its tokens straight into the pre-sized output
files at the offsets from pass 1. Neither pass holds more than a chunk (and its token array) per
worker, so memory does not grow with the corpus, and every chunk is independent, so the chunks run
as Ray tasks on any number of workers with byte-identical output.

Both passes work on the raw UTF-8 bytes. The obvious numpy route (bytes -> str -> UTF-32 array ->
lookup table) runs at ~90 MB/s on one core, most of it in str.encode('utf-32'). Instead, ASCII bytes
map to ids through one bytes.translate (ASCII characters sort first, so their ids are < 128), and the
few multi-byte characters are decoded from their byte positions, vectorised, and patched in (see
bench/prepare_char.py for the resulting speed).

Two modes:
- chars mode (stories=False, shakespeare_char): the text is one stream; the first (1 - val_fraction)
  of its characters go to train.bin and the rest to val.bin, exactly nanoGPT's split.
- stories mode (stories=True, tinystories_char): documents are separated by "<|endoftext|>" in .txt
  files (and are the rows of .jsonl / .parquet / datasets). Each separator becomes ONE vocabulary
  symbol, "<|endoftext|>", the last id; it ends every document (one is added after a file's last
  document if the file does not end with one). The text around it (TinyStories puts it on a line of
  its own) is kept, so decoding gives back the input's layout. Whole documents go to val.bin with
  probability val_fraction, decided by a hash of (seed, document index): no document straddles the
  split.
"""
import threading

import numpy as np

from nanogpt.data.output import Output, dtype_for, progress, split_runs, val_mask, write_at
from nanogpt.data.sources import SEPARATOR, chunk_documents, chunk_progress, is_text_file, read_range
from nanogpt.data.workers import Workers, choose_workers, measured_speed
from nanogpt.errors import UserError

# N Ray workers run RAY_EFFICIENCY * N times as fast as one (bench/prepare_char.py; docs/data.md, "Choosing the
# workers"): the driver's share and each task's scheduling. A stand-in until a run on a local Ray has measured
# it here (workers.RAY_SHARE_FILE); one worker's speed is measured on the CPU at hand (speed()).
RAY_EFFICIENCY = 0.6
SEP = SEPARATOR.encode()
NO_INT = np.zeros(0, np.int64)


# ----------------------------------------------------------------------------- per chunk (run in workers)

def _chunk_bytes(chunk, stories):
    """(buf, n, where, base): the chunk's UTF-8 bytes, how many of them to use, and where they come from
    (for error messages)."""
    if chunk[0] == 'texts' or not is_text_file(chunk[1]):
        docs = chunk_documents(chunk)
        try:  # rows are documents: join them with the separator so both kinds of input take one path
            buf = (SEPARATOR.join(docs) + SEPARATOR if stories else ''.join(docs)).encode('utf-8')
        except UnicodeEncodeError as e:
            raise UserError(f"a document is not valid Unicode text: {e}")
        return buf, len(buf), 'a batch of documents', 0
    _, path, start, end, last, _ = chunk
    buf = read_range(path, start, end)
    n = len(buf)
    if stories and last:  # drop a whitespace-only remainder after the file's last separator
        i = buf.rfind(SEP)
        tail = i + len(SEP) if i >= 0 else 0
        if not buf[tail:].strip():
            n = tail
    return buf, n, path, start


def _utf8(u8, ascii_only, where, base):
    """Positions of the multi-byte characters' lead bytes, their code points, and the positions of all
    continuation bytes, for a UTF-8 buffer. Invalid UTF-8 is a UserError. Only the non-ASCII bytes are
    touched after one vectorised scan, so mostly-ASCII text costs little."""
    if ascii_only:
        return NO_INT, NO_INT.astype(np.uint32), NO_INT
    hi = np.flatnonzero(u8 >= 0x80)
    b = u8[hi]
    lead, cont = hi[b >= 0xC0], hi[b < 0xC0]
    lb = u8[lead].astype(np.uint32)
    width = 2 + (lb >= 0xE0) + (lb >= 0xF0)
    last = len(u8) - 1
    c1, c2, c3 = (u8[np.minimum(lead + k, last)].astype(np.uint32) & 0x3F for k in (1, 2, 3))
    cp = np.where(width == 2, ((lb & 0x1F) << 6) | c1,
                  np.where(width == 3, ((lb & 0x0F) << 12) | (c1 << 6) | c2,
                           ((lb & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3))
    # valid iff every lead is followed by exactly width-1 continuation bytes, there are no other
    # continuation bytes, and the code point is not overlong, a surrogate or beyond U+10FFFF
    ok = (len(cont) == int((width - 1).sum())) and bool(np.all(lb <= 0xF4))
    if ok and len(lead):
        for k in (1, 2, 3):
            need = width > k
            pos = lead[need] + k
            ok = ok and bool(np.all(pos <= last)) and bool(np.all((u8[np.minimum(pos, last)] & 0xC0) == 0x80))
        minimum = np.array([0, 0, 0x80, 0x800, 0x10000], np.uint32)[width]
        ok = ok and bool(np.all((cp >= minimum) & (cp <= 0x10FFFF) & ((cp < 0xD800) | (cp > 0xDFFF))))
    if not ok:
        raise UserError(f"{where} is not valid UTF-8 (in the bytes from offset {base})")
    return lead, cp, cont


def _find_all(u8, pattern):
    """Start positions of the (non-overlapping) occurrences of a byte pattern, vectorised."""
    p = np.frombuffer(pattern, np.uint8)
    cand = np.flatnonzero(u8[:len(u8) - len(p) + 1] == p[0])
    for k in range(1, len(p)):
        cand = cand[u8[cand + k] == p[k]]
    return cand


def _documents(n, seps, cont):
    """Character length of each document (between separators) and whether the last one has no separator."""
    starts = np.concatenate([[0], seps + len(SEP)])
    ends = np.concatenate([seps, [n]])
    open_end = ends[-1] > starts[-1]  # text after the last separator: a document that needs its own EOT
    if not open_end:
        starts, ends = starts[:-1], ends[:-1]
    lens = (ends - starts) - (np.searchsorted(cont, ends) - np.searchsorted(cont, starts))
    return lens, open_end


def _ascii_used(buf, n, n_seps):
    """The ASCII characters used in buf[:n] outside separators. Looking at every byte with numpy costs
    more than the rest of the pass, so: the characters of a 64 KiB sample are surely used; one
    bytes.translate deletes them from the whole chunk, and only the (small) remainder is looked at."""
    k = min(n, 1 << 16)
    cut = buf.rfind(SEP[:1], max(k - len(SEP) + 1, 0), k)  # do not leave a separator cut in two in the sample
    sample = buf[:cut if cut >= 0 else k].replace(SEP, b'')
    known = bytes(c for c in set(sample) if c < 128)
    rest = (buf if n == len(buf) else buf[:n]).translate(None, known)
    used = set(known) | {c for c in set(rest) if c < 128}
    for c in set(SEP) - set(known):  # seen only in the remainder: used outside separators if more often
        if c in used and rest.count(bytes([c])) == n_seps * SEP.count(c):
            used.discard(c)
    return np.array(sorted(used), np.uint32)


def scan_chunk(chunk, stories):
    """Pass 1: (bytes scanned, sorted code points used, document lengths in characters)."""
    buf, n, where, base = _chunk_bytes(chunk, stories)
    u8 = np.frombuffer(buf, np.uint8, count=n)
    lead, cp, cont = _utf8(u8, buf.isascii(), where, base)
    if stories:
        seps = _find_all(u8, SEP)
        lens, _ = _documents(n, seps, cont)
    else:
        seps, lens = NO_INT, np.array([n - len(cont)], np.int64)
    present = np.union1d(_ascii_used(buf, n, len(seps)), cp).astype(np.uint32)
    return chunk_progress(chunk, len(buf)), present, lens


CONTINUATION = bytes(range(0x80, 0xC0))
MARK = 0xFF  # never occurs in UTF-8: stands for a separator while encoding


def encode_chunk(chunk, plan, stories, lut, eot, dtype, paths):
    """Pass 2: encode a chunk and write its tokens into the pre-sized train/val files at plan's offsets."""
    buf, n, where, base = _chunk_bytes(chunk, stories)
    size = chunk_progress(chunk, len(buf))
    u8 = np.frombuffer(buf, np.uint8, count=n)
    lead, cp, cont = _utf8(u8, buf.isascii(), where, base)
    if n < len(buf):
        buf = buf[:n]
    seps = NO_INT
    if stories:  # each separator becomes one MARK byte (split + join beats bytes.replace here)
        parts = buf.split(SEP)
        part_len = np.fromiter(map(len, parts), np.int64, len(parts))
        seps = np.cumsum(part_len[:-1]) + len(SEP) * np.arange(len(parts) - 1)  # separator positions in buf
        buf = bytes([MARK]).join(parts)
        del parts
    # one byte per character: ASCII bytes become their ids (< 128), lead bytes of multi-byte characters
    # and MARK stay as they are (>= 0xC0), continuation bytes are deleted
    table = bytearray(range(256))
    table[:128] = lut[:128].astype(np.uint8).tobytes()
    ids = np.frombuffer(buf.translate(table, CONTINUATION), np.uint8).astype(dtype)

    def char_index(pos):  # byte position in the input -> index in ids (continuation bytes and
        # the 12 other bytes of each earlier separator are gone); positions stay sparse, no full scans
        return pos - np.searchsorted(cont, pos) - (len(SEP) - 1) * np.searchsorted(seps, pos)
    if len(lead):
        ids[char_index(lead)] = lut[cp]
    if not stories:
        char_start, n_train = plan
        k = min(max(n_train - char_start, 0), len(ids))
        _write(paths['train'], char_start, ids[:k])
        _write(paths['val'], char_start + k - n_train, ids[k:])
        return size
    ends = char_index(seps) + 1  # end of each document, its <|endoftext|> included
    ids[ends - 1] = eot
    if len(ids) > (ends[-1] if len(ends) else 0):  # text after the last separator gets its own <|endoftext|>
        ids = np.append(ids, np.array([eot], dtype))
        ends = np.append(ends, len(ids))
    if not len(ends):
        return size
    # whole documents to train or val: write each run of consecutive same-split documents as one slice
    doc_start, train_off, val_off, seed, val_fraction = plan
    is_val = val_mask(doc_start, len(ends), seed, val_fraction)
    off = [train_off, val_off]
    with open(paths['train'], 'r+b') as ft, open(paths['val'], 'r+b') as fv:
        for v, a, b in split_runs(ends, is_val):
            write_at(fv if v else ft, off[v], ids[a:b])
            off[v] += b - a
    return size


def _write(path, offset, arr):
    if len(arr):
        with open(path, 'r+b') as f:
            write_at(f, offset, arr)


def _calibration_work(chunk):
    """Both passes over one chunk of a .txt file, its tokens written beside it (a file per thread): one
    worker's work per chunk."""
    _, present, _ = scan_chunk(chunk, True)
    lut = np.zeros(0x110000, np.uint16)
    lut[present] = np.arange(len(present), dtype=np.uint16)
    paths = {s: f"{chunk[1]}.{threading.get_ident()}.{s}.bin" for s in ('train', 'val')}
    for path in paths.values():
        open(path, 'wb').close()
    encode_chunk(chunk, (0, 0, 0, 0, 0.0), True, lut, len(present), np.uint16, paths)


def speed():
    """The Speed of this pipeline on this CPU, for --num_workers auto. Threads too: bytes.translate and the
    splits hold the GIL, but reading, numpy and writing do not, and how that adds up depends on the CPU
    (2 threads ran at 0.83x one worker on the Xeon of docs/data.md under load, at 1.16x idle)."""
    return measured_speed('char', _calibration_work, 4 << 20, RAY_EFFICIENCY, threads=True)


# ----------------------------------------------------------------------------- driver

def prepare(corpus, out_dir, stories, val_fraction, seed=0, num_workers=1, chunk_size=8 << 20, ray_address=None):
    """Write out_dir/train.bin, val.bin and meta.json for a Corpus. num_workers: a number or 'auto'
    (workers.choose_workers). Returns meta."""
    sep = SEPARATOR if stories else None
    plan = choose_workers(num_workers, corpus.text_bytes(), speed, ray_address)
    with Output(out_dir) as out, Workers(plan, 'char') as workers:  # a bad --out_dir fails before Ray starts
        group = corpus.chunks_per_task(chunk_size, workers.num_workers)
        # pass 1: vocabulary and, per chunk, where its tokens go
        used = np.zeros(0x110000, bool)
        plan, n_docs, n_train_tok, n_val_tok, total = [], 0, 0, 0, 0
        with progress(corpus.total_bytes, 'pass 1/2 vocabulary') as bar:
            chunks = zip(corpus.chunks(chunk_size, sep))  # (chunk,) tuples: each call's own arguments
            for nbytes, present, lens in workers.map(scan_chunk, chunks, (stories,), group):
                used[present] = True
                if stories:
                    tok = lens + 1  # every document ends with <|endoftext|>
                    v = int(tok[val_mask(n_docs, len(lens), seed, val_fraction)].sum())
                    plan.append((n_docs, n_train_tok, n_val_tok, seed, val_fraction))
                    n_docs, n_train_tok, n_val_tok = n_docs + len(lens), n_train_tok + int(tok.sum()) - v, n_val_tok + v
                else:
                    plan.append(n_train_tok)  # characters before this chunk (train/val decided below)
                    n_train_tok += int(lens[0])
                total += nbytes
                bar.update(nbytes)
        if not stories:  # nanoGPT's split: the first 90% of the characters, the last 10%
            n_chars = n_train_tok
            n_train_tok = int(n_chars * (1 - val_fraction))
            n_val_tok = n_chars - n_train_tok
            plan = [(start, n_train_tok) for start in plan]
        if n_train_tok + n_val_tok == 0:
            raise UserError(f"no text found in {corpus.name}")
        chars = [chr(c) for c in np.flatnonzero(used)]
        itos = chars + [SEPARATOR] if stories else chars
        dtype = dtype_for(len(itos))
        lut = np.zeros(0x110000, dtype)
        lut[np.flatnonzero(used)] = np.arange(len(chars), dtype=dtype)
        eot = len(chars) if stories else -1

        # pass 2: encode every chunk into its slice of the pre-sized files
        out.presize('train', n_train_tok, dtype)
        out.presize('val', n_val_tok, dtype)
        args = zip(corpus.chunks(chunk_size, sep), plan)
        with progress(total, 'pass 2/2 encode') as bar:
            for nbytes in workers.map(encode_chunk, args, (stories, lut, eot, dtype, out.tmp), group):
                bar.update(nbytes)

        meta = dict(tokenizer='char', vocab_size=len(itos), dtype=np.dtype(dtype).name, itos=itos,
                    train_tokens=n_train_tok, val_tokens=n_val_tok, source=corpus.name,
                    separator=SEPARATOR if stories else None, eot_token=eot if stories else None)
        if stories:
            meta.update(documents=n_docs, val_fraction=val_fraction, seed=seed)
        out.commit(meta)
    print(f"wrote {out_dir}: vocab {len(itos)} ({meta['dtype']}), train {n_train_tok:,} tokens, "
          f"val {n_val_tok:,} tokens, from {total / 1e6:.1f} MB")
    return meta


def decode(ids, itos):
    """Tokens back to text: the inverse of the encoding (sample.py does the same with meta['itos'])."""
    return ''.join(itos[i] for i in ids)
