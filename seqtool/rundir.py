"""The run directory: one folder holding everything a run needs (config, tokenizer, checkpoints, metrics, log)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from seqtool.checkpoint import average_checkpoint_files, load_checkpoint, save_checkpoint
from seqtool.config import Config, config_from_dict, load_config
from seqtool.errors import CheckpointError, DataError, SeqtoolError
from seqtool.models import build_model
from seqtool.models.base import Seq2SeqModel
from seqtool.tokenizer import Tokenizer

RUNS = Path("runs")  # where a run goes when no run directory is given: runs/NAME


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
    def corpora(self) -> Path:
        """What the training corpora held: pairs read, kept and dropped, weight (written when training starts)."""
        return self.root / "corpora.json"

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


def default_run_dir(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """`run_dir` if given, else runs/NAME (NAME = the config's name)."""
    return Path(run_dir) if run_dir is not None else RUNS / cfg.name


def training_config(
    config: str | Path,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
) -> tuple[Config, Path]:
    """`seqtool train`'s config and run directory. `config` is a YAML file, or with `resume` also a run directory
    (its config.yaml; the run directory itself unless `run_dir` says otherwise); `overrides` are `--set` strings.

    Refuses `resume` together with `init_from` (continuing a run and starting one from weights exclude each other).
    """
    config = Path(config)
    if resume and config.is_dir():
        run_dir = run_dir if run_dir is not None else config
        if not RunDir(config).config.is_file():
            raise SeqtoolError(f"{config} is not a seqtool run directory (no config.yaml)")
        config = RunDir(config).config
    if resume and init_from:
        raise SeqtoolError(
            "--resume and --init-from exclude each other", "--resume continues a run; --init-from starts one"
        )
    cfg = load_config(config, overrides)
    return cfg, default_run_dir(cfg, run_dir)


@dataclass
class AverageResult:
    """What `average_run` wrote: the step checkpoints averaged (oldest first) and the output file."""

    inputs: list[Path]
    output: Path


def average_run(
    run_dir: str | Path, last: int = 5, output: str | Path | None = None, overwrite: bool = False
) -> AverageResult:
    """Average the model parameters of the newest `last` step_N.pt checkpoints of a run (at least 2) into `output`
    (default RUN_DIR/checkpoints/averaged.pt, which `--checkpoint averaged` loads); an existing output file only with
    `overwrite`."""
    run = RunDir(Path(run_dir))
    read_run_config(run)  # a clear error when this is not a run directory
    paths = run.step_checkpoints()[-last:] if last > 0 else []
    if len(paths) < 2:
        raise SeqtoolError(
            f"{run.checkpoints} holds {len(paths)} step checkpoint(s); averaging needs at least 2",
            "train with train.save_every set (e.g. --set train.save_every=500)",
        )
    target = Path(output) if output is not None else run.checkpoint("averaged")
    if target.exists() and not overwrite:
        raise DataError(f"output file {target} exists", "pass --overwrite to replace it, or choose another -o")
    save_checkpoint(target, average_checkpoint_files(paths))
    return AverageResult(paths, target)
