"""Export a run's model as a serving SavedModel: ``python export.py --run RUN --out DIR``."""

from __future__ import annotations

import sys
from pathlib import Path

from common.cli import ArgumentParser, quiet_tensorflow, run_main


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__)
    p.add_argument("--run", "--ckpt", dest="run", required=True, help="run directory or RUN/ckpt/step-* folder")
    p.add_argument("--out", required=True, help="SavedModel directory to write (a new folder, or an earlier export "
                   "of this toolkit with --force; a folder of your own is never replaced)")
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    p.add_argument("--formats", nargs="*", default=[], choices=["tflite", "tflite-int8", "onnx"],
                   help="also write these beside the SavedModel, each checked against it on the test split "
                        "(top-1 agreement, max probability difference)")
    args = p.parse_args(argv)
    quiet_tensorflow()
    from common.io import check_output_dir
    from engine.export import SAVED_MODEL_LEGACY
    from engine.results import export_run, load_run_model, read_metrics

    path = Path(args.run)
    run_dir, ckpt = (path, None) if (path / "config.json").is_file() else (path.parent.parent, path)
    ckpt_dir = (run_dir / "ckpt").resolve()
    out = Path(args.out).resolve()
    if out == ckpt_dir or ckpt_dir in out.parents:
        from common.errors import WriteError

        raise WriteError(f"--out {args.out} is inside the run's checkpoint folder {run_dir / 'ckpt'}, which the run "
                         "manages (resuming or --force would remove it); choose another --out (nothing was changed)")
    check_output_dir(args.out, "saved_model", args.force, flag="--out", legacy=SAVED_MODEL_LEGACY)
    run, model, _ = load_run_model(run_dir, ckpt)
    images = None
    if args.formats:  # the test split, as uint8 at the network's input size, to check every format on
        from data.images import load_image_array

        run.load_splits(need_train=False)
        table = run.test_table
        images = load_image_array(table.image_root, table.paths, run.cfg.image_size, table.csv_path)
    export_run(run, model, args.out, read_metrics(run_dir), formats=args.formats, check_images=images)
    print(f"exported {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
