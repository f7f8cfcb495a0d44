"""Plumbing shared by the synthetic generators: worker processes, a progress line, output folders.

Both the benchmark (:mod:`data.synthetic.dataset`) and the identity set (:mod:`data.synthetic.identities`)
render independent chunks of images, possibly in several processes, into a temporary folder that becomes
the prepared directory only once complete: either an explicit ``--out`` folder (:func:`write_fresh`) or a
cache folder keyed by the config hash (:func:`ensure_cached`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import cv2

from common.errors import DataError, write_error
from common.io import OUTPUT_MARKER, atomic_directory, check_output_dir, remove_stale_temporaries


def resolve_workers(requested: int, total: int) -> int:
    """Processes to use for ``total`` images: ``requested`` if > 0, else 1 for tiny sets, else min(2, cpus)."""
    if requested > 0:
        return requested
    if total < 600:  # starting processes costs more than it saves on tiny sets
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


def chunk_size(total: int, workers: int) -> int:
    """Images per job: about 8 jobs per worker (load balance), 16..128 images each (overhead vs memory)."""
    return max(16, min(128, -(-total // (8 * workers))))


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would only contend


def run_jobs(worker: Callable, jobs: Sequence, workers: int, on_result: Callable) -> None:
    """Call ``on_result(job, worker(job))`` for every job, in job order, in ``workers`` processes.

    ``worker`` must be a module-level function (it is pickled by name). With one worker everything runs
    in this process, so tests can patch what the worker calls.
    """
    if workers == 1:
        for job in jobs:
            on_result(job, worker(job))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may have TensorFlow (and its threads) loaded already. An executor,
    # not multiprocessing.Pool: a worker that dies raises BrokenProcessPool instead of hanging.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        for job, out in zip(jobs, pool.map(worker, jobs)):
            on_result(job, out)


def write_fresh(out_dir, write: Callable[[Path], None], force: bool, kind: str, marker: str) -> Path:
    """Run ``write(tmp)`` into a temporary folder that then replaces ``out_dir`` atomically.

    ``out_dir`` may be replaced only when it is empty or an earlier output of the same ``kind`` (output
    marker, or ``marker`` + the tables of an output written before markers existed), and then only with
    ``force``; a user's own folder is never replaced. On failure ``out_dir`` is left as it was.
    """
    out = Path(out_dir)
    legacy = {kind: (marker, "train.csv", "test.csv")}
    check_output_dir(out, kind, force, flag="--out", legacy=legacy)
    with atomic_directory(out, kind, legacy=legacy) as tmp:
        write(tmp)
    return out


def is_complete(path: Path, marker: str) -> bool:
    """A finished prepared directory: the marker file (written last) and both tables exist."""
    return (path / marker).is_file() and (path / "train.csv").is_file() and (path / "test.csv").is_file()


def check_hash(path: Path, marker: str, want: str, what: str) -> None:
    """Raise :class:`DataError` unless ``path/marker`` records config hash ``want``."""
    try:
        meta = json.loads((path / marker).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path / marker} is unreadable ({exc}); delete {path} to regenerate it") from None
    if meta.get("config_hash") != want:
        raise DataError(f"{path} holds a {what} with config hash {meta.get('config_hash')!r}, "
                        f"not {want!r} (different settings or generator version); delete it or use another folder")


def ensure_cached(target: Path, write: Callable[[Path], None], marker: str, want: str, what: str) -> Path:
    """Return ``target`` once it holds a complete ``what`` with hash ``want``, running ``write`` if needed.

    Idempotent and safe when several processes race: each renders into its own temporary folder and
    renames it into place; a rename that finds the target already populated discards its own copy.
    """
    if is_complete(target, marker):
        check_hash(target, marker, want, what)
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} exists but is not a complete {what} (no {marker}); "
                        "delete it or choose another folder")
    remove_stale_temporaries(target)  # left by an interrupted generation
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=str(target.parent)))
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        write(tmp)
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"written_by": "fer-ldl", "kind": what}))
        try:
            os.rename(tmp, target)  # atomic; replaces only an empty folder
        except OSError:
            if not is_complete(target, marker):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race: use its copy
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise write_error(target, exc, "free space and rerun") from None
        raise
    check_hash(target, marker, want, what)
    return target
