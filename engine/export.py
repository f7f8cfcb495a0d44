"""SavedModel export for serving.

The exported module contains only the inference path (backbone + classifier), not the training-time
state (per-sample λ, banks, neighbour tables), so it is the size of a plain backbone. Signatures:

* ``serving_default``: ``images`` uint8 (B, H, W, 3) RGB of any size → ``probabilities`` (B, C)
  float32 and ``label`` (B,) int64; resizing and normalisation happen inside.
* ``serve_bytes``: ``image_bytes`` string (B,) of encoded JPEG/PNG → the same outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from common.errors import WriteError, write_error
from common.io import atomic_directory
from data.pipeline import normalize
from models.backbones import input_norm_spec

# Files that mark an export written before output markers existed.
SAVED_MODEL_LEGACY = {"saved_model": ("saved_model.pb", "fer_export.json")}


class FERServingModule(tf.Module):
    def __init__(self, model, image_size: int, class_names):
        super().__init__()
        images = keras.Input((image_size, image_size, 3), name="image")
        features = model.backbone(images, training=False)
        logits = model.classifier(keras.ops.cast(features, "float32"))
        self.network = keras.Model(images, logits, name="fer_inference")
        # Track the underlying tf.Variables so the SavedModel's object graph (and the TF1 loader used by
        # `saved_model_cli run`) restores them, not only the functions that capture them.
        self.network_variables = [v.value for v in self.network.variables]
        self.image_size = image_size
        self.class_names = tf.constant(list(class_names))

    def _predict_uint8(self, images):
        x = normalize(tf.image.resize(tf.cast(images, tf.float32), [self.image_size, self.image_size]))
        logits = tf.cast(self.network(x, training=False), tf.float32)
        probs = tf.nn.softmax(logits, axis=-1)
        return {"probabilities": probs, "label": tf.argmax(probs, axis=-1)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        return self._predict_uint8(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
            image = tf.image.resize(tf.cast(image, tf.float32), [self.image_size, self.image_size])
            return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.uint8))
        return self._predict_uint8(images)


def export_saved_model(model, out_dir, image_size: int, class_names, method: str = "", input_norm: str = "none") -> Path:
    """Write the serving SavedModel atomically to ``out_dir`` (replacing an older export)."""
    out_dir = Path(out_dir)
    module = FERServingModule(model, image_size, class_names)
    try:
        with atomic_directory(out_dir, "saved_model", legacy=SAVED_MODEL_LEGACY) as tmp:
            tf.saved_model.save(module, str(tmp), signatures={
                "serving_default": module.serve.get_concrete_function(),
                "serve_bytes": module.serve_bytes.get_concrete_function(),
            })
            (tmp / "fer_export.json").write_text(json.dumps({
                "image_size": image_size, "class_names": list(class_names), "method": method,
                # Inside the graph: uint8 → resize → [-1, 1] → the backbone's own first layer maps that to what
                # its pretrained weights expect.
                "preprocessing": {"resize": [image_size, image_size], "network_input": "(x - 127.5) / 127.5",
                                  "backbone_input_norm": input_norm_spec(input_norm)},
                "input": "uint8 RGB images of any size (serving_default) or encoded JPEG/PNG bytes (serve_bytes)",
            }, indent=2))
    except (OSError, tf.errors.OpError, WriteError) as exc:  # disk full, read-only folder: an older export is untouched
        if not isinstance(exc, WriteError):
            exc = write_error(out_dir, exc)
        raise WriteError(f"{exc}; any previous export at {out_dir} is intact. Free space and rerun "
                         "`python export.py --run RUN --out DIR`") from None
    return out_dir
