"""DDAF: dual-domain affect fusion for noisy labels.

D. Neo, T. Chen, S. Winkler, "Large-Scale Facial Expression Recognition Using Dual-Domain Affect Fusion
for Noisy Labels", CVPR Workshops (ABAW) 2023, pp. 5692-5700. The paper is cited by component name (its
dual-domain label fusion module and mixed labels), not by equation number.

Idea: a categorical label may be wrong, but the sample's valence-arousal (VA) annotation says where it
lies in affect space. DDAF turns the VA point into a "mixed label" m over the classes, either the
posterior of a per-class Gaussian mixture (GMM) or normalised inverse distances to the class centroids
(Euclidean), both from *trimmed* per-class VA statistics (samples within one standard deviation of the
class mean on both axes), and trains on the fused target t = α·e_y + (1 − α)·m. A VA regression head
(tanh) is trained jointly, and all three terms are weighted per sample by the class weight
w_y = N_max / N_y of the given label::

    L = mean[w·(v̂ − v)²] + mean[w·(â − a)²]          (va)
      + mean[−w·Σ_c t_c log p_c]                      (ce)
      + mean[w·(1 − cos(p, t))]                       (cos)

The paper trains with stochastic weight averaging (SWA); :mod:`models.swa` implements it, with the
running average as checkpointed model state.

The paper's own repository was not available; the authors' closest public code is ``dexterdley/FER_C``
at commit faf883b (MIT): ``train_scale.py`` (``run_training``, ``compute_losses``, ``get_centroids``,
``get_weights``, ``Res18Feature``), ``utils.py`` (``get_va_labels``), ``GMM.py``
(``generate_GMM_labels``, ``generate_EM_labels``) and ``affectnet_dataloader.py``; it is called the
"official code" below. Maths in :mod:`losses.ddaf`.

Deviations / choices (paper vs official code FER_C ``faf883b`` vs ours)
-----------------------------------------------------------------------------------------------------
In the paper column, – = no paper value recorded here; (rep.) = what the paper states according to the
maintainers' report, not re-checked against the paper text.

====================  ================  ============================  ==========================================
item                  paper             official code                 ours (default) — option
====================  ================  ============================  ==========================================
α (one-hot weight)    0.5               ``--fuse_factor`` default     ``alpha=0.5`` (paper)
                                        1.0 (pure one-hot)
mixed label           –                 ``--fuse_type GMM|VA``        ``fuse_type=gmm`` — ``euclidean``
Euclidean weights     1/d_k² (rep.)     1/d_k, unsquared              as official (unsquared)
                                        (``utils.py get_va_labels``)
EM-refined GMM        –                 ``generate_EM_labels``        not ported (posterior of the trimmed GMM)
class statistics      –                 labels before the noise is    the given (possibly noisy) training
                                        injected (clean labels leak)  labels: a user has no clean labels
class weights         –                 given labels                  given labels
SWA                   yes               none in the whole history     ``swa=True``: epoch ends from
                                                                      ⌊0.75·E⌋, then BN update — ``swa=false``
face crop             –                 PIL crop with w/h used as     not reproduced (the importers' crops)
                                        right/bottom (bug)
synthetic noise       –                 int(r·N) draws with           data/noise.py: exactly round(r·N)
                                        replacement, may keep label   distinct samples, always a new label
log in CE             –                 no guard                      log(p + 1e-10)
Euclidean d = 0       –                 division by zero              distance clamped at 1e-8
weight decay          –                 Adam(weight_decay=1e-5),      ``l2_weight_decay`` (explicit coupled
                                        i.e. coupled L2               L2): 0, as CE; 1e-5 in ``official``
optimisation          lr 2.5e-4, ×0.5   Adam 2.5e-4, constant LR,     dataset defaults — ``--preset official``
                      every 30 epochs,  batch 256, 50 epochs          (Adam 2.5e-4, constant, 256, 50, R18)
                      batch 256, 50
                      epochs (rep.)
backbone              –                 torchvision R18 (ImageNet)    dataset default (``--weights imagenet``)
augmentation          colour jitter,    flip, affine ±30°, colour     toolkit pipeline (pad-crop, flip,
                      affine (rep.)     jitter, random erasing        ``--random-erasing``)
model selection       –                 best val macro-F1 (250/class  last (SWA) weights, no selection
                                        held out of train)
VA metrics            RMSE, CCC         averaged over batches         whole test split (``predict_outputs``)
====================  ================  ============================  ==========================================
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
from keras import layers

from common.errors import ConfigError
from losses.ddaf import (
    class_weights_max_over_count,
    ddaf_losses,
    euclidean_mixed_labels,
    fuse_labels,
    gmm_mixed_labels,
    trimmed_class_stats,
)
from models.base import FERModel, MethodInputs, Preset
from models.swa import SWACallback, SWAState, swa_start_epoch, update_batch_norm

FUSE_TYPES = ("gmm", "euclidean")


@dataclasses.dataclass(frozen=True)
class DDAFConfig:
    """DDAF hyperparameters (paper defaults unless marked)."""

    # Weight of the one-hot label in t = α·e_y + (1 − α)·m. Paper α = 0.5; the official code's default
    # is 1.0 (plain one-hot), so its paper results need the flag passed explicitly.
    alpha: float = 0.5
    # Mixed label m: "gmm" = posterior of the trimmed per-class Gaussian mixture, precomputed per training
    # sample (the release's CSV ships these); "euclidean" = normalised inverse distance of the sample's VA
    # to the trimmed class centroids, computed per batch.
    fuse_type: str = "gmm"
    # Euclidean mixed labels: inverse distances (official code, default: it is what the authors ran) or inverse
    # *squared* distances (the paper's eq. 3).
    euclidean_squared: bool = False
    va_weight: float = 1.0  # weight of the class-weighted VA L2 term (official: 1)
    ce_weight: float = 1.0  # weight of the class-weighted soft-target CE (official: 1)
    cos_weight: float = 1.0  # weight of the class-weighted (1 − cosine) term (official: 1)
    # Stochastic weight averaging as the paper states. DEVIATION from the official code, which has none.
    swa: bool = True
    # Fraction of the epochs after which epoch-end weights are averaged: first averaged epoch (0-based)
    # is floor(swa_start·E), e.g. 9 of 12. Not stated in the paper; 0.75 is the SWA paper's usual choice.
    swa_start: float = 0.75
    swa_bn_update: bool = True  # recompute BatchNorm statistics of the averaged weights (one training epoch)
    # Coupled L2 (PyTorch Adam(weight_decay)); official 1e-5 (see the ``official`` preset). DEVIATION: 0 by
    # default so that DDAF and the CE baseline share the same optimisation in comparisons.
    l2_weight_decay: float = 0.0

    def __post_init__(self):
        if self.fuse_type not in FUSE_TYPES:
            raise ConfigError(f"ddaf fuse_type must be one of {', '.join(FUSE_TYPES)}, got '{self.fuse_type}'")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"ddaf alpha must lie in [0, 1], got {self.alpha}")
        if not 0.0 <= self.swa_start <= 1.0:
            raise ConfigError(f"ddaf swa_start is a fraction of the epochs in [0, 1], got {self.swa_start}")
        for name in ("va_weight", "ce_weight", "cos_weight", "l2_weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ddaf {name} must be >= 0, got {getattr(self, name)}")


class DDAFModel(FERModel):
    method_name = "ddaf"
    loss_names = ("va", "ce", "cos")
    served_outputs = ("va",)  # the SavedModel serves the VA head beside the class probabilities
    presets = {
        # The official code's optimisation (FER_C train_scale.py): Adam 2.5e-4 with coupled L2 1e-5, no LR
        # schedule, batch 256, 50 epochs, ResNet-18, and no SWA (it has none). α stays at the paper's 0.5.
        # (The paper reportedly halves the lr every 30 epochs; see the module docstring's table.)
        "official": Preset(
            method={"l2_weight_decay": 1e-5, "swa": False},
            run={"lr": 2.5e-4, "batch_size": 256, "epochs": 50, "lr_schedule": "constant",
                 "backbone": "resnet18", "image_size": 224},
            weights="ImageNet ResNet-18 (torchvision's resnet18-f37072fd.pth)",
        ),
        # The paper's own schedule: lr 2.5e-4 halved every 30 epochs, batch 256, 50 epochs, SWA (α = 0.5).
        # Its colour-jitter/affine augmentation is not reproduced (the toolkit's flip + pad-crop is used).
        "paper": Preset(
            run={"lr": 2.5e-4, "batch_size": 256, "epochs": 50, "lr_schedule": "step", "lr_steps": (30,),
                 "lr_decay": 0.5, "backbone": "resnet18", "image_size": 224},
            weights="ImageNet ResNet-18 (torchvision's resnet18-f37072fd.pth)",
        ),
    }

    def __init__(self, backbone, num_classes, num_train_samples, config: DDAFConfig, steps_per_epoch=1,
                 total_epochs=1, class_means=None, class_covariances=None, class_priors=None, class_weights=None,
                 **kwargs):
        super().__init__(backbone, num_classes, num_train_samples, config, steps_per_epoch, total_epochs, **kwargs)
        # === Layers ===
        # VA regression head: Dense(2) → tanh (VA lies in [−1, 1]); float32 under mixed precision.
        self.va_head = layers.Dense(2, activation="tanh", dtype="float32", name="va_head")
        # Build both heads now: the SWA state below copies every trainable variable, and Keras refuses new
        # state once the model is built.
        feature_dim = backbone.output_shape[-1]
        self.classifier.build((None, feature_dim))
        self.va_head.build((None, feature_dim))
        # === Constant state ===
        # Trimmed per-class VA statistics and class weights of the training labels, kept in the checkpoint
        # so evaluation and resume need no training data (zeros until prepare_data's values or a checkpoint).
        c = self.num_classes
        self.class_means = self._constant_state("class_means", (c, 2), class_means)
        self.class_covariances = self._constant_state("class_covariances", (c, 2, 2), class_covariances)
        self.class_priors = self._constant_state("class_priors", (c,), class_priors)
        self.class_weights = self._constant_state("class_weights", (c,), class_weights)
        # Running SWA average of the trainable weights (models/swa.py), also checkpointed.
        self.swa_state = SWAState(self) if config.swa else None

    def _constant_state(self, name, shape, value):
        variable = self.add_state(name, shape)
        if value is not None:
            variable.assign(np.asarray(value, np.float32).reshape(shape))
        return variable

    # --- data ----------------------------------------------------------------------------------------
    @classmethod
    def needs_va(cls, cfg) -> bool:
        return True

    @classmethod
    def prepare_data(cls, cfg: DDAFConfig, train_table, context) -> MethodInputs:
        """Trimmed class statistics, class weights and (GMM) mixed labels from the training table, once."""
        num_classes = train_table.num_classes
        va = train_table.va.astype(np.float32)
        stats = trimmed_class_stats(va, train_table.labels, num_classes)
        extras = {"va": va}
        if cfg.fuse_type == "gmm":
            # The GMM posterior depends only on the sample's VA and the fixed statistics: precompute it.
            extras["mixed_labels"] = gmm_mixed_labels(va, *stats).astype(np.float32)
        return MethodInputs(extras=extras, model_kwargs={
            "class_means": stats.means, "class_covariances": stats.covariances, "class_priors": stats.priors,
            "class_weights": class_weights_max_over_count(train_table.labels, num_classes)})

    # --- training ------------------------------------------------------------------------------------
    def mixed_labels(self, batch):
        """(B, C) mixed labels m of the batch: gathered GMM posteriors or online Euclidean ones."""
        if self.config.fuse_type == "gmm":
            return tf.cast(batch["mixed_labels"], tf.float32)
        return euclidean_mixed_labels(batch["va"], tf.convert_to_tensor(self.class_means),
                                      squared=self.config.euclidean_squared)

    def compute_losses(self, batch, watched, training=True):
        cfg: DDAFConfig = self.config
        features = tf.cast(self.backbone(batch["image"], training=training), tf.float32)
        heads = self.head_outputs(features)
        logits, pred_va = heads["logits"], heads["va"]
        targets = fuse_labels(batch["label"], self.mixed_labels(batch), cfg.alpha)
        # Softmax in float32 (logits are float32 already); the CE/cosine terms take probabilities.
        probs = tf.nn.softmax(logits, axis=-1)
        losses = ddaf_losses(pred_va, batch["va"], probs, targets, batch["label"],
                             tf.convert_to_tensor(self.class_weights))
        if cfg.l2_weight_decay:
            losses["l2"] = self.l2_penalty(cfg.l2_weight_decay)
        return losses, {"logits": logits, "pred_va": pred_va, "targets": targets}

    def loss_weight(self, name: str) -> float:
        cfg: DDAFConfig = self.config
        return {"va": cfg.va_weight, "ce": cfg.ce_weight, "cos": cfg.cos_weight}.get(name, 1.0)

    # --- SWA -----------------------------------------------------------------------------------------
    def callbacks(self, context) -> list:
        if self.swa_state is None:
            return []
        start = swa_start_epoch(self.config.swa_start, self.total_epochs)
        return [SWACallback(self.swa_state, start, self.steps_per_epoch, self.total_epochs * self.steps_per_epoch,
                            finalize=lambda: self.after_training(context))]

    def before_training(self, context) -> None:
        """A run whose weights are already the SWA average cannot train on (``--extend`` of a finished run)."""
        if self.swa_state is not None and self.swa_state.is_applied:
            raise ConfigError("this DDAF run has finished: its weights were replaced by their SWA average, so it "
                              "cannot be extended; start a new run with the larger --epochs (or train with --set swa=false)")

    def after_training(self, context) -> None:
        """Swap the SWA mean into the model, update BN, and re-save the last checkpoint (idempotent).

        Called by the SWA callback when the last step is done, and by the engine before the final
        evaluation (which covers a ``--resume`` that finds training already complete). The re-saved
        checkpoint holds the averaged weights, so ``evaluate.py`` reproduces metrics.json.
        """
        state = self.swa_state
        if state is None or state.is_applied:
            return
        if state.num_snapshots == 0:
            context.log("SWA: no epoch-end snapshot was averaged (swa_start too late?); keeping the last weights")
            return
        state.swap_in()
        batches = update_batch_norm(self, context.train_images()) if self.config.swa_bn_update else 0
        state.mark_applied()
        context.log(f"SWA: averaged {state.num_snapshots} epoch-end weights; BN statistics from {batches} batches")
        context.save_checkpoint({"swa_applied": True})

    # --- heads ---------------------------------------------------------------------------------------
    def head_outputs(self, features) -> dict:
        """The class logits and the VA head's (valence, arousal), key ``va`` (B, 2) in [-1, 1]: trained together,
        evaluated (VA metrics) and served by the SavedModel (:attr:`served_outputs`)."""
        return {"logits": self.classifier(features), "va": self.va_head(features)}
