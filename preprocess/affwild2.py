"""Import Aff-Wild2 (the ABAW challenges' layout) into a prepared dataset directory of video frames.

Input::

    ROOT/VA_Estimation_Challenge/Train_Set/<video>.txt         -> train.csv   (--va-dir overrides the folder)
    ROOT/VA_Estimation_Challenge/Validation_Set/<video>.txt    -> test.csv
    ROOT/cropped_aligned/<video>/<frame:05d>.jpg                             (--images)
    ROOT/EXPR_Classification_Challenge/{Train_Set,Validation_Set}/<video>.txt  (--expr-dir; --labels expr)

A VA file's first line is the header ``valence,arousal``; line k + 1 holds frame k's ``v,a`` (frame numbers
are 1-based, the image is ``<video>/<k:05d>.jpg``); ``-5`` in either value means "not annotated". An EXPR
file's header is ``Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other`` and line k + 1 holds frame
k's label index in that order, ``-1`` = no label. The splits are the VA challenge's (Validation_Set is the
test set); a video's EXPR file is looked up in the EXPR Train_Set and Validation_Set alike (the two
challenges split the videos differently; the labels of a video are the same wherever it is listed).

Labels (``--labels``), always in canonical AffectNet order, 7 classes:

* ``expr``: the EXPR annotation mapped Neutral->0, Happiness->1, Sadness->2, Surprise->3, Fear->4,
  Disgust->5, Anger->6; ``Other`` and ``-1`` frames are dropped and counted.
* ``va-gmm`` (DDAF's AffectNet-GMM labelling): one Gaussian per class is fitted on the VA of a prepared
  AffectNet directory's train.csv (``--affectnet DIR``) with :func:`losses.ddaf.trimmed_class_stats`
  (trimmed mean and covariance, prior n_k/N), and each frame gets the class of highest posterior
  (:func:`losses.ddaf.gmm_mixed_labels`; ties go to the lower class index). An 8-class AffectNet directory's
  Contempt rows are left out, so the mixture has the 7 output classes. The fitted means, covariances and
  priors are recorded in dataset.json.

Dropped and counted (one dropped.csv line each; ``row`` is the frame number): ``-5`` VA, frames without an
image, and with ``--labels expr`` frames without a label (``-1``, ``Other``, past the end of the EXPR file,
or no EXPR file for the video). A line that is not two numbers (or one integer in an EXPR file), or a
value outside [-1, 1] other than ``-5`` (outside -1..7 for EXPR), is an error naming the file and row, or,
with ``--skip-bad-lines``, dropped and counted. Trailing blank lines are ignored.

``--every N`` keeps every Nth usable frame of each video (the 1st, (N+1)th, ...; usable = annotated, labelled
and with an image): the frames left out by sampling are counted in dataset.json's ``sampled_out`` and the
summary, not in dropped.csv. Nothing is copied: ``image_root`` is the cropped_aligned folder.

Usage::

    python -m preprocess.affwild2 --root AFFWILD2 --out DIR [--labels expr] [--every N]
    python -m preprocess.affwild2 --root AFFWILD2 --out DIR --labels va-gmm --affectnet PREPARED_AFFECTNET [--every N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from common.cli import ArgumentParser, positive_int, run_command
from common.errors import DataError
from common.progress import Progress
from data.classes import BASIC7_CLASSES
from preprocess.common import ImportReport, add_force_argument, check_can_write, prepared_outputs, write_prepared

SPLIT_DIRS = (("Train_Set", "train"), ("Validation_Set", "test"))
VA_HEADER = ("valence", "arousal")
EXPR_HEADER = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "other")
# Aff-Wild2 EXPR index -> canonical AffectNet index; 7 (Other) has none.
EXPR_TO_CANONICAL = {0: 0, 1: 6, 2: 5, 3: 4, 4: 1, 5: 2, 6: 3}
EXPR_OTHER = 7
VA_MISSING = -5.0
NUM_CLASSES = 7
GMM_CHUNK = 100_000

DROP_NO_VA = "no VA annotation (-5)"
DROP_NO_IMAGE = "missing frame image"
DROP_EXPR_NONE = "expression -1 (no label)"
DROP_EXPR_OTHER = "expression Other"
DROP_EXPR_PAST_END = "frame past the end of the EXPR file"
DROP_EXPR_NO_FILE = "no EXPR annotation file for the video"
DROP_BAD_VA_LINE = "unparseable VA line"
DROP_BAD_VA_RANGE = "valence/arousal outside [-1, 1] (not -5)"
DROP_BAD_EXPR_LINE = "unparseable EXPR line"


def _read_lines(path: Path, header: tuple[str, ...], what: str) -> list[str]:
    """The data lines of an annotation file (header checked, trailing blank lines dropped)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: the file is empty (expected the header {','.join(header)!r})")
    found = tuple(p.strip().lower() for p in lines[0].split(","))
    if found != header:
        raise DataError(f"{path}, line 1: expected the {what} header {','.join(header)!r}, got {lines[0][:80]!r}")
    return lines[1:]


def parse_va_line(line: str):
    """``(v, a)`` floats, or None when the line is not two numbers."""
    parts = line.split(",")
    if len(parts) != 2:
        return None
    try:
        v, a = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return v, a


def read_expr_file(path: Path, split: str, args, report: ImportReport) -> list:
    """Per frame (index frame - 1): the Aff-Wild2 EXPR index (-1..7), or a drop reason string."""
    labels = []
    for index, line in enumerate(_read_lines(path, EXPR_HEADER, "EXPR"), start=1):
        text = line.strip()
        try:
            value = float(text)
            ok = np.isfinite(value) and value == int(value) and -1 <= value <= EXPR_OTHER
        except ValueError:
            ok = False
        if not ok:
            if not args.skip_bad_lines:
                raise DataError(f"{path}, row {index}: expected one integer -1..7 (frame {index:05d}'s label), "
                                f"got {line[:40]!r}; pass --skip-bad-lines to drop such frames")
            labels.append(DROP_BAD_EXPR_LINE)
            continue
        labels.append(int(value))
    return labels


def _frame_names(folder: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(folder) if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _video_frames(va_path: Path, split: str, args, expr_files: dict, report: ImportReport, missing_folders: list):
    """Usable frames of one video as (frame, v, a, expr label or None), after the drops."""
    video = va_path.stem
    lines = _read_lines(va_path, VA_HEADER, "VA")
    expr = None
    expr_path = None
    if args.labels == "expr":
        expr_path = expr_files.get(video)
        expr = read_expr_file(expr_path, split, args, report) if expr_path is not None else None
    names = _frame_names(Path(args.images) / video)
    if not names:
        missing_folders.append(video)
    usable = []
    for frame, line in enumerate(lines, start=1):
        rel = f"{video}/{frame:05d}.jpg"
        parsed = parse_va_line(line)
        if parsed is None or not all(np.isfinite(parsed)):
            if not args.skip_bad_lines:
                raise DataError(f"{va_path}, row {frame}: expected 'valence,arousal' numbers (frame {frame:05d}), "
                                f"got {line[:40]!r}; pass --skip-bad-lines to drop such frames")
            report.drop(split, DROP_BAD_VA_LINE, va_path, frame, rel)
            continue
        v, a = parsed
        if v == VA_MISSING or a == VA_MISSING:
            report.drop(split, DROP_NO_VA, va_path, frame, rel)
            continue
        if abs(v) > 1 or abs(a) > 1:
            if not args.skip_bad_lines:
                raise DataError(f"{va_path}, row {frame}: valence/arousal ({v:g}, {a:g}) outside [-1, 1] and not "
                                f"the -5 'not annotated' mark; pass --skip-bad-lines to drop such frames")
            report.drop(split, DROP_BAD_VA_RANGE, va_path, frame, rel)
            continue
        label = None
        if args.labels == "expr":
            if expr is None:
                report.drop(split, DROP_EXPR_NO_FILE, va_path, frame, rel)
                continue
            if frame > len(expr):
                report.drop(split, DROP_EXPR_PAST_END, expr_path, frame, rel)
                continue
            code = expr[frame - 1]
            if isinstance(code, str):
                report.drop(split, code, expr_path, frame, rel)
                continue
            if code == -1:
                report.drop(split, DROP_EXPR_NONE, expr_path, frame, rel)
                continue
            if code == EXPR_OTHER:
                report.drop(split, DROP_EXPR_OTHER, expr_path, frame, rel)
                continue
            label = EXPR_TO_CANONICAL[code]
        if f"{frame:05d}.jpg" not in names:
            report.drop(split, DROP_NO_IMAGE, va_path, frame, rel)
            continue
        usable.append((rel, v, a, label))
    return usable


def fit_affectnet_gmm(affectnet_dir) -> tuple[dict, int]:
    """Per-class Gaussians (7 classes) on the VA of a prepared AffectNet directory's train.csv."""
    from common.cli import quiet_tensorflow
    from data.prepared import read_dataset_json
    from data.schema import read_csv, validate_frame

    quiet_tensorflow()  # losses.ddaf imports TensorFlow
    from losses.ddaf import trimmed_class_stats

    affectnet_dir = Path(affectnet_dir)
    if not affectnet_dir.is_dir():
        raise DataError(f"--affectnet {affectnet_dir}: not a folder (prepare it with `python -m preprocess.affectnet`)")
    num_classes = read_dataset_json(affectnet_dir).get("num_classes", 8)
    if num_classes not in (7, 8):
        raise DataError(f"{affectnet_dir / 'dataset.json'}: num_classes is {num_classes}; expected an AffectNet "
                        f"directory with 7 or 8 classes")
    path = affectnet_dir / "train.csv"
    table = validate_frame(read_csv(path), path, num_classes, require_va=True)
    keep = table.labels < NUM_CLASSES
    va = table.frame[["valence", "arousal"]].to_numpy(np.float64)[keep]  # float64, not the table's float32
    labels = table.labels[keep]
    present = np.bincount(labels, minlength=NUM_CLASSES)
    if (present == 0).any():
        missing = [BASIC7_CLASSES[k] for k in np.flatnonzero(present == 0)]
        raise DataError(f"{path}: no rows of class(es) {', '.join(missing)}; the VA mixture needs every one of the "
                        f"7 classes")
    stats = trimmed_class_stats(va, labels, NUM_CLASSES)
    return {"means": stats.means, "covariances": stats.covariances, "priors": stats.priors}, int(len(labels))


def gmm_labels(va: np.ndarray, gmm: dict) -> np.ndarray:
    """Class of highest GMM posterior per VA row (chunked; ties to the lower index)."""
    from losses.ddaf import gmm_mixed_labels

    out = np.empty(len(va), np.int64)
    for start in range(0, len(va), GMM_CHUNK):
        chunk = va[start:start + GMM_CHUNK]
        out[start:start + len(chunk)] = gmm_mixed_labels(chunk, gmm["means"], gmm["covariances"],
                                                         gmm["priors"]).argmax(axis=1)
    return out


def import_affwild2(args) -> str:
    root = Path(args.root) if args.root else None
    if root is None and not (args.va_dir and args.images):
        raise DataError("pass --root (holding VA_Estimation_Challenge/ and cropped_aligned/) or --va-dir and --images")
    args.va_dir = Path(args.va_dir) if args.va_dir else root / "VA_Estimation_Challenge"
    args.images = Path(args.images) if args.images else root / "cropped_aligned"
    if args.labels == "expr" and args.expr_dir is None:
        if root is None:
            raise DataError("--labels expr needs --expr-dir (or --root holding EXPR_Classification_Challenge/)")
        args.expr_dir = root / "EXPR_Classification_Challenge"
    if args.labels == "va-gmm" and args.affectnet is None:
        raise DataError("--labels va-gmm needs --affectnet DIR, a prepared AffectNet directory (python -m "
                        "preprocess.affectnet) whose train.csv VA the class Gaussians are fitted on")
    if args.labels == "expr" and args.affectnet is not None:
        raise DataError("--affectnet is used by --labels va-gmm only")
    split_dirs = {split: args.va_dir / name for name, split in SPLIT_DIRS}
    for split, folder in split_dirs.items():
        if not folder.is_dir():
            raise DataError(f"{folder}: Aff-Wild2 VA annotation folder for the {split} split not found (pass --va-dir)")
    if not args.images.is_dir():
        raise DataError(f"{args.images}: frame folder not found (pass --images, the cropped_aligned folder)")
    expr_files: dict[str, Path] = {}
    if args.labels == "expr":
        folders = [args.expr_dir / name for name, _ in SPLIT_DIRS]
        if not any(f.is_dir() for f in folders):
            raise DataError(f"{args.expr_dir}: no Train_Set/ or Validation_Set/ of EXPR annotation files (pass --expr-dir)")
        for folder in reversed(folders):  # Train_Set wins if a video is listed in both
            if folder.is_dir():
                expr_files.update({p.stem: p for p in folder.glob("*.txt")})
    out = Path(args.out)
    check_can_write(prepared_outputs(out, split_dirs), args.force)
    gmm, gmm_rows = (fit_affectnet_gmm(args.affectnet) if args.labels == "va-gmm" else (None, 0))

    report = ImportReport("affwild2")
    tables, sampled_out, missing_folders = {}, {}, []
    seen_videos: dict[str, str] = {}
    for split, folder in split_dirs.items():
        videos = sorted(folder.glob("*.txt"))
        if not videos:
            raise DataError(f"{folder}: no <video>.txt VA annotation files")
        progress = Progress(f"affwild2 {split} ({folder.name})", len(videos), unit="videos")
        rows, skipped = [], 0
        for va_path in videos:
            progress.update()
            if va_path.stem in seen_videos:
                raise DataError(f"{va_path}: video {va_path.stem!r} is listed in {seen_videos[va_path.stem]} too; "
                                f"a video must be in one split")
            seen_videos[va_path.stem] = folder.name
            usable = _video_frames(va_path, split, args, expr_files, report, missing_folders)
            kept = usable[::args.every]
            skipped += len(usable) - len(kept)
            rows.extend(kept)
        progress.close()
        table = pd.DataFrame({"path": [r[0] for r in rows], "expression": [r[3] for r in rows],
                              "valence": [r[1] for r in rows], "arousal": [r[2] for r in rows]})
        if gmm is not None and len(table):
            table["expression"] = gmm_labels(table[["valence", "arousal"]].to_numpy(np.float64), gmm)
        table["expression"] = table["expression"].astype("int64")
        table["source"] = "affwild2"
        tables[split] = table
        sampled_out[split] = skipped
    if any(sampled_out.values()):
        report.note(f"--every {args.every}: left out " + ", ".join(f"{n} {s}" for s, n in sampled_out.items())
                    + " usable frame(s) by sampling (not in dropped.csv)")
    if missing_folders:
        report.note(f"warning: {len(missing_folders)} video(s) have no frame folder under {args.images} "
                    f"(first: {missing_folders[0]}); their frames are dropped as '{DROP_NO_IMAGE}'")
    extra = {"labels": args.labels, "every": args.every, "sampled_out": sampled_out}
    if gmm is not None:
        extra["va_gmm"] = {"affectnet": str(Path(args.affectnet).resolve()), "affectnet_rows": gmm_rows,
                           **{k: np.asarray(v).tolist() for k, v in gmm.items()}}
    write_prepared(out, tables, dataset="affwild2", class_names=BASIC7_CLASSES, image_root=str(args.images.resolve()),
                   report=report, force=args.force, command="preprocess.affwild2", args=args, extra=extra)
    return report.format(out, show_examples=(DROP_NO_IMAGE, DROP_BAD_VA_LINE, DROP_BAD_VA_RANGE, DROP_BAD_EXPR_LINE))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.affwild2", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="Aff-Wild2 folder with VA_Estimation_Challenge/, cropped_aligned/ "
                                                  "(and EXPR_Classification_Challenge/)")
    parser.add_argument("--va-dir", type=Path, default=None, help="default ROOT/VA_Estimation_Challenge")
    parser.add_argument("--expr-dir", type=Path, default=None, help="default ROOT/EXPR_Classification_Challenge")
    parser.add_argument("--images", type=Path, default=None, help="default ROOT/cropped_aligned")
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory to write")
    parser.add_argument("--labels", choices=("expr", "va-gmm"), default="expr",
                        help="expr: the EXPR annotations (default); va-gmm: class of highest posterior under "
                             "per-class VA Gaussians fitted on --affectnet")
    parser.add_argument("--affectnet", type=Path, default=None, help="prepared AffectNet directory (--labels va-gmm)")
    parser.add_argument("--every", type=positive_int, default=1, help="keep every Nth usable frame of each video")
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="drop (and count) unparseable or out-of-range annotation lines instead of failing")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, import_affwild2, argv)


if __name__ == "__main__":
    raise SystemExit(main())
