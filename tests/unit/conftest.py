"""Fixtures of the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqtool.train.trainer import Trainer
from tests.unit.test_trainer import tiny_config


@pytest.fixture(scope="module")
def spm_model(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer trained once through the trainer's own path, reused by every test of a module."""
    run = tmp_path_factory.mktemp("spm") / "run"
    Trainer(tiny_config(tiny_corpus, max_steps=1, eval_every=100), run)
    return run / "spm.model"
