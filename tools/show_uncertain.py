"""Show the most and least uncertain training images of a run (like Figure 6 of the LDLVA paper).

    python -m tools.show_uncertain --run RUN [--n 8] [--out grid.png] [--csv RUN/uncertainty/epoch_012.csv]

Reads the last per-sample table ``RUN/uncertainty/epoch_XXX.csv`` written by
``engine.uncertainty.UncertaintyLogger`` and draws two rows: the ``n`` training images with the
highest uncertainty λ (top) and the ``n`` with the lowest (bottom), each titled with its given label,
λ and, on a noisy benchmark, the clean label when the given one was flipped (in red).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import run_main
from common.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.show_uncertain", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (holds uncertainty/epoch_*.csv)")
    p.add_argument("--n", type=int, default=8, help="images per row (default 8)")
    p.add_argument("--out", help="output PNG (default RUN/uncertain_grid.png)")
    p.add_argument("--csv", help="a specific per-sample CSV instead of the last one")
    return p


def pick_extremes(frame, n: int):
    """(most uncertain rows, least uncertain rows), ties broken by row index for a stable figure."""
    ordered = frame.sort_values(["uncertainty", "index"], ascending=[False, True], kind="mergesort")
    least = frame.sort_values(["uncertainty", "index"], ascending=[True, True], kind="mergesort")
    return ordered.head(n), least.head(n)


def draw_grid(most, least, out: Path, title: str) -> Path:
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.io import atomic_write_bytes

    n = max(len(most), len(least), 1)
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 5.0), squeeze=False)
    for row, (rows, name) in enumerate(((most, "most uncertain"), (least, "least uncertain"))):
        for col in range(n):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(rows):
                continue
            item = rows.iloc[col]
            image = cv2.imread(str(item["path"]), cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"cannot read image {item['path']} (row {int(item['index'])} of the training table)")
            ax.imshow(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
            text = f"{item['label_name']}\nλ={item['uncertainty']:.2f}"
            flipped = "flipped" in item and int(item["flipped"]) == 1
            if flipped:
                text += f"\n(clean: {item['clean_name']})"
            ax.set_title(text, fontsize=8, color="crimson" if flipped else "black")
        axes[row][0].text(-0.15, 0.5, name, transform=axes[row][0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def show(args) -> Path:
    import pandas as pd

    run = Path(args.run)
    # The newest epoch_XXX.csv of engine.uncertainty.UncertaintyLogger (not imported: it pulls in TensorFlow).
    tables = sorted((run / "uncertainty").glob("epoch_*.csv"))
    csv_path = Path(args.csv) if args.csv else (tables[-1] if tables else None)
    if csv_path is None or not csv_path.is_file():
        raise DataError(f"{run}: no per-sample uncertainty table (uncertainty/epoch_*.csv); train an ldlva run first")
    if args.n < 1:
        raise DataError(f"--n must be >= 1, got {args.n}")
    frame = pd.read_csv(csv_path)
    missing = {"index", "path", "label_name", "uncertainty"} - set(frame.columns)
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))}")
    if "clean_label" in frame.columns:
        names = dict(zip(frame["label"], frame["label_name"]))
        frame["clean_name"] = [names.get(c, str(c)) for c in frame["clean_label"]]
    most, least = pick_extremes(frame, args.n)
    out = Path(args.out) if args.out else run / "uncertain_grid.png"
    title = f"{run.name}: {csv_path.stem} (λ = uncertainty; red = flipped label)"
    draw_grid(most, least, out, title)
    print(f"wrote {out}  (most uncertain mean λ {most['uncertainty'].mean():.3f}, "
          f"least uncertain mean λ {least['uncertainty'].mean():.3f})")
    return out


def main(argv=None) -> int:
    show(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
