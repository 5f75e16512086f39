"""Several systems on one test set: corpus scores and sacrebleu's paired bootstrap resampling against the first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.significance import PairedTest

from seqtool.errors import DataError
from seqtool.evaluate import METRICS

# sacrebleu's result keys per metric name
_RESULT_KEYS = {"bleu": "BLEU", "chrf": "chrF2", "ter": "TER"}


@dataclass
class SystemScore:
    """One system's score on one metric, with the bootstrap estimate and the p-value against the baseline."""

    score: float
    mean: float | None  # bootstrap estimate of the true mean
    ci: float | None  # half-width of the 95 % confidence interval around `mean`
    p_value: float | None  # paired bootstrap against the first system (None for the first system itself)


@dataclass
class SystemRow:
    """A system (its name) and its scores per metric name (bleu, chrf, ter)."""

    name: str
    scores: dict[str, SystemScore]


def compare_systems(
    systems: Sequence[tuple[str, Sequence[str]]],
    refs: Sequence[str],
    metrics: Sequence[str] = ("bleu", "chrf", "ter"),
    samples: int = 1000,
) -> tuple[list[SystemRow], dict[str, str]]:
    """Score every system and test each against the first (paired bootstrap, `samples` resamples).

    Returns the rows (first = baseline) and the metric signatures. Resampling is seeded (sacrebleu's
    SACREBLEU_SEED, 12345 by default), so the p-values are reproducible.
    """
    if len(systems) < 2:
        raise DataError("a comparison needs at least two systems", "give --hyp twice or more")
    for name, hyps in systems:
        if len(hyps) != len(refs):
            raise DataError(f"{name} has {len(hyps)} lines but the references have {len(refs)}")
    metric_objects = {_RESULT_KEYS[m]: METRICS[m]() for m in metrics}
    test = PairedTest(
        [(name, list(hyps)) for name, hyps in systems],
        metric_objects,
        references=[list(refs)],
        test_type="bs",
        n_samples=samples,
    )
    signatures, results = test()
    identical = [list(hyps) == list(systems[0][1]) for _, hyps in systems]
    rows = []
    for index, (name, _) in enumerate(systems):
        scores = {}
        for metric in metrics:
            result = results[_RESULT_KEYS[metric]][index]
            scores[metric] = SystemScore(
                score=float(result.score),
                mean=None if result.mean is None else float(result.mean),
                ci=None if result.ci is None else float(result.ci),
                p_value=_p_value(index, result.p_value, identical[index]),
            )
        rows.append(SystemRow(name, scores))
    return rows, {m: str(signatures[_RESULT_KEYS[m]]) for m in metrics}


def _p_value(index: int, p_value: float | None, identical: bool) -> float | None:
    """None for the baseline; 1.0 for a copy of it (sacrebleu's test gives 1/(n+1) when every difference is 0)."""
    if index == 0 or p_value is None:
        return None
    return 1.0 if identical else float(p_value)


def format_table(rows: Sequence[SystemRow], metrics: Sequence[str]) -> str:
    """A plain-text table: one line per system, `score (mean ± ci) p=...` per metric."""
    headers = ["system", *(_RESULT_KEYS[m] for m in metrics)]
    cells = []
    for row in rows:
        line = [row.name]
        for metric in metrics:
            s = row.scores[metric]
            text = f"{s.score:.2f}"
            if s.mean is not None and s.ci is not None:
                text += f" ({s.mean:.2f} ± {s.ci:.2f})"
            text += "" if s.p_value is None else f" p={s.p_value:.4f}" + ("*" if s.p_value < 0.05 else "")
            line.append(text)
        cells.append(line)
    widths = [max(len(r[i]) for r in [headers, *cells]) for i in range(len(headers))]
    render = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *cells]]
    render.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(render)
