"""Run one of the repository's scripts as a user does (python tests/observed.py train.py ARGS..., alone
or under torchrun) and record what its output cannot show, for the tests to check what really ran:

    forward_dtypes    the dtypes of the weights the model's layers computed with (outside compiled code)
    eager_training    the layers that ran as Python while training, by class: none inside compiled code
    reduce_scatters   FSDP's gradient reduce-scatters: how many, and the dtypes they reduced in
    gradient_bytes    at the last optimizer step, the bytes of gradients this rank held, and unsharded
    dynamo            torch._dynamo's counters (graphs compiled, frames)
    hellaswag         per evaluation.hellaswag_accuracy call: every batch the model was given, and
                      the counts this rank contributed to the sum over the ranks

Each rank writes them to $OBSERVED_DIR/rank<R>.json when the script ends, and rank 0 writes the
whole weights that the model held at each checkpoint save to $OBSERVED_DIR/weights.pt (the last
save's). Nothing here changes what the script computes: the wrappers call the originals with the
same arguments."""

import collections
import json
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # as `python train.py` would

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import FSDPModule  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_pre_hook  # noqa: E402

from nanogpt import checkpoint, evaluation  # noqa: E402

OUT = Path(os.environ['OBSERVED_DIR'])
RANK = int(os.environ.get('RANK', 0))
seen = {'forward_dtypes': collections.Counter(), 'eager_training': collections.Counter(), 'reduce_scatters': 0,
        'reduce_dtypes': collections.Counter(), 'gradient_bytes': None, 'hellaswag': []}


def local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def record_forward(module, args):
    # an FSDP unit's own hooks, which gather its weights, run after this one: its layers see them gathered
    if torch.compiler.is_compiling() or isinstance(module, FSDPModule):
        return
    seen['forward_dtypes'].update(str(p.dtype) for p in module.parameters())
    if module.training:
        seen['eager_training'][type(module).__name__] += 1


def record_gradients(optimizer, args, kwargs):
    grads = [p.grad for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
    seen['gradient_bytes'] = [sum(local(g).numel() * g.element_size() for g in grads),
                              sum(g.numel() * g.element_size() for g in grads)]


torch.nn.modules.module.register_module_forward_pre_hook(record_forward)
register_optimizer_step_pre_hook(record_gradients)

reduce_scatter = dist.reduce_scatter_single  # what FSDP2 calls (looked up on torch.distributed each time)


def counted_reduce_scatter(output, input, *args, **kwargs):
    seen['reduce_scatters'] += 1
    seen['reduce_dtypes'][str(input.dtype)] += 1
    return reduce_scatter(output, input, *args, **kwargs)


dist.reduce_scatter_single = counted_reduce_scatter

hellaswag_accuracy = evaluation.hellaswag_accuracy


def watched_hellaswag_accuracy(model, *args, **kwargs):
    call = {'batches': [], 'contributed': None}
    seen['hellaswag'].append(call)
    hook = model.register_forward_pre_hook(lambda module, inputs: call['batches'].append(inputs[0].tolist()))
    all_reduce = dist.all_reduce

    def recording_all_reduce(tensor, *a, **k):  # the one all-reduce in there: the counts, summed over the ranks
        call['contributed'] = tensor.tolist()
        return all_reduce(tensor, *a, **k)
    dist.all_reduce = recording_all_reduce
    try:
        return hellaswag_accuracy(model, *args, **kwargs)
    finally:
        dist.all_reduce = all_reduce
        hook.remove()


evaluation.hellaswag_accuracy = watched_hellaswag_accuracy

save_training_state = checkpoint.save_training_state


def watched_save_training_state(path, model, *args, **kwargs):
    # every rank of a sharded run saves, so every rank joins the gathers of full_tensor()
    weights = {k: local(v).detach().clone() if not isinstance(v, DTensor) else v.full_tensor()
               for k, v in model.state_dict().items()}
    if RANK == 0:
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(weights, OUT / 'weights.pt')
    return save_training_state(path, model, *args, **kwargs)


checkpoint.save_training_state = watched_save_training_state


def write():
    from torch._dynamo.utils import counters
    seen['dynamo'] = {kind: dict(c) for kind, c in counters.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"rank{RANK}.json").write_text(json.dumps(seen))


script = str(REPO / sys.argv[1])
sys.argv = [script, *sys.argv[2:]]
try:
    runpy.run_path(script, run_name='__main__')
finally:
    write()
