"""Helpers shared by the loss modules: guarded log, one-hot, soft-target cross-entropy, class counts,
class-activation maps and the horizontal flip of channels-last maps.

All TensorFlow helpers are graph-safe (no Python branching on tensor values) and return float32.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# The official LDLVA release adds 1e-10 inside every log; we use the same guard everywhere so that
# probabilities with exact zeros (one-hot predictions) give finite losses and gradients.
LOG_EPS = 1e-10


def as_float(x) -> tf.Tensor:
    """Convert ``x`` (array-like or tensor) to a float32 tensor."""
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def as_labels(labels) -> tf.Tensor:
    """Integer class labels of any shape (e.g. ``(B,)``) as int32; a trailing ``(B, 1)`` is squeezed."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    return tf.cast(labels, tf.int32)


def safe_log(x, eps: float = LOG_EPS) -> tf.Tensor:
    """``log(x + eps)``, the release's guard; finite for ``x = 0`` (gives ``log(eps) ≈ -23.0``)."""
    return tf.math.log(as_float(x) + eps)


def onehot(labels, num_classes: int) -> tf.Tensor:
    """``(B,)`` int labels → ``(B, C)`` float32 one-hot rows ``e_y``."""
    return tf.one_hot(as_labels(labels), num_classes, dtype=tf.float32)


def soft_cross_entropy_per_sample(targets, probs, eps: float = LOG_EPS) -> tf.Tensor:
    """Per-sample cross-entropy with soft targets: ``(B, C), (B, C) → (B,)``.

    ``CE_i = Σ_c −t_ic · log(p_ic + eps)``. ``probs`` are probabilities (not logits).
    """
    return -tf.reduce_sum(as_float(targets) * safe_log(probs, eps), axis=-1)


def per_sample_class_weights(labels, class_weights) -> tf.Tensor:
    """Look up a ``(C,)`` class-weight vector at ``(B,)`` labels → ``(B,)`` float32 weights."""
    return tf.gather(as_float(class_weights), as_labels(labels))


def class_counts(labels, num_classes: int) -> np.ndarray:
    """Numpy ``(C,)`` int64 counts of each class in ``labels`` (any array-like of ints in [0, C))."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return np.bincount(labels, minlength=num_classes)


def class_activation_maps(feature_map, kernel, stop_kernel_gradient: bool = True) -> tf.Tensor:
    """Class-activation maps M_c = Σ_k w_kc·F_k of a channels-last feature map (Zhou et al., CVPR 2016).

    ``M[b, h, w, c] = Σ_k F[b, h, w, k]·W[k, c]``: the classifier applied at every spatial position,
    without its bias. Global-average-pooling M over (H, W) and adding the bias gives the classifier's
    logits on GAP(F), because both steps are linear.

    Args:
      feature_map: ``(B, H, W, K)`` last conv feature map F (Keras channels-last; any float dtype, e.g.
        float16 under mixed precision, is cast to float32).
      kernel: ``(K, C)`` classifier weights W, i.e. a Keras ``Dense(C)`` kernel (the transpose of a
        PyTorch ``Linear`` weight).
      stop_kernel_gradient: wrap W in ``stop_gradient`` (default), so a loss on M trains the backbone
        through F but never the classifier, as EAC's official ``Model.forward`` does by reading the fc
        weight data.

    Returns:
      ``(B, H, W, C)`` float32 maps.
    """
    kernel = as_float(kernel)
    if stop_kernel_gradient:
        kernel = tf.stop_gradient(kernel)
    return tf.einsum("bhwk,kc->bhwc", as_float(feature_map), kernel)


def flip_width(maps) -> tf.Tensor:
    """Horizontal mirror of channels-last maps, ``(..., H, W, C) → (..., H, W, C)``.

    ``out[..., j, :] = x[..., W − 1 − j, :]``; the width axis is axis −2 (``(B, H, W, C)`` images,
    feature maps or CAMs). Flipping an image and flipping its CAM back with this function puts both
    views' maps in the same coordinates. It equals a bilinear ``grid_sample`` whose normalised
    x-coordinate is negated (align_corners = True), the flip-back of EAC's official code.
    """
    return tf.reverse(as_float(maps), axis=[-2])


def concordance_correlation(pred, target, eps: float = 0.0) -> tf.Tensor:
    """Lin's concordance correlation coefficient of two ``(N,)`` tensors, population (1/N) moments.

    ``CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) − mean(y))² + eps)`` in the inputs' float dtype
    (float64 for the evaluation metric, float32 as a training loss, where ``eps`` keeps the gradient of
    a constant batch finite). The one CCC of the project: ``engine.metrics.ccc`` and the pseudo-VA
    regressor's loss both call it.
    """
    x = tf.convert_to_tensor(pred)
    x = tf.cast(x, tf.float64 if x.dtype == tf.float64 else tf.float32)
    y = tf.cast(target, x.dtype)
    mx, my = tf.reduce_mean(x), tf.reduce_mean(y)
    vx, vy = tf.reduce_mean(tf.square(x - mx)), tf.reduce_mean(tf.square(y - my))
    cov = tf.reduce_mean((x - mx) * (y - my))
    return 2.0 * cov / (vx + vy + tf.square(mx - my) + eps)
