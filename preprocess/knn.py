"""Build the VA neighbour table of a training table (``train.neighbors.npz`` beside it).

The K nearest training samples of every sample in (valence, arousal) space, Euclidean, self excluded,
ties broken by the lower row index (``data.neighbors.build_neighbor_table``). ``--export-release-csv``
also writes the official LDLVA release's CSV layout (``subDirectory_filePath, expression, valence,
arousal, knn``) so a table built here can be fed to the original code.

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
from data.neighbors import build_neighbor_table, format_knn_column, neighbor_table_path, save_neighbor_table
from data.schema import read_csv
from common.cli import run_command
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
    start = time.perf_counter()
    indices, distances = build_neighbor_table(va, args.k, algorithm=args.algorithm)
    seconds = time.perf_counter() - start
    save_neighbor_table(out, indices, distances, force=args.force)
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
    parser = argparse.ArgumentParser(prog="python -m preprocess.knn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, required=True, help="training table (schema CSV with valence, arousal)")
    parser.add_argument("--k", type=int, default=16, help="neighbours per sample (default 16; LDLVA uses the first 8)")
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
