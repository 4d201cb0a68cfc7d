"""Benchmark GPT-2 BPE preparation: tokens/s and peak memory, side by side in one run, for
  - the references: tiktoken alone in one process, encode_ordinary on one thread (tiktoken_1thread) and
    encode_ordinary_batch on its default thread pool (tiktoken_batch), over batches of documents read
    from the .jsonl, EOT appended, written to a uint16 file;
  - data/bpe.py with 1 worker (in-process, no Ray), with N Ray workers and (--threads) N threads.
The corpus is c4_sample_1000docs.jsonl.gz (real web documents) repeated to --size as plain .jsonl.
Each variant runs in a fresh subprocess; peak memory is the largest sum of RSS over it and all its
descendants, Ray's processes included (bench/harness.py). Ray start-up (ray.init and a first task
round trip) is timed apart, as in bench/prepare_char.py. Needs TIKTOKEN_CACHE_DIR offline (set to ../shared/data/tiktoken_cache if unset).

    python bench/prepare_bpe.py --size 200M --workers 2 --threads --repeat 3
    python bench/prepare_bpe.py --size 100M --workers 2 --end_to_end --repeat 3   # the script, as a user runs it
    python bench/prepare_bpe.py --size 1G --workers 2 --choice --repeat 2         # auto vs each option, and tiktoken
"""
import gzip
import json
import os
import time

import harness  # bench/harness.py

from nanogpt.files import atomic_write

REPO = harness.REPO
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')
os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))


def make_corpus(path, size):
    if os.path.exists(path) and os.path.getsize(path) >= size:
        return
    with gzip.open(os.path.join(SHARED, 'c4_sample_1000docs.jsonl.gz'), 'rb') as f:
        data = f.read()
    with atomic_write(path) as f:
        for _ in range(-(-size // len(data))):  # whole copies: every line stays a complete document
            f.write(data)


def run_variant(mode, corpus, workers, chunk_size, out_dir):
    import numpy as np
    res = dict(ray_init=0.0)
    if mode.startswith('tiktoken'):  # the references: tiktoken alone, on one thread or its own thread pool
        import tiktoken
        enc = tiktoken.get_encoding('gpt2')
        encode = enc.encode_ordinary_batch if mode == 'tiktoken_batch' else lambda docs: map(enc.encode_ordinary, docs)
        t0 = time.perf_counter()
        n_tokens = 0
        with open(corpus, 'rb') as f, open(os.path.join(out_dir, 'reference.bin'), 'wb') as out:
            while True:
                lines = f.readlines(chunk_size)
                if not lines:
                    break
                for ids in encode([json.loads(line)['text'] for line in lines]):
                    ids.append(enc.eot_token)
                    out.write(np.array(ids, np.uint16).tobytes())
                    n_tokens += len(ids)
        dt = time.perf_counter() - t0
    elif mode in harness.OPTIONS:  # --choice: one run, as a user's
        from nanogpt.data import bpe
        from nanogpt.data.sources import Corpus
        t0 = time.perf_counter()
        meta = bpe.prepare(Corpus([corpus]), out_dir, val_fraction=0.0005, seed=2357,
                           num_workers=harness.option(mode, workers), chunk_size=chunk_size)
        dt = time.perf_counter() - t0
        n_tokens = meta['train_tokens'] + meta['val_tokens']
    else:
        from nanogpt.data import bpe
        from nanogpt.data.sources import Corpus
        if mode == 'pipeline' and workers > 1:
            res.update(harness.start_ray_timed(workers))
        t0 = time.perf_counter()
        meta = bpe.prepare(Corpus([corpus]), out_dir, val_fraction=0.0005, seed=2357,
                           num_workers=harness.plan(mode, workers), chunk_size=chunk_size)
        dt = time.perf_counter() - t0
        n_tokens = meta['train_tokens'] + meta['val_tokens']
        if mode == 'pipeline' and workers > 1:
            res.update(harness.stop_ray_timed())
    print('RESULT ' + json.dumps(dict(res, seconds=dt, tokens=n_tokens)), flush=True)


def main():
    p = harness.parser(__doc__, '200M', '4M', 'bench_prepare_bpe', 'skip the tiktoken reference')
    args = p.parse_args()
    harness.WAIT_IDLE = args.wait_idle
    if args._child:
        return run_variant(args._child, args._corpus, args._workers, args.chunk_size, args._out)

    os.makedirs(args.work_dir, exist_ok=True)
    corpus = os.path.join(args.work_dir, f'c4_{args.size}.jsonl')
    make_corpus(corpus, args.size)
    mb = os.path.getsize(corpus) / 1e6
    print(f"corpus {corpus} ({mb:.0f} MB of JSON lines), {os.cpu_count()} CPUs, load average before: "
          f"{harness.load_average()}", flush=True)
    if args.choice:
        harness.choice(__file__, args, corpus, () if args.skip_reference else ('tiktoken_1thread',))
        return
    if args.end_to_end:
        harness.end_to_end('data/openwebtext/prepare.py', corpus, args.workers, args.repeat, args.work_dir,
                           args.baseline)
        if not args.skip_reference:  # tiktoken alone, one thread, in a fresh process too
            runs = [harness.measure_variant(__file__, 'tiktoken_1thread', 1, corpus, os.path.join(args.work_dir, 'ref'),
                                            args.chunk_size)['wall'] for _ in range(args.repeat)]
            print(f"  tiktoken, 1 thread: {min(runs):6.2f} s end to end (runs {[round(x, 2) for x in runs]})")
        return
    res = {}
    for mode, w in harness.variants(args, ('tiktoken_1thread', 'tiktoken_batch')):
        out_dir = os.path.join(args.work_dir, f'out_{mode}_{w}')
        r = res[mode, w] = harness.measure(__file__, args, mode, w, corpus, out_dir)
        print(f"{mode:>9} workers={w}: {r['tokens'] / r['seconds'] / 1e6:6.2f} M tokens/s ({mb / r['seconds']:5.1f} MB/s, "
              f"{r['seconds']:.1f} s; ray.init {r['ray_init']:.1f} s, wall {r['wall']:.1f} s)  "
              f"peak RSS {r['peak'] / 2**20:6.0f} MiB, CPU {r['cpu']:.1f} s; runs {r['all_seconds']} s", flush=True)
    n = args.workers
    harness.derived_figures(res['pipeline', 1], res.get(('pipeline', n)) if n > 1 else None, res.get(('threads', n)), n, mb)
    if ('pipeline', 1) in res and ('pipeline', n) in res and n > 1:
        a, b = [os.path.join(args.work_dir, f'out_pipeline_{w}') for w in (1, n)]
        same = harness.same_bins(a, b)
        line = f"best of {args.repeat}: {n} vs 1 worker {res['pipeline', 1]['seconds'] / res['pipeline', n]['seconds']:.2f}x"
        for ref in ('tiktoken_1thread', 'tiktoken_batch'):
            if (ref, 1) in res:
                line += f"; {n} workers vs {ref} {res[ref, 1]['seconds'] / res['pipeline', n]['seconds']:.2f}x"
        print(f"{line}; identical output for 1 and {n} workers: {same}; load average after: {harness.load_average()}")


if __name__ == '__main__':
    main()
