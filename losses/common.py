"""Helpers shared by the loss modules: guarded log, one-hot, soft-target cross-entropy, class counts.

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
