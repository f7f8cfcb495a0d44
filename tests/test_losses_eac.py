"""Checks of the EAC loss maths (losses/eac.py, CAM and flip helpers in losses/common.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from losses import common, eac  # noqa: E402

# F: (1, 2, 2, K=2) with channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [-1, 2]].
FMAP = np.stack([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 1.0], [-1.0, 2.0]])], axis=-1)[None]
KERNEL = np.array([[1.0, 0.0, 2.0], [-1.0, 3.0, 0.5]])  # (K=2, C=3), a Dense kernel


def _cam_loops(fmap, kernel):
    b, h, w, k = fmap.shape
    out = np.zeros((b, h, w, kernel.shape[1]))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for c in range(kernel.shape[1]):
                    out[n, i, j, c] = sum(fmap[n, i, j, q] * kernel[q, c] for q in range(k))
    return out


def _grid_sample_flip_np(maps):
    """Bilinear sampling (align_corners=True, border padding) on a grid whose normalised x is negated."""
    b, h, w, c = maps.shape
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)
    out = np.zeros_like(maps, dtype=np.float64)
    for i, yn in enumerate(ys):
        for j, xn in enumerate(xs):
            ix = np.clip((-xn + 1) / 2 * (w - 1), 0, w - 1)
            iy = np.clip((yn + 1) / 2 * (h - 1), 0, h - 1)
            x0, y0 = int(np.floor(ix)), int(np.floor(iy))
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            ax, ay = ix - x0, iy - y0
            out[:, i, j] = ((1 - ay) * ((1 - ax) * maps[:, y0, x0] + ax * maps[:, y0, x1])
                            + ay * ((1 - ax) * maps[:, y1, x0] + ax * maps[:, y1, x1]))
    return out


def test_cam_hand_case():
    cam = common.class_activation_maps(FMAP.astype(np.float32), KERNEL.astype(np.float32)).numpy()
    assert cam.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(cam[0, ..., 0], [[1, 1], [4, 2]])        # F0 − F1
    np.testing.assert_allclose(cam[0, ..., 1], [[0, 3], [-3, 6]])       # 3·F1
    np.testing.assert_allclose(cam[0, ..., 2], [[2, 4.5], [5.5, 9]])    # 2·F0 + ½·F1
    np.testing.assert_allclose(eac.attention_maps(FMAP, KERNEL).numpy(), cam)


def test_cam_matches_loops_and_pooled_logits_b4_c7():
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    kernel = rng.normal(size=(6, 7)).astype(np.float32)
    bias = rng.normal(size=7).astype(np.float32)
    cam = common.class_activation_maps(fmap, kernel).numpy()
    np.testing.assert_allclose(cam, _cam_loops(fmap.astype(np.float64), kernel.astype(np.float64)), rtol=1e-5,
                               atol=1e-5)
    # No bias in the map: GAP(M) + b are the classifier's logits on GAP(F).
    np.testing.assert_allclose(cam.mean(axis=(1, 2)) + bias, fmap.mean(axis=(1, 2)) @ kernel + bias, rtol=1e-5,
                               atol=1e-5)
    half = common.class_activation_maps(fmap.astype(np.float16), kernel)
    assert half.dtype == tf.float32


def test_flip_width_hand_case_and_grid_sample_equivalence():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)  # rows [0, 1, 2], [3, 4, 5]
    np.testing.assert_array_equal(common.flip_width(x).numpy()[0, ..., 0], [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(eac.flip_back(x).numpy(), common.flip_width(x).numpy())
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(2, 7, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(eac.flip_back(maps).numpy(), _grid_sample_flip_np(maps), atol=1e-5)
    np.testing.assert_array_equal(common.flip_width(common.flip_width(maps)).numpy(), maps)


def test_attention_consistency_hand_case_mean_over_all_elements():
    # (B=1, H=1, W=2, C=2). Channel 0: M1 = [1, 2], M2 = [5, 3] → flipped [3, 5] → errors 2, 3.
    # Channel 1: M1 = [0, 0], M2 = [0, 1] → flipped [1, 0] → errors 1, 0. Mean of 4 + 9 + 1 + 0 = 3.5.
    m1 = np.array([[[[1.0, 0.0], [2.0, 0.0]]]], np.float32)
    m2 = np.array([[[[5.0, 0.0], [3.0, 1.0]]]], np.float32)
    assert eac.attention_consistency(m1, m2).numpy() == pytest.approx(3.5)
    # A mean, not a sum: repeating the batch leaves it unchanged.
    assert eac.attention_consistency(np.concatenate([m1, m1]), np.concatenate([m2, m2])).numpy() == pytest.approx(3.5)
    # CE(0, y) = ln 2 for C = 2; λ = 5.
    total = eac.eac_total_loss(np.zeros((1, 2), np.float32), [1], m1, m2).numpy()
    assert total == pytest.approx(np.log(2) + 5 * 3.5, rel=1e-6)
    assert eac.eac_total_loss(np.zeros((1, 2), np.float32), [1], m1, m2, lam=0.5).numpy() == pytest.approx(
        np.log(2) + 1.75, rel=1e-6)


def test_consistency_b4_c7_against_numpy_and_zero_for_mirrored_features():
    rng = np.random.default_rng(2)
    f1 = rng.normal(size=(4, 7, 7, 8)).astype(np.float32)
    f2 = rng.normal(size=(4, 7, 7, 8)).astype(np.float32)
    kernel = rng.normal(size=(8, 7)).astype(np.float32)
    m1 = _cam_loops(f1.astype(np.float64), kernel.astype(np.float64))
    m2 = _cam_loops(f2.astype(np.float64), kernel.astype(np.float64))
    expected = np.mean((m1 - m2[:, :, ::-1, :]) ** 2)
    got = eac.attention_consistency(eac.attention_maps(f1, kernel), eac.attention_maps(f2, kernel)).numpy()
    assert got == pytest.approx(expected, rel=1e-5)
    mirrored = f1[:, :, ::-1, :].copy()  # the flipped view's features are exactly the mirror of view 1's
    zero = eac.attention_consistency(eac.attention_maps(f1, kernel), eac.attention_maps(mirrored, kernel))
    assert zero.numpy() == pytest.approx(0.0, abs=1e-10)


def test_gradients_reach_both_views_but_not_the_kernel():
    rng = np.random.default_rng(3)
    f1 = tf.Variable(rng.normal(size=(3, 7, 7, 4)).astype(np.float32))  # odd batch
    f2 = tf.Variable(rng.normal(size=(3, 7, 7, 4)).astype(np.float32))
    kernel = tf.Variable(rng.normal(size=(4, 7)).astype(np.float32))
    logits = tf.Variable(rng.normal(size=(3, 7)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        loss = eac.eac_total_loss(logits, [0, 3, 6], eac.attention_maps(f1, kernel), eac.attention_maps(f2, kernel))
        undetached = eac.attention_consistency(common.class_activation_maps(f1, kernel, stop_kernel_gradient=False),
                                               common.class_activation_maps(f2, kernel, stop_kernel_gradient=False))
    g_f1, g_f2, g_k, g_z = tape.gradient(loss, [f1, f2, kernel, logits])
    assert g_k is None
    for g in (g_f1, g_f2, g_z):
        assert np.isfinite(g.numpy()).all() and np.abs(g.numpy()).max() > 1e-6
    g_k2 = tape.gradient(undetached, kernel)
    assert g_k2 is not None and np.abs(g_k2.numpy()).max() > 1e-6


def test_total_loss_in_tf_function_with_dynamic_batch():
    rng = np.random.default_rng(4)
    kernel = tf.constant(rng.normal(size=(4, 3)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 2, 4]), tf.TensorSpec([None, 2, 2, 4]),
                                  tf.TensorSpec([None, 3]), tf.TensorSpec([None], tf.int32)])
    def total(f1, f2, z, y):
        return eac.eac_total_loss(z, y, eac.attention_maps(f1, kernel), eac.attention_maps(f2, kernel))

    for b in (1, 4):
        f1 = rng.normal(size=(b, 2, 2, 4)).astype(np.float32)
        f2 = rng.normal(size=(b, 2, 2, 4)).astype(np.float32)
        z = rng.normal(size=(b, 3)).astype(np.float32)
        y = rng.integers(0, 3, size=b).astype(np.int32)
        m1, m2 = _cam_loops(f1, kernel.numpy()), _cam_loops(f2, kernel.numpy())
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        expected = -logp[np.arange(b), y].mean() + 5 * np.mean((m1 - m2[:, :, ::-1]) ** 2)
        assert total(f1, f2, z, y).numpy() == pytest.approx(expected, rel=1e-5)


def test_cam_norm_hand_case_scale_invariance_and_zero_maps():
    """``cam_norm`` (a diagnosis switch, not the release): max and rms normalise each (image, class) map
    over H×W; the consistency then ignores the CAMs' scale, which the release's raw maps do not."""
    maps = np.zeros((1, 2, 2, 2), np.float32)
    maps[0, :, :, 0] = [[1.0, -2.0], [0.5, 4.0]]  # max |M| = 4, mean M² = (1 + 4 + 0.25 + 16)/4 = 5.3125
    maps[0, :, :, 1] = [[3.0, 3.0], [3.0, 3.0]]
    np.testing.assert_array_equal(eac.normalize_attention_maps(maps, "none").numpy(), maps)
    got_max = eac.normalize_attention_maps(maps, "max").numpy()
    np.testing.assert_allclose(got_max[0, :, :, 0], [[0.25, -0.5], [0.125, 1.0]], rtol=1e-5)
    np.testing.assert_allclose(got_max[0, :, :, 1], np.ones((2, 2)), rtol=1e-5)
    got_rms = eac.normalize_attention_maps(maps, "rms").numpy()
    np.testing.assert_allclose(got_rms[0, :, :, 0], maps[0, :, :, 0] / np.sqrt(5.3125), rtol=1e-5)
    np.testing.assert_allclose((got_rms**2).mean(axis=(1, 2)), 1.0, rtol=1e-5)
    # Consistency of two views whose maps differ only in scale: 0 when normalised, > 0 raw; and a common
    # factor on both views leaves the normalised term unchanged but scales the raw one by its square.
    rng = np.random.default_rng(5)
    m1 = rng.normal(size=(3, 4, 4, 7)).astype(np.float32)
    m2 = rng.normal(size=(3, 4, 4, 7)).astype(np.float32)
    mirrored = m1[:, :, ::-1] * 3.0  # view 2's maps = 3 × view 1's, in view 2's coordinates
    assert float(eac.attention_consistency(m1, mirrored)) > 1.0
    for norm in ("max", "rms"):
        assert float(eac.attention_consistency(m1, mirrored, norm)) == pytest.approx(0.0, abs=1e-10)
        assert float(eac.attention_consistency(10 * m1, 10 * m2, norm)) == pytest.approx(
            float(eac.attention_consistency(m1, m2, norm)), rel=1e-5)
    assert float(eac.attention_consistency(10 * m1, 10 * m2)) == pytest.approx(
        100 * float(eac.attention_consistency(m1, m2)), rel=1e-5)
    rms_loss = float(eac.attention_consistency(m1, m2, "rms"))
    assert 0.0 < rms_loss <= 4.0
    # All-zero maps: zero loss, finite gradients.
    zero = tf.Variable(tf.zeros((1, 2, 2, 3)))
    for norm in ("max", "rms"):
        with tf.GradientTape() as tape:
            loss = eac.attention_consistency(zero, tf.ones((1, 2, 2, 3)) * 0.0, norm)
        assert float(loss) == 0.0 and np.isfinite(tape.gradient(loss, zero).numpy()).all()
    with pytest.raises(ValueError, match="cam_norm"):
        eac.normalize_attention_maps(maps, "l1")
