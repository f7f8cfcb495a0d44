"""Shared fixtures: a tiny prepared dataset in the schema, written fresh for each test session.

Helpers that tests call directly live in ``helpers.py`` (datasets, run configs, methods) and
``helpers_cli.py`` (CLI calls); tests import them from there, never from this file or from another test.
"""

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

import pytest  # noqa: E402

from helpers import write_tiny_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_ds"))


def pytest_configure(config):
    """Third-party warnings that are not ours to fix, filtered by message and module (the rest stay visible).

    * Keras 3.15's TensorFlow backend converts tensors with ``np.array(x)``, which NumPy 2 warns about
      (``__array__`` without ``copy``) thousands of times per run (keras/src/backend/tensorflow/core.py).
    """
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:keras.src.backend.tensorflow.core")
