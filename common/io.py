"""Safe writes: atomic, never replacing what the project did not write, clean errors on a full disk.

* Files are written via a temporary file in the same folder and ``os.replace``: a crash never leaves a
  half-written file under its final name; a failed write (disk full, a file-size limit, a read-only
  folder) raises :class:`common.errors.WriteError` naming the file, and the temporary file is removed.
* A directory output (a SavedModel export, a checkpoint, a pseudo-VA model, a generated dataset) is
  written into a temporary sibling and renamed into place (:func:`atomic_directory`). Every such output
  carries a small marker file, :data:`OUTPUT_MARKER`; an existing directory is only ever replaced when
  it is empty or carries the marker (an output of this project), so a user's own folder is never
  deleted. Temporary siblings left by an interrupted write (the writer's pid is in their name) are
  removed by the next write to the same place once that process is gone (files too: see
  :func:`atomic_write_bytes`).
* :func:`check_output_dir` / :func:`check_output_file`: the checks a command makes before its work
  starts, with ``--force`` semantics: a previous output of the project is replaced only with
  ``--force``; anything else is refused whatever the flag says.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

OUTPUT_MARKER = ".fer-output.json"
OWN_FILES_MANIFEST = ".fer-output-files.json"  # files without room for a mark (CSV, video): name -> size
WRITER = "fer-ldl"
LEGACY_STALE_SECONDS = 3600.0  # a temporary without a pid in its name is left alone for this long
# What a reader of an untrusted file may allocate: an array or record may inflate to at most MAX_EXPANSION times
# the bytes the file stores for it, plus EXPANSION_SLACK. Compressed data stays readable; a zip member, HDF5
# dataset or pickled view of a few kilobytes that claims gigabytes (a zip bomb, an unallocated chunked dataset,
# a stride-0 view) is refused before anything of that size is allocated.
MAX_EXPANSION = 16
EXPANSION_SLACK = 1 << 20


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


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale_pid(name: str, prefix: str) -> bool:
    """Whether a temporary ``.<prefix>.<pid>.…`` sibling belongs to a process that no longer runs."""
    rest = name[len(prefix):]
    pid_text = rest.split(".", 1)[0].split("-", 1)[0]
    return pid_text.isdigit() and not _pid_alive(int(pid_text))


def remove_stale_temporaries(final_path) -> list[Path]:
    """Remove ``.<name>.<pid>.*.tmp`` and ``.<name>.old-<pid>`` siblings whose writer has died."""
    final_path = Path(final_path)
    removed = []
    parent = final_path.parent
    if not parent.is_dir():
        return removed
    now = time.time()
    for prefix in (f".{final_path.name}.", f".{final_path.name}.old-"):
        for candidate in parent.glob(prefix + "*"):
            if candidate.name.startswith(f".{final_path.name}.old-") and prefix == f".{final_path.name}.":
                continue  # handled by the old- prefix
            rest = candidate.name[len(prefix):]
            if rest.split(".", 1)[0].isdigit():
                if not _stale_pid(candidate.name, prefix):
                    continue
            else:  # written before temporaries carried their writer's pid: stale once old enough
                try:
                    if not candidate.name.endswith(".tmp") or now - candidate.stat().st_mtime < LEGACY_STALE_SECONDS:
                        continue
                except OSError:
                    continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    candidate.unlink()
            removed.append(candidate)
    return removed


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    from common.errors import write_error

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)  # a killed writer's half-written temporary of this file (found by benchmarks/chaos.py)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=str(path.parent))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_object(path, error_cls, hint: str = ""):
    """The JSON object in ``path``; ``error_cls("PATH: ...")`` for a file that cannot be read, is not UTF-8, is
    not JSON (also a number of 5000 digits or nesting deeper than the parser recurses) or whose top level is not
    an object. ``hint`` (e.g. what to do about it) ends every message."""
    suffix = f"; {hint}" if hint else ""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error_cls(f"{path}: cannot be read ({exc.strerror or exc}){suffix}") from None
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error_cls(f"{path}: not UTF-8 text{suffix}") from None
    except (ValueError, RecursionError) as exc:
        raise error_cls(f"{path}: not valid JSON ({str(exc)[:160]}){suffix}") from None
    if not isinstance(value, dict):
        raise error_cls(f"{path}: must hold a JSON object, got {type(value).__name__}{suffix}")
    return value


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


# --- outputs of the project ------------------------------------------------------------------------------

def output_kind(path, legacy: dict | None = None) -> str | None:
    """The kind recorded in a directory's output marker (None: not an output of this project).

    ``legacy`` maps a kind to file names whose joint presence marks an output written before markers
    existed (e.g. a SavedModel export: ``saved_model.pb`` + ``fer_export.json``).
    """
    path = Path(path)
    marker = path / OUTPUT_MARKER
    if marker.is_file():
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            if isinstance(record, dict) and record.get("written_by") == WRITER:
                return str(record.get("kind"))
        except (OSError, ValueError, RecursionError):
            return None
    for kind, names in (legacy or {}).items():
        if all((path / name).exists() for name in names):
            return kind
    return None


def _is_empty_dir(path: Path, ignore=()) -> bool:
    return path.is_dir() and not any(p.name not in ignore for p in path.iterdir())


def check_output_dir(path, kind: str, force: bool = False, flag: str = "--out", legacy: dict | None = None) -> None:
    """Refuse an output directory the command may not replace (see the module docstring)."""
    from common.errors import ConfigError

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise ConfigError(f"{flag} {path} exists and is not a directory; choose another {flag} (nothing was changed)")
    if _is_empty_dir(path):
        return
    found = output_kind(path, legacy)
    if found is None:
        raise ConfigError(f"{flag} {path} is a non-empty folder this toolkit did not write; choose another {flag} "
                          "(nothing was changed)")
    if found != kind:
        raise ConfigError(f"{flag} {path} holds a {found} written by this toolkit, not a {kind}; choose another "
                          f"{flag} (nothing was changed)")
    if not force:
        raise ConfigError(f"{flag} {path} already holds a {kind}; pass --force to replace it")


def is_own_file(path) -> bool:
    """A file this project wrote: a JSON report with ``"written_by": "fer-ldl"``, or a PNG whose
    ``Software`` text chunk says so (both are what :func:`stamp` / ``tools.figures.save_png`` write)."""
    path = Path(path)
    try:
        head = path.read_bytes()[:1 << 16]
    except OSError:
        return False
    if head.startswith(b"\x89PNG"):
        return b"Software\x00" + WRITER.encode() in head
    if path.suffix.lower() == ".json":
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return False
        if isinstance(record, dict) and str(record.get("written_by", "")).startswith(WRITER):
            return True
    return _listed_as_own(path)


def _listed_as_own(path: Path) -> bool:
    """Whether the folder's :data:`OWN_FILES_MANIFEST` lists the file at its current size."""
    try:
        listed = json.loads((path.parent / OWN_FILES_MANIFEST).read_text(encoding="utf-8")).get("files", {})
        return isinstance(listed, dict) and listed.get(path.name) == path.stat().st_size
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def record_own_files(paths) -> None:
    """List files this project wrote that cannot carry a mark themselves (a CSV, a video) in their folder's
    :data:`OWN_FILES_MANIFEST`, with their size, so a later run may replace them and a user's file of the
    same name (or one the user edited since) is still refused by :func:`check_output_file`."""
    by_folder: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        by_folder.setdefault(path.parent, []).append(path)
    for folder, files in by_folder.items():
        manifest = folder / OWN_FILES_MANIFEST
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("files", {})
            listed = listed if isinstance(listed, dict) else {}
        except (OSError, ValueError, RecursionError, AttributeError):
            listed = {}
        listed.update({f.name: f.stat().st_size for f in files})
        atomic_write_json(manifest, stamp({"files": listed}, "record_own_files"))


def check_output_file(path, force: bool = False, flag: str = "--out") -> None:
    """Refuse to overwrite a file the project did not write (unless ``--force``) or to write over a folder."""
    from common.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name (nothing was changed)")
    if path.exists() and not force and not is_own_file(path):
        raise ConfigError(f"{flag} {path} already exists and was not written by this toolkit; choose another "
                          "file or pass --force to overwrite it")


def stamp(record: dict, command: str) -> dict:
    """A JSON report marked as this project's output (so a later run may replace it)."""
    return {**record, "written_by": f"{WRITER} {command}"}


@contextlib.contextmanager
def atomic_directory(final_path, kind: str, legacy: dict | None = None):
    """Yield a temporary folder beside ``final_path``; on success it replaces ``final_path``.

    ``final_path`` must not exist, be empty, or be an output of the project (marker or ``legacy``
    files); anything else is refused before any work starts. The new directory gets the marker of
    ``kind``. On an exception the temporary folder is removed and ``final_path`` is left as it was; an
    existing ``final_path`` is moved aside first and deleted only after the new one is in place, so at
    every instant either the old or the new complete directory exists under the final name (or, for
    one rename's duration, the aside copy).
    """
    from common.errors import WriteError, write_error

    final_path = Path(final_path)
    remove_stale_temporaries(final_path)
    if final_path.exists() or final_path.is_symlink():
        if not final_path.is_dir() or final_path.is_symlink():
            raise WriteError(f"{final_path} exists and is not a directory; not replaced")
        if not _is_empty_dir(final_path) and output_kind(final_path, legacy) is None:
            raise WriteError(f"{final_path} is a non-empty folder this toolkit did not write; not replaced")
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.{os.getpid()}.", suffix=".tmp",
                                    dir=str(final_path.parent)))
    except OSError as exc:
        raise write_error(final_path, exc) from None
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": WRITER, "kind": kind}))
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(final_path, exc) from None
        raise
    aside = None
    try:
        if final_path.exists():
            aside = final_path.with_name(f".{final_path.name}.old-{os.getpid()}")
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(final_path, aside)
        os.replace(tmp, final_path)
    except BaseException as exc:
        # A failed rename (disk full, interrupt) must not lose the old directory or leave the temporary one.
        if aside is not None and aside.exists() and not final_path.exists():
            os.replace(aside, final_path)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(final_path, exc) from None
        raise
    _fsync_dir(final_path.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
