"""
The model that init_from names, decided in one place (source_of) for train.py, sample.py, eval.py
and bench.py:

    'scratch'                         a new GPT of the config's architecture
    'resume'                          out_dir's checkpoint: ckpt.pt, or the sharded directory ckpt/ (fsdp)
    a path: a checkpoint file, a sharded checkpoint directory, or a Hugging Face GPT-2 directory
    'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'   OpenAI's GPT-2 weights (transformers downloads them)

An existing path always wins over a name: a checkpoint file called gpt2-small.pt is a checkpoint.
"""

import os
from typing import NamedTuple

from model import GPT, OPTIONS, GPTConfig, architecture_of
from nanogpt import checkpoint, hf, sharded
from nanogpt.errors import ConfigError, UserError
from nanogpt.tokenizer import model_vocab_size, read_tokenizer_json, read_vocab


class Source(NamedTuple):
    """What init_from names: kind 'scratch', 'checkpoint' (path: a file or a sharded directory) or
    'gpt2' (path: a GPT-2 name or a Hugging Face directory); resume: it is the run's own checkpoint."""
    kind: str
    path: str = ''
    resume: bool = False


def source_of(init_from, out_dir, sharded_run=None):
    """The Source that init_from names. 'resume' reads out_dir/ckpt/ for a parallelism='fsdp' run
    (sharded_run=True), out_dir/ckpt.pt for 'ddp' (False), or the newer of the two (None: sample.py)."""
    if init_from == 'scratch':
        return Source('scratch')
    if init_from == 'resume':
        return Source('checkpoint', checkpoint.resume_path(out_dir, sharded_run), resume=True)
    if sharded.find_sharded(init_from):
        return Source('checkpoint', init_from)
    if os.path.isdir(init_from):
        if not hf.is_hf_dir(init_from):
            raise UserError(f"{init_from} is a directory but not a Hugging Face GPT-2 checkpoint (no config.json) nor "
                            f"a sharded one (no state.pt); init_from takes a checkpoint file or directory, a GPT-2 "
                            f"name or a save_pretrained directory")
        return Source('gpt2', init_from)
    if os.path.lexists(init_from):
        return Source('checkpoint', init_from)  # checkpoint.load says in one line if it is none
    if init_from.startswith('gpt2'):
        return Source('gpt2', init_from)
    if os.sep in init_from or os.path.splitext(init_from)[1]:  # meant as a path
        raise UserError(f"no checkpoint at {init_from}")
    raise ConfigError(f"init_from must be 'scratch', 'resume', 'gpt2*' or an existing checkpoint "
                      f"file or directory, got {init_from!r}")


def architecture_config(model_args):
    """GPTConfig(**model_args), with an impossible architecture reported in one line."""
    try:
        return GPTConfig(**model_args)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_model(source, model_args, log=None):
    """(model, checkpoint or None) for a Source: a new GPT with model_args (every GPTConfig field), the
    architecture and weights a checkpoint holds, or OpenAI's GPT-2 weights, which refuse any
    architecture option in model_args that is not GPT-2's. model_args['dropout'] applies in every
    case. The model stays on the CPU."""
    log = log or (lambda *args: None)
    dropout = model_args.get('dropout', 0.0)
    if source.kind == 'scratch':
        log("initializing a new model from scratch")
        return GPT(architecture_config(model_args)), None
    if source.kind == 'checkpoint':
        log(f"{'resuming training' if source.resume else 'initializing'} from {source.path}")
        # on the CPU: the random states must stay there; weights and moments move with the model
        ckpt = checkpoint.load(source.path, map_location='cpu')
        return model_from(ckpt, source.path, dropout), ckpt
    log(f"initializing from OpenAI GPT-2 weights: {source.path}")
    return hf.load_gpt2(source.path, {k: v for k, v in model_args.items() if k in ('dropout', *OPTIONS)}), None


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


def load_model(init_from, out_dir):
    """(model, vocabulary, checkpoint, source) for inference: from a checkpoint, whose entries other
    than the weights and the training state come back as its third item, or from GPT-2 weights (None)."""
    source = source_of(init_from, out_dir)
    if source.kind == 'scratch':
        raise ConfigError("init_from must be 'resume', a checkpoint file, 'gpt2*' or a directory, got 'scratch'")
    model, ckpt = build_model(source, {'dropout': 0.0})
    if ckpt is None:  # OpenAI's GPT-2, or a Hugging Face directory (checkpoint.py export writes one)
        return model, hf_vocab(source.path, model.config.vocab_size), None, source
    ckpt = {k: v for k, v in ckpt.items() if k not in ('model', 'optimizer', 'scaler', 'rng')}
    vocab = ckpt.get('vocab')
    if vocab is None:  # a nanoGPT checkpoint: the vocabulary is in the dataset's meta file
        data_dir = os.path.join('data', ckpt.get('config', {}).get('dataset', ''))
        vocab = read_vocab(data_dir)
        n_outputs = model.config.vocab_size
        if vocab['vocab_size'] > n_outputs or (vocab['tokenizer'] == 'char' and vocab['vocab_size'] != n_outputs):
            raise UserError(f"{source.path} holds no vocabulary and the one in {data_dir} "
                            f"({vocab['tokenizer']}, {vocab['vocab_size']} tokens) does not fit its {n_outputs} outputs")
    return model, vocab, ckpt, source


GPT2_VOCAB = {'tokenizer': 'gpt2', 'vocab_size': 50257}


def hf_vocab(path, n_outputs):
    """The vocabulary of GPT-2 weights: a directory's own tokenizer.json (a trained BPE or another tiktoken
    encoding, as checkpoint.py export writes them; GPT-2's own works too), else GPT-2's BPE, which a model of
    another output size was not trained on."""
    tokenizer_json = os.path.join(path, 'tokenizer.json')
    if os.path.isfile(tokenizer_json):
        vocab = read_tokenizer_json(tokenizer_json, "the directory's")
        if vocab['vocab_size'] > n_outputs:
            raise UserError(f"{tokenizer_json} has {vocab['vocab_size']:,} tokens, more than the model's "
                            f"{n_outputs:,} outputs: the directory's tokenizer is not the model's")
        return vocab
    if not GPT2_VOCAB['vocab_size'] <= n_outputs <= model_vocab_size(GPT2_VOCAB):
        raise UserError(f"{path} has no tokenizer.json, and its model's {n_outputs:,} outputs are not GPT-2's "
                        f"{GPT2_VOCAB['vocab_size']:,} tokens: put the tokenizer the model was trained on in it "
                        f"(checkpoint.py export --format=hf writes it), or sample from the checkpoint")
    return dict(GPT2_VOCAB)
