"""Checks of the SCN loss maths (losses/scn.py) against hand-computed and independent numpy values."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from losses import scn  # noqa: E402


def _log_softmax_np(z):
    z = np.asarray(z, np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


# --- the β split ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, m", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (10, 7), (47, 32), (64, 44),
                                  (90, 62), (100, 70), (1024, 716)])
def test_high_group_size_is_pythons_int_of_the_float_product(n, m):
    # 0.7·90 = 62.99999999999999 in float64: the official int() gives 62, not ⌊7·90/10⌋ = 63.
    assert scn.high_group_size(n) == m
    assert int(scn.high_group_size(tf.constant(n))) == m


def test_high_group_size_tensor_path_matches_python_everywhere():
    ns = np.arange(1, 1500)
    graph = tf.function(lambda n: scn.high_group_size(n, 0.7))
    got = np.array([int(graph(tf.constant(int(n)))) for n in ns[::7]] + [int(graph(tf.constant(1300)))])
    expected = np.array([int(int(n) * 0.7) for n in ns[::7]] + [int(1300 * 0.7)])
    np.testing.assert_array_equal(got, expected)
    assert scn.high_group_size(8, 1.0) == 8 and scn.high_group_size(8, 0.0) == 0
    with pytest.raises(ValueError):
        scn.high_group_size(8, 1.5)


def test_groups_odd_batch_with_ties_partition_in_index_order():
    # Sorted descending with a stable sort: 0.8 (i=1), 0.3 (i=0), 0.3 (i=2), 0.3 (i=3), 0.1 (i=4).
    # M = int(0.7·5) = 3 → H = {1, 0, 2}, L = {3, 4}.
    alpha = np.array([0.3, 0.8, 0.3, 0.3, 0.1], np.float32)
    high, low = scn.importance_groups(alpha)
    np.testing.assert_array_equal(high.numpy(), [True, True, True, False, False])
    np.testing.assert_array_equal(low.numpy(), [False, False, False, True, True])
    np.testing.assert_array_equal(scn.low_importance_mask(alpha[:, None]).numpy(), low.numpy())


# --- rank regularisation -------------------------------------------------------------------------------

def test_rank_regularization_hand_case_b4():
    # α = [0.9, 0.2, 0.6, 0.4], M = 2: ᾱ_H = (0.9 + 0.6)/2 = 0.75, ᾱ_L = (0.4 + 0.2)/2 = 0.3, gap 0.45.
    alpha = np.array([0.9, 0.2, 0.6, 0.4], np.float32)
    assert scn.rank_regularization(alpha, margin=0.15).numpy() == pytest.approx(0.0, abs=1e-7)
    assert scn.rank_regularization(alpha, margin=0.5).numpy() == pytest.approx(0.05, abs=1e-6)
    assert scn.rank_regularization(alpha[:, None], margin=0.5).numpy() == pytest.approx(0.05, abs=1e-6)


def test_rank_regularization_odd_batch_and_ties():
    # B = 5, M = 3: H = {0.9, 0.7, 0.5} mean 0.7, L = {0.3, 0.1} mean 0.2 → 0.6 − 0.5 = 0.1.
    alpha = np.array([0.1, 0.5, 0.3, 0.9, 0.7], np.float32)
    assert scn.rank_regularization(alpha, margin=0.6).numpy() == pytest.approx(0.1, abs=1e-6)
    # With ties: H = {0.8, 0.3, 0.3} mean 1.4/3, L = {0.3, 0.1} mean 0.2 → 0.4 − (1.4/3 − 0.2).
    tied = np.array([0.3, 0.8, 0.3, 0.3, 0.1], np.float32)
    assert scn.rank_regularization(tied, margin=0.4).numpy() == pytest.approx(0.4 - (1.4 / 3 - 0.2), abs=1e-6)


def test_rank_regularization_all_equal_gradient_follows_the_split():
    alpha = tf.Variable(np.full(4, 0.5, np.float32))
    with tf.GradientTape() as tape:
        loss = scn.rank_regularization(alpha, beta=0.7, margin=0.15)
    assert loss.numpy() == pytest.approx(0.15, abs=1e-7)  # ᾱ_H = ᾱ_L: the full margin
    # Ties go to H in index order: indices 0, 1 high (∂/∂α = −1/2), 2, 3 low (+1/2).
    np.testing.assert_allclose(tape.gradient(loss, alpha).numpy(), [-0.5, -0.5, 0.5, 0.5], atol=1e-7)


def test_rank_regularization_gradient_reaches_both_means():
    alpha = tf.Variable([0.9, 0.2, 0.6, 0.4, 0.35])  # M = 3: H = {0, 2, 3}, L = {4, 1}
    with tf.GradientTape() as tape:
        loss = scn.rank_regularization(alpha, margin=1.0)
    grad = tape.gradient(loss, alpha).numpy()
    np.testing.assert_allclose(grad, [-1 / 3, 0.5, -1 / 3, -1 / 3, 0.5], atol=1e-6)


@pytest.mark.parametrize("alpha, beta", [([0.4], 0.7), ([0.9, 0.1, 0.5], 1.0), ([0.9, 0.1], 0.4)])
def test_rank_regularization_empty_group_is_zero(alpha, beta):
    # B = 1 (M = 0), β = 1 (low group empty), ⌊0.4·2⌋ = 0 (high group empty): the official diff is NaN → 0.
    var = tf.Variable(np.asarray(alpha, np.float32))
    with tf.GradientTape() as tape:
        loss = scn.rank_regularization(var, beta=beta, margin=0.15)
    assert loss.numpy() == 0.0
    grad = tape.gradient(loss, var).numpy()
    assert np.isfinite(grad).all() and not grad.any()


def test_rank_regularization_dynamic_batch_in_tf_function():
    fn = tf.function(lambda a: scn.rank_regularization(a, 0.7, 0.5),
                     input_signature=[tf.TensorSpec([None], tf.float32)])
    assert fn(tf.constant([0.4])).numpy() == 0.0
    assert fn(tf.constant([0.9, 0.2, 0.6, 0.4])).numpy() == pytest.approx(0.05, abs=1e-6)
    assert fn(tf.constant([0.1, 0.5, 0.3, 0.9, 0.7])).numpy() == pytest.approx(0.0, abs=1e-7)


# --- logit-weighted CE ---------------------------------------------------------------------------------

def test_weighted_cross_entropy_hand_case():
    # Row 0: α = 0.5, z = [2, 0, 0] → s = [1, 0, 0], label 0: CE = log(e + 2) − 1.
    # Row 1: α = 1, z = [0, 0, 0], label 2: CE = log 3.
    alpha = np.array([0.5, 1.0], np.float32)
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    expected = 0.5 * ((np.log(np.e + 2) - 1) + np.log(3))
    assert scn.weighted_cross_entropy(alpha, logits, [0, 2]).numpy() == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(scn.weighted_logits(alpha[:, None], logits).numpy(), [[1, 0, 0], [0, 0, 0]])


def test_weighted_cross_entropy_matches_numpy_b4_c7():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)).astype(np.float32) * 2
    alpha = np.array([[0.9], [0.1], [0.5], [0.7]], np.float32)
    labels = np.array([6, 0, 3, 3])
    logp = _log_softmax_np(alpha * logits)
    expected = -logp[np.arange(4), labels].mean()
    assert scn.weighted_cross_entropy(alpha, logits, labels).numpy() == pytest.approx(expected, rel=1e-5)
    total = scn.scn_total_loss(alpha, logits, labels, beta=0.7, margin=0.9).numpy()
    # M = 2: ᾱ_H = 0.8, ᾱ_L = 0.3 → L_RR = 0.9 − 0.5 = 0.4; the official total is the plain sum.
    assert total == pytest.approx(expected + 0.4, rel=1e-5)
    weighted = scn.scn_total_loss(alpha, logits, labels, margin=0.9, wce_weight=0.3, rr_weight=0.7).numpy()
    assert weighted == pytest.approx(0.3 * expected + 0.7 * 0.4, rel=1e-5)


def test_total_loss_gradients_finite():
    rng = np.random.default_rng(1)
    alpha = tf.Variable(rng.uniform(0.05, 0.95, size=(5, 1)).astype(np.float32))
    logits = tf.Variable(rng.normal(size=(5, 7)).astype(np.float32) * 5)
    with tf.GradientTape() as tape:
        loss = scn.scn_total_loss(alpha, logits, [0, 1, 2, 3, 6], margin=0.5)
    g_alpha, g_logits = tape.gradient(loss, [alpha, logits])
    assert np.isfinite(g_alpha.numpy()).all() and np.abs(g_alpha.numpy()).max() > 1e-4
    assert np.isfinite(g_logits.numpy()).all() and np.abs(g_logits.numpy()).max() > 1e-4


# --- relabelling ---------------------------------------------------------------------------------------

def test_relabel_margin_boundary_is_strict():
    # Exactly representable probabilities, so the gaps are exact in float32.
    probs = np.array([[0.5, 0.25, 0.25],     # label 1: gap 0.25
                      [0.125, 0.75, 0.125],  # label 1: already the max, gap 0
                      [0.625, 0.125, 0.25],  # label 2: gap 0.375
                      [0.25, 0.25, 0.5]],    # label 0: gap 0.25
                     np.float32)
    labels = np.array([1, 1, 2, 0])
    new, changed = scn.relabel(probs, labels, margin=0.25)
    np.testing.assert_array_equal(new.numpy(), [1, 1, 0, 0])  # gap == δ₂ → kept
    np.testing.assert_array_equal(changed.numpy(), [False, False, True, False])
    new, changed = scn.relabel(probs, labels, margin=0.2)
    np.testing.assert_array_equal(new.numpy(), [0, 1, 0, 2])
    np.testing.assert_array_equal(changed.numpy(), [True, False, True, True])
    assert new.dtype == tf.int32


def test_relabel_ineligible_samples_unchanged():
    probs = np.array([[0.5, 0.25, 0.25], [0.625, 0.125, 0.25], [0.25, 0.25, 0.5], [0.1, 0.8, 0.1]],
                     np.float32)
    labels = np.array([1, 2, 0, 0])
    new, changed = scn.relabel(probs, labels, 0.2, eligible=[True, False, False, True])
    np.testing.assert_array_equal(new.numpy(), [0, 2, 0, 1])
    np.testing.assert_array_equal(changed.numpy(), [True, False, False, True])
    new, changed = scn.relabel(probs, labels, 0.2, eligible=np.zeros((4, 1), bool))
    np.testing.assert_array_equal(new.numpy(), labels)
    assert not changed.numpy().any()


def test_relabel_tie_for_max_takes_lowest_index_and_default_margin():
    probs = np.array([[0.4, 0.4, 0.2],          # label 2, gap 0.2 + tie between 0 and 1
                      [0.45, 0.45, 0.1],        # label 2, gap 0.35 → class 0 (lowest tied index)
                      [0.5, 0.2999, 0.2001]],   # label 1, gap 0.2001 > 0.2
                     np.float32)
    new, changed = scn.relabel(probs, [2, 2, 1])
    np.testing.assert_array_equal(new.numpy(), [2, 0, 0])
    np.testing.assert_array_equal(changed.numpy(), [False, True, True])


def test_relabel_paper_scope_low_group_and_scaled_probabilities():
    # Logits z = [3, 0, 0] for every sample, label 1. softmax(z) gap = (e³ − 1)/(e³ + 2) ≈ 0.863.
    # With α: softmax(α·z) gap = (e^{3α} − 1)/(e^{3α} + 2); α = 0.1 → 0.104 < 0.2 (kept).
    logits = np.tile(np.array([[3.0, 0.0, 0.0]], np.float32), (4, 1))
    alpha = np.array([0.9, 0.1, 0.8, 0.7], np.float32)
    labels = np.ones(4, np.int32)
    gap = lambda a: (np.exp(3 * a) - 1) / (np.exp(3 * a) + 2)  # noqa: E731
    assert gap(0.1) < 0.2 < gap(0.7)
    scaled = scn.relabel_probabilities(alpha, logits)
    np.testing.assert_allclose(scaled.numpy()[:, 0] - scaled.numpy()[:, 1], gap(alpha), rtol=1e-5)
    new, _ = scn.relabel(scaled, labels)  # official: whole batch, α-scaled
    np.testing.assert_array_equal(new.numpy(), [0, 1, 0, 0])
    low = scn.low_importance_mask(alpha)  # M = 2: H = {0.9, 0.8}, L = {0.7, 0.1}
    np.testing.assert_array_equal(low.numpy(), [False, True, False, True])
    new, _ = scn.relabel(scaled, labels, eligible=low)  # paper: only the low group
    np.testing.assert_array_equal(new.numpy(), [1, 1, 1, 0])
    unscaled = scn.relabel_probabilities(alpha, logits, scaled=False)
    new, _ = scn.relabel(unscaled, labels, eligible=low)
    np.testing.assert_array_equal(new.numpy(), [1, 0, 1, 0])


def test_relabel_active_from_the_tenth_epoch():
    assert [scn.relabel_active(e) for e in range(12)] == [False] * 9 + [True] * 3
    assert not bool(scn.relabel_active(tf.constant(8))) and bool(scn.relabel_active(tf.constant(9)))
    assert scn.relabel_active(0, relabel_epoch=1)


def test_uncertainty_is_one_minus_alpha():
    np.testing.assert_allclose(scn.uncertainty([[0.9], [0.25]]).numpy(), [0.1, 0.75], rtol=1e-6)
