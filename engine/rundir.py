"""The run directory: refuse to clobber another run, check a resumed run's configuration."""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.errors import CheckpointError, ConfigError
from common.io import atomic_write_json
from engine.config import compare_configs


def prepare_run_dir(run_dir: Path, record: dict, resume: bool, force: bool) -> None:
    """Refuse to clobber another run; check a resumed run's config matches."""
    config_path = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output directory {run_dir} exists but is not a directory; choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not config_path.is_file():
            if not force:
                raise ConfigError(f"output directory {run_dir} is not empty and is not a run directory; "
                                  "choose another --out or pass --force")
        else:
            try:
                old = json.loads(config_path.read_text())
            except json.JSONDecodeError:
                raise CheckpointError(f"{config_path} is corrupt") from None
            diffs = compare_configs(old, record)
            if resume:
                if diffs:
                    raise ConfigError(f"--resume refused: the configuration differs from the run in {run_dir}: "
                                      + "; ".join(diffs[:6]) + (" …" if len(diffs) > 6 else ""))
                if not os.access(run_dir, os.W_OK):
                    raise ConfigError(f"output directory {run_dir} is not writable; cannot resume into it")
                return
            if not force:
                what = "a different run" if diffs else "a run with the same configuration"
                raise ConfigError(f"output directory {run_dir} already holds {what}; pass --resume to continue it "
                                  "or --force to start over")
            import shutil

            shutil.rmtree(run_dir)
    elif resume:
        raise CheckpointError(f"--resume: {run_dir} holds no run to resume")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {run_dir} ({exc.strerror or exc}); "
                          "choose another --out") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"output directory {run_dir} is not writable; choose another --out")
    try:
        atomic_write_json(config_path, record)
    except OSError as exc:  # read-only mount, quota, disk full
        raise ConfigError(f"cannot write {config_path} ({exc.strerror or exc}); choose another --out") from None
