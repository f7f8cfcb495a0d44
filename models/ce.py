"""Cross-entropy baseline: the plain classifier every paper compares against."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from models.base import FERModel


@dataclasses.dataclass(frozen=True)
class CEConfig:
    """Cross-entropy baseline."""

    label_smoothing: float = 0.0  # 0 = plain CE (the baselines of all four papers)
    l2_weight_decay: float = 0.0  # coupled L2 (PyTorch Adam(weight_decay)); 0 = off

    def __post_init__(self):
        from common.errors import ConfigError

        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ConfigError(f"ce: label_smoothing must lie in [0, 1], got {self.label_smoothing}")
        if self.l2_weight_decay < 0:
            raise ConfigError(f"ce: l2_weight_decay must be >= 0, got {self.l2_weight_decay}")


class CEModel(FERModel):
    method_name = "ce"
    loss_names = ("ce",)

    def compute_losses(self, batch, watched, training=True):
        _, logits = self.embed(batch["image"], training=training)
        cfg: CEConfig = self.config
        onehot = tf.one_hot(batch["label"], self.num_classes)
        ce = tf.reduce_mean(keras.losses.categorical_crossentropy(
            onehot, logits, from_logits=True, label_smoothing=cfg.label_smoothing))
        losses = {"ce": ce}
        if cfg.l2_weight_decay:
            losses["l2"] = self.l2_penalty(cfg.l2_weight_decay)
        return losses, {"logits": logits}
