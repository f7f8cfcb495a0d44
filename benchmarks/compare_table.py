"""Merge several ``benchmark.py`` grids (their ``runs.csv``) into one method-comparison table.

    python -m benchmarks.compare_table "CE=benchmark_runs/small:ce" "NLA (textbook)=benchmark_runs/small_nla:nla" \
        --columns "30 % noise=0.3" "IF 100=100" [--extra "IF 100=benchmark_runs/small_imbalance"]

Each row is ``LABEL=DIR:METHOD[,DIR2:METHOD2...]`` (DIR may also be a ``runs.csv`` path): the method's runs in those grid directories (a row may
draw its noise and its imbalance cells from different grids). Each column is ``TITLE=LEVEL``. A cell is
the mean ± sample std over the seeds found, of overall and mean-class test accuracy, with ``n`` seeds.
"""

from __future__ import annotations


from common.cli import ArgumentParser
import csv
import statistics
from pathlib import Path


def read_runs(source: str) -> list[dict]:
    """Rows of a grid's ``runs.csv`` (``source`` is the grid directory or the CSV file itself)."""
    path = Path(source)
    path = path if path.suffix == ".csv" else path / "runs.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def cell(runs, method: str, level: float, key: str) -> str:
    values = [100 * float(r[key]) for r in runs if r["method"] == method and abs(float(r["level"]) - level) < 1e-9
              and r.get(key)]
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} (n={len(values)})"


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", metavar="LABEL=DIR:METHOD[,DIR:METHOD]")
    p.add_argument("--columns", nargs="+", required=True, metavar="TITLE=LEVEL")
    args = p.parse_args(argv)
    columns = [(c.split("=", 1)[0], float(c.split("=", 1)[1])) for c in args.columns]
    header = "| method | " + " | ".join(f"{t}: accuracy | {t}: mean-class acc." for t, _ in columns) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(columns))]
    for row in args.rows:
        label, sources = row.rsplit("=", 1)
        runs_by_source = [(read_runs(src.rsplit(":", 1)[0]), src.rsplit(":", 1)[1]) for src in sources.split(",")]
        cells = []
        for _title, level in columns:
            found = ["–", "–"]
            for runs, method in runs_by_source:
                acc = cell(runs, method, level, "accuracy")
                if acc != "–":
                    found = [acc, cell(runs, method, level, "mean_class_accuracy")]
                    break
            cells += found
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
