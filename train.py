"""Train a FER method: ``python train.py --dataset synthetic --method ldlva``.

Writes a run directory (config.json, checkpoints, log.csv, TensorBoard logs, metrics.json and a
serving SavedModel). ``--resume`` continues a killed run exactly where its last checkpoint left off.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.cli import quiet_tensorflow, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", help="synthetic | affectnet | affectnet8 | rafdb | sfew | ferplus | csv")
    g.add_argument("--data-dir", help="prepared dataset directory (train.csv, test.csv, images/)")
    g.add_argument("--image-root", help="override the image root the tables' paths are relative to")
    g.add_argument("--train-table", default="train.csv")
    g.add_argument("--test-table", default="test.csv")
    g.add_argument("--num-classes", type=int, help="for --dataset csv: 7 or 8")
    g.add_argument("--skip-bad", action="store_true", help="drop and count unreadable images instead of failing")
    g.add_argument("--image-cache", default="auto", choices=["auto", "memory", "files"])
    g.add_argument("--noise", dest="noise_kind", default="none", choices=["none", "symmetric", "asymmetric"],
                   help="synthetic label noise applied to the training table (seeded)")
    g.add_argument("--noise-rate", type=float, default=0.0)
    g.add_argument("--noise-seed", type=int, default=0)
    g.add_argument("--imbalance-factor", type=float, default=1.0)
    g.add_argument("--synthetic", action="append", metavar="KEY=VALUE", default=[],
                   help="synthetic benchmark setting (e.g. train_size=3000)")
    g = p.add_argument_group("method and model")
    g.add_argument("--method", default="ce", help="ce | ldlva | lanet | ddaf | nla")
    g.add_argument("--preset", help="a method preset (e.g. ldlva: release-r18-raf)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="method config override")
    g.add_argument("--backbone", help="resnet50 | resnet18 | resnet101 | mobilenetv2 | small_cnn")
    g.add_argument("--weights", default="none", help="imagenet | none | path to a Keras weights file")
    g.add_argument("--image-size", type=int)
    g.add_argument("--pad", type=int, help="zero padding before the random crop")
    g.add_argument("--random-erasing", type=float, default=0.0, help="probability (the LDLVA release uses 0.5)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "step", "cosine", "exponential", "linear"])
    g.add_argument("--lr-steps", type=int, nargs="*", default=[], help="epochs where --lr-schedule step decays")
    g.add_argument("--lr-decay", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--nondeterministic", action="store_true", help="allow non-deterministic ops (faster on GPU)")
    g.add_argument("--mixed-precision", default="auto", help="auto | off | mixed_float16 | mixed_bfloat16")
    g.add_argument("--jit", action="store_true", help="XLA compile the train step (slower on CPU)")
    g.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker"])
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run directory (default runs/<dataset>_<method>_seed<seed>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    g.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    g.add_argument("--val-every", type=int, default=1, help="evaluate on the test split every N epochs (0: never)")
    g.add_argument("--no-export", action="store_true")
    g.add_argument("--no-tensorboard", action="store_true")
    g.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])
    return p


def config_from_args(args):
    from common.config import parse_set_args
    from engine.run import RunConfig

    return RunConfig(
        dataset=args.dataset, method=args.method, data_dir=args.data_dir, image_root=args.image_root,
        train_table=args.train_table, test_table=args.test_table, num_classes=args.num_classes,
        backbone=args.backbone, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        lr_steps=tuple(args.lr_steps), lr_decay=args.lr_decay, image_size=args.image_size, pad=args.pad,
        random_erasing=args.random_erasing, seed=args.seed, deterministic=not args.nondeterministic,
        mixed_precision=args.mixed_precision, jit=args.jit, strategy=args.strategy, image_cache=args.image_cache,
        skip_bad=args.skip_bad, noise_kind=args.noise_kind, noise_rate=args.noise_rate, noise_seed=args.noise_seed,
        imbalance_factor=args.imbalance_factor, checkpoint_every=args.checkpoint_every, val_every=args.val_every,
        preset=args.preset, method_overrides=parse_set_args(args.set),
        synthetic={k: _number(v) for k, v in parse_set_args(args.synthetic).items()},
        export=not args.no_export, tensorboard=not args.no_tensorboard, out=args.out, resume=args.resume,
        force=args.force, verbose=args.verbose)


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    from engine.run import Trainer

    trainer = Trainer(config_from_args(args))
    try:
        report = trainer.train()
    except Exception as exc:
        # A file TensorFlow cannot decode mid-run (--image-cache files): name it instead of a traceback.
        import tensorflow as tf

        if not isinstance(exc, tf.errors.InvalidArgumentError):
            raise
        from engine.data import find_undecodable_image

        error = find_undecodable_image([trainer.train_table, trainer.test_table])
        if error is None:
            raise
        raise error from None
    headline = {k: report[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1") if k in report}
    print(f"test: {json.dumps(headline)}  ({trainer.run_dir / 'metrics.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
