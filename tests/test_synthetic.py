"""The built-in synthetic benchmark (data.synthetic, CLI preprocess.synthetic): statistics, annotations, images,
determinism, IO."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import data.synthetic.dataset as synth  # the module whose names the tests patch
from common.errors import ConfigError, DataError
from data.schema import load_table
from data.synthetic import (CLASS_CENTRES, SyntheticConfig, class_priors, config_hash, ensure_synthetic, generate,
                            latent_class_sequence)
from preprocess.synthetic import main

SIZE = 48
TINY = SyntheticConfig(seed=0, train_size=140, test_size=70, image_size=SIZE, workers=1)
HAPPY, SAD, DISGUST = 1, 2, 5


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _dist(frame: pd.DataFrame) -> np.ndarray:
    return np.array([[float(v) for v in s.split(";")] for s in frame["true_distribution"]])


def _ints(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.array([[int(v) for v in s.split(";")] for s in frame[column]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "tiny", TINY, progress=False)


@pytest.fixture(scope="module")
def frames(tiny):
    return {s: pd.read_csv(tiny / f"{s}.csv") for s in ("train", "test")}


# ------------------------------------------------------------------------------------------- layout

def test_layout_and_schema(tiny):
    assert sorted(p.name for p in tiny.iterdir()) == [".fer-output.json", "images", "meta.json", "test.csv", "train.csv"]
    for split, n in (("train", 140), ("test", 70)):
        table = load_table(tiny / f"{split}.csv", 7, require_va=True, check_images=True, num_landmarks=68)
        assert len(table) == n
        assert table.image_root == tiny / "images"
        assert table.paths[0] == f"{split}/000000.jpg"
        assert table.votes is not None and table.landmarks is not None and table.va is not None
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["config_hash"] == config_hash(TINY)
    assert meta["config"]["train_size"] == 140 and "workers" not in meta["config"]
    assert meta["splits"]["train"]["size"] == 140 and meta["splits"]["test"]["size"] == 70


def test_val_split_written_when_requested(tmp_path):
    out = generate(tmp_path / "v", SyntheticConfig(train_size=20, test_size=10, val_size=14, image_size=32,
                                                   workers=1), progress=False)
    val = pd.read_csv(out / "val.csv")
    assert len(val) == 14 and val["path"].str.startswith("val/").all()
    assert (out / "images" / "val" / "000013.jpg").is_file()
    assert "val" in json.loads((out / "meta.json").read_text())["splits"]


# ------------------------------------------------------------------------------------------- class balance

def test_balanced_latent_counts_are_exact_quotas(frames):
    for split, n in (("train", 140), ("test", 70)):
        counts = np.bincount(frames[split]["latent_class"], minlength=7)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    # Labels are samples from the true distributions: roughly balanced, but not forced.
    labels = np.bincount(frames["train"]["expression"], minlength=7)
    assert labels.min() >= 8 and labels.max() <= 35


def test_imbalance_factor_sets_largest_to_smallest_ratio(tmp_path):
    config = SyntheticConfig(train_size=140, test_size=35, image_size=32, imbalance_factor=10.0, workers=1)
    priors = class_priors(config)
    assert priors.max() / priors.min() == pytest.approx(10.0)
    assert priors.argmax() == HAPPY and priors.argmin() == DISGUST
    out = generate(tmp_path / "imb", config, progress=False)
    train = pd.read_csv(out / "train.csv")
    counts = np.bincount(train["latent_class"], minlength=7)
    assert 8.0 <= counts.max() / counts.min() <= 12.5
    assert counts.argmax() == HAPPY and counts.argmin() == DISGUST
    labels = np.bincount(train["expression"], minlength=7)
    assert labels[HAPPY] > 3 * labels[DISGUST]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["latent_counts"] == counts.tolist()


def test_class_weights_override_and_quota_helper():
    priors = class_priors(SyntheticConfig(class_weights=(1, 1, 1, 1, 1, 1, 4)))
    assert priors[6] == pytest.approx(0.4) and priors.sum() == pytest.approx(1.0)
    seq = latent_class_sequence(100, priors, seed=3, split_id=0)
    assert np.bincount(seq, minlength=7).tolist() == [10, 10, 10, 10, 10, 10, 40]
    assert not np.array_equal(seq, np.sort(seq))  # shuffled, not blocks of one class


# ------------------------------------------------------------------------------------------- annotations

def test_va_correlates_with_class(frames):
    df = pd.concat([frames["train"], frames["test"]])
    va = df[["valence", "arousal"]].to_numpy()
    assert np.all(np.abs(va) <= 1.0)
    latent = df["latent_class"].to_numpy()
    assert va[latent == HAPPY, 0].mean() > 0.3 > va[latent == SAD, 0].mean()
    assert va[latent == SAD, 1].mean() < 0.0 < va[latent == 3, 1].mean()  # Sad calm, Surprise aroused
    nearest = ((va[:, None, :] - CLASS_CENTRES[None, :7]) ** 2).sum(-1).argmin(1)
    assert np.mean(nearest == df["expression"].to_numpy()) > 0.55  # chance is 1/7


def test_true_distributions_are_soft_where_clusters_overlap(frames):
    df = pd.concat([frames["train"], frames["test"]])
    p = _dist(df)
    assert p.shape[1] == 7 and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-3)
    maxp = p.max(1)
    assert 0.1 < np.mean(maxp < 0.8) < 0.6  # a meaningful share of ambiguous faces, but not all
    assert np.mean(maxp > 0.95) > 0.3  # and clear-cut ones
    latent = df["latent_class"].to_numpy()
    # Fear/Disgust/Anger overlap; Happy sits alone.
    assert maxp[np.isin(latent, [4, 5, 6])].mean() < maxp[latent == HAPPY].mean() - 0.1


def test_votes_and_labels(frames, tiny):
    for split in ("train", "test"):
        votes = _ints(frames[split], "votes")
        assert votes.shape[1] == 7 and np.all(votes.sum(1) == TINY.num_annotators)
    test = frames["test"]
    votes, p, labels = _ints(test, "votes"), _dist(test), test["expression"].to_numpy()
    for v, q, y in zip(votes, p, labels):
        tied = np.flatnonzero(v == v.max())
        assert y in tied  # majority vote ...
        assert y == tied[np.argmax(q[tied])]  # ... ties broken towards the most probable class
    train = frames["train"]
    train_votes, train_labels = _ints(train, "votes"), train["expression"].to_numpy()
    assert np.all(train_votes[np.arange(len(train)), train_labels] >= 1)  # the label is one of the votes
    # A single annotator disagrees with the majority more often than the majority does with itself.
    assert np.mean(train_labels == train_votes.argmax(1)) < 1.0
    meta = json.loads((tiny / "meta.json").read_text())
    assert meta["bayes_test_accuracy"] == pytest.approx(np.mean(labels == p.argmax(1)), abs=1e-6)
    assert meta["train_label_agreement"] == pytest.approx(np.mean(train_labels == _dist(train).argmax(1)), abs=1e-6)
    assert 0.6 < meta["train_label_agreement"] <= meta["bayes_test_accuracy"] + 0.05


def test_landmarks_are_68_points_in_the_image_in_ibug_order(frames):
    lm = np.array([[float(v) for v in s.split(";")] for s in frames["train"]["landmarks"]]).reshape(-1, 68, 2)
    assert np.all(lm >= 0) and np.all(lm <= SIZE - 1)
    assert np.mean((lm == 0) | (lm == SIZE - 1)) < 0.01  # not merely clipped into range
    right_eye, left_eye = lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)
    mouth, chin, nose_tip = lm[:, 48:68].mean(1), lm[:, 8], lm[:, 30]
    assert np.all(right_eye[:, 0] < left_eye[:, 0])  # subject's right eye is on the image left
    eye_y = (right_eye[:, 1] + left_eye[:, 1]) / 2
    assert np.all(eye_y < nose_tip[:, 1]) and np.all(nose_tip[:, 1] < mouth[:, 1])
    assert np.all(mouth[:, 1] < chin[:, 1])
    assert np.all(lm[:, 19, 1] < lm[:, 37, 1])  # brows above the eyes
    inter_ocular = np.linalg.norm(left_eye - right_eye, axis=1)
    assert 0.15 * SIZE < inter_ocular.min() and inter_ocular.max() < 0.5 * SIZE


# ------------------------------------------------------------------------------------------- images

def test_images_are_rgb_jpegs_of_the_configured_size(tiny, frames):
    for rel in frames["train"]["path"].tolist()[:40] + frames["test"]["path"].tolist()[:20]:
        path = tiny / "images" / rel
        assert path.read_bytes()[:3] == b"\xff\xd8\xff"
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        assert img.std() > 10  # not blank


def _aligned_faces(root: Path, frame: pd.DataFrame, out: int = 24) -> np.ndarray:
    """Grey inner faces (brows to mouth) warped by their landmarks onto the mean shape, standardised."""
    lm = np.array([[float(v) for v in s.split(";")] for s in frame["landmarks"]]).reshape(-1, 68, 2)[:, 17:]
    centred = lm - lm.mean(1, keepdims=True)
    template = (centred / np.linalg.norm(centred, axis=(1, 2), keepdims=True)).mean(0)
    template -= template.min(0)
    template *= (out - 4) / template.max()
    template += (out - template.max(0)) / 2
    faces = []
    for rel, pts in zip(frame["path"], lm):
        matrix, _ = cv2.estimateAffinePartial2D(pts.astype(np.float32), template.astype(np.float32))
        grey = cv2.cvtColor(cv2.imread(str(root / "images" / rel)), cv2.COLOR_BGR2GRAY).astype(np.float32)
        face = cv2.warpAffine(grey, matrix, (out, out), borderMode=cv2.BORDER_REPLICATE)
        faces.append((face - face.mean()) / (face.std() + 1e-6))
    return np.stack(faces)


def test_images_show_the_expression(tiny, frames):
    train, test = frames["train"], frames["test"]
    xtr, xte = _aligned_faces(tiny, train), _aligned_faces(tiny, test)
    ytr, yte = _dist(train).argmax(1), test["expression"].to_numpy()
    # Happy vs Sad mouth region (bottom of the aligned inner face): class means far apart, split halves not.
    mouth = (slice(None), slice(15, 24), slice(5, 19))
    happy, sad = xtr[ytr == HAPPY][mouth], xtr[ytr == SAD][mouth]
    between = np.abs(happy.mean(0) - sad.mean(0)).mean()
    within = np.abs(happy[::2].mean(0) - happy[1::2].mean(0)).mean()
    assert between > 0.4 and between > 2 * within
    # A nearest-centroid classifier on aligned pixels beats chance (1/7) by far on held-out faces.
    centroids = np.stack([xtr[ytr == k].mean(0) for k in range(7)])
    pred = ((xte[:, None] - centroids[None]) ** 2).sum((2, 3)).argmin(1)
    assert np.mean(pred == yte) > 0.4


# ------------------------------------------------------------------------------------------- determinism

def test_same_seed_is_byte_identical_whatever_the_worker_count(tiny, tmp_path):
    first = _tree_hashes(tiny)
    assert len(first) == 140 + 70 + 3 + 1  # images, tables + meta.json, the output marker
    again = generate(tmp_path / "again", TINY, progress=False)
    assert _tree_hashes(again) == first
    pooled = generate(tmp_path / "pooled", SyntheticConfig(**{**TINY.__dict__, "workers": 2}), progress=False)
    assert _tree_hashes(pooled) == first


def test_different_seed_gives_different_images(tiny, tmp_path):
    other = generate(tmp_path / "seed1", SyntheticConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    a, b = _tree_hashes(tiny), _tree_hashes(other)
    images = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] == b[k] for k in images) == 0
    assert config_hash(TINY) != config_hash(SyntheticConfig(**{**TINY.__dict__, "seed": 1}))
    assert config_hash(TINY) == config_hash(SyntheticConfig(**{**TINY.__dict__, "workers": 2}))


# ------------------------------------------------------------------------------------------- IO contract

SMALL = SyntheticConfig(train_size=14, test_size=7, image_size=32, workers=1)


def test_existing_output_needs_force_and_a_users_folder_is_never_replaced(tmp_path):
    from common.errors import ConfigError

    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    for force in (False, True):
        with pytest.raises(ConfigError, match="did not write"):
            generate(out, SMALL, force=force, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "user data"
    mine = tmp_path / "mine"
    generate(mine, SMALL, progress=False)
    with pytest.raises(ConfigError, match="force"):  # an earlier output: replaced only with --force
        generate(mine, SMALL, progress=False)
    generate(mine, SMALL, force=True, progress=False)
    assert (mine / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "mine"]  # no temporary or aside folders left


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-way")

    monkeypatch.setattr(synth, "render_face", boom)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "ds", SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ensure_synthetic_is_idempotent_and_checks_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_DATA_HOME", str(tmp_path / "home"))
    path = ensure_synthetic(SMALL, progress=False)
    assert path == tmp_path / "home" / f"synthetic-{config_hash(SMALL)}"
    stamp = (path / "meta.json").stat().st_mtime_ns
    assert ensure_synthetic(SMALL, progress=False) == path
    assert (path / "meta.json").stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(DataError, match="config hash"):
        ensure_synthetic(SyntheticConfig(**{**SMALL.__dict__, "seed": 5}), root=path, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(DataError, match="not a complete"):
        ensure_synthetic(SMALL, root=tmp_path / "junk", progress=False)


def test_ensure_synthetic_race_keeps_the_winner(tmp_path, monkeypatch):
    target = tmp_path / "race"
    real = synth._write_dataset

    def slow_loser(root, config, progress):
        real(root, config, progress)
        winner = tmp_path / ".winner.tmp"  # another process finishes first
        winner.mkdir()
        real(winner, config, False)
        (winner / "winner").write_text("1")
        os.rename(winner, target)

    monkeypatch.setattr(synth, "_write_dataset", slow_loser)
    assert ensure_synthetic(SMALL, root=target, progress=False) == target
    assert (target / "winner").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["race"]  # the loser's copy was discarded


def test_config_validation():
    for bad in (dict(num_classes=5), dict(image_size=8), dict(train_size=0), dict(imbalance_factor=0.5),
                dict(class_weights=(1.0, 2.0)), dict(ambiguity=0.0), dict(occluder_prob=1.5), dict(seed=-1)):
        with pytest.raises(ConfigError):
            SyntheticConfig(**bad).validate()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--train-size", "14", "--test-size", "7", "--image-size", "32", "--workers", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "bayes_test_accuracy" in captured.out and "100%" in captured.err
    assert len(pd.read_csv(out / "train.csv")) == 14
    assert sorted(os.listdir(out / "images")) == ["test", "train"]
    assert main(argv) == 2  # existing output without --force
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["--out", str(tmp_path / "bad"), "--image-size", "8"]) == 2
    assert "image_size" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
