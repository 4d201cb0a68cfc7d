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

from nanogpt.errors import run
from nanogpt.runlog import plot_runs


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
