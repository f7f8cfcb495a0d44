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

from common.cli import run_main
from common.errors import ConfigError, DataError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.show_uncertain", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (holds uncertainty/epoch_*.csv)")
    p.add_argument("--n", type=int, default=8, help="images per row (default 8)")
    p.add_argument("--out", help="output PNG (default RUN/figures/uncertain.png)")
    p.add_argument("--csv", help="a specific per-sample CSV instead of the last one")
    return p


def pick_extremes(frame, n: int):
    """(most uncertain rows, least uncertain rows), ties broken by row index for a stable figure."""
    ordered = frame.sort_values(["uncertainty", "index"], ascending=[False, True], kind="mergesort")
    least = frame.sort_values(["uncertainty", "index"], ascending=[True, True], kind="mergesort")
    return ordered.head(n), least.head(n)


def uncertainty_table(run, csv=None):
    """(path, frame) of the per-sample table to draw: ``csv``, else the run's newest epoch table."""
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
    return path, frame


def uncertain_figure_of_run(run, csv=None, n: int = 8, title_prefix: str = ""):
    """The two-row figure of a run's per-sample uncertainty (see :func:`tools.figures.uncertain_figure`)."""
    from data.images import decode_rgb
    from tools.figures import uncertain_figure

    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    path, frame = uncertainty_table(run, csv)
    names = dict(zip(frame["label"], frame["label_name"])) if "label" in frame else {}
    most, least = pick_extremes(frame, n)

    def items(rows):
        out = []
        for _, row in rows.iterrows():
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

    args = build_parser().parse_args(argv)
    run = Path(args.run)
    figure, most, least = uncertain_figure_of_run(run, args.csv, args.n, f"{run.resolve().name}: ")
    out = Path(args.out) if args.out else run / "figures" / "uncertain.png"
    save_png(figure, out)
    print(f"wrote {out}  (most uncertain mean {most['uncertainty'].mean():.3f}, "
          f"least uncertain mean {least['uncertainty'].mean():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
