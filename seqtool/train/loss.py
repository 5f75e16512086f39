"""Label-smoothed cross-entropy over non-pad target tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def label_smoothed_nll(logits: Tensor, target: Tensor, pad: int, smoothing: float) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed loss and summed NLL over the non-pad positions of `target`.

    logits (batch, len, vocab), target (batch, len). Smoothing spreads `smoothing` uniformly over the vocabulary
    (the padding id excluded), as in Szegedy et al. (2016).
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)  # (batch, len, vocab)
    mask = target != pad
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    nll_sum = nll.masked_fill(~mask, 0.0).sum()
    if smoothing == 0.0:
        return nll_sum, nll_sum
    vocab = lprobs.size(-1)
    smooth = -(lprobs.sum(-1) - lprobs[..., pad])  # sum over the vocabulary without pad
    smooth_sum = smooth.masked_fill(~mask, 0.0).sum()
    eps = smoothing / (vocab - 2)  # target keeps 1 - smoothing; the other vocab - 2 non-pad ids share the rest
    loss = (1.0 - smoothing - eps) * nll_sum + eps * smooth_sum
    return loss, nll_sum
