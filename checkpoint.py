"""
Checkpoints that survive being killed at any moment, and that resume a run exactly.

- Writes are atomic: a temporary file in the same directory, fsync, os.replace. A SIGKILL
  or a full disk during a save leaves the previous checkpoint as it was.
- A checkpoint holds every random state (python, numpy, torch CPU and CUDA, the data
  loader's generator, one set per rank), so a resumed run draws the same batches and the
  same dropout masks as a run that was never stopped.
- Loading uses torch.load(weights_only=True): tensors, numbers, strings and containers
  only, so a checkpoint cannot run code. The metadata (config, model args) is plain JSON.

Usage as a script, to export the weights alone (for sample.py or init_from=<path>):

    python checkpoint.py export out/ckpt.pt out/model.pt
"""

import glob
import json
import os
import pickle
import random
import sys
import zipfile

import numpy as np
import torch

from configurator import UserError

FORMAT_VERSION = 1


def save(state, path):
    """torch.save(state, path), atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp_prefix = f".{os.path.basename(path)}.tmp"
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(tmp_prefix) + '*')):
        os.remove(stale)  # left by a save that was killed (SIGKILL cannot be caught)
    tmp_path = os.path.join(directory, f"{tmp_prefix}{os.getpid()}")
    try:
        with open(tmp_path, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:  # KeyboardInterrupt too: never leave a half-written file behind
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        # torch's zip writer, failing again as it closes, hides a full disk's OSError behind a RuntimeError
        if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise
    # make the rename itself durable, so a power cut cannot bring back the old file
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path, map_location='cpu'):
    """Load a checkpoint written by save() (or by nanoGPT) without unpickling arbitrary objects."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {path}: it holds Python objects that only arbitrary "
                        f"unpickling could load ({str(e).splitlines()[-1].strip()}); "
                        f"re-save it with tensors and plain values only") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({str(e).splitlines()[0]}); "
                        f"use an earlier checkpoint or start again") from None
    if not isinstance(ckpt, dict) or 'model' not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this repository (no 'model' entry)")
    if ckpt.get('format_version', 0) > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer version of this code (checkpoint format "
                        f"{ckpt['format_version']}, this code reads up to {FORMAT_VERSION}); update the code")
    # torch.compile'd models save their weights under _orig_mod. (nanoGPT's checkpoints do)
    ckpt['model'] = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
    return ckpt


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


if __name__ == '__main__':
    def export(argv):
        if len(argv) != 3 or argv[0] != 'export':
            raise UserError("usage: python checkpoint.py export SRC_CKPT DST")
        src, dst = argv[1:]
        ckpt = load(src)
        save(inference_state(ckpt), dst)
        print(f"wrote {dst} ({os.path.getsize(dst) / 2**20:.1f} MiB, from {os.path.getsize(src) / 2**20:.1f} MiB)")

    from configurator import run
    run(export, sys.argv[1:])
