"""Import FERPlus (FER2013 images + the FERPlus 10-annotator votes) into a prepared dataset directory.

Input::

    fer2013.csv      emotion,pixels,Usage              (48x48 grayscale, space-separated pixels)
    fer2013new.csv   Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF

The two files are aligned row by row (FERPlus's own convention). Usage Training -> train, PublicTest -> val,
PrivateTest -> test; images are written from the pixels to OUT/images/{train,val,test}/<Image name>.

Votes are stored in ``votes`` in canonical order (0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear,
5 disgust, 6 anger, 7 contempt) as raw counts. The label follows FERPlus's "majority" mode
(``src/ferplus.py``: single votes are removed as outliers, then one category must hold more than half of
the remaining votes, and samples whose winner is unknown or NF are dropped). Each drop is counted by
reason:

* empty ``Image name`` (FERPlus removed the image);
* ``--nf-rule any`` (default): any NF (not-a-face) vote; ``--nf-rule majority``: only when NF wins;
* winner is ``unknown`` / ``NF``;
* tie between emotions for the most votes (no unique majority);
* no category holds more than half of the votes.

``--label-rule plurality`` (LA-Net's labelling) instead takes the most-voted emotion over the raw counts
(no outlier removal, no more-than-half requirement). Ties are not broken: when two or more emotions share
the top count the row is dropped as a tie (breaking it by column order would favour neutral); when
``unknown`` or ``NF`` holds the top count (alone or tied) the row is dropped as for majority.

``--classes 8`` (default) keeps the 8 classes. ``--classes 7`` (NLA's 7-class FERPlus) removes Contempt:
the label is decided with the chosen rule over all 10 columns exactly as for 8 classes, a row whose label
is Contempt is dropped ("Contempt (7) in a 7-class import"), and ``votes`` keeps only the 7 basic counts
(the contempt count is left out, so a kept row's votes may sum to less than 10). The dataset is then named
``ferplus7``.

Usage::

    python -m preprocess.ferplus --fer2013 fer2013.csv --ferplus fer2013new.csv --out DIR [--format png|jpg]
                                 [--classes 7|8] [--label-rule majority|plurality] [--nf-rule any|majority]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from data.classes import AFFECTNET8_CLASSES
from common.cli import ArgumentParser, percent_quality, positive_int, run_command
from common.progress import Progress
from preprocess.common import (ImportReport, add_force_argument, check_can_write, parse_float,
                               prepared_outputs, read_raw_csv, require_columns, write_image, write_prepared)

USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
# fer2013new.csv vote columns in canonical order, then the two non-emotion columns.
VOTE_COLUMNS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
EXTRA_COLUMNS = ("unknown", "NF")
IMAGE_SIDE = 48

DROP_EMPTY_NAME = "empty image name in fer2013new.csv"
DROP_NF_ANY = "NF (not a face) vote > 0"
DROP_UNKNOWN = "unknown has the majority"
DROP_NF = "NF has the majority"
DROP_TIE = "tie between emotions (no unique majority)"
DROP_NO_MAJORITY = "no category holds more than half of the votes"
DROP_CONTEMPT = "Contempt (7) in a 7-class import"


def ferplus_label(votes10: np.ndarray, rule: str = "majority") -> tuple[int | None, str | None]:
    """Label of one sample from its 10 counts (8 canonical emotions, unknown, NF): ``(label, None)`` or
    ``(None, drop reason)``.

    ``majority`` mirrors FERPlus ``_process_data(mode='majority')``: counts of 1 are zeroed as outliers and
    the top category must exceed half of the remaining votes; an unknown/NF winner is dropped.
    """
    votes = np.asarray(votes10, np.float64).copy()
    if rule == "majority":
        votes[votes < 1.0 + 1e-9] = 0.0
        total = votes.sum()
        top = votes.max()
        if total <= 0:
            return None, DROP_NO_MAJORITY
        winners = np.flatnonzero(votes == top)
        if top > 0.5 * total:
            winner = int(winners[0])
            if winner == 8:
                return None, DROP_UNKNOWN
            if winner == 9:
                return None, DROP_NF
            return winner, None
        if len(winners) > 1 and winners.max() < 8:
            return None, DROP_TIE
        return None, DROP_NO_MAJORITY
    if rule == "plurality":
        top = votes.max()
        winners = np.flatnonzero(votes == top)
        if top <= 0:
            return None, DROP_NO_MAJORITY
        if 8 in winners:
            return None, DROP_UNKNOWN
        if 9 in winners:
            return None, DROP_NF
        if len(winners) > 1:
            return None, DROP_TIE
        return int(winners[0]), None
    raise ValueError(f"unknown label rule {rule!r}")


def decode_pixels(text, path, row: int) -> np.ndarray:
    parts = str(text).split()
    if len(parts) != IMAGE_SIDE * IMAGE_SIDE:
        raise DataError(f"{path}, row {row}: 'pixels' has {len(parts)} values; expected "
                        f"{IMAGE_SIDE * IMAGE_SIDE} (48x48 grayscale)")
    try:
        values = np.asarray([int(p) for p in parts], dtype=np.int64)
    except ValueError:
        raise DataError(f"{path}, row {row}: 'pixels' holds a value that is not an integer") from None
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"{path}, row {row}: 'pixels' values must lie in 0..255")
    return values.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)


def import_ferplus(args) -> str:
    fer_path, new_path = Path(args.fer2013), Path(args.ferplus)
    out = Path(args.out)
    check_can_write(prepared_outputs(out, ("train", "val", "test")) + [out / "images"], args.force)
    fer = read_raw_csv(fer_path, "fer2013.csv")
    fer.columns = [str(c).strip() for c in fer.columns]
    require_columns(fer, ("pixels", "Usage"), fer_path)
    new = read_raw_csv(new_path, "fer2013new.csv")
    new.columns = [str(c).strip() for c in new.columns]
    require_columns(new, ("Usage", "Image name") + VOTE_COLUMNS + EXTRA_COLUMNS, new_path)
    if len(fer) != len(new):
        raise DataError(f"{new_path} has {len(new)} rows but {fer_path} has {len(fer)}; FERPlus labels are matched "
                        "to FER2013 images row by row, so both must be the complete original files")

    num_classes = args.classes
    dataset = "ferplus" if num_classes == 8 else "ferplus7"
    report = ImportReport(dataset)
    rows = {"train": [], "val": [], "test": []}
    seen = set()
    extension = "." + args.format
    fer_records = fer.to_dict("records")
    new_records = new.to_dict("records")
    progress = Progress("ferplus", len(new_records))
    for index, (frec, nrec) in enumerate(zip(fer_records, new_records)):
        row = index + 1
        progress.update()
        usage = str(nrec["Usage"]).strip()
        if usage not in USAGE_TO_SPLIT:
            raise DataError(f"{new_path}, row {row}: Usage {usage!r} is not one of {', '.join(USAGE_TO_SPLIT)}")
        if str(frec["Usage"]).strip() != usage:
            raise DataError(f"{new_path}, row {row}: Usage {usage!r} differs from {fer_path.name}'s "
                            f"{str(frec['Usage']).strip()!r}; the files are not aligned row by row")
        split = USAGE_TO_SPLIT[usage]
        name = str(nrec["Image name"]).strip()
        if not name:
            report.drop(split, DROP_EMPTY_NAME, new_path, row)
            continue
        votes = np.asarray([parse_float(nrec[c], new_path, row, c) for c in VOTE_COLUMNS + EXTRA_COLUMNS])
        if not np.isfinite(votes).all() or (votes < 0).any():
            raise DataError(f"{new_path}, row {row}: vote counts must be non-negative numbers")
        if args.nf_rule == "any" and votes[9] > 0:
            report.drop(split, DROP_NF_ANY, new_path, row, name)
            continue
        label, reason = ferplus_label(votes, args.label_rule)
        if label is None:
            report.drop(split, reason, new_path, row, name)
            continue
        if label >= num_classes:
            report.drop(split, DROP_CONTEMPT, new_path, row, name)
            continue
        rel = f"{split}/{Path(name).stem}{extension}"
        if rel in seen:
            report.drop(split, "duplicate image name", new_path, row, name)
            continue
        image = decode_pixels(frec["pixels"], fer_path, row)
        write_image(out / "images" / rel, image, args.jpeg_quality)
        seen.add(rel)
        rows[split].append((rel, label, ";".join(str(int(v)) for v in votes[:num_classes])))
    progress.close()
    tables = {split: pd.DataFrame({"path": [r[0] for r in items], "expression": [r[1] for r in items],
                                   "votes": [r[2] for r in items], "source": "ferplus"})
              for split, items in rows.items()}
    write_prepared(out, tables, dataset=dataset, class_names=AFFECTNET8_CLASSES[:num_classes], image_root="images",
                   report=report, force=args.force, command="preprocess.ferplus", args=args,
                   extra={"label_rule": args.label_rule, "nf_rule": args.nf_rule})
    return report.format(out)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.ferplus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fer2013", type=Path, required=True, help="fer2013.csv (emotion,pixels,Usage)")
    parser.add_argument("--ferplus", type=Path, required=True, help="FERPlus fer2013new.csv")
    parser.add_argument("--out", type=Path, required=True, help="prepared dataset directory to write")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="image format (default png)")
    parser.add_argument("--jpeg-quality", type=percent_quality, default=95)
    parser.add_argument("--classes", type=positive_int, choices=(7, 8), default=8,
                        help="8 (default) or 7: drop rows labelled Contempt and the contempt count from votes")
    parser.add_argument("--label-rule", choices=("majority", "plurality"), default="majority",
                        help="majority: FERPlus's majority mode (default); plurality: the most-voted emotion "
                             "(ties between emotions dropped)")
    parser.add_argument("--nf-rule", choices=("any", "majority"), default="any",
                        help="drop rows with any NF vote (default) or only when NF wins")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, import_ferplus, argv)


if __name__ == "__main__":
    raise SystemExit(main())
