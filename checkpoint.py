"""
Checkpoints that survive being killed at any moment, and that resume a run exactly.

- Writes are atomic: a temporary file in the same directory, fsync, os.replace. A SIGKILL
  or a full disk during a save leaves the previous checkpoint as it was.
- A checkpoint holds every random state (python, numpy, torch CPU and CUDA, the data
  loader's generator, one set per rank), so a resumed run draws the same batches and the
  same dropout masks as a run that was never stopped.
- Loading uses torch.load(weights_only=True): tensors, numbers, strings and containers
  only, so a checkpoint cannot run code. The metadata (config, model args) is plain JSON.
  Anything else given as a checkpoint (a text file, another program's pickle, a truncated
  file, ...) is refused in one line that says what it is (check_kind).
- Under FSDP (parallelism='fsdp') a checkpoint is a directory, out_dir/ckpt/: every rank
  writes its own shard of the weights and optimizer moments with torch.distributed.checkpoint
  (DCP: .metadata and one __<rank>_0.distcp file per rank), and rank 0 writes everything else
  (the ranks' random states, iteration, config, vocabulary) to state.pt, last. The directory is
  written as .ckpt.tmp/ and then renamed into place (see save_sharded), so a kill at any
  moment leaves a checkpoint that loads. DCP reshards on loading: any number of ranks, or one
  process without any, can read it.

Usage as a script, to export the weights alone (for sample.py, eval.py or init_from=<path>) from
a checkpoint file or a sharded directory (no ranks or GPUs needed), or a Hugging Face GPT-2
directory (for transformers and EleutherAI's lm_eval):

    python checkpoint.py export out/ckpt.pt out/model.pt
    python checkpoint.py export out/ckpt out/model.pt
    python checkpoint.py export out/ckpt.pt out/hf --format=hf
"""

import codecs
import contextlib
import glob
import json
import os
import pickle
import pickletools
import random
import re
import shutil
import sys
import warnings
import zipfile
from typing import NamedTuple

import numpy as np
import torch

from configurator import UserError
from model import ARCHITECTURE, CONV1D_WEIGHTS, GPT2_DEFAULTS, OPTIONS, architecture_of

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
    _fsync_dir(directory)  # make the rename itself durable, so a power cut cannot bring back the old file


def _fsync_dir(directory):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path, map_location='cpu'):
    """Load a checkpoint written by save() (or by nanoGPT) without unpickling arbitrary objects,
    or the sharded checkpoint directory that save_sharded() wrote: then the weights are read
    whole (in one process, without any of the ranks that wrote them), and 'optimizer' only says
    where the moments are, for load_optimizer_state(). Anything else is refused in one line that
    says what it is instead."""
    if not os.path.isfile(path):
        directory = find_sharded(path)
        if directory is not None:
            return _load_sharded(path, directory)
    ckpt = _read(path, map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        what = f"a dict with keys {', '.join(map(str, list(ckpt)[:5]))}" if isinstance(ckpt, dict) else \
            f"a {type(ckpt).__name__}"
        raise UserError(f"{path} is a torch file but not a checkpoint of this repository: it holds {what}, "
                        f"with no 'model' entry of weights")
    # torch.compile'd models save their weights under _orig_mod. (nanoGPT's checkpoints do)
    ckpt['model'] = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
    return ckpt


def _read(path, map_location='cpu'):
    """torch.load(path, weights_only=True), with every way it can fail said in one line."""
    check_kind(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not pickles_complete(path):
            raise UserError(f"checkpoint {path} is corrupt or truncated (its pickle is cut short or damaged); "
                            f"use an earlier checkpoint or start again") from None
        found = sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(e)))) or [str(e).splitlines()[0]]
        raise UserError(f"refusing to load {path}: it holds Python objects that only arbitrary "
                        f"unpickling could load ({', '.join(found)}); "
                        f"re-save it with tensors and plain values only") from None
    except MemoryError:
        raise
    except Exception as e:  # whatever a damaged file makes torch's reader raise
        detail = (str(e).splitlines() or [''])[0].split('. ')[0][:200]
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {detail}); "
                        f"use an earlier checkpoint or start again") from None
    version = ckpt.get('format_version', 0) if isinstance(ckpt, dict) else 0
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer version of this code (checkpoint format "
                        f"{version}, this code reads up to {FORMAT_VERSION}); update the code")
    return ckpt


ZIP_MAGIC = b'PK\x03\x04'  # torch.save's format since torch 1.6: a zip archive
# torch.save's format before 1.6: pickles in a row, the first of this magic number
LEGACY_MAGIC = b'\x80\x02\x8a\x0a' + (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')
NOT_A_CHECKPOINT = "pass a checkpoint that train.py or checkpoint.py export wrote"


def check_kind(path):
    """Refuse in one line anything at path that is not a torch checkpoint, naming what it is:
    missing, not a file, unreadable, empty, text, a zip or pickle of another program, a
    safetensors file, or bytes of no known format."""
    if not os.path.lexists(path):
        raise UserError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a checkpoint file; {NOT_A_CHECKPOINT}")
    if not os.path.isfile(path):
        raise UserError(f"{path} is not a regular file (a broken link, device or pipe); {NOT_A_CHECKPOINT}")
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    if not head:
        raise UserError(f"{path} is empty (0 bytes), not a checkpoint: a save that never finished? {NOT_A_CHECKPOINT}")
    if head.startswith(LEGACY_MAGIC):
        return
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):  # the index at the end of the zip is gone
            raise UserError(f"checkpoint {path} is corrupt or truncated (its zip archive has no end: cut short?); "
                            f"use an earlier checkpoint or start again") from None
        if not any(n.endswith('data.pkl') for n in names):
            raise UserError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl in it); "
                            f"{NOT_A_CHECKPOINT}")
        return
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        raise UserError(f"{path} is a Python pickle written by another program (pickle.dump, protocol {head[1]}), "
                        f"not a torch checkpoint; {NOT_A_CHECKPOINT}")
    if len(head) >= 10 and head[8:10] == b'{"':  # 8 bytes of header length, then a JSON header
        raise UserError(f"{path} is a safetensors file; this code reads torch checkpoints (torch.save) and "
                        f"Hugging Face GPT-2 directories")
    try:  # a character cut in two at byte 512 is fine: the decoder keeps it for a later final=True
        text = codecs.getincrementaldecoder('utf-8')().decode(head)
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in '\t\n\r\f' for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ''
        raise UserError(f"{path} is a text file (it starts {first!r}), not a checkpoint; {NOT_A_CHECKPOINT}")
    raise UserError(f"{path} is not a checkpoint: binary data of no format this code knows (it starts "
                    f"{head[:8].hex(' ')}); {NOT_A_CHECKPOINT}")


def pickles_complete(path):
    """Whether the pickles of a torch checkpoint are whole: parsed opcode by opcode, nothing run.
    Tells a truncated or damaged file from one whose objects weights_only loading refuses."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
            for _ in pickletools.genops(data):
                pass
        else:  # magic number, protocol version, system info, the object, the storage keys
            with open(path, 'rb') as f:
                for _ in range(5):
                    for _ in pickletools.genops(f):
                        pass
        return True
    except Exception:
        return False


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


# -----------------------------------------------------------------------------
# sharded checkpoints (parallelism='fsdp')

STATE_FILE = 'state.pt'  # in a sharded checkpoint: all but the weights and the moments; written last


class Sharded(NamedTuple):
    """ckpt['optimizer'] of a sharded checkpoint: where the moments are. Each rank reads only
    its own shards of them, with load_optimizer_state(), once the model is sharded."""
    path: str


def _sibling(path, kind):
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
    for candidate in (_sibling(path, 'tmp'), _sibling(path, 'old')):
        if _complete(candidate):
            return candidate
    return None


def resume_path(out_dir, sharded=None):
    """The checkpoint that init_from=resume continues: out_dir/ckpt/ for parallelism='fsdp'
    (sharded=True), out_dir/ckpt.pt for 'ddp' (False); None (sample.py): the newer of the two."""
    single, directory = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'ckpt')
    found = find_sharded(directory)
    if sharded is None:
        if found and os.path.isfile(single):
            return max((single, directory), key=lambda p: os.path.getmtime(p if p == single else found))
        return directory if found else single
    if sharded and not found and os.path.isfile(single):
        raise UserError(f"{single} is the checkpoint of a parallelism='ddp' run: resume it with --parallelism=ddp, "
                        f"or export its weights (python checkpoint.py export) and start an fsdp run from them")
    if not sharded and found and not os.path.isfile(single):
        raise UserError(f"{directory} is the sharded checkpoint of a parallelism='fsdp' run: resume it with "
                        f"--parallelism=fsdp (on any number of ranks), or export its weights (python checkpoint.py export)")
    return directory if sharded else single


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
    tmp, old = _sibling(path, 'tmp'), _sibling(path, 'old')
    if master:
        _finish_swap(path)  # and remove what a killed or failed save left
    if distributed:
        dist.barrier()  # no rank writes into .path.tmp before rank 0 has removed the stale one
    model_state, optimizer_state = get_state_dict(model, optimizer)
    try:
        with _quiet_dcp():
            dcp.save({'model': model_state, 'optimizer': optimizer_state}, checkpoint_id=tmp)
        if master:
            save(state, os.path.join(tmp, STATE_FILE))
            _fsync_dir(tmp)
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
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
        if replacing:
            shutil.rmtree(old)


def _finish_swap(path):
    """Complete the swap of a save killed between its two renames; remove what a save left."""
    current = find_sharded(path)
    if current is not None and current != path:
        os.rename(current, path)
    for leftover in (_sibling(path, 'tmp'), _sibling(path, 'old')):
        shutil.rmtree(leftover, ignore_errors=True)


def _load_sharded(path, directory):
    """The checkpoint dict that load() returns for a file, from a sharded directory: the
    weights whole, in this process alone (DCP's no_dist), at the shapes the checkpoint's own
    index gives, so no model and no process group is needed."""
    import torch.distributed.checkpoint as dcp
    if not _complete(directory):
        raise UserError(f"{path} is an incomplete sharded checkpoint (no {STATE_FILE} or .metadata); "
                        f"use an earlier checkpoint or start again")
    ckpt = _read(os.path.join(directory, STATE_FILE))
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
    """Give the optimizer the checkpoint's state. From a sharded checkpoint each rank reads just
    its own shards of the moments, which DCP cuts to fit if this run has another number of
    ranks (a collective under a process group); model is the one the optimizer steps."""
    if not isinstance(ckpt['optimizer'], Sharded):
        optimizer.load_state_dict(ckpt['optimizer'])
        return
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
    trash = _sibling(path, 'deleted')
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    shutil.rmtree(trash)


def disk_size(path):
    """Bytes of a checkpoint file, or of all the files of a sharded directory."""
    path = find_sharded(path) or path
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


# -----------------------------------------------------------------------------
# export

def export_hf(ckpt, directory):
    """Write a checkpoint's model as a Hugging Face GPT-2 directory (config.json, model.safetensors and,
    for GPT-2 BPE vocabularies, the tokenizer's files) that transformers' GPT2LMHeadModel loads and
    EleutherAI's lm_eval runs. Hugging Face's GPT-2 has GPT-2's architecture only: any other option is
    refused; attn_impl, which changes how attention is computed and not what, may be any. Returns the
    files written."""
    args = architecture_of(ckpt['model_args'])
    for key in OPTIONS:
        if key != 'attn_impl' and args[key] != GPT2_DEFAULTS[key]:
            raise UserError(f"--format=hf writes Hugging Face's GPT-2, which has no option {key}={args[key]!r} "
                            f"(GPT-2's is {GPT2_DEFAULTS[key]!r}); export this model with --format=pt")
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("--format=hf needs the safetensors package: pip install safetensors") from None
    vocab = ckpt.get('vocab') or {}
    is_gpt2_bpe = vocab.get('tokenizer') in ('gpt2', 'r50k_base')  # r50k_base is GPT-2's BPE under another name
    itos = vocab.get('itos', [])
    eot = 50256 if is_gpt2_bpe else itos.index('<|endoftext|>') if '<|endoftext|>' in itos else None
    config = {
        'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
        'vocab_size': args['vocab_size'], 'n_positions': args['block_size'], 'n_ctx': args['block_size'],
        'n_embd': args['n_embd'], 'n_layer': args['n_layer'], 'n_head': args['n_head'], 'n_inner': None,
        'activation_function': 'gelu_new',  # the tanh approximation, as model.MLP computes it
        'layer_norm_epsilon': 1e-5, 'initializer_range': 0.02, 'tie_word_embeddings': True,
        'resid_pdrop': 0.0, 'embd_pdrop': 0.0, 'attn_pdrop': 0.0, 'bos_token_id': eot, 'eos_token_id': eot,
        'torch_dtype': 'float32',
    }
    weights = {}
    for name, value in ckpt['model'].items():
        name = name.replace('attn.mha.in_proj_', 'attn.c_attn.').replace('attn.mha.out_proj.', 'attn.c_proj.')
        if name == 'lm_head.weight':
            continue  # tied to transformer.wte.weight, which Hugging Face ties back on loading
        weights[name] = (value.t() if name.endswith(CONV1D_WEIGHTS) else value).float().contiguous()
    if not args['bias']:  # Hugging Face's GPT-2 always has biases: zeros compute the same
        for name in list(weights):
            if name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight', '.c_attn.weight', '.c_proj.weight',
                              '.c_fc.weight')):
                weights[name[:-len('weight')] + 'bias'] = torch.zeros(weights[name].shape[-1])
    os.makedirs(directory, exist_ok=True)
    written = ['config.json', 'model.safetensors']
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    save_file(weights, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
    if is_gpt2_bpe:
        written += write_gpt2_tokenizer(directory, args['block_size'])
    return written


def write_gpt2_tokenizer(directory, max_length):
    """GPT-2's tokenizer files in Hugging Face's layout: vocab.json and merges.txt are OpenAI's
    encoder.json and vocab.bpe, byte for byte, read through tiktoken's cache (so offline too)."""
    import tiktoken.load
    base = 'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/'
    files = {'vocab.json': ('encoder.json', '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783'),
             'merges.txt': ('vocab.bpe', '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5')}
    for name, (source, sha256) in files.items():
        try:
            data = tiktoken.load.read_file_cached(base + source, sha256)
        except Exception as e:  # no network, or a cache without the file
            raise UserError(f"cannot read GPT-2's {source} ({type(e).__name__}) for the tokenizer files: tiktoken "
                            f"caches it in $TIKTOKEN_CACHE_DIR; offline, set TIKTOKEN_CACHE_DIR to a folder seeded on a "
                            f"machine with internet by: TIKTOKEN_CACHE_DIR=/path/to/cache python -c \"import "
                            f"tiktoken; tiktoken.get_encoding('gpt2')\"") from None
        with open(os.path.join(directory, name), 'wb') as f:
            f.write(data)
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
        json.dump({'tokenizer_class': 'GPT2Tokenizer', 'model_max_length': max_length, 'bos_token': '<|endoftext|>',
                   'eos_token': '<|endoftext|>', 'unk_token': '<|endoftext|>', 'add_prefix_space': False}, f, indent=2)
    return [*files, 'tokenizer_config.json']


def export(argv):
    """python checkpoint.py export SRC DST [--format=pt|hf]"""
    usage = "usage: python checkpoint.py export SRC DST [--format=pt|hf] (SRC: a checkpoint file or a sharded directory)"
    options = dict(a[2:].partition('=')[::2] for a in argv if a.startswith('--'))
    positional = [a for a in argv if not a.startswith('--')]
    if positional[:1] != ['export'] or len(positional) != 3 or set(options) - {'format'}:
        raise UserError(usage)
    src, dst = positional[1:]
    fmt = options.get('format', 'pt')
    if fmt not in ('pt', 'hf'):
        raise UserError(f"--format must be pt (weights only, for sample.py, eval.py and init_from) or hf "
                        f"(a Hugging Face GPT-2 directory), got {fmt!r}")
    ckpt = load(src)  # a file, or a sharded directory: the weights whole, in this process alone
    if fmt == 'hf' and os.path.exists(dst) and not os.path.isdir(dst):
        raise UserError(f"--format=hf writes a directory, and {dst} is a file")
    try:
        if fmt == 'pt':
            save(inference_state(ckpt), dst)
            print(f"wrote {dst} ({os.path.getsize(dst) / 2**20:.1f} MiB, from {disk_size(src) / 2**20:.1f} MiB)")
            return
        model_args_of(ckpt, src)  # the architecture decides the Hugging Face config
        written = export_hf(ckpt, dst)
    except OSError as e:  # a full disk, no permission, a missing parent directory
        raise UserError(f"could not write {dst} ({e.strerror}); choose another destination") from None
    print(f"wrote {dst}/: {', '.join(written)}")
    if 'vocab.json' not in written:
        vocab = ckpt.get('vocab') or {}
        print(f"note: no tokenizer files: Hugging Face's GPT-2 tokenizer holds GPT-2's BPE only, and this model's "
              f"vocabulary is {vocab.get('tokenizer', 'not recorded')} ({vocab.get('vocab_size', '?')} tokens); "
              f"transformers loads the model, lm_eval would need a tokenizer")


if __name__ == '__main__':
    from configurator import run
    run(export, sys.argv[1:])
