"""Checks of the DDAF mixed-label and loss maths (losses/ddaf.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402

from losses import ddaf  # noqa: E402


def _hand_data():
    va = np.array([
        [0, 1], [1, 0], [2, 3], [3, 2], [10, 10],   # class 0: the outlier (10, 10) is trimmed
        [-1, -2],                                     # class 1: a single sample
        [0, -1], [0, -3], [4, -2],                    # class 2: nothing survives trimming
    ], np.float64)
    labels = np.array([0, 0, 0, 0, 0, 1, 2, 2, 2])
    return va, labels


def test_trimmed_class_stats_hand_case():
    va, labels = _hand_data()
    means, covs, priors = ddaf.trimmed_class_stats(va, labels, 3)
    np.testing.assert_allclose(means[0], [1.5, 1.5])
    np.testing.assert_allclose(covs[0], [[1.25, 0.75], [0.75, 1.25]])
    # Single sample: untrimmed fallback, zero covariance plus the 1e-6 ridge.
    np.testing.assert_allclose(means[1], [-1, -2])
    np.testing.assert_allclose(covs[1], 1e-6 * np.eye(2))
    # No sample within 1 std on both axes: untrimmed fallback, population covariance.
    np.testing.assert_allclose(means[2], [4 / 3, -2])
    np.testing.assert_allclose(covs[2], np.cov(va[6:].T, bias=True))
    np.testing.assert_allclose(priors, [5 / 9, 1 / 9, 3 / 9])


def test_trimmed_class_stats_missing_class_raises():
    va, labels = _hand_data()
    with pytest.raises(ValueError, match="class 3"):
        ddaf.trimmed_class_stats(va, labels, 4)


def test_gmm_mixed_labels_match_scipy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    va = rng.normal(size=(200, 2)) * 0.3 + np.array([[0.5, 0.2], [-0.5, 0.3], [0.1, -0.6], [0.0, 0.0]])[labels]
    means, covs, priors = ddaf.trimmed_class_stats(tf.constant(va), labels, 4)
    post = ddaf.gmm_mixed_labels(va, means, covs, priors)
    joint = np.stack([priors[k] * multivariate_normal(means[k], covs[k]).pdf(va) for k in range(4)], axis=1)
    np.testing.assert_allclose(post, joint / joint.sum(1, keepdims=True), rtol=1e-9, atol=1e-12)
    # Far away points do not underflow to 0/0.
    far = ddaf.gmm_mixed_labels(np.array([[1e3, -1e3]]), means, covs, priors)
    assert np.isfinite(far).all() and far.sum() == pytest.approx(1.0)


def test_euclidean_mixed_labels_hand_case_numpy_and_tf():
    means = np.array([[0.0, 0.0], [3.0, 4.0]])
    va = np.array([[3.0, 0.0], [0.0, 0.0]])
    out = ddaf.euclidean_mixed_labels(va, means)
    # d = (3, 4) → (1/3, 1/4)/(7/12) = (4/7, 3/7); on a centroid: all mass on that class.
    np.testing.assert_allclose(out, [[4 / 7, 3 / 7], [1.0, 0.0]], atol=1e-7)
    assert isinstance(out, np.ndarray)

    @tf.function
    def online(v):
        return ddaf.euclidean_mixed_labels(v, tf.constant(means, tf.float32))

    out_tf = online(tf.constant(va, tf.float32))
    assert tf.is_tensor(out_tf)
    np.testing.assert_allclose(out_tf.numpy(), [[4 / 7, 3 / 7], [1.0, 0.0]], atol=1e-6)


def test_fuse_labels_alpha_half():
    mixed = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    expected = [[0.1, 0.65, 0.25], [0.3, 0.1, 0.6]]
    np.testing.assert_allclose(ddaf.fuse_labels([1, 2], mixed, 0.5), expected)
    np.testing.assert_allclose(ddaf.fuse_labels(tf.constant([1, 2]), tf.constant(mixed), 0.5).numpy(),
                               expected, rtol=1e-6)


def test_ddaf_losses_hand_case():
    pred_va = np.array([[0.5, 0.0], [-0.2, 0.1]], np.float32)
    va = np.array([[0.0, 0.5], [0.0, 0.0]], np.float32)
    probs = np.array([[0.6, 0.4], [1.0, 0.0]], np.float32)
    targets = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    labels = np.array([0, 1])
    class_weights = np.array([1.0, 2.0], np.float32)
    out = ddaf.ddaf_losses(pred_va, va, probs, targets, labels, class_weights)
    w = np.array([1.0, 2.0])
    va_expected = np.mean(w * [0.25, 0.04]) + np.mean(w * [0.25, 0.01])
    ce_expected = np.mean(w * [-np.log(0.6), -0.5 * np.log(1.0) - 0.5 * np.log(1e-10)])
    cos_rows = [0.6 / np.sqrt(0.52), 0.5 / np.sqrt(0.5)]
    cos_expected = np.mean(w * (1 - np.array(cos_rows)))
    np.testing.assert_allclose(out["va"].numpy(), va_expected, rtol=1e-5)
    np.testing.assert_allclose(out["ce"].numpy(), ce_expected, rtol=1e-5)
    np.testing.assert_allclose(out["cos"].numpy(), cos_expected, rtol=1e-5)


def test_class_weights_max_over_count():
    np.testing.assert_allclose(ddaf.class_weights_max_over_count([0, 0, 0, 0, 1, 2, 2], 4), [1, 4, 2, 0])


def test_ccc():
    x = np.array([-1.0, 0.5, 0.5, 2.0, -2.0])
    assert ddaf.ccc(x, x) == pytest.approx(1.0)
    assert ddaf.ccc(x, -x) == pytest.approx(-1.0)
    # x = (1,2,3), y = 2x: cov 4/3, var 2/3 and 8/3, mean gap 2 → (8/3)/(22/3)
    assert ddaf.ccc([1, 2, 3], [2, 4, 6]) == pytest.approx(8 / 22)
    assert ddaf.ccc([0.3, 0.3], [0.3, 0.3]) == 1.0
