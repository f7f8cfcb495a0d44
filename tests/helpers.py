"""Shared test helpers: the tiny dataset, tiny run configs, methods built and trained through the engine, a config
switch, and the bit-identical resume check. Tests import them from here (``from helpers import ...``); fixtures stay
in ``conftest.py``, CLI helpers in ``helpers_cli.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Class-conditional VA centres (canonical order) for the tiny fixture.
_VA = np.array([[0.0, 0.0], [0.7, 0.3], [-0.6, -0.35], [0.2, 0.75], [-0.5, 0.65], [-0.6, 0.3], [-0.55, 0.55]])


def write_tiny_dataset(root: Path, n_train: int = 56, n_test: int = 28, size: int = 24, num_classes: int = 7,
                       seed: int = 0, landmarks: bool = True, votes: bool = True) -> Path:
    """A learnable toy FER set: each class is a coloured bar at a class-specific position plus noise."""
    import cv2

    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            label = i % num_classes
            image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            y0 = int(label * (size - 4) / max(num_classes - 1, 1))
            image[y0:y0 + 4, 2:size - 2] = (200, 40 + 25 * label, 255 - 30 * label)
            rel = f"{split}/{i:05d}.png"
            cv2.imwrite(str(root / "images" / rel), image)
            va = np.clip(_VA[label % 7] + rng.normal(0, 0.1, 2), -1, 1)
            row = {"path": rel, "expression": label, "valence": round(float(va[0]), 4),
                   "arousal": round(float(va[1]), 4)}
            if landmarks:
                pts = rng.uniform(2, size - 2, size=(68, 2))
                row["landmarks"] = ";".join(f"{v:.2f}" for v in pts.ravel())
            if votes:
                v = rng.multinomial(10, np.eye(num_classes)[label] * 0.7 + 0.3 / num_classes)
                row["votes"] = ";".join(str(int(x)) for x in v)
            rows.append(row)
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return root


def tiny_run_config(data_dir, out, method="ce", **overrides):
    """A RunConfig that trains in seconds: small CNN, 24 px, 2 epochs, no export/TensorBoard."""
    from engine.run import RunConfig

    base = dict(dataset="csv", num_classes=7, data_dir=str(data_dir), method=method, backbone="tiny_cnn",
                image_size=24, pad=2, epochs=2, batch_size=8, lr=1e-3, run=str(out), export=False,
                tensorboard=False, verbose=0, test_every=0)
    base.update(overrides)
    return RunConfig(**base)


def build_method(data_dir, out, method="ce", **overrides):
    """``(run, model, method_inputs)``: a method built as train.py builds it, on a tiny dataset (no fit)."""
    from engine.run import Run

    run = Run(tiny_run_config(data_dir, out, method=method, **overrides), log=lambda *a, **k: None)
    run.load_splits()
    method_inputs = run.method_inputs()
    model = build_run_model(run, len(run.train_table), method_inputs)
    return run, model, method_inputs


def build_run_model(run, num_train_samples, method_inputs=None, load_weights=True):
    """The model of ``run`` built as train.py builds it: the runtime configured (precision, determinism, seed)
    right before the factory."""
    from engine.build import build_model
    from engine.setup import configure_runtime

    configure_runtime(run.cfg)
    return build_model(run, num_train_samples, method_inputs, load_weights=load_weights)


def train_run(cfg, log=lambda *a, **k: None):
    """Train ``cfg`` as train.py does: the :class:`engine.fit.TrainedRun` (run_dir, model, report, strategy)."""
    from engine.fit import train
    from engine.run import Run

    return train(Run(cfg, log=log))


def with_config(model, **changes):
    """Switch a built model's (frozen) config; ``compute_losses`` / ``train_step`` read it on every eager call."""
    model.config = dataclasses.replace(model.config, **changes)


def copy_when_epoch_ends(monkeypatch, run_dir: Path, copy: Path, epoch: int = 0) -> None:
    """While a run trains into ``run_dir``, copy the directory to ``copy`` right after epoch ``epoch``'s
    checkpoint: what a kill at that instant leaves behind (the run's lock is an ``flock`` that a copy does not
    hold), for ``--resume`` to continue, without a second process paying TensorFlow's import."""
    import shutil

    from engine.callbacks import RunCheckpoint

    original = RunCheckpoint.on_epoch_end

    def copy_after_the_epoch(self, epoch_index, logs=None):
        original(self, epoch_index, logs)
        if epoch_index == epoch:
            shutil.copytree(run_dir, copy)

    monkeypatch.setattr(RunCheckpoint, "on_epoch_end", copy_after_the_epoch)


class _Killed(Exception):
    pass


def check_resume_is_bit_identical(data_dir, tmp_path, monkeypatch, method, **overrides):
    """Train 2 epochs (14 steps) straight; train again, killed right after the step-10 checkpoint (mid-epoch 1),
    and resume: the final checkpoints (every variable, per-sample state and optimizer slot) are identical."""
    from engine.callbacks import RunCheckpoint
    from helpers_cli import h5_datasets

    common = dict(epochs=2, checkpoint_every=5, **overrides)
    train_run(tiny_run_config(data_dir, tmp_path / "straight", method, **common))
    original = RunCheckpoint.on_train_batch_end

    def kill_after_step_10(self, batch, logs=None):
        original(self, batch, logs)
        if int(self.model.optimizer.iterations.numpy()) == 10:
            raise _Killed

    monkeypatch.setattr(RunCheckpoint, "on_train_batch_end", kill_after_step_10)
    with pytest.raises(_Killed):
        train_run(tiny_run_config(data_dir, tmp_path / "killed", method, **common))
    monkeypatch.undo()
    train_run(tiny_run_config(data_dir, tmp_path / "killed", method, resume=True, **common))
    final = "step-000000014"
    straight = h5_datasets(tmp_path / "straight" / "ckpt" / final / "model.weights.h5")
    resumed = h5_datasets(tmp_path / "killed" / "ckpt" / final / "model.weights.h5")
    assert sorted(resumed) == sorted(straight) and any(k.startswith("optimizer/") for k in straight)
    different = [k for k in straight if not np.array_equal(resumed[k], straight[k])]
    assert not different, different[:10]
    return straight
