"""What each backbone's frozen features know about expressions: a linear probe, every backbone side by side.

    python -m benchmarks.probe --out benchmark_runs/probe \\
        [--standin benchmark_runs/pretrain2000/backbone.weights.h5] [--train-size 2000] [--seed 0]

A multinomial logistic regression (scikit-learn, standardised features, C = 1) on the frozen pooled
features of the built-in synthetic benchmark's ``--train-size`` training faces, scored on its 1 500 test
faces (labels: the annotators' majority vote). Two fits per backbone: on the *clean* training labels
(``latent_class``, the class each face was rendered from) and on the *given* labels (one annotator's
label, what a method trains on). Backbones, in one run:

=========================  ==========  ========================================================================
row                        input       what
=========================  ==========  ========================================================================
``small_cnn`` random       48 px       the stand-in's architecture, random weights (He-uniform)
``small_cnn`` stand-in     48 px       pretrained on synthetic identities (``benchmarks.pretrain``), if given
``dlib_resnet`` random     150 px      dlib's architecture, random weights
``dlib_resnet`` pooled     150 px      dlib's face ResNet (``--weights dlib``): the 256-D average pool
``dlib_resnet`` embedding  150 px      the same network's 128-D face descriptor (its bias-free ``fc``)
=========================  ==========  ========================================================================

The benchmark's faces are stored at 96 px; the pipeline resizes them to each row's input size
(bilinear), exactly as training does. Writes ``OUT/probe.md`` (the table) and ``OUT/probe.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_int, run_main
from common.errors import ConfigError


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (probe.md, probe.json)")
    p.add_argument("--standin", help="the synthetic-identity stand-in (benchmarks.pretrain's backbone.weights.h5); "
                                     "without it that row is left out")
    p.add_argument("--train-size", type=positive_int, default=2000, help="benchmark training faces (default 2000)")
    p.add_argument("--test-size", type=positive_int, default=1500, help="benchmark test faces (default 1500)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random-init rows")
    p.add_argument("--force", action="store_true", help="replace an earlier probe.md/probe.json in --out")
    return p


def _features(fn, image_size: int, tables: dict) -> dict:
    from data.pipeline import ImageSource, PipelineConfig, collect_outputs, make_eval_dataset

    out = {}
    for split, table in tables.items():
        dataset = make_eval_dataset(ImageSource(table, image_size), PipelineConfig(image_size=image_size), 128)
        out[split] = collect_outputs(fn, dataset)
    return out


def _probe(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=3000, C=1.0).fit(scaler.transform(train_x), train_y)
    return float(np.mean(clf.predict(scaler.transform(test_x)) == test_y))


def run_probe(args, log=print) -> list[dict]:
    import keras
    import pandas as pd

    from data.registry import get_dataset_spec, provide_dataset
    from data.schema import load_table
    from models.backbones import build_backbone, build_dlib_embedder

    root = provide_dataset(get_dataset_spec("synthetic"), {"train_size": args.train_size, "test_size": args.test_size})
    tables = {split: load_table(root / f"{split}.csv", 7) for split in ("train", "test")}
    clean = pd.read_csv(root / "train.csv")["latent_class"].to_numpy()
    given, test_labels = tables["train"].labels, tables["test"].labels
    rows = []

    def add(name, size, features, dims):
        row = {"backbone": name, "input_px": size, "dims": dims,
               "clean": _probe(features["train"], clean, features["test"], test_labels),
               "given": _probe(features["train"], given, features["test"], test_labels)}
        log(f"{name:<28} {100 * row['clean']:.1f} % (clean labels)  {100 * row['given']:.1f} % (given labels)")
        rows.append(row)

    def pooled(model):
        return lambda images: {"f": model(images, training=False)}

    keras.utils.set_random_seed(args.seed)
    small = build_backbone("small_cnn", 48)
    feats = _features(pooled(small), 48, tables)
    add("small_cnn, random init", 48, {k: v["f"] for k, v in feats.items()}, 256)
    if args.standin:
        if not Path(args.standin).is_file():
            raise ConfigError(f"--standin {args.standin}: not found (run `python -m benchmarks.pretrain` first)")
        standin = build_backbone("small_cnn", 48, args.standin)
        feats = _features(pooled(standin), 48, tables)
        add("small_cnn, synthetic-identity stand-in", 48, {k: v["f"] for k, v in feats.items()}, 256)
    keras.utils.set_random_seed(args.seed)
    random_dlib = build_backbone("dlib_resnet", 150)
    feats = _features(pooled(random_dlib), 150, tables)
    add("dlib_resnet, random init", 150, {k: v["f"] for k, v in feats.items()}, 256)
    embedder = build_dlib_embedder("dlib")
    pool = keras.Model(embedder.input, [embedder.get_layer("gap").output, embedder.output])
    feats = _features(lambda images: dict(zip(("pooled", "embedding"), pool(images, training=False))), 150, tables)
    add("dlib_resnet, --weights dlib: 256-D pool", 150, {k: v["pooled"] for k, v in feats.items()}, 256)
    add("dlib_resnet, --weights dlib: 128-D descriptor", 150, {k: v["embedding"] for k, v in feats.items()}, 128)
    return rows


def format_table(rows: list[dict], train_size: int, test_size: int = 1500) -> str:
    lines = [f"Linear probe of frozen features on the synthetic benchmark ({train_size} training faces → {test_size} test "
             "faces; logistic regression on standardised features; test labels: the annotators' majority).", "",
             "| backbone | input | features | probe on clean labels | probe on given labels |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['backbone']} | {r['input_px']} px | {r['dims']} | {100 * r['clean']:.1f} % | "
              f"{100 * r['given']:.1f} % |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    def run(argv):
        args = build_parser().parse_args(argv)
        from common.cli import quiet_tensorflow
        from common.io import atomic_write_json, atomic_write_text, check_output_file, stamp

        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder")
        for name in ("probe.md", "probe.json"):
            check_output_file(out / name, args.force)
        if args.standin and not Path(args.standin).is_file():
            raise ConfigError(f"--standin {args.standin}: not found (run `python -m benchmarks.pretrain` first)")
        quiet_tensorflow()
        started = time.perf_counter()
        rows = run_probe(args)
        out.mkdir(parents=True, exist_ok=True)
        table = format_table(rows, args.train_size, args.test_size)
        atomic_write_text(out / "probe.md", table)
        atomic_write_json(out / "probe.json", stamp({"train_size": args.train_size, "test_size": args.test_size, "seed": args.seed,
                                                     "standin": Path(args.standin).name if args.standin else None,
                                                     "rows": rows, "seconds": round(time.perf_counter() - started)},
                                                    "benchmarks.probe"))
        print(table)
        print(f"wrote {out / 'probe.md'} and {out / 'probe.json'} ({time.perf_counter() - started:.0f} s)")
        return 0

    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
