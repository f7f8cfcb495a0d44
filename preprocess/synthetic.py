"""Command line of the built-in synthetic FER benchmark and of its identity set.

The generators live in :mod:`data.synthetic` (the generative model, the face renderer, dataset writing
and caching); this module only parses flags and prints a summary.

Command line::

    python -m preprocess.synthetic --out DIR [--seed S] [--train-size N] [--test-size M] [--val-size V]
        [--image-size P] [--imbalance-factor F] [--ambiguity A] [--workers W] [--force]
    python -m preprocess.synthetic identities --out DIR [--num-identities N] [--images-per-identity K]
        [--test-per-identity T] [--image-size P] [--seed S] [--workers W] [--force]

Without ``--out`` the output goes to the data home's cache folder for that config, where
``ensure_synthetic`` / ``ensure_identities`` would look for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from common.cli import ArgumentParser, finite_float, nonnegative_int, percent_quality, positive_int, probability, run_main
from common.errors import ConfigError
from data.synthetic import (IdentityConfig, SyntheticConfig, default_root, generate,
                            generate_identities, identities_root)


IDENTITIES_COMMAND = "identities"


def _parse_weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--class-weights expects comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = SyntheticConfig()
    ap = ArgumentParser(
        prog="python -m preprocess.synthetic",
        description="Generate the built-in synthetic FER benchmark (a prepared dataset directory).",
        epilog=f"`python -m preprocess.synthetic {IDENTITIES_COMMAND} --help`: the face-identity set for "
               "backbone pretraining.")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: the data home's synthetic-<config hash>)")
    ap.add_argument("--seed", type=nonnegative_int, default=d.seed)
    ap.add_argument("--train-size", type=positive_int, default=d.train_size)
    ap.add_argument("--test-size", type=positive_int, default=d.test_size)
    ap.add_argument("--val-size", type=nonnegative_int, default=d.val_size)
    ap.add_argument("--image-size", type=positive_int, default=d.image_size)
    ap.add_argument("--num-classes", type=positive_int, default=d.num_classes, choices=(7, 8))
    ap.add_argument("--imbalance-factor", type=finite_float, default=d.imbalance_factor,
                    help="largest/smallest latent-class count ratio (1 = balanced)")
    ap.add_argument("--class-weights", type=str, default=None,
                    help="explicit comma-separated class priors (overrides --imbalance-factor)")
    ap.add_argument("--ambiguity", type=finite_float, default=d.ambiguity, help="cluster spread scale in VA space")
    ap.add_argument("--va-noise", type=finite_float, default=d.va_noise)
    ap.add_argument("--num-annotators", type=positive_int, default=d.num_annotators)
    ap.add_argument("--occluder-prob", type=probability, default=d.occluder_prob)
    ap.add_argument("--jpeg-quality", type=percent_quality, default=d.jpeg_quality)
    ap.add_argument("--workers", type=nonnegative_int, default=d.workers, help="processes (0 = auto); output is identical")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap


def build_identity_parser() -> argparse.ArgumentParser:
    d = IdentityConfig()
    ap = ArgumentParser(
        prog=f"python -m preprocess.synthetic {IDENTITIES_COMMAND}",
        description="Generate synthetic face identities (fixed identity, varying expression, pose, lighting, "
                    "occluders) for identity pretraining; disjoint from the benchmark's faces.")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: the data home's synthetic-identities-<config hash>)")
    ap.add_argument("--seed", type=nonnegative_int, default=d.seed, help="0..2**32-1")
    ap.add_argument("--num-identities", type=positive_int, default=d.num_identities)
    ap.add_argument("--images-per-identity", type=positive_int, default=d.images_per_identity)
    ap.add_argument("--test-per-identity", type=positive_int, default=d.test_per_identity,
                    help="images of each identity that go to test.csv")
    ap.add_argument("--image-size", type=positive_int, default=d.image_size)
    ap.add_argument("--num-classes", type=positive_int, default=d.num_classes, choices=(7, 8),
                    help="expression classes the faces are drawn from")
    ap.add_argument("--ambiguity", type=finite_float, default=d.ambiguity, help="expression cluster spread in VA space")
    ap.add_argument("--occluder-prob", type=probability, default=d.occluder_prob)
    ap.add_argument("--jpeg-quality", type=percent_quality, default=d.jpeg_quality)
    ap.add_argument("--workers", type=nonnegative_int, default=d.workers, help="processes (0 = auto); output is identical")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap


def _benchmark_main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    config = SyntheticConfig(
        seed=args.seed, train_size=args.train_size, test_size=args.test_size, val_size=args.val_size,
        image_size=args.image_size, num_classes=args.num_classes, imbalance_factor=args.imbalance_factor,
        class_weights=_parse_weights(args.class_weights) if args.class_weights else None,
        ambiguity=args.ambiguity, va_noise=args.va_noise, num_annotators=args.num_annotators,
        occluder_prob=args.occluder_prob, jpeg_quality=args.jpeg_quality, workers=args.workers)
    config.validate()
    out = args.out if args.out is not None else default_root(config)
    start = time.monotonic()
    generate(out, config, force=args.force, progress=not args.quiet)
    elapsed = time.monotonic() - start
    meta = json.loads((Path(out) / "meta.json").read_text())
    total = sum(s["size"] for s in meta["splits"].values())
    print(f"synthetic benchmark written to {out} (config hash {meta['config_hash']})")
    for split in ("train", "val", "test"):
        if split not in meta["splits"]:
            continue
        s = meta["splits"][split]
        print(f"  {split:5s} {s['size']:6d} images  label counts {s['label_counts']}  "
              f"ambiguous (max p < 0.8) {s['ambiguous_fraction']:.1%}")
    print(f"  bayes_test_accuracy   {meta['bayes_test_accuracy']:.4f}  (ceiling on the majority-vote test labels)")
    print(f"  train_label_agreement {meta['train_label_agreement']:.4f}  (train labels equal to argmax p)")
    print(f"  {total} images in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} images/s)")
    return 0


def _identities_main(argv: Sequence[str]) -> int:
    args = build_identity_parser().parse_args(argv)
    config = IdentityConfig(
        seed=args.seed, num_identities=args.num_identities, images_per_identity=args.images_per_identity,
        test_per_identity=args.test_per_identity, image_size=args.image_size, num_classes=args.num_classes,
        ambiguity=args.ambiguity, occluder_prob=args.occluder_prob, jpeg_quality=args.jpeg_quality,
        workers=args.workers)
    config.validate()
    out = args.out if args.out is not None else identities_root(config)
    start = time.monotonic()
    generate_identities(out, config, force=args.force, progress=not args.quiet)
    elapsed = time.monotonic() - start
    meta = json.loads((Path(out) / "dataset.json").read_text())
    total = sum(meta["splits"].values())
    print(f"synthetic identities written to {out} (config hash {meta['config_hash']})")
    print(f"  {meta['num_identities']} identities x {config.images_per_identity} images: "
          f"train {meta['splits']['train']}, test {meta['splits']['test']}")
    print(f"  {total} images in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} images/s)")
    return 0


def _dispatch(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A leading word selects the identity set; everything else keeps the benchmark's original flags.
    if argv and argv[0] == IDENTITIES_COMMAND:
        return _identities_main(argv[1:])
    return _benchmark_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
