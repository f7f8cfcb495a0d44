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
import hashlib
import json
import shutil
import warnings
from pathlib import Path

from common.errors import CheckpointError
from common.io import atomic_directory, atomic_write_json, atomic_write_text

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"


def model_signature(model) -> dict:
    """What a checkpoint must match to load into ``model``: method, sizes and the shapes of all its state.

    Keras' ``load_weights`` silently ignores variables of the file that the model lacks (e.g. another
    method's heads and per-sample state), so every checkpoint records this and :meth:`load_into`
    compares it first. Shapes only (not names: Keras numbers layer names per process).
    """
    shapes = json.dumps([[int(d) for d in v.shape] for v in model.weights])
    return {"method": model.method_name, "num_classes": model.num_classes,
            "num_train_samples": model.num_train_samples,
            "num_variables": len(model.weights),
            "variables_sha1": hashlib.sha1(shapes.encode()).hexdigest()[:16]}


def _describe(sig: dict) -> str:
    return (f"method '{sig.get('method')}', {sig.get('num_classes')} classes, {sig.get('num_train_samples')} "
            f"training samples, {sig.get('num_variables')} variables")


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
        state = {**state, "model": model_signature(model)}
        try:
            with atomic_directory(final) as tmp:
                model.save_weights(str(tmp / WEIGHTS_FILE))
                atomic_write_json(tmp / STATE_FILE, state)
            atomic_write_text(self.dir / "latest", name + "\n")
        except OSError as exc:
            pointer = self.dir / "latest"
            if not pointer.is_file() or pointer.read_text().strip() != name:
                shutil.rmtree(final, ignore_errors=True)  # unreferenced: give the space back
            # h5py reports a full disk as a plain OSError whose errno may be unset; its message has errno 28.
            if exc.errno == errno.ENOSPC or "No space left" in str(exc) or "errno = 28" in str(exc):
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
        # Temporary files of a save that a kill interrupted (this run is the folder's only writer).
        for stale in (*self.dir.glob(".step-*"), *self.dir.glob(".latest.*")):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)

    @staticmethod
    def read_state(path) -> dict:
        try:
            return json.loads((Path(path) / STATE_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint state ({exc})") from None

    @staticmethod
    def load_into(model, path, require_optimizer: bool = False) -> None:
        """Load a checkpoint's weights (and optimizer state if the model is compiled and built).

        ``require_optimizer`` (resume): refuse a file whose optimizer state does not fit, which Keras
        would otherwise skip with a warning (the resumed run would silently restart its moments).
        """
        weights = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: checkpoint weights not found")
        state_file = weights.parent / STATE_FILE
        saved = None
        if state_file.is_file():
            try:
                saved = json.loads(state_file.read_text()).get("model")
            except (OSError, json.JSONDecodeError, AttributeError):
                saved = None
        if saved:
            mine = model_signature(model)
            if saved != mine:
                raise CheckpointError(
                    f"{weights} does not fit this model: it was written by a model with {_describe(saved)}; "
                    f"this run's model has {_describe(mine)}. Was it written by another method, class count, "
                    "training-set size or method setting?")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)  # Keras' "Skipping variable loading" must not be deduplicated
                model.load_weights(str(weights))
        except Exception as exc:  # shape or structure mismatch: another method / class count / dataset size
            raise CheckpointError(
                f"{weights} does not fit this model ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
                "Was it written by another method, class count or training-set size?") from None
        skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
        if skipped and require_optimizer:
            raise CheckpointError(f"{weights}: its optimizer state does not fit this run ({skipped[0][:200]}); "
                                  "was it written with another optimizer, precision or model?")
        for w in caught:  # pass the others on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
