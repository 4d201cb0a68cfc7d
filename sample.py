"""
Sample from a trained model (or from OpenAI's GPT-2 weights):

$ python sample.py --out_dir=out-shakespeare-char
$ python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --stream=True
$ python sample.py --init_from=out/model.pt --start=FILE:prompt.txt --top_p=0.9
$ python sample.py --out_dir=out --snapshots=True --num_samples=1   # the same prompt from every ckpt_*.pt
"""

import glob
import os
import sys
import time
from types import SimpleNamespace

import torch

import configurator
from nanogpt import checkpoint
from nanogpt.device import autocast_context, check_compiler, resolve_device, resolve_dtype
from nanogpt.errors import ConfigError, UserError
from nanogpt.loading import load_model
from nanogpt.tokenizer import Codec

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir/ckpt.pt or ckpt/), a checkpoint file or sharded directory, a gpt2 variant (e.g. 'gpt2-xl') or a HF GPT-2 dir
out_dir = 'out'  # ignored if init_from is not 'resume'
start = "\n"  # or "<|endoftext|>" or etc. Can also specify a file, use as: "FILE:prompt.txt"
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random; 0 = always the most likely token
top_k = 200  # retain only the top_k most likely tokens (None: all)
top_p = 1.0  # retain the smallest set of tokens whose probabilities sum to top_p (nucleus sampling; 1.0: all)
kv_cache = True  # reuse past keys/values: same tokens, much faster; False recomputes the context every step
stream = False  # print each token as it is generated
snapshots = False  # sample from every milestone snapshot out_dir/ckpt_*.pt in turn, same seed: watch the model learn
seed = 1337
device = 'auto'  # 'cpu', 'cuda', 'cuda:1', 'mps'; auto: cuda if available, else mps, else cpu
dtype = 'auto'  # 'float32', 'bfloat16' or 'float16'; auto: bfloat16 where supported, float16 on older GPUs, float32 on CPU
compile = False  # torch.compile the per-token step; compiling takes a while: for long generations on GPUs
# -----------------------------------------------------------------------------
DEFAULTS = configurator.defaults_from(globals())


def check_sampling(cfg):
    if cfg.temperature < 0:
        raise ConfigError(f"temperature must be >= 0, got {cfg.temperature}")
    if cfg.top_k is not None and (not isinstance(cfg.top_k, int) or cfg.top_k < 1):
        raise ConfigError(f"top_k must be a positive integer or None, got {cfg.top_k!r}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.num_samples < 1 or cfg.max_new_tokens < 1:
        raise ConfigError("num_samples and max_new_tokens must be at least 1")


def snapshot_paths(out_dir):
    """The milestone snapshots (ckpt_0001000.pt, ...) of a run, in the order they were written."""
    paths = glob.glob(os.path.join(glob.escape(out_dir), 'ckpt_*'))
    paths = [p for p in paths if checkpoint.snapshot_iteration(p) is not None]
    if not paths:
        raise UserError(f"no snapshots (ckpt_*.pt) in {out_dir}: train with --ckpt_every=N or --ckpt_iters=[...] "
                        f"to keep them")
    return sorted(paths, key=checkpoint.snapshot_iteration)


def encode_prompt(start, codec, device):
    """The prompt's text (from --start, or the file that FILE:path names) and its ids, (1, t)."""
    prompt = start
    if prompt.startswith('FILE:'):
        path = prompt[5:]
        if not os.path.isfile(path):
            raise UserError(f"prompt file not found: {path}")
        with open(path, encoding='utf-8') as f:
            prompt = f.read()
    start_ids = codec.encode(prompt)
    if not start_ids:
        raise UserError("the prompt is empty; pass some text with --start")
    return prompt, torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]


def main(argv):
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, argv))
    check_sampling(cfg)
    device = resolve_device(cfg.device)
    device_type = device.split(':')[0]
    autocast = autocast_context(device_type, resolve_dtype(cfg.dtype, device_type))
    if cfg.compile:
        check_compiler(device_type)
    torch.manual_seed(cfg.seed)

    sources = snapshot_paths(cfg.out_dir) if cfg.snapshots else [cfg.init_from]
    n_tokens, generation_time = 0, 0.0
    for source in sources:
        model, vocab, _, _ = load_model(source, cfg.out_dir)
        model.eval()
        model.to(device)
        if cfg.compile:  # what runs once per token, with or without the KV cache
            model.forward = torch.compile(model.forward, dynamic=True)
        codec = Codec(vocab)
        prompt, x = encode_prompt(cfg.start, codec, device)
        if cfg.snapshots:
            torch.manual_seed(cfg.seed)  # every snapshot gets the same random draws
            print(f"=== {os.path.basename(source)}: iteration {checkpoint.snapshot_iteration(source)} ===")
        t0 = time.time()
        with torch.inference_mode(), autocast:
            for _ in range(cfg.num_samples):
                tokens = model.generate_tokens(x, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                               cfg.top_p, kv_cache=cfg.kv_cache, vocab_size=vocab['vocab_size'])
                if cfg.stream:
                    print(prompt, end='', flush=True)
                    for piece in codec.decode_stream(token.item() for token in tokens):
                        print(piece, end='', flush=True)
                    print()
                else:  # keep the tokens on the device until the end: no host sync per step
                    print(prompt + codec.decode(torch.cat(list(tokens), dim=1)[0].tolist()))
                print('---------------')
                n_tokens += cfg.max_new_tokens
        generation_time += time.time() - t0
    print(f"generated {n_tokens} tokens in {generation_time:.2f}s ({n_tokens / generation_time:.1f} tokens/s, "
          f"kv_cache={cfg.kv_cache})", file=sys.stderr)


if __name__ == '__main__':
    configurator.run(main, sys.argv[1:])
