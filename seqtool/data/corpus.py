"""Line-aligned parallel text files: reading with clear errors, and length filters that report what they drop."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seqtool.errors import DataError


def check_readable(path: Path) -> None:
    """A clear DataError unless `path` is an existing file."""
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a text file")


def read_lines(path: str | Path, encoding_errors: str = "strict") -> list[str]:
    """Read a UTF-8 text file into lines (without line endings; a leading BOM and CR before LF removed).

    Invalid UTF-8 is an error naming the file and the line, unless `encoding_errors="replace"`.
    """
    path = Path(path)
    check_readable(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: invalid UTF-8 (byte 0x{data[exc.start]:02x})",
            "convert the file to UTF-8 (e.g. iconv), or pass --encoding-errors replace",
        ) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start another line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def check_utf8(path: str | Path, block: int = 1 << 20) -> None:
    """The error `read_lines` gives for invalid UTF-8 (file:line), from a streamed pass that holds no lines."""
    path = Path(path)
    check_readable(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(block):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    # the decoder may hold up to 3 bytes of the previous block; exc.start counts from them
                    held = len(exc.object) - len(chunk)
                    start = max(exc.start - held, 0)
                    line = lines_before + chunk.count(b"\n", 0, start) + 1
                    raise DataError(
                        f"{path}:{line}: invalid UTF-8 (byte 0x{exc.object[exc.start]:02x})",
                        "convert the file to UTF-8 (e.g. iconv), or pass --encoding-errors replace",
                    ) from None
                lines_before += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:  # a multi-byte sequence cut off by the end of the file
        raise DataError(
            f"{path}:{lines_before + 1}: invalid UTF-8 (byte 0x{exc.object[exc.start]:02x})",
            "convert the file to UTF-8 (e.g. iconv), or pass --encoding-errors replace",
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_parallel(
    src_path: str | Path, tgt_path: str | Path, encoding_errors: str = "strict"
) -> tuple[list[str], list[str]]:
    """Read line-aligned source and target files; differing line counts are an error, never truncated."""
    src = read_lines(src_path, encoding_errors)
    tgt = read_lines(tgt_path, encoding_errors)
    if len(src) != len(tgt):
        raise DataError(
            f"line counts differ: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}",
            "source and target files must be line-aligned (one sentence pair per line)",
        )
    return src, tgt


@dataclass
class FilterReport:
    """How many pairs a filter kept and dropped, by reason."""

    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: 'kept 11774 of 12126 pairs (dropped: empty 10, too long 342)'."""
        reasons = ", ".join(f"{name} {count}" for name, count in self.dropped.items() if count)
        return f"kept {self.kept} of {self.total} pairs" + (f" (dropped: {reasons})" if reasons else "")


def filter_pairs(
    src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], max_len: int, max_ratio: float = 0.0
) -> tuple[list[int], FilterReport]:
    """Indices of the pairs to train on: both sides non-empty, at most `max_len` pieces, length ratio <= max_ratio."""
    report = FilterReport(total=len(src), dropped={"empty": 0, "too long": 0, "length ratio": 0})
    keep: list[int] = []
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        if not s or not t:
            report.dropped["empty"] += 1
        elif len(s) > max_len or len(t) > max_len:
            report.dropped["too long"] += 1
        elif max_ratio and max(len(s), len(t)) > max_ratio * min(len(s), len(t)):
            report.dropped["length ratio"] += 1
        else:
            keep.append(i)
    report.kept = len(keep)
    return keep, report
