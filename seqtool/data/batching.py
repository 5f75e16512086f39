"""Token-budget, length-bucketed batches with a seeded, resumable position; padding into tensors."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seqtool.models.base import SpecialIds


@dataclass
class Batch:
    """A padded training batch."""

    src: Tensor  # (batch, src_len) source ids + </s>
    tgt_in: Tensor  # (batch, tgt_len) <s> + target ids
    tgt_out: Tensor  # (batch, tgt_len) target ids + </s>
    tgt_tokens: int  # real (non-pad) target tokens, </s> included
    update_tokens: int = 0  # target tokens of the whole update this batch belongs to (gradient accumulation)

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`."""
        nb = device.type == "cuda"
        return Batch(
            self.src.to(device, non_blocking=nb),
            self.tgt_in.to(device, non_blocking=nb),
            self.tgt_out.to(device, non_blocking=nb),
            self.tgt_tokens,
            self.update_tokens,
        )


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad: int, prefix: int | None = None, suffix: int | None = None
) -> Tensor:
    """Right-pad id sequences into a (batch, max_len) LongTensor, optionally adding a prefix/suffix id to each."""
    extra = (prefix is not None) + (suffix is not None)
    width = max((len(s) for s in seqs), default=0) + extra
    out = np.full((len(seqs), max(width, 1)), pad, dtype=np.int64)
    start = 1 if prefix is not None else 0
    for row, seq in enumerate(seqs):
        if prefix is not None:
            out[row, 0] = prefix
        out[row, start : start + len(seq)] = seq
        if suffix is not None:
            out[row, start + len(seq)] = suffix
    return torch.from_numpy(out)


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], specials: SpecialIds) -> Batch:
    """Pad a list of pairs into a `Batch` (source gets </s>; target gets <s> in and </s> out)."""
    tokens = sum(len(t) + 1 for t in tgt)
    return Batch(
        src=pad_sequences(src, specials.pad, suffix=specials.eos),
        tgt_in=pad_sequences(tgt, specials.pad, prefix=specials.bos),
        tgt_out=pad_sequences(tgt, specials.pad, suffix=specials.eos),
        tgt_tokens=tokens,
        update_tokens=tokens,
    )


def bucket_batches(
    src_lens: Sequence[int], tgt_lens: Sequence[int], batch_tokens: int, rng: random.Random | None = None
) -> list[list[int]]:
    """Group pair indices into batches of similar length whose padded size (rows × longest side) fits the budget.

    Pairs are sorted by (target, source) length, ties broken randomly when `rng` is given; a pair longer than the
    budget still gets a batch of its own.
    """
    n = len(src_lens)
    noise = [rng.random() for _ in range(n)] if rng else [0.0] * n
    order = sorted(range(n), key=lambda i: (tgt_lens[i], src_lens[i], noise[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        size = max(src_lens[i], tgt_lens[i]) + 1  # + </s> or <s>
        if current and max(longest, size) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


class BatchSampler:
    """An endless stream of shuffled length-bucketed batches; its position (epoch, index) can be saved and restored.

    Epoch e is fully determined by (seed, e), so restoring the position resumes the exact same batch sequence.
    """

    def __init__(self, src_lens: Sequence[int], tgt_lens: Sequence[int], batch_tokens: int, seed: int) -> None:
        if not src_lens:
            raise ValueError("no training pairs")
        self.src_lens = list(src_lens)
        self.tgt_lens = list(tgt_lens)
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.epoch = 0
        self.index = 0
        self._batches = self._epoch_batches(self.epoch)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        batches = bucket_batches(self.src_lens, self.tgt_lens, self.batch_tokens, rng)
        rng.shuffle(batches)
        return batches

    @property
    def batches_per_epoch(self) -> int:
        """Number of batches in the current epoch."""
        return len(self._batches)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            if self.index >= len(self._batches):
                self.epoch += 1
                self.index = 0
                self._batches = self._epoch_batches(self.epoch)
            batch = self._batches[self.index]
            self.index += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The position: epoch and the index of the next batch."""
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by `state_dict`."""
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])
        self._batches = self._epoch_batches(self.epoch)

    def padding_fraction(self) -> float:
        """Share of padded positions (over both sides) in the current epoch's batches."""
        real = padded = 0
        for batch in self._batches:
            s = [self.src_lens[i] + 1 for i in batch]
            t = [self.tgt_lens[i] + 1 for i in batch]
            real += sum(s) + sum(t)
            padded += len(batch) * (max(s) + max(t))
        return 1.0 - real / padded if padded else 0.0
