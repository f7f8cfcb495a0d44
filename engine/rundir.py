"""The run directory: one owner at a time, never another run's or a user's files clobbered.

* :class:`RunLock` — an exclusive ``flock`` on the run directory for as long as a process trains the
  run; a second ``train.py`` on the same directory (``--resume`` or ``--force``
  alike) is refused naming the holder. The operating system drops the lock when the owner dies, so a
  killed run never leaves the directory locked.
* :func:`prepare_run_dir` — refuse to train into a non-empty folder that is not a run directory (even
  with ``--force``), refuse to reuse another run's directory without ``--resume`` / ``--force``, check
  that a resumed run's configuration matches, and with ``--force`` remove only the files a run writes.
* :func:`read_run_record` — a run's ``config.json``, validated (read without TensorFlow, so a command can
  refuse a damaged run before its slow start-up).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from common.errors import CheckpointError, ConfigError
from common.io import atomic_write_json, read_json_object, remove_stale_temporaries
from engine.config import compare_configs

LOCK_FILE = ".lock"
# What a run writes into its directory (all of it is removed by --force, nothing else is).
RUN_ARTEFACTS = ("config.json", "ckpt", "log.csv", "tb", "uncertainty", "metrics.json", "saved_model", "figures",
                 "eval.json", "benchmark_cell.json", "benchmark_error.txt", "MODEL_CARD.md", "exports",
                 "mlflow.json")


class RunLock:
    """An exclusive ``flock`` on the run directory itself for as long as a process trains the run.

    Nothing is written to take it (the holder's pid is read back from ``/proc/locks``); under
    ``--strategy multiworker`` every worker trains the same run, and each locks its own
    ``.lock-worker<i>`` file instead.
    """

    def __init__(self, run_dir, worker: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir if worker is None else self.run_dir / f"{LOCK_FILE}-worker{worker}"
        self._fd = None

    def _holder(self, fd) -> str:
        try:
            inode = os.fstat(fd).st_ino
            for line in Path("/proc/locks").read_text().splitlines():
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return fields[4]
        except (OSError, ValueError):
            pass
        return "unknown"

    def acquire(self) -> "RunLock":
        import fcntl

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY) if self.path.is_dir() else os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot use run directory {self.run_dir} ({exc.strerror or exc}); "
                              "choose another --run") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise ConfigError(f"run directory {self.run_dir} is in use by another process (pid {holder}); wait for it "
                              "to finish or choose another --run (--force does not override a live run)") from None
        self._fd = fd
        return self

    def refuse_if_held(self) -> None:
        """Raise :meth:`acquire`'s error now if another process holds the lock; create nothing (a directory that
        does not exist yet holds no lock, a file in its place is refused later by :func:`check_run_dir`). A check
        before the slow start-up, not a reservation: the run takes the lock itself later."""
        if self.run_dir.is_dir() and self.path.exists():
            self.acquire()
            self.release()

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _entries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if not p.name.startswith(LOCK_FILE)] if run_dir.is_dir() else []


def check_run_dir(run_dir: Path) -> None:
    """Before taking the lock: refuse a path that is a file, or a user's non-empty folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output directory {run_dir} exists but is not a directory; choose another --run")
    if run_dir.is_dir() and not (run_dir / "config.json").is_file():
        # A run killed while writing its first file leaves only that file's temporary (its dead writer's pid in
        # the name): removed, so the run can be started again (found by benchmarks/chaos.py).
        remove_stale_temporaries(run_dir / "config.json")
    if run_dir.is_dir() and _entries(run_dir) and not (run_dir / "config.json").is_file():
        raise ConfigError(f"output directory {run_dir} is not empty and is not a run directory; choose another --run "
                          "(nothing was changed)")


def clear_run_artefacts(run_dir: Path) -> None:
    """``--force``: remove what a run writes (and only that) from an earlier run's directory."""
    for name in RUN_ARTEFACTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _extension(old: dict, record: dict, diffs: list[str]) -> int | None:
    """The old epoch count when the only difference is a larger ``run.epochs`` (an extension), else None."""
    try:
        old_epochs, new_epochs = int(old["run"]["epochs"]), int(record["run"]["epochs"])
    except (KeyError, TypeError, ValueError):
        return None
    rest = [d for d in diffs if not d.startswith("run.epochs:")]
    return old_epochs if new_epochs > old_epochs and not rest and len(rest) < len(diffs) else None


def prepare_run_dir(run_dir: Path, record: dict, resume: bool, force: bool, extend: bool = False) -> None:
    """Refuse to clobber another run; check a resumed run's config matches (call with the lock held).

    ``extend`` (with ``resume``): a larger ``run.epochs`` is accepted and recorded in config.json
    (``extensions``: from → to); every other difference is still refused.
    """
    if extend and not resume:
        raise ConfigError("--extend continues an existing run: use it with --resume")
    check_run_dir(run_dir)
    config_path = run_dir / "config.json"
    if _entries(run_dir):
        try:
            old = json.loads(config_path.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
            for section in ("run", "method_config", "data"):
                if not isinstance(old.get(section), dict):
                    raise ValueError(f"section '{section}' is missing or not an object")
        except (UnicodeDecodeError, ValueError, RecursionError, OSError) as exc:
            if not force or resume:
                raise CheckpointError(f"{config_path} is corrupt ({exc}); pass --force to start this run over") from None
            old = {}
        diffs = compare_configs(old, record) if old else ["config.json unreadable"]
        if resume:
            extended_from = _extension(old, record, diffs) if extend else None
            if extended_from is not None:
                history = [*old.get("extensions", []), {"from_epochs": extended_from,
                                                       "to_epochs": int(record["run"]["epochs"])}]
                atomic_write_json(config_path, {**old, "run": {**old["run"], "epochs": record["run"]["epochs"]},
                                                "extensions": history})
                return
            if diffs:
                hint = ("; to continue this run to more epochs pass --extend" if any(
                    d.startswith("run.epochs:") for d in diffs) and not extend else "")
                raise ConfigError(f"--resume refused: the configuration differs from the run in {run_dir}: "
                                  + "; ".join(diffs[:6]) + (" …" if len(diffs) > 6 else "") + hint)
            if not os.access(run_dir, os.W_OK):
                raise ConfigError(f"output directory {run_dir} is not writable; cannot resume into it")
            return
        if not force:
            what = "a different run" if diffs else "a run with the same configuration"
            raise ConfigError(f"output directory {run_dir} already holds {what}; pass --resume to continue it "
                              "or --force to start over")
        clear_run_artefacts(run_dir)
    elif resume:
        raise CheckpointError(f"--resume: {run_dir} holds no run to resume")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {run_dir} ({exc.strerror or exc}); choose another --run") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"output directory {run_dir} is not writable; choose another --run")
    atomic_write_json(config_path, record)  # a WriteError names the file (read-only mount, quota, disk full)


def read_run_record(run_dir) -> dict:
    """A run's ``config.json``, validated (a hand-edited or damaged file is a clear error)."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json)")
    record = read_json_object(config_path, CheckpointError)
    for section in ("run", "method_config", "data"):
        if not isinstance(record.get(section), dict):
            raise CheckpointError(f"{config_path}: section '{section}' is missing or not an object")
    return record
