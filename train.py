"""
Train a GPT. Runs as one process, under torchrun, or under SLURM's srun, unchanged:

$ python train.py config/train_shakespeare_char.py --device=cpu --compile=False
$ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
$ srun python train.py config/train_gpt2.py          (see slurm/train_gpt2.sbatch)
$ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_xl.py   (sharded: parallelism='fsdp')

Every default below can be changed by a config file and by --key=value (see configurator.py).
A run killed at any moment continues with --init_from=resume as if it had never stopped.
"""

import gc
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
from model import ARCHITECTURE, OPTION_DEFAULTS, check_gpt2_compatible
from nanogpt import checkpoint, distributed, evaluation, runlock
from nanogpt.batches import RandomBatches, check_token_file
from nanogpt.device import autocast_context, check_compiler, device_peak_flops, resolve_device, resolve_dtype
from nanogpt.errors import ConfigError, UserError
from nanogpt.loading import Source, architecture_config, build_model, source_of
from nanogpt.runlog import RunLog, provenance
from nanogpt.tokenizer import Codec, describe_vocab, model_vocab_size, read_vocab

# -----------------------------------------------------------------------------
# default config values, designed to train a GPT-2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, evaluate once and exit; it writes nothing, so it takes no lock on out_dir
always_save_checkpoint = True  # if False, save only when the val loss improves
init_from = 'scratch'  # 'scratch', 'resume', 'gpt2*', a checkpoint file or sharded directory, or a Hugging Face GPT-2 directory
ckpt_iters = []  # keep a permanent snapshot (ckpt_0010000.pt, or the directory ckpt_0010000/ with fsdp) at these iterations...
ckpt_every = 0  # ...and/or every this many iterations (0: off)
keep_last = 0  # keep only the newest N snapshots (0: keep them all)
eval_full_val = False  # at the end, the loss and bits per byte on the whole val set, deterministically
hellaswag_interval = 0  # HellaSwag accuracy every this many iterations (0: off; see evaluation.py)
hellaswag_file = ''  # a local hellaswag_val.jsonl (offline machines); '': downloaded once into ~/.cache/nanogpt
# out_dir/log.jsonl always records the run (see runlog.py); dashboards are optional
wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2'
tensorboard_log = False  # TensorBoard event files in out_dir/tensorboard
# data
dataset = 'openwebtext'
gradient_accumulation_steps = 5 * 8  # used to simulate larger batch sizes; summed over all ranks
batch_size = 12  # micro-batch size per rank
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # use bias inside LayerNorm and Linear layers?
# architecture options: every field of model.GPTConfig after bias (--pos_enc=rope, --norm=rmsnorm, ...),
# each defaulting to GPT-2's; docs/architecture.md lists them
# optimizer: 'adamw', or 'muon' (Muon for the blocks' weight matrices, AdamW for the rest; see muon.py)
optimizer = 'adamw'
learning_rate = 6e-4  # max learning rate (of AdamW)
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this value, or disable if == 0.0
muon_lr = 0.02  # max learning rate of the Muon matrices, on the same schedule
muon_momentum = 0.95
muon_weight_decay = 0.0
# learning rate decay settings
decay_lr = True  # whether to decay the learning rate
warmup_iters = 2000  # how many steps to warm up for
lr_decay_iters = 600000  # should be ~= max_iters per Chinchilla
min_lr = 6e-5  # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# distributed
parallelism = 'ddp'  # 'ddp': every rank holds all weights, gradients and AdamW moments; 'fsdp': each holds 1/N of them
# (FSDP2), for models that do not fit one GPU; its checkpoints are directories (out_dir/ckpt/), one shard per rank
backend = 'auto'  # 'nccl', 'gloo', ...; auto: nccl on CUDA, gloo on CPU
ddp_timeout = 600  # seconds a rank waits for the others before giving up with an error
# system
device = 'auto'  # 'cpu', 'cuda', 'cuda:1', 'mps'; auto: cuda if available, else mps, else cpu
dtype = 'auto'  # 'float32', 'bfloat16' or 'float16'; auto: bfloat16 where supported, float16 on older GPUs, float32 on CPU
compile = None  # torch.compile the model; None: on CUDA, where it pays off
peak_flops = 0.0  # one device's peak FLOP/s for MFU; 0: a GPU's data sheet, or measured once on a CPU
seed = 1337
# -----------------------------------------------------------------------------
DEFAULTS = {**configurator.defaults_from(globals()), **OPTION_DEFAULTS}


def model_args_from(cfg, vocab):
    """The GPTConfig fields for a new model: the config's architecture, sized for the vocabulary."""
    return {**{k: getattr(cfg, k) for k in ARCHITECTURE if k != 'vocab_size'},
            'vocab_size': model_vocab_size(vocab), 'dropout': cfg.dropout}


def check_config(cfg):
    positive = ('batch_size', 'block_size', 'eval_iters', 'eval_interval', 'log_interval',
                'gradient_accumulation_steps', 'n_layer', 'n_head', 'n_embd')
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.max_iters < 0:
        raise ConfigError(f"max_iters must be 0 or more, got {cfg.max_iters}")
    for key in ('learning_rate', 'min_lr'):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and 0 <= value < 1) or (key == 'learning_rate' and value == 0):
            raise ConfigError(f"{key} must be in {'(0, 1)' if key == 'learning_rate' else '[0, 1)'}, got {value}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    architecture_config(model_args_from(cfg, {'tokenizer': 'char', 'vocab_size': 1}))  # refuses what cannot work
    if source_of(cfg.init_from, cfg.out_dir).kind == 'gpt2':
        try:
            check_gpt2_compatible(vars(cfg))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.tensorboard_log:  # on every rank, before they join: none is left waiting for another
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("tensorboard_log=True needs the tensorboard package: pip install tensorboard, "
                            "or pass --tensorboard_log=False") from None
    if cfg.wandb_log:  # likewise, though only rank 0 logs to it
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("wandb_log=True needs the wandb package: pip install wandb, or pass --wandb_log=False") from None
    if cfg.optimizer not in ('adamw', 'muon'):
        raise ConfigError(f"optimizer must be 'adamw' or 'muon', got {cfg.optimizer!r}")
    if cfg.parallelism not in ('ddp', 'fsdp'):
        raise ConfigError(f"parallelism must be 'ddp' or 'fsdp', got {cfg.parallelism!r}")
    if cfg.parallelism == 'fsdp' and cfg.optimizer == 'muon':
        raise ConfigError("optimizer='muon' orthogonalizes whole weight matrices, which parallelism='fsdp' splits "
                          "among the ranks; use optimizer='adamw' with fsdp, or parallelism='ddp' with muon")
    if not (math.isfinite(cfg.muon_lr) and cfg.muon_lr > 0) or not 0 <= cfg.muon_momentum < 1:
        raise ConfigError(f"muon_lr must be a positive number and muon_momentum in [0, 1), "
                          f"got {cfg.muon_lr} and {cfg.muon_momentum}")
    if cfg.muon_weight_decay < 0 or cfg.peak_flops < 0:
        raise ConfigError("muon_weight_decay and peak_flops must be 0 or more")
    if cfg.dtype not in ('auto', 'float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {cfg.dtype!r}")
    if cfg.compile not in (None, True, False):
        raise ConfigError(f"compile must be True or False, got {cfg.compile!r}")
    if cfg.ckpt_every < 0 or cfg.keep_last < 0 or any(not isinstance(i, int) for i in cfg.ckpt_iters):
        raise ConfigError("ckpt_every and keep_last must be >= 0 and ckpt_iters a list of iterations")
    if cfg.hellaswag_interval < 0:
        raise ConfigError(f"hellaswag_interval must be 0 (off) or more, got {cfg.hellaswag_interval}")


def check_writable(directory):
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f'.write_test{os.getpid()}')
        with open(probe, 'w'):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"out_dir {directory} is not writable ({e.strerror}); choose another --out_dir") from None


def get_lr(it, cfg):
    """The learning rate of iteration it: linear warmup, then cosine decay to min_lr (constant if not decay_lr)."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def is_snapshot_iter(it, cfg):
    return it in cfg.ckpt_iters or (cfg.ckpt_every > 0 and it % cfg.ckpt_every == 0)


# Evaluation runs the model uncompiled (also FSDP's compiled blocks): eval mode, no_grad and its
# batch shapes (the whole split's short last batch, HellaSwag's) would each compile it again,
# which on a CPU costs more than the compiled forwards save.
@torch.no_grad()
@torch.compiler.set_stance('force_eager')
def estimate_loss(model, data_dir, dtype, cfg, launch, device, autocast):
    """Mean loss over eval_iters batches per split, shared among the ranks.

    The batches come from their own generator, seeded the same way every time, so successive
    evaluations measure the same data and evaluating never moves the training stream (which keeps
    resumed runs exact)."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        batches = RandomBatches(os.path.join(data_dir, f'{split}.bin'), dtype, cfg.block_size, cfg.batch_size, device,
                                torch.Generator().manual_seed(cfg.seed + 1_000_000 + launch.rank))
        n = max(1, cfg.eval_iters // launch.world_size)
        losses = torch.zeros(n)
        for k in range(n):
            X, Y = batches.next()
            with autocast:
                _, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = distributed.all_average(losses.mean().item(), launch, device)
    model.train()
    return out


def adopt_architecture(cfg, model, source, ckpt, vocab, data_dir, log):
    """The model_args of a model built from source, which decides its architecture (a checkpoint's or GPT-2's
    win over the config's, with a note); the config can only shrink the context, and the data must have the
    checkpoint's vocabulary. cfg records the model that runs."""
    if ckpt is not None and ckpt.get('vocab') not in (None, vocab):
        raise UserError(f"the vocabulary in {data_dir}/meta.json ({describe_vocab(vocab)}) differs from the "
                        f"checkpoint's in {source.path} ({describe_vocab(ckpt['vocab'])}): train on the dataset the "
                        f"checkpoint was trained on")
    if cfg.block_size > model.config.block_size:
        raise UserError(f"block_size={cfg.block_size} is larger than the checkpoint's "
                        f"{model.config.block_size}; use --block_size={model.config.block_size} or less")
    if source.resume and cfg.block_size != model.config.block_size:
        # the optimizer's moments have the checkpoint's shapes; a shorter context is a new run
        raise UserError(f"resuming keeps the checkpoint's block_size={model.config.block_size}; to train "
                        f"with block_size={cfg.block_size}, export the weights (python checkpoint.py export) "
                        f"and start a run with --init_from=<that file>")
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)  # e.g. fine-tune GPT-2 (1024) with a shorter context
    model_args = {**{k: getattr(model.config, k) for k in ARCHITECTURE}, 'dropout': cfg.dropout}
    for k in ARCHITECTURE:  # the config records the model that runs, which a checkpoint or GPT-2 decides
        if k in DEFAULTS and getattr(cfg, k) != model_args[k]:
            if getattr(cfg, k) != DEFAULTS[k] and k != 'block_size':
                log(f"note: {k}={getattr(cfg, k)!r} is ignored: the model from {source.path} has {k}={model_args[k]!r}")
            setattr(cfg, k, model_args[k])
    return model_args


def continue_or_refuse(source, cfg, argv, log):
    """The source of a run that is not resuming although out_dir holds a checkpoint. A job that SLURM or
    torchrun restarted (a requeue after a node failure reruns the same command line) continues from it;
    any other run stops rather than overwrite it, unless init_from was given on the command line."""
    if source.resume or cfg.eval_only or not checkpoint.resumable(cfg.out_dir):
        return source
    restarts = int(os.environ.get('SLURM_RESTART_COUNT') or os.environ.get('TORCHELASTIC_RESTART_COUNT') or 0)
    if not restarts and any(arg.startswith('--init_from=') for arg in argv):
        return source
    path = checkpoint.resume_path(cfg.out_dir, sharded_run=cfg.parallelism == 'fsdp')
    if restarts:
        log(f"note: this job was restarted ({restarts} time(s)): it resumes from {path}, "
            f"not init_from={cfg.init_from!r}")
        return Source('checkpoint', path, resume=True)
    raise UserError(f"{path} would be overwritten by a new run from init_from={cfg.init_from!r}: continue it with "
                    f"--init_from=resume, start over with --init_from={cfg.init_from} on the command line, or "
                    f"choose another --out_dir")


@torch.compiler.set_stance('force_eager')  # (see estimate_loss)
def whole_val_loss(model, data_dir, vocab, cfg, launch, device, autocast, pad):
    """(Mean loss, bits per byte) over every token of the val split, each predicted once: deterministic,
    unlike estimate_loss's random batches. Shared among the ranks; pad: every rank runs as many forwards (FSDP)."""
    loss_sum, n_tokens, n_bytes = evaluation.split_sums(
        model, os.path.join(data_dir, 'val.bin'), vocab['dtype'], cfg.block_size, cfg.batch_size, device, autocast,
        evaluation.token_byte_lengths(vocab), launch.rank, launch.world_size, progress=launch.is_master, pad=pad)
    return loss_sum / n_tokens, evaluation.bits_per_byte(loss_sum, n_bytes)


def describe(optimizer):
    return f"{type(optimizer).__name__} (fused: {bool(optimizer.defaults.get('fused'))}): " + "; ".join(
        f"{'Muon' if g.get('muon') else 'AdamW'} lr {g['lr']:g} weight decay {g['weight_decay']:g} on "
        f"{len(g['params'])} tensors ({sum(p.numel() for p in g['params']):,} parameters)" for g in optimizer.param_groups)


class FiniteLoss:
    """The first iteration whose loss was not finite, kept on the device and read only when the loop syncs
    anyway (logging, checkpointing), so watching costs no stall."""

    def __init__(self, device, launch):
        self.first_bad_iter = torch.tensor(-1, device=device)
        self.launch = launch
        self.last_good_ckpt = None

    def update(self, loss_sum, it):
        bad_now = (self.first_bad_iter < 0) & ~torch.isfinite(loss_sum)
        self.first_bad_iter = torch.where(bad_now, it, self.first_bad_iter)

    def check(self, it):
        """Stop every rank with one line if any rank's loss was not finite (a collective)."""
        bad = self.first_bad_iter.clone()
        if self.launch.ddp:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if bad.item() >= 0:
            where = (f"the last good checkpoint is {self.last_good_ckpt}" if self.last_good_ckpt
                     else "no checkpoint was saved")
            raise UserError(f"loss became non-finite (NaN or inf) at iteration {bad.item()} "
                            f"(checked at {it}); stopped without saving; {where}. "
                            f"Try a lower learning_rate, grad_clip, or dtype=bfloat16")


def main(argv):
    cfg = SimpleNamespace(**configurator.configure(DEFAULTS, argv))
    check_config(cfg)

    # -------------------------------------------------------------------------
    # setup: device, distributed, precision
    launch = distributed.detect_launch()
    stop_signal = distributed.StopSignal()  # now, not at the loop: SIGUSR1 would kill the start-up
    if cfg.gradient_accumulation_steps % launch.world_size:  # before joining: every rank fails alike, none waits
        raise ConfigError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be "
                          f"divisible by the number of ranks ({launch.world_size})")
    device = distributed.setup(launch, resolve_device(cfg.device), cfg.backend, cfg.ddp_timeout)
    master = launch.is_master
    print0 = print if master else (lambda *args, **kwargs: None)
    device_type = device.split(':')[0]
    cfg.dtype = resolve_dtype(cfg.dtype, device_type)
    compile_model = (device_type == 'cuda') if cfg.compile is None else cfg.compile
    if compile_model:
        check_compiler(device_type)
    grad_accum = cfg.gradient_accumulation_steps // launch.world_size
    tokens_per_iter = grad_accum * launch.world_size * cfg.batch_size * cfg.block_size
    # parallelism='fsdp': checkpoints are sharded directories, and with several ranks the weights are split too
    sharded_ckpt = cfg.parallelism == 'fsdp'
    sharded_model = sharded_ckpt and launch.ddp
    run_lock = None
    if master:  # (what fails on one rank stops them all: see distributed.stop_every_rank_on_failure)
        check_writable(cfg.out_dir)
        if not cfg.eval_only:  # one training run per out_dir: a second one stops here (see runlock.py)
            run_lock = runlock.acquire(cfg.out_dir, log=print0)
    run_info = provenance(device)
    print0(f"code {run_info['code_version']}, launched as {launch.launcher} with {launch.world_size} rank(s) on {device}")
    print0(f"hosts by rank: {' '.join(distributed.rank_hosts)}" +
           (f"; rendezvous at {launch.master_addr}:{launch.master_port}" * launch.ddp))
    print0(f"config {json.dumps(vars(cfg))}")
    print0(f"tokens per iteration will be: {tokens_per_iter:,}")
    autocast = autocast_context(device_type, cfg.dtype)

    # -------------------------------------------------------------------------
    # data
    data_dir = os.path.join('data', cfg.dataset)
    vocab = read_vocab(data_dir)
    for split in ('train', 'val'):
        check_token_file(os.path.join(data_dir, f'{split}.bin'), vocab['dtype'], cfg.block_size, cfg.dataset)
    loader_generator = torch.Generator()
    train_batches = RandomBatches(os.path.join(data_dir, 'train.bin'), vocab['dtype'], cfg.block_size,
                                  cfg.batch_size, device, loader_generator)
    hellaswag = None
    if cfg.hellaswag_interval:  # read and tokenized once, before the model: an offline machine without it stops here
        hellaswag = evaluation.load_hellaswag(cfg.hellaswag_file, Codec(vocab), log=print0)

    # -------------------------------------------------------------------------
    # model
    # Every rank builds the same initial weights (DDP would broadcast rank 0's anyway);
    # the per-rank seed for data and dropout is set after the model exists.
    torch.manual_seed(cfg.seed)
    source = continue_or_refuse(source_of(cfg.init_from, cfg.out_dir, sharded_run=sharded_ckpt), cfg, argv, print0)
    if source.kind == 'gpt2' and vocab['tokenizer'] != 'gpt2':
        raise UserError(f"GPT-2 weights need GPT-2 BPE data, but {data_dir} is {vocab['tokenizer']}-level")
    # a checkpoint or GPT-2 brings its own architecture; the config can only shrink the context
    model, ckpt = build_model(source, model_args_from(cfg, vocab), log=print0)
    model_args = adopt_architecture(cfg, model, source, ckpt, vocab, data_dir, log=print0)
    print0(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
    if sharded_model:  # before the optimizer exists: it must hold the sharded weights
        distributed.shard_model(model, cfg.dtype, compile_blocks=compile_model)
    elif sharded_ckpt:
        print0("note: parallelism='fsdp' on one rank: nothing to shard; checkpoints are still sharded directories")
    model.to(device)

    # float16 needs loss scaling to keep small gradients from flushing to zero; a no-op otherwise
    scaler = torch.amp.GradScaler(device_type, enabled=(cfg.dtype == 'float16'))
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.optimizer,
                                           cfg.muon_lr, cfg.muon_momentum, cfg.muon_weight_decay)
    print0(describe(optimizer))
    torch.manual_seed(cfg.seed + launch.rank)
    loader_generator.manual_seed(cfg.seed + launch.rank)
    iter_num, best_val_loss = 0, float('inf')
    if source.resume:
        iter_num, best_val_loss = checkpoint.restore_training_state(
            ckpt, source.path, model, optimizer, scaler, cfg.optimizer, loader_generator, device, launch, cfg.seed,
            log=print0)
    ckpt = None  # free the memory

    raw_model = model
    if compile_model:
        print0("compiling the model... (takes a ~minute)")
        if not sharded_model:  # (shard_model compiled each block before sharding it)
            model = torch.compile(model)
    if launch.ddp and not sharded_model:
        model = DDP(model, device_ids=[device] if device_type == 'cuda' else None)

    finite = FiniteLoss(device, launch)

    def save_checkpoint(name):
        """Every rank calls this: it gathers their random states. A failed write raises a UserError, which
        stops every rank with its cause (distributed.stop_every_rank_on_failure)."""
        finite.check(iter_num)  # never overwrite a good checkpoint with a NaN model
        path = os.path.join(cfg.out_dir, name.removesuffix('.pt') if sharded_ckpt else name)
        state = {'scaler': scaler.state_dict(), 'model_args': checkpoint.check_json(model_args), 'iter_num': iter_num,
                 'best_val_loss': best_val_loss, 'config': checkpoint.check_json(vars(cfg)),
                 'provenance': checkpoint.check_json(run_info), 'vocab': checkpoint.check_json(vocab),
                 'rng': distributed.all_gather(checkpoint.rng_state(loader_generator, device), launch),
                 'format_version': checkpoint.FORMAT_VERSION}
        if master or sharded_ckpt:  # rank 0 writes the file; with fsdp every rank writes its shards
            print0(f"saving checkpoint to {path}")
            checkpoint.save_training_state(path, raw_model, optimizer, state, sharded_ckpt)
        if name == 'ckpt.pt':
            finite.last_good_ckpt = path

    # -------------------------------------------------------------------------
    # training loop
    wandb = None
    if cfg.wandb_log and master:
        import wandb  # check_config made sure it imports
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))
    start_iter = iter_num
    # an evaluation-only run leaves the training run's log and config as they are
    log = RunLog(cfg.out_dir, {**vars(cfg), 'n_params': raw_model.get_num_params()}, run_info, start_iter,
                 enabled=master and not cfg.eval_only, wandb_run=wandb, tensorboard=cfg.tensorboard_log)
    device_peak, peak_source = device_peak_flops(device, cfg.dtype, cfg.peak_flops) if master else (None, "")
    print0(f"MFU: against {device_peak / 1e12:.2f} TFLOP/s per device, {peak_source}" if device_peak else f"MFU: n/a, {peak_source}")
    stop = None  # the signal that ended the run early, if any
    running_mfu = None
    loss_sum = torch.zeros((), device=device)
    # the timing window holds training iterations only: evaluation and saving restart it
    t_log, iters_since_log, iters_timed = time.time(), 0, 0
    while True:
        lr = get_lr(iter_num, cfg)
        for param_group in optimizer.param_groups:
            param_group['lr'] = lr * param_group.get('lr_ratio', 1.0)

        # evaluate the loss on train/val sets and write checkpoints
        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only:
            finite.check(iter_num)
            losses = estimate_loss(model, data_dir, vocab['dtype'], cfg, launch, device, autocast)
            print0(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            log.write(iter=iter_num, train_loss=losses['train'], val_loss=losses['val'], lr=lr)
            if losses['val'] < best_val_loss or cfg.always_save_checkpoint:
                best_val_loss = min(best_val_loss, losses['val'])
                if iter_num > start_iter:
                    save_checkpoint('ckpt.pt')
        if hellaswag and (iter_num % cfg.hellaswag_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only):
            with torch.compiler.set_stance('force_eager'):  # (see estimate_loss)
                n, acc, acc_norm = evaluation.hellaswag_accuracy(raw_model, hellaswag, device, autocast, launch.rank,
                                                                 launch.world_size, cfg.batch_size, pad=sharded_model)
            print0(f"step {iter_num}: hellaswag acc_norm {acc_norm:.4f}, acc {acc:.4f} ({n} examples)")
            log.write(iter=iter_num, hellaswag_acc=acc, hellaswag_acc_norm=acc_norm)
            t_log, iters_timed = time.time(), 0
        if is_snapshot_iter(iter_num, cfg) and iter_num > start_iter:
            save_checkpoint(f'ckpt_{iter_num:07d}.pt')
            if master and cfg.keep_last:
                checkpoint.rotate_snapshots(cfg.out_dir, cfg.keep_last)
        if cfg.eval_only or iter_num >= cfg.max_iters:
            break
        if iter_num % cfg.eval_interval == 0 or is_snapshot_iter(iter_num, cfg):
            t_log, iters_timed = time.time(), 0

        # forward/backward with gradient accumulation, then one optimizer step
        X, Y = train_batches.next()
        for micro_step in range(grad_accum):
            if launch.ddp:
                # sync gradients only on the last micro-step: the others would all-reduce for nothing
                distributed.set_gradient_sync(model, micro_step == grad_accum - 1)
            with autocast:
                _, loss = model(X, Y)
                loss = loss / grad_accum  # the sum over micro-steps is then the mean loss
            if micro_step < grad_accum - 1:
                X, Y = train_batches.next()  # fetch the next batch while the GPU works on this one
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if cfg.grad_clip != 0.0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        finite.update(loss_sum, iter_num)  # the sum of every micro-step since the last log line: a NaN stays visible
        iter_num += 1
        iters_since_log += 1
        iters_timed += 1
        if iter_num == start_iter + 1:  # the optimizer's state exists from its first step on
            print0(distributed.memory_report(raw_model, optimizer, launch, device))

        if iter_num % cfg.log_interval == 0:
            finite.check(iter_num)
            lossf = loss_sum.item() / iters_since_log  # .item() waits for the GPU, so the timing is true
            dt = (time.time() - t_log) / iters_timed
            if iters_timed == cfg.log_interval and iter_num - start_iter > 5:  # let the first iterations warm up
                mfu = raw_model.estimate_mfu(tokens_per_iter // launch.world_size, dt, device_peak)
                if mfu is not None:
                    running_mfu = mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * mfu
            mfu_text = f"{running_mfu * 100:.2f}%" if running_mfu is not None else "n/a"
            print0(f"iter {iter_num - 1}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, "
                   f"tok/s {tokens_per_iter / dt:,.0f}, mfu {mfu_text}")
            log.write(iter=iter_num - 1, loss=lossf, lr=lr, ms_per_iter=dt * 1000, tokens_per_s=tokens_per_iter / dt,
                      mfu=running_mfu)
            loss_sum.zero_()
            t_log, iters_since_log, iters_timed = time.time(), 0, 0

        # preemption: every rank learns of a signal that any rank got, and all stop here together
        stop = stop_signal.check(launch)
        if stop:
            print0(f"received {stop}: saving a checkpoint at iteration {iter_num} and exiting")
            save_checkpoint('ckpt.pt')
            if is_snapshot_iter(iter_num, cfg):  # the resumed run starts here and would not write it
                save_checkpoint(f'ckpt_{iter_num:07d}.pt')
            break

    if cfg.eval_full_val and not stop:
        val_loss_full, val_bpb = whole_val_loss(model, data_dir, vocab, cfg, launch, device, autocast, pad=sharded_model)
        print0(f"val loss on the whole val set: {val_loss_full:.4f} ({val_bpb:.4f} bits per byte)")
        log.write(iter=iter_num, val_loss_full=val_loss_full, val_bpb=val_bpb)
    print0(f"done: {iter_num} iterations, best val loss {best_val_loss:.4f}")
    log.close()
    if run_lock:
        run_lock.release()
    if wandb:
        wandb.finish()
    # Free the DDP wrapper while the process group still lives: freed with main's other locals on return,
    # its reducer's teardown joins gloo's worker thread while holding the GIL that thread needs (a hang at exit)
    model = None
    gc.collect()
    distributed.cleanup(launch)
    if stop == 'SIGUSR1' and master:  # SLURM's advance warning (--signal=USR1@N): continue in a new job
        distributed.requeue_slurm_job()


if __name__ == '__main__':
    configurator.run(distributed.stop_every_rank_on_failure(main), sys.argv[1:])
