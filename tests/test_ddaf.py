"""DDAF model: class statistics, fused targets, VA head, whole-split VA metrics, SWA (mean, resume, switch),
export and reload."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, tiny_run_config, train_run

QUIET = dict(log=lambda *a, **k: None)


def _build(tiny_dataset, out, **method_overrides):
    return build_method(tiny_dataset, out, "ddaf", set=method_overrides)


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    run, model, method_data = _build(tiny_dataset, tmp_path_factory.mktemp("ddaf_steps"))
    batches = list(run.train_dataset(method_data).take(2))
    return run, model, method_data, batches


class _EpochEndRecorder(keras.callbacks.Callback):
    """Copies of the trainable weights at every epoch end."""

    def __init__(self):
        super().__init__()
        self.snapshots = []

    def on_epoch_end(self, epoch, logs=None):
        self.snapshots.append([np.array(v.numpy(), copy=True) for v in self.model.trainable_variables])


class _Interrupt(Exception):
    pass


class _InterruptAfterEpoch(keras.callbacks.Callback):
    """Simulates a kill right after the epoch-end checkpoint of ``epoch`` (the SWA callback ran in memory)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupt()


def _train(tiny_dataset, out, extra=None, resume=False, **kwargs):
    """Train DDAF with SWA over all 3 epochs (swa_start=0); ``extra`` callbacks are appended."""
    from models.ddaf import DDAFModel

    cfg = tiny_run_config(tiny_dataset, out, method="ddaf", epochs=3, resume=resume,
                          set={"swa_start": "0"}, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        original = DDAFModel.callbacks
        mp.setattr(DDAFModel, "callbacks", lambda self, context: original(self, context) + list(extra or []))
        trained = train_run(cfg)
    return trained.model, trained.report


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    recorder = _EpochEndRecorder()
    out = tmp_path_factory.mktemp("ddaf_run") / "run"
    model, report = _train(tiny_dataset, out, extra=[recorder], export=True)
    return model, report, recorder, out


def test_two_steps_class_stats_fused_targets_and_va_head(built):
    from losses.ddaf import class_weights_max_over_count, gmm_mixed_labels, trimmed_class_stats

    run, model, method_data, batches = built
    table = run.train_table
    stats = trimmed_class_stats(table.va, table.labels, 7)
    np.testing.assert_allclose(model.class_means.numpy(), stats.means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.class_covariances.numpy(), stats.covariances, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(model.class_priors.numpy(), stats.priors, rtol=1e-6)
    np.testing.assert_allclose(model.class_weights.numpy(), class_weights_max_over_count(table.labels, 7))

    batch = batches[0]
    index, labels = batch["index"].numpy(), batch["label"].numpy()
    mixed = gmm_mixed_labels(table.va[index], *stats)  # independent of the extras array
    _, outputs = model.compute_losses(batch, {}, training=False)
    expected = 0.5 * np.eye(7)[labels] + 0.5 * mixed
    np.testing.assert_allclose(outputs["targets"].numpy(), expected, atol=1e-5)
    pred_va = outputs["pred_va"].numpy()
    assert pred_va.shape == (len(index), 2) and np.all(np.abs(pred_va) <= 1.0)

    before = [np.array(v.numpy(), copy=True) for v in model.trainable_variables]
    for b in batches:
        logs = model.train_step(b)
        for name in ("va", "ce", "cos", "loss"):
            assert np.isfinite(float(logs[name])), name
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(before, model.trainable_variables))
    assert float(model.swa_state.count.numpy()) == 0.0  # SWA only snapshots at epoch ends, via its callback


def test_euclidean_fusion_is_online_from_va(tiny_dataset, tmp_path):
    from losses.ddaf import euclidean_mixed_labels

    run, model, method_data = _build(tiny_dataset, tmp_path, fuse_type="euclidean", alpha="0.3", swa="false")
    assert "mixed_labels" not in method_data.extras and "va" in method_data.extras
    batch = next(iter(run.train_dataset(method_data).take(1)))
    _, outputs = model.compute_losses(batch, {}, training=False)
    mixed = euclidean_mixed_labels(run.train_table.va[batch["index"].numpy()], model.class_means.numpy())
    expected = 0.3 * np.eye(7)[batch["label"].numpy()] + 0.7 * mixed
    np.testing.assert_allclose(outputs["targets"].numpy(), expected, atol=1e-5)
    # SWA off: no shadow variables, no callback, after_training is a no-op.
    assert model.swa_state is None and model.callbacks(run.context()) == []
    assert not any("swa" in v.path for v in model.weights)
    model.after_training(run.context())


def test_swa_state_is_the_arithmetic_mean_on_a_tiny_model():
    """Hand check: a 1-layer model, 3 epochs of SGD, averaging from epoch 1 → mean of epoch-end weights 1, 2."""
    from models.swa import SWACallback, SWAState

    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)
            self.dense.build((None, 3))
            self.swa = SWAState(self)

        def add_state(self, name, shape, initializer="zeros"):
            return self.add_weight(name=name, shape=shape, initializer=initializer, trainable=False)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
    recorder, finalized = _EpochEndRecorder(), []
    swa = SWACallback(model.swa, start_epoch=1, steps_per_epoch=2, total_steps=6,
                      finalize=lambda: (model.swa.swap_in(), finalized.append(True)))
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[recorder, swa])
    assert model.swa.num_snapshots == 2 and float(model.swa.last_step.numpy()) == 6
    expected = [(a + b) / 2 for a, b in zip(recorder.snapshots[1], recorder.snapshots[2])]
    for average, value in zip(model.swa.averages, expected):
        np.testing.assert_allclose(average.numpy(), value, rtol=1e-6, atol=1e-7)
    assert finalized  # the last step was reached → the mean was swapped in
    for weight, value in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(weight.numpy(), value, rtol=1e-6, atol=1e-7)


def test_update_batch_norm_is_the_mean_of_batch_statistics():
    from models.swa import update_batch_norm

    inputs = keras.Input((3,))
    bn = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, bn(inputs))
    batches = [np.random.default_rng(i).normal(i, 1 + i, size=(5, 3)).astype("float32") for i in range(3)]
    assert update_batch_norm(model, batches) == 3
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-4)
    assert bn.momentum == 0.99


def test_run_swa_mean_metrics_export_and_reload(trained_run):
    from engine.metrics import va_metrics
    from engine.results import evaluate_model, load_run_model

    model, report, recorder, out = trained_run
    # SWA from epoch 0: the final weights are the mean of the 3 epoch-end weights (then BN was updated).
    assert len(recorder.snapshots) == 3 and model.swa_state.num_snapshots == 3 and model.swa_state.is_applied
    for weight, *snaps in zip(model.trainable_variables, *recorder.snapshots):
        np.testing.assert_allclose(weight.numpy(), np.mean(snaps, axis=0), rtol=1e-5, atol=1e-6)

    # metrics.json carries whole-split VA metrics; the reloaded run (latest checkpoint = SWA weights and
    # stored class statistics) reproduces them and the accuracy.
    saved = json.loads((out / "metrics.json").read_text())
    assert {"valence_rmse", "arousal_rmse", "valence_ccc", "arousal_ccc"} <= set(saved)
    rebuilt, rebuilt_model, _ = load_run_model(out, **QUIET)
    rebuilt.load_splits(need_train=False)
    np.testing.assert_allclose(rebuilt_model.class_means.numpy(), model.class_means.numpy())
    assert rebuilt_model.swa_state.is_applied
    again = evaluate_model(rebuilt_model, rebuilt.eval_dataset(), rebuilt.test_table, rebuilt.spec.class_names)
    assert again["accuracy"] == pytest.approx(saved["accuracy"])

    # The VA metrics = engine.metrics.va_metrics of VA predicted by hand over the whole split (odd batches).
    images = np.concatenate([b["image"].numpy() for b in rebuilt.eval_dataset()])
    manual = np.concatenate([rebuilt_model.va_head(rebuilt_model.embed(images[i:i + 5])[0]).numpy()
                             for i in range(0, len(images), 5)])
    expected = va_metrics(manual, rebuilt.test_table.va)
    got = again
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        assert saved[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key

    # The SavedModel serves the same probabilities as the model.
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    uint8 = np.clip(np.round(images[:4] * 127.5 + 127.5), 0, 255).astype(np.uint8)
    outputs = served(images=tf.constant(uint8))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), tf.nn.softmax(rebuilt_model(images[:4])).numpy(),
                               atol=1e-4)
    # ... and the VA head's valence/arousal (a served output, DDAFModel.served_outputs), which predict.py logs per video frame.
    np.testing.assert_allclose(outputs["va"].numpy(), manual[:4], atol=1e-4)


@pytest.mark.slow
def test_swa_average_survives_an_interrupted_resume(trained_run, tiny_dataset, tmp_path):
    """Killed after the epoch-1 checkpoint (saved before SWA added epoch 1), then --resume: bit-identical."""
    reference, report, _, _ = trained_run
    out = tmp_path / "interrupted"
    with pytest.raises(_Interrupt):
        _train(tiny_dataset, out, extra=[_InterruptAfterEpoch(1)])
    model, resumed_report = _train(tiny_dataset, out, resume=True)
    assert model.swa_state.num_snapshots == 3
    for a, b in zip(reference.swa_state.averages, model.swa_state.averages):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(reference.weights, model.weights):  # backbone, heads, BN statistics, class stats, SWA state
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert resumed_report["accuracy"] == report["accuracy"]
    assert resumed_report["valence_rmse"] == report["valence_rmse"]


def test_config_validation_and_official_preset():
    from common.errors import ConfigError
    from engine.run import RunConfig, resolve
    from models.ddaf import DDAFConfig

    with pytest.raises(ConfigError, match="fuse_type"):
        DDAFConfig(fuse_type="va")
    cfg, _, _, method_cfg = resolve(RunConfig(dataset="synthetic", method="ddaf", preset="official", weights="none"))
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.lr_schedule) == (2.5e-4, 256, 50, "constant")
    assert (method_cfg.l2_weight_decay, method_cfg.swa, method_cfg.alpha) == (1e-5, False, 0.5)
    assert DDAFConfig().swa and DDAFConfig().alpha == 0.5
