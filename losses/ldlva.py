"""LDLVA losses: label distributions from valence-arousal neighbours (Le et al., WACV 2023).

Paper: N. Le, K. Nguyen, Q. Tran, E. Tjiputra, B. Le, A. Nguyen, "Uncertainty-Aware Label Distribution
Learning for Facial Expression Recognition", WACV 2023, pp. 6088-6097. Official code (TF 2):
``minhnhatvt/label-distribution-learning-fer-tf`` (commit a741b36): ``src/utils.py``
(``construct_target_distribution``, ``CELoss``, ``create_sample_weights``, ``DiscriminativeLoss``),
``src/models.py`` (``AdaptiveSimNet``, ``ExpNet``) and ``src/train.py`` (``train_step``, ``train``).
"eq. N" below is the paper's equation N; "release" is the official code.

Paper notation (used by the main functions here): λ_i ∈ [0, 1] is the *uncertainty* of sample i, and
the target is t_i = (1 − λ_i)·e_{y_i} + λ_i·d_i (eq. 5–6) with d_i the contribution-weighted mix of
the neighbours' predictions.

The official TF release (``src/train.py`` ``train_step``) stores the opposite quantity, a label *certainty*
σ(λ̂_i) (the weight on the given label). Its target is therefore
``target_distribution(..., uncertainty=1 - sigmoid(lambda_logits))``; its centre loss weights each
sample by that certainty (:func:`release_center_loss`) and moves the centres with the two-stage rule
:func:`release_center_attraction` then :func:`release_center_repulsion`.

Shapes: B batch, K neighbours, C classes (any C, e.g. 7 or 8), D feature dimension.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from losses.common import (
    LOG_EPS,
    as_float,
    as_labels,
    class_counts,
    onehot,
    soft_cross_entropy_per_sample,
)


def va_similarity(anchor_va, neighbor_va, delta: float = 0.5, metric: str = "l2") -> tf.Tensor:
    """Local valence-arousal similarity a_ik between each anchor and its neighbours.

    Args:
      anchor_va: ``(B, 2)`` (valence, arousal) of the anchors.
      neighbor_va: ``(B, K, 2)`` (valence, arousal) of their K neighbours.
      delta: kernel width δ.
      metric: ``"l2"`` → ``exp(−‖a − n‖²₂ / δ²)`` (paper eq. 2);
        ``"l1"`` → ``exp(−‖a − n‖₁ / δ)`` (official release: the ``knn_weights`` of ``src/data_utils.py``
        ``get_train_dataset``, from the training CSV's VA; δ = 0.5).

    Returns:
      ``(B, K)`` float32 similarities in (0, 1].
    """
    diff = as_float(anchor_va)[:, None, :] - as_float(neighbor_va)
    if metric == "l2":
        return tf.exp(-tf.reduce_sum(tf.square(diff), axis=-1) / (delta * delta))
    if metric == "l1":
        return tf.exp(-tf.reduce_sum(tf.abs(diff), axis=-1) / delta)
    raise ValueError(f"metric must be 'l2' or 'l1', got {metric!r}")


def neighbor_distribution(neighbor_probs, contributions, fallback) -> tf.Tensor:
    """Contribution-weighted neighbour mix d_i = Σ_k c_ik·p_ik / Σ_k c_ik (paper eq. 5).

    Args:
      neighbor_probs: ``(B, K, C)`` neighbour class probabilities p_ik.
      contributions: ``(B, K)`` non-negative contributions c_ik (e.g. VA similarity × calibration).
      fallback: ``(B, C)`` distribution returned for rows whose contributions sum to exactly 0, where
        the mix is undefined (the caller passes the one-hot given label, so the target stays finite
        and reduces to the given label).

    Returns:
      ``(B, C)`` float32 rows that sum to 1 when the neighbour/fallback rows do.
    """
    neighbor_probs = as_float(neighbor_probs)
    contributions = as_float(contributions)
    total = tf.reduce_sum(contributions, axis=-1, keepdims=True)  # (B, 1)
    has_mass = total > 0.0
    # The divisor is replaced by 1 where the sum is 0 so that neither value nor gradient is NaN there.
    weights = contributions / tf.where(has_mass, total, tf.ones_like(total))  # (B, K)
    mix = tf.einsum("bk,bkc->bc", weights, neighbor_probs)
    return tf.where(has_mass, mix, as_float(fallback))


def target_distribution(labels, neighbor_probs, contributions, uncertainty, num_classes: int) -> tf.Tensor:
    """Target label distribution t_i = (1 − λ_i)·e_{y_i} + λ_i·d_i (paper eq. 5–6).

    d_i = Σ_k c_ik p_ik / Σ_k c_ik is the neighbour mix (:func:`neighbor_distribution`). A row whose
    contributions are all zero falls back to d_i = e_{y_i}, so its target is the one-hot label for
    every λ (finite, documented fallback).

    Args:
      labels: ``(B,)`` int given labels y_i.
      neighbor_probs: ``(B, K, C)`` neighbour probabilities p_ik (the release treats them as constants).
      contributions: ``(B, K)`` contributions c_ik ≥ 0.
      uncertainty: λ_i, shape ``(B,)``, ``(B, 1)`` or scalar, in [0, 1]. Paper notation: λ is the
        uncertainty. For the release's certainty σ(λ̂) pass ``uncertainty = 1 − σ(λ̂)``.
      num_classes: C.

    Returns:
      ``(B, C)`` float32 rows summing to 1; differentiable w.r.t. λ, contributions and neighbour
      probabilities (∂t_i/∂λ_i = d_i − e_{y_i}, which gives eq. 8–9).
    """
    e = onehot(labels, num_classes)
    d = neighbor_distribution(neighbor_probs, contributions, fallback=e)
    lam = tf.reshape(as_float(uncertainty), [-1, 1])  # (B, 1), or (1, 1) for a scalar
    return (1.0 - lam) * e + lam * d


def soft_cross_entropy(targets, probs, sample_weights=None, eps: float = LOG_EPS) -> tf.Tensor:
    """Soft-target cross-entropy (paper eq. 1; release ``src/utils.py`` ``CELoss``).

    ``L = mean_i ω_i Σ_c −t_ic·log(p_ic + eps)``.

    Args:
      targets: ``(B, C)`` target distributions t_i.
      probs: ``(B, C)`` predicted probabilities p_i (exact zeros are fine thanks to ``eps``).
      sample_weights: optional ``(B,)`` weights ω_i (release: sklearn 'balanced' weight of the given
        label for AffectNet, 1 otherwise). ``None`` means all ones.
      eps: log guard, 1e-10 as in the release.

    Returns:
      Scalar float32.
    """
    per_sample = soft_cross_entropy_per_sample(targets, probs, eps)
    if sample_weights is not None:
        per_sample = per_sample * tf.reshape(as_float(sample_weights), [-1])
    return tf.reduce_mean(per_sample)


def _squared_distance_to_centers(features, labels, centers) -> tf.Tensor:
    """``(B, D), (B,), (C, D) → (B,)`` squared distances ‖v_i − μ_{y_i}‖²."""
    own = tf.gather(as_float(centers), as_labels(labels))
    return tf.reduce_sum(tf.square(as_float(features) - own), axis=-1)


def _pairwise_center_kernel(centers, scale) -> tf.Tensor:
    """``(C, D) → (C, C)`` matrix exp(−‖μ_j − μ_k‖² / scale) with a zero diagonal."""
    centers = as_float(centers)
    diff = centers[:, None, :] - centers[None, :, :]  # (C, C, D); no sqrt, so the diagonal is smooth
    kernel = tf.exp(-tf.reduce_sum(tf.square(diff), axis=-1) / scale)
    num_classes = tf.shape(centers)[0]
    return kernel * (1.0 - tf.eye(num_classes, dtype=tf.float32))


def discriminative_loss(features, labels, centers, uncertainty) -> tf.Tensor:
    """Paper's discriminative loss (eq. 10): uncertainty-weighted centre pull plus centre push.

    ``L = (1/(2B))·Σ_i (1 − λ_i)‖v_i − μ_{y_i}‖² + Σ_{j≠k} exp(−‖μ_j − μ_k‖² / √D)``,
    where the second sum runs over *ordered* pairs (each unordered pair counted twice).

    Args:
      features: ``(B, D)`` features v_i.
      labels: ``(B,)`` int labels y_i.
      centers: ``(C, D)`` class centres μ.
      uncertainty: ``(B,)`` or ``(B, 1)`` λ_i. Not stopped: ∂L/∂λ_i = −‖v_i − μ_{y_i}‖²/(2B). Wrap it
        in ``tf.stop_gradient`` if λ must only be learned from the classification loss.

    Returns:
      Scalar float32.
    """
    features = as_float(features)
    lam = tf.reshape(as_float(uncertainty), [-1])
    batch = tf.cast(tf.shape(features)[0], tf.float32)
    dim = tf.cast(tf.shape(features)[1], tf.float32)
    sq_dist = _squared_distance_to_centers(features, labels, centers)
    pull = tf.reduce_sum((1.0 - lam) * sq_dist) / (2.0 * batch)
    push = tf.reduce_sum(_pairwise_center_kernel(centers, tf.sqrt(dim)))
    return pull + push


def center_push(centers) -> tf.Tensor:
    """The push term of eq. 10, ``Σ_{j≠k} exp(−‖μ_j − μ_k‖² / √D)`` over ordered pairs; scalar."""
    centers = as_float(centers)
    return tf.reduce_sum(_pairwise_center_kernel(centers, tf.sqrt(tf.cast(tf.shape(centers)[1], tf.float32))))


def wen_center_update(features, labels, centers, alpha: float = 0.5) -> tf.Tensor:
    """The centre-loss update of Wen et al. (ECCV 2016, eq. 4), which the LDLVA paper says it follows.

    ``Δc_j = Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j)``, ``c_j ← c_j − α·Δc_j`` (n_j = samples of class j in
    the batch; a class absent from the batch does not move). Returns the new ``(C, D)`` centres.
    """
    features, centers = as_float(features), as_float(centers)
    labels = as_labels(labels)
    num_classes = tf.shape(centers)[0]
    counts = tf.math.unsorted_segment_sum(tf.ones_like(labels, tf.float32), labels, num_classes)
    diff = tf.gather(centers, labels) - features  # (B, D): c_{y_i} − x_i
    delta = tf.math.unsorted_segment_sum(diff, labels, num_classes) / (1.0 + counts)[:, None]
    return centers - alpha * delta


def release_center_loss(features, labels, centers, weights) -> tf.Tensor:
    """Release centre loss ``(1/(2|S|))·Σ_n λ_n‖h_n − c_{y_n}‖²`` (``src/utils.py`` ``DiscriminativeLoss.call``).

    S is the set of central samples plus their neighbours (the caller concatenates them and stops the
    gradient of the neighbour features). ``weights`` λ_n are the release's *certainties* σ(λ̂_n) and
    are treated as constants here (``tf.stop_gradient``), as in the release; ``centers`` are not
    trained by this loss in the release (they move by the attraction/repulsion rules below), so the
    caller should pass them as a non-trainable tensor.

    Args:
      features: ``(S, D)`` features h_n.
      labels: ``(S,)`` int labels y_n.
      centers: ``(C, D)`` centres c.
      weights: ``(S,)`` or ``(S, 1)`` certainties λ_n.

    Returns:
      Scalar float32 (to be scaled by γ = 0.01 in the total loss of ``src/train.py`` ``train_step``).
    """
    weights = tf.stop_gradient(tf.reshape(as_float(weights), [-1]))
    count = tf.cast(tf.shape(weights)[0], tf.float32)
    sq_dist = _squared_distance_to_centers(features, labels, centers)
    return tf.reduce_sum(weights * sq_dist) / (2.0 * count)


def release_center_attraction(features, labels, centers, weights, lr: float = 0.5) -> tf.Tensor:
    """Release centre update, stage (a) attraction; returns the new centres.

    Release: ``src/utils.py`` ``DiscriminativeLoss.compute_grads``, then the first SGD step of
    ``DiscriminativeLoss.update_centers``.

    ``G_c = −(1/|S|)·Σ_{n: y_n = c} λ_n (h_n − c_c) / (n_c + 1)`` with n_c the number of samples of
    class c in S, then ``c ← c − lr·G_c``. The double normalisation by (n_c + 1) and |S| is the
    release's and makes the moves small. Classes absent from S do not move. No gradient flows.

    Args:
      features: ``(S, D)`` this step's features h_n (centrals and neighbours).
      labels: ``(S,)`` int labels y_n.
      centers: ``(C, D)`` current centres.
      weights: ``(S,)`` or ``(S, 1)`` certainties λ_n.
      lr: the centre SGD learning rate (0.5 in the release).

    Returns:
      ``(C, D)`` float32 updated centres.
    """
    features = tf.stop_gradient(as_float(features))
    centers = tf.stop_gradient(as_float(centers))
    weights = tf.stop_gradient(tf.reshape(as_float(weights), [-1]))
    labels = as_labels(labels)
    num_classes = tf.shape(centers)[0]
    count = tf.cast(tf.shape(features)[0], tf.float32)
    residual = weights[:, None] * (features - tf.gather(centers, labels))  # (S, D)
    per_class = tf.math.unsorted_segment_sum(residual, labels, num_classes)  # (C, D)
    n_c = tf.math.unsorted_segment_sum(tf.ones_like(weights), labels, num_classes)  # (C,) counts
    grad = -per_class / (n_c[:, None] + 1.0) / count
    return centers - lr * grad


def release_center_repulsion_energy(centers) -> tf.Tensor:
    """``SB = Σ_{i<j} exp(−‖c_i − c_j‖² / D)`` for ``(C, D)`` centres; scalar.

    The energy whose gradient the release's ``src/utils.py`` ``DiscriminativeLoss.update_centers`` follows.
    """
    centers = as_float(centers)
    dim = tf.cast(tf.shape(centers)[1], tf.float32)
    return 0.5 * tf.reduce_sum(_pairwise_center_kernel(centers, dim))


def release_center_repulsion(centers, lr: float = 0.5, scale: float = 0.1) -> tf.Tensor:
    """Release centre update, stage (b) repulsion; returns the new centres.

    Release: the second SGD step of ``src/utils.py`` ``DiscriminativeLoss.update_centers``.

    ``c ← c − lr·scale·∇_c SB`` with SB from :func:`release_center_repulsion_energy`, using the closed
    form ``∇_{c_i} SB = −(2/D)·Σ_{j≠i} exp(−‖c_i − c_j‖²/D)·(c_i − c_j)``. The step is exactly zero
    while all centres are equal (e.g. at the release's zero initialisation).

    Args:
      centers: ``(C, D)`` centres (after the attraction stage).
      lr: centre SGD learning rate (0.5); scale: the release's extra factor (0.1).

    Returns:
      ``(C, D)`` float32 updated centres.
    """
    centers = tf.stop_gradient(as_float(centers))
    dim = tf.cast(tf.shape(centers)[1], tf.float32)
    kernel = _pairwise_center_kernel(centers, dim)  # (C, C), zero diagonal
    diff = centers[:, None, :] - centers[None, :, :]  # (C, C, D): c_i − c_j
    grad = -(2.0 / dim) * tf.reduce_sum(kernel[:, :, None] * diff, axis=1)
    return centers - lr * scale * grad


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """sklearn's 'balanced' class weights ``N / (C·n_c)`` as a numpy ``(C,)`` float32 array.

    Used by the release's AffectNet config (``cfg_files/config_resnet18_affnet.py``; ``src/train.py``
    ``train`` computes them, ``src/utils.py`` ``create_sample_weights`` sets ω_i = weight of the given
    label). A class
    with no samples gets weight 0 (sklearn raises instead); it never occurs as a given label, so the
    value is never used.
    """
    counts = class_counts(labels, num_classes).astype(np.float64)
    total = counts.sum()
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, total / (num_classes * np.maximum(counts, 1.0)), 0.0)
    return weights.astype(np.float32)
