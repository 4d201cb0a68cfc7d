"""
Token batches from a prepared dataset's train.bin / val.bin: random windows for training
(RandomBatches, nanoGPT's loader, whose generator state is its position in a checkpoint) and every
token once, in order, for evaluation (sequential_batches).
"""

import os

import numpy as np
import torch
from tqdm import tqdm

from nanogpt.errors import UserError


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
