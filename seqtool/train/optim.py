"""Optimizer and learning-rate schedules, chosen by name from a table."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from seqtool.config import TrainConfig


def _inverse_sqrt(step: int, warmup: int, max_steps: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return math.sqrt(max(warmup, 1) / max(step + 1, 1)) if warmup else 1.0 / math.sqrt(max(step + 1, 1))


def _constant(step: int, warmup: int, max_steps: int) -> float:
    return (step + 1) / warmup if warmup and step < warmup else 1.0


def _linear(step: int, warmup: int, max_steps: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup))


# factor of the peak learning rate at update `step` (0-based)
SCHEDULES: dict[str, Callable[[int, int, int], float]] = {
    "inverse_sqrt": _inverse_sqrt,
    "constant": _constant,
    "linear": _linear,
}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the configured betas, epsilon and decoupled weight decay (plain Adam when it is 0)."""
    return torch.optim.AdamW(
        list(params),
        lr=cfg.lr,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        foreach=True,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> LambdaLR:
    """The configured schedule as a LambdaLR (stepped once per update)."""
    factor = SCHEDULES[cfg.schedule]
    return LambdaLR(optimizer, lambda step: factor(step, cfg.warmup, cfg.max_steps))
