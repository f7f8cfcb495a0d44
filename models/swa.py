"""Stochastic weight averaging (Izmailov et al., UAI 2018) whose running average is checkpointed model state.

SWA keeps the arithmetic mean of the weights at several epoch ends (from epoch ``start_epoch`` on) and,
when training is over, replaces the weights with that mean and recomputes the BatchNorm statistics of
the averaged network with one pass over the training data (the averaged weights never saw the running
statistics that were collected along the trajectory).

Pieces:

* :class:`SWAState` — the running average as non-trainable model variables (one copy per trainable
  variable, plus the snapshot count, the global step of the newest snapshot and an "applied" flag).
  It must be created in the model's ``__init__`` (Keras locks a model's state once it is built), after
  every trainable sub-layer has been built, so the checkpoint carries it and a resume is exact.
* :class:`SWACallback` — takes a snapshot at each epoch end from ``start_epoch`` on and calls
  ``finalize`` when the last training step is done.
* :func:`update_batch_norm` — the "bn update" pass: cumulative-average BatchNorm statistics.

Exact resume: the run's checkpoint callback may save an epoch-end checkpoint *before* this callback has
added that epoch's snapshot (Keras calls callbacks in list order). The state records the global step
of its newest snapshot, so on ``on_train_begin`` a resumed run whose loaded weights are an epoch end
not yet averaged adds that snapshot first: the weights are exactly the ones the uninterrupted run
averaged, so the average is bit-identical.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf


def swa_start_epoch(fraction: float, total_epochs: int) -> int:
    """0-based first epoch whose end weights are averaged: ``floor(fraction·E)``, kept in [0, E−1]."""
    return min(max(int(math.floor(float(fraction) * total_epochs)), 0), max(total_epochs - 1, 0))


class SWAState:
    """Running mean of ``model.trainable_variables``, held in ``model.add_state`` variables.

    Snapshot n (1-based) updates ``avg ← avg + (w − avg)/n``, the running form of the arithmetic mean.
    """

    def __init__(self, model, prefix: str = "swa"):
        self.targets = list(model.trainable_variables)
        self.averages = [model.add_state(f"{prefix}_average_{i}", v.shape) for i, v in enumerate(self.targets)]
        self.count = model.add_state(f"{prefix}_count", ())  # snapshots averaged so far
        # Global step of the newest snapshot (−1: none). float32 is exact for steps below 2**24.
        self.last_step = model.add_state(f"{prefix}_last_step", (), initializer=keras.initializers.Constant(-1.0))
        self.applied = model.add_state(f"{prefix}_applied", ())  # 1 once the mean replaced the weights

    def snapshot(self, step: int) -> None:
        n = float(self.count.numpy()) + 1.0
        for average, weight in zip(self.averages, self.targets):
            current = tf.cast(average.value, tf.float32)
            average.assign(current + (tf.cast(weight.value, tf.float32) - current) / n)
        self.count.assign(n)
        self.last_step.assign(float(step))

    def swap_in(self) -> None:
        """Overwrite the model's trainable weights with their running mean."""
        for average, weight in zip(self.averages, self.targets):
            weight.assign(tf.cast(average.value, weight.dtype))

    def mark_applied(self) -> None:
        self.applied.assign(1.0)

    @property
    def num_snapshots(self) -> int:
        return int(round(float(self.count.numpy())))

    @property
    def is_applied(self) -> bool:
        return float(self.applied.numpy()) > 0.5


class SWACallback(keras.callbacks.Callback):
    """Average the weights at each epoch end from ``start_epoch`` on; ``finalize()`` after the last step.

    Epoch ends are recognised from the optimizer's step counter (``iterations % steps_per_epoch == 0``),
    which is exact after a resume, also mid-epoch.
    """

    def __init__(self, state: SWAState, start_epoch: int, steps_per_epoch: int, total_steps: int,
                 finalize=None):
        super().__init__()
        self.state = state
        self.start_epoch = int(start_epoch)
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.total_steps = int(total_steps)
        self.finalize = finalize

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _snapshot_if_due(self) -> None:
        step = self._step()
        if step == 0 or step % self.steps_per_epoch:
            return
        finished_epoch = step // self.steps_per_epoch - 1  # 0-based epoch that just ended
        if finished_epoch >= self.start_epoch and float(self.state.last_step.numpy()) < step:
            self.state.snapshot(step)

    def on_train_begin(self, logs=None):
        # Catch up the snapshot a resumed checkpoint may have been saved without (see module docstring).
        self._snapshot_if_due()

    def on_epoch_end(self, epoch, logs=None):
        self._snapshot_if_due()

    def on_train_end(self, logs=None):
        # fit() may be called twice by a resumed run (rest of the interrupted epoch, then whole epochs):
        # only the call that reaches the last step finalizes.
        if self.finalize is not None and self._step() >= self.total_steps:
            self.finalize()


def _batch_norm_layers(layer) -> list:
    found = [layer] if isinstance(layer, keras.layers.BatchNormalization) else []
    for child in getattr(layer, "layers", []):
        found.extend(_batch_norm_layers(child))
    return found


def update_batch_norm(model, images) -> int:
    """Recompute BatchNorm moving statistics as the plain average of per-batch statistics.

    Runs ``model(batch, training=True)`` over ``images`` (an iterable of image batches) and sets each BN
    layer's moving mean/variance to the mean of the batch statistics (what PyTorch's ``bn_update`` does
    with ``momentum=None``). The forward runs with momentum 0, so after each batch the moving statistics
    *are* that batch's statistics; they are summed here and their mean is assigned at the end. Only BN
    statistics change (no optimizer). Returns the number of batches used (0 if there is no BN layer).
    """
    bn_layers = _batch_norm_layers(model)
    if not bn_layers:
        return 0
    momenta = [layer.momentum for layer in bn_layers]
    sums = [[np.zeros(layer.moving_mean.shape, np.float64), np.zeros(layer.moving_variance.shape, np.float64)]
            for layer in bn_layers]
    count = 0
    try:
        for layer in bn_layers:
            layer.momentum = 0.0

        @tf.function  # traced after the momentum change, so the traced update is "moving ← batch statistic"
        def forward(batch):
            model(batch, training=True)

        for batch in images:
            forward(batch)
            count += 1
            for layer, (mean_sum, var_sum) in zip(bn_layers, sums):
                mean_sum += layer.moving_mean.numpy()
                var_sum += layer.moving_variance.numpy()
        if count:
            for layer, (mean_sum, var_sum) in zip(bn_layers, sums):
                layer.moving_mean.assign((mean_sum / count).astype(np.float32))
                layer.moving_variance.assign((var_sum / count).astype(np.float32))
    finally:
        for layer, momentum in zip(bn_layers, momenta):
            layer.momentum = momentum
    return count
