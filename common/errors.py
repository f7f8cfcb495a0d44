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


class WriteError(FERError):
    """An output could not be written (disk full, read-only folder) or would replace something not ours."""


DISK_FULL_ERRNOS = (28, 122, 27)  # ENOSPC, EDQUOT, EFBIG (a file-size limit, e.g. `ulimit -f`)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError (or an h5py/TensorFlow error wrapping one) that means the disk or a size limit is full."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return any(marker in text for marker in ("No space left", "errno = 28", "Disk quota exceeded", "File too large",
                                             "errno = 27", "RESOURCE_EXHAUSTED"))


def write_error(path, exc: BaseException, hint: str = "") -> WriteError:
    """``<path>: disk full (…)`` or ``<path>: cannot be written (…)`` for a failed write."""
    reason = getattr(exc, "strerror", None) or (str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    what = "disk full" if is_disk_full(exc) else "cannot be written"
    return WriteError(f"{path}: {what} ({reason}){'; ' + hint if hint else ''}")


def row_error(path, row: int | None, message: str, cls=DataError) -> FERError:
    """Build an error that names ``path`` and (1-based, header excluded) data ``row``."""
    where = f"{path}" if row is None else f"{path}, row {row}"
    return cls(f"{where}: {message}")
