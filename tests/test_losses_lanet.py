"""Checks of the LA-Net loss maths (losses/lanet.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from losses import lanet  # noqa: E402


def _awing_np(pred, target, alpha=2.1, omega=14.0, eps=1.0, theta=0.5):
    err = abs(target - pred)
    gamma = alpha - target
    if err < theta:
        return omega * np.log(1 + (err / eps) ** gamma)
    a = omega * (1 / (1 + (theta / eps) ** gamma)) * gamma * (theta / eps) ** (gamma - 1) / eps
    c = theta * a - omega * np.log(1 + (theta / eps) ** gamma)
    return a * err - c


def test_awing_zero_error_continuity_and_hand_value():
    target = np.array([0.0, 0.3, 1.0], np.float32)
    assert lanet.adaptive_wing_loss(target, target, None).numpy() == pytest.approx(0.0, abs=1e-7)
    for y in (0.0, 0.7):
        below = lanet.adaptive_wing_loss([[y + 0.5 - 1e-4]], [[y]]).numpy()
        above = lanet.adaptive_wing_loss([[y + 0.5 + 1e-4]], [[y]]).numpy()
        assert below == pytest.approx(above, abs=5e-3)
    pred = np.array([0.2, 0.9, 0.1], np.float32)
    tgt = np.array([0.0, 0.3, 1.0], np.float32)
    weight = np.array([1.0, 10.0, 1.0], np.float32)
    expected = np.mean([w * _awing_np(p, t) for p, t, w in zip(pred.astype(float), tgt.astype(float), weight)])
    np.testing.assert_allclose(lanet.adaptive_wing_loss(pred, tgt, weight).numpy(), expected, rtol=1e-5)
    # First element by hand: ω·ln(1 + 0.2^2.1).
    assert _awing_np(0.2, 0.0) == pytest.approx(14 * np.log1p(0.2**2.1))


def test_awing_gradient_finite_at_zero_error():
    pred = tf.Variable([[0.0, 0.5, 1.0]])
    with tf.GradientTape() as tape:
        loss = lanet.adaptive_wing_loss(pred, [[0.0, 0.5, 1.0]])
    assert np.isfinite(tape.gradient(loss, pred).numpy()).all()


def test_el_contrastive_hand_case():
    s = np.sqrt(0.5)
    q = np.array([[1.0, 0.0], [s, s]])
    k = np.array([[0.0, 1.0], [1.0, 0.0]])
    queue = np.array([[s, s], [s, -s]])
    labels = np.array([0, 0])
    queue_labels = np.array([1.0, 0.0])
    out = lanet.el_contrastive_loss(q, k, queue, labels, queue_labels, temperature=0.1).numpy()
    assert out > 0.1  # negatives matter in this case
    # Direct numpy: both pairs are positives; only queue entry 0 (label 1) is a negative.
    t = 0.1
    expected = []
    for i in range(2):
        neg = np.exp(q[i] @ queue[0] / t)
        losses = [-np.log(np.exp(q[i] @ k[j] / t) / (np.exp(q[i] @ k[j] / t) + neg)) for j in range(2)]
        expected.append(np.mean(losses))
    np.testing.assert_allclose(out, np.mean(expected), rtol=1e-5)
    # Different labels: only j = i is positive and each sample's negatives change.
    out2 = lanet.el_contrastive_loss(q, k, queue, np.array([0, 1]), queue_labels).numpy()
    l0 = -np.log(np.exp(q[0] @ k[0] / t) / (np.exp(q[0] @ k[0] / t) + np.exp(q[0] @ queue[0] / t)))
    l1 = -np.log(np.exp(q[1] @ k[1] / t) / (np.exp(q[1] @ k[1] / t) + np.exp(q[1] @ queue[1] / t)))
    np.testing.assert_allclose(out2, (l0 + l1) / 2, rtol=1e-5)


def test_el_contrastive_no_negatives_is_zero_with_finite_grad():
    q = tf.Variable([[1.0, 0.0], [0.0, 1.0]])
    with tf.GradientTape() as tape:
        loss = lanet.el_contrastive_loss(q, [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]], [-1e10, -1e10], [-1e10])
    assert loss.numpy() == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(tape.gradient(loss, q).numpy()).all()


def test_gaussian_heatmaps_peak_window_and_weights():
    landmarks = np.array([[[41.0, 22.0], [500.0, 10.0], [-30.0, 5.0]]], np.float32)  # stride 4
    heat, weights = lanet.gaussian_heatmaps(landmarks, 56, 4)
    heat, weights = heat.numpy(), weights.numpy()
    assert heat.shape == weights.shape == (1, 56, 56, 3)
    # 41/4 + 0.5 = 10.75 → x 10; 22/4 + 0.5 = 6 → y 6 (row index = y).
    assert np.unravel_index(heat[0, :, :, 0].argmax(), (56, 56)) == (6, 10)
    assert heat[0, 6, 10, 0] == pytest.approx(1.0)
    assert heat[0, 6, 11, 0] == pytest.approx(np.exp(-1 / 4.5), rel=1e-6)
    # Release window: offsets −5..4 are kept, +5 is cut.
    assert heat[0, 6, 5, 0] > 0 and heat[0, 6, 14, 0] > 0 and heat[0, 6, 15, 0] == 0
    full, _ = lanet.gaussian_heatmaps(landmarks, 56, 4, truncate=False)
    assert full.numpy()[0, 6, 15, 0] == pytest.approx(np.exp(-25 / 4.5), rel=1e-5)
    # Weight map: 10 where the 3×3-dilated heatmap exceeds 0.2.
    dilated = np.zeros((56, 56))
    h = heat[0, :, :, 0]
    padded = np.pad(h, 1)
    for dy in range(3):
        for dx in range(3):
            dilated = np.maximum(dilated, padded[dy:dy + 56, dx:dx + 56])
    np.testing.assert_array_equal(weights[0, :, :, 0], np.where(dilated > 0.2, 10.0, 1.0))
    assert weights[0, 6, 13, 0] == 10.0 and weights[0, 6, 14, 0] == 1.0
    # Landmarks outside the map: zero heatmap and unit weights.
    for ch in (1, 2):
        assert heat[0, :, :, ch].max() == 0.0 and (weights[0, :, :, ch] == 1.0).all()


def test_knn_adjacency_excludes_self():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.95]], np.float32)
    adj = lanet.knn_adjacency(feats, 1).numpy()
    np.testing.assert_array_equal(adj, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])
    adj_all = lanet.knn_adjacency(feats, 8).numpy()  # k clipped to B − 1
    np.testing.assert_array_equal(adj_all, 1 - np.eye(4))


def test_normalize_contributions_and_kl():
    w = np.array([[0.0, 2.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
    out = lanet.normalize_contributions(w).numpy()
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], [1 / 3] * 3, rtol=1e-6)
    target = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], np.float32)
    logits = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], np.float32)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.nansum(np.where(target > 0, target * (np.log(target) - logp), 0.0)) / 2
    from_logits = lanet.kl_divergence_batchmean(target, logits, from_logits=True).numpy()
    np.testing.assert_allclose(from_logits, kl, rtol=1e-5)
    np.testing.assert_allclose(lanet.kl_divergence_batchmean(target, np.exp(logp)).numpy(), kl, rtol=1e-4)


def test_coordinate_regression_hand_case_and_gradient():
    landmarks = np.array([[[10.0, 20.0], [30.0, 40.0]]], np.float32)  # a 40-px image
    np.testing.assert_allclose(lanet.normalized_coordinates(landmarks, 40).numpy(), [[0.25, 0.5, 0.75, 1.0]])
    pred = tf.Variable([[0.25, 0.5, 0.5, 1.5]])
    with tf.GradientTape() as tape:
        loss = lanet.coordinate_regression_loss(pred, landmarks, 40)
    # Errors 0, 0, −0.25, 0.5: mean of squares (0.0625 + 0.25)/4.
    assert loss.numpy() == pytest.approx(0.078125, rel=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, pred).numpy(), [[0.0, 0.0, -0.125, 0.25]], rtol=1e-6)
    # Batch of two: mean over B·2L; the same error per element gives the same loss at any image size.
    two = np.concatenate([landmarks, landmarks * 2], 0)
    target = lanet.normalized_coordinates(two * 2.8, 112).numpy()
    assert lanet.coordinate_regression_loss(target + 0.1, two * 2.8, 112).numpy() == pytest.approx(0.01, rel=1e-5)


def test_neighbor_label_agreement_hand_case():
    adjacency = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1]], np.float32)
    labels = np.array([2, 2, 5, 5])
    agreeing, slots = lanet.neighbor_label_agreement(adjacency, labels)
    # Row 0: neighbours 1 (2 ✓), 2 (5 ✗); row 1: 0 ✓, 3 ✗; row 2: 0 ✗, 1 ✗; row 3: 2 ✓, 3 ✓ (self if given).
    assert float(slots) == 8.0 and float(agreeing) == 4.0
    agreeing, slots = lanet.neighbor_label_agreement(np.zeros((1, 1), np.float32), [0])
    assert float(slots) == 0.0 and float(agreeing) == 0.0


def test_balanced_sampler_counts():
    counts = np.array([705, 717, 281, 4772, 1982, 1290, 2524])
    np.testing.assert_array_equal(lanet.balanced_sampler_counts(counts, 0, 80), counts)
    for e in (1, 40, 79):
        out = lanet.balanced_sampler_counts(counts, e, 80)
        assert out.sum() == counts.sum() and (out >= 0).all()
    late = lanet.balanced_sampler_counts(counts, 79, 80)
    assert np.abs(late - counts.sum() / 7).max() < 0.02 * counts.sum() / 7 + 60  # ≈ 1.75 k each


def test_works_inside_tf_function():
    @tf.function
    def f(landmarks, feats):
        heat, weights = lanet.gaussian_heatmaps(landmarks, 16, 4)
        adj = lanet.knn_adjacency(feats, 2)
        contrib = lanet.normalize_contributions(adj)
        return lanet.adaptive_wing_loss(heat * 0.5, heat, weights) + tf.reduce_sum(contrib)

    out = f(tf.constant([[[10.0, 20.0]], [[30.0, 5.0]]]), tf.random.normal([5, 3], seed=1))
    assert np.isfinite(out.numpy())

    @tf.function
    def scaled(heatmaps, landmarks):  # heatmap_scale=grid in a graph, with an unknown batch size
        return lanet.landmark_heatmap_loss(heatmaps, landmarks, 48, "grid")

    heat = tf.random.uniform((3, 12, 12, 2))
    points = tf.constant(np.random.default_rng(0).uniform(0, 48, (3, 2, 2)), tf.float32)
    got = scaled.get_concrete_function(tf.TensorSpec([None, 12, 12, 2]), tf.TensorSpec([None, 2, 2]))(heat, points)
    assert float(got) == pytest.approx(float(lanet.landmark_heatmap_loss(heat, points, 48, "grid")), rel=1e-6)
