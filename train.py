"""Train a FER method: ``python train.py --dataset synthetic --method ldlva``.

Writes a run directory (config.json, checkpoints, log.csv, TensorBoard logs, metrics.json and a
serving SavedModel). ``--resume`` continues a killed run exactly where its last checkpoint left off.
Options left unset take the dataset's defaults (table below), then the ``--preset``'s.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.cli import ArgumentParser, add_dataclass_options, quiet_tensorflow, run_main


def defaults_epilog() -> str:
    """The per-dataset defaults, methods and backbones, for ``--help``."""
    from data.registry import DATASETS
    from models.registry import METHODS, backbone_names

    lines = ["per-dataset defaults (unset options):",
             f"  {'dataset':<11} {'backbone':<10} {'image-size':>10} {'pad':>4} {'epochs':>6} {'batch-size':>10} {'lr':>7}"]
    for spec in DATASETS.values():
        lines.append(f"  {spec.name:<11} {spec.backbone:<10} {spec.image_size:>10} {spec.pad:>4} {spec.epochs:>6} "
                     f"{spec.batch_size:>10} {spec.learning_rate:>7g}")
    lines += ["", "methods:"] + [f"  {e.name:<7} {e.summary}" for e in METHODS.values()]
    lines += ["", "backbones: " + ", ".join(backbone_names())]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from engine.config import RunConfig

    p = ArgumentParser(description=__doc__, epilog=defaults_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_options(p, RunConfig)
    p.add_argument("--config", metavar="RUN/config.json", help=(
        "replay a run from its config.json (its resolved settings and method config); options given beside it "
        "override it (a typed option > a typed --preset > the file > the dataset's defaults); the new run's "
        "config.json records the file and its SHA-256 as replayed_from"))
    return p


def config_from_args(args, replay=None):
    """The RunConfig the command line asks for (``replay``: a config.json read for ``--config``, under the
    options typed beside it)."""
    from engine.config import run_config_from_args

    return run_config_from_args(args, replay)


def check_before_tensorflow(cfg) -> None:
    """The errors a command line can be refused for without TensorFlow, found in a fraction of a second instead
    of after its ~8-s import: an unknown ``--method``, a run directory another process is training."""
    from engine.rundir import RunLock
    from models.registry import check_method_name

    check_method_name(cfg.method)
    if cfg.run and cfg.strategy != "multiworker":  # a multi-worker run's workers each lock a file of their own
        RunLock(cfg.run).refuse_if_held()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    replay = None
    if getattr(args, "config", None):
        from engine.config import read_config_file

        replay = read_config_file(args.config)
    cfg = config_from_args(args, replay)
    check_before_tensorflow(cfg)
    quiet_tensorflow()
    from engine.fit import train
    from engine.run import Run

    run = Run(cfg)
    if replay is not None:
        from engine.config import replayed_method_config

        method_cfg = replayed_method_config(replay, run.model_cls, run.cfg, args.preset)
        if method_cfg is not None:
            run.method_cfg = method_cfg
        run.record_extras["replayed_from"] = replay.provenance()
    try:
        report = train(run).report
    except Exception as exc:
        # A file TensorFlow cannot decode mid-run (--image-cache files): name it instead of a traceback.
        import tensorflow as tf

        if not isinstance(exc, tf.errors.InvalidArgumentError):
            raise
        from engine.splits import find_undecodable_image

        error = find_undecodable_image([run.train_table, run.test_table], exc)  # exc names the file
        if error is None:
            raise
        raise error from None
    headline = {k: report[k] for k in ("accuracy", "mean_class_accuracy", "macro_f1") if k in report}
    print(f"test: {json.dumps(headline)}  ({run.run_dir / 'metrics.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
