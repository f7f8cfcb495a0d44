"""Keras callbacks shared by every method: step checkpoints, the non-finite guard, epoch logs."""

from __future__ import annotations

import math
import time

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

    def _state(self):
        step = int(self.model.optimizer.iterations.numpy())
        return {"global_step": step, "epoch": step // self.steps_per_epoch,
                "step_in_epoch": step % self.steps_per_epoch, "time": time.time()}

    def save_now(self):
        state = self._state()
        if self.last_saved == state["global_step"]:
            return
        self.manager.save(self.model, state)
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
    """Adds ``epoch_seconds`` to the epoch logs (so the CSV log records throughput)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start
