"""Mixed precision end to end: a mixed_float16 run trains, evaluates and exports float32 probabilities.

Every method's few steps under mixed_float16 / mixed_bfloat16 are in the method contract
(``tests/test_method_contract.py``).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_run_config, train_run



@pytest.fixture(autouse=True)
def restore_float32_policy():
    """A run sets the global policy (engine.setup.configure_runtime); put it back so other tests run in float32."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_float16_export_and_auto_policy(tiny_dataset, tmp_path):
    """A whole mixed_float16 run (train, evaluate, export) serves float32 probabilities; auto = float32 on CPU."""
    from engine.setup import setup_precision

    cfg = tiny_run_config(tiny_dataset, tmp_path / "run", mixed_precision="mixed_float16", epochs=1, export=True)
    report = train_run(cfg).report
    assert 0.0 <= report["accuracy"] <= 1.0
    serve = tf.saved_model.load(str(tmp_path / "run" / "saved_model")).signatures["serving_default"]
    out = serve(images=tf.zeros((2, 30, 30, 3), tf.uint8))
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    if not tf.config.list_physical_devices("GPU"):
        assert setup_precision("auto") == "float32"
