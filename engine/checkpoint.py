"""Atomic, complete checkpoints of a run.

A checkpoint is a folder ``ckpt/step-<global step>/`` holding ``model.weights.h5`` (every variable of
the model — backbone, heads, per-sample λ, class centres, banks, queues — and the optimizer's state)
and ``state.json`` (global step, epoch, step within the epoch). It is written in a temporary folder
and renamed into place, and only then does ``ckpt/latest`` (a one-line file, itself replaced
atomically) point at it, so a crash at any instant leaves the previous checkpoint intact and
``latest`` naming a complete one. The weights are serialised in memory first and written with the
project's atomic writer, so a full disk (or a file-size limit) ends in a clean error naming the file
while the previous checkpoint stays loadable; a checkpoint damaged on disk afterwards (truncated, a
bad copy) is recognised as such, and ``--resume`` falls back to the newest intact one.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
from pathlib import Path

from common.errors import CheckpointError, WriteError
from common.io import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text

WEIGHTS_FILE = "model.weights.h5"
STATE_FILE = "state.json"
# Files that mark a checkpoint written before output markers existed.
CHECKPOINT_LEGACY = {"checkpoint": (WEIGHTS_FILE, STATE_FILE)}


class CheckpointDamaged(CheckpointError):
    """A checkpoint's files are unreadable (truncated, corrupt), as opposed to written by another model."""


def weights_bytes(model) -> bytes:
    """The model's ``.weights.h5`` (every variable and the optimizer's state) serialised in memory.

    Keras' own store writes to a ``BytesIO`` (``keras.src.saving.saving_lib.H5IOStore``); the bytes are
    then written with :func:`common.io.atomic_write_bytes`, whose errors name the file. (Writing with
    h5py straight to a full disk ends in h5py tracebacks and can crash the process.)
    """
    try:
        from keras.src.saving import saving_lib

        buffer = io.BytesIO()
        store = saving_lib.H5IOStore(buffer, mode="w")
        saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
        store.close()
        return buffer.getvalue()
    except (ImportError, AttributeError, TypeError):  # a Keras without these internals: through a file
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / WEIGHTS_FILE
            model.save_weights(str(target))
            return target.read_bytes()


def check_weights_file(path) -> str | None:
    """Why an ``.h5`` weights file cannot be read (truncated, not HDF5, an unreadable dataset), or None."""
    import h5py

    from common.io import EXPANSION_SLACK, MAX_EXPANSION

    try:
        with h5py.File(path, "r") as handle:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    # Refused before reading: a chunked dataset whose chunks were never written reads as
                    # gigabytes of fill value from a file of a few kilobytes (common/io.py MAX_EXPANSION).
                    declared, stored = int(obj.size) * obj.dtype.itemsize, int(obj.id.get_storage_size())
                    if declared > MAX_EXPANSION * stored + EXPANSION_SLACK:
                        raise ValueError(f"dataset {name} declares {declared} bytes but stores {stored}")
                    obj[()]
            handle.visititems(visit)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError... for damage
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'unreadable'}"
    return None


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
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointDamaged(f"{pointer}: unreadable ({exc}); {self._intact_hint()}") from None
        path = self.dir / name
        if not name.startswith("step-") or not (path / WEIGHTS_FILE).is_file() or not (path / STATE_FILE).is_file():
            raise CheckpointDamaged(f"{pointer} names {path}, which is incomplete or missing; {self._intact_hint()}")
        return path

    def checkpoints(self) -> list[Path]:
        """Every complete-looking checkpoint folder, newest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.glob("step-*") if p.is_dir() and (p / WEIGHTS_FILE).is_file()
                 and (p / STATE_FILE).is_file()]
        return sorted(found, reverse=True)

    def newest_intact(self, exclude=()) -> Path | None:
        """The newest checkpoint whose state and weights files read back (None if there is none)."""
        for path in self.checkpoints():
            if path in exclude:
                continue
            try:
                self.read_state(path)
            except CheckpointError:
                continue
            if check_weights_file(path / WEIGHTS_FILE) is None:
                return path
        return None

    def _intact_hint(self, exclude=()) -> str:
        intact = self.newest_intact(exclude)
        return (f"the newest intact checkpoint is {intact} (--resume falls back to it)" if intact
                else "no intact checkpoint is left; start the run again with --force")

    def save(self, model, state: dict) -> Path:
        name = f"step-{int(state['global_step']):09d}"
        final = self.dir / name
        state = {**state, "model": model_signature(model)}
        data = weights_bytes(model)
        try:
            with atomic_directory(final, "checkpoint", legacy=CHECKPOINT_LEGACY) as tmp:
                atomic_write_bytes(tmp / WEIGHTS_FILE, data)
                atomic_write_json(tmp / STATE_FILE, state)
            atomic_write_text(self.dir / "latest", name + "\n")
        except WriteError as exc:
            pointer = self.dir / "latest"
            try:
                referenced = pointer.is_file() and pointer.read_text().strip() == name
            except OSError:
                referenced = False
            if not referenced:
                shutil.rmtree(final, ignore_errors=True)  # unreferenced: give the space back
            last = self.newest_intact()
            raise CheckpointError(f"{exc} — while writing checkpoint {final}; the previous checkpoint "
                                  f"{last if last else '(none yet)'} is intact. Free space and rerun with --resume") from None
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
        state_file = Path(path) / STATE_FILE
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: also 5000-digit numbers
            raise CheckpointDamaged(f"{state_file}: unreadable checkpoint state ({exc})") from None
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int) or state["global_step"] < 0:
            raise CheckpointDamaged(f"{state_file}: not a checkpoint state (no non-negative integer 'global_step')")
        return state

    @staticmethod
    def load_into(model, path, require_optimizer: bool = False) -> None:
        """Load a checkpoint's weights (and optimizer state if the model is compiled and built).

        ``require_optimizer`` (resume): refuse a file whose optimizer state does not fit, which Keras
        would otherwise skip with a warning (the resumed run would silently restart its moments). A file
        that does not read back is :class:`CheckpointDamaged`; one that reads but was written by another
        model is refused naming both models.
        """
        weights = Path(path) / WEIGHTS_FILE if Path(path).is_dir() else Path(path)
        if not weights.is_file():
            raise CheckpointError(f"{weights}: checkpoint weights not found")
        damage = check_weights_file(weights)
        if damage is not None:
            raise CheckpointDamaged(f"{weights} is damaged ({damage})")
        state_file = weights.parent / STATE_FILE
        saved = None
        if state_file.is_file():
            try:
                saved = json.loads(state_file.read_text()).get("model")
            except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
                saved = None
        if saved is not None and not isinstance(saved, dict):
            raise CheckpointDamaged(f"{state_file}: 'model' must be an object (the signature of the model that wrote "
                                    f"the checkpoint), got {type(saved).__name__}")
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


def resume_latest(manager: CheckpointManager, model, log=print) -> int:
    """Load the newest intact checkpoint into ``model`` (falling back past damaged ones, saying so); its
    global step, 0 when there is none yet."""
    try:
        path = manager.latest()
    except CheckpointDamaged as exc:
        path = manager.newest_intact()
        if path is None:
            raise CheckpointError(f"{exc}") from None
        log(f"warning: {exc}; resuming from {path}")
    tried = []
    while path is not None:
        try:
            manager.load_into(model, path, require_optimizer=True)
            step = int(manager.read_state(path)["global_step"])
            # state.json, the folder name and the optimizer's own step count in the weights must agree: a
            # damaged state.json would otherwise resume at a step the weights never reached (found by
            # benchmarks/fuzz.py).
            iterations = int(model.optimizer.iterations.numpy())
            if step != iterations or path.name != f"step-{step:09d}":
                raise CheckpointDamaged(f"{path / 'state.json'}: global_step {step} does not match the checkpoint "
                                        f"(folder {path.name}, {iterations} optimizer steps in its weights)")
            log(f"resumed from {path} (global step {step})")
            return step
        except CheckpointDamaged as exc:
            tried.append(path)
            path = manager.newest_intact(exclude=tried)
            if path is None:
                raise CheckpointError(f"{exc}; no intact checkpoint is left (start over with --force)") from None
            log(f"warning: {exc}; falling back to the newest intact checkpoint {path}")
    log("no checkpoint yet; starting from scratch")
    return 0
