"""Atomic, complete checkpoints of a run.

A checkpoint is a folder ``ckpt/step-<global step>/`` holding ``model.weights.h5`` (every variable of
the model — backbone, heads, per-sample λ, class centres, banks, queues — and the optimizer's state)
and ``state.json`` (global step, epoch, step within the epoch). It is written in a temporary folder
and renamed into place, and only then does ``ckpt/latest`` (a one-line file, itself replaced
atomically) point at it, so a crash at any instant leaves the previous checkpoint intact and
``latest`` naming a complete one.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

from common.errors import CheckpointError
from common.io import atomic_directory, atomic_write_json, atomic_write_text

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"


class CheckpointManager:
    def __init__(self, run_dir, keep: int = 2):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "ckpt"
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.dir / "latest"
        if not pointer.is_file():
            return None
        path = self.dir / pointer.read_text().strip()
        if not (path / WEIGHTS_FILE).is_file() or not (path / STATE_FILE).is_file():
            raise CheckpointError(f"{pointer} names {path}, which is incomplete or missing")
        return path

    def save(self, model, state: dict) -> Path:
        name = f"step-{int(state['global_step']):09d}"
        final = self.dir / name
        try:
            with atomic_directory(final) as tmp:
                model.save_weights(str(tmp / WEIGHTS_FILE))
                atomic_write_json(tmp / STATE_FILE, state)
            atomic_write_text(self.dir / "latest", name + "\n")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                last = self.latest()
                raise CheckpointError(
                    f"disk full while writing checkpoint {final}; the previous checkpoint "
                    f"{last if last else '(none)'} is intact. Free space and rerun with --resume") from None
            raise CheckpointError(f"cannot write checkpoint {final}: {exc}") from None
        self._prune(keep_name=name)
        return final

    def _prune(self, keep_name: str) -> None:
        steps = sorted(p for p in self.dir.glob("step-*") if p.is_dir())
        for old in steps[:-self.keep]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def read_state(path) -> dict:
        try:
            return json.loads((Path(path) / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint state ({exc})") from None

    @staticmethod
    def load_into(model, path) -> None:
        """Load a checkpoint's weights (and optimizer state if the model is compiled and built)."""
        weights = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: checkpoint weights not found")
        try:
            model.load_weights(str(weights))
        except Exception as exc:  # shape or structure mismatch: another method / class count / dataset size
            raise CheckpointError(
                f"{weights} does not fit this model ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
                "Was it written by another method, class count or training-set size?") from None
