"""The training state for exact resume: every rank's RNG state, the optimizer's hyperparameters after a config change,
and the metrics logged after the checkpoint a resumed run starts from."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from seqtool.atomic import atomic_write_text
from seqtool.config import TrainConfig
from seqtool.errors import CheckpointError
from seqtool.train.distributed import DistContext, peer_failure


def rng_state() -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(ctx: DistContext) -> list[dict[str, Any]]:
    """Every rank's `rng_state`, indexed by rank (a collective under torchrun: every rank must call it)."""
    mine = rng_state()
    if not ctx.enabled:
        return [mine]
    gathered: list[Any] = [None] * ctx.world_size
    try:
        dist.all_gather_object(gathered, mine)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise peer_failure(exc) from None
    return gathered


def restore_rank_rng(saved: Any, ctx: DistContext, path: Path) -> None:
    """Restore this rank's RNG state from a checkpoint's `rng` entry (a list per rank; older files hold one dict)."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) != ctx.world_size:
        raise CheckpointError(
            f"{path} was saved by {len(states)} training process(es); this job has {ctx.world_size}",
            "resume with the same number of processes (torchrun --nproc-per-node), or start a new run from its "
            "weights with --init-from",
        )
    set_rng_state(states[ctx.rank])


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: LambdaLR, cfg: TrainConfig) -> list[str]:
    """After loading a resumed optimizer and schedule, make the config's lr, betas, eps and weight decay the ones in
    force from the next update (the loaded state carries the old run's); returns what changed, for the log."""
    changes: list[str] = []
    wanted = {"betas": (cfg.adam_betas[0], cfg.adam_betas[1]), "eps": cfg.adam_eps}
    for group in optimizer.param_groups:
        decay = cfg.weight_decay if group.get("decays", True) else 0.0  # see optim.parameter_groups
        for key, value in {**wanted, "weight_decay": decay}.items():
            old = tuple(group[key]) if isinstance(value, tuple) else group[key]
            if old != value:
                changes.append(f"{key} {old} -> {value}")
                group[key] = value
        if group.get("initial_lr") != cfg.lr:
            changes.append(f"lr {group.get('initial_lr')} -> {cfg.lr}")
            group["initial_lr"] = cfg.lr
    scheduler.base_lrs = [cfg.lr for _ in optimizer.param_groups]
    factors = [fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, factor in zip(optimizer.param_groups, factors, strict=True):
        group["lr"] = cfg.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return sorted(set(changes))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after `step` (a run killed after its last save logged steps that will run again)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))


def _numpy_state() -> list[Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
