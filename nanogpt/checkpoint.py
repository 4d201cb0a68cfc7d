"""
Checkpoints that survive being killed at any moment, and that resume a run exactly.

- Writes are atomic (checkpoint_file.save, or sharded.save_sharded for parallelism='fsdp'): a
  SIGKILL or a full disk during a save leaves the previous checkpoint as it was.
- A checkpoint holds every random state (python, numpy, torch CPU and CUDA, the data loader's
  generator, one set per rank), so a resumed run draws the same batches and the same dropout
  masks as a run that was never stopped.
- Loading runs no code (torch.load with weights_only=True) and the metadata (config, model
  args, vocabulary) is plain JSON. Anything that is not a checkpoint is refused in one line.

save_training_state() and restore_training_state() are the two halves of what train.py keeps
across a restart; load() reads any checkpoint, a file or a sharded directory, for any script.
"""

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from model import ARCHITECTURE
from nanogpt import checkpoint_file, sharded
from nanogpt.errors import UserError

FORMAT_VERSION = checkpoint_file.FORMAT_VERSION


def load(path, map_location='cpu'):
    """Load a checkpoint written by save() (or by nanoGPT) without unpickling arbitrary objects,
    or the sharded checkpoint directory that sharded.save_sharded() wrote: then the weights are
    read whole (in one process, without any of the ranks that wrote them), and 'optimizer' only
    says where the moments are, for restore_training_state(). Anything else is refused in one line that
    says what it is instead."""
    if not os.path.isfile(path):
        directory = sharded.find_sharded(path)
        if directory is not None:
            return sharded.load(path, directory)
    ckpt = checkpoint_file.read(path, map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        what = f"a dict with keys {', '.join(map(str, list(ckpt)[:5]))}" if isinstance(ckpt, dict) else \
            f"a {type(ckpt).__name__}"
        raise UserError(f"{path} is a torch file but not a checkpoint of this repository: it holds {what}, "
                        f"with no 'model' entry of weights")
    # torch.compile'd models save their weights under _orig_mod. (nanoGPT's checkpoints do)
    ckpt['model'] = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
    return ckpt


def model_args_of(ckpt, path):
    """A loaded checkpoint's model_args, refused in one line when it has none (then it is not a
    checkpoint of this repository or nanoGPT) or names options this code does not know."""
    args = ckpt.get('model_args')
    if not isinstance(args, dict):
        raise UserError(f"{path} holds weights but no model_args to build the model from: not a checkpoint "
                        f"of this repository or nanoGPT")
    unknown = set(args) - {*ARCHITECTURE, 'dropout'}
    if unknown:
        raise UserError(f"{path} was written by a newer version of this code (model options "
                        f"{', '.join(sorted(unknown))}, unknown here); update the code")
    return args


def check_json(metadata):
    """Metadata must be plain JSON, so any tool can read it and loading it runs no code."""
    try:
        return json.loads(json.dumps(metadata))
    except TypeError as e:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {e}") from None


def inference_state(ckpt):
    """The part of a checkpoint that sampling and fine-tuning need: about a third of the size
    of a full checkpoint, which also holds AdamW's two moments for every weight."""
    keep = ('model', 'model_args', 'vocab', 'config', 'provenance', 'iter_num', 'best_val_loss', 'format_version')
    return {k: ckpt[k] for k in keep if k in ckpt}


def resume_path(out_dir, sharded_run=None):
    """The checkpoint that init_from=resume continues: out_dir/ckpt/ for parallelism='fsdp'
    (sharded_run=True), out_dir/ckpt.pt for 'ddp' (False); None (sample.py): the newer of the two."""
    single, directory = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'ckpt')
    found = sharded.find_sharded(directory)
    if sharded_run is None:
        if found and os.path.isfile(single):
            return max((single, directory), key=lambda p: os.path.getmtime(p if p == single else found))
        return directory if found else single
    if sharded_run and not found and os.path.isfile(single):
        raise UserError(f"{single} is the checkpoint of a parallelism='ddp' run: resume it with --parallelism=ddp, "
                        f"or export its weights (python checkpoint.py export) and start an fsdp run from them")
    if not sharded_run and found and not os.path.isfile(single):
        raise UserError(f"{directory} is the sharded checkpoint of a parallelism='fsdp' run: resume it with "
                        f"--parallelism=fsdp (on any number of ranks), or export its weights (python checkpoint.py export)")
    return directory if sharded_run else single


def resumable(out_dir):
    """Whether out_dir holds a checkpoint that init_from=resume continues: ckpt.pt, or the sharded ckpt/ of a
    parallelism='fsdp' run."""
    single, directory = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'ckpt')
    return os.path.isfile(single) or sharded.find_sharded(directory) is not None


# -----------------------------------------------------------------------------
# the training state

def save_training_state(path, model, optimizer, state, sharded_run):
    """Write a training checkpoint: the model's weights, the optimizer's moments and `state` (all
    else: iteration, config, every rank's random states, ...). sharded_run: every rank calls this and
    writes its shards into the directory path; otherwise rank 0 alone writes the file path. A failed
    write is a UserError that names path; the previous checkpoint is untouched."""
    try:
        if sharded_run:
            sharded.save_sharded(state, model, optimizer, path)
        else:
            checkpoint_file.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), **state}, path)
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror}); the previous checkpoint "
                        f"is untouched. Free some disk space and resume") from None


def restore_training_state(ckpt, path, model, optimizer, scaler, optimizer_name, loader_generator, device, launch,
                           seed, log=print):
    """Continue the run a checkpoint (loaded from path) saved: the optimizer's moments (with fsdp each rank
    reads its own shards: a collective), the gradient scaler, and this rank's random states. The
    optimizer's learning rates, decay and betas stay the config's. A checkpoint of another number of
    ranks cannot continue each rank's random streams: they restart from seed, rank and iteration.
    Returns (iter_num, best_val_loss)."""
    if 'optimizer' not in ckpt:
        raise UserError(f"{path} holds weights only and cannot resume training; "
                        f"pass it as --init_from={path} to start a new run from it")
    saved_optimizer = ckpt.get('config', {}).get('optimizer', 'adamw')
    if saved_optimizer != optimizer_name:
        raise UserError(f"{path} was trained with optimizer={saved_optimizer!r}; resume it with "
                        f"--optimizer={saved_optimizer}")
    settings = [{k: v for k, v in group.items() if k != 'params'} for group in optimizer.param_groups]
    if isinstance(ckpt['optimizer'], sharded.Sharded):
        sharded.load_optimizer_state(ckpt, model, optimizer)
    else:
        optimizer.load_state_dict(ckpt['optimizer'])
    for group, setting in zip(optimizer.param_groups, settings):
        group.update(setting)
    if ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    iter_num, rng = ckpt['iter_num'], ckpt.get('rng') or []
    if len(rng) == launch.world_size:
        set_rng_state(rng[launch.rank], loader_generator, device)
    else:
        log(f"note: checkpoint has random states for {len(rng)} rank(s), this run has {launch.world_size}; "
            f"data order will differ from an uninterrupted run")
        torch.manual_seed(seed + launch.rank + iter_num)
        loader_generator.manual_seed(seed + launch.rank + iter_num)
    return iter_num, float(ckpt['best_val_loss'])


def rotate_snapshots(out_dir, keep_last):
    """Keep the newest keep_last snapshots of a run (by iteration: past 9,999,999 the names stop sorting)."""
    snapshots = sorted((f for f in os.listdir(out_dir) if snapshot_iteration(f) is not None), key=snapshot_iteration)
    for old in snapshots[:-keep_last]:
        remove(os.path.join(out_dir, old))  # a file, or a sharded directory


def snapshot_iteration(name):
    """The iteration of a snapshot that train.py keeps, from its name (ckpt_0010000.pt, or the
    sharded directory ckpt_0010000); None for any other name."""
    match = re.fullmatch(r'ckpt_(\d{7,})(\.pt)?', os.path.basename(os.path.normpath(name)))
    return int(match[1]) if match else None


def remove(path):
    """Delete a checkpoint file or sharded directory (a snapshot that keep_last rotates out). A
    directory is renamed first: a kill halfway leaves no partial checkpoint under its name."""
    if not os.path.isdir(path):
        os.remove(path)
        return
    trash = sharded.sibling(path, 'deleted')
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash)


def disk_size(path):
    """Bytes of a checkpoint file, or of all the files of a sharded directory."""
    path = sharded.find_sharded(path) or path
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)



# -----------------------------------------------------------------------------
# random states

def rng_state(loader_generator, device):
    """Every random state this process uses, in types that weights_only loading accepts."""
    np_state = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': np_state[2],
                  'has_gauss': np_state[3], 'cached_gaussian': np_state[4]},
        'torch': torch.get_rng_state(),
        'loader': loader_generator.get_state(),
    }
    if str(device).startswith('cuda'):  # this rank's GPU only: another run may see other GPUs
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, loader_generator, device):
    random.setstate(_as_tuples(state['python']))
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    loader_generator.set_state(state['loader'])
    if 'cuda' in state and str(device).startswith('cuda'):
        torch.cuda.set_rng_state(state['cuda'], device)


def _as_tuples(x):
    # random.setstate wants the tuples it gave; a load may hand back lists
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x
