"""
Plot the loss curves of one or more runs from their out_dir/log.jsonl: train and val loss
against iterations (left) and against wall-clock time (right), log-scaled, one colour per run,
labelled by the run's folder name. It reads what a run has written so far, so it also shows a
run that is still going.

$ python plot.py out-shakespeare-char                        # writes out-shakespeare-char/loss.png
$ python plot.py sweeps/ablation/* --output ablation.png      # several runs in one figure
"""

import argparse
import os
import sys

from configurator import UserError, run
from runlog import read_log


def load_curves(run_dir):
    """(iterations and losses of the training log lines, the same for evaluations), each with wall times."""
    path = os.path.join(run_dir, 'log.jsonl')
    if not os.path.isfile(path):
        raise UserError(f"no log at {path}: is {run_dir} the out_dir of a train.py run?")
    entries = read_log(path)
    train = [(e['iter'], e['wall_s'], e['loss']) for e in entries if 'loss' in e]
    val = [(e['iter'], e['wall_s'], e['val_loss']) for e in entries if 'val_loss' in e]
    if not train and not val:
        raise UserError(f"{path} holds no losses yet; plot again once the run has logged")
    return train, val


def plot_runs(run_dirs, output, title=None):
    try:
        import matplotlib
        matplotlib.use('Agg')  # files only: no display needed on a cluster
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    curves = {os.path.basename(os.path.normpath(d)): load_curves(d) for d in run_dirs}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for (name, (train, val)), color in zip(curves.items(), plt.rcParams['axes.prop_cycle'].by_key()['color'] * 10):
        for ax, x in zip(axes, (0, 1)):  # x: iterations, then wall seconds
            if train:
                ax.plot([p[x] for p in train], [p[2] for p in train], color=color, alpha=0.35, linewidth=0.8)
            if val:
                ax.plot([p[x] for p in val], [p[2] for p in val], color=color, marker='o', markersize=3,
                        label=f"{name} (val {val[-1][2]:.3f})")
            elif train:
                ax.plot([], [], color=color, label=name)
    for ax, xlabel in zip(axes, ('iteration', 'wall time (s)')):
        ax.set_xlabel(xlabel)
        ax.set_ylabel('loss (faint: train, dots: val)')
        ax.set_yscale('log')  # early and late losses differ by an order of magnitude
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or ', '.join(curves))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help="out_dir of each run (holding log.jsonl)")
    parser.add_argument('--output', help="the PNG to write (default: RUN/loss.png for one run, loss.png for several)")
    parser.add_argument('--title')
    args = parser.parse_args(argv)
    output = args.output or (os.path.join(args.runs[0], 'loss.png') if len(args.runs) == 1 else 'loss.png')
    print(f"wrote {plot_runs(args.runs, output, args.title)}")


if __name__ == '__main__':
    run(main, sys.argv[1:])
