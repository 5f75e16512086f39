"""Scoring given sentence pairs under a model (filtering, reranking), in the units of `translate --scores`.

A pair's `log_prob` is the model's log-probability of the target's pieces and </s>, given the source (teacher
forcing); `tokens` counts those pieces with </s>; its `score` is log_prob / lp(tokens) for a length penalty of
`search.LENGTH_PENALTIES` (`normalize`: none, avg = per token with alpha 1, gnmt = beam search's ranking score).
So the beam output of `translate --scores` scores exactly the log-probability printed there.

A pair that cannot be scored (an empty side, a side longer than the limit) gets an `error` and no numbers: its line
is still printed, marked, so the output never shifts against the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from seqtool.data.batching import pad_sequences
from seqtool.decode.languages import LanguageTag
from seqtool.decode.search import LENGTH_PENALTIES, score_sequence
from seqtool.decode.translate import clean_line, length_batches
from seqtool.errors import ConfigError, check
from seqtool.models.base import Seq2SeqModel
from seqtool.runtime import autocast
from seqtool.tokenizer import Tokenizer

NORMALIZE_CHOICES = tuple(LENGTH_PENALTIES)  # none, avg, gnmt


@dataclass
class PairScore:
    """The score of one sentence pair, or why it has none."""

    log_prob: float = 0.0
    score: float = 0.0
    tokens: int = 0  # target pieces with </s>
    error: str | None = None


def encode_pairs(
    tokenizer: Tokenizer, sources: Sequence[str], targets: Sequence[str], max_len: int
) -> tuple[list[list[int]], list[list[int]], list[str | None]]:
    """Both engines' input side: source and target ids (cleaned as `translate` cleans), and per pair an error
    (empty side, more than `max_len` pieces) or None."""
    check(len(sources) == len(targets), f"{len(sources)} sources but {len(targets)} targets", kind=ConfigError)
    src_ids = tokenizer.src.encode(clean_line(line) for line in sources)
    tgt_ids = tokenizer.tgt.encode(clean_line(line) for line in targets)
    errors: list[str | None] = []
    for src, tgt in zip(src_ids, tgt_ids, strict=True):
        if not src or not tgt:
            errors.append("empty source" if not src else "empty target")
        elif max(len(src), len(tgt)) > max_len:
            errors.append(f"longer than {max_len} pieces")
        else:
            errors.append(None)
    return src_ids, tgt_ids, errors


def finish_scores(
    log_probs: dict[int, float],
    tgt_ids: Sequence[Sequence[int]],
    errors: Sequence[str | None],
    normalize: str,
    alpha: float,
) -> list[PairScore]:
    """Both engines' output side: the PairScore of every pair from the log-probabilities of the scored ones."""
    check(
        normalize in LENGTH_PENALTIES,
        f"unknown normalization {normalize!r}",
        hint=f"choose one of {', '.join(NORMALIZE_CHOICES)}",
        kind=ConfigError,
    )
    penalty = LENGTH_PENALTIES[normalize]
    out = []
    for i, (tgt, error) in enumerate(zip(tgt_ids, errors, strict=True)):
        if error is not None:
            out.append(PairScore(error=error))
            continue
        tokens = len(tgt) + 1
        log_prob = log_probs[i]
        lp = float(penalty(torch.tensor(float(tokens)), alpha))
        out.append(PairScore(log_prob=log_prob, score=log_prob / lp, tokens=tokens))
    return out


BatchScorer = Callable[[list[Sequence[int]], list[Sequence[int]]], list[float]]
"""An engine's scorer: source ids and target ids of one batch -> the log-probability of each target and </s>."""


def score_pairs(
    tokenizer: Tokenizer,
    sources: Sequence[str],
    targets: Sequence[str],
    score_batch: BatchScorer,
    normalize: str,
    alpha: float,
    batch_tokens: int,
    max_len: int,
    tag: LanguageTag | None = None,
) -> list[PairScore]:
    """Both engines' `score`: encode the pairs (tagged as the model was trained when `tag` has a tag: its
    target-side tag is scored as part of the target), score the scorable ones with the engine's `score_batch` in
    length-sorted token-budget batches, and normalise."""
    src_ids, tgt_ids, errors = encode_pairs(tokenizer, sources, targets, max_len)
    if tag is not None and tag.src is not None:
        src_ids = [[tag.src, *ids] if ids else ids for ids in src_ids]
    if tag is not None:
        tgt_ids = tag.targets(tgt_ids)
    rows = [i for i, error in enumerate(errors) if error is None]
    found = score_rows(src_ids, tgt_ids, rows, batch_tokens, score_batch)
    return finish_scores(found, tgt_ids, errors, normalize, alpha)


def score_rows(
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    rows: Sequence[int],
    batch_tokens: int,
    score_batch: BatchScorer,
) -> dict[int, float]:
    """The log-probabilities of pairs `rows`, scored by `score_batch` in length-sorted token-budget batches."""
    found: dict[int, float] = {}
    lengths = [max(len(src_ids[i]), len(tgt_ids[i])) for i in rows]
    for batch in length_batches(lengths, batch_tokens):
        picked = [rows[j] for j in batch]
        scored = score_batch([src_ids[i] for i in picked], [tgt_ids[i] for i in picked])
        found.update(zip(picked, scored, strict=True))
    return found


def forced_log_probs(
    model: Seq2SeqModel,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    device: torch.device,
    precision: str = "fp32",
) -> list[float]:
    """seqtool's `BatchScorer`: the teacher-forced log-probability of each target (and </s>) of one batch."""
    sp = model.specials
    with torch.inference_mode(), autocast(device, precision):
        src = pad_sequences(src_ids, sp.pad, suffix=sp.eos).to(device)
        tgt = pad_sequences(tgt_ids, sp.pad).to(device)
        return score_sequence(model, src, tgt).tolist()


def score_ids(
    model: Seq2SeqModel,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    rows: Sequence[int],
    batch_tokens: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict[int, float]:
    """The teacher-forced log-probability (target and </s>) of pairs `rows`, in length-sorted token-budget batches."""
    return score_rows(
        src_ids, tgt_ids, rows, batch_tokens, lambda s, t: forced_log_probs(model, s, t, device, precision)
    )


def format_scores(scores: Sequence[PairScore]) -> list[str]:
    """Output lines `LOG_PROB<TAB>SCORE<TAB>TOKENS`, or `NA<TAB>NA<TAB>0<TAB>REASON` for a pair not scored."""
    return [
        f"NA\tNA\t0\t{s.error}" if s.error is not None else f"{s.log_prob:.4f}\t{s.score:.4f}\t{s.tokens}"
        for s in scores
    ]
