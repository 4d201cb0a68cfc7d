"""Benchmark trained tokenizers against GPT-2's BPE: bytes per token on held-out text, training time,
and encoding speed per core.

For each corpus, the documents are shuffled (seed 0: the Chinese file holds its positive reviews, then
its negative ones) and split 90/10; a byte-level BPE of each --vocab_sizes size
is trained on the first 90% (nanogpt/data/bpe_trainer.py, as --tokenizer=bpe does, on every core),
and bytes per token are measured on the last 10% for it and for GPT-2's tiktoken encoding. Encoding
speed is one thread of each encoder over the held-out documents: GPT-2's and the trained tokenizer
(largest size) on tiktoken's encoder, as the prepare scripts run them, and the trained one on Hugging
Face's own encoder. --train_size also times training on that many bytes of a corpus repeated (word
counting scales with the bytes, merges with the distinct words, which repetition does not add).

    python bench/bpe_vocab.py                                  # C4 and TinyStories from ../shared/data
    python bench/bpe_vocab.py --chinese /tmp/zh/reviews.txt    # and a Chinese .txt, one document per line
    python bench/bpe_vocab.py --vocab_sizes 4096,8192,16384,32768 --train_size 100M
    python bench/bpe_vocab.py --chinese /tmp/zh/reviews.txt --vocab_sizes 8192 --samples 256K,512K,1M,2M,4M
"""
import argparse
import gzip
import json
import os
import random
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')
os.environ.setdefault('TIKTOKEN_CACHE_DIR', os.path.join(SHARED, 'tiktoken_cache'))

from nanogpt.data import bpe_trainer
from nanogpt.data.cli import parse_size
from nanogpt.data.sources import Corpus
from nanogpt.errors import UserError
from nanogpt.tokenizer import Codec, get_encoding


def corpora(args):
    """{name: documents} of the corpora at hand, each in a fixed random order."""
    found = {}
    with gzip.open(os.path.join(SHARED, 'c4_sample_1000docs.jsonl.gz'), 'rt', encoding='utf-8') as f:
        found['C4 web text'] = [json.loads(line)['text'] for line in f]
    with open(os.path.join(SHARED, 'tinystories_train_head2MiB.txt'), encoding='utf-8', errors='ignore') as f:
        found['TinyStories'] = f.read().split('<|endoftext|>')[:-1]  # the last story is cut
    if args.chinese:
        with open(args.chinese, encoding='utf-8') as f:
            found['Chinese'] = [line.strip() for line in f if line.strip()]
    for docs in found.values():
        random.Random(0).shuffle(docs)
    return found


def n_bytes(docs):
    return sum(len(d.encode('utf-8')) for d in docs)


def train(docs, vocab_size, repeat=1):
    """(Codec, seconds) of a tokenizer trained on docs (repeated)."""
    corpus = Corpus(batches=[docs] * repeat, name='bench')
    t0 = time.perf_counter()
    text, _ = bpe_trainer.train(corpus, vocab_size, sample_bytes=n_bytes(docs) * repeat)
    return Codec({'tokenizer': 'bpe', 'tokenizer_json': text}), time.perf_counter() - t0


def encode_speed(encode, docs, size):
    """MB/s of one thread encoding docs, the best of 3."""
    best = float('inf')
    for _ in range(3):
        t0 = time.perf_counter()
        for d in docs:
            encode(d)
        best = min(best, time.perf_counter() - t0)
    return size / best / 1e6


def whole_pieces(enc, docs):
    """The share of the pieces that enc's split pattern cuts docs into that are a token of enc whole."""
    import regex  # tiktoken's own dependency
    pattern = regex.compile(enc._pat_str)
    pieces = [p.encode('utf-8') for d in docs for p in pattern.findall(d)]
    return sum(p in enc._mergeable_ranks for p in pieces) / len(pieces)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--chinese', help='a UTF-8 .txt of Chinese text, one document per line')
    p.add_argument('--vocab_sizes', default='4096,8192,16384,32768')
    p.add_argument('--train_size', type=parse_size, default=None,
                   help='also time training the largest size on this many bytes of C4 repeated')
    p.add_argument('--samples', default='',
                   help='e.g. 256K,1M,4M: also bytes per token of an 8k vocabulary trained on the first SIZE of '
                        'each corpus (its --tokenizer_sample), on the same held-out text')
    args = p.parse_args()
    sizes = [int(v) for v in args.vocab_sizes.split(',')]
    gpt2 = get_encoding('gpt2')
    cpu = subprocess.run(['lscpu'], capture_output=True, text=True, check=False).stdout
    model = next((line.split(':', 1)[1].strip() for line in cpu.splitlines() if line.startswith('Model name')), '?')
    print(f"{time.strftime('%Y-%m-%d')}, {model}, {os.cpu_count()} CPUs")
    print("| corpus (held-out MB) | GPT-2 | " + " | ".join(f"trained {v // 1024}k" for v in sizes) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in sizes) + " |")
    speeds = {}
    all_docs = corpora(args)
    for name, docs in all_docs.items():
        cut = len(docs) * 9 // 10
        fit, held_out = docs[:cut], docs[cut:]
        size = n_bytes(held_out)
        cells = [f"{size / sum(len(gpt2.encode_ordinary(d)) for d in held_out):.2f}"]
        codec = None
        for v in sizes:
            try:
                codec, seconds = train(fit, v)
            except UserError:  # too little text for this size: say so in the table
                cells.append("too little text")
                continue
            tokens = sum(len(codec.enc.encode_ordinary(d)) for d in held_out)
            cells.append(f"{size / tokens:.2f} ({seconds:.1f} s)")
        print(f"| {name} ({n_bytes(fit) / 1e6:.1f} MB trained on, {size / 1e6:.2f} held out) | " + " | ".join(cells) + " |",
              flush=True)
        if codec is not None:
            from tokenizers import Tokenizer
            theirs = Tokenizer.from_str(codec.vocab['tokenizer_json'])  # adds no special tokens of its own
            speeds[name] = (encode_speed(gpt2.encode_ordinary, held_out, size),
                            encode_speed(codec.enc.encode_ordinary, held_out, size),
                            encode_speed(theirs.encode, held_out, size), codec.enc.n_vocab,
                            whole_pieces(gpt2, held_out), whole_pieces(codec.enc, held_out))
    print("\nencoding speed, one thread, MB/s of held-out text (best of 3), and the share of the pieces its split")
    print("pattern cuts the text into that are one token whole (tiktoken looks those up; it merges the others)")
    print("| corpus | tiktoken GPT-2 | trained (tiktoken's encoder) | trained (Hugging Face's encoder) | "
          "pieces one token: GPT-2 / trained |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (g, ours, hf, v, whole_gpt2, whole_ours) in speeds.items():
        print(f"| {name} | {g:.1f} | {ours:.1f} ({v:,} tokens) | {hf:.1f} | {whole_gpt2:.1%} / {whole_ours:.1%} |")
    if args.train_size:
        docs = all_docs['C4 web text']
        repeat = -(-args.train_size // n_bytes(docs))
        _, seconds = train(docs, sizes[-1], repeat)
        print(f"\ntraining time of a {sizes[-1]:,}-token BPE on {repeat * n_bytes(docs) / 1e6:.0f} MB (C4 x {repeat}): "
              f"{seconds:.1f} s on {os.cpu_count()} CPUs")
    if args.samples:
        samples = [parse_size(s) for s in args.samples.split(',')]
        print("\nbytes per token of an 8k vocabulary by how much text it was trained on")
        print("| corpus | " + " | ".join(f"{s / 2**20:g} MiB" for s in samples) + " |")
        print("| --- | " + " | ".join("---:" for _ in samples) + " |")
        for name, docs in all_docs.items():
            cut = len(docs) * 9 // 10
            held_out, cells = docs[cut:], []
            for s in samples:
                if s > n_bytes(docs[:cut]):
                    cells.append("")
                    continue
                try:
                    text, _ = bpe_trainer.train(Corpus(batches=[docs[:cut]], name=name), 8192, s)
                except UserError:
                    cells.append("too little text")
                    continue
                enc = Codec({'tokenizer': 'bpe', 'tokenizer_json': text}).enc
                cells.append(f"{n_bytes(held_out) / sum(len(enc.encode_ordinary(d)) for d in held_out):.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == '__main__':
    main()
