"""
A dataset's vocabulary and the text <-> token ids it defines: characters (meta.json's itos) or a
tiktoken BPE (GPT-2's by default). The vocabulary travels from meta.json into every checkpoint, so
sample.py and eval.py decode with exactly what the model was trained on, without the data folder.
"""

import codecs
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
    return vocab


def model_vocab_size(vocab):
    # BPE vocabularies are padded up to a multiple of 64 (50257 -> 50304), which makes the
    # lm_head matmul markedly faster on GPUs; a char model keeps its exact vocabulary so its
    # loss at init is ln(vocab_size) and its numbers compare with nanoGPT's.
    n = vocab['vocab_size']
    return n if vocab['tokenizer'] == 'char' else (n + 63) // 64 * 64


class Codec:
    """Text <-> token ids for a model's vocabulary: characters (with meta.json's itos) or a tiktoken BPE."""

    def __init__(self, vocab):
        self.vocab = vocab
        if vocab['tokenizer'] == 'char':
            self.itos = vocab['itos']
            self.stoi = {s: i for i, s in enumerate(self.itos)}
            # symbols longer than one character, such as <|endoftext|>, are matched whole
            specials = sorted((s for s in self.itos if len(s) > 1), key=len, reverse=True)
            self.special_re = re.compile('|'.join(map(re.escape, specials))) if specials else None
        else:
            self.enc = get_encoding(vocab['tokenizer'])

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
