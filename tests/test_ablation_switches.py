"""The papers' ablation switches: each changes its term in the documented way; at its default the term is
the method's own. Plus the K-sweep protocol on a tiny grid."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers import build_method


def _batch(run, method_data):
    return next(iter(run.train_dataset(method_data)))


# --- LA-Net Table 2 ------------------------------------------------------------------------------------------

def test_lanet_lde_without_landmarks_uses_the_expression_graph_alone(tiny_dataset, tmp_path):
    from losses.lanet import knn_adjacency, normalize_contributions

    run, model, _ = build_method(tiny_dataset, tmp_path, "lanet")
    features = tf.random.stateless_normal((8, model.expression_score.dim), [1, 2])
    landmarks = tf.random.stateless_normal((8, model.landmark_score.dim), [3, 4])
    probs = tf.nn.softmax(tf.random.stateless_normal((8, 7), [5, 6]))
    w_f = normalize_contributions(model.expression_score(features) * knn_adjacency(features, 8))
    w_g = normalize_contributions(model.landmark_score(landmarks) * knn_adjacency(landmarks, 8))
    both = model.current_distribution(features, landmarks, probs)
    np.testing.assert_allclose(both, 0.5 * (w_f @ probs + w_g @ probs), atol=1e-6)  # the method (default)
    import dataclasses

    model.config = dataclasses.replace(model.config, lde_landmarks=False)
    np.testing.assert_allclose(model.current_distribution(features, landmarks, probs), w_f @ probs, atol=1e-6)


@pytest.mark.slow
def test_lanet_el_with_onehot_labels_uses_the_given_labels(tiny_dataset, tmp_path):
    run, model, method_data = build_method(tiny_dataset, tmp_path, "lanet", set={"el_labels": "onehot"})
    batch = _batch(run, method_data)
    _, outputs = model.compute_losses(batch, {}, training=False)
    np.testing.assert_array_equal(outputs["pseudo_labels"].numpy(), batch["label"].numpy().astype(np.float32))
    run, model, method_data = build_method(tiny_dataset, tmp_path / "b", "lanet")
    _, outputs = model.compute_losses(_batch(run, method_data), {}, training=False)
    # The method's own: confident estimated labels, else a label unique to the sample (negative).
    assert (outputs["pseudo_labels"].numpy() < 0).any() or (outputs["pseudo_labels"].numpy() >= 0).all()


# --- NLA Table 5 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("consistency", ["jsd", "l1", "cam", "none"])
def test_nla_consistency_and_naw_switches(consistency, tiny_dataset, tmp_path):
    from losses.eac import attention_consistency, attention_maps
    from losses.nla import jsd_consistency, naw_cross_entropy

    overrides = {"consistency": consistency, "naw": "false" if consistency == "l1" else "true"}
    run, model, method_data = build_method(tiny_dataset, tmp_path, "nla", set=overrides)
    batch = _batch(run, method_data)
    losses, outputs = model.compute_losses(batch, {}, training=False)
    logits, flipped = outputs["logits"], outputs["flipped_logits"]
    labels = batch["label"]
    if overrides["naw"] == "true":
        expected_ce = tf.reduce_mean(naw_cross_entropy(logits, labels, model.schedule()))
    else:  # NAW off: plain cross-entropy
        expected_ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    # Each key says what it holds: naw_ce or (NAW off) ce, then the consistency term under its own name.
    classification = "naw_ce" if overrides["naw"] == "true" else "ce"
    assert set(losses) == {classification} | ({consistency} - {"none"}), sorted(losses)
    assert model.loss_names == tuple(losses) and set(losses) <= {m.name for m in model.metrics}  # log columns
    lam = model.config.lam
    assert [model.loss_weight(k) for k in losses] == [lam, 1.0 - lam][: len(losses)]
    np.testing.assert_allclose(losses[classification], expected_ce, rtol=1e-6)
    if consistency == "jsd":
        np.testing.assert_allclose(losses["jsd"], jsd_consistency(logits, flipped, model.config.jsd_mode), rtol=1e-6)
    elif consistency == "l1":
        p, q = tf.nn.softmax(logits).numpy(), tf.nn.softmax(flipped).numpy()
        np.testing.assert_allclose(losses["l1"], np.abs(p - q).sum(1).mean(), rtol=1e-5)
    elif consistency == "cam":
        images = batch["image"]
        _, maps = model.map_view(tf.concat([images, tf.image.flip_left_right(images)], 0), training=False)
        cams = attention_maps(maps, model.classifier.kernel)
        expected = attention_consistency(cams[: len(labels)], cams[len(labels):])
        np.testing.assert_allclose(losses["cam"], expected, rtol=1e-5)
        # The CAM path classifies exactly as the usual one (same pooled feature, same classifier).
        np.testing.assert_allclose(logits, model(images, training=False), atol=1e-5)


# --- DDAF: the paper's squared Euclidean labels ------------------------------------------------------------------

@pytest.mark.slow
def test_ddaf_euclidean_labels_squared_or_not(tiny_dataset, tmp_path):
    for squared in (False, True):
        run, model, method_data = build_method(
            tiny_dataset, tmp_path / str(squared), "ddaf",
            set={"fuse_type": "euclidean", "alpha": "0", "euclidean_squared": str(squared).lower()})
        batch = _batch(run, method_data)
        _, outputs = model.compute_losses(batch, {}, training=False)
        d = np.linalg.norm(batch["va"].numpy()[:, None, :] - model.class_means.numpy()[None], axis=-1)
        inverse = 1.0 / (d ** 2 if squared else d)
        np.testing.assert_allclose(outputs["targets"], inverse / inverse.sum(1, keepdims=True), rtol=1e-4)


# --- LDLVA: Wen et al.'s centre update ------------------------------------------------------------------------

def test_ldlva_wen_centre_update(tiny_dataset, tmp_path):
    from losses.ldlva import center_push

    run, model, method_data = build_method(tiny_dataset, tmp_path, "ldlva",
                                               set={"center_update": "wen", "num_neighbors": "2"})
    rng = np.random.default_rng(0)
    model.class_centers.assign(rng.normal(size=model.class_centers.shape).astype(np.float32))
    before = model.class_centers.numpy().copy()
    batch = _batch(run, method_data)
    _, outputs = model.compute_losses(batch, model.watched_tensors(batch), training=False)
    model._update_centers(outputs, {})
    features, labels = outputs["features"].numpy(), batch["label"].numpy()
    expected = before.copy()
    for j in range(7):
        members = features[labels == j]
        expected[j] -= 0.5 * (before[j] - members).sum(0) / (1 + len(members))  # Wen et al., α = 0.5
    centers = tf.constant(before)
    with tf.GradientTape() as tape:
        tape.watch(centers)
        push = center_push(centers)
    expected -= 0.5 * tape.gradient(push, centers).numpy()
    np.testing.assert_allclose(model.class_centers.numpy(), expected, rtol=1e-5, atol=1e-6)


# --- the K sweep -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_k_sweep_protocol_builds_what_it_needs(tiny_dataset, tmp_path):
    import benchmark
    from common.errors import ConfigError

    out = tmp_path / "k"
    argv = ["--protocol", "k-sweep", "--levels", "2", "3", "--methods", "ldlva", "--seeds", "0", "--noise-rate", "0.2",
            "--dataset", "csv", "--num-classes", "7", "--data-dir", str(tiny_dataset), "--out", str(out),
            "--backbone", "tiny_cnn", "--image-size", "24", "--batch-size", "8", "--epochs", "1", "--val-every", "0"]
    assert benchmark.main(argv) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["level"].astype(int)) == [2, 3]
    for k in (2, 3):
        record = json.loads((out / "runs" / f"ldlva_{k}_s0" / "config.json").read_text())
        assert record["method_config"]["num_neighbors"] == k
        assert (record["run"]["noise"], record["run"]["noise_rate"]) == ("symmetric", 0.2)
    assert "| Method | K = 2 | K = 3 |" in (out / "results.md").read_text()
    with pytest.raises(ConfigError, match="has none"):
        benchmark.main([*argv[:6], "ce", *argv[7:]])
