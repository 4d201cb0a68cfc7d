import math
import re
from pathlib import Path

import pytest
import torch

from model import (
    ARCHITECTURE,
    GPT,
    MLP,
    OPTIONS,
    CausalSelfAttention,
    GPTConfig,
    KVCache,
    Rotary,
    gelu_tanh,
    sample_next_token,
)
from nanogpt import hf
from nanogpt.errors import ConfigError


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    args = dict(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    args.update(overrides)
    return GPT(GPTConfig(**args)).eval()


def full_logits(model, idx):
    # with targets the model returns logits for every position, not just the last
    logits, _ = model(idx, torch.zeros_like(idx))
    return logits


def test_changing_later_tokens_never_changes_earlier_logits():
    model = tiny_gpt()
    idx = torch.randint(0, 37, (2, 16))
    base = full_logits(model, idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 37, changed[:, t + 1:].shape)
        changed[:, t + 1:] = (changed[:, t + 1:] + 1) % 37  # make sure every later token differs
        logits = full_logits(model, changed)
        torch.testing.assert_close(logits[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:])


@pytest.mark.slow
def test_gelu_as_compiled_is_gpt2s_tanh_gelu():
    # compiled, gelu_tanh computes x * sigmoid(2u) instead of ATen's tanh form; it must be the same function
    x = torch.linspace(-10, 10, 20001, requires_grad=True)
    reference = torch.nn.functional.gelu(x, approximate='tanh')
    compiled = torch.compile(gelu_tanh)(x)
    (reference_grad,), (compiled_grad,) = (torch.autograd.grad(y.sum(), x) for y in (reference, compiled))
    assert (compiled - reference).abs().max() < 2e-6 and (compiled_grad - reference_grad).abs().max() < 5e-6
    assert torch.equal(gelu_tanh(x), reference)  # eager: ATen's own kernel


def test_loss_at_init_is_close_to_uniform_guessing():
    model = tiny_gpt(vocab_size=65)
    idx = torch.randint(0, 65, (8, 16))
    _, loss = model(idx, torch.randint(0, 65, (8, 16)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_tiny_model_overfits_one_batch():
    model = tiny_gpt().train()
    optimizer = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95))
    x = torch.randint(0, 37, (4, 16))
    y = torch.randint(0, 37, (4, 16))
    for _ in range(200):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_weight_decay_applies_to_matrices_only():
    model = tiny_gpt()
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    decay, no_decay = optimizer.param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() == 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() == 1 for p in no_decay['params'])
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in optimizer.param_groups for p in g['params']) == n_params


def test_residual_projections_get_scaled_init():
    model = tiny_gpt(n_layer=8, n_embd=256, n_head=4)
    proj_std = model.transformer.h[0].attn.c_proj.weight.std().item()
    fc_std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert proj_std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert fc_std == pytest.approx(0.02, rel=0.05)


def test_crop_block_size_keeps_the_first_positions():
    model = tiny_gpt()
    wpe = model.transformer.wpe.weight[:8].detach().clone()
    model.crop_block_size(8)
    assert torch.equal(model.transformer.wpe.weight, wpe)
    with pytest.raises(AssertionError):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('shape', [(1, 12), (4, 7)])
def test_kv_cache_prefill_gives_bit_identical_logits(bias, shape):
    with torch.inference_mode():  # also the weights: matmul kernels may pick another path for them
        model = tiny_gpt(bias=bias)
        idx = torch.randint(0, 37, shape)
        assert torch.equal(KVCache(model).forward(idx), model(idx)[0])


def test_kv_cache_prefill_and_steps_match_full_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 37, (3, 12))
    expected = full_logits(model, idx)
    cache = KVCache(model)
    logits = cache.forward(idx[:, :5])
    torch.testing.assert_close(logits[:, -1], expected[:, 4], rtol=1e-5, atol=1e-5)
    for t in range(5, 12):
        logits = cache.forward(idx[:, t:t + 1])
        torch.testing.assert_close(logits[:, -1], expected[:, t], rtol=1e-5, atol=1e-5)
    assert cache.length == 12


@pytest.mark.parametrize('vocab_size', [65, 50257], ids=['char', 'bpe'])
@pytest.mark.parametrize('new_tokens', [10, 45], ids=['short', 'past_block_size'])
@pytest.mark.parametrize('sampling', [dict(temperature=0.0), dict(top_k=1),
                                      dict(temperature=0.9, top_k=20, top_p=0.9), dict(temperature=1.3)],
                         ids=['argmax', 'top_k_1', 'top_k_top_p', 'hot'])
def test_generation_with_kv_cache_gives_the_same_tokens(vocab_size, new_tokens, sampling):
    model = tiny_gpt(vocab_size=vocab_size)
    prompt = torch.randint(0, vocab_size, (2, 5))
    outputs = []
    for kv_cache in (True, False):
        torch.manual_seed(1234)
        outputs.append(model.generate(prompt, new_tokens, kv_cache=kv_cache, **sampling))
    assert outputs[0].shape == (2, 5 + new_tokens)
    assert torch.equal(outputs[0], outputs[1])


def test_generation_past_block_size_keeps_at_least_half_the_context(monkeypatch):
    model = tiny_gpt()
    calls = []
    original_forward = KVCache.forward
    monkeypatch.setattr(KVCache, 'forward', lambda cache, idx: (calls.append(idx.size(1)), original_forward(cache, idx))[1])
    list(model.generate_tokens(torch.zeros(1, 3, dtype=torch.long), 40))
    # one prefill, then one token per step, and a rebuild from the last block_size // 2 tokens each
    # time the window fills up: never a full re-run of the context per token
    prefills = [n for n in calls if n > 1]
    assert prefills == [3, 8, 8, 8]  # rebuilt when the sequence reaches 17, 26 and 35 tokens
    assert len(calls) == 40


def test_kv_cache_refuses_a_model_in_training_mode_with_dropout():
    model = tiny_gpt(dropout=0.1).train()  # the uncached path would apply dropout, the cache would not
    with pytest.raises(AssertionError, match=r'model\.eval\(\)'):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 2)
    model.generate(torch.zeros(1, 1, dtype=torch.long), 2, kv_cache=False)  # uncached: runs, with dropout


def test_generation_never_draws_the_padding_ids_of_a_padded_vocabulary():
    model = tiny_gpt(vocab_size=64)
    torch.manual_seed(0)
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 40, temperature=5.0, vocab_size=50)
    assert out.max() < 50


def test_sampling_respects_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = {sample_next_token(logits.clone(), top_k=2).item() for _ in range(300)}
    assert draws == {0, 1}
    draws = {sample_next_token(logits.clone(), top_p=0.7).item() for _ in range(300)}
    assert draws == {0, 1}  # 0.5 alone is short of 0.7; 0.5 + 0.3 covers it
    draws = {sample_next_token(logits.clone(), top_p=0.01).item() for _ in range(50)}
    assert draws == {0}  # the most likely token always stays
    assert sample_next_token(logits, temperature=0.0).item() == 0


def test_from_pretrained_local_directory_matches_transformers(tmp_path):
    import transformers  # requirements-dev.txt installs it: a broken install fails here
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=101)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    model = hf.load_gpt2(str(tmp_path)).eval()
    assert model.config.block_size == 24 and model.config.vocab_size == 101
    idx = torch.randint(0, 101, (2, 24))
    with torch.no_grad():
        expected = hf_model(idx).logits
        logits = full_logits(model, idx)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


# -----------------------------------------------------------------------------
# architecture options

# every value of every option, each on its own (the rest GPT-2), and the speedrun's mix
OPTION_SETTINGS = [
    dict(attn_impl='manual'), dict(attn_impl='mha'),
    dict(pos_enc='sinusoidal'), dict(pos_enc='rope'), dict(pos_enc='none'),
    dict(norm='rmsnorm'), dict(norm='none'), dict(qk_norm=True),
    dict(mlp='relu2'), dict(mlp='swiglu'),
    dict(residual=False), dict(attention=False, pos_enc='none'),
    dict(tie_embeddings=False), dict(logit_softcap=3.0), dict(zero_init_proj=True),
    dict(pos_enc='rope', norm='rmsnorm', qk_norm=True, mlp='relu2', tie_embeddings=False, logit_softcap=15.0,
         zero_init_proj=True, attn_impl='manual'),
]
OPTION_IDS = ['-'.join(f'{k}={v}' for k, v in s.items()) for s in OPTION_SETTINGS]


@pytest.mark.parametrize('options', OPTION_SETTINGS, ids=OPTION_IDS)
def test_every_option_trains_reloads_and_generates_the_same_tokens_with_the_kv_cache(options, tmp_path):
    model = tiny_gpt(**options).train()
    optimizer = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95))
    x, y = torch.randint(0, 37, (4, 16)), torch.randint(0, 37, (4, 16))
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses  # it learns (without residual connections, slowly)

    # the checkpoint records the options, and the model they rebuild gives the same logits
    from nanogpt import checkpoint_file
    from nanogpt.loading import build_model, source_of
    model_args = {k: getattr(model.config, k) for k in ARCHITECTURE}
    checkpoint_file.save({'model': model.state_dict(), 'model_args': model_args}, tmp_path / 'ckpt.pt')
    rebuilt, _ = build_model(source_of(str(tmp_path / 'ckpt.pt'), None), {'dropout': 0.0})
    assert rebuilt.config == model.config
    model.eval()
    rebuilt.eval()
    torch.testing.assert_close(full_logits(rebuilt, x), full_logits(model, x), rtol=0, atol=0)

    # 45 new tokens from 5 run far past block_size=16: the cache restarts its window twice
    prompt = torch.randint(0, 37, (2, 5))
    outputs = []
    for kv_cache in (True, False):
        torch.manual_seed(1234)
        outputs.append(rebuilt.generate(prompt, 45, temperature=1.0, kv_cache=kv_cache))
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize('options', OPTION_SETTINGS, ids=OPTION_IDS)
def test_cached_prefill_and_steps_match_the_full_forward_for_every_option(options):
    model = tiny_gpt(**options)
    with torch.no_grad():  # zero-initialised projections would make every position alike
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    idx = torch.randint(0, 37, (3, 16))
    expected = full_logits(model, idx)
    cache = KVCache(model)
    logits = cache.forward(idx[:, :6])
    torch.testing.assert_close(logits[:, -1], expected[:, 5], rtol=1e-5, atol=1e-5)
    for t in range(6, 16):  # RoPE: each step's position continues from the cache's length
        logits = cache.forward(idx[:, t:t + 1])
        torch.testing.assert_close(logits[:, -1], expected[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('pos_enc', ['learned', 'rope'])
def test_manual_and_mha_attention_give_sdpas_outputs_with_the_same_weights(pos_enc):
    reference = tiny_gpt(pos_enc=pos_enc, dropout=0.0)
    idx = torch.randint(0, 37, (3, 16))
    expected = full_logits(reference, idx)
    manual = tiny_gpt(pos_enc=pos_enc, attn_impl='manual')
    manual.load_state_dict(reference.state_dict())  # the same parameter names
    torch.testing.assert_close(full_logits(manual, idx), expected, rtol=1e-5, atol=1e-5)
    if pos_enc == 'rope':
        return  # nn.MultiheadAttention cannot rotate queries and keys: refused, tested below
    mha = tiny_gpt(attn_impl='mha')
    renamed = {'attn.c_attn.weight': 'attn.mha.in_proj_weight', 'attn.c_attn.bias': 'attn.mha.in_proj_bias',
               'attn.c_proj.weight': 'attn.mha.out_proj.weight', 'attn.c_proj.bias': 'attn.mha.out_proj.bias'}
    state = {}
    for k, v in reference.state_dict().items():
        for old, new in renamed.items():
            k = k.replace(old, new)
        state[k] = v
    mha.load_state_dict(state)
    torch.testing.assert_close(full_logits(mha, idx), expected, rtol=1e-5, atol=1e-5)


def test_rope_makes_attention_scores_depend_on_relative_position_only():
    rotary = Rotary(head_size=8, max_len=64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    scores = {(m, n): (rotary(q, m) * rotary(k, n)).sum().item() for m, n in [(3, 1), (12, 10), (40, 38), (5, 5)]}
    assert scores[(3, 1)] == pytest.approx(scores[(12, 10)], abs=1e-5) == pytest.approx(scores[(40, 38)], abs=1e-5)
    assert scores[(3, 1)] != pytest.approx(scores[(5, 5)], abs=1e-3)


def test_residual_false_and_norm_none_really_remove_them():
    # without residual connections a block's output is all that reaches the next: zeroing the last
    # block's MLP output makes the logits independent of the tokens
    for residual, independent in ((False, True), (True, False)):
        model = tiny_gpt(residual=residual)
        with torch.no_grad():
            model.transformer.h[-1].mlp.c_proj.weight.zero_()
            model.transformer.h[-1].mlp.c_proj.bias.zero_()
        logits = full_logits(model, torch.randint(0, 37, (2, 16)))
        assert torch.allclose(logits, logits[0, 0].expand_as(logits), atol=1e-6) == independent
    # without normalisation a one-block MLP-only model computes head(x + mlp(x)), with it head(ln_f(x + mlp(ln_2(x))))
    idx = torch.randint(0, 37, (2, 16))
    for norm in ('none', 'layernorm', 'rmsnorm'):
        model = tiny_gpt(norm=norm, n_layer=1, attention=False, pos_enc='none', bias=False)
        x, mlp = model.transformer.wte.weight[idx], model.transformer.h[0].mlp
        without_norms = model.lm_head(x + mlp(x))
        with_norms = model.lm_head(model.transformer.ln_f(x + mlp(model.transformer.h[0].ln_2(x))))
        logits = full_logits(model, idx)
        assert torch.allclose(logits, without_norms, atol=1e-6) == (norm == 'none')
        torch.testing.assert_close(logits, with_norms)


def test_attention_false_builds_mlp_only_blocks_and_counts_no_attention_flops():
    with_attention, mlp_only = tiny_gpt(pos_enc='none'), tiny_gpt(pos_enc='none', attention=False)
    assert not any(isinstance(m, CausalSelfAttention) for m in mlp_only.modules())
    cfg = mlp_only.config
    assert mlp_only.flops_per_token() == 6 * mlp_only.get_num_params()
    attention_term = 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * cfg.block_size
    assert with_attention.flops_per_token() == 6 * with_attention.get_num_params() + attention_term


def test_swiglu_keeps_the_mlp_size_and_its_flops_count_three_matrices():
    for n_embd in (64, 128, 768):
        gelu, swiglu = MLP(GPTConfig(n_embd=n_embd, n_head=1)), MLP(GPTConfig(n_embd=n_embd, n_head=1, mlp="swiglu"))
        n_gelu, n_swiglu = (sum(p.numel() for p in m.parameters()) for m in (gelu, swiglu))
        assert abs(n_swiglu / n_gelu - 1) < 0.03
    model = tiny_gpt(mlp='swiglu', bias=False, pos_enc='none', attention=False)
    hidden = model.transformer.h[0].mlp.c_proj.weight.size(1)
    n_matmul = model.config.n_layer * 3 * hidden * 32 + 37 * 32  # three matrices per MLP, plus the tied head
    n_norm = (model.config.n_layer + 1) * 32  # the gains of ln_2 in each block and of ln_f
    assert model.flops_per_token() == 6 * (n_matmul + n_norm)


@pytest.mark.parametrize('norm', ['layernorm', 'rmsnorm', 'none'])
@pytest.mark.parametrize('bias', [True, False])
def test_optimizer_never_decays_norm_gains_or_biases(norm, bias):
    model = tiny_gpt(norm=norm, bias=bias, qk_norm=True, pos_enc='rope', tie_embeddings=False)
    decay, no_decay = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay['params']}
    expected = {n for n, p in model.named_parameters() if n.endswith('.bias') or 'ln_' in n or '_norm' in n}
    assert no_decay_names == expected and all(p.dim() == 2 for p in decay['params'])


def test_untied_head_softcap_and_zero_init():
    untied = tiny_gpt(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.get_num_params(non_embedding=False) == tiny_gpt().get_num_params(non_embedding=False) + 37 * 32
    capped = tiny_gpt(logit_softcap=0.5)
    with torch.no_grad():
        capped.lm_head.weight.mul_(1000)
    assert full_logits(capped, torch.randint(0, 37, (2, 16))).abs().max() <= 0.5
    zero = tiny_gpt(zero_init_proj=True)
    projections = [p for n, p in zero.named_parameters() if n.endswith('c_proj.weight')]
    assert len(projections) == 4 and all(torch.count_nonzero(p) == 0 for p in projections)


@pytest.mark.parametrize('options, message', [
    (dict(pos_enc='alibi'), "pos_enc must be one of 'learned', 'sinusoidal', 'rope', 'none', got 'alibi'"),
    (dict(pos_enc='rope', n_embd=30, n_head=2), "pos_enc='rope' rotates pairs of features and needs an even head size"),
    (dict(attn_impl='mha', qk_norm=True), "attn_impl='mha' computes queries and keys inside nn.MultiheadAttention"),
    (dict(attention=False, pos_enc='rope'), "pos_enc='rope' act on attention's queries and keys"),
    (dict(residual=False, zero_init_proj=True), "zero_init_proj=True with residual=False"),
    (dict(logit_softcap=-1.0), "logit_softcap must be 0 (off) or a positive number"),
])
def test_impossible_architectures_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GPTConfig(**options)


def test_gpt2_weights_refuse_other_architectures_before_loading():
    with pytest.raises(ConfigError, match=r"OpenAI's GPT-2 weights need GPT-2's architecture, so mlp='swiglu'"):
        hf.load_gpt2('/nonexistent', dict(mlp='swiglu'))


def test_a_checkpoint_written_before_the_options_loads_as_gpt2_with_identical_logits():
    """tests/data/gpt2_checkpoint_before_options.pt was written by the code before the architecture
    options existed (its model_args have no option keys), with the logits that code computed."""
    from nanogpt import checkpoint
    from nanogpt.loading import build_model, source_of
    path = Path(__file__).parent / 'data' / 'gpt2_checkpoint_before_options.pt'
    old = checkpoint.load(path)
    assert not set(OPTIONS) & set(old['model_args'])
    model, _ = build_model(source_of(str(path), None), {'dropout': 0.0})
    assert model.config == GPTConfig(**{k: old['model_args'][k] for k in ARCHITECTURE[:6]}, dropout=0.0)
    assert torch.equal(full_logits(model.eval(), old['probe_idx']), old['probe_logits'])
