"""Model construction: a small name -> builder table over the model configs."""

from __future__ import annotations

from collections.abc import Callable

from seqtool.config import ModelConfig, RNNConfig, TransformerConfig
from seqtool.errors import ConfigError
from seqtool.models.base import Seq2SeqModel
from seqtool.tokenizer import SpecialIds


def _transformer(cfg: TransformerConfig, src_vocab: int, tgt_vocab: int, specials: SpecialIds) -> Seq2SeqModel:
    from seqtool.models.transformer import Transformer

    return Transformer(
        src_vocab,
        tgt_vocab,
        specials,
        d_model=cfg.d_model,
        heads=cfg.heads,
        ffn_dim=cfg.ffn_dim,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation=cfg.activation,
        pre_norm=cfg.pre_norm,
        share_embeddings=cfg.share_embeddings,
        tie_output=cfg.tie_output,
        max_positions=cfg.max_positions,
    )


def _rnn(cfg: RNNConfig, src_vocab: int, tgt_vocab: int, specials: SpecialIds) -> Seq2SeqModel:
    from seqtool.models.rnn import RNNSeq2Seq

    return RNNSeq2Seq(
        src_vocab,
        tgt_vocab,
        specials,
        cell=cfg.cell,
        embed_dim=cfg.embed_dim,
        hidden_size=cfg.hidden_size,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        bidirectional=cfg.bidirectional,
        attention=cfg.attention,
        dropout=cfg.dropout,
        tie_output=cfg.tie_output,
        share_embeddings=cfg.share_embeddings,
    )


BUILDERS: dict[str, Callable[..., Seq2SeqModel]] = {"transformer": _transformer, "rnn": _rnn}


def build_model(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, specials: SpecialIds) -> Seq2SeqModel:
    """Instantiate the model described by `cfg` for the given vocabulary sizes."""
    try:
        return BUILDERS[cfg.kind](cfg, src_vocab, tgt_vocab, specials)
    except ValueError as exc:  # e.g. shared embeddings with different vocabulary sizes
        raise ConfigError(f"model: {exc}") from None
