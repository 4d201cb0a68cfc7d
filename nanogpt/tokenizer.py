"""
A dataset's vocabulary and the text <-> token ids it defines: characters (meta.json's itos), a
tiktoken encoding by name (GPT-2's by default), or a byte-level BPE in Hugging Face's tokenizer.json
format ('bpe': one trained on the corpus, or any such file), whose text the vocabulary carries. The
vocabulary travels from meta.json into every checkpoint, so sample.py and eval.py decode with exactly
what the model was trained on, without the data folder.

Every BPE, a tokenizer.json one included, runs on tiktoken's encoder (bpe_encoding): for a byte-level
BPE whose token ids follow its merge order, as a trained one's do, it gives the same ids as Hugging
Face's own encoder (tests/test_tokenizers.py) at about 5x its speed per core (docs/data.md).
"""

import codecs
import hashlib
import itertools
import json
import os
import pickle
import re

from nanogpt.errors import UserError

_ENCODINGS = {}  # per process: a Ray worker loads the encoding once, not once per task


def get_encoding(name):
    """A tiktoken encoding, or a one-line error that explains how to provide its files offline."""
    if name not in _ENCODINGS:
        import tiktoken
        try:
            _ENCODINGS[name] = tiktoken.get_encoding(name)
        except Exception as e:  # requests' ConnectionError, a ValueError for an unknown name, ...
            if name not in tiktoken.list_encoding_names():
                raise UserError(f"unknown tiktoken encoding {name!r} (known: {', '.join(tiktoken.list_encoding_names())})")
            cache = os.environ.get('TIKTOKEN_CACHE_DIR') or os.environ.get('DATA_GYM_CACHE_DIR')
            raise UserError(
                f"cannot load the tiktoken encoding {name!r} ({type(e).__name__}"
                f"{', cache ' + cache if cache else ''}): tiktoken downloads its files once and caches them in "
                f"$TIKTOKEN_CACHE_DIR; offline, set TIKTOKEN_CACHE_DIR to a folder that holds them, seeded on a "
                f"machine with internet by: TIKTOKEN_CACHE_DIR=/path/to/cache python -c \"import tiktoken; "
                f"tiktoken.get_encoding('{name}')\" (then copy that folder here)")
    return _ENCODINGS[name]


# How a piece of text is cut before BPE merges, for trained tokenizers: GPT-4's (cl100k_base) pattern,
# which, unlike GPT-2's, keeps numbers to 3 digits and lets a word take one leading punctuation mark
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
                 r"""\s*[\r\n]|\s+(?!\S)|\s+""")
# GPT-2's, which a ByteLevel pre-tokenizer with use_regex=True applies
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = '<|endoftext|>'


def byte_symbols():
    """{byte: the character that stands for it} in byte-level BPE vocabularies (GPT-2's table): the
    printable bytes stand for themselves, the others are shifted above 255."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def parse_tokenizer_json(text, source='tokenizer.json'):
    """(token bytes -> id, the split pattern, the id of <|endoftext|>) of a Hugging Face tokenizer.json,
    or a one-line error if it is not a byte-level BPE that tiktoken's encoder runs exactly as Hugging
    Face's does: no normalizer, a ByteLevel pre-tokenizer (alone, or after a Split by a regex), token
    ids in merge order, every byte a token, and <|endoftext|> a special token."""
    def refuse(why):
        return UserError(f"{source} is not a tokenizer this project can use ({why}): pass a byte-level BPE "
                         f"tokenizer.json, such as one written by --tokenizer=bpe")
    try:
        tok = json.loads(text)
        model, pre = tok['model'], tok.get('pre_tokenizer') or {}
    except (ValueError, TypeError, KeyError):
        raise refuse("not a Hugging Face tokenizer.json") from None
    if model.get('type') != 'BPE':
        raise refuse(f"its model is {model.get('type')}, not BPE")
    if tok.get('normalizer'):
        raise refuse("it normalizes the text, so decoding would not give back the input's bytes")
    steps = pre.get('pretokenizers', [pre]) if pre.get('type') == 'Sequence' else [pre]
    if steps[-1].get('type') != 'ByteLevel' or steps[-1].get('add_prefix_space'):
        raise refuse("its pre-tokenizer does not end with a ByteLevel step without add_prefix_space")
    if len(steps) == 1 and steps[0].get('use_regex', True):
        pattern = GPT2_PATTERN
    elif (len(steps) == 2 and steps[0].get('type') == 'Split' and 'Regex' in steps[0].get('pattern', {})
          and steps[0].get('behavior') == 'Isolated' and not steps[0].get('invert')
          and not steps[1].get('use_regex', True)):
        pattern = steps[0]['pattern']['Regex']
    else:
        raise refuse("its pre-tokenizer is not ByteLevel, or a Split by a regex and then ByteLevel")
    specials = {t['content']: t['id'] for t in tok.get('added_tokens', []) if t.get('special')}
    if EOT not in specials:
        raise refuse(f"it has no special token {EOT}, the document separator")
    to_byte = {c: b for b, c in byte_symbols().items()}
    try:
        ranks = {bytes(to_byte[c] for c in token): i for token, i in model['vocab'].items() if token not in specials}
    except KeyError:
        raise refuse("a token has a character that is not a byte-level symbol") from None
    if len(ranks) != len(model['vocab']) - sum(t in model['vocab'] for t in specials) or \
            any(bytes([b]) not in ranks for b in range(256)):
        raise refuse("not every byte is a token of its own")
    try:  # the id of each merge's result, in merge order ("a b" strings in older files, [a, b] pairs in newer)
        merged = [ranks[b''.join(bytes(to_byte[c] for c in part)
                                 for part in (m.split(' ', 1) if isinstance(m, str) else m))] for m in model['merges']]
    except KeyError:
        raise refuse("a merge makes a token that is not in its vocabulary") from None
    if any(a > b for a, b in itertools.pairwise(merged)):  # tiktoken merges the lowest id first
        raise refuse("its token ids do not follow the order of its merges")
    return ranks, pattern, specials[EOT]


_BPES = {}  # tokenizer.json's sha256 -> its tiktoken Encoding, built once per process


def bpe_encoding(vocab):
    """The tiktoken Encoding of a BPE vocabulary: an encoding by name, or the vocabulary's tokenizer.json."""
    if 'tokenizer_json' not in vocab:
        return get_encoding(vocab['tokenizer'])
    key = hashlib.sha256(vocab['tokenizer_json'].encode()).hexdigest()
    if key not in _BPES:
        import tiktoken
        ranks, pattern, eot = parse_tokenizer_json(vocab['tokenizer_json'])
        _BPES[key] = tiktoken.Encoding(f"bpe-{key[:8]}", pat_str=pattern, mergeable_ranks=ranks,
                                       special_tokens={EOT: eot})
    return _BPES[key]


def describe_vocab(vocab):
    """A vocabulary in a few words, for messages: its tokenizer, size and, for a tokenizer.json, which one."""
    what = f"{vocab['tokenizer']}, {vocab['vocab_size']:,} tokens"
    if 'tokenizer_json' in vocab:
        what += f", tokenizer.json sha256 {hashlib.sha256(vocab['tokenizer_json'].encode()).hexdigest()[:12]}"
    return what


def read_vocab(data_dir):
    """The dataset's vocabulary from meta.json (or nanoGPT's meta.pkl): what the model must
    predict, and what a checkpoint records so that sample.py can decode without the data."""
    json_path, pkl_path = os.path.join(data_dir, 'meta.json'), os.path.join(data_dir, 'meta.pkl')
    if os.path.exists(json_path):
        with open(json_path) as f:
            try:
                meta = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"{json_path} is not valid JSON ({e}); prepare the dataset again") from None
        if not {'tokenizer', 'vocab_size'} <= meta.keys() or (meta['tokenizer'] == 'char' and 'itos' not in meta):
            raise UserError(f"{json_path} lacks 'tokenizer', 'vocab_size' or (char-level) 'itos'; prepare the dataset again")
    elif os.path.exists(pkl_path):  # nanoGPT's format: a trusted file written by its prepare.py
        with open(pkl_path, 'rb') as f:
            meta = pickle.load(f)
        meta = {'tokenizer': 'char', 'vocab_size': meta['vocab_size'], 'dtype': 'uint16',
                'itos': [meta['itos'][i] for i in range(meta['vocab_size'])]}
    else:  # nanoGPT's openwebtext and shakespeare prepare scripts write no meta: GPT-2 BPE
        meta = {'tokenizer': 'gpt2', 'vocab_size': 50257, 'dtype': 'uint16'}
    vocab = {'tokenizer': meta['tokenizer'], 'vocab_size': meta['vocab_size'], 'dtype': meta.get('dtype', 'uint16')}
    if meta['tokenizer'] == 'char':
        vocab['itos'] = meta['itos']
    elif meta['tokenizer'] == 'bpe':  # the tokenizer itself, so that checkpoints carry it
        path = os.path.join(data_dir, meta.get('tokenizer_file', 'tokenizer.json'))
        try:
            with open(path, encoding='utf-8') as f:
                vocab['tokenizer_json'] = f.read()
        except OSError as e:
            raise UserError(f"cannot read {path}, the dataset's tokenizer ({e.strerror}); prepare the dataset again")
    check_bins(data_dir, meta)
    return vocab


def check_bins(data_dir, meta):
    """Bins that do not hold what meta.json says (a dtype edited by hand, bins of another preparation)
    would be read as other token ids without any error: refuse them in one line, before any reader."""
    import numpy as np
    dtype = meta.get('dtype', 'uint16')
    if dtype not in ('uint16', 'uint32'):
        raise UserError(f"{data_dir}/meta.json: dtype {dtype!r} is neither uint16 nor uint32; prepare the dataset again")
    if meta['vocab_size'] > np.iinfo(dtype).max + 1:
        raise UserError(f"{data_dir}/meta.json: {meta['vocab_size']:,} tokens do not fit its dtype {dtype}; "
                        f"prepare the dataset again")
    for split in ('train', 'val'):
        path, n = os.path.join(data_dir, f'{split}.bin'), meta.get(f'{split}_tokens')
        if n is not None and os.path.exists(path) and os.path.getsize(path) != n * np.dtype(dtype).itemsize:
            raise UserError(f"{path} has {os.path.getsize(path):,} bytes, but meta.json says {n:,} tokens of {dtype} "
                            f"({n * np.dtype(dtype).itemsize:,} bytes): the bins and meta.json are not from the same "
                            f"preparation; prepare the dataset again")


def model_vocab_size(vocab):
    # BPE vocabularies are padded up to a multiple of 64 (50257 -> 50304), which makes the
    # lm_head matmul markedly faster on GPUs; a char model keeps its exact vocabulary so its
    # loss at init is ln(vocab_size) and its numbers compare with nanoGPT's.
    n = vocab['vocab_size']
    return n if vocab['tokenizer'] == 'char' else (n + 63) // 64 * 64


class Codec:
    """Text <-> token ids for a model's vocabulary: characters (with meta.json's itos) or a BPE."""

    def __init__(self, vocab):
        self.vocab = vocab
        if vocab['tokenizer'] == 'char':
            self.itos = vocab['itos']
            self.stoi = {s: i for i, s in enumerate(self.itos)}
            # symbols longer than one character, such as <|endoftext|>, are matched whole
            specials = sorted((s for s in self.itos if len(s) > 1), key=len, reverse=True)
            self.special_re = re.compile('|'.join(map(re.escape, specials))) if specials else None
        else:
            self.enc = bpe_encoding(vocab)

    def encode(self, text):
        if self.vocab['tokenizer'] != 'char':
            return self.enc.encode(text, allowed_special={'<|endoftext|>'})
        pieces = self.special_re.split(text) if self.special_re else [text]
        specials = self.special_re.findall(text) if self.special_re else []
        unknown = sorted({c for piece in pieces for c in piece if c not in self.stoi})
        if unknown:
            raise UserError(f"the prompt has characters the model's vocabulary lacks: "
                            f"{' '.join(repr(c) for c in unknown)}")
        ids = []
        for i, piece in enumerate(pieces):
            ids.extend(self.stoi[c] for c in piece)
            if i < len(specials):
                ids.append(self.stoi[specials[i]])
        return ids

    def decode(self, ids):
        if self.vocab['tokenizer'] == 'char':
            return ''.join(self.itos[i] for i in ids)
        return self.enc.decode(ids)

    def decode_stream(self, ids):
        """Yield the text of a stream of token ids as soon as it is printable. A BPE token can end
        inside a UTF-8 character, so its bytes wait in an incremental decoder until it is whole."""
        if self.vocab['tokenizer'] == 'char':
            yield from (self.itos[i] for i in ids)
            return
        utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')
        for i in ids:
            yield utf8.decode(self.enc.decode_single_token_bytes(i))
        yield utf8.decode(b'', final=True)
