"""User-facing error types.

Every problem a user can cause (bad files, bad tables, bad flags, incompatible checkpoints) is raised
as a subclass of :class:`FERError` with a message that names the file and, where there is one, the
row. The command-line entry points catch ``FERError`` and print ``error: <message>`` with exit code 2,
so users never see a TensorFlow traceback for their own mistakes.
"""

from __future__ import annotations


class FERError(Exception):
    """Base class of every error the toolkit reports to a user."""


class DataError(FERError):
    """A dataset file (table, image, neighbour table, landmarks) is missing or malformed."""


class ConfigError(FERError):
    """A flag, preset or config override is unknown or inconsistent."""


class CheckpointError(FERError):
    """A checkpoint or run directory is missing, corrupt or belongs to a different run."""


class TrainingError(FERError):
    """Training cannot continue (e.g. a non-finite loss); the message names the last good checkpoint."""


def row_error(path, row: int | None, message: str, cls=DataError) -> FERError:
    """Build an error that names ``path`` and (1-based, header excluded) data ``row``."""
    where = f"{path}" if row is None else f"{path}, row {row}"
    return cls(f"{where}: {message}")
