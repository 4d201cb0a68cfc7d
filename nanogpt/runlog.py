"""
A run's own record, beside its checkpoints, for plot.py, sweep.py and anyone with a text editor
(plot_runs draws its loss curves):

- out_dir/log.jsonl: one JSON object per line, at every log step (iter, loss, lr, ms_per_iter,
  tokens_per_s, mfu, wall_s) and every evaluation (iter, train_loss, val_loss, lr, wall_s), with
  hellaswag_acc and hellaswag_acc_norm every hellaswag_interval, and val_loss_full and val_bpb when
  the whole val set is evaluated at the end. eval.py appends its metrics with source 'eval.py'.
  Each line is flushed as it is written, so a crash loses at most the line being written.
- out_dir/config.json: the run's full config and where it ran: code version (with the diff of a
  dirty tree), torch, CUDA, device, host.

A resumed run continues the log where its checkpoint left off: the lines of iterations after
the checkpoint, which the resumed run computes again, are dropped first (eval.py's stay), so no
iteration is missing or logged twice, and wall_s continues from the last line kept. The same
numbers go to wandb and TensorBoard when asked for; neither is required.
"""

import contextlib
import json
import os
import platform
import socket
import subprocess
import time

import torch

from nanogpt.errors import UserError
from nanogpt.files import atomic_write


def code_version():
    """The git commit of this code (with '+dirty' for local changes), logged with every run."""
    return _git('describe', '--always', '--dirty=+dirty') or 'unknown'


def provenance(device):
    """Where a run's numbers come from: the code, its uncommitted changes, the software and hardware."""
    version = code_version()
    info = {
        'code_version': version,
        'python': platform.python_version(),
        'torch': torch.__version__,
        'cuda': torch.version.cuda,
        'device': torch.cuda.get_device_name(device) if str(device).startswith('cuda') else str(device),
        'host': socket.gethostname(),
        'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }
    if version.endswith('+dirty'):
        info['git_diff'] = _git('diff', 'HEAD')
    return info


def _git(*args):
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(['git', *args], cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ''


def read_log(path):
    """The entries of a log.jsonl; a line cut short by a crash is skipped."""
    entries = []
    with open(path) as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


class RunLog:
    """Writes log.jsonl and config.json (rank 0 only: the others pass enabled=False)."""

    def __init__(self, out_dir, config, provenance, start_iter, enabled=True, wandb_run=None, tensorboard=False):
        self.enabled = enabled
        if not enabled:
            return
        self.path = os.path.join(out_dir, 'log.jsonl')
        # an evaluation by eval.py (source) is of a checkpoint the resumed run does not recompute: it stays
        kept = [e for e in read_log(self.path) if e['iter'] < start_iter or e.get('source') == 'eval.py'] \
            if os.path.exists(self.path) else []
        config_path = os.path.join(out_dir, 'config.json')
        with _reported(config_path):
            with atomic_write(config_path, 'w') as f:
                f.write(json.dumps({'config': config, 'provenance': provenance}, indent=2) + '\n')
        with _reported(self.path):
            with atomic_write(self.path, 'w') as f:
                f.write(''.join(json.dumps(e) + '\n' for e in kept))
            self.file = open(self.path, 'a')
        self.wall_offset = max((e.get('wall_s', 0.0) for e in kept), default=0.0)
        self.t0 = time.time()
        self.wandb = wandb_run
        self.tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # train.py checked that it imports
            # purge_step: a resumed run replaces the events after its checkpoint, as in log.jsonl
            self.tensorboard = SummaryWriter(os.path.join(out_dir, 'tensorboard'), purge_step=start_iter)

    def write(self, **entry):
        """Append one entry (iter plus numbers; None values are left out)."""
        if not self.enabled:
            return
        entry = {k: v for k, v in entry.items() if v is not None}
        entry['wall_s'] = round(self.wall_offset + time.time() - self.t0, 3)
        with _reported(self.path):
            self.file.write(json.dumps(entry) + '\n')
            self.file.flush()
        metrics = {k: v for k, v in entry.items() if k != 'iter'}
        if self.wandb:
            self.wandb.log(metrics, step=entry['iter'])
        if self.tensorboard:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, entry['iter'])
            self.tensorboard.flush()

    def close(self):
        if self.enabled:
            self.file.close()
            if self.tensorboard:
                self.tensorboard.close()


@contextlib.contextmanager
def _reported(path):
    """A log that cannot be written (a full disk, a quota, permissions) stops the run in one line."""
    try:
        yield
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror or e}): free some disk space or fix its "
                        f"permissions, then resume") from None


def append(path, entry):
    """Append one entry to a log.jsonl from outside a run (eval.py), keeping the lines there."""
    with open(path, 'a') as f:
        f.write(json.dumps(entry) + '\n')


def load_curves(run_dir):
    """(iterations and losses of the training log lines, the same for evaluations), each with wall times."""
    path = os.path.join(run_dir, 'log.jsonl')
    if not os.path.isfile(path):
        raise UserError(f"no log at {path}: is {run_dir} the out_dir of a train.py run?")
    entries = read_log(path)
    train = [(e['iter'], e['wall_s'], e['loss']) for e in entries if 'loss' in e]
    val = [(e['iter'], e['wall_s'], e['val_loss']) for e in entries if 'val_loss' in e]
    if not train and not val:
        raise UserError(f"{path} holds no losses yet; plot again once the run has logged")
    return train, val


def plot_runs(run_dirs, output, title=None):
    try:
        import matplotlib
        matplotlib.use('Agg')  # files only: no display needed on a cluster
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    curves = {os.path.basename(os.path.normpath(d)): load_curves(d) for d in run_dirs}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for (name, (train, val)), color in zip(curves.items(), plt.rcParams['axes.prop_cycle'].by_key()['color'] * 10):
        for ax, x in zip(axes, (0, 1)):  # x: iterations, then wall seconds
            if train:
                ax.plot([p[x] for p in train], [p[2] for p in train], color=color, alpha=0.35, linewidth=0.8)
            if val:
                ax.plot([p[x] for p in val], [p[2] for p in val], color=color, marker='o', markersize=3,
                        label=f"{name} (val {val[-1][2]:.3f})")
            elif train:
                ax.plot([], [], color=color, label=name)
    for ax, xlabel in zip(axes, ('iteration', 'wall time (s)')):
        ax.set_xlabel(xlabel)
        ax.set_ylabel('loss (faint: train, dots: val)')
        ax.set_yscale('log')  # early and late losses differ by an order of magnitude
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or ', '.join(curves))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
