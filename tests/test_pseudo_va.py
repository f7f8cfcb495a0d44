"""Pseudo-VA regressor: the loss, train/predict CLI contract, cross-fitting, and the LDLVA end-to-end path."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from helpers import tiny_run_config, train_run, write_tiny_dataset
from preprocess import pseudo_va

FAST = ["--backbone", "tiny_cnn", "--image-size", "24", "--pad", "2", "--batch-size", "8", "--verbose", "0"]


def run(argv, capsys):
    capsys.readouterr()
    code = pseudo_va.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("pva_ds"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A 2-fold cross-fitted regressor (2 epochs per member) on the tiny set, where VA correlates with the class."""
    out = tmp_path_factory.mktemp("pva_model") / "model"
    code = pseudo_va.main(["train", "--source", str(dataset), "--out", str(out), "--epochs", "2", "--folds", "2", *FAST])
    assert code == 0
    return out


def test_loss_matches_metric_and_hand_cases():
    import tensorflow as tf

    def numpy_ccc(x, y):  # written out independently of losses.common.concordance_correlation
        x, y = x.astype(np.float64), y.astype(np.float64)
        return 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)

    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, (32, 2)).astype(np.float32)
    pred = (0.5 * target + rng.normal(0, 0.2, (32, 2))).astype(np.float32)
    for j in range(2):
        assert float(pseudo_va.batch_ccc(pred[:, j], target[:, j])) == pytest.approx(numpy_ccc(pred[:, j], target[:, j]), abs=1e-5)
    # Perfect prediction: MSE 0 and CCC 1 on both axes → loss 0.
    assert float(pseudo_va.va_regression_loss(target, target)) == pytest.approx(0.0, abs=1e-5)
    # A constant prediction has CCC 0: loss = MSE + 2·w.
    const = np.zeros_like(target)
    mse = float(np.mean(target ** 2))
    assert float(pseudo_va.va_regression_loss(target, const, 0.5)) == pytest.approx(mse + 1.0, rel=1e-5)
    # Finite gradient even for a one-sample batch (zero variance).
    x = tf.Variable(pred[:1])
    with tf.GradientTape() as tape:
        loss = pseudo_va.va_regression_loss(target[:1], x)
    assert np.isfinite(tape.gradient(loss, x).numpy()).all()


def test_train_writes_model_and_report(trained, dataset, capsys):
    report = json.loads((trained / "report.json").read_text())
    for part, rows in (("holdout", 28), ("out_of_fold", 56)):
        for key in ("valence_rmse", "arousal_rmse", "valence_ccc", "arousal_ccc"):
            assert math.isfinite(report[part][key]), (part, key, report[part])
        assert report[part]["rows"] == rows and 0 <= report[part]["valence_rmse"] < 2
    assert len(report["holdout_per_member"]) == 2 and len(report["history"]) == 2
    config = json.loads((trained / "config.json").read_text())
    assert config["backbone"] == "tiny_cnn" and config["image_size"] == 24 and config["folds"] == 2
    assert all((trained / name).is_file() for name in config["members"])
    folds = pd.read_csv(trained / "train_images.csv")["fold"].to_numpy()
    assert sorted(np.bincount(folds).tolist()) == [28, 28]
    # An existing model directory is not replaced without --force.
    before = (trained / "report.json").read_bytes()
    code, _, err = run(["train", "--source", dataset, "--out", trained, "--epochs", "1", *FAST], capsys)
    assert code == 2 and "--force" in err
    assert (trained / "report.json").read_bytes() == before


def test_predict_writes_va_in_range_and_uses_flip_average(trained, dataset, tmp_path, capsys):
    import tensorflow as tf

    from data.images import load_image_array

    out_csv = tmp_path / "test_pva.csv"
    code, summary, err = run(["predict", "--model", trained, "--table", dataset / "test.csv", "--out", out_csv], capsys)
    assert code == 0, err
    assert "preprocess.knn" in summary and "warning" in summary
    assert "trained on" not in summary  # test images: no member saw them
    original, written = pd.read_csv(dataset / "test.csv"), pd.read_csv(out_csv)
    assert len(written) == len(original) and written["path"].tolist() == original["path"].tolist()
    assert written["expression"].tolist() == original["expression"].tolist()
    assert written["landmarks"].tolist() == original["landmarks"].tolist()  # other columns kept
    va = written[["valence", "arousal"]].to_numpy()
    assert np.isfinite(va).all() and (np.abs(va) <= 1).all()
    assert va.std(axis=0).min() > 0  # not one constant output
    # Unseen images: the mean over both members of the mean over the image and its mirror image.
    cfg, members, _ = pseudo_va.load_regressors(trained)
    table, _ = pseudo_va.load_image_table(dataset / "test.csv", dataset / "images", False, "table")
    images = (load_image_array(table.image_root, table.paths, cfg.image_size).astype(np.float32) - 127.5) / 127.5
    manual = np.mean([0.5 * (m(images, training=False).numpy() + m(tf.reverse(images, [2]), training=False).numpy())
                      for m in members], axis=0)
    np.testing.assert_allclose(va, np.clip(manual, -1, 1), atol=2e-4)


def test_predict_training_rows_out_of_fold_and_refuses_overwrite(trained, dataset, tmp_path, capsys):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)  # moved dataset: images are matched by content, not path
    before = (copy / "train.csv").read_bytes()
    code, _, err = run(["predict", "--model", trained, "--table", copy / "train.csv"], capsys)
    assert code == 2 and err.startswith("error: ") and "--force" in err
    assert (copy / "train.csv").read_bytes() == before
    code, summary, err = run(["predict", "--model", trained, "--table", copy / "train.csv", "--force"], capsys)
    assert code == 0, err
    assert "56 row(s) are images the regressor trained on" in summary and "optimistic" not in summary
    written = pd.read_csv(copy / "train.csv")
    assert written["path"].tolist() == pd.read_csv(dataset / "train.csv")["path"].tolist()
    # Each row got the member that did not train on it: member f predicts fold f.
    folds = pd.read_csv(trained / "train_images.csv")["fold"].to_numpy()
    cfg, members, _ = pseudo_va.load_regressors(trained)
    table, _ = pseudo_va.load_image_table(copy / "train.csv", copy / "images", False, "table")
    for f in (0, 1):
        rows = np.flatnonzero(folds == f)[:3]
        expected = pseudo_va.predict_va([members[f]], pseudo_va.subset(table, rows), cfg.image_size)
        np.testing.assert_allclose(written[["valence", "arousal"]].to_numpy()[rows], expected, atol=2e-5)


def test_member_of_rows_hand_case(tmp_path):
    pd.DataFrame({"path": ["a", "b", "c", "d"], "image_sha1": ["h0", "h1", "h2", "h2"], "fold": [0, 1, 0, 1]}
                 ).to_csv(tmp_path / "train_images.csv", index=False)
    # h0 only in fold 0 → member 0; h1 → member 1; h2 in both folds → seen by all (-2); h9 → new (-1).
    assert pseudo_va._member_of_rows(tmp_path, ["h0", "h1", "h2", "h9"], 2).tolist() == [0, 1, -2, -1]
    # One member trained on everything: every known image is in-sample.
    assert pseudo_va._member_of_rows(tmp_path, ["h0", "h9"], 1).tolist() == [-2, -1]


def test_source_without_va_is_a_clear_error(dataset, tmp_path, capsys):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    frame = pd.read_csv(copy / "train.csv").drop(columns=["valence", "arousal"])
    frame.to_csv(copy / "train.csv", index=False)
    code, _, err = run(["train", "--source", copy, "--out", tmp_path / "m", "--epochs", "1", *FAST], capsys)
    assert code == 2 and err.startswith("error: ") and "no 'valence' and 'arousal'" in err and "train.csv" in err
    assert not (tmp_path / "m").exists()
    code, _, err = run(["predict", "--model", tmp_path / "nothing", "--table", copy / "train.csv", "--force"], capsys)
    assert code == 2 and "not a pseudo-VA model directory" in err


@pytest.mark.slow
def test_end_to_end_pseudo_va_knn_ldlva(trained, tmp_path, capsys):
    """A dataset without VA → pseudo-VA → neighbour table → one LDLVA epoch."""
    from common.errors import DataError
    from preprocess import knn

    data = write_tiny_dataset(tmp_path / "novadata", seed=3)
    for split in ("train", "test"):
        frame = pd.read_csv(data / f"{split}.csv").drop(columns=["valence", "arousal"])
        frame.to_csv(data / f"{split}.csv", index=False)
    with pytest.raises(DataError, match="valence"):  # LDLVA refuses a table without VA
        train_run(tiny_run_config(data, tmp_path / "run0", method="ldlva", epochs=1))
    code, summary, err = run(["predict", "--model", trained, "--table", data / "train.csv", "--force"], capsys)
    assert code == 0, err
    assert "trained on" not in summary  # new images: no fold match
    assert knn.main(["--table", str(data / "train.csv"), "--k", "8"]) == 0
    report = train_run(tiny_run_config(data, tmp_path / "run", method="ldlva", epochs=1)).report
    assert 0.0 <= report["accuracy"] <= 1.0
    assert (tmp_path / "run" / "metrics.json").is_file()
