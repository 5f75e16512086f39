"""Export a trained run to other inference engines: a small format -> exporter table.

The exporters import their engine lazily, so `seqtool.export` stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from seqtool.errors import ConfigError


def _ctranslate2(run_dir: Path, output: Path, quantization: str, checkpoint: str, overwrite: bool) -> Any:
    from seqtool.export.ctranslate2 import export_ctranslate2

    return export_ctranslate2(run_dir, output, quantization, checkpoint, overwrite)


EXPORTERS: dict[str, Callable[[Path, Path, str, str, bool], Any]] = {"ctranslate2": _ctranslate2}


def export_run(
    run_dir: Path, fmt: str, output: Path, quantization: str, checkpoint: str = "best", overwrite: bool = False
) -> Any:
    """Export the run in `run_dir` to `output` in format `fmt` (a key of EXPORTERS); returns the exporter's result."""
    if fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}", f"choose one of {', '.join(EXPORTERS)}")
    return EXPORTERS[fmt](run_dir, output, quantization, checkpoint, overwrite)
