"""Keras callbacks shared by every method: step checkpoints, the non-finite guard, epoch logs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from common.errors import TrainingError
from engine.checkpoint import CheckpointManager


class RunCheckpoint(keras.callbacks.Callback):
    """Save an atomic checkpoint every ``every_steps`` steps and at every epoch end."""

    def __init__(self, manager: CheckpointManager, steps_per_epoch: int, every_steps: int = 0):
        super().__init__()
        self.manager = manager
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.last_saved = None
        self.save_seconds: list[float] = []  # wall time of each checkpoint write
        self.saved_bytes = 0  # size of the newest checkpoint

    def _state(self):
        step = int(self.model.optimizer.iterations.numpy())
        return {"global_step": step, "epoch": step // self.steps_per_epoch,
                "step_in_epoch": step % self.steps_per_epoch, "time": time.time()}

    def save_now(self):
        state = self._state()
        if self.last_saved == state["global_step"]:
            return
        start = time.perf_counter()
        path = self.manager.save(self.model, state)
        self.save_seconds.append(time.perf_counter() - start)
        self.saved_bytes = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        self.last_saved = state["global_step"]

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps:
            step = int(self.model.optimizer.iterations.numpy())
            if step % self.every_steps == 0:
                self.save_now()

    def on_epoch_end(self, epoch, logs=None):
        self.save_now()


class NonFiniteGuard(keras.callbacks.Callback):
    """Stop on a non-finite loss, naming the step and the last good checkpoint (left intact)."""

    def __init__(self, manager: CheckpointManager):
        super().__init__()
        self.manager = manager

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(np.asarray(loss))
        if not math.isfinite(value):
            step = int(self.model.optimizer.iterations.numpy())
            last = self.manager.latest()
            raise TrainingError(
                f"non-finite loss ({value}) at global step {step}; training stopped. "
                f"The last good checkpoint is {last if last else '(none yet)'} and was not touched; "
                "lower the learning rate or check the data, then rerun with --resume")


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` and ``step_seconds`` (the train steps alone, data fetch included) to the epoch
    logs, so the CSV log records throughput and the per-epoch overhead outside the model step."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._steps = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += time.perf_counter() - self._step_start

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start
            logs["step_seconds"] = self._steps


class EpochLog(keras.callbacks.Callback):
    """``RUN/log.csv``: one row per epoch (``epoch`` then the sorted log keys of the first epoch logged).

    Like Keras' CSVLogger, with the project's error handling (a full disk is ``error: RUN/log.csv: disk
    full``) and exact resume: rows of epochs at or after the epoch a run resumes at are dropped first, so
    a run resumed from an earlier checkpoint never lists an epoch twice.
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.keys = None

    def _rows(self) -> list[list[str]]:
        import csv

        if not self.path.is_file():
            return []
        try:
            with open(self.path, newline="", encoding="utf-8") as handle:
                return [row for row in csv.reader(handle) if row]
        except (OSError, UnicodeDecodeError, csv.Error):
            return []

    def _write(self, rows) -> None:
        import csv
        import io

        from common.io import atomic_write_text

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def start(self, initial_epoch: int) -> None:
        """Keep the header and the rows of epochs before ``initial_epoch`` (0-based)."""
        rows = self._rows()
        if not rows or rows[0][:1] != ["epoch"]:
            self.keys = None
            return
        self.keys = rows[0][1:]
        kept = [row for row in rows[1:] if row[0].isdigit() and int(row[0]) < initial_epoch]
        if len(kept) != len(rows) - 1:
            self._write([rows[0], *kept])

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.keys is None:
            self.keys = sorted(logs)
            rows = [["epoch", *self.keys]]
        else:
            rows = self._rows() or [["epoch", *self.keys]]

        def cell(key):
            value = logs.get(key, "NA")
            value = value.item() if hasattr(value, "item") else value
            return f"{value}" if not isinstance(value, float) else repr(value)

        self._write([*rows, [str(epoch), *[cell(k) for k in self.keys]]])
