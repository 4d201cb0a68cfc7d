"""OpenWebText (~8M documents, ~9B GPT-2 tokens) with the GPT-2 BPE tokenizer. As in nanoGPT, 0.05% of
the documents (seed 2357) go to val.bin; every document ends with <|endoftext|> (50256).

    python data/openwebtext/prepare.py                               # HF Skylion007/openwebtext, ~54 GB of cache
    python data/openwebtext/prepare.py --streaming --max_tokens 1e9  # no full download
    python data/openwebtext/prepare.py --input shards/*.jsonl.gz     # local files, offline
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data import bpe  # noqa: E402
from data.pipeline import Corpus, add_common_args, check_args, check_inputs, cli, load_hf_dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, chunk_size='4M', out_dir=HERE, val_fraction=0.0005, seed=2357)
    bpe.add_args(p)
    p.add_argument('--dataset', default='Skylion007/openwebtext', help='Hugging Face dataset (default: %(default)s)')
    args = p.parse_args(argv)
    check_args(args)
    bpe.get_encoding(args.encoding)  # fail early, in one line, when the tokenizer files are missing
    if args.input:
        corpus = Corpus(check_inputs(args.input))
    else:
        ds = load_hf_dataset(args.dataset, split='train', streaming=args.streaming, revision=args.revision)
        corpus = Corpus(dataset=ds, name=args.dataset)
    bpe.prepare(corpus, args.out_dir, encoding=args.encoding, val_fraction=args.val_fraction, seed=args.seed,
                num_workers=args.num_workers, chunk_size=args.chunk_size, ray_address=args.ray_address,
                max_tokens=args.max_tokens)


if __name__ == '__main__':
    cli(main)
