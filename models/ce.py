"""Cross-entropy baseline: the plain classifier every paper compares against."""

from __future__ import annotations

import keras
import tensorflow as tf

from models.base import CEConfig, FERModel


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
