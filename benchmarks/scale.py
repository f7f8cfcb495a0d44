"""How the cost of the training path grows with the training-set size, up to AffectNet-8's 287 651 faces.

    python -m benchmarks.scale [--sizes 10000 50000 287651] [--pool 2000] [--epochs 2] [--out benchmark_runs/scale]

For each N a fresh process (so peak memory is its own) builds a prepared directory of N training rows
— distinct paths (hard links to a pool of ``--pool`` small JPEGs, so the disk stays small), labels,
valence/arousal and 68 landmarks distinct per row, as AffectNet's tables have — and runs the real
``train.py`` path on it: table loading and validation (image scan included), 30 % symmetric label noise,
LDLVA in bank mode (VA neighbour table K = 8, per-sample λ, probability and feature banks, uncertainty
logging with the noise-detection AUC, checkpoints with every state), the tf.data pipeline, evaluation
and no export. The backbone is a tiny 16-px network, so what is measured is everything *but* the
model. Per N it reports the wall time of every stage (``metrics.json`` ``timings_s``), the per-epoch
overhead outside the train steps — all in, ``(fit − steps) / epochs``, and steady, an epoch's gaps between
steps (``log.csv``) + its checkpoint write + its uncertainty logging —, the peak resident memory,
the checkpoint size and write time; and between consecutive sizes the growth exponent
``log(t₂/t₁) / log(N₂/N₁)`` of each stage (1 = linear; N log N shows as slightly above 1).

Goals (issue: AffectNet scale on one machine): every stage outside the model grows at most N log N;
at N = 287 651 the per-epoch overhead outside the model is under 5 s (5 % of a ~100 s ResNet-50
epoch on one modern GPU), peak host memory under 16 GB with the default image cache, checkpoint writes
under 5 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, positive_int, run_main

GOAL_OVERHEAD_S = 5.0
GOAL_MEMORY_GB = 16.0
GOAL_CHECKPOINT_S = 5.0


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[10_000, 50_000, 287_651])
    p.add_argument("--pool", type=positive_int, default=2000, help="distinct images the rows link to")
    p.add_argument("--epochs", type=positive_int, default=2)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--image-size", type=positive_int, default=16)
    p.add_argument("--backbone", default="small_cnn", help="the network trained (default small_cnn: tiny, so what is "
                   "measured is everything but the model)")
    p.add_argument("--test-size", type=positive_int, default=5000)
    p.add_argument("--out", default="benchmark_runs/scale")
    p.add_argument("--state-memory", action="store_true",
                   help="instead: the per-sample state of every method at the largest --sizes N, per --state-backbones")
    p.add_argument("--state-backbones", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--one", type=positive_int, help=argparse.SUPPRESS)  # internal: measure one N in this process
    return p


def make_pool(folder: Path, count: int, size: int = 32) -> list[Path]:
    """``count`` small distinct JPEGs (noise with a class-coloured bar), written once."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"pool_{i:05d}.jpg"
        if not path.is_file():
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image[(i % 7) * 4:(i % 7) * 4 + 4] = (200, 40 + 25 * (i % 7), 100)
            cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def make_dataset(root: Path, n: int, test_n: int, pool: list[Path]) -> Path:
    """A prepared directory of ``n`` training and ``test_n`` test rows (hard links into ``pool``)."""
    import pandas as pd

    if (root / "train.csv").is_file():
        return root
    rng = np.random.default_rng(n)
    for split, count in (("train", n), ("test", test_n)):
        folder = root / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            target = folder / f"{i:06d}.jpg"
            if not target.exists():
                os.link(pool[i % len(pool)], target)
        labels = rng.integers(0, 7, count)
        labels[:7] = np.arange(7)  # every class present
        va = np.clip(rng.normal(0, 0.45, (count, 2)), -1, 1)
        landmarks = rng.uniform(0, 32, (count, 136))
        pd.DataFrame({"path": [f"{split}/{i:06d}.jpg" for i in range(count)], "expression": labels,
                      "valence": va[:, 0].round(4), "arousal": va[:, 1].round(4),
                      "landmarks": [";".join(f"{v:.1f}" for v in row) for row in landmarks]}).to_csv(
            root / f"{split}.csv", index=False)
    return root


def measure_one(args) -> dict:
    """Train on N rows in this process; stage timings, overhead, memory, checkpoint."""
    import pandas as pd

    from common.cli import quiet_tensorflow

    quiet_tensorflow()
    from engine.config import RunConfig
    from engine.fit import train
    from engine.run import Run

    out = Path(args.out)
    pool = make_pool(out / "pool", args.pool)
    start = time.perf_counter()
    data_dir = make_dataset(out / f"data_{args.one}", args.one, args.test_size, pool)
    made = time.perf_counter() - start
    run = out / f"run_{args.one}"
    cfg = RunConfig(dataset="csv", num_classes=7, data_dir=str(data_dir), method="ldlva", backbone=args.backbone,
                    image_size=args.image_size, pad=1, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                    noise="symmetric", noise_rate=0.3, set={"neighbor_source": "bank"},
                    export=False, tensorboard=False, verbose=0, test_every=0, run=str(run), force=True)
    setup = Run(cfg, log=lambda *a, **k: None)
    start = time.perf_counter()
    report = train(setup).report
    total = time.perf_counter() - start
    log = pd.read_csv(run / "log.csv")
    overhead = (log["epoch_seconds"] - log["step_seconds"]).tolist()
    # Everything fit() spends outside the train steps, per epoch: iterator set-up, the gaps between steps, and
    # the epoch-end callbacks (checkpoint, uncertainty CSV + AUC, log.csv) that epoch_seconds stops short of.
    fit_overhead = (report["timings_s"]["fit"] - float(log["step_seconds"].sum())) / len(log)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux
    return {"n": args.one, "dataset_seconds": made, "train_seconds": total, "timings": report["timings_s"],
            "epoch_seconds": log["epoch_seconds"].tolist(), "step_seconds": log["step_seconds"].tolist(),
            "overhead_seconds": overhead, "fit_overhead_per_epoch": fit_overhead, "peak_rss_gb": peak_gb, "noise_auc": report.get("noise_detection_auc"),
            "image_cache": setup.splits.train_source.mode, "steps_per_epoch": setup.steps_per_epoch}


STAGES = ("load_data", "method_data", "data_facts", "build", "image_sources", "uncertainty_logging_first_epoch",
          "uncertainty_logging_per_epoch",
          "per_sample_metrics", "evaluate", "checkpoint_write_max")


def steady(result: dict) -> float:
    """An epoch's cost outside the model once the run is going: the gaps between its steps, its checkpoint
    write and its uncertainty logging (the first epoch's one-time CSV formatting excluded)."""
    t = result["timings"]
    return max(result["overhead_seconds"]) + t.get("checkpoint_write_max", 0.0) + t.get("uncertainty_logging_per_epoch", 0.0)


def exponent(a, b, n_a, n_b):
    if not a or not b or a <= 0 or b <= 0:
        return float("nan")
    return math.log(b / a) / math.log(n_b / n_a)


def markdown(results: list[dict], args) -> str:
    lines = [f"### Scale benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python -m benchmarks.scale --sizes {' '.join(map(str, args.sizes))} --pool {args.pool} "
             f"--epochs {args.epochs} --batch-size {args.batch_size} --image-size {args.image_size} "
             f"--backbone {args.backbone}`  ",
             f"LDLVA bank mode, K = 8, 30 % symmetric noise, {args.backbone} @ {args.image_size} px (the model is not "
             "what is measured), one process per N.", "",
             "| stage (s) | " + " | ".join(f"N = {r['n']:,}" for r in results) + " | growth exponent(s) |",
             "|---|" + "---:|" * len(results) + "---:|"]
    for stage in STAGES:
        values = [r["timings"].get(stage) for r in results]
        exps = [exponent(values[i], values[i + 1], results[i]["n"], results[i + 1]["n"]) for i in range(len(results) - 1)]
        lines.append(f"| {stage} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in values) + " | "
                     + ", ".join(f"{e:.2f}" for e in exps) + " |")
    rows = [("gaps between the steps of an epoch (s, max)", [max(r["overhead_seconds"]) for r in results]),
            ("per-epoch overhead outside the steps, all in: (fit − steps) / epochs, one-time set-up included (s)",
             [r["fit_overhead_per_epoch"] for r in results]),
            ("steady per-epoch overhead: gaps + checkpoint + uncertainty logging (s)", [steady(r) for r in results]),
            ("train steps per epoch (s, mean)", [float(np.mean(r["step_seconds"])) for r in results]),
            ("peak resident memory (GB)", [r["peak_rss_gb"] for r in results]),
            ("checkpoint size (MB)", [r["timings"].get("checkpoint_bytes", 0) / 1e6 for r in results])]
    for name, values in rows:
        exps = [exponent(values[i], values[i + 1], results[i]["n"], results[i + 1]["n"]) for i in range(len(results) - 1)]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " | "
                     + ", ".join(f"{e:.2f}" for e in exps) + " |")
    largest = results[-1]
    lines += ["", f"Image cache at the largest N: {largest['image_cache']}. Goals at N = {largest['n']:,}:", ""]
    checks = [("per-epoch overhead outside the model, all in (one-time set-up spread over the epochs run)",
               largest["fit_overhead_per_epoch"], GOAL_OVERHEAD_S, "s"),
              ("steady per-epoch overhead outside the model", steady(largest), GOAL_OVERHEAD_S, "s"),
              ("peak host memory", largest["peak_rss_gb"], GOAL_MEMORY_GB, "GB"),
              ("checkpoint write", largest["timings"].get("checkpoint_write_max", float("nan")), GOAL_CHECKPOINT_S, "s")]
    for name, value, goal, unit in checks:
        lines.append(f"- {name}: {value:.2f} {unit} (goal < {goal:g} {unit}) — {'met' if value < goal else 'NOT met'}")
    return "\n".join(lines) + "\n"


# Method variants whose per-sample state differs from the method's defaults.
STATE_VARIANTS = {"ldlva": [("ldlva (forward, default)", {}), ("ldlva bank", {"neighbor_source": "bank"}),
                            ("ldlva bank, bank_probs=head", {"neighbor_source": "bank", "bank_probs": "head"})]}


def state_memory(n: int, backbones, image_size: int = 32, methods=None) -> list[dict]:
    """Bytes of every method's per-sample state (variables with N rows: λ, banks, relabelled targets, the
    neighbour table and VA it keeps) for a training table of ``n`` rows, by building the real model (the
    engine's own ``engine.build.build_model``, as a rebuild from a checkpoint does) with each backbone. What is counted
    is allocated: it lives on the accelerator beside the weights for the whole run, and is in every checkpoint.
    ``methods``: the registry's names to count (default: all)."""
    import gc

    from common.cli import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from engine.build import build_model
    from engine.config import RunConfig
    from engine.run import Run
    from engine.setup import configure_runtime
    from models.registry import method_names

    rows = []
    for backbone in backbones:
        for method in methods or method_names():
            for label, overrides in STATE_VARIANTS.get(method, [(method, {})]):
                cfg = RunConfig(dataset="synthetic", method=method, backbone=backbone, image_size=image_size,
                                batch_size=32, epochs=1, set=dict(overrides), export=False,
                                tensorboard=False, verbose=0)
                run = Run(cfg, log=lambda *a, **k: None)
                configure_runtime(run.cfg)
                model = build_model(run, n, run.model_cls.empty_method_data(run.method_cfg, n), load_weights=False)
                per_sample = [v for v in model.variables if len(v.shape) and int(v.shape[0]) == n]
                state = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in per_sample)
                weights = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.variables) - state
                rows.append({"backbone": backbone, "method": label, "state_bytes": state, "other_bytes": weights,
                             "state_shapes": sorted({f"{tuple(int(d) for d in v.shape)}" for v in per_sample})})
                print(f"{backbone} {label}: {state / 1e9:.3f} GB", file=sys.stderr, flush=True)
                del run, model
                keras.backend.clear_session()
                gc.collect()
    return rows


def state_markdown(rows: list[dict], n: int) -> str:
    lines = [f"### Per-sample state at N = {n:,} ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python -m benchmarks.scale --state-memory --sizes {n}`  ",
             "Variables with one row per training sample, as allocated by the built model (float32; "
             "the neighbour table: int32); the model's other variables (weights, centres, queues, SWA averages; "
             "optimizer slots not included) beside them for comparison.", "",
             "| backbone | method | per-sample state (MB) | other model variables (MB) | per-sample shapes |",
             "|---|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['method']} | {r['state_bytes'] / 1e6:.1f} | {r['other_bytes'] / 1e6:.1f} | "
                     f"{', '.join(r['state_shapes']) or '–'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.io import atomic_write_json, atomic_write_text

    out = Path(args.out)
    if args.state_memory:
        n = max(args.sizes)
        rows = state_memory(n, args.state_backbones)
        atomic_write_json(out / f"state_memory_{n}.json", rows)
        text = state_markdown(rows, n)
        atomic_write_text(out / "state_memory.md", text)
        print(text)
        return 0
    if args.one:
        result = measure_one(args)
        atomic_write_json(out / f"result_{args.one}.json", result)
        return 0
    results = []
    for n in sorted(args.sizes):
        done = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--one", str(n), "--pool", str(args.pool),
                               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--image-size",
                               str(args.image_size), "--backbone", args.backbone, "--test-size", str(args.test_size),
                               "--out", str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        results.append(json.loads((out / f"result_{n}.json").read_text()))
        print(f"N = {n}: {results[-1]['train_seconds']:.0f} s", file=sys.stderr, flush=True)
    text = markdown(results, args)
    atomic_write_text(out / "scale.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
