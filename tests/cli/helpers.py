"""Tiny configs shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_MODEL: dict[str, dict[str, Any]] = {
    "transformer": {
        "kind": "transformer",
        "d_model": 32,
        "heads": 2,
        "ffn_dim": 64,
        "encoder_layers": 1,
        "decoder_layers": 1,
    },
    "gru": {"kind": "rnn", "cell": "gru", "embed_dim": 32, "hidden_size": 32, "attention": "bahdanau"},
    "lstm": {"kind": "rnn", "cell": "lstm", "embed_dim": 32, "hidden_size": 32, "attention": "none"},
}


def write_config(
    path: Path,
    corpus: dict[str, Path],
    model: str,
    tokenizer: str = "",
    vocab_size: int = 400,
    decode: dict[str, Any] | None = None,
    **train: object,
) -> Path:
    """A tiny training config on the `tiny_corpus` files (one thread: tiny models run faster so on a busy machine)."""
    config = {
        "data": {
            "train_src": str(corpus["train.en"]),
            "train_tgt": str(corpus["train.de"]),
            "dev_src": str(corpus["dev.en"]),
            "dev_tgt": str(corpus["dev.de"]),
        },
        "tokenizer": {"vocab_size": vocab_size, "model": tokenizer},
        "model": TINY_MODEL[model],
        "train": {"max_steps": 30, "eval_every": 15, "log_every": 5, "batch_tokens": 800, "threads": 1, **train},
        "decode": {"max_len_a": 1.0, "max_len_b": 5, **(decode or {})},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
