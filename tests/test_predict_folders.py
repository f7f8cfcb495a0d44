"""predict.py on folders: one CSV row per face, error rows, resuming after a kill, --force, --list, detection.

The model is a DDAF export (so the CSV has its valence/arousal columns), built on the tiny dataset and
exported without training: the tests check the plumbing against the same SavedModel, not accuracy.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import predict
from common.cli import run_main
from helpers import build_method

N_IMAGES = 203


@pytest.fixture(scope="module")
def export(tiny_dataset, tmp_path_factory):
    from engine.export import export_saved_model

    root = tmp_path_factory.mktemp("folders")
    run, model, _ = build_method(tiny_dataset, root / "run", method="ddaf")
    return export_saved_model(model, root / "saved_model", 24, run.spec.class_names, "ddaf", log=lambda *a: None)


@pytest.fixture(scope="module")
def predictor(export):
    return predict.load_predictor(export)


@pytest.fixture(autouse=True)
def load_once(export, predictor, monkeypatch, tmp_path):
    """Every command of this module loads the same SavedModel: load it once (loading itself is covered by
    tests/test_predict.py). Commands run in the test's own folder, so a default output (``predictions/``)
    never lands in the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(predict, "load_predictor", lambda path: predictor if str(path) == str(export) else
                        pytest.fail(f"unexpected model {path}"))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """N_IMAGES tiny images in nested folders (PNG and JPEG), one unreadable .jpg and one text file."""
    import cv2

    root = tmp_path_factory.mktemp("photos") / "faces"
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        folder = root / f"group{i % 3}" / ("deeper" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8)
        path = folder / f"img{i:03d}.{'png' if i % 4 else 'jpg'}"
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    (root / "group1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (root / "group2" / "notes.txt").write_text("shot list\n")
    return root, paths


def _predict(argv, capsys):
    capsys.readouterr()
    code = run_main(predict.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folder_to_one_csv_with_an_error_row(export, predictor, photo_folder, tmp_path, capsys):
    root, paths = photo_folder
    table = tmp_path / "faces.csv"
    code, out, err = _predict([root, "--run", export, "--no-detect", "--csv", table, "--batch-size", "32"], capsys)
    assert code == 2  # one photo could not be read
    broken = root / "group1" / "broken.jpg"
    assert f"error: {broken}: not a decodable image" in err
    assert f"1 of {N_IMAGES + 1} input(s) could not be read" in err
    assert "faces/s" in err and f"predicted {N_IMAGES} photo(s), {N_IMAGES} face(s)" in out
    assert not (tmp_path / "predictions").exists()  # more than 20 photos: no figures unless --figures
    frame = pd.read_csv(table)
    names = predictor.class_names
    assert list(frame.columns) == ["source", "face", "faces", "x", "y", "w", "h", "confidence", "detected",
                                   *[f"p_{n}" for n in names], "label", "valence", "arousal", "error"]
    assert len(frame) == N_IMAGES + 1 and frame["source"].is_unique
    assert set(frame["source"]) == {str(p) for p in paths} | {str(broken)}  # notes.txt ignored
    error = frame[frame["source"] == str(broken)].iloc[0]
    assert error["error"].startswith("not a decodable image") and pd.isna(error["face"])
    good = frame[frame["error"].isna()]
    assert (good["face"] == 1).all() and (good["faces"] == 1).all() and not good["detected"].any()
    probs = good[[f"p_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    assert (good["label"].to_numpy() == np.array(names)[probs.argmax(1)]).all()
    assert np.isfinite(good[["valence", "arousal"]].to_numpy()).all()
    # The rows are the serving model's outputs on each photo's centre square.
    serve = predictor.serve
    for i in (0, 101, N_IMAGES - 1):
        row = good[good["source"] == str(paths[i])].iloc[0]
        face = predict.centre_face(predict.read_photo(paths[i]))
        assert (row["x"], row["y"], row["w"], row["h"]) == face.box
        got = serve(images=face.crop[None])
        np.testing.assert_allclose(row[[f"p_{n}" for n in names]].to_numpy(float), got["probabilities"].numpy()[0],
                                   atol=2e-5)
        np.testing.assert_allclose(row[["valence", "arousal"]].to_numpy(float), got["va"].numpy()[0], atol=2e-5)

    # A rerun skips everything, the error row included, and leaves the file as it was.
    before = table.read_bytes()
    code, out, err = _predict([root, "--run", export, "--no-detect", "--csv", table], capsys)
    assert code == 0 and f"{N_IMAGES + 1} of {N_IMAGES + 1} photo(s) already there (1 as error rows)" in err
    assert table.read_bytes() == before

    # A run killed mid-batch: the last batch half written, its last line cut off. The rerun drops the cut
    # line and does the missing photos; the result is the complete CSV again.
    lines = before.split(b"\n")
    killed = b"\n".join(lines[:-20]) + b"\n" + lines[-20][:17]
    table.write_bytes(killed)
    code, out, err = _predict([root, "--run", export, "--no-detect", "--csv", table], capsys)
    assert code == 0 and "dropped 1 row(s) of an interrupted batch" in err and "19 to do" in err
    again = pd.read_csv(table)
    assert len(again) == N_IMAGES + 1 and again["source"].is_unique
    pd.testing.assert_frame_equal(again.sort_values("source").reset_index(drop=True),
                                  frame.sort_values("source").reset_index(drop=True))

    # --force starts the file again and redoes every photo (the unreadable one reported again).
    code, out, err = _predict([root, "--run", export, "--no-detect", "--csv", table, "--force"], capsys)
    assert code == 2 and "already there" not in err and f"error: {broken}" in err
    pd.testing.assert_frame_equal(pd.read_csv(table), frame)


def test_a_photo_with_some_of_its_face_rows_is_redone(export, photo_folder, tmp_path, capsys):
    """Rows of a photo are written together; a kill between them leaves a photo with fewer rows than it
    has faces, which the rerun removes and predicts again."""
    root, paths = photo_folder
    table = tmp_path / "faces.csv"
    assert _predict([paths[0], paths[1], "--run", export, "--no-detect", "--csv", table], capsys)[0] == 0
    rows = list(csv.reader(table.open()))
    header, first, second = rows
    partial = list(second)
    partial[header.index("faces")] = "2"  # the photo's first face of two; the second was never written
    with table.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header, first, partial])
    code, _, err = _predict([paths[0], paths[1], "--run", export, "--no-detect", "--csv", table], capsys)
    assert code == 0 and "1 of 2 photo(s) already there" in err and "dropped 1 row(s)" in err
    assert list(csv.reader(table.open())) == rows


def test_csv_of_something_else_is_refused(export, photo_folder, tmp_path, capsys):
    root, paths = photo_folder
    table = tmp_path / "mine.csv"
    table.write_text("name,grade\nalice,3\n")
    code, _, err = _predict([paths[0], "--run", export, "--no-detect", "--csv", table], capsys)
    assert code == 2 and "mine.csv already exists and it is not a CSV written by predict.py" in err
    assert table.read_text() == "name,grade\nalice,3\n"  # untouched
    code, _, err = _predict([root, "--run", export, "--no-detect"], capsys)
    assert code == 2 and f"{N_IMAGES + 1} photos" in err and "--csv FILE" in err


def test_list_file_and_no_figures(export, photo_folder, tmp_path, capsys):
    root, paths = photo_folder
    small = tmp_path / "small" / "inner"
    small.mkdir(parents=True)
    for name in ("b.png", "a.png"):
        shutil.copy(paths[1], small / name)
    listing = tmp_path / "photos.txt"
    listing.write_text("\n".join(str(p) for p in paths[:2]) + "\n\n" + str(small.parent) + "\n")
    table = tmp_path / "faces.csv"
    code, out, _ = _predict(["--list", listing, "--run", export, "--no-detect", "--csv", table, "--no-figures",
                             "--out-dir", tmp_path / "figs"], capsys)
    assert code == 0
    sources = pd.read_csv(table)["source"].tolist()
    assert sources == [str(p) for p in paths[:2]] + [str(small / "a.png"), str(small / "b.png")]
    assert not (tmp_path / "figs").exists() and "face 1 (x=" not in out  # 4 photos would have figures by default
    code, _, err = _predict(["--list", tmp_path / "nowhere.txt", "--run", export], capsys)
    assert code == 2 and "--list" in err and "does not exist" in err


def test_detection_on_real_photos_matches_one_photo_at_a_time(export, tmp_path, capsys):
    """Batched MTCNN (equal sizes share a call) finds exactly the faces a call on each photo alone finds."""
    pytest.importorskip("mtcnn")
    import cv2
    import matplotlib.cbook

    import fer_api
    from preprocess.align import detect_faces

    grace = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    folder = tmp_path / "shots"
    folder.mkdir()
    shutil.copy(grace, folder / "a.jpg")
    image = predict.read_photo(grace)
    cv2.imwrite(str(folder / "b.jpg"), cv2.cvtColor(image[:, ::-1], cv2.COLOR_RGB2BGR))  # same size, mirrored
    cv2.imwrite(str(folder / "c.png"), cv2.cvtColor(cv2.resize(image, (400, 470)), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "empty.png"), np.full((200, 300, 3), 128, np.uint8))  # no face: centre square
    table = tmp_path / "faces.csv"
    code, _, _ = _predict([folder, "--run", export, "--csv", table, "--no-figures"], capsys)
    assert code == 0
    frame = pd.read_csv(table).set_index("source")
    for name in ("a.jpg", "b.jpg", "c.png"):
        row = frame.loc[str(folder / name)]
        alone = detect_faces(predict.read_photo(folder / name), 0.9, detector=fer_api.load_detector())
        assert row["detected"] and row["faces"] == len(alone) == 1
        assert (row["x"], row["y"], row["w"], row["h"]) == alone[0]["box"]
        assert row["confidence"] == pytest.approx(alone[0]["confidence"], abs=1e-5)
    # --min-face above MTCNN's 20 px: the photo is shrunk for the detector, the boxes scaled back.
    wide = fer_api.detect_batch([predict.read_photo(grace)], 0.9, min_face=40)[0]
    narrow = frame.loc[str(folder / "a.jpg")]
    assert len(wide) == 1 and np.abs(np.subtract(wide[0]["box"], narrow[["x", "y", "w", "h"]].to_numpy(int))).max() <= 4
    empty = frame.loc[str(folder / "empty.png")]
    assert not empty["detected"] and pd.isna(empty["confidence"]) and (empty["x"], empty["w"]) == (50, 200)


def test_throughput_benchmark_photos_and_report(tmp_path):
    """benchmarks.predict_throughput: the photos it makes (real faces, the documented frames, reused or
    remade) and its report's figures (the timed run itself takes minutes; BENCHMARKS.md has one)."""
    pytest.importorskip("mtcnn")
    pytest.importorskip("skimage")
    import argparse

    from benchmarks import predict_throughput as bench

    made = bench.make_photos(tmp_path / "photos", 6)
    assert len(made) == 6 and all(p.suffix == ".jpg" and p.parent.parent == tmp_path / "photos" for p in made)
    sizes = {predict.read_photo(p).shape[1::-1] for p in made}
    assert sizes <= set(bench.FRAMES) | {(960, 540)} and (960, 540) in sizes  # photo 4 is the two-face tile
    assert bench.make_photos(tmp_path / "photos", 6) == sorted(made)  # same settings: reused
    assert len(bench.make_photos(tmp_path / "photos", 3)) == 3  # other settings: remade, nothing stale
    result = {"batch": 16, "photos": 3, "faces": 4, "wall_s": 10.0, "faces_per_s": 0.4, "detect_s": 6.0,
              "model_s": 2.5, "outside_share": 0.15, "process_s": 20.0, "process_cpu_s": 15.0, "command": "python x"}
    args = argparse.Namespace(argv=["--out", "o"], run=None, backbone="resnet50", image_size=224)
    text = bench.markdown(args, [result], (1.0, 2.0), 3)
    assert "| 16 | 3 | 4 | 10.0 | 0.4 | 6.0 | 2.5 | 15.0 % | 20.0 | 15 |" in text and "goal ≤ 15 %: met" in text
