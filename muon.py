"""
Muon for the hidden weight matrices, AdamW for everything else, in one torch.optim.Optimizer, so
that the training loop, the GradScaler and checkpoints treat it exactly like AdamW.

Muon (MomentUm Orthogonalized by Newton-Schulz, https://kellerjordan.github.io/posts/muon/) takes
SGD's Nesterov momentum and replaces each matrix's update by the nearest semi-orthogonal matrix,
U V^T for an update U S V^T: every direction the update moves in gets the same step size, instead
of the few largest ones dominating. Embeddings, the output head, norm gains and biases are not
hidden matrices and stay with AdamW.
"""

import torch


def orthogonalize(G, steps=5):
    """Approximately U V^T for G = U S V^T, by a quintic Newton-Schulz iteration. Its coefficients
    are tuned to push every singular value from (0, 1] into about [0.7, 1.2] in five steps rather
    than converge to exactly 1, which Muon does not need. bfloat16 on GPUs, float32 elsewhere."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(torch.bfloat16 if G.is_cuda else torch.float32)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # the Frobenius norm bounds every singular value
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Parameter groups with muon=True take Muon steps (lr, momentum, weight_decay); the others
    take AdamW steps (lr, betas, eps, weight_decay). Every rank of a DDP run holds the same
    averaged gradients, so every rank computes the same update."""

    def __init__(self, param_groups, lr=0.02, momentum=0.95, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
        super().__init__(param_groups, dict(lr=lr, momentum=momentum, betas=betas, eps=eps,
                                            weight_decay=weight_decay, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay = group['lr'], group['weight_decay']
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                p.mul_(1 - lr * weight_decay)  # decoupled weight decay, as in AdamW
                if group['muon']:
                    if not state:
                        state['momentum_buffer'] = torch.zeros_like(p)
                    momentum = state['momentum_buffer']
                    momentum.lerp_(p.grad, 1 - group['momentum'])
                    nesterov = p.grad.lerp(momentum, group['momentum'])
                    # a tall matrix's orthogonal update has a smaller RMS: scale it back up
                    scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                    p.add_(orthogonalize(nesterov), alpha=-lr * scale)
                else:
                    if not state:
                        state['step'] = 0  # a number, not a tensor: reading it never waits for the GPU
                        state['exp_avg'] = torch.zeros_like(p)
                        state['exp_avg_sq'] = torch.zeros_like(p)
                    beta1, beta2 = group['betas']
                    state['step'] += 1
                    step = state['step']
                    state['exp_avg'].lerp_(p.grad, 1 - beta1)
                    state['exp_avg_sq'].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                    denominator = (state['exp_avg_sq'] / (1 - beta2 ** step)).sqrt_().add_(group['eps'])
                    p.addcdiv_(state['exp_avg'], denominator, value=-lr / (1 - beta1 ** step))
        return loss
