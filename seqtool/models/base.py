"""The interface every seqtool model implements.

Training calls `forward(src, tgt_in)` on whole sequences (teacher forcing).
Decoding (greedy and beam search, written once in `seqtool.decode.search`) uses the
step-wise interface: `encode` once, `init_state`, then `step` one target token at a time,
with `reorder_state` to select, repeat or drop rows of the batch (beam expansion,
beam reordering, finished sentences leaving the batch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seqtool.tokenizer import SpecialIds


@dataclass
class EncoderOutput:
    """What the encoder hands to the decoder."""

    memory: Tensor  # (batch, src_len, dim) encoder states h_e[t]
    src_mask: Tensor  # (batch, src_len) bool, True at real (non-pad) source positions
    final: Any = None  # model-specific summary of the source (RNN: last hidden state(s))


DecoderState = dict[str, Any]


def select_rows(value: Any, index: Tensor, dim: int = 0) -> Any:
    """Select `index` along `dim` of every tensor in a nested dict/list/tuple structure."""
    if isinstance(value, Tensor):
        return value.index_select(dim, index)
    if isinstance(value, dict):
        return {k: select_rows(v, index, dim) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(select_rows(v, index, dim) for v in value)
    return value


class Seq2SeqModel(nn.Module, ABC):
    """An encoder–decoder translation model."""

    specials: SpecialIds

    output: nn.Linear  # the projection from `features` to target-vocabulary logits

    @abstractmethod
    def features(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced decoder features before the output projection: (batch, tgt_len, output.in_features)."""

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None) -> Tensor:
        """Teacher-forced logits: src (batch, src_len), tgt_in (batch, tgt_len) -> (batch, tgt_len, tgt_vocab).

        With a boolean `keep` (batch, tgt_len), only the logits of those positions: (keep.sum(), tgt_vocab). Training
        passes the non-pad target positions, so the largest matmul and the loss skip the padding.
        """
        features = self.features(src, tgt_in)
        return self.output(features if keep is None else features[keep])

    @abstractmethod
    def encode(self, src: Tensor) -> EncoderOutput:
        """Encode a padded source batch (batch, src_len)."""

    @abstractmethod
    def init_state(self, enc: EncoderOutput) -> DecoderState:
        """The decoder state before the first target token (holds everything `step` needs, encoder output included)."""

    @abstractmethod
    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Feed the previous target token (batch,) and return next-token logits (batch, tgt_vocab) and the new state."""

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        """Keep/repeat/reorder batch rows of the state: row i of the result is row index[i] of `state`.

        After `expand_state(state, rows, beam)` the rows come in groups of `beam` (the beams of one sentence), and
        `index` must keep them so: rows i*beam .. i*beam+beam-1 of the result all come from one group of `state`, and
        when the number of rows does not change, group i comes from group i (beam search reorders beams within a
        sentence and drops finished sentences). Models may then keep per-sentence tensors once per sentence.
        """
        return select_rows(state, index)

    def expand_state(self, state: DecoderState, rows: Tensor, beam: int) -> DecoderState:
        """Beam search's start: rows i*beam .. i*beam+beam-1 of the result are copies of row rows[i] of `state`."""
        return self.reorder_state(state, rows.repeat_interleave(beam))

    def num_parameters(self) -> int:
        """Number of distinct trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def attention_weights(self, src: Tensor, tgt_in: Tensor, layer: int = -1, head: int | None = None) -> Tensor | None:
        """Cross-attention weights (batch, tgt_len, src_len), if the model has any (Transformer: of decoder `layer`,
        one `head` or averaged over heads; models with a single attention ignore both)."""
        return None
