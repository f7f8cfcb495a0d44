"""Deployment: TFLite (float32, int8) and ONNX beside the SavedModel, checked against it; the model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers_cli import train_args


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    import export
    import train

    base = tmp_path_factory.mktemp("deploy")
    run = base / "run"
    from common.cli import run_main

    assert run_main(train.main, train_args(tiny_dataset, run, "--epochs", "2", "--val-every", "0",
                                               # int8's agreement goal is for a network of small_cnn's size
                                               "--backbone", "small_cnn")) == 0
    out = base / "export"
    assert run_main(export.main, ["--run", str(run), "--out", str(out), "--formats", "tflite", "tflite-int8", "onnx"]) == 0
    return run, out


def test_every_format_agrees_with_the_savedmodel(exported, tiny_dataset):
    import tensorflow as tf

    from data.images import load_image_array
    from data.schema import load_table
    from engine.deploy import predictor

    _, out = exported
    meta = json.loads((out / "fer_export.json").read_text())
    assert set(meta["formats"]) == {"tflite", "tflite-int8", "onnx"}
    for fmt, goal in (("tflite", 0.99), ("tflite-int8", 0.98), ("onnx", 0.99)):
        check = meta["formats"][fmt]
        assert check["images"] == 28 and check["top1_agreement"] >= goal, (fmt, check)
        assert check["max_abs_probability_difference"] < (0.1 if fmt == "tflite-int8" else 1e-4), (fmt, check)
    assert meta["formats"]["tflite-int8"]["bytes"] < 0.5 * meta["formats"]["tflite"]["bytes"]
    # Recomputed here, on images of other sizes (the resize is inside every format).
    table = load_table(tiny_dataset / "test.csv", 7)
    images = load_image_array(table.image_root, table.paths, 40, table.csv_path)[:6]
    reference = tf.saved_model.load(str(out)).signatures["serving_default"](images=tf.constant(images))["probabilities"]
    for fmt, name in (("tflite", "model.tflite"), ("onnx", "model.onnx")):
        np.testing.assert_allclose(predictor(out / name, fmt)(images), reference.numpy(), atol=1e-4)


def test_the_model_card_has_every_field(exported):
    _, out = exported
    card = (out / "MODEL_CARD.md").read_text()
    metrics = json.loads((exported[0] / "metrics.json").read_text())
    for needle in ("## Classes (output order)", "| 0 | Neutral |", "| 6 | Anger |", "uint8 RGB", "(x − 127.5) / 127.5",
                   "## Training data", "Terms:", "## Test metrics", "expected calibration error",
                   f"{100 * metrics['accuracy']:.2f} %", f"{100 * metrics['ece']:.2f} %", "## Intended use and limits",
                   "model_int8.tflite", "top-1 agreement"):
        assert needle in card, needle
    assert "Demonstration model" not in card  # trained on a prepared (csv) dataset


def test_a_synthetic_trained_model_card_says_it_is_a_demo(tmp_path):
    from engine.model_card import model_card

    meta = {"image_size": 64, "class_names": ["Neutral", "Happy"], "method": "ce",
            "provenance": {"dataset": "synthetic", "synthetic": True, "metrics": {"accuracy": 0.9, "ece": 0.02}}}
    card = model_card(meta)
    assert "Demonstration model" in card and "does not transfer to photographs of real faces" in card


def test_the_export_after_training_carries_its_provenance(tiny_dataset, tmp_path):
    import train
    from common.cli import run_main

    run = tmp_path / "run"
    argv = [a for a in train_args(tiny_dataset, run, "--val-every", "0") if a != "--no-export"]
    assert run_main(train.main, argv) == 0
    meta = json.loads((run / "saved_model" / "fer_export.json").read_text())
    assert meta["trained_on"] == "csv" and meta["synthetic"] is False
    assert meta["provenance"]["metrics"]["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]
    assert (run / "saved_model" / "MODEL_CARD.md").is_file()
