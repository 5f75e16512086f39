"""Text in -> text out: encode, sort by length, batch by a token budget, search, restore order, decode.

One line in = one line out, always: an empty (or whitespace-only) line gives an empty line without
touching the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from seqtool.data.batching import pad_sequences
from seqtool.decode.search import Hypothesis, SearchConfig, search
from seqtool.models.base import Seq2SeqModel
from seqtool.runtime import autocast
from seqtool.tokenizer import Tokenizer


def length_batches(lengths: Sequence[int], batch_tokens: int, beam: int = 1) -> Iterator[list[int]]:
    """Indices sorted by length, grouped so that rows × longest × beam stays within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    longest = 0
    for i in order:
        size = (lengths[i] + 1) * beam
        if batch and max(longest, size) * (len(batch) + 1) > batch_tokens:
            yield batch
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, size)
    if batch:
        yield batch


@torch.inference_mode()
def translate_ids(
    model: Seq2SeqModel,
    src_ids: Sequence[Sequence[int]],
    cfg: SearchConfig,
    batch_tokens: int = 4000,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> list[list[Hypothesis]]:
    """Search every source (ids without </s>) and return its hypotheses in input order; empty sources give []."""
    device = device or next(model.parameters()).device
    results: list[list[Hypothesis]] = [[] for _ in src_ids]
    todo = [i for i, ids in enumerate(src_ids) if len(ids) > 0]
    eos, pad = model.specials.eos, model.specials.pad
    for batch in length_batches([len(src_ids[i]) for i in todo], batch_tokens, cfg.beam):
        rows = [todo[j] for j in batch]
        src = pad_sequences([src_ids[i] for i in rows], pad, suffix=eos).to(device)
        with autocast(device, precision):
            hyps = search(model, src, cfg)
        for row, hyp in zip(rows, hyps, strict=True):
            results[row] = hyp
    return results


@dataclass
class Translation:
    """The output for one input line."""

    text: str
    log_prob: float
    score: float


class Translator:
    """A model and its tokenizer, turning text lines into translations."""

    def __init__(
        self, model: Seq2SeqModel, tokenizer: Tokenizer, device: torch.device, precision: str = "fp32"
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision

    def translate(self, lines: Sequence[str], cfg: SearchConfig, batch_tokens: int = 4000) -> list[list[Translation]]:
        """Translate lines; each gets its n-best list (one empty Translation for an empty line)."""
        src_ids = self.tokenizer.src.encode(line.strip() for line in lines)
        hyps = translate_ids(self.model, src_ids, cfg, batch_tokens, self.device, self.precision)
        out: list[list[Translation]] = []
        for nbest in hyps:
            if not nbest:
                out.append([Translation("", 0.0, 0.0)])
                continue
            texts = self.tokenizer.tgt.decode([h.tokens for h in nbest])
            out.append([Translation(t, h.log_prob, h.score) for t, h in zip(texts, nbest, strict=True)])
        return out
