"""
Data preparation, shared by the thin data/<name>/prepare.py scripts:

    cli       the options every prepare script takes, parsed with one-line errors
    sources   where the text comes from (files, Hugging Face datasets) and the Corpus of document chunks
    workers   who encodes the chunks: this process, its threads, or Ray (locally or on a cluster), and the choice
    output    the seeded train/val split and train.bin / val.bin / meta.json, moved into place when complete
    char      character-level encoding
    bpe       BPE: GPT-2's, any tiktoken encoding, a tokenizer.json, or one trained first (bpe_trainer)
    bpe_trainer   a byte-level BPE trained on the corpus (--tokenizer=bpe), with Hugging Face's tokenizers

A chunk is a whole number of documents, so a task never needs its neighbours; results come back in
order, so the output does not depend on the worker count.
"""
