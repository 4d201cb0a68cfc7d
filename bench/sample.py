"""Benchmark generation: tokens/s with and without the KV cache, side by side in one run, for
  - the CPU shakespeare_char model's shape (config/train_shakespeare_char_cpu.py: 4 layers,
    128 wide, block_size 64, 65 symbols), where 500 tokens run far past block_size, and
  - a GPT-2 124M-shaped model (12 layers, 768 wide, block_size 1024, 50257 tokens).
Weights are random: speed does not depend on them. Each measurement generates --new_tokens
tokens for one sequence from a 4-token prompt, and also checks that both paths give the
same tokens (greedy decoding). Each variant runs --repeat times and keeps its fastest run, which
is the least disturbed by whatever else the machine is doing.

    python bench/sample.py                      # both models, 500 new tokens, CPU
    python bench/sample.py --models char --device cuda
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import GPT, GPTConfig  # noqa: E402

MODELS = {
    'char': GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False),
    'gpt2': GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True),
}


def time_generation(model, prompt, new_tokens, kv_cache, device):
    torch.manual_seed(0)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0.0, kv_cache=kv_cache)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--new_tokens', type=int, default=500)
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeat', type=int, default=3)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(f"{'model':6} {'params':>8} {'no cache tok/s':>15} {'cache tok/s':>12} {'speed-up':>9}  same tokens")
    for name in args.models:
        torch.manual_seed(0)
        model = GPT(MODELS[name]).to(args.device).eval()
        prompt = torch.randint(0, model.config.vocab_size, (1, 4), device=args.device)
        model.generate(prompt, 8)  # warm up allocators and kernels
        runs = {kv_cache: [time_generation(model, prompt, args.new_tokens, kv_cache, args.device)
                           for _ in range(args.repeat)] for kv_cache in (True, False)}
        (cached, t_cached), (uncached, t_uncached) = (min(runs[kv], key=lambda r: r[1]) for kv in (True, False))
        print(f"{name:6} {model.get_num_params() / 1e6:7.1f}M {args.new_tokens / t_uncached:15.1f} "
              f"{args.new_tokens / t_cached:12.1f} {t_uncached / t_cached:8.1f}x  {torch.equal(cached, uncached)}")


if __name__ == '__main__':
    main()
