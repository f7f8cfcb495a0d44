"""The five methods fine-tuned from a pretrained backbone vs trained from scratch, at four label settings.

    python -m benchmarks.pretrain --out benchmark_runs/pretrain            # once: the identity backbone
    python -m benchmarks.pretrained_regime --out benchmark_runs/pt --weights benchmark_runs/pretrain/backbone.weights.h5 \\
        [--methods ce ldlva lanet ddaf nla] [--table1-methods scn rul eac] [--seeds 0 1 2] \\
        [--settings sym30 asym30 imb100 clean sym10 sym20]

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
random erasing 0.2; each method's own settings are its official defaults (LDLVA in bank mode; EAC's
in-model erasing off, since the recipe's erasing already erases its first view: the paper's erase-then-flip). Cells
run seed-major across all sixteen grids, so a run stopped early still has every column for the seeds
done. ``OUT/table.md`` is the combined table (mean ± std over seeds: accuracy, mean-class accuracy and
the noise-detection AUC of a method's per-sample score), rewritten after every cell.

LDLVA's Table 1 (baseline, SCN, RUL, LDLVA at 10/20/30 % symmetric noise; here with EAC, LA-Net, NLA
and DDAF beside them) is the pretrained regime's ``sym10``/``sym20``/``sym30`` cells, where the
``--table1-methods`` train as well: ``OUT/table1.md``.
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
    # LDLVA's Table 1 levels (with sym30): pretrained regime only, where the Table 1 methods run too.
    "sym10": (["--protocol", "noise", "--levels", "0.1", "--noise", "symmetric"], "0.1", "10 % symmetric"),
    "sym20": (["--protocol", "noise", "--levels", "0.2", "--noise", "symmetric"], "0.2", "20 % symmetric"),
}
TABLE1_SETTINGS = ("sym10", "sym20", "sym30")  # LDLVA Table 1: symmetric noise 10 / 20 / 30 %
PRETRAINED_ONLY_SETTINGS = ("sym10", "sym20")
REGIMES = ("pretrained", "scratch")


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--weights", required=True, help="the pretrained backbone: benchmarks.pretrain's backbone.weights.h5, "
                                                    "or dlib (dlib's face ResNet; with --backbone dlib_resnet)")
    p.add_argument("--methods", nargs="+", default=["ce", "ldlva", "lanet", "ddaf", "nla"],
                   help="methods of the pretrained-vs-scratch table (every regime and setting)")
    p.add_argument("--table1-methods", nargs="*", default=["scn", "rul", "eac"],
                   help="further methods of LDLVA's Table 1 layout: pretrained regime, 10/20/30 %% symmetric noise only")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                   help="label settings, run in this order within a seed (sym10/sym20: pretrained regime only)")
    p.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--image-size", type=positive_int, default=48)
    p.add_argument("--train-size", type=positive_int, default=2000)
    p.add_argument("--epochs", type=positive_int, default=20)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--freeze", default="none", choices=("none", "stem", "stage1", "stage2", "stage3"),
                   help="keep the backbone's stem and stages up to this one fixed (pretrained regime only)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "lamb"),
                   help="lamb: layer-wise relative steps (train.py --optimizer lamb)")
    p.add_argument("--backbone-lr-multiplier", type=positive_float, default=1.0,
                   help="the pretrained backbone at this multiple of --lr (pretrained regime only)")
    p.add_argument("--head-init", default="random", choices=("random", "probe"),
                   help="probe: each pretrained run's classifier starts from a linear probe of the frozen features "
                        "(LP-FT; train.py --head-init)")
    p.add_argument("--order", default="seed", choices=("seed", "setting"),
                   help="seed: every setting's seed 0 first (default); setting: each setting's seeds before the next")
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild OUT/table.md")
    return p


def cell_methods(args, regime: str, setting: str) -> list[str]:
    """The methods one (regime, setting) grid trains: the table's methods everywhere, and the Table 1
    methods where Table 1 is (pretrained, symmetric noise); the 10/20 % levels only in Table 1's regime."""
    if setting in PRETRAINED_ONLY_SETTINGS and regime != "pretrained":
        return []
    extra = args.table1_methods if regime == "pretrained" and setting in TABLE1_SETTINGS else []
    return [*args.methods, *[m for m in extra if m not in args.methods]]


def grid_argv(args, regime: str, setting: str, seeds) -> list[str]:
    protocol, _, _ = SETTINGS[setting]
    argv = [*protocol, "--methods", *cell_methods(args, regime, setting), "--seeds", *map(str, seeds),
            "--out", str(Path(args.out) / regime / setting),
            "--dataset", "synthetic", "--synthetic", f"train_size={args.train_size}",
            "--backbone", args.backbone, "--image-size", str(args.image_size), "--pad", str(max(1, args.image_size // 16)),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", f"{args.lr:g}",
            "--lr-schedule", "cosine", "--random-erasing", "0.2", "--test-every", "0", "--weights",
            # resolved, so a rerun that names the same file by another path (relative, absolute) resumes the grid
            _weights_arg(args.weights) if regime == "pretrained" else "none"]
    if regime == "pretrained" and args.freeze != "none":
        argv += ["--freeze", args.freeze]
    if args.optimizer != "adam":
        argv += ["--optimizer", args.optimizer]
    if regime == "pretrained" and args.backbone_lr_multiplier != 1.0:
        argv += ["--backbone-lr-multiplier", f"{args.backbone_lr_multiplier:g}"]
    if regime == "pretrained" and args.head_init != "random":
        argv += ["--head-init", args.head_init]
    if "ldlva" in cell_methods(args, regime, setting):
        argv += ["--method-set", "ldlva:neighbor_source=bank"]
    if "eac" in cell_methods(args, regime, setting):
        # The recipe's pipeline erasing (p 0.2, every method) is EAC's view 1; EAC's own in-model erasing is off
        # so view 1 is not erased twice, and view 2 is view 1's mirror (the paper's erase-then-flip).
        argv += ["--method-set", "eac:erasing=0"]
    return argv


def _weights_arg(weights: str) -> str:
    return weights if weights == "dlib" else str(Path(weights).resolve())


def recipe(args) -> str:
    """One line naming the recipe every cell shares."""
    weights = "dlib's face ResNet (--weights dlib)" if args.weights == "dlib" else "the identity backbone"
    frozen = f", {args.freeze} frozen" if args.freeze != "none" else ""
    frozen += ", head from a linear probe (LP-FT)" if args.head_init == "probe" else ""
    optimizer = {"adam": "Adam", "lamb": "LAMB"}[args.optimizer]
    backbone_lr = f", backbone × {args.backbone_lr_multiplier:g}" if args.backbone_lr_multiplier != 1.0 else ""
    return (f"{args.backbone} @ {args.image_size} px from {weights}{frozen}, {args.train_size} training faces, "
            f"{args.epochs} epochs, batch {args.batch_size} ({optimizer} {args.lr:g}{backbone_lr}, cosine)")


def run_grid(argv) -> int:
    from benchmarks.grid import build_parser as grid_parser
    from benchmarks.grid import run_grid as grid

    return grid(grid_parser().parse_args(argv), log=lambda *a, **k: None)


def read_rows(args) -> dict:
    import csv

    rows = {}
    for regime in args.regimes:
        for setting in args.settings:
            path = Path(args.out) / regime / setting / "runs.csv"
            if path.is_file():
                with open(path, newline="") as handle:
                    rows[regime, setting] = [r for r in csv.DictReader(handle) if int(r["seed"]) in args.seeds]
    return rows


def _cell(rows, key, method, regime, setting, seeds) -> tuple[str, int]:
    from benchmarks.grid import mean_std

    values = [float(r[key]) for r in rows.get((regime, setting), [])
              if r["method"] == method and r.get(key) not in (None, "")]
    mean, std, n = mean_std(values)
    return ("–" if n == 0 else (f"{100 * mean:.1f}" if n == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}")
            + ("" if n == len(seeds) else f" (n={n})")), n


def combined_table(args) -> str:
    from models.registry import method_title

    rows = read_rows(args)
    settings = [s for s in args.settings if s not in PRETRAINED_ONLY_SETTINGS]
    titles = [SETTINGS[s][2] for s in settings]
    lines = [f"Synthetic benchmark; {recipe(args)}; seeds {' '.join(map(str, args.seeds))}; "
             "mean ± std over seeds (n = seeds finished when fewer).", ""]
    for key, heading in (("accuracy", "Accuracy (%)"), ("mean_class_accuracy", "Mean-class accuracy (%)"),
                         ("noise_detection_auc", "Noise-detection ROC-AUC (%) of the per-sample score")):
        section = [f"#### {heading}", "", "| method | regime | " + " | ".join(titles) + " |",
                   "|---|---|" + "---:|" * len(titles)]
        any_value = False
        for method in args.methods:
            for regime in args.regimes:
                cells = []
                for setting in settings:
                    text, n = _cell(rows, key, method, regime, setting, args.seeds)
                    any_value |= n > 0
                    cells.append(text)
                section.append(f"| {method_title(method)} | {regime} | " + " | ".join(cells) + " |")
        if any_value:
            lines += [*section, ""]
    return "\n".join(lines) + "\n"


TABLE1_ORDER = ("ce", "scn", "rul", "ldlva", "eac", "lanet", "nla", "ddaf")  # LDLVA Table 1, then the others


# table1.md's sections: (runs.csv column, heading); a section none of whose cells has a value is left out
TABLE1_SECTIONS = (
    ("accuracy", "Accuracy (%) after the last epoch (the default protocol)"),
    ("mean_last_5_accuracy", "Accuracy (%), mean of the last 5 epochs (SCN's and EAC's protocol)"),
    ("best_epoch_accuracy", "Accuracy (%) at the best epoch (test-set selection, as some papers report)"),
    ("noise_detection_auc", "Noise-detection ROC-AUC (%) of the per-sample score (λ, SCN's α, RUL's u, "
                            "LA-Net's target bank)"),
)


def table1(args) -> str:
    """LDLVA's Table 1 layout: accuracy at 10/20/30 % symmetric noise, pretrained regime, under each reporting
    protocol the runs recorded, and the noise-detection AUC of the methods that score samples."""
    from models.registry import method_title

    rows = read_rows(args)
    settings = [s for s in TABLE1_SETTINGS if s in args.settings]
    methods = [m for m in TABLE1_ORDER if m in {*args.methods, *args.table1_methods}]
    methods += [m for m in [*args.methods, *args.table1_methods] if m not in methods]
    lines = [f"LDLVA Table 1 layout: synthetic benchmark, pretrained regime ({recipe(args)}); "
             f"mean ± std over seeds {' '.join(map(str, args.seeds))}.", ""]
    header = ["| method | " + " | ".join(SETTINGS[s][2] for s in settings) + " |", "|---|" + "---:|" * len(settings)]
    for key, heading in TABLE1_SECTIONS:
        section, any_value = [f"#### {heading}", "", *header], False
        for method in methods:
            cells = [_cell(rows, key, method, "pretrained", s, args.seeds) for s in settings]
            if key == "noise_detection_auc" and not any(n for _, n in cells):
                continue  # a method without a per-sample score (CE, DDAF, NLA, EAC) has no AUC row
            any_value |= any(n for _, n in cells)
            section.append(f"| {method_title(method)} | " + " | ".join(text for text, _ in cells) + " |")
        if any_value or key == "accuracy":
            lines += [*section, ""]
    return "\n".join(lines)


def write_tables(args) -> None:
    from common.io import atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.md", combined_table(args))
    if "pretrained" in args.regimes and any(s in args.settings for s in TABLE1_SETTINGS):
        atomic_write_text(out / "table1.md", table1(args))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.cli import quiet_tensorflow
    from common.errors import ConfigError

    quiet_tensorflow()
    if "pretrained" in args.regimes and args.weights != "dlib" and not Path(args.weights).is_file():
        raise ConfigError(f"--weights {args.weights}: not found (run `python -m benchmarks.pretrain` first)")
    out = Path(args.out)
    code = 0
    if not args.report_only:
        if args.order == "seed":  # seed-major: every column gets seed 0 first
            order = [(seed, setting) for seed in args.seeds for setting in args.settings]
        else:  # setting-major: a column's every seed before the next column
            order = [(seed, setting) for setting in args.settings for seed in args.seeds]
        for seed, setting in order:
            for regime in args.regimes:
                if not cell_methods(args, regime, setting):
                    continue
                start = time.perf_counter()
                code |= run_grid(grid_argv(args, regime, setting, [seed]))
                print(f"[{time.strftime('%H:%M')}] seed {seed} {setting} {regime}: {time.perf_counter() - start:.0f} s",
                      flush=True)
                # The cell's grid wrote runs.csv for this seed alone: re-read every seed's finished runs, so the
                # tables written now (and left behind if the grid is killed) count all of them.
                run_grid(grid_argv(args, regime, setting, args.seeds) + ["--report-only"])
                write_tables(args)
    for setting in args.settings:  # the per-grid tables over all seeds
        for regime in args.regimes:
            # runs/ rather than runs.csv: a grid restored by benchmarks.archive has its runs but no table yet
            if cell_methods(args, regime, setting) and (out / regime / setting / "runs").is_dir():
                run_grid(grid_argv(args, regime, setting, args.seeds) + ["--report-only"])
    write_tables(args)
    print((out / "table.md").read_text())
    if (out / "table1.md").is_file():
        print((out / "table1.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
