"""BLEU, chrF and TER through sacrebleu, with signatures; used by `seqtool eval` and for dev BLEU in training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER

from seqtool.errors import DataError

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
