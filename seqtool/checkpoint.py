"""Checkpoints: atomic save (temp file + fsync + rename), safe load (weights_only), averaging."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from seqtool.atomic import atomic_write_bytes
from seqtool.errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise `state` (tensors, numbers, strings, lists, dicts) and write it atomically."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {path}: {exc.strerror or exc}",
            "the previous checkpoint is intact; free disk space and resume with --resume",
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (a file cannot run code); errors become CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # not a forbidden object, just bytes that are no pickle: a damaged file
            raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted?)") from None
        reason = next((ln for ln in str(exc).splitlines() if "GLOBAL" in ln), "").strip()
        raise CheckpointError(
            f"{path}: refused to load: the file holds objects other than tensors and plain data",
            f"seqtool loads checkpoints with weights_only=True, so a file cannot run code ({reason[:120]})",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted?): {str(exc)[:200]}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a seqtool checkpoint")
    return state


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of model state dicts with the same keys and shapes (floating tensors averaged)."""
    if not states:
        raise CheckpointError("no checkpoints to average")
    out: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(s[key].double() for s in states).div(len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def average_checkpoint_files(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose model is the mean of the given checkpoints' models (metadata from the newest)."""
    states = [load_checkpoint(p) for p in paths]
    averaged = dict(states[-1])
    for key in ("optimizer", "scheduler", "sampler", "rng", "best_bleu", "dev_bleu", "dev_loss"):
        averaged.pop(key, None)
    averaged["model"] = average_state_dicts([s["model"] for s in states])
    averaged["averaged"] = [p.name for p in paths]
    return averaged
