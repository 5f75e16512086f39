"""Pictures: learning curves from metrics.jsonl and cross-attention heatmaps (matplotlib, the `plot` extra)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqtool.errors import SeqtoolError

PLOT_EXTRA_HINT = "install the plotting extra: pip install 'seqtool[plot]' (or: pip install matplotlib)"

# (panel title, record type, key) of the four learning-curve panels
CURVES: list[tuple[str, str, str]] = [
    ("training loss (label-smoothed)", "train", "loss"),
    ("dev loss (NLL per token)", "eval", "dev_loss"),
    ("dev BLEU (greedy)", "eval", "dev_bleu"),
    ("learning rate", "train", "lr"),
]


def _pyplot() -> Any:
    """matplotlib.pyplot with a file-only backend, or a clear error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise SeqtoolError("plotting needs matplotlib, which is not installed", PLOT_EXTRA_HINT) from None
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, output: Path) -> None:
    """Write the figure next to `output` under a temporary name, then rename: never a half-written picture."""
    tmp = output.with_name(f".{output.stem}.tmp{output.suffix}")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


NO_METRICS_HINT = "a run writes metrics.jsonl at every train.log_every steps and at its last step; train on, then plot"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (a line cut short by a crash is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file() and not (run_dir / "config.yaml").is_file():
        raise SeqtoolError(f"{run_dir} has no metrics.jsonl", "is it a run directory written by seqtool train?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not records:
        raise SeqtoolError(f"{run_dir} has no metrics yet", NO_METRICS_HINT)
    return records


def curve(records: Sequence[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    """Steps and values of `key` in the records of type `kind` (averaged-checkpoint evaluations left out)."""
    points = [(r["step"], r[key]) for r in records if r.get("type") == kind and key in r and "averaged" not in r]
    return [s for s, _ in points], [v for _, v in points]


def _lines(records: Sequence[dict[str, Any]], key: str, label: str) -> list[tuple[str, str]]:
    """(metric key, legend label) of each line a panel draws for one run: one per dev set where the run has several
    (`dev_bleu.NAME`), else the key itself."""
    per_set = sorted({k for r in records for k in r if k.startswith(key + ".")})
    if not per_set:
        return [(key, label)]
    return [(k, f"{label} {k.removeprefix(key + '.')}") for k in per_set]


def plot_curves(run_dirs: Sequence[Path], output: Path, labels: Sequence[str] | None = None) -> Path:
    """Learning curves of one or more runs on one 2×2 figure saved to `output` (PNG, SVG or PDF by suffix)."""
    plt = _pyplot()
    labels = list(labels) if labels else [d.name or str(d) for d in run_dirs]
    runs = [(label, read_metrics(d)) for label, d in zip(labels, run_dirs, strict=True)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (title, kind, key) in zip(axes.flat, CURVES, strict=True):
        drawn = False
        for label, records in runs:
            for line_key, line_label in _lines(records, key, label):
                steps, values = curve(records, kind, line_key)
                if steps:
                    ax.plot(steps, values, marker="o" if kind == "eval" else None, markersize=3, label=line_label)
                    drawn = True
        ax.set_title(title)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no data (no validation in this run?)", ha="center", va="center", transform=ax.transAxes)
    if len(runs) > 1:
        axes.flat[0].legend()
    for ax in axes.flat[1:3]:
        if len(ax.get_lines()) > len(runs):  # several dev sets
            ax.legend(fontsize="small")
    fig.suptitle(", ".join(labels))
    _save(fig, output)
    plt.close(fig)
    return output


def plot_attention(
    weights: Sequence[Sequence[float]], src_pieces: Sequence[str], tgt_pieces: Sequence[str], output: Path, title: str
) -> Path:
    """A heatmap of attention weights (target pieces down, source pieces across) saved to `output`."""
    plt = _pyplot()
    rows, cols = len(tgt_pieces), len(src_pieces)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * cols + 2.0), max(3.0, 0.4 * rows + 1.5)), constrained_layout=True)
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, aspect="auto")
    ax.set_xticks(range(cols), labels=list(src_pieces), rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(rows), labels=list(tgt_pieces), fontsize=9)
    ax.set_xlabel("source pieces")
    ax.set_ylabel("target pieces (output)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="attention weight")
    _save(fig, output)
    plt.close(fig)
    return output
