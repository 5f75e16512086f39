"""Label-smoothed cross-entropy over non-pad target tokens, fused into one autograd function."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _SmoothedNLL(torch.autograd.Function):
    """Summed label-smoothed loss and summed NLL of logits (N, V) against target (N,), pad rows ignored.

    Forward keeps one (N, V) float32 buffer of log-probabilities (bf16 logits are upcast inside the kernel); backward
    turns that buffer into the gradient in place: softmax minus the smoothed target distribution, returned in the
    logits' dtype. Autograd's composite version (cast, log_softmax, gather, sum, masks) keeps and
    writes several such buffers; this is the largest tensor of a training step.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, pad: int, smoothing: float) -> tuple[Tensor, Tensor]:
        vocab = logits.size(-1)
        lprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (N, V), upcast inside the kernel
        mask = target != pad
        nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        nll_sum = nll.masked_fill(~mask, 0.0).sum()
        eps = smoothing / (vocab - 2) if smoothing else 0.0  # target keeps 1 - smoothing; other non-pad ids get eps
        if smoothing:
            smooth = -(lprobs.sum(-1) - lprobs[:, pad])  # sum over the vocabulary without pad
            loss = (1.0 - smoothing - eps) * nll_sum + eps * smooth.masked_fill(~mask, 0.0).sum()
        else:
            loss = nll_sum.clone()
        ctx.save_for_backward(lprobs, target, mask)
        ctx.pad, ctx.smoothing, ctx.eps, ctx.dtype = pad, smoothing, eps, logits.dtype
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, grad_nll: Tensor | None) -> tuple[Tensor, None, None, None]:
        lprobs, target, mask = ctx.saved_tensors
        # d loss_i / d logits_i = softmax_i - q_i, with q = (1 - smoothing) at the target, eps at other non-pad ids.
        grad = lprobs.exp_()  # the saved buffer becomes the gradient: no second (N, V) tensor
        grad.sub_(ctx.eps)
        grad[:, ctx.pad] += ctx.eps
        rows = torch.arange(grad.size(0), device=grad.device)
        grad[rows, target] -= 1.0 - ctx.smoothing - ctx.eps
        grad.mul_(mask.unsqueeze(-1).to(grad.dtype) * grad_loss)
        return grad.to(ctx.dtype), None, None, None


def label_smoothed_nll(logits: Tensor, target: Tensor, pad: int, smoothing: float) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed loss and summed NLL (no gradient) over the non-pad positions of `target`.

    logits (..., vocab) and target (...) of matching leading shape, e.g. (batch, len) or packed (tokens,). Smoothing
    spreads `smoothing` uniformly over the vocabulary (the padding id excluded), as in Szegedy et al. (2016).
    The computation runs in float32 whatever the logits' dtype; the loss's gradient comes back in that dtype.
    """
    vocab = logits.size(-1)
    return _SmoothedNLL.apply(logits.reshape(-1, vocab), target.reshape(-1), pad, smoothing)
