"""FineWeb-Edu with the GPT-2 BPE tokenizer: a sample config of HuggingFaceFW/fineweb-edu (default
sample-10BT, ~10B tokens; also sample-100BT, sample-350BT). 0.05% of the documents (seeded) go to
val.bin; every document ends with <|endoftext|> (50256).

    python data/fineweb_edu/prepare.py                                    # sample-10BT, downloaded first
    python data/fineweb_edu/prepare.py --streaming --max_tokens 2000000000  # the first 2B tokens, no full download
    python data/fineweb_edu/prepare.py --config sample-100BT --ray_address auto
    python data/fineweb_edu/prepare.py --input shards/*.parquet           # local files, offline
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
    p.add_argument('--dataset', default='HuggingFaceFW/fineweb-edu', help='Hugging Face dataset (default: %(default)s)')
    p.add_argument('--config', default='sample-10BT', help='dataset config (default: %(default)s)')
    args = p.parse_args(argv)
    check_args(args)
    bpe.get_encoding(args.encoding)  # fail early, in one line, when the tokenizer files are missing
    if args.input:
        corpus = Corpus(check_inputs(args.input))
    else:
        ds = load_hf_dataset(args.dataset, args.config, split='train', streaming=args.streaming, revision=args.revision)
        corpus = Corpus(dataset=ds, name=f'{args.dataset}/{args.config}')
    bpe.prepare(corpus, args.out_dir, encoding=args.encoding, val_fraction=args.val_fraction, seed=args.seed,
                num_workers=args.num_workers, chunk_size=args.chunk_size, ray_address=args.ray_address,
                max_tokens=args.max_tokens)


if __name__ == '__main__':
    cli(main)
