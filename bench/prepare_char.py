"""Benchmark char-level preparation: MB/s and peak memory, side by side in one run, for
  - nanoGPT's encoding (read the whole text, sorted(set(text)), [stoi[c] for c in text]) as the reference,
  - data/char.py with 1 worker (in-process, no Ray) and with N Ray workers.
The corpus is tinystories_train_head2MiB.txt repeated to --size. Each variant runs in a fresh subprocess;
the peak memory is the largest sum of RSS over that subprocess and all its descendants, Ray's
processes included (bench/harness.py). MB/s is input bytes / seconds of the
preparation itself; Ray start-up (data.pipeline.start_ray: ray.init and a first task round trip, paid
once per run, or not at all on a running cluster) is timed and shown separately, and "wall" is the
whole subprocess (Python start, imports, Ray, both runs). Each pipeline variant runs twice in its
process: the first run is the one reported; "second run" is the same job again with warm workers.
The last line gives the figures that nanogpt/data/workers.py's --num_workers auto weighs (one worker's
MB/s, Ray's efficiency, Ray's fixed cost: import + start + shutdown). --end_to_end instead times
data/tinystories_char/prepare.py as a user runs it, default beside --num_workers 1 and N.

    python bench/prepare_char.py --size 256M --workers 2 --repeat 3
    python bench/prepare_char.py --size 1G --workers 2 --skip_reference --repeat 3
    python bench/prepare_char.py --size 1G --workers 2 --end_to_end --repeat 3   # the script, as a user runs it
    python bench/prepare_char.py --size 1G --workers 2 --choice --repeat 2       # auto vs each option it weighs
"""
import json
import os
import shutil
import time

import harness  # bench/harness.py

from nanogpt.files import atomic_write

REPO = harness.REPO
SAMPLE = os.path.join(os.path.dirname(REPO), 'shared', 'data', 'tinystories_train_head2MiB.txt')


def make_corpus(path, size):
    """Repeat the sample (cut after its last separator line, so stories stay whole) up to size bytes."""
    if os.path.exists(path) and os.path.getsize(path) >= size:
        return
    data = open(SAMPLE, 'rb').read()
    data = data[:data.rfind(b'<|endoftext|>\n') + len(b'<|endoftext|>\n')]
    with atomic_write(path) as f:
        for _ in range(size // len(data) + 1):
            f.write(data)
        f.truncate(size)


def run_variant(mode, corpus, workers, chunk_size, out_dir):
    """In the child: one variant; prints a JSON line with its timings."""
    import numpy as np
    if mode == 'reference':
        t0 = time.perf_counter()
        with open(corpus, 'r', encoding='utf-8') as f:
            text = f.read()
        chars = sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(chars)}
        ids = np.array([stoi[c] for c in text], dtype=np.uint16)
        ids.tofile(os.path.join(out_dir, 'reference.bin'))
        res = dict(seconds=time.perf_counter() - t0, ray_init=0.0)
        res['warm'] = res['seconds']
    elif mode in harness.OPTIONS:  # --choice: one run, as a user's
        from nanogpt.data import char
        from nanogpt.data.sources import Corpus
        t0 = time.perf_counter()
        char.prepare(Corpus([corpus]), out_dir, stories=True, val_fraction=0.01, seed=2357,
                     num_workers=harness.option(mode, workers), chunk_size=chunk_size)
        res = dict(seconds=time.perf_counter() - t0)
    else:
        from nanogpt.data import char
        from nanogpt.data.sources import Corpus
        ray_s = harness.start_ray_timed(workers) if mode == 'pipeline' and workers > 1 else {}
        times = []
        for out in (out_dir, out_dir + '_warm'):  # the second run finds Ray's workers warm (modules imported)
            os.sync()
            t0 = time.perf_counter()
            char.prepare(Corpus([corpus]), out, stories=True, val_fraction=0.01, seed=2357,
                         num_workers=harness.plan(mode, workers), chunk_size=chunk_size)
            times.append(time.perf_counter() - t0)
        shutil.rmtree(out_dir + '_warm')
        if ray_s:
            ray_s.update(harness.stop_ray_timed())
        res = dict({'ray_init': 0.0, **ray_s}, seconds=times[0], warm=times[1])
    print('RESULT ' + json.dumps(res), flush=True)


def main():
    p = harness.parser(__doc__, '256M', '8M', 'bench_prepare_char',
                       'skip the nanoGPT-style reference (slow, ~3 GB RAM per 256 MB)')
    args = p.parse_args()
    harness.WAIT_IDLE = args.wait_idle
    if args._child:
        return run_variant(args._child, args._corpus, args._workers, args.chunk_size, args._out)

    os.makedirs(args.work_dir, exist_ok=True)
    corpus = os.path.join(args.work_dir, f'corpus_{args.size}.txt')
    make_corpus(corpus, args.size)
    mb = os.path.getsize(corpus) / 1e6
    print(f"corpus {corpus} ({mb:.0f} MB), {os.cpu_count()} CPUs, load average before: {harness.load_average()}",
          flush=True)
    if args.choice:
        harness.choice(__file__, args, corpus)
        return
    if args.end_to_end:
        harness.end_to_end('data/tinystories_char/prepare.py', corpus, args.workers, args.repeat, args.work_dir,
                           args.baseline)
        return
    rows = []
    for mode, w in harness.variants(args):
        out_dir = os.path.join(args.work_dir, f'out_{mode}_{w}')
        r = harness.measure(__file__, args, mode, w, corpus, out_dir)
        rows.append((mode, w, r))
        print(f"{mode:>9} workers={w}: {mb / r['seconds']:7.1f} MB/s ({r['seconds']:.2f} s; second run {mb / r['warm']:.0f} MB/s; "
              f"ray.init {r['ray_init']:.1f} s, "
              f"wall {r['wall']:.1f} s)  peak RSS {r['peak'] / 2**20:7.0f} MiB, CPU {r['cpu']:.1f} s; runs {r['all_seconds']} s",
              flush=True)
    base = {w: r for mode, w, r in rows if mode == 'pipeline'}
    harness.derived_figures(base[1], base.get(args.workers) if args.workers > 1 else None,
                            next((r for mode, w, r in rows if mode == 'threads'), None), args.workers, mb)
    if 1 in base and args.workers in base and args.workers > 1:
        a, b = [os.path.join(args.work_dir, f'out_pipeline_{w}') for w in (1, args.workers)]
        same = harness.same_bins(a, b)
        print(f"chunk {args.chunk_size >> 20} MiB, best of {args.repeat}: {args.workers} vs 1 worker "
              f"{base[1]['seconds'] / base[args.workers]['seconds']:.2f}x (second runs "
              f"{base[1]['warm'] / base[args.workers]['warm']:.2f}x); identical output: {same}; load average after: "
              f"{harness.load_average()}")


if __name__ == '__main__':
    main()
