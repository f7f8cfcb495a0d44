"""The splits of a run: the prepared directory (or a generated one), its validated tables with the run's
label protocol (noise, imbalance, a released label file) applied, and their pixel sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import DataError
from data.images import scan_images
from data.prepared import read_dataset_json, resolve_image_root
from data.registry import DatasetSpec, default_data_dir, provide_dataset
from data.schema import AnnotationTable, check_image_root, read_csv, validate_frame


@dataclass
class RunSplits:
    """The training and test tables of a run, their pixel sources, and what ``--skip-bad`` dropped."""

    data_dir: Path | None = None
    train_table: AnnotationTable | None = None
    test_table: AnnotationTable | None = None
    train_source: object = None  # data.pipeline.ImageSource of train_table (made on first use)
    test_source: object = None
    skipped_rows: dict = field(default_factory=dict)  # table name → messages of rows --skip-bad dropped


def resolve_data_dir(spec: DatasetSpec, data_dir, options: dict | None = None) -> Path:
    """The prepared directory of a run: ``--data-dir``, a provider's (generated) one, or the default."""
    if data_dir:
        path = Path(data_dir)
        if not path.is_dir():
            how = f"`{spec.import_command} --out {path}`" if spec.import_command else \
                "one of the importers (README, Real datasets)"
            what = "is a file, not a prepared dataset folder" if path.exists() else "does not exist"
            raise DataError(f"--data-dir {path} {what}; prepare the dataset with {how}")
        return path
    if spec.provider:
        return provide_dataset(spec, options)
    path = default_data_dir(spec.name)
    if not path.is_dir():
        raise DataError(
            f"dataset '{spec.name}' is not prepared: {path} does not exist. Prepare it with "
            f"`{spec.import_command} --out {path}` (or pass --data-dir)")
    return path


def load_split(data_dir: Path, table_name: str, num_classes: int, image_root=None, require_va=False,
               skip_bad: bool = False, log=print, allow_outside_root: bool = False) -> AnnotationTable:
    """Load, validate and image-check one split.

    ``skip_bad`` drops rows with an invalid cell or a missing/unreadable image instead of failing; the
    returned table's ``frame.attrs`` then hold ``dropped_rows`` (0-based rows of the CSV) and
    ``skipped`` (one message per dropped row, naming file and row), and the count is logged.
    """
    csv_path = Path(table_name) if Path(table_name).is_absolute() else data_dir / table_name
    frame = read_csv(csv_path)
    root = resolve_image_root(data_dir, image_root)
    allow_outside_root = allow_outside_root or bool(read_dataset_json(data_dir).get("allow_outside_root"))
    skipped: list[tuple[int, str]] = []  # (0-based CSV row, message)
    table = validate_frame(frame, csv_path, num_classes, root, require_va=require_va,
                           bad_rows=skipped if skip_bad else None, allow_outside_root=allow_outside_root)
    origin = np.asarray(table.frame.attrs.get("kept_rows", range(len(table))), int)  # table row → CSV row
    check_image_root(table)
    bad = scan_images(table.image_root, table.paths)
    if bad and not skip_bad:
        from data.images import raise_for_bad_images

        raise_for_bad_images(bad, csv_path, len(table))
    skipped += [(int(origin[b.row]), f"{csv_path}, row {origin[b.row] + 1}: image {b.path}: {b.reason}") for b in bad]
    if skipped:
        skipped.sort()
        dropped = {row for row, _ in skipped}
        keep = [row for row in range(len(frame)) if row not in dropped]
        if not keep:
            raise DataError(f"{csv_path}: no usable rows left after --skip-bad dropped all {len(frame)} "
                            f"(first: {skipped[0][1]})")
        table = validate_frame(frame.iloc[keep].reset_index(drop=True), csv_path, num_classes, root,
                               require_va=require_va, allow_outside_root=allow_outside_root)
        table.frame.attrs["dropped_rows"] = sorted(dropped)
        table.frame.attrs["skipped"] = [message for _, message in skipped]
        log(f"--skip-bad: skipped {len(skipped)} bad row(s) of {csv_path} ({len(keep)} kept); first: "
            + " | ".join(message for _, message in skipped[:3]))
    if len(table) == 0:
        raise DataError(f"{csv_path}: no usable rows left")
    return table


def find_undecodable_image(tables, error=None) -> DataError | None:
    """The first listed image the pipeline's decoder rejects, as a DataError naming file and row (or None).

    ``--image-cache files`` decodes lazily inside tf.data, and a file can break after the start-up scan
    (or pass the cheap header check around garbage); when training then fails with TensorFlow's
    ``InvalidArgumentError`` (the pipeline's ``data.images.ImageDecodeError``, a ``ValueError`` raised in
    ``tf.numpy_function``, arrives as one), the CLIs call this to name the culprit. Given that
    ``error``, the message the pipeline already wrote (``<csv>, row N: image <file>: <reason>``) is used
    directly; otherwise (or when it holds none) every listed image is decoded with the pipeline's own
    function (``data.images.decode_image``: EXIF orientation, pixel limit, OpenCV), so the verdict is
    the pipeline's.
    """
    hint = "replace the file or remove its row, then rerun (with --resume for a run that has checkpoints)"
    if error is not None:
        import re

        found = re.search(r"ImageDecodeError: ([^\n]+)", str(getattr(error, "message", None) or error))
        if found:
            return DataError(f"{found.group(1).strip()}; {hint}")
    for table in tables:
        if table is None:
            continue
        chunk = 1024  # stop at the first chunk holding a bad image
        for start in range(0, len(table.paths), chunk):
            bad = scan_images(table.image_root, table.paths[start:start + chunk], full_decode=True)
            if not bad:
                continue
            first = bad[0]
            csv_row = start + first.row
            for d in sorted(table.frame.attrs.get("dropped_rows", [])):  # back to the CSV's numbering (--skip-bad)
                csv_row += d <= csv_row
            return DataError(f"{table.csv_path}, row {csv_row + 1}: image {first.path}: {first.reason}; {hint}")
    return None


def load_run_splits(cfg, spec: DatasetSpec, require_va: bool, need_train: bool = True, log=print) -> RunSplits:
    """Load and validate the run's test table and (``need_train``) its training table, with the run's label
    protocol applied; refuses a training table missing a class."""
    splits = RunSplits(data_dir=resolve_data_dir(spec, cfg.data_dir, cfg.synthetic))
    if need_train:
        table = load_split(splits.data_dir, cfg.train_table, cfg.num_classes, cfg.image_root, require_va, cfg.skip_bad,
                           log=log, allow_outside_root=cfg.allow_outside_root)
        splits.skipped_rows[cfg.train_table] = table.frame.attrs.get("skipped", [])
        table = apply_label_protocol(table, cfg)
        counts = table.class_counts()
        absent = [spec.class_names[c] for c in range(cfg.num_classes) if counts[c] == 0]
        if absent:
            raise DataError(f"{table.csv_path}: class(es) {', '.join(absent)} have no training samples; "
                            f"this {cfg.num_classes}-class dataset needs every class (use the right --dataset / --num-classes)")
        splits.train_table = table
    splits.test_table = load_split(splits.data_dir, cfg.test_table, cfg.num_classes, cfg.image_root, False,
                                   cfg.skip_bad, log=log, allow_outside_root=cfg.allow_outside_root)
    splits.skipped_rows[cfg.test_table] = splits.test_table.frame.attrs.get("skipped", [])
    return splits


def apply_label_protocol(table: AnnotationTable, cfg) -> AnnotationTable:
    """The training table under ``--noise-file``, ``--imbalance-factor`` and ``--noise`` (seeded by
    ``--noise-seed``), revalidated; the table itself when none applies."""
    from data.noise import apply_label_file, apply_label_noise, imbalance_subsample

    frame = table.frame
    changed = False
    if cfg.noise_file:
        frame = apply_label_file(frame, cfg.noise_file, cfg.num_classes, table.csv_path)
        changed = True
    if cfg.imbalance_factor != 1.0:
        frame = imbalance_subsample(frame, cfg.imbalance_factor, cfg.num_classes, cfg.noise_seed)
        changed = True
    if cfg.noise != "none" and cfg.noise_rate > 0:
        frame = apply_label_noise(frame, cfg.noise, cfg.noise_rate, cfg.num_classes, cfg.noise_seed)
        changed = True
    if not changed:
        return table
    new = validate_frame(frame, table.csv_path, cfg.num_classes, table.image_root,
                         require_va=table.va is not None, allow_outside_root=table.allow_outside_root)
    # Rows dropped by --skip-bad also make the table differ from the file (stored neighbour tables).
    new.frame.attrs["rows_changed"] = cfg.imbalance_factor != 1.0 or bool(table.frame.attrs.get("dropped_rows"))
    return new


def split_facts(splits: RunSplits) -> dict:
    """The ``data`` section of config.json: sizes, class counts and fingerprints of the tables, what
    ``--skip-bad`` dropped (a resume compares them to notice a table that changed)."""
    from data.schema import table_fingerprint

    train = splits.train_table
    facts = {"data_dir": str(splits.data_dir), "num_test_samples": len(splits.test_table)}
    if train is not None:
        facts.update({"num_train_samples": len(train), "train_class_counts": train.class_counts().tolist(),
                      "train_table_sha256": table_fingerprint(train)})
    facts["test_table_sha256"] = table_fingerprint(splits.test_table)
    skipped = splits.skipped_rows
    # Durable record of what --skip-bad dropped (count per table and the first reasons).
    facts["skipped_rows"] = {"count": sum(len(v) for v in skipped.values()),
                             "by_table": {k: len(v) for k, v in skipped.items()},
                             "first": [m for v in skipped.values() for m in v][:10]}
    return facts
