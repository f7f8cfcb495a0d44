"""Importers, joiner, VA import and landmark extraction on tiny raw fixtures in the official layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from common.errors import DataError
from data.neighbors import load_neighbor_table
from data.schema import load_table, parse_float_list, read_csv, validate_frame
from preprocess import affectnet, affwild2, ferplus, join, landmarks, rafdb, release_csv, sfew, va_import
from preprocess.common import expand_box
from tests.fixtures_raw import (FERPLUS_ROWS, RAF_LABELS, RAF_MISSING, make_affectnet, make_affectnet_npy, make_affwild2,
                                make_ferplus, make_rafdb, make_release, make_sfew, write_image)

REPO = Path(__file__).resolve().parents[1]


def run(module, argv, capsys):
    code = module.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def loose_table(path, num_classes, **kwargs):
    """Validate a table without an image folder."""
    return validate_frame(read_csv(path), path, num_classes, **kwargs)


def meta(out):
    return json.loads((Path(out) / "dataset.json").read_text())


def image_root(out):
    root = Path(meta(out)["image_root"])
    return root if root.is_absolute() else Path(out) / root


# ---------------------------------------------------------------- AffectNet ----

def test_affectnet_7_classes_keeps_original_images(tmp_path, capsys):
    rows = make_affectnet(tmp_path / "raw")
    out = tmp_path / "out"
    code, summary, err = run(affectnet, ["--root", tmp_path / "raw", "--out", out], capsys)
    assert code == 0, err
    info = meta(out)
    assert info["num_classes"] == 7 and info["dataset"] == "affectnet"
    assert info["class_names"] == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]
    assert Path(info["image_root"]) == (tmp_path / "raw" / "Manually_Annotated_Images").resolve()
    for split in ("train", "test"):
        table = load_table(out / f"{split}.csv", 7, image_root=image_root(out), check_images=True, num_landmarks=68)
        expected = [r for r in rows[split] if r["keep7"]]
        assert table.paths == [r["subDirectory_filePath"] for r in expected]
        assert table.labels.tolist() == [r["expression"] for r in expected]
        np.testing.assert_allclose(table.va, [[r["valence"], r["arousal"]] for r in expected], atol=1e-6)
        np.testing.assert_allclose(table.landmarks[0], expected[0]["landmarks"], atol=0.01)
    assert info["dropped"] == {"Contempt (7) in a 7-class import": 2, "expression 10 (No-face)": 1,
                               "expression 8 (None)": 2, "expression 9 (Uncertain)": 1, "missing image file": 1,
                               "valence/arousal not annotated or outside [-1, 1] (e.g. -2)": 1}
    assert "training.csv, row 13: 100/train012abcdef.jpg" in summary
    dropped = pd.read_csv(out / "dropped.csv")
    assert len(dropped) == 8 and set(dropped["split"]) == {"train", "test"}
    assert "affectnet train" in err  # progress line on stderr


def test_affectnet_8_classes_crop_moves_landmarks(tmp_path, capsys):
    rows = make_affectnet(tmp_path / "raw", headerless_validation=True)
    out = tmp_path / "out"
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", out, "--classes", "8", "--crop-faces",
                                   "--margin", "0.1"], capsys)
    assert code == 0, err
    assert meta(out)["image_root"] == "images" and meta(out)["dataset"] == "affectnet8"
    table = load_table(out / "train.csv", 8, check_images=True, num_landmarks=68)
    expected = [r for r in rows["train"] if r["keep8"]]
    assert table.labels.tolist() == [r["expression"] for r in expected]
    assert 7 in table.labels.tolist()
    for i, r in enumerate(expected):
        assert table.paths[i] == r["subDirectory_filePath"]  # .jpg stays .jpg
        box = expand_box(r["face_x"], r["face_y"], r["face_width"], r["face_height"], 0.1, 40, 32)
        crop = cv2.imread(str(out / "images" / table.paths[i]))
        assert crop.shape[:2] == (box[3] - box[1], box[2] - box[0])
        np.testing.assert_allclose(table.landmarks[i], r["landmarks"] - [box[0], box[1]], atol=0.01)
    test = load_table(out / "test.csv", 8, check_images=True)
    assert len(test) == 8  # header-less validation.csv accepted; only expression 8 dropped


def test_affectnet_crop_resize_scales_landmarks(tmp_path, capsys):
    rows = make_affectnet(tmp_path / "raw")
    out = tmp_path / "out"
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", out, "--crop-faces", "--size", "44"], capsys)
    assert code == 0, err
    table = load_table(out / "train.csv", 7, num_landmarks=68)
    r = rows["train"][0]
    assert cv2.imread(str(out / "images" / table.paths[0])).shape[:2] == (44, 44)
    scale = np.array([44 / r["face_width"], 44 / r["face_height"]])
    np.testing.assert_allclose(table.landmarks[0], (r["landmarks"] - [r["face_x"], r["face_y"]]) * scale, atol=0.01)


def test_affectnet_strict_missing_file_is_an_error(tmp_path, capsys):
    make_affectnet(tmp_path / "raw")
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "out", "--strict"], capsys)
    assert code == 2
    assert err.startswith("error: ") and "training.csv, row 13" in err and "does not exist" in err
    assert not (tmp_path / "out" / "train.csv").exists()


def test_affectnet_wrong_columns_and_bad_rows(tmp_path, capsys):
    make_affectnet(tmp_path / "raw")
    train = tmp_path / "raw" / "training.csv"
    original = train.read_text()
    train.write_text(original.replace("valence,arousal", "val,aro", 1))
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "training.csv" in err and "missing column(s) valence, arousal" in err
    lines = original.splitlines()
    fields = lines[2].split(",")
    fields[6] = "happy"
    train.write_text("\n".join(lines[:2] + [",".join(fields)] + lines[3:]) + "\n")
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "training.csv, row 2: column 'expression'" in err
    fields = lines[2].split(",")
    fields[5] = "1;2;3"
    train.write_text("\n".join(lines[:2] + [",".join(fields)] + lines[3:]) + "\n")
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "training.csv, row 2: facial_landmarks has 3 values" in err


def test_affectnet_refuses_to_overwrite_without_force(tmp_path, capsys):
    make_affectnet(tmp_path / "raw")
    out = tmp_path / "out"
    assert run(affectnet, ["--root", tmp_path / "raw", "--out", out], capsys)[0] == 0
    (out / "train.neighbors.npz").write_bytes(b"stale")
    before = (out / "train.csv").read_text()
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", out], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (out / "train.csv").read_text() == before
    code, summary, _ = run(affectnet, ["--root", tmp_path / "raw", "--out", out, "--force"], capsys)
    assert code == 0 and "removed stale" in summary and not (out / "train.neighbors.npz").exists()


# ------------------------------------------------------------------- RAF-DB ----

def test_rafdb_maps_labels_and_reports_missing(tmp_path, capsys):
    make_rafdb(tmp_path / "raf")
    out = tmp_path / "out"
    code, summary, err = run(rafdb, ["--root", tmp_path / "raf", "--out", out], capsys)
    assert code == 0, err
    raf_to_canonical = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}
    train = load_table(out / "train.csv", 7, image_root=image_root(out), check_images=True)
    test = load_table(out / "test.csv", 7, image_root=image_root(out), check_images=True)
    expected_train = [(n, l) for n, l in RAF_LABELS.items() if n.startswith("train_") and n != RAF_MISSING]
    assert train.paths == [n.replace(".jpg", "_aligned.jpg") for n, _ in expected_train]
    assert train.labels.tolist() == [raf_to_canonical[l] for _, l in expected_train]
    assert test.labels.tolist() == [0, 1, 2, 3]
    assert meta(out)["dropped"] == {"missing image file": 1}
    assert "list_patition_label.txt, row 8: train_00008_aligned.jpg" in summary


def test_rafdb_copy_images_and_original_variant(tmp_path, capsys):
    make_rafdb(tmp_path / "raf")
    out = tmp_path / "out"
    code, _, err = run(rafdb, ["--root", tmp_path / "raf", "--out", out, "--variant", "original", "--copy-images"], capsys)
    assert code == 0, err
    assert meta(out)["image_root"] == "images"
    table = load_table(out / "train.csv", 7, check_images=True)
    assert table.paths[0] == "train_00001.jpg"


@pytest.mark.parametrize("line, message", [
    ("train_00009.jpg", "line 13: expected '<image name> <label 1-7>'"),
    ("train_00009.jpg 8", "line 13: label 8 is outside RAF-DB's 1..7"),
    ("train_00009.jpg x", "line 13: label 'x' is not an integer"),
    ("val_0001.jpg 3", "line 13: image name 'val_0001.jpg' starts with neither"),
])
def test_rafdb_malformed_line_names_the_line(tmp_path, capsys, line, message):
    make_rafdb(tmp_path / "raf", extra_lines=(line,))
    code, _, err = run(rafdb, ["--root", tmp_path / "raf", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "list_patition_label.txt" in err and message in err, err


def test_rafdb_runs_as_module(tmp_path):
    make_rafdb(tmp_path / "raf")
    result = subprocess.run([sys.executable, "-m", "preprocess.rafdb", "--root", str(tmp_path / "raf"),
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rafdb: wrote train.csv 7 rows, test.csv 4 rows" in result.stdout
    result = subprocess.run([sys.executable, "-m", "preprocess.rafdb", "--root", str(tmp_path / "raf"),
                             "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# --------------------------------------------------------------------- SFEW ----

def test_sfew_folders_case_insensitive(tmp_path, capsys):
    counts = make_sfew(tmp_path / "sfew")
    out = tmp_path / "out"
    code, _, err = run(sfew, ["--root", tmp_path / "sfew", "--out", out], capsys)
    assert code == 0, err
    train = load_table(out / "train.csv", 7, image_root=image_root(out), check_images=True)
    test = load_table(out / "test.csv", 7, image_root=image_root(out), check_images=True)
    assert len(train) == counts["train"] and len(test) == counts["test"]
    by_folder = {p.split("/")[1]: l for p, l in zip(train.paths, train.labels.tolist())}
    assert by_folder == {"Angry": 6, "disgust": 5, "Fear": 4, "HAPPY": 1, "Neutral": 0, "Sad": 2, "Surprise": 3}
    assert sorted(test.labels.tolist()) == [1, 2, 6]
    assert meta(out)["dropped"] == {"not an image file": 1}


def test_sfew_unknown_folder_is_an_error(tmp_path, capsys):
    make_sfew(tmp_path / "sfew", unknown_folder="Contemptuous")
    code, _, err = run(sfew, ["--root", tmp_path / "sfew", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "unknown emotion folder 'Contemptuous'" in err


# ------------------------------------------------------------------ FERPlus ----

def test_ferplus_majority_rules_and_votes(tmp_path, capsys):
    fer, new = make_ferplus(tmp_path / "raw")
    out = tmp_path / "out"
    code, _, err = run(ferplus, ["--fer2013", fer, "--ferplus", new, "--out", out], capsys)
    assert code == 0, err
    info = meta(out)
    assert info["num_classes"] == 8 and info["image_root"] == "images"
    assert info["dropped"] == {ferplus.DROP_EMPTY_NAME: 1, ferplus.DROP_NF_ANY: 2, ferplus.DROP_UNKNOWN: 1,
                               ferplus.DROP_TIE: 1, ferplus.DROP_NO_MAJORITY: 1}
    usage_split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    for split in ("train", "val", "test"):
        table = load_table(out / f"{split}.csv", 8, check_images=True)
        expected = [r for r in FERPLUS_ROWS if usage_split[r[0]] == split and isinstance(r[3], int)]
        assert table.paths == [f"{split}/{r[1]}" for r in expected]
        assert table.labels.tolist() == [r[3] for r in expected]
        # canonical order: neutral, happiness, sadness, surprise, fear, disgust, anger, contempt
        for votes, r in zip(table.votes, expected):
            raw = r[2]
            assert votes.tolist() == [raw[0], raw[1], raw[3], raw[2], raw[6], raw[5], raw[4], raw[7]]
        image = cv2.imread(str(out / "images" / table.paths[0]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (48, 48) and image.dtype == np.uint8
    first = cv2.imread(str(out / "images" / "train" / "fer0000000.png"), cv2.IMREAD_UNCHANGED)
    pixels = pd.read_csv(fer)["pixels"].iloc[0]
    np.testing.assert_array_equal(first.ravel(), np.asarray(pixels.split(), np.uint8))


def test_ferplus_alternative_rules(tmp_path, capsys):
    fer, new = make_ferplus(tmp_path / "raw")
    out = tmp_path / "out"
    code, _, err = run(ferplus, ["--fer2013", fer, "--ferplus", new, "--out", out, "--nf-rule", "majority",
                                 "--label-rule", "plurality", "--format", "jpg"], capsys)
    assert code == 0, err
    train = load_table(out / "train.csv", 8, check_images=True)
    assert "train/fer0000005.jpg" in train.paths  # one NF vote, anger 9
    val = load_table(out / "val.csv", 8)
    assert val.labels.tolist() == [3, 4]  # plurality keeps the 4-of-10 fear row


def test_ferplus_label_rule_matches_ferplus_majority_mode():
    assert ferplus.ferplus_label([1, 1, 0, 0, 0, 0, 0, 0, 0, 0]) == (None, ferplus.DROP_NO_MAJORITY)
    assert ferplus.ferplus_label([1, 3, 0, 0, 0, 0, 0, 0, 0, 0]) == (1, None)  # the single vote is an outlier
    assert ferplus.ferplus_label([0, 0, 0, 0, 0, 0, 0, 0, 5, 5]) == (None, ferplus.DROP_NO_MAJORITY)
    assert ferplus.ferplus_label([0, 4, 0, 0, 0, 0, 0, 0, 4, 0], "plurality") == (None, ferplus.DROP_UNKNOWN)


@pytest.mark.parametrize("kwargs, message", [
    ({"wrong_pixels_row": 1}, "fer2013.csv, row 2: 'pixels' has 2299 values; expected 2304"),
    ({"misaligned_usage_row": 9}, "fer2013new.csv, row 10: Usage 'PrivateTest' differs"),
])
def test_ferplus_bad_rows(tmp_path, capsys, kwargs, message):
    fer, new = make_ferplus(tmp_path / "raw", **kwargs)
    code, _, err = run(ferplus, ["--fer2013", fer, "--ferplus", new, "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in err, err


def test_ferplus_missing_columns(tmp_path, capsys):
    fer, new = make_ferplus(tmp_path / "raw")
    new.write_text(new.read_text().replace(",NF\n", ",notaface\n", 1))
    code, _, err = run(ferplus, ["--fer2013", fer, "--ferplus", new, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "fer2013new.csv: missing column(s) NF" in err


# ------------------------------------------------------- LDLVA release CSV ----

def test_release_csv_keeps_rows_and_knn(tmp_path, capsys):
    rel = make_release(tmp_path / "release")
    out = tmp_path / "out"
    code, _, err = run(release_csv, ["--train", rel["train"], "--test", rel["test"], "--image-root",
                                     rel["image_root"], "--out", out, "--check-images"], capsys)
    assert code == 0, err
    train = load_table(out / "train.csv", 7, image_root=image_root(out), check_images=True, require_va=True)
    assert train.labels.tolist() == rel["labels"].tolist()
    np.testing.assert_allclose(train.va, rel["va"], atol=1e-6)
    indices, distances = load_neighbor_table(out / "train.neighbors.npz", len(train), 4)
    np.testing.assert_array_equal(indices, rel["knn"])
    np.testing.assert_allclose(distances[:, 0], np.linalg.norm(rel["va"] - rel["va"][rel["knn"][:, 0]], axis=1), atol=1e-5)
    test = load_table(out / "test.csv", 7, image_root=image_root(out))
    assert test.va is None and len(test) == 5


def test_release_csv_bad_knn_names_the_row(tmp_path, capsys):
    rel = make_release(tmp_path / "release")
    lines = rel["train"].read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",1;2;99;0"
    rel["train"].write_text("\n".join(lines) + "\n")
    code, _, err = run(release_csv, ["--train", rel["train"], "--test", rel["test"], "--image-root",
                                     rel["image_root"], "--out", tmp_path / "out"], capsys)
    assert code == 2 and "train.csv, row 3: neighbour index 99 is out of range" in err


# -------------------------------------------------------------------- join ----

def test_join_rafdb_and_affectnet(tmp_path, capsys):
    make_rafdb(tmp_path / "raf")
    make_affectnet(tmp_path / "aff_raw")
    assert run(rafdb, ["--root", tmp_path / "raf", "--out", tmp_path / "rafdb"], capsys)[0] == 0
    assert run(affectnet, ["--root", tmp_path / "aff_raw", "--out", tmp_path / "affectnet", "--classes", "8"], capsys)[0] == 0
    out = tmp_path / "joined"
    code, summary, err = run(join, ["--source", f"rafdb={tmp_path / 'rafdb'}", "--source",
                                    f"affectnet={tmp_path / 'affectnet'}", "--out", out], capsys)
    assert code == 0, err
    train = load_table(out / "train.csv", 7, check_images=True)
    assert set(train.frame["source"]) == {"rafdb", "affectnet"}
    assert train.paths[0] == "rafdb/train_00001_aligned.jpg"
    assert train.va is None and "column 'valence' dropped: missing in source(s) rafdb" in summary
    assert meta(out)["dropped"] == {"class 7 (Contempt) in a 7-class join": 2}
    for name, n in (("rafdb", 4), ("affectnet", 7)):
        assert len(load_table(out / f"test_{name}.csv", 7, image_root=out / "images", check_images=True)) == n
    assert len(load_table(out / "test.csv", 7, check_images=True)) == 11
    src = image_root(tmp_path / "rafdb") / "train_00001_aligned.jpg"
    assert os.path.samefile(src, out / "images" / "rafdb" / "train_00001_aligned.jpg")  # hard link


def test_join_keeps_va_when_every_source_has_it(tmp_path, capsys):
    make_rafdb(tmp_path / "raf")
    make_affectnet(tmp_path / "aff_raw")
    run(rafdb, ["--root", tmp_path / "raf", "--out", tmp_path / "rafdb"], capsys)
    run(affectnet, ["--root", tmp_path / "aff_raw", "--out", tmp_path / "affectnet"], capsys)
    paths = pd.read_csv(tmp_path / "rafdb" / "train.csv")["path"]
    pd.DataFrame({"path": paths, "valence": 0.5, "arousal": -0.25}).to_csv(tmp_path / "va.csv", index=False)
    code, _, err = run(va_import, ["--table", tmp_path / "rafdb" / "train.csv", "--va", tmp_path / "va.csv",
                                   "--force"], capsys)
    assert code == 0, err
    out = tmp_path / "joined"
    code, _, err = run(join, ["--source", f"rafdb={tmp_path / 'rafdb'}", "--source",
                              f"affectnet={tmp_path / 'affectnet'}", "--out", out, "--link", "copy"], capsys)
    assert code == 0, err
    train = load_table(out / "train.csv", 7, require_va=True)
    assert train.va[0].tolist() == [0.5, -0.25]


# --------------------------------------------------------------- VA import ----

def _table(tmp_path, n=4):
    table = tmp_path / "train.csv"
    pd.DataFrame({"path": [f"a/{i}.jpg" for i in range(n)], "expression": [i % 7 for i in range(n)]}).to_csv(table, index=False)
    return table


def test_va_import_merges_by_path(tmp_path, capsys):
    table = _table(tmp_path)
    pd.DataFrame({"image": ["./a/3.jpg", "a\\2.jpg", "a/1.jpg", "a/0.jpg", "b/extra.jpg"],
                  "valence": [0.3, 0.2, 0.1, 0.0, 0.9], "arousal": [-0.3, -0.2, -0.1, 1.0, 0.9]}).to_csv(tmp_path / "va.csv", index=False)
    code, _, err = run(va_import, ["--table", table, "--va", tmp_path / "va.csv", "--path-column", "image"], capsys)
    assert code == 2 and "already exists" in err
    code, summary, err = run(va_import, ["--table", table, "--va", tmp_path / "va.csv", "--path-column", "image",
                                         "--out", tmp_path / "train_va.csv"], capsys)
    assert code == 0, err
    merged = loose_table(tmp_path / "train_va.csv", 7, require_va=True)
    np.testing.assert_allclose(merged.va, [[0.0, 1.0], [0.1, -0.1], [0.2, -0.2], [0.3, -0.3]])
    assert "ignored 1 VA row(s)" in summary


@pytest.mark.parametrize("va, args, message", [
    ({"path": ["a/0.jpg", "a/1.jpg", "a/2.jpg"], "valence": [0, 0, 0], "arousal": [0, 0, 0]}, [],
     "no valence/arousal for 1 of the 4 rows"),
    ({"path": ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/3.jpg", "a/1.jpg"], "valence": [0] * 5, "arousal": [0] * 5}, [],
     "va.csv, row 5: duplicate path 'a/1.jpg' (first at row 2)"),
    ({"path": ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/3.jpg"], "valence": [0, 1.5, 0, 0], "arousal": [0] * 4}, [],
     "va.csv, row 2: valence/arousal (1.5, 0.0) outside [-1, 1]; pass --clip"),
    ({"path": ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/3.jpg"], "valence": [0, 0, None, 0], "arousal": [0] * 4}, [],
     "va.csv, row 3: valence/arousal is empty, NaN"),
    ({"path": ["a/0.jpg"], "v": [0], "arousal": [0]}, [], "va.csv: missing column(s) valence"),
])
def test_va_import_errors(tmp_path, capsys, va, args, message):
    table = _table(tmp_path)
    pd.DataFrame(va).to_csv(tmp_path / "va.csv", index=False)
    code, _, err = run(va_import, ["--table", table, "--va", tmp_path / "va.csv", "--force"] + args, capsys)
    assert code == 2 and message in err, err


def test_va_import_clip(tmp_path, capsys):
    table = _table(tmp_path)
    pd.DataFrame({"path": [f"a/{i}.jpg" for i in range(4)], "valence": [0, 1.5, 0, 0],
                  "arousal": [0, 0, -1.2, 0]}).to_csv(tmp_path / "va.csv", index=False)
    code, summary, err = run(va_import, ["--table", table, "--va", tmp_path / "va.csv", "--force", "--clip"], capsys)
    assert code == 0, err
    assert "clipped 2 VA row(s)" in summary
    assert loose_table(table, 7).va[1:3].tolist() == [[1.0, 0.0], [0.0, -1.0]]


# --------------------------------------------------------------- landmarks ----

class FakeLandmarker:
    """Finds a 'face' only in images whose mean is above 100; returns a fixed grid of 68 points."""

    def __call__(self, image_rgb):
        h, w = image_rgb.shape[:2]
        points = np.stack([np.linspace(0, w - 1, 68), np.linspace(0, h - 1, 68)], axis=1)
        return points, float(image_rgb.mean()) > 100


def _landmark_dir(tmp_path):
    folder = tmp_path / "ds"
    for i, value in enumerate((200, 20, 220)):
        write_image(folder / "images" / f"{i}.png", np.full((16, 20, 3), value, np.uint8))
    pd.DataFrame({"path": [f"{i}.png" for i in range(3)], "expression": [0, 1, 2]}).to_csv(folder / "train.csv", index=False)
    return folder


def test_landmarks_fallback_counted_with_fake_model(tmp_path, capsys):
    folder = _landmark_dir(tmp_path)
    args = landmarks.build_parser().parse_args(["--table", str(folder / "train.csv"), "--force"])
    summary = landmarks.add_landmarks(args, landmarker=FakeLandmarker())
    assert "no face found in 1 image(s)" in summary
    table = load_table(folder / "train.csv", 7, num_landmarks=68)
    assert table.landmarks.shape == (3, 68, 2) and table.landmarks[0, -1].tolist() == [19.0, 15.0]


def test_landmarks_missing_image_names_row(tmp_path, capsys):
    folder = _landmark_dir(tmp_path)
    (folder / "images" / "1.png").unlink()
    args = landmarks.build_parser().parse_args(["--table", str(folder / "train.csv"), "--force"])
    with pytest.raises(DataError, match=r"train.csv, row 2: image file .*1.png does not exist"):
        landmarks.add_landmarks(args, landmarker=FakeLandmarker())


def test_landmarks_without_dlib_gives_install_hint(tmp_path, capsys, monkeypatch):
    folder = _landmark_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    code, _, err = run(landmarks, ["--table", folder / "train.csv", "--force"], capsys)
    assert code == 2 and "pip install -r requirements-preprocess.txt" in err and "dlib-bin" in err


def test_landmarks_with_dlib_on_a_real_photo(tmp_path, capsys):
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    import matplotlib.cbook

    photo = cv2.imread(str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    folder = tmp_path / "ds"
    write_image(folder / "images" / "grace.jpg", photo)
    write_image(folder / "images" / "flat.jpg", np.full((40, 40, 3), 128, np.uint8))
    pd.DataFrame({"path": ["grace.jpg", "flat.jpg"], "expression": [1, 0]}).to_csv(folder / "train.csv", index=False)
    code, summary, err = run(landmarks, ["--table", folder / "train.csv", "--force", "--upsample", "0"], capsys)
    assert code == 0, err
    assert "no face found in 1 image(s)" in summary
    points = parse_float_list(pd.read_csv(folder / "train.csv")["landmarks"].iloc[0], "t", 1, "landmarks").reshape(68, 2)
    # eyes above the nose tip above the mouth, inside the face region of the photo
    assert points[36:48, 1].mean() < points[30, 1] < points[48:68, 1].mean()
    assert 150 < points[30, 0] < 380 and 150 < points[30, 1] < 330


# ------------------------------------------------------ AffectNet (npy layout) ----

NPY_DROPS_7 = {"Contempt (7) in a 7-class import": 2, "expression 8 (None)": 1, "expression 9 (Uncertain)": 1,
               "valence/arousal not annotated or outside [-1, 1] (e.g. -2)": 1,
               "missing annotation file (_aro.npy)": 1, "missing annotation file (_lnd.npy)": 1,
               "missing image file": 1, affectnet.DROP_NPY_UNREADABLE: 1, affectnet.DROP_NPY_PICKLE: 1}


def _npy_order(rows):
    return sorted(rows, key=lambda r: int(r["id"]))


def test_affectnet_npy_layout_is_detected_and_imported(tmp_path, capsys):
    rows = make_affectnet_npy(tmp_path / "raw")
    out = tmp_path / "out"
    code, summary, err = run(affectnet, ["--root", tmp_path / "raw", "--out", out], capsys)
    assert code == 0, err
    info = meta(out)
    assert info["layout"] == "npy" and info["dataset"] == "affectnet" and info["num_classes"] == 7
    assert Path(info["image_root"]) == (tmp_path / "raw").resolve()
    assert info["dropped"] == NPY_DROPS_7
    for split in ("train", "test"):
        table = load_table(out / f"{split}.csv", 7, image_root=image_root(out), check_images=True, num_landmarks=68)
        expected = [r for r in _npy_order(rows[split]) if r["keep7"]]
        assert table.paths == [r["path"] for r in expected]  # numeric id order: 2 before 10
        assert table.labels.tolist() == [r["expression"] for r in expected]
        np.testing.assert_allclose(table.va, [[r["valence"], r["arousal"]] for r in expected], atol=1e-6)
        for points, r in zip(table.landmarks, expected):
            np.testing.assert_allclose(points, r["landmarks"], atol=0.01)
    assert "8_val.npy: train_set/images/8.jpg" in summary  # examples of unreadable files are shown
    dropped = pd.read_csv(out / "dropped.csv")
    assert len(dropped) == sum(NPY_DROPS_7.values())
    assert dropped.loc[dropped["reason"] == affectnet.DROP_NPY_PICKLE, "file"].tolist() == ["9_exp.npy"]


def test_affectnet_npy_8_classes_layout_flag_and_strict(tmp_path, capsys):
    rows = make_affectnet_npy(tmp_path / "raw")
    out = tmp_path / "out"
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", out, "--classes", "8", "--layout", "npy"], capsys)
    assert code == 0, err
    assert meta(out)["dataset"] == "affectnet8"
    train = load_table(out / "train.csv", 8, image_root=image_root(out), check_images=True)
    assert train.labels.tolist() == [r["expression"] for r in _npy_order(rows["train"]) if r["keep8"]]
    assert 7 in train.labels.tolist()
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "strict", "--strict"], capsys)
    assert code == 2 and "11_exp.npy: no image 11.*" in err, err
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "crop", "--crop-faces"], capsys)
    assert code == 2 and "--crop-faces applies to the csv layout" in err
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "csv", "--layout", "csv"], capsys)
    assert code == 2 and "Manually_Annotated_Images does not exist" in err
    code, _, err = run(affectnet, ["--root", tmp_path, "--out", tmp_path / "none"], capsys)
    assert code == 2 and "neither AffectNet layout found" in err


@pytest.mark.parametrize("name, value, message", [
    ("1_exp.npy", np.array("happy"), "1_exp.npy: expression is not a number: 'happy'"),
    ("1_exp.npy", np.array(12), "1_exp.npy: expression 12 is not an AffectNet code (0..10)"),
    ("1_exp.npy", np.array([1, 2]), "1_exp.npy: expression must hold one value"),
    ("1_val.npy", np.array("n/a"), "1_val.npy: valence is not a number: 'n/a'"),
    ("1_lnd.npy", np.arange(3.0), "1_lnd.npy: landmarks have 3 values; expected 136"),
    ("1_lnd.npy", np.array(["x"] * 136), "1_lnd.npy: landmarks are not numbers"),
])
def test_affectnet_npy_bad_values_name_the_file(tmp_path, capsys, name, value, message):
    make_affectnet_npy(tmp_path / "raw")
    np.save(tmp_path / "raw" / "train_set" / "annotations" / name, value, allow_pickle=False)
    code, _, err = run(affectnet, ["--root", tmp_path / "raw", "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out" / "train.csv").exists()


# ------------------------------------------------------- FERPlus 7 classes ----

def _canonical_votes(raw):
    return [raw[0], raw[1], raw[3], raw[2], raw[6], raw[5], raw[4], raw[7]]


def test_ferplus_7_classes_drops_contempt_rows_and_votes(tmp_path, capsys):
    fer, new = make_ferplus(tmp_path / "raw")
    out = tmp_path / "out"
    code, _, err = run(ferplus, ["--fer2013", fer, "--ferplus", new, "--out", out, "--classes", "7"], capsys)
    assert code == 0, err
    info = meta(out)
    assert info["dataset"] == "ferplus7" and info["num_classes"] == 7 and len(info["class_names"]) == 7
    assert info["dropped"] == {ferplus.DROP_EMPTY_NAME: 1, ferplus.DROP_NF_ANY: 2, ferplus.DROP_UNKNOWN: 1,
                               ferplus.DROP_TIE: 1, ferplus.DROP_NO_MAJORITY: 1, ferplus.DROP_CONTEMPT: 1}
    usage_split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    for split in ("train", "val", "test"):
        table = load_table(out / f"{split}.csv", 7, check_images=True)
        expected = [r for r in FERPLUS_ROWS if usage_split[r[0]] == split and isinstance(r[3], int) and r[3] != 7]
        assert table.labels.tolist() == [r[3] for r in expected]
        assert table.votes.tolist() == [_canonical_votes(r[2])[:7] for r in expected]  # contempt count left out
    assert "test/fer0000009.png" not in load_table(out / "test.csv", 7).paths


def test_ferplus_7_classes_plurality(tmp_path, capsys):
    fer, new = make_ferplus(tmp_path / "raw")
    out = tmp_path / "out"
    code, _, err = run(ferplus, ["--fer2013", fer, "--ferplus", new, "--out", out, "--classes", "7",
                                 "--label-rule", "plurality"], capsys)
    assert code == 0, err
    assert load_table(out / "train.csv", 7).labels.tolist() == [1, 0, 6]
    assert load_table(out / "val.csv", 7).labels.tolist() == [3, 4]  # the 4-of-10 fear row is kept
    assert load_table(out / "test.csv", 7).labels.tolist() == [5, 2]  # contempt 6 vs anger 4: dropped
    assert meta(out)["dropped"][ferplus.DROP_CONTEMPT] == 1 and meta(out)["label_rule"] == "plurality"


def test_ferplus_plurality_ties_are_dropped():
    # columns: neutral, happiness, sadness, surprise, fear, disgust, anger, contempt, unknown, NF (canonical)
    assert ferplus.ferplus_label([3, 3, 0, 0, 0, 0, 0, 0, 0, 0], "plurality") == (None, ferplus.DROP_TIE)
    assert ferplus.ferplus_label([0, 0, 0, 0, 0, 0, 4, 4, 2, 0], "plurality") == (None, ferplus.DROP_TIE)
    assert ferplus.ferplus_label([0, 0, 0, 0, 0, 0, 4, 5, 1, 0], "plurality") == (7, None)
    assert ferplus.ferplus_label([0, 2, 0, 0, 0, 0, 0, 0, 0, 2], "plurality") == (None, ferplus.DROP_NF)
    assert ferplus.ferplus_label([1, 3, 2, 1, 1, 1, 1, 0, 0, 0], "plurality") == (1, None)  # 3 of 10 suffices


def test_registry_has_the_new_datasets():
    from data.registry import get_dataset_spec

    spec = get_dataset_spec("ferplus7")
    assert spec.num_classes == 7 and "--classes 7" in spec.import_command
    spec = get_dataset_spec("affwild2")
    assert spec.num_classes == 7 and spec.has_va and spec.import_command.startswith("python -m preprocess.affwild2")


# ---------------------------------------------------------------- Aff-Wild2 ----

AFFWILD2_EXPR_DROPS = {affwild2.DROP_NO_VA: 3, affwild2.DROP_NO_IMAGE: 1, affwild2.DROP_EXPR_NONE: 1,
                       affwild2.DROP_EXPR_OTHER: 1, affwild2.DROP_EXPR_PAST_END: 1, affwild2.DROP_EXPR_NO_FILE: 3}


def test_affwild2_expr_labels(tmp_path, capsys):
    frames = make_affwild2(tmp_path / "raw")
    out = tmp_path / "out"
    code, summary, err = run(affwild2, ["--root", tmp_path / "raw", "--out", out], capsys)
    assert code == 0, err
    info = meta(out)
    assert info["dataset"] == "affwild2" and info["num_classes"] == 7 and info["labels"] == "expr"
    assert Path(info["image_root"]) == (tmp_path / "raw" / "cropped_aligned").resolve()
    assert info["dropped"] == AFFWILD2_EXPR_DROPS
    for split in ("train", "test"):
        table = load_table(out / f"{split}.csv", 7, image_root=image_root(out), check_images=True, require_va=True)
        expected = [f for f in frames[split] if f["gmm_class"] is not None and f["expr"] is not None and f["image"]]
        assert table.paths == [f["path"] for f in expected]
        assert table.labels.tolist() == [f["expr"] for f in expected]
        np.testing.assert_allclose(table.va, [f["va"] for f in expected], atol=1e-6)
    assert "vidA.txt, row 4: vidA/00004.jpg" in summary
    dropped = pd.read_csv(out / "dropped.csv")
    assert dropped.loc[dropped["reason"] == affwild2.DROP_NO_VA, "row"].tolist() == [3, 7, 3]


def test_affwild2_va_gmm_labels_from_affectnet_and_every(tmp_path, capsys):
    frames = make_affwild2(tmp_path / "raw")
    make_affectnet(tmp_path / "aff_raw")
    assert run(affectnet, ["--root", tmp_path / "aff_raw", "--out", tmp_path / "affectnet"], capsys)[0] == 0
    out = tmp_path / "out"
    code, summary, err = run(affwild2, ["--root", tmp_path / "raw", "--out", out, "--labels", "va-gmm",
                                        "--affectnet", tmp_path / "affectnet", "--every", "2"], capsys)
    assert code == 0, err
    info = meta(out)
    assert info["dropped"] == {affwild2.DROP_NO_VA: 3, affwild2.DROP_NO_IMAGE: 1}
    for split in ("train", "test"):
        usable = {}
        for f in frames[split]:
            if f["gmm_class"] is not None and f["image"]:
                usable.setdefault(f["video"], []).append(f)
        expected = [f for video in usable.values() for f in video[::2]]
        table = load_table(out / f"{split}.csv", 7, image_root=image_root(out), check_images=True, require_va=True)
        assert table.paths == [f["path"] for f in expected]
        assert table.labels.tolist() == [f["gmm_class"] for f in expected]  # the class whose AffectNet VA it sits on
        assert info["sampled_out"][split] == sum(len(v) for v in usable.values()) - len(expected)
    gmm = info["va_gmm"]
    assert gmm["affectnet_rows"] == 8 and np.asarray(gmm["covariances"]).shape == (7, 2, 2)
    np.testing.assert_allclose(gmm["priors"], [0.25] + [0.125] * 6)
    assert "--every 2: left out" in summary


def test_affwild2_va_gmm_leaves_out_contempt_of_an_8_class_affectnet(tmp_path, capsys):
    make_affwild2(tmp_path / "raw")
    make_affectnet(tmp_path / "aff_raw")
    assert run(affectnet, ["--root", tmp_path / "aff_raw", "--out", tmp_path / "aff8", "--classes", "8"], capsys)[0] == 0
    out = tmp_path / "out"
    code, _, err = run(affwild2, ["--root", tmp_path / "raw", "--out", out, "--labels", "va-gmm",
                                  "--affectnet", tmp_path / "aff8"], capsys)
    assert code == 0, err
    assert meta(out)["va_gmm"]["affectnet_rows"] == 8  # the contempt row is not in the mixture
    assert load_table(out / "train.csv", 7, image_root=image_root(out)).labels.max() <= 6


@pytest.mark.parametrize("kwargs, message", [
    ({"va_line": ("vidA", 2, "abc,0.1")}, "vidA.txt, row 2: expected 'valence,arousal' numbers (frame 00002)"),
    ({"va_line": ("vidA", 2, "0.1;0.2")}, "vidA.txt, row 2: expected 'valence,arousal' numbers"),
    ({"va_line": ("vidB_left", 3, "1.5,0.2")}, "vidB_left.txt, row 3: valence/arousal (1.5, 0.2) outside [-1, 1]"),
    ({"va_line": ("vidD", 0, "arousal,valence")}, "vidD.txt, line 1: expected the VA header 'valence,arousal'"),
    ({"expr_line": ("vidA", 1, "happy")}, "vidA.txt, row 1: expected one integer -1..7"),
    ({"expr_line": ("vidA", 0, "Neutral,Happiness")}, "vidA.txt, line 1: expected the EXPR header"),
])
def test_affwild2_bad_lines_name_file_and_row(tmp_path, capsys, kwargs, message):
    make_affwild2(tmp_path / "raw", **kwargs)
    code, _, err = run(affwild2, ["--root", tmp_path / "raw", "--out", tmp_path / "out"], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out" / "train.csv").exists()


def test_affwild2_skip_bad_lines_counts_them(tmp_path, capsys):
    make_affwild2(tmp_path / "raw", va_line=("vidA", 2, "abc,0.1"), expr_line=("vidB_left", 1, "x"))
    out = tmp_path / "out"
    code, _, err = run(affwild2, ["--root", tmp_path / "raw", "--out", out, "--skip-bad-lines"], capsys)
    assert code == 0, err
    dropped = meta(out)["dropped"]
    assert dropped[affwild2.DROP_BAD_VA_LINE] == 1 and dropped[affwild2.DROP_BAD_EXPR_LINE] == 1
    assert "vidA/00002.jpg" not in load_table(out / "train.csv", 7, image_root=image_root(out)).paths


def test_affwild2_argument_errors(tmp_path, capsys):
    make_affwild2(tmp_path / "raw")
    code, _, err = run(affwild2, ["--root", tmp_path / "raw", "--out", tmp_path / "o", "--labels", "va-gmm"], capsys)
    assert code == 2 and "--labels va-gmm needs --affectnet DIR" in err
    assert affwild2.main(["--root", str(tmp_path / "raw"), "--out", str(tmp_path / "o"), "--every", "0"]) == 2
    assert "argument --every: must be >= 1" in capsys.readouterr().err
    code, _, err = run(affwild2, ["--root", tmp_path / "nowhere", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "VA annotation folder for the train split not found" in err
    assert run(affwild2, ["--root", tmp_path / "raw", "--out", tmp_path / "o"], capsys)[0] == 0
    code, _, err = run(affwild2, ["--root", tmp_path / "raw", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "already exists" in err
