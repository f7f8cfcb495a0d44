"""Merge externally computed valence/arousal (e.g. EmoNet pseudo-VA) into a schema table.

The VA CSV is keyed by image path (``--path-column``, default ``path``; matched after normalising
slashes and ``./``) and has ``valence`` and ``arousal`` columns. Checked: every table row has exactly one
VA row (missing rows and duplicate keys are errors), values are finite and in [-1, 1] (``--clip`` clips
instead of failing). VA rows for images not in the table are ignored and counted. Existing VA columns of
the table are replaced. The table is rewritten in place only with ``--force``, or written to ``--out``.

A neighbour table beside the written table (``<stem>.neighbors.npz``, a project output built from the
old VA) is never left stale: without ``--force`` the import is refused before anything is written; with
``--force`` it is rebuilt from the new VA with the K and algorithm stored in it
(``preprocess.knn.rebuild_stale_neighbors``).

Usage::

    python -m preprocess.va_import --table DIR/train.csv --va emonet_va.csv [--path-column path] [--clip] [--force | --out NEW.csv]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import DataError
from data.schema import read_csv, write_table
from preprocess.knn import rebuild_stale_neighbors, refuse_stale_neighbors
from common.cli import ArgumentParser, run_command
from preprocess.common import add_force_argument, check_can_write, normalize_relpath, read_raw_csv, require_columns


def read_va_csv(path, path_column: str, clip: bool) -> tuple[dict[str, tuple[float, float]], int]:
    """``{normalised path: (valence, arousal)}`` and the number of clipped rows."""
    frame = read_raw_csv(path, "VA file")
    frame.columns = [str(c).strip() for c in frame.columns]
    require_columns(frame, (path_column, "valence", "arousal"), path)
    keys = [normalize_relpath(p) for p in frame[path_column]]
    va = np.stack([pd.to_numeric(frame["valence"].str.strip(), errors="coerce").to_numpy(np.float64),
                   pd.to_numeric(frame["arousal"].str.strip(), errors="coerce").to_numpy(np.float64)], axis=1)
    clipped = 0
    out: dict[str, tuple[float, float]] = {}
    first_row: dict[str, int] = {}
    for index, (key, (v, a)) in enumerate(zip(keys, va)):
        row = index + 1
        if not key:
            raise DataError(f"{path}, row {row}: column '{path_column}' is empty")
        if key in out:
            raise DataError(f"{path}, row {row}: duplicate path {key!r} (first at row {first_row[key]})")
        if not (np.isfinite(v) and np.isfinite(a)):
            raise DataError(f"{path}, row {row}: valence/arousal is empty, NaN or not a number "
                            f"({frame['valence'].iloc[index]!r}, {frame['arousal'].iloc[index]!r})")
        if abs(v) > 1 or abs(a) > 1:
            if not clip:
                raise DataError(f"{path}, row {row}: valence/arousal ({v}, {a}) outside [-1, 1]; pass --clip to clip")
            clipped += 1
            v, a = float(np.clip(v, -1, 1)), float(np.clip(a, -1, 1))
        out[key] = (float(v), float(a))
        first_row[key] = row
    return out, clipped


def merge_va(frame: pd.DataFrame, table_path, va: dict, va_path) -> tuple[pd.DataFrame, int]:
    """The table with ``valence``/``arousal`` from ``va``; returns (frame, number of unused VA rows)."""
    keys = [normalize_relpath(p) for p in frame["path"].astype(str)]
    missing = [(i, k) for i, k in enumerate(keys) if k not in va]
    if missing:
        row, key = missing[0]
        example = next(iter(va)) if va else "(none)"
        raise DataError(f"{va_path}: no valence/arousal for {len(missing)} of the {len(keys)} rows of {table_path} "
                        f"(first missing: row {row + 1}, path {key!r}; VA keys look like {example!r})")
    out = frame.copy()
    out["valence"] = [va[k][0] for k in keys]
    out["arousal"] = [va[k][1] for k in keys]
    unused = len(set(va) - set(keys))
    return out, unused


def import_va(args) -> str:
    table_path = Path(args.table)
    target = Path(args.out) if args.out else table_path
    check_can_write([target], args.force)
    stale = refuse_stale_neighbors(target, args.force, "importing new VA")
    frame = read_csv(table_path)
    require_columns(frame, ("path",), table_path)
    va, clipped = read_va_csv(args.va, args.path_column, args.clip)
    had_va = "valence" in frame.columns
    merged, unused = merge_va(frame, table_path, va, args.va)
    write_table(merged, target, force=args.force)
    lines = [f"va_import: wrote valence/arousal for {len(merged)} rows to {target}"
             + (" (replacing the existing VA columns)" if had_va else "")]
    if clipped:
        lines.append(f"clipped {clipped} VA row(s) to [-1, 1]")
    if unused:
        lines.append(f"ignored {unused} VA row(s) for images not in the table")
    rebuilt = rebuild_stale_neighbors(target, stale) if stale is not None else None
    if rebuilt:
        lines.append(rebuilt)
    else:
        lines.append(f"note: LDLVA needs the VA neighbour table of this table; build it with "
                     f"`python -m preprocess.knn --table {target}`")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.va_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", type=Path, required=True, help="schema table to add valence/arousal to")
    parser.add_argument("--va", type=Path, required=True, help="CSV with an image path column, valence, arousal")
    parser.add_argument("--path-column", default="path", help="VA CSV column holding the image path (default path)")
    parser.add_argument("--clip", action="store_true", help="clip values outside [-1, 1] instead of failing")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of rewriting --table")
    add_force_argument(parser)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser, import_va, argv)


if __name__ == "__main__":
    raise SystemExit(main())
