"""Export a run's model as a serving SavedModel: ``python export.py --run RUN --out DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import quiet_tensorflow, run_main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run", "--ckpt", dest="run", required=True, help="run directory or RUN/ckpt/step-* folder")
    p.add_argument("--out", required=True, help="SavedModel directory to write (a new folder, or an earlier export "
                   "of this toolkit with --force; a folder of your own is never replaced)")
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    args = p.parse_args(argv)
    quiet_tensorflow()
    from common.io import check_output_dir
    from engine.export import SAVED_MODEL_LEGACY, export_saved_model
    from engine.run import load_run_model

    check_output_dir(args.out, "saved_model", args.force, flag="--out", legacy=SAVED_MODEL_LEGACY)

    path = Path(args.run)
    run_dir, ckpt = (path, None) if (path / "config.json").is_file() else (path.parent.parent, path)
    trainer, _ = load_run_model(run_dir, ckpt)
    export_saved_model(trainer.model, args.out, trainer.cfg.image_size, trainer.spec.class_names, trainer.cfg.method,
                       input_norm=trainer.cfg.input_norm)
    print(f"exported {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
