"""SCN: Self-Cure Network (CVPR 2020; official kaiwang960112/Self-Cure-Network).

K. Wang, X. Peng, J. Yang, S. Lu, Y. Qiao, "Suppressing Uncertainties for Large-Scale Facial Expression
Recognition", CVPR 2020 (arXiv:2002.10392). Official PyTorch code: ``kaiwang960112/Self-Cure-Network``,
``src/train.py`` (``Res18Feature.forward``: the importance branch and the weighted logits; ``run_training``:
the losses and the relabelling; ``parse_args``: the defaults). Re-implemented from a description of that
code (the repository has no licence; nothing is copied). Equation numbers are not cited (the paper's full
text was not checked here); the maths and its paper-vs-code table are in :mod:`losses.scn`.

Per image, with the pooled backbone feature h:

* an **importance branch** α = σ(w_aᵀh + b_a) ∈ (0, 1) (``Dense(1)`` + sigmoid on h, ``self.importance``)
  and the classifier z = W h + b (``self.classifier``); the network's logits are **s = α·z** (α scales the
  bias too), :meth:`SCNModel.head_outputs`, so training, evaluation, the SavedModel and Grad-CAM all see s,
  as the official ``forward`` returns it;
* **logit-weighted CE** on the sample's *current* label ỹ (relabelled or given), L_WCE = mean CE(α·z, ỹ);
* **rank regularisation** L_RR = max(0, δ₁ − (ᾱ_H − ᾱ_L)), H the ⌊β·B⌋ largest α of the batch;
* **relabelling** from the 1-based epoch ``relabel_epoch`` on: ỹ ← argmax p where max p − p[ỹ] > δ₂,
  p = softmax(α·z) of the same forward pass (before the optimizer step, as the official code). The labels
  live in a per-sample int32 state ``current_labels`` (initialised to the given labels, checkpointed) that
  every training step reads by ``batch["index"]``.

Per-sample score: ``uncertainty`` = 1 − α of each training sample's latest visit (a per-sample state
written in ``after_step``; 0.5 = σ(0) before the first visit), so low importance = likely noisy.

Deviations / choices (paper vs official code ``9f4c3ad`` vs ours)
---------------------------------------------------------------------------------------------
(paper column: the abstract, README and pipeline figure; (rec.) = a recollection of the paper, not checked)

=====================  ===================  ============================  ====================================
item                   paper / README       official code                 ours (default) — option
=====================  ===================  ============================  ====================================
relabel candidates     low-importance       every sample of the batch     ``relabel_scope=batch`` —
                       group only                                         ``low_importance``
relabel probabilities  "probabilities"      softmax(α·z)                  ``relabel_scaled=true`` — ``false``
                                                                          (softmax(z))
relabel timing         new label used from  written after the step from   written after the step from the
                       the next round       pre-step logits; seen at the  pre-step outputs; seen at the row's
                                            next epoch (loader copies)    next visit (= next epoch with the
                                                                          default sampler)
relabel start          –                    1-based epoch ≥ 10            ``relabel_epoch=10`` (1-based), from
                                                                          ``current_epoch()`` (exact on resume)
loss combination       γ·L_RR + (1−γ)·L_WCE L_WCE + L_RR                  ``wce_weight=1``, ``rr_weight=1``
                       (rec., γ unchecked)
δ₁ (RR margin)         0.15 at batch 1024   default 0.15; README: 0.07    ``margin_1=0.15`` — 0.07
                                            at batch 64
inference              argmax               α·z                           α·z (probabilities softmax(α·z))
weight decay           –                    Adam(weight_decay=1e-4):      ``l2_weight_decay``: 0 (as CE);
                                            coupled L2                    1e-4 in ``official``
optimisation           SGD, step decay      Adam 1e-3 (PyTorch default),  dataset defaults — ``--preset
                       (rec.)               ExponentialLR 0.9/epoch,      official`` (Adam 1e-3, exponential
                                            batch 64, 70 epochs           0.9, 64, 70)
backbone init          MS-Celeb-1M R18      ImageNet R18 (the MS-Celeb    ``--weights`` (the preset asks for a
                                            loader matches no key)        file; see its ``weights``)
augmentation           –                    p 0.5 one of {flip, Gaussian  toolkit pipeline (pad-crop, flip
                                            noise}; RandomErasing 0.5     0.5, ``--random-erasing``), no noise
RR groups              batch                batch (one GPU)               per replica under ``--strategy``
model selection        –                    checkpoint at test acc > 0.87 last weights, no selection
=====================  ===================  ============================  ====================================
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from common.errors import ConfigError, DataError
from losses.scn import (BETA, MARGIN_1, MARGIN_2, RELABEL_EPOCH, low_importance_mask, rank_regularization,
                        relabel, relabel_active, relabel_probabilities, weighted_cross_entropy, weighted_logits)
from models.base import FERModel, MethodInputs, Preset

RELABEL_SCOPES = ("batch", "low_importance")


def torch_linear_kernel():
    """PyTorch's default Linear kernel initialisation, U(±1/√fan_in) (kaiming_uniform with a = √5).

    A fresh instance per layer: an instance made at import time draws its seed from Python's ``random`` before
    ``keras.utils.set_random_seed`` runs, so every process initialised the layer differently and no two runs
    were equal (found by benchmarks/chaos.py)."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


@dataclasses.dataclass(frozen=True)
class SCNConfig:
    """SCN hyperparameters (official ``parse_args`` defaults unless marked)."""

    beta: float = BETA  # high-importance group ratio β: M = ⌊β·B⌋ (paper and official 0.7)
    # δ₁, the rank-regularisation margin. Official default 0.15 (the paper's value, used at batch 1024); the
    # README recommends 0.07 at batch 64 "for similar results". Default: the code's 0.15.
    margin_1: float = MARGIN_1
    margin_2: float = MARGIN_2  # δ₂, the relabel margin: max p − p[ỹ] > δ₂ (paper and official 0.2)
    relabel: bool = True  # the self-cure relabelling module (paper and official: on)
    # First epoch of relabelling, 1-based as the official loop (10: epochs 1–9 train on the given labels).
    relabel_epoch: int = RELABEL_EPOCH
    # Which samples may be relabelled: "batch" (official code: every sample of the batch) or
    # "low_importance" (paper/README: only the (1 − β) lowest-α group). Default: the code's.
    relabel_scope: str = "batch"
    # Relabel on softmax(α·z) (official: the α-scaled logits the loss used) or, false, on softmax(z).
    relabel_scaled: bool = True
    # Loss weights: official L_WCE + L_RR (1 and 1); the paper's convex γ·L_RR + (1 − γ)·L_WCE is
    # rr_weight=γ, wce_weight=1−γ (γ not checked against the paper).
    wce_weight: float = 1.0
    rr_weight: float = 1.0
    # Coupled L2 (PyTorch Adam(weight_decay)); official 1e-4 (see the ``official`` preset). DEVIATION: 0 by
    # default so that SCN and the CE baseline share the same optimisation in comparisons.
    l2_weight_decay: float = 0.0

    def __post_init__(self):
        if self.relabel_scope not in RELABEL_SCOPES:
            raise ConfigError(f"scn relabel_scope must be one of {', '.join(RELABEL_SCOPES)}, got '{self.relabel_scope}'")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"scn beta must lie in [0, 1], got {self.beta}")
        if self.margin_1 < 0 or self.margin_2 < 0:
            raise ConfigError(f"scn margin_1 and margin_2 must be >= 0, got {self.margin_1}, {self.margin_2}")
        if self.relabel_epoch < 1:
            raise ConfigError(f"scn relabel_epoch is 1-based and must be >= 1, got {self.relabel_epoch}")
        if self.wce_weight < 0 or self.rr_weight < 0 or self.l2_weight_decay < 0:
            raise ConfigError("scn wce_weight, rr_weight and l2_weight_decay must be >= 0")


class SCNModel(FERModel):
    method_name = "scn"
    loss_names = ("wce", "rr")
    presets = {
        # The official optimisation (src/train.py): Adam with PyTorch's default lr 1e-3 + coupled L2 1e-4,
        # ExponentialLR 0.9 per epoch, batch 64, 70 epochs, ResNet-18 at 224 px (RAF's 100-px crops upsampled,
        # no crop augmentation), RandomErasing p 0.5.
        "official": Preset(
            method={"l2_weight_decay": 1e-4},
            run={"optimizer": "adam", "lr": 1e-3, "lr_schedule": "exponential", "lr_decay": 0.9, "epochs": 70,
                 "batch_size": 64, "backbone": "resnet18", "image_size": 224, "pad": 0, "random_erasing": 0.5},
            weights="a face-pretrained ResNet-18 (.pth in torchvision layout): the paper's MS-Celeb-1M "
                    "ijba_res18_naive.pth.tar (keys with the 'module.' prefix stripped), or the "
                    "resnet18_msceleb.pth that RUL, EAC, LA-Net and NLA start from; the official script "
                    "actually trains from ImageNet weights (its MS-Celeb loader matches no key)",
        ),
        # The paper's relabel rule: only the low-importance group may be relabelled.
        "paper": Preset(method={"relabel_scope": "low_importance"}),
    }

    def __init__(self, backbone, num_classes, num_train_samples, config: SCNConfig, steps_per_epoch=1,
                 total_epochs=1, train_labels=None, **kwargs):
        super().__init__(backbone, num_classes, num_train_samples, config, steps_per_epoch, total_epochs, **kwargs)
        n = self.num_train_samples
        # === Layers: the base classifier gives z; the importance branch, PyTorch's default Linear kernel
        # initialisation (the official nn.Linear(512, 1)), gives α. Float32 always. ===
        self.importance = layers.Dense(1, dtype="float32", kernel_initializer=torch_linear_kernel(), name="importance")
        self.importance_tracker = keras.metrics.Mean(name="alpha")  # mean α of the batches
        self.relabel_tracker = keras.metrics.Sum(name="relabeled")  # labels changed per epoch
        # === Per-sample state (checkpointed) ===
        # ỹ: the current training label of every sample (given labels, then relabelled).
        self.current_labels = self.add_state("current_labels", (n,), dtype="int32")
        if train_labels is not None:
            labels = np.asarray(train_labels, np.int32).reshape(-1)
            if len(labels) != n:
                raise DataError(f"scn: {len(labels)} train labels for {n} training samples")
            self.current_labels.assign(labels)
        # 1 − α of each sample's latest training visit (σ(0) = 0.5 before its first visit).
        self.last_uncertainty = self.add_state("last_uncertainty", (n,), keras.initializers.Constant(0.5))

    # --- data ----------------------------------------------------------------------------------------
    @classmethod
    def prepare_data(cls, cfg, train_table, context) -> MethodInputs:
        return MethodInputs(model_kwargs={"train_labels": np.asarray(train_table.labels, np.int32)})

    @classmethod
    def empty_method_data(cls, cfg, num_train_samples: int) -> MethodInputs:
        """Zero labels of the right shape (the checkpoint restores the relabelled table)."""
        return MethodInputs(model_kwargs={"train_labels": np.zeros(num_train_samples, np.int32)})

    # --- per-sample state ----------------------------------------------------------------------------
    def per_sample_state(self) -> dict:
        return {"uncertainty": tf.convert_to_tensor(self.last_uncertainty)}

    def relabel_on(self):
        """Whether this step relabels (scalar bool tensor): from the 1-based ``relabel_epoch`` on."""
        if not self.config.relabel:
            return tf.constant(False)
        return relabel_active(self.current_epoch(), self.config.relabel_epoch)

    # --- heads -------------------------------------------------------------------------------------
    def importance_and_logits(self, features):
        """Pooled ``features`` (B, D) → importance α (B, 1) in (0, 1) and the unweighted logits z (B, C)."""
        features = tf.cast(features, tf.float32)
        return tf.sigmoid(self.importance(features)), self.classifier(features)

    def head_outputs(self, features) -> dict:
        """The logits s = α·z (the official test-time output: probabilities softmax(α·z), argmax α·z = argmax z)
        and each image's α, key ``importance``."""
        alpha, logits = self.importance_and_logits(features)
        return {"logits": weighted_logits(alpha, logits), "importance": alpha[:, 0]}

    # --- losses --------------------------------------------------------------------------------------
    def loss_weight(self, name: str) -> float:
        return {"wce": self.config.wce_weight, "rr": self.config.rr_weight}.get(name, 1.0)

    def compute_losses(self, batch, watched, training=True):
        cfg: SCNConfig = self.config
        index = batch["index"]
        features = tf.cast(self.backbone(batch["image"], training=training), tf.float32)
        alpha, logits = self.importance_and_logits(features)  # (B, 1), (B, C)
        labels = tf.gather(self.current_labels, index)  # ỹ: current labels, not the batch's given ones
        losses = {
            "wce": weighted_cross_entropy(alpha, logits, labels),
            "rr": rank_regularization(alpha, cfg.beta, cfg.margin_1),
        }
        if cfg.l2_weight_decay:
            losses["l2"] = self.l2_penalty(cfg.l2_weight_decay)
        # The relabel decision uses this step's (pre-update) outputs and epoch, as the official loop does;
        # after_step only writes it (the optimizer step has moved iterations on by then).
        eligible = low_importance_mask(alpha, cfg.beta) if cfg.relabel_scope == "low_importance" else None
        new_labels, changed = relabel(relabel_probabilities(alpha, logits, scaled=cfg.relabel_scaled), labels,
                                      cfg.margin_2, eligible)
        changed = tf.logical_and(changed, self.relabel_on())
        outputs = {"logits": weighted_logits(alpha, logits), "alpha": alpha[:, 0], "unweighted_logits": logits,
                   "current_labels": labels, "new_labels": tf.where(changed, new_labels, labels),
                   "changed": changed}
        return losses, outputs

    def after_step(self, batch, outputs, watched, watched_grads) -> None:
        index = batch["index"]
        alpha = tf.stop_gradient(outputs["alpha"])
        self.scatter_rows(self.last_uncertainty, index, 1.0 - alpha)
        if self.config.relabel:
            self.scatter_rows(self.current_labels, index, outputs["new_labels"])
        self.importance_tracker.update_state(alpha)
        self.relabel_tracker.update_state(tf.reduce_sum(tf.cast(outputs["changed"], tf.float32)))

    @property
    def metrics(self):
        return [*super().metrics, self.importance_tracker, self.relabel_tracker]

    # --- checkpoints written before the heads were split ------------------------------------------------
    def load_weights(self, filepath, *args, **kwargs):
        """Keras ``load_weights``, also for a checkpoint written while z and α were one layer (``classifier``
        holding ``fc`` and ``importance``; before issue 32): the same variables, in the same order, under
        other group names, read through a copy with today's names."""
        import shutil
        import tempfile
        from pathlib import Path

        import h5py

        filepath = str(filepath)
        with h5py.File(filepath, "r") as weights:
            legacy = "classifier/fc/vars" in weights and "importance" not in weights
        if not legacy:
            return super().load_weights(filepath, *args, **kwargs)
        with tempfile.TemporaryDirectory() as folder:
            renamed = str(Path(folder) / Path(filepath).name)
            shutil.copyfile(filepath, renamed)
            with h5py.File(renamed, "r+") as weights:
                weights.move("classifier/importance", "importance")
                if "classifier/vars" in weights:  # the wrapper's own (empty) group
                    del weights["classifier/vars"]
                weights.move("classifier/fc/vars", "classifier/vars")
                del weights["classifier/fc"]
            return super().load_weights(renamed, *args, **kwargs)

    # --- final metrics -------------------------------------------------------------------------------
    def final_metrics(self, context) -> dict:
        """How many training labels the self-cure module changed (and, with clean labels, how well)."""
        table = context.train_table
        if table is None or len(table) != self.num_train_samples:
            return {}
        current = self.current_labels.numpy()
        given = np.asarray(table.labels)
        changed = current != given
        out = {"scn_relabeled": int(changed.sum()), "scn_relabeled_fraction": float(changed.mean())}
        if table.clean_labels is not None:
            clean = np.asarray(table.clean_labels)
            out["scn_label_accuracy_given"] = float((given == clean).mean())
            out["scn_label_accuracy_current"] = float((current == clean).mean())
            if changed.any():
                out["scn_relabel_precision"] = float((current[changed] == clean[changed]).mean())
        return out
