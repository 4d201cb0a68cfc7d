"""Tiny shakespeare, character level, split like nanoGPT's (first 90% of the characters to train.bin, last
10% to val.bin; vocab = the sorted set of characters, 65), so val losses compare with nanoGPT's.

    python data/shakespeare_char/prepare.py                  # downloads input.txt once
    python data/shakespeare_char/prepare.py --input my.txt   # any local text file, no network
"""
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data import char  # noqa: E402
from data.pipeline import (ArgumentParser, Corpus, UserError, add_common_args, check_args,  # noqa: E402
                           check_inputs, cli)

HERE = os.path.dirname(os.path.abspath(__file__))
URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def download(url, path):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise UserError(f"cannot download {url} ({getattr(e, 'reason', e)}); offline, pass a local copy of the text "
                        f"with --input PATH (or save it as {path})")
    tmp = path + '.part'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    add_common_args(p, chunk_size='16M', out_dir=HERE, val_fraction=0.1,
                    split_unit='characters (the tail)')
    args = p.parse_args(argv)
    check_args(args)
    if args.input:
        paths = check_inputs(args.input, exts=('.txt',))
    else:
        paths = [os.path.join(args.out_dir, 'input.txt')]  # downloaded once, beside the bins
        if not os.path.exists(paths[0]):
            download(URL, paths[0])
    char.prepare(Corpus(paths), args.out_dir, stories=False, val_fraction=args.val_fraction,
                 num_workers=args.num_workers, chunk_size=args.chunk_size, ray_address=args.ray_address)


if __name__ == '__main__':
    cli(main)
