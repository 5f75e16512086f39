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


def concat_rows(first: Any, second: Any) -> Any:
    """Concatenate two nested dict/list/tuple structures of batch-first tensors along dim 0.

    Tensors that differ beyond dim 0 (e.g. sources of different lengths) are padded at the end with zeros (False
    for masks); other values must be equal.
    """
    if isinstance(first, Tensor):
        shape = [max(a, b) for a, b in zip(first.shape[1:], second.shape[1:], strict=True)]
        return torch.cat([_pad_to(first, shape), _pad_to(second, shape)])
    if isinstance(first, dict):
        return {k: concat_rows(v, second[k]) for k, v in first.items()}
    if isinstance(first, (list, tuple)):
        return type(first)(concat_rows(a, b) for a, b in zip(first, second, strict=True))
    if first != second:
        raise ValueError(f"concat_rows: cannot merge {first!r} and {second!r}")
    return first


def _pad_to(t: Tensor, shape: list[int]) -> Tensor:
    """`t` (rows, ...) zero-padded at the end of each dim after the first to `shape`."""
    if list(t.shape[1:]) == shape:
        return t
    out = t.new_zeros([t.size(0), *shape])
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


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

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None, project: bool = True) -> Tensor:
        """Teacher-forced logits: src (batch, src_len), tgt_in (batch, tgt_len) -> (batch, tgt_len, tgt_vocab).

        With a boolean `keep` (batch, tgt_len), only the logits of those positions: (keep.sum(), tgt_vocab). Training
        passes the non-pad target positions, so the largest matmul and the loss skip the padding. `project=False`
        returns the features before the output layer instead (training fuses the projection with the loss).
        """
        features = self.features(src, tgt_in)
        kept = features if keep is None else features[keep]
        return self.output(kept) if project else kept

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

    def merge_states(self, first: DecoderState, second: DecoderState) -> DecoderState:
        """One state holding the rows of `first`, then those of `second`: sentences joining a running search.

        Both states come from `init_state` (then `expand_state` with the same beam, and any number of `step`s and
        `reorder_state`s each); the rows may be at different steps and their sources of different lengths. Stepping
        the merged state gives each row what stepping its own state would have given (up to float rounding).
        The default concatenates every tensor row-wise, padding sources (memory, masks) to the longer one.
        """
        return concat_rows(first, second)

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
