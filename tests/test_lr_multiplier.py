"""``--backbone-lr-multiplier``: per-variable learning rates that equal a separate optimizer at the scaled rate."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import build_method, tiny_run_config


def _steps(optimizer, variables, grads_per_step):
    for grads in grads_per_step:
        optimizer.apply(grads, variables)
    return [np.asarray(v) for v in variables]


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd", "lamb"])
def test_a_multiplier_is_exactly_the_scaled_learning_rate(kind):
    """Variable a at multiplier 0.1 under rate 1e-2 moves exactly as under a rate of 1e-3 (moments, momentum
    buffers and bias corrections included); variable b keeps the full rate."""
    import keras

    from engine.config import RunConfig
    from engine.setup import make_optimizer

    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(4,)).astype("float32")] for _ in range(5)]
    start = [rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(4,)).astype("float32")]

    def run(lr, multiplier):
        cfg = RunConfig(optimizer=kind, lr=lr, lr_schedule="constant", epochs=1, momentum=0.9, weight_decay=0.0)
        optimizer = make_optimizer(cfg, steps_per_epoch=1)
        variables = [keras.Variable(s) for s in start]
        if multiplier is not None:
            optimizer.set_lr_multiplier(variables[:1], multiplier)
        return _steps(optimizer, variables, grads)

    scaled = run(1e-2, 0.1)
    np.testing.assert_allclose(scaled[0], run(1e-3, None)[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scaled[1], run(1e-2, None)[1], rtol=1e-6, atol=1e-7)
    assert not np.allclose(scaled[0], run(1e-2, None)[0])


def test_the_engine_scales_the_backbone_and_not_the_heads(tiny_dataset, tmp_path):
    """A tiny run at multiplier 1e-9: one epoch moves the classifier and leaves every backbone weight where
    it started (BatchNorm's moving statistics are not trained by the optimizer and are left out)."""
    run, model, inputs = build_method(tiny_dataset, tmp_path / "run", backbone_lr_multiplier=1e-9, epochs=1)
    optimizer = model.optimizer
    keys = {optimizer._var_key(v) for v in model.backbone.trainable_variables}
    assert set(optimizer.lr_multipliers) == keys and set(optimizer.lr_multipliers.values()) == {1e-9}
    before_backbone = [np.asarray(v) for v in model.backbone.trainable_variables]
    before_head = np.asarray(model.classifier.kernel)
    model.fit(run.train_dataset(inputs).take(3), epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    for start, variable in zip(before_backbone, model.backbone.trainable_variables):
        np.testing.assert_allclose(np.asarray(variable), start, atol=1e-9)
    assert np.abs(np.asarray(model.classifier.kernel) - before_head).max() > 1e-4


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_multiplier_that_is_not_positive_is_refused(value):
    from common.errors import ConfigError
    from engine.config import RunConfig, validate_run_config

    with pytest.raises(ConfigError, match="--backbone-lr-multiplier"):
        validate_run_config(RunConfig(backbone_lr_multiplier=float(value)))


def test_the_default_run_has_no_multiplier(tiny_dataset, tmp_path):
    _, model, _ = build_method(tiny_dataset, tmp_path / "run", epochs=1)
    assert model.optimizer.lr_multipliers == {}
    assert tiny_run_config(tiny_dataset, tmp_path).backbone_lr_multiplier == 1.0


def test_lamb_moves_every_variable_by_the_same_fraction_of_its_norm():
    """Lamb's step is relative: a variable 100× larger with the same gradients moves 100× as far (Adam would
    move both alike), which is what a backbone whose layers differ 30× in weight size needs."""
    import keras

    from engine.config import RunConfig
    from engine.setup import make_optimizer

    rng = np.random.default_rng(0)
    start = rng.normal(size=(5, 3)).astype("float32")
    grad = rng.normal(size=(5, 3)).astype("float32")
    moved = {}
    for kind in ("lamb", "adam"):
        optimizer = make_optimizer(RunConfig(optimizer=kind, lr=1e-3, lr_schedule="constant", epochs=1), 1)
        small, large = keras.Variable(start), keras.Variable(100 * start)
        optimizer.apply([grad, grad], [small, large])
        moved[kind] = (np.abs(np.asarray(small) - start).sum(), np.abs(np.asarray(large) - 100 * start).sum())
    assert moved["lamb"][1] == pytest.approx(100 * moved["lamb"][0], rel=1e-3)
    assert moved["adam"][1] == pytest.approx(moved["adam"][0], rel=1e-3)


def test_lanets_landmark_stages_are_pretrained_and_its_new_layers_are_not(tiny_dataset, tmp_path):
    """LA-Net's landmark branch starts its stages 2–4 as copies of the backbone's (``copy_stage_weights``):
    they train at the backbone's rate; the FPN laterals and the heatmap conv are new and keep the full rate."""
    _, model, _ = build_method(tiny_dataset, tmp_path / "copied", "lanet", backbone_lr_multiplier=0.1)
    rates, key = model.optimizer.lr_multipliers, model.optimizer._var_key
    branch = model.landmark_branch.trainable_variables
    copies = [v for v in branch if key(v) in rates]
    new = [v for v in branch if key(v) not in rates]
    assert copies and new and all(rates[key(v)] == 0.1 for v in copies)
    assert all(("_lat" in v.path or "_lm_fc" in v.path) for v in new)
    assert all(rates.get(key(v)) == 0.1 for v in model.backbone.trainable_variables)
    _, fresh, _ = build_method(tiny_dataset, tmp_path / "fresh", "lanet", backbone_lr_multiplier=0.1,
                               set={"copy_stage_weights": "false"})
    assert not {fresh.optimizer._var_key(v) for v in fresh.landmark_branch.trainable_variables} & set(
        fresh.optimizer.lr_multipliers)
