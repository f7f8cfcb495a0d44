"""Step time of LDLVA's two neighbour sources against the CE baseline, in one process.

    python -m benchmarks.ldlva_modes [--dataset synthetic] [--backbone small_cnn] [--image-size 64]
        [--batch-size 64] [--steps 30] [--warmup 5] [--variant paper]

Builds CE, LDLVA ``neighbor_source=bank`` and LDLVA ``neighbor_source=forward`` on the same data,
backbone and batch size, materialises their training batches in memory, and times the compiled train
step (``model.make_train_function()``, what ``fit`` runs) round-robin over the three models, so load
from other processes hits them alike. Prints the median step time after ``--warmup`` steps, the ratios
LDLVA/CE, and the time the tf.data pipeline needs to produce one batch for each (forward mode also
loads and augments the K neighbour images of every sample). Goal: bank ≤ 1.15× CE; forward no worse
than the official release's ~3.5× (1 + K = 9 forward passes, one backward).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir")
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per model (tracing, caches)")
    p.add_argument("--variant", default="paper", help="LDLVA variant (paper | release)")
    p.add_argument("--k", type=int, default=8, help="neighbours")
    p.add_argument("--synthetic", action="append", default=[], metavar="KEY=VALUE")
    return p


def make_trainer(args, method, overrides, shared=None):
    from engine.run import RunConfig, Trainer

    cfg = RunConfig(dataset=args.dataset, data_dir=args.data_dir, method=method, backbone=args.backbone,
                    image_size=args.image_size, batch_size=args.batch_size, epochs=1, export=False,
                    tensorboard=False, verbose=0, method_overrides=overrides,
                    synthetic={k: int(v) if v.isdigit() else v for k, v in
                               (item.split("=", 1) for item in args.synthetic)})
    trainer = Trainer(cfg, log=lambda *a: None)
    if shared is None:
        trainer.load_data()
    else:  # same tables and decoded images for every model
        trainer.data_dir, trainer.train_table = shared.data_dir, shared.train_table
        trainer.test_table = shared.test_table
        trainer.train_source = shared.train_source
    trainer.make_sources()
    return trainer


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np

    count = args.warmup + args.steps
    setups = {"ce": ("ce", {}),
              "ldlva-bank": ("ldlva", {"variant": args.variant, "neighbor_source": "bank",
                                       "num_neighbors": str(args.k)}),
              "ldlva-forward": ("ldlva", {"variant": args.variant, "neighbor_source": "forward",
                                          "num_neighbors": str(args.k)})}
    shared = None
    models, batches, pipeline_s = {}, {}, {}
    for name, (method, overrides) in setups.items():
        trainer = make_trainer(args, method, overrides, shared)
        shared = shared or trainer
        method_data = trainer.method_data()
        model = trainer.build(len(trainer.train_table), method_data)
        iterator = iter(trainer.train_dataset(method_data))
        next(iterator)  # pipeline warm-up
        start = time.perf_counter()
        batches[name] = [next(iterator) for _ in range(count)]
        pipeline_s[name] = (time.perf_counter() - start) / count
        model.make_train_function()  # sets model.train_function, the compiled step fit() runs
        models[name] = (model, model.train_function)
    times = {name: [] for name in setups}
    for step in range(count):
        for name, (model, train_function) in models.items():
            start = time.perf_counter()
            logs = train_function(iter([batches[name][step]]))
            float(np.asarray(logs["loss"]))  # wait for the step to finish
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{args.backbone} @ {args.image_size}px, batch {args.batch_size}, K={args.k}, LDLVA variant "
          f"{args.variant}; median of {args.steps} steps after {args.warmup} warm-up, round-robin\n")
    print("| model | train step (ms) | × CE | pipeline per batch (ms) |")
    print("|---|---|---|---|")
    for name in setups:
        print(f"| {name} | {1000 * median[name]:.1f} | {median[name] / median['ce']:.2f} | "
              f"{1000 * pipeline_s[name]:.1f} |")
    print(f"\nratio bank/CE = {median['ldlva-bank'] / median['ce']:.3f}   "
          f"ratio forward/CE = {median['ldlva-forward'] / median['ce']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
