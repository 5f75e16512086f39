"""Shared fixtures: tiny real data taken from the shipped corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "l10n-en-de"


def _head(src: Path, dst: Path, n: int) -> Path:
    with open(src, encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(n)]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """600 training pairs, 40 dev and 30 test pairs of real English→German software strings."""
    root = tmp_path_factory.mktemp("corpus")
    files = {}
    for split, n in (("train", 600), ("dev", 40), ("test", 30)):
        for lang in ("en", "de"):
            files[f"{split}.{lang}"] = _head(DATA / f"{split}.{lang}", root / f"{split}.{lang}", n)
    return files
