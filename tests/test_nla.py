"""NLA model: two training steps, epoch-scheduled weights, flip consistency on the right pair, options,
export and reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, tiny_run_config, train_run, with_config

QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    run, model, method_data = build_method(tiny_dataset, tmp_path_factory.mktemp("nla_steps"), "nla", epochs=60)
    batches = list(run.train_dataset(method_data).take(2))
    return run, model, batches


def _losses(model, batch, epoch):
    model.optimizer.iterations.assign(epoch * model.steps_per_epoch)  # simulate being in epoch `epoch`
    losses, outputs = model.compute_losses(batch, {}, training=False)
    return {k: float(v) for k, v in losses.items()}, outputs


def _weighted_part(model, batch, epoch):
    """mean(w·CE) = NAW-CE − mean(CE) as the model computes it at ``epoch``, plus its logits."""
    losses, outputs = _losses(model, batch, epoch)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch["label"], logits=outputs["logits"])
    return losses["naw_ce"] - float(tf.reduce_mean(ce)), losses, outputs


def _expected_weighted_part(outputs, labels, eps):
    from losses.nla import naw_weights

    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs["logits"])
    return float(tf.reduce_mean(naw_weights(outputs["logits"], labels, eps) * ce))


def test_weights_follow_the_schedule_of_the_current_epoch(built):
    from losses.nla import covariance_schedule, nla_total_loss

    _, model, batches = built
    total_epochs = model.total_epochs  # 60
    batch = dict(batches[0])
    # Labels = current predictions: every sample is "correct", so the scheduled kernel is the one used.
    batch["label"] = tf.argmax(model(batch["image"], training=False), axis=-1, output_type=tf.int32)
    for epoch in (0, 1, 30):
        part, losses, outputs = _weighted_part(model, batch, epoch)
        assert int(model.current_epoch()) == epoch
        eps = covariance_schedule(epoch, total_epochs, -15.0)
        assert part == pytest.approx(_expected_weighted_part(outputs, batch["label"], eps), rel=1e-4)
        for other in {0, 1, 30} - {epoch}:  # and not the weights of another epoch's schedule
            wrong = _expected_weighted_part(outputs, batch["label"], covariance_schedule(other, total_epochs, -15.0))
            assert abs(part - wrong) > 1e-3 * abs(wrong)
        total = 0.5 * losses["naw_ce"] + 0.5 * losses["jsd"]
        assert total == pytest.approx(float(nla_total_loss(outputs["logits"], outputs["flipped_logits"],
                                                           batch["label"], eps)), rel=1e-5)

    # slope option: −10 (the paper) instead of −15 changes ε(1) from 1 − e^(−15/60) to 1 − e^(−10/60).
    with_config(model, slope=-10.0)
    try:
        part, _, outputs = _weighted_part(model, batch, 1)
        assert float(model.schedule()) == pytest.approx(1 - np.exp(-10.0 / total_epochs), rel=1e-6)
        expected = _expected_weighted_part(outputs, batch["label"], 1 - np.exp(-10.0 / total_epochs))
        official = _expected_weighted_part(outputs, batch["label"], 1 - np.exp(-15.0 / total_epochs))
        assert part == pytest.approx(expected, rel=1e-4)
        assert abs(part - official) > 1e-3 * abs(official)
    finally:
        with_config(model, slope=-15.0)
        model.optimizer.iterations.assign(0)


def test_consistency_is_on_the_image_and_its_flip(built):
    from losses.nla import jsd_consistency

    _, model, batches = built
    batch = batches[0]
    for mode in ("official", "textbook"):
        with_config(model, jsd_mode=mode)
        losses, _ = _losses(model, batch, 0)
        plain = model(batch["image"], training=False)
        flipped = model(tf.image.flip_left_right(batch["image"]), training=False)
        assert losses["jsd"] == pytest.approx(float(jsd_consistency(plain, flipped, mode)), rel=1e-4, abs=1e-7)
        assert losses["jsd"] > 1e-6
        # A mirror-symmetric image is its own flip: the consistency term vanishes.
        symmetric = dict(batch, image=0.5 * (batch["image"] + tf.image.flip_left_right(batch["image"])))
        assert _losses(model, symmetric, 0)[0]["jsd"] == pytest.approx(0.0, abs=1e-5)
    official = float(jsd_consistency(plain, flipped, "official"))
    assert official != pytest.approx(losses["jsd"], rel=1e-3)  # the two forms differ (sum vs mean, KL direction)
    # official_mean: the official form averaged over the batch = the official sum / B.
    per_batch = float(jsd_consistency(plain, flipped, "official_mean"))
    assert per_batch == pytest.approx(official / int(plain.shape[0]), rel=1e-6)
    with_config(model, jsd_mode="official")


def test_two_training_steps_finite_losses(built):
    _, model, batches = built
    before = [np.array(v.numpy(), copy=True) for v in model.trainable_variables]
    for batch in batches:
        logs = model.train_step(batch)
        for name in ("naw_ce", "jsd", "loss"):
            assert np.isfinite(float(logs[name])), name
    assert any(not np.allclose(a, v.numpy()) for a, v in zip(before, model.trainable_variables))


def test_config_validation_and_official_preset():
    from common.errors import ConfigError
    from engine.run import RunConfig, resolve
    from models.nla import NLAConfig

    with pytest.raises(ConfigError, match="jsd_mode"):
        NLAConfig(jsd_mode="symmetric")
    cfg, _, _, method_cfg = resolve(RunConfig(dataset="synthetic", method="nla", preset="official", weights="none"))
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.lr_schedule, cfg.lr_decay) == (1e-4, 32, 60, "exponential", 0.9)
    assert method_cfg.l2_weight_decay == 1e-4


@pytest.mark.slow
def test_train_export_and_reload(tiny_dataset, tmp_path):
    from engine.results import evaluate_model, load_run_model

    out = tmp_path / "run"
    report = train_run(tiny_run_config(tiny_dataset, out, method="nla", export=True, set={"jsd_mode": "textbook"})).report
    log = (out / "log.csv").read_text().splitlines()
    header, last = log[0].split(","), log[-1].split(",")
    for name in ("naw_ce", "jsd", "loss"):
        assert np.isfinite(float(last[header.index(name)])), name
    rebuilt, rebuilt_model, record = load_run_model(out, **QUIET)
    assert rebuilt.method_cfg.jsd_mode == "textbook"
    rebuilt.load_splits(need_train=False)
    again = evaluate_model(rebuilt_model, rebuilt.eval_dataset(), rebuilt.test_table, rebuilt.spec.class_names)
    assert again["accuracy"] == pytest.approx(json.loads((out / "metrics.json").read_text())["accuracy"])
    assert again["accuracy"] == pytest.approx(report["accuracy"])
    images = next(iter(rebuilt.eval_dataset()))["image"].numpy()[:4]
    served = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    uint8 = np.clip(np.round(images * 127.5 + 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(served(images=tf.constant(uint8))["probabilities"].numpy(),
                               tf.nn.softmax(rebuilt_model(images)).numpy(), atol=1e-4)
