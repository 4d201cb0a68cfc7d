"""
Measure training speed: ms per iteration, tokens/s and MFU of the training step (forward,
backward, AdamW) for a model shape, on random tokens or on a prepared dataset.

$ python bench.py                                    # GPT-2 124M, 12 x 1024 tokens, best device
$ python bench.py --device=cpu --compile=False --n_layer=4 --n_head=4 --n_embd=128 --block_size=64
$ python bench.py --pos_enc=rope --norm=rmsnorm --mlp=relu2          # any architecture option

Compilation and the first iterations are warm-up and stay out of the timing. The other
benchmarks: bench/prepare_char.py, bench/prepare_bpe.py (data preparation), bench/sample.py
(generation with and without the KV cache).
"""

import os
import sys
import time
from types import SimpleNamespace

import torch

import configurator
from model import OPTION_DEFAULTS, OPTIONS
from nanogpt.batches import RandomBatches
from nanogpt.device import autocast_context, check_compiler, device_peak_flops, resolve_device, resolve_dtype
from nanogpt.loading import Source, build_model
from nanogpt.tokenizer import model_vocab_size, read_vocab

# -----------------------------------------------------------------------------
batch_size = 12
block_size = 1024
n_layer = 12
n_head = 12
n_embd = 768
bias = False
# architecture options: every field of model.GPTConfig after bias, as in train.py (--pos_enc=rope, ...)
real_data = False  # True: batches from data/<dataset>/train.bin; False: random tokens
dataset = 'openwebtext'
warmup_iters = 10  # not timed: compilation, allocator and kernel warm-up
bench_iters = 20
device = 'auto'
dtype = 'auto'
compile = None  # None: on CUDA
peak_flops = 0.0  # one device's peak FLOP/s for MFU; 0: a GPU's data sheet, or measured once on a CPU
profile = False  # also write a torch profiler trace of a few steps (bench_trace.json, for chrome://tracing or Perfetto)
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = {**configurator.defaults_from(globals()), **OPTION_DEFAULTS}


def main(argv):
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, argv))
    dev = resolve_device(cfg.device)
    device_type = dev.split(':')[0]
    cfg.dtype = resolve_dtype(cfg.dtype, device_type)
    compile_model = (device_type == 'cuda') if cfg.compile is None else cfg.compile
    if compile_model:
        check_compiler(device_type)
    torch.manual_seed(cfg.seed)
    autocast = autocast_context(device_type, cfg.dtype)

    if cfg.real_data:
        data_dir = os.path.join('data', cfg.dataset)
        vocab = read_vocab(data_dir)
        batches = RandomBatches(os.path.join(data_dir, 'train.bin'), vocab['dtype'], cfg.block_size,
                                cfg.batch_size, dev, torch.Generator().manual_seed(cfg.seed))
        get_batch = batches.next
        vocab_size = model_vocab_size(vocab)
    else:
        vocab_size = 50304
        x = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), device=dev)
        y = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), device=dev)
        get_batch = lambda: (x, y)  # noqa: E731

    model_args = dict(block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                      n_embd=cfg.n_embd, dropout=0.0, bias=cfg.bias, **{k: getattr(cfg, k) for k in OPTIONS})
    model, _ = build_model(Source('scratch'), model_args)
    model.to(dev)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))
    scaler = torch.amp.GradScaler(device_type, enabled=(cfg.dtype == 'float16'))
    step_model = torch.compile(model) if compile_model else model

    def step():
        X, Y = get_batch()
        with autocast:
            _, loss = step_model(X, Y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device_type == 'cuda':
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(cfg.warmup_iters):
        step()
    sync()
    print(f"warm-up: {cfg.warmup_iters} iterations in {time.perf_counter() - t0:.1f}s (compile={step_model is not model})")
    t0 = time.perf_counter()
    for _ in range(cfg.bench_iters):
        loss = step()
    loss.item()
    sync()
    dt = (time.perf_counter() - t0) / cfg.bench_iters
    tokens = cfg.batch_size * cfg.block_size
    peak, peak_source = device_peak_flops(dev, cfg.dtype, cfg.peak_flops)
    mfu = model.estimate_mfu(tokens, dt, peak)
    name = torch.cuda.get_device_name(dev) if device_type == 'cuda' else f"{device_type} ({torch.get_num_threads()} threads)"
    print(f"{name}, {cfg.dtype}, {model.get_num_params() / 1e6:.1f}M parameters, {tokens:,} tokens/iter: "
          f"{dt * 1000:.1f} ms/iter, {tokens / dt:,.0f} tokens/s, "
          f"MFU {'n/a' if mfu is None else f'{mfu * 100:.1f}%'} ({peak_source})")
    if cfg.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == 'cuda' else [])
        with profile(activities=activities, record_shapes=True) as prof:
            for _ in range(5):
                step()
            sync()
        prof.export_chrome_trace('bench_trace.json')
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15))
        print("wrote bench_trace.json (open it in chrome://tracing or https://ui.perfetto.dev)")


if __name__ == '__main__':
    configurator.run(main, sys.argv[1:])
