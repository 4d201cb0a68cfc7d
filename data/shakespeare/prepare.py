"""Tiny shakespeare with the GPT-2 BPE tokenizer, split like nanoGPT's: the first 90% of the characters
are train.bin and the last 10% val.bin, each encoded as one document followed by <|endoftext|>.

    python data/shakespeare/prepare.py                   # downloads input.txt once
    python data/shakespeare/prepare.py --input my.txt    # any local text file, no network
    python data/shakespeare/prepare.py --tokenizer=bpe --vocab_size=4096   # a tokenizer trained on the text
"""
import os

from nanogpt.data import bpe
from nanogpt.data.cli import ArgumentParser, add_common_args, check_args
from nanogpt.data.sources import TINY_SHAKESPEARE, Corpus, check_inputs, download
from nanogpt.errors import UserError, run

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    # one file, two documents held in memory (no --chunk_size), the split its tail (no --seed)
    add_common_args(p, chunk_size=None, out_dir=HERE, val_fraction=0.1, seed=None,
                    split_unit='characters (the tail)', rows=False)
    bpe.add_tokenizer_args(p)
    args = p.parse_args(argv)
    check_args(args)
    bpe.check_tokenizer(args.tokenizer, args.vocab_size)  # fail early, in one line, e.g. without tiktoken's files
    if args.input:
        if len(args.input) > 1:
            raise UserError("tiny shakespeare is one text file: pass one --input")
        path = check_inputs(args.input, exts=('.txt',))[0]
    else:
        path = os.path.join(args.out_dir, 'input.txt')
        if not os.path.exists(path):
            download(TINY_SHAKESPEARE, path)
    try:
        with open(path, encoding='utf-8') as f:
            data = f.read()  # ~1 MB: nanoGPT's split needs the character count first
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 (byte {e.start})")
    n = int(len(data) * (1 - args.val_fraction))
    corpus = Corpus(batches=[[data[:n]], [data[n:]]], name=os.path.basename(path))
    bpe.prepare(corpus, args.out_dir, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                tokenizer_sample=args.tokenizer_sample, num_workers=args.num_workers,
                ray_address=args.ray_address, splits=['train', 'val'])


if __name__ == '__main__':
    run(main)
