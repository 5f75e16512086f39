"""The arithmetic a model does, from its shapes: how far training is from the machine's matmul ceiling.

Counted are the matrix products (2 FLOPs per multiply-add), on each sentence's real lengths: padding is not useful
work. Left out: embedding lookups, norms, softmax, activations and the optimizer (all memory-bound and small next to
the products). A training step is 3 forward passes' worth: the backward pass multiplies each product's gradient by
both of its inputs.

Lengths are what the model sees: the source with its </s> (and a source-side language tag), the target input with
<s> (and a target-side tag), which is also the number of predicted positions.
"""

from __future__ import annotations

import numpy as np

from seqtool.config import ModelConfig, RNNConfig, TransformerConfig

BACKWARD_FACTOR = 3  # forward + backward (two products per forward product)


def forward_flops(cfg: ModelConfig, src_lens: np.ndarray, tgt_lens: np.ndarray, tgt_vocab: int) -> float:
    """Matmul FLOPs of one teacher-forced forward pass over sentences of these source and target lengths."""
    s = np.asarray(src_lens, dtype=np.float64)
    t = np.asarray(tgt_lens, dtype=np.float64)
    if isinstance(cfg, TransformerConfig):
        return float(_transformer(cfg, s, t, tgt_vocab).sum())
    return float(_rnn(cfg, s, t, tgt_vocab).sum())


def training_flops(cfg: ModelConfig, src_lens: np.ndarray, tgt_lens: np.ndarray, tgt_vocab: int) -> float:
    """Matmul FLOPs of one training step (forward and backward) over sentences of these lengths."""
    return BACKWARD_FACTOR * forward_flops(cfg, src_lens, tgt_lens, tgt_vocab)


def _transformer(cfg: TransformerConfig, s: np.ndarray, t: np.ndarray, vocab: int) -> np.ndarray:
    d, f = cfg.d_model, cfg.ffn_dim
    # a layer: q, k, v and output projections 8d² per position; attention q·k and weights·v 4d per pair of positions
    encoder = cfg.encoder_layers * (s * (8 * d * d + 4 * d * f) + 4 * s * s * d)
    self_attention = 8 * t * d * d + 4 * t * t * d  # every pair computed, the later ones masked
    cross_attention = 4 * t * d * d + 4 * s * d * d + 4 * t * s * d  # q and output on the target, k and v on the source
    decoder = cfg.decoder_layers * (self_attention + cross_attention + 4 * t * d * f)
    return encoder + decoder + 2 * t * d * vocab


def _rnn(cfg: RNNConfig, s: np.ndarray, t: np.ndarray, vocab: int) -> np.ndarray:
    h, e = cfg.hidden_size, cfg.embed_dim
    gates = 3 if cfg.cell == "gru" else 4
    directions = 2 if cfg.bidirectional else 1
    enc_dim = h * directions

    def layer(inputs: int, positions: np.ndarray) -> np.ndarray:  # input and recurrent products of all gates
        return positions * 2 * gates * h * (inputs + h)

    encoder = sum(directions * layer(e if i == 0 else enc_dim, s) for i in range(cfg.encoder_layers))
    init = 2 * enc_dim * cfg.decoder_layers * h + 0 * s
    if cfg.attention == "bahdanau":  # keys once, the query per step, v·tanh(.) per pair, the context
        attention = 2 * s * enc_dim * h + 2 * t * h * h + 2 * t * s * h + 2 * t * s * enc_dim
        decoder_input = e + 2 * enc_dim
    elif cfg.attention == "luong":  # the query per step, scores and context per pair
        attention = 2 * t * h * enc_dim + 4 * t * s * enc_dim
        decoder_input = e + enc_dim
    else:
        attention = 0 * s
        decoder_input = e + enc_dim
    decoder = sum(layer(decoder_input if i == 0 else h, t) for i in range(cfg.decoder_layers))
    readout_dim = e if cfg.tie_output else h
    readout = 2 * t * (h + enc_dim + e) * readout_dim + 2 * t * readout_dim * vocab
    return encoder + init + attention + decoder + readout
