"""Show the most and least uncertain training images of a run (like Figure 6 of the LDLVA paper).

    python -m tools.show_uncertain --run RUN [--n 8] [--out grid.png] [--csv RUN/uncertainty/epoch_012.csv]

Reads the last per-sample table ``RUN/uncertainty/epoch_XXX.csv`` (written for every method with a
per-sample uncertainty) and draws two rows: the ``n`` training images with the highest uncertainty
(top) and the ``n`` with the lowest (bottom), each titled with its given label, its uncertainty and,
on a noisy benchmark, the clean label when the given one was flipped. The same figure as
``python visualize.py uncertain --run RUN``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import ArgumentParser, positive_int, run_main
from common.errors import ConfigError, DataError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tools.show_uncertain", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (holds uncertainty/epoch_*.csv)")
    p.add_argument("--n", type=positive_int, default=8, help="images per row (default 8)")
    p.add_argument("--out", help="output PNG (default RUN/figures/uncertain.png)")
    p.add_argument("--csv", help="a specific per-sample CSV instead of the last one")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file this toolkit did not write")
    return p


def pick_extremes(frame, n: int):
    """(most uncertain rows, least uncertain rows), ties broken by row index for a stable figure."""
    ordered = frame.sort_values(["uncertainty", "index"], ascending=[False, True], kind="mergesort")
    least = frame.sort_values(["uncertainty", "index"], ascending=[True, True], kind="mergesort")
    return ordered.head(n), least.head(n)


def uncertainty_table(run, csv=None):
    """(path, frame) of the per-sample table to draw: ``csv``, else the run's newest epoch table."""
    import numpy as np
    import pandas as pd

    run = Path(run)
    tables = sorted((run / "uncertainty").glob("epoch_*.csv"))
    path = Path(csv) if csv else (tables[-1] if tables else None)
    if path is None or not path.is_file():
        raise DataError(f"{run}: no per-sample uncertainty table (uncertainty/epoch_*.csv); only runs of methods "
                        "with a per-sample uncertainty (e.g. ldlva, lanet) write one")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = {"index", "path", "label_name", "uncertainty"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    if frame.empty:
        raise DataError(f"{path}: no rows")
    for column in ("index", "uncertainty", "label", "clean_label", "flipped"):
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(values.to_numpy(np.float64)))
        if len(bad):
            raise DataError(f"{path}, row {bad[0] + 1}: column '{column}' must be a finite number, got "
                            f"{str(frame[column].iloc[bad[0]])!r}")
        frame[column] = values
    return path, frame


def _run_image_root(run) -> Path | None:
    """The image root of the run's training table (None: unknown, or the run allows paths outside it)."""
    import json

    from data.prepared import resolve_image_root

    try:
        record = json.loads((Path(run) / "config.json").read_bytes().decode("utf-8"))
        data_dir, override = record["data"].get("data_dir"), record["run"].get("image_root")
        if record["run"].get("allow_outside_root") or not isinstance(data_dir, str):
            return None
        return resolve_image_root(data_dir, override if isinstance(override, str) else None).resolve()
    except Exception:  # noqa: BLE001 - no (readable) config.json: a bare folder of per-sample tables
        return None


def uncertain_figure_of_run(run, csv=None, n: int = 8, title_prefix: str = ""):
    """The two-row figure of a run's per-sample uncertainty (see :func:`tools.figures.uncertain_figure`)."""
    from data.images import decode_rgb
    from tools.figures import uncertain_figure

    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    path, frame = uncertainty_table(run, csv)
    root = _run_image_root(run)
    names = dict(zip(frame["label"], frame["label_name"])) if "label" in frame else {}
    most, least = pick_extremes(frame, n)

    def items(rows):
        out = []
        for _, row in rows.iterrows():
            if root is not None and not Path(row["path"]).resolve().is_relative_to(root):
                raise DataError(f"{path}, row {int(row.name) + 1}: image {row['path']} is outside the run's image "
                                f"root {root}; the per-sample table was edited or belongs to another run")
            try:
                image = decode_rgb(Path(row["path"]).read_bytes())
            except OSError:
                image = None
            if image is None:
                raise DataError(f"{path}: cannot read image {row['path']} (training row {int(row['index'])})")
            flipped = "flipped" in row and int(row["flipped"]) == 1
            out.append({"image": image, "label_name": row["label_name"], "uncertainty": float(row["uncertainty"]),
                        "clean_name": names.get(row["clean_label"], str(row["clean_label"])) if flipped else None})
        return out

    text = f"{path.stem}: uncertainty of every training sample; orange = label flipped by the noise protocol"
    if "flipped" in frame and frame["flipped"].any():
        from engine.metrics import noise_detection_auc

        auc = noise_detection_auc(frame["uncertainty"], frame["label"], frame["clean_label"])
        text += f" ({100 * frame['flipped'].mean():.0f}% flipped; noise-detection AUC {auc:.3f})"
    figure = uncertain_figure(items(most), items(least), f"{title_prefix}{text}")
    return figure, most, least


def main(argv=None) -> int:
    from tools.figures import save_png

    from common.io import check_output_file

    args = build_parser().parse_args(argv)
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "figures" / "uncertain.png"
    check_output_file(out, args.force)
    figure, most, least = uncertain_figure_of_run(run, args.csv, args.n, f"{run.resolve().name}: ")
    save_png(figure, out)
    print(f"wrote {out}  (most uncertain mean {most['uncertainty'].mean():.3f}, "
          f"least uncertain mean {least['uncertainty'].mean():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
