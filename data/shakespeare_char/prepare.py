"""Tiny shakespeare, character level, split like nanoGPT's (first 90% of the characters to train.bin, last
10% to val.bin; vocab = the sorted set of characters, 65), so val losses compare with nanoGPT's.

    python data/shakespeare_char/prepare.py                  # downloads input.txt once
    python data/shakespeare_char/prepare.py --input my.txt   # any local text file, no network
"""
import os

from nanogpt.data import char
from nanogpt.data.cli import ArgumentParser, add_common_args, check_args
from nanogpt.data.sources import TINY_SHAKESPEARE, Corpus, check_inputs, download
from nanogpt.errors import run

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    # the split is the tail of the text: no --seed
    add_common_args(p, chunk_size='16M', out_dir=HERE, val_fraction=0.1, seed=None,
                    split_unit='characters (the tail)', rows=False)
    args = p.parse_args(argv)
    check_args(args)
    if args.input:
        paths = check_inputs(args.input, exts=('.txt',))
    else:
        paths = [os.path.join(args.out_dir, 'input.txt')]  # downloaded once, beside the bins
        if not os.path.exists(paths[0]):
            download(TINY_SHAKESPEARE, paths[0])
    char.prepare(Corpus(paths), args.out_dir, stories=False, val_fraction=args.val_fraction,
                 num_workers=args.num_workers, chunk_size=args.chunk_size, ray_address=args.ray_address)


if __name__ == '__main__':
    run(main)
