"""
The evaluations that train.py and eval.py share, each split across the ranks of a distributed
run and summed:

- The loss on a whole split, every token predicted once (deterministic, unlike train.py's
  estimate from random batches), and bits per byte: the summed loss in bits over the number of
  UTF-8 bytes the predicted tokens decode to, which compares models with different tokenizers
  (a char model and a BPE model) on the same text.
- HellaSwag (https://github.com/rowanz/hellaswag), completion style, as the GPT-2 replications
  (build-nanogpt, llm.c) score it: each of an example's four endings follows the context (the
  context's tokens, then those of " " + ending, encoded separately) and is scored by the model's
  loss on the ending's tokens only. acc counts the examples whose correct ending has the lowest
  summed loss, acc_norm those whose correct ending has the lowest mean loss per token. A row
  longer than the model's context loses tokens from the left, as in EleutherAI's harness.
"""

import json
import math
import os
import sys
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanogpt.batches import sequential_batches
from nanogpt.data.sources import download
from nanogpt.errors import UserError
from nanogpt.files import cache_dir
from nanogpt.tokenizer import bpe_encoding

HELLASWAG_URL = 'https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl'


# -----------------------------------------------------------------------------
# loss and bits per byte on a whole split

def token_byte_lengths(vocab):
    """How many UTF-8 bytes each token id decodes to (a byte-level BPE token may hold part of a
    character: its bytes count, so a document's tokens add up to its bytes). <|endoftext|> counts as
    its 13 characters for every tokenizer (BPE decodes it to that text, char-level data holds it as
    one symbol)."""
    if vocab['tokenizer'] == 'char':
        return np.array([len(s.encode('utf-8')) for s in vocab['itos']], dtype=np.int64)
    enc = bpe_encoding(vocab)
    lengths = np.zeros(enc.n_vocab, dtype=np.int64)
    for i in range(enc.n_vocab):
        try:
            lengths[i] = len(enc.decode_single_token_bytes(i))
        except KeyError:  # an id the encoding leaves unassigned (there are some in cl100k_base)
            pass
    return lengths


@torch.no_grad()
def split_sums(model, path, dtype, block_size, batch_size, device, autocast, token_bytes=None, rank=0,
               world_size=1, progress=False, pad=False):
    """(summed loss in nats, tokens, UTF-8 bytes) over every token of a token file but the first, in
    consecutive windows of block_size (loading.sequential_batches), summed over the ranks. The bytes
    are those of the predicted tokens, token_bytes[y] (0 without token_bytes). pad: every rank runs
    as many forwards (FSDP), the extra ones with every target -1, counted as nothing."""
    training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64, device=device)
    byte_lengths = torch.as_tensor(token_bytes, device=device) if token_bytes is not None else None
    for X, Y in sequential_batches(path, dtype, block_size, batch_size, device, rank, world_size, progress, pad):
        with autocast:
            _, loss = model(X, Y)
        scored = Y >= 0
        n = scored.sum()
        n_bytes = (byte_lengths[Y] * scored).sum() if byte_lengths is not None else torch.zeros((), device=device)
        # a padding batch's loss is 0/0: it adds nothing, while a NaN loss of a real batch still shows
        total += torch.stack((torch.where(n > 0, loss.double() * n, 0.0), n, n_bytes))
    if world_size > 1:
        torch.distributed.all_reduce(total)
    model.train(training)
    return total.tolist()


def bits_per_byte(loss_sum, n_bytes):
    return loss_sum / math.log(2) / n_bytes


# -----------------------------------------------------------------------------
# HellaSwag

class Example(NamedTuple):
    context: list  # token ids
    endings: list  # four lists of token ids
    label: int  # the correct ending


def hellaswag_file(path=''):
    """path, or HellaSwag's validation set, downloaded once into the cache folder (~/.cache/nanogpt)."""
    if path:
        if not os.path.isfile(path):
            raise UserError(f"hellaswag_file {path} not found")
        return path
    cache = cache_dir()
    cached = os.path.join(cache, 'hellaswag_val.jsonl')
    if not os.path.exists(cached):
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {cache} for HellaSwag's data ({e.strerror}); download "
                            f"{HELLASWAG_URL} yourself and pass it with --hellaswag_file=PATH") from None
        download(HELLASWAG_URL, cached, offline="pass a copy of the file with --hellaswag_file=PATH")
        print(f"downloaded {HELLASWAG_URL} to {cached}", file=sys.stderr)  # after: a failure is one line
    return cached


def read_hellaswag(path, limit=0):
    """The examples of a file in HellaSwag's format, one JSON object per line with 'ctx' (text),
    'endings' (four texts) and 'label' (the index of the correct one); the first `limit` (0: all)."""
    examples = []
    with open(path, 'rb') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ctx, endings, label = row['ctx'], row['endings'], int(row['label'])
                ok = isinstance(ctx, str) and isinstance(endings, list) and len(endings) == 4 and \
                    all(isinstance(e, str) for e in endings) and 0 <= label < 4
            except (ValueError, TypeError, KeyError):  # not JSON (or UTF-8), not an object, a key missing
                ok = False
            if not ok:
                raise UserError(f"{path} line {number} is not a HellaSwag example: expected a JSON object with "
                                f"'ctx' (text), 'endings' (4 texts) and 'label' (0-3), as in hellaswag_val.jsonl")
            examples.append((ctx, endings, label))
            if len(examples) == limit:
                break
    if not examples:
        raise UserError(f"{path} holds no HellaSwag examples")
    return examples


def tokenize_hellaswag(examples, codec):
    """(Examples, how many were skipped). A char-level vocabulary may lack some of HellaSwag's
    characters (Shakespeare's has no digits or brackets): such examples are skipped and counted,
    since no ending could be scored fairly without them."""
    tokenized = []
    for ctx, endings, label in examples:
        try:
            tokenized.append(Example(codec.encode(ctx), [codec.encode(' ' + e) for e in endings], label))
        except UserError:  # a character outside a char-level vocabulary
            continue
    return tokenized, len(examples) - len(tokenized)


def load_hellaswag(path, codec, limit=0, log=print):
    """hellaswag_file(path), read and tokenized: the Examples to score."""
    path = hellaswag_file(path)
    examples, skipped = tokenize_hellaswag(read_hellaswag(path, limit), codec)
    if skipped:
        log(f"hellaswag: {skipped} of {skipped + len(examples)} examples skipped: they have characters "
            f"the model's vocabulary lacks")
    if not examples:
        raise UserError(f"no example of {path} can be scored: each has characters the model's vocabulary lacks")
    return examples


@torch.no_grad()
def hellaswag_accuracy(model, examples, device, autocast, rank=0, world_size=1, batch_size=16, progress=False,
                       pad=False):
    """(examples scored, acc, acc_norm) for a GPT, rank r scoring every world_size-th example and the
    counts summed over the ranks. The four rows of each example, batch_size rows at a time (at least
    one example), go through the model as one padded batch. pad: every rank runs as many forwards
    (FSDP), a rank short of one scoring the first example again without counting it."""
    block_size = model.config.block_size
    mine = examples[rank::world_size]
    per_batch = max(1, batch_size // 4)
    n_batches = -(-len(examples[0::world_size] if pad else mine) // per_batch)  # rank 0 has the most
    counts = torch.zeros(3, dtype=torch.long, device=device)  # examples, correct by sum, correct by mean
    training = model.training
    model.eval()
    for i in tqdm(range(0, n_batches * per_batch, per_batch), desc='hellaswag', disable=not progress, leave=False):
        group = mine[i:i + per_batch] or examples[:1]
        counted = i < len(mine)
        # the context, then the ending, its last block_size + 1 tokens: inputs x and targets y, the
        # targets outside the ending -1 (ignored); rows padded on the right, which causal attention ignores
        rows = [((ex.context + ending)[-(block_size + 1):], len(ending)) for ex in group for ending in ex.endings]
        width = max(len(tokens) for tokens, _ in rows) - 1
        x = np.zeros((len(rows), width), dtype=np.int64)
        y = np.full((len(rows), width), -1, dtype=np.int64)
        for r, (tokens, n_ending) in enumerate(rows):
            n = len(tokens) - 1
            x[r, :n] = tokens[:-1]
            scored = min(n_ending, n)
            y[r, n - scored:n] = tokens[n + 1 - scored:]
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast:
            logits, _ = model(x, y)  # with targets the model returns every position's logits
        losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction='none')
        sums = losses.view(y.shape).sum(1)
        means = sums / (y >= 0).sum(1)
        labels = torch.tensor([ex.label for ex in group], device=device)
        counts += counted * torch.stack((torch.tensor(len(group), device=device),
                               (sums.view(-1, 4).argmin(1) == labels).sum(),
                               (means.view(-1, 4).argmin(1) == labels).sum()))
    if world_size > 1:
        torch.distributed.all_reduce(counts)
    model.train(training)
    n, correct, correct_norm = counts.tolist()
    return n, correct / n, correct_norm / n
