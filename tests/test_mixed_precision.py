"""Mixed precision on CPU: every method trains a few steps under mixed_float16 and mixed_bfloat16.

CI has no GPU, so the float16 path (loss scaling) and the bfloat16 path are exercised on the CPU kernels:
losses stay finite, variables (weights, per-sample λ, banks, centres) stay float32, the probabilities
that feed targets and banks are float32, and float16 uses Keras' LossScaleOptimizer.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_run_config

METHODS = ("ce", "ldlva", "lanet", "ddaf", "nla")
POLICIES = ("mixed_float16", "mixed_bfloat16")


@pytest.fixture(autouse=True)
def restore_float32_policy():
    """Trainer.build sets the global policy; put it back so other tests run in float32."""
    yield
    keras.mixed_precision.set_global_policy("float32")


def _require(method: str) -> None:
    from common.errors import ConfigError
    from models.registry import get_method

    try:
        get_method(method)
    except ConfigError as exc:
        pytest.skip(f"{method} not available yet: {exc}")


def _build(tiny_dataset, tmp_path, method, policy, **overrides):
    from engine.run import Trainer

    cfg = tiny_run_config(tiny_dataset, tmp_path / "run", method=method, mixed_precision=policy, epochs=1,
                          **overrides)
    trainer = Trainer(cfg, log=lambda *a, **k: None)
    trainer.load_data()
    method_data = trainer.method_data()
    model = trainer.build(len(trainer.train_table), method_data)
    return trainer, method_data, model


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_under_mixed_precision(tiny_dataset, tmp_path, method, policy):
    _require(method)
    trainer, method_data, model = _build(tiny_dataset, tmp_path, method, policy)
    compute = "float16" if policy == "mixed_float16" else "bfloat16"
    assert trainer.policy == policy
    assert model.backbone.compute_dtype == compute  # the convolutions really run in low precision
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    else:  # bfloat16 has float32's exponent range: no loss scaling
        assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

    before = {v.path: np.array(v.numpy()) for v in model.non_trainable_variables if "backbone" not in v.path}
    history = model.fit(trainer.train_dataset(method_data), epochs=1, steps_per_epoch=4, verbose=0)
    for name, values in history.history.items():
        assert np.all(np.isfinite(values)), f"{method}/{policy}: {name} = {values}"

    # Every variable, per-sample state included, is float32 (or an int32 table) and finite.
    for variable in model.variables:
        assert variable.dtype in ("float32", "int32", "int64"), f"{variable.path} is {variable.dtype}"
        if variable.dtype == "float32":
            assert np.all(np.isfinite(variable.numpy())), f"{method}/{policy}: {variable.path} not finite"
    state = [v for v in model.non_trainable_variables if "backbone" not in v.path
             and len(v.shape) and v.shape[0] == len(trainer.train_table) and v.dtype == "float32"]
    changed = [v.path for v in state if not np.array_equal(before[v.path], v.numpy())]
    if method == "ldlva":
        assert changed, "LDLVA's per-sample state did not move under mixed precision"

    # The probabilities, logits and losses a method builds its targets and banks from are float32.
    batch = next(iter(trainer.train_dataset(method_data)))
    losses, outputs = model.compute_losses(batch, model.watched_tensors(batch), training=False)
    for name, value in losses.items():
        assert value.dtype == tf.float32, f"{method}/{policy}: loss {name} is {value.dtype}"
        assert np.isfinite(value.numpy()), f"{method}/{policy}: loss {name} = {value.numpy()}"
    for name in ("logits", "probs", "target", "uncertainty"):
        if name in outputs:
            assert outputs[name].dtype == tf.float32, f"{method}/{policy}: output {name} is {outputs[name].dtype}"


def test_float16_export_and_auto_policy(tiny_dataset, tmp_path):
    """A whole mixed_float16 run (train, evaluate, export) serves float32 probabilities; auto = float32 on CPU."""
    from engine.run import Trainer, setup_precision

    cfg = tiny_run_config(tiny_dataset, tmp_path / "run", mixed_precision="mixed_float16", epochs=1, export=True)
    report = Trainer(cfg, log=lambda *a, **k: None).train()
    assert 0.0 <= report["accuracy"] <= 1.0
    serve = tf.saved_model.load(str(tmp_path / "run" / "saved_model")).signatures["serving_default"]
    out = serve(images=tf.zeros((2, 30, 30, 3), tf.uint8))
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    if not tf.config.list_physical_devices("GPU"):
        assert setup_precision("auto") == "float32"
