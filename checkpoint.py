"""
Export a checkpoint: the weights alone (for sample.py, eval.py or init_from=<path>), from a checkpoint
file or a sharded directory (no ranks or GPUs needed), or a Hugging Face GPT-2 directory (for
transformers and EleutherAI's lm_eval).

$ python checkpoint.py export out/ckpt.pt out/model.pt
$ python checkpoint.py export out/ckpt out/model.pt
$ python checkpoint.py export out/ckpt.pt out/hf --format=hf
"""

import os
import sys

from nanogpt import checkpoint, checkpoint_file, hf
from nanogpt.errors import UserError, run


def main(argv):
    """python checkpoint.py export SRC DST [--format=pt|hf]"""
    usage = "usage: python checkpoint.py export SRC DST [--format=pt|hf] (SRC: a checkpoint file or a sharded directory)"
    options = dict(a[2:].partition('=')[::2] for a in argv if a.startswith('--'))
    positional = [a for a in argv if not a.startswith('--')]
    if positional[:1] != ['export'] or len(positional) != 3 or set(options) - {'format'}:
        raise UserError(usage)
    src, dst = positional[1:]
    fmt = options.get('format', 'pt')
    if fmt not in ('pt', 'hf'):
        raise UserError(f"--format must be pt (weights only, for sample.py, eval.py and init_from) or hf "
                        f"(a Hugging Face GPT-2 directory), got {fmt!r}")
    ckpt = checkpoint.load(src)  # a file, or a sharded directory: the weights whole, in this process alone
    if fmt == 'hf' and os.path.exists(dst) and not os.path.isdir(dst):
        raise UserError(f"--format=hf writes a directory, and {dst} is a file")
    try:
        if fmt == 'pt':
            checkpoint_file.save(checkpoint.inference_state(ckpt), dst)
            print(f"wrote {dst} ({os.path.getsize(dst) / 2**20:.1f} MiB, from {checkpoint.disk_size(src) / 2**20:.1f} MiB)")
            return
        checkpoint.model_args_of(ckpt, src)  # the architecture decides the Hugging Face config
        written = hf.export_hf(ckpt, dst)
    except OSError as e:  # a full disk, no permission, a missing parent directory
        raise UserError(f"could not write {dst} ({e.strerror}); choose another destination") from None
    print(f"wrote {dst}/: {', '.join(written)}")
    if 'vocab.json' not in written and 'tokenizer.json' not in written:
        vocab = ckpt.get('vocab') or {}
        print(f"note: no tokenizer files: Hugging Face's tokenizers hold BPE vocabularies, and this model's "
              f"vocabulary is {vocab.get('tokenizer', 'not recorded')} ({vocab.get('vocab_size', '?')} tokens); "
              f"transformers loads the model, lm_eval would need a tokenizer")



if __name__ == '__main__':
    run(main, sys.argv[1:])
