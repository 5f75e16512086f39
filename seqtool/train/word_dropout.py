"""Word dropout (Sennrich & Zhang, 2019; as token drop): training input pieces replaced by <unk> at random.

The source pieces and the decoder's input pieces (not the targets it predicts) are each replaced by <unk> with
probability p, so the model learns not to lean on any single piece. Padding, <s>, </s> and language tags are never
replaced. The draw comes from torch's generator, which the checkpoints carry, so a resumed run drops the same pieces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqtool.models.dropout import keep_mask


def drop_words(ids: Tensor, p: float, unk: int, protected: Tensor) -> Tensor:
    """`ids` with each id not in `protected` replaced by `unk` with probability p (p rounded to 1/32768)."""
    if p <= 0.0:
        return ids
    dropped = ~keep_mask(ids.shape, p, ids.device) & ~torch.isin(ids, protected)
    return ids.masked_fill(dropped, unk)
