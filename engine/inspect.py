"""What a trained model looks at: Grad-CAM (Selvaraju et al., ICCV 2017) on any method's backbone."""

from __future__ import annotations

import numpy as np

from common.errors import ConfigError


def gradcam_layer(backbone, name: str | None = None, min_side: int = 4):
    """The backbone layer Grad-CAM differentiates: ``name``, or the last non-pooling layer with a spatial
    (4-D) output of at least ``min_side``² (the last conv stage at the usual input sizes, e.g. ResNet-50's
    7×7 at 224 px; on a small input whose last stage has shrunk below that, the stage before it, so the
    map still localises something). Nested Keras applications count as one layer (their last stage)."""
    def spatial(layer):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # layers with several outputs
            return None
        return shape if len(shape) == 4 and type(layer).__name__ != "InputLayer" else None

    if name:
        try:
            return backbone.get_layer(name)
        except ValueError:
            raise ConfigError(f"--layer {name}: no such layer in {backbone.name}; 4-D layers: "
                              + ", ".join(l.name for l in backbone.layers if spatial(l) is not None)) from None
    candidates = [l for l in backbone.layers if spatial(l) is not None and "pool" not in type(l).__name__.lower()]
    if not candidates:
        raise ConfigError(f"{backbone.name} has no convolutional (4-D) layer for Grad-CAM")
    large = [l for l in candidates if min(spatial(l)[1] or 0, spatial(l)[2] or 0) >= min_side]
    return (large or candidates)[-1]


def gradcam_maps(model, inputs: np.ndarray, layer, class_index=None):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(Σ_k mean_xy(∂y_c/∂A_k)·A_k), each map scaled to [0, 1].

    ``class_index`` (n,) picks the class per image (default: the predicted one). Returns (maps (n, h, w),
    probabilities (n, C)).
    """
    import keras
    import tensorflow as tf

    backbone = model.backbone
    grad_model = keras.Model(backbone.inputs, [layer.output, backbone.output])
    with tf.GradientTape() as tape:
        activations, pooled = grad_model(tf.constant(inputs), training=False)
        # The method's own heads (SCN's α·z, not z alone): the class score evaluation and the export predict.
        logits = tf.cast(model.head_outputs(tf.cast(pooled, tf.float32))["logits"], tf.float32)
        chosen = tf.argmax(logits, axis=-1, output_type=tf.int32) if class_index is None else \
            tf.constant(np.asarray(class_index, np.int32))
        score = tf.gather(logits, chosen, batch_dims=1)
    grads = tape.gradient(score, activations)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2))
    cam = tf.nn.relu(tf.einsum("bhwk,bk->bhw", tf.cast(activations, tf.float32), weights)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = cam / np.where(peak > 0, peak, 1.0)[:, None, None]
    return cam, tf.nn.softmax(logits).numpy()
