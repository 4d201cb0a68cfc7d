"""Tokenizers beyond GPT-2's, end to end: a byte-level BPE trained on the corpus (--tokenizer=bpe) and a
tokenizer.json whose ids need uint32 bins, each through prepare, train, exact resume, sample without the
data folder, bits per byte and a Hugging Face export whose tokenizer and logits match ours; every
document decoding back to its bytes; the trained tokenizer byte-identical across processes; and a
one-line error for each input that cannot work."""

import gzip
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
from nanogpt.tokenizer import EOT, Codec, byte_symbols, read_vocab

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
}


@pytest.mark.parametrize('dataset', KINDS)
def test_model_on_new_tokenizer_trains_resumes_samples_reports_bpb_and_exports(work, tmp_path, run_main, dataset):
    source, options, dtype = KINDS[dataset]
    data = tmp_path / 'data' / dataset
    code, out, err = run_main('data/openwebtext/prepare.py', '--input', work / source, *options, '--out_dir', data,
                              '--num_workers=1', '--val_fraction=0.02', cwd=work)
    assert code == 0, err
    meta, train_ids, val_ids = load_prepared(data)
    vocab = read_vocab(data)
    assert meta['dtype'] == dtype and meta['tokenizer'] == 'bpe' and (data / 'tokenizer.json').exists()
    if dtype == 'uint32':  # ids above 65,535 are really there
        assert meta['vocab_size'] == 65_793 and train_ids.max() > 65_535
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
