"""The annotation schema: one CSV table per split, validated with errors that name file and row.

Columns
-------
``path``              image path relative to the image root (required)
``expression``        int class index in canonical (AffectNet) order (required)
``valence``, ``arousal``  floats in [-1, 1] (optional, required by VA-based methods)
``landmarks``         ``;``-separated x;y;x;y... pixel coordinates in the stored image (optional)
``votes``             ``;``-separated per-class annotator counts (optional)
``clean_expression``  the label before synthetic noise (optional)
Other columns are kept but ignored. Neighbour tables live beside the table (see ``data.neighbors``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError, row_error

REQUIRED_COLUMNS = ("path", "expression")
OPTIONAL_COLUMNS = ("valence", "arousal", "landmarks", "votes", "clean_expression", "source")


@dataclass
class AnnotationTable:
    """A validated split: the frame plus parsed numeric arrays aligned with its rows."""

    csv_path: Path
    image_root: Path
    frame: pd.DataFrame
    num_classes: int
    labels: np.ndarray  # (N,) int32
    va: np.ndarray | None = None  # (N, 2) float32
    landmarks: np.ndarray | None = None  # (N, L, 2) float32, pixels of the stored image
    votes: np.ndarray | None = None  # (N, C) float32 counts
    clean_labels: np.ndarray | None = None  # (N,) int32

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def paths(self) -> list[str]:
        return self.frame["path"].astype(str).tolist()

    def absolute_paths(self) -> list[str]:
        root = str(self.image_root)
        return [str(Path(root) / p) for p in self.paths]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


def _parse_int_column(frame, column, csv_path, num_classes):
    values = frame[column]
    out = np.empty(len(frame), dtype=np.int32)
    for row, value in enumerate(values.tolist()):
        if isinstance(value, str):
            value = value.strip()
        try:
            fvalue = float(value)
        except (TypeError, ValueError):
            raise row_error(csv_path, row + 1, f"column '{column}' must be an integer class index, got {value!r}") from None
        if not math.isfinite(fvalue) or fvalue != int(fvalue):
            raise row_error(csv_path, row + 1, f"column '{column}' must be an integer class index, got {value!r}")
        ivalue = int(fvalue)
        if not 0 <= ivalue < num_classes:
            raise row_error(
                csv_path, row + 1,
                f"column '{column}' = {ivalue} is out of range for a {num_classes}-class dataset (0..{num_classes - 1})",
            )
        out[row] = ivalue
    return out


def parse_float_list(text, csv_path, row, column) -> np.ndarray:
    """Parse a ``;``-separated (or space/comma-separated) list of floats."""
    if isinstance(text, (list, tuple, np.ndarray)):
        arr = np.asarray(text, dtype=np.float64)
    else:
        if text is None or (isinstance(text, float) and math.isnan(text)):
            raise row_error(csv_path, row, f"column '{column}' is empty")
        cleaned = str(text).replace(",", ";").replace(" ", ";").strip("[]() ")
        try:
            arr = np.asarray([float(v) for v in cleaned.split(";") if v.strip() != ""], dtype=np.float64)
        except ValueError:
            raise row_error(csv_path, row, f"column '{column}' is not a list of numbers: {str(text)[:60]!r}") from None
    if not np.all(np.isfinite(arr)):
        raise row_error(csv_path, row, f"column '{column}' has a NaN or infinite value")
    return arr


def format_float_list(values, precision: int = 2) -> str:
    return ";".join(f"{float(v):.{precision}f}" for v in np.ravel(values))


def validate_frame(frame: pd.DataFrame, csv_path, num_classes: int, image_root=None,
                   require_va: bool = False, num_landmarks: int | None = None) -> AnnotationTable:
    """Validate a schema frame and return an :class:`AnnotationTable`. Raises :class:`DataError`."""
    csv_path = Path(csv_path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{csv_path}: missing required column(s) {', '.join(missing)}; found columns: "
            f"{', '.join(map(str, frame.columns))}. Expected the schema path, expression[, valence, arousal, landmarks, votes]."
        )
    if len(frame) == 0:
        raise DataError(f"{csv_path}: the split is empty (no data rows)")
    frame = frame.reset_index(drop=True)
    paths = frame["path"]
    for row, value in enumerate(paths.tolist()):
        if not isinstance(value, str) or value.strip() == "":
            raise row_error(csv_path, row + 1, f"column 'path' is empty or not a string: {value!r}")
    dup = paths.duplicated(keep="first")
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise row_error(csv_path, row + 1, f"duplicated path {paths.iloc[row]!r} (first seen earlier in the table)")
    labels = _parse_int_column(frame, "expression", csv_path, num_classes)

    va = None
    has_v, has_a = "valence" in frame.columns, "arousal" in frame.columns
    if has_v != has_a:
        raise DataError(f"{csv_path}: has '{'valence' if has_v else 'arousal'}' but not the other; VA needs both columns")
    if has_v:
        va = np.stack([pd.to_numeric(frame["valence"], errors="coerce").to_numpy(np.float64),
                       pd.to_numeric(frame["arousal"], errors="coerce").to_numpy(np.float64)], axis=1)
        bad = ~np.isfinite(va).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise row_error(csv_path, row + 1, f"valence/arousal is NaN, infinite or not a number "
                            f"({frame['valence'].iloc[row]!r}, {frame['arousal'].iloc[row]!r})")
        out = (np.abs(va) > 1.0 + 1e-6).any(axis=1)
        if out.any():
            row = int(np.flatnonzero(out)[0])
            raise row_error(csv_path, row + 1, f"valence/arousal ({va[row, 0]}, {va[row, 1]}) outside [-1, 1]")
        va = va.astype(np.float32)
    elif require_va:
        raise DataError(f"{csv_path}: this method needs 'valence' and 'arousal' columns; "
                        "produce them with `python -m preprocess.pseudo_va` or import your own with `python -m preprocess.va_import`")

    landmarks = None
    if "landmarks" in frame.columns:
        parsed = [parse_float_list(v, csv_path, r + 1, "landmarks") for r, v in enumerate(frame["landmarks"].tolist())]
        lengths = {len(p) for p in parsed}
        expected = None if num_landmarks is None else 2 * num_landmarks
        for r, p in enumerate(parsed):
            if len(p) % 2 or len(p) == 0 or (expected is not None and len(p) != expected) or len(p) != len(parsed[0]):
                want = expected or len(parsed[0])
                raise row_error(csv_path, r + 1, f"landmarks have {len(p)} values; expected {want} (x,y pairs)")
        del lengths
        landmarks = np.stack(parsed).reshape(len(frame), -1, 2).astype(np.float32)

    votes = None
    if "votes" in frame.columns:
        parsed = [parse_float_list(v, csv_path, r + 1, "votes") for r, v in enumerate(frame["votes"].tolist())]
        for r, p in enumerate(parsed):
            if len(p) != num_classes:
                raise row_error(csv_path, r + 1, f"votes have {len(p)} entries; expected one per class ({num_classes})")
            if (p < 0).any() or p.sum() <= 0:
                raise row_error(csv_path, r + 1, "votes must be non-negative counts with a positive total")
        votes = np.stack(parsed).astype(np.float32)

    clean = None
    if "clean_expression" in frame.columns:
        clean = _parse_int_column(frame, "clean_expression", csv_path, num_classes)

    root = Path(image_root) if image_root is not None else csv_path.parent / "images"
    return AnnotationTable(csv_path=csv_path, image_root=root, frame=frame, num_classes=num_classes,
                           labels=labels, va=va, landmarks=landmarks, votes=votes, clean_labels=clean)


def read_csv(csv_path) -> pd.DataFrame:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: annotation table not found")
    try:
        return pd.read_csv(csv_path, dtype={"path": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV table ({str(exc).splitlines()[0]})") from None


def load_table(csv_path, num_classes: int, image_root=None, require_va: bool = False,
               check_images: bool = False, num_landmarks: int | None = None) -> AnnotationTable:
    """Read and validate one split. ``check_images`` also checks that every listed file exists."""
    table = validate_frame(read_csv(csv_path), csv_path, num_classes, image_root, require_va, num_landmarks)
    check_image_root(table, check_all_files=check_images)
    return table


def check_image_root(table: AnnotationTable, check_all_files: bool = False) -> None:
    """Fail clearly when the image root is missing, empty of listed files, or (optionally) any file is missing."""
    root = table.image_root
    if not root.is_dir():
        raise DataError(f"image root {root} (for {table.csv_path}) does not exist or is not a folder; pass --image-root")
    paths = table.paths
    probe = paths if check_all_files else paths[: min(len(paths), 64)]
    missing = [(i, p) for i, p in enumerate(probe) if not (root / p).is_file()]
    if probe and len(missing) == len(probe):
        raise DataError(
            f"image root {root} contains none of the files listed in {table.csv_path} "
            f"(first listed: {paths[0]!r}); is --image-root pointing at the right folder?")
    if check_all_files and missing:
        row, p = missing[0]
        raise row_error(table.csv_path, row + 1, f"image file {root / p} does not exist "
                        f"({len(missing)} listed file(s) missing in all)")


def write_table(frame: pd.DataFrame, csv_path, force: bool = False) -> Path:
    """Write a schema table atomically; refuse to overwrite an existing file unless ``force``."""
    from common.io import atomic_write_text

    csv_path = Path(csv_path)
    if csv_path.exists() and not force:
        raise DataError(f"{csv_path} already exists; pass --force to overwrite it")
    atomic_write_text(csv_path, frame.to_csv(index=False))
    return csv_path
