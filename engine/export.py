"""SavedModel export for serving.

The exported module traces the model's own inference function, ``predict_outputs`` (the one evaluation
runs), and carries only the variables it reads (backbone and heads), not the training-time state (per-sample
λ, banks, neighbour tables, the optimizer), so it is about the size of a plain backbone. Signatures:

* ``serving_default``: ``images`` uint8 (B, H, W, 3) RGB of any size → ``probabilities`` (B, C)
  float32 and ``label`` (B,) int64, plus the method's ``served_outputs`` (DDAF: ``va`` (B, 2)); resizing
  and normalisation happen inside.
* ``serve_bytes``: ``image_bytes`` string (B,) of encoded JPEG/PNG → the same outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from common.errors import WriteError, write_error
from common.io import atomic_directory, read_json_object
from data.pipeline import normalize
from models.backbones import input_norm_spec

# Files that mark an export written before output markers existed.
SAVED_MODEL_LEGACY = {"saved_model": ("saved_model.pb", "fer_export.json")}


def inference_variables(model, image_size: int) -> list:
    """The variables :meth:`models.base.FERModel.predict_outputs` reads, found by tracing it once: what an
    export must carry (backbone, heads, BatchNorm statistics), without the training state (per-sample λ,
    banks, queues, SWA averages, the optimizer)."""
    spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
    read = {id(v) for v in tf.function(model.predict_outputs).get_concrete_function(spec).variables}
    return [v for v in model.variables if id(v.value) in read]


def serving_outputs(predict_outputs, image_size: int, served_names, images) -> dict:
    """uint8 images (B, H, W, 3) of any size → ``probabilities``, ``label`` and the served extra outputs: resize,
    the [-1, 1] scaling, then the model's own inference function ``predict_outputs`` (the one evaluation runs).
    The one serving computation of the SavedModel and of the formats converted beside it (:class:`FERServingModel`)."""
    x = normalize(tf.image.resize(tf.cast(images, tf.float32), [image_size, image_size]))
    outputs = predict_outputs(x)
    probs = tf.cast(outputs["probabilities"], tf.float32)
    result = {"probabilities": probs, "label": tf.argmax(probs, axis=-1)}
    result.update({name: tf.cast(outputs[name], tf.float32) for name in served_names})
    return result


class FERServingModel(keras.Model):
    """The serving computation as a Keras model: what the SavedModel holds and what
    ``keras.Model.export(format="onnx" | "litert")`` converts.

    Its ``call`` is :func:`serving_outputs` around the trained model's ``predict_outputs`` (uint8 of any size →
    resize → [-1, 1] → the method's inference → softmax, label, the extras of ``served_outputs``). It holds only
    the variables that function reads (:func:`inference_variables`); the trained model itself is referenced,
    not tracked, so its training state stays out of every export.
    """

    def __init__(self, model, image_size: int, **kwargs):
        super().__init__(name="fer_serving", **kwargs)
        self.image_size = int(image_size)
        self.served_names = tuple(model.served_outputs)
        self.inference_variables = inference_variables(model, self.image_size)
        self._predict_outputs = model.predict_outputs  # a bound method: Keras and TensorFlow do not track it

    def call(self, images):
        return serving_outputs(self._predict_outputs, self.image_size, self.served_names, images)


class FERServingModule(tf.Module):
    def __init__(self, model, image_size: int, class_names):
        super().__init__()
        serving_model = FERServingModel(model, image_size)
        serving_model(tf.zeros([1, image_size, image_size, 3], tf.uint8))  # built, as Keras' exporters need
        # Referenced, not tracked: a Keras model inside the SavedModel would make tf.saved_model.save trace its
        # call once more for a Keras default signature nothing serves. The variables are tracked below.
        object.__setattr__(self, "serving_model", serving_model)
        # Extra outputs a method serves beside the classes (DDAF: valence/arousal, key "va").
        self.extra_names = list(self.serving_model.served_names)
        # Track the underlying tf.Variables so the SavedModel's object graph (and the TF1 loader used by
        # `saved_model_cli run`) restores them, not only the functions that capture them.
        self.network_variables = [v.value for v in self.serving_model.inference_variables]
        self.image_size = image_size
        self.class_names = tf.constant(list(class_names))

    def _predict_uint8(self, images):
        return self.serving_model(images)

    def keras_model(self) -> FERServingModel:
        """The same computation as a built Keras model (what the deployment formats are exported from)."""
        return self.serving_model

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


def export_saved_model(model, out_dir, image_size: int, class_names, method: str = "", input_norm: str = "none",
                       provenance: dict | None = None, formats=(), check_images=None, log=print) -> Path:
    """Write the serving SavedModel (and ``formats`` beside it, plus MODEL_CARD.md) atomically to ``out_dir``.

    ``provenance`` (:func:`engine.model_card.provenance`) says what the model was trained on, for the
    metadata and the model card; ``formats`` ⊆ {tflite, tflite-int8, onnx} are converted from the new
    SavedModel and checked against it on ``check_images`` (uint8, e.g. the test split) before the export
    is moved into place, so a failed conversion leaves any previous export untouched.
    """
    from engine.deploy import export_formats
    from engine.model_card import model_card

    out_dir = Path(out_dir)
    module = FERServingModule(model, image_size, class_names)
    meta = {"image_size": image_size, "class_names": list(class_names), "method": method,
            # Inside the graph: uint8 → resize → [-1, 1] → the backbone's own first layer maps that to what
            # its pretrained weights expect.
            "preprocessing": {"resize": [image_size, image_size], "network_input": "(x - 127.5) / 127.5",
                              "backbone_input_norm": input_norm_spec(input_norm)},
            "input": "uint8 RGB images of any size (serving_default) or encoded JPEG/PNG bytes (serve_bytes)"}
    if provenance:
        meta.update(provenance=provenance, trained_on=provenance.get("dataset"),
                    synthetic=bool(provenance.get("synthetic")))
    try:
        with atomic_directory(out_dir, "saved_model", legacy=SAVED_MODEL_LEGACY) as tmp:
            # The functions themselves, not concrete functions traced out here: the save traces them in its own
            # context anyway, so tracing them before would build every serving graph twice.
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve,
                                                              "serve_bytes": module.serve_bytes})
            (tmp / "fer_export.json").write_text(json.dumps(meta, indent=2, default=str))
            if formats:
                meta["formats"] = export_formats(tmp, formats, check_images, log=log, serving_model=module.keras_model(),
                                                 saved_model_serve=load_export(tmp)[0])
                (tmp / "fer_export.json").write_text(json.dumps(meta, indent=2, default=str))
            (tmp / "MODEL_CARD.md").write_text(model_card(meta))
    except (OSError, tf.errors.OpError, WriteError) as exc:  # disk full, read-only folder: an older export is untouched
        if not isinstance(exc, WriteError):
            exc = write_error(out_dir, exc)
        raise WriteError(f"{exc}; any previous export at {out_dir} is intact. Free space and rerun "
                         "`python export.py --run RUN --out DIR`") from None
    return out_dir


def read_export_metadata(path) -> dict:
    """``fer_export.json`` of a SavedModel directory, every field checked (a damaged file is a clear error)."""
    from common.errors import CheckpointError

    meta_path = Path(path) / "fer_export.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing (not an export of this toolkit; export one with `python export.py`)")
    meta = read_json_object(meta_path, CheckpointError)
    names = meta.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise CheckpointError(f"{meta_path}: class_names must be a non-empty list of class names, got {names!r}")
    size = meta.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 4096:
        raise CheckpointError(f"{meta_path}: image_size must be an integer in 8..4096, got {size!r}")
    return meta


def load_export(path):
    """``(serving_default function, metadata)`` of an exported SavedModel; damage is a clear error."""
    from common.errors import CheckpointError

    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise CheckpointError(f"{path}: no saved_model.pb (not a SavedModel directory)")
    meta = read_export_metadata(path)
    try:
        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    except Exception as exc:  # noqa: BLE001 - a truncated .pb raises protobuf's DecodeError, a bad variables file OpError...
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"{path}: cannot load the SavedModel ({type(exc).__name__}: {first}); "
                              "export it again with `python export.py --run RUN --out DIR --force`") from None
    spec = getattr(serve, "structured_outputs", {}).get("probabilities")
    classes = spec.shape[-1] if spec is not None and spec.shape.rank else None
    if classes is not None and classes != len(meta["class_names"]):
        raise CheckpointError(f"{path / 'fer_export.json'}: class_names lists {len(meta['class_names'])} classes but "
                              f"the SavedModel outputs {classes}; export it again with "
                              "`python export.py --run RUN --out DIR --force`")
    return serve, meta
