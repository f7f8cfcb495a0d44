"""DDAF losses: dual-domain affect fusion of one-hot labels with valence-arousal mixed labels.

Paper: D. Neo, T. Chen, S. Winkler, "Large-Scale Facial Expression Recognition Using Dual-Domain Affect
Fusion for Noisy Labels", CVPR Workshops (ABAW) 2023, pp. 5692-5700. Its own repository was not available;
this follows the authors' closest public code, ``dexterdley/FER_C`` at commit faf883b (MIT):
``train_scale.py`` (``get_centroids``, ``get_weights``, ``compute_losses``, ``run_training``), ``utils.py``
(``get_va_labels``) and ``GMM.py`` (``learn_params``, ``generate_GMM_labels``, ``generate_EM_labels``).
It is near, but not guaranteed to be, the paper's code. The paper is cited by component name, not by
equation number: the mixed labels and their fusion are its dual-domain label fusion module.

* Offline (numpy, float64): trimmed per-class VA statistics (:func:`trimmed_class_stats`), GMM
  posterior mixed labels (:func:`gmm_mixed_labels`), class weights, and the CCC metric.
* Online (TensorFlow or numpy): Euclidean inverse-distance mixed labels (:func:`euclidean_mixed_labels`),
  the fusion α·e_y + (1 − α)·m (:func:`fuse_labels`), and the three weighted losses
  (:func:`ddaf_losses`).

Shapes: N samples, B batch, C classes (any C; AffectNet uses 8).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from losses.common import (
    LOG_EPS,
    as_float,
    class_counts,
    onehot,
    per_sample_class_weights,
)

# Ridge added to a trimmed covariance that is not positive definite (e.g. a class whose trimmed
# samples are collinear or a single point), so that its Gaussian density stays defined.
COVARIANCE_RIDGE = 1e-6
# Distances below this are clamped before inversion in the Euclidean mixed labels: a point sitting on
# a centroid then gets (almost) all the mass of that class instead of a division by zero.
DISTANCE_EPS = 1e-8


class ClassStats(NamedTuple):
    """Per-class VA statistics: means ``(C, 2)``, covariances ``(C, 2, 2)``, priors ``(C,)`` (float64)."""

    means: np.ndarray
    covariances: np.ndarray
    priors: np.ndarray


def trimmed_class_stats(va, labels, num_classes: int) -> ClassStats:
    """Trimmed per-class VA means and covariances plus class priors.

    Official counterparts: ``GMM.py`` ``learn_params`` (π, μ, Σ) and ``train_scale.py`` ``get_centroids``
    (the same trimmed μ for the Euclidean labels).

    The trimmed set of class k is the class's samples whose valence lies within one population std of
    the class mean valence **and** whose arousal lies within one population std of the class mean
    arousal (inclusive bounds, so a class whose samples are all equal keeps them all; the official
    ``filter_using_std`` compares with a strict ``<``). Its mean and population covariance
    (``bias=True``) are the class statistics; priors are n_k/N over **all** samples.

    Fallbacks (documented deviations, the official code would crash or produce NaN):
      * fewer than 2 trimmed samples → the untrimmed class samples are used;
      * a covariance that is not positive definite (min eigenvalue ≤ 1e-12) gets ``1e-6·I`` added.

    Args:
      va: ``(N, 2)`` (valence, arousal); numpy or tensor.
      labels: ``(N,)`` int labels in [0, C).
      num_classes: C.

    Returns:
      :class:`ClassStats` (a tuple ``(means, covariances, priors)``) of float64 numpy arrays.

    Raises:
      ValueError: if ``va`` is not ``(N, 2)`` or a class has no samples (names the class).
    """
    va = np.asarray(va, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if va.ndim != 2 or va.shape[1] != 2 or len(va) != len(labels):
        raise ValueError(f"va must be (N, 2) with N = len(labels) = {len(labels)}, got {va.shape}")
    counts = class_counts(labels, num_classes)
    means = np.zeros((num_classes, 2))
    covariances = np.zeros((num_classes, 2, 2))
    for k in range(num_classes):
        samples = va[labels == k]
        if len(samples) == 0:
            raise ValueError(f"class {k} has no samples; cannot compute its VA statistics")
        centre, spread = samples.mean(axis=0), samples.std(axis=0)
        keep = np.all(np.abs(samples - centre) <= spread, axis=1)
        trimmed = samples[keep] if keep.sum() >= 2 else samples
        means[k] = trimmed.mean(axis=0)
        cov = np.cov(trimmed.T, bias=True).reshape(2, 2)
        if np.linalg.eigvalsh(cov).min() <= 1e-12:
            cov = cov + COVARIANCE_RIDGE * np.eye(2)
        covariances[k] = cov
    return ClassStats(means, covariances, counts / counts.sum())


def gmm_mixed_labels(va, means, covariances, priors) -> np.ndarray:
    """GMM posterior mixed labels m_k = π_k N(v; μ_k, Σ_k) / Σ_j π_j N(v; μ_j, Σ_j).

    Official counterpart: ``GMM.py`` ``generate_GMM_labels`` (its EM-refined variant
    ``generate_EM_labels`` is not ported). Computed in log space (log-sum-exp normalisation) so
    far-away points do not underflow to 0/0.

    Args:
      va: ``(N, 2)`` VA points; means ``(C, 2)``; covariances ``(C, 2, 2)`` (positive definite);
        priors ``(C,)`` (a zero prior gives that class probability 0).

    Returns:
      ``(N, C)`` float64 rows summing to 1.
    """
    va = np.asarray(va, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    covariances = np.asarray(covariances, dtype=np.float64)
    priors = np.asarray(priors, dtype=np.float64)
    delta = va[:, None, :] - means[None, :, :]  # (N, C, 2)
    precision = np.linalg.inv(covariances)  # (C, 2, 2)
    quad = np.einsum("nci,cij,ncj->nc", delta, precision, delta)
    _, logdet = np.linalg.slogdet(covariances)  # (C,)
    with np.errstate(divide="ignore"):
        log_prior = np.log(priors)
    log_joint = log_prior[None, :] - 0.5 * quad - 0.5 * logdet[None, :] - np.log(2.0 * np.pi)
    log_joint -= log_joint.max(axis=1, keepdims=True)
    joint = np.exp(log_joint)
    return joint / joint.sum(axis=1, keepdims=True)


def euclidean_mixed_labels(va, means, eps: float = DISTANCE_EPS, squared: bool = False):
    """Euclidean ("VA") mixed labels m_k = (1/d_k) / Σ_l (1/d_l), d_k = ‖v − μ_k‖₂ (``squared``: 1/d_k²).

    Equal to the official ``utils.py`` ``get_va_labels``, (max_j d_j / d_k) / Σ_l (max_j d_j / d_l),
    with the centroids of ``train_scale.py`` ``get_centroids``. NOTE: the paper's formula is reported to
    square the distances (1/d_k²); the official code, and this function, use unsquared ones.

    ``squared=True`` is the paper's eq. 3 (inverse *squared* distances), ``False`` the official code.

    Distances are clamped to ``eps`` so a point on a centroid gets (almost) all of that class's mass
    instead of dividing by zero; the ratio is computed as (d_min/d_k)/Σ_l(d_min/d_l) to stay in [0, 1]
    before normalising.

    Args:
      va: ``(B, 2)`` ground-truth VA of the batch; means: ``(C, 2)`` trimmed class centroids.
      eps: distance clamp.

    Returns:
      ``(B, C)`` rows summing to 1: a float32 tensor if either input is a tensor (graph-safe, used
      online per batch), otherwise a float64 numpy array.
    """
    if tf.is_tensor(va) or tf.is_tensor(means):
        diff = as_float(va)[:, None, :] - as_float(means)[None, :, :]
        dist = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(diff), axis=-1), eps * eps))
        if squared:
            dist = tf.square(dist)
        ratio = tf.reduce_min(dist, axis=-1, keepdims=True) / dist
        return ratio / tf.reduce_sum(ratio, axis=-1, keepdims=True)
    va = np.asarray(va, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    dist = np.maximum(np.linalg.norm(va[:, None, :] - means[None, :, :], axis=-1), eps)
    if squared:
        dist = dist ** 2
    ratio = dist.min(axis=-1, keepdims=True) / dist
    return ratio / ratio.sum(axis=-1, keepdims=True)


def fuse_labels(labels, mixed, alpha):
    """Fused target α·e_y + (1 − α)·m (paper α = 0.5, code default 1.0).

    Official: ``train_scale.py`` ``run_training``, β·onehot + (1 − β)·m with β = ``--fuse_factor``.

    Args:
      labels: ``(B,)`` int given labels; mixed: ``(B, C)`` mixed labels; alpha: scalar weight of the
        one-hot label.

    Returns:
      ``(B, C)``: float32 tensor if ``labels`` or ``mixed`` is a tensor, else float64 numpy.
    """
    if tf.is_tensor(labels) or tf.is_tensor(mixed) or tf.is_tensor(alpha):
        mixed = as_float(mixed)
        alpha = as_float(alpha)
        return alpha * onehot(labels, tf.shape(mixed)[-1]) + (1.0 - alpha) * mixed
    mixed = np.asarray(mixed, dtype=np.float64)
    e = np.eye(mixed.shape[-1])[np.asarray(labels).astype(np.int64).reshape(-1)]
    return alpha * e + (1.0 - alpha) * mixed


def ddaf_losses(pred_va, va, probs, targets, labels, class_weights) -> dict[str, tf.Tensor]:
    """The three class-weighted DDAF losses; total = va + ce + cos (all weights 1).

    Official: ``train_scale.py`` ``compute_losses`` (``weighted_mse``, ``weighted_negative_log_likelihood``
    and FER_C's ``cosine_loss``), summed in ``run_training``.

    With w = class_weights[y] per sample:
      * ``va``:  mean_b[w(v̂ − v)²] + mean_b[w(â − a)²];
      * ``ce``:  mean_b[−w Σ_c t_c log(p_c + 1e-10)] (the official code has no log guard);
      * ``cos``: mean_b[w(1 − ⟨p, t⟩ / max(‖p‖‖t‖, 1e-8))].

    Args:
      pred_va: ``(B, 2)`` predicted (valence, arousal) (tanh head); va: ``(B, 2)`` ground truth.
      probs: ``(B, C)`` softmax probabilities; targets: ``(B, C)`` fused targets.
      labels: ``(B,)`` given labels (select the weights); class_weights: ``(C,)``.

    Returns:
      Dict of float32 scalars ``{"va", "ce", "cos"}``.
    """
    w = per_sample_class_weights(labels, class_weights)
    probs = as_float(probs)
    targets = as_float(targets)
    sq = tf.square(as_float(pred_va) - as_float(va))  # (B, 2)
    va_loss = tf.reduce_mean(w * sq[:, 0]) + tf.reduce_mean(w * sq[:, 1])
    ce = tf.reduce_mean(-w * tf.reduce_sum(targets * tf.math.log(probs + LOG_EPS), axis=-1))
    dot = tf.reduce_sum(probs * targets, axis=-1)
    norms = tf.norm(probs, axis=-1) * tf.norm(targets, axis=-1)
    cos = tf.reduce_mean(w * (1.0 - dot / tf.maximum(norms, 1e-8)))
    return {"va": va_loss, "ce": ce, "cos": cos}


def class_weights_max_over_count(labels, num_classes: int) -> np.ndarray:
    """Class weights w_k = max_j n_j / n_k from the given labels; ``(C,)`` float32.

    Official: ``train_scale.py`` ``get_weights``.

    A class with no samples gets 0 (the official code would divide by zero); it never occurs as a
    given label, so the value is never used.
    """
    counts = class_counts(labels, num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.max() / np.maximum(counts, 1.0), 0.0)
    return weights.astype(np.float32)


def ccc(x, y) -> float:
    """Concordance correlation coefficient over the whole set (population moments).

    ``CCC = 2·cov(x, y) / (var x + var y + (mean x − mean y)²)``. When the denominator is 0 (both
    constant and equal) the agreement is perfect and 1.0 is returned. Note: the official code
    averages CCC over batches; this is the whole-set value.

    Args:
      x, y: ``(N,)`` array-likes (e.g. predicted and true valence).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"ccc needs two non-empty arrays of equal length, got {x.shape} and {y.shape}")
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return 1.0 if denom == 0.0 else float(2.0 * cov / denom)
