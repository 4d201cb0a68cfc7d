"""
One checkpoint file: written atomically, read without running code, and anything that is not one
refused in one line that says what it is.

- save() writes through files.atomic_write: a SIGKILL or a full disk during a save leaves the
  previous checkpoint as it was.
- read() is torch.load(weights_only=True): tensors, numbers, strings and containers only, so a
  checkpoint cannot run code. Anything else given as a checkpoint (a text file, another program's
  pickle, a truncated file, a newer format, ...) is a UserError naming what it is (check_kind).
"""

import codecs
import os
import pickle
import pickletools
import re
import zipfile

import torch

from nanogpt.errors import UserError
from nanogpt.files import atomic_write

FORMAT_VERSION = 1


def save(state, path):
    """torch.save(state, path), atomically. Only one process writes a given checkpoint (rank 0, under
    the run lock), so what an earlier killed save left beside it is removed first."""
    try:
        with atomic_write(path, 'wb', remove_stale=True) as f:
            torch.save(state, f)
    except RuntimeError as e:
        # torch's zip writer, failing again as it closes, hides a full disk's OSError behind a RuntimeError
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def read(path, map_location='cpu'):
    """torch.load(path, weights_only=True), with every way it can fail said in one line."""
    check_kind(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not pickles_complete(path):
            raise UserError(f"checkpoint {path} is corrupt or truncated (its pickle is cut short or damaged); "
                            f"use an earlier checkpoint or start again") from None
        found = sorted(set(re.findall(r'GLOBAL ([\w.]+)', str(e)))) or [str(e).splitlines()[0]]
        raise UserError(f"refusing to load {path}: it holds Python objects that only arbitrary "
                        f"unpickling could load ({', '.join(found)}); "
                        f"re-save it with tensors and plain values only") from None
    except MemoryError:
        raise
    except Exception as e:  # whatever a damaged file makes torch's reader raise
        detail = (str(e).splitlines() or [''])[0].split('. ')[0][:200]
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {detail}); "
                        f"use an earlier checkpoint or start again") from None
    version = ckpt.get('format_version', 0) if isinstance(ckpt, dict) else 0
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer version of this code (checkpoint format "
                        f"{version}, this code reads up to {FORMAT_VERSION}); update the code")
    return ckpt


ZIP_MAGIC = b'PK\x03\x04'  # torch.save's format since torch 1.6: a zip archive
# torch.save's format before 1.6: pickles in a row, the first of this magic number
LEGACY_MAGIC = b'\x80\x02\x8a\x0a' + (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')
NOT_A_CHECKPOINT = "pass a checkpoint that train.py or checkpoint.py export wrote"


def check_kind(path):
    """Refuse in one line anything at path that is not a torch checkpoint, naming what it is:
    missing, not a file, unreadable, empty, text, a zip or pickle of another program, a
    safetensors file, or bytes of no known format."""
    if not os.path.lexists(path):
        raise UserError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a checkpoint file; {NOT_A_CHECKPOINT}")
    if not os.path.isfile(path):
        raise UserError(f"{path} is not a regular file (a broken link, device or pipe); {NOT_A_CHECKPOINT}")
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    if not head:
        raise UserError(f"{path} is empty (0 bytes), not a checkpoint: a save that never finished? {NOT_A_CHECKPOINT}")
    if head.startswith(LEGACY_MAGIC):
        return
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):  # the index at the end of the zip is gone
            raise UserError(f"checkpoint {path} is corrupt or truncated (its zip archive has no end: cut short?); "
                            f"use an earlier checkpoint or start again") from None
        if not any(n.endswith('data.pkl') for n in names):
            raise UserError(f"{path} is a zip archive but not a torch checkpoint (no data.pkl in it); "
                            f"{NOT_A_CHECKPOINT}")
        return
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        raise UserError(f"{path} is a Python pickle written by another program (pickle.dump, protocol {head[1]}), "
                        f"not a torch checkpoint; {NOT_A_CHECKPOINT}")
    if len(head) >= 10 and head[8:10] == b'{"':  # 8 bytes of header length, then a JSON header
        raise UserError(f"{path} is a safetensors file; this code reads torch checkpoints (torch.save) and "
                        f"Hugging Face GPT-2 directories")
    try:  # a character cut in two at byte 512 is fine: the decoder keeps it for a later final=True
        text = codecs.getincrementaldecoder('utf-8')().decode(head)
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in '\t\n\r\f' for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ''
        raise UserError(f"{path} is a text file (it starts {first!r}), not a checkpoint; {NOT_A_CHECKPOINT}")
    raise UserError(f"{path} is not a checkpoint: binary data of no format this code knows (it starts "
                    f"{head[:8].hex(' ')}); {NOT_A_CHECKPOINT}")


def pickles_complete(path):
    """Whether the pickles of a torch checkpoint are whole: parsed opcode by opcode, nothing run.
    Tells a truncated or damaged file from one whose objects weights_only loading refuses."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                data = z.read(next(n for n in z.namelist() if n.endswith('data.pkl')))
            for _ in pickletools.genops(data):
                pass
        else:  # magic number, protocol version, system info, the object, the storage keys
            with open(path, 'rb') as f:
                for _ in range(5):
                    for _ in pickletools.genops(f):
                        pass
        return True
    except Exception:
        return False


