"""Checks of the NLA loss maths (losses/nla.py) against independent numpy computations."""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from losses import nla  # noqa: E402


def _density_np(x, mean, cov):
    delta = np.asarray(x, np.float64) - np.asarray(mean, np.float64)
    quad = delta @ np.linalg.inv(cov) @ delta
    return np.exp(-0.5 * quad) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))


CORRECT_COV = lambda eps: np.array([[0.8, -0.48 * eps], [-0.48 * eps, 0.8]])  # noqa: E731
S_W, R_W = 0.91, 6.0
WRONG_COV = np.array([[S_W**2 + (S_W / R_W) ** 2, S_W**2 - (S_W / R_W) ** 2],
                      [S_W**2 - (S_W / R_W) ** 2, S_W**2 + (S_W / R_W) ** 2]])


def test_covariance_schedule_values():
    assert nla.covariance_schedule(0, 60) == 0.0
    assert nla.covariance_schedule(30, 60) == pytest.approx(1 - math.exp(-7.5))
    assert nla.covariance_schedule(6, 60, slope=-10.0) == pytest.approx(1 - math.exp(-1.0))
    t = nla.covariance_schedule(tf.constant(30), 60)
    assert tf.is_tensor(t)
    np.testing.assert_allclose(t.numpy(), 1 - math.exp(-7.5), rtol=1e-6)


def test_kernel_peaks():
    a, b = nla.kernel_covariance_terms(0.8, 2.0)
    assert (a, b) == pytest.approx((0.8, 0.48))
    peak0 = nla.gaussian_density_2d([[0.5, 0.5]], nla.CORRECT_MEAN, a, 0.0).numpy()[0]
    peak1 = nla.gaussian_density_2d([[0.5, 0.5]], nla.CORRECT_MEAN, a, -b).numpy()[0]
    aw, bw = nla.kernel_covariance_terms(nla.WRONG_S, nla.WRONG_R)
    peak_wrong = nla.gaussian_density_2d([[0.30, 0.15]], nla.WRONG_MEAN, aw, bw).numpy()[0]
    assert peak0 == pytest.approx(0.199, abs=5e-4)
    assert peak1 == pytest.approx(0.249, abs=5e-4)
    assert peak_wrong == pytest.approx(0.577, abs=5e-4)


def test_naw_weights_three_class_hand_case():
    logits = np.array([[2.0, 0.5, -1.0],   # label 0 predicted: correct
                       [0.3, 1.2, 0.1],    # label 2, predicted 1: wrong
                       [-0.5, 0.0, 1.5]],  # label 2 predicted: correct
                      np.float32)
    labels = np.array([0, 2, 2])
    eps = 0.37
    w = nla.naw_weights(logits, labels, eps).numpy()
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(1, keepdims=True)
    expected = []
    for row, y in zip(p, labels):
        srt = np.sort(row)[::-1]
        if row.argmax() == y:
            expected.append(_density_np([row[y], srt[1]], [0.5, 0.5], CORRECT_COV(eps)))
        else:
            expected.append(_density_np([row[y], srt[0]], [0.30, 0.15], WRONG_COV))
    np.testing.assert_allclose(w, expected, rtol=1e-5)


def test_tie_counts_as_correct():
    logits = np.array([[1.0, 1.0, 0.0]], np.float32)
    x, correct = nla.naw_position(logits, [1])
    assert bool(correct.numpy()[0])
    p = np.exp([1.0, 1.0, 0.0]) / np.exp([1.0, 1.0, 0.0]).sum()
    np.testing.assert_allclose(x.numpy()[0], [p[1], p[0]], rtol=1e-6)  # p_NN = 2nd largest = the tie
    w = nla.naw_weights(logits, [1], 0.0).numpy()[0]
    assert w == pytest.approx(_density_np([p[1], p[0]], [0.5, 0.5], CORRECT_COV(0.0)), rel=1e-5)


def test_naw_cross_entropy_is_one_plus_w_times_ce():
    logits = np.array([[2.0, 0.5, -1.0, 0.1], [0.3, 1.2, 0.1, -2.0]], np.float32)
    labels = np.array([0, 3])
    out = nla.naw_cross_entropy(logits, labels, 0.5).numpy()
    w = nla.naw_weights(logits, labels, 0.5).numpy()
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(out, (1 + w) * -logp[[0, 1], labels], rtol=1e-5)


def test_jsd_official_and_textbook():
    rng = np.random.default_rng(1)
    za = rng.normal(size=(4, 7)).astype(np.float32)
    zb = rng.normal(size=(4, 7)).astype(np.float32)
    assert nla.jsd_consistency(za, za).numpy() == pytest.approx(0.0, abs=1e-6)
    j = nla.jsd_consistency(za, zb).numpy()
    # Independent numpy: m in logit space, reversed-direction KL, summed over the batch.
    def logsm(z):
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lm, la, lb = logsm((za + zb) / 2), logsm(za), logsm(zb)
    expected = 0.5 * np.sum(np.exp(lm) * (lm - la) + np.exp(lm) * (lm - lb))
    np.testing.assert_allclose(j, expected, rtol=1e-5)
    doubled = nla.jsd_consistency(np.concatenate([za, za]), np.concatenate([zb, zb])).numpy()
    np.testing.assert_allclose(doubled, 2 * j, rtol=1e-5)
    # Textbook JSD is a batch mean bounded by ln 2, reached for disjoint supports.
    far_a = np.array([[50.0, -50.0]], np.float32)
    tb = nla.jsd_consistency(far_a, -far_a, mode="textbook").numpy()
    assert tb <= math.log(2) + 1e-6 and tb == pytest.approx(math.log(2), rel=1e-5)
    assert nla.jsd_consistency(za, zb, mode="textbook").numpy() <= math.log(2)
    with pytest.raises(ValueError):
        nla.jsd_consistency(za, zb, mode="other")


def test_gradient_flows_through_weight():
    logits = tf.Variable([[2.0, 0.5, -1.0], [0.3, 1.2, 0.1]])
    with tf.GradientTape() as tape:
        w = nla.naw_weights(logits, [0, 2], 0.5)
        total = tf.reduce_sum(w)
    grad = tape.gradient(total, logits).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 1e-4


def test_total_loss_in_tf_function():
    rng = np.random.default_rng(2)
    za = tf.constant(rng.normal(size=(4, 8)).astype(np.float32))
    zb = tf.constant(rng.normal(size=(4, 8)).astype(np.float32))
    labels = tf.constant([0, 7, 3, 3])

    @tf.function
    def total(epoch):
        return nla.nla_total_loss(za, zb, labels, nla.covariance_schedule(epoch, 60))

    out = total(tf.constant(5)).numpy()
    eps = 1 - math.exp(-15 * 5 / 60)
    naw = np.mean(nla.naw_cross_entropy(za, labels, eps).numpy())
    expected = 0.5 * naw + 0.5 * nla.jsd_consistency(za, zb).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5)
