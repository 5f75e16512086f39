"""What a run directory holds: architecture, size, vocabularies, progress, best dev BLEU, config vs defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seqtool.config import Config, RNNConfig, config_diff, config_from_dict
from seqtool.rundir import RunDir, read_run_config


@dataclass
class RunInfo:
    """A summary of one run directory (see `run_info`)."""

    run_dir: str
    name: str
    architecture: str
    parameters: int
    src_vocab: int
    tgt_vocab: int
    joint_vocab: bool
    has_metrics: bool  # whether metrics.jsonl holds any record yet
    steps: int  # the last logged step (training log line or validation; 0 before either)
    train_minutes: float | None
    last_train_loss: float | None
    best_dev_bleu: float | None
    best_dev_bleu_step: int | None
    last_dev: dict[str, float] = field(default_factory=dict)
    checkpoints: dict[str, int] = field(default_factory=dict)  # name -> size in bytes
    changed_from_defaults: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)  # target languages of a multilingual model (its tags)
    # per training corpus: name, weight, batch_share, pairs, kept, dropped (corpora.json) and token_share, the share
    # of the target tokens drawn from it so far (metrics.jsonl; with several corpora)
    corpora: list[dict[str, Any]] = field(default_factory=list)


def describe_architecture(cfg: Config) -> str:
    """One line naming the model family and its sizes."""
    m = cfg.model
    if isinstance(m, RNNConfig):
        direction = "bidirectional " if m.bidirectional else ""
        return (
            f"{m.cell.upper()} encoder–decoder: {direction}{m.encoder_layers}-layer encoder, {m.decoder_layers}-layer "
            f"decoder, hidden {m.hidden_size}, embeddings {m.embed_dim}, attention {m.attention}"
        )
    norm = "pre-norm" if m.pre_norm else "post-norm"
    sharing = ", shared embeddings" if m.share_embeddings else ""
    sharing += ", tied output" if m.tie_output else ""
    return (
        f"Transformer {m.encoder_layers}+{m.decoder_layers} layers, d_model {m.d_model}, {m.heads} heads, "
        f"FFN {m.ffn_dim} ({m.activation}), {norm}{sharing}"
    )


def _defaults_like(cfg: Config) -> Config:
    """The default config with the same model family, so only real choices show up as differences."""
    return config_from_dict({"model": {"kind": cfg.model.kind}})


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash: skip it
            continue
    return records


def run_info(run_root: str | Path) -> RunInfo:
    """Summarise a run directory without loading any checkpoint (the model is built only to count parameters)."""
    from seqtool.models import build_model
    from seqtool.tokenizer import Tokenizer

    run = RunDir(Path(run_root))
    cfg = read_run_config(run)
    src_path, tgt_path = run.tokenizer_paths(cfg.tokenizer.joint)
    tokenizer = Tokenizer.load(src_path, tgt_path)
    model = build_model(cfg.model, tokenizer.src.vocab_size, tokenizer.tgt.vocab_size, tokenizer.specials)
    records = _read_metrics(run.metrics)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval" and "dev_bleu" in r]
    best = max(evals, key=lambda r: r["dev_bleu"]) if evals else None
    last_dev = {k: v for k, v in evals[-1].items() if k == "step" or k.startswith(("dev_", "best_"))} if evals else {}
    corpora: list[dict[str, Any]] = []
    if run.corpora.is_file():
        try:
            corpora = json.loads(run.corpora.read_text(encoding="utf-8"))
        except ValueError:
            corpora = []
    shares = [r for r in train if any(k.startswith("run_share.") for k in r)]
    for corpus in corpora:
        if shares:
            corpus["token_share"] = shares[-1].get(f"run_share.{corpus['name']}")
    checkpoints = (
        {p.stem: p.stat().st_size for p in sorted(run.checkpoints.glob("*.pt"))} if run.checkpoints.is_dir() else {}
    )
    return RunInfo(
        run_dir=str(run.root),
        name=cfg.name,
        architecture=describe_architecture(cfg),
        parameters=model.num_parameters(),
        src_vocab=tokenizer.src.vocab_size,
        tgt_vocab=tokenizer.tgt.vocab_size,
        joint_vocab=tokenizer.joint,
        has_metrics=bool(records),
        steps=max([r["step"] for r in train[-1:] + evals[-1:]], default=0),
        train_minutes=round(train[-1]["elapsed_s"] / 60, 2) if train and "elapsed_s" in train[-1] else None,
        last_train_loss=train[-1].get("loss") if train else None,
        best_dev_bleu=best["dev_bleu"] if best else None,
        best_dev_bleu_step=best["step"] if best else None,
        last_dev=last_dev,
        checkpoints=checkpoints,
        changed_from_defaults=config_diff(_defaults_like(cfg), cfg),
        languages=cfg.data.languages(),
        corpora=corpora,
    )


def format_info(info: RunInfo) -> str:
    """The summary as aligned `key: value` lines."""
    best = (
        f"{info.best_dev_bleu:.2f} at step {info.best_dev_bleu_step}" if info.best_dev_bleu is not None else "none yet"
    )
    size = sum(info.checkpoints.values()) / 1e6
    vocab = f"{info.src_vocab:,} joint" if info.joint_vocab else f"{info.src_vocab:,} source, {info.tgt_vocab:,} target"
    lines = [
        ("run", f"{info.run_dir}" + (f" ({info.name})" if info.name else "")),
        ("model", info.architecture),
        ("parameters", f"{info.parameters:,}"),
        ("vocabulary", vocab),
        (
            "steps",
            f"{info.steps:,}" + (f" in {info.train_minutes:.1f} min" if info.train_minutes is not None else "")
            if info.has_metrics
            else "no metrics yet (metrics.jsonl is written every train.log_every steps and at the last step)",
        ),
        ("train loss", f"{info.last_train_loss:.3f}" if info.last_train_loss is not None else "-"),
        ("best dev BLEU", best),
        ("checkpoints", (", ".join(info.checkpoints) + f" ({size:.1f} MB)") if info.checkpoints else "none"),
    ]
    if info.languages:
        lines.append(("languages", ", ".join(info.languages) + " (translate --tgt-lang)"))
    per_set = [(k.removeprefix("dev_bleu."), v) for k, v in info.last_dev.items() if k.startswith("dev_bleu.")]
    if per_set:
        lines.append(("last dev BLEU", ", ".join(f"{name} {bleu:.2f}" for name, bleu in per_set)))
    for corpus in info.corpora if len(info.corpora) > 1 else []:
        dropped = ", ".join(f"{reason} {n:,}" for reason, n in corpus["dropped"].items())
        drawn = corpus.get("token_share")
        lines.append(
            (
                f"corpus {corpus['name']}",
                f"{corpus['kept']:,} of {corpus['pairs']:,} pairs kept" + (f" (dropped: {dropped})" if dropped else "")
                + f"; weight {corpus['weight']:g}: {corpus['batch_share']:.0%} of the batches"
                + (f", {drawn:.1%} of the target tokens drawn" if drawn is not None else ""),
            )
        )  # fmt: skip
    width = max(len(k) for k, _ in lines)
    out = [f"{k.ljust(width)}  {v}" for k, v in lines]
    out.append("changed from the defaults:" if info.changed_from_defaults else "config: all defaults")
    out.extend(f"  {change}" for change in info.changed_from_defaults)
    return "\n".join(out)


def info_json(info: RunInfo) -> str:
    """The summary as one JSON object."""
    return json.dumps(asdict(info), ensure_ascii=False)
