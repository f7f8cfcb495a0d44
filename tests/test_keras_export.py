"""Deployment formats through Keras 3's ``Model.export``: equal to the conversions they replaced, extra heads
served, builtin LiteRT ops only."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from helpers import build_method
from helpers_cli import train_args


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory):
    import train
    from common.cli import run_main

    run = tmp_path_factory.mktemp("keras_export") / "run"
    assert run_main(train.main, train_args(tiny_dataset, run, "--epochs", 1, "--val-every", 0)) == 0
    return run


@pytest.mark.slow
def test_keras_export_equals_the_conversion_from_the_savedmodel(tiny_run):
    """benchmarks.keras_export side by side: the same probabilities, so the same agreement with the SavedModel
    (the ONNX comparison, whose old path starts a second interpreter, is in BENCHMARKS.md)."""
    from benchmarks.keras_export import compare, markdown

    results = compare(tiny_run, ["tflite", "tflite-int8"], log=lambda *a: None)
    assert results["test_images"] == 28
    for fmt, row in results["formats"].items():
        for path in ("before", "keras"):
            assert row[path]["flex_ops"] is False
        assert row["keras"]["top1_agreement"] == row["before"]["top1_agreement"], (fmt, row)
        assert row["keras"]["max_abs_probability_difference"] == pytest.approx(
            row["before"]["max_abs_probability_difference"], abs=1e-6), (fmt, row)
        assert row["keras_vs_before"]["max_abs_probability_difference"] < 1e-6, (fmt, row)
    assert results["formats"]["tflite"]["keras"]["top1_agreement"] == 1.0
    assert results["formats"]["tflite"]["keras"]["max_abs_probability_difference"] < 1e-5
    assert "| tflite-int8 | Keras Model.export |" in markdown(results, "python -m benchmarks.keras_export --run RUN")


@pytest.mark.slow
def test_every_output_of_the_savedmodel_is_exported(tiny_dataset, tmp_path):
    """DDAF serves valence/arousal beside the classes: the ONNX and LiteRT exports carry ``va`` too."""
    import onnxruntime
    import tensorflow as tf

    from data.images import load_image_array
    from engine.export import export_saved_model

    run, model, _ = build_method(tiny_dataset, tmp_path / "run", method="ddaf")
    table = run.test_table
    images = load_image_array(table.image_root, table.paths, 24, table.csv_path)
    out = export_saved_model(model, tmp_path / "export", 24, run.spec.class_names, "ddaf",
                             formats=("tflite", "onnx"), check_images=images, log=lambda *a: None)
    meta = json.loads((out / "fer_export.json").read_text())
    assert all(meta["formats"][fmt]["top1_agreement"] == 1.0 for fmt in ("tflite", "onnx")), meta["formats"]
    batch = images[:5]
    reference = tf.saved_model.load(str(out)).signatures["serving_default"](images=tf.constant(batch))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": batch})))
    assert set(onnx_out) == {"probabilities", "label", "va"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation notice
        runner = tf.lite.Interpreter(model_path=str(out / "model.tflite")).get_signature_runner("serving_default")
    lite_out = runner(images=batch)
    for name in ("probabilities", "va"):
        np.testing.assert_allclose(onnx_out[name], reference[name].numpy(), atol=1e-5)
        np.testing.assert_allclose(lite_out[name], reference[name].numpy(), atol=1e-5)
    np.testing.assert_array_equal(onnx_out["label"], reference["label"].numpy())


def test_litert_export_refuses_tensorflow_ops_a_phone_cannot_run():
    """Keras' LiteRT export would fall back to TensorFlow (Flex) ops, which the standalone LiteRT runtime
    lacks; ours keeps to builtin ops and names the failure instead."""
    import keras
    import tensorflow as tf

    from benchmarks.keras_export import needs_flex_ops
    from common.errors import ConfigError
    from engine.deploy import convert
    from engine.export import FERServingModel
    from models.ce import CEConfig, CEModel

    class Erf(keras.layers.Layer):  # no builtin LiteRT kernel; TensorFlow's Flex delegate has one
        def call(self, x):
            return tf.math.erf(x)

    inputs = keras.Input((8, 8, 3))
    model = CEModel(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(Erf()(inputs))), 3, 1, CEConfig())
    model(tf.zeros([1, 8, 8, 3]))
    serving = FERServingModel(model, 8)
    serving(tf.zeros([1, 8, 8, 3], tf.uint8))
    with pytest.raises(ConfigError, match="tflite export failed"):
        convert(serving, "tflite")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:  # what Keras' default would have written
        serving.export(str(Path(folder) / "m.tflite"), format="litert", verbose=False)
        assert needs_flex_ops((Path(folder) / "m.tflite").read_bytes())
    assert len(convert(serving, "onnx")) > 0  # ONNX has Erf
