"""Muon: the orthogonalisation against an SVD, one optimizer step against a step written out here,
the parameter groups, a float16 run that learns under the GradScaler with each group's learning rate
on the schedule, and exact resume of a Muon run after SIGKILL."""

import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, TINY_MODEL, run_script

import train
from model import GPT, GPTConfig
from muon import Muon, orthogonalize
from nanogpt import checkpoint
from nanogpt.runlog import read_log


@pytest.mark.parametrize('shape', [(16, 16), (24, 64), (96, 32)])
def test_orthogonalize_approximates_u_v_transposed_of_the_svd(shape):
    torch.manual_seed(0)
    k = min(shape)
    U0, _ = torch.linalg.qr(torch.randn(shape[0], k))
    V0, _ = torch.linalg.qr(torch.randn(shape[1], k))
    G = U0 @ torch.diag(torch.logspace(-1.5, 0.5, k)) @ V0.T  # singular values spread over 100x
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    X = orthogonalize(G)
    # the same singular vectors: in G's singular bases, X is diagonal...
    in_basis = U.mT @ X @ Vh.mT
    off_diagonal = in_basis - torch.diag(torch.diagonal(in_basis))
    assert off_diagonal.abs().max() < 1e-3
    # ...with every singular value moved near 1, however small or large it was in G
    assert torch.diagonal(in_basis).min() > 0.6 and torch.diagonal(in_basis).max() < 1.25
    assert torch.linalg.norm(X - U @ Vh) / torch.linalg.norm(U @ Vh) < 0.3


def newton_schulz_written_out(G):
    """The reference: five quintic Newton-Schulz steps on G scaled to unit Frobenius norm."""
    X = G / G.norm()
    transposed = X.size(0) > X.size(1)
    X = X.T if transposed else X
    for _ in range(5):
        A = X @ X.T
        X = 3.4445 * X - 4.7750 * A @ X + 2.0315 * A @ A @ X
    return X.T if transposed else X


def test_a_step_matches_the_step_written_out():
    torch.manual_seed(0)
    W, b = torch.randn(48, 16, requires_grad=True), torch.randn(16, requires_grad=True)
    optimizer = Muon([{'params': [W], 'muon': True, 'lr': 0.02, 'momentum': 0.9, 'weight_decay': 0.1},
                      {'params': [b], 'lr': 1e-3, 'weight_decay': 0.0}], betas=(0.8, 0.95), eps=1e-8)
    reference_b = b.detach().clone().requires_grad_()
    adamw = torch.optim.AdamW([reference_b], lr=1e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.0)
    W_expected, momentum = W.detach().clone(), torch.zeros(48, 16)
    for step in range(3):
        grad_W, grad_b = torch.randn(48, 16), torch.randn(16)
        W.grad, b.grad, reference_b.grad = grad_W, grad_b, grad_b.clone()
        optimizer.step()
        adamw.step()
        momentum = 0.9 * momentum + 0.1 * grad_W
        nesterov = 0.1 * grad_W + 0.9 * momentum
        W_expected = W_expected * (1 - 0.02 * 0.1) - 0.02 * (48 / 16) ** 0.5 * newton_schulz_written_out(nesterov)
        torch.testing.assert_close(W.detach(), W_expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b.detach(), reference_b.detach(), rtol=1e-6, atol=1e-7)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=37, tie_embeddings=False,
                          pos_enc='rope', norm='rmsnorm'))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'muon', muon_lr=0.05, muon_weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, decay, no_decay = ([names[id(p)] for p in g['params']] for g in optimizer.param_groups)
    assert sorted(muon) == sorted(f'transformer.h.{i}.{m}.weight' for i in range(2)
                                  for m in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'))
    assert sorted(decay) == ['lm_head.weight', 'transformer.wte.weight']
    assert no_decay and all(n.endswith('.bias') or 'ln_' in n for n in no_decay)
    muon_group = optimizer.param_groups[0]
    assert muon_group['lr'] == 0.05 and muon_group['weight_decay'] == 0.01 and muon_group['lr_ratio'] == 50


MUON = [*TINY_MODEL, '--dataset=shakespeare_char', '--eval_interval=10', '--eval_iters=4', '--log_interval=1',
        '--learning_rate=3e-3', '--warmup_iters=5', '--lr_decay_iters=40', '--gradient_accumulation_steps=2',
        '--max_iters=30', '--optimizer=muon', '--dropout=0.1']


@pytest.fixture(scope='module')
def float16_muon_run(shakespeare_workdir, tmp_path_factory):
    """The Muon run of MUON in float16, whose gradients the GradScaler scales (also on a CPU): its out_dir."""
    out = tmp_path_factory.mktemp('muon') / 'float16'
    run_script('train.py', *MUON, '--dtype=float16', f'--out_dir={out}', cwd=shakespeare_workdir)
    return out


@pytest.mark.slow
def test_the_schedule_gives_muons_matrices_muon_lr_and_the_rest_learning_rate(float16_muon_run):
    ckpt = checkpoint.load(float16_muon_run / 'ckpt.pt')
    assert ckpt['iter_num'] == 30
    # the rate of the last iteration, set before its checkpoint was written: decayed, not the peak
    scheduled = train.get_lr(30, SimpleNamespace(**ckpt['config']))
    assert scheduled < 3e-3
    groups = ckpt['optimizer']['param_groups']
    muon_groups = [g for g in groups if g.get('muon')]
    assert len(muon_groups) == 1 and muon_groups[0]['lr'] == pytest.approx(scheduled * 0.02 / 3e-3, rel=1e-12)
    assert len(groups) == 3 and all(g['lr'] == pytest.approx(scheduled, rel=1e-12) for g in groups if not g.get('muon'))


@pytest.mark.slow
def test_a_float16_muon_run_learns_under_the_grad_scaler(float16_muon_run):
    ckpt = checkpoint.load(float16_muon_run / 'ckpt.pt')
    assert ckpt['config']['dtype'] == 'float16'
    # the scaler was on, and no step overflowed often enough to drive its scale down to nothing
    assert ckpt['scaler']['scale'] >= 2.0 ** 10
    val = {e['iter']: e['val_loss'] for e in read_log(float16_muon_run / 'log.jsonl') if 'val_loss' in e}
    assert list(val) == [0, 10, 20, 30]
    assert val[0] > 4.0 and val[10] < val[0] and val[30] < val[0] - 0.7, val  # from chance (ln 65) towards the text's statistics
    momenta = [s['momentum_buffer'] for s in ckpt['optimizer']['state'].values() if 'momentum_buffer' in s]
    assert len(momenta) == 8 and all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in momenta)


@pytest.mark.slow
def test_a_muon_run_resumes_bitwise_after_sigkill(shakespeare_workdir, tmp_path):
    reference = tmp_path / 'reference'
    run_script('train.py', *MUON, f'--out_dir={reference}', cwd=shakespeare_workdir)
    out = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, str(REPO / 'train.py'), *MUON, f'--out_dir={out}'],
                            cwd=shakespeare_workdir, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith('iter 23:'):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert checkpoint.load(out / 'ckpt.pt')['iter_num'] == 20
    run_script('train.py', *MUON, f'--out_dir={out}', '--init_from=resume', cwd=shakespeare_workdir)
    expected, resumed = checkpoint.load(reference / 'ckpt.pt'), checkpoint.load(out / 'ckpt.pt')
    for name, weights in expected['model'].items():
        assert torch.equal(resumed['model'][name], weights), name
    momenta = [s['momentum_buffer'] for s in resumed['optimizer']['state'].values() if 'momentum_buffer' in s]
    assert len(momenta) == 8 and all(m.abs().sum() > 0 for m in momenta)  # Muon's state was saved and restored


@pytest.mark.slow
def test_resuming_with_another_optimizer_is_refused_in_one_line(shakespeare_workdir, tmp_path):
    args = [*MUON[:-2], '--max_iters=5', f'--out_dir={tmp_path}']  # AdamW, without dropout
    run_script('train.py', *args, cwd=shakespeare_workdir)
    proc = run_script('train.py', *args, '--max_iters=10', '--init_from=resume', '--optimizer=muon',
                      cwd=shakespeare_workdir, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path}/ckpt.pt was trained with optimizer='adamw'; resume it with --optimizer=adamw"]
