"""BLEU, chrF and TER through sacrebleu, with signatures; used by `seqtool eval` and for dev BLEU in training."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sacrebleu.metrics import BLEU, CHRF, TER

from seqtool.errors import DataError

if TYPE_CHECKING:
    from seqtool.compare import SystemRow

METRICS = {"bleu": BLEU, "chrf": CHRF, "ter": TER}


@dataclass
class MetricScore:
    """One corpus-level score."""

    name: str  # BLEU | chrF2 | TER
    score: float
    signature: str
    text: str  # sacrebleu's own one-line rendering (with BP, ratio, ... for BLEU)


def parse_metrics(spec: str) -> list[str]:
    """'bleu,chrf' -> ['bleu', 'chrf'], checked against the known metrics."""
    names = [m.strip().lower() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise DataError(f"unknown metric {', '.join(unknown) or spec!r}", f"choose from: {', '.join(METRICS)}")
    return names


def score_corpus(
    hyps: Sequence[str], refs: Sequence[str], metrics: Sequence[str] = ("bleu", "chrf", "ter")
) -> list[MetricScore]:
    """Corpus-level scores of detokenised hypotheses against one reference each."""
    if len(hyps) != len(refs):
        raise DataError(f"hypotheses and references differ in length: {len(hyps)} vs {len(refs)} lines")
    scores = []
    for name in metrics:
        metric = METRICS[name]()
        result = metric.corpus_score(list(hyps), [list(refs)])
        scores.append(MetricScore(result.name, float(result.score), str(metric.get_signature()), str(result)))
    return scores


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacrebleu's default corpus BLEU."""
    return score_corpus(hyps, refs, ["bleu"])[0].score


@dataclass
class Evaluation:
    """`seqtool eval`'s result: one system's scores, or several systems compared (rows, first = baseline)."""

    metrics: list[str]
    scores: list[MetricScore] = field(default_factory=list)  # one system
    rows: list[SystemRow] = field(default_factory=list)  # several systems (see compare.compare_systems)
    signatures: dict[str, str] = field(default_factory=dict)  # metric name -> signature, when comparing
    bootstrap: int = 0  # paired bootstrap resamples, when comparing

    def to_json(self) -> str:
        """One JSON object: {metric: {score, signature}} for one system; systems, signatures, samples for several."""
        if self.rows:
            payload = {
                "systems": [{"name": r.name, **{m: vars(s) for m, s in r.scores.items()}} for r in self.rows],
                "signatures": self.signatures,
                "bootstrap_samples": self.bootstrap,
            }
        else:
            payload = {s.name: {"score": round(s.score, 4), "signature": s.signature} for s in self.scores}
        return json.dumps(payload, ensure_ascii=False)

    def to_text(self) -> str:
        """sacrebleu's line and the signature per metric; for several systems a table and the signatures."""
        if self.rows:
            from seqtool.compare import format_table

            lines = [
                format_table(self.rows, self.metrics),
                f"paired bootstrap resampling against {self.rows[0].name}: {self.bootstrap} resamples, 95 % CI",
                *(f"  {metric} signature: {signature}" for metric, signature in self.signatures.items()),
            ]
        else:
            lines = [line for s in self.scores for line in (s.text, f"  signature: {s.signature}")]
        return "\n".join(lines)


def evaluate_files(
    hyps: Sequence[str | Path], ref: str | Path, metrics: str = "bleu,chrf,ter", bootstrap: int = 1000
) -> Evaluation:
    """Score hypothesis files against a reference file (`metrics` comma-separated); with several hypothesis files,
    compare each to the first with `bootstrap` paired bootstrap resamples (see compare.compare_systems)."""
    from seqtool.data.corpus import read_lines, read_parallel

    names = parse_metrics(metrics)
    if len(hyps) > 1:
        from seqtool.compare import compare_systems

        refs = read_lines(Path(ref))
        systems = [(str(path), read_lines(Path(path))) for path in hyps]
        rows, signatures = compare_systems(systems, refs, names, bootstrap)
        return Evaluation(names, rows=rows, signatures=signatures, bootstrap=bootstrap)
    if not hyps:
        raise DataError("no hypotheses to score", "give --hyp FILE")
    hyp_lines, ref_lines = read_parallel(Path(hyps[0]), Path(ref))
    return Evaluation(names, scores=score_corpus(hyp_lines, ref_lines, names))
