"""Shared fixtures: a tiny prepared dataset in the schema, written fresh for each test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N`: N workers share the cores; one intra-op thread each (inherited by the subprocesses
    # the tests start) instead of N thread pools the size of the machine fighting over it.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
# Caches the code writes under the data home (the neighbour-table cache, generated datasets) go to a
# throw-away folder, never into the developer's own ~/.cache/fer-ldl.
os.environ["FER_DATA_HOME"] = __import__("tempfile").mkdtemp(prefix="fer-test-home-")
__import__("atexit").register(__import__("shutil").rmtree, os.environ["FER_DATA_HOME"], True)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_ds"))


def tiny_run_config(data_dir, out, method="ce", **overrides):
    """A RunConfig that trains in seconds: small CNN, 24 px, 2 epochs, no export/TensorBoard."""
    from engine.run import RunConfig

    base = dict(dataset="csv", num_classes=7, data_dir=str(data_dir), method=method, backbone="small_cnn",
                image_size=24, pad=2, epochs=2, batch_size=8, lr=1e-3, out=str(out), export=False,
                tensorboard=False, verbose=0, val_every=0)
    base.update(overrides)
    return RunConfig(**base)


def build_method(data_dir, out, method="ce", **overrides):
    """``(trainer, model, method_data)``: a method built through the engine on a tiny dataset (no fit)."""
    from engine.run import Trainer

    trainer = Trainer(tiny_run_config(data_dir, out, method=method, **overrides), log=lambda *a, **k: None)
    trainer.load_data()
    method_data = trainer.method_data()
    model = trainer.build(len(trainer.train_table), method_data)
    return trainer, model, method_data


def pytest_configure(config):
    """Third-party warnings that are not ours to fix, filtered by message and module (the rest stay visible).

    * Keras 3.15's TensorFlow backend converts tensors with ``np.array(x)``, which NumPy 2 warns about
      (``__array__`` without ``copy``) thousands of times per run (keras/src/backend/tensorflow/core.py).
    """
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.src.backend.tensorflow.core")
