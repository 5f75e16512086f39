"""The warning `seqtool train` gives when the vocabulary is large for the training text."""

from __future__ import annotations

from pathlib import Path

from seqtool.train.setup import vocabulary_warning, words_in


def write_lines(path: Path, lines: int, words_per_line: int) -> Path:
    path.write_text("".join(" ".join(["w"] * words_per_line) + "\n" for _ in range(lines)), encoding="utf-8")
    return path


def test_words_are_counted_across_files_and_reading_stops_at_the_limit(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a", lines=10, words_per_line=3)
    b = write_lines(tmp_path / "b", lines=5, words_per_line=2)
    assert words_in([a, b], limit=10_000) == 40
    assert words_in([a, b], limit=7) == 9  # stops after the line that reaches the limit
    assert words_in([a, b], limit=31) == 32  # into the second file, then stops


def test_warning_below_the_bound_only(tmp_path: Path) -> None:
    text = write_lines(tmp_path / "t", lines=1000, words_per_line=10)  # 10,000 words
    assert vocabulary_warning(100, [text], min_words_per_piece=100) == ""  # exactly 100 words a piece
    warning = vocabulary_warning(101, [text], min_words_per_piece=100, side="target ")
    assert warning.startswith("warning: the target vocabulary has 101 pieces for 10,000 training words")
    big = vocabulary_warning(8000, [text], min_words_per_piece=100)
    assert "about 100 pieces" in big and "(1 a piece" in big
    assert vocabulary_warning(8000, [text], min_words_per_piece=0) == ""  # 0 = never
    assert "about 4,000 pieces" in vocabulary_warning(8000, [text], min_words_per_piece=2.5)
