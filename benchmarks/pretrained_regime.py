"""The five methods fine-tuned from a pretrained backbone vs trained from scratch, at four label settings.

    python -m benchmarks.pretrain --out benchmark_runs/pretrain            # once: the identity backbone
    python -m benchmarks.pretrained_regime --out benchmark_runs/pt --weights benchmark_runs/pretrain/backbone.weights.h5 \\
        [--methods ce ldlva lanet ddaf nla] [--seeds 0 1 2] [--settings sym30 asym30 imb100 clean]

Two regimes × four settings, each an ordinary ``benchmark.py`` grid (``OUT/<regime>/<setting>``, resumable):

=========  ==============================================================================
setting    protocol
=========  ==============================================================================
sym30      30 % symmetric label noise
asym30     30 % asymmetric label noise (LA-Net's class map, ``data.classes.ASYMMETRIC_FLIP``)
imb100     long-tailed training set, imbalance factor 100, clean labels
clean      the labels as they are
=========  ==============================================================================

``pretrained`` starts every backbone from ``--weights`` (the synthetic-identity backbone of
``benchmarks.pretrain``, the offline stand-in for MS-Celeb-1M); ``scratch`` from random weights. Both
use one recipe for every method (so methods are compared on equal terms, as in the papers' own tables
against their baselines): the synthetic benchmark's first ``--train-size`` faces, ``--backbone`` at
``--image-size`` px, Adam ``--lr`` with cosine decay over ``--epochs`` epochs, batch 64, flip + pad-crop,
random erasing 0.2; each method's own settings are its official defaults (LDLVA in bank mode). Cells
run seed-major across all sixteen grids, so a run stopped early still has every column for the seeds
done. ``OUT/table.md`` is the combined table (mean ± std over seeds: accuracy, mean-class accuracy and
the noise-detection AUC of a method's per-sample score), rewritten after every cell.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common.cli import ArgumentParser, nonnegative_int, positive_float, positive_int, run_main

SETTINGS = {
    "sym30": (["--protocol", "noise", "--levels", "0.3", "--noise", "symmetric"], "0.3", "30 % symmetric"),
    "asym30": (["--protocol", "noise", "--levels", "0.3", "--noise", "asymmetric"], "0.3", "30 % asymmetric"),
    "imb100": (["--protocol", "imbalance", "--levels", "100"], "100", "IF 100 (clean)"),
    "clean": (["--protocol", "original"], "clean", "clean"),
}
REGIMES = ("pretrained", "scratch")


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--weights", required=True, help="the pretrained backbone (benchmarks.pretrain's backbone.weights.h5)")
    p.add_argument("--methods", nargs="+", default=["ce", "ldlva", "lanet", "ddaf", "nla"])
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--image-size", type=positive_int, default=48)
    p.add_argument("--train-size", type=positive_int, default=2000)
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild OUT/table.md")
    return p


def grid_argv(args, regime: str, setting: str, seeds) -> list[str]:
    protocol, _, _ = SETTINGS[setting]
    argv = [*protocol, "--methods", *args.methods, "--seeds", *map(str, seeds),
            "--out", str(Path(args.out) / regime / setting),
            "--dataset", "synthetic", "--synthetic", f"train_size={args.train_size}",
            "--backbone", args.backbone, "--image-size", str(args.image_size), "--pad", str(max(1, args.image_size // 16)),
            "--epochs", str(args.epochs), "--batch-size", "64", "--lr", f"{args.lr:g}", "--lr-schedule", "cosine",
            "--random-erasing", "0.2", "--val-every", "0", "--weights", args.weights if regime == "pretrained" else "none"]
    if "ldlva" in args.methods:
        argv += ["--method-set", "ldlva:neighbor_source=bank"]
    return argv


def run_grid(argv) -> int:
    from benchmarks.grid import build_parser as grid_parser
    from benchmarks.grid import run_grid as grid

    return grid(grid_parser().parse_args(argv), log=lambda *a, **k: None)


def combined_table(args) -> str:
    import csv

    from benchmarks.grid import mean_std
    from models.registry import method_title

    rows = {}
    for regime in args.regimes:
        for setting in args.settings:
            path = Path(args.out) / regime / setting / "runs.csv"
            if path.is_file():
                with open(path, newline="") as handle:
                    rows[regime, setting] = [r for r in csv.DictReader(handle) if int(r["seed"]) in args.seeds]
    titles = [SETTINGS[s][2] for s in args.settings]
    lines = [f"Synthetic benchmark, {args.train_size} training faces, {args.backbone} @ {args.image_size} px, "
             f"{args.epochs} epochs (Adam {args.lr:g}, cosine), seeds {' '.join(map(str, args.seeds))}; "
             "mean ± std over seeds (n = seeds finished when fewer).", ""]
    for key, heading in (("accuracy", "Accuracy (%)"), ("mean_class_accuracy", "Mean-class accuracy (%)"),
                         ("noise_detection_auc", "Noise-detection ROC-AUC (%) of the per-sample score")):
        section = [f"#### {heading}", "", "| method | regime | " + " | ".join(titles) + " |",
                   "|---|---|" + "---:|" * len(titles)]
        any_value = False
        for method in args.methods:
            for regime in args.regimes:
                cells = []
                for setting in args.settings:
                    values = [float(r[key]) for r in rows.get((regime, setting), [])
                              if r["method"] == method and r.get(key) not in (None, "")]
                    mean, std, n = mean_std(values)
                    any_value |= n > 0
                    cells.append("–" if n == 0 else f"{100 * mean:.1f} ± {100 * std:.1f}"
                                 + ("" if n == len(args.seeds) else f" (n={n})"))
                section.append(f"| {method_title(method)} | {regime} | " + " | ".join(cells) + " |")
        if any_value:
            lines += [*section, ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.cli import quiet_tensorflow
    from common.errors import ConfigError
    from common.io import atomic_write_text

    quiet_tensorflow()
    if "pretrained" in args.regimes and not Path(args.weights).is_file():
        raise ConfigError(f"--weights {args.weights}: not found (run `python -m benchmarks.pretrain` first)")
    out = Path(args.out)
    code = 0
    if not args.report_only:
        for seed in args.seeds:  # seed-major: every column gets seed 0 first
            for setting in args.settings:
                for regime in args.regimes:
                    start = time.perf_counter()
                    code |= run_grid(grid_argv(args, regime, setting, [seed]))
                    print(f"[{time.strftime('%H:%M')}] seed {seed} {setting} {regime}: {time.perf_counter() - start:.0f} s",
                          flush=True)
                    out.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(out / "table.md", combined_table(args))
    for setting in args.settings:  # the per-grid tables over all seeds
        for regime in args.regimes:
            run_grid(grid_argv(args, regime, setting, args.seeds) + ["--report-only"])
    atomic_write_text(out / "table.md", combined_table(args))
    print((out / "table.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
