"""Data preparation: the shared pipeline (pipeline.py), the char and GPT-2 BPE tokenizers (char.py, bpe.py),
and one thin prepare.py per dataset in data/<name>/."""
