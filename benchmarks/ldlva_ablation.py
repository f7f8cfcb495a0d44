"""LDLVA vs CE and the paper's Table-4 ablations on the synthetic benchmark with symmetric label noise.

    python -m benchmarks.ldlva_ablation [--seeds 0 1] [--noise-rate 0.3] [--image-size 32] [--epochs 15]
        [--lr-schedule cosine] [--only full ce ...] [--set key=value ...] [--out benchmark_runs/ldlva_ablation]

Runs the grid sequentially (one training at a time) through ``engine.fit.train``:

* ``ce``: cross-entropy baseline;
* ``full``: LDLVA (``--set`` overrides apply to every LDLVA row, e.g. ``variant=release``);
* ``no_label_distribution``, ``no_adaptive_similarity``, ``fixed_uncertainty``, ``no_discriminative``: the
  full method with one Table-4 switch turned off;
* ``paper_gamma``: the full method with the paper's discriminative weight γ = 0.1 (useful when the grid runs
  with ``--set gamma=0.01``, the release's weight).

Every run writes its own run directory under ``--out``; a finished run (``metrics.json`` present) is
not trained again, so an interrupted grid continues where it stopped. Prints a markdown table of
mean ± std (over seeds) test accuracy, mean-class accuracy and noise-detection AUC of the learned
uncertainty (flipped vs kept labels), and writes it to ``OUT/table.md`` with the raw numbers in
``OUT/results.json``.
"""

from __future__ import annotations


from common.cli import ArgumentParser, fraction, nonnegative_int, positive_int, run_main
import json
import re
import statistics
import sys
import time
from pathlib import Path

KIND = "ldlva_ablation"
_CELL = re.compile(r"[a-z_]+_seed\d+")


GRID = {
    "ce": ("ce", {}),
    "full": ("ldlva", {}),
    "no_label_distribution": ("ldlva", {"label_distribution": "false"}),
    "no_adaptive_similarity": ("ldlva", {"adaptive_similarity": "false"}),
    "fixed_uncertainty": ("ldlva", {"uncertainty_mode": "fixed"}),
    "no_discriminative": ("ldlva", {"discriminative_loss": "false"}),
    # Not a Table-4 row: the paper's γ = 0.1 (the release uses 0.01), to show the weight's effect here.
    "paper_gamma": ("ldlva", {"gamma": "0.1"}),
}
LABELS = {"ce": "CE baseline", "full": "LDLVA (full)", "no_label_distribution": "w/o label distribution",
          "no_adaptive_similarity": "w/o adaptive similarity", "fixed_uncertainty": "fixed uncertainty λ = 0.5",
          "no_discriminative": "w/o discriminative loss", "paper_gamma": "full, γ = 0.1 (the paper's weight)"}


def build_parser():
    from engine.config import LR_SCHEDULES

    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1])
    p.add_argument("--noise", default="symmetric", choices=("none", "symmetric", "asymmetric"))
    p.add_argument("--noise-rate", type=fraction, default=0.3)
    p.add_argument("--image-size", type=positive_int, default=32, help="input side (CPU budget: 32; dataset default 64)")
    p.add_argument("--pad", type=nonnegative_int, default=2)
    p.add_argument("--epochs", type=positive_int, default=15)
    p.add_argument("--lr-schedule", default="cosine", choices=LR_SCHEDULES,
                   help="same for every row; cosine keeps the last epoch stable")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--backbone")
    p.add_argument("--only", nargs="+", choices=list(GRID), help="a subset of the grid rows")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="LDLVA override for every LDLVA row")
    p.add_argument("--synthetic", action="append", default=[], metavar="KEY=VALUE", help="synthetic dataset setting")
    p.add_argument("--out", default="benchmark_runs/ldlva_ablation")
    return p


def cell_config(args, name: str, seed: int, out: Path):
    """The RunConfig of one grid cell (row ``name``, ``seed``) trained into ``out``."""
    from common.cli import parse_pairs
    from engine.run import RunConfig

    method, overrides = GRID[name]
    if method == "ldlva":
        overrides = {**parse_pairs(args.set, "--set"), **overrides}
    synthetic = {k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in parse_pairs(args.synthetic,
                                                                                        "--synthetic").items()}
    return RunConfig(dataset="synthetic", method=method, seed=seed, noise=args.noise, noise_rate=args.noise_rate,
                     noise_seed=seed, image_size=args.image_size, pad=args.pad, epochs=args.epochs,
                     lr_schedule=args.lr_schedule, batch_size=args.batch_size, backbone=args.backbone,
                     set=overrides, synthetic=synthetic, run=str(out), force=True, export=False,
                     tensorboard=False, verbose=0)


def _read_metrics(path: Path) -> dict:
    from common.errors import DataError
    from common.io import read_json_object

    report = read_json_object(path, DataError, hint="delete its folder to train the cell again")
    if not isinstance(report.get("accuracy"), (int, float)):
        raise DataError(f"{path}: not a metrics.json written by train.py (no accuracy); delete its folder to train "
                        "the cell again")
    return report


def run_one(args, name: str, seed: int, out: Path) -> dict:
    import keras

    from engine.fit import train
    from engine.run import Run

    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        return _read_metrics(metrics_path)
    cfg = cell_config(args, name, seed, out)
    keras.backend.clear_session()
    start = time.perf_counter()
    report = train(Run(cfg, log=lambda *a: None)).report
    report["train_seconds"] = time.perf_counter() - start
    metrics_path.write_text(json.dumps(report, indent=2))
    return report


def mean_std(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def _ablation_layout(names: set) -> bool:
    return any(_CELL.fullmatch(n) for n in names) and all(
        _CELL.fullmatch(n) or n in ("table.md", "results.json") for n in names)


def main(argv=None) -> int:
    from benchmarks.grid import check_benchmark_dir, mark_benchmark_dir
    from engine.config import resolve

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    names = args.only or list(GRID)
    # Every cell's settings are checked before the first one trains; a user's folder is never written into.
    for seed in args.seeds:
        for name in names:
            resolve(cell_config(args, name, seed, out / f"{name}_seed{seed}"))
    check_benchmark_dir(out, KIND, _ablation_layout)
    mark_benchmark_dir(out, KIND)
    results = {}
    for seed in args.seeds:
        for name in names:
            report = run_one(args, name, seed, out / f"{name}_seed{seed}")
            results.setdefault(name, []).append(report)
            print(f"[{name} seed {seed}] acc {report['accuracy']:.4f} mean-class {report['mean_class_accuracy']:.4f} "
                  f"noise AUC {report.get('noise_detection_auc')} ({report.get('train_seconds', 0):.0f} s)", flush=True)
    settings = ", ".join(args.synthetic) or "default size"
    lines = [f"Synthetic benchmark ({settings}), {args.noise} noise {args.noise_rate:.0%}, {args.image_size}px, "
             f"{args.epochs} epochs, {args.lr_schedule} lr, seeds {', '.join(map(str, args.seeds))}; "
             f"LDLVA overrides: {', '.join(args.set) or 'none (defaults)'}", "",
             "| method | test accuracy (%) | mean-class accuracy (%) | noise-detection AUC (%) | s/run |",
             "|---|---|---|---|---|"]
    for name in names:
        reports = results[name]
        lines.append(f"| {LABELS[name]} | {mean_std([r['accuracy'] for r in reports])} | "
                     f"{mean_std([r['mean_class_accuracy'] for r in reports])} | "
                     f"{mean_std([r.get('noise_detection_auc') for r in reports])} | "
                     f"{statistics.mean(r.get('train_seconds', float('nan')) for r in reports):.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(
        {name: [{k: r.get(k) for k in ("accuracy", "mean_class_accuracy", "macro_f1", "noise_detection_auc",
                                        "mean_uncertainty", "train_seconds")} for r in reports]
         for name, reports in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
