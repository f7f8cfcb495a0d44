"""Build the VA neighbour table of a training table (``train.neighbors.npz`` beside it).

The K nearest training samples of every sample in (valence, arousal) space, Euclidean, self excluded,
ties broken by the lower row index (``data.neighbors.build_neighbor_table``). ``--export-release-csv``
also writes the official LDLVA release's CSV layout (``subDirectory_filePath, expression, valence,
arousal, knn``) so a table built here can be fed to the original code.

The ``.npz`` also stores the fingerprint of the table it was built from (row count, paths in order, VA
as float32; ``data.neighbors.neighbor_fingerprint``), K, the metric and the algorithm: training refuses
it once ``train.csv`` is shuffled, edited or given new VA. ``preprocess.va_import`` and
``preprocess.pseudo_va predict`` rebuild a neighbour table beside a table whose VA they rewrite
(:func:`rebuild_stale_neighbors`), with the K and algorithm stored in it.

Usage::

    python -m preprocess.knn --table DIR/train.csv [--k 16] [--algorithm auto|faiss] [--export-release-csv OUT.csv]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from data.neighbors import (METRIC, build_neighbor_table, format_knn_column, neighbor_fingerprint,
                            neighbor_table_path, read_neighbor_meta, save_neighbor_table)
from data.schema import read_csv
from common.cli import ArgumentParser, positive_int, run_command
from preprocess.common import add_force_argument, check_can_write, require_columns


def read_va(frame: pd.DataFrame, csv_path) -> np.ndarray:
    """The (N, 2) VA array of a schema frame; DataError naming the first bad row."""
    if "valence" not in frame.columns or "arousal" not in frame.columns:
        raise DataError(f"{csv_path}: needs 'valence' and 'arousal' columns to build VA neighbours; add them with "
                        "`python -m preprocess.va_import` (found: " + ", ".join(map(str, frame.columns)) + ")")
    va = np.stack([pd.to_numeric(frame["valence"], errors="coerce").to_numpy(np.float64),
                   pd.to_numeric(frame["arousal"], errors="coerce").to_numpy(np.float64)], axis=1)
    bad = ~np.isfinite(va).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{csv_path}, row {row + 1}: valence/arousal is empty, NaN or not a number "
                        f"({frame['valence'].iloc[row]!r}, {frame['arousal'].iloc[row]!r}); "
                        f"{int(bad.sum())} such row(s)")
    return va


def export_release_csv(frame: pd.DataFrame, indices: np.ndarray, path, force: bool = False) -> Path:
    """Write the release layout; ``knn`` lists 0-based row indices, nearest first."""
    from data.schema import write_table

    release = pd.DataFrame({
        "subDirectory_filePath": frame["path"].astype(str),
        "expression": frame["expression"],
        "valence": frame["valence"],
        "arousal": frame["arousal"],
        "knn": format_knn_column(indices),
    })
    return write_table(release, path, force=force)


def frame_fingerprint(frame: pd.DataFrame, csv_path):
    """The neighbour fingerprint of a schema frame as read from disk (paths as the schema reads them)."""
    return neighbor_fingerprint(frame["path"].astype(str).tolist(), read_va(frame, csv_path))


def refuse_stale_neighbors(target, force: bool, what: str) -> Path | None:
    """Before ``what`` rewrites the VA of ``target``: the neighbour table beside it (None when there is none).

    Without ``force`` an existing one is refused up front (its rows would describe the old VA); with
    ``force`` the caller rebuilds it afterwards with :func:`rebuild_stale_neighbors` (a project output,
    replaced, never deleted).
    """
    neighbors = neighbor_table_path(target)
    if not neighbors.exists():
        return None
    if not force:
        raise DataError(f"{neighbors} holds the VA neighbours of {target}; {what} would leave it stale. Pass --force "
                        f"to write {Path(target).name} and rebuild {neighbors.name} from the new VA (same K), or write "
                        "the table elsewhere with --out")
    return neighbors


def rebuild_stale_neighbors(target, neighbors=None) -> str | None:
    """Rebuild the neighbour table beside ``target`` (just rewritten) when it was not built from its current
    content; keeps the stored K and algorithm (16 and auto for an older table that stored none).
    Returns a summary line (None when there is no neighbour table)."""
    target = Path(target)
    neighbors = Path(neighbors) if neighbors is not None else neighbor_table_path(target)
    if not neighbors.exists():
        return None
    meta = read_neighbor_meta(neighbors)
    k = int(meta.get("k") or meta.get("columns") or 16)
    algorithm = meta.get("algorithm") if meta.get("algorithm") in ("auto", "faiss") else "auto"
    frame = read_csv(target)
    require_columns(frame, ("path",), target)
    fingerprint = frame_fingerprint(frame, target)
    if meta.get("fingerprint") == fingerprint.sha256:
        return f"{neighbors} already matches {target.name} (K={k}); kept"
    try:
        indices, distances = build_neighbor_table(read_va(frame, target), k, algorithm=algorithm)
    except DataError as exc:
        raise DataError(f"{target} was written, but its stale neighbour table {neighbors} could not be rebuilt "
                        f"({exc}); training refuses it until you run "
                        f"`python -m preprocess.knn --table {target} --k {k} --force`") from None
    save_neighbor_table(neighbors, indices, distances, force=True, fingerprint=fingerprint, metric=METRIC,
                        algorithm=algorithm)
    return f"rebuilt {neighbors} from the new VA (K={k}, {algorithm})"


def build_knn(args) -> str:
    csv_path = Path(args.table)
    out = Path(args.out) if args.out else neighbor_table_path(csv_path)
    outputs = [out] + ([Path(args.export_release_csv)] if args.export_release_csv else [])
    check_can_write(outputs, args.force)
    if args.k < 1:
        raise DataError(f"--k must be >= 1, got {args.k}")
    frame = read_csv(csv_path)
    require_columns(frame, ("path", "expression"), csv_path)
    va = read_va(frame, csv_path)
    fingerprint = frame_fingerprint(frame, csv_path)
    if len(frame) <= args.k:
        raise DataError(f"{csv_path}: cannot take K={args.k} neighbours from {len(frame)} samples (need more than "
                        "K); choose a smaller --k")
    start = time.perf_counter()
    indices, distances = build_neighbor_table(va, args.k, algorithm=args.algorithm)
    seconds = time.perf_counter() - start
    save_neighbor_table(out, indices, distances, force=args.force, fingerprint=fingerprint, metric=METRIC,
                        algorithm=args.algorithm)
    lines = [f"knn: {len(frame)} rows x K={args.k} neighbours ({args.algorithm}) in {seconds:.2f} s -> {out}",
             f"mean distance to the K-th neighbour: {float(distances[:, -1].mean()):.4f}"]
    if args.export_release_csv:
        export_release_csv(frame, indices, args.export_release_csv, force=args.force)
        lines.append(f"release-format CSV written to {args.export_release_csv}")
    return "\n".join(lines)


def benchmark_knn(n: int = 1_000_000, k: int = 8, seed: int = 0, algorithm: str = "auto") -> float:
    """Seconds to build a K-neighbour table for ``n`` uniform random VA points in [-1, 1]^2."""
    va = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 2))
    start = time.perf_counter()
    build_neighbor_table(va, k, algorithm=algorithm)
    return time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.knn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, required=True, help="training table (schema CSV with valence, arousal)")
    parser.add_argument("--k", type=positive_int, default=16, help="neighbours per sample (default 16; LDLVA uses the first 8)")
    parser.add_argument("--algorithm", choices=("auto", "faiss"), default="auto",
                        help="auto: scikit-learn KD-tree; faiss: exact faiss search (needs faiss installed)")
    parser.add_argument("--out", type=Path, default=None, help="default: <table stem>.neighbors.npz beside the table")
    parser.add_argument("--export-release-csv", type=Path, default=None,
                        help="also write the LDLVA release CSV (subDirectory_filePath, expression, valence, arousal, knn)")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, build_knn, argv)


if __name__ == "__main__":
    raise SystemExit(main())
