"""The foundation: schema validation, the deterministic pipeline, train → evaluate → export parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import ROOT, tiny_run_config, train_run, write_tiny_dataset


# --- schema ----------------------------------------------------------------------------------------
def test_schema_parses_optional_columns(tiny_dataset):
    from data.schema import load_table

    table = load_table(tiny_dataset / "train.csv", 7)
    assert len(table) == 56
    assert table.va.shape == (56, 2) and table.va.dtype == np.float32
    assert table.landmarks.shape == (56, 68, 2)
    assert table.votes.shape == (56, 7) and np.all(table.votes.sum(1) == 10)
    assert np.array_equal(table.class_counts(), [8] * 7)


def test_registry_knows_every_dataset_and_rejects_unknown():
    from common.errors import ConfigError
    from data.registry import DATASETS, get_dataset_spec

    assert set(DATASETS) == {"synthetic", "affectnet", "affectnet8", "rafdb", "sfew", "ferplus", "ferplus7", "affwild2", "csv"}
    assert get_dataset_spec("affectnet8").num_classes == 8
    assert get_dataset_spec("csv", 8).class_names[-1] == "Contempt"
    with pytest.raises(ConfigError, match="unknown --dataset"):
        get_dataset_spec("imagenet")


# --- pipeline --------------------------------------------------------------------------------------
def _stream(tiny_dataset, start_step=0, epochs=2, batch=8, cache="memory"):
    from data.pipeline import ImageSource, PipelineConfig, make_train_dataset
    from data.schema import load_table

    table = load_table(tiny_dataset / "train.csv", 7)
    source = ImageSource(table, 24, cache)
    cfg = PipelineConfig(image_size=24, pad=2, random_erasing=0.5, seed=3)
    return make_train_dataset(source, cfg, batch, epochs, start_step=start_step, extras={"va": table.va},
                              landmarks=True)


def test_pipeline_batches_are_dicts_with_expected_shapes(tiny_dataset):
    batch = next(iter(_stream(tiny_dataset)))
    assert set(batch) == {"image", "label", "index", "va", "landmarks"}
    assert batch["image"].shape == (8, 24, 24, 3)
    assert float(batch["image"].numpy().min()) >= -1.0 and float(batch["image"].numpy().max()) <= 1.0
    assert batch["landmarks"].shape == (8, 68, 2)


def test_pipeline_epochs_are_permutations_and_restart_exactly(tiny_dataset):
    full = [b for b in _stream(tiny_dataset, epochs=2)]
    assert len(full) == 14  # 56 samples / 8 per batch, 2 epochs; batches never straddle epochs
    first_epoch = np.concatenate([b["index"].numpy() for b in full[:7]])
    second_epoch = np.concatenate([b["index"].numpy() for b in full[7:]])
    assert sorted(first_epoch) == list(range(56)) and sorted(second_epoch) == list(range(56))
    assert not np.array_equal(first_epoch, second_epoch)  # reshuffled each epoch
    resumed = [b for b in _stream(tiny_dataset, start_step=9, epochs=2)]
    assert len(resumed) == 5
    for a, b in zip(full[9:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_pipeline_file_mode_matches_memory_mode_order(tiny_dataset):
    memory = next(iter(_stream(tiny_dataset, cache="memory")))
    files = next(iter(_stream(tiny_dataset, cache="files")))
    np.testing.assert_array_equal(memory["index"].numpy(), files["index"].numpy())
    # Same pixels up to resize-kernel differences (the fixture is already 24 px, so none).
    np.testing.assert_allclose(memory["image"].numpy(), files["image"].numpy(), atol=1e-5)


def test_landmarks_follow_the_flip(tiny_dataset):
    """A flipped sample's landmarks are mirrored: x' = S - x (+ crop shift)."""
    from data.pipeline import _augment
    import tensorflow as tf

    image = tf.zeros((24, 24, 3), tf.uint8)
    points = tf.constant([[4.0, 10.0]])
    flips = set()
    for s in range(20):
        _, moved = _augment(image, tf.constant([0, s]), 24, 0, True, 0.0, points)
        flips.add(round(float(moved[0, 0]), 3))
    assert flips == {4.0, 20.0}


# --- train / evaluate / export ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ce"
    trained = train_run(tiny_run_config(tiny_dataset, out, epochs=2, export=True, tensorboard=True, test_every=1))
    return out, trained.report, trained.model


def test_run_directory_is_complete(trained_run):
    out, report, _ = trained_run
    for name in ("config.json", "log.csv", "metrics.json", "saved_model/saved_model.pb", "ckpt/latest"):
        assert (out / name).exists(), name
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["method"] == "ce" and config["data"]["num_train_samples"] == 56
    log = pd.read_csv(out / "log.csv")
    assert list(log["epoch"]) == [0, 1] and {"test_acc", "test_loss"} <= set(log.columns)
    assert not any(c.startswith("val_") for c in log.columns)  # the test split is named for what it is
    for key in ("accuracy", "mean_class_accuracy", "macro_f1", "confusion_matrix", "class_names"):
        assert key in report
    assert np.array(report["confusion_matrix"]).sum() == 28


def test_evaluate_reproduces_metrics_json(trained_run, tmp_path):
    import evaluate

    out, report, _ = trained_run
    target = tmp_path / "eval.json"
    assert evaluate.main(["--ckpt", str(out), "--json", str(target)]) == 0  # --ckpt: the alias of --run
    again = json.loads(target.read_text())
    assert again["accuracy"] == pytest.approx(report["accuracy"], abs=1e-9)
    assert again["confusion_matrix"] == report["confusion_matrix"]
    for key in ("accuracy", "mean_class_accuracy", "macro_f1", "confusion_matrix", "class_names"):
        assert key in again


def test_evaluate_on_the_savedmodel_matches(trained_run, tiny_dataset, tmp_path):
    import evaluate

    out, report, _ = trained_run
    target = tmp_path / "eval_sm.json"
    code = evaluate.main(["--run", str(out / "saved_model"), "--dataset", "csv", "--num-classes", "7",
                          "--data-dir", str(tiny_dataset), "--json", str(target)])
    assert code == 0
    assert json.loads(target.read_text())["accuracy"] == pytest.approx(report["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_a_fresh_process_serves_what_predict_computes_and_saved_model_cli_runs_it(trained_run, tiny_dataset,
                                                                                    tmp_path):
    """One new interpreter (TensorFlow only, none of the toolkit) serves the run's SavedModel: both signatures
    through ``tf.saved_model.load`` give model.predict's probabilities; then TensorFlow's own ``saved_model_cli
    run`` (its console entry point, ``tensorflow.python.tools.saved_model_cli:main``) runs the serving signature
    on uint8 images of another size. One process pays the TensorFlow import for both."""
    import tensorflow as tf

    from data.images import load_image_array
    from data.schema import load_table

    out, _, model = trained_run
    table = load_table(tiny_dataset / "test.csv", 7)
    images = load_image_array(table.image_root, table.paths[:10], 24)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 255, size=(2, 40, 30, 3), dtype=np.uint8))
    script = f"""
import sys
import numpy as np, tensorflow as tf
m = tf.saved_model.load({str(out / 'saved_model')!r})
x = np.load({str(tmp_path / 'images.npy')!r})
out = m.signatures["serving_default"](images=tf.constant(x))
np.save({str(tmp_path / 'probs.npy')!r}, out["probabilities"].numpy())
import cv2
data = [cv2.imencode(".png", im[:, :, ::-1])[1].tobytes() for im in x]
out2 = m.signatures["serve_bytes"](image_bytes=tf.constant(data))
np.save({str(tmp_path / 'probs_bytes.npy')!r}, out2["probabilities"].numpy())
print("--- saved_model_cli ---", flush=True)
from tensorflow.python.tools import saved_model_cli
sys.argv = ["saved_model_cli", "run", "--dir", {str(out / 'saved_model')!r}, "--tag_set", "serve",
            "--signature_def", "serving_default", "--inputs", "images=" + {str(tmp_path / 'x.npy')!r}]
saved_model_cli.main()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    served = np.load(tmp_path / "probs.npy")
    keras_probs = tf.nn.softmax(model.predict((images.astype(np.float32) - 127.5) / 127.5, verbose=0)).numpy()
    np.testing.assert_allclose(served, keras_probs, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "probs_bytes.npy"), keras_probs, atol=1e-5)
    assert served.shape == (10, 7)
    cli_output = done.stdout.split("--- saved_model_cli ---", 1)[1]
    assert "probabilities" in cli_output and "label" in cli_output


def test_train_cli_end_to_end(tiny_dataset, tmp_path, capsys):
    import train

    out = tmp_path / "cli"
    code = train.main(["--dataset", "csv", "--num-classes", "7", "--data-dir", str(tiny_dataset),
                       "--backbone", "tiny_cnn", "--image-size", "24", "--epochs", "1", "--batch-size", "8",
                       "--out", str(out), "--no-export", "--no-tensorboard", "--verbose", "0",
                       "--set", "label_smoothing=0.1"])
    assert code == 0
    assert json.loads((out / "config.json").read_text())["method_config"]["label_smoothing"] == 0.1
    assert "test:" in capsys.readouterr().out


def test_learns_the_tiny_task(tmp_path):
    """CE reaches well above chance on the separable tiny set: the whole loop actually trains."""
    data = write_tiny_dataset(tmp_path / "d", n_train=140, n_test=70, seed=1)
    report = train_run(tiny_run_config(data, tmp_path / "r", epochs=6, lr=3e-3)).report
    assert report["accuracy"] > 0.6  # chance is 1/7


def test_backbones_build_and_offline_imagenet_is_a_clear_error(monkeypatch):
    import keras

    from common.errors import ConfigError
    from models.backbones import FEATURE_DIMS, build_backbone, freeze_backbone, stage_models

    for name in ("resnet18", "small_cnn", "tiny_cnn", "mobilenetv2"):
        model = build_backbone(name, 32)
        assert model.output_shape == (None, FEATURE_DIMS[name])
    # The suite's tiny_cnn keeps small_cnn's stage names and strides: freezing and the stage maps work as on it.
    tiny = build_backbone("tiny_cnn", 32)
    stages, tail = stage_models(tiny)
    assert [tuple(t.shape[1:3]) for t in stages.outputs[1:]] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert freeze_backbone(tiny, "tiny_cnn", "stage1") == 3  # stem conv + BatchNormalization, stage 1's conv

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(ConfigError, match="offline"):
        build_backbone("resnet50_keras", 32, weights="imagenet")


def test_neighbor_table_ties_with_many_duplicates_follow_row_order():
    """Forty identical VA points: each one's neighbours are the lowest other row indices (no self)."""
    from data.neighbors import build_neighbor_table

    va = np.zeros((40, 2))
    va[30:] = 0.5  # a second, farther cluster
    idx, dist = build_neighbor_table(va, k=8)
    assert list(idx[0]) == list(range(1, 9))
    assert list(idx[5]) == [0, 1, 2, 3, 4, 6, 7, 8]
    assert list(idx[35]) == [30, 31, 32, 33, 34, 36, 37, 38]
    assert np.all(dist == 0)
    # Brute-force check on random points.
    rng = np.random.default_rng(0)
    pts = np.round(rng.uniform(-1, 1, (300, 2)), 1)  # coarse grid → many ties
    idx, _ = build_neighbor_table(pts, k=5)
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    brute = np.array([np.lexsort((np.arange(300), np.round(d[i], 9)))[:5] for i in range(300)])
    np.testing.assert_array_equal(idx, brute)
