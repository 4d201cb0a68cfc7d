"""GPT-2 BPE data preparation (data/bpe.py and the shakespeare / openwebtext / fineweb_edu scripts)."""
import gzip
import json

import numpy as np
import pytest
from conftest import SHARED_DATA, load_prepared, run_prepare

CACHE = SHARED_DATA / 'tiktoken_cache'
if not SHARED_DATA.is_dir():
    pytest.skip('../shared/data (tiktoken cache and corpora) not present', allow_module_level=True)
from nanogpt.data import bpe
from nanogpt.data.sources import Corpus
from nanogpt.data.workers import Plan
from nanogpt.errors import UserError

EOT = 50256
OFFLINE = {'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'https_proxy': 'http://127.0.0.1:9',
           'HTTPS_PROXY': 'http://127.0.0.1:9', 'TIKTOKEN_CACHE_DIR': str(CACHE)}
DOCS = [
    "Hello world! This is the first document.\n\nIt has two paragraphs.",
    "Ünïcödé — 你好，世界 — emoji 😀 and a literal <|endoftext|> inside the text.",
    "",
    "   leading spaces and trailing newline\n",
    "Short.",
] * 7


@pytest.fixture(scope='module', autouse=True)
def tiktoken_cache():
    """The GPT-2 files, offline, for this module's tests (and the Ray workers they start), restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TIKTOKEN_CACHE_DIR', str(CACHE))
        yield


def c4_docs(n=None):
    with gzip.open(SHARED_DATA / 'c4_sample_1000docs.jsonl.gz', 'rt', encoding='utf-8') as f:
        docs = [json.loads(line)['text'] for line in f]
    return docs[:n]


def documents(ids, enc):
    """Split a token stream on <|endoftext|> and decode each document."""
    assert len(ids) == 0 or ids[-1] == EOT
    return [enc.decode(d[:-1].tolist()) for d in np.split(ids, np.flatnonzero(ids == EOT) + 1)[:-1]]


def write_inputs(tmp_path, docs):
    """The same documents as .jsonl, .jsonl.gz, .parquet and .txt (separated by <|endoftext|>)."""
    lines = ''.join(json.dumps({'text': d, 'url': 'x'}) + '\n' for d in docs)
    (tmp_path / 'd.jsonl').write_text(lines, encoding='utf-8')
    with gzip.open(tmp_path / 'd.jsonl.gz', 'wt', encoding='utf-8') as f:
        f.write(lines)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'text': docs}), tmp_path / 'd.parquet', row_group_size=3)
    return [tmp_path / n for n in ('d.jsonl', 'd.jsonl.gz', 'd.parquet')]


def test_documents_round_trip_through_the_bins_for_every_input_format(tmp_path):
    enc = bpe.get_encoding('gpt2')
    outputs = []
    for path in write_inputs(tmp_path, DOCS):
        out = tmp_path / ('out_' + path.name.replace('.', '_'))
        meta = bpe.prepare(Corpus([str(path)]), out, val_fraction=0.3, seed=5, chunk_size=100)
        meta_, train, val = load_prepared(out)
        assert (meta['tokenizer'], meta['vocab_size'], meta['dtype'], meta['eot_token']) == ('gpt2', 50257, 'uint16', EOT)
        assert meta_ == meta and train.dtype == np.uint16
        assert meta['documents'] == len(DOCS) == (train == EOT).sum() + (val == EOT).sum()
        got = documents(train, enc) + documents(val, enc)
        assert sorted(got) == sorted(DOCS) and len(documents(val, enc)) > 0
        outputs.append([(out / f).read_bytes() for f in ('train.bin', 'val.bin')])
    assert outputs[0] == outputs[1] == outputs[2]


def test_literal_separator_in_a_row_is_text_not_eot(tmp_path):
    enc = bpe.get_encoding('gpt2')
    docs = ["a <|endoftext|> b", "c"]
    path = write_inputs(tmp_path, docs)[0]
    bpe.prepare(Corpus([str(path)]), tmp_path / 'o', val_fraction=0.0)
    _, train, _ = load_prepared(tmp_path / 'o')
    assert train.tolist() == enc.encode_ordinary(docs[0]) + [EOT] + enc.encode_ordinary(docs[1]) + [EOT]
    assert (train == EOT).sum() == 2


def test_txt_documents_are_separated_by_endoftext(tmp_path):
    enc = bpe.get_encoding('gpt2')
    docs = ["First story.\nThe end.", "Second story, 😀.", "Third."]
    (tmp_path / 's.txt').write_text('\n<|endoftext|>\n'.join(docs) + '\n<|endoftext|>\n', encoding='utf-8')
    bpe.prepare(Corpus([str(tmp_path / 's.txt')]), tmp_path / 'o', val_fraction=0.0, chunk_size=64)
    meta, train, _ = load_prepared(tmp_path / 'o')
    assert meta['documents'] == 3
    assert [d.strip('\n') for d in documents(train, enc)] == docs


@pytest.mark.slow
def test_identical_bytes_for_one_worker_two_ray_workers_and_threads(tmp_path, ray_2cpus):
    path = tmp_path / 'c4.jsonl'
    path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in c4_docs(300)), encoding='utf-8')
    runs = []
    for i, (workers, chunk) in enumerate([(1, 1 << 20), (2, 20_000), (2, 3_000), (Plan('threads', 2, 'test'), 3_000)]):
        out = tmp_path / f'o{i}'
        bpe.prepare(Corpus([str(path)]), out, val_fraction=0.05, seed=1, num_workers=workers, chunk_size=chunk)
        runs.append([(out / f).read_bytes() for f in ('train.bin', 'val.bin', 'meta.json')])
    assert all(run == runs[0] for run in runs[1:]) and len(runs[0][1]) > 0


def test_max_tokens_stops_at_a_document_boundary(tmp_path):
    docs = c4_docs(200)
    path = tmp_path / 'c4.jsonl'
    path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs), encoding='utf-8')
    meta = bpe.prepare(Corpus([str(path)]), tmp_path / 'o', val_fraction=0.0, chunk_size=5_000, max_tokens=20_000)
    _, train, _ = load_prepared(tmp_path / 'o')
    enc = bpe.get_encoding('gpt2')
    n = meta['documents']
    expected = sum(len(enc.encode_ordinary(d)) + 1 for d in docs[:n])
    assert len(train) == expected <= 20_000 < expected + len(enc.encode_ordinary(docs[n])) + 1
    assert documents(train, enc) == docs[:n]


def test_numpy_encoding_is_encode_ordinary_even_for_lone_surrogates():
    enc = bpe.get_encoding('gpt2')
    for text in DOCS + ["lone \ud800 surrogate", "<|endoftext|><|fim_prefix|>", ""]:
        assert bpe.encode_ordinary(enc, text).tolist() == enc.encode_ordinary(text)


def test_a_chunk_encoded_in_one_call_gives_each_documents_own_tokens(tmp_path):
    """encode_documents joins a chunk's documents with the separator: the ids must be those of each
    document encoded alone, at every document boundary (trailing spaces and newlines, which the split
    patterns' lookahead treats by what follows), for a trained tokenizer's split pattern too, and with a
    second special token in the encoding, which stays text."""
    import tiktoken

    from nanogpt.data import bpe_trainer
    from nanogpt.tokenizer import tokenizer_json_vocab
    edges = ["ends with spaces   ", "\n\nstarts with newlines", "ends with newlines\n\n", " ", "", "12345 67",
             "x<|fim_prefix|>y", "中文，没有空格。", "tab\t"]
    docs = c4_docs(300) + edges * 3
    path = tmp_path / 'train.jsonl'
    path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs[:300]), encoding='utf-8')
    trained = tokenizer_json_vocab(bpe_trainer.train(Corpus([str(path)]), 400, 10**6)[0])
    gpt2 = bpe.bpe_encoding({'tokenizer': 'gpt2'})
    # as cl100k_base has: a special token besides the separator, which must stay text too
    fim = tiktoken.Encoding('gpt2+fim', pat_str=gpt2._pat_str, mergeable_ranks=gpt2._mergeable_ranks,
                            special_tokens={'<|endoftext|>': 50256, '<|fim_prefix|>': 50257})
    for enc in (gpt2, bpe.bpe_encoding(trained), fim):
        alone = [t for d in docs for t in enc.encode_ordinary(d) + [enc.eot_token]]
        assert bpe.encode_documents(enc, docs).tolist() == alone and 50257 not in alone
        # a literal separator, or a lone surrogate (which JSON can hold), sends the chunk a document at a time
        for odd in ("a <|endoftext|> b", "lone \ud800 surrogate"):
            assert bpe.encode_documents(enc, docs + [odd]).tolist() == \
                alone + bpe.encode_ordinary(enc, odd).tolist() + [enc.eot_token]


def test_each_thread_encodes_with_its_own_tiktoken_encoding():
    """Two threads that share one tiktoken Encoding contend for its regex's scratch space (the second
    thread locks at every piece of text), which made 2 threads no faster than one: each thread gets its own."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    vocab = {'tokenizer': 'gpt2'}
    both = threading.Barrier(2)  # both threads at once, so that the pool cannot run both calls on one thread

    def encoding(_):
        both.wait()
        return bpe.bpe_encoding(vocab)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(encoding, range(2))
    assert first is not second and bpe.bpe_encoding(vocab) not in (first, second)
    assert bpe.bpe_encoding(vocab) is bpe.bpe_encoding(vocab)  # built once per thread
    assert first.encode_ordinary(DOCS[1]) == second.encode_ordinary(DOCS[1])


def test_uint32_tokenizer_and_dtype_check(tmp_path):
    from nanogpt.data.output import dtype_for
    assert dtype_for(50257) == dtype_for(65535) == np.uint16 and dtype_for(65536) == dtype_for(100277) == np.uint32
    chunk = ('texts', ['hello'])
    with pytest.raises(UserError, match='does not fit'):  # ids are checked against the output dtype
        bpe.encode_chunk(chunk, np.int8, None, {'tokenizer': 'gpt2'})
    _, ids, lens, _ = bpe.encode_chunk(chunk, np.uint32, None, {'tokenizer': 'gpt2'})
    assert ids.dtype == np.uint32 and ids.tolist() == [31373, EOT] and lens.tolist() == [2]


def test_shakespeare_matches_nanogpt_plus_eot(tmp_path):
    r = run_prepare('shakespeare', '--input', SHARED_DATA / 'tinyshakespeare.txt', '--out_dir', tmp_path, env=OFFLINE)
    assert r.returncode == 0, r.stderr
    meta, train, val = load_prepared(tmp_path)
    # nanoGPT: 301,966 train and 36,059 val tokens; each split here also ends with <|endoftext|>
    assert (len(train), len(val)) == (301_967, 36_060) and train[-1] == val[-1] == EOT
    enc = bpe.get_encoding('gpt2')
    data = (SHARED_DATA / 'tinyshakespeare.txt').read_text()
    n = len(data)
    assert train[:-1].tolist() == enc.encode_ordinary(data[:int(n * 0.9)])
    assert val[:-1].tolist() == enc.encode_ordinary(data[int(n * 0.9):])


def test_missing_tokenizer_files_give_a_one_line_error(tmp_path):
    env = dict(OFFLINE, TIKTOKEN_CACHE_DIR=str(tmp_path / 'empty_cache'))
    for name in ('shakespeare', 'openwebtext', 'fineweb_edu'):
        r = run_prepare(name, '--input', SHARED_DATA / 'tinyshakespeare.txt', '--out_dir', tmp_path / name, env=env)
        assert r.returncode != 0 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert 'TIKTOKEN_CACHE_DIR' in r.stderr and "get_encoding('gpt2')" in r.stderr
        assert not (tmp_path / name / 'train.bin').exists()


@pytest.mark.slow
def test_offline_without_input_gives_a_one_line_error(tmp_path):
    for name, extra in (('openwebtext', []), ('fineweb_edu', ['--streaming']), ('shakespeare', [])):
        r = run_prepare(name, '--out_dir', str(tmp_path / name), *extra, env=dict(OFFLINE, HF_HOME=str(tmp_path / 'hf')))
        assert r.returncode != 0 and 'Traceback' not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert '--input' in r.stderr
    (tmp_path / 'bad.jsonl').write_text('{"title": "no text field"}\n')
    r = run_prepare('openwebtext', '--input', str(tmp_path / 'bad.jsonl'), '--out_dir', str(tmp_path / 'b'),
                   '--num_workers', '1', env=OFFLINE)
    assert r.returncode != 0 and "no 'text' field (fields: title)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_hf_dataset_and_its_streaming_form_match_local_files(tmp_path):
    import datasets
    docs = c4_docs(120)
    ds = datasets.Dataset.from_dict({'text': docs, 'id': list(range(len(docs)))})
    jsonl = write_inputs(tmp_path, docs)[0]
    outs = []
    for name, corpus in (('file', Corpus([str(jsonl)])), ('dataset', Corpus(dataset=ds, name='d')),
                         ('streaming', Corpus(dataset=ds.to_iterable_dataset(num_shards=3), name='d'))):
        bpe.prepare(corpus, tmp_path / name, val_fraction=0.1, seed=4, chunk_size=30_000, max_tokens=40_000)
        outs.append([(tmp_path / name / f).read_bytes() for f in ('train.bin', 'val.bin')])
    assert outs[0] == outs[1] == outs[2]
    assert 35_000 < (len(outs[0][0]) + len(outs[0][1])) // 2 <= 40_000


def test_text_field_for_web_corpora_and_options_that_need_a_dataset(tmp_path):
    docs = c4_docs(40)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'content': docs, 'url': ['x'] * len(docs)}), tmp_path / 'c.parquet', row_group_size=7)
    write_inputs(tmp_path, docs)
    for name, extra in (('text', ['--input', tmp_path / 'd.jsonl']),
                        ('content', ['--input', tmp_path / 'c.parquet', '--text_field', 'content'])):
        r = run_prepare('fineweb_edu', *extra, '--out_dir', tmp_path / name, env=OFFLINE)
        assert r.returncode == 0, r.stderr
    assert [(tmp_path / 'content' / f).read_bytes() for f in ('train.bin', 'val.bin')] == \
        [(tmp_path / 'text' / f).read_bytes() for f in ('train.bin', 'val.bin')]
    r = run_prepare('openwebtext', '--input', tmp_path / 'c.parquet', '--out_dir', tmp_path / 'x', env=OFFLINE)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no 'text' column (columns: content, url)" in r.stderr and '--text_field' in r.stderr
    for name, extra in (('openwebtext', ['--streaming']), ('fineweb_edu', ['--config', 'sample-100BT']),
                        ('openwebtext', ['--dataset', 'my/corpus'])):
        r = run_prepare(name, '--input', tmp_path / 'd.jsonl', *extra, '--out_dir', tmp_path / 'x', env=OFFLINE)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f'{extra[0]} applies to a Hugging Face dataset, not to --input' in r.stderr, r.stderr
    r = run_prepare('tinystories_char', '--input', tmp_path / 'd.jsonl', '--dataset', 'x/y', '--out_dir', tmp_path / 'x')
    assert r.returncode == 1 and '--dataset and --input' in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'x').exists()
