"""The run directory: one folder holding everything a run needs (config, tokenizer, checkpoints, metrics, log)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from seqtool.checkpoint import load_checkpoint
from seqtool.config import Config, config_from_dict
from seqtool.errors import CheckpointError
from seqtool.models import build_model
from seqtool.models.base import Seq2SeqModel
from seqtool.tokenizer import Tokenizer


@dataclass(frozen=True)
class RunDir:
    """Paths inside a run directory (see DESIGN.md)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    def tokenizer_paths(self, joint: bool) -> tuple[Path, Path]:
        """(source, target) SentencePiece model paths inside the run directory."""
        if joint:
            return self.root / "spm.model", self.root / "spm.model"
        return self.root / "spm.src.model", self.root / "spm.tgt.model"

    def checkpoint(self, name: str) -> Path:
        """`best`, `last`, `step_N` or a file path -> the checkpoint file."""
        if name in ("best", "last", "averaged") or name.startswith("step_"):
            return self.checkpoints / f"{name}.pt"
        return Path(name)

    def step_checkpoints(self) -> list[Path]:
        """step_N.pt files, oldest first."""
        found = [(int(p.stem[5:]), p) for p in self.checkpoints.glob("step_*.pt") if p.stem[5:].isdigit()]
        return [p for _, p in sorted(found)]

    def holds_run(self) -> bool:
        """Whether a run was already started here (set-up completed, or checkpoints written)."""
        return self.config.exists() or any(self.checkpoints.glob("*.pt"))


def read_run_config(run: RunDir) -> Config:
    """The resolved config stored in a run directory."""
    if not run.root.is_dir():
        raise CheckpointError(f"run directory not found: {run.root}")
    if not run.config.is_file():
        raise CheckpointError(f"{run.root} is not a seqtool run directory (no config.yaml)")
    text = run.config.read_text(encoding="utf-8")
    return config_from_dict(yaml.safe_load(text), str(run.config), text)


def resolve_checkpoint(run: RunDir, name: str) -> Path:
    """The checkpoint to load; `best` falls back to `last` when no validation has happened yet."""
    path = run.checkpoint(name)
    if name == "best" and not path.exists() and run.checkpoint("last").exists():
        path = run.checkpoint("last")
    if not path.exists():
        raise CheckpointError(
            f"{run.root} has no checkpoint {path.name}"
            if name in ("best", "last")
            else f"checkpoint not found: {path}",
            "train first (seqtool train CONFIG --run-dir DIR), or name a checkpoint with --checkpoint",
        )
    return path


def load_model_weights(model: Seq2SeqModel, state: dict, path: Path) -> None:
    """Load a state dict, turning shape/key mismatches into one clear error."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise CheckpointError(
            f"{path} does not fit the model of this config (another architecture or vocabulary size?): {first[:200]}"
        ) from None


def load_for_inference(
    run_root: str | Path, checkpoint: str = "best", device: torch.device | None = None
) -> tuple[Seq2SeqModel, Tokenizer, Config, dict]:
    """Model (eval mode, on `device`), tokenizer, config and checkpoint metadata of a run directory."""
    run = RunDir(Path(run_root))
    cfg = read_run_config(run)
    path = resolve_checkpoint(run, checkpoint)
    src_path, tgt_path = run.tokenizer_paths(cfg.tokenizer.joint)
    tokenizer = Tokenizer.load(src_path, tgt_path)
    state = load_checkpoint(path)
    model = build_model(cfg.model, tokenizer.src.vocab_size, tokenizer.tgt.vocab_size, tokenizer.specials)
    load_model_weights(model, state["model"], path)
    model.eval()
    if device is not None:
        model.to(device)
    meta = {k: v for k, v in state.items() if k in ("step", "dev_bleu", "dev_loss", "path")}
    meta["path"] = str(path)
    return model, tokenizer, cfg, meta
