"""Pseudo valence/arousal: train our own VA regressor on a dataset with VA, write VA for one without.

LDLVA needs a (valence, arousal) point for every training image to find its neighbours. AffectNet and
the synthetic benchmark have them; RAF-DB, SFEW and FERPlus do not, and the LDLVA paper fills them in
with EmoNet (Toisoul et al., "Estimation of continuous valence and arousal levels from faces in
naturalistic conditions", Nature Machine Intelligence 2021, doi:10.1038/s42256-020-00280-0; code and
weights: ``face-analysis/emonet``), whose weights are CC BY-NC-ND. This command replaces EmoNet with a
regressor trained here: a backbone from ``models.backbones`` and a 2-unit tanh head (outputs in
[-1, 1] like the annotations).

Loss (per batch), with population moments over the batch and both outputs in float32::

    L = MSE(va_pred, va_true) + w · [(1 − CCC_v) + (1 − CCC_a)],   w = --ccc-weight (default 1)

MSE pulls every prediction to its target; the CCC terms reward matching the spread and the correlation of
the whole batch, which MSE alone under-weights (a regressor trained on MSE shrinks towards the mean, and
the neighbour search only cares about where samples lie relative to each other). CCC is the metric VA
regressors are judged by (EmoNet reports it), so it is the quantity we also optimise, as many
AffWild/AffectNet regressors do.

Training: the toolkit's tf.data pipeline (flip + pad/crop augmentation, deterministic in --seed),
Adam with cosine decay to 0 over the run. Prediction follows EmoNet's test-time protocol: the whole
image resized to the training size, VA averaged over the image and its horizontal flip, then clipped
to [-1, 1].

Cross-fitting (``--folds K``, K ≥ 2): the training table is split into K folds (stratified by expression);
member f is trained on every fold but f. ``predict`` gives an image of fold f the prediction of member f,
which never saw it, so pseudo-VA written for the regressor's own training images is out-of-fold (honest)
rather than memorised; any other image gets the mean of the K members. Images are recognised by a
content hash (``train_images.csv``), not by path, so a copy or a moved dataset still matches and a
different dataset with the same file names does not. ``report.json`` then also holds the out-of-fold
metrics on the training table.

Model directory (written atomically: complete or absent)::

    MODEL_DIR/config.json        backbone, image size, members, training settings
    MODEL_DIR/member-F.weights.h5
    MODEL_DIR/train_images.csv   path, image_sha1, fold of every training row
    MODEL_DIR/report.json        holdout (and out-of-fold) valence/arousal RMSE and CCC, training history

Usage::

    python -m preprocess.pseudo_va train --source DIR [--table train.csv] [--holdout test.csv|none] --out MODEL_DIR
        [--backbone small_cnn] [--image-size 64] [--pad 4] [--epochs 12] [--batch-size 64] [--lr 1e-3]
        [--weights none|imagenet|FILE] [--ccc-weight 1] [--folds 1] [--seed 0] [--force]
    python -m preprocess.pseudo_va predict --model MODEL_DIR --table DIR/train.csv [--image-root ROOT]
        (--out NEW.csv | --force)

For real data, train on AffectNet with the LDLVA backbone, e.g. ``--backbone resnet50_keras --image-size 224
--pad 16 --weights imagenet --epochs 10 --batch-size 32``, then predict RAF-DB/SFEW/FERPlus train tables
and rebuild their neighbour tables with ``python -m preprocess.knn``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError
from common.cli import (ArgumentParser, nonnegative_float, nonnegative_int, positive_float, positive_int,
                        quiet_tensorflow, run_command)
from data.prepared import resolve_image_root
from preprocess.common import add_force_argument, check_can_write

FORMAT = "fer-ldl pseudo-va regressor"
FORMAT_VERSION = 1
VA_MODEL_LEGACY = {"va_model": ("config.json", "report.json")}  # a model directory written before output markers
# Tables are validated against the largest canonical class set: the regressor ignores the labels,
# and every 7-class table is also a valid 8-class one.
MAX_CLASSES = 8
VA_COLUMNS = ("valence", "arousal")


@dataclass(frozen=True)
class RegressorConfig:
    """How the VA regressor is built and trained (recorded in MODEL_DIR/config.json)."""

    backbone: str = "small_cnn"  # any models.backbones name; resnet50 at 224 px for AffectNet
    image_size: int = 64  # network input side; prediction resizes the whole image to it
    pad: int = 4  # zero padding before the random crop (augmentation), pixels
    weights: str = "none"  # backbone initialisation: none | imagenet | path to a Keras weights file
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3  # Adam, cosine decay to 0 over the run
    ccc_weight: float = 1.0  # w in L = MSE + w·[(1 − CCC_v) + (1 − CCC_a)]
    folds: int = 1  # 1: one model on every row; K ≥ 2: K cross-fitted members (see module docstring)
    seed: int = 0  # weights init, augmentation, fold assignment

    def validate(self) -> None:
        from models.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown --backbone '{self.backbone}'; known: {', '.join(BACKBONES)}")
        for name in ("epochs", "batch_size", "image_size", "folds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.pad < 0:
            raise ConfigError(f"--pad must be >= 0, got {self.pad}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if not (self.ccc_weight >= 0 and math.isfinite(self.ccc_weight)):
            raise ConfigError(f"--ccc-weight must be >= 0, got {self.ccc_weight}")


# ------------------------------------------------------------------------------------------- loss ----


def batch_ccc(pred, target, eps: float = 1e-6):
    """CCC of two (B,) tensors as a float32 training quantity (:func:`losses.common.concordance_correlation`)."""
    import tensorflow as tf

    from losses.common import concordance_correlation

    return concordance_correlation(tf.cast(pred, tf.float32), target, eps)


def va_regression_loss(true_va, pred_va, ccc_weight: float = 1.0):
    """``L = MSE + w·[(1 − CCC_v) + (1 − CCC_a)]`` over one batch; (B, 2), (B, 2) → scalar."""
    import tensorflow as tf

    t, p = tf.cast(true_va, tf.float32), tf.cast(pred_va, tf.float32)
    mse = tf.reduce_mean(tf.square(p - t))
    return mse + ccc_weight * ((1.0 - batch_ccc(p[:, 0], t[:, 0])) + (1.0 - batch_ccc(p[:, 1], t[:, 1])))


def _metric_fns():
    """Per-batch training logs (Keras averages them over the epoch's batches)."""
    import keras
    import tensorflow as tf

    def mse(true_va, pred_va):
        return tf.reduce_mean(tf.square(tf.cast(pred_va, tf.float32) - tf.cast(true_va, tf.float32)))

    def ccc_v(true_va, pred_va):
        return batch_ccc(pred_va[:, 0], true_va[:, 0])

    def ccc_a(true_va, pred_va):
        return batch_ccc(pred_va[:, 1], true_va[:, 1])

    # Metric objects, not bare functions: Keras would wrap a function in a metric whose variables are created
    # inside the first traced step, and a variable created there makes TensorFlow trace the step twice.
    return [keras.metrics.MeanMetricWrapper(fn, name=fn.__name__) for fn in (mse, ccc_v, ccc_a)]


# ------------------------------------------------------------------------------------------ model ----


def build_regressor(cfg: RegressorConfig, init_weights: bool):
    """image (B, S, S, 3) in [-1, 1] → VA (B, 2) in (-1, 1): backbone → Dense(2, tanh).

    The architecture depends only on ``cfg`` (never on a download or a weights file), so ``predict``
    rebuilds it offline and loads the saved weights: the backbone's input normalisation follows
    ``cfg.weights`` (``models.backbones.resolve_input_norm``) whether or not the pretrained weights are
    loaded (``init_weights=True`` only, at training time).
    """
    import keras
    from keras import layers

    from models.backbones import build_backbone, resolve_input_norm

    norm = resolve_input_norm(cfg.backbone, cfg.weights, missing_ok=True)
    backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights if init_weights else None, input_norm=norm)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    features = backbone(inputs)
    va = layers.Dense(2, activation="tanh", dtype="float32", name="va_head")(features)
    return keras.Model(inputs, va, name=f"va_regressor_{cfg.backbone}")


def fit_regressor(table, cfg: RegressorConfig, verbose: int = 2):
    """Train one regressor on every row of ``table`` (an AnnotationTable with VA); returns (model, history)."""
    import keras
    import tensorflow as tf

    from data.pipeline import ImageSource, PipelineConfig, make_train_dataset, steps_per_epoch

    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    model = build_regressor(cfg, init_weights=True)
    source = ImageSource(table, cfg.image_size)
    pipeline = PipelineConfig(image_size=cfg.image_size, pad=cfg.pad, seed=cfg.seed)
    stream = make_train_dataset(source, pipeline, cfg.batch_size, cfg.epochs, extras={"va": table.va})
    stream = stream.map(lambda batch: (batch["image"], batch["va"]))
    spe = steps_per_epoch(len(table), cfg.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.lr, decay_steps=cfg.epochs * spe)
    ccc_weight = float(cfg.ccc_weight)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=lambda t, p: va_regression_loss(t, p, ccc_weight), metrics=_metric_fns())
    # The optimizer's slots made now, not inside the first traced step (see _metric_fns).
    model.optimizer.build(model.trainable_variables)
    history = model.fit(stream, epochs=cfg.epochs, steps_per_epoch=spe, verbose=verbose, shuffle=False)
    epochs = [{k: float(v[e]) for k, v in history.history.items()} for e in range(len(history.history["loss"]))]
    if not all(math.isfinite(row["loss"]) for row in epochs):
        from common.errors import TrainingError

        raise TrainingError(f"the VA regressor's loss became non-finite ({epochs[-1]}); lower --lr")
    return model, epochs


def _flip_averaged(model, image_size: int):
    """``images → ½·(model(images) + model(mirrored images))`` as a tf.function, one trace per model."""
    import tensorflow as tf

    step = getattr(model, "_flip_averaged_va", None)
    if step is None:
        @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
        def step(images):
            flipped = tf.reverse(images, axis=[2])  # (B, H, W, C): mirror the width axis
            return 0.5 * (tf.cast(model(images, training=False), tf.float32)
                          + tf.cast(model(flipped, training=False), tf.float32))
        object.__setattr__(model, "_flip_averaged_va", step)  # cached, outside Keras' attribute tracking
    return step


def predict_va(models, table, image_size: int, batch_size: int = 64):
    """(N, 2) VA of every row: each model averaged over the image and its horizontal flip, then over models.

    The whole image is resized to ``image_size`` (no crop), as at evaluation time in training; the result
    is clipped to [-1, 1] as EmoNet's protocol does.
    """
    from data.pipeline import ImageSource, PipelineConfig, make_eval_dataset

    source = ImageSource(table, image_size)
    dataset = make_eval_dataset(source, PipelineConfig(image_size=image_size, pad=0), batch_size)
    steps = [_flip_averaged(model, image_size) for model in models]
    out = []
    for batch in dataset:
        out.append(np.mean([step(batch["image"]).numpy() for step in steps], axis=0))
    return np.clip(np.concatenate(out).astype(np.float64), -1.0, 1.0)


# ------------------------------------------------------------------------------------------ tables ----


def load_image_table(csv_path, image_root, require_va: bool, what: str):
    """A schema table reduced to path, expression[, valence, arousal], images checked.

    Other columns (landmarks, votes...) are not needed here and are not parsed. ``require_va=False``
    drops any VA columns (they are about to be replaced, so bad values there are no error).
    """
    from data.images import raise_for_bad_images, scan_images
    from data.schema import check_image_root, read_csv, validate_frame

    csv_path = Path(csv_path)
    frame = read_csv(csv_path)
    if require_va and not all(c in frame.columns for c in VA_COLUMNS):
        raise DataError(f"{csv_path}: the {what} has no 'valence' and 'arousal' columns (found: "
                        f"{', '.join(map(str, frame.columns))}); the VA regressor must be trained on a dataset "
                        "annotated with valence/arousal (AffectNet, or the synthetic benchmark)")
    keep = [c for c in ("path", "expression", *(VA_COLUMNS if require_va else ())) if c in frame.columns]
    table = validate_frame(frame[keep], csv_path, MAX_CLASSES, image_root, require_va=require_va)
    check_image_root(table)
    bad = scan_images(table.image_root, table.paths)
    if bad:
        raise_for_bad_images(bad, csv_path, len(table))
    return table, frame


def subset(table, rows):
    """The rows ``rows`` of an AnnotationTable (same image root), as a new table."""
    from data.schema import validate_frame

    frame = table.frame.iloc[np.asarray(rows)].reset_index(drop=True)
    return validate_frame(frame, table.csv_path, table.num_classes, table.image_root,
                          require_va=table.va is not None)


def assign_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold of every row: each class's rows shuffled (seeded) and dealt round-robin, so folds are
    balanced in size and class mix."""
    rng = np.random.default_rng([seed, 7331])
    out = np.empty(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        out[rows] = (offset + np.arange(len(rows))) % folds
        offset += len(rows)  # continue the deal where the last class stopped
    return out


def image_hashes(table, workers: int = 8) -> list[str]:
    """SHA-1 of every row's image file (content identity for cross-fitting)."""
    def one(path):
        with open(path, "rb") as handle:
            return hashlib.sha1(handle.read()).hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, table.absolute_paths(), chunksize=64))


# ------------------------------------------------------------------------------------------- train ----


def _resolve_in(directory: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else directory / path


def _rounded(metrics: dict) -> dict:
    """Floats to 6 decimals; an undefined metric (NaN, e.g. CCC of a constant split) to None (JSON null)."""
    return {k: ((round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v) for k, v in metrics.items()}


def _format_metrics(name: str, m: dict) -> str:
    return (f"{name}: valence RMSE {m['valence_rmse']:.4f} CCC {m['valence_ccc']:.4f} | "
            f"arousal RMSE {m['arousal_rmse']:.4f} CCC {m['arousal_ccc']:.4f}  ({m['rows']} rows)")


def train_command(args) -> str:
    import keras

    from common.io import atomic_directory, atomic_write_json, atomic_write_text, check_output_dir
    from engine.metrics import va_metrics

    cfg = RegressorConfig(backbone=args.backbone, image_size=args.image_size, pad=args.pad, weights=args.weights,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, ccc_weight=args.ccc_weight,
                          folds=args.folds, seed=args.seed)
    cfg.validate()
    out = Path(args.out)
    # Before any training: a user's folder is refused even with --force, an earlier model needs --force.
    check_output_dir(out, "va_model", args.force, flag="--out", legacy=VA_MODEL_LEGACY)
    source = Path(args.source)
    if not source.is_dir():
        raise DataError(f"--source {source} is not a folder (a prepared dataset directory with VA)")
    image_root = resolve_image_root(source, args.image_root)
    table, _ = load_image_table(_resolve_in(source, args.table), image_root, True, "training table")
    holdout = None
    if args.holdout.lower() != "none":
        holdout_path = _resolve_in(source, args.holdout)
        if not holdout_path.is_file():
            raise DataError(f"{holdout_path}: holdout table not found; pass --holdout FILE, or --holdout none "
                            "to train without a held-out evaluation")
        holdout, _ = load_image_table(holdout_path, image_root, True, "holdout table")
    if cfg.folds > 1 and len(table) < 2 * cfg.folds:
        raise ConfigError(f"--folds {cfg.folds} needs at least {2 * cfg.folds} training rows, {table.csv_path} has {len(table)}")

    start = time.perf_counter()
    log = print if args.verbose else (lambda *a, **k: None)
    folds = assign_folds(table.labels, cfg.folds, cfg.seed) if cfg.folds > 1 else np.zeros(len(table), np.int64)
    members, histories = [], []
    oof = np.full((len(table), 2), np.nan)
    for f in range(cfg.folds):
        train_rows = np.flatnonzero(folds != f) if cfg.folds > 1 else np.arange(len(table))
        if cfg.folds > 1:
            log(f"pseudo_va: member {f + 1}/{cfg.folds}: training on {len(train_rows)} rows (every fold but {f})",
                file=sys.stderr)
        model, history = fit_regressor(subset(table, train_rows) if cfg.folds > 1 else table, cfg, args.verbose)
        members.append(model)
        histories.append(history)
        if cfg.folds > 1:
            held = np.flatnonzero(folds == f)
            oof[held] = predict_va([model], subset(table, held), cfg.image_size, args.batch_size)

    report = {"config": dataclasses.asdict(cfg), "train_table": str(table.csv_path), "train_rows": len(table),
              "loss": "MSE + ccc_weight * ((1 - CCC_v) + (1 - CCC_a)) per batch",
              "prediction": "whole image resized, mean over image and horizontal flip, clipped to [-1, 1]",
              "history": histories}
    lines = [f"pseudo_va: trained {cfg.folds} {cfg.backbone} VA regressor(s) at {cfg.image_size} px on "
             f"{len(table)} rows of {table.csv_path}"]
    if holdout is not None:
        per_member = [predict_va([m], holdout, cfg.image_size, args.batch_size) for m in members]
        metrics = {**va_metrics(np.mean(per_member, axis=0), holdout.va), "rows": len(holdout),
                   "table": str(holdout.csv_path)}
        report["holdout"] = _rounded(metrics)
        lines.append(_format_metrics("holdout" + (f" (mean of {cfg.folds} members)" if cfg.folds > 1 else ""),
                                     metrics))
        if cfg.folds > 1:
            report["holdout_per_member"] = [_rounded(va_metrics(p, holdout.va)) for p in per_member]
    if cfg.folds > 1:
        metrics = {**va_metrics(oof, table.va), "rows": len(table), "table": str(table.csv_path)}
        report["out_of_fold"] = _rounded(metrics)
        lines.append(_format_metrics(f"out-of-fold on the training table ({cfg.folds}-fold cross-fit)", metrics))
    report["seconds"] = round(time.perf_counter() - start, 1)

    import pandas as pd

    images = pd.DataFrame({"path": table.paths, "image_sha1": image_hashes(table), "fold": folds})
    record = {"format": FORMAT, "version": FORMAT_VERSION, **dataclasses.asdict(cfg),
              "members": [f"member-{f}.weights.h5" for f in range(cfg.folds)],
              "source": str(source), "train_table": str(table.csv_path), "image_root": str(table.image_root)}
    with atomic_directory(out, "va_model", legacy=VA_MODEL_LEGACY) as tmp:
        for name, model in zip(record["members"], members):
            model.save_weights(str(tmp / name))
        atomic_write_text(tmp / "train_images.csv", images.to_csv(index=False))
        atomic_write_json(tmp / "report.json", report)
        atomic_write_json(tmp / "config.json", record)
    keras.backend.clear_session()
    lines.append(f"model and report written to {out} ({report['seconds']:.0f} s)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- predict ----


def load_regressors(model_dir) -> tuple[RegressorConfig, list, Path]:
    """Rebuild the members of a trained model directory; returns (config, models, directory)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise DataError(f"{model_dir}: not a pseudo-VA model directory (no config.json); train one with "
                        "`python -m preprocess.pseudo_va train`")
    try:
        record = json.loads(config_path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # ValueError: also 5000-digit numbers
        raise DataError(f"{config_path}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(record, dict):
        raise DataError(f"{config_path}: must hold a JSON object, got {type(record).__name__}")
    if record.get("format") != FORMAT:
        raise DataError(f"{config_path}: not a pseudo-VA regressor (format {record.get('format')!r})")
    from common.config import check_values

    try:
        cfg = RegressorConfig(**check_values(RegressorConfig, record, str(config_path)))
        cfg.validate()
    except ConfigError as exc:
        raise DataError(f"{config_path}: {str(exc).removeprefix(f'{config_path}: ')}; retrain the model "
                        "directory") from None
    members = record.get("members")
    if (not isinstance(members, list) or not members
            or not all(isinstance(m, str) and m and Path(m).name == m for m in members)):
        raise DataError(f"{config_path}: 'members' must list the weights files of the model directory, "
                        f"got {members!r}")
    models = []
    for name in members:
        path = model_dir / name
        if not path.is_file():
            raise DataError(f"{path}: weights file missing; retrain the model directory")
        model = build_regressor(cfg, init_weights=False)
        try:
            model.load_weights(str(path))
        except Exception as exc:  # truncated or foreign file
            raise DataError(f"{path}: cannot load the regressor weights ({type(exc).__name__}: {str(exc)[:160]})") from None
        models.append(model)
    return cfg, models, model_dir


def _member_of_rows(model_dir: Path, hashes: list[str], num_members: int) -> np.ndarray:
    """(N,) the member that never saw each row's image (out-of-fold), -1 for an image no member trained
    on, -2 for an image every member trained on (in-sample)."""
    import pandas as pd

    seen = pd.read_csv(model_dir / "train_images.csv", dtype={"image_sha1": str})
    folds_of: dict[str, set] = {}
    for digest, fold in zip(seen["image_sha1"], seen["fold"]):
        folds_of.setdefault(digest, set()).add(int(fold))
    out = np.full(len(hashes), -1, np.int64)
    for i, digest in enumerate(hashes):
        folds = folds_of.get(digest)
        if folds is None:
            continue
        # Member f trained on every fold but f: it alone has not seen an image that lies only in fold f.
        out[i] = next(iter(folds)) if num_members > 1 and len(folds) == 1 else -2
    return out


def predict_command(args) -> str:
    import keras

    from data.schema import write_table

    table_path = Path(args.table)
    target = Path(args.out) if args.out else table_path
    check_can_write([target], args.force)
    from preprocess.knn import rebuild_stale_neighbors, refuse_stale_neighbors

    stale = refuse_stale_neighbors(target, args.force, "writing pseudo-VA")
    cfg, models, model_dir = load_regressors(args.model)
    image_root = resolve_image_root(table_path.parent, args.image_root)
    table, frame = load_image_table(table_path, image_root, False, "table")
    member = _member_of_rows(model_dir, image_hashes(table), len(models))
    va = np.zeros((len(table), 2))
    unseen = np.flatnonzero(member < 0)
    if len(unseen):  # new images (and in-sample ones): mean of every member
        va[unseen] = predict_va(models, subset(table, unseen), cfg.image_size, args.batch_size)
    for f, model in enumerate(models):
        rows = np.flatnonzero(member == f)
        if len(rows):
            va[rows] = predict_va([model], subset(table, rows), cfg.image_size, args.batch_size)
    keras.backend.clear_session()

    out = frame.copy()
    had_va = all(c in out.columns for c in VA_COLUMNS)
    for j, column in enumerate(VA_COLUMNS):
        values = np.round(va[:, j], 5)
        if column in out.columns:
            out[column] = values
        else:
            out.insert(min(out.columns.get_loc("expression") + 1 + j, len(out.columns)), column, values)
    stale_knn = "knn" in out.columns  # the release layout's neighbour column, computed from the old VA
    if stale_knn:
        out = out.drop(columns=["knn"])
    write_table(out, target, force=args.force)

    lines = [f"pseudo_va: wrote valence/arousal for {len(out)} rows to {target}"
             + (" (replacing the existing VA columns)" if had_va else ""),
             f"predicted VA: valence mean {va[:, 0].mean():+.3f} std {va[:, 0].std():.3f}, "
             f"arousal mean {va[:, 1].mean():+.3f} std {va[:, 1].std():.3f}"]
    if stale_knn:
        lines.append("removed the 'knn' column (neighbours of the old VA)")
    out_of_fold, in_sample = int((member >= 0).sum()), int((member == -2).sum())
    if out_of_fold:
        lines.append(f"{out_of_fold} row(s) are images the regressor trained on: each got the prediction of the "
                     f"cross-fitted member that never saw it (out-of-fold)")
    if in_sample:
        lines.append(f"warning: {in_sample} row(s) are images every regressor member trained on; their pseudo-VA "
                     "is optimistic (memorised). Train with --folds 2 to get out-of-fold predictions for them")
    if target.resolve().parent != table_path.resolve().parent:
        lines.append(f"note: the image paths in {target} are relative to {table.image_root}; point --image-root "
                     "(or dataset.json's image_root) there when you use it")
    rebuilt = rebuild_stale_neighbors(target, stale) if stale is not None else None
    if rebuilt:
        lines.append(rebuilt)
    else:
        lines.append(f"warning: LDLVA needs the VA neighbour table of this table; build it with "
                     f"`python -m preprocess.knn --table {target}`")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI ----


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.pseudo_va", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = RegressorConfig()

    train = sub.add_parser("train", help="train the VA regressor on a dataset with valence/arousal")
    train.add_argument("--source", type=Path, required=True, help="prepared dataset directory with VA (AffectNet, synthetic)")
    train.add_argument("--table", default="train.csv", help="training table in --source (default train.csv)")
    train.add_argument("--holdout", default="test.csv",
                       help="held-out table in --source for the reported RMSE/CCC (default test.csv; 'none' to skip)")
    train.add_argument("--image-root", type=Path, default=None, help="default: dataset.json's image_root, else DIR/images")
    train.add_argument("--out", type=Path, required=True, help="model directory to write")
    train.add_argument("--backbone", default=d.backbone, help=f"default {d.backbone}")
    train.add_argument("--image-size", type=positive_int, default=d.image_size, help=f"default {d.image_size}")
    train.add_argument("--pad", type=nonnegative_int, default=d.pad, help=f"pad before the random crop (default {d.pad})")
    train.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"default {d.epochs}")
    train.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    train.add_argument("--lr", type=positive_float, default=d.lr, help=f"Adam learning rate, cosine-decayed (default {d.lr})")
    train.add_argument("--weights", default=d.weights, help="none | imagenet | Keras weights file for the backbone")
    train.add_argument("--ccc-weight", type=nonnegative_float, default=d.ccc_weight, help="w in MSE + w*(2 - CCC_v - CCC_a) (default 1)")
    train.add_argument("--folds", type=positive_int, default=d.folds,
                       help="K >= 2: K cross-fitted members, out-of-fold predictions for the training images (default 1)")
    train.add_argument("--seed", type=nonnegative_int, default=d.seed)
    train.add_argument("--verbose", type=nonnegative_int, choices=(0, 1, 2), default=2, help="Keras fit verbosity (default 2)")
    add_force_argument(train)

    predict = sub.add_parser("predict", help="write pseudo valence/arousal into a table")
    predict.add_argument("--model", type=Path, required=True, help="model directory written by `train`")
    predict.add_argument("--table", type=Path, required=True, help="schema table to add valence/arousal to")
    predict.add_argument("--image-root", type=Path, default=None,
                         help="default: dataset.json's image_root beside the table, else <table dir>/images")
    predict.add_argument("--out", type=Path, default=None, help="write here instead of rewriting --table (needs --force)")
    predict.add_argument("--batch-size", type=positive_int, default=64)
    add_force_argument(predict)
    return parser


def run(args) -> str:
    if getattr(args, "batch_size", 1) < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    quiet_tensorflow()  # both subcommands run a network: TensorFlow as every command imports it
    return train_command(args) if args.command == "train" else predict_command(args)


def main(argv=None) -> int:
    return run_command(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
