"""
Evaluate a checkpoint or OpenAI's GPT-2: the loss and bits per byte on the whole val set, and
HellaSwag accuracy (see evaluation.py). Prints one line per metric on stdout (notes and
progress go to stderr); --log=True also appends them to the run's log.jsonl.

$ python eval.py --out_dir=out-shakespeare-char --tasks=bpb
$ python eval.py --init_from=gpt2 --tasks=hellaswag          # acc_norm 0.2955, as build-nanogpt and llm.c report
$ python eval.py --out_dir=out --hellaswag_file=hellaswag_val.jsonl --log=True   # offline, recorded with the run
"""

import difflib
import os
import sys
import time
from types import SimpleNamespace

import configurator
from nanogpt import evaluation, runlog
from nanogpt.batches import check_token_file
from nanogpt.device import autocast_context, resolve_device, resolve_dtype
from nanogpt.errors import ConfigError, UserError
from nanogpt.loading import load_model, source_of
from nanogpt.tokenizer import Codec, describe_vocab, read_vocab

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir/ckpt.pt or ckpt/), a checkpoint file or sharded directory, a gpt2 variant (e.g. 'gpt2-xl') or a HF GPT-2 dir
out_dir = 'out'  # ignored if init_from is not 'resume'
tasks = 'bpb,hellaswag'  # comma-separated: 'bpb' (val loss and bits per byte, whole val set), 'hellaswag'
dataset = ''  # whose val.bin 'bpb' reads; '': the one the checkpoint was trained on (GPT-2 weights need one)
hellaswag_file = ''  # a local hellaswag_val.jsonl (offline machines); '': downloaded once into ~/.cache/nanogpt
hellaswag_limit = 0  # score only the first N examples (0: all 10,042)
batch_size = 8  # sequences per forward pass (HellaSwag: 4 per example)
log = False  # also append the metrics to the log.jsonl beside the checkpoint, with its iteration
device = 'auto'  # 'cpu', 'cuda', 'cuda:1', 'mps'; auto: cuda if available, else mps, else cpu
dtype = 'auto'  # 'float32', 'bfloat16' or 'float16'; auto: bfloat16 where supported, float16 on older GPUs, float32 on CPU
# -----------------------------------------------------------------------------
DEFAULTS = configurator.defaults_from(globals())
TASKS = ('bpb', 'hellaswag')


def check_config(cfg):
    names = [t.strip() for t in cfg.tasks.split(',') if t.strip()]
    for name in names:
        if name not in TASKS:
            close = difflib.get_close_matches(name, TASKS, n=1)
            raise ConfigError(f"unknown task {name!r} in tasks{f' (did you mean {close[0]!r}?)' if close else ''}; "
                              f"the tasks are {', '.join(TASKS)}")
    if not names:
        raise ConfigError(f"tasks is empty; choose from {', '.join(TASKS)}")
    if cfg.batch_size < 1 or cfg.hellaswag_limit < 0:
        raise ConfigError("batch_size must be at least 1 and hellaswag_limit 0 or more")
    gpt2 = source_of(cfg.init_from, cfg.out_dir).kind == 'gpt2'
    if gpt2 and cfg.log:
        raise ConfigError("log=True appends to the log.jsonl of a checkpoint's run; GPT-2 weights have none")
    if gpt2 and 'bpb' in names and not cfg.dataset:
        raise ConfigError("the bpb task on GPT-2 weights needs a GPT-2 BPE dataset: pass --dataset=NAME "
                          "(e.g. openwebtext)")
    return names


def main(argv):
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, argv))
    names = check_config(cfg)
    device = resolve_device(cfg.device)
    device_type = device.split(':')[0]
    autocast = autocast_context(device_type, resolve_dtype(cfg.dtype, device_type))
    t0 = time.time()

    model, vocab, ckpt, source = load_model(cfg.init_from, cfg.out_dir)
    model.eval()
    model.to(device)
    # every input is found and checked before the first evaluation starts
    if 'bpb' in names:
        name = cfg.dataset or (ckpt or {}).get('config', {}).get('dataset')
        if not name:
            raise UserError("the checkpoint does not say which dataset it was trained on: pass --dataset=NAME")
        data_dir = os.path.join('data', name)
        data_vocab = read_vocab(data_dir)
        if any(data_vocab.get(k) != vocab.get(k) for k in ('tokenizer', 'vocab_size', 'itos', 'tokenizer_json')):
            raise UserError(f"the vocabulary in {data_dir} ({describe_vocab(data_vocab)}) differs from the model's "
                            f"({describe_vocab(vocab)}): pass the --dataset it was trained on")
        val_path = os.path.join(data_dir, 'val.bin')
        check_token_file(val_path, data_vocab['dtype'], 1, name)
    if 'hellaswag' in names:
        examples = evaluation.load_hellaswag(cfg.hellaswag_file, Codec(vocab), cfg.hellaswag_limit,
                                             log=lambda line: print(line, file=sys.stderr))

    metrics = {}
    if 'bpb' in names:
        loss_sum, n_tokens, n_bytes = evaluation.split_sums(
            model, val_path, data_vocab['dtype'], model.config.block_size, cfg.batch_size, device, autocast,
            token_bytes=evaluation.token_byte_lengths(vocab), progress=True)
        metrics['val_loss_full'] = loss_sum / n_tokens
        metrics['val_bpb'] = evaluation.bits_per_byte(loss_sum, n_bytes)
        print(f"val_loss_full {metrics['val_loss_full']:.4f} (mean over {int(n_tokens):,} tokens of {val_path})")
        print(f"val_bpb {metrics['val_bpb']:.4f} (bits per byte, over {int(n_bytes):,} bytes)")
    if 'hellaswag' in names:
        n, acc, acc_norm = evaluation.hellaswag_accuracy(model, examples, device, autocast,
                                                         batch_size=cfg.batch_size, progress=True)
        metrics.update(hellaswag_acc=acc, hellaswag_acc_norm=acc_norm)
        print(f"hellaswag_acc {acc:.4f} ({round(acc * n)}/{n}, lowest summed loss)")
        print(f"hellaswag_acc_norm {acc_norm:.4f} ({round(acc_norm * n)}/{n}, lowest mean loss per token)")
    print(f"evaluated {cfg.init_from if cfg.init_from != 'resume' else cfg.out_dir} in {time.time() - t0:.1f}s",
          file=sys.stderr)

    if cfg.log:
        log_path = os.path.join(os.path.dirname(os.path.normpath(source.path)), 'log.jsonl')
        runlog.append(log_path, {'iter': ckpt.get('iter_num', 0), 'source': 'eval.py', **metrics})
        print(f"appended to {log_path}", file=sys.stderr)


if __name__ == '__main__':
    configurator.run(main, sys.argv[1:])
