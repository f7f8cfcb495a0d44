"""RUL: Relative Uncertainty Learning (NeurIPS 2021; official zyh-uaiaaaa/Relative-Uncertainty-Learning).

Y. Zhang, C. Wang, W. Deng, "Relative Uncertainty Learning for Facial Expression Recognition", NeurIPS
2021. Official PyTorch code: ``zyh-uaiaaaa/Relative-Uncertainty-Learning``: ``src/rul.py``
(``res18feature``: the μ / logvar heads and the mixing, phase 'train'), ``src/utils.py`` (``mixup_data``,
``mixup_criterion``) and ``src/main.py`` (``train``: optimiser groups, schedule). Re-implemented from a
description of that code (the repository has no licence; nothing is copied). Equation numbers are not
cited; the maths and its paper-vs-code table are in :mod:`losses.rul`.

Two heads on the last conv map F (before global pooling, from :func:`models.backbones.stage_models`), with
separate weights, each BN (no affine) → Dropout 0.4 → Flatten → Dense(64) → BN, give per image a feature
μ_i and a log-variance logvar_i (64-d). The uncertainty u_i = mean_d exp(logvar_id) sets the weights of a
feature-level mixup with a random partner π(i) of the batch, w_i = u_i/(u_i + u_π(i)) (the more uncertain
image gets the larger share), x̃_i = w_i·μ_i + (1 − w_i)·μ_π(i), and the **add-up loss**
½·CE(fc(x̃_i), y_i) + ½·CE(fc(x̃_i), y_π(i)) asks the classifier to find both labels in the mix.

Inference is fc(μ) (BN in inference mode, no dropout). This model's ``backbone`` is the functional network
image → μ (the given backbone's layers up to the last stage map, then the μ head): its pooled feature is μ,
so ``embed`` (feature figures, the label audit) and Grad-CAM see μ and fc(μ) as for any method;
``feature_map`` (image → F) and the two heads are its parts. :meth:`RULModel.predict_outputs` (evaluation
and the SavedModel) adds each image's uncertainty from the log-variance head of the same pass.

Randomness is stateless and resume-exact: the permutation π and both dropout masks are drawn from seeds
that are a pure function of (run seed, optimizer step, the batch's row indices) — see :func:`models.base.step_seed` —
never from an RNG state, so a resumed run draws what the uninterrupted run drew.

Per-sample score: ``uncertainty`` = u of each training sample's latest visit (training-mode forward; a
per-sample state written in ``after_step``, 1 = u at logvar 0 before the first visit). It is *relative*
(only ratios within a batch are trained): compare it by rank (ROC-AUC), not by value. It marks *ambiguous*
images, not confidently mislabelled ones: the add-up loss asks the mixed feature for both labels, so a
feature that clearly shows a third class (a flipped label shows its true class) earns a smaller share and
its u falls, while a weak feature's u rises (``tests/test_losses_rul.py`` checks both gradient signs). Its
noise-detection AUC can therefore sit at or below 50 % while RUL still beats CE.

Deviations / choices (paper vs official code ``63b73f2`` vs ours)
---------------------------------------------------------------------------------------------
=====================  ======================  ===========================  ===================================
item                   paper / author          official code                ours (default) — option
=====================  ======================  ===========================  ===================================
relabelling (noisy     SCN's relabel module    absent                       ``relabel=false`` — ``true``: SCN's
runs)                  added, "vital" (issue                                rule on softmax(fc(μ_i)) (unmixed),
                       #4); settings unpub-                                 whole batch, δ₂ ``relabel_margin``
                       lished                                               0.2, from 1-based ``relabel_epoch``
                                                                            10 (our choice; SCN's values)
mixing partner         different-label pairs   one random permutation       one stateless random permutation
                       (issue #6)              (same labels, self-pairs)    per replica (self-pairs allowed)
fc learning rate       2e-4 "except the last   fc 2e-3, the rest 2e-4       ``fc_lr_multiplier=10`` as the
                       FC layer"               (two Adam groups)            optimizer's per-variable rate, exact
                                                                            in every optimizer —
                                                                            ``fc_lr_mode=reparameterised``: a
                                                                            reparametrised fc (W = 10·V), exact
                                                                            for Adam up to ε (ε/10), the square
                                                                            under SGD, no effect under LAMB (runs
                                                                            before the option; old records)
dropout                0.4                     nn.Dropout (torch RNG)       0.4, stateless masks (exact resume)
feature flatten        –                       (C, H, W) order              (H, W, C) (matters only to port
                                                                            trained head weights)
head init              –                       PyTorch Linear default       same kernel distribution
                                                                            U(±1/√fan_in); zero bias
epochs                 70                      60                           dataset default — ``official``: 60
weight decay           1e-4                    Adam(weight_decay=1e-4):     ``l2_weight_decay``: 0 (as CE);
                                               coupled L2, both groups      1e-4 in ``official`` (on W, not V)
optimisation           Adam 2e-4, batch 64     Adam 2e-4, ExponentialLR     dataset defaults — ``--preset
                                               0.9/epoch, batch 64          official``
backbone               MS-Celeb R18            resnet18_msceleb.pth         ``--weights`` (the preset asks)
augmentation           –                       p 0.5 one of {flip, noise},  toolkit pipeline (pad-crop, flip,
                                               RandomErasing p 0.5          ``--random-erasing``), no noise
train accuracy         –                       argmax(fc(x̃)) vs y (mixed)   fc(μ) (unmixed) vs the given label
model selection        last epoch, 3 runs      best test epoch tracked      last weights, no selection
=====================  ======================  ===========================  ===================================
"""

from __future__ import annotations

import dataclasses
import typing

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from common.errors import ConfigError, DataError
from losses.rul import ADD_UP_WEIGHT, DROPOUT, FEATURE_DIM, add_up_loss, uncertainty_from_logvar, uncertainty_mix
from losses.scn import MARGIN_2, RELABEL_EPOCH, relabel, relabel_active
from models.backbones import stage_models
from models.base import FERModel, MethodInputs, Preset


def torch_linear_kernel():
    """PyTorch's default Linear kernel initialisation, U(±1/√fan_in) (kaiming_uniform with a = √5).

    A fresh instance per layer: an instance made at import time draws its seed from Python's ``random`` before
    ``keras.utils.set_random_seed`` runs, so every process initialised the layer differently and no two runs
    were equal (found by benchmarks/chaos.py)."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


# Salts that keep this step's draws apart (each use gets its own stateless stream).
_SALT_PERMUTATION, _SALT_MU_DROPOUT, _SALT_LOGVAR_DROPOUT = 1, 2, 3


def stateless_dropout(x, rate: float, seed):
    """Inverted dropout (PyTorch ``nn.Dropout``: zero with probability ``rate``, scale the rest by 1/(1 − rate))
    with a stateless mask drawn from ``seed``."""
    if rate <= 0:
        return x
    keep = tf.random.stateless_uniform(tf.shape(x), seed) >= rate
    return x * tf.cast(keep, x.dtype) / tf.cast(1.0 - rate, x.dtype)


FC_LR_MODES = ("optimizer", "reparameterised")


@dataclasses.dataclass(frozen=True)
class RULConfig:
    """RUL hyperparameters (official defaults unless marked)."""

    feature_dim: int = FEATURE_DIM  # D of μ and logvar (paper and official 64)
    dropout: float = DROPOUT  # dropout in both heads (paper and official 0.4)
    bn_epsilon: float = 2e-5  # the heads' BatchNorm ε (official 2e-5)
    add_up_weight: float = ADD_UP_WEIGHT  # share of y_i in the add-up loss (official ½; the rest on y_π(i))
    # The fc's learning rate relative to the rest (paper and official: fc 2e-3, backbone and heads 2e-4 → 10).
    # 1 = one learning rate for everything.
    fc_lr_multiplier: float = 10.0
    # How the fc gets it: "optimizer" = the optimizer's per-variable rate (exact for Adam, SGD, LAMB; the
    # official two Adam groups) | "reparameterised" = W = m·V (FCLearningRateScale: Adam only; what runs of
    # this toolkit used before the option existed, so a config.json without the field reads as it).
    fc_lr_mode: str = "optimizer"

    # A config.json written before a field existed implies these values (read by common.config.check_values).
    DEFAULTS_OF_OLDER_RECORDS: typing.ClassVar[dict] = {"fc_lr_mode": "reparameterised"}
    # SCN's relabel module, which the authors add for their synthetic-noise runs (issue #4; not in the code;
    # settings unpublished). Off by default, as the code. When on: SCN's rule on the unmixed softmax(fc(μ_i)).
    relabel: bool = False
    relabel_epoch: int = RELABEL_EPOCH  # 1-based first relabelling epoch (SCN's 10; our choice)
    relabel_margin: float = MARGIN_2  # δ₂ (SCN's 0.2; our choice)
    # Coupled L2 (PyTorch Adam(weight_decay)); official 1e-4 (see the ``official`` preset). DEVIATION: 0 by
    # default so that RUL and the CE baseline share the same optimisation in comparisons.
    l2_weight_decay: float = 0.0

    def __post_init__(self):
        if self.feature_dim < 1:
            raise ConfigError(f"rul feature_dim must be >= 1, got {self.feature_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"rul dropout must lie in [0, 1), got {self.dropout}")
        if not 0.0 <= self.add_up_weight <= 1.0:
            raise ConfigError(f"rul add_up_weight must lie in [0, 1], got {self.add_up_weight}")
        if self.fc_lr_multiplier <= 0 or self.bn_epsilon <= 0:
            raise ConfigError("rul fc_lr_multiplier and bn_epsilon must be > 0")
        if self.fc_lr_mode not in FC_LR_MODES:
            raise ConfigError(f"rul fc_lr_mode must be one of {', '.join(FC_LR_MODES)}, got '{self.fc_lr_mode}'")
        if self.relabel_epoch < 1 or self.relabel_margin < 0 or self.l2_weight_decay < 0:
            raise ConfigError("rul relabel_epoch must be >= 1 (1-based), relabel_margin and l2_weight_decay >= 0")


class UncertaintyHead(layers.Layer):
    """One of RUL's heads on the last conv map: BN (no affine) → Dropout → Flatten → Dense(D) → BN.

    ``(B, H, W, K)`` → ``(B, D)``. The dropout mask comes from ``dropout_seed`` (stateless), only when
    training with a seed; a symbolic call (the inference network) has no dropout.
    """

    def __init__(self, feature_dim: int, dropout: float, epsilon: float, **kwargs):
        super().__init__(**kwargs)
        self.dropout = float(dropout)
        # PyTorch BN momentum 0.1 is Keras momentum 0.9.
        self.map_norm = layers.BatchNormalization(center=False, scale=False, epsilon=epsilon, momentum=0.9,
                                                  name="map_norm")
        self.flatten = layers.Flatten(name="flatten")
        self.dense = layers.Dense(feature_dim, kernel_initializer=torch_linear_kernel(), name="dense")
        self.feature_norm = layers.BatchNormalization(epsilon=epsilon, momentum=0.9, name="feature_norm")

    def call(self, feature_map, training=False, dropout_seed=None):
        x = self.map_norm(feature_map, training=training)
        if training and dropout_seed is not None:
            x = stateless_dropout(x, self.dropout, dropout_seed)
        return self.feature_norm(self.dense(self.flatten(x)), training=training)


class _ScaledInitializer(keras.initializers.Initializer):
    """``factor`` × another initializer's values."""

    def __init__(self, base, factor: float):
        self.base = keras.initializers.get(base)
        self.factor = float(factor)

    def __call__(self, shape, dtype=None):
        return self.base(shape, dtype=dtype) * self.factor

    def get_config(self):
        return {"base": keras.initializers.serialize(self.base), "factor": self.factor}


class FCLearningRateScale(layers.Layer):
    """``m·inner(x)`` with ``inner``'s initial weights divided by m: the same function and initial values,
    but the effective weights W = m·V move m× as far per Adam step (Adam's step is invariant to the
    gradient's scale, and ∂L/∂V = m·∂L/∂W), i.e. a per-layer learning-rate multiplier without a second
    optimizer. Adam's ε acts as ε/m on this layer; plain SGD would see m² instead of m."""

    def __init__(self, inner: layers.Dense, multiplier: float, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.inner = inner
        self.multiplier = float(multiplier)
        # Initialise V = W₀/m (through the initialiser: Keras may create the variables lazily, after build).
        inner.kernel_initializer = _ScaledInitializer(inner.kernel_initializer, 1.0 / self.multiplier)
        inner.bias_initializer = _ScaledInitializer(inner.bias_initializer, 1.0 / self.multiplier)

    def build(self, input_shape):
        self.inner.build(input_shape)

    def call(self, x):
        return self.multiplier * self.inner(tf.cast(x, tf.float32))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.inner.units)

    @property
    def effective_kernel(self):
        return self.multiplier * self.inner.kernel


class RULModel(FERModel):
    method_name = "rul"
    loss_names = ("add_up",)
    presets = {
        # The official optimisation (src/main.py): Adam, backbone + heads 2e-4 and fc 2e-3 (fc_lr_multiplier
        # 10, the default), coupled L2 1e-4 on both groups, ExponentialLR 0.9 per epoch, batch 64, 60 epochs
        # (the paper: 70), MS-Celeb ResNet-18 at 224 px (RAF's 100-px crops upsampled, no crop augmentation),
        # RandomErasing p 0.5.
        "official": Preset(
            method={"l2_weight_decay": 1e-4, "fc_lr_multiplier": 10.0},
            run={"optimizer": "adam", "lr": 2e-4, "lr_schedule": "exponential", "lr_decay": 0.9, "epochs": 60,
                 "batch_size": 64, "backbone": "resnet18", "image_size": 224, "pad": 0, "random_erasing": 0.5},
            weights="MS-Celeb-1M ResNet-18 (.pth in torchvision layout: the resnet18_msceleb.pth that SCN, RUL, EAC, LA-Net and NLA start from)",
        ),
        # The authors' synthetic-noise runs: SCN's relabel module added (settings unpublished: SCN's here).
        "noisy": Preset(method={"relabel": True}),
    }

    def __init__(self, backbone, num_classes, num_train_samples, config: RULConfig, steps_per_epoch=1,
                 total_epochs=1, train_labels=None, seed=0, **kwargs):
        cfg = config
        # === Functional views (built before the base class, whose ``backbone`` is the inference network) ===
        stages, _ = stage_models(backbone)
        feature_map = stages.outputs[-1]  # F (B, H, W, K): the last stage, before global pooling
        feature_map_model = keras.Model(stages.input, feature_map, name="rul_feature_map")
        mu_head = UncertaintyHead(cfg.feature_dim, cfg.dropout, cfg.bn_epsilon, name="mu_head")
        logvar_head = UncertaintyHead(cfg.feature_dim, cfg.dropout, cfg.bn_epsilon, name="logvar_head")
        inference_network = keras.Model(stages.input, mu_head(feature_map), name=f"rul_mu_{backbone.name}")
        logvar_head(feature_map)  # builds the logvar head (Keras locks a model's state once it is built)
        super().__init__(inference_network, num_classes, num_train_samples, config, steps_per_epoch, total_epochs,
                         **kwargs)
        n = self.num_train_samples
        # === Layers ===
        self.feature_map = feature_map_model
        self.mu_head = mu_head
        self.logvar_head = logvar_head
        if cfg.fc_lr_mode == "reparameterised":
            self.classifier = FCLearningRateScale(self.classifier, cfg.fc_lr_multiplier, name="fc_lr_scale")
        self.uncertainty_tracker = keras.metrics.Mean(name="u")  # mean u of the batches
        self.relabel_tracker = keras.metrics.Sum(name="relabeled")
        # === State (checkpointed) ===
        self.add_draw_seed(seed)  # the run seed of the stateless draws
        self.current_labels = self.add_state("current_labels", (n,), dtype="int32")  # = given unless relabel
        if train_labels is not None:
            labels = np.asarray(train_labels, np.int32).reshape(-1)
            if len(labels) != n:
                raise DataError(f"rul: {len(labels)} train labels for {n} training samples")
            self.current_labels.assign(labels)
        self.last_uncertainty = self.add_state("last_uncertainty", (n,), "ones")  # u of each row's latest visit

    # --- data ----------------------------------------------------------------------------------------
    @classmethod
    def prepare_data(cls, cfg, train_table, context) -> MethodInputs:
        return MethodInputs(model_kwargs={"train_labels": np.asarray(train_table.labels, np.int32),
                                        "seed": int(context.seed)})

    @classmethod
    def empty_method_data(cls, cfg, num_train_samples: int) -> MethodInputs:
        """Zeros of the right shapes (the checkpoint restores labels and seed)."""
        return MethodInputs(model_kwargs={"train_labels": np.zeros(num_train_samples, np.int32), "seed": 0})

    def per_sample_state(self) -> dict:
        return {"uncertainty": tf.convert_to_tensor(self.last_uncertainty)}

    # --- forward -------------------------------------------------------------------------------------
    def heads(self, images, index=None, training=False):
        """μ and logvar ``(B, D)`` float32 from one backbone pass; dropout (stateless) when training with rows."""
        feature_map = self.feature_map(images, training=training)
        seeded = training and index is not None
        mu = self.mu_head(feature_map, training=training,
                          dropout_seed=self.seed_for(index, _SALT_MU_DROPOUT) if seeded else None)
        logvar = self.logvar_head(feature_map, training=training,
                                  dropout_seed=self.seed_for(index, _SALT_LOGVAR_DROPOUT) if seeded else None)
        return tf.cast(mu, tf.float32), tf.cast(logvar, tf.float32)

    def permutation(self, index):
        """π: a stateless random permutation of the batch (self-pairs allowed, as the official randperm)."""
        keys = tf.random.stateless_uniform(tf.shape(index), self.seed_for(index, _SALT_PERMUTATION))
        return tf.argsort(keys, stable=True)

    def classifier_inputs(self, images):
        """μ, what fc reads (inference mode)."""
        return self.heads(images, training=False)[0]

    def set_linear_head(self, kernel, bias) -> None:
        """fc = W; reparameterised, fc's effective weights are W = m·V (:class:`FCLearningRateScale`): store V = W/m."""
        if not isinstance(self.classifier, FCLearningRateScale):
            return super().set_linear_head(kernel, bias)
        m = self.classifier.multiplier
        self.classifier.inner.set_weights([np.asarray(kernel, np.float32) / m, np.asarray(bias, np.float32) / m])

    def pretrained_variables(self) -> list:
        """The backbone's variables without the μ head (new layers; ``self.backbone`` is image → μ)."""
        new = {id(v) for v in self.mu_head.trainable_variables}
        return [v for v in self.backbone.trainable_variables if id(v) not in new]

    def lr_multipliers(self) -> list:
        """fc at ``fc_lr_multiplier`` × the learning rate (``fc_lr_mode=optimizer``)."""
        cfg: RULConfig = self.config
        if cfg.fc_lr_mode != "optimizer" or cfg.fc_lr_multiplier == 1.0:
            return []
        return [(self.classifier.trainable_variables, cfg.fc_lr_multiplier)]

    def predict_outputs(self, images) -> dict:
        """fc(μ) logits and probabilities (:meth:`head_outputs` of μ, as the base class) plus each image's
        uncertainty u, key ``uncertainty``, from the log-variance head on the same conv map (which μ alone
        does not give; one backbone pass for both)."""
        mu, logvar = self.heads(images, training=False)
        outputs = dict(self.head_outputs(mu))
        logits = outputs["logits"] = tf.cast(outputs["logits"], tf.float32)
        outputs.update(probabilities=tf.nn.softmax(logits, axis=-1), uncertainty=uncertainty_from_logvar(logvar))
        return outputs

    # --- losses --------------------------------------------------------------------------------------
    def compute_losses(self, batch, watched, training=True):
        cfg: RULConfig = self.config
        index = batch["index"]
        labels = tf.gather(self.current_labels, index)
        mu, logvar = self.heads(batch["image"], index, training=training)
        perm = self.permutation(index)
        mixed, weights = uncertainty_mix(mu, logvar, perm)
        losses = {"add_up": add_up_loss(self.classifier(mixed), labels, perm, cfg.add_up_weight)}
        if cfg.l2_weight_decay:
            losses["l2"] = self.coupled_l2(cfg.l2_weight_decay)
        logits = tf.cast(self.classifier(mu), tf.float32)  # unmixed fc(μ_i): train accuracy and relabelling
        outputs = {"logits": logits, "uncertainty": uncertainty_from_logvar(logvar), "mix_weights": weights,
                   "permutation": perm, "current_labels": labels}
        if cfg.relabel:
            # SCN's rule on each image's own probabilities (the mixed logits belong to a pair), decided on the
            # pre-step outputs and this step's epoch; after_step writes it.
            new_labels, changed = relabel(tf.nn.softmax(logits), labels, cfg.relabel_margin)
            changed = tf.logical_and(changed, relabel_active(self.current_epoch(), cfg.relabel_epoch))
            outputs.update(new_labels=tf.where(changed, new_labels, labels), changed=changed)
        return losses, outputs

    def coupled_l2(self, weight_decay: float):
        """½·wd·Σ‖kernel‖² with the fc's *effective* kernel W = m·V where reparameterised (the base penalty sees V)."""
        if not isinstance(self.classifier, FCLearningRateScale):
            return self.l2_penalty(weight_decay)
        stored = self.classifier.inner.kernel
        extra = (self.classifier.multiplier ** 2 - 1.0) * tf.reduce_sum(tf.square(tf.cast(stored, tf.float32)))
        return self.l2_penalty(weight_decay) + 0.5 * weight_decay * extra

    def after_step(self, batch, outputs, watched, watched_grads) -> None:
        index = batch["index"]
        uncertainty = tf.stop_gradient(outputs["uncertainty"])
        self.scatter_rows(self.last_uncertainty, index, uncertainty)
        self.uncertainty_tracker.update_state(uncertainty)
        if "new_labels" in outputs:
            self.scatter_rows(self.current_labels, index, outputs["new_labels"])
            self.relabel_tracker.update_state(tf.reduce_sum(tf.cast(outputs["changed"], tf.float32)))

    @property
    def metrics(self):
        extra = [self.relabel_tracker] if self.config.relabel else []
        return [*super().metrics, self.uncertainty_tracker, *extra]

    def final_metrics(self, context) -> dict:
        table = context.train_table
        if not self.config.relabel or table is None or len(table) != self.num_train_samples:
            return {}
        current, given = self.current_labels.numpy(), np.asarray(table.labels)
        changed = current != given
        out = {"rul_relabeled": int(changed.sum()), "rul_relabeled_fraction": float(changed.mean())}
        if table.clean_labels is not None:
            out["rul_label_accuracy_current"] = float((current == np.asarray(table.clean_labels)).mean())
        return out
