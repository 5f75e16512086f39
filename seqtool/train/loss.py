"""Label-smoothed cross-entropy over non-pad target tokens, fused into one autograd function."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from seqtool.runtime import autocast


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


# oneDNN builds (JIT-compiles) a bf16 kernel per matrix shape, 10-20 ms for the (rows, d) x (d, vocab) products here,
# and the packed row count is new nearly every step. Rounded up to a multiple of ROW_BUCKET with zero rows, the
# products of the output projection come in a few shapes that its primitive cache keeps: +3 % tok/s for a bf16 step
# on a 2-core Xeon with AMX (tests/benchmarks/README.md, 2026-12-05). fp32 products (MKL) have no such cost.
ROW_BUCKET = 256


def _bucketed_rows(features: Tensor, dtype: torch.dtype) -> Tensor:
    """`features` (N, d) in `dtype`; for bf16 on a CPU with zero rows appended up to a multiple of ROW_BUCKET."""
    rows = features.size(0)
    padded = -(-rows // ROW_BUCKET) * ROW_BUCKET
    if dtype != torch.bfloat16 or features.device.type != "cpu" or padded == rows:
        return features.to(dtype)
    out = features.new_empty((padded, features.size(1)), dtype=dtype)
    out[:rows] = features
    out[rows:] = 0
    return out


LOSS_BLOCK = 256  # rows of logits turned into loss and gradient at a time: one (256, vocab) float32 block


class _ProjectedSmoothedNLL(torch.autograd.Function):
    """The output projection and `_SmoothedNLL` in one function: features (N, d) -> summed loss and summed NLL.

    The logits stay in the compute dtype (bf16 under autocast: half the bytes of the float32 log-probabilities the
    unfused loss keeps), and the float32 softmax, loss and gradient are computed a block of rows at a time, each
    block small enough to stay in the CPU's cache, instead of streaming (N, vocab) float32 buffers through memory.
    Backward overwrites the logits with their gradient, then runs the two products of the projection's backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        features: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        pad: int,
        smoothing: float,
        dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor]:
        vocab = weight.size(0)
        eps = smoothing / (vocab - 2) if smoothing else 0.0
        rows_in = features.size(0)
        h, w = _bucketed_rows(features, dtype), weight.to(dtype)
        logits = torch.addmm(bias.to(dtype), h, w.t()) if bias is not None else h @ w.t()
        if h.size(0) > rows_in:  # the bucket's zero rows get pad targets: no loss, no gradient
            target = torch.cat([target, target.new_full((h.size(0) - rows_in,), pad)])
        mask = target != pad
        acc = torch.promote_types(dtype, torch.float32)  # float32, or float64 for float64 products
        lse = torch.empty(h.size(0), dtype=acc, device=h.device)
        nll_sum = torch.zeros((), dtype=acc, device=h.device)
        smooth_sum = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.size(0), LOSS_BLOCK):
            rows = slice(start, start + LOSS_BLOCK)
            z = logits[rows].to(acc)
            block_lse = torch.logsumexp(z, dim=-1)
            lse[rows] = block_lse
            keep = mask[rows]
            nll = block_lse - z.gather(-1, target[rows].unsqueeze(-1)).squeeze(-1)
            nll_sum += nll.masked_fill(~keep, 0.0).sum()
            if smoothing:  # -(sum over the non-pad ids of log p) = (V - 1) lse - (sum of the logits - the pad logit)
                smooth = (vocab - 1) * block_lse - (z.sum(-1) - z[:, pad])
                smooth_sum += smooth.masked_fill(~keep, 0.0).sum()
        loss = (1.0 - smoothing - eps) * nll_sum + eps * smooth_sum if smoothing else nll_sum.clone()
        ctx.save_for_backward(h, w, logits, lse, target, mask)
        ctx.has_bias, ctx.pad, ctx.smoothing, ctx.eps = bias is not None, pad, smoothing, eps
        ctx.dtypes, ctx.rows_in = (features.dtype, weight.dtype), rows_in
        ctx.mark_non_differentiable(nll_sum)
        return loss, nll_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, grad_nll: Tensor | None) -> tuple[Tensor | None, ...]:
        h, w, logits, lse, target, mask = ctx.saved_tensors
        grad_b = torch.zeros(w.size(0), dtype=lse.dtype, device=w.device) if ctx.has_bias else None
        for start in range(0, h.size(0), LOSS_BLOCK):
            rows = slice(start, start + LOSS_BLOCK)
            # d loss_i / d z_i = softmax_i - q_i, q = (1 - smoothing) at the target, eps at the other non-pad ids
            grad = logits[rows].to(lse.dtype).sub_(lse[rows].unsqueeze(-1)).exp_()
            grad.sub_(ctx.eps)
            grad[:, ctx.pad] += ctx.eps
            index = torch.arange(grad.size(0), device=grad.device)
            grad[index, target[rows]] -= 1.0 - ctx.smoothing - ctx.eps
            grad.mul_(mask[rows].unsqueeze(-1).to(grad.dtype) * grad_loss)
            if grad_b is not None:
                grad_b += grad.sum(0)
            logits[rows] = grad  # the saved logits become the gradient: no second (N, V) tensor
        grad_h = (logits @ w)[: ctx.rows_in].to(ctx.dtypes[0])
        grad_w = (logits.t() @ h).to(ctx.dtypes[1])
        return (grad_h, grad_w, grad_b.to(ctx.dtypes[1]) if grad_b is not None else None,
                None, None, None, None)  # fmt: skip


def projected_label_smoothed_nll(
    features: Tensor, output: torch.nn.Linear, target: Tensor, pad: int, smoothing: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """`label_smoothed_nll(output(features), target, pad, smoothing)` with the projection's products in `dtype` (bf16
    for a bf16-autocast run, else float32) and without (N, vocab) float32 buffers (see `_ProjectedSmoothedNLL`).

    features (N, d) at the kept target positions, target (N,). Gradients reach `features` and the output layer's
    weight and bias (the tied embedding, when tied) as through `output`.
    """
    with torch.autocast(features.device.type, enabled=False):
        return _ProjectedSmoothedNLL.apply(features, output.weight, output.bias, target, pad, smoothing, dtype)


def batch_loss(
    model: torch.nn.Module,
    src: Tensor,
    tgt_in: Tensor,
    tgt_out: Tensor,
    pad: int,
    smoothing: float,
    device: torch.device,
    precision: str,
    fused: bool = True,
) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed loss and summed NLL of one teacher-forced batch, at its non-pad target positions only.

    `model` is a `Seq2SeqModel` or its DistributedDataParallel wrapper. `fused`: the output projection and the loss
    in one function (`projected_label_smoothed_nll`); otherwise the logits, then `label_smoothed_nll`.
    """
    keep = tgt_out != pad
    with autocast(device, precision):
        out = model(src, tgt_in, keep, project=not fused)
    if not fused:
        return label_smoothed_nll(out, tgt_out[keep], pad, smoothing)
    output = getattr(model, "module", model).output
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return projected_label_smoothed_nll(out, output, tgt_out[keep], pad, smoothing, dtype)
