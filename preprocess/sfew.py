"""Import SFEW 2.0 into a prepared dataset directory.

Input::

    ROOT/Train/<Emotion>/*.png|jpg   -> train.csv
    ROOT/Val/<Emotion>/*.png|jpg     -> test.csv  (SFEW's test labels are not public; Val is the test set)

Emotion folders (case-insensitive): Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, or the canonical
names (Anger, Happiness, Sadness, ...). An unknown folder is an error; non-image files are skipped and
counted ("not an image file"), and so are files named like images that fail the integrity check of
``data.images.check_image_bytes`` — empty, truncated, not an image, over the pixel limit ("unreadable
image"). Without ``--copy-images`` ``dataset.json``'s ``image_root`` is ROOT and paths are
``Train/Angry/x.png``; with it, the same relative paths under OUT/images.

Usage::

    python -m preprocess.sfew --root SFEW_2 --out DIR [--train-dir Train] [--val-dir Val] [--copy-images]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from common.errors import DataError
from data.classes import BASIC7_CLASSES
from data.images import scan_images
from common.cli import run_command
from common.progress import Progress
from preprocess.common import (IMAGE_EXTENSIONS, ImportReport, add_force_argument, check_can_write,
                               link_or_copy, prepared_outputs, write_prepared)

FOLDER_TO_CANONICAL = {
    "neutral": 0, "happy": 1, "happiness": 1, "sad": 2, "sadness": 2, "surprise": 3, "surprised": 3,
    "fear": 4, "disgust": 5, "angry": 6, "anger": 6,
}


def find_dir(root: Path, name: str) -> Path:
    """``root/name`` matched case-insensitively."""
    direct = root / name
    if direct.is_dir():
        return direct
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and child.name.lower() == name.lower():
                return child
    raise DataError(f"{root}: no '{name}' folder (expected {root / name}/<Emotion>/*.png; pass --train-dir/--val-dir)")


def scan_split(split_dir: Path, split: str, root: Path, report: ImportReport):
    rows = []
    emotion_dirs = sorted(p for p in split_dir.iterdir() if not p.name.startswith("."))
    for child in emotion_dirs:
        if not child.is_dir():
            report.drop(split, "file outside an emotion folder", path=str(child.relative_to(root)))
            continue
        label = FOLDER_TO_CANONICAL.get(child.name.lower())
        if label is None:
            raise DataError(f"{child}: unknown emotion folder '{child.name}'; expected one of Angry, Disgust, Fear, "
                            "Happy, Neutral, Sad, Surprise (case-insensitive) or the canonical names")
        progress = Progress(f"sfew {split}/{child.name}", unit="files")
        for path in sorted(child.rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            progress.update()
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                report.drop(split, "not an image file", path=rel)
                continue
            rows.append((rel, label, path))
        progress.close()
    # Named .png/.jpg is not proof: the integrity check (header, truncation, pixel limit) drops the rest.
    bad = {b.row for b in scan_images(root, [r[0] for r in rows])}
    for i in sorted(bad):
        report.drop(split, "unreadable image", path=rows[i][0])
    rows = [r for i, r in enumerate(rows) if i not in bad]
    if not rows:
        raise DataError(f"{split_dir}: no images found in emotion folders")
    return rows


def import_sfew(args) -> str:
    root = Path(args.root)
    if not root.is_dir():
        raise DataError(f"SFEW folder {root} does not exist")
    out = Path(args.out)
    outputs = prepared_outputs(out, ("train", "test"))
    if args.copy_images:
        outputs.append(out / "images")
    check_can_write(outputs, args.force)
    report = ImportReport("sfew")
    tables = {}
    for split, name in (("train", args.train_dir), ("test", args.val_dir)):
        rows = scan_split(find_dir(root, name), split, root, report)
        if args.copy_images:
            for rel, _label, path in rows:
                link_or_copy(path, out / "images" / rel, mode="copy")
        tables[split] = pd.DataFrame({"path": [r[0] for r in rows], "expression": [r[1] for r in rows],
                                      "source": "sfew"})
    image_root = "images" if args.copy_images else str(root.resolve())
    write_prepared(out, tables, dataset="sfew", class_names=BASIC7_CLASSES, image_root=image_root,
                   report=report, force=args.force, command="preprocess.sfew", args=args)
    report.note("no valence/arousal in SFEW: add pseudo-VA with `python -m preprocess.va_import` for VA-based methods")
    return report.format(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preprocess.sfew", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="SFEW 2.0 folder holding Train/ and Val/")
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory to write")
    parser.add_argument("--train-dir", default="Train", help="training folder under ROOT (default Train)")
    parser.add_argument("--val-dir", default="Val", help="validation folder under ROOT, written as test (default Val)")
    parser.add_argument("--copy-images", action="store_true", help="copy the images into OUT/images")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, import_sfew, argv)


if __name__ == "__main__":
    raise SystemExit(main())
