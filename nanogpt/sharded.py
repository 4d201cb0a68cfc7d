"""
Sharded checkpoints, for parallelism='fsdp': a directory, out_dir/ckpt/, where every rank writes its
own shard of the weights and optimizer moments with torch.distributed.checkpoint (DCP: .metadata and
one __<rank>_0.distcp file per rank), and rank 0 writes everything else (the ranks' random states,
iteration, config, vocabulary) to state.pt, last. The directory is written as .ckpt.tmp/ and then
renamed into place (see save_sharded), so a kill at any moment leaves a checkpoint that loads. DCP
reshards on loading: any number of ranks, or one process without any, can read it.
"""

import contextlib
import os
import pickle
import shutil
import warnings
from typing import NamedTuple

import torch

from nanogpt import checkpoint_file
from nanogpt.errors import UserError
from nanogpt.files import fsync_dir

STATE_FILE = 'state.pt'  # in a sharded checkpoint: all but the weights and the moments; written last


class Sharded(NamedTuple):
    """ckpt['optimizer'] of a sharded checkpoint: where the moments are. Each rank reads only
    its own shards of them, with load_optimizer_state(), once the model is sharded."""
    path: str


def sibling(path, kind):
    """.ckpt.tmp (a save in progress) or .ckpt.old (the previous checkpoint, during the swap) beside ckpt."""
    path = os.path.normpath(path)  # out/ckpt/ names out/.ckpt.tmp too
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}")


def _complete(directory):
    return all(os.path.isfile(os.path.join(directory, f)) for f in (STATE_FILE, '.metadata'))


def find_sharded(path):
    """The directory that holds the sharded checkpoint `path`, or None if there is none.

    Normally path itself. A save killed between its two renames (path -> .path.old, then
    .path.tmp -> path) leaves no path but two complete checkpoints: .path.tmp, the newer one,
    and .path.old. Reading picks .path.tmp, and so does the next save when it finishes the swap."""
    if os.path.exists(path):
        looks_sharded = os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in (STATE_FILE, '.metadata'))
        return path if looks_sharded else None
    for candidate in (sibling(path, 'tmp'), sibling(path, 'old')):
        if _complete(candidate):
            return candidate
    return None


def save_sharded(state, model, optimizer, path):
    """Write the sharded checkpoint directory `path`: every rank its shards of the model's weights
    and of the optimizer's moments (DCP), rank 0 `state` (the rest) as state.pt. A collective:
    every rank calls it with the same path; a single process without a process group can too.

    Atomic: it all goes to .path.tmp/ first. dcp.save returns on every rank once all ranks'
    files and the index (.metadata) are written and fsynced; state.pt comes last and marks the
    directory complete. Rank 0 then swaps it in: path -> .path.old, .path.tmp -> path, and
    removes .path.old. Killed before the swap, path is untouched; killed between the renames,
    find_sharded() loads .path.tmp. (One rename cannot replace a non-empty directory.)"""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    distributed = dist.is_initialized()
    master = not distributed or dist.get_rank() == 0
    tmp, old = sibling(path, 'tmp'), sibling(path, 'old')
    if master:
        _finish_swap(path)  # and remove what a killed or failed save left
    if distributed:
        dist.barrier()  # no rank writes into .path.tmp before rank 0 has removed the stale one
    model_state, optimizer_state = get_state_dict(model, optimizer)
    try:
        with _quiet_dcp():
            dcp.save({'model': model_state, 'optimizer': optimizer_state}, checkpoint_id=tmp)
        if master:
            checkpoint_file.save(state, os.path.join(tmp, STATE_FILE))
            fsync_dir(tmp)
    except BaseException as e:  # every rank gets DCP's CheckpointException when any rank failed to write
        if master:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk: free what the failed save took
        failures = getattr(e, 'failures', {})
        raise next((f[0] for f in failures.values() if isinstance(f[0], OSError)), e) from None
    if master:
        replacing = os.path.exists(path)
        if replacing:
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
        if replacing:
            shutil.rmtree(old)


def _finish_swap(path):
    """Complete the swap of a save killed between its two renames; remove what a save left."""
    current = find_sharded(path)
    if current is not None and current != path:
        os.rename(current, path)
    for leftover in (sibling(path, 'tmp'), sibling(path, 'old')):
        shutil.rmtree(leftover, ignore_errors=True)


def load(path, directory):
    """The checkpoint dict that checkpoint.load() returns for a file, from a sharded directory: the
    weights whole, in this process alone (DCP's no_dist), at the shapes the checkpoint's own
    index gives, so no model and no process group is needed."""
    import torch.distributed.checkpoint as dcp
    if not _complete(directory):
        raise UserError(f"{path} is an incomplete sharded checkpoint (no {STATE_FILE} or .metadata); "
                        f"use an earlier checkpoint or start again")
    ckpt = checkpoint_file.read(os.path.join(directory, STATE_FILE))
    if not isinstance(ckpt, dict) or 'model_args' not in ckpt:
        raise UserError(f"{path} is not a sharded checkpoint of this repository (no model_args in {STATE_FILE})")
    try:
        with _quiet_dcp():
            reader = dcp.FileSystemReader(directory)
            index = reader.read_metadata()
            weights = {key[1]: torch.empty(item.size, dtype=item.properties.dtype)
                       for name, item in index.state_dict_metadata.items()
                       if (key := index.planner_data[name])[0] == 'model'}
            dcp.load({'model': weights}, storage_reader=reader, no_dist=True)
    except _read_errors() as e:
        raise _corrupt(path, e) from None
    if ckpt['model_args'].get('tie_embeddings', True) and 'lm_head.weight' in weights:
        weights['lm_head.weight'] = weights['transformer.wte.weight']  # one tensor, as in the model
    return {**ckpt, 'model': weights, 'optimizer': Sharded(directory)}


def load_optimizer_state(ckpt, model, optimizer):
    """Give the optimizer the moments of a sharded checkpoint: each rank reads just its own shards,
    which DCP cuts to fit if this run has another number of ranks (a collective under a process
    group); model is the one the optimizer steps."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    state = {'optimizer': get_optimizer_state_dict(model, optimizer)}  # the shapes and shards to fill
    try:
        with _quiet_dcp():
            dcp.load(state, checkpoint_id=ckpt['optimizer'].path)
    except _read_errors() as e:  # DCP's CheckpointException on every rank when any rank failed
        raise _corrupt(ckpt['optimizer'].path, e) from None
    set_optimizer_state_dict(model, optimizer, state['optimizer'])


def _read_errors():
    from torch.distributed.checkpoint.api import CheckpointException
    return CheckpointException, OSError, RuntimeError, ValueError, EOFError, KeyError, pickle.UnpicklingError


def _corrupt(path, e):
    """The one-line error for a checkpoint that does not read, with the first line of why (from
    inside the CheckpointException in which DCP wraps each rank's error)."""
    failures = getattr(e, 'failures', None)
    if failures:
        e = next(iter(failures.values()))[0]
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(f"checkpoint {path} is corrupt or truncated ({detail}); use an earlier checkpoint or start again")


@contextlib.contextmanager
def _quiet_dcp():
    """DCP warns on every use without a process group that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'torch\.distributed is (disabled|unavailable)')
        yield
