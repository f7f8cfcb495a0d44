"""RUL losses: Relative Uncertainty Learning (Zhang, Wang, Deng, NeurIPS 2021).

Paper: "Relative Uncertainty Learning for Facial Expression Recognition". Official code:
``zyh-uaiaaaa/Relative-Uncertainty-Learning``: ``src/rul.py`` (``res18feature.forward``, phase
'train'), ``src/utils.py`` (``mixup_data``, ``mixup_criterion``) and ``src/main.py`` (``train``).
Re-implemented from a description of that code (the repository has no licence; nothing is copied).
Equation numbers are not cited: the paper's full text was not checked here.

Two heads on the last conv map F give, per image, a feature μ_i ∈ ℝ^D and a log-variance
logvar_i ∈ ℝ^D (D = 64). Then:

* **uncertainty** (:func:`uncertainty_from_logvar`): u_i = (1/D)·Σ_d exp(logvar_id) > 0;
* **mixing** (:func:`uncertainty_mix`): for a permutation π of the batch (drawn by the model, a
  fresh ``randperm`` every step; self-pairs allowed), w_i = u_i / (u_i + u_π(i)) and
  x̃_i = w_i·μ_i + (1 − w_i)·μ_π(i), so the *more uncertain* image gets the larger share;
* **add-up loss** (:func:`add_up_loss`): ½·mean_i CE(fc(x̃_i), y_i) + ½·mean_i CE(fc(x̃_i), y_π(i)).

There is no other term: no KL or variance prior, no regulariser on logvar, nothing detached (the
gradient reaches μ, u through w, and the backbone). The weights are computed in log space,
w_i = σ(log u_i − log u_π(i)) with log u = logsumexp(logvar) − log D: the same function, but finite
where exp(logvar) under- or overflows in float32.

Inference: o = fc(μ) (BN in inference mode, dropout off). The noise/ambiguity score is u itself
(:func:`uncertainty_from_logvar` on the inference-mode logvar head): a larger u = a harder image. It
is relative (only ratios within a batch are trained), so compare it by rank, e.g. ROC-AUC.

Paper vs official code:

| aspect | paper / author | official code |
|---|---|---|
| epochs | 70 | 60 |
| relabelling in the synthetic-noise runs | SCN's relabel module added, "vital" (maintainer, issue #4); start epoch, δ₂ and scope unpublished | absent |
| mixing pairs | images with different labels (maintainer, issue #6) | one random permutation (same labels and self-pairs possible) |
| reported metric | last epoch, mean ± std of 3 runs (noisy) | best test epoch tracked, ``acc_888.pth`` saved at ≥ 0.888 |
| noisy label files | SCN's ``generate.py`` (symmetric flips) | none shipped |

For the noisy runs, use :func:`losses.scn.relabel` (δ₂ = 0.2, whole batch, from 1-based epoch 10 as
in SCN) on each image's *unmixed* probabilities softmax(fc(μ_i)): the mixed logits belong to a pair,
not to one image. This is our choice where the authors published none; treat it as a deviation.

Official defaults (``src/main.py``, ``src/rul.py``):

| name | value | note |
|---|---|---|
| feature dim D | 64 | hard-coded in ``res18feature``; ``--out_dimension`` sizes only the fc |
| heads μ, logvar | BN2d(512, eps 2e-5, no affine) → Dropout 0.4 → Flatten (C, H, W order) → Linear(25088→64) → BN1d(64, eps 2e-5) | separate weights; fc = Linear(64→C) |
| batch, epochs | 64, 60 (paper 70) | last partial batch kept |
| optimiser | Adam; backbone + μ + logvar lr 2e-4; fc lr 2e-3; coupled L2 1e-4 for both groups | PyTorch eps 1e-8 |
| schedule | ExponentialLR 0.9 stepped per epoch, both groups | |
| backbone | ResNet-18, MS-Celeb (``resnet18_msceleb.pth``), feature map 512×7×7 at 224 px | |
| augmentation | p 0.5 one of {h-flip, Gaussian noise var 30}, RandomErasing(scale 0.02–0.25, p 0.5) | as SCN |
| seed | 0 | |

Shapes: B batch, D feature dimension (64), C classes (any C ≥ 2). ``perm`` is a ``(B,)`` int
permutation of ``range(B)``; it is not validated.
"""

from __future__ import annotations

import tensorflow as tf

from losses.common import as_float, as_labels

FEATURE_DIM = 64
DROPOUT = 0.4
ADD_UP_WEIGHT = 0.5


def uncertainty_from_logvar(logvar) -> tf.Tensor:
    """Per-image uncertainty u_i = (1/D)·Σ_d exp(logvar_id): ``(B, D)`` → ``(B,)`` float32 (> 0)."""
    return tf.reduce_mean(tf.exp(as_float(logvar)), axis=-1)


def log_uncertainty_from_logvar(logvar) -> tf.Tensor:
    """log u_i = logsumexp_d(logvar_id) − log D: ``(B, D)`` → ``(B,)``, finite for any finite logvar."""
    logvar = as_float(logvar)
    dim = tf.cast(tf.shape(logvar)[-1], tf.float32)
    return tf.reduce_logsumexp(logvar, axis=-1) - tf.math.log(dim)


def mixing_weights(uncertainty, perm) -> tf.Tensor:
    """w_i = u_i / (u_i + u_π(i)) from positive uncertainties: ``(B,)``, ``(B,)`` → ``(B,)``.

    The direct formula of the official code; :func:`uncertainty_mix` computes the same weights in
    log space. A self-pair (π(i) = i) gets ½.
    """
    u = as_float(uncertainty)
    if u.shape.rank == 2 and u.shape[-1] == 1:
        u = tf.squeeze(u, axis=-1)
    u_perm = tf.gather(u, tf.cast(perm, tf.int32))
    return u / (u + u_perm)


def uncertainty_mix(mu, logvar, perm) -> tuple[tf.Tensor, tf.Tensor]:
    """Uncertainty-weighted feature mixup: x̃_i = w_i·μ_i + (1 − w_i)·μ_π(i).

    w_i = u_i/(u_i + u_π(i)) = σ(log u_i − log u_π(i)) with u from :func:`uncertainty_from_logvar`.
    Nothing is detached: the gradient reaches μ and, through w, logvar.

    Args:
      mu: ``(B, D)`` features μ (the μ head's output).
      logvar: ``(B, D)`` log-variances (the logvar head's output).
      perm: ``(B,)`` int permutation π of ``range(B)``, drawn by the caller (e.g.
        ``tf.random.shuffle(tf.range(B))``); self-pairs allowed, no derangement needed.

    Returns:
      ``mixed`` ``(B, D)`` float32 and the weights ``w`` ``(B,)`` float32 on each sample's own μ.
    """
    mu = as_float(mu)
    perm = tf.cast(perm, tf.int32)
    log_u = log_uncertainty_from_logvar(logvar)
    weights = tf.sigmoid(log_u - tf.gather(log_u, perm))
    mixed = weights[:, None] * mu + (1.0 - weights[:, None]) * tf.gather(mu, perm)
    return mixed, weights


def add_up_loss(logits, labels, perm, weight: float = ADD_UP_WEIGHT) -> tf.Tensor:
    """Add-up loss ``weight·mean CE(o, y) + (1 − weight)·mean CE(o, y_π)``; scalar float32.

    The official code uses weight ½: the mixed feature must be classified as both labels.

    Args:
      logits: ``(B, C)`` logits o_i = fc(x̃_i) of the mixed features.
      labels: ``(B,)`` int labels y.
      perm: the ``(B,)`` permutation used for the mix (y_π(i) = labels[perm[i]]).
      weight: share of the first label (0.5).
    """
    logits = as_float(logits)
    labels = as_labels(labels)
    labels_perm = tf.gather(labels, tf.cast(perm, tf.int32))
    ce_a = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    ce_b = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels_perm, logits=logits)
    return weight * tf.reduce_mean(ce_a) + (1.0 - weight) * tf.reduce_mean(ce_b)

