"""Subword regularisation (Kudo, 2018): training sentences segmented by sampling, reproducibly, from a unigram model.

SentencePiece's own sampling (`enable_sampling=True`) draws from a C++ generator that cannot be seeded reproducibly
from Python (sentencepiece 0.2: three processes, the same seed, three different segmentations), and exact resume
and same-seed runs need the same segmentations. So the n best segmentations come from SentencePiece (deterministic)
and one of them is drawn here with numpy, with probability proportional to P(segmentation)^alpha, where log P is the
sum of the unigram model's piece scores. This is Kudo's l-best sampling (l = nbest); alpha near 0 is near uniform
over the n best, large alpha near the best segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm


@dataclass(frozen=True)
class SubwordSampling:
    """How one sampled encoding of a corpus is made: alpha, the n best drawn from, the run's seed and the copy."""

    alpha: float
    nbest: int
    seed: int
    copy: int

    def rng(self, first_line: int, side: int) -> np.random.Generator:
        """The generator of one chunk of lines and one side: independent of how chunks go to worker processes."""
        return np.random.default_rng([self.seed, self.copy, first_line, side])


def piece_scores(processor: spm.SentencePieceProcessor) -> np.ndarray:
    """Each piece's log-probability under the unigram model (float64, indexed by id)."""
    return np.array([processor.get_score(i) for i in range(processor.get_piece_size())], dtype=np.float64)


def sample_segmentations(
    processor: spm.SentencePieceProcessor,
    lines: Sequence[str],
    scores: np.ndarray,
    alpha: float,
    nbest: int,
    rng: np.random.Generator,
) -> list[list[int]]:
    """One segmentation (piece ids) per line, drawn from its `nbest` best with probability ∝ P^alpha."""
    out: list[list[int]] = []
    for candidates in processor.nbest_encode(list(lines), out_type=int, nbest_size=nbest):
        if len(candidates) <= 1:
            out.append(list(candidates[0]) if candidates else [])
            continue
        logp = np.array([scores[np.asarray(c, dtype=np.int64)].sum() for c in candidates]) * alpha
        weights = np.exp(logp - logp.max())
        out.append(list(candidates[rng.choice(len(candidates), p=weights / weights.sum())]))
    return out


def check_samplable(processor: spm.SentencePieceProcessor, path: str) -> None:
    """A ValueError unless the model can give n-best segmentations (a unigram model; BPE models cannot)."""
    try:
        processor.nbest_encode(["ab"], out_type=int, nbest_size=2)
    except RuntimeError:
        raise ValueError(
            f"{path}: subword sampling needs a unigram SentencePiece model (tokenizer.type: unigram)"
        ) from None
