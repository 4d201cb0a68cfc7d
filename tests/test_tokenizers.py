"""Tokenizers beyond GPT-2's, end to end: a byte-level BPE trained on the corpus (--tokenizer=bpe) and a
tokenizer.json whose ids need uint32 bins, each through prepare, train, exact resume, sample without the
data folder, bits per byte and a Hugging Face export whose tokenizer and logits match ours; every
document decoding back to its bytes; the trained tokenizer byte-identical across processes; and a
one-line error for each input that cannot work."""

import gzip
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, TINY_MODEL, load_prepared, run_prepare, shared_file

from nanogpt import checkpoint
from nanogpt.data import bpe
from nanogpt.data.sources import Corpus
from nanogpt.errors import UserError
from nanogpt.tokenizer import EOT, Codec, bpe_encoding, byte_symbols, read_vocab, tokenizer_json_vocab

TRAIN = [*TINY_MODEL, '--n_layer=1', '--eval_interval=4', '--eval_iters=2', '--log_interval=4',
         '--learning_rate=3e-3', '--warmup_iters=2', '--lr_decay_iters=8', '--always_save_checkpoint=True',
         '--gradient_accumulation_steps=1']
TEXTS = ["Ünïcödé — 你好，世界。今天天气很好，我们去公园散步吧！ — emoji 😀 and a literal <|endoftext|> inside.",
         "中文的句子没有空格，所以一个词要靠字节对合并出来。北京是中国的首都。", "   spaces\n\n\ttabs 12345678 x"]


@pytest.fixture(scope='module', autouse=True)
def tiktoken_cache():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TIKTOKEN_CACHE_DIR', str(SHARED_DATA / 'tiktoken_cache'))
        yield


def c4_docs():
    with gzip.open(shared_file('c4_sample_1000docs.jsonl.gz'), 'rt', encoding='utf-8') as f:
        return [json.loads(line)['text'] for line in f]


def all_pairs_tokenizer(path):
    """A byte-level BPE tokenizer.json of 65,793 tokens: <|endoftext|>, the 256 bytes, then every pair of
    bytes, the pairs of letters last, so that ordinary text needs ids above 65,535 (uint32 bins)."""
    symbols = byte_symbols()
    letters = set(range(ord('a'), ord('z') + 1)) | {ord(' ')}
    pairs = sorted(((a, b) for a in range(256) for b in range(256)), key=lambda p: (p[0] in letters and p[1] in letters, p))
    vocab = {EOT: 0, **{symbols[b]: 1 + b for b in range(256)}}
    vocab.update({symbols[a] + symbols[b]: 257 + i for i, (a, b) in enumerate(pairs)})
    path.write_text(json.dumps({
        'version': '1.0', 'added_tokens': [{'id': 0, 'content': EOT, 'single_word': False, 'lstrip': False,
                                            'rstrip': False, 'normalized': False, 'special': True}],
        'normalizer': None, 'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
                                              'use_regex': True},
        'post_processor': None, 'decoder': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
                                            'use_regex': True},
        'model': {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
                  'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
                  'vocab': vocab, 'merges': [[symbols[a], symbols[b]] for a, b in pairs]}}, ensure_ascii=False))
    return path


def abc_tokenizer(**changes):
    """The smallest byte-level BPE where Hugging Face's ids without ignore_merges differ from ours: merges
    a b, b c, a bc make 'abc' one token (259) to tiktoken, which takes a piece that is a token whole, but
    'ab' 'c' to Hugging Face, whose merges have no 'ab c'. changes: keys of the model, or of the file."""
    symbols = byte_symbols()
    model = {'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
             'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': True,
             'vocab': {EOT: 0, **{symbols[b]: 1 + b for b in range(256)}, 'ab': 257, 'bc': 258, 'abc': 259},
             'merges': [['a', 'b'], ['b', 'c'], ['a', 'bc']]}
    tok = {'version': '1.0', 'added_tokens': [{'id': 0, 'content': EOT, 'single_word': False, 'lstrip': False,
                                               'rstrip': False, 'normalized': False, 'special': True}],
           'normalizer': None, 'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
                                                 'use_regex': True},
           'post_processor': None, 'decoder': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True,
                                               'use_regex': True}, 'model': model}
    for key, value in changes.items():
        (model if key in model else tok)[key] = value
    return json.dumps(tok)


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """A working directory with the corpora of the end-to-end runs: the first 100 kB of TinyStories and of
    tiny shakespeare (stories, and paragraphs as documents), and the uint32 tokenizer."""
    work = tmp_path_factory.mktemp('tokenizers')
    stories = shared_file('tinystories_train_head2MiB.txt').read_bytes()[:100_000].decode('utf-8', 'ignore')
    (work / 'stories.txt').write_text(stories[:stories.rindex(EOT)] + EOT.join([''] + TEXTS))
    plays = shared_file('tinyshakespeare.txt').read_text()[:100_000]
    (work / 'plays.txt').write_text(EOT.join(plays.split('\n\n') + TEXTS))
    all_pairs_tokenizer(work / 'pairs.json')
    return work


# -----------------------------------------------------------------------------
# end to end

KINDS = {  # dataset: (input, the tokenizer options, its dtype)
    'stories_bpe': ('stories.txt', ['--tokenizer=bpe', '--vocab_size=600'], 'uint16'),
    'plays_pairs': ('plays.txt', ['--tokenizer=pairs.json'], 'uint32'),
    'plays_cl100k': ('plays.txt', ['--tokenizer=cl100k_base'], 'uint32'),
}


# tiktoken caches cl100k_base.tiktoken under the sha1 of its URL
CL100K_FILE = hashlib.sha1(b'https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken').hexdigest()


@pytest.mark.parametrize('dataset', KINDS)
def test_model_on_new_tokenizer_trains_resumes_samples_reports_bpb_and_exports(work, tmp_path, run_main, dataset):
    source, options, dtype = KINDS[dataset]
    if dataset == 'plays_cl100k' and not (SHARED_DATA / 'tiktoken_cache' / CL100K_FILE).is_file():
        pytest.skip("cl100k_base's file is not in the test tiktoken cache (../shared/data/tiktoken_cache)")
    data = tmp_path / 'data' / dataset
    code, out, err = run_main('data/openwebtext/prepare.py', '--input', work / source, *options, '--out_dir', data,
                              '--num_workers=1', '--val_fraction=0.02', cwd=work)
    assert code == 0, err
    meta, train_ids, val_ids = load_prepared(data)
    vocab = read_vocab(data)
    named = options[0].removeprefix('--tokenizer=') if dataset.endswith('cl100k') else None
    assert meta['dtype'] == dtype and meta['tokenizer'] == (named or 'bpe')
    assert (data / 'tokenizer.json').exists() == (named is None)
    if dtype == 'uint32':  # ids above 65,535 are really there
        assert meta['vocab_size'] == (100_277 if named else 65_793) and train_ids.max() > 65_535
    # a run of 8 iterations, and its snapshot at 4 resumed to 8: the same weights
    args = [*TRAIN, f'--dataset={dataset}', '--max_iters=8']
    code, _, err = run_main('train.py', *args, '--out_dir=a', '--ckpt_iters=[4]', cwd=tmp_path)
    assert code == 0, err
    (tmp_path / 'b').mkdir()
    shutil.copy(tmp_path / 'a' / 'ckpt_0000004.pt', tmp_path / 'b' / 'ckpt.pt')
    code, _, err = run_main('train.py', *args, '--out_dir=b', '--init_from=resume', cwd=tmp_path)
    assert code == 0, err
    a, b = checkpoint.load(tmp_path / 'a' / 'ckpt.pt'), checkpoint.load(tmp_path / 'b' / 'ckpt.pt')
    assert b['iter_num'] == 8 and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert a['vocab'] == vocab  # the tokenizer itself travels in the checkpoint
    # bits per byte: the bytes are those of the predicted tokens, the val text's exact bytes; HellaSwag
    # encodes its Chinese and emoji with the checkpoint's tokenizer, none skipped
    (tmp_path / 'hellaswag.jsonl').write_text(''.join(json.dumps({'ctx': t[:20], 'endings': [t[i:i + 8] for i in
                                                      range(20, 52, 8)], 'label': 1}) + '\n' for t in TEXTS))
    code, out, err = run_main('eval.py', '--out_dir=a', '--device=cpu', '--tasks=bpb,hellaswag',
                              '--hellaswag_file=hellaswag.jsonl', cwd=tmp_path)
    codec = Codec(vocab)
    assert code == 0 and 'skipped' not in err, err
    assert f"over {len(codec.enc.decode_bytes(val_ids[1:].tolist())):,} bytes" in out and '/3, lowest summed' in out
    # sampling needs no data folder: the checkpoint's tokenizer decodes, with the multi-byte prompt intact
    shutil.move(tmp_path / 'data', tmp_path / 'moved')
    code, out, err = run_main('sample.py', '--out_dir=a', '--device=cpu', '--num_samples=1', '--max_new_tokens=20',
                              '--start=你好 Once', '--seed=1', cwd=tmp_path)
    assert code == 0 and out.startswith('你好 Once'), err
    # the Hugging Face export: the same ids from AutoTokenizer, the same logits from GPT2LMHeadModel
    code, out, err = run_main('checkpoint.py', 'export', 'a/ckpt.pt', 'hf', '--format=hf', cwd=tmp_path)
    assert code == 0 and 'tokenizer.json' in out, err
    from transformers import AutoTokenizer, GPT2LMHeadModel
    theirs = AutoTokenizer.from_pretrained(tmp_path / 'hf')
    for text in TEXTS + [(work / source).read_text()[:3000]]:
        ids = codec.encode(text)
        assert theirs(text)['input_ids'] == ids and theirs.decode(ids) == text
    assert theirs.eos_token == EOT and theirs.eos_token_id == meta['eot_token']
    from model import GPT, GPTConfig
    ours = GPT(GPTConfig(**a['model_args']))
    ours.load_state_dict(a['model'])
    idx = torch.tensor([codec.encode(TEXTS[0])[:32]])
    with torch.no_grad():
        hf_logits = GPT2LMHeadModel.from_pretrained(tmp_path / 'hf').eval()(idx).logits
        assert torch.allclose(hf_logits, ours.eval()(idx, idx)[0], atol=1e-4, rtol=1e-4)


# -----------------------------------------------------------------------------
# the tokenizer itself

def documents(ids, eot):
    return np.split(ids, np.flatnonzero(ids == eot) + 1)[:-1]


def test_every_document_decodes_to_its_bytes_and_hugging_face_gives_the_same_ids(tmp_path):
    """Web text, stories and Chinese through a trained 2k tokenizer (tiktoken's encoder), compared with
    the input documents and with Hugging Face's own encoder of the same tokenizer.json."""
    from tokenizers import Tokenizer
    stories = shared_file('tinystories_train_head2MiB.txt').read_text().split(EOT)[:-1]
    corpora = {'c4': c4_docs(), 'stories': stories[:1000], 'chinese': TEXTS * 3}
    for name, docs in corpora.items():
        path = tmp_path / f'{name}.jsonl'
        path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
        meta = bpe.prepare(Corpus([str(path)]), tmp_path / name, tokenizer='bpe',
                           vocab_size=2048 if name != 'chinese' else 300, val_fraction=0.0)
        _, ids, _ = load_prepared(tmp_path / name)
        tokenizer_json = (tmp_path / name / 'tokenizer.json').read_text()
        codec = Codec({'tokenizer': 'bpe', 'tokenizer_json': tokenizer_json})
        decoded = [codec.enc.decode_bytes(d[:-1].tolist()) for d in documents(ids, meta['eot_token'])]
        assert decoded == [d.encode('utf-8') for d in docs], name
        # Hugging Face's encoder, as AutoTokenizer runs it, reads a literal <|endoftext|> as the special
        # token, as Codec.encode (prompts, HellaSwag) does; the bins hold it as text (test above)
        theirs = Tokenizer.from_str(tokenizer_json)
        assert [e.ids for e in theirs.encode_batch(docs[:300])] == [codec.encode(d) for d in docs[:300]]


def test_trained_tokenizer_is_byte_identical_across_processes_and_thread_counts(tmp_path):
    """The user's command (one subprocess, its trainer on one thread) writes the same tokenizer.json as
    this process's trainer on every core."""
    shakespeare = str(shared_file('tinyshakespeare.txt'))
    r = run_prepare('shakespeare', '--input', shakespeare, '--tokenizer=bpe', '--vocab_size=1000',
                    '--out_dir', tmp_path / 'user', env={'RAYON_NUM_THREADS': '1', 'PYTHONHASHSEED': '7'})
    assert r.returncode == 0, r.stderr
    assert re.search(r'trained the tokenizer on 1\.1 MB \(2 documents\)', r.stdout), r.stdout
    text = (tmp_path / 'user' / 'tokenizer.json').read_bytes()
    text_here, _ = bpe.bpe_trainer.train(Corpus([shakespeare]), 1000, 10**8)
    assert text_here.encode() == text
    assert json.loads(text)['model']['ignore_merges']  # so that Hugging Face's encoder gives our ids
    meta, train_ids, _ = load_prepared(tmp_path / 'user')
    assert meta['tokenizer_file'] == 'tokenizer.json' and meta['vocab_size'] == 1000 and meta['eot_token'] == 0
    assert train_ids[-1] == 0 and train_ids.max() < 1000


def test_a_tiktoken_encoding_exports_as_a_tokenizer_json_that_gives_its_ids():
    """checkpoint.py export for a tiktoken encoding other than GPT-2's (cl100k_base, ...) converts its
    ranks; shown on GPT-2's, the one offline here."""
    from tokenizers import Tokenizer

    from nanogpt.hf import tokenizer_json_of
    from nanogpt.tokenizer import get_encoding
    enc = get_encoding('gpt2')
    theirs = Tokenizer.from_str(tokenizer_json_of(enc))
    docs = c4_docs()[:200] + TEXTS
    assert [e.ids for e in theirs.encode_batch(docs)] == [enc.encode(d, allowed_special={EOT}) for d in docs]


def test_hugging_face_gives_our_ids_for_a_token_its_merges_do_not_make_once_exported():
    """The exported tokenizer.json is our encoding converted, with ignore_merges: here from a tokenizer.json
    without it (as tokenizers trained before it was set are) whose merges lack 'ab c'."""
    from tokenizers import Tokenizer

    from nanogpt.hf import hf_tokenizer_json
    vocab = tokenizer_json_vocab(abc_tokenizer(ignore_merges=False))
    ours = bpe_encoding(vocab).encode_ordinary('abc abc')
    assert ours == [259, 33, 259]
    assert Tokenizer.from_str(vocab['tokenizer_json']).encode('abc abc').ids == [257, 100, 33, 257, 100]  # not ours
    exported = hf_tokenizer_json(vocab)
    assert json.loads(exported)['model']['ignore_merges'] and Tokenizer.from_str(exported).encode('abc abc').ids == ours


def test_a_user_tokenizer_json_without_ignore_merges_is_refused_where_its_merges_miss_a_token(tmp_path):
    """Without ignore_merges, a tokenizer.json is refused where its merges do not make one of its tokens from
    its text (Hugging Face's ids would differ from ours), and taken where they make them all (the uint32
    one of the end-to-end test, too)."""
    path = tmp_path / 'abc.json'
    path.write_text(abc_tokenizer(ignore_merges=False))
    with pytest.raises(UserError, match=r'"ignore_merges": false, and its merges do not make 1 of its tokens '
                                        r"\(e.g. 'abc'\)"):
        bpe.check_tokenizer(str(path))
    path.write_text(abc_tokenizer(ignore_merges=False, merges=[['a', 'b'], ['b', 'c'], ['a', 'bc'], ['ab', 'c']]))
    assert bpe.check_tokenizer(str(path))['vocab_size'] == 260


def test_an_exported_model_loads_back_with_its_own_tokenizer(work, tmp_path, monkeypatch):
    """load_model of a Hugging Face directory that checkpoint.py export wrote decodes with the tokenizer.json
    in it (not GPT-2's BPE); without one, a model whose outputs are not GPT-2's is refused. (Its weights,
    which transformers reads, are test_model_on_new_tokenizer...'s.)"""
    from model import GPT, GPTConfig
    from nanogpt import hf, loading
    from nanogpt.tokenizer import model_vocab_size
    text, _ = bpe.bpe_trainer.train(Corpus([str(work / 'stories.txt')]), 300, 20_000)
    vocab = {**tokenizer_json_vocab(text), 'dtype': 'uint16'}
    args = {'n_layer': 1, 'n_head': 2, 'n_embd': 16, 'block_size': 16, 'vocab_size': model_vocab_size(vocab),
            'bias': False}
    hf.export_hf({'model': GPT(GPTConfig(**args)).state_dict(), 'model_args': args, 'vocab': vocab}, tmp_path / 'hf')
    monkeypatch.setattr(hf, 'load_gpt2', lambda path, override_args: GPT(GPTConfig(**args)))
    _, loaded, _, _ = loading.load_model(str(tmp_path / 'hf'), str(tmp_path))
    codec = Codec(loaded)
    assert loaded['vocab_size'] == 300 and codec.encode(TEXTS[0]) == Codec(vocab).encode(TEXTS[0])
    assert codec.decode(codec.encode(TEXTS[0])) == TEXTS[0]
    (tmp_path / 'hf' / 'tokenizer.json').unlink()
    with pytest.raises(UserError, match=r"has no tokenizer.json, and its model's 320 outputs are not GPT-2's"):
        loading.load_model(str(tmp_path / 'hf'), str(tmp_path))


def test_the_trainer_says_how_much_text_in_units_that_fit(tmp_path, capsys):
    """--tokenizer_sample=60K is '61 kB', not '0 MB'; one document is one document."""
    from nanogpt.data.cli import format_size, parse_size
    assert [format_size(n) for n in (parse_size('60K'), 1_100_000, 10**8, 999)] == \
        ['61 kB', '1.1 MB', '100 MB', '999 bytes']
    (tmp_path / 'one.txt').write_text(TEXTS[1] * 20)
    bpe.bpe_trainer.train(Corpus([str(tmp_path / 'one.txt')]), 260, parse_size('60K'))
    out = capsys.readouterr().out
    assert 'BPE on up to 61 kB of' in out and '(1 document) in' in out, out


def test_a_tokenizer_json_is_hashed_once_not_once_per_chunk(monkeypatch):
    from nanogpt import tokenizer
    calls, sha256 = [], tokenizer.hashlib.sha256
    monkeypatch.setattr(tokenizer.hashlib, 'sha256', lambda data: calls.append(1) or sha256(data))
    vocab = tokenizer_json_vocab(abc_tokenizer(version='hashed once'))  # a text not hashed before
    for _ in range(3):
        bpe.encode_chunk(('texts', ['abc abc']), np.uint16, None, vocab)
    assert len(calls) == 1


# -----------------------------------------------------------------------------
# one line for each input that cannot work

PREPARE_ERRORS = [
    (['--tokenizer=gpt3'], "unknown tokenizer 'gpt3': use gpt2, another tiktoken encoding ("),
    (['--tokenizer=bpe'], "--tokenizer=bpe trains a tokenizer on the corpus: give its size with --vocab_size=N"),
    (['--tokenizer=bpe', '--vocab_size=256'], ("--vocab_size=256 is too small: a byte-level BPE needs the 256 "
                                               "bytes and <|endoftext|>, at least 257")),
    (['--vocab_size=5000'], "--vocab_size is the size of a tokenizer to train (--tokenizer=bpe); gpt2's is fixed"),
    (['--tokenizer=bpe', '--vocab_size=20000'], "hold only enough pairs for"),
    (['--tokenizer=missing/tokenizer.json'], "cannot read the tokenizer missing/tokenizer.json (No such file"),
    (['--tokenizer=wordpiece.json'], ("wordpiece.json is not a tokenizer this project can use (its model is "
                                      "WordPiece, not BPE)")),
]


@pytest.mark.parametrize('options, message', PREPARE_ERRORS, ids=[' '.join(o) for o, _ in PREPARE_ERRORS])
def test_bad_tokenizer_options_are_one_line(tmp_path, run_main, options, message):
    (tmp_path / 'tiny.txt').write_text(shared_file('tinyshakespeare.txt').read_text()[:50_000])
    (tmp_path / 'wordpiece.json').write_text(json.dumps({'model': {'type': 'WordPiece', 'vocab': {}}}))
    code, _, err = run_main('data/openwebtext/prepare.py', '--input', 'tiny.txt', *options, '--out_dir', 'o',
                            cwd=tmp_path)
    assert code != 0 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / 'o' / 'train.bin').exists()


def test_bins_that_disagree_with_meta_and_a_checkpoint_of_another_tokenizer_are_one_line(work, tmp_path, run_main):
    for name, sample in (('one', '60K'), ('other', '100K')):  # two tokenizers of one size, trained on different text
        code, _, err = run_main('data/openwebtext/prepare.py', '--input', work / 'stories.txt', '--tokenizer=bpe',
                                '--vocab_size=400', f'--tokenizer_sample={sample}', '--out_dir', f'data/{name}',
                                '--num_workers=1', '--val_fraction=0.05', cwd=tmp_path)
        assert code == 0, err
    code, _, err = run_main('train.py', *TRAIN, '--dataset=one', '--max_iters=2', '--out_dir=out', cwd=tmp_path)
    assert code == 0, err
    code, _, err = run_main('train.py', *TRAIN, '--dataset=other', '--max_iters=4', '--out_dir=out',
                            '--init_from=resume', cwd=tmp_path)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert re.search(r"data/other/meta.json \(bpe, 400 tokens, tokenizer.json sha256 \w{12}\) differs from the "
                     r"checkpoint's in .* \(bpe, 400 tokens, tokenizer.json sha256 \w{12}\)", err), err
    meta_path = tmp_path / 'data' / 'one' / 'meta.json'
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, 'dtype': 'uint32'}))  # the uint16 bins read as uint32 would be garbage
    for script, args in (('train.py', [*TRAIN, '--dataset=one', '--out_dir=out2']),
                         ('eval.py', ['--out_dir=out', '--device=cpu', '--tasks=bpb'])):
        code, _, err = run_main(script, *args, cwd=tmp_path)
        assert code == 1 and len(err.strip().splitlines()) == 1, err
        assert f"train.bin has {meta['train_tokens'] * 2:,} bytes, but meta.json says {meta['train_tokens']:,} " \
               f"tokens of uint32" in err, err


BAD_TOKENIZER_JSON = {  # a file's changes to abc_tokenizer: what the one line must say
    'regex': ({'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': [
        {'type': 'Split', 'pattern': {'Regex': '(a'}, 'behavior': 'Isolated', 'invert': False},
        {'type': 'ByteLevel', 'add_prefix_space': False, 'use_regex': False}]}}, "its split regex does not compile"),
    'no steps': ({'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': []}}, "its pre-tokenizer is not an object"),
    'model a string': ({'model': 'BPE'}, "no 'model' object"),
    'no content': ({'added_tokens': [{'id': 0, 'special': True}]}, "'added_tokens' is not a list of tokens each"),
    'no vocab': ({'vocab': None}, "its model has no 'vocab' object or no 'merges' list"),
    'no merges': ({'merges': None}, "its model has no 'vocab' object or no 'merges' list"),
    'a bad merge': ({'merges': [['a', 'b'], 7]}, "a merge is not two tokens that make a token of its vocabulary"),
    'same ids': ({'vocab': {EOT: 0, **{c: 1 + b for b, c in byte_symbols().items()}, 'ab': 5}}, "the same id"),
    'prefix': ({'continuing_subword_prefix': '##'}, "it sets continuing_subword_prefix or end_of_word_suffix"),
    'suffix': ({'end_of_word_suffix': '</w>'}, "it sets continuing_subword_prefix or end_of_word_suffix"),
    'dropout': ({'dropout': 0.1}, "it sets dropout or byte_fallback"),
    'byte_fallback': ({'byte_fallback': True}, "it sets dropout or byte_fallback"),
    'another special': ({'added_tokens': [{'id': 0, 'content': EOT, 'special': True},
                                          {'id': 260, 'content': '<|im_start|>', 'special': True}]},
                        "added tokens other than <|endoftext|>, which tiktoken's encoder would not know: <|im_start|>"),
    'lowercase': ({'normalizer': {'type': 'Sequence', 'normalizers': [{'type': 'Lowercase'}]}}, "it normalizes the text"),
}


@pytest.mark.parametrize('name', BAD_TOKENIZER_JSON)
def test_a_bad_tokenizer_json_is_one_line(tmp_path, name):
    """Each file, passed as --tokenizer=FILE, is refused by check_tokenizer (which the prepare scripts call
    first) in one line that names it and says why, not in a traceback."""
    changes, message = BAD_TOKENIZER_JSON[name]
    path = tmp_path / 'bad.json'
    path.write_text(abc_tokenizer(**changes))
    with pytest.raises(UserError) as e:
        bpe.check_tokenizer(str(path))
    assert str(e.value).startswith(f"{path} is not a tokenizer this project can use (") and message in str(e.value)
    assert '\n' not in str(e.value)


def test_an_empty_normalizer_sequence_is_no_normalizer(tmp_path):
    """Files saved by some versions of `tokenizers` (DeepSeek's, for one) hold an empty Sequence: not refused."""
    path = tmp_path / 'empty.json'
    path.write_text(abc_tokenizer(normalizer={'type': 'Sequence', 'normalizers': []}))
    assert bpe_encoding(bpe.check_tokenizer(str(path))).encode_ordinary('abc') == [259]


def test_a_bad_out_dir_is_reported_before_the_tokenizer_is_trained(work, tmp_path, capsys):
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(UserError, match="--out_dir must be a directory"):
        bpe.prepare(Corpus([str(work / 'stories.txt')]), str(tmp_path / 'a_file'), tokenizer='bpe', vocab_size=300)
    assert 'training a' not in capsys.readouterr().out
