"""Import AffectNet (manually annotated part) into a prepared dataset directory.

Input (the official download)::

    ROOT/Manually_Annotated_Images/<subDirectory_filePath>     (or --images)
    ROOT/training.csv      -> train.csv
    ROOT/validation.csv    -> test.csv  (the usual protocol: AffectNet's validation set is the test set)

with columns ``subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
expression, valence, arousal`` (a header-less validation.csv with these 9 columns is accepted too).

Rows dropped and counted: expression 8/9/10 (None, Uncertain, No-face), Contempt (7) with ``--classes 7``,
valence/arousal outside [-1, 1] (AffectNet writes -2 for "not annotated"), duplicated paths, and missing
image files (``--strict`` makes a missing or unreadable image an error). Landmarks (68 x,y points) are kept,
moved into the output image's pixels when ``--crop-faces`` crops the face box (x, y, width, height;
plus ``--margin`` x its size on every side, optionally resized to ``--size``).

Without ``--crop-faces`` nothing is copied: ``dataset.json``'s ``image_root`` is the original image folder
and the tables' paths are ``subDirectory_filePath`` as given.

Per-image ``.npy`` layout (``--layout npy``; ``auto``, the default, picks it when ROOT has no training.csv /
validation.csv but has ``train_set/annotations/``)::

    ROOT/train_set/images/<id>.jpg          -> train.csv
    ROOT/train_set/annotations/<id>_exp.npy, <id>_val.npy, <id>_aro.npy[, <id>_lnd.npy]
    ROOT/val_set/...                        -> test.csv

Each ``.npy`` holds one value (a 0-d array; ints/floats, or strings such as ``'1'`` / ``'0.785714'`` (dtype
``<U...``) in the releases that store text), ``_lnd`` 136 values (68 x,y; numbers or strings). Files are
read with ``np.load(allow_pickle=False)``: a pickled object array is never unpickled. The images are the
release's face crops (no face boxes), so nothing is copied and ``--crop-faces`` is refused; ``image_root``
is ROOT and the paths are ``train_set/images/<id>.jpg``. The same rules as the csv layout apply
(expression 8/9/10 and Contempt with ``--classes 7`` dropped, VA outside [-1, 1] dropped, an expression
that is not an integer 0..10 or landmarks that are not 136 numbers are an error naming the file), plus,
dropped and counted: an image without its ``_exp``/``_val``/``_aro`` file (or without ``_lnd`` when the
split has any ``_lnd`` files: landmarks are then expected for every image), annotation files without an
image ("missing image file"), an ``.npy`` that cannot be read as a plain array (truncated, not an ``.npy``,
or a pickled object array). ``--strict`` turns the missing/unreadable cases into errors.

Usage::

    python -m preprocess.affectnet --root AFFECTNET --out DIR [--classes 7|8] [--crop-faces --margin 0.1 --size 256]
    python -m preprocess.affectnet --root AFFECTNET_NPY --out DIR [--classes 7|8] [--layout npy]
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from data.classes import AFFECTNET8_CLASSES
from data.schema import format_float_list
from common.cli import ArgumentParser, nonnegative_float, nonnegative_int, percent_quality, positive_int, run_command
from common.progress import Progress
from preprocess.common import (IMAGE_EXTENSIONS, ImportReport, add_force_argument, check_can_write, crop_and_resize,
                               expand_box, normalize_relpath, parse_float, parse_int, prepared_outputs,
                               require_columns, write_image, write_prepared)

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
NON_EMOTION = {8: "expression 8 (None)", 9: "expression 9 (Uncertain)", 10: "expression 10 (No-face)"}
NUM_LANDMARK_VALUES = 136


def read_affectnet_csv(path) -> pd.DataFrame:
    """Read training.csv / validation.csv as strings; a header-less 9-column file gets the official names."""
    from preprocess.common import read_raw_csv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: AffectNet annotation file not found")
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    if "subDirectory_filePath" not in first and len(first.split(",")) == len(COLUMNS):
        frame = read_raw_csv(path, "AffectNet annotation file", header=None, names=list(COLUMNS))
    else:
        frame = read_raw_csv(path, "AffectNet annotation file")
    frame.columns = [str(c).strip() for c in frame.columns]
    require_columns(frame, ("subDirectory_filePath", "expression", "valence", "arousal"), path)
    return frame


def _prepare_rows(frame, csv_path, split, args, num_classes, report, seen_paths):
    """Filter one annotation file; returns a list of dicts for the kept rows (crop done later)."""
    need_box = args.crop_faces
    if need_box:
        require_columns(frame, ("face_x", "face_y", "face_width", "face_height"), csv_path)
    has_landmarks = "facial_landmarks" in frame.columns
    kept = []
    progress = Progress(f"affectnet {split} ({Path(csv_path).name})", len(frame))
    records = frame.to_dict("records")
    for index, rec in enumerate(records):
        row = index + 1
        progress.update()
        rel = normalize_relpath(rec["subDirectory_filePath"])
        if not rel:
            raise DataError(f"{csv_path}, row {row}: column 'subDirectory_filePath' is empty")
        if rel.startswith("../") or os.path.isabs(rel):
            raise DataError(f"{csv_path}, row {row}: subDirectory_filePath {rel!r} leaves the image folder")
        expression = parse_int(rec["expression"], csv_path, row, "expression")
        if expression in NON_EMOTION:
            report.drop(split, NON_EMOTION[expression], csv_path, row, rel)
            continue
        if not 0 <= expression <= 10:
            raise DataError(f"{csv_path}, row {row}: expression {expression} is not an AffectNet code (0..10)")
        if expression >= num_classes:
            report.drop(split, "Contempt (7) in a 7-class import", csv_path, row, rel)
            continue
        valence = parse_float(rec["valence"], csv_path, row, "valence")
        arousal = parse_float(rec["arousal"], csv_path, row, "arousal")
        if not (np.isfinite(valence) and np.isfinite(arousal)) or abs(valence) > 1 or abs(arousal) > 1:
            report.drop(split, "valence/arousal not annotated or outside [-1, 1] (e.g. -2)", csv_path, row, rel)
            continue
        if rel in seen_paths:
            report.drop(split, "duplicate path", csv_path, row, rel)
            continue
        source = Path(args.images) / rel
        if not source.is_file():
            if args.strict:
                raise DataError(f"{csv_path}, row {row}: image file {source} does not exist")
            report.drop(split, "missing image file", csv_path, row, rel)
            continue
        landmarks = None
        if has_landmarks:
            text = str(rec["facial_landmarks"]).strip()
            try:
                values = np.asarray([float(v) for v in text.split(";") if v.strip() != ""], np.float64)
            except ValueError:
                raise DataError(f"{csv_path}, row {row}: facial_landmarks is not a ';'-separated list of numbers: "
                                f"{text[:40]!r}") from None
            if len(values) != NUM_LANDMARK_VALUES or not np.isfinite(values).all():
                raise DataError(f"{csv_path}, row {row}: facial_landmarks has {len(values)} values; expected "
                                f"{NUM_LANDMARK_VALUES} (68 x;y points)")
            landmarks = values.reshape(-1, 2)
        box = None
        if need_box:
            box = tuple(parse_float(rec[c], csv_path, row, c) for c in ("face_x", "face_y", "face_width", "face_height"))
            if not all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
                raise DataError(f"{csv_path}, row {row}: face box {box} is not a positive x, y, width, height")
        seen_paths.add(rel)
        kept.append(dict(row=row, rel=rel, source=source, expression=expression, valence=valence,
                         arousal=arousal, landmarks=landmarks, box=box))
    progress.close()
    return kept


def _crop_one(item, args, out_images):
    """Crop one face; returns (item, out_rel, landmarks) or (item, None, reason)."""
    import cv2

    image = cv2.imread(str(item["source"]), cv2.IMREAD_COLOR)
    if image is None:
        return item, None, "unreadable image"
    height, width = image.shape[:2]
    box = expand_box(*item["box"], args.margin, width, height)
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return item, None, "face box outside the image"
    crop, points = crop_and_resize(image, box, args.size, item["landmarks"])
    out_rel = str(Path(item["rel"]).with_suffix(".jpg"))
    write_image(out_images / out_rel, crop, args.jpeg_quality)
    return item, out_rel, points


def detect_layout(args) -> str:
    """``csv`` or ``npy``: ``--layout`` unless ``auto``, else what ROOT holds (csv wins when both are there)."""
    if args.layout != "auto":
        return args.layout
    root = Path(args.root) if args.root else None
    if root is None or args.train_csv or args.val_csv or args.images or not root.is_dir():
        return "csv"  # (a missing ROOT is reported by the csv path as before)
    if (root / "training.csv").is_file() or (root / "validation.csv").is_file():
        return "csv"
    if any((root / folder / "annotations").is_dir() for folder, _split in NPY_SPLIT_DIRS):
        return "npy"
    raise DataError(f"{root}: neither AffectNet layout found: no training.csv/validation.csv (csv layout) and no "
                    f"train_set/annotations/ (npy layout); pass --root the download folder (or --layout)")


def import_affectnet(args) -> str:
    if detect_layout(args) == "npy":
        return import_affectnet_npy(args)
    root = Path(args.root) if args.root else None
    if args.images is None:
        if root is None:
            raise DataError("pass --root (holding Manually_Annotated_Images/, training.csv, validation.csv) or --images")
        args.images = root / "Manually_Annotated_Images"
    args.images = Path(args.images)
    if not args.images.is_dir():
        raise DataError(f"image folder {args.images} does not exist (pass --images)")
    files = {"train": Path(args.train_csv) if args.train_csv else (root / "training.csv" if root else None),
             "test": Path(args.val_csv) if args.val_csv else (root / "validation.csv" if root else None)}
    for split, path in files.items():
        if path is None or not path.is_file():
            raise DataError(f"{path}: AffectNet annotation file for the {split} split not found "
                            f"(pass --train-csv / --val-csv)")
    if args.margin < 0:
        raise DataError(f"--margin must be >= 0, got {args.margin}")
    out = Path(args.out)
    outputs = prepared_outputs(out, files)
    if args.crop_faces:
        outputs.append(out / "images")
    check_can_write(outputs, args.force)

    num_classes = args.classes
    class_names = AFFECTNET8_CLASSES[:num_classes]
    report = ImportReport("affectnet" if num_classes == 7 else "affectnet8")
    tables = {}
    seen_by_split = {}
    for split, path in files.items():
        frame = read_affectnet_csv(path)
        seen: set = set()
        kept = _prepare_rows(frame, path, split, args, num_classes, report, seen)
        seen_by_split[split] = seen
        rows = []
        if args.crop_faces:
            progress = Progress(f"affectnet {split}: cropping faces", len(kept), unit="images")
            with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
                for item, out_rel, extra in pool.map(lambda it: _crop_one(it, args, out / "images"), kept):
                    progress.update()
                    if out_rel is None:
                        if args.strict:
                            raise DataError(f"{path}, row {item['row']}: {extra} ({item['source']})")
                        report.drop(split, extra, path, item["row"], item["rel"])
                        continue
                    rows.append((item, out_rel, extra))
            progress.close()
        else:
            rows = [(item, item["rel"], item["landmarks"]) for item in kept]
        table = pd.DataFrame({
            "path": [r[1] for r in rows],
            "expression": [r[0]["expression"] for r in rows],
            "valence": [r[0]["valence"] for r in rows],
            "arousal": [r[0]["arousal"] for r in rows],
        })
        if rows and all(r[2] is not None for r in rows):
            table["landmarks"] = [format_float_list(r[2], 2) for r in rows]
        table["source"] = "affectnet"
        tables[split] = table
    overlap = seen_by_split["train"] & seen_by_split["test"]
    if overlap:
        report.note(f"warning: {len(overlap)} image path(s) appear in both training.csv and validation.csv "
                    f"(first: {sorted(overlap)[0]})")
    image_root = "images" if args.crop_faces else str(args.images.resolve())
    write_prepared(out, tables, dataset=report.name, class_names=class_names, image_root=image_root,
                   report=report, force=args.force, command="preprocess.affectnet", args=args,
                   extra={"cropped": bool(args.crop_faces)})
    return report.format(out)


# ------------------------------------------------------------ npy layout ----

NPY_SPLIT_DIRS = (("train_set", "train"), ("val_set", "test"))
NPY_FIELDS = ("exp", "val", "aro", "lnd")
DROP_NPY_MISSING = "missing annotation file ({})"
DROP_NPY_UNREADABLE = "unreadable annotation .npy (truncated or not an .npy file)"
DROP_NPY_PICKLE = "annotation .npy holds pickled objects (refused: allow_pickle=False)"


class _Unreadable(Exception):
    """An annotation .npy that np.load(allow_pickle=False) cannot read; args[0] is the drop reason."""


def load_annotation_npy(path) -> np.ndarray:
    """``np.load(path, allow_pickle=False)``; raises :class:`_Unreadable` (with the drop reason) otherwise."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        pickled = magic == b"\x93NUMPY" and "allow_pickle" in str(exc)
        raise _Unreadable(DROP_NPY_PICKLE if pickled else DROP_NPY_UNREADABLE) from None
    except (OSError, EOFError):
        raise _Unreadable(DROP_NPY_UNREADABLE) from None


def npy_scalar(array: np.ndarray, path, what: str) -> float:
    """The single number in a 0-d/size-1 array of numbers or numeric strings; DataError naming ``path``."""
    if array.size != 1:
        raise DataError(f"{path}: {what} must hold one value, got an array of shape {array.shape}")
    value = array.reshape(-1)[0].item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            raise DataError(f"{path}: {what} is not a number: {text[:40]!r}") from None
    if isinstance(value, (bool, complex)) or not isinstance(value, (int, float)):
        raise DataError(f"{path}: {what} is not a number: {value!r}")
    return float(value)


def npy_landmarks(array: np.ndarray, path) -> np.ndarray:
    """(68, 2) float64 from 136 numbers (or numeric strings), flat or (68, 2); DataError otherwise."""
    try:
        values = np.asarray(array, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: landmarks are not numbers (dtype {array.dtype})") from None
    if len(values) != NUM_LANDMARK_VALUES or not np.isfinite(values).all():
        raise DataError(f"{path}: landmarks have {len(values)} values; expected {NUM_LANDMARK_VALUES} "
                        f"finite numbers (68 x,y points)")
    return values.reshape(-1, 2)


def _image_sort_key(stem: str):
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def _npy_split(folder: Path, split: str, args, num_classes: int, report: ImportReport) -> list[dict]:
    """Kept items of one ``*_set`` folder (same dicts as the csv path builds, ``row`` None)."""
    images_dir, annotations_dir = folder / "images", folder / "annotations"
    for needed in (images_dir, annotations_dir):
        if not needed.is_dir():
            raise DataError(f"{needed}: folder not found (AffectNet npy layout: {folder.name}/images/ and "
                            f"{folder.name}/annotations/)")
    images: dict[str, str] = {}
    for entry in sorted(os.scandir(images_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        stem = os.path.splitext(entry.name)[0]
        rel = f"{folder.name}/images/{entry.name}"
        if stem in images:
            report.drop(split, "duplicate image id", images_dir / entry.name, None, rel)
            continue
        images[stem] = entry.name
    annotations = {e.name for e in os.scandir(annotations_dir) if e.name.endswith(".npy")}
    expect_landmarks = any(name.endswith("_lnd.npy") for name in annotations)
    needed_fields = NPY_FIELDS if expect_landmarks else NPY_FIELDS[:3]
    annotated = {name.rsplit("_", 1)[0] for name in annotations if name.rsplit("_", 1)[-1][:-4] in NPY_FIELDS}
    for stem in sorted(annotated - set(images), key=_image_sort_key):
        if args.strict:
            raise DataError(f"{annotations_dir / (stem + '_exp.npy')}: no image {stem}.* in {images_dir}")
        report.drop(split, "missing image file", annotations_dir / f"{stem}_exp.npy", None, f"{folder.name}/images/{stem}")
    kept = []
    stems = sorted(images, key=_image_sort_key)
    progress = Progress(f"affectnet {split} ({folder.name})", len(stems), unit="images")
    for stem in stems:
        progress.update()
        rel = f"{folder.name}/images/{images[stem]}"
        missing = [f"_{f}.npy" for f in needed_fields if f"{stem}_{f}.npy" not in annotations]
        if missing:
            if args.strict:
                raise DataError(f"{annotations_dir}: {stem}{missing[0]} not found for image {rel}")
            report.drop(split, DROP_NPY_MISSING.format(", ".join(missing)), images_dir / images[stem], None, rel)
            continue
        arrays = {}
        try:
            for field in needed_fields:
                arrays[field] = load_annotation_npy(annotations_dir / f"{stem}_{field}.npy")
        except _Unreadable as exc:
            bad = annotations_dir / f"{stem}_{field}.npy"
            if args.strict:
                raise DataError(f"{bad}: {exc.args[0]}") from None
            report.drop(split, exc.args[0], bad, None, rel)
            continue
        exp_path = annotations_dir / f"{stem}_exp.npy"
        code = npy_scalar(arrays["exp"], exp_path, "expression")
        if not np.isfinite(code) or code != int(code) or not 0 <= code <= 10:
            raise DataError(f"{exp_path}: expression {code:g} is not an AffectNet code (0..10)")
        expression = int(code)
        if expression in NON_EMOTION:
            report.drop(split, NON_EMOTION[expression], exp_path, None, rel)
            continue
        if expression >= num_classes:
            report.drop(split, "Contempt (7) in a 7-class import", exp_path, None, rel)
            continue
        valence = npy_scalar(arrays["val"], annotations_dir / f"{stem}_val.npy", "valence")
        arousal = npy_scalar(arrays["aro"], annotations_dir / f"{stem}_aro.npy", "arousal")
        if not (np.isfinite(valence) and np.isfinite(arousal)) or abs(valence) > 1 or abs(arousal) > 1:
            report.drop(split, "valence/arousal not annotated or outside [-1, 1] (e.g. -2)",
                        annotations_dir / f"{stem}_val.npy", None, rel)
            continue
        landmarks = npy_landmarks(arrays["lnd"], annotations_dir / f"{stem}_lnd.npy") if expect_landmarks else None
        kept.append(dict(row=None, rel=rel, source=images_dir / images[stem], expression=expression,
                         valence=valence, arousal=arousal, landmarks=landmarks, box=None))
    progress.close()
    return kept


def import_affectnet_npy(args) -> str:
    """The per-image ``.npy`` release: ROOT/train_set -> train.csv, ROOT/val_set -> test.csv."""
    if args.root is None:
        raise DataError("--layout npy needs --root (holding train_set/ and val_set/)")
    root = Path(args.root)
    given = [flag for flag, value in (("--images", args.images), ("--train-csv", args.train_csv),
                                      ("--val-csv", args.val_csv)) if value]
    if given:
        raise DataError(f"{given[0]} applies to the csv layout; the npy layout reads ROOT/train_set and ROOT/val_set")
    if args.crop_faces:
        raise DataError("--crop-faces applies to the csv layout: the npy release's images are already face crops "
                        "(it has no face boxes)")
    folders = {split: root / name for name, split in NPY_SPLIT_DIRS}
    for split, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"{folder}: AffectNet npy folder for the {split} split not found")
    out = Path(args.out)
    check_can_write(prepared_outputs(out, folders), args.force)
    num_classes = args.classes
    report = ImportReport("affectnet" if num_classes == 7 else "affectnet8")
    tables = {}
    for split, folder in folders.items():
        kept = _npy_split(folder, split, args, num_classes, report)
        table = pd.DataFrame({"path": [k["rel"] for k in kept], "expression": [k["expression"] for k in kept],
                              "valence": [k["valence"] for k in kept], "arousal": [k["arousal"] for k in kept]})
        if kept and all(k["landmarks"] is not None for k in kept):
            table["landmarks"] = [format_float_list(k["landmarks"], 2) for k in kept]
        table["source"] = "affectnet"
        tables[split] = table
    write_prepared(out, tables, dataset=report.name, class_names=AFFECTNET8_CLASSES[:num_classes],
                   image_root=str(root.resolve()), report=report, force=args.force, command="preprocess.affectnet",
                   args=args, extra={"cropped": False, "layout": "npy"})
    return report.format(out, show_examples=("missing image file", DROP_NPY_UNREADABLE, DROP_NPY_PICKLE))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.affectnet", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="AffectNet folder with Manually_Annotated_Images/, training.csv, validation.csv")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default ROOT/Manually_Annotated_Images)")
    parser.add_argument("--train-csv", type=Path, default=None, help="default ROOT/training.csv")
    parser.add_argument("--val-csv", type=Path, default=None, help="default ROOT/validation.csv (written as test.csv)")
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory to write")
    parser.add_argument("--layout", choices=("auto", "csv", "npy"), default="auto",
                        help="csv: training.csv/validation.csv; npy: {train,val}_set/images + annotations/*.npy "
                             "(default auto: detected from ROOT)")
    parser.add_argument("--classes", type=positive_int, choices=(7, 8), default=7, help="7 drops Contempt (default 7)")
    parser.add_argument("--crop-faces", action="store_true", help="crop the face boxes into OUT/images as JPEG")
    parser.add_argument("--margin", type=nonnegative_float, default=0.0, help="extra border per side, as a fraction of the box size")
    parser.add_argument("--size", type=positive_int, default=None, help="resize crops to SIZE x SIZE (default: keep)")
    parser.add_argument("--jpeg-quality", type=percent_quality, default=95)
    parser.add_argument("--workers", type=nonnegative_int, default=min(8, os.cpu_count() or 1), help="threads for cropping")
    parser.add_argument("--strict", action="store_true", help="a missing or unreadable image is an error")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, import_affectnet, argv)


if __name__ == "__main__":
    raise SystemExit(main())
