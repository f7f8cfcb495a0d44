"""Deployment formats beside the SavedModel: TFLite (float32, dynamic-range int8) and ONNX, each checked.

Every format is exported with Keras 3's own ``keras.Model.export`` from
:class:`engine.export.FERServingModel`, the serving computation the SavedModel's ``serving_default`` runs
(:func:`engine.export.serving_outputs`), so it carries the same preprocessing (uint8 RGB of any size in →
resize → [-1, 1] → the backbone's input layer → probabilities): a phone or an ONNX runtime feeds raw
pixels exactly as a TensorFlow server does.

* ``tflite``: ``export(format="litert")`` (float32), builtin LiteRT ops only.
* ``tflite-int8``: the same with ``optimizations=[tf.lite.Optimize.DEFAULT]``, i.e. dynamic-range
  quantisation (int8 weights, float activations): about 4× smaller, no calibration data needed.
* ``onnx``: ``export(format="onnx")`` (Keras converts with ``tf2onnx``, which must be installed; opset 17),
  run with ``onnxruntime``.

Measured against the conversions this replaced (``TFLiteConverter.from_saved_model`` and the ``tf2onnx``
command line on the SavedModel), side by side on the same model and test split:
``python -m benchmarks.keras_export --run RUN`` (BENCHMARKS.md, "Keras export").

:func:`agreement` compares a format's probabilities with the SavedModel's on the same uint8 images (the
run's test split): top-1 agreement and the largest absolute probability difference, recorded in the
export metadata and the model card. Goals: ≥ 99 % agreement for the float formats, ≥ 98 % for int8.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from common.cli import native_stderr_captured
from common.errors import ConfigError, WriteError, write_error

FORMATS = {"tflite": "model.tflite", "tflite-int8": "model_int8.tflite", "onnx": "model.onnx"}
GOALS = {"tflite": 0.99, "tflite-int8": 0.98, "onnx": 0.99}


# The input of every exported format: uint8 RGB images, any batch and size (resized inside).
def serving_signature():
    import tensorflow as tf

    return [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]


def convert(serving_model, fmt: str) -> bytes:
    """The serialised model of format ``fmt``, exported by ``keras.Model.export`` from ``serving_model``
    (an :class:`engine.export.FERServingModel`)."""
    import tempfile

    import tensorflow as tf

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; known: savedmodel, {', '.join(FORMATS)}")
    if fmt == "onnx":
        import importlib.util

        if importlib.util.find_spec("tf2onnx") is None:  # Keras' ONNX export converts with tf2onnx
            raise ConfigError("ONNX export needs the tf2onnx package (`pip install -r requirements.txt`)")
        options = {"format": "onnx", "opset_version": 17}
    else:
        # Keras' LiteRT export also allows TensorFlow ops (SELECT_TF_OPS), which would need the Flex delegate
        # that the standalone LiteRT runtime lacks: builtin ops only, so a model needing more fails here, as
        # TFLiteConverter's default did, instead of exporting a file a phone cannot run.
        options = {"format": "litert", "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
        if fmt == "tflite-int8":
            options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / FORMATS[fmt]
        try:
            with warnings.catch_warnings(), native_stderr_captured():
                # Keras' tf2onnx shim probes np.object (a NumPy FutureWarning); the converters' native logs.
                warnings.simplefilter("ignore", FutureWarning)
                serving_model.export(str(target), input_signature=serving_signature(), verbose=False, **options)
        except Exception as exc:  # noqa: BLE001 - any converter failure: name the format and the first line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ConfigError(f"{fmt} export failed ({type(exc).__name__}: {first})") from None
        if not target.is_file():
            raise ConfigError(f"{fmt} export wrote no file")
        return target.read_bytes()


def predictor(path, fmt: str):
    """``images uint8 (B, H, W, 3) → probabilities (B, C)`` of an exported file."""
    path = str(path)
    if fmt in ("tflite", "tflite-int8"):
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation notice
            runner = tf.lite.Interpreter(model_path=path).get_signature_runner("serving_default")
        first_call = [True]

        def predict(images):
            images = np.asarray(images, np.uint8)
            if first_call[0]:  # the native runtime prints an INFO line when it applies its CPU delegate
                first_call[0] = False
                with native_stderr_captured():
                    return runner(images=images)["probabilities"]
            return runner(images=images)["probabilities"]

        return predict
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("checking the ONNX export needs onnxruntime (`pip install -r requirements.txt`)") from None
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        index = names.index("probabilities")
        return lambda images: session.run(None, {"images": np.asarray(images, np.uint8)})[index]
    raise ConfigError(f"unknown export format '{fmt}'")


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Top-1 agreement and the largest absolute probability difference of two (N, C) arrays."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    return {"top1_agreement": float(np.mean(reference.argmax(1) == candidate.argmax(1))),
            "max_abs_probability_difference": float(np.max(np.abs(reference - candidate))),
            "images": int(len(reference))}


def batched(predict, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def export_formats(saved_model_dir, formats, images: np.ndarray | None, log=print, *, serving_model,
                   saved_model_serve) -> dict:
    """Write each format beside the SavedModel's files (exported from ``serving_model``, the SavedModel's
    computation as a Keras model) and check it on ``images`` against the SavedModel (``saved_model_serve``:
    its loaded ``serving_default``, as :func:`engine.export.load_export` returns it); returns the checks."""
    from common.io import atomic_write_bytes

    saved_model_dir = Path(saved_model_dir)
    reference = None
    if images is not None and len(images):
        import tensorflow as tf

        reference = batched(lambda x: saved_model_serve(images=tf.constant(x))["probabilities"].numpy(), images)
    checks = {}
    for fmt in formats:
        target = saved_model_dir / FORMATS[fmt]
        data = convert(serving_model, fmt)
        try:
            atomic_write_bytes(target, data)
        except WriteError:
            raise
        except OSError as exc:
            raise write_error(target, exc) from None
        check = {"file": target.name, "bytes": len(data)}
        if reference is not None:
            check.update(agreement(reference, batched(predictor(target, fmt), images)))
            check["goal_top1_agreement"] = GOALS[fmt]
            check["meets_goal"] = check["top1_agreement"] >= GOALS[fmt]
            log(f"{fmt}: {target.name} ({len(data) / 1e6:.1f} MB), top-1 agreement with the SavedModel "
                f"{100 * check['top1_agreement']:.2f}% on {check['images']} test images, max |Δp| "
                f"{check['max_abs_probability_difference']:.2e}")
        checks[fmt] = check
    return checks
