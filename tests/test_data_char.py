"""Char-level data preparation (data/char.py and the shakespeare_char / tinystories_char scripts)."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, load_prepared, run_prepare

from nanogpt.data import char
from nanogpt.data.sources import Corpus
from nanogpt.errors import UserError

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason='../shared/data (real corpora) not present')
SEP = '<|endoftext|>'
# Latin with accents, Greek, Cyrillic, Arabic, Hindi, CJK, combining marks, and characters outside the
# BMP (emoji, a CJK extension B ideograph, a Gothic letter): 1, 2, 3 and 4 UTF-8 bytes per character
UNICODE_STORIES = [
    "Once upon a time, Zoë met a fox. \"Hello!\" she said.\n",
    "Ἐν ἀρχῇ ἦν ὁ λόγος. Жили-были дед да баба.",
    "مرحبا بالعالم — नमस्ते दुनिया — 你好，世界。",
    "Emoji 😀🦊👩‍👩‍👧 and 𠜎 and 𐌰𐌱 and e\u0301 (combining).",
    "",  # an empty story still ends with <|endoftext|>
    "A last story\nover two lines.",
]


def write(path, text):
    Path(path).write_bytes(text.encode('utf-8'))
    return str(path)


def test_decode_of_encode_is_the_input_for_any_unicode(tmp_path):
    text = SEP.join(UNICODE_STORIES) + SEP
    path = write(tmp_path / 'u.txt', text)
    # stories mode, nothing held out: train.bin decodes back to the file, separators included
    meta = char.prepare(Corpus([path]), tmp_path / 's', stories=True, val_fraction=0.0, chunk_size=64)
    _, train, val = load_prepared(tmp_path / 's')
    assert char.decode(train, meta['itos']) == text and len(val) == 0
    assert meta['itos'][meta['eot_token']] == SEP and (train == meta['eot_token']).sum() == len(UNICODE_STORIES)
    assert '😀' in meta['itos'] and '𠜎' in meta['itos'] and '|' not in meta['itos']  # '|' only occurs in separators
    # chars mode: train + val decode back to the file, cut at 90% of the characters
    meta = char.prepare(Corpus([path]), tmp_path / 'c', stories=False, val_fraction=0.1, chunk_size=64)
    _, train, val = load_prepared(tmp_path / 'c')
    assert char.decode(train, meta['itos']) == text[:int(len(text) * 0.9)]
    assert char.decode(val, meta['itos']) == text[int(len(text) * 0.9):]
    assert meta['itos'] == sorted(set(text))


@pytest.mark.slow
def test_output_bytes_do_not_depend_on_workers_or_chunk_size(tmp_path, ray_2cpus):
    head = (SHARED_DATA / 'tinystories_train_head2MiB.txt').read_text()[:300_000] if SHARED_DATA.is_dir() else ''
    text = head + SEP.join(UNICODE_STORIES * 50)
    path = write(tmp_path / 'corpus.txt', text)
    outputs = []
    for workers, chunk in [(1, 1 << 20), (1, 1000), (2, 4096), (2, 777)]:
        out = tmp_path / f'out_{workers}_{chunk}'
        char.prepare(Corpus([path]), out, stories=True, val_fraction=0.1, seed=7, num_workers=workers, chunk_size=chunk)
        outputs.append([(out / f).read_bytes() for f in ('train.bin', 'val.bin', 'meta.json')])
    assert all(o == outputs[0] for o in outputs[1:])
    assert len(outputs[0][1]) > 0  # some stories did go to val


def test_split_keeps_whole_stories_and_is_seeded(tmp_path):
    stories = [f"Story {i}: {'ä' * (i % 7)}{'la ' * (i % 13)}the end." for i in range(400)]
    # TinyStories' layout: the separator on a line of its own
    path = write(tmp_path / 's.txt', '\n<|endoftext|>\n'.join(stories) + '\n<|endoftext|>\n')
    meta = char.prepare(Corpus([path]), tmp_path / 'a', stories=True, val_fraction=0.2, seed=1, chunk_size=300)
    _, train, val = load_prepared(tmp_path / 'a')
    eot = meta['eot_token']
    assert train[-1] == eot and val[-1] == eot  # both end on a story boundary
    got = [char.decode(d[:-1], meta['itos']).strip('\n') for part in (train, val)
           for d in np.split(part, np.flatnonzero(part == eot) + 1)[:-1]]
    assert sorted(got) == sorted(stories)  # every story exactly once, none cut in two
    n_val = int((val == eot).sum())
    assert 40 <= n_val <= 120 and meta['documents'] == 400
    char.prepare(Corpus([path]), tmp_path / 'b', stories=True, val_fraction=0.2, seed=2, chunk_size=300)
    assert (tmp_path / 'b' / 'val.bin').read_bytes() != (tmp_path / 'a' / 'val.bin').read_bytes()


def test_rows_and_text_files_give_the_same_tokens(tmp_path):
    docs = UNICODE_STORIES * 3
    write(tmp_path / 'd.txt', SEP.join(docs) + SEP)
    with gzip.open(tmp_path / 'd.jsonl.gz', 'wt', encoding='utf-8') as f:
        f.writelines(json.dumps({'text': d, 'id': i}) + '\n' for i, d in enumerate(docs))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'text': docs}), tmp_path / 'd.parquet', row_group_size=4)
    import datasets
    corpora = {name: Corpus([str(tmp_path / name)]) for name in ('d.txt', 'd.jsonl.gz', 'd.parquet')}
    corpora['hf'] = Corpus(dataset=datasets.Dataset.from_dict({'text': docs}), name='hf')
    bins = []
    for name, corpus in corpora.items():
        out = tmp_path / name.replace('.', '_')
        char.prepare(corpus, out, stories=True, val_fraction=0.3, seed=3, chunk_size=100)
        bins.append([(out / f).read_bytes() for f in ('train.bin', 'val.bin')])
    assert bins[0] == bins[1] == bins[2] == bins[3]


def test_vocab_over_65535_symbols_switches_to_uint32(tmp_path):
    cps = [c for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c <= 0xDFFF]
    text = ''.join(map(chr, cps)) + SEP + 'abc' + SEP
    path = write(tmp_path / 'big.txt', text)
    meta = char.prepare(Corpus([path]), tmp_path / 'o', stories=True, val_fraction=0.0, chunk_size=50_000)
    assert meta['dtype'] == 'uint32' and meta['vocab_size'] == len(cps) + 3 + 1
    _, train, _ = load_prepared(tmp_path / 'o')
    assert train.dtype == np.uint32 and train.max() == meta['vocab_size'] - 1
    assert char.decode(train, meta['itos']) == text
    assert (tmp_path / 'o' / 'train.bin').stat().st_size == 4 * len(train)


def test_invalid_utf8_is_a_user_error_and_keeps_previous_bins(tmp_path):
    good = write(tmp_path / 'good.txt', 'hello' + SEP)
    char.prepare(Corpus([good]), tmp_path / 'o', stories=True, val_fraction=0.0)
    before = (tmp_path / 'o' / 'train.bin').read_bytes()
    bad = tmp_path / 'bad.txt'
    bad.write_bytes(b'fine text ' * 20 + b'\xc3\x28 broken')
    with pytest.raises(UserError, match='not valid UTF-8'):
        char.prepare(Corpus([str(bad)]), tmp_path / 'o', stories=True, val_fraction=0.0, chunk_size=64)
    assert (tmp_path / 'o' / 'train.bin').read_bytes() == before
    assert sorted(p.name for p in (tmp_path / 'o').iterdir()) == ['meta.json', 'train.bin', 'val.bin']  # no temp files


@pytest.mark.slow
def test_offline_without_input_is_a_one_line_error(tmp_path):
    offline = {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'HF_HOME': str(tmp_path / 'hf'),
               'https_proxy': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9'}
    for name in ('tinystories_char', 'shakespeare_char'):
        r = run_prepare(name, '--out_dir', str(tmp_path / name), env=offline)
        assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and '--input' in r.stderr, r.stderr
        assert not (tmp_path / name / 'train.bin').exists()
    # no offline flags, the hub just unreachable: a quick one-line error, not ~25 s of retry warnings
    env = {k: v for k, v in os.environ.items() if 'proxy' not in k.lower() and not k.startswith('HF_')}
    r = subprocess.run([sys.executable, 'data/tinystories_char/prepare.py', '--out_dir', str(tmp_path / 'x')], cwd=REPO,
                       env=dict(env, HF_ENDPOINT='https://127.0.0.1:9', HF_HOME=str(tmp_path / 'hf')),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and '--input' in r.stderr, r.stderr
    r = run_prepare('tinystories_char', '--input', str(tmp_path / 'missing.txt'), '--out_dir', str(tmp_path))
    assert r.returncode != 0 and r.stderr.strip() == f"error: input file not found: {tmp_path / 'missing.txt'}"
    write(tmp_path / 'x.csv', 'a,b')
    r = run_prepare('tinystories_char', '--input', str(tmp_path / 'x.csv'), '--out_dir', str(tmp_path))
    assert r.returncode != 0 and 'unsupported input' in r.stderr and len(r.stderr.strip().splitlines()) == 1


@needs_shared
def test_shakespeare_char_matches_nanogpt_split(tmp_path):
    src = SHARED_DATA / 'tinyshakespeare.txt'
    r = run_prepare('shakespeare_char', '--input', str(src), '--out_dir', str(tmp_path))
    assert r.returncode == 0, r.stderr
    meta, train, val = load_prepared(tmp_path)
    assert (meta['tokenizer'], meta['vocab_size'], meta['dtype']) == ('char', 65, 'uint16')
    assert (len(train), len(val)) == (1003854, 111540)
    # nanoGPT's data/shakespeare_char/prepare.py, verbatim in spirit
    data = src.read_text()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    n = len(data)
    assert meta['itos'] == chars
    assert np.array_equal(train, np.array([stoi[c] for c in data[:int(n * 0.9)]], np.uint16))
    assert np.array_equal(val, np.array([stoi[c] for c in data[int(n * 0.9):]], np.uint16))


@needs_shared
def test_tinystories_char_script_runs_without_ray_for_one_worker(tmp_path):
    r = run_prepare('tinystories_char', '--input', str(SHARED_DATA / 'tinystories_train_head2MiB.txt'),
                   '--out_dir', str(tmp_path), '--num_workers', '1', '--chunk_size', '256K')
    assert r.returncode == 0, r.stderr
    assert 'pass 1/2' in r.stderr and 'pass 2/2' in r.stderr and 'B/s' in r.stderr  # tqdm bars with a rate
    meta, train, val = load_prepared(tmp_path)
    assert meta['separator'] == SEP and meta['documents'] == 2317  # 2316 separators + the cut last story
    assert int((train == meta['eot_token']).sum() + (val == meta['eot_token']).sum()) == 2317
    code = ("import sys; from nanogpt.data import char; from nanogpt.data.sources import Corpus; "
            f"char.prepare(Corpus([{str(SHARED_DATA / 'tinyshakespeare.txt')!r}]), {str(tmp_path / 'x')!r}, stories=False, "
            "val_fraction=0.1); assert 'ray' not in sys.modules")
    r = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_chunks_end_after_separators_and_cover_the_file(tmp_path):
    from nanogpt.data.sources import text_ranges
    # a long last story without a separator: the boundary search must stop at the end of the file
    text = SEP.join(f"story {i} " + 'é' * (i % 5) for i in range(50)) + SEP + 'x' * 5000
    path = write(tmp_path / 'r.txt', text)
    data = Path(path).read_bytes()
    for chunk in (64, 100, 1000, 10**6):
        ranges = list(text_ranges(path, chunk, SEP.encode()))
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(data[:end].endswith(SEP.encode()) for _, end in ranges[:-1])
        plain = list(text_ranges(path, chunk))  # no separator: never inside a UTF-8 character
        assert all(data[end] & 0xC0 != 0x80 for _, end in plain[:-1])


def test_text_field_names_the_column_of_rows_and_datasets(tmp_path):
    docs = UNICODE_STORIES * 3
    write(tmp_path / 'd.txt', SEP.join(docs) + SEP)
    rows = [{'story': d, 'text': 'not this one', 'id': i} for i, d in enumerate(docs)]
    (tmp_path / 'd.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows), encoding='utf-8')
    with gzip.open(tmp_path / 'd.jsonl.gz', 'wt', encoding='utf-8') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'story': docs, 'id': list(range(len(docs)))}), tmp_path / 'd.parquet', row_group_size=4)
    import datasets
    corpora = {'txt': Corpus([str(tmp_path / 'd.txt')]),
               'hf': Corpus(dataset=datasets.Dataset.from_dict({'story': docs}), name='hf', text_field='story')}
    corpora.update({n: Corpus([str(tmp_path / n)], text_field='story') for n in ('d.jsonl', 'd.jsonl.gz', 'd.parquet')})
    bins = []
    for name, corpus in corpora.items():
        out = tmp_path / name.replace('.', '_')
        char.prepare(corpus, out, stories=True, val_fraction=0.3, seed=3, chunk_size=100)
        bins.append([(out / f).read_bytes() for f in ('train.bin', 'val.bin')])
    assert all(b == bins[0] for b in bins[1:])
    with pytest.raises(UserError, match=r"no 'body' column \(columns: story\); .*--text_field"):
        Corpus(dataset=datasets.Dataset.from_dict({'story': docs}), text_field='body')
    # as a user runs it: the field is used, and a wrong one is one line naming the fields that exist
    r = run_prepare('tinystories_char', '--input', tmp_path / 'd.jsonl', '--text_field', 'story',
                    '--out_dir', tmp_path / 'script', '--val_fraction', '0.3', '--seed', '3', '--chunk_size', '100')
    assert r.returncode == 0, r.stderr
    assert [(tmp_path / 'script' / f).read_bytes() for f in ('train.bin', 'val.bin')] == bins[0]
    for path, fields in (('d.jsonl', 'story, text, id'), ('d.parquet', 'story, id')):
        r = run_prepare('tinystories_char', '--input', tmp_path / path, '--text_field', 'body',
                        '--out_dir', tmp_path / 'x')
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "'body'" in r.stderr and f"({'fields' if path == 'd.jsonl' else 'columns'}: {fields})" in r.stderr
    r = run_prepare('tinystories_char', '--input', tmp_path / 'd.txt', '--text_field', 'story',
                    '--out_dir', tmp_path / 'x')
    assert r.returncode == 1 and '--text_field' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / 'x').exists()


def test_shakespeare_scripts_offer_only_the_options_they_use(tmp_path):
    src = write(tmp_path / 's.txt', 'To be, or not to be: that is the question.\n' * 50)
    for name, unused in (('shakespeare_char', ['--seed', '--text_field']),
                         ('shakespeare', ['--seed', '--text_field', '--chunk_size'])):
        help_text = run_prepare(name, '--help').stdout
        assert '--val_fraction' in help_text and '--num_workers' in help_text
        for option in unused:
            assert option not in help_text, (name, option)
            r = run_prepare(name, '--input', src, '--out_dir', tmp_path / name, option, '1')
            assert r.returncode == 2 and 'unrecognized arguments' in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1


def test_download_is_whole_or_a_one_line_error(tmp_path):
    from nanogpt.data.sources import download
    src = write(tmp_path / 'src.txt', 'First Citizen:\n' * 100)
    download(Path(src).as_uri(), str(tmp_path / 'input.txt'))
    assert (tmp_path / 'input.txt').read_bytes() == Path(src).read_bytes()
    with pytest.raises(UserError, match=r'cannot download .*--input PATH'):
        download((tmp_path / 'missing.txt').as_uri(), str(tmp_path / 'other.txt'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['input.txt', 'src.txt']  # nothing half-written


def test_hub_probe_uses_the_port_of_hf_endpoint(monkeypatch):
    import socket

    from nanogpt.data.sources import _hub_reachable
    for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as server:  # a mirror on a port of its own
        server.bind(('127.0.0.1', 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{port}')
        assert _hub_reachable(timeout=2)
    assert not _hub_reachable(timeout=2)  # the same endpoint, closed
    probed = []

    def connect(address, timeout):
        probed.append(address)
        raise OSError('unreachable')
    monkeypatch.setattr(socket, 'create_connection', connect)
    for endpoint, address in (('https://hf-mirror.example', ('hf-mirror.example', 443)),
                              ('http://hf-mirror.example', ('hf-mirror.example', 80)),
                              ('https://hf-mirror.example:8443/', ('hf-mirror.example', 8443))):
        monkeypatch.setenv('HF_ENDPOINT', endpoint)
        assert not _hub_reachable() and probed[-1] == address
    monkeypatch.delenv('HF_ENDPOINT')
    assert not _hub_reachable() and probed[-1] == ('huggingface.co', 443)
