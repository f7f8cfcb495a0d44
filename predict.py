"""Predict the facial expression of every face in photos with an exported model.

    python predict.py PHOTO [PHOTO ...] --run RUN [--out-dir predictions] [--json FILE]

For each photo:

1. faces are detected with MTCNN (``preprocess.align.detect_faces``; the optional ``mtcnn`` package);
2. each face is aligned to the ArcFace 5-point template at 112 px (``preprocess.align.align_face``),
   the alignment ``python -m preprocess.align`` applies to raw photos before training;
3. the SavedModel (``train.py`` / ``export.py`` output; resizing and normalisation are inside it)
   gives the class distribution, printed per face, most likely class first;
4. ``OUT_DIR/<photo stem>_emotions.png`` shows the photo with numbered face boxes and, per face, the
   aligned crop and a bar chart of the distribution.

When ``mtcnn`` is not installed (or with ``--no-detect``, or when no face is found) the centre square
of the photo is used as the single face, and the output says so: a tightly cropped face photo still
gives a meaningful answer, a wide shot will not.

``--run`` (alias ``--model``) takes a run directory holding ``saved_model/`` or a SavedModel directory.

Photos are decoded as in training (``data.images.decode_image``: EXIF orientation applied, so a phone
photo is upright; images above ``FER_MAX_IMAGE_PIXELS`` pixels, default 40 megapixels, are refused).
An unreadable photo is reported as ``error: <photo>: <why>`` on stderr and the others are still
predicted; ``--json`` then lists the predicted photos under ``photos`` and the failed ones under
``errors`` (``{"photo", "error"}``), and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.cli import quiet_tensorflow, run_main
from common.errors import CheckpointError, ConfigError, DataError

ALIGN_SIZE = 112  # side of the ArcFace template crop (preprocess.align default)


@dataclass
class Face:
    crop: np.ndarray  # aligned uint8 RGB (ALIGN_SIZE, ALIGN_SIZE, 3)
    box: tuple  # (x, y, w, h) in photo pixels
    confidence: float | None  # detector confidence (None for the centre-crop fallback)
    probabilities: np.ndarray = field(default=None)  # (C,)


# --------------------------------------------------------------------------------------- the model

def load_model(path):
    """(serving function, export metadata) from a SavedModel directory or a run directory."""
    import tensorflow as tf

    path = Path(path)
    if (path / "saved_model" / "saved_model.pb").is_file():
        path = path / "saved_model"
    if not (path / "saved_model.pb").is_file():
        raise CheckpointError(f"--run {path}: no SavedModel there (export one with `python export.py` or train "
                              "without --no-export)")
    meta_path = path / "fer_export.json"
    if not meta_path.is_file():
        raise CheckpointError(f"--run {path}: fer_export.json missing (not a FER toolkit export)")
    meta = json.loads(meta_path.read_text())
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return serve, meta


def classify(serve, crops: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return serve(images=tf.constant(crops, tf.uint8))["probabilities"].numpy()


# --------------------------------------------------------------------------------------- the faces

def read_photo(path) -> np.ndarray:
    """The photo as upright uint8 RGB: the training pipeline's decoder (``data.images.decode_image``:
    EXIF orientation applied, pixel limit ``FER_MAX_IMAGE_PIXELS``). DataError ``<photo>: <why>``."""
    from data.images import ImageDecodeError, decode_image

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return decode_image(data)
    except ImageDecodeError as exc:
        raise DataError(f"{path}: not a decodable image: {exc}") from None


def centre_face(image: np.ndarray) -> Face:
    """The centre square of the photo, resized to ALIGN_SIZE: the fallback 'face'."""
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = cv2.resize(image[y:y + side, x:x + side], (ALIGN_SIZE, ALIGN_SIZE), interpolation=cv2.INTER_AREA)
    return Face(crop=crop, box=(x, y, side, side), confidence=None)


def find_faces(image: np.ndarray, min_confidence: float, detect: bool) -> tuple[list[Face], str]:
    """Detected and aligned faces, or the centre-crop fallback; plus a note on how they were found."""
    if not detect:
        return [centre_face(image)], ("face detection off (--no-detect): whole image (centre square crop) used as "
                                      "one face")
    try:
        from preprocess.align import align_face, detect_faces

        detections = detect_faces(image, min_confidence)
    except (ImportError, ConfigError) as exc:  # OptionalDependencyError is a ConfigError
        reason = str(exc).split(";")[0]
        return [centre_face(image)], (f"face detection unavailable ({reason}): whole image (centre square crop) used "
                                      "as one face; install `mtcnn` for detection")
    if not detections:
        return [centre_face(image)], (f"no face found (MTCNN, confidence >= {min_confidence:g}): whole image "
                                      "(centre square crop) used as one face")
    faces = [Face(crop=align_face(image, d["keypoints"], ALIGN_SIZE), box=tuple(int(v) for v in d["box"]),
                  confidence=float(d["confidence"])) for d in detections]
    return faces, f"{len(faces)} face(s) detected by MTCNN and aligned to the 5-point template"


# -------------------------------------------------------------------------------------- the figure

def annotated_figure(image, faces: list[Face], class_names, title: str, max_faces: int = 6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec
    from matplotlib.patches import Rectangle

    shown = faces[:max_faces]
    rows = max(len(shown), 3)  # at least 3 slots so a single face's bars stay compact
    h, w = image.shape[:2]
    photo_w = 5.0
    fig = plt.figure(figsize=(photo_w + 5.2, max(photo_w * h / w, 1.9 * rows) + 0.6))
    grid = GridSpec(rows, 3, figure=fig, width_ratios=[photo_w, 1.6, 3.0], wspace=0.3, hspace=0.5)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for i, face in enumerate(faces, 1):
        x, y, bw, bh = face.box
        best = int(np.argmax(face.probabilities))
        dashed = face.confidence is None
        ax.add_patch(Rectangle((x, y), bw, bh, fill=False, lw=2, ls="--" if dashed else "-", color="#E69F00"))
        ax.text(x + 3, max(y - 6, 10), f"{i}: {class_names[best]} {100 * face.probabilities[best]:.0f}%",
                color="black", fontsize=9, bbox={"facecolor": "#E69F00", "alpha": 0.9, "pad": 1.5, "lw": 0})
    ax.set_title(title, fontsize=9)
    ys = np.arange(len(class_names))
    for i, face in enumerate(shown):
        crop_ax = fig.add_subplot(grid[i, 1])
        crop_ax.imshow(face.crop)
        crop_ax.set_xticks([])
        crop_ax.set_yticks([])
        crop_ax.set_title(f"face {i + 1}" + ("" if face.confidence is None else f" ({face.confidence:.2f})"),
                          fontsize=8)
        bar_ax = fig.add_subplot(grid[i, 2])
        best = int(np.argmax(face.probabilities))
        colors = ["#0072B2" if c == best else "#9ecae1" for c in range(len(class_names))]
        bar_ax.barh(ys, face.probabilities, color=colors)
        bar_ax.set_yticks(ys)
        bar_ax.set_yticklabels(class_names, fontsize=7.5)
        bar_ax.invert_yaxis()
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=7)
        bar_ax.grid(axis="x", alpha=0.3)
        for y, p in zip(ys, face.probabilities):
            bar_ax.text(min(p + 0.02, 0.85), y, f"{100 * p:.0f}%", va="center", fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------ the CLI

def format_distribution(probabilities, class_names) -> str:
    order = np.argsort(-probabilities, kind="mergesort")
    return "  ".join(f"{class_names[c]} {100 * probabilities[c]:.1f}%" for c in order)


def predict_photo(path, serve, meta, args) -> dict:
    from tools.figures import save_png

    image = read_photo(path)
    faces, note = find_faces(image, args.min_confidence, not args.no_detect)
    probabilities = classify(serve, np.stack([f.crop for f in faces]))
    names = meta["class_names"]
    for face, p in zip(faces, probabilities):
        face.probabilities = p
    path = Path(path)
    print(f"{path}: {note}")
    for i, face in enumerate(faces, 1):
        where = "x={} y={} w={} h={}".format(*face.box)
        conf = "" if face.confidence is None else f", detector confidence {face.confidence:.3f}"
        print(f"  face {i} ({where}{conf}): {format_distribution(face.probabilities, names)}")
    out = Path(args.out_dir) / f"{path.stem}_emotions.png"
    title = f"{path.name}: " + ("centre crop (no face detection)" if faces[0].confidence is None else
                                f"{len(faces)} face(s) (MTCNN)")
    save_png(annotated_figure(image, faces, names, title), out)
    print(f"  wrote {out}")
    return {"photo": str(path), "note": note, "annotated": str(out), "detected": faces[0].confidence is not None,
            "faces": [{"box": list(f.box), "confidence": f.confidence, "label": names[int(np.argmax(f.probabilities))],
                       "probabilities": {n: float(p) for n, p in zip(names, f.probabilities)}} for f in faces]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="JPEG/PNG photos")
    p.add_argument("--run", "--model", dest="run", required=True,
                   help="run directory with saved_model/ (or a SavedModel directory)")
    p.add_argument("--out-dir", default="predictions", help="where the annotated images go (default ./predictions)")
    p.add_argument("--json", help="also write every face's distribution to this JSON file")
    p.add_argument("--min-confidence", type=float, default=0.9, help="MTCNN face confidence threshold (default 0.9)")
    p.add_argument("--no-detect", action="store_true", help="skip face detection: use the centre square crop")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    serve, meta = load_model(args.run)
    results, errors = [], []
    for photo in args.photos:
        try:
            results.append(predict_photo(photo, serve, meta, args))
        except DataError as exc:  # an unreadable photo: say so, go on with the others
            print(f"error: {exc}", file=sys.stderr)
            errors.append({"photo": str(photo), "error": str(exc)})
    if args.json:
        from common.io import atomic_write_json

        atomic_write_json(args.json, {"model": str(args.run), "class_names": meta["class_names"], "photos": results,
                                      "errors": errors})
    if errors:
        print(f"error: {len(errors)} of {len(args.photos)} photo(s) could not be read "
              f"({', '.join(e['photo'] for e in errors[:5])}{', ...' if len(errors) > 5 else ''}); "
              f"{len(results)} predicted", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
