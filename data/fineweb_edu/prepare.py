"""FineWeb-Edu with the GPT-2 BPE tokenizer: a sample config of HuggingFaceFW/fineweb-edu (default
sample-10BT, ~10B tokens; also sample-100BT, sample-350BT). 0.05% of the documents (seeded) go to
val.bin; every document ends with <|endoftext|> (50256).

    python data/fineweb_edu/prepare.py                                    # sample-10BT, downloaded first
    python data/fineweb_edu/prepare.py --streaming --max_tokens 2000000000  # the first 2B tokens, no full download
    python data/fineweb_edu/prepare.py --config sample-100BT --ray_address auto
    python data/fineweb_edu/prepare.py --input shards/*.parquet           # local files, offline
"""
import os

from nanogpt.data import bpe
from nanogpt.errors import run

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    bpe.prepare_hf_corpus(__doc__, HERE, dataset='HuggingFaceFW/fineweb-edu', config='sample-10BT',
                          argv=argv)


if __name__ == '__main__':
    run(main)
