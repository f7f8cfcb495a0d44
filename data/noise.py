"""Experiment protocols: synthetic label noise and long-tailed (imbalanced) subsampling.

Label noise
-----------
* :func:`symmetric_noise` flips EXACTLY ``round(rate * N)`` samples (Python ``round``, i.e. half to
  even), chosen uniformly without replacement, each to a class drawn uniformly among the C - 1 OTHER
  classes, so every chosen sample really changes label.
* :func:`asymmetric_noise` flips exactly ``round(rate * N)`` samples, chosen uniformly among the samples
  whose class has an entry in :data:`data.classes.ASYMMETRIC_FLIP`, to that entry (the most similar
  class). Only map entries with both source and target inside ``0..C-1`` are used: for 7 classes the
  Contempt (7) -> Neutral entry is skipped and label 7 is never produced. The map has no fixed point,
  so every chosen sample changes label. ``N`` counts all samples; asking for more flips than there are
  eligible samples is a :class:`~common.errors.ConfigError`.
* :func:`apply_label_noise` applies either to a schema frame and records the label before noise in
  ``clean_expression``. Noise on an already noisy table keeps the existing ``clean_expression`` (the
  original clean label) and perturbs the current ``expression``.

All randomness comes from ``np.random.default_rng(seed)``: the same inputs and seed give the same
output on every platform.

Imbalance
---------
:func:`imbalance_subsample` keeps an exponential (long-tailed) profile of class counts
``n_c = n_max * (1 / IF) ** (rank_c / (C - 1))`` (see :func:`imbalance_profile`).

Command line::

    python -m data.noise --table train.csv --out noisy.csv --kind symmetric --rate 0.3 --seed 0 \
        [--num-classes 7] [--imbalance-factor 100] [--force]

When both are requested, imbalance subsampling is applied first (on the current ``expression``) and
label noise second, with the same seed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from common.cli import ArgumentParser, finite_float, fraction, nonnegative_int, positive_int
from common.errors import ConfigError, DataError
from data.classes import ASYMMETRIC_FLIP

NOISE_KINDS = ("symmetric", "asymmetric")


# ------------------------------------------------------------------------------------------- validation

def _check_rate(rate) -> float:
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"noise rate must be a number in [0, 1), got {rate!r}") from None
    if not (0.0 <= rate < 1.0):
        raise ConfigError(f"noise rate must be in [0, 1), got {rate}")
    return rate


def _check_num_classes(num_classes) -> int:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def _check_labels(labels, num_classes: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError("labels must be integer class indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(f"labels must be in 0..{num_classes - 1}; found {int(arr.min())}..{int(arr.max())}")
    return arr


def _num_flips(rate: float, n: int) -> int:
    return int(round(rate * n))


# ---------------------------------------------------------------------------------------------- noise

def symmetric_noise(labels, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Return a copy of ``labels`` with exactly ``round(rate * N)`` labels flipped to another class.

    The flipped samples are drawn uniformly without replacement; each gets a class drawn uniformly among
    the ``C - 1`` classes different from its own. Deterministic given ``seed``.
    """
    rate = _check_rate(rate)
    num_classes = _check_num_classes(num_classes)
    labels = _check_labels(labels, num_classes)
    rng = np.random.default_rng(seed)
    n_flip = _num_flips(rate, len(labels))
    noisy = labels.copy()
    if n_flip == 0:
        return noisy
    idx = rng.choice(len(labels), size=n_flip, replace=False)
    offsets = rng.integers(1, num_classes, size=n_flip)  # 1..C-1: uniform over the other classes
    noisy[idx] = (labels[idx] + offsets) % num_classes
    return noisy


def asymmetric_flip_map(num_classes: int) -> dict[int, int]:
    """The entries of :data:`ASYMMETRIC_FLIP` usable with ``num_classes`` (source and target in range)."""
    return {s: t for s, t in ASYMMETRIC_FLIP.items() if s < num_classes and t < num_classes}


def asymmetric_noise(labels, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Return a copy of ``labels`` with exactly ``round(rate * N)`` labels flipped by the class map.

    Samples are drawn uniformly without replacement among those whose class has a usable map entry
    (see :func:`asymmetric_flip_map`; for 7 classes Contempt is skipped and 7 never produced) and set to
    ``ASYMMETRIC_FLIP[label]``. Raises :class:`ConfigError` when fewer samples are eligible than flips
    requested.
    """
    rate = _check_rate(rate)
    num_classes = _check_num_classes(num_classes)
    labels = _check_labels(labels, num_classes)
    flip = asymmetric_flip_map(num_classes)
    n_flip = _num_flips(rate, len(labels))
    noisy = labels.copy()
    if n_flip == 0:
        return noisy
    eligible = np.flatnonzero(np.isin(labels, np.fromiter(flip.keys(), dtype=np.int64)))
    if n_flip > len(eligible):
        raise ConfigError(
            f"asymmetric noise at rate {rate} needs {n_flip} flips but only {len(eligible)} samples belong to "
            f"classes with a flip target")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(eligible, size=n_flip, replace=False))
    lookup = np.arange(num_classes, dtype=np.int64)
    for s, t in flip.items():
        lookup[s] = t
    noisy[idx] = lookup[labels[idx]]
    return noisy


def _frame_labels(frame: pd.DataFrame, column: str, num_classes: int, source) -> np.ndarray:
    from data.schema import _parse_int_column

    if column not in frame.columns:
        raise DataError(f"{source}: missing column '{column}'")
    return _parse_int_column(frame.reset_index(drop=True), column, source, num_classes).astype(np.int64)


def apply_label_noise(frame: pd.DataFrame, kind: str, rate: float, num_classes: int, seed: int,
                      source="<table>") -> pd.DataFrame:
    """Return a copy of a schema frame with synthetic label noise in ``expression``.

    ``clean_expression`` is set to the old ``expression``, unless the frame already has a
    ``clean_expression`` column, which is then kept unchanged (noise on noise keeps the original clean
    label). ``kind`` is ``'symmetric'`` or ``'asymmetric'``; ``rate`` must lie in ``[0, 1)``; otherwise
    :class:`ConfigError`. ``source`` names the table in error messages.
    """
    if kind not in NOISE_KINDS:
        raise ConfigError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    rate = _check_rate(rate)
    num_classes = _check_num_classes(num_classes)
    labels = _frame_labels(frame, "expression", num_classes, source)
    fn = symmetric_noise if kind == "symmetric" else asymmetric_noise
    noisy = fn(labels, rate, num_classes, seed)
    out = frame.copy()
    if "clean_expression" not in out.columns:
        out["clean_expression"] = labels
    out["expression"] = noisy
    return out


def raf_label_file_name(path: str) -> str:
    """The RAF-DB image name a table path stands for: ``.../train_00001_aligned.jpg`` → ``train_00001``."""
    stem = Path(str(path).replace("\\", "/")).stem
    return stem[: -len("_aligned")] if stem.endswith("_aligned") else stem


def apply_label_file(frame: pd.DataFrame, label_file, num_classes: int, source="<table>") -> pd.DataFrame:
    """Replace ``expression`` by the labels of a released noisy-label file (RAF-DB layout).

    The file has lines ``<image name> <RAF label 1-7>``, as RAF-DB's ``list_patition_label.txt`` and the
    noisy copies EAC's authors released (``noise01.txt``, ``noise02.txt``, ``noise03.txt``: 10/20/30 % of the
    training labels flipped); names are matched to the table's paths by stem (``train_00001.jpg`` ↔
    ``train_00001_aligned.jpg``). ``clean_expression`` keeps the table's labels (unless it has one
    already), so the noise-detection AUC is measured on exactly the papers' flips. Every training row must
    be listed; a malformed line is a DataError naming the file and line.
    """
    from data.classes import RAF_TO_CANONICAL

    label_file = Path(label_file)
    try:
        text = label_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{label_file}: cannot be read as a label file ({exc})") from None
    labels = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{label_file}, line {number}: expected '<image name> <label 1-7>', got {line[:60]!r}")
        raf = int(parts[1])
        if raf not in RAF_TO_CANONICAL:
            raise DataError(f"{label_file}, line {number}: label {raf} is outside RAF-DB's 1..7")
        labels[raf_label_file_name(parts[0])] = RAF_TO_CANONICAL[raf]
    if not labels:
        raise DataError(f"{label_file}: no labelled lines")
    num_classes = _check_num_classes(num_classes)
    given = _frame_labels(frame, "expression", num_classes, source)
    names = [raf_label_file_name(p) for p in frame["path"].astype(str)]
    missing = [i for i, name in enumerate(names) if name not in labels]
    if missing:
        raise DataError(f"{source}, row {missing[0] + 1}: image {frame['path'].iloc[missing[0]]!r} is not listed in "
                        f"{label_file} ({len(missing)} of {len(names)} rows are not); is it the label file of this "
                        "dataset's training split?")
    out = frame.copy()
    if "clean_expression" not in out.columns:
        out["clean_expression"] = given
    out["expression"] = [labels[name] for name in names]
    return out


# ------------------------------------------------------------------------------------------- imbalance

def _check_imbalance_factor(imbalance_factor) -> float:
    try:
        value = float(imbalance_factor)
    except (TypeError, ValueError):
        raise ConfigError(f"imbalance factor must be a number >= 1, got {imbalance_factor!r}") from None
    if not math.isfinite(value) or value < 1.0:
        raise ConfigError(f"imbalance factor must be a finite number >= 1, got {imbalance_factor!r}")
    return value


def _ratios(num_classes: int, imbalance_factor: float) -> np.ndarray:
    if num_classes == 1:
        return np.ones(1)
    return (1.0 / imbalance_factor) ** (np.arange(num_classes) / (num_classes - 1))


def imbalance_profile(num_classes: int, n_max: int, imbalance_factor: float) -> np.ndarray:
    """Target counts by rank: ``round(n_max * (1 / IF) ** (rank / (C - 1)))``, at least 1, int64 ``(C,)``.

    Rounding is ``np.rint`` (half to even).

    Rank 0 keeps ``n_max``; the last rank keeps ``n_max / IF`` (rounded).
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if n_max < 1:
        raise ConfigError(f"n_max must be >= 1, got {n_max}")
    imbalance_factor = _check_imbalance_factor(imbalance_factor)
    counts = np.rint(n_max * _ratios(num_classes, imbalance_factor)).astype(np.int64)
    return np.maximum(counts, 1)


def imbalance_subsample(frame: pd.DataFrame, imbalance_factor: float, num_classes: int, seed: int,
                        order: Sequence[int] | None = None, source="<table>") -> pd.DataFrame:
    """Subsample rows to a long-tailed class profile with largest/smallest ratio ``imbalance_factor``.

    ``order`` lists the classes by rank (rank 0 keeps the most samples); by default classes are sorted by
    their current count, descending, ties by class index. Targets follow :func:`imbalance_profile` with

        ``n_max = min(count of the rank-0 class, min_c floor(available_c / ratio_c))``

    i.e. the largest ``n_max`` for which every class can supply its target (``n_c <= available_c``); on a
    table whose classes are at least as large as the profile needs (e.g. balanced) this is the count of
    the largest class. Every class present in the profile must have at least one sample. Within each
    class the kept rows are drawn uniformly without replacement (``default_rng(seed)``); the original row
    order is preserved and the index reset. ``IF == 1`` returns all rows (no balancing is done);
    ``IF < 1`` raises :class:`ConfigError`.
    """
    imbalance_factor = _check_imbalance_factor(imbalance_factor)
    num_classes = _check_num_classes(num_classes)
    if imbalance_factor == 1.0:
        return frame.reset_index(drop=True).copy()
    labels = _frame_labels(frame, "expression", num_classes, source)
    counts = np.bincount(labels, minlength=num_classes)
    if order is None:
        order = sorted(range(num_classes), key=lambda c: (-int(counts[c]), c))
    else:
        order = [int(c) for c in order]
        if sorted(order) != list(range(num_classes)):
            raise ConfigError(f"order must be a permutation of 0..{num_classes - 1}, got {order}")
    empty = [c for c in range(num_classes) if counts[c] == 0]
    if empty:
        raise DataError(f"{source}: class(es) {', '.join(map(str, empty))} have no samples; "
                        "imbalance subsampling needs every class")
    ratios = _ratios(num_classes, imbalance_factor)
    avail_by_rank = counts[np.asarray(order)]
    # small slack so that e.g. 3 / 0.01 is not floored to 299 by rounding error
    n_max = int(min(avail_by_rank[0], np.min(np.floor(avail_by_rank / ratios + 1e-9))))
    targets_by_rank = np.minimum(imbalance_profile(num_classes, max(n_max, 1), imbalance_factor), avail_by_rank)
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    for rank, c in enumerate(order):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=int(targets_by_rank[rank]), replace=False)
        keep[chosen] = True
    return frame.reset_index(drop=True).loc[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m data.noise",
        description="Write a copy of an annotation table with synthetic label noise and/or long-tailed "
                    "class imbalance (the experiment protocols). The label before noise is kept in "
                    "clean_expression.")
    parser.add_argument("--table", required=True, help="input schema CSV (e.g. train.csv)")
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument("--kind", choices=NOISE_KINDS + ("none",), default="symmetric",
                        help="label-noise kind (default symmetric; 'none' for imbalance only)")
    parser.add_argument("--rate", type=fraction, default=0.0, help="fraction of labels to flip, in [0, 1) (default 0)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-classes", type=positive_int, default=7, choices=(7, 8),
                        help="number of classes, 7 or 8 (default 7)")
    parser.add_argument("--imbalance-factor", type=finite_float, default=1.0,
                        help="largest/smallest class-count ratio after subsampling (default 1 = keep all rows)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return parser


def run(args: argparse.Namespace) -> int:
    from data.schema import read_csv, validate_frame, write_table

    table, out = Path(args.table), Path(args.out)
    if out.exists() and not args.force:
        raise DataError(f"{out} already exists; pass --force to overwrite it")
    if args.kind == "none" and args.rate != 0:
        raise ConfigError("--rate needs --kind symmetric or asymmetric (got --kind none)")
    rate = _check_rate(args.rate)
    factor = _check_imbalance_factor(args.imbalance_factor)
    num_classes = _check_num_classes(args.num_classes)
    frame = validate_frame(read_csv(table), table, num_classes).frame
    n_in = len(frame)
    if factor != 1.0:
        frame = imbalance_subsample(frame, factor, num_classes, args.seed, source=table)
    flipped = 0
    if args.kind != "none":
        before = frame["expression"].to_numpy(np.int64)
        frame = apply_label_noise(frame, args.kind, rate, num_classes, args.seed, source=table)
        flipped = int((frame["expression"].to_numpy(np.int64) != before).sum())
    write_table(frame, out, force=args.force)
    counts = np.bincount(frame["expression"].to_numpy(np.int64), minlength=num_classes)
    print(f"wrote {out}: {len(frame)} of {n_in} rows; {flipped} label(s) flipped "
          f"({args.kind}, rate {rate}); class counts {counts.tolist()}")
    if factor != 1.0:
        print("note: imbalance subsampling changed the rows; the neighbour table must be rebuilt for "
              f"{out} with `python -m preprocess.knn`")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli import run_main

    return run_main(lambda a: run(build_parser().parse_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
