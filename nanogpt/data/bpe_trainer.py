"""
A byte-level BPE trained on the corpus itself (--tokenizer=bpe --vocab_size=N), with Hugging Face's
`tokenizers`, whose trainer is native and multi-threaded. It reads the first --tokenizer_sample bytes
of whole documents, so memory stays bounded whatever the corpus size, and returns the tokenizer as
the text of a tokenizer.json, which the same sample turns into the same bytes (its merges are chosen
by count, ties broken by token ids; tests/test_tokenizers.py checks it across processes).

The vocabulary: <|endoftext|> (id 0, the document separator, never learned from the text), the 256
bytes (so any text encodes and decodes back to its exact bytes), then the merges in the order they
were learned, which is the order tiktoken's encoder applies them in (nanogpt/tokenizer.bpe_encoding).
"""

import time

from nanogpt.data.cli import format_size
from nanogpt.data.sources import chunk_documents
from nanogpt.errors import UserError
from nanogpt.tokenizer import EOT, SPLIT_PATTERN

MIN_VOCAB = 256 + 1  # every byte, and <|endoftext|>


def check_vocab_size(vocab_size):
    if vocab_size is None:
        raise UserError("--tokenizer=bpe trains a tokenizer on the corpus: give its size with --vocab_size=N "
                        "(e.g. 8192; docs/data.md, 'When to train one, and how big')")
    if vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab_size={vocab_size} is too small: a byte-level BPE needs the 256 bytes and "
                        f"{EOT}, at least {MIN_VOCAB}")
    if vocab_size > 1 << 20:
        raise UserError(f"--vocab_size={vocab_size} is more than 2^20; a model's output layer that wide is "
                        f"not what you want")


def sample_documents(corpus, n_bytes, stats, chunk_size=1 << 20):
    """The corpus's first documents, whole, until n_bytes of UTF-8 text (the last one may go past it),
    counted in stats."""
    for chunk in corpus.chunks(chunk_size):
        for doc in chunk_documents(chunk):
            yield doc
            stats['bytes'] += len(doc.encode('utf-8'))
            stats['documents'] += 1
            if stats['bytes'] >= n_bytes:
                return


def train(corpus, vocab_size, sample_bytes):
    """(tokenizer.json text, {'bytes', 'documents'} it was trained on) for the first sample_bytes
    of corpus; a one-line error if the sample is too small to learn vocab_size tokens from."""
    check_vocab_size(vocab_size)
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    # ignore_merges: a piece of text that is a token is that token, as in tiktoken's encoder, so that Hugging
    # Face's encoder of this file gives our ids (nanogpt/tokenizer.check_reaches_its_tokens); training ignores it
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    stats = {'bytes': 0, 'documents': 0}
    print(f"training a {vocab_size:,}-token BPE on up to {format_size(sample_bytes)} of {corpus.name}", flush=True)
    t0 = time.time()
    tok.train_from_iterator(sample_documents(corpus, sample_bytes, stats), trainer)
    seconds = time.time() - t0
    if tok.get_vocab_size() < vocab_size:
        raise UserError(f"{corpus.name}: {stats['bytes']:,} bytes of text ({documents(stats)}) hold "
                        f"only enough pairs for {tok.get_vocab_size():,} tokens, not --vocab_size={vocab_size:,}: "
                        f"use a smaller --vocab_size, or more text (--tokenizer_sample, --input)")
    print(f"trained the tokenizer on {format_size(stats['bytes'])} ({documents(stats)}) "
          f"in {seconds:.1f} s", flush=True)
    return tok.to_str(), stats


def documents(stats):
    return f"{stats['documents']:,} document{'s' if stats['documents'] != 1 else ''}"
