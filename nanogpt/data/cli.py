"""
The command line that every data/<name>/prepare.py shares: its options, parsed so that a bad one is one
line (exit status 2), like every other mistake a user can fix. main() of a prepare script runs through
nanogpt.errors.run.
"""

import argparse

from nanogpt.data.sources import is_text_file
from nanogpt.errors import ConfigError, UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad option is one line on stderr and exit status 2 (ConfigError), as every
    other mistake a user can fix, rather than the usage text and the error. The description is printed
    as written (a script's docstring)."""

    def __init__(self, **kw):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    def error(self, message):
        raise ConfigError(f"{message} (see --help)")


def add_common_args(p, chunk_size, out_dir, val_fraction=0.0005, seed=2357, split_unit='documents (seeded)',
                    rows=True):
    """The options the prepare scripts share. A script offers only those it uses: chunk_size=None, no
    --chunk_size (a corpus held in memory); seed=None, no --seed (a split that is not random); rows=False,
    .txt inputs only and no --text_field."""
    if rows:
        p.add_argument('--input', nargs='+', metavar='PATH',
                       help='local files instead of downloading: .txt, .jsonl, .jsonl.gz or .parquet')
        p.add_argument('--text_field', default='text', metavar='NAME',
                       help='the field (column) that holds the text in .jsonl / .parquet inputs and Hugging Face '
                            'datasets (default: %(default)s)')
    else:
        p.add_argument('--input', nargs='+', metavar='PATH', help='a local .txt file instead of downloading')
    p.add_argument('--out_dir', default=out_dir, help='where train.bin, val.bin and meta.json go (default: %(default)s)')
    p.add_argument('--num_workers', type=parse_workers, default='auto',
                   help="'auto' (default): this process, or Ray where the corpus is large enough for Ray's start-up "
                        "to pay off (always with --ray_address); N: exactly N workers, 1 in this process without Ray, "
                        "N > 1 as Ray tasks")
    if chunk_size is not None:
        p.add_argument('--chunk_size', type=parse_size, default=chunk_size,
                       help='bytes of text per chunk, e.g. 16M or 1000000; a worker holds one chunk at a time '
                            '(default: %(default)s)')
    p.add_argument('--ray_address', default=None,
                   help='join a running Ray cluster (e.g. "auto" or host:port) instead of starting a local one')
    p.add_argument('--val_fraction', type=float, default=val_fraction,
                   help=f'fraction of the {split_unit} that go to val.bin (default: %(default)s)')
    if seed is not None:
        p.add_argument('--seed', type=int, default=seed, help='seed of the train/val split (default: %(default)s)')
    return p


def parse_size(s):
    """'16M' -> 16 MiB, '512K' -> 512 KiB, '1000' -> 1000 bytes."""
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    s = str(s).strip().upper().rstrip('B')
    try:
        n = int(float(s[:-1]) * units[s[-1]]) if s and s[-1] in units else int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (use e.g. 16M, 512K or a number of bytes)")
    if n < 64:
        raise argparse.ArgumentTypeError("chunk size must be at least 64 bytes")
    return n


def format_size(n):
    """A number of bytes for messages, in the decimal units they use: '61 kB', '1.1 MB', '100 MB'."""
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:,.0f} {unit}"
    return f"{n:,} bytes"


def parse_workers(s):
    """--num_workers: 'auto' or a positive number."""
    if str(s).strip().lower() == 'auto':
        return 'auto'
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of workers, got {s!r}")
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (or 'auto')")
    return n


def check_args(args):
    if not 0.0 <= args.val_fraction < 1.0:
        raise UserError("--val_fraction must be in [0, 1)")
    if getattr(args, 'text_field', 'text') != 'text' and args.input and all(map(is_text_file, args.input)):
        raise UserError("--text_field names a field of .jsonl / .parquet inputs or of a dataset; .txt inputs "
                        "have none (their documents are separated by <|endoftext|>)")
