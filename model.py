"""
The GPT language model and nothing else: GPT-2's architecture and the options that change
each part of it, the initialisation, the optimizer groups, an MFU estimate, and generation
with a KV cache.

Every option defaults to GPT-2, so the default model is GPT-2 and loads OpenAI's weights.
Training, the cache's prefill and its one-token steps all run through the same blocks.

References:
1) OpenAI's GPT-2 TensorFlow implementation:
   https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face's PyTorch implementation:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py
3) RoFormer (rotary embeddings): https://arxiv.org/abs/2104.09864; RMSNorm: https://arxiv.org/abs/1910.07467;
   GLU variants (SwiGLU): https://arxiv.org/abs/2002.05202; ReLU², QK-norm, zero-initialised projections
   and logit soft-capping as the GPT-2 speedrun uses them: https://github.com/KellerJordan/modded-nanogpt
"""

import math
from dataclasses import dataclass, fields
from typing import Literal, get_args, get_origin

import torch
import torch.nn as nn
from torch.nn import functional as F

from muon import Muon


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # bias in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    # The architecture options: every field from here on, each defaulting to GPT-2. They are listed only
    # here: train.py and bench.py take each as a --key=value, and checkpoints record them.
    # attn_impl: fused kernels, softmax(QK^T/sqrt(d))V written out, or nn.MultiheadAttention
    attn_impl: Literal['sdpa', 'manual', 'mha'] = 'sdpa'
    pos_enc: Literal['learned', 'sinusoidal', 'rope', 'none'] = 'learned'  # rope: rotary, on queries and keys
    norm: Literal['layernorm', 'rmsnorm', 'none'] = 'layernorm'
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention
    mlp: Literal['gelu', 'relu2', 'swiglu'] = 'gelu'  # gelu: the tanh approximation; relu2: ReLU squared
    residual: bool = True  # False: each sublayer's output replaces x instead of being added to it
    attention: bool = True  # False: MLP-only blocks
    tie_embeddings: bool = True  # one matrix embeds the tokens and scores them
    logit_softcap: float = 0.0  # c > 0: logits become c * tanh(logits / c)
    zero_init_proj: bool = False  # the projections into the residual stream start at zero

    def __post_init__(self):
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"{key} must be one of {', '.join(map(repr, choices))}, got {getattr(self, key)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        acting_on_attention = [f"{k}={getattr(self, k)!r}" for k, v in (('pos_enc', 'rope'), ('qk_norm', True))
                               if getattr(self, k) == v]
        if acting_on_attention and not self.attention:
            raise ValueError(f"{' and '.join(acting_on_attention)} act on attention's queries and keys, "
                             f"and attention=False has none")
        if acting_on_attention and self.attn_impl == 'mha':
            raise ValueError(f"attn_impl='mha' computes queries and keys inside nn.MultiheadAttention, so "
                             f"{' and '.join(acting_on_attention)} cannot reach them; use attn_impl='sdpa' or 'manual'")
        if self.pos_enc == 'rope' and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_enc='rope' rotates pairs of features and needs an even head size, "
                             f"got n_embd / n_head = {self.n_embd // self.n_head}")
        if self.zero_init_proj and not self.residual:
            raise ValueError("zero_init_proj=True with residual=False starts every block with a zero output, "
                             "which no gradient can leave; use one or the other")
        if not (math.isfinite(self.logit_softcap) and self.logit_softcap >= 0):
            raise ValueError(f"logit_softcap must be 0 (off) or a positive number, got {self.logit_softcap}")


_FIELDS = fields(GPTConfig)
GPT2_DEFAULTS = {f.name: f.default for f in _FIELDS}
# the architecture options, the fields after bias, with their GPT-2 defaults
OPTIONS = tuple(f.name for f in _FIELDS[[f.name for f in _FIELDS].index('bias') + 1:])
OPTION_DEFAULTS = {k: GPT2_DEFAULTS[k] for k in OPTIONS}
CHOICES = {f.name: get_args(f.type) for f in _FIELDS if get_origin(f.type) is Literal}
# the GPTConfig fields that define the model (dropout does not), as checkpoints record them
ARCHITECTURE = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size', *OPTIONS)


def architecture_of(model_args):
    """The GPTConfig fields a checkpoint's model_args define; a checkpoint written before an
    option existed lacks its key, and gets the default: GPT-2's."""
    return {k: model_args.get(k, GPT2_DEFAULTS[k]) for k in ARCHITECTURE}


def check_gpt2_compatible(args):
    """OpenAI's GPT-2 weights only fit GPT-2's architecture: refuse any option set otherwise."""
    for key in OPTIONS:
        if key in args and args[key] != GPT2_DEFAULTS[key]:
            raise ValueError(f"OpenAI's GPT-2 weights need GPT-2's architecture, so {key}={args[key]!r} is not "
                             f"possible with them; drop the option (default {GPT2_DEFAULTS[key]!r})")


class RMSNorm(nn.Module):
    """x / rms(x), times a learned gain: LayerNorm without the mean and the bias."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def make_norm(config, dim):
    if config.norm == 'layernorm':
        return nn.LayerNorm(dim, bias=config.bias)
    if config.norm == 'rmsnorm':
        return RMSNorm(dim)
    return nn.Identity()


def sinusoidal_positions(max_len, dim):
    """The Transformer paper's fixed position table: sin and cos of the position at
    geometrically spaced frequencies. It is scaled to the RMS of GPT-2's token embeddings at
    init (0.02); at its natural amplitude of about 0.7 the positions would drown the tokens."""
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32),
                         10000.0 ** -(torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    table = torch.empty(max_len, dim)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, :dim // 2]
    return table * (0.02 * math.sqrt(2))


class Rotary(nn.Module):
    """Rotary position embedding: rotates each pair of a head's query (or key) features by an angle
    proportional to the position, so that a query-key product depends on their distance only."""

    def __init__(self, head_size, max_len, base=10000.0):
        super().__init__()
        inv_freq = base ** -(torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        # computed, not learned: left out of the state dict
        self.register_buffer('cos', angles.cos(), persistent=False)
        self.register_buffer('sin', angles.sin(), persistent=False)

    def forward(self, x, start):
        """x (B, nh, T, hs) holds positions start .. start + T - 1."""
        cos, sin = self.cos[start:start + x.size(-2)], self.sin[start:start + x.size(-2)]
        x1, x2 = x.float().chunk(2, dim=-1)  # rotate in float32 also under autocast
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def dropout(x, p, training):
    # A one-token decoding step on a small model is mostly per-call overhead, so the blocks call
    # the functional ops on their modules' weights and skip dropout's call when it does nothing.
    return F.dropout(x, p, training) if training and p > 0 else x


def causal_mask(T, S, device):
    """(T, S) booleans: True where one of the last T positions of S may attend to a position."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.layer = layer  # its index: which slot of a KVCache is its own
        self.impl, self.n_head, self.dropout = config.attn_impl, config.n_head, config.dropout
        head_size = config.n_embd // config.n_head
        if config.attn_impl == 'mha':
            # torch's own module: its in_proj_weight stacks the q, k, v projections as c_attn does
            self.mha = nn.MultiheadAttention(config.n_embd, config.n_head, dropout=config.dropout,
                                             bias=config.bias, batch_first=True)
        else:
            # key, query, value projections for all heads, in one matmul
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
            self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.q_norm = RMSNorm(head_size) if config.qk_norm else None
        self.k_norm = RMSNorm(head_size) if config.qk_norm else None
        self.rotary = Rotary(head_size, config.block_size) if config.pos_enc == 'rope' else None

    def forward(self, x, cache=None):
        """x (B, T, C) at the positions after those in the cache (or from 0 without one)."""
        B, T, C = x.size()
        if self.impl == 'mha':
            # the module projects keys and values itself, so the cache keeps this layer's inputs
            context = cache.extend(self.layer, x) if cache is not None else x
            y, _ = self.mha(x, context, context, need_weights=False,
                            attn_mask=~causal_mask(T, context.size(1), x.device))  # True: masked out
            return dropout(y, self.dropout, self.training)
        # queries, keys and values for all heads from one matmul, each (B, nh, T, hs)
        qkv = F.linear(x, self.c_attn.weight, self.c_attn.bias)
        q, k, v = qkv.view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            start = cache.length if cache is not None else 0
            q, k = self.rotary(q, start), self.rotary(k, start)
        if cache is not None:
            k, v = cache.extend(self.layer, torch.stack((k, v))).unbind(0)
        S = k.size(2)  # the positions attended to: T, or all the cached ones
        if self.impl == 'manual':
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            att = att.masked_fill(~causal_mask(T, S, x.device), float('-inf'))
            y = dropout(F.softmax(att, dim=-1), self.dropout, self.training) @ v
        else:
            # dispatches to flash / memory-efficient kernels where it can; a single new token
            # attends to every position so far and needs no mask
            mask = None if T in (1, S) else causal_mask(T, S, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=T == S,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return dropout(F.linear(y, self.c_proj.weight, self.c_proj.bias), self.dropout, self.training)


def gelu_tanh(x):
    """GPT-2's GELU: the tanh approximation 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), which
    GPT-2 was trained with; using it makes pretrained logits match exactly."""
    if torch.compiler.is_compiling():
        # The same function written as x * sigmoid(2u) (an identity; equal to 5e-7 in float32). Compiled
        # for a CPU, the fused kernel then costs one exp per element instead of a vectorised tanh that is
        # twice as slow, which is most of the activation's time. Eager, ATen's single kernel is fastest.
        return x * torch.sigmoid(math.sqrt(8 / math.pi) * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate='tanh')


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.activation = config.mlp
        if config.mlp == 'swiglu':
            # silu(x W_gate) * (x W_up), both from one matmul; the hidden width 8/3 * n_embd
            # (to a multiple of 8) keeps three matrices as large as GELU's two of 4 * n_embd
            hidden = 8 * round(8 * config.n_embd / 3 / 8)
            self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=config.bias)
        else:
            hidden = 4 * config.n_embd
            self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        h = F.linear(x, self.c_fc.weight, self.c_fc.bias)
        if self.activation == 'gelu':
            h = gelu_tanh(h)
        elif self.activation == 'relu2':
            h = F.relu(h).square()
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return dropout(F.linear(h, self.c_proj.weight, self.c_proj.bias), self.dropout, self.training)


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.residual = config.residual
        if config.attention:
            self.ln_1 = make_norm(config, config.n_embd)
            self.attn = CausalSelfAttention(config, layer)
        else:
            self.attn = None
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        if self.attn is not None:
            y = self.attn(self.ln_1(x), cache)
            x = x + y if self.residual else y
        y = self.mlp(self.ln_2(x))
        return x + y if self.residual else y


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_enc == 'learned':
            modules['wpe'] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        )
        self.transformer = nn.ModuleDict(modules)
        if config.pos_enc == 'sinusoidal':
            self.register_buffer('sinusoids', sinusoidal_positions(config.block_size, config.n_embd), persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying (https://paperswithcode.com/method/weight-tying): one matrix both
            # embeds tokens and scores them, as in GPT-2.
            self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer),
        # so the residual's variance does not grow with depth; the speedrun starts them at zero,
        # so that every block begins as the identity.
        for pn, p in self.named_parameters():
            if pn.endswith(('c_proj.weight', 'out_proj.weight')):
                if config.zero_init_proj:
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """Number of parameters. By default the embedding tables are left out: the positions', and
        the tokens' unless weight tying makes them the lm_head's weights too. What remains are the
        weights the matmuls use, which is what flops_per_token counts."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if 'wpe' in self.transformer:
                n_params -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.MultiheadAttention):  # its q, k, v projection is a bare Parameter
            torch.nn.init.normal_(module.in_proj_weight, mean=0.0, std=0.02)
            if module.in_proj_bias is not None:
                torch.nn.init.zeros_(module.in_proj_bias)

    def forward(self, idx, targets=None, cache=None):
        """Logits for every position and the mean loss when targets are given; otherwise the
        logits of the last position only. With a KVCache, idx continues the cached positions."""
        b, t = idx.size()
        start = cache.length if cache is not None else 0
        assert start + t <= self.config.block_size, \
            f"cannot forward a sequence of length {start + t}, block size is only {self.config.block_size}"
        x = F.embedding(idx, self.transformer.wte.weight)
        # rows of the position table: a slice, with no index tensor to build per call
        if self.config.pos_enc == 'learned':
            x = x + self.transformer.wpe.weight[start:start + t]
        elif self.config.pos_enc == 'sinusoidal':
            x = x + self.sinusoids[start:start + t]
        x = dropout(x, self.config.dropout, self.training)
        for block in self.transformer.h:
            x = block(x, cache)
        if cache is not None:
            cache.length += t
        x = self.transformer.ln_f(x)
        if targets is None:
            x = x[:, -1:, :]  # inference only needs the last position: a matmul over one row instead of t
        logits = F.linear(x, self.lm_head.weight)
        if self.config.logit_softcap:
            c = self.config.logit_softcap
            logits = c * torch.tanh(logits.float() / c)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the model's context, e.g. to fine-tune GPT-2 (1024) with a smaller block_size.
        The fixed position tables (sinusoidal, rotary) keep their rows: none past block_size is read."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if 'wpe' in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def configure_optimizers(self, weight_decay, learning_rate, betas, optimizer='adamw', muon_lr=0.02,
                             muon_momentum=0.95, muon_weight_decay=0.0):
        """AdamW, or Muon for the blocks' weight matrices and AdamW for the rest. AdamW decays the
        2-D tensors (matmul weights, embeddings) and leaves biases and norm gains alone. Each group
        carries lr_ratio, its learning rate over learning_rate, for the schedule to scale."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        hidden = [p for n, p in params.items() if optimizer == 'muon' and n.startswith('transformer.h.') and p.dim() == 2]
        hidden_ids = {id(p) for p in hidden}
        decay_params = [p for p in params.values() if p.dim() >= 2 and id(p) not in hidden_ids]
        nodecay_params = [p for p in params.values() if p.dim() < 2]
        optim_groups = [
            {'params': decay_params, 'weight_decay': weight_decay},
            {'params': nodecay_params, 'weight_decay': 0.0},
        ]
        if optimizer == 'muon':
            optim_groups.insert(0, {'params': hidden, 'muon': True, 'lr': muon_lr, 'momentum': muon_momentum,
                                    'weight_decay': muon_weight_decay, 'lr_ratio': muon_lr / learning_rate})
            return Muon(optim_groups, lr=learning_rate, betas=betas)
        # The fused kernel does the whole update in one pass; torch refuses it at construction
        # on devices it has no kernel for, and then the default implementation is used.
        try:
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls with the weights (forward and backward; N
        counts SwiGLU's three matrices and an untied head) plus the attention scores, which
        MLP-only blocks do not compute; see the PaLM paper, Appendix B (https://arxiv.org/abs/2204.02311)."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + (12 * L * H * Q * T if cfg.attention else 0)

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops):
        """Model FLOPs utilisation: achieved FLOP/s over the device's peak (None when unknown)."""
        if not peak_flops or dt <= 0:
            return None
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    @torch.inference_mode()  # like no_grad, minus the autograd bookkeeping that a decode step would notice
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True,
                        vocab_size=None):
        """Yield max_new_tokens new tokens (each a (b, 1) tensor) continuing the sequences in idx (b, t).
        Only ids below vocab_size are drawn: a padded vocabulary's extra rows are no real tokens.

        Past block_size the context restarts from the last block_size // 2 tokens rather than
        sliding by one, so that the KV cache is rebuilt once every block_size // 2 tokens
        instead of at every step. Both paths use the same contexts, so kv_cache=False gives
        the same tokens, just slower; it exists to check exactly that.
        """
        block_size = self.config.block_size
        keep = max(1, block_size // 2)
        window_start = max(0, idx.size(1) - block_size)  # the context is idx[:, window_start:]
        cache = None
        for _ in range(max_new_tokens):
            if idx.size(1) - window_start > block_size:
                window_start = idx.size(1) - keep
                cache = None
            if not kv_cache:
                logits, _ = self(idx[:, window_start:])
            elif cache is None:  # prefill the whole context once
                cache = KVCache(self)
                logits = cache.forward(idx[:, window_start:])
            else:  # one step: only the newest token goes through the network
                logits = cache.forward(idx[:, -1:])
            idx_next = sample_next_token(logits[:, -1, :vocab_size], temperature, top_k, top_p)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next

    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True, vocab_size=None):
        """Complete the sequences idx (b, t) with max_new_tokens tokens; returns (b, t + max_new_tokens)."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, kv_cache, vocab_size))
        return torch.cat([idx, *new], dim=1)


class KVCache:
    """Cached inference for one batch of sequences: runs a GPT over new tokens while keeping the
    keys and values of every position seen so far, so that each generated token costs one
    position's compute instead of a forward pass over the whole context.

    forward() runs GPT.forward itself, with the cache handed down to each attention layer, which
    stores its new keys and values with extend() and attends to all of them.
    """

    def __init__(self, model):
        cfg = model.config
        assert not (model.training and cfg.dropout > 0), \
            "cached positions must not change under dropout: call model.eval() first"
        self.model, self.max_len = model, cfg.block_size
        self.length = 0  # positions filled; the next token goes at this position
        # per layer, one buffer for max_len positions (keys and values stacked), allocated on
        # first use with the dtype that autocast gives them
        self.buffers = [None] * cfg.n_layer

    def forward(self, idx):
        """Logits (b, 1, vocab) for the position after idx (b, t), which continues the cached
        positions; idx's keys and values join the cache."""
        assert self.length + idx.size(1) <= self.max_len, "KV cache overflow: the caller must start a new cache"
        logits, _ = self.model(idx, cache=self)
        return logits

    def extend(self, layer, new):
        """Store a layer's tensor for the new positions, (..., t, features), in its buffer; return
        the buffer's positions so far."""
        t = new.size(-2)
        if self.buffers[layer] is None:
            self.buffers[layer] = new.new_empty((*new.shape[:-2], self.max_len, new.size(-1)))
        self.buffers[layer].narrow(-2, self.length, t).copy_(new)
        return self.buffers[layer].narrow(-2, 0, self.length + t)


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None):
    """Pick the next token from logits (b, vocab): greedy at temperature 0, else sample from the
    softmax at that temperature, restricted to the top_k tokens and/or the nucleus of mass top_p."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float('inf')
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already cover top_p; the first always stays
        drop = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= top_p
        sorted_logits[drop] = -float('inf')
        logits = torch.full_like(logits, -float('inf')).scatter(-1, sorted_idx, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)
