"""Benchmark generation: tokens/s with and without the KV cache, side by side in one run, for
  - the CPU shakespeare_char model's shape (config/train_shakespeare_char_cpu.py: 4 layers,
    128 wide, block_size 64, 65 symbols), where 500 tokens run far past block_size, and
  - a GPT-2 124M-shaped model (12 layers, 768 wide, block_size 1024, 50257 tokens).
Weights are random: speed does not depend on them. Each measurement generates --new_tokens
tokens for one sequence from a 4-token prompt (greedy decoding) in three ways:
  - nanoGPT's sample loop: the whole context (the last block_size tokens) through the model
    for every token, as the reference;
  - kv_cache=False: the same, with this repository's context policy (past block_size the
    context restarts from the last block_size // 2 tokens), which the cache must match;
  - kv_cache=True, whose tokens must equal kv_cache=False's (checked).
Each variant runs --repeat times and keeps its fastest run, the least disturbed by whatever
else the machine is doing.

    python bench/sample.py                      # both models, 500 new tokens, CPU
    python bench/sample.py --models char --device cuda
"""
import argparse
import time

import torch

from model import GPT, GPTConfig

MODELS = {
    'char': GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False),
    'gpt2': GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True),
}


@torch.inference_mode()
def nanogpt_generate(model, idx, max_new_tokens):
    """nanoGPT's generate(), greedy: crop to block_size and run the whole context every step."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


def fastest(generate, repeat, device):
    best = None
    for _ in range(repeat):
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = generate()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        best = (out, dt) if best is None or dt < best[1] else best
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--new_tokens', type=int, default=500)
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeat', type=int, default=3)
    args = p.parse_args()
    n = args.new_tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {n} new tokens")
    print(f"{'model':6} {'params':>8} {'nanoGPT tok/s':>14} {'no cache tok/s':>15} {'cache tok/s':>12} "
          f"{'vs nanoGPT':>11} {'vs no cache':>12}  same tokens")
    for name in args.models:
        torch.manual_seed(0)
        model = GPT(MODELS[name]).to(args.device).eval()
        prompt = torch.randint(0, model.config.vocab_size, (1, 4), device=args.device)
        model.generate(prompt, 8)  # warm up allocators and kernels
        _, t_nanogpt = fastest(lambda: nanogpt_generate(model, prompt, n), args.repeat, args.device)
        uncached, t_uncached = fastest(lambda: model.generate(prompt, n, temperature=0.0, kv_cache=False),
                                       args.repeat, args.device)
        cached, t_cached = fastest(lambda: model.generate(prompt, n, temperature=0.0, kv_cache=True),
                                   args.repeat, args.device)
        print(f"{name:6} {model.get_num_params() / 1e6:7.1f}M {n / t_nanogpt:14.1f} {n / t_uncached:15.1f} "
              f"{n / t_cached:12.1f} {t_nanogpt / t_cached:10.1f}x {t_uncached / t_cached:11.1f}x  "
              f"{torch.equal(cached, uncached)}")


if __name__ == '__main__':
    main()
