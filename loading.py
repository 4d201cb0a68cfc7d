"""
What train.py, sample.py, eval.py and bench.py need before their first step, written once: the
device and precision to run on, a dataset's vocabulary, text to tokens and back, token batches,
and the model that init_from names (a new one, a checkpoint, or OpenAI's GPT-2 weights).
"""

import codecs
import json
import os
import pickle
import re
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

import checkpoint
from configurator import ConfigError, UserError
from data.bpe import get_encoding
from model import GPT, OPTIONS, GPTConfig, architecture_of


def resolve_device(requested):
    if requested == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        return 'mps' if torch.backends.mps.is_available() else 'cpu'
    if requested.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"device={requested} but no CUDA GPU is available; use --device=cpu")
    if requested == 'mps' and not torch.backends.mps.is_available():
        raise UserError("device=mps but MPS is not available; use --device=cpu")
    if requested.split(':')[0] not in ('cpu', 'cuda', 'mps'):
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {requested!r}")
    return requested


def resolve_dtype(requested, device_type):
    if requested == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise UserError("dtype=bfloat16 but this GPU does not support it; use --dtype=float16")
    if requested != 'auto':
        return requested
    if device_type == 'cuda':
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    return 'float32'


def check_compiler(device_type):
    """torch.compile builds C++ kernels for a CPU with the system's compiler. Without one the first
    step would fail deep inside the compiler stack: say so before anything runs."""
    if device_type != 'cpu':
        return
    from torch._inductor import cpp_builder, exc
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise UserError("compile=True on a CPU needs a C++ compiler (g++, or clang++ on macOS; the CXX "
                        "environment variable names another); install one or use --compile=False") from None


def autocast_context(device_type, dtype):
    """The context the forward passes run in: as is for float32, autocast for bfloat16/float16.
    On CUDA, float32 matmuls may use TF32 (Ampere and later): much faster, as accurate as training needs."""
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dtype == 'float32':
        return nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype={'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype])


# -----------------------------------------------------------------------------
# data

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


def check_token_file(path, dtype, block_size, dataset):
    if not os.path.exists(path):
        raise UserError(f"{path} not found: prepare the dataset first with "
                        f"`python data/{dataset}/prepare.py`")
    itemsize = np.dtype(dtype).itemsize
    size = os.path.getsize(path)
    if size % itemsize:
        raise UserError(f"{path} has {size} bytes, not a multiple of {itemsize} ({dtype}): "
                        f"the file is truncated or meta.json's dtype is wrong; prepare the dataset again")
    if size // itemsize < block_size + 1:
        raise UserError(f"{path} holds {size // itemsize} tokens, too few for block_size={block_size} "
                        f"(need at least {block_size + 1}); use a smaller block_size or more data")


class RandomBatches:
    """Batches of random windows from a token file, nanoGPT's "poor man's data loader".

    y is x shifted by one token. The offsets come from `generator`, so the generator's
    state is the loader's position: saving it in a checkpoint resumes the exact stream.
    """

    def __init__(self, path, dtype, block_size, batch_size, device, generator):
        self.path, self.dtype = path, dtype
        self.block_size, self.batch_size = block_size, batch_size
        self.device, self.generator = device, generator
        self.offsets = np.arange(block_size + 1)

    def next(self):
        # A fresh memmap per batch: one long-lived memmap keeps every page it touched
        # mapped, and the process's memory grows over a long run.
        data = np.memmap(self.path, dtype=self.dtype, mode='r')
        ix = torch.randint(len(data) - self.block_size, (self.batch_size,), generator=self.generator)
        windows = torch.from_numpy(data[ix.numpy()[:, None] + self.offsets].astype(np.int64))
        x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
        if self.device.startswith('cuda'):
            # pinned memory lets the copy to the GPU run asynchronously (non_blocking=True)
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)


def sequential_batches(path, dtype, block_size, batch_size, device, rank=0, world_size=1, progress=False, pad=False):
    """Every token of a file but the first predicted exactly once, in order: (x, y) batches of
    consecutive windows of block_size tokens, the last window shorter, in a batch of its own.
    Rank r of world_size takes every world_size-th batch, so the ranks' sums add up to the whole.
    pad: every rank yields as many batches (FSDP ranks must run as many forwards): a rank short
    of one repeats the first batch with every target -1, which the loss ignores."""
    data = np.memmap(path, dtype=dtype, mode='r')
    n_full = (len(data) - 1) // block_size
    starts = np.arange(n_full) * block_size
    batches = [starts[i:i + batch_size] for i in range(0, n_full, batch_size)]
    if n_full * block_size < len(data) - 1:
        batches.append(None)  # the short window at the end
    offsets = np.arange(block_size + 1)
    mine = batches[rank::world_size]
    n_padding = -(-len(batches) // world_size) - len(mine) if pad else 0
    for i, batch in enumerate(tqdm(mine + batches[:1] * n_padding, desc=f"whole {os.path.basename(path)}",
                                   disable=not progress, leave=False)):
        windows = data[batch[:, None] + offsets] if batch is not None else data[n_full * block_size:][None]
        windows = torch.from_numpy(windows.astype(np.int64))
        y = windows[:, 1:] if i < len(mine) else torch.full_like(windows[:, 1:], -1)
        yield windows[:, :-1].contiguous().to(device), y.contiguous().to(device)


# -----------------------------------------------------------------------------
# the model

def architecture_config(model_args):
    """GPTConfig(**model_args), with an impossible architecture reported in one line."""
    try:
        return GPTConfig(**model_args)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_model(init_from, out_dir, model_args, log=None, sharded=None):
    """(model, checkpoint or None) for init_from:
    - 'scratch': a new GPT with model_args (every GPTConfig field);
    - 'resume' or a checkpoint file or sharded directory: the architecture and weights it holds.
      'resume' reads out_dir/ckpt/ (sharded=True: a parallelism='fsdp' run), out_dir/ckpt.pt
      (False), or the newer of them (None);
    - 'gpt2', 'gpt2-medium', ... or a Hugging Face directory: OpenAI's GPT-2 weights, which
      refuse any architecture option in model_args that is not GPT-2's.
    model_args['dropout'] applies in every case. The model stays on the CPU."""
    log = log or (lambda *args: None)
    dropout = model_args.get('dropout', 0.0)
    if init_from == 'scratch':
        log("initializing a new model from scratch")
        return GPT(architecture_config(model_args)), None
    if init_from == 'resume' or (os.path.lexists(init_from) and not os.path.isdir(init_from)) \
            or checkpoint.find_sharded(init_from):
        path = checkpoint.resume_path(out_dir, sharded) if init_from == 'resume' else init_from
        log(f"{'resuming training' if init_from == 'resume' else 'initializing'} from {path}")
        # on the CPU: the random states must stay there; weights and moments move with the model
        ckpt = checkpoint.load(path, map_location='cpu')
        return model_from(ckpt, path, dropout), ckpt
    if init_from.startswith('gpt2') or os.path.isdir(init_from):
        if os.path.isdir(init_from) and not is_hf_dir(init_from):
            raise UserError(f"{init_from} is a directory but not a Hugging Face GPT-2 checkpoint (no config.json); "
                            f"init_from takes a checkpoint file, a GPT-2 name or a save_pretrained directory")
        log(f"initializing from OpenAI GPT-2 weights: {init_from}")
        return load_gpt2(init_from, {k: v for k, v in model_args.items() if k in ('dropout', *OPTIONS)}), None
    if os.sep in init_from or os.path.splitext(init_from)[1]:  # meant as a path
        raise UserError(f"no checkpoint at {init_from}")
    raise ConfigError(f"init_from must be 'scratch', 'resume', 'gpt2*' or an existing checkpoint "
                      f"file or directory, got {init_from!r}")


def is_hf_dir(path):
    """A directory that Hugging Face's from_pretrained can read: it has a config.json."""
    return os.path.isfile(os.path.join(path, 'config.json'))


def loads_gpt2(init_from):
    """Whether build_model reads OpenAI's GPT-2 weights for init_from: a name such as 'gpt2-xl'
    (unless a file of that name exists) or a Hugging Face directory."""
    if os.path.isdir(init_from):
        return is_hf_dir(init_from)
    return init_from.startswith('gpt2') and not os.path.lexists(init_from)


def model_from(ckpt, path, dropout):
    """The GPT that a loaded checkpoint describes, holding its weights; a checkpoint that does not
    describe one (no model_args, options of a newer version, weights of another shape) is refused."""
    args = checkpoint.model_args_of(ckpt, path)
    model = GPT(architecture_config({**architecture_of(args), 'dropout': dropout}))
    try:
        model.load_state_dict(ckpt['model'])
    except RuntimeError as e:
        raise UserError(f"{path} is damaged: its weights do not fit the model its model_args describe "
                        f"({' '.join(str(e).split())[:200]})") from None
    return model


def load_gpt2(name, override_args):
    """OpenAI's GPT-2 weights ('gpt2' ... 'gpt2-xl') or a local Hugging Face GPT-2 directory."""
    try:
        return GPT.from_pretrained(name, override_args)
    except ValueError as e:  # an architecture option that GPT-2's weights cannot have, before any download
        raise ConfigError(str(e)) from None
    except ImportError:
        raise UserError("GPT-2 weights need the transformers package: pip install transformers") from None
    except OSError as e:  # an unknown name, no network, or a directory without a GPT-2 checkpoint
        raise UserError(f"cannot load GPT-2 weights {name!r}: {str(e).splitlines()[0]}") from None


def load_model(init_from, out_dir):
    """(model, vocabulary, checkpoint) for inference: from a checkpoint, whose entries other than
    the weights and the training state come back as its third item, or from GPT-2 weights (None)."""
    if init_from == 'scratch':
        raise ConfigError("init_from must be 'resume', a checkpoint file, 'gpt2*' or a directory, got 'scratch'")
    model, ckpt = build_model(init_from, out_dir, {'dropout': 0.0})
    if ckpt is None:  # OpenAI's GPT-2
        return model, {'tokenizer': 'gpt2', 'vocab_size': 50257}, None
    ckpt = {k: v for k, v in ckpt.items() if k not in ('model', 'optimizer', 'scaler', 'rng')}
    vocab = ckpt.get('vocab')
    if vocab is None:  # a nanoGPT checkpoint: the vocabulary is in the dataset's meta file
        path = os.path.join(out_dir, 'ckpt.pt') if init_from == 'resume' else init_from
        data_dir = os.path.join('data', ckpt.get('config', {}).get('dataset', ''))
        vocab = read_vocab(data_dir)
        n_outputs = model.config.vocab_size
        if vocab['vocab_size'] > n_outputs or (vocab['tokenizer'] == 'char' and vocab['vocab_size'] != n_outputs):
            raise UserError(f"{path} holds no vocabulary and the one in {data_dir} "
                            f"({vocab['tokenizer']}, {vocab['vocab_size']} tokens) does not fit its {n_outputs} outputs")
    return model, vocab, ckpt
