"""EAC: Erasing Attention Consistency (ECCV 2022; official zyh-uaiaaaa/Erasing-Attention-Consistency).

Y. Zhang, C. Wang, X. Ling, W. Deng, "Learn From All: Erasing Attention Consistency for Noisy Label
Facial Expression Recognition", ECCV 2022 (arXiv:2207.10299). Official PyTorch code:
``zyh-uaiaaaa/Erasing-Attention-Consistency``: ``src/model.py`` (``Model.forward``: the attention maps),
``src/loss.py`` (``ACLoss``), ``src/utils.py`` (``generate_flip_grid``), ``src/dataset.py``
(``RafDataset.__getitem__``: the two views) and ``src/main.py`` (``train``, arguments). Re-implemented
from a description of that code (the repository has no licence; nothing is copied). Equation numbers are
not cited; the maths and its paper-vs-code table are in :mod:`losses.eac`.

Each training image gives two views, view 1 (the batch image, randomly erased) and view 2 (its horizontal
mirror, erased by the *same* mirrored draw or by an *independent* one, ``independent_erasing``). With F the
last conv map (:func:`models.backbones.stage_models`, before global pooling) and W the classifier kernel,
the attention maps are the CAMs M = Σ_k W_kc F_k (W detached, no bias: :func:`losses.eac.attention_maps`)
and::

    L = CE(z¹, y) + λ·mean((M¹ − flip_back(M²))²),     λ = 5

with the classification loss on view 1 only (z² is never used). Inference is the plain classifier on one
view (``classifier(backbone(x))``, the base model's), so EAC has no per-sample state and no per-sample
uncertainty score.

Two forwards: by default the views go through the network in **two separate forward passes**, as the
official ``train`` does, so each view's BatchNorm normalises with its own batch statistics (and the moving
statistics are updated twice per step); ``views_forward=joint`` runs one forward of the 2B concatenation
instead (NLA's choice here: statistics pooled over both views, one larger call, usually faster on a GPU).

Random erasing is EAC's own, drawn in the model: the official erasing is part of the method (the consistency
of the two views' attention *under erasing* is what it trains), its noisy-label mode needs the un-erased
image for an independent second draw, and the pipeline hands a method only the already augmented image.
torchvision ``RandomErasing`` semantics (:func:`random_erasing`): p ``erasing``, area 0.02–0.25, aspect
0.3–3.3 log-uniform, 10 placement attempts, value 0 (in [-1, 1] input space: mid-grey, as the official 0 of
the ImageNet-normalised tensor is the mean colour). Leave the pipeline's ``--random-erasing`` at 0 for EAC
(its default), or view 1 is erased twice. The draws are stateless and resume-exact: seeds are a pure
function of (run seed, optimizer step, the batch's row indices), see :func:`models.base.step_seed`.

Deviations / choices (paper vs official code ``61efdfd`` vs ours)
---------------------------------------------------------------------------------------------
(paper column: (fig.) = the paper's pipeline figure as described, not checked against the text)

=====================  ======================  ===========================  ===================================
item                   paper / author          official code                ours (default) — option
=====================  ======================  ===========================  ===================================
erasing of the views   erase, then flip: both  noisy label files (all       ``independent_erasing=true`` —
                       views share the         headline noisy results):     ``false`` (view 2 = flip(view 1))
                       mirrored region (fig.)  independent draws per view;
                                               clean file: shared
forward passes         –                       two, BN statistics per view  ``views_forward=separate`` —
                                                                            ``joint`` (one 2B forward)
erasing                RandomErasing           torchvision, p 0.5, scale    the same draw rule, in the model
                                               0.02–0.25, value 0 after     (``erasing=0.5``), value 0 in
                                               normalisation                [-1, 1] space; stateless seeds
random flip            –                       none (the flip is view 2)    the pipeline's random flip stays
                                                                            (view 2 is still view 1's mirror)
Gaussian noise         –                       var 30, p 0.5, view 1 only   not reproduced
CAM grid               7×7                     7×7 (224 px)                 the last stage map at any size
                                                                            (small_cnn at 24–32 px: 1×1, the
                                                                            term is then a bias-free logit
                                                                            flip consistency)
λ                      5                       ``--lam`` 5                  ``lam=5``
CAM scale              –                       raw CAMs                     raw (``cam_norm=none``) — ``max``
                                                                            / ``rms``: each map ÷ its max |M|
                                                                            or RMS over H×W (diagnosis)
weight decay           –                       Adam(weight_decay=1e-4):     ``l2_weight_decay``: 0 (as CE);
                                               coupled L2                   1e-4 in ``official``
optimisation           –                       Adam 1e-4 (R50; R18 2e-4),   dataset defaults — ``--preset
                                               ExponentialLR 0.9/epoch,     official`` (R18: 2e-4) or
                                               batch 32, 60 epochs          ``official-r50`` (1e-4)
backbone               MS-Celeb R50            VGGFace2 ``resnet50_ft``     ``--weights`` (the presets ask);
                                               (MS1M → VGGFace2), stride    ``official-r50`` uses
                                               on the first 1×1 conv        ``resnet50_keras`` (same layout)
metric                 mean of the last 5      per-epoch log                last weights; with ``--val-every 1``
                       epochs                                               metrics.json's ``epoch_selection``
                                                                            has the last-5 mean
=====================  ======================  ===========================  ===================================
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from common.errors import ConfigError
from losses.eac import CAM_NORMS, LAMBDA, attention_consistency, attention_maps
from models.backbones import stage_models
from models.base import FERModel, MethodInputs, Preset

VIEWS_FORWARD = ("separate", "joint")
MSCELEB_R18 = ("MS-Celeb-1M ResNet-18 (.pth in torchvision layout: the resnet18_msceleb.pth that SCN, RUL, EAC, "
               "LA-Net and NLA start from)")

# torchvision RandomErasing defaults (the official transform sets only the scale).
ERASING_SCALE = (0.02, 0.25)
ERASING_RATIO = (0.3, 3.3)
ERASING_ATTEMPTS = 10

# Salts that keep this step's draws apart.
_SALT_VIEW_1, _SALT_VIEW_2 = 11, 12


def erasing_boxes(shape, seed, prob: float, scale=ERASING_SCALE, ratio=ERASING_RATIO, attempts=ERASING_ATTEMPTS):
    """Per-image erasing boxes as torchvision ``RandomErasing`` draws them, vectorised and stateless.

    ``shape`` = (B, H, W); returns ``(apply (B,) bool, top, left, height, width (B,) int32)``. Per image:
    erase with probability ``prob``; try ``attempts`` (area ∈ U(scale)·H·W, aspect log-uniform in ``ratio``,
    h = round(√(area·aspect)), w = round(√(area/aspect))) and take the first with h < H and w < W, at a
    uniform position; if none fits, the image is left as it is.
    """
    batch, height, width = shape
    draws = tf.random.experimental.stateless_split(seed, num=5)
    apply = tf.random.stateless_uniform([batch], draws[0]) < prob
    area = tf.random.stateless_uniform([batch, attempts], draws[1], scale[0], scale[1]) * tf.cast(height * width,
                                                                                                  tf.float32)
    aspect = tf.exp(tf.random.stateless_uniform([batch, attempts], draws[2], math.log(ratio[0]), math.log(ratio[1])))
    h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (h < height) & (w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)  # the first fitting attempt
    h = tf.gather(h, first, batch_dims=1)
    w = tf.gather(w, first, batch_dims=1)
    apply = apply & tf.reduce_any(fits, axis=1)
    where = tf.random.stateless_uniform([batch, 2], draws[3])
    top = tf.cast(tf.floor(where[:, 0] * tf.cast(height - h + 1, tf.float32)), tf.int32)
    left = tf.cast(tf.floor(where[:, 1] * tf.cast(width - w + 1, tf.float32)), tf.int32)
    return apply, top, left, h, w


def random_erasing(images, seed, prob: float, value: float = 0.0):
    """Erase one box per image (see :func:`erasing_boxes`) with ``value``: ``(B, H, W, 3)`` → same."""
    if prob <= 0:
        return images
    shape = tf.shape(images)
    apply, top, left, h, w = erasing_boxes((shape[0], shape[1], shape[2]), seed, prob)
    rows = tf.range(shape[1])[None, :, None]
    cols = tf.range(shape[2])[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + w)[:, None, None]) & apply[:, None, None])
    return tf.where(inside[..., None], tf.cast(value, images.dtype), images)


@dataclasses.dataclass(frozen=True)
class EACConfig:
    """EAC hyperparameters (official defaults unless marked)."""

    lam: float = LAMBDA  # λ, the attention-consistency weight (paper and official 5)
    erasing: float = 0.5  # probability of EAC's random erasing of each view (official RandomErasing p 0.5)
    # View 2's erasing: true = its own draw on the mirrored image (official code for noisy label files, i.e.
    # every headline noisy result); false = the mirror of view 1's erased image (paper figure; official code
    # for the clean label file). Default: the code's noisy-label mode.
    independent_erasing: bool = True
    # "separate" (official: two forwards, BN statistics per view) | "joint" (one forward of both views).
    views_forward: str = "separate"
    # Each CAM normalised before the consistency (a diagnosis of the raw CAM scale; not in the release):
    # "none" (release) | "max" (÷ max |M|) | "rms" (÷ root mean square), per image and class over H×W.
    cam_norm: str = "none"
    # Coupled L2 (PyTorch Adam(weight_decay)); official 1e-4 (see the ``official`` presets). DEVIATION: 0 by
    # default so that EAC and the CE baseline share the same optimisation in comparisons.
    l2_weight_decay: float = 0.0

    def __post_init__(self):
        if self.views_forward not in VIEWS_FORWARD:
            raise ConfigError(f"eac views_forward must be one of {', '.join(VIEWS_FORWARD)}, got '{self.views_forward}'")
        if self.cam_norm not in CAM_NORMS:
            raise ConfigError(f"eac cam_norm must be one of {', '.join(CAM_NORMS)}, got '{self.cam_norm}'")
        if not 0.0 <= self.erasing <= 1.0:
            raise ConfigError(f"eac erasing must lie in [0, 1], got {self.erasing}")
        if self.lam < 0 or self.l2_weight_decay < 0:
            raise ConfigError(f"eac lam and l2_weight_decay must be >= 0, got {self.lam}, {self.l2_weight_decay}")


def _official(lr: float, backbone: str, weights: str) -> Preset:
    """The official recipe (src/main.py): Adam + coupled L2 1e-4, ExponentialLR 0.9 per epoch, batch 32,
    60 epochs, 224 px (RAF's 100-px crops upsampled, no crop augmentation), erasing in the model."""
    return Preset(method={"l2_weight_decay": 1e-4, "erasing": 0.5},
                  run={"optimizer": "adam", "lr": lr, "lr_schedule": "exponential", "lr_decay": 0.9, "epochs": 60,
                       "batch_size": 32, "backbone": backbone, "image_size": 224, "pad": 0, "random_erasing": 0.0},
                  weights=weights)


class EACModel(FERModel):
    method_name = "eac"
    loss_names = ("ce", "consistency")
    presets = {
        # ResNet-18 as the README's FAQ: lr 2e-4 and RUL's MS-Celeb checkpoint.
        "official": _official(2e-4, "resnet18", MSCELEB_R18),
        # The code's own backbone: ResNet-50 at lr 1e-4. Its VGGFace2 network has the stride on the first 1×1
        # convolution of each block (Caffe layout), as resnet50_keras, not torchvision's resnet50.
        "official-r50": _official(1e-4, "resnet50_keras",
                                  "the VGGFace2 resnet50_ft weights (MS-Celeb-1M, then VGGFace2 fine-tuning; "
                                  "Caffe layout as resnet50_keras) as a Keras .weights.h5 for resnet50_keras"),
        # The paper's pipeline figure: both views share the mirrored erasing.
        "paper": Preset(method={"independent_erasing": False}),
    }

    def __init__(self, backbone, num_classes, num_train_samples, config: EACConfig, steps_per_epoch=1,
                 total_epochs=1, seed=0, **kwargs):
        super().__init__(backbone, num_classes, num_train_samples, config, steps_per_epoch, total_epochs, **kwargs)
        # === Layers: a view of the backbone giving the pooled feature and the last stage map in one pass ===
        stages, _ = stage_models(backbone)
        self.pooled_and_map = keras.Model(stages.input, [stages.outputs[0], stages.outputs[-1]], name="eac_stage_view")
        # === State (checkpointed) ===
        self.add_draw_seed(seed)  # the run seed of the stateless draws

    @classmethod
    def prepare_data(cls, cfg, train_table, context) -> MethodInputs:
        return MethodInputs(model_kwargs={"seed": int(context.seed)})

    @classmethod
    def empty_method_data(cls, cfg, num_train_samples: int) -> MethodInputs:
        """Seed 0 (the checkpoint restores the run's)."""
        return MethodInputs(model_kwargs={"seed": 0})

    # --- views and maps ------------------------------------------------------------------------------
    def views(self, images, index):
        """View 1 = erase(x); view 2 = erase'(flip(x)) (independent) or flip(view 1) (shared)."""
        cfg: EACConfig = self.config
        view_1 = random_erasing(images, self.seed_for(index, _SALT_VIEW_1), cfg.erasing)
        if cfg.independent_erasing:
            view_2 = random_erasing(tf.image.flip_left_right(images), self.seed_for(index, _SALT_VIEW_2), cfg.erasing)
        else:
            view_2 = tf.image.flip_left_right(view_1)
        return view_1, view_2

    def forward_views(self, view_1, view_2, training):
        """``(logits¹ (B, C), maps¹, maps² (B, H, W, C))``; the CAMs use the detached classifier kernel."""
        if self.config.views_forward == "joint":
            pooled, feature_map = self.pooled_and_map(tf.concat([view_1, view_2], axis=0), training=training)
            pooled_1, _ = tf.split(pooled, 2, axis=0)
            map_1, map_2 = tf.split(feature_map, 2, axis=0)
        else:
            pooled_1, map_1 = self.pooled_and_map(view_1, training=training)
            _, map_2 = self.pooled_and_map(view_2, training=training)  # z² is never used (official)
        logits = tf.cast(self.classifier(tf.cast(pooled_1, tf.float32)), tf.float32)
        kernel = self.classifier.kernel
        return logits, attention_maps(map_1, kernel), attention_maps(map_2, kernel)

    # --- losses --------------------------------------------------------------------------------------
    def loss_weight(self, name: str) -> float:
        return self.config.lam if name == "consistency" else 1.0

    def compute_losses(self, batch, watched, training=True):
        cfg: EACConfig = self.config
        if training:
            view_1, view_2 = self.views(batch["image"], batch["index"])
        else:  # evaluation-style call: no erasing, view 2 is the exact mirror
            view_1, view_2 = batch["image"], tf.image.flip_left_right(batch["image"])
        logits, maps, flipped_view_maps = self.forward_views(view_1, view_2, training)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(batch["label"], tf.int32), logits=logits)
        losses = {"ce": tf.reduce_mean(ce),
                  "consistency": attention_consistency(maps, flipped_view_maps, cfg.cam_norm)}
        if cfg.l2_weight_decay:
            losses["l2"] = self.l2_penalty(cfg.l2_weight_decay)
        return losses, {"logits": logits, "maps": maps, "flipped_view_maps": flipped_view_maps}
