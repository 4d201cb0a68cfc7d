"""Time the CPU speedrun against nanoGPT's own code on its documented CPU command, side by side.

Both run end to end as a user runs them (python start-up, data, training, evaluation), taking
turns, --repeat times each; the fastest run of each counts. Both final models are then scored
the same way: the loss on the whole shakespeare_char val set (train.py --eval_only --eval_full_val
on nanoGPT's checkpoint, which this repository loads).

Needs a nanoGPT checkout with its shakespeare_char data prepared (nothing of it is copied here):
    git clone https://github.com/karpathy/nanoGPT ../nanoGPT
    cp data/shakespeare_char/input.txt ../nanoGPT/data/shakespeare_char/   # or let it download
    (cd ../nanoGPT && python data/shakespeare_char/prepare.py)
    python bench/speedrun.py --nanogpt ../nanoGPT
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NANOGPT_CPU = ("config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
               "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 "
               "--lr_decay_iters=2000 --dropout=0.0").split()


def timed(cmd, cwd):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--nanogpt', required=True, help="a nanoGPT checkout with data/shakespeare_char prepared")
    p.add_argument('--config', default='config/speedrun_shakespeare_char_cpu.py')
    p.add_argument('--repeat', type=int, default=2)
    args = p.parse_args()
    nanogpt = os.path.abspath(args.nanogpt)
    ours_out, theirs_out = os.path.join(REPO, 'out-speedrun-bench'), os.path.join(nanogpt, 'out-shakespeare-char')
    ours, theirs = [], []
    for i in range(args.repeat):
        dt, _ = timed([sys.executable, 'train.py', NANOGPT_CPU[0], *NANOGPT_CPU[1:]], nanogpt)
        theirs.append(dt)
        dt, _ = timed([sys.executable, 'train.py', args.config, f'--out_dir={ours_out}'], REPO)
        ours.append(dt)
        print(f"run {i + 1}: nanoGPT {theirs[-1]:.1f} s, speedrun {ours[-1]:.1f} s", flush=True)
    with open(os.path.join(ours_out, 'log.jsonl')) as f:
        ours_loss = [json.loads(line) for line in f][-1]['val_loss_full']
    _, log = timed([sys.executable, 'train.py', f'--init_from={theirs_out}/ckpt.pt', '--eval_only=True',
                    '--eval_full_val=True', '--dataset=shakespeare_char', '--device=cpu', '--compile=False',
                    '--block_size=64', '--batch_size=12', '--eval_iters=1', f'--out_dir={theirs_out}-eval'], REPO)
    theirs_loss = float(re.search(r'val loss on the whole val set: ([\d.]+)', log)[1])
    print(f"nanoGPT's CPU command: {min(theirs):.1f} s (fastest of {args.repeat}), whole-val loss {theirs_loss:.4f}")
    print(f"{args.config}: {min(ours):.1f} s (fastest of {args.repeat}), whole-val loss {ours_loss:.4f}")
    print(f"speedrun / nanoGPT time: {min(ours) / min(theirs):.3f}")


if __name__ == '__main__':
    main()
