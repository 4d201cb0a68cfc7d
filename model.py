"""
The GPT language model and nothing else: GPT-2's architecture, its initialisation,
the optimizer groups, an MFU estimate, and generation with a KV cache.

References:
1) OpenAI's GPT-2 TensorFlow implementation:
   https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face's PyTorch implementation:
   https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt2/modeling_gpt2.py
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # bias in Linears and LayerNorms, like GPT-2; False is a bit better and faster


# the GPTConfig fields that define the weights' shapes (dropout does not), as checkpoints record them
ARCHITECTURE = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size')


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x):
        B, T, C = x.size()
        # queries, keys and values for all heads from one matmul, as (3, B, nh, T, hs)
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # scaled_dot_product_attention dispatches to flash / memory-efficient kernels where it can
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation; using it makes pretrained logits match exactly
        self.gelu = nn.GELU(approximate='tanh')
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (https://paperswithcode.com/method/weight-tying): one matrix both
        # embeds tokens and scores them, as in GPT-2.
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer),
        # so the residual's variance does not grow with depth.
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """Number of parameters. The position embeddings are left out by default; the token
        embeddings stay in, because weight tying makes them the lm_head's weights too."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, \
            f"cannot forward a sequence of length {t}, block size is only {self.config.block_size}"
        # the first t rows of the position table: a slice, with no index tensor to build per call
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe.weight[:t])
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            # inference only needs the last position: a matmul over one row instead of t
            logits = self.lm_head(x[:, -1:, :])
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the model's context, e.g. to fine-tune GPT-2 (1024) with a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """GPT-2 weights from Hugging Face: a name ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
        or a local directory holding a GPT-2 checkpoint saved with `save_pretrained`."""
        override_args = override_args or {}
        assert set(override_args) <= {'dropout'}, "only dropout can be overridden"
        from transformers import GPT2LMHeadModel  # optional dependency, only needed here
        print(f"loading weights from pretrained gpt: {model_type}")
        model_hf = GPT2LMHeadModel.from_pretrained(model_type)
        hf = model_hf.config
        config = GPTConfig(block_size=hf.n_positions, vocab_size=hf.vocab_size, n_layer=hf.n_layer,
                           n_head=hf.n_head, n_embd=hf.n_embd, bias=True,  # GPT-2 always has biases
                           dropout=override_args.get('dropout', 0.0))
        model = GPT(config)
        sd = model.state_dict()
        sd_hf = {k: v for k, v in model_hf.state_dict().items()
                 if not k.endswith('.attn.masked_bias') and not k.endswith('.attn.bias')}  # buffers, not weights
        assert set(sd_hf) == set(sd), f"mismatched keys: {sorted(set(sd_hf) ^ set(sd))}"
        # The OpenAI checkpoints use a "Conv1D" module, which stores Linear weights transposed.
        transposed = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
        with torch.no_grad():
            for k, v in sd_hf.items():
                v = v.t() if k.endswith(transposed) else v
                assert v.shape == sd[k].shape, f"{k}: {v.shape} vs {sd[k].shape}"
                sd[k].copy_(v)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        # Decay the 2-D tensors (matmul weights, embeddings); leave biases and LayerNorm gains alone.
        params = [p for p in self.parameters() if p.requires_grad]
        decay_params = [p for p in params if p.dim() >= 2]
        nodecay_params = [p for p in params if p.dim() < 2]
        optim_groups = [
            {'params': decay_params, 'weight_decay': weight_decay},
            {'params': nodecay_params, 'weight_decay': 0.0},
        ]
        # The fused kernel does the whole update in one pass; torch refuses it at construction
        # on devices it has no kernel for, and then the default implementation is used.
        try:
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls with the weights (forward and backward)
        plus the attention scores, see the PaLM paper, Appendix B (https://arxiv.org/abs/2204.02311)."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

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

    forward() computes what GPT.forward computes in eval mode, with the same ops on the same
    weights (a test holds a prefill's logits bit-identical on CPU). It calls the functional ops
    on weights looked up once rather than going through the nn.Modules: on a small model a
    one-token step is mostly per-call overhead, and module dispatch and attribute lookups were
    about half of it (see the generation benchmark in the README).
    """

    def __init__(self, model):
        cfg = model.config
        assert not (model.training and cfg.dropout > 0), \
            "the cache runs the network without dropout: call model.eval() first"
        self.n_head, self.max_len = cfg.n_head, cfg.block_size
        self.length = 0  # positions filled; the next token goes at this position
        t = model.transformer
        self.wte, self.wpe, self.lm_head = t.wte.weight, t.wpe.weight, model.lm_head.weight
        self.ln_f = _layer_norm_args(t.ln_f)
        self.layers = [(_layer_norm_args(b.ln_1), _linear_args(b.attn.c_attn), _linear_args(b.attn.c_proj),
                        _layer_norm_args(b.ln_2), _linear_args(b.mlp.c_fc), _linear_args(b.mlp.c_proj))
                       for b in t.h]
        # per layer, keys and values stacked as (2, B, nh, max_len, hs): one copy per step stores both.
        # Allocated on first use, with the dtype that autocast gives them.
        self.kv = [None] * cfg.n_layer

    def forward(self, idx):
        """Logits (b, 1, vocab) for the position after idx (b, t), which continues the cached
        positions; idx's keys and values join the cache. t > 1 only as the first call (the prefill)."""
        b, t = idx.size()
        start, end = self.length, self.length + t
        assert end <= self.max_len, "KV cache overflow: the caller must start a new cache"
        assert t == 1 or start == 0, "a prefill must start from an empty cache"
        x = F.embedding(idx, self.wte) + self.wpe[start:end]
        C = x.size(-1)
        for layer, (ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj) in enumerate(self.layers):
            qkv = F.linear(F.layer_norm(x, *ln_1), *c_attn).view(b, t, 3, self.n_head, C // self.n_head)
            q, kv = qkv.permute(2, 0, 3, 1, 4).split((1, 2))
            if self.kv[layer] is None:
                self.kv[layer] = kv.new_empty((*kv.shape[:3], self.max_len, kv.size(4)))
            self.kv[layer].narrow(3, start, t).copy_(kv)
            k, v = self.kv[layer].narrow(3, 0, end).unbind(0)
            # the prefill needs the causal mask; a single new token may attend to every position so far
            y = F.scaled_dot_product_attention(q[0], k, v, is_causal=t > 1)
            x = x + F.linear(y.transpose(1, 2).contiguous().view(b, t, C), *attn_proj)
            x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, *ln_2), *c_fc), approximate='tanh'), *mlp_proj)
        self.length = end
        return F.linear(F.layer_norm(x, *self.ln_f)[:, -1:, :], self.lm_head)


def _linear_args(linear):
    return linear.weight, linear.bias


def _layer_norm_args(layer_norm):
    return layer_norm.normalized_shape, layer_norm.weight, layer_norm.bias, layer_norm.eps


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


# Dense (no sparsity) peak FLOP/s of the tensor cores for bfloat16/float16, from the vendors'
# data sheets. MFU is achieved FLOP/s over this number, so it is only as right as this table.
PEAK_FLOPS_16BIT = {
    'H200': 989e12, 'H100 NVL': 835e12, 'H100 PCIe': 756e12, 'H100': 989e12, 'GH200': 989e12,
    'A100': 312e12, 'A800': 312e12, 'A10G': 70e12, 'A10': 125e12, 'L40S': 362e12, 'L4': 121e12,
    'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'T4': 65e12,
}


def device_peak_flops(device, dtype):
    """Peak FLOP/s of a CUDA device for the training dtype, or None where the table does not know it."""
    if not str(device).startswith('cuda'):
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS_16BIT.items():  # ordered so that specific names match before general ones
        if key in name:
            # float32 matmuls run as TF32 on the tensor cores at half the 16-bit rate
            return flops if dtype in ('bfloat16', 'float16') else flops / 2
    return None
