"""RUL model: the add-up loss is losses.rul's on the same tensors, its random permutation and dropout are
stateless (same batch + same step → same loss, also after a checkpoint round trip), the batch's
uncertainty rows update, inference (and the SavedModel's backbone → classifier path) is fc(μ), the fc's
learning-rate multiplier is exact (the optimizer's per-variable rate; the reparameterised fc for Adam), and the optional relabelling follows SCN's rule."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, build_run_model, with_config


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    run, model, method_data = build_method(tiny_dataset, tmp_path_factory.mktemp("rul"), "rul", seed=3)
    batches = list(run.train_dataset(method_data).take(2))
    return run, model, batches


def _snapshot(model):
    return [w.numpy().copy() for w in model.weights], [v.numpy().copy() for v in model.optimizer.variables]


def _restore(model, snapshot):
    for w, v in zip(model.weights, snapshot[0]):
        w.assign(v)
    for var, v in zip(model.optimizer.variables, snapshot[1]):
        var.assign(v)


def test_add_up_loss_is_the_losses_function_on_the_same_tensors(built):
    from losses.rul import add_up_loss, uncertainty_from_logvar, uncertainty_mix

    _, model, batches = built
    batch = batches[0]
    model.optimizer.iterations.assign(5)
    losses, outputs = model.compute_losses(batch, {}, training=True)
    # The same step's draws, by hand: the heads with their stateless dropout, the permutation, the mix.
    mu, logvar = model.heads(batch["image"], batch["index"], training=True)
    perm = model.permutation(batch["index"])
    np.testing.assert_array_equal(np.sort(perm.numpy()), np.arange(len(perm)))  # a permutation of the batch
    np.testing.assert_array_equal(outputs["permutation"].numpy(), perm.numpy())
    mixed, weights = uncertainty_mix(mu, logvar, perm)
    expected = add_up_loss(model.classifier(mixed), batch["label"], perm, 0.5)
    assert float(losses["add_up"]) == pytest.approx(float(expected), rel=1e-6)
    np.testing.assert_allclose(outputs["mix_weights"].numpy(), weights.numpy(), rtol=1e-6)
    np.testing.assert_allclose(outputs["uncertainty"].numpy(), uncertainty_from_logvar(logvar).numpy(), rtol=1e-6)
    # Training-mode dropout is on: the heads without it give other features.
    mu_no_dropout = model.mu_head(model.feature_map(batch["image"], training=True), training=True)
    assert np.abs(mu.numpy() - mu_no_dropout.numpy()).max() > 1e-3


def test_draws_are_a_function_of_the_step_and_the_batch(built):
    _, model, batches = built
    batch = batches[0]

    def loss_at(step, b=batch):
        model.optimizer.iterations.assign(step)
        losses, outputs = model.compute_losses(b, {}, training=True)
        return float(losses["add_up"]), outputs["permutation"].numpy()

    first, perm_first = loss_at(7)
    again, perm_again = loss_at(7)
    assert first == again  # bit-identical: no RNG state moved between the calls
    np.testing.assert_array_equal(perm_first, perm_again)
    other = [loss_at(step) for step in (8, 9, 10)]
    assert any(loss != first for loss, _ in other)
    assert any(not np.array_equal(perm, perm_first) for _, perm in other)
    # Other rows at the same step draw differently too.
    shuffled = {k: tf.reverse(v, [0]) for k, v in batch.items()}
    assert loss_at(7, shuffled)[0] != first


def test_resumed_model_draws_the_same(built, tmp_path):
    from engine.checkpoint import CheckpointManager
    from engine.run import Run

    run, model, batches = built
    model.optimizer.iterations.assign(4)
    manager = CheckpointManager(tmp_path / "run")
    path = manager.save(model, {"global_step": 4, "epoch": 0, "step_in_epoch": 4, "time": 0.0})
    expected = float(model.compute_losses(batches[1], {}, training=True)[0]["add_up"])
    n = model.num_train_samples
    rebuilt = Run(run.cfg, log=lambda *a, **k: None)
    fresh = build_run_model(rebuilt, n, rebuilt.model_cls.empty_method_data(rebuilt.method_cfg, n))
    assert int(fresh.draw_seed.numpy()) == 0
    manager.load_into(fresh, path, require_optimizer=True)
    assert int(fresh.draw_seed.numpy()) == 3 and int(fresh.optimizer.iterations.numpy()) == 4
    assert float(fresh.compute_losses(batches[1], {}, training=True)[0]["add_up"]) == expected


def test_step_updates_the_batch_rows_of_the_uncertainty(built):
    _, model, batches = built
    batch = batches[1]
    index = batch["index"].numpy()
    snapshot = _snapshot(model)
    try:
        model.optimizer.iterations.assign(2)
        _, outputs = model.compute_losses(batch, {}, training=True)  # the step's own (pre-update) forward
        expected = outputs["uncertainty"].numpy()
        before = model.last_uncertainty.numpy().copy()
        model.train_step(batch)
        after = model.per_sample_state()["uncertainty"].numpy()
        np.testing.assert_allclose(after[index], expected, rtol=1e-5)
        outside = np.setdiff1d(np.arange(model.num_train_samples), index)
        np.testing.assert_array_equal(after[outside], before[outside])
        assert (expected > 0).all()
    finally:
        _restore(model, snapshot)


def test_inference_is_fc_of_mu_and_the_export_path_serves_it(built):
    _, model, batches = built
    images = batches[0]["image"]
    mu = model.mu_head(model.feature_map(images, training=False), training=False)
    expected = model.classifier(tf.cast(mu, tf.float32)).numpy()
    np.testing.assert_allclose(model(images, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict_outputs(images)["logits"].numpy(), expected, rtol=1e-5, atol=1e-6)
    # The backbone is the image → μ network (embed's features and Grad-CAM see μ).
    np.testing.assert_allclose(model.backbone(images, training=False).numpy(), mu.numpy(), rtol=1e-5, atol=1e-6)
    assert model.backbone.output_shape[-1] == model.config.feature_dim
    # Inference is deterministic (no dropout).
    np.testing.assert_array_equal(model(images, training=False).numpy(), model(images, training=False).numpy())


def test_fc_learning_rate_multiplier_is_exact_for_adam():
    """Adam steps on W = m·V move W as Adam steps with lr·m on W (up to ε: large gradients here)."""
    from models.rul import FCLearningRateScale

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(16, 8)), tf.float32)
    target = tf.constant(rng.normal(size=(16, 3)) * 100, tf.float32)
    w0 = rng.normal(size=(8, 3)).astype(np.float32)
    b0 = rng.normal(size=(3,)).astype(np.float32)

    def three_steps(layer, variables, lr, weights_of):
        optimizer = keras.optimizers.Adam(learning_rate=lr)
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(layer(x) - target))
            optimizer.apply(tape.gradient(loss, variables), variables)
        return weights_of()

    plain = keras.layers.Dense(3)
    plain.build((None, 8))
    plain.kernel.assign(w0)
    plain.bias.assign(b0)
    expected = three_steps(plain, plain.trainable_variables, 1e-2 * 10, lambda: plain.kernel.numpy())

    scaled = FCLearningRateScale(keras.layers.Dense(3), 10.0)
    scaled.build((None, 8))
    scaled.inner.kernel.assign(w0 / 10)
    scaled.inner.bias.assign(b0 / 10)
    np.testing.assert_allclose(scaled(x).numpy(), x.numpy() @ w0 + b0, rtol=1e-5, atol=1e-5)
    got = three_steps(scaled, scaled.trainable_variables, 1e-2, lambda: scaled.effective_kernel.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _fc_kernel(model):
    """The fc's effective kernel W (reparameterised: m·V) and the variable training changes (V or W)."""
    from models.rul import FCLearningRateScale

    if isinstance(model.classifier, FCLearningRateScale):
        return model.classifier.effective_kernel, model.classifier.inner.kernel
    return model.classifier.kernel, model.classifier.kernel


@pytest.mark.parametrize("mode", ["optimizer", "reparameterised"])
def test_fc_lr_multiplier_scales_the_fcs_adam_step_and_one_switches_it_off(tiny_dataset, tmp_path, mode):
    """The official fc trains at 10× the rest (the diagnosis switch for RUL > CE: ``fc_lr_multiplier=1``).

    Adam's first step moves every weight by ≈ lr (its update is lr·g/(|g| + ε)); the fc's W moves by m·lr in
    both ``fc_lr_mode``s (the optimizer's per-variable rate; W = m·V), lr with the switch, as the heads.
    """
    from models.rul import RULConfig

    assert RULConfig().fc_lr_multiplier == 10.0 and RULConfig().fc_lr_mode == "optimizer"  # the defaults
    lr = None
    for multiplier in (1, 10):
        run, model, method_data = build_method(tiny_dataset, tmp_path / f"{mode}{multiplier}", "rul",
                                               set={"fc_lr_multiplier": str(multiplier), "fc_lr_mode": mode})
        batch = next(iter(run.train_dataset(method_data)))
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        fc_before = _fc_kernel(model)[0].numpy().copy()
        body = [v for v in model.trainable_variables if "dense" in v.path and "kernel" in v.path]
        body_before = [v.numpy().copy() for v in body]
        model.train_step(batch)
        fc_step = np.abs(_fc_kernel(model)[0].numpy() - fc_before)
        body_step = np.concatenate([np.abs(v.numpy() - b).ravel() for v, b in zip(body, body_before)])
        assert np.median(fc_step[fc_step > 0]) == pytest.approx(multiplier * lr, rel=0.05), multiplier
        assert np.median(body_step[body_step > 0]) == pytest.approx(lr, rel=0.05), multiplier


def test_under_lamb_only_the_optimizer_mode_gives_the_fc_its_rate(tiny_dataset, tmp_path):
    """LAMB steps each variable by lr·‖variable‖ (its trust ratio): rescaling the fc (W = m·V) changes nothing,
    the optimizer's per-variable rate moves W by m·lr of its norm."""
    relative = {}
    for mode in ("optimizer", "reparameterised"):
        run, model, method_data = build_method(tiny_dataset, tmp_path / mode, "rul", optimizer="lamb",
                                               set={"fc_lr_mode": mode})
        batch = next(iter(run.train_dataset(method_data)))
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        before = _fc_kernel(model)[0].numpy().copy()
        model.train_step(batch)
        relative[mode] = np.linalg.norm(_fc_kernel(model)[0].numpy() - before) / np.linalg.norm(before) / lr
    assert relative["optimizer"] == pytest.approx(10.0, rel=0.05)
    assert relative["reparameterised"] == pytest.approx(1.0, rel=0.05)


def test_the_backbone_multiplier_slows_the_pretrained_layers_and_not_rul_heads(tiny_dataset, tmp_path):
    """``--backbone-lr-multiplier`` scales the backbone's variables only: RUL's ``self.backbone`` is image → μ,
    and the μ head (new, like the log-variance head) keeps the full rate; the fc has its 10×."""
    run, model, _ = build_method(tiny_dataset, tmp_path, "rul", backbone_lr_multiplier=0.1)
    rates = model.optimizer.lr_multipliers
    key = model.optimizer._var_key
    mu = {key(v) for v in model.mu_head.trainable_variables}
    body = {key(v) for v in model.feature_map.trainable_variables}
    assert mu and body and not mu & body
    assert all(rates.get(k) == 0.1 for k in body)
    assert not mu & set(rates) and not {key(v) for v in model.logvar_head.trainable_variables} & set(rates)
    assert {rates[key(v)] for v in model.classifier.trainable_variables} == {10.0}


def test_a_record_written_before_fc_lr_mode_reads_as_reparameterised():
    """Runs of the toolkit before the option used W = m·V; their config.json has no ``fc_lr_mode``: they load as
    they trained, and a resume or a grid compares them as such."""
    from common.config import check_saved_values
    from engine.config import compare_configs
    from models.rul import RULConfig

    assert check_saved_values(RULConfig, {"dropout": 0.4}, "x")["fc_lr_mode"] == "reparameterised"
    assert check_saved_values(RULConfig, {"fc_lr_mode": "optimizer"}, "x")["fc_lr_mode"] == "optimizer"
    old = {"run": {"method": "rul"}, "method_config": {"dropout": 0.4}, "data": {}}
    same = {"run": {"method": "rul"}, "method_config": {"dropout": 0.4, "fc_lr_mode": "reparameterised"}, "data": {}}
    changed = {"run": {"method": "rul"}, "method_config": {"dropout": 0.4, "fc_lr_mode": "optimizer"}, "data": {}}
    assert compare_configs(old, same) == []
    assert compare_configs(old, changed) == ["method_config.fc_lr_mode: 'reparameterised' → 'optimizer'"]


def test_fc_initialisation_and_coupled_l2_use_the_effective_weights(built, tiny_dataset, tmp_path):
    for model in (built[1], build_method(tiny_dataset, tmp_path, "rul", set={"fc_lr_mode": "reparameterised"})[1]):
        effective, stored = _fc_kernel(model)
        kernel = effective.numpy()
        assert kernel.std() == pytest.approx(np.sqrt(2.0 / kernel.shape[0]), rel=0.35)  # he_normal of W, not of V
        wd = 1e-3
        expected = 0.5 * wd * sum(float(tf.reduce_sum(tf.square(v))) for v in model.trainable_variables
                                  if "kernel" in v.path and v is not stored)
        expected += 0.5 * wd * float(tf.reduce_sum(tf.square(effective)))
        assert float(model.coupled_l2(wd)) == pytest.approx(expected, rel=1e-5)


def test_relabel_switch_uses_scns_rule_on_the_unmixed_probabilities(built):
    from losses.scn import relabel

    _, model, batches = built
    batch = batches[0]
    index = batch["index"].numpy()
    snapshot = _snapshot(model)
    try:
        with_config(model, relabel=True, relabel_epoch=2, relabel_margin=0.05)
        _fc_kernel(model)[1].assign(_fc_kernel(model)[1] * 5.0)
        # Before the relabel epoch: nothing changes.
        model.optimizer.iterations.assign(model.steps_per_epoch - 1)
        before = model.current_labels.numpy().copy()
        model.train_step(batch)
        np.testing.assert_array_equal(model.current_labels.numpy(), before)
        _restore(model, snapshot)
        _fc_kernel(model)[1].assign(_fc_kernel(model)[1] * 5.0)
        # From it: exactly the rows whose unmixed softmax(fc(μ)) margin exceeds δ₂.
        model.optimizer.iterations.assign(model.steps_per_epoch)
        _, outputs = model.compute_losses(batch, {}, training=True)
        new_labels, changed = relabel(tf.nn.softmax(outputs["logits"]), before[index], 0.05)
        assert changed.numpy().any()
        model.train_step(batch)
        expected = before.copy()
        expected[index] = new_labels.numpy()
        np.testing.assert_array_equal(model.current_labels.numpy(), expected)
    finally:
        with_config(model, relabel=False, relabel_epoch=10, relabel_margin=0.2)
        _restore(model, snapshot)


def test_config_rejects_bad_values():
    from common.errors import ConfigError
    from models.rul import RULConfig

    with pytest.raises(ConfigError):
        RULConfig(dropout=1.0)
    with pytest.raises(ConfigError):
        RULConfig(fc_lr_multiplier=0.0)
    with pytest.raises(ConfigError, match="fc_lr_mode"):
        RULConfig(fc_lr_mode="both")


# A run killed after an epoch resumes bit-identically (its permutations and dropout masks too):
# tests/test_method_contract.py.
