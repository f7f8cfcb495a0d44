"""Atomic file writes: a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_directory(final_path):
    """Yield a temporary folder beside ``final_path``; on success it replaces ``final_path``.

    On an exception the temporary folder is removed and ``final_path`` is left as it was. An existing
    ``final_path`` is moved aside first and deleted only after the new one is in place, so at every
    instant either the old or the new complete directory exists under the final name (or, for one
    rename's duration, the aside copy).
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=str(final_path.parent)))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = None
    try:
        if final_path.exists():
            aside = final_path.with_name(f".{final_path.name}.old-{os.getpid()}")
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(final_path, aside)
        os.replace(tmp, final_path)
    except BaseException:
        # A failed rename (disk full, interrupt) must not lose the old directory or leave the temporary one.
        if aside is not None and aside.exists() and not final_path.exists():
            os.replace(aside, final_path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(final_path.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
