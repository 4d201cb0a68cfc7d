"""TinyStories at character level, for corpora of several GB: two streamed passes, Ray tasks over chunks.

Each "<|endoftext|>" between stories becomes one vocabulary symbol (the last id) that ends every story;
whole stories go to val.bin with probability --val_fraction (seeded), so none straddles the split.

    python data/tinystories_char/prepare.py                                  # HF roneneldan/TinyStories
    python data/tinystories_char/prepare.py --input TinyStoriesV2-GPT4-train.txt --num_workers 8
    python data/tinystories_char/prepare.py --input a.jsonl.gz b.parquet      # a "text" field per story
    python data/tinystories_char/prepare.py --input stories.jsonl --text_field story   # ... or another field
    python data/tinystories_char/prepare.py --ray_address auto ...           # on a Ray cluster (shared filesystem)
"""
import os

from nanogpt.data import char
from nanogpt.data.cli import ArgumentParser, add_common_args, check_args
from nanogpt.data.sources import Corpus, check_inputs, load_hf_dataset
from nanogpt.errors import UserError, run

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = ArgumentParser(description=__doc__)
    add_common_args(p, chunk_size='8M', out_dir=HERE, val_fraction=0.01)
    p.add_argument('--dataset', help='Hugging Face dataset (default: roneneldan/TinyStories)')
    args = p.parse_args(argv)
    check_args(args)
    if args.input and args.dataset:
        raise UserError("--dataset and --input exclude each other: pass one")
    if args.input:
        corpus = Corpus(check_inputs(args.input, text_field=args.text_field), text_field=args.text_field)
    else:
        dataset = args.dataset or 'roneneldan/TinyStories'
        corpus = Corpus(dataset=load_hf_dataset(dataset, split='train'), name=dataset, text_field=args.text_field)
    char.prepare(corpus, args.out_dir, stories=True, val_fraction=args.val_fraction, seed=args.seed,
                 num_workers=args.num_workers, chunk_size=args.chunk_size, ray_address=args.ray_address)


if __name__ == '__main__':
    run(main)
