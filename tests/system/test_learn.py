"""Every model kind must learn a toy task to 100% exact match on held-out sequences (greedy decoding)."""

from __future__ import annotations

import random

import pytest
import torch

from seqtool.config import RNNConfig, TransformerConfig
from seqtool.data.batching import make_batch, pad_sequences
from seqtool.decode.search import SearchConfig, search
from seqtool.models import build_model
from seqtool.models.base import Seq2SeqModel
from seqtool.tokenizer import SpecialIds
from seqtool.train.loss import label_smoothed_nll

SPECIALS = SpecialIds(pad=3, bos=1, eos=2, unk=0)
VOCAB = 14  # ids 4..13 are the 10 task symbols


def sample(rng: random.Random, n: int) -> list[list[int]]:
    return [[rng.randint(4, VOCAB - 1) for _ in range(rng.randint(2, 6))] for _ in range(n)]


def train_reverse(model: Seq2SeqModel, steps: int, lr: float) -> float:
    """Train on the reverse task; return held-out exact match of greedy decoding."""
    rng = random.Random(1)
    test = sample(random.Random(999), 200)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)  # anneal to converge fully
    model.train()
    for _ in range(steps):
        src = sample(rng, 64)
        batch = make_batch(src, [s[::-1] for s in src], SPECIALS)
        loss, _ = label_smoothed_nll(model(batch.src, batch.tgt_in), batch.tgt_out, SPECIALS.pad, 0.0)
        optimizer.zero_grad()
        (loss / batch.tgt_tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        decay.step()
    model.eval()
    with torch.inference_mode():
        hyps = search(
            model,
            pad_sequences(test, SPECIALS.pad, suffix=SPECIALS.eos),
            SearchConfig(beam=1, nbest=1, max_len_a=1, max_len_b=2),
        )
    return sum(h[0].tokens == s[::-1] for h, s in zip(hyps, test, strict=True)) / len(test)


MODELS = {
    "transformer": (
        TransformerConfig(
            d_model=64, heads=4, ffn_dim=128, encoder_layers=2, decoder_layers=2, dropout=0.0, attention_dropout=0.0
        ),
        600,
        3e-3,
    ),
    **{
        # without attention the whole source must pass through the fixed context c: a wider state, more steps
        f"{cell}-{attn}": (
            RNNConfig(cell=cell, embed_dim=32, hidden_size=64 if attn != "none" else 128, attention=attn, dropout=0.0),
            600 if attn != "none" else 800,
            1e-2 if attn != "none" else 5e-3,
        )
        for cell in ("gru", "lstm")
        for attn in ("none", "bahdanau", "luong")
    },
}


@pytest.mark.parametrize("name", list(MODELS))
def test_learns_reverse_task_to_100_percent(name: str) -> None:
    torch.manual_seed(0)
    cfg, steps, lr = MODELS[name]
    model = build_model(cfg, VOCAB, VOCAB, SPECIALS)
    assert train_reverse(model, steps, lr) == 1.0
