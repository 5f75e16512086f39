"""Optimizer and learning-rate schedules, chosen by name from a table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

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


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight matrices decay; biases, LayerNorm gains and embeddings (tensors with ndim < 2, and
    the weights of nn.Embedding modules, which a tied output projection shares) do not, as in every peer toolkit.

    The group's `decays` entry is kept in the optimizer state, so a resumed run can apply a changed weight decay.
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, plain = [], []
    for param in model.parameters():  # tied weights are yielded once
        if not param.requires_grad:
            continue
        (plain if param.ndim < 2 or id(param) in embeddings else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "decays": True},
        {"params": plain, "weight_decay": 0.0, "decays": False},
    ]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the configured betas, epsilon and decoupled weight decay on the weight matrices only."""
    return torch.optim.AdamW(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
        eps=cfg.adam_eps,
        foreach=True,
    )


def cooldown_factor(step: int, time_spent: float, cfg: TrainConfig) -> float:
    """Factor of the cool-down at the end of the run: 1 until the last `cfg.cooldown` share of the run, then
    linearly down to 0 at its end. The run's progress is the larger of its step share (of max_steps) and its time
    share (`time_spent`, the share of max_minutes used, 0 without a time budget), since whichever reaches 1 first
    ends it."""
    if cfg.cooldown <= 0:
        return 1.0
    progress = max(step / cfg.max_steps, time_spent)
    return min(1.0, max(0.0, (1.0 - progress) / cfg.cooldown))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, time_spent: Callable[[], float] = lambda: 0.0
) -> LambdaLR:
    """The configured schedule, times its cool-down, as a LambdaLR (stepped once per update).

    `time_spent` returns the share of the time budget used so far; it must be the same on every training process.
    """
    factor = SCHEDULES[cfg.schedule]
    return LambdaLR(
        optimizer, lambda step: factor(step, cfg.warmup, cfg.max_steps) * cooldown_factor(step, time_spent(), cfg)
    )
