"""Shared fixtures: a tiny prepared dataset in the schema, written fresh for each test session.

Helpers that tests call directly live in ``helpers.py`` (datasets, run configs, methods) and
``helpers_cli.py`` (CLI calls); tests import them from there, never from this file or from another test.
"""

from __future__ import annotations

import gc
import os
import sys
import weakref
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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each worker imports TensorFlow as every command does, without Keras's optional imports (~2 s of its start).
    __import__("common.cli").cli.quiet_tensorflow()

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


_live_iterators: "weakref.WeakSet | None" = None  # every tf.data iterator created since TensorFlow was first seen
_held_iterators: weakref.WeakSet = weakref.WeakSet()  # alive after a collection: held on purpose, e.g. by a fixture


@pytest.fixture(autouse=True)
def free_iterators_left_in_reference_cycles():
    """Collect, at the end of the test that made them, the ``tf.data`` iterators a test leaves in reference cycles.

    A run that ends in an exception mid-``fit`` (a file that fails to decode, a disk that fills while
    checkpointing) leaves Keras' epoch iterator reachable only through a cycle: ``pytest.raises`` keeps the
    exception, whose traceback keeps the test's frame, which keeps the exception. The garbage collector then
    frees it during some later test, and there the iterator's destructor, which joins its background
    threads, stalled a worker for ~30 s with the cores idle (twice a full run; a native stack showed
    ``IteratorResource`` → ``RootDataset::Iterator`` → ``UnboundedThreadPool::LogicalThreadWrapper``).
    Freed here, at once, it takes a fraction of a second. Iterators are tracked by weak reference from the
    first test that finds TensorFlow's iterator module loaded (one full collection covers those made before); one
    still alive after a collection is held on purpose and does not make the next tests collect again.
    """
    yield
    global _live_iterators
    iterator_ops = sys.modules.get("tensorflow.python.data.ops.iterator_ops")
    if iterator_ops is None:
        return
    if _live_iterators is None:
        _live_iterators = weakref.WeakSet()
        created = iterator_ops.OwnedIterator.__init__

        def track(self, *args, **kwargs):
            created(self, *args, **kwargs)
            _live_iterators.add(self)

        iterator_ops.OwnedIterator.__init__ = track
    elif not any(iterator not in _held_iterators for iterator in _live_iterators):
        return
    gc.collect()
    _held_iterators.update(_live_iterators)
