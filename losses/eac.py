"""EAC losses: Erasing Attention Consistency (Zhang, Wang, Ling, Deng, ECCV 2022).

Paper: "Learn From All: Erasing Attention Consistency for Noisy Label Facial Expression
Recognition". Official code: ``zyh-uaiaaaa/Erasing-Attention-Consistency``: ``src/model.py``
(``Model.forward``: the attention maps), ``src/loss.py`` (``ACLoss``), ``src/utils.py``
(``generate_flip_grid``) and ``src/main.py`` (``train``). Re-implemented from a description of that
code (the repository has no licence; nothing is copied). Equation numbers are not cited: the paper's
full text was not checked here.

Each training image gives two views: view 1 and a horizontally flipped view 2, each with its own
forward pass (own BN batch statistics). With F the last conv map and W the classifier kernel:

* **attention maps** (:func:`attention_maps`, i.e. :func:`losses.common.class_activation_maps`):
  M = Σ_k W_kc F_k, ``(B, H, W, K) → (B, H, W, C)``, no bias, **W detached** (the official code
  reads the fc weight data), so the consistency term trains the backbone only;
* **flip back** (:func:`flip_back`): reverse the width axis of view 2's maps. The official bilinear
  ``grid_sample`` on a grid with negated x (align_corners = True, border padding) reads exactly the
  mirrored integer positions, so it *is* this reversal;
* **attention consistency** (:func:`attention_consistency`): mean over all B·H·W·C elements of
  (M¹ − flip(M²))², PyTorch ``mse_loss`` with mean reduction;
* **total** (:func:`eac_total_loss`): CE(z¹, y) (view 1 only; z² is never used) + λ·L_ac, λ = 5.

Not in the release (a diagnosis switch, ``cam_norm``): the raw CAMs carry the scale of the features and
of the classifier kernel, so λ·L_ac weighs differently against CE as those grow and with the map size.
:func:`normalize_attention_maps` divides each map (per image and class, over H×W) by its largest
absolute value (``max``) or by its root mean square (``rms``) before the consistency; ``none`` is the
release. With ``rms`` every map has unit mean square, so L_ac ∈ [0, 4] whatever the scale or the grid.

There is no per-sample state and no relabelling; inference is the plain classifier on one view, and
EAC has no per-sample uncertainty score.

Paper vs official code:

| aspect | paper / author | official code |
|---|---|---|
| erasing vs flip | erase the image, then flip, so both views share the erased region (pipeline figure, not checked) | true only for the clean label file; for noisy label files (every headline noisy result) view 1 = erase(noise(x)) and view 2 = erase(flip(x)) with **independent** erasing draws, and only view 1 can get Gaussian noise |
| backbone | "ResNet-50 pre-trained on MS-Celeb-1M" | VGGFace2 ``resnet50_ft`` weights (MS1M, then VGGFace2 fine-tuning) |
| ResNet-18 | reported | R50 code; R18 needs lr 2e-4 and RUL's MS-Celeb checkpoint (README) |
| metric | mean test accuracy of the last 5 epochs (following SCN) | per-epoch log only |
| λ flag | λ | ``--lam`` (help string says "kl_lambda", a leftover) |

Official defaults (``src/main.py``):

| name | value | note |
|---|---|---|
| λ | 5 | |
| CAM grid | 7×7 | the feature-map size at 224 px |
| batch, epochs | 32, 60 | changing the batch broke an R18 reproduction (issue #20) |
| optimiser | Adam lr 1e-4 for all parameters (R18: 2e-4), coupled L2 1e-4 | PyTorch eps 1e-8 |
| schedule | ExponentialLR 0.9 stepped per epoch | |
| augmentation | Gaussian noise (var 30, p 0.5) on view 1; RandomErasing(scale 0.02–0.25, ratio 0.3–3.3, p 0.5, value 0) after normalisation; no random flip | the flip is the second view |
| input | 224×224, ImageNet mean/std | |
| seed | 0, deterministic cuDNN | |

Shapes: B batch, H×W grid (7×7), K channels (2048 for R50, 512 for R18), C classes.
"""

from __future__ import annotations

import tensorflow as tf

from losses.common import as_float, as_labels, class_activation_maps, flip_width

LAMBDA = 5.0


def attention_maps(feature_map, kernel) -> tf.Tensor:
    """EAC's attention maps: CAMs with the classifier kernel detached.

    ``(B, H, W, K)`` feature map and ``(K, C)`` Dense kernel → ``(B, H, W, C)`` float32; see
    :func:`losses.common.class_activation_maps`.
    """
    return class_activation_maps(feature_map, kernel, stop_kernel_gradient=True)


def flip_back(maps) -> tf.Tensor:
    """Mirror the flipped view's maps back into view 1's coordinates: ``(B, H, W, C)`` → same.

    The reversal of the width axis (:func:`losses.common.flip_width`), which is what the official
    ``grid_sample`` with ``generate_flip_grid`` computes.
    """
    return flip_width(maps)


CAM_NORMS = ("none", "max", "rms")
# Floor of the normalisers, ~1e-6: a map that is (nearly) 0 is not blown up, and its gradients stay finite.
_MAX_EPS, _MEAN_SQUARE_EPS = 1e-6, 1e-12


def normalize_attention_maps(maps, cam_norm: str = "none") -> tf.Tensor:
    """Scale-free attention maps (a diagnosis option, not the release): ``(B, H, W, C)`` → same.

    Per image and class, over the H×W grid: ``none`` returns M (the release); ``max`` M / max|M|;
    ``rms`` M / √(mean M²). The normaliser is not detached (the gradient sees the division); it gets
    1e-6 added (``max``) or 1e-12 under the root (``rms``), so an all-zero map stays zero with finite
    gradients.
    """
    maps = as_float(maps)
    if cam_norm == "none":
        return maps
    if cam_norm == "max":
        return maps / (tf.reduce_max(tf.abs(maps), axis=[1, 2], keepdims=True) + _MAX_EPS)
    if cam_norm == "rms":
        return maps * tf.math.rsqrt(tf.reduce_mean(tf.square(maps), axis=[1, 2], keepdims=True) + _MEAN_SQUARE_EPS)
    raise ValueError(f"cam_norm must be one of {', '.join(CAM_NORMS)}, got '{cam_norm}'")


def attention_consistency(maps, flipped_view_maps, cam_norm: str = "none") -> tf.Tensor:
    """Flip attention consistency L_ac = mean((M¹ − flip_back(M²))²) over all B·H·W·C elements.

    Args:
      maps: ``(B, H, W, C)`` attention maps M¹ of view 1.
      flipped_view_maps: ``(B, H, W, C)`` attention maps M² of the horizontally flipped view, in
        that view's own coordinates (they are flipped back here). Both get gradients.
      cam_norm: ``none`` (the release) or ``max`` / ``rms``: each map normalised first
        (:func:`normalize_attention_maps`; normalising commutes with the flip).

    Returns:
      Scalar float32. Independent of B for a repeated batch (a mean, not a sum).
    """
    return tf.reduce_mean(tf.square(normalize_attention_maps(maps, cam_norm)
                                    - flip_back(normalize_attention_maps(flipped_view_maps, cam_norm))))


def eac_total_loss(logits, labels, maps, flipped_view_maps, lam: float = LAMBDA) -> tf.Tensor:
    """EAC's loss ``mean CE(z¹, y) + λ·L_ac``; scalar float32 (λ = 5).

    Args:
      logits: ``(B, C)`` logits z¹ of view 1 only (the flipped view's logits are unused).
      labels: ``(B,)`` int (noisy) labels.
      maps, flipped_view_maps: see :func:`attention_consistency`.
      lam: consistency weight λ.
    """
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=as_labels(labels), logits=as_float(logits))
    return tf.reduce_mean(ce) + lam * attention_consistency(maps, flipped_view_maps)
