"""Face detection (MTCNN, optional) and 5-point similarity alignment to the ArcFace template.

* :func:`detect_faces` runs the ``mtcnn`` package (Keras 3 port that ships its weights; optional:
  ``pip install -r requirements-preprocess.txt``), imported on first use.
* :func:`align_face` warps a face so its eyes, nose tip and mouth corners land on the ArcFace 112x112
  template (scaled to ``output_size``) with the least-squares similarity transform (Umeyama 1991:
  rotation + uniform scale + translation, no shear, so the face keeps its shape).
* :func:`align_from_landmarks68` does the same from 68-point iBUG landmarks (AffectNet's, dlib's,
  the synthetic data's) and needs no optional package.

Keypoint names follow the image, not the subject: ``left_eye`` is the eye with the smaller x.

Usage::

    python -m preprocess.align --images RAW_PHOTOS --out ALIGNED [--size 112] [--min-confidence 0.9]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.cli import ArgumentParser, positive_int, probability, run_command
from common.progress import Progress
from preprocess.common import (add_force_argument, check_can_write, list_images, require_optional,
                               write_image)

KEYPOINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# ArcFace / InsightFace 112x112 reference points, in KEYPOINT_NAMES order.
ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)

_DETECTOR = None


def template(output_size: int = 112) -> np.ndarray:
    return ARCFACE_TEMPLATE_112 * (float(output_size) / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the least-squares similarity mapping ``src`` (N, 2) onto ``dst`` (N, 2) (Umeyama)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise DataError(f"similarity transform needs two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    var_src = (src_c ** 2).sum() / len(src)
    if var_src <= 1e-12:
        raise DataError("keypoints are all at one point; cannot align")
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0  # no reflections
    rotation = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_src)
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def keypoints_array(keypoints) -> np.ndarray:
    """(5, 2) array in KEYPOINT_NAMES order from a dict (MTCNN style) or an array-like."""
    if isinstance(keypoints, dict):
        missing = [k for k in KEYPOINT_NAMES if k not in keypoints]
        if missing:
            raise DataError(f"keypoints lack {', '.join(missing)}; expected {', '.join(KEYPOINT_NAMES)}")
        points = np.asarray([keypoints[k] for k in KEYPOINT_NAMES], np.float64)
    else:
        points = np.asarray(keypoints, np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise DataError(f"expected 5 finite (x, y) keypoints, got shape {points.shape}")
    return points


def transform_points(matrix: np.ndarray, points) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face(image_rgb: np.ndarray, keypoints, output_size: int = 112, border: str = "constant",
               return_matrix: bool = False):
    """Warp ``image_rgb`` so the 5 keypoints match the template; returns the ``output_size``² crop
    (and the 2x3 matrix with ``return_matrix``)."""
    import cv2

    points = keypoints_array(keypoints)
    matrix = similarity_transform(points, template(output_size))
    mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
    aligned = cv2.warpAffine(np.asarray(image_rgb), matrix, (int(output_size), int(output_size)),
                             flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=0)
    return (aligned, matrix) if return_matrix else aligned


def five_points_from_68(landmarks68) -> np.ndarray:
    """Eye centres (iBUG 36-41, 42-47), nose tip (30) and mouth corners (48, 54) as (5, 2)."""
    points = np.asarray(landmarks68, np.float64).reshape(-1, 2)
    if points.shape != (68, 2):
        raise DataError(f"expected 68 (x, y) landmarks, got {points.shape[0]}")
    return np.stack([points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30], points[48], points[54]])


def align_from_landmarks68(image: np.ndarray, landmarks68, output_size: int = 112, border: str = "constant",
                           return_matrix: bool = False):
    """:func:`align_face` with the 5 points taken from 68-point iBUG landmarks."""
    return align_face(image, five_points_from_68(landmarks68), output_size, border, return_matrix)


def _load_detector():
    global _DETECTOR
    if _DETECTOR is None:
        mtcnn = require_optional("mtcnn", "mtcnn", "face detection")
        _DETECTOR = mtcnn.MTCNN()
    return _DETECTOR


def detect_faces(image_rgb: np.ndarray, min_confidence: float = 0.0, detector=None) -> list[dict]:
    """Faces in an RGB uint8 image, most confident first: ``dict(box=(x, y, w, h), keypoints={name: (x, y)},
    confidence)``. Uses the ``mtcnn`` package unless a ``detector`` with ``detect_faces`` is given."""
    detector = detector if detector is not None else _load_detector()
    image_rgb = np.ascontiguousarray(image_rgb)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise DataError(f"detect_faces needs an RGB image (H, W, 3), got shape {image_rgb.shape}")
    faces = []
    for face in detector.detect_faces(image_rgb):
        confidence = float(face.get("confidence", 0.0))
        if confidence < min_confidence:
            continue
        faces.append({
            "box": tuple(int(v) for v in face["box"]),
            "keypoints": {k: (float(face["keypoints"][k][0]), float(face["keypoints"][k][1])) for k in KEYPOINT_NAMES},
            "confidence": confidence,
        })
    faces.sort(key=lambda f: -f["confidence"])
    return faces


def align_folder(args, detector=None) -> str:
    import cv2

    images_dir, out_dir = Path(args.images), Path(args.out)
    if not images_dir.is_dir():
        raise DataError(f"image folder {images_dir} does not exist")
    if out_dir.resolve() == images_dir.resolve():
        raise DataError("--out must differ from --images")
    files = list_images(images_dir)
    if not files:
        raise DataError(f"{images_dir}: no image files found")
    targets = [out_dir / f.relative_to(images_dir) for f in files]
    check_can_write(targets, args.force)
    if detector is None:
        detector = _load_detector()
    no_face, unreadable, written = [], [], 0
    progress = Progress("align", len(files), unit="images")
    for source, target in zip(files, targets):
        progress.update()
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            unreadable.append(source)
            continue
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        faces = detect_faces(rgb, args.min_confidence, detector)
        if not faces:
            no_face.append(source)
            continue
        aligned = align_face(rgb, faces[0]["keypoints"], args.size)
        write_image(target, cv2.cvtColor(aligned, cv2.COLOR_RGB2BGR))
        written += 1
    progress.close()
    lines = [f"align: wrote {written} aligned {args.size}x{args.size} face(s) to {out_dir}"]
    for label, items in (("no face found (confidence >= %.2f)" % args.min_confidence, no_face),
                         ("unreadable image", unreadable)):
        if items:
            lines.append(f"skipped {len(items)} x {label}: " + ", ".join(str(p) for p in items[:5])
                         + (" ..." if len(items) > 5 else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.align", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of raw photos (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the aligned faces (same relative paths)")
    parser.add_argument("--size", type=positive_int, default=112, help="output side in pixels (default 112)")
    parser.add_argument("--min-confidence", type=probability, default=0.9, help="MTCNN confidence threshold (default 0.9)")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, align_folder, argv)


if __name__ == "__main__":
    raise SystemExit(main())
