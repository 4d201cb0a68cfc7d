"""The pieces of train.py's loop that are plain functions of the config, and the training state that a
checkpoint carries across a restart (nanogpt.checkpoint.save_training_state / restore_training_state)."""

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import write_char_dataset

import train
from model import GPT, GPTConfig
from nanogpt import checkpoint, sharded
from nanogpt.distributed import Launch
from nanogpt.errors import UserError

ONE_PROCESS = Launch()


def lr_config(**overrides):
    return SimpleNamespace(**{**dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110,
                                     decay_lr=True), **overrides})


def test_learning_rate_warms_up_linearly_then_decays_on_a_cosine_to_min_lr():
    cfg = lr_config()
    # warmup never starts at zero (iteration 0 would be a wasted step) and reaches the peak at warmup_iters
    assert train.get_lr(0, cfg) == pytest.approx(1e-3 / 11)
    assert train.get_lr(9, cfg) == pytest.approx(1e-3 * 10 / 11)
    assert train.get_lr(10, cfg) == pytest.approx(1e-3)
    assert train.get_lr(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # half way down the cosine
    assert train.get_lr(110, cfg) == pytest.approx(1e-4)
    assert train.get_lr(10_000, cfg) == 1e-4
    lrs = [train.get_lr(it, cfg) for it in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert train.get_lr(0, lr_config(decay_lr=False)) == train.get_lr(500, lr_config(decay_lr=False)) == 1e-3


def test_snapshot_iterations_are_the_listed_ones_and_every_ckpt_every():
    cfg = SimpleNamespace(ckpt_iters=[7], ckpt_every=5)
    assert [it for it in range(1, 16) if train.is_snapshot_iter(it, cfg)] == [5, 7, 10, 15]
    assert not any(train.is_snapshot_iter(it, SimpleNamespace(ckpt_iters=[], ckpt_every=0)) for it in range(1, 50))


@pytest.fixture
def tiny_char_data(tmp_path):
    text = ''.join(random.Random(0).choice('abcdefgh \n') for _ in range(5000))
    return write_char_dataset(tmp_path / 'data', text)


def test_estimate_loss_measures_the_same_batches_every_time_and_leaves_the_training_streams_alone(tiny_char_data):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=10, bias=False))
    cfg = SimpleNamespace(block_size=16, batch_size=4, eval_iters=3, seed=1337)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = train.estimate_loss(model, tiny_char_data, 'uint16', cfg, ONE_PROCESS, 'cpu', torch.autocast('cpu', enabled=False))
    again = train.estimate_loss(model, tiny_char_data, 'uint16', cfg, ONE_PROCESS, 'cpu', torch.autocast('cpu', enabled=False))
    assert first == again and set(first) == {'train', 'val'}
    assert math.log(10) - 1 < first['val'] < math.log(10) + 1  # an untrained model: about ln(vocab)
    assert torch.equal(torch.get_rng_state(), state)  # the training stream did not move
    assert model.training  # back in training mode


def trained_state(steps):
    """A tiny model and its AdamW after `steps` steps, a loader generator, and the state save_checkpoint writes."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=10, bias=False))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    x = torch.randint(10, (2, 8))
    for _ in range(steps):
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    generator = torch.Generator().manual_seed(7)
    torch.randint(100, (5,), generator=generator)  # the loader has moved
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    state = {'scaler': scaler.state_dict(), 'model_args': {}, 'iter_num': steps, 'best_val_loss': 2.5,
             'config': {'optimizer': 'adamw'}, 'rng': [checkpoint.rng_state(generator, 'cpu')]}
    return model, optimizer, generator, scaler, state


@pytest.mark.parametrize('sharded_run', [False, True], ids=['file', 'sharded'])
def test_training_state_round_trips_the_moments_and_every_random_stream(tmp_path, sharded_run):
    model, optimizer, generator, scaler, state = trained_state(steps=3)
    path = str(tmp_path / ('ckpt' if sharded_run else 'ckpt.pt'))
    checkpoint.save_training_state(path, model, optimizer, state, sharded_run)
    expected_next = (torch.rand(3), np.random.rand(), random.random(), torch.randint(100, (3,), generator=generator))

    fresh, fresh_optimizer, fresh_generator, fresh_scaler, _ = trained_state(steps=0)
    ckpt = checkpoint.load(path)
    fresh.load_state_dict(ckpt['model'])
    torch.manual_seed(999), np.random.seed(999), random.seed(999)
    it, best = checkpoint.restore_training_state(ckpt, path, fresh, fresh_optimizer, fresh_scaler, 'adamw',
                                                 fresh_generator, 'cpu', ONE_PROCESS, seed=1337)
    assert (it, best) == (3, 2.5)
    moments, restored = optimizer.state_dict()['state'], fresh_optimizer.state_dict()['state']
    assert all(torch.equal(moments[k]['exp_avg'], restored[k]['exp_avg']) for k in moments)
    got_next = (torch.rand(3), np.random.rand(), random.random(), torch.randint(100, (3,), generator=fresh_generator))
    assert torch.equal(got_next[0], expected_next[0]) and got_next[1:3] == expected_next[1:3]
    assert torch.equal(got_next[3], expected_next[3])
    assert fresh_optimizer.param_groups[0]['lr'] == 1e-3  # the config's settings, not the checkpoint's


def test_resuming_names_the_checkpoint_it_read_even_a_sharded_one(tmp_path):
    model, optimizer, generator, scaler, state = trained_state(steps=1)
    args = (model, optimizer, scaler)
    with pytest.raises(UserError, match=r"^out/ckpt holds weights only and cannot resume"):
        checkpoint.restore_training_state({'model': {}}, 'out/ckpt', *args, 'adamw', generator, 'cpu', ONE_PROCESS, 0)
    with pytest.raises(UserError, match=r"^out/ckpt was trained with optimizer='adamw'; resume it with --optimizer=adamw"):
        checkpoint.restore_training_state({'model': {}, 'optimizer': sharded.Sharded('out/ckpt'), 'config': {}},
                                          'out/ckpt', *args, 'muon', generator, 'cpu', ONE_PROCESS, 0)


def test_another_number_of_ranks_starts_fresh_random_streams_from_the_seed(tmp_path):
    model, optimizer, generator, scaler, state = trained_state(steps=2)
    ckpt = {**state, 'model': model.state_dict(), 'optimizer': optimizer.state_dict()}
    ckpt['rng'] = ckpt['rng'] * 2  # written by two ranks
    notes = []
    checkpoint.restore_training_state(ckpt, 'ckpt.pt', model, optimizer, scaler, 'adamw', generator, 'cpu',
                                      ONE_PROCESS, seed=100, log=notes.append)
    assert notes == ["note: checkpoint has random states for 2 rank(s), this run has 1; "
                     "data order will differ from an uninterrupted run"]
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(100 + 0 + 2).get_state())


def test_a_failed_write_names_the_checkpoint_and_keeps_the_previous_one(tmp_path):
    model, optimizer, generator, scaler, state = trained_state(steps=1)
    path = tmp_path / 'missing_dir' / 'ckpt.pt'
    with pytest.raises(UserError, match=rf"^could not write {path} \(No such file or directory\); the previous"):
        checkpoint.save_training_state(str(path), model, optimizer, state, sharded_run=False)
