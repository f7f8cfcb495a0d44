"""End to end: LDLVA on pseudo-VA from our own regressor (the EmoNet replacement) on the synthetic benchmark.

    python -m benchmarks.pseudo_va_e2e [--out benchmark_runs/pseudo_va_e2e] [--stages regressor data ce ldlva]
        [--folds 2] [--regressor-epochs 12] [--epochs 12] [--noise-rate 0.3] [--seeds 0 1] [--set key=value ...]
        [--train-size N]

Stages (each is skipped when its output exists, so the benchmark can run one stage per command; a
classifier stage stopped by a time limit resumes from its last epoch checkpoint when run again):

1. ``regressor``: ``preprocess.pseudo_va train`` on the default synthetic set's train split (annotated VA)
   with ``--folds 2`` (cross-fit: each half is predicted by the member trained on the other half), reporting
   valence/arousal CCC on the test split and out-of-fold on the train split.
   With ``--train-size N`` (the small-data regime, closest to the paper's use of EmoNet): the classifiers
   train on the first N faces only, and the regressor is trained on the *other* faces of the train split
   (a disjoint "VA-annotated dataset", as AffectNet is for EmoNet), so every pseudo-VA the classifiers see
   comes from a model that never saw that face; ``--folds 1`` is then enough.
2. ``data``: a new prepared directory ``OUT/data``: ``train.csv`` = the synthetic train table with its VA
   replaced by the out-of-fold pseudo-VA (``pseudo_va predict``), ``test.csv`` copied, ``dataset.json``
   pointing ``image_root`` at the synthetic images (absolute path, nothing copied), and the neighbour table
   built by ``preprocess.knn``.
3. ``ce`` and ``ldlva``: ``engine.fit.train`` on ``OUT/data`` with symmetric label noise (30 %), once per
   seed of ``--seeds`` (the seed sets the label noise and the initialisation; run dirs ``runs/NAME-sSEED``), the
   synthetic defaults (small_cnn, 64 px, pad 4, 12 epochs, batch 64, Adam 1e-3; ``--image-size``,
   ``--pad``, ``--lr-schedule`` and ``--epochs`` change them).
4. ``ldlva_annotated`` (optional): LDLVA on the annotated VA (the synthetic set itself, or its first N
   faces with ``--train-size``), the reference pseudo-VA is compared with.

Prints a markdown table (mean ± std over seeds; also ``OUT/table.md``) and writes the numbers to
``OUT/results.json``.
"""

from __future__ import annotations


from common.cli import ArgumentParser, fraction, nonnegative_int, positive_int, run_main
import json
import shutil
import sys
import time
from pathlib import Path


STAGES = ("regressor", "data", "ce", "ldlva", "ldlva_annotated")


def build_parser():
    from engine.config import LR_SCHEDULES

    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmark_runs/pseudo_va_e2e")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=["regressor", "data", "ce", "ldlva"])
    p.add_argument("--folds", type=positive_int, default=2, help="regressor cross-fit folds (1 = in-sample, optimistic)")
    p.add_argument("--regressor-epochs", type=positive_int, default=8,
                   help="per member (default 8: two members fit in one 10-minute command on 2 CPU cores)")
    p.add_argument("--epochs", type=positive_int, default=12, help="classifier epochs")
    p.add_argument("--image-size", type=positive_int, default=64, help="classifier input side (32 fits the CPU budget)")
    p.add_argument("--pad", type=nonnegative_int, default=4, help="classifier random-crop padding")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="classifier schedule (constant | cosine | ...)")
    p.add_argument("--noise", default="symmetric", choices=("none", "symmetric", "asymmetric"))
    p.add_argument("--noise-rate", type=fraction, default=0.3)
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0], help="classifier seeds (noise + init), default 0")
    p.add_argument("--regressor-seed", type=nonnegative_int, default=0)
    p.add_argument("--train-size", type=positive_int, default=None,
                   help="classifiers train on the first N train faces; the regressor on the others (disjoint)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="LDLVA override")
    return p


def synthetic_dir() -> Path:
    from data.synthetic import SyntheticConfig, ensure_synthetic

    return ensure_synthetic(SyntheticConfig())


def stage_regressor(args, out: Path, syn: Path) -> None:
    from preprocess import pseudo_va

    model_dir = out / "regressor"
    if (model_dir / "report.json").is_file():
        return
    source = syn
    if args.train_size is not None:
        # The regressor's own "VA-annotated dataset": the train faces the classifiers never use.
        source = _split_source(args, out, syn, rest=True)
    code = pseudo_va.main(["train", "--source", str(source), "--image-root", str(syn / "images"),
                           "--out", str(model_dir), "--folds", str(args.folds),
                           "--backbone", "small_cnn", "--image-size", "64", "--pad", "4", "--batch-size", "64",
                           "--epochs", str(args.regressor_epochs), "--seed", str(args.regressor_seed), "--force"])
    if code:
        raise SystemExit(f"pseudo_va train failed (exit {code})")


def _split_source(args, out: Path, syn: Path, rest: bool) -> Path:
    """A prepared directory holding the synthetic train split's first ``--train-size`` rows (``rest=False``:
    the classifiers' faces, annotated VA, with its neighbour table) or all the other rows (``rest=True``:
    the regressor's training set); test.csv copied, images referenced in place."""
    import pandas as pd

    from common.io import atomic_write_json
    from preprocess import knn

    target = out / ("regressor_source" if rest else "data_annotated")
    if (target / "train.csv").is_file() and (rest or (target / "train.neighbors.npz").is_file()):
        return target
    frame = pd.read_csv(syn / "train.csv")
    if not 0 < args.train_size < len(frame):
        raise SystemExit(f"--train-size must be in 1..{len(frame) - 1} (the synthetic train split has "
                         f"{len(frame)} rows), got {args.train_size}")
    part = frame.iloc[args.train_size:] if rest else frame.iloc[:args.train_size]
    target.mkdir(parents=True, exist_ok=True)
    part.reset_index(drop=True).to_csv(target / "train.csv", index=False)
    shutil.copyfile(syn / "test.csv", target / "test.csv")
    atomic_write_json(target / "dataset.json", {
        "dataset": "synthetic-subset", "num_classes": 7, "image_root": str((syn / "images").resolve()),
        "note": f"synthetic train rows {'%d..end' % args.train_size if rest else '0..%d' % (args.train_size - 1)}"})
    if not rest and knn.main(["--table", str(target / "train.csv"), "--force"]):
        raise SystemExit("preprocess.knn failed")
    return target


def _classifier_table(args, syn: Path) -> Path:
    """The train table whose faces the classifiers use, annotated VA (the one pseudo-VA replaces)."""
    return syn / "train.csv" if args.train_size is None else Path(args.out) / "data_annotated" / "train.csv"


def stage_data(args, out: Path, syn: Path) -> None:
    import numpy as np
    import pandas as pd

    from common.io import atomic_write_json
    from engine.metrics import va_metrics
    from preprocess import knn, pseudo_va

    data = out / "data"
    if (data / "train.neighbors.npz").is_file() and (data / "pseudo_va_check.json").is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    if args.train_size is not None:
        _split_source(args, out, syn, rest=False)
    annotated_table = _classifier_table(args, syn)
    shutil.copyfile(syn / "test.csv", data / "test.csv")
    atomic_write_json(data / "dataset.json", {
        "dataset": "synthetic-pseudo-va", "num_classes": 7, "image_root": str((syn / "images").resolve()),
        "note": "synthetic train split with VA replaced by pseudo_va (out-of-fold) predictions"})
    code = pseudo_va.main(["predict", "--model", str(out / "regressor"), "--table", str(annotated_table),
                           "--image-root", str(syn / "images"), "--out", str(data / "train.csv"), "--force"])
    if code:
        raise SystemExit(f"pseudo_va predict failed (exit {code})")
    code = knn.main(["--table", str(data / "train.csv"), "--force"])
    if code:
        raise SystemExit(f"preprocess.knn failed (exit {code})")
    # The written table against the annotation it replaced (same rows, same order).
    annotated = pd.read_csv(annotated_table)[["valence", "arousal"]].to_numpy(np.float64)
    pseudo = pd.read_csv(data / "train.csv")[["valence", "arousal"]].to_numpy(np.float64)
    atomic_write_json(data / "pseudo_va_check.json", {"train_pseudo_vs_annotated": va_metrics(pseudo, annotated)})


def classifier_config(args, method: str, data_dir, seed: int, run_dir: Path, resume: bool = False):
    """The RunConfig of one classifier run (CE or LDLVA) on ``data_dir``."""
    from common.cli import parse_pairs
    from engine.run import RunConfig

    return RunConfig(dataset="csv", num_classes=7, data_dir=None if data_dir is None else str(data_dir), method=method,
                     backbone="small_cnn", image_size=args.image_size, pad=args.pad, lr_schedule=args.lr_schedule,
                     epochs=args.epochs, batch_size=64, lr=1e-3, seed=seed,
                     noise=args.noise, noise_rate=args.noise_rate, noise_seed=seed,
                     set=parse_pairs(args.set, "--set") if method == "ldlva" else {},
                     run=str(run_dir), resume=resume, force=not resume, export=False, tensorboard=False, verbose=2)


def stage_train(args, out: Path, name: str, data_dir: Path, seed: int) -> None:
    import keras

    from engine.fit import train
    from engine.run import Run

    run_dir = out / "runs" / f"{name}-s{seed}"
    if (run_dir / "metrics.json").is_file():
        return
    # A run killed by a time limit continues from its last epoch checkpoint (exact resume).
    resume = (run_dir / "config.json").is_file()
    method = "ce" if name == "ce" else "ldlva"
    cfg = classifier_config(args, method, data_dir, seed, run_dir, resume)
    keras.backend.clear_session()
    start = time.perf_counter()
    train(Run(cfg))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["train_seconds"] = None if resume else round(time.perf_counter() - start, 1)  # resumed: partial
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


RUN_LABELS = {"ce": "CE", "ldlva": "LDLVA on pseudo-VA", "ldlva_annotated": "LDLVA on annotated VA (reference)"}


def _runs(out: Path, name: str, seeds) -> dict:
    """{seed: metrics} of the finished runs of ``name``."""
    found = {seed: _read(out / "runs" / f"{name}-s{seed}" / "metrics.json") for seed in seeds}
    return {seed: m for seed, m in found.items() if m}


def summary(args, out: Path) -> str:
    import numpy as np

    def num(x):
        return "—" if x is None else f"{x:.3f}"

    def mean_std(values):
        if not values:
            return "—"
        values = 100 * np.asarray(values, np.float64)
        return f"{values.mean():.2f}" + (f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else "")

    report = _read(out / "regressor" / "report.json") or {}
    check = (_read(out / "data" / "pseudo_va_check.json") or {}).get("train_pseudo_vs_annotated", {})
    holdout, oof = report.get("holdout", {}), report.get("out_of_fold", {})
    cfg = report.get("config", {})
    if args.train_size is None:
        faces = ("6000 train faces (regressor cross-fitted on them) / 1500 test")
        used = "train split out-of-fold (used by LDLVA)"
    else:
        rest = out / "regressor_source" / "train.csv"
        others = sum(1 for _ in rest.open()) - 1 if rest.is_file() else "?"
        faces = f"classifiers on the first {args.train_size} train faces, regressor on the other {others} / 1500 test"
        used = f"the {args.train_size} classifier faces (never seen by the regressor; used by LDLVA)"
    lines = [f"Synthetic benchmark: {faces}. Regressor small_cnn 64 px, {cfg.get('epochs', '?')} epochs, "
             f"{cfg.get('folds', '?')} fold(s); classifiers small_cnn {args.image_size} px pad {args.pad}, "
             f"{args.epochs} epochs, {args.lr_schedule} lr, {args.noise} noise {args.noise_rate:.0%}, "
             f"seeds {' '.join(map(str, args.seeds))}; LDLVA overrides: {', '.join(args.set) or 'none'}", "",
             "| quantity | valence | arousal |", "|---|---|---|",
             f"| pseudo-VA CCC, test split (mean of members) | {num(holdout.get('valence_ccc'))} | {num(holdout.get('arousal_ccc'))} |",
             f"| pseudo-VA RMSE, test split | {num(holdout.get('valence_rmse'))} | {num(holdout.get('arousal_rmse'))} |",
             f"| pseudo-VA CCC, train split out-of-fold | {num(oof.get('valence_ccc'))} | {num(oof.get('arousal_ccc'))} |",
             f"| pseudo-VA CCC vs annotated VA, {used} | {num(check.get('valence_ccc'))} | {num(check.get('arousal_ccc'))} |",
             "", "| classifier (noisy labels) | seeds | test accuracy (%) | mean-class accuracy (%) | per-seed accuracy (%) |",
             "|---|---|---|---|---|"]
    for name, label in RUN_LABELS.items():
        runs = _runs(out, name, args.seeds)
        if runs or name != "ldlva_annotated":
            per_seed = ", ".join(f"s{seed} {100 * m['accuracy']:.2f}" for seed, m in runs.items()) or "—"
            lines.append(f"| {label} | {len(runs)} | {mean_std([m['accuracy'] for m in runs.values()])} | "
                         f"{mean_std([m['mean_class_accuracy'] for m in runs.values()])} | {per_seed} |")
    return "\n".join(lines)


E2E_KIND = "pseudo_va_e2e"
E2E_ENTRIES = ("regressor", "regressor_source", "data", "data_annotated", "runs", "table.md", "results.json")


def _e2e_layout(names: set) -> bool:
    return bool(names - {"table.md", "results.json"}) and names <= set(E2E_ENTRIES)


def main(argv=None) -> int:
    from benchmarks.grid import check_benchmark_dir, mark_benchmark_dir
    from engine.config import resolve

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    # The classifiers' settings are checked before the regressor trains; a user's folder is never written into.
    for method in ("ce", "ldlva"):
        resolve(classifier_config(args, method, None, 0, out / "runs" / method))
    check_benchmark_dir(out, E2E_KIND, _e2e_layout)
    mark_benchmark_dir(out, E2E_KIND)
    syn = synthetic_dir()
    for stage in args.stages:
        print(f"--- stage {stage}", flush=True)
        if stage == "regressor":
            stage_regressor(args, out, syn)
        elif stage == "data":
            stage_data(args, out, syn)
        else:
            if stage == "ldlva_annotated":
                data_dir = syn if args.train_size is None else _split_source(args, out, syn, rest=False)
            else:
                data_dir = out / "data"
            for seed in args.seeds:
                stage_train(args, out, stage, data_dir, seed)
    table = summary(args, out)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    results = {"regressor": _read(out / "regressor" / "report.json"),
               "data_check": _read(out / "data" / "pseudo_va_check.json"),
               **{name: _runs(out, name, args.seeds) for name in RUN_LABELS}}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
