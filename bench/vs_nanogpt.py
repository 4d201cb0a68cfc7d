"""Time train.py runs against nanoGPT's own code on its documented CPU command, side by side.

Every run is end to end as a user runs it (python start-up, data, compilation if any, training,
evaluation). nanoGPT's command and each of ours take turns, --repeat times each; the fastest run
of each counts, the others are printed. Every final model is then scored the same way: the loss
on the whole shakespeare_char val set (train.py --eval_only --eval_full_val on its checkpoint,
nanoGPT's included, which this repository loads).

Needs a nanoGPT checkout with its shakespeare_char data prepared (nothing of it is copied here):
    git clone https://github.com/karpathy/nanoGPT ../nanoGPT
    cp data/shakespeare_char/input.txt ../nanoGPT/data/shakespeare_char/   # or let it download
    (cd ../nanoGPT && python data/shakespeare_char/prepare.py)
    python bench/vs_nanogpt.py --nanogpt ../nanoGPT                          # the CPU speedrun
    python bench/vs_nanogpt.py --nanogpt ../nanoGPT config/train_shakespeare_char_cpu.py \\
        "config/train_shakespeare_char_cpu.py --compile=True"                 # the same model's loop
"""
import argparse
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
    return time.perf_counter() - t0


def whole_val_loss(ckpt, out_dir):
    proc = subprocess.run([sys.executable, 'train.py', f'--init_from={ckpt}', '--eval_only=True', '--eval_full_val=True',
                           '--dataset=shakespeare_char', '--device=cpu', '--compile=False', '--block_size=64',
                           '--batch_size=12', '--eval_iters=1', f'--out_dir={out_dir}'],
                          cwd=REPO, capture_output=True, text=True, check=True)
    return float(re.search(r'val loss on the whole val set: ([\d.]+)', proc.stdout)[1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--nanogpt', required=True, help="a nanoGPT checkout with data/shakespeare_char prepared")
    p.add_argument('runs', nargs='*', default=['config/speedrun_shakespeare_char_cpu.py'],
                   help="train.py arguments of each run of ours, one quoted string per run")
    p.add_argument('--repeat', type=int, default=2)
    args = p.parse_args()
    nanogpt = os.path.abspath(args.nanogpt)
    commands = {"nanoGPT's CPU command": ([sys.executable, 'train.py', *NANOGPT_CPU], nanogpt,
                                          os.path.join(nanogpt, 'out-shakespeare-char'))}
    for i, run in enumerate(args.runs):
        out_dir = os.path.join(REPO, f'out-vs-nanogpt-{i}')
        commands[f"python train.py {run}"] = ([sys.executable, 'train.py', *run.split(), f'--out_dir={out_dir}'],
                                              REPO, out_dir)
    times = {name: [] for name in commands}
    for i in range(args.repeat):
        for name, (cmd, cwd, _) in commands.items():
            times[name].append(timed(cmd, cwd))
        print(f"round {i + 1}: " + ", ".join(f"{name} {t[-1]:.1f} s" for name, t in times.items()), flush=True)
    baseline = min(times["nanoGPT's CPU command"])
    for name, (_, _, out_dir) in commands.items():
        loss = whole_val_loss(os.path.join(out_dir, 'ckpt.pt'), out_dir + '-eval')
        print(f"{name}: {min(times[name]):.1f} s (fastest of {args.repeat}; {baseline / min(times[name]):.2f}x "
              f"nanoGPT's speed), whole-val loss {loss:.4f}")


if __name__ == '__main__':
    main()
