import math

import pytest
import torch

from model import GPT, GPTConfig, KVCache, sample_next_token


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
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=101)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert model.config.block_size == 24 and model.config.vocab_size == 101
    idx = torch.randint(0, 101, (2, 24))
    with torch.no_grad():
        expected = hf_model(idx).logits
        logits = full_logits(model, idx)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
