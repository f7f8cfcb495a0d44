"""SCN model: its loss terms are losses.scn's on the same tensors, the relabelled labels train and are
written only from the configured epoch and only where the margin exceeds δ₂, 1 − α is the per-sample
score, inference serves α·z, and the relabelled table survives a checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, build_run_model, with_config


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    run, model, method_data = build_method(tiny_dataset, tmp_path_factory.mktemp("scn"), "scn",
                                               set={"relabel_epoch": "2"})
    batches = list(run.train_dataset(method_data).take(2))
    return run, model, batches


def _parts(model, images, training):
    features = tf.cast(model.backbone(images, training=training), tf.float32)
    return model.importance_and_logits(features)


def test_loss_terms_are_the_losses_functions_on_the_current_labels(built):
    from losses.scn import rank_regularization, scn_total_loss, weighted_cross_entropy

    _, model, batches = built
    batch = batches[0]
    index = batch["index"].numpy()
    saved = model.current_labels.numpy().copy()
    try:
        # Relabel the batch's rows by hand: the loss must read these, not the batch's given labels.
        relabelled = saved.copy()
        relabelled[index] = (relabelled[index] + 3) % model.num_classes
        model.current_labels.assign(relabelled)
        losses, outputs = model.compute_losses(batch, {}, training=False)
        alpha, logits = _parts(model, batch["image"], training=False)
        labels = relabelled[index]
        assert float(losses["wce"]) == pytest.approx(float(weighted_cross_entropy(alpha, logits, labels)), rel=1e-6)
        assert float(losses["rr"]) == pytest.approx(float(rank_regularization(alpha, 0.7, 0.15)), abs=1e-7)
        given = float(weighted_cross_entropy(alpha, logits, batch["label"]))
        assert abs(float(losses["wce"]) - given) > 1e-4  # the given labels would give another loss
        total = sum(model.loss_weight(k) * float(v) for k, v in losses.items())
        assert total == pytest.approx(float(scn_total_loss(alpha, logits, labels)), rel=1e-6)
        # The network's logits are α·z (the bias scaled too), for training, inference and export alike.
        np.testing.assert_allclose(outputs["logits"].numpy(), (alpha * logits).numpy(), rtol=1e-6)
        np.testing.assert_allclose(model(batch["image"], training=False).numpy(), (alpha * logits).numpy(),
                                   rtol=1e-5, atol=1e-6)
        predicted = model.predict_outputs(batch["image"])
        np.testing.assert_allclose(predicted["probabilities"].numpy(), tf.nn.softmax(alpha * logits).numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(predicted["importance"].numpy(), alpha.numpy()[:, 0], rtol=1e-6)
    finally:
        model.current_labels.assign(saved)


def test_rank_regularisation_is_active_when_the_groups_are_close(built):
    """A batch whose α are all equal has ᾱ_H − ᾱ_L = 0, so L_RR = δ₁."""
    _, model, batches = built
    head = model.importance
    saved = [w.numpy().copy() for w in head.weights]
    try:
        head.kernel.assign(np.zeros_like(saved[0]))
        losses, _ = model.compute_losses(batches[0], {}, training=False)
        assert float(losses["rr"]) == pytest.approx(0.15, abs=1e-6)
        with_config(model, margin_1=0.07)
        losses, _ = model.compute_losses(batches[0], {}, training=False)
        assert float(losses["rr"]) == pytest.approx(0.07, abs=1e-6)
    finally:
        with_config(model, margin_1=0.15)
        for w, v in zip(head.weights, saved):
            w.assign(v)


def _gaps(model, batch):
    """max p − p[ỹ] per row at the current weights (training-mode forward, as the step's), α, argmax."""
    alpha, logits = _parts(model, batch["image"], training=True)
    probs = tf.nn.softmax(alpha * logits).numpy()
    labels = model.current_labels.numpy()[batch["index"].numpy()]
    return probs.max(-1) - probs[np.arange(len(labels)), labels], alpha, probs.argmax(-1)


def _eligible_gaps(model, batch, scope):
    """The gaps of the rows the scope lets the rule relabel (−1 elsewhere)."""
    from losses.scn import low_importance_mask

    gap, alpha, _ = _gaps(model, batch)
    if scope == "low_importance":
        gap = np.where(low_importance_mask(alpha, 0.7).numpy(), gap, -1.0)
    return gap


def _expected_relabel(model, batch, margin, scope):
    """Which rows the rule changes (and to what), and the per-sample score 1 − α of this visit."""
    _, alpha, argmax = _gaps(model, batch)
    return _eligible_gaps(model, batch, scope) > margin, argmax, 1.0 - alpha.numpy()[:, 0]


@pytest.mark.parametrize("scope", ["batch", "low_importance"])
def test_relabelling_changes_exactly_the_rows_past_the_margin_from_the_configured_epoch(built, scope):
    _, model, batches = built
    batch = batches[1]
    index = batch["index"].numpy()
    weights = [w.numpy().copy() for w in model.weights]
    optimizer_state = [v.numpy().copy() for v in model.optimizer.variables]
    try:
        # Sharpen the classifier, then pick δ₂ between the eligible rows' gaps max p − p[ỹ], so that some
        # eligible rows with a positive gap clear it and some do not.
        fc = model.classifier
        fc.kernel.assign(fc.kernel * 5.0)
        eligible_gaps = _eligible_gaps(model, batch, scope)
        candidates = np.unique(eligible_gaps[eligible_gaps > 1e-4])
        assert len(candidates) >= 2, eligible_gaps
        split = int(np.argmax(np.diff(candidates)))
        margin = float((candidates[split] + candidates[split + 1]) / 2)
        with_config(model, margin_2=margin, relabel_scope=scope)

        spe = model.steps_per_epoch
        # 1-based relabel_epoch 2 = 0-based epoch 1: the last step of epoch 0 must not relabel...
        model.optimizer.iterations.assign(spe - 1)
        before = model.current_labels.numpy().copy()
        model.train_step(batch)
        np.testing.assert_array_equal(model.current_labels.numpy(), before)
        # ...the first step of epoch 1 relabels exactly the rows past the margin (pre-step outputs).
        for w, v in zip(model.weights, weights):
            w.assign(v)
        fc.kernel.assign(fc.kernel * 5.0)
        model.optimizer.iterations.assign(spe)
        exceeds, argmax, uncertainty = _expected_relabel(model, batch, margin, scope)
        assert exceeds.any() and not exceeds.all()
        model.train_step(batch)
        after = model.current_labels.numpy()
        expected = before.copy()
        expected[index[exceeds]] = argmax[exceeds]
        np.testing.assert_array_equal(after, expected)
        assert (after[index[exceeds]] != before[index[exceeds]]).all()  # a row past the margin always changes
        # The per-sample score is 1 − α of this (pre-step) visit.
        np.testing.assert_allclose(model.last_uncertainty.numpy()[index], uncertainty, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model.per_sample_state()["uncertainty"].numpy()[index], uncertainty,
                                   rtol=1e-5, atol=1e-6)
    finally:
        with_config(model, margin_2=0.2, relabel_scope="batch")
        for w, v in zip(model.weights, weights):
            w.assign(v)
        for var, v in zip(model.optimizer.variables, optimizer_state):
            var.assign(v)


def test_relabel_off_never_changes_labels(built):
    _, model, batches = built
    weights = [w.numpy().copy() for w in model.weights]
    try:
        with_config(model, relabel=False, margin_2=0.0)
        model.classifier.kernel.assign(model.classifier.kernel * 20.0)
        model.optimizer.iterations.assign(100 * model.steps_per_epoch)
        before = model.current_labels.numpy().copy()
        model.train_step(batches[0])
        np.testing.assert_array_equal(model.current_labels.numpy(), before)
    finally:
        with_config(model, relabel=True, margin_2=0.2)
        for w, v in zip(model.weights, weights):
            w.assign(v)


def test_relabelled_table_survives_a_checkpoint_round_trip(built, tmp_path):
    from engine.checkpoint import CheckpointManager
    from engine.run import Run

    run, model, _ = built
    saved = model.current_labels.numpy().copy()
    try:
        relabelled = (saved + np.arange(len(saved))) % model.num_classes
        model.current_labels.assign(relabelled.astype(np.int32))
        manager = CheckpointManager(tmp_path / "run")
        path = manager.save(model, {"global_step": 1, "epoch": 0, "step_in_epoch": 1, "time": 0.0})
        n = model.num_train_samples
        rebuilt = Run(run.cfg, log=lambda *a, **k: None)
        fresh = build_run_model(rebuilt, n, rebuilt.model_cls.empty_method_data(rebuilt.method_cfg, n))
        assert not fresh.current_labels.numpy().any()  # zeros before loading
        manager.load_into(fresh, path, require_optimizer=True)
        np.testing.assert_array_equal(fresh.current_labels.numpy(), relabelled)
        np.testing.assert_array_equal(fresh.last_uncertainty.numpy(), model.last_uncertainty.numpy())
    finally:
        model.current_labels.assign(saved)


def test_final_metrics_count_the_relabelled_rows(built):
    run, model, _ = built
    saved = model.current_labels.numpy().copy()
    try:
        changed = saved.copy()
        changed[:5] = (changed[:5] + 1) % model.num_classes
        model.current_labels.assign(changed)
        metrics = model.final_metrics(run.context())
        assert metrics["scn_relabeled"] == 5
        assert metrics["scn_relabeled_fraction"] == pytest.approx(5 / model.num_train_samples)
    finally:
        model.current_labels.assign(saved)


def test_config_rejects_bad_values():
    from common.errors import ConfigError
    from models.scn import SCNConfig

    with pytest.raises(ConfigError):
        SCNConfig(relabel_scope="low")
    with pytest.raises(ConfigError):
        SCNConfig(relabel_epoch=0)
    with pytest.raises(ConfigError):
        SCNConfig(beta=1.5)


@pytest.mark.slow
def test_killed_run_resumes_bit_identically_while_relabelling(tiny_dataset, tmp_path, monkeypatch):
    """Relabelling from epoch 2 (1-based) on, with a margin the untrained network clears: the resumed
    run's relabelled table (and everything else) is the uninterrupted run's."""
    from helpers import check_resume_is_bit_identical

    weights = check_resume_is_bit_identical(tiny_dataset, tmp_path, monkeypatch, "scn",
                                            set={"relabel_epoch": "2", "margin_2": "0.02"})
    tables = [v for v in weights.values() if v.dtype == np.int32 and v.shape == (56,)]
    assert len(tables) == 1
    given = np.arange(56) % 7  # the tiny dataset's labels
    assert (tables[0] != given).any()  # the resumed epochs did relabel
