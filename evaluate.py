"""Evaluate a checkpoint or SavedModel on a dataset split.

    python evaluate.py --run runs/synthetic_ce_seed0 [--dataset synthetic] [--split test] [--json OUT]

``--run`` (alias ``--ckpt``) is a run directory (its latest checkpoint), one checkpoint folder
``RUN/ckpt/step-*``, or a serving SavedModel directory. Prints accuracy, mean class accuracy, macro F1 and the confusion
matrix with class names, and writes them as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import ArgumentParser, positive_int, quiet_tensorflow, run_main


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", "--ckpt", dest="run", required=True,
                   help="run directory, checkpoint folder RUN/ckpt/step-* or SavedModel directory")
    p.add_argument("--dataset", help="dataset name (default: the run's)")
    p.add_argument("--data-dir", help="prepared dataset directory (default: the run's)")
    p.add_argument("--image-root", help="override the folder the table's paths are relative to")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept table paths that are absolute or leave the image root")
    p.add_argument("--num-classes", type=positive_int)
    p.add_argument("--split", default="test", help="table name without .csv (test, val, train) or a CSV path")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--json", nargs="?", const="", metavar="FILE",
                   help="also write the report as JSON: to FILE, or with no FILE to RUN/eval_<split>.json")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json FILE this toolkit did not write")
    return p


def _resolve_ckpt(path: Path):
    """Return (kind, run_dir, checkpoint) with kind 'run' or 'savedmodel'."""
    from common.errors import CheckpointError

    if not path.exists():
        raise CheckpointError(f"--run {path}: does not exist")
    if (path / "saved_model.pb").is_file():
        return "savedmodel", None, path
    if (path / "config.json").is_file():
        return "run", path, None
    if (path / "model.weights.h5").is_file() and (path.parent.parent / "config.json").is_file():
        return "run", path.parent.parent, path
    raise CheckpointError(f"--run {path}: not a run directory, checkpoint folder or SavedModel")


def _recorded_data_dir(run_dir: Path, record: dict) -> Path:
    """The prepared directory a run was trained on (``data.data_dir`` of its config.json), checked."""
    from common.errors import CheckpointError

    value = record["data"].get("data_dir")
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{run_dir / 'config.json'}: data.data_dir must be the path of the prepared dataset "
                              f"directory, got {value!r}; pass --data-dir")
    return Path(value)


def _table_name(split: str) -> str:
    return split if split.endswith(".csv") else f"{split}.csv"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    kind, run_dir, ckpt = _resolve_ckpt(Path(args.run))
    json_path = None
    if args.json is not None:
        from common.io import check_output_file

        default_dir = run_dir if run_dir is not None else Path(ckpt).parent
        json_path = Path(args.json) if args.json else default_dir / f"eval_{Path(_table_name(args.split)).stem}.json"
        check_output_file(json_path, args.force, flag="--json")
    recorded_data_dir = None
    if kind == "run":  # a damaged or hand-edited config.json is refused before TensorFlow's slow import
        from engine.config import run_config_from_record
        from engine.rundir import read_run_record

        record = read_run_record(run_dir)
        run_config_from_record(record, run_dir / "config.json")
        if not args.data_dir:
            recorded_data_dir = _recorded_data_dir(run_dir, record)
    quiet_tensorflow()
    from common.errors import CheckpointError
    from engine.metrics import format_report
    from engine.splits import load_split, resolve_data_dir

    if kind == "run":
        from engine.results import evaluate_model, load_run_model

        run, model, record = load_run_model(run_dir, ckpt)
        cfg = run.cfg
        if args.dataset and args.dataset != cfg.dataset:
            from data.registry import get_dataset_spec

            spec = get_dataset_spec(args.dataset, args.num_classes)
            if spec.num_classes != cfg.num_classes:
                raise CheckpointError(f"the checkpoint in {run_dir} has {cfg.num_classes} classes but dataset "
                                      f"'{args.dataset}' has {spec.num_classes}")
            run.spec = spec
        data_dir = resolve_data_dir(run.spec, args.data_dir) if args.data_dir else recorded_data_dir
        table = load_split(data_dir, _table_name(args.split), cfg.num_classes, args.image_root or cfg.image_root,
                           allow_outside_root=cfg.allow_outside_root or args.allow_outside_root)
        run.use_test_table(table)
        import tensorflow as tf

        try:
            report = evaluate_model(model, run.eval_dataset(), table, run.spec.class_names)
        except tf.errors.InvalidArgumentError:  # a file TensorFlow cannot decode (--image-cache files)
            from engine.splits import find_undecodable_image

            error = find_undecodable_image([table])
            if error is None:
                raise
            raise error from None
    else:
        import numpy as np
        import tensorflow as tf

        from data.images import load_image_array
        from data.registry import get_dataset_spec
        from engine.export import load_export
        from engine.metrics import classification_report

        serve, meta = load_export(ckpt)
        class_names = meta["class_names"]
        spec = get_dataset_spec(args.dataset or "csv", args.num_classes or len(class_names))
        if spec.num_classes != len(class_names):
            raise CheckpointError(f"the SavedModel predicts {len(class_names)} classes but dataset "
                                  f"'{spec.name}' has {spec.num_classes}")
        data_dir = resolve_data_dir(spec, args.data_dir)
        table = load_split(data_dir, _table_name(args.split), spec.num_classes, args.image_root,
                           allow_outside_root=args.allow_outside_root)
        images = load_image_array(table.image_root, table.paths, meta["image_size"], table.csv_path)
        probs = np.concatenate([serve(images=tf.constant(images[i:i + args.batch_size]))["probabilities"].numpy()
                                for i in range(0, len(images), args.batch_size)])
        report = classification_report(table.labels, probs, len(class_names), class_names)
    print(format_report(report))
    if json_path is not None:
        from common.io import atomic_write_json, stamp

        atomic_write_json(json_path, stamp(report, "evaluate.py"))
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
