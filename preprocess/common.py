"""Shared plumbing of the ``python -m preprocess.*`` commands.

Every command is ``main(argv) -> exit code`` built with :func:`common.cli.run_command`: user mistakes raise
:class:`common.errors.FERError` and come out as ``error: <message naming file and row>`` on stderr with
exit code 2; progress lines go to stderr, the summary to stdout.

A prepared dataset directory written by an importer holds ``train.csv``, ``test.csv`` (optional
``val.csv``), ``dataset.json`` and ``dropped.csv``:

``dataset.json``  ``{"dataset", "num_classes", "class_names", "image_root", "splits": {split: rows},
                  "dropped": {reason: count}, "command", "arguments"}``. ``image_root`` is ``"images"`` (relative to
                  the directory) when the importer copied/cropped/wrote the images, or the absolute
                  path of the original download when it did not (the tables' paths are relative to it).
``dropped.csv``   one line per dropped input row: ``split, file, row, path, reason``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError
from data.prepared import DATASET_JSON

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DROPPED_CSV = "dropped.csv"
PREPROCESS_REQUIREMENTS = "pip install -r requirements-preprocess.txt"


class OptionalDependencyError(ConfigError):
    """An optional preprocessing package (dlib, mtcnn, ...) is not installed."""


def require_optional(module: str, package: str, purpose: str):
    """Import an optional module or raise :class:`OptionalDependencyError` with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OptionalDependencyError(
            f"{purpose} needs the optional package '{package}' (import {module!r} failed: {exc}); "
            f"install it with `{PREPROCESS_REQUIREMENTS}`") from None


# ---------------------------------------------------------------- CLI ----


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def describe_args(args) -> dict:
    """The parsed arguments as JSON-able values (recorded in dataset.json)."""
    if args is None:
        return {}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
            if isinstance(v, (str, int, float, bool, Path, type(None)))}


class ImportReport:
    """Rows written per split and rows dropped per reason (with the file and row of each)."""

    def __init__(self, name: str):
        self.name = name
        self.written: dict[str, int] = {}
        self.drops: Counter = Counter()  # (split, reason) -> count
        self.records: list[tuple[str, str, int | None, str, str]] = []
        self.notes: list[str] = []

    def drop(self, split: str, reason: str, file=None, row: int | None = None, path: str = "") -> None:
        self.drops[(split, reason)] += 1
        self.records.append((split, "" if file is None else Path(file).name, row, str(path), reason))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def drop_counts(self) -> dict[str, int]:
        totals: Counter = Counter()
        for (_split, reason), n in self.drops.items():
            totals[reason] += n
        return dict(sorted(totals.items()))

    def examples(self, reason: str, limit: int = 5) -> list[str]:
        out = []
        for split, file, row, path, r in self.records:
            if r == reason:
                where = f"{file}, row {row}" if row is not None else file
                out.append(f"{where}: {path}")
                if len(out) >= limit:
                    break
        return out

    def dropped_frame(self):
        import pandas as pd

        return pd.DataFrame(self.records, columns=["split", "file", "row", "path", "reason"]).astype({"row": "Int64"})

    def format(self, out_dir=None, show_examples=("missing image file", "unreadable image")) -> str:
        lines = [f"{self.name}: wrote " + ", ".join(f"{s}.csv {n} rows" for s, n in self.written.items())
                 + (f" to {out_dir}" if out_dir is not None else "")]
        total = sum(self.drops.values())
        if total:
            lines.append(f"dropped {total} input rows:")
            for (split, reason), n in sorted(self.drops.items()):
                lines.append(f"  {split}: {n} x {reason}")
                if reason in show_examples:
                    for ex in self.examples(reason):
                        lines.append(f"      {ex}")
            if out_dir is not None:
                lines.append(f"  (every dropped row is listed in {Path(out_dir) / DROPPED_CSV})")
        else:
            lines.append("dropped 0 input rows")
        lines.extend(self.notes)
        return "\n".join(lines)


# ------------------------------------------------------- output files ----


def check_can_write(paths, force: bool) -> None:
    """Refuse (before any work is done) to overwrite existing outputs unless ``force``."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise DataError(f"{existing[0]} already exists{more}; pass --force to overwrite")


def prepared_outputs(out_dir, splits) -> list[Path]:
    out_dir = Path(out_dir)
    return [out_dir / f"{s}.csv" for s in splits] + [out_dir / DATASET_JSON, out_dir / DROPPED_CSV]


def write_prepared(out_dir, tables: dict, *, dataset: str, class_names, image_root, report: ImportReport,
                   force: bool, extra: dict | None = None, command: str = "", args=None) -> None:
    """Validate each split against the schema, then write the tables, ``dropped.csv`` and ``dataset.json``.

    ``tables`` maps split name -> schema DataFrame. A stale ``train.neighbors.npz`` from an earlier run
    is removed (its rows no longer match) when train.csv is rewritten.
    """
    from common.io import atomic_write_json, atomic_write_text
    from data.schema import validate_frame, write_table

    out_dir = Path(out_dir)
    num_classes = len(class_names)
    for split, frame in tables.items():
        if len(frame) == 0:
            raise DataError(f"{out_dir / (split + '.csv')}: no rows left for split '{split}' after dropping "
                            f"({', '.join(f'{n} x {r}' for r, n in report.drop_counts().items()) or 'no input rows'})")
        validate_frame(frame, out_dir / f"{split}.csv", num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, frame in tables.items():
        write_table(frame, out_dir / f"{split}.csv", force=force)
        report.written[split] = len(frame)
    stale = out_dir / "train.neighbors.npz"
    if "train" in tables and stale.exists() and not (extra or {}).get("keeps_neighbors"):
        stale.unlink()
        report.note(f"removed stale {stale} (rebuild it with `python -m preprocess.knn --table {out_dir / 'train.csv'}`)")
    atomic_write_text(out_dir / DROPPED_CSV, report.dropped_frame().to_csv(index=False))
    info = {
        "dataset": dataset,
        "num_classes": num_classes,
        "class_names": list(class_names),
        "image_root": str(image_root),
        "splits": dict(report.written),
        "dropped": report.drop_counts(),
        "command": command,
        "arguments": describe_args(args),
    }
    info.update({k: v for k, v in (extra or {}).items() if k != "keeps_neighbors"})
    atomic_write_json(out_dir / DATASET_JSON, info)


# ------------------------------------------------------------- tables ----


def read_raw_csv(path, what: str = "table", **kwargs):
    """Read a raw (download) CSV as strings, with errors that name the file."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})") from None


def require_columns(frame, columns, path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(map(str, frame.columns))}")


def parse_float(text, path, row: int, column: str) -> float:
    """Parse a float cell; empty -> NaN; anything else unparseable -> DataError naming file and row."""
    text = str(text).strip()
    if text == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}, row {row}: column '{column}' is not a number: {text[:40]!r}") from None


def parse_int(text, path, row: int, column: str) -> int:
    value = parse_float(text, path, row, column)
    if not np.isfinite(value) or value != int(value):
        raise DataError(f"{path}, row {row}: column '{column}' must be an integer, got {str(text)[:40]!r}")
    return int(value)


# ------------------------------------------------------------- images ----


def write_image(path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Encode by extension and write via a temporary name (no half-written image under its final name)."""
    import cv2

    path = Path(path)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise DataError(f"cannot encode image {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(buf.tobytes())
    os.replace(tmp, path)


def expand_box(x: float, y: float, w: float, h: float, margin: float, width: int, height: int):
    """Face box (x, y, w, h) grown by ``margin`` x its size on every side, clipped to the image.

    Returns integer ``(x0, y0, x1, y1)`` with x1/y1 exclusive; DataError-free: an empty result means the
    box lies outside the image (callers drop the row).
    """
    x0 = int(np.floor(x - margin * w))
    y0 = int(np.floor(y - margin * h))
    x1 = int(np.ceil(x + w + margin * w))
    y1 = int(np.ceil(y + h + margin * h))
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def crop_and_resize(image: np.ndarray, box, size: int | None = None, points: np.ndarray | None = None):
    """Crop ``box`` = (x0, y0, x1, y1) and optionally resize to ``size`` x ``size``.

    ``points`` (L, 2) in original pixels are mapped to the output image's pixels.
    """
    import cv2

    x0, y0, x1, y1 = box
    crop = image[y0:y1, x0:x1]
    mapped = None if points is None else np.asarray(points, np.float64) - [x0, y0]
    if size is not None and (crop.shape[0] != size or crop.shape[1] != size):
        sx, sy = size / crop.shape[1], size / crop.shape[0]
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR)
        if mapped is not None:
            mapped = mapped * [sx, sy]
    return crop, mapped


def link_or_copy(src, dst, mode: str = "hardlink") -> str:
    """Place ``src`` at ``dst`` by hard link (falling back to a copy across file systems) or copy.

    Returns the method used. An existing ``dst`` is replaced (callers check --force beforehand).
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
    shutil.copy2(src, dst)
    return "copy"


def list_images(folder) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted, hidden files skipped."""
    folder = Path(folder)
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(dirpath) / name)
    return out


def normalize_relpath(path: str) -> str:
    """Forward slashes, no ``./`` prefix, collapsed ``..``: the key used to match image paths."""
    text = str(path).strip().replace("\\", "/")
    text = os.path.normpath(text).replace("\\", "/")
    return "" if text == "." else text
