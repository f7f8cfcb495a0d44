"""An offline stand-in for MS-Celeb-1M pretraining: a backbone trained on synthetic face identities.

    python -m benchmarks.pretrain --out benchmark_runs/pretrain [--backbone small_cnn] [--image-size 48]
        [--identities 400] [--images-per-identity 24] [--epochs 30] [--probe-train-size 2000]

The four papers fine-tune a backbone pretrained on face *identity* (MS-Celeb-1M; Guo et al., ECCV 2016):
a task that is not the downstream expression labels, on faces disjoint from the FER data. No weights
can be downloaded here, so this script builds the analogue from the project's own renderer:

1. **Data**: ``data.synthetic.identities`` renders ``--identities`` people (fixed face shape, features,
   skin, hair) with ``--images-per-identity`` images each (expression, pose, lighting, occluders vary),
   from seed streams disjoint from every benchmark face (see that module's docstring).
2. **Task**: identity classification (softmax over the people) with the project's own training stream
   (``data.pipeline.make_train_dataset``: the same flip / pad-crop augmentation as fine-tuning), Adam with
   cosine decay. The expression labels are never used.
3. **Output**: ``OUT/backbone.weights.h5`` (the backbone alone: ``--weights OUT/backbone.weights.h5``
   for ``train.py`` / ``benchmark.py`` with the same ``--backbone`` and ``--image-size``) and
   ``OUT/report.json`` (identity accuracy on held-out images of the same people; linear-probe accuracy of
   the frozen features on the expression benchmark's clean labels, against a randomly initialised
   backbone of the same architecture).

The linear probe (multinomial logistic regression on standardised pooled features, the benchmark's
``--probe-train-size`` training faces → its test faces) shows whether the identity features are useful
for expressions; that a probe stays well below a trained expression classifier shows they do not encode
the labels directly.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_float, positive_int, run_main
from common.errors import ConfigError


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (backbone.weights.h5, report.json)")
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--image-size", type=positive_int, default=48, help="network input side (default 48)")
    p.add_argument("--identities", type=positive_int, default=400, help="people to tell apart (default 400)")
    p.add_argument("--images-per-identity", type=positive_int, default=24, help="images per person (default 24)")
    p.add_argument("--test-per-identity", type=positive_int, default=4, help="held out per person (default 4)")
    p.add_argument("--epochs", type=positive_int, default=30)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--probe-train-size", type=positive_int, default=2000,
                   help="benchmark training faces for the linear probe (the grid's train_size)")
    p.add_argument("--force", action="store_true", help="replace an earlier pretraining in --out")
    return p


def identity_tables(args):
    """(train table, test table) of the identity set, with ``labels`` = identity ids."""
    from data.schema import load_table
    from data.synthetic.identities import IdentityConfig, ensure_identities

    config = IdentityConfig(seed=args.seed, num_identities=args.identities,
                            images_per_identity=args.images_per_identity, test_per_identity=args.test_per_identity,
                            image_size=max(64, args.image_size))
    root = ensure_identities(config, progress=True)
    tables = []
    for split in ("train", "test"):
        table = load_table(root / f"{split}.csv", 7, image_root=root / "images")
        identity = table.frame["identity"].to_numpy(np.int32)
        tables.append(dataclasses.replace(table, labels=identity, num_classes=args.identities))
    return root, tables


def pretrain(args, train, test, log=print):
    import keras

    from data.pipeline import ImageSource, PipelineConfig, make_eval_dataset, make_train_dataset
    from models.backbones import build_backbone

    keras.utils.set_random_seed(args.seed)
    backbone = build_backbone(args.backbone, args.image_size, None)
    inputs = keras.Input((args.image_size, args.image_size, 3))
    logits = keras.layers.Dense(args.identities, name="identity_head")(backbone(inputs))
    model = keras.Model(inputs, logits)
    steps = int(np.ceil(len(train) / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, args.epochs * steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    config = PipelineConfig(image_size=args.image_size, pad=max(1, args.image_size // 16), seed=args.seed)
    stream = make_train_dataset(ImageSource(train, args.image_size), config, args.batch_size, args.epochs)
    stream = stream.map(lambda b: (b["image"], b["label"]))
    held_out = make_eval_dataset(ImageSource(test, args.image_size), config, 256).map(lambda b: (b["image"], b["label"]))
    start = time.perf_counter()
    history = model.fit(stream, epochs=args.epochs, steps_per_epoch=steps, validation_data=held_out,
                        validation_freq=max(1, args.epochs // 5), verbose=2, shuffle=False)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(held_out, verbose=0)
    log(f"identity accuracy on held-out images: {100 * accuracy:.1f}% ({args.identities} people, {seconds:.0f} s)")
    return backbone, float(accuracy), seconds, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def probe(backbone, image_size: int, train_size: int, log=print) -> float:
    """Linear-probe accuracy of the frozen backbone's pooled features on the clean expression benchmark."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from data.pipeline import ImageSource, PipelineConfig, collect_outputs, make_eval_dataset
    from data.registry import get_dataset_spec, provide_dataset
    from data.schema import load_table

    root = provide_dataset(get_dataset_spec("synthetic"), {"train_size": train_size})
    features = {}
    for split in ("train", "test"):
        table = load_table(root / f"{split}.csv", 7)
        dataset = make_eval_dataset(ImageSource(table, image_size), PipelineConfig(image_size=image_size), 256)
        out = collect_outputs(lambda images: {"f": backbone(images, training=False)}, dataset, keep=("label",))
        features[split] = (out["f"], out["label"])
    scaler = StandardScaler().fit(features["train"][0])
    clf = LogisticRegression(max_iter=3000, C=1.0).fit(scaler.transform(features["train"][0]), features["train"][1])
    accuracy = float(np.mean(clf.predict(scaler.transform(features["test"][0])) == features["test"][1]))
    log(f"linear probe on the expression benchmark ({train_size} faces): {100 * accuracy:.1f}%")
    return accuracy


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.cli import quiet_tensorflow

    quiet_tensorflow()
    import keras

    from common.io import atomic_write_json, check_output_file, stamp
    from models.backbones import build_backbone

    out = Path(args.out)
    target = out / "backbone.weights.h5"
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists; pass --force to pretrain again")
    if args.test_per_identity >= args.images_per_identity:
        raise ConfigError("--test-per-identity must be below --images-per-identity")
    check_output_file(out / "report.json", args.force)
    root, (train, test) = identity_tables(args)
    backbone, accuracy, seconds, history = pretrain(args, train, test)
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(target))
    pretrained_probe = probe(backbone, args.image_size, args.probe_train_size)
    keras.utils.set_random_seed(args.seed + 1)
    random_probe = probe(build_backbone(args.backbone, args.image_size, None), args.image_size, args.probe_train_size)
    report = {"backbone": args.backbone, "image_size": args.image_size, "identities": args.identities,
              "images_per_identity": args.images_per_identity, "test_per_identity": args.test_per_identity,
              "train_images": len(train), "test_images": len(test), "identity_data": str(root),
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seconds": round(seconds, 1),
              "identity_test_accuracy": accuracy, "probe_train_size": args.probe_train_size,
              "linear_probe_accuracy": {"pretrained": pretrained_probe, "random_init": random_probe},
              "history": history, "weights": str(target)}
    atomic_write_json(out / "report.json", stamp(report, "benchmarks.pretrain"))
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
