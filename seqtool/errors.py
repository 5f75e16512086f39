"""Errors that the CLI turns into one clear line on stderr."""

from __future__ import annotations


class SeqtoolError(Exception):
    """A user-facing error: a message and an optional hint; exit code 2 by default."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(SeqtoolError):
    """The configuration (YAML file or --set override) is invalid."""


class DataError(SeqtoolError):
    """A corpus or input file cannot be used."""


class CheckpointError(SeqtoolError):
    """A checkpoint or run directory cannot be used."""


class TrainingError(SeqtoolError):
    """Training failed while running (not a bad input)."""

    exit_code = 1


def check(condition: bool, message: str, hint: str | None = None, kind: type[SeqtoolError] = SeqtoolError) -> None:
    """Raise `kind(message, hint)` unless `condition` holds."""
    if not condition:
        raise kind(message, hint)
