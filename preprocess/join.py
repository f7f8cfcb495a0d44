"""Join prepared datasets (e.g. RAF-DB + AffectNet, 7 classes) into one training table.

For the inconsistent-labels protocol: train on the union, test on each dataset separately.

Layout choice: every image is hard-linked (copied when a hard link is impossible, or with ``--link copy``)
into ``OUT/images/<source>/<original path>``, so the joined directory has a single image root
``images`` like any other prepared directory and stays valid if the sources move. Written:

* ``train.csv``: the sources' training rows, in the order given, paths prefixed ``<source>/``, ``source``
  set to the source name. A column is kept only when every source has it (e.g. ``valence``/``arousal``:
  import pseudo-VA for RAF-DB before joining); dropped columns are reported.
* ``test_<source>.csv`` (and ``val_<source>.csv``) per source, plus ``test.csv`` (``val.csv``) with all
  of them concatenated, so the directory also satisfies the prepared-directory contract.

Rows of class 7 (Contempt) are dropped and counted when a source has 8 classes and ``--classes 7``.

Usage::

    python -m preprocess.join --source rafdb=DATA/rafdb --source affectnet=DATA/affectnet --out DATA/raf_affectnet
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from common.errors import DataError
from data.classes import AFFECTNET8_CLASSES
from data.schema import OPTIONAL_COLUMNS, read_csv, validate_frame
from common.cli import ArgumentParser, positive_int, run_command
from common.progress import Progress
from data.prepared import read_dataset_json, resolve_image_root
from preprocess.common import (DATASET_JSON, DROPPED_CSV, ImportReport, add_force_argument,
                               check_can_write, link_or_copy, write_prepared)

SCHEMA_COLUMNS = ("path", "expression") + tuple(c for c in OPTIONAL_COLUMNS if c != "source")


def parse_sources(items) -> list[tuple[str, Path]]:
    sources = []
    for item in items:
        if "=" not in item:
            raise DataError(f"--source {item!r}: expected NAME=DIR (e.g. rafdb=data/rafdb)")
        name, folder = item.split("=", 1)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise DataError(f"--source {item!r}: the name must be letters, digits, '_' or '-'")
        if name in {s[0] for s in sources}:
            raise DataError(f"--source {name} given twice")
        sources.append((name, Path(folder)))
    if len(sources) < 2:
        raise DataError("give at least two --source NAME=DIR")
    return sources


def load_source_split(name, folder: Path, split: str, classes: int, report: ImportReport, strict: bool):
    """A source's split as a frame with prefixed paths plus the list of (source file, destination rel)."""
    csv_path = folder / f"{split}.csv"
    meta = read_dataset_json(folder)
    source_classes = int(meta.get("num_classes", 8))
    frame = read_csv(csv_path)
    table = validate_frame(frame, csv_path, source_classes)
    image_root = resolve_image_root(folder)
    keep, files = [], []
    for row, (rel, label) in enumerate(zip(table.paths, table.labels.tolist()), start=1):
        if label >= classes:
            report.drop(f"{split}_{name}", f"class {label} ({AFFECTNET8_CLASSES[label]}) in a {classes}-class join",
                        csv_path, row, rel)
            continue
        source_file = image_root / rel
        if not source_file.is_file():
            if strict:
                raise DataError(f"{csv_path}, row {row}: image file {source_file} does not exist")
            report.drop(f"{split}_{name}", "missing image file", csv_path, row, rel)
            continue
        keep.append(row - 1)
        files.append((source_file, f"{name}/{rel}"))
    out = table.frame.iloc[keep].reset_index(drop=True)
    out = out[[c for c in SCHEMA_COLUMNS if c in out.columns]].copy()
    out["path"] = [f"{name}/{p}" for p in out["path"]]
    out["source"] = name
    if "votes" in out.columns and source_classes != classes:
        out = out.drop(columns=["votes"])
        report.note(f"{name}: 'votes' dropped ({source_classes} entries per row, the join has {classes} classes)")
    return out, files


def common_columns(frames: dict, split: str, report: ImportReport) -> list[str]:
    columns = [c for c in SCHEMA_COLUMNS if all(c in f.columns for f in frames.values())]
    for column in SCHEMA_COLUMNS:
        lacking = [n for n, f in frames.items() if column not in f.columns]
        if column not in columns and len(lacking) < len(frames):
            report.note(f"{split}.csv: column '{column}' dropped: missing in source(s) {', '.join(lacking)}"
                        + (" (add pseudo-VA with `python -m preprocess.va_import` before joining)"
                           if column in ("valence", "arousal") else ""))
    if "landmarks" in columns:
        counts = {n: len(str(f["landmarks"].iloc[0]).split(";")) for n, f in frames.items() if len(f)}
        if len(set(counts.values())) > 1:
            columns.remove("landmarks")
            report.note(f"{split}.csv: column 'landmarks' dropped: different point counts per source {counts}")
    return columns + ["source"]


def join(args) -> str:
    sources = parse_sources(args.source)
    out = Path(args.out)
    splits_per_source = {}
    for name, folder in sources:
        if not (folder / "train.csv").is_file() or not (folder / "test.csv").is_file():
            raise DataError(f"{folder}: not a prepared dataset directory (needs train.csv and test.csv)")
        splits_per_source[name] = [s for s in ("train", "val", "test") if (folder / f"{s}.csv").is_file()]
    has_val = any("val" in s for s in splits_per_source.values())
    outputs = [out / "train.csv", out / "test.csv", out / DATASET_JSON, out / DROPPED_CSV]
    outputs += [out / "val.csv"] if has_val else []
    for name, _folder in sources:
        outputs += [out / f"{s}_{name}.csv" for s in splits_per_source[name] if s != "train"]
        outputs.append(out / "images" / name)
    check_can_write(outputs, args.force)

    report = ImportReport("join")
    per_split: dict[str, dict[str, pd.DataFrame]] = {"train": {}, "val": {}, "test": {}}
    all_files = []
    for name, folder in sources:
        for split in splits_per_source[name]:
            frame, files = load_source_split(name, folder, split, args.classes, report, args.strict)
            per_split[split][name] = frame
            all_files.extend(files)

    tables = {}
    for split in ("train", "val", "test"):
        frames = per_split[split]
        if not frames:
            continue
        columns = common_columns(frames, split, report)
        tables[split] = pd.concat([f[columns] for f in frames.values()], ignore_index=True)
        if split != "train":
            for name, frame in frames.items():
                tables[f"{split}_{name}"] = frame

    progress = Progress("join: linking images", len(all_files), unit="images")
    methods = set()
    for source_file, rel in all_files:
        methods.add(link_or_copy(source_file, out / "images" / rel, mode=args.link))
        progress.update()
    progress.close()
    write_prepared(out, tables, dataset="csv", class_names=AFFECTNET8_CLASSES[: args.classes], image_root="images",
                   report=report, force=args.force, command="preprocess.join", args=args,
                   extra={"sources": {name: str(folder.resolve()) for name, folder in sources},
                          "image_placement": sorted(methods)})
    report.note(f"images placed under {out / 'images'}/<source>/ by {' and '.join(sorted(methods)) or 'nothing'}")
    return report.format(out)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.join", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", action="append", default=[], metavar="NAME=DIR",
                        help="a prepared dataset directory and its name (repeat; at least two)")
    parser.add_argument("--out", type=Path, required=True, help="joined dataset directory to write")
    parser.add_argument("--classes", type=positive_int, choices=(7, 8), default=7, help="class count of the join (default 7)")
    parser.add_argument("--link", choices=("hardlink", "copy"), default="hardlink",
                        help="hardlink (falls back to copy across file systems) or copy")
    parser.add_argument("--strict", action="store_true", help="a missing image is an error")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, join, argv)


if __name__ == "__main__":
    raise SystemExit(main())
