"""BPE tokenization of corpora of any size, in one streamed pass: GPT-2's (the default), any tiktoken
encoding, a byte-level BPE trained on the corpus first (bpe_trainer.py) or read from a tokenizer.json.

The engine is the char pipeline's (nanogpt/data/: sources, workers, output): the corpus is cut into chunks of about
--chunk_size bytes of whole documents, each chunk is one Ray task, at most two tasks per worker are
in flight, and the results come back in order. A task encodes each document as tiktoken's
encode_ordinary does (special tokens in the text are plain text), with <|endoftext|> (50256 for GPT-2,
0 for a trained BPE) after each, in one encoder call per chunk (encode_documents), checks the ids
against the output dtype and returns one compact array. Unlike the char pipeline the output length is
not known before tokenizing, so this process appends the arrays, in order, to train.bin / val.bin:
~2 bytes per 4 bytes of text, which costs little next to the tokenization. Whole documents go to
val.bin with probability val_fraction, by a hash of (seed, document index), so the bytes do not depend
on the worker count or chunk size.
"""
import itertools
import os

import numpy as np

from nanogpt.data import bpe_trainer
from nanogpt.data.cli import ArgumentParser, add_common_args, check_args, parse_size
from nanogpt.data.output import Output, dtype_for, progress, split_runs, val_mask, write_error
from nanogpt.data.sources import Corpus, check_inputs, chunk_documents, chunk_progress, load_hf_dataset
from nanogpt.data.workers import Workers, choose_workers, measured_speed
from nanogpt.errors import UserError
from nanogpt.tokenizer import (
    EOT,
    bpe_encoding,
    check_reaches_its_tokens,
    get_encoding,
    read_tokenizer_json,
    tokenizer_json_vocab,
)

# N Ray workers run RAY_EFFICIENCY * N times as fast as one (bench/prepare_bpe.py; docs/data.md, "Choosing the
# workers"): a stand-in until a run on a local Ray has measured it here (workers.RAY_SHARE_FILE); one worker's
# speed and the threads' are measured on the CPU at hand (speed())
RAY_EFFICIENCY = 0.7
BYTES_PER_TOKEN = 4.5  # of English web text with GPT-2's BPE: how much text --max_tokens reads
TOKENIZER_SAMPLE = 100 * 10**6  # bytes a trained tokenizer learns from (docs/data.md, "When to train one, and how big")


def encode_ordinary(enc, text):
    """enc.encode_ordinary(text) as a uint32 array. The tokens never become Python ints, and the encoder
    runs without the GIL, so threads of one process scale too (docs/data.md, "Choosing the workers")."""
    try:
        return enc.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates (possible in JSON): replaced, as encode_ordinary does
        return enc.encode_to_numpy(text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace'),
                                   disallowed_special=())


def check_tokenizer(name, vocab_size=None):
    """The vocabulary (nanogpt/tokenizer.py) that --tokenizer names, or None for 'bpe', which is trained on
    the corpus later; a one-line error, before any work starts, for what cannot work."""
    if name == 'bpe':
        bpe_trainer.check_vocab_size(vocab_size)
        return None
    if vocab_size is not None:
        raise UserError(f"--vocab_size is the size of a tokenizer to train (--tokenizer=bpe); {name}'s is fixed")
    if name.endswith('.json') or os.sep in name:  # a tokenizer.json, e.g. one trained for another dataset
        vocab = read_tokenizer_json(name)  # built once here, for the whole run; a bad file is named
        check_reaches_its_tokens(vocab['tokenizer_json'], name)
        return vocab
    import tiktoken
    if name not in tiktoken.list_encoding_names():
        raise UserError(f"unknown tokenizer {name!r}: use gpt2, another tiktoken encoding "
                        f"({', '.join(n for n in tiktoken.list_encoding_names() if n != 'gpt2')}), bpe (trained on "
                        f"the corpus, with --vocab_size) or the path of a tokenizer.json")
    return {'tokenizer': name, 'vocab_size': get_encoding(name).n_vocab}  # fails here without tiktoken's files


def encode_chunk(chunk, dtype, split, vocab):
    """One task: (bytes read, token ids with <|endoftext|> after each document, tokens per document, split)."""
    enc = bpe_encoding(vocab)
    docs = chunk_documents(chunk)
    ids = encode_documents(enc, docs)
    if len(ids) and int(ids.max()) > np.iinfo(dtype).max:
        raise UserError(f"token id {int(ids.max())} does not fit in {np.dtype(dtype).name}")
    lens = np.diff(np.flatnonzero(ids == enc.eot_token), prepend=-1)  # the separator is no ordinary text's token
    return chunk_progress(chunk, sum(map(len, docs))), ids.astype(dtype), lens, split


def encode_documents(enc, docs):
    """The documents' tokens, each followed by <|endoftext|>, as one uint32 array. The chunk goes to the
    encoder in one call, joined by the separator, which tiktoken encodes exactly as each document alone
    followed by it. One call per chunk lets a thread take the GIL back once per chunk rather than after
    every document (a few KB), when it would often wait for the other thread's JSON parsing. A chunk with
    the separator in its text is encoded a document at a time, so that the separator stays text there."""
    if not docs:
        return np.zeros(0, np.uint32)
    if not any(EOT in d for d in docs):
        try:  # other special tokens (cl100k_base's <|fim_prefix|>, ...) stay text, as in encode_ordinary
            return enc.encode_to_numpy(EOT.join([*docs, '']), allowed_special={EOT}, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates (possible in JSON): encode_ordinary replaces them
            pass
    eot = np.array([enc.eot_token], np.uint32)
    return np.concatenate([a for d in docs for a in (encode_ordinary(enc, d), eot)])


def speed(vocab):
    """The Speed of this pipeline on this CPU, for --num_workers auto, measured with the run's own encoder and
    cached as one figure for every BPE: all run on tiktoken's encoder, a trained one at 0.85-1.02x GPT-2's speed
    (bench/bpe_vocab.py)."""
    dtype = dtype_for(bpe_encoding(vocab).n_vocab)
    return measured_speed('bpe', lambda chunk: encode_chunk(chunk, dtype, None, vocab), 1 << 20,
                          RAY_EFFICIENCY, threads=True)


def prepare(corpus, out_dir, tokenizer='gpt2', vocab_size=None, tokenizer_sample=TOKENIZER_SAMPLE, val_fraction=0.0005,
            seed=2357, num_workers=1, chunk_size=1 << 20, ray_address=None, max_tokens=None, splits=None):
    """Write out_dir/train.bin, val.bin and meta.json (and tokenizer.json for a byte-level BPE) for a
    Corpus. tokenizer: as --tokenizer (check_tokenizer); 'bpe' trains one of vocab_size tokens on the
    first tokenizer_sample bytes. num_workers: a number or 'auto' (workers.choose_workers). splits, if
    given, names the split of each chunk ('train' / 'val') instead of the seeded split by documents
    (tiny shakespeare's 90/10)."""
    vocab = check_tokenizer(tokenizer, vocab_size)  # fail here, in one line, before any work starts
    with Output(out_dir) as out:  # a bad --out_dir fails here, before a tokenizer is trained or Ray starts
        trained = None
        if vocab is None:
            text, trained = bpe_trainer.train(corpus, vocab_size, tokenizer_sample)
            vocab = tokenizer_json_vocab(text)
        enc = bpe_encoding(vocab)
        dtype = dtype_for(enc.n_vocab)
        n_docs, written, total = 0, {'train': 0, 'val': 0}, 0
        chunks = corpus.chunks(chunk_size)
        args = ((c, dtype, s) for c, s in zip(chunks, splits or itertools.repeat(None)))
        n_bytes = corpus.text_bytes()
        if max_tokens is not None:  # the work is what the budget needs
            n_bytes = min(n_bytes or float('inf'), int(max_tokens * BYTES_PER_TOKEN))
        plan = choose_workers(num_workers, n_bytes, lambda: speed(vocab), ray_address)
        with Workers(plan, 'bpe') as workers:
            files = {s: out.open(s) for s in ('train', 'val')}
            try:
                with progress(max_tokens, 'tokenize', unit='tok') as bar:
                    # the vocabulary (up to a few MB of tokenizer.json) goes to Ray's workers once
                    for nbytes, ids, lens, split in workers.map(encode_chunk, args, shared=(vocab,)):
                        full = max_tokens is not None and sum(written.values()) + len(ids) >= max_tokens
                        if full:  # whole documents only, up to the budget, and nothing after them
                            keep = int(np.searchsorted(np.cumsum(lens), max_tokens - sum(written.values()), 'right'))
                            lens = lens[:keep]
                            ids = ids[:int(lens.sum())]
                        is_val = (np.full(len(lens), split == 'val') if split else
                                  val_mask(n_docs, len(lens), seed, val_fraction))
                        for v, a, b in split_runs(np.cumsum(lens), is_val):
                            s = 'val' if v else 'train'
                            write(files[s], ids[a:b])
                            written[s] += b - a
                        n_docs += len(lens)
                        total += nbytes
                        bar.update(len(ids))
                        bar.set_postfix_str(f"{total / 1e6:.0f} MB, {n_docs:,} docs", refresh=False)
                        if full:
                            break  # Workers cancels the tasks still in flight
                for f in files.values():  # the last buffered bytes: a full disk may show only now
                    try:
                        f.close()
                    except OSError as e:
                        raise write_error(f.name, e) from None
            finally:
                for f in files.values():
                    if not f.closed:
                        try:
                            f.close()
                        except OSError:
                            pass  # an error is already on its way
        if n_docs == 0:
            raise UserError(f"no documents found in {corpus.name}")
        meta = dict(tokenizer=vocab['tokenizer'], vocab_size=enc.n_vocab, dtype=np.dtype(dtype).name,
                    eot_token=enc.eot_token, train_tokens=written['train'], val_tokens=written['val'], documents=n_docs,
                    source=corpus.name, val_fraction=None if splits else val_fraction, seed=None if splits else seed)
        files = {}
        if 'tokenizer_json' in vocab:
            meta['tokenizer_file'] = 'tokenizer.json'
            meta['tokenizer_source'] = tokenizer if trained is None else dict(trained_on=corpus.name, **trained)
            files['tokenizer.json'] = vocab['tokenizer_json']
        out.commit(meta, files)
    print(f"wrote {out_dir}: {vocab['tokenizer']} ({enc.n_vocab:,} tokens), train {written['train']:,} tokens, "
          f"val {written['val']:,} tokens, {n_docs:,} documents from {total / 1e6:.1f} MB")
    return meta


def write(f, ids):
    """Append ids to the open file f; an OSError (a full disk) is a one-line UserError."""
    try:
        f.write(memoryview(ids).cast('B'))
    except OSError as e:
        raise write_error(f.name, e) from None


def add_tokenizer_args(p):
    """--tokenizer and the options of a trained one, for every BPE script."""
    p.add_argument('--tokenizer', '--encoding', default='gpt2', metavar='NAME',
                   help="gpt2 (default), another tiktoken encoding (e.g. cl100k_base), bpe: a byte-level BPE trained "
                        "on the corpus (with --vocab_size), or the path of a byte-level BPE tokenizer.json")
    p.add_argument('--vocab_size', type=int, default=None, metavar='N',
                   help='with --tokenizer=bpe: the vocabulary size to train, <|endoftext|> and the 256 bytes included')
    p.add_argument('--tokenizer_sample', type=parse_size, default=TOKENIZER_SAMPLE, metavar='SIZE',
                   help='with --tokenizer=bpe: train on the first SIZE bytes of documents (default: 100M)')
    return p


def add_args(p):
    """The BPE scripts' options on top of cli.add_common_args."""
    add_tokenizer_args(p)
    p.add_argument('--max_tokens', type=lambda x: int(float(x)), default=None,
                   help='stop after this many tokens (train + val), at a document boundary')
    p.add_argument('--streaming', action='store_true',
                   help='stream the Hugging Face dataset instead of downloading it first: for a dataset larger '
                        'than the free disk, usually with --max_tokens')
    p.add_argument('--revision', default=None,
                   help='dataset revision on the hub (a branch, tag or commit; e.g. refs/convert/parquet)')
    return p


def prepare_hf_corpus(description, out_dir, dataset, config=None, argv=None):
    """The whole command line of a prepare script for a Hugging Face web corpus (openwebtext,
    fineweb_edu): the dataset, or --input files, to train.bin / val.bin with 0.05% of the
    documents (seed 2357) in val, as nanoGPT splits OpenWebText."""
    p = ArgumentParser(description=description)
    add_common_args(p, chunk_size='4M', out_dir=out_dir, val_fraction=0.0005, seed=2357)
    add_args(p)
    p.add_argument('--dataset', help=f'Hugging Face dataset (default: {dataset})')
    if config is not None:
        p.add_argument('--config', help=f'dataset config (default: {config})')
    args = p.parse_args(argv)
    check_args(args)
    dataset_only = [o for o in ('dataset', 'config', 'streaming', 'revision') if getattr(args, o, None)]
    if args.input and dataset_only:
        raise UserError(f"{', '.join('--' + o for o in dataset_only)} appl{'y' if len(dataset_only) > 1 else 'ies'} "
                        f"to a Hugging Face dataset, not to --input files: pass one or the other")
    dataset, config = args.dataset or dataset, getattr(args, 'config', None) or config
    check_tokenizer(args.tokenizer, args.vocab_size)  # fail early, in one line, e.g. when tiktoken's files are missing
    if args.input:
        corpus = Corpus(check_inputs(args.input, text_field=args.text_field), text_field=args.text_field)
    else:
        ds = load_hf_dataset(dataset, config, split='train', streaming=args.streaming, revision=args.revision)
        corpus = Corpus(dataset=ds, name=f"{dataset}/{config}" if config else dataset, text_field=args.text_field)
    prepare(corpus, args.out_dir, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
            tokenizer_sample=args.tokenizer_sample, val_fraction=args.val_fraction, seed=args.seed,
            num_workers=args.num_workers, chunk_size=args.chunk_size, ray_address=args.ray_address,
            max_tokens=args.max_tokens)
