"""Merge several ``benchmark.py`` grids (their ``runs.csv``) into one method-comparison table.

    python -m benchmarks.compare_table "CE=benchmark_runs/small:ce" "NLA (textbook)=benchmark_runs/small_nla:nla" \
        --columns "30 % noise=0.3" "IF 100=100" [--extra "IF 100=benchmark_runs/small_imbalance"]

Each row is ``LABEL=DIR:METHOD[,DIR2:METHOD2...]`` (DIR may also be a ``runs.csv`` path): the method's runs in those grid directories (a row may
draw its noise and its imbalance cells from different grids). Each column is ``TITLE=LEVEL``. A cell is
the mean ± sample std over the seeds found, of overall and mean-class test accuracy, with ``n`` seeds.
"""

from __future__ import annotations


from common.cli import ArgumentParser, run_main
import csv
import math
import statistics
import sys
from pathlib import Path

RUNS_COLUMNS = ("method", "level", "accuracy", "mean_class_accuracy")


def _number(text, path, row: int, column: str) -> float | None:
    """A finite number from a runs.csv cell (empty: None); anything else is an error naming file and row."""
    from common.errors import DataError

    if text is None or str(text).strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{path}, row {row}: column '{column}' must be a finite number, got {text!r}")
    return value


def read_runs(source: str) -> list[dict]:
    """Rows of a grid's ``runs.csv`` (``source`` is the grid directory or the CSV file itself), checked."""
    from common.errors import DataError

    path = Path(source)
    path = path if path.suffix == ".csv" else path / "runs.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found (a benchmark.py grid directory holds runs.csv)")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in RUNS_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (not a runs.csv written by benchmark.py)")
    for row, record in enumerate(rows, start=1):
        for column in ("level", "accuracy", "mean_class_accuracy"):
            record[column] = _number(record.get(column), path, row, column)
        if record["level"] is None:
            raise DataError(f"{path}, row {row}: column 'level' is empty")
    return rows


def cell(runs, method: str, level: float, key: str) -> str:
    values = [100 * r[key] for r in runs if r["method"] == method and abs(r["level"] - level) < 1e-9
              and r.get(key) is not None]
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} (n={len(values)})"


def parse_columns(items) -> list[tuple[str, float]]:
    from common.errors import ConfigError

    columns = []
    for item in items:
        title, sep, level = item.rpartition("=")
        try:
            value = float(level)
        except ValueError:
            value = math.nan
        if not sep or not title or not math.isfinite(value):
            raise ConfigError(f"--columns expects TITLE=LEVEL with a numeric LEVEL (e.g. '30 % noise=0.3'), got {item!r}")
        columns.append((title, value))
    return columns


def parse_row(item) -> tuple[str, list[tuple[str, str]]]:
    from common.errors import ConfigError

    label, sep, sources = item.rpartition("=")
    pairs = [src.rpartition(":") for src in sources.split(",")] if sep else []
    if not label or not pairs or any(not d or not s or not m for d, s, m in pairs):
        raise ConfigError(f"a row is LABEL=DIR:METHOD[,DIR:METHOD...], got {item!r}")
    return label, [(d, m) for d, _, m in pairs]


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", metavar="LABEL=DIR:METHOD[,DIR:METHOD]")
    p.add_argument("--columns", nargs="+", required=True, metavar="TITLE=LEVEL")
    args = p.parse_args(argv)
    columns = parse_columns(args.columns)
    rows = [parse_row(row) for row in args.rows]
    header = "| method | " + " | ".join(f"{t}: accuracy | {t}: mean-class acc." for t, _ in columns) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(columns))]
    for label, sources in rows:
        runs_by_source = [(read_runs(directory), method) for directory, method in sources]
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
    sys.exit(run_main(main))
