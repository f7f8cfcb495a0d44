"""End to end: LDLVA on pseudo-VA from our own regressor (the EmoNet replacement) on the synthetic benchmark.

    python -m benchmarks.pseudo_va_e2e [--out benchmark_runs/pseudo_va_e2e] [--stages regressor data ce ldlva]
        [--folds 2] [--regressor-epochs 12] [--epochs 12] [--noise-rate 0.3] [--seed 0] [--set key=value ...]

Stages (each is skipped when its output exists, so the benchmark can run one stage per command; a
classifier stage stopped by a time limit resumes from its last epoch checkpoint when run again):

1. ``regressor``: ``preprocess.pseudo_va train`` on the default synthetic set's train split (annotated VA)
   with ``--folds 2`` (cross-fit: each half is predicted by the member trained on the other half), reporting
   valence/arousal CCC on the test split and out-of-fold on the train split.
2. ``data``: a new prepared directory ``OUT/data``: ``train.csv`` = the synthetic train table with its VA
   replaced by the out-of-fold pseudo-VA (``pseudo_va predict``), ``test.csv`` copied, ``dataset.json``
   pointing ``image_root`` at the synthetic images (absolute path, nothing copied), and the neighbour table
   built by ``preprocess.knn``.
3. ``ce`` and ``ldlva``: ``engine.run.Trainer`` on ``OUT/data`` with symmetric label noise (30 %), the
   synthetic defaults (small_cnn, 64 px, pad 4, 12 epochs, batch 64, Adam 1e-3; ``--image-size``,
   ``--pad``, ``--lr-schedule`` and ``--epochs`` change them).
4. ``ldlva_annotated`` (optional): LDLVA on the annotated VA (the synthetic set itself), the reference
   pseudo-VA is compared with.

Prints a markdown table (also ``OUT/table.md``) and writes the numbers to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("regressor", "data", "ce", "ldlva", "ldlva_annotated")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmark_runs/pseudo_va_e2e")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=["regressor", "data", "ce", "ldlva"])
    p.add_argument("--folds", type=int, default=2, help="regressor cross-fit folds (1 = in-sample, optimistic)")
    p.add_argument("--regressor-epochs", type=int, default=8,
                   help="per member (default 8: two members fit in one 10-minute command on 2 CPU cores)")
    p.add_argument("--epochs", type=int, default=12, help="classifier epochs")
    p.add_argument("--image-size", type=int, default=64, help="classifier input side (32 fits the CPU budget)")
    p.add_argument("--pad", type=int, default=4, help="classifier random-crop padding")
    p.add_argument("--lr-schedule", default="constant", help="classifier schedule (constant | cosine | ...)")
    p.add_argument("--noise", default="symmetric")
    p.add_argument("--noise-rate", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="LDLVA override")
    return p


def synthetic_dir() -> Path:
    from preprocess.synthetic import SyntheticConfig, ensure_synthetic

    return ensure_synthetic(SyntheticConfig())


def stage_regressor(args, out: Path, syn: Path) -> None:
    from preprocess import pseudo_va

    model_dir = out / "regressor"
    if (model_dir / "report.json").is_file():
        return
    code = pseudo_va.main(["train", "--source", str(syn), "--out", str(model_dir), "--folds", str(args.folds),
                           "--backbone", "small_cnn", "--image-size", "64", "--pad", "4", "--batch-size", "64",
                           "--epochs", str(args.regressor_epochs), "--seed", str(args.seed), "--force"])
    if code:
        raise SystemExit(f"pseudo_va train failed (exit {code})")


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
    shutil.copyfile(syn / "test.csv", data / "test.csv")
    atomic_write_json(data / "dataset.json", {
        "dataset": "synthetic-pseudo-va", "num_classes": 7, "image_root": str((syn / "images").resolve()),
        "note": "synthetic train split with VA replaced by pseudo_va (out-of-fold) predictions"})
    code = pseudo_va.main(["predict", "--model", str(out / "regressor"), "--table", str(syn / "train.csv"),
                           "--image-root", str(syn / "images"), "--out", str(data / "train.csv"), "--force"])
    if code:
        raise SystemExit(f"pseudo_va predict failed (exit {code})")
    code = knn.main(["--table", str(data / "train.csv"), "--force"])
    if code:
        raise SystemExit(f"preprocess.knn failed (exit {code})")
    # The written table against the annotation it replaced (same rows, same order).
    annotated = pd.read_csv(syn / "train.csv")[["valence", "arousal"]].to_numpy(np.float64)
    pseudo = pd.read_csv(data / "train.csv")[["valence", "arousal"]].to_numpy(np.float64)
    atomic_write_json(data / "pseudo_va_check.json", {"train_pseudo_vs_annotated": va_metrics(pseudo, annotated)})


def stage_train(args, out: Path, name: str, data_dir: Path) -> None:
    import keras

    from common.config import parse_set_args
    from engine.run import RunConfig, Trainer

    run_dir = out / "runs" / name
    if (run_dir / "metrics.json").is_file():
        return
    # A run killed by a time limit continues from its last epoch checkpoint (exact resume).
    resume = (run_dir / "config.json").is_file()
    method = "ce" if name == "ce" else "ldlva"
    cfg = RunConfig(dataset="csv", num_classes=7, data_dir=str(data_dir), method=method, backbone="small_cnn",
                    image_size=args.image_size, pad=args.pad, lr_schedule=args.lr_schedule, epochs=args.epochs,
                    batch_size=64, lr=1e-3, seed=args.seed,
                    noise_kind=args.noise, noise_rate=args.noise_rate, noise_seed=args.seed,
                    method_overrides=parse_set_args(args.set) if method == "ldlva" else {},
                    out=str(run_dir), resume=resume, force=not resume, export=False, tensorboard=False, verbose=2)
    keras.backend.clear_session()
    start = time.perf_counter()
    Trainer(cfg).train()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["train_seconds"] = None if resume else round(time.perf_counter() - start, 1)  # resumed: partial
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def summary(args, out: Path) -> str:
    def pct(x):
        return "—" if x is None else f"{100 * x:.2f}"

    def num(x):
        return "—" if x is None else f"{x:.3f}"

    report = _read(out / "regressor" / "report.json") or {}
    check = (_read(out / "data" / "pseudo_va_check.json") or {}).get("train_pseudo_vs_annotated", {})
    holdout, oof = report.get("holdout", {}), report.get("out_of_fold", {})
    runs = {name: _read(out / "runs" / name / "metrics.json") or {} for name in ("ce", "ldlva", "ldlva_annotated")}
    cfg = report.get("config", {})
    lines = [f"Synthetic benchmark (6000 train / 1500 test), regressor small_cnn 64 px, {cfg.get('epochs', '?')} "
             f"epochs, {cfg.get('folds', '?')}-fold cross-fit; classifiers small_cnn {args.image_size} px, {args.epochs} "
             f"epochs, {args.lr_schedule} lr, {args.noise} noise "
             f"{args.noise_rate:.0%}, seed {args.seed}; LDLVA overrides: {', '.join(args.set) or 'none'}", "",
             "| quantity | valence | arousal |", "|---|---|---|",
             f"| pseudo-VA CCC, test split (mean of members) | {num(holdout.get('valence_ccc'))} | {num(holdout.get('arousal_ccc'))} |",
             f"| pseudo-VA RMSE, test split | {num(holdout.get('valence_rmse'))} | {num(holdout.get('arousal_rmse'))} |",
             f"| pseudo-VA CCC, train split out-of-fold (used by LDLVA) | {num(oof.get('valence_ccc'))} | {num(oof.get('arousal_ccc'))} |",
             f"| written train table vs annotated VA, CCC | {num(check.get('valence_ccc'))} | {num(check.get('arousal_ccc'))} |",
             "", "| classifier (noisy labels) | test accuracy (%) | mean-class accuracy (%) | s/run |", "|---|---|---|---|"]
    labels = {"ce": "CE", "ldlva": "LDLVA on pseudo-VA", "ldlva_annotated": "LDLVA on annotated VA (reference)"}
    for name, label in labels.items():
        m = runs[name]
        if m or name != "ldlva_annotated":
            lines.append(f"| {label} | {pct(m.get('accuracy'))} | {pct(m.get('mean_class_accuracy'))} | "
                         f"{m.get('train_seconds') or '—'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    syn = synthetic_dir()
    for stage in args.stages:
        print(f"--- stage {stage}", flush=True)
        if stage == "regressor":
            stage_regressor(args, out, syn)
        elif stage == "data":
            stage_data(args, out, syn)
        elif stage == "ldlva_annotated":
            stage_train(args, out, stage, syn)
        else:
            stage_train(args, out, stage, out / "data")
    table = summary(args, out)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    results = {"regressor": _read(out / "regressor" / "report.json"),
               "data_check": _read(out / "data" / "pseudo_va_check.json"),
               **{name: _read(out / "runs" / name / "metrics.json") for name in ("ce", "ldlva", "ldlva_annotated")}}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
