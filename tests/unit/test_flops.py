"""models.flops: the matmul FLOPs counted from shapes match what torch's FlopCounterMode sees the model do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seqtool.config import RNNConfig, TransformerConfig
from seqtool.models import build_model
from seqtool.models.flops import forward_flops, training_flops
from seqtool.probe import matmul_gflops
from seqtool.tokenizer import SpecialIds

SP = SpecialIds(pad=0, bos=1, eos=2, unk=3)
VOCAB = 50


def counted(cfg: TransformerConfig | RNNConfig, src_len: int, tgt_len: int) -> int:
    """FlopCounterMode's FLOPs of one teacher-forced forward pass over one unpadded sentence pair."""
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB, VOCAB, SP).train()
    src, tgt = torch.randint(4, VOCAB, (1, src_len)), torch.randint(4, VOCAB, (1, tgt_len))
    with FlopCounterMode(display=False) as counter:
        model(src, tgt, torch.ones_like(tgt, dtype=torch.bool))
    return counter.get_total_flops()


@pytest.mark.parametrize(("src_len", "tgt_len"), [(7, 5), (3, 11)])
def test_transformer_products_as_counted(src_len: int, tgt_len: int) -> None:
    """The counter sees the linear layers (addmm); attention runs in SDPA, which it does not count on a CPU: its two
    products per layer (q·k and weights·v, 2·n·m·d FLOPs each) are added by hand."""
    cfg = TransformerConfig(d_model=32, heads=4, ffn_dim=48, encoder_layers=2, decoder_layers=3, dropout=0.0,
                            attention_dropout=0.0)  # fmt: skip
    s, t, d = src_len, tgt_len, cfg.d_model
    sdpa = 2 * (4 * s * s * d) + 3 * (4 * t * t * d + 4 * t * s * d)
    assert forward_flops(cfg, np.array([s]), np.array([t]), VOCAB) == counted(cfg, s, t) + sdpa


GRUS = {
    "bahdanau": RNNConfig(cell="gru", embed_dim=16, hidden_size=24, attention="bahdanau", dropout=0.0),
    "luong-2-layers": RNNConfig(cell="gru", embed_dim=16, hidden_size=24, attention="luong", encoder_layers=2,
                                decoder_layers=2),
    "none-tied": RNNConfig(cell="gru", embed_dim=16, hidden_size=24, attention="none", bidirectional=False,
                           tie_output=True, share_embeddings=True),
}  # fmt: skip


@pytest.mark.parametrize("cfg", GRUS.values(), ids=GRUS.keys())
def test_rnn_products_as_counted(cfg: RNNConfig) -> None:
    """GRUs run as addmm on a CPU, so the counter sees every product. (An LSTM runs as one fused op it does not count:
    the same formula with four gates instead of three.)"""
    for s, t in ((7, 5), (2, 9)):
        assert forward_flops(cfg, np.array([s]), np.array([t]), VOCAB) == counted(cfg, s, t)


def test_real_lengths_add_up_and_training_is_three_passes() -> None:
    cfg = TransformerConfig(d_model=32, heads=4, ffn_dim=48)
    lstm = RNNConfig(cell="lstm", embed_dim=16, hidden_size=24)
    gru = RNNConfig(cell="gru", embed_dim=16, hidden_size=24)
    for c in (cfg, lstm):
        both = forward_flops(c, np.array([7, 3]), np.array([5, 11]), VOCAB)
        alone = [forward_flops(c, np.array([s]), np.array([t]), VOCAB) for s, t in ((7, 5), (3, 11))]
        assert both == pytest.approx(sum(alone))
        assert training_flops(c, np.array([7, 3]), np.array([5, 11]), VOCAB) == pytest.approx(3 * both)
    # an LSTM's recurrent layers do 4/3 of a GRU's products (bidirectional encoder over 7 source positions, decoder
    # over 5 target positions with input = embedding, context and attended): the rest is the same
    gru_layers = 2 * 7 * 2 * 3 * 24 * (16 + 24) + 5 * 2 * 3 * 24 * ((16 + 2 * 48) + 24)
    rest = forward_flops(gru, np.array([7]), np.array([5]), VOCAB) - gru_layers
    assert forward_flops(lstm, np.array([7]), np.array([5]), VOCAB) == pytest.approx(rest + 4 / 3 * gru_layers)


def test_matmul_probe_times_products_and_restores_the_threads() -> None:
    before = torch.get_num_threads()
    gflops = matmul_gflops("fp32", threads=1, size=128, repeat=3)
    assert torch.get_num_threads() == before
    # a 128² fp32 product is 4.2 MFLOP: any CPU does it at more than 0.1 and less than 100,000 GFLOP/s
    assert 0.1 < gflops < 1e5
