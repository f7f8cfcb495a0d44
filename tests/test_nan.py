"""Numerical safety: a non-finite loss stops the run with a clear message and an intact checkpoint; the
loss functions stay finite (values and gradients) on adversarial but legal inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from helpers_cli import copy_dataset, h5_datasets, run_cli, train_args, tree_digest


# --- the non-finite guard ---------------------------------------------------------------------------------
@pytest.fixture
def record_saves(monkeypatch):
    """Digest of every checkpoint right after it is written (to prove it is untouched later)."""
    from engine.checkpoint import CheckpointManager

    saved = {}
    real_save = CheckpointManager.save

    def save(self, model, state):
        path = real_save(self, model, state)
        saved[path.name] = tree_digest(path)
        return path

    monkeypatch.setattr(CheckpointManager, "save", save)
    return saved


def test_nan_loss_stops_naming_step_and_intact_checkpoint(tiny_dataset, tmp_path, capsys, monkeypatch,
                                                          record_saves):
    import train
    from models.ce import CEModel

    real_losses = CEModel.compute_losses

    def poisoned(self, batch, watched, training=True):
        losses, outputs = real_losses(self, batch, watched, training)
        # From the 5th step on (iterations counts finished steps) the loss is NaN.
        losses["ce"] = tf.where(self.optimizer.iterations >= 4, tf.constant(float("nan")), losses["ce"])
        return losses, outputs

    monkeypatch.setattr(CEModel, "compute_losses", poisoned)
    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    out = tmp_path / "run"
    code, _, err = run_cli(train, train_args(ds, out, "--checkpoint-every", "2", "--val-every", "0"), capsys)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    message = err.splitlines()[0]
    assert "non-finite loss" in message and "global step 5" in message
    assert "step-000000004" in message and "--resume" in message
    ckpt = out / "ckpt"
    assert (ckpt / "latest").read_text().strip() == "step-000000004"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-000000002", "step-000000004"]
    assert tree_digest(ckpt / "step-000000004") == record_saves["step-000000004"]
    weights = h5_datasets(ckpt / "step-000000004" / "model.weights.h5")
    assert all(np.isfinite(v).all() for v in weights.values() if np.asarray(v).dtype.kind == "f")

    # The message's advice works: with the cause gone, --resume continues from step 4 and finishes.
    monkeypatch.setattr(CEModel, "compute_losses", real_losses)
    code, out_text, err = run_cli(train, train_args(ds, out, "--checkpoint-every", "2", "--val-every", "0", "--resume"), capsys)
    assert code == 0, err[-3000:]
    assert "global step 4" in out_text
    assert json.loads((ckpt / "step-000000007" / "state.json").read_text())["global_step"] == 7


def test_exploding_learning_rate_is_caught(tiny_dataset, tmp_path, capsys, record_saves):
    """The real thing, no injection: SGD at lr 1e12 overflows within a few steps (step 3 here)."""
    import train

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    out = tmp_path / "run"
    argv = train_args(ds, out, "--optimizer", "sgd", "--lr", "1e12", "--checkpoint-every", "1", "--val-every", "0")
    code, _, err = run_cli(train, argv, capsys)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    message = err.splitlines()[0]
    assert "non-finite loss" in message
    step = int(message.split("global step ")[1].split(";")[0])
    latest = (out / "ckpt" / "latest").read_text().strip() if (out / "ckpt" / "latest").exists() else None
    if latest is None:  # blew up on the very first step: nothing good to name
        assert step == 1 and "(none yet)" in message
    else:
        assert latest == f"step-{step - 1:09d}" and latest in message
        assert tree_digest(out / "ckpt" / latest) == record_saves[latest]


# --- loss functions on adversarial inputs ------------------------------------------------------------------
def _finite(*tensors):
    for t in tensors:
        if t is None:
            continue
        t = tf.convert_to_tensor(t)
        assert np.isfinite(t.numpy()).all(), t
    return True


def _value_and_grads(fn, *inputs):
    """fn(*inputs) and its gradients w.r.t. every float input (all must be finite)."""
    variables = [tf.Variable(np.asarray(x, np.float32)) for x in inputs]
    with tf.GradientTape() as tape:
        value = fn(*variables)
    grads = tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, grads


B, K, C, D = 4, 3, 7, 5
LABELS = np.array([0, 3, 6, 2])
ONE_HOT = np.eye(C, dtype=np.float32)[LABELS]  # predictions with exact zeros and ones


@pytest.mark.parametrize("lam", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("contributions", ["zeros", "ones", "one_zero_row"])
def test_ldlva_losses_guarded(lam, contributions):
    from losses import ldlva

    contrib = {"zeros": np.zeros((B, K)), "ones": np.ones((B, K)),
               "one_zero_row": np.vstack([np.zeros((1, K)), np.ones((B - 1, K))])}[contributions]
    neighbor_probs = np.repeat(ONE_HOT[:, None, ::-1], K, axis=1)  # one-hot neighbours on other classes

    def loss(probs, nb, c, lam_rows):
        target = ldlva.target_distribution(LABELS, nb, c, lam_rows, C)
        return ldlva.soft_cross_entropy(target, probs)

    value, grads = _value_and_grads(loss, ONE_HOT, neighbor_probs, contrib, np.full((B,), lam))
    _finite(value, *grads)
    target = ldlva.target_distribution(LABELS, neighbor_probs, contrib, np.full((B,), lam), C)
    np.testing.assert_allclose(target.numpy().sum(-1), 1.0, rtol=1e-6)
    if contributions == "zeros":  # documented fallback: the given label
        np.testing.assert_allclose(target.numpy(), ONE_HOT)

    features = np.zeros((B, D))
    centers = np.zeros((C, D))  # all centres equal (the release's initialisation)
    value, grads = _value_and_grads(lambda f, m, u: ldlva.discriminative_loss(f, LABELS, m, u),
                                    features, centers, np.full((B,), lam))
    _finite(value, *grads)
    value, grads = _value_and_grads(lambda f, m, w: ldlva.release_center_loss(f, LABELS, m, w),
                                    features, centers, np.full((B,), lam))
    _finite(value, *grads)
    moved = ldlva.release_center_attraction(features, LABELS, centers, np.full((B,), lam))
    _finite(moved, ldlva.release_center_repulsion(moved), ldlva.release_center_repulsion_energy(moved))
    _finite(ldlva.va_similarity(np.zeros((B, 2)), np.zeros((B, K, 2))),
            ldlva.va_similarity(np.ones((B, 2)), -np.ones((B, K, 2)), metric="l1"))
    weights = ldlva.balanced_class_weights(np.zeros(10, int), C)  # every other class absent
    assert np.isfinite(weights).all()


@pytest.mark.parametrize("schedule", [0.0, 1.0])
@pytest.mark.parametrize("logits", ["one_hot_right", "one_hot_wrong", "uniform", "huge"])
def test_nla_losses_guarded(schedule, logits):
    from losses import nla

    z = {"one_hot_right": 80.0 * ONE_HOT, "one_hot_wrong": 80.0 * ONE_HOT[::-1],
         "uniform": np.zeros((B, C)), "huge": 1e30 * (ONE_HOT - 0.5)}[logits]
    value, grads = _value_and_grads(
        lambda a, b: nla.nla_total_loss(a, b, LABELS, schedule), z, z[:, ::-1])
    assert _finite(value, *grads)
    for mode in ("official", "textbook"):
        value, grads = _value_and_grads(lambda a, b: nla.jsd_consistency(a, b, mode), z, -z)
        assert _finite(value, *grads)
    assert _finite(nla.naw_weights(z, LABELS, schedule), nla.covariance_schedule(0, 1), nla.covariance_schedule(1, 1))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_ddaf_losses_guarded(alpha):
    from losses import ddaf

    means = np.random.default_rng(0).uniform(-1, 1, (C, 2))
    va = means[LABELS]  # points exactly on their centroids: zero distances
    mixed = ddaf.euclidean_mixed_labels(tf.constant(va, tf.float32), tf.constant(means, tf.float32))
    _finite(mixed)
    np.testing.assert_allclose(mixed.numpy().sum(-1), 1.0, rtol=1e-5)
    targets = ddaf.fuse_labels(tf.constant(LABELS), mixed, alpha)
    zero_targets = np.zeros((B, C), np.float32)  # an all-zero target row (cosine norm 0)
    for t in (targets.numpy(), zero_targets):
        value, grads = _value_and_grads(
            lambda pva, p: sum(ddaf.ddaf_losses(pva, va, p, t, LABELS, np.ones(C)).values()), va, ONE_HOT)
        _finite(value, *grads)
    weights = ddaf.class_weights_max_over_count(np.array([0, 0, 1]), C)  # absent classes
    assert np.isfinite(weights).all()
    stats = ddaf.trimmed_class_stats(np.zeros((C, 2)), np.arange(C), C)  # one point per class: singular
    far = ddaf.gmm_mixed_labels(np.full((2, 2), 1e3), *stats)  # every density underflows
    assert np.isfinite(far).all() and np.allclose(far.sum(-1), 1.0)
    assert ddaf.ccc(np.ones(5), np.ones(5)) == 1.0


@pytest.mark.parametrize("case", ["zero_contributions", "one_hot", "single_label"])
def test_lanet_losses_guarded(case):
    from losses import lanet

    weights = np.zeros((B, B)) if case == "zero_contributions" else np.eye(B)[::-1]
    normalized = lanet.normalize_contributions(weights)
    _finite(normalized)
    np.testing.assert_allclose(normalized.numpy().sum(-1), 1.0, rtol=1e-5)
    target = ONE_HOT if case != "zero_contributions" else np.full((B, C), 1.0 / C)
    value, grads = _value_and_grads(lambda t, p: lanet.kl_divergence_batchmean(t, p), target, ONE_HOT[::-1])
    _finite(value, *grads)
    value, grads = _value_and_grads(lambda t, z: lanet.kl_divergence_batchmean(t, z, from_logits=True),
                                    target, 1e4 * ONE_HOT)
    _finite(value, *grads)
    labels = np.zeros(B) if case == "single_label" else LABELS
    q = tf.math.l2_normalize(tf.constant(np.random.default_rng(1).normal(size=(B, D)), tf.float32), axis=-1)
    queue = q.numpy()[::-1]
    value, grads = _value_and_grads(
        lambda a, b: lanet.el_contrastive_loss(a, b, queue, labels, labels[::-1]), q.numpy(), q.numpy())
    _finite(value, *grads)
    heat, w = lanet.gaussian_heatmaps(np.array([[[-50.0, 1e6], [3.0, 3.0]]]), 6, 4.0)
    _finite(heat, w)
    value, grads = _value_and_grads(lambda p: lanet.adaptive_wing_loss(p, heat), heat.numpy())  # zero error
    _finite(value, *grads)
    counts = lanet.balanced_sampler_counts(np.array([5, 0, 3]), 0, 4)
    assert counts.sum() == 8 and (counts >= 0).all()
