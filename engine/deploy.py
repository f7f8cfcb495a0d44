"""Deployment formats beside the SavedModel: TFLite (float32, dynamic-range int8) and ONNX, each checked.

Every format is converted from the exported SavedModel's ``serving_default`` signature, so it carries
the same preprocessing (uint8 RGB of any size in → resize → [-1, 1] → the backbone's input layer →
probabilities): a phone or an ONNX runtime feeds raw pixels exactly as a TensorFlow server does.

* ``tflite``: ``tf.lite.TFLiteConverter.from_saved_model`` (float32).
* ``tflite-int8``: the same with ``tf.lite.Optimize.DEFAULT``, i.e. dynamic-range quantisation (int8
  weights, float activations): about 4× smaller, no calibration data needed.
* ``onnx``: ``tf2onnx`` (1.17, which converts TensorFlow 2.21 SavedModels; opset 17), run with
  ``onnxruntime``.

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


def convert(saved_model_dir, fmt: str) -> bytes:
    """The serialised model of format ``fmt`` converted from a SavedModel directory."""
    saved_model_dir = str(saved_model_dir)
    if fmt in ("tflite", "tflite-int8"):
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
        if fmt == "tflite-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
    if fmt == "onnx":
        import importlib.util
        import os
        import subprocess
        import sys
        import tempfile

        if importlib.util.find_spec("tf2onnx") is None:
            raise ConfigError("ONNX export needs the tf2onnx package (`pip install -r requirements.txt`)")
        # tf2onnx's converter is run in its own interpreter: it re-imports TensorFlow in graph mode.
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "model.onnx"
            done = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved_model_dir,
                                   "--signature_def", "serving_default", "--opset", "17", "--output", str(target)],
                                  capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            if done.returncode != 0 or not target.is_file():
                last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
                raise ConfigError(f"tf2onnx could not convert {saved_model_dir}: {last[0][:300]}")
            return target.read_bytes()
    raise ConfigError(f"unknown export format '{fmt}'; known: savedmodel, {', '.join(FORMATS)}")


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


def export_formats(saved_model_dir, formats, images: np.ndarray | None, log=print) -> dict:
    """Write each format beside the SavedModel's files and check it on ``images``; returns the checks."""
    from common.io import atomic_write_bytes
    from engine.export import load_export

    saved_model_dir = Path(saved_model_dir)
    serve, _ = load_export(saved_model_dir)
    reference = None
    if images is not None and len(images):
        import tensorflow as tf

        reference = batched(lambda x: serve(images=tf.constant(x))["probabilities"].numpy(), images)
    checks = {}
    for fmt in formats:
        target = saved_model_dir / FORMATS[fmt]
        data = convert(saved_model_dir, fmt)
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
