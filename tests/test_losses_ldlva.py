"""Hand-computed checks of the LDLVA loss maths (losses/ldlva.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from losses import ldlva  # noqa: E402

RNG = np.random.default_rng(0)


def _random_probs(*shape):
    logits = RNG.normal(size=shape)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def batch():
    b, k, c = 4, 3, 7
    return {
        "labels": np.array([0, 3, 6, 2]),
        "neighbor_probs": _random_probs(b, k, c),
        "contributions": RNG.uniform(0.1, 1.0, size=(b, k)).astype(np.float32),
        "num_classes": c,
    }


def test_va_similarity_hand_values():
    anchor = np.array([[0.0, 0.0]], np.float32)
    neighbors = np.array([[[0.3, -0.4], [0.0, 0.0]]], np.float32)
    l2 = ldlva.va_similarity(anchor, neighbors, delta=0.5, metric="l2").numpy()
    l1 = ldlva.va_similarity(anchor, neighbors, delta=0.5, metric="l1").numpy()
    # ‖(0.3, −0.4)‖² = 0.25 → exp(−0.25/0.25) ; ‖·‖₁ = 0.7 → exp(−0.7/0.5)
    np.testing.assert_allclose(l2, [[np.exp(-1.0), 1.0]], rtol=1e-6)
    np.testing.assert_allclose(l1, [[np.exp(-1.4), 1.0]], rtol=1e-6)
    assert l2.shape == (1, 2)
    with pytest.raises(ValueError):
        ldlva.va_similarity(anchor, neighbors, metric="cosine")


def test_target_lambda_zero_is_onehot(batch):
    t = ldlva.target_distribution(batch["labels"], batch["neighbor_probs"], batch["contributions"],
                                  np.zeros(4, np.float32), batch["num_classes"]).numpy()
    np.testing.assert_allclose(t, np.eye(7)[batch["labels"]], atol=0)


def test_target_lambda_one_is_normalised_neighbor_mix(batch):
    t = ldlva.target_distribution(batch["labels"], batch["neighbor_probs"], batch["contributions"],
                                  np.ones((4, 1), np.float32), batch["num_classes"]).numpy()
    c = batch["contributions"]
    expected = np.einsum("bk,bkc->bc", c, batch["neighbor_probs"]) / c.sum(1, keepdims=True)
    np.testing.assert_allclose(t, expected, rtol=1e-5)


def test_target_rows_sum_to_one_for_any_lambda_and_eight_classes():
    labels = np.array([1, 7, 0])
    probs = _random_probs(3, 5, 8)
    contrib = RNG.uniform(0, 2, size=(3, 5)).astype(np.float32)
    t = ldlva.target_distribution(labels, probs, contrib, np.array([0.2, 0.5, 0.9], np.float32), 8).numpy()
    assert t.shape == (3, 8)
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    # Scalar λ broadcasts.
    t2 = ldlva.target_distribution(labels, probs, contrib, 0.3, 8).numpy()
    np.testing.assert_allclose(t2.sum(1), 1.0, rtol=1e-6)


def test_all_zero_contributions_fall_back_to_onehot_and_stay_finite(batch):
    contrib = batch["contributions"].copy()
    contrib[1] = 0.0
    lam = tf.Variable(np.full(4, 0.7, np.float32))
    c = tf.constant(contrib)
    with tf.GradientTape() as tape:
        tape.watch(c)
        t = ldlva.target_distribution(batch["labels"], batch["neighbor_probs"], c, lam, 7)
        loss = ldlva.soft_cross_entropy(t, _random_probs(4, 7))
    grads = tape.gradient(loss, [lam, c])
    np.testing.assert_allclose(t.numpy()[1], np.eye(7)[3], atol=1e-7)
    assert all(np.isfinite(g.numpy()).all() for g in grads)


def test_soft_cross_entropy_finite_with_exact_zero_probs():
    targets = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]], np.float32)
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    loss = ldlva.soft_cross_entropy(targets, probs).numpy()
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, 0.5 * (-0.5 * np.log(1e-10)), rtol=1e-4)
    weighted = ldlva.soft_cross_entropy(targets, probs, sample_weights=np.array([2.0, 1.0], np.float32))
    np.testing.assert_allclose(weighted.numpy(), 2 * loss, rtol=1e-6)


def test_lambda_gradient_matches_paper_eq_8_9(batch):
    probs = tf.constant(_random_probs(4, 7))
    lam = tf.Variable(np.array([0.1, 0.4, 0.6, 0.9], np.float32))
    with tf.GradientTape() as tape:
        t = ldlva.target_distribution(batch["labels"], batch["neighbor_probs"], batch["contributions"], lam, 7)
        loss = ldlva.soft_cross_entropy(t, probs)
    grad = tape.gradient(loss, lam).numpy()
    c = batch["contributions"]
    d = np.einsum("bk,bkc->bc", c, batch["neighbor_probs"]) / c.sum(1, keepdims=True)
    e = np.eye(7)[batch["labels"]]
    expected = np.sum(-(d - e) * np.log(probs.numpy() + 1e-10), axis=1) / 4
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def _disc_case():
    features = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    labels = np.array([0, 1])
    centers = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    lam = np.array([0.0, 0.5], np.float32)
    return features, labels, centers, lam


def test_discriminative_loss_hand_case():
    features, labels, centers, lam = _disc_case()
    loss = ldlva.discriminative_loss(features, labels, centers, lam).numpy()
    # pull: (1/(2·2))·(1·1 + 0.5·1) = 0.375; push: 2 ordered pairs · exp(−2/√2)
    np.testing.assert_allclose(loss, 0.375 + 2 * np.exp(-2 / np.sqrt(2)), rtol=1e-6)


def test_discriminative_loss_lambda_gradient():
    features, labels, centers, lam = _disc_case()
    lam = tf.Variable(lam)
    with tf.GradientTape() as tape:
        loss = ldlva.discriminative_loss(features, labels, centers, lam)
    # ∂/∂λ_i = −‖v_i − μ_{y_i}‖²/(2B) = −1/4 for both samples.
    np.testing.assert_allclose(tape.gradient(loss, lam).numpy(), [-0.25, -0.25], rtol=1e-6)


def _release_case():
    features = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], np.float32)
    labels = np.array([0, 0, 1])
    centers = np.array([[0.0, 0.0], [0.0, 1.0]], np.float32)
    weights = np.array([0.5, 1.0, 0.8], np.float32)
    return features, labels, centers, weights


def test_release_center_loss_hand_case():
    features, labels, centers, weights = _release_case()
    loss = ldlva.release_center_loss(features, labels, centers, weights).numpy()
    # (1/(2·3))·(0.5·1 + 1·9 + 0.8·1)
    np.testing.assert_allclose(loss, 10.3 / 6, rtol=1e-6)
    w = tf.Variable(weights)
    with tf.GradientTape() as tape:
        loss = ldlva.release_center_loss(features, labels, centers, w)
    assert tape.gradient(loss, w) is None  # λ is a constant in the release's centre loss


def test_release_center_attraction_hand_case():
    features, labels, centers, weights = _release_case()
    new = ldlva.release_center_attraction(features, labels, centers, weights, lr=0.5).numpy()
    # class 0: n=2, Σλ(h−c) = 0.5·(1,0) + 1·(3,0) = (3.5,0); G = −(3.5,0)/3/3; c ← c − 0.5·G
    # class 1: n=1, Σλ(h−c) = 0.8·(0,1); G = −(0,0.8)/2/3
    expected = np.array([[0.5 * 3.5 / 9, 0.0], [0.0, 1.0 + 0.5 * 0.8 / 6]])
    np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_release_center_repulsion_hand_case_and_zero_at_equal_centers():
    centers = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    new = ldlva.release_center_repulsion(centers, lr=0.5, scale=0.1).numpy()
    # SB = exp(−d²/2) with d the x-gap; ∂SB/∂c0_x = exp(−1/2)·(+1), ∂SB/∂c1_x = −exp(−1/2)
    g = np.exp(-0.5)
    np.testing.assert_allclose(new, [[-0.05 * g, 0.0], [1.0 + 0.05 * g, 0.0]], rtol=1e-6)
    c = tf.Variable(centers)
    with tf.GradientTape() as tape:
        energy = ldlva.release_center_repulsion_energy(c)
    np.testing.assert_allclose(centers - 0.05 * tape.gradient(energy, c).numpy(), new, rtol=1e-6)
    equal = np.full((7, 16), 0.3, np.float32)
    np.testing.assert_array_equal(ldlva.release_center_repulsion(equal).numpy(), equal)


def test_balanced_class_weights():
    weights = ldlva.balanced_class_weights([0, 0, 0, 1, 2, 2], 4)
    np.testing.assert_allclose(weights, [6 / 12, 6 / 4, 6 / 8, 0.0], rtol=1e-6)


def test_works_inside_tf_function(batch):
    @tf.function
    def step(labels, neighbor_probs, contributions, lam_logits, probs):
        t = ldlva.target_distribution(labels, neighbor_probs, contributions, 1.0 - tf.sigmoid(lam_logits), 7)
        return ldlva.soft_cross_entropy(t, probs) + ldlva.discriminative_loss(
            tf.ones([4, 3]), labels, tf.zeros([7, 3]), tf.sigmoid(lam_logits))

    out = step(tf.constant(batch["labels"]), tf.constant(batch["neighbor_probs"]),
               tf.constant(batch["contributions"]), tf.zeros([4]), tf.constant(_random_probs(4, 7)))
    assert out.shape == () and np.isfinite(out.numpy())
