"""The annotation schema: one CSV table per split, validated with errors that name file and row.

Columns
-------
``path``              image path relative to the image root (required; see "Paths" below)
``expression``        int class index in canonical (AffectNet) order (required)
``valence``, ``arousal``  floats in [-1, 1] (optional, required by VA-based methods)
``landmarks``         ``;``-separated x;y;x;y... pixel coordinates in the stored image (optional)
``votes``             ``;``-separated per-class annotator counts (optional)
``clean_expression``  the label before synthetic noise (optional)
Other columns are kept but ignored. Neighbour tables live beside the table (see ``data.neighbors``).

Paths
-----
Backslashes are normalised to ``/`` when a table is parsed (a table written on Windows,
``images\\0001.jpg``, reads as ``images/0001.jpg``; ``AnnotationTable.paths`` and the frame hold the
normalised form), so a file whose POSIX name really contains a backslash cannot be listed. A path must
stay inside the image root: an absolute path (``/etc/hostname``, ``C:/x.jpg``, ``C:x.jpg``,
``//server/share``) or one that still has a ``..`` component after lexical normalisation
(``../x.png``, ``a/../../x.png``) is a row error ("escapes the image root") unless the caller opts in
with ``allow_outside_root=True`` (``train.py --allow-outside-root`` or ``"allow_outside_root": true`` in
``dataset.json``). The check is lexical only: symlinks are not resolved, so an image folder (or file)
inside the root that is a symlink to elsewhere, e.g. a user's own linked download, stays allowed.
Two rows naming the same file after that normalisation (``a/b.png``, ``a/./b.png``, ``a//b.png``) are a
row error, and so is a header that names a schema column twice.

Fingerprints
------------
:func:`table_fingerprint` is a sha256 of a table's content (row order, paths, labels, VA, landmarks,
votes, clean labels); runs record it so ``--resume`` can refuse a table whose content changed.
Neighbour tables carry their own, narrower fingerprint (rows, paths, VA; ``data.neighbors``).
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    allow_outside_root: bool = False  # validated with the opt-in (pass it on when re-validating the frame)

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


_DRIVE = re.compile(r"^[A-Za-z]:")


def normalize_table_path(value):
    """A table path as the schema reads it: backslashes turned into ``/`` (non-strings unchanged)."""
    return value.replace("\\", "/") if isinstance(value, str) else value


def normalize_table_paths(values) -> list:
    return [normalize_table_path(v) for v in values]


def path_escape_reason(path: str) -> str | None:
    """Why ``path`` (already slash-normalised) is outside the image root, or None when it is inside.

    Lexical: absolute (``/...``, ``//server``, a drive letter ``C:``) or a ``..`` left after
    ``posixpath.normpath``. Symlinks are not followed.
    """
    if path.startswith("/"):
        return "is absolute"
    if _DRIVE.match(path):
        return "starts with a drive letter"
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        return "leads out of it with '..'"
    return None


def _escape_message(path: str, reason: str) -> str:
    return (f"path {path!r} escapes the image root ({reason}); table paths must be relative to the image root. "
            "If the files really live outside it, pass --allow-outside-root (or set \"allow_outside_root\": true "
            "in dataset.json)")


def _duplicated_paths(paths: list) -> dict[int, int]:
    """``{row: first row}`` (0-based) of every path naming the same file as an earlier one, compared after
    lexical normalisation (``a/./b.png``, ``a//b.png`` and ``a/b.png`` are one file)."""
    keys = [posixpath.normpath(v) if isinstance(v, str) and ("/." in v or "//" in v or v.startswith(".")
                                                             or v.endswith("/")) else v for v in paths]
    dup = pd.Series(keys, dtype=object).duplicated(keep="first").to_numpy()
    if not dup.any():
        return {}
    first: dict = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    return {int(row): first.get(keys[row], int(row)) for row in np.flatnonzero(dup)}


def _duplicate_message(paths: list, row: int, first: int) -> str:
    same = "" if paths[row] == paths[first] else f" as {paths[first]!r} in row {first + 1}"
    return f"duplicated path {paths[row]!r} (first seen earlier in the table{same})"


# --- row rules ---------------------------------------------------------------------------------------------
# Every row-level check lives in ROW_RULES, once. validate_frame applies the table in one of two modes:
# fail-fast (the first rule with a violation raises for its first row) or collecting (--skip-bad: each row
# gets the message of the first rule it breaks and is left out). Because both modes walk the same rules in
# the same order, the row a fail-fast run names carries the same message in the --skip-bad report.


@dataclass
class _RowContext:
    """One frame under validation: what the rules read, and what they parse (row-aligned, for the table)."""

    frame: pd.DataFrame  # index reset, paths slash-normalised
    raw_paths: list  # the path cells as written (messages quote them)
    num_classes: int
    num_landmarks: int | None
    allow_outside_root: bool
    parsed: dict = field(default_factory=dict)  # column -> per-row values (None where a row failed to parse)


@dataclass(frozen=True)
class RowRule:
    """A row-level rule: ``check`` yields ``(0-based row, message)`` for each row breaking it, in row order.

    It runs only when the frame has every column in ``needs``. A rule may read what earlier rules parsed
    (``ctx.parsed``) and skips rows they could not parse (those rows already have a message)."""

    name: str
    needs: tuple[str, ...]
    check: Callable[[_RowContext], Iterator[tuple[int, str]]]


def _path_cells(ctx: _RowContext):
    for row, value in enumerate(ctx.raw_paths):
        if not isinstance(value, str) or value.strip() == "":
            yield row, f"column 'path' is empty or not a string: {value!r}"
        elif not ctx.allow_outside_root:
            reason = path_escape_reason(normalize_table_path(value))
            if reason:
                yield row, _escape_message(value, reason)


def _unique_paths(ctx: _RowContext):
    paths = ctx.frame["path"].tolist()
    for row, first in _duplicated_paths(paths).items():
        yield row, _duplicate_message(paths, row, first)


def _class_index_problem(value, column: str, num_classes: int) -> tuple[int, str | None]:
    """``(class index, None)`` for a valid cell, else ``(0, why)``."""
    if isinstance(value, str):
        value = value.strip()
    try:
        fvalue = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0, f"column '{column}' must be an integer class index, got {value!r}"
    if not math.isfinite(fvalue) or fvalue != int(fvalue):
        return 0, f"column '{column}' must be an integer class index, got {value!r}"
    ivalue = int(fvalue)
    if not 0 <= ivalue < num_classes:
        return 0, (f"column '{column}' = {ivalue} is out of range for a {num_classes}-class dataset "
                   f"(0..{num_classes - 1})")
    return ivalue, None


def _class_index_rule(column: str):
    def check_column(ctx: _RowContext):
        out = np.zeros(len(ctx.frame), dtype=np.int32)
        ctx.parsed[column] = out
        for row, value in enumerate(ctx.frame[column].tolist()):
            out[row], problem = _class_index_problem(value, column, ctx.num_classes)
            if problem:
                yield row, problem

    return check_column


def _va_values(ctx: _RowContext) -> np.ndarray:
    if "va" not in ctx.parsed:
        ctx.parsed["va"] = np.stack([pd.to_numeric(ctx.frame[c], errors="coerce").to_numpy(np.float64)
                                       for c in ("valence", "arousal")], axis=1)
    return ctx.parsed["va"]


def _va_finite(ctx: _RowContext):
    va, frame = _va_values(ctx), ctx.frame
    for row in np.flatnonzero(~np.isfinite(va).all(axis=1)):
        yield int(row), (f"valence/arousal is NaN, infinite or not a number "
                         f"({frame['valence'].iloc[row]!r}, {frame['arousal'].iloc[row]!r})")


def _va_in_range(ctx: _RowContext):
    va = _va_values(ctx)
    with np.errstate(invalid="ignore"):  # NaN rows were named by _va_finite
        outside = (np.abs(va) > 1.0 + 1e-6).any(axis=1)
    for row in np.flatnonzero(outside):
        yield int(row), f"valence/arousal ({va[row, 0]}, {va[row, 1]}) outside [-1, 1]"


def _float_list_problem(text, column: str) -> tuple[np.ndarray | None, str | None]:
    """``(values, None)`` for a ``;``- (or space/comma-) separated list of finite float32 numbers, else
    ``(None, why)``."""
    if isinstance(text, (list, tuple, np.ndarray)):
        try:
            arr = np.asarray(text, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return None, f"column '{column}' is not a list of numbers: {str(text)[:60]!r}"
    else:
        if text is None or (isinstance(text, float) and math.isnan(text)):
            return None, f"column '{column}' is empty"
        cleaned = str(text).replace(",", ";").replace(" ", ";").strip("[]() ")
        try:
            arr = np.asarray([float(v) for v in cleaned.split(";") if v.strip() != ""], dtype=np.float64)
        except ValueError:
            return None, f"column '{column}' is not a list of numbers: {str(text)[:60]!r}"
    if not np.all(np.isfinite(arr)):
        return None, f"column '{column}' has a NaN or infinite value"
    if np.any(np.abs(arr) > np.finfo(np.float32).max):  # stored as float32: would become inf
        return None, f"column '{column}' has a value too large for float32"
    return arr, None


def _float_list_rule(column: str):
    def check_column(ctx: _RowContext):
        values = ctx.parsed[column] = []
        for row, text in enumerate(ctx.frame[column].tolist()):
            arr, problem = _float_list_problem(text, column)
            values.append(arr)
            if problem:
                yield row, problem

    return check_column


def _landmark_counts(ctx: _RowContext):
    lengths = {row: len(v) for row, v in enumerate(ctx.parsed["landmarks"]) if v is not None}
    if ctx.num_landmarks is not None:
        want = 2 * ctx.num_landmarks
    else:  # the table's count is the most common even one (so the odd row out is named)
        even = [n for n in lengths.values() if n and n % 2 == 0]
        want = max(sorted(set(even)), key=even.count) if even else None
    for row, n in lengths.items():
        if n != want:
            yield row, (f"landmarks have {n} values; expected {want} (x,y pairs)" if want is not None else
                        f"landmarks have {n} values; expected a positive, even count (x,y pairs)")
    ctx.parsed["landmark_count"] = want


def _vote_counts(ctx: _RowContext):
    for row, votes in enumerate(ctx.parsed["votes"]):
        if votes is None:
            continue
        if len(votes) != ctx.num_classes:
            yield row, f"votes have {len(votes)} entries; expected one per class ({ctx.num_classes})"
        elif (votes < 0).any() or votes.sum() <= 0:
            yield row, "votes must be non-negative counts with a positive total"


ROW_RULES: tuple[RowRule, ...] = (
    RowRule("path", ("path",), _path_cells),
    RowRule("unique_path", ("path",), _unique_paths),
    RowRule("expression", ("expression",), _class_index_rule("expression")),
    RowRule("va_finite", ("valence", "arousal"), _va_finite),
    RowRule("va_range", ("valence", "arousal"), _va_in_range),
    RowRule("landmarks_numbers", ("landmarks",), _float_list_rule("landmarks")),
    RowRule("landmarks_count", ("landmarks",), _landmark_counts),
    RowRule("votes_numbers", ("votes",), _float_list_rule("votes")),
    RowRule("votes_counts", ("votes",), _vote_counts),
    RowRule("clean_expression", ("clean_expression",), _class_index_rule("clean_expression")),
)


def _apply_rules(ctx: _RowContext, csv_path, found: dict[int, str] | None) -> None:
    """Run ROW_RULES over ``ctx``: with ``found`` None raise the first violation (fail-fast), else record
    each row's first message in ``found`` (collecting)."""
    for rule in ROW_RULES:
        if not all(column in ctx.frame.columns for column in rule.needs):
            continue
        for row, message in rule.check(ctx):
            if found is None:
                raise row_error(csv_path, row + 1, message)
            found.setdefault(int(row), str(row_error(csv_path, row + 1, message)))


def _parse_int_column(frame, column, csv_path, num_classes):
    """Integer class indices of ``frame[column]``; raises :class:`DataError` naming the first bad row."""
    ctx = _RowContext(frame, [], num_classes, None, False)
    for row, message in _class_index_rule(column)(ctx):
        raise row_error(csv_path, row + 1, message)
    return ctx.parsed[column]


def parse_float_list(text, csv_path, row, column) -> np.ndarray:
    """Parse a ``;``-separated (or space/comma-separated) list of floats (``row``: 1-based, for the error)."""
    arr, problem = _float_list_problem(text, column)
    if problem:
        raise row_error(csv_path, row, problem)
    return arr


def format_float_list(values, precision: int = 2) -> str:
    return ";".join(f"{float(v):.{precision}f}" for v in np.ravel(values))


def _check_table_level(frame, csv_path: Path, require_va: bool) -> None:
    """The problems no dropped row can fix (raised in both modes, before any row rule)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{csv_path}: missing required column(s) {', '.join(missing)}; found columns: "
            f"{', '.join(map(str, frame.columns))}. Expected the schema path, expression[, valence, arousal, landmarks, votes]."
        )
    if len(frame) == 0:
        raise DataError(f"{csv_path}: the split is empty (no data rows)")
    has_v, has_a = "valence" in frame.columns, "arousal" in frame.columns
    if has_v != has_a:
        raise DataError(f"{csv_path}: has a '{'valence' if has_v else 'arousal'}' column but no "
                        f"'{'arousal' if has_v else 'valence'}' column; VA needs both")
    if require_va and not has_v:
        raise DataError(f"{csv_path}: this method needs 'valence' and 'arousal' columns; "
                        "produce them with `python -m preprocess.pseudo_va` or import your own with `python -m preprocess.va_import`")


def _table_rows(ctx: _RowContext, rows: np.ndarray, csv_path: Path, image_root, allow_outside_root: bool,
                backslashes: int) -> AnnotationTable:
    """The table of ``rows`` (0-based rows of ``ctx.frame``, all valid) from what the rules parsed."""
    parsed, frame = ctx.parsed, ctx.frame
    if len(rows) != len(frame):
        frame = frame.iloc[rows].reset_index(drop=True)
    if backslashes:
        frame.attrs["backslash_paths"] = int(backslashes)
    va = parsed["va"][rows].astype(np.float32) if "va" in parsed else None
    landmarks = None
    if "landmarks" in parsed:
        landmarks = np.stack([parsed["landmarks"][r] for r in rows]).reshape(len(rows), -1, 2).astype(np.float32)
    votes = np.stack([parsed["votes"][r] for r in rows]).astype(np.float32) if "votes" in parsed else None
    clean = parsed["clean_expression"][rows] if "clean_expression" in parsed else None
    root = Path(image_root) if image_root is not None else csv_path.parent / "images"
    return AnnotationTable(csv_path=csv_path, image_root=root, frame=frame, num_classes=ctx.num_classes,
                           labels=parsed["expression"][rows], va=va, landmarks=landmarks, votes=votes,
                           clean_labels=clean, allow_outside_root=bool(allow_outside_root))


def validate_frame(frame: pd.DataFrame, csv_path, num_classes: int, image_root=None,
                   require_va: bool = False, num_landmarks: int | None = None,
                   bad_rows: list | None = None, allow_outside_root: bool = False) -> AnnotationTable:
    """Validate a schema frame and return an :class:`AnnotationTable`. Raises :class:`DataError`.

    Paths are slash-normalised (``\\`` → ``/``) in the returned frame; a path that escapes the image
    root (absolute, a drive letter, or ``..`` after normalisation; lexical, symlinks not followed) is a
    row error unless ``allow_outside_root`` (see the module docstring).

    The row rules are :data:`ROW_RULES`. Without ``bad_rows`` the first violation raises. With a list
    ``bad_rows`` (``--skip-bad``), rows with an invalid cell are not fatal: each is appended as
    ``(0-based row of frame, message)`` (the message a fail-fast run would give for that row) and left out
    of the returned table (whose frame then has ``attrs["kept_rows"]``, the frame rows it holds).
    Table-level problems (missing columns, an empty split, one VA column, nothing left) raise in both modes.
    """
    csv_path = Path(csv_path)
    _check_table_level(frame, csv_path, require_va)
    frame = frame.reset_index(drop=True)
    raw_paths = frame["path"].tolist()
    backslashes = sum(isinstance(v, str) and "\\" in v for v in raw_paths)
    if backslashes:
        frame = frame.copy()
        frame["path"] = normalize_table_paths(raw_paths)
    ctx = _RowContext(frame, raw_paths, num_classes, num_landmarks, allow_outside_root)
    found = None if bad_rows is None else {}
    _apply_rules(ctx, csv_path, found)
    if not found:
        table = _table_rows(ctx, np.arange(len(frame)), csv_path, image_root, allow_outside_root, backslashes)
        if bad_rows is not None:
            table.frame.attrs["kept_rows"] = list(range(len(frame)))
        return table
    bad_rows.extend(sorted(found.items()))
    kept = np.setdiff1d(np.arange(len(frame)), np.fromiter(found, int, len(found)))
    if len(kept) == 0:
        raise DataError(f"{csv_path}: no usable rows left (all {len(frame)} rows are invalid; first: "
                        f"{found[min(found)]})")
    table = _table_rows(ctx, kept, csv_path, image_root, allow_outside_root, backslashes)
    table.frame.attrs["kept_rows"] = kept.tolist()
    return table


def read_csv(csv_path) -> pd.DataFrame:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: annotation table not found")
    try:
        frame = pd.read_csv(csv_path, dtype={"path": str}, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv_path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV table ({str(exc).splitlines()[0]})") from None
    _check_header(csv_path, frame)
    return frame


_SCHEMA_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
_MANGLED = re.compile(r"^(%s)\.\d+$" % "|".join(_SCHEMA_COLUMNS))


def _check_header(csv_path: Path, frame: pd.DataFrame) -> None:
    """Refuse a header that names a schema column twice (pandas would silently read the first as the
    column and rename the second ``NAME.1``): which of the two holds the data is ambiguous."""
    if not any(_MANGLED.match(str(c)) for c in frame.columns):
        return
    import csv

    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    for name in _SCHEMA_COLUMNS:
        if header.count(name) > 1:
            raise DataError(f"{csv_path}: the header names column '{name}' {header.count(name)} times; keep one "
                            "(which one holds the data is ambiguous)")


def load_table(csv_path, num_classes: int, image_root=None, require_va: bool = False,
               check_images: bool = False, num_landmarks: int | None = None,
               allow_outside_root: bool = False) -> AnnotationTable:
    """Read and validate one split. ``check_images`` also checks that every listed file exists.

    ``allow_outside_root`` accepts absolute and ``..`` paths (see the module docstring)."""
    table = validate_frame(read_csv(csv_path), csv_path, num_classes, image_root, require_va, num_landmarks,
                           allow_outside_root=allow_outside_root)
    check_image_root(table, check_all_files=check_images)
    return table


def _listed_paths_hint(table: AnnotationTable, probe: list[str]) -> str | None:
    """Why the listed paths, rather than the image root, look wrong (None: nothing suspicious)."""
    root, examples = table.image_root, probe[:3]
    backslashes = int(table.frame.attrs.get("backslash_paths", 0))
    absolute = [p for p in probe if p.startswith("/") or _DRIVE.match(p)]
    if len(absolute) == len(probe):
        drive = any(_DRIVE.match(p) for p in absolute)
        return (f"the listed paths are absolute (e.g. {absolute[0]!r}), so they do not depend on the image root"
                + ("; drive-letter paths were written on Windows and do not exist here" if drive else "")
                + f"; rewrite them relative to the image root in {table.csv_path}")
    escaping = [p for p in probe if path_escape_reason(p)]
    if len(escaping) == len(probe):
        return (f"the listed paths leave the image root with '..' (e.g. {escaping[0]!r}); rewrite them relative "
                f"to the image root in {table.csv_path}")
    spaced = [p for p in probe if p != p.strip()]
    if spaced and len(spaced) * 2 >= len(probe):
        return (f"the listed paths have leading or trailing spaces (e.g. {spaced[0]!r}); remove them in "
                f"{table.csv_path}")
    first = [p.split("/", 1) for p in probe]
    if all(len(parts) == 2 and parts[0] == root.name for parts in first) and \
            any(_is_file(root / parts[1]) for parts in first):
        return (f"the listed paths start with the image root's own folder name '{root.name}/' (e.g. "
                f"{probe[0]!r}); pass --image-root {root.parent} or drop that prefix from {table.csv_path}")
    beside = table.csv_path.parent
    if beside.resolve() != root.resolve() and any(_is_file(beside / p) for p in probe):
        return (f"the listed files exist relative to {beside} (e.g. {beside / probe[0]}); pass "
                f"--image-root {beside} (or set dataset.json's image_root)")
    if backslashes:
        return (f"{backslashes} listed path(s) were written with backslashes (e.g. {examples[0]!r} after turning "
                "'\\' into '/'); check that the table's folder layout matches the image root")
    return None


def _is_file(path: Path) -> bool:
    """``Path.is_file()``, False for a name the OS refuses outright: pathlib ignores ENOENT and the like but raises
    ENAMETOOLONG, so a 100 000-character path cell ended in a traceback (found by benchmarks/fuzz.py)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def check_image_root(table: AnnotationTable, check_all_files: bool = False) -> None:
    """Fail clearly when the image root is missing, empty of listed files, or (optionally) any file is missing.

    When none of the probed files exists, the message blames the listed paths instead of the root when
    they look wrong (absolute, ``..``, spaces, the root's own folder name as a prefix, relative to the
    table's folder, written with backslashes)."""
    root = table.image_root
    try:
        is_dir = root.is_dir()
    except (OSError, ValueError):  # a name the OS refuses (ENAMETOOLONG): dataset.json's image_root, --image-root
        is_dir = False
    if not is_dir:
        raise DataError(f"image root {root} (for {table.csv_path}) does not exist or is not a folder; pass --image-root")
    paths = table.paths
    probe = paths if check_all_files else paths[: min(len(paths), 64)]
    missing = [(i, p) for i, p in enumerate(probe) if not _is_file(root / p)]
    if probe and len(missing) == len(probe):
        hint = _listed_paths_hint(table, probe)
        if hint:
            raise DataError(f"image root {root} contains none of the files listed in {table.csv_path} "
                            f"(first listed: {paths[0]!r}): {hint}")
        raise DataError(
            f"image root {root} contains none of the files listed in {table.csv_path} "
            f"(first listed: {paths[0]!r}); is --image-root pointing at the right folder?")
    if check_all_files and missing:
        row, p = missing[0]
        raise row_error(table.csv_path, row + 1, f"image file {root / p} does not exist "
                        f"({len(missing)} listed file(s) missing in all)")


def _hash_array(hasher, tag: str, values, dtype) -> None:
    if values is None:
        hasher.update(f"{tag}:absent;".encode())
        return
    array = np.ascontiguousarray(np.asarray(values).astype(dtype, copy=False))
    hasher.update(f"{tag}:{dtype}:{list(array.shape)};".encode())
    hasher.update(array.tobytes())


def table_fingerprint(table: AnnotationTable) -> str:
    """sha256 (hex) of a validated table's content, in row order.

    Covers the row count, the (slash-normalised) paths, the labels and, as present, VA (float32),
    landmarks (float32), votes (float32) and clean labels (int32); an absent column hashes differently
    from any present one. Two tables with the same content give the same digest, whatever other columns
    or formatting their CSVs have; changing one label or reordering rows changes it. Not covered: the
    image bytes, the image root, ``num_classes``.
    """
    hasher = hashlib.sha256(b"fer-table-fingerprint-v1;")
    paths = table.paths
    hasher.update(f"rows:{len(paths)};".encode())
    for path in paths:
        encoded = path.encode("utf-8", "surrogatepass")
        hasher.update(len(encoded).to_bytes(8, "little") + encoded)
    _hash_array(hasher, "labels", table.labels, "<i4")
    _hash_array(hasher, "va", table.va, "<f4")
    _hash_array(hasher, "landmarks", table.landmarks, "<f4")
    _hash_array(hasher, "votes", table.votes, "<f4")
    _hash_array(hasher, "clean_labels", table.clean_labels, "<i4")
    return hasher.hexdigest()


def write_table(frame: pd.DataFrame, csv_path, force: bool = False) -> Path:
    """Write a schema table atomically; refuse to overwrite an existing file unless ``force``."""
    from common.io import atomic_write_text

    csv_path = Path(csv_path)
    if csv_path.exists() and not force:
        raise DataError(f"{csv_path} already exists; pass --force to overwrite it")
    atomic_write_text(csv_path, frame.to_csv(index=False))
    return csv_path
