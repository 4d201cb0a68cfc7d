"""OpenWebText (~8M documents, ~9B GPT-2 tokens) with the GPT-2 BPE tokenizer. As in nanoGPT, 0.05% of
the documents (seed 2357) go to val.bin; every document ends with <|endoftext|> (50256).

    python data/openwebtext/prepare.py                               # HF Skylion007/openwebtext, ~54 GB of cache
    python data/openwebtext/prepare.py --streaming --max_tokens 1e9  # no full download
    python data/openwebtext/prepare.py --input shards/*.jsonl.gz     # local files, offline
    python data/openwebtext/prepare.py --tokenizer=bpe --vocab_size=32768   # a tokenizer trained on the corpus
"""
import os

from nanogpt.data import bpe
from nanogpt.errors import run

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    bpe.prepare_hf_corpus(__doc__, HERE, dataset='Skylion007/openwebtext', argv=argv)


if __name__ == '__main__':
    run(main)
