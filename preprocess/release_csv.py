"""Convert the official LDLVA release CSVs into a prepared dataset directory.

The release's train CSV has ``subDirectory_filePath, expression, valence, arousal, knn`` (``knn`` =
``;``-separated 0-based row indices into the same CSV, nearest first); its test/val CSVs need only
``subDirectory_filePath, expression``. The rows are kept in their order (the ``knn`` indices refer to it);
the neighbour lists go to ``train.neighbors.npz`` (with Euclidean VA distances computed from the table),
all columns of ``knn`` (every row must list at least as many as the shortest row; extra entries are cut),
with the fingerprint of the written ``train.csv`` (algorithm ``release-knn``) so training can check it.

Usage::

    python -m preprocess.release_csv --train train.csv --test test.csv [--val val.csv] \\
        --image-root IMAGES --out DIR [--classes 7] [--copy-images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from data.classes import AFFECTNET8_CLASSES
from data.neighbors import parse_knn_column, save_neighbor_table
from data.schema import validate_frame
from common.cli import ArgumentParser, positive_int, run_command
from common.progress import Progress
from preprocess.common import (ImportReport, add_force_argument, check_can_write, link_or_copy,
                               normalize_relpath, prepared_outputs, read_raw_csv, require_columns, write_prepared)

PATH_COLUMN = "subDirectory_filePath"


def convert_release_frame(frame: pd.DataFrame, path, require_va: bool) -> pd.DataFrame:
    """Release columns -> schema columns (row order kept). VA is kept when present."""
    required = (PATH_COLUMN, "expression") + (("valence", "arousal") if require_va else ())
    require_columns(frame, required, path)
    out = pd.DataFrame({"path": [normalize_relpath(p) for p in frame[PATH_COLUMN]]})
    out["expression"] = frame["expression"].str.strip()
    for row, value in enumerate(out["expression"].tolist()):
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not np.isfinite(number) or number != int(number):
            raise DataError(f"{path}, row {row + 1}: 'expression' must be an integer class index, got {value!r}")
    out["expression"] = out["expression"].astype(float).astype(int)
    if "valence" in frame.columns and "arousal" in frame.columns:
        for column in ("valence", "arousal"):
            values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
            bad = ~np.isfinite(values.to_numpy(np.float64))
            if bad.any():
                row = int(np.flatnonzero(bad)[0]) + 1
                raise DataError(f"{path}, row {row}: '{column}' is not a finite number: {frame[column].iloc[row - 1]!r}")
            out[column] = values.astype(np.float64)
    return out


def knn_count(values, path) -> int:
    counts = [len([v for v in str(text).split(";") if v.strip() != ""]) for text in values]
    k = min(counts)
    if k == 0:
        row = counts.index(0) + 1
        raise DataError(f"{path}, row {row}: 'knn' is empty")
    return k


def import_release(args) -> str:
    out = Path(args.out)
    splits = {"train": Path(args.train), "test": Path(args.test)}
    if args.val:
        splits["val"] = Path(args.val)
    outputs = prepared_outputs(out, splits) + [out / "train.neighbors.npz"]
    if args.copy_images:
        outputs.append(out / "images")
    check_can_write(outputs, args.force)
    image_root = Path(args.image_root)
    if not image_root.is_dir():
        raise DataError(f"image root {image_root} does not exist (the release's --train_image_dir)")
    class_names = AFFECTNET8_CLASSES[: args.classes]
    report = ImportReport("release_csv")
    tables = {}
    train_raw = None
    for split, path in splits.items():
        raw = read_raw_csv(path, f"release {split} CSV")
        raw.columns = [str(c).strip() for c in raw.columns]
        tables[split] = convert_release_frame(raw, path, require_va=(split == "train"))
        validate_frame(tables[split], path, args.classes)  # errors name the release file and row
        tables[split]["source"] = args.source
        if split == "train":
            train_raw = raw
    require_columns(train_raw, ("knn",), splits["train"])
    train = tables["train"]
    k = knn_count(train_raw["knn"], splits["train"])
    indices = parse_knn_column(train_raw["knn"].tolist(), len(train), k, splits["train"])
    va = train[["valence", "arousal"]].to_numpy(np.float64)
    distances = np.linalg.norm(va[indices] - va[:, None, :], axis=-1).astype(np.float32)

    if args.check_images or args.copy_images:
        for split, table in tables.items():
            progress = Progress(f"release {split}: images", len(table), unit="images")
            for row, rel in enumerate(table["path"].tolist(), start=1):
                progress.update()
                source = image_root / rel
                if not source.is_file():
                    raise DataError(f"{splits[split]}, row {row}: image file {source} does not exist "
                                    "(rows cannot be dropped: the knn indices refer to the row order)")
                if args.copy_images:
                    link_or_copy(source, out / "images" / rel, mode=args.copy_mode)
            progress.close()

    root_value = "images" if args.copy_images else str(image_root.resolve())
    write_prepared(out, tables, dataset=args.dataset, class_names=class_names, image_root=root_value,
                   report=report, force=args.force, command="preprocess.release_csv", args=args,
                   extra={"keeps_neighbors": True, "num_neighbors": k})
    from data.schema import read_csv
    from preprocess.knn import frame_fingerprint

    written = out / "train.csv"  # fingerprint what training will read back
    save_neighbor_table(out / "train.neighbors.npz", indices.astype(np.int64), distances, force=args.force,
                        fingerprint=frame_fingerprint(read_csv(written), written), algorithm="release-knn")
    report.note(f"train.neighbors.npz: {len(train)} x {k} neighbours from the release's knn column")
    return report.format(out)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.release_csv", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="release train CSV (with valence, arousal, knn)")
    parser.add_argument("--test", type=Path, required=True, help="release test CSV")
    parser.add_argument("--val", type=Path, default=None, help="optional release validation CSV")
    parser.add_argument("--image-root", type=Path, required=True, help="folder the subDirectory_filePath values are relative to")
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory to write")
    parser.add_argument("--classes", type=positive_int, choices=(7, 8), default=7, help="class count (canonical order; default 7)")
    parser.add_argument("--dataset", default="csv", help="dataset name recorded in dataset.json (default csv)")
    parser.add_argument("--source", default="release", help="value of the 'source' column (default release)")
    parser.add_argument("--check-images", action="store_true", help="fail when a listed image file is missing")
    parser.add_argument("--copy-images", action="store_true", help="place the images under OUT/images")
    parser.add_argument("--copy-mode", choices=("hardlink", "copy"), default="hardlink",
                        help="how --copy-images places files (hardlink falls back to copy)")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, import_release, argv)


if __name__ == "__main__":
    raise SystemExit(main())
