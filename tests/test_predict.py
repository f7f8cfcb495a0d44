"""predict.py on real photos shipped with installed packages, with and without face detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import predict
from helpers import tiny_run_config, train_run


@pytest.fixture(scope="module")
def saved_model(tiny_dataset, tmp_path_factory):
    cfg = tiny_run_config(tiny_dataset, tmp_path_factory.mktemp("predict") / "run", export=True)
    return train_run(cfg).run_dir / "saved_model"


@pytest.fixture(scope="module")
def grace_hopper():
    import matplotlib.cbook

    path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    assert path.is_file()
    return path


def _run(argv, tmp_path, capsys):
    out_json = tmp_path / "pred.json"
    assert predict.main([*argv, "--out-dir", str(tmp_path / "out"), "--json", str(out_json)]) == 0
    return json.loads(out_json.read_text()), capsys.readouterr().out


def _check_result(result, names):
    import cv2

    image = cv2.imread(result["annotated"], cv2.IMREAD_COLOR)
    assert image is not None and min(image.shape[:2]) > 200 and image.std() > 5
    for face in result["faces"]:
        probs = np.array([face["probabilities"][n] for n in names])
        assert probs.min() >= 0 and probs.sum() == pytest.approx(1, abs=1e-5)
        assert face["label"] == names[int(probs.argmax())]


def test_detected_face_on_grace_hopper(saved_model, grace_hopper, tmp_path, capsys):
    pytest.importorskip("mtcnn")
    report, out = _run([str(grace_hopper), "--run", str(saved_model)], tmp_path, capsys)
    result = report["photos"][0]
    assert result["detected"] and len(result["faces"]) == 1
    x, y, w, h = result["faces"][0]["box"]
    assert 100 < x + w / 2 < 420 and 50 < y + h / 2 < 420 and 80 < w < 400  # the face, not the whole 512x600 photo
    assert result["faces"][0]["confidence"] > 0.9
    assert "detected by MTCNN" in out and "face 1" in out
    _check_result(result, report["class_names"])


def test_without_mtcnn_the_centre_crop_is_used_and_said(saved_model, grace_hopper, tmp_path, capsys, monkeypatch):
    import fer_api
    from preprocess.common import OptionalDependencyError

    def missing(*_args, **_kwargs):
        raise OptionalDependencyError("face detection needs the optional package 'mtcnn' (import failed)")

    monkeypatch.setattr(fer_api, "load_detector", missing)
    report, out = _run([str(grace_hopper), "--run", str(saved_model.parent)], tmp_path, capsys)  # run dir works too
    result = report["photos"][0]
    assert not result["detected"] and result["faces"][0]["box"] == [0, 44, 512, 512]  # 512x600: centre square
    assert "face detection unavailable" in out and "centre square crop" in out
    _check_result(result, report["class_names"])


def test_fallback_matches_the_serving_model_on_the_crop(saved_model, grace_hopper, tmp_path, capsys):
    import tensorflow as tf

    report, _ = _run([str(grace_hopper), "--run", str(saved_model), "--no-detect"], tmp_path, capsys)
    face = predict.centre_face(predict.read_photo(grace_hopper))
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    expected = serve(images=tf.constant(face.crop[None]))["probabilities"].numpy()[0]
    got = np.array([report["photos"][0]["faces"][0]["probabilities"][n] for n in report["class_names"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_astronaut(saved_model, tmp_path, capsys):
    data = pytest.importorskip("skimage.data")
    import cv2

    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    report, _ = _run([str(path), "--run", str(saved_model)], tmp_path, capsys)
    _check_result(report["photos"][0], report["class_names"])


def test_bad_inputs_are_user_errors(saved_model, tmp_path, capsys):
    from common.cli import run_main

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert run_main(predict.main, [str(broken), "--run", str(saved_model), "--out-dir", str(tmp_path)]) == 2
    assert "broken.jpg: not a decodable image" in capsys.readouterr().err
    assert run_main(predict.main, [str(broken), "--run", str(tmp_path)]) == 2
    assert "no SavedModel" in capsys.readouterr().err


def test_several_photos_report_each_unreadable_one_and_predict_the_rest(saved_model, grace_hopper, tmp_path,
                                                                        capsys):
    from common.cli import run_main

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    out_json = tmp_path / "pred.json"
    argv = [str(broken), str(grace_hopper), str(missing), "--run", str(saved_model), "--no-detect",
            "--out-dir", str(tmp_path / "out"), "--json", str(out_json)]
    capsys.readouterr()
    assert run_main(predict.main, argv) == 2
    captured = capsys.readouterr()
    assert f"error: {broken}: not a decodable image" in captured.err
    assert f"error: {missing}: file does not exist" in captured.err
    assert "2 of 3 input(s) could not be read" in captured.err
    assert "face 1" in captured.out  # grace_hopper was still predicted
    report = json.loads(out_json.read_text())
    assert [r["photo"] for r in report["photos"]] == [str(grace_hopper)]
    assert [e["photo"] for e in report["errors"]] == [str(broken), str(missing)]
    assert all(e["error"].startswith(e["photo"] + ": ") for e in report["errors"])
    _check_result(report["photos"][0], report["class_names"])


def test_photo_reader_applies_exif_orientation(saved_model, grace_hopper, tmp_path, capsys):
    """A phone photo stored sideways with EXIF orientation 6 is read (and predicted) upright."""
    from PIL import Image

    upright = predict.read_photo(grace_hopper)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "rotated.jpg"
    stored.save(rotated, exif=exif, quality=95)
    got = predict.read_photo(rotated)
    assert got.shape == upright.shape
    assert np.abs(got.astype(int) - upright.astype(int)).mean() < 3
    report, _ = _run([str(rotated), "--run", str(saved_model), "--no-detect"], tmp_path, capsys)
    assert report["photos"][0]["faces"][0]["box"] == [0, 44, 512, 512]  # the upright 512x600 photo's centre square
    assert report["errors"] == []


# ------------------------------------------------------------------------------------------- videos

def _clip(path, photo, frames: int, fps: float = 10.0):
    """A short video of the photo drifting a few pixels a frame (a face that moves, as in real footage)."""
    import cv2

    image = cv2.cvtColor(predict.read_photo(photo), cv2.COLOR_RGB2BGR)[:480, :480]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (400, 400))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.ascontiguousarray(image[2 * i:2 * i + 400, 3 * i:3 * i + 400]))
    writer.release()
    return path


@pytest.mark.slow
def test_video_is_tracked_and_every_frame_is_written(saved_model, grace_hopper, tmp_path, capsys):
    import csv

    import cv2

    clip = _clip(tmp_path / "clip.mp4", grace_hopper, frames=12)
    out = tmp_path / "out"
    report, stdout = _run([str(clip), "--run", str(saved_model), "--detect-every", "4", "--smooth", "0.5"],
                          tmp_path, capsys)
    video = report["photos"][0]
    assert video["frames"] == 12 and video["tracks"] >= 1 and "12 frame(s)" in stdout
    annotated = cv2.VideoCapture(video["annotated"])
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 12  # frames out = frames in
    annotated.release()
    rows = list(csv.DictReader(open(out / "clip_frames.csv")))
    assert sorted({int(r["frame"]) for r in rows}) == list(range(12))  # one face in every frame
    names = report["class_names"]
    track = [r for r in rows if r["track"] == rows[0]["track"]]
    raw = np.array([[float(r[f"p_{n}"]) for n in names] for r in track])
    smooth = np.array([[float(r[f"p_smoothed_{n}"]) for n in names] for r in track])
    assert np.allclose(raw.sum(1), 1, atol=1e-4) and np.allclose(smooth.sum(1), 1, atol=1e-4)
    expected = raw[0]
    for t in range(1, len(raw)):  # the exponential moving average, alpha = --smooth
        expected = 0.5 * raw[t] + 0.5 * expected
        assert np.allclose(smooth[t], expected, atol=1e-5)
    assert cv2.imread(str(out / "clip_timeline.png")) is not None
    assert not list(out.glob(".*partial*"))  # temporaries renamed into place
    # A rerun replaces its own outputs; a user's CSV of the same name is refused.
    _run([str(clip), "--run", str(saved_model), "--no-detect"], tmp_path, capsys)
    (out / "clip_frames.csv").write_text("my,own\n1,2\n")
    with pytest.raises(Exception, match="not written by this toolkit"):
        predict.main([str(clip), "--run", str(saved_model), "--no-detect", "--out-dir", str(out)])


def test_camera_uses_the_video_code(saved_model, grace_hopper, tmp_path, capsys, monkeypatch):
    """``--camera N`` goes through the same per-frame code as a file, stopping at --max-frames."""
    import cv2

    clip = _clip(tmp_path / "cam.mp4", grace_hopper, frames=8)
    real_capture = cv2.VideoCapture
    opened = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda source: opened.append(source) or real_capture(str(clip)))
    out = tmp_path / "out"
    assert predict.main(["--camera", "0", "--run", str(saved_model), "--no-detect", "--max-frames", "5",
                         "--out-dir", str(out)]) == 0
    assert opened == [0]
    annotated = real_capture(str(out / "camera0_annotated.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert "camera 0: 5 frame(s)" in capsys.readouterr().out
