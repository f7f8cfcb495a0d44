"""Predict the facial expression of every face in photos, folders, videos or a webcam with an exported model.

    python predict.py PHOTO [PHOTO ...] --run RUN [--out-dir predictions] [--json FILE]
    python predict.py FOLDER [FOLDER ...] --run RUN --csv faces.csv        # 50 000 photos: one row per face
    python predict.py --list photos.txt --run RUN --csv faces.csv            # one path per line
    python predict.py crops/ --run RUN --csv faces.csv --no-detect           # pre-cropped faces
    python predict.py clip.mp4 --run RUN [--detect-every 5] [--smooth 0.3]   # any video OpenCV reads
    python predict.py --camera 0 --run RUN [--max-frames 600] [--show]       # live, same per-frame code

Photos go through :class:`fer_api.Predictor` (the Python API: ``from fer_api import Predictor``), in
batches of ``--batch-size`` photos:

1. photos are decoded as in training (``data.images.decode_image``: EXIF orientation applied, so a phone
   photo is upright; images above ``FER_MAX_IMAGE_PIXELS`` pixels, default 40 megapixels, are refused)
   by threads that read ahead of the detector; a folder is searched recursively for the image files the
   decoder reads (``.jpg .jpeg .png .bmp .webp .tif .tiff``; other files are ignored);
2. faces are detected by MTCNN (``mtcnn`` ≥ 1.0, in requirements.txt; faces from ``--min-face`` px wide,
   default 20, at confidence ≥ ``--min-confidence``), one call per group of equally sized photos of the
   batch, and aligned to the ArcFace 5-point template at 112 px
   (``preprocess.align.align_face``), the alignment ``python -m preprocess.align`` applies before training;
3. every face of the batch goes through the SavedModel (``train.py`` / ``export.py`` output; resizing
   and normalisation are inside it) in one call: the class distribution, and valence/arousal for models
   that predict it (DDAF's ``va`` output).

Outputs:

* ``--csv FILE``: one row per face — ``source`` (the photo's path), ``face`` (1-based, most confident
  first), ``faces`` (in that photo), ``x y w h`` (box in upright photo pixels), ``confidence`` (MTCNN's;
  empty for the centre square), ``detected``, ``p_<class>`` per class, ``label``, ``valence arousal``
  (models with a VA head), ``error``. The file is appended to and flushed to disk after every batch, so
  a killed run leaves a valid CSV without its last, partial batch. Rerunning with the same ``--csv``
  skips every photo already in it (photos with an error row too) after dropping a cut-off last line or
  an incomplete last photo; ``--force`` starts the file again and redoes everything.
* Per-photo figures, ``OUT_DIR/<photo stem>_emotions.png`` (the photo with numbered face boxes and, per
  face, the aligned crop and a bar chart of the distribution), and each face's distribution printed on
  stdout: by default for up to FIGURE_LIMIT = 20 photos; above that only with ``--figures`` (and
  ``--no-figures`` turns them off for a few). More than 20 photos need ``--csv``, ``--json`` or
  ``--figures``, so that the predictions land somewhere.
* ``--json FILE``: the photos predicted by this run (``photos``), the failed ones (``errors``:
  ``{"photo", "error"}``) and ``timing`` (wall, detector and model seconds).
* A progress line on stderr (photos done, faces, faces/s) and a summary on stdout.

When ``mtcnn`` is not installed (or with ``--no-detect``, or when no face is found) the centre square of
the photo is used as the single face, and the output says so (``detected`` False in the CSV): a tightly
cropped face photo still gives a meaningful answer, a wide shot will not.

An unreadable photo is reported as ``error: <photo>: <why>`` on stderr, gets an error row in the CSV
(its reason in ``error``) and the others are still predicted; the exit code is then 2.

``--run`` (alias ``--model``) takes a run directory holding ``saved_model/`` or a SavedModel directory.
A model trained on the synthetic benchmark is a demonstration: it does not transfer to real faces, and
predict.py says so when it loads one.

Videos and cameras: faces are detected every ``--detect-every`` frames and tracked in between (box
overlap), each face's prediction is smoothed over time (exponential moving average, ``--smooth``), and
``OUT_DIR/<stem>_annotated.mp4`` (boxes and smoothed labels), ``<stem>_frames.csv`` (one row per face
per frame: raw and smoothed probabilities, and valence/arousal for models that predict it, e.g. DDAF)
and ``<stem>_timeline.png`` (each face's smoothed probabilities and VA over time) are written.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_int, probability, quiet_tensorflow, run_main
from common.errors import ConfigError, DataError, WriteError, write_error
from common.progress import Progress
from fer_api import (ALIGN_SIZE, DEFAULT_BATCH, DEFAULT_MIN_FACE, SYNTHETIC_WARNING, Face, InputItem, Predictor, centre_face,  # noqa: F401
                     expand_inputs, read_photo, table_columns)

FIGURE_LIMIT = 20  # photos up to which figures and per-face lines are on by default


def load_predictor(path) -> Predictor:
    """The model of ``--run`` (a run directory or a SavedModel directory); a synthetic model is named as such."""
    predictor = Predictor.load(path, "--run", warn=False)
    if predictor.synthetic:
        print(f"warning: {SYNTHETIC_WARNING}", file=sys.stderr)
    return predictor


# ----------------------------------------------------------------------------------------- the CSV

class FaceCsv:
    """``--csv``: one row per face, appended and made durable (flush + fsync) once per batch; resumable.

    A run killed mid-batch can leave a cut-off last line, or the first rows of a photo without the rest
    (every row says how many faces its photo has). Opening the file again finds both, truncates the file
    to the last complete photo, and returns the photos done (:attr:`done`).
    """

    def __init__(self, path, class_names, has_va: bool, force: bool):
        self.path = Path(path)
        self.columns = table_columns(class_names, has_va)
        self.class_names, self.has_va = class_names, has_va
        self.done: dict[str, bool] = {}  # source -> True for a photo whose row is an error
        self.dropped_lines = 0
        if self.path.is_dir():
            raise ConfigError(f"--csv {self.path} is a directory; give a file name (nothing was changed)")
        fresh = force or not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            keep = self._scan()
            if keep < self.path.stat().st_size:
                with open(self.path, "r+b") as handle:
                    handle.truncate(keep)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "w" if fresh else "a", newline="", encoding="utf-8")
            if fresh:
                self._write_text(self._format([self.columns]))
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def _scan(self) -> int:
        """Read the photos already done; the byte offset where the complete photos end."""
        data = self.path.read_bytes()
        lines = data.splitlines(keepends=True)
        consumed = [0]

        def feed():
            for line in lines:
                consumed[0] += len(line)
                yield line.decode("utf-8", errors="replace")

        records = []  # (row, byte offset of its end)
        try:
            for row in csv.reader(feed()):
                records.append((row, consumed[0]))
        except csv.Error:  # a quoted field cut off by the kill: the rows read so far stand
            pass
        if not records or records[0][0] != self.columns:
            found = records[0][0] if records else []
            hint = ("its classes differ from this model's" if found[:1] == ["source"] else
                    "it is not a CSV written by predict.py")
            raise ConfigError(f"--csv {self.path} already exists and {hint} (columns {', '.join(found[:12])}"
                              f"{', ...' if len(found) > 12 else ''}); choose another file, or pass --force to "
                              "start it again")
        if len(data) and not data.endswith(b"\n") and len(records) > 1 and records[-1][1] == len(data):
            records.pop()  # the last line was cut off mid-write
            self.dropped_lines += 1
        keep = records[0][1]
        column = {name: i for i, name in enumerate(self.columns)}
        group: list = []  # rows of the photo being read
        for number, (row, end) in enumerate(records[1:], 2):
            if len(row) != len(self.columns):
                if number - 1 == len(records) - 1:  # a last row without all its fields
                    self.dropped_lines += 1
                    break
                raise ConfigError(f"--csv {self.path}, row {number}: {len(row)} fields, expected {len(self.columns)}; "
                                  "the file was changed after predict.py wrote it (pass --force to start it again)")
            source, error = row[column["source"]], row[column["error"]]
            if error:
                self.done[source] = True
                keep, group = end, []
                continue
            group.append(row)
            try:
                faces = int(row[column["faces"]])
            except ValueError:
                raise ConfigError(f"--csv {self.path}, row {number}: faces is {row[column['faces']]!r}, not a "
                                  "number (pass --force to start it again)") from None
            if any(r[column["source"]] != source for r in group):
                raise ConfigError(f"--csv {self.path}, row {number}: {group[0][column['source']]} has "
                                  f"{len(group) - 1} of its {faces} face rows; the file was changed after "
                                  "predict.py wrote it (pass --force to start it again)")
            if len(group) == faces:
                self.done[source] = False
                keep, group = end, []
        self.dropped_lines += len(group)  # the first rows of a photo whose batch was cut off
        return keep

    def _format(self, rows) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def _write_text(self, text: str) -> None:
        try:
            self.handle.write(text)
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as exc:
            raise write_error(self.path, exc, "the rows written before are kept; rerun the same command to go on") \
                from None

    def write(self, results) -> None:
        """The rows of a batch of :class:`fer_api.PhotoResult`, in one write."""
        rows = []
        for result in results:
            for record in result.records:
                row = record.row(self.class_names, self.has_va)
                rows.append([_cell(row[c]) for c in self.columns])
        if rows:
            self._write_text(self._format(rows))

    def close(self) -> None:
        self.handle.close()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# ------------------------------------------------------------------------------------- photos, folders

class FaceProgress(Progress):
    """Photos done of the total, faces found, faces/s (stderr)."""

    faces = 0

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = f", {self.faces / elapsed:.1f} faces/s" if elapsed > 0 else ""
        return (f"{self.label}: {self.count}/{self.total} photos ({100.0 * self.count / max(self.total, 1):.0f}%), "
                f"{self.faces} faces, {elapsed:.1f} s{rate}")


def read_list(path) -> list[str]:
    """``--list FILE``: one photo or folder per line (blank lines skipped), relative to the current folder."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"--list {path}: file does not exist") from None
    except UnicodeDecodeError:
        raise DataError(f"--list {path}: not a UTF-8 text file with one path per line") from None
    except OSError as exc:
        raise DataError(f"--list {path}: cannot be read ({exc.strerror or exc})") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def figure_paths(items, out_dir) -> dict[str, Path]:
    """``OUT_DIR/<stem>_emotions.png`` per photo; a stem seen before gets ``-2``, ``-3``, ... (folders can
    hold photos of the same name)."""
    taken: dict[str, int] = {}
    out = {}
    for item in items:
        stem = Path(item.source).stem
        taken[stem] = taken.get(stem, 0) + 1
        name = stem if taken[stem] == 1 else f"{stem}-{taken[stem]}"
        out[item.source] = Path(out_dir) / f"{name}_emotions.png"
    return out


def format_distribution(probabilities, class_names) -> str:
    order = np.argsort(-probabilities, kind="mergesort")
    return "  ".join(f"{class_names[c]} {100 * probabilities[c]:.1f}%" for c in order)


def json_entry(result, predictor: Predictor) -> dict:
    """A predicted photo in the ``--json`` report."""
    return {"photo": result.source, "note": result.note, "detected": result.records[0].detected,
            "faces": [{"box": list(r.box), "confidence": r.confidence, "label": r.label,
                       "probabilities": dict(r.probabilities),
                       **({"valence": r.valence, "arousal": r.arousal} if predictor.has_va else {})}
                      for r in result.records]}


def report_photo(result, predictor: Predictor, figure: Path | None) -> dict:
    """Per-face lines on stdout and the figure (small runs); the photo's JSON entry."""
    from tools.figures import save_png

    names = predictor.class_names
    records = result.records
    print(f"{result.source}: {result.note}")
    for record in records:
        where = "x={} y={} w={} h={}".format(*record.box)
        conf = "" if record.confidence is None else f", detector confidence {record.confidence:.3f}"
        p = np.array([record.probabilities[n] for n in names])
        print(f"  face {record.face} ({where}{conf}): {format_distribution(p, names)}")
    entry = json_entry(result, predictor)
    if figure is not None and result.image is not None:
        faces = [Face(crop=r.crop, box=r.box, confidence=r.confidence,
                      probabilities=np.array([r.probabilities[n] for n in names])) for r in records]
        title = f"{Path(result.source).name}: " + ("centre crop (no face detection)" if not records[0].detected else
                                                   f"{len(faces)} face(s) (MTCNN)")
        save_png(annotated_figure(result.image, faces, names, title), figure)
        print(f"  wrote {figure}")
        entry["annotated"] = str(figure)
    return entry


def predict_photos(items: list, predictor: Predictor, args) -> tuple[list, list, dict]:
    """Photos (files, folder contents, --list entries) in batches: (JSON entries, errors, timing)."""
    from common.io import check_output_file

    detailed = args.figures if args.figures is not None else len(items) <= FIGURE_LIMIT
    if len(items) > FIGURE_LIMIT and not (args.csv or args.json or detailed):
        raise ConfigError(f"{len(items)} photos: per-photo figures are drawn for up to {FIGURE_LIMIT} photos "
                          "(--figures draws them for all); give --csv FILE (one row per face) or --json FILE to keep "
                          "the predictions (nothing was changed)")
    figures = figure_paths(items, args.out_dir) if detailed else {}
    for path in figures.values():
        check_output_file(path, args.force, flag="--out-dir")
    table = FaceCsv(args.csv, predictor.class_names, predictor.has_va, args.force) if args.csv else None
    todo = [item for item in items if table is None or item.source not in table.done]
    if table is not None and len(todo) < len(items):
        failed = sum(table.done.get(i.source, False) for i in items)
        print(f"{args.csv}: {len(items) - len(todo)} of {len(items)} photo(s) already there ({failed} as error rows), "
              f"skipped; {len(todo)} to do" + (f" (dropped {table.dropped_lines} row(s) of an interrupted batch)"
                                               if table.dropped_lines else "") + "; --force redoes all",
              file=sys.stderr)
    entries, errors = [], []
    progress = FaceProgress("predict", total=len(todo), enabled=len(todo) > 1)
    start, spent = time.perf_counter(), dict(predictor.timings)
    said_missing = False  # the detector's absence is said once
    try:
        for results in predictor.iter_results(todo, detect=not args.no_detect, min_confidence=args.min_confidence,
                                              batch_size=args.batch_size, keep_images=bool(figures),
                                              min_face=args.min_face):
            if table is not None:
                table.write(results)
            for result in results:
                if result.error:
                    print(f"error: {result.error}", file=sys.stderr)
                    errors.append({"photo": result.source, "error": result.error})
                    continue
                progress.faces += len(result.records)
                if detailed:
                    entries.append(report_photo(result, predictor, figures.get(result.source)))
                elif args.json:
                    entries.append(json_entry(result, predictor))
            progress.update(len(results))
            if predictor.detector_missing and not args.no_detect and not said_missing:
                said_missing = True
                print(f"warning: face detection unavailable ({predictor.detector_missing}); the centre square of "
                      "each photo is used as its face", file=sys.stderr)
    except KeyboardInterrupt:
        if table is None:
            raise
        print(f"\ninterrupted after {progress.count} of {len(todo)} photo(s); {args.csv} holds every batch finished so "
              "far: rerun the same command to go on", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if table is not None:
            table.close()
    progress.close()
    wall = time.perf_counter() - start
    timing = {"photos": len(todo), "faces": progress.faces, "wall_s": round(wall, 3),
              **{key: round(predictor.timings[key] - spent[key], 3) for key in ("detect_s", "model_s")}}
    if len(todo) > 1 or table is not None:
        rate = f" ({progress.faces / wall:.1f} faces/s)" if wall > 0 else ""
        print(f"predicted {len(todo) - len(errors)} photo(s), {progress.faces} face(s) in {wall:.1f} s{rate}"
              + (f"; {len(errors)} unreadable" if errors else "") + (f"; wrote {args.csv}" if table else ""))
    return entries, errors, timing


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

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="PHOTO_FOLDER_OR_VIDEO",
                   help="photos (.jpg .jpeg .png .bmp .webp .tif .tiff), folders of them (searched recursively) "
                        "and/or videos (any format OpenCV reads: .mp4, .avi, .mov, .mkv, ...)")
    p.add_argument("--list", metavar="FILE", help="also predict the photos/folders listed in FILE, one path a line")
    p.add_argument("--run", "--model", dest="run", required=True,
                   help="run directory with saved_model/ (or a SavedModel directory)")
    p.add_argument("--camera", type=nonnegative_int, help="read webcam N live instead of files (as a video)")
    p.add_argument("--csv", metavar="FILE", help="write one row per face to FILE (appended per batch; a rerun "
                                                  "skips the photos already there)")
    p.add_argument("--out-dir", default="predictions", help="where figures and video outputs go (default "
                                                             "./predictions)")
    p.add_argument("--json", help="also write every face's distribution to this JSON file (photos)")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=None,
                   help=f"draw a figure per photo and print each face (default: on for up to {FIGURE_LIMIT} photos)")
    p.add_argument("--force", action="store_true",
                   help="overwrite existing outputs this toolkit did not write; start --csv again (redo all photos)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH,
                   help=f"photos per batch of detection and classification (default {DEFAULT_BATCH})")
    p.add_argument("--min-confidence", type=probability, default=0.9,
                   help="MTCNN face confidence threshold (default 0.9)")
    p.add_argument("--min-face", type=positive_int, default=DEFAULT_MIN_FACE,
                   help=f"smallest face width MTCNN looks for, in pixels (default {DEFAULT_MIN_FACE}, MTCNN's own; "
                        "where faces are large, 40 detects about 3x faster)")
    p.add_argument("--no-detect", action="store_true",
                   help="skip face detection: the centre square of each photo is its face (pre-cropped faces)")
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

def detect_all(frame: np.ndarray, predictor: Predictor, args) -> list[dict]:
    """Detections of one frame as tracker input (the centre square when detection is off or unavailable)."""
    if not args.no_detect:
        found = predictor.detect([frame], args.min_confidence, args.min_face)
        if found is not None:
            return [{"box": tuple(float(v) for v in d["box"]), "keypoints": d["keypoints"],
                     "confidence": float(d["confidence"])} for d in found[0]]
        args.no_detect = True  # mtcnn missing: say it once, then the centre crop for every frame
        print(f"warning: face detection unavailable ({predictor.detector_missing}); the centre square is used as "
              "the face", file=sys.stderr)
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


def predict_stream(source, predictor: Predictor, args) -> dict:
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
    names, has_va = predictor.class_names, predictor.has_va
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
                tracker.update(detect_all(frame, predictor, args))
            tracks = list(tracker.tracks)
            shown = []
            if tracks:
                probabilities, va = predictor.classify(np.stack([track_crop(frame, t) for t in tracks]))
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
    inputs = list(args.inputs) + (read_list(args.list) if args.list else [])
    if not inputs and args.camera is None:
        raise ConfigError("give photos, folders or videos to predict (or --list FILE), or --camera N")
    from common.io import check_output_file

    if args.json:
        check_output_file(args.json, args.force, flag="--json")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise WriteError(f"--out-dir {args.out_dir} is a file, not a folder; give a folder for the annotated outputs "
                         "(nothing was changed)")
    videos = [item for item in inputs if is_video(item)]
    photos = expand_inputs([item for item in inputs if not is_video(item)])
    if args.csv and not photos:
        raise ConfigError("--csv collects photos; videos write their own <stem>_frames.csv in --out-dir")
    quiet_tensorflow()
    predictor = load_predictor(args.run)
    results, errors, timing = [], [], None
    if photos:
        results, errors, timing = predict_photos(photos, predictor, args)
    if args.camera is not None:
        results.append(predict_stream(args.camera, predictor, args))
    for item in videos:
        try:
            results.append(predict_stream(item, predictor, args))
        except DataError as exc:  # an unreadable video: say so, go on with the others
            print(f"error: {exc}", file=sys.stderr)
            errors.append({"photo": str(item), "error": str(exc)})
    if args.json:
        from common.io import atomic_write_json, stamp

        atomic_write_json(args.json, stamp({"model": str(args.run), "class_names": predictor.class_names,
                                            "photos": results, "errors": errors, "timing": timing}, "predict.py"))
    if errors:
        total = len(photos) + len(videos) + (args.camera is not None)
        print(f"error: {len(errors)} of {total} input(s) could not be read "
              f"({', '.join(e['photo'] for e in errors[:5])}{', ...' if len(errors) > 5 else ''}); "
              f"{total - len(errors)} predicted", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
