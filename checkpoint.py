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

Usage as a script, to export the weights alone (for sample.py, eval.py or init_from=<path>), or
a Hugging Face GPT-2 directory (for transformers and EleutherAI's lm_eval):

    python checkpoint.py export out/ckpt.pt out/model.pt
    python checkpoint.py export out/ckpt.pt out/hf --format=hf
"""

import codecs
import glob
import json
import os
import pickle
import pickletools
import random
import re
import sys
import zipfile

import numpy as np
import torch

from configurator import UserError
from model import CONV1D_WEIGHTS, GPT2_DEFAULTS, OPTIONS, architecture_of

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
    """Load a checkpoint written by save() (or by nanoGPT) without unpickling arbitrary objects.
    Anything else is refused in one line that says what it is instead."""
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
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0].split('. ')[0][:200]}); use an earlier checkpoint or start again") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
        what = f"a dict with keys {', '.join(map(str, list(ckpt)[:5]))}" if isinstance(ckpt, dict) else \
            f"a {type(ckpt).__name__}"
        raise UserError(f"{path} is a torch file but not a checkpoint of this repository: it holds {what}, "
                        f"with no 'model' entry of weights")
    version = ckpt.get('format_version', 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer version of this code (checkpoint format "
                        f"{version}, this code reads up to {FORMAT_VERSION}); update the code")
    # torch.compile'd models save their weights under _orig_mod. (nanoGPT's checkpoints do)
    ckpt['model'] = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
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
            raise UserError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl in it); {NOT_A_CHECKPOINT}")
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
    usage = "usage: python checkpoint.py export SRC DST [--format=pt|hf]"
    options = dict(a[2:].partition('=')[::2] for a in argv if a.startswith('--'))
    positional = [a for a in argv if not a.startswith('--')]
    if positional[:1] != ['export'] or len(positional) != 3 or set(options) - {'format'}:
        raise UserError(usage)
    src, dst = positional[1:]
    fmt = options.get('format', 'pt')
    if fmt not in ('pt', 'hf'):
        raise UserError(f"--format must be pt (weights only, for sample.py, eval.py and init_from) or hf "
                        f"(a Hugging Face GPT-2 directory), got {fmt!r}")
    ckpt = load(src)
    if fmt == 'pt':
        save(inference_state(ckpt), dst)
        print(f"wrote {dst} ({os.path.getsize(dst) / 2**20:.1f} MiB, from {os.path.getsize(src) / 2**20:.1f} MiB)")
        return
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise UserError(f"--format=hf writes a directory, and {dst} is a file")
    written = export_hf(ckpt, dst)
    print(f"wrote {dst}/: {', '.join(written)}")
    if 'vocab.json' not in written:
        vocab = ckpt.get('vocab') or {}
        print(f"note: no tokenizer files: Hugging Face's GPT-2 tokenizer holds GPT-2's BPE only, and this model's "
              f"vocabulary is {vocab.get('tokenizer', 'not recorded')} ({vocab.get('vocab_size', '?')} tokens); "
              f"transformers loads the model, lm_eval would need a tokenizer")


if __name__ == '__main__':
    from configurator import run
    run(export, sys.argv[1:])
