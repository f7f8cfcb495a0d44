"""Import RAF-DB (basic emotions) into a prepared dataset directory.

Input (the official download)::

    ROOT/EmoLabel/list_patition_label.txt    lines "train_00001.jpg 5" / "test_0001.jpg 1"
    ROOT/Image/aligned/train_00001_aligned.jpg   (--variant original: ROOT/Image/original/train_00001.jpg)

The split comes from the name prefix (train_/test_). RAF labels 1..7 = Surprise, Fear, Disgust, Happiness,
Sadness, Anger, Neutral are mapped to the canonical AffectNet order (1->3, 2->4, 3->5, 4->1, 5->2, 6->6, 7->0).
A malformed line or a label outside 1..7 is an error naming the line; missing images are dropped and
counted (``--strict``: an error). RAF-DB has no valence/arousal: import pseudo-VA afterwards with
``python -m preprocess.va_import``.

Without ``--copy-images`` ``dataset.json``'s ``image_root`` is the original image folder.

Usage::

    python -m preprocess.rafdb --root RAF-DB/basic --out DIR [--variant aligned|original] [--copy-images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from common.errors import DataError
# RAF-DB 1-based label -> canonical index (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger).
from data.classes import RAF_TO_CANONICAL
from data.classes import BASIC7_CLASSES
from common.cli import ArgumentParser, run_command
from common.progress import Progress
from preprocess.common import (ImportReport, add_force_argument, check_can_write, link_or_copy,
                               prepared_outputs, write_prepared)

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # sic: the official file name


def image_name(name: str, variant: str) -> str:
    if variant == "aligned":
        return f"{Path(name).stem}_aligned.jpg"
    return name


def parse_label_file(path) -> list[tuple[int, str, str, int]]:
    """Return ``(line, split, name, canonical_label)`` per non-blank line; DataError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: RAF-DB label file not found (expected ROOT/{LABEL_FILE})")
    out = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2:
                raise DataError(f"{path}, line {number}: expected '<image name> <label 1-7>', got {text[:60]!r}")
            name, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise DataError(f"{path}, line {number}: label {label_text!r} is not an integer 1-7") from None
            if label not in RAF_TO_CANONICAL:
                raise DataError(f"{path}, line {number}: label {label} is outside RAF-DB's 1..7")
            if name.startswith("train_"):
                split = "train"
            elif name.startswith("test_"):
                split = "test"
            else:
                raise DataError(f"{path}, line {number}: image name {name!r} starts with neither 'train_' nor 'test_'")
            out.append((number, split, name, RAF_TO_CANONICAL[label]))
    if not out:
        raise DataError(f"{path}: no labelled lines")
    return out


def import_rafdb(args) -> str:
    root = Path(args.root)
    label_file = Path(args.label_file) if args.label_file else root / LABEL_FILE
    image_dir = Path(args.images) if args.images else root / "Image" / args.variant
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} does not exist (pass --images or --variant)")
    out = Path(args.out)
    outputs = prepared_outputs(out, ("train", "test"))
    if args.copy_images:
        outputs.append(out / "images")
    check_can_write(outputs, args.force)

    entries = parse_label_file(label_file)
    report = ImportReport("rafdb")
    rows = {"train": [], "test": []}
    seen = set()
    progress = Progress("rafdb", len(entries), unit="lines")
    for number, split, name, label in entries:
        progress.update()
        rel = image_name(name, args.variant)
        if name in seen:
            report.drop(split, "duplicate image name", label_file, number, rel)
            continue
        source = image_dir / rel
        if not source.is_file():
            if args.strict:
                raise DataError(f"{label_file}, line {number}: image file {source} does not exist")
            report.drop(split, "missing image file", label_file, number, rel)
            continue
        seen.add(name)
        if args.copy_images:
            link_or_copy(source, out / "images" / rel, mode="copy")
        rows[split].append((rel, label))
    progress.close()
    tables = {split: pd.DataFrame({"path": [r[0] for r in items], "expression": [r[1] for r in items],
                                   "source": "rafdb"}) for split, items in rows.items()}
    image_root = "images" if args.copy_images else str(image_dir.resolve())
    write_prepared(out, tables, dataset="rafdb", class_names=BASIC7_CLASSES, image_root=image_root,
                   report=report, force=args.force, command="preprocess.rafdb", args=args,
                   extra={"variant": args.variant})
    report.note("no valence/arousal in RAF-DB: add pseudo-VA with `python -m preprocess.va_import` for VA-based methods")
    return report.format(out)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.rafdb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="RAF-DB basic folder (EmoLabel/, Image/)")
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory to write")
    parser.add_argument("--variant", choices=("aligned", "original"), default="aligned")
    parser.add_argument("--images", type=Path, default=None, help="image folder (default ROOT/Image/VARIANT)")
    parser.add_argument("--label-file", type=Path, default=None, help=f"default ROOT/{LABEL_FILE}")
    parser.add_argument("--copy-images", action="store_true", help="copy the images into OUT/images")
    parser.add_argument("--strict", action="store_true", help="a missing image is an error")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, import_rafdb, argv)


if __name__ == "__main__":
    raise SystemExit(main())
