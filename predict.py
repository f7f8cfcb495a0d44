"""Predict the facial expression of every face in photos, videos or a webcam with an exported model.

    python predict.py PHOTO [PHOTO ...] --run RUN [--out-dir predictions] [--json FILE]
    python predict.py clip.mp4 --run RUN [--detect-every 5] [--smooth 0.3]     # any video OpenCV reads
    python predict.py --camera 0 --run RUN [--max-frames 600] [--show]          # live, same per-frame code

For each photo:

1. faces are detected with MTCNN (``preprocess.align.detect_faces``; ``mtcnn`` is in requirements.txt);
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
A model trained on the synthetic benchmark is a demonstration: it does not transfer to real faces, and
predict.py says so when it loads one.

Videos and cameras: faces are detected every ``--detect-every`` frames and tracked in between (box
overlap), each face's prediction is smoothed over time (exponential moving average, ``--smooth``), and
``OUT_DIR/<stem>_annotated.mp4`` (boxes and smoothed labels), ``<stem>_frames.csv`` (one row per face
per frame: raw and smoothed probabilities, and valence/arousal for models that predict it, e.g. DDAF)
and ``<stem>_timeline.png`` (each face's smoothed probabilities and VA over time) are written.

Photos are decoded as in training (``data.images.decode_image``: EXIF orientation applied, so a phone
photo is upright; images above ``FER_MAX_IMAGE_PIXELS`` pixels, default 40 megapixels, are refused).
An unreadable photo is reported as ``error: <photo>: <why>`` on stderr and the others are still
predicted; ``--json`` then lists the predicted photos under ``photos`` and the failed ones under
``errors`` (``{"photo", "error"}``), and the exit code is 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_int, probability, quiet_tensorflow, run_main
from common.errors import CheckpointError, ConfigError, DataError, WriteError

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
    from engine.export import load_export

    path = Path(path)
    if (path / "saved_model" / "saved_model.pb").is_file():
        path = path / "saved_model"
    if not (path / "saved_model.pb").is_file():
        raise CheckpointError(f"--run {path}: no SavedModel there (export one with `python export.py` or train "
                              "without --no-export)")
    serve, meta = load_export(path)
    if meta.get("synthetic"):
        print("warning: this model was trained on the toolkit's synthetic benchmark (rendered cartoon faces): it "
              "does not transfer to photographs of real faces, and its predictions on them are meaningless. "
              "Train on a real dataset (README, Real datasets) for real use.", file=sys.stderr)
    return serve, meta


def classify(serve, crops: np.ndarray) -> np.ndarray:
    return classify_all(serve, crops)[0]


def classify_all(serve, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(probabilities (n, C), valence–arousal (n, 2) or None) of aligned uint8 face crops."""
    import tensorflow as tf

    out = serve(images=tf.constant(crops, tf.uint8))
    return out["probabilities"].numpy(), (out["va"].numpy() if "va" in out else None)


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
    from common.io import check_output_file
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
    check_output_file(out, args.force, flag="--out-dir")
    title = f"{path.name}: " + ("centre crop (no face detection)" if faces[0].confidence is None else
                                f"{len(faces)} face(s) (MTCNN)")
    save_png(annotated_figure(image, faces, names, title), out)
    print(f"  wrote {out}")
    return {"photo": str(path), "note": note, "annotated": str(out), "detected": faces[0].confidence is not None,
            "faces": [{"box": list(f.box), "confidence": f.confidence, "label": names[int(np.argmax(f.probabilities))],
                       "probabilities": {n: float(p) for n, p in zip(names, f.probabilities)}} for f in faces]}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="PHOTO_OR_VIDEO",
                   help="JPEG/PNG photos and/or videos (any format OpenCV reads: .mp4, .avi, .mov, .mkv, ...)")
    p.add_argument("--run", "--model", dest="run", required=True,
                   help="run directory with saved_model/ (or a SavedModel directory)")
    p.add_argument("--camera", type=nonnegative_int, help="read webcam N live instead of files (as a video)")
    p.add_argument("--out-dir", default="predictions", help="where the outputs go (default ./predictions)")
    p.add_argument("--json", help="also write every face's distribution to this JSON file (photos)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs this toolkit did not write")
    p.add_argument("--min-confidence", type=probability, default=0.9,
                   help="MTCNN face confidence threshold (default 0.9)")
    p.add_argument("--no-detect", action="store_true", help="skip face detection: use the centre square crop")
    g = p.add_argument_group("videos and cameras")
    g.add_argument("--detect-every", type=positive_int, default=5,
                   help="run the face detector every N frames; faces are tracked in between (default 5)")
    g.add_argument("--smooth", type=probability, default=0.3,
                   help="weight of the newest frame in the moving average of each face's prediction "
                        "(1 = no smoothing; default 0.3)")
    g.add_argument("--max-frames", type=positive_int, help="stop after N frames (a camera runs until Ctrl-C)")
    g.add_argument("--show", action="store_true", help="also show the annotated frames in a window (needs a display)")
    return p


# ------------------------------------------------------------------------------------- videos, cameras

def detect_all(frame: np.ndarray, args) -> list[dict]:
    """Detections of one frame as tracker input (the centre square when detection is off or unavailable)."""
    if not args.no_detect:
        try:
            from preprocess.align import detect_faces

            return [{"box": tuple(float(v) for v in d["box"]), "keypoints": d["keypoints"],
                     "confidence": float(d["confidence"])} for d in detect_faces(frame, args.min_confidence)]
        except (ImportError, ConfigError):
            args.no_detect = True  # mtcnn missing: say it once, then the centre crop for every frame
            print("warning: face detection unavailable (install mtcnn); the centre square is used as the face",
                  file=sys.stderr)
    face = centre_face(frame)
    return [{"box": face.box, "keypoints": None, "confidence": None}]


def track_crop(frame: np.ndarray, track) -> np.ndarray:
    """The track's face as the model's input crop: aligned on its landmarks, else the box's square."""
    import cv2

    if track.keypoints is not None:
        from preprocess.align import align_face

        return align_face(frame, track.keypoints, ALIGN_SIZE)
    x, y, w, h = (int(round(v)) for v in track.box)
    crop = frame[max(y, 0):y + h, max(x, 0):x + w]
    return cv2.resize(crop, (ALIGN_SIZE, ALIGN_SIZE), interpolation=cv2.INTER_AREA)


def predict_stream(source, serve, meta, args) -> dict:
    """A video file (``source`` a path) or a webcam (``source`` an int): track, classify, smooth, write.

    Every frame goes through the same per-frame code: faces detected every ``--detect-every`` frames and
    tracked in between (:class:`tools.video.Tracker`), each track's aligned crop classified by the
    SavedModel, its prediction smoothed over time; the annotated video, the per-frame CSV and the
    timeline plot go to ``--out-dir`` as ``<stem>_annotated.mp4``, ``<stem>_frames.csv``,
    ``<stem>_timeline.png``.
    """
    import cv2

    from common.io import check_output_file
    from tools.video import Tracker, VideoOutputs

    camera = isinstance(source, int)
    name = f"camera{source}" if camera else Path(source).stem
    if not camera and not Path(source).is_file():
        raise DataError(f"{source}: file does not exist")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise DataError(f"{source}: OpenCV cannot open it as a video" + (" (no such camera?)" if camera else ""))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    ok, first = capture.read()
    if not ok:
        capture.release()
        raise DataError(f"{source}: no frame could be read (empty or unsupported video)")
    stem = Path(args.out_dir) / name
    for suffix in ("_annotated.mp4", "_frames.csv", "_timeline.png"):
        check_output_file(stem.with_name(stem.name + suffix), args.force, flag="--out-dir")
    names = meta["class_names"]
    has_va = "va" in (getattr(serve, "structured_outputs", None) or {})
    tracker = Tracker(alpha=args.smooth)
    outputs = None
    frame_index, faces_seen = 0, 0
    bgr = first
    try:
        while ok:
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if outputs is None:
                outputs = VideoOutputs(stem, fps, (frame.shape[1], frame.shape[0]), names, has_va=has_va)
            if frame_index % args.detect_every == 0:
                tracker.update(detect_all(frame, args))
            tracks = list(tracker.tracks)
            shown = []
            if tracks:
                probabilities, va = classify_all(serve, np.stack([track_crop(frame, t) for t in tracks]))
                for i, track in enumerate(tracks):
                    tracker.smooth(track, frame_index, probabilities[i], None if va is None else va[i])
                    shown.append((track, probabilities[i], None if va is None else va[i]))
                faces_seen += len(tracks)
            outputs.write_frame(frame, frame_index, shown)
            if args.show:
                cv2.imshow(name, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    break
            frame_index += 1
            if args.max_frames and frame_index >= args.max_frames:
                break
            ok, bgr = capture.read()
    except KeyboardInterrupt:
        if not camera:
            raise
    finally:
        capture.release()
        if outputs is not None:
            outputs.close(tracker.all_tracks())
    where = f"camera {source}" if camera else source
    print(f"{where}: {frame_index} frame(s), {len(tracker.all_tracks())} face track(s), {faces_seen} face "
          f"prediction(s) at {fps:g} frames/s; wrote {outputs.video_path}, {outputs.csv_path}, {outputs.plot_path}")
    return {"video": str(source), "frames": frame_index, "tracks": len(tracker.all_tracks()),
            "annotated": str(outputs.video_path), "csv": str(outputs.csv_path), "timeline": str(outputs.plot_path)}


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif")


def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.inputs and args.camera is None:
        raise ConfigError("give photos or videos to predict, or --camera N")
    from common.io import check_output_file

    if args.json:
        check_output_file(args.json, args.force, flag="--json")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise WriteError(f"--out-dir {args.out_dir} is a file, not a folder; give a folder for the annotated outputs "
                         "(nothing was changed)")
    quiet_tensorflow()
    serve, meta = load_model(args.run)
    results, errors = [], []
    if args.camera is not None:
        results.append(predict_stream(args.camera, serve, meta, args))
    for item in args.inputs:
        try:
            if is_video(item):
                results.append(predict_stream(item, serve, meta, args))
            else:
                results.append(predict_photo(item, serve, meta, args))
        except DataError as exc:  # an unreadable photo or video: say so, go on with the others
            print(f"error: {exc}", file=sys.stderr)
            errors.append({"photo": str(item), "error": str(exc)})
    if args.json:
        from common.io import atomic_write_json, stamp

        atomic_write_json(args.json, stamp({"model": str(args.run), "class_names": meta["class_names"],
                                            "photos": results, "errors": errors}, "predict.py"))
    if errors:
        total = len(args.inputs) + (args.camera is not None)
        print(f"error: {len(errors)} of {total} input(s) could not be read "
              f"({', '.join(e['photo'] for e in errors[:5])}{', ...' if len(errors) > 5 else ''}); "
              f"{len(results)} predicted", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
