"""Ensembles: several models decoding as one, through the step interface every seqtool model offers.

At each step the ensemble's next-token distribution is the weighted average of its members' log-probabilities
(a weighted geometric mean of their distributions, renormalised by the search's log-softmax): log p(y) =
sum_i w_i log p_i(y) - log Z. Marian and eole (`-model m1 m2`) combine log-probabilities so; fairseq averages the
probabilities instead. An ensemble of a model with itself is that model. Members may be of any architecture
(a Transformer with a GRU), as long as they share the source and target vocabularies: the search, the batching and
the continuous batching of a server treat the ensemble as one model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seqtool.errors import ConfigError, check
from seqtool.models.base import DecoderState, EncoderOutput, Seq2SeqModel


class Ensemble(Seq2SeqModel):
    """Models of one vocabulary decoding together, their log-probabilities averaged with `weights` (default equal)."""

    def __init__(self, models: Sequence[Seq2SeqModel], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        check(len(models) >= 1, "an ensemble needs at least one model", kind=ConfigError)
        weights = [1.0 / len(models)] * len(models) if weights is None else list(weights)
        check(
            len(weights) == len(models),
            f"{len(weights)} weights for {len(models)} models",
            hint="give one weight per model, e.g. --weights 0.5,0.5",
            kind=ConfigError,
        )
        check(
            all(w >= 0 for w in weights) and sum(weights) > 0,
            f"ensemble weights must be >= 0 and not all 0, got {weights}",
            kind=ConfigError,
        )
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.members = nn.ModuleList(models)
        self.specials = models[0].specials
        self.output = models[0].output  # the target vocabulary's size, for callers that ask

    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        raise NotImplementedError("an ensemble has no single feature space; use forward")

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None) -> Tensor:
        """Teacher forcing: the weighted sum of the members' log-probabilities (batch, tgt_len, vocab)."""
        return self._combine(member(src, tgt_in, keep) for member in self.members)

    def encode(self, src: Tensor) -> EncoderOutput:
        """Every member's encoding, in `final`; memory and mask of the first (for callers that look)."""
        encodings = [member.encode(src) for member in self.members]
        return EncoderOutput(memory=encodings[0].memory, src_mask=encodings[0].src_mask, final=encodings)

    def init_state(self, enc: EncoderOutput) -> DecoderState:
        return {"members": [m.init_state(e) for m, e in zip(self.members, enc.final, strict=True)]}

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """The members' steps; the weighted sum of their log-probabilities as the logits."""
        stepped = [m.step(tokens, s) for m, s in zip(self.members, state["members"], strict=True)]
        logits = self._combine(logits for logits, _ in stepped)
        return logits, {"members": [s for _, s in stepped]}

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        members = zip(self.members, state["members"], strict=True)
        return {"members": [m.reorder_state(s, index) for m, s in members]}

    def expand_state(self, state: DecoderState, rows: Tensor, beam: int) -> DecoderState:
        members = zip(self.members, state["members"], strict=True)
        return {"members": [m.expand_state(s, rows, beam) for m, s in members]}

    def merge_states(self, first: DecoderState, second: DecoderState) -> DecoderState:
        members = zip(self.members, first["members"], second["members"], strict=True)
        return {"members": [m.merge_states(a, b) for m, a, b in members]}

    @torch.no_grad()
    def attention_weights(self, src: Tensor, tgt_in: Tensor, layer: int = -1, head: int | None = None) -> Tensor | None:
        """The weighted mean of the members' cross-attention weights (members without attention left out)."""
        pairs = zip(self.weights, self.members, strict=True)
        found = [(w, a) for w, m in pairs if (a := m.attention_weights(src, tgt_in, layer, head)) is not None]
        if not found:
            return None
        total = sum(w for w, _ in found)
        return sum(w * a.float() for w, a in found) / total

    def _combine(self, logits: Sequence[Tensor] | object) -> Tensor:
        combined = None
        for weight, member_logits in zip(self.weights, logits, strict=True):
            part = weight * member_logits.float().log_softmax(-1)
            combined = part if combined is None else combined + part
        assert combined is not None
        return combined
