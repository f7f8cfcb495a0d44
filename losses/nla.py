"""NLA losses: noise-aware Gaussian weighting and a logit-space JSD consistency (AAAI 2025).

Paper: J. Lee, Y. Choi, H. Kim, I.-J. Kim, G. P. Nam, "Navigating Label Ambiguity for Facial Expression
Recognition in the Wild", AAAI 2025 (doi:10.1609/aaai.v39i4.32476; arXiv:2502.09993); its two components
are Noise-aware Adaptive Weighting (NAW) and consistency regularization. The paper is cited by component
name, not by equation number. Official code (PyTorch): ``jungyu0413/NLA`` (commit b86f31f):
``src/loss.py`` (``NAW``, ``NAW.co_gau``, ``jensen_shannon_divergence``, ``exponential_scheduler``) and
``main_rafdb.py`` (hyperparameters, ``lam_a``/``lam_b``/``lam_c``, ``--slope``).

Follows the official code. For logits z (B, C), p = softmax(z), the
sample's position x = (p_GT, p_NN) is scored with a normalised 2-D Gaussian density: a "correct"
kernel whose covariance off-diagonal is scheduled over the epochs, or a fixed "wrong" kernel. The
weight w is *not* detached, so the gradient of (1 + w)·CE also flows through w into the logits.

Shapes: B batch, C classes (any C ≥ 2).
"""

from __future__ import annotations

import math

import tensorflow as tf

from losses.common import as_float, as_labels

# Kernel shape parameters of the official code (``main_rafdb.py`` ``--mu_x_t`` … ``--f_std_ratio``).
CORRECT_MEAN = (0.5, 0.5)
CORRECT_S, CORRECT_R = 0.8, 2.0
WRONG_MEAN = (0.30, 0.15)
WRONG_S, WRONG_R = 0.91, 6.0


def kernel_covariance_terms(s: float, r: float) -> tuple[float, float]:
    """``(s, r) → (s² + (s/r)², s² − (s/r)²)``: diagonal and off-diagonal magnitude of a kernel.

    Correct kernel (s = 0.8, r = 2): a = 0.8 and off-diagonal b = −(s² − (s/r)²) = −0.48.
    Wrong kernel (s = 0.91, r = 6): a' = 0.8511, b' = 0.8051.
    """
    return s * s + (s / r) ** 2, s * s - (s / r) ** 2


def covariance_schedule(epoch, total_epochs, slope: float = -15.0):
    """Covariance scheduler ε(e) = 1 − exp(slope·e/E) (``src/loss.py`` ``exponential_scheduler``; ``--slope`` −15).

    ``epoch`` is 0-based, so ε = 0 in the first epoch and ε → 1 later. Python numbers give a Python
    float; if any argument is a tensor (e.g. an epoch variable inside ``tf.function``) a float32
    scalar tensor is returned.
    """
    if any(tf.is_tensor(v) for v in (epoch, total_epochs, slope)):
        ratio = as_float(epoch) / as_float(total_epochs)
        return 1.0 - tf.exp(as_float(slope) * ratio)
    return 1.0 - math.exp(float(slope) * float(epoch) / float(total_epochs))


def gaussian_density_2d(x, mean, diag, offdiag) -> tf.Tensor:
    """Normalised bivariate normal density with covariance ``[[diag, offdiag], [offdiag, diag]]``.

    ``N(x) = exp(−½ δᵀΣ⁻¹δ) / (2π√|Σ|)`` with δ = x − mean, using the closed-form 2×2 inverse.

    Args:
      x: ``(B, 2)`` points.
      mean: length-2 mean.
      diag, offdiag: scalars (Python or tensor); |offdiag| < diag is required for a valid density.

    Returns:
      ``(B,)`` float32 densities.
    """
    delta = as_float(x) - tf.reshape(as_float(mean), [1, 2])
    diag = as_float(diag)
    offdiag = as_float(offdiag)
    det = diag * diag - offdiag * offdiag
    d1, d2 = delta[:, 0], delta[:, 1]
    quad = (diag * d1 * d1 - 2.0 * offdiag * d1 * d2 + diag * d2 * d2) / det
    return tf.exp(-0.5 * quad) / (2.0 * math.pi * tf.sqrt(det))


def naw_position(logits, labels) -> tuple[tf.Tensor, tf.Tensor]:
    """Position x = (p_GT, p_NN) of each sample and its "correct" flag (``src/loss.py`` ``NAW.forward``).

    p = softmax(logits); p_GT = p_y; correct = (max p == p_GT), an exact float equality, so a tie
    between the given class and another class counts as correct; p_NN is the 2nd-largest probability
    if correct, otherwise the largest.

    Returns:
      ``x`` ``(B, 2)`` float32 and ``correct`` ``(B,)`` bool.
    """
    probs = tf.nn.softmax(as_float(logits), axis=-1)
    p_gt = tf.gather(probs, as_labels(labels), axis=1, batch_dims=1)
    top2 = tf.math.top_k(probs, k=2).values  # (B, 2)
    correct = tf.equal(top2[:, 0], p_gt)
    p_nn = tf.where(correct, top2[:, 1], top2[:, 0])
    return tf.stack([p_gt, p_nn], axis=-1), correct


def naw_weights(logits, labels, schedule) -> tf.Tensor:
    """Noise-aware weights w (paper: NAW): Gaussian density of x = (p_GT, p_NN).

    Official: ``src/loss.py`` ``NAW.forward`` with the densities of ``NAW.co_gau``.

    Correct samples use μ = (0.5, 0.5), Σ = [[a, ε·b], [ε·b, a]] with a = 0.8, b = −0.48 (s = 0.8,
    r = 2) and ε = ``schedule`` (:func:`covariance_schedule`); peak density 0.199 at ε = 0, 0.249 at
    ε = 1. Wrong samples use μ = (0.30, 0.15), Σ = [[a', b'], [b', a']] with a' = 0.8511, b' = 0.8051
    (s' = 0.91, r' = 6); peak 0.577. Not detached: gradients flow into the logits.

    Args:
      logits: ``(B, C)`` logits.
      labels: ``(B,)`` int labels.
      schedule: ε, a scalar in [0, 1] (Python number or tensor).

    Returns:
      ``(B,)`` float32 weights.
    """
    x, correct = naw_position(logits, labels)
    a, b_mag = kernel_covariance_terms(CORRECT_S, CORRECT_R)
    a_w, b_w = kernel_covariance_terms(WRONG_S, WRONG_R)
    w_correct = gaussian_density_2d(x, CORRECT_MEAN, a, -b_mag * as_float(schedule))
    w_wrong = gaussian_density_2d(x, WRONG_MEAN, a_w, b_w)
    return tf.where(correct, w_correct, w_wrong)


def naw_cross_entropy(logits, labels, schedule) -> tf.Tensor:
    """Noise-aware weighted CE per sample, ``(1 + w_i)·CE_i`` → ``(B,)`` (``src/loss.py`` ``NAW.forward``).

    The paper's L_NAW-CE = (1 + w)·CE; the official code computes the same thing as CE + w·CE.
    CE is the numerically stable sparse softmax cross-entropy of the logits.
    """
    logits = as_float(logits)
    labels = as_labels(labels)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return (1.0 + naw_weights(logits, labels, schedule)) * ce


def _kl_from_log_probs(log_p, log_q) -> tf.Tensor:
    """Row-wise KL(P‖Q) = Σ_c P_c (log P_c − log Q_c) from log-probabilities; ``(B, C) → (B,)``."""
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def jsd_consistency(logits_a, logits_b, mode: str = "official") -> tf.Tensor:
    """Consistency between two views' logits (paper: consistency regularization); scalar float32.

    Official: ``src/loss.py`` ``jensen_shannon_divergence``.

    ``"official"``: m = ½(z_a + z_b) in logit space, P_m = softmax(m),
    J = ½[KL(P_m‖softmax(z_a)) + KL(P_m‖softmax(z_b))] **summed over the batch** (so it grows
    linearly with B). This is what the release trains with; it is not the textbook JSD.
    ``"textbook"``: M = ½(p_a + p_b), JSD = ½KL(p_a‖M) + ½KL(p_b‖M), **mean over the batch**
    (bounded by ln 2).
    ``"official_mean"``: the official form, averaged over the batch instead of summed (= official / B): a
    diagnosis mode that separates the batch-sum (the term's weight grows with B) from the form.

    Args:
      logits_a, logits_b: ``(B, C)`` logits of the image and of its flipped view; both get gradients.
    """
    log_pa = tf.nn.log_softmax(as_float(logits_a), axis=-1)
    log_pb = tf.nn.log_softmax(as_float(logits_b), axis=-1)
    if mode in ("official", "official_mean"):
        log_pm = tf.nn.log_softmax(0.5 * (as_float(logits_a) + as_float(logits_b)), axis=-1)
        per_sample = 0.5 * (_kl_from_log_probs(log_pm, log_pa) + _kl_from_log_probs(log_pm, log_pb))
        return tf.reduce_sum(per_sample) if mode == "official" else tf.reduce_mean(per_sample)
    if mode == "textbook":
        log_m = tf.reduce_logsumexp(tf.stack([log_pa, log_pb], axis=0), axis=0) - math.log(2.0)
        jsd = 0.5 * _kl_from_log_probs(log_pa, log_m) + 0.5 * _kl_from_log_probs(log_pb, log_m)
        return tf.reduce_mean(jsd)
    raise ValueError(f"jsd mode must be 'official', 'official_mean' or 'textbook', got {mode!r}")


def nla_total_loss(
    logits, flipped_logits, labels, schedule, lam: float = 0.5, jsd_mode: str = "official"
) -> tf.Tensor:
    """NLA total loss ``λ·mean((1 + w)·CE) + (1 − λ)·J`` (λ = 0.5); scalar.

    Official: the loss of ``src/train.py`` ``train`` with ``main_rafdb.py``'s ``lam_a = lam_b = lam_c = 0.5``.

    With λ = 0.5 this equals the release's 0.5·mean(CE) + 0.5·mean(w·CE) + 0.5·J (J summed over the
    batch in ``"official"`` mode). The NAW-CE term uses the unflipped view's logits only.

    Args:
      logits: ``(B, C)`` logits of the image; flipped_logits: ``(B, C)`` logits of its flip.
      labels: ``(B,)`` int labels; schedule: ε from :func:`covariance_schedule`.
    """
    naw = tf.reduce_mean(naw_cross_entropy(logits, labels, schedule))
    return lam * naw + (1.0 - lam) * jsd_consistency(logits, flipped_logits, mode=jsd_mode)


def l1_consistency(logits_a, logits_b) -> tf.Tensor:
    """L1 consistency of two views' class probabilities, ``mean_i Σ_c |p_a,ic − p_b,ic|``; scalar.

    One of the regularisers NLA's Table 5 compares its JSD consistency with (paper, Sec. "Ablation").
    """
    p_a = tf.nn.softmax(as_float(logits_a), axis=-1)
    p_b = tf.nn.softmax(as_float(logits_b), axis=-1)
    return tf.reduce_mean(tf.reduce_sum(tf.abs(p_a - p_b), axis=-1))
