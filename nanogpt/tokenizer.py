"""
A dataset's vocabulary and the text <-> token ids it defines: characters (meta.json's itos), a
tiktoken encoding by name (GPT-2's by default), or a byte-level BPE in Hugging Face's tokenizer.json
format ('bpe': one trained on the corpus, or any such file), whose text the vocabulary carries. The
vocabulary travels from meta.json into every checkpoint, so sample.py and eval.py decode with exactly
what the model was trained on, without the data folder.

Every BPE, a tokenizer.json one included, runs on tiktoken's encoder (bpe_encoding): for a byte-level
BPE whose token ids follow its merge order and that says "ignore_merges" (as tiktoken takes a piece of
text that is a token whole), as a trained one does, it gives the same ids as Hugging Face's own encoder
(tests/test_tokenizers.py) at 2.5–5x its speed per core (docs/data.md); an export converts the
encoding itself (hf.hf_tokenizer_json), which gives our ids whatever merges the file listed.
"""

import codecs
import functools
import hashlib
import itertools
import json
import os
import pickle
import re
import threading

from nanogpt.errors import UserError

# Every thread gets its own tiktoken Encoding, built from arguments read once per process (a Ray worker's
# tasks share them). tiktoken's regex keeps its scratch space in pools that only their first thread uses
# without locking; a second thread that shares the Encoding takes a lock at every piece of text, and the two
# threads fight over the pool's cache lines: in bench/prepare_bpe.py's C4 pipeline, 2 threads on one shared
# Encoding took about twice the CPU time of one thread for the same tokens, and ran no faster.
_ENCODING_ARGS = {}  # per process: a key -> the Encoding's constructor arguments
_FIRST_BUILD = threading.Lock()  # two threads that ask at once must not both get tiktoken's registry object
_THREAD = threading.local()  # per thread: .encodings, a key -> this thread's Encoding


def _thread_encoding(key, build):
    """This thread's Encoding for key; build() makes the first one in this process, which that thread keeps."""
    encodings = _THREAD.__dict__.setdefault('encodings', {})
    if key not in encodings:
        with _FIRST_BUILD:
            if key not in _ENCODING_ARGS:
                enc = encodings[key] = build()
                _ENCODING_ARGS[key] = dict(name=enc.name, pat_str=enc._pat_str,
                                           mergeable_ranks=enc._mergeable_ranks, special_tokens=enc._special_tokens)
        if key not in encodings:
            import tiktoken
            encodings[key] = tiktoken.Encoding(**_ENCODING_ARGS[key])  # 27 ms for GPT-2's 50k tokens
    return encodings[key]


def get_encoding(name):
    """This thread's tiktoken encoding `name`, or a one-line error that explains how to provide its files
    offline."""
    return _thread_encoding(name, lambda: _load_encoding(name))


def _load_encoding(name):
    import tiktoken
    try:
        return tiktoken.get_encoding(name)
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
    ids in merge order, every byte a token, <|endoftext|> its only added token, and none of the BPE
    options that tiktoken lacks. (Whether its merges reach every token is check_reaches_its_tokens'.)"""
    def refuse(why):
        return UserError(f"{source} is not a tokenizer this project can use ({why}): pass a byte-level BPE "
                         f"tokenizer.json, such as one written by --tokenizer=bpe")
    try:
        tok = json.loads(text)
    except ValueError:
        raise refuse("not JSON") from None
    # the structure's types first, so that a hand-edited file is named here rather than in a traceback below
    model = tok.get('model') if isinstance(tok, dict) else None
    if not isinstance(model, dict):
        raise refuse("no 'model' object: not a Hugging Face tokenizer.json")
    if model.get('type') != 'BPE':
        raise refuse(f"its model is {model.get('type')}, not BPE")
    if not isinstance(model.get('vocab'), dict) or not isinstance(model.get('merges'), list):
        raise refuse("its model has no 'vocab' object or no 'merges' list")
    if not all(isinstance(i, int) and i >= 0 for i in model['vocab'].values()):
        raise refuse("a token's id is not a whole number >= 0")
    pre, added = tok.get('pre_tokenizer') or {}, tok.get('added_tokens') or []
    steps = pre.get('pretokenizers') if isinstance(pre, dict) and pre.get('type') == 'Sequence' else [pre]
    if not isinstance(steps, list) or not steps or not all(isinstance(step, dict) for step in steps):
        raise refuse("its pre-tokenizer is not an object, or a Sequence of them")
    if not isinstance(added, list) or not all(isinstance(t, dict) and isinstance(t.get('content'), str)
                                              and isinstance(t.get('id'), int) for t in added):
        raise refuse("'added_tokens' is not a list of tokens each with a 'content' and an 'id'")
    # options that change what the model does and that tiktoken's encoder does not have
    if model.get('continuing_subword_prefix') or model.get('end_of_word_suffix'):
        raise refuse("it sets continuing_subword_prefix or end_of_word_suffix, which byte-level BPE does not use")
    if model.get('dropout') or model.get('byte_fallback'):
        raise refuse("it sets dropout or byte_fallback")
    normalizer = tok.get('normalizer')
    if normalizer and normalizer != {'type': 'Sequence', 'normalizers': []}:  # an empty Sequence does nothing
        raise refuse("it normalizes the text, so decoding would not give back the input's bytes")
    if steps[-1].get('type') != 'ByteLevel' or steps[-1].get('add_prefix_space'):
        raise refuse("its pre-tokenizer does not end with a ByteLevel step without add_prefix_space")
    if len(steps) == 1 and steps[0].get('use_regex', True):
        pattern = GPT2_PATTERN
    elif (len(steps) == 2 and steps[0].get('type') == 'Split' and isinstance(steps[0].get('pattern'), dict)
          and isinstance(steps[0]['pattern'].get('Regex'), str) and steps[0].get('behavior') == 'Isolated'
          and not steps[0].get('invert') and not steps[1].get('use_regex', True)):
        pattern = steps[0]['pattern']['Regex']
    else:
        raise refuse("its pre-tokenizer is not ByteLevel, or a Split by a regex and then ByteLevel")
    # Hugging Face matches every added token in the text before BPE; tiktoken knows only the separator
    others = sorted({t['content'] for t in added} - {EOT})
    if others:
        raise refuse(f"it has added tokens other than {EOT}, which tiktoken's encoder would not know: "
                     f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}")
    specials = {t['content']: t['id'] for t in added if t.get('special')}
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
    if len(set(ranks.values()) | {specials[EOT]}) != len(ranks) + 1:
        raise refuse("two of its tokens have the same id")
    try:  # the id of each merge's result, in merge order ("a b" strings in older files, [a, b] pairs in newer)
        merged = [ranks[b''.join(bytes(to_byte[c] for c in part)
                                 for part in (m.split(' ', 1) if isinstance(m, str) else m))] for m in model['merges']]
    except (KeyError, TypeError, AttributeError):
        raise refuse("a merge is not two tokens that make a token of its vocabulary") from None
    if any(a > b for a, b in itertools.pairwise(merged)):  # tiktoken merges the lowest id first
        raise refuse("its token ids do not follow the order of its merges")
    return ranks, pattern, specials[EOT]


def check_reaches_its_tokens(text, source='tokenizer.json'):
    """A tokenizer.json whose "ignore_merges" is false, or a one-line error if that makes Hugging Face's ids
    differ from ours. tiktoken takes a piece of text that is a token as that token, as Hugging Face's BPE
    does only with ignore_merges: with merges a b, b c, a bc, 'abc' is one token to tiktoken and 'ab' 'c'
    to Hugging Face. Without the option the two agree on such pieces only if the merges make every token
    of its own text: checked with Hugging Face's encoder, on every token of 3 bytes or more at once."""
    model = json.loads(text)['model']
    if model.get('ignore_merges'):
        return
    merges = {tuple(m.split(' ', 1)) if isinstance(m, str) else tuple(m) for m in model['merges']}
    missed = [t for t in model['vocab'] if len(t) == 2 and (t[0], t[1]) not in merges]  # a pair of bytes
    longer = [t for t in model['vocab'] if len(t) > 2 and t != EOT]
    if longer and not missed:
        from tokenizers import Tokenizer
        # the BPE alone (no added tokens, no pre-tokenizer), on each token's byte-level symbols
        bare = Tokenizer.from_str(json.dumps({'version': '1.0', 'model': model, 'added_tokens': [], 'normalizer': None,
                                              'pre_tokenizer': None, 'post_processor': None, 'decoder': None,
                                              'truncation': None, 'padding': None}))
        missed = [t for t, e in zip(longer, bare.encode_batch(longer, add_special_tokens=False))
                  if e.ids != [model['vocab'][t]]]
    if missed:
        raise UserError(f"{source} has \"ignore_merges\": false, and its merges do not make {len(missed):,} of its "
                        f"tokens (e.g. {missed[0]!r}) from their own text, so Hugging Face would give other ids than "
                        f"ours, which take such a piece of text as its token: set \"ignore_merges\": true in it")


@functools.lru_cache(maxsize=16)
def tokenizer_json_sha256(text):
    """The sha256 of a tokenizer.json's text, which names it: computed once per text (encode_chunk asks
    for every chunk)."""
    return hashlib.sha256(text.encode()).hexdigest()


def bpe_encoding(vocab, source='tokenizer.json'):
    """This thread's tiktoken Encoding of a BPE vocabulary: an encoding by name, or the vocabulary's
    tokenizer.json (source names it in errors)."""
    if 'tokenizer_json' not in vocab:
        return get_encoding(vocab['tokenizer'])
    key = tokenizer_json_sha256(vocab['tokenizer_json'])

    def build():
        import tiktoken
        ranks, pattern, eot = parse_tokenizer_json(vocab['tokenizer_json'], source)
        try:
            return tiktoken.Encoding(f"bpe-{key[:8]}", pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens={EOT: eot})
        except ValueError as e:  # the split pattern, which tiktoken compiles (its Rust regex's syntax)
            raise UserError(f"{source} is not a tokenizer this project can use (its split regex does not compile: "
                            f"{' '.join(str(e).split())})") from None
    return _thread_encoding(key, build)


def tokenizer_json_vocab(text, source='tokenizer.json'):
    """The vocabulary of a byte-level BPE given as a tokenizer.json's text (a one-line error if it cannot work)."""
    vocab = {'tokenizer': 'bpe', 'tokenizer_json': text}
    return {**vocab, 'vocab_size': bpe_encoding(vocab, source).n_vocab}


def read_tokenizer_json(path, whose='the', remedy=''):
    """The vocabulary of the tokenizer.json at path, or a one-line error that names it (whose tokenizer it is,
    and what to do)."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {whose} tokenizer {path} ({getattr(e, 'strerror', None) or e}){remedy}") from None
    return tokenizer_json_vocab(text, path)


def describe_vocab(vocab):
    """A vocabulary in a few words, for messages: its tokenizer, size and, for a tokenizer.json, which one."""
    what = f"{vocab['tokenizer']}, {vocab['vocab_size']:,} tokens"
    if 'tokenizer_json' in vocab:
        what += f", tokenizer.json sha256 {tokenizer_json_sha256(vocab['tokenizer_json'])[:12]}"
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
        vocab.update(read_tokenizer_json(os.path.join(data_dir, meta.get('tokenizer_file', 'tokenizer.json')),
                                         "the dataset's", '; prepare the dataset again'))
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
