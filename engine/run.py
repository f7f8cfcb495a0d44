"""A training run from a :class:`~engine.config.RunConfig`: data, model, fit with exact resume, test, export.

Run directory layout::

    RUN/config.json        resolved run config + method config + data facts (written before training)
    RUN/ckpt/step-*/       atomic checkpoints (weights incl. per-sample state + optimizer, state.json)
    RUN/ckpt/latest        name of the newest complete checkpoint
    RUN/log.csv            one row per epoch (Keras CSVLogger, appended on resume)
    RUN/tb/                TensorBoard logs
    RUN/uncertainty/       per-sample uncertainty per epoch (methods whose per_sample_state has it)
    RUN/metrics.json       final test metrics (evaluate.py reproduces them)
    RUN/saved_model/       serving SavedModel (see engine/export.py)

The :class:`Trainer` calls every hook of the method contract (:mod:`models.base`) through the base
class, in this order: ``prepare_data`` → build → [resume] → ``before_training`` → ``fit`` (with
``callbacks``, ``after_step`` every step) → ``after_training`` → evaluation → ``final_metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import check_values
from common.errors import CheckpointError, ConfigError, DataError
from common.io import atomic_write_json
from engine.config import RunConfig, config_record, default_run_dir, resolve, run_config_from_record  # noqa: F401
from engine.rundir import RunLock, check_run_dir, prepare_run_dir
from engine.setup import make_optimizer, make_strategy, setup_precision
from models.base import MethodData, RunContext


@dataclass
class RunData:
    """The data of a run: the prepared directory, the validated splits and their pixel sources."""

    data_dir: Path | None = None
    train_table: object = None
    test_table: object = None
    train_source: object = None
    test_source: object = None
    skipped_rows: dict = field(default_factory=dict)  # table name → messages of rows --skip-bad dropped


class Trainer:
    """Builds everything for a run and trains it; also used by evaluate.py, the figures and the benchmarks."""

    def __init__(self, cfg: RunConfig, log=print, data: RunData | None = None):
        self.log = log
        self.cfg, self.spec, self.model_cls, self.method_cfg = resolve(cfg)
        self.data = data if data is not None else RunData()
        self.run_dir: Path | None = None
        self.model = None
        self.strategy = None
        self.steps_per_epoch = None
        self.policy = None
        # Wall time of each stage of train() (seconds), written to metrics.json as timings_s: what a
        # scale benchmark (benchmarks/scale.py) reads to see where the time outside the model goes.
        self.timings: dict = {}
        # Top-level config.json entries beside the run/method/data sections (e.g. replayed_from, sampler).
        self.record_extras: dict = {}
        self.tracking_tags: dict = {}  # tags of the MLflow run (--mlflow), e.g. a benchmark cell's
        self.tracker = None

    # --- data ----------------------------------------------------------------------------------------
    @property
    def train_table(self):
        return self.data.train_table

    @property
    def test_table(self):
        return self.data.test_table

    def load_data(self, need_train: bool = True) -> RunData:
        """Load and validate the splits (the training one with the run's noise/imbalance protocol applied)."""
        from engine.data import load_split, resolve_data_dir

        cfg, data = self.cfg, self.data
        data.data_dir = resolve_data_dir(self.spec, cfg.data_dir, cfg.synthetic)
        require_va = self.model_cls.needs_va(self.method_cfg)
        data.train_table, data.train_source, data.skipped_rows = None, None, {}
        if need_train:
            table = load_split(data.data_dir, cfg.train_table, cfg.num_classes, cfg.image_root, require_va,
                               cfg.skip_bad, log=self.log, allow_outside_root=cfg.allow_outside_root)
            data.skipped_rows[cfg.train_table] = table.frame.attrs.get("skipped", [])
            table = self._apply_protocols(table)
            counts = table.class_counts()
            absent = [self.spec.class_names[c] for c in range(cfg.num_classes) if counts[c] == 0]
            if absent:
                raise DataError(f"{table.csv_path}: class(es) {', '.join(absent)} have no training samples; "
                                f"this {cfg.num_classes}-class dataset needs every class (use the right --dataset / --num-classes)")
            data.train_table = table
        data.test_table = load_split(data.data_dir, cfg.test_table, cfg.num_classes, cfg.image_root, False,
                                     cfg.skip_bad, log=self.log, allow_outside_root=cfg.allow_outside_root)
        data.test_source = None
        data.skipped_rows[cfg.test_table] = data.test_table.frame.attrs.get("skipped", [])
        return data

    def use_test_table(self, table) -> None:
        """Evaluate on another table from now on (evaluate.py --split, per-source benchmark tests)."""
        self.data.test_table, self.data.test_source = table, None

    def _apply_protocols(self, table):
        from data.noise import apply_label_file, apply_label_noise, imbalance_subsample
        from data.schema import validate_frame

        cfg = self.cfg
        frame = table.frame
        changed = False
        if cfg.noise_file:
            frame = apply_label_file(frame, cfg.noise_file, cfg.num_classes, table.csv_path)
            changed = True
        if cfg.imbalance_factor != 1.0:
            frame = imbalance_subsample(frame, cfg.imbalance_factor, cfg.num_classes, cfg.noise_seed)
            changed = True
        if cfg.noise_kind != "none" and cfg.noise_rate > 0:
            frame = apply_label_noise(frame, cfg.noise_kind, cfg.noise_rate, cfg.num_classes, cfg.noise_seed)
            changed = True
        if not changed:
            return table
        new = validate_frame(frame, table.csv_path, cfg.num_classes, table.image_root,
                             require_va=table.va is not None, allow_outside_root=table.allow_outside_root)
        # Rows dropped by --skip-bad also make the table differ from the file (stored neighbour tables).
        new.frame.attrs["rows_changed"] = cfg.imbalance_factor != 1.0 or bool(table.frame.attrs.get("dropped_rows"))
        return new

    def data_facts(self) -> dict:
        from data.schema import table_fingerprint

        t = self.train_table
        facts = {"data_dir": str(self.data.data_dir), "num_test_samples": len(self.test_table)}
        if t is not None:
            facts.update({"num_train_samples": len(t), "train_class_counts": t.class_counts().tolist(),
                          "train_table_sha256": table_fingerprint(t)})
        facts["test_table_sha256"] = table_fingerprint(self.test_table)
        skipped = self.data.skipped_rows
        # Durable record of what --skip-bad dropped (count per table and the first reasons).
        facts["skipped_rows"] = {"count": sum(len(v) for v in skipped.values()),
                                 "by_table": {k: len(v) for k, v in skipped.items()},
                                 "first": [m for v in skipped.values() for m in v][:10]}
        return facts

    # --- the method's view of the run ----------------------------------------------------------------
    def context(self) -> RunContext:
        cfg = self.cfg
        return RunContext(
            run_dir=self.run_dir, train_table=self.train_table, test_table=self.test_table,
            class_names=tuple(self.spec.class_names), epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
            log=self.log, tensorboard=bool(cfg.tensorboard), eval_dataset=self.eval_dataset,
            train_images=self._train_images, save_checkpoint=self._save_checkpoint)

    def method_data(self) -> MethodData:
        from data.pipeline import epoch_sampler

        data = self.model_cls.prepare_data(self.method_cfg, self.train_table, self.context())
        # --sampler: the run-level sampler goes through the same hook as a method's own (which it keeps).
        data.epoch_indices, self.record_extras["sampler"] = epoch_sampler(
            self.cfg.sampler, self.train_table.labels, self.cfg.num_classes, self.cfg.seed, data.epoch_indices,
            self.cfg.method, log=self.log)
        return data

    def _train_images(self):
        """The augmented training images of the first epoch (no method extras), batch by batch."""
        for batch in self.train_dataset(MethodData()).take(self.steps_per_epoch):
            yield batch["image"]

    def _save_checkpoint(self, extra_state: dict | None = None):
        from engine.checkpoint import CheckpointManager

        if self.run_dir is None:
            return None
        step = int(self.model.optimizer.iterations.numpy())
        return CheckpointManager(self.run_dir).save(self.model, {
            "global_step": step, "epoch": step // self.steps_per_epoch, "step_in_epoch": step % self.steps_per_epoch,
            "time": time.time(), **(extra_state or {})})

    # --- model ---------------------------------------------------------------------------------------
    def build(self, num_train_samples: int, method_data: MethodData | None = None, load_weights: bool = True):
        """Build and compile the run's model; ``load_weights=False`` (a rebuild whose checkpoint restores
        everything) skips reading the pretrained weights file but keeps the run's input normalisation."""
        import tensorflow as tf

        from data.pipeline import steps_per_epoch
        from models.backbones import build_backbone

        cfg = self.cfg
        self.policy = setup_precision(cfg.mixed_precision)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        import keras

        keras.utils.set_random_seed(cfg.seed)
        strategy = self.make_strategy()
        replicas = strategy.num_replicas_in_sync
        if cfg.batch_size % replicas:
            # Keras splits each global batch across replicas and cannot build from an uneven first split.
            raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch; under --strategy {cfg.strategy} "
                              f"it must be a multiple of the {replicas} replicas")
        remainder = num_train_samples % cfg.batch_size
        if replicas > 1 and 0 < remainder < replicas:
            # An epoch's last batch would leave a replica with no samples (NaN BatchNorm statistics).
            raise ConfigError(f"with {replicas} replicas the last batch of each epoch ({remainder} of {num_train_samples} "
                              f"samples) leaves a replica empty; choose a --batch-size for which "
                              f"{num_train_samples} mod batch is 0 or at least {replicas}")
        self.steps_per_epoch = steps_per_epoch(num_train_samples, cfg.batch_size)
        method_data = method_data if method_data is not None else MethodData()
        with strategy.scope():
            backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights if load_weights else None,
                                      input_norm=cfg.input_norm)
            if cfg.freeze != "none":
                from models.backbones import freeze_backbone

                frozen = freeze_backbone(backbone, cfg.backbone, cfg.freeze)
                self.log(f"--freeze {cfg.freeze}: {frozen} backbone layers keep their initial weights")
            if load_weights and getattr(backbone, "fer_weights_report", None):
                from models.pretrained import format_load_summary

                self.log(f"--weights {cfg.weights}: {format_load_summary(backbone.fer_weights_report)}")
            self.model = self.model_cls(backbone, cfg.num_classes, num_train_samples, self.method_cfg,
                                        steps_per_epoch=self.steps_per_epoch, total_epochs=cfg.epochs,
                                        **method_data.model_kwargs)
            self.model.compile(optimizer=make_optimizer(cfg, self.steps_per_epoch), jit_compile=cfg.jit)
            self.model.build_all(cfg.image_size)
        return self.model

    def make_strategy(self):
        """The run's tf.distribute strategy, made once (MultiWorkerMirroredStrategy must precede every TF op)."""
        if self.strategy is None:
            self.strategy = make_strategy(self.cfg.strategy)
        return self.strategy

    # --- datasets ------------------------------------------------------------------------------------
    def pipeline_config(self):
        from data.pipeline import PipelineConfig

        cfg = self.cfg
        return PipelineConfig(image_size=cfg.image_size, pad=cfg.pad, random_erasing=cfg.random_erasing,
                              image_cache=cfg.image_cache, seed=cfg.seed, deterministic=cfg.deterministic)

    def make_sources(self) -> None:
        from data.pipeline import ImageSource

        cfg, data = self.cfg, self.data
        if data.train_table is not None and data.train_source is None:
            data.train_source = ImageSource(data.train_table, cfg.image_size, cfg.image_cache)
            if cfg.image_cache == "auto" and data.train_source.mode == "files":
                gigabytes = len(data.train_table) * cfg.image_size ** 2 * 3 / 1e9
                self.log(f"--image-cache auto: the decoded training images ({gigabytes:.1f} GB at {cfg.image_size} px) "
                         "would not fit the memory budget; streaming them from the files instead (decoded every step)")
        if data.test_source is None:
            data.test_source = ImageSource(data.test_table, cfg.image_size, cfg.image_cache)

    def train_dataset(self, method_data: MethodData, start_step: int = 0):
        from data.pipeline import make_train_dataset

        self.make_sources()
        return make_train_dataset(
            self.data.train_source, self.pipeline_config(), self.cfg.batch_size, self.cfg.epochs,
            start_step=start_step, extras=method_data.extras, landmarks=method_data.landmarks,
            neighbor_table=method_data.neighbor_table, neighbor_images=method_data.neighbor_images,
            epoch_indices=method_data.epoch_indices)

    def eval_dataset(self, split: str = "test", extras=None, landmarks: bool = False):
        """Inference-mode batches (resize + normalise, table order) of the ``test`` or ``train`` split."""
        from data.pipeline import make_eval_dataset

        self.make_sources()
        source = {"test": self.data.test_source, "train": self.data.train_source}[split]
        return make_eval_dataset(source, self.pipeline_config(), max(self.cfg.batch_size, 64),
                                 extras=extras, landmarks=landmarks)

    # --- training ------------------------------------------------------------------------------------
    def _timed(self, stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - start, 4)

    def train(self) -> dict:
        """Train (or resume) the run in its directory, holding the directory's lock throughout."""
        cfg = self.cfg
        self.run_dir = run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        check_run_dir(run_dir)  # a file, or a user's folder: refused before anything is created
        self.make_strategy()  # before any TensorFlow op: a multi-worker strategy configures the runtime
        self._timed("load_data", self.load_data)
        method_data = self._timed("method_data", self.method_data)
        record = self._timed("data_facts", lambda: {**config_record(cfg, self.method_cfg, self.data_facts()),
                                                    **self.record_extras})
        if cfg.mlflow and not _worker_index(cfg):  # one MLflow run: under --strategy multiworker, worker 0's
            from engine.callbacks import MLflowTracker

            self.tracker = MLflowTracker(cfg.mlflow, run_dir, cfg.resume, tags=self.tracking_tags, log=self.log)
        with RunLock(run_dir, worker=_worker_index(cfg)):
            prepare_run_dir(run_dir, record, cfg.resume, cfg.force, cfg.extend)
            self.log(f"run directory: {run_dir}")
            if self.tracker is None:
                return self._fit(run_dir, method_data)
            with self.tracker:  # the MLflow run ends FINISHED, or FAILED / KILLED with the exception
                report = self._fit(run_dir, method_data)
                self.tracker.log_final(report, run_dir)
            return report

    def _resume(self, manager, model) -> int:
        """Load the newest intact checkpoint (falling back past damaged ones); its global step (0: none)."""
        from engine.checkpoint import CheckpointDamaged

        try:
            path = manager.latest()
        except CheckpointDamaged as exc:
            path = manager.newest_intact()
            if path is None:
                raise CheckpointError(f"{exc}") from None
            self.log(f"warning: {exc}; resuming from {path}")
        tried = []
        while path is not None:
            try:
                manager.load_into(model, path, require_optimizer=True)
                step = int(manager.read_state(path)["global_step"])
                # state.json, the folder name and the optimizer's own step count in the weights must agree: a
                # damaged state.json would otherwise resume at a step the weights never reached (found by
                # benchmarks/fuzz.py).
                iterations = int(model.optimizer.iterations.numpy())
                if step != iterations or path.name != f"step-{step:09d}":
                    raise CheckpointDamaged(f"{path / 'state.json'}: global_step {step} does not match the checkpoint "
                                            f"(folder {path.name}, {iterations} optimizer steps in its weights)")
                self.log(f"resumed from {path} (global step {step})")
                return step
            except CheckpointDamaged as exc:
                tried.append(path)
                path = manager.newest_intact(exclude=tried)
                if path is None:
                    raise CheckpointError(f"{exc}; no intact checkpoint is left (start over with --force)") from None
                self.log(f"warning: {exc}; falling back to the newest intact checkpoint {path}")
        self.log("no checkpoint yet; starting from scratch")
        return 0

    def _fit(self, run_dir: Path, method_data) -> dict:
        import keras

        from engine.callbacks import EpochLog, EpochTimer, NonFiniteGuard, RunCheckpoint
        from engine.checkpoint import CheckpointManager

        cfg = self.cfg
        model = self._timed("build", self.build, len(self.train_table), method_data)
        manager = CheckpointManager(run_dir)
        start_step = self._timed("resume", self._resume, manager, model) if cfg.resume else 0
        spe = self.steps_per_epoch
        context = self.context()
        self._callbacks = {}
        if start_step < cfg.epochs * spe:
            self._timed("image_sources", self.make_sources)
            epoch, in_epoch = divmod(start_step, spe)
            epoch_log = EpochLog(run_dir / "log.csv")
            epoch_log.start(epoch)
            checkpoint = RunCheckpoint(manager, spe, cfg.checkpoint_every)
            uncertainty = self._uncertainty_callbacks()
            self._callbacks = {"checkpoint": checkpoint, "uncertainty": uncertainty}
            # The checkpoint callback comes last: an epoch end's log row, per-sample table and SWA snapshot are
            # written before the checkpoint that marks the epoch done, so a kill in between replays that epoch
            # end on --resume instead of losing its row (found by benchmarks/chaos.py).
            callbacks = [NonFiniteGuard(manager), EpochTimer(), *uncertainty, *model.callbacks(context),
                         *([self.tracker] if self.tracker is not None else []), epoch_log, checkpoint]
            if cfg.tensorboard:
                callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tb"), write_graph=False, profile_batch=0))
            val = self.eval_dataset() if cfg.val_every else None
            fit_start = time.perf_counter()
            if in_epoch:
                # Finish the interrupted epoch first (same batches an uninterrupted run sees), then whole epochs.
                model.before_training(context)
                partial = self.train_dataset(method_data, start_step).take(spe - in_epoch)
                model.fit(partial, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=spe - in_epoch,
                          validation_data=val, callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
                epoch += 1
            if epoch < cfg.epochs:
                model.before_training(context)
                model.fit(self.train_dataset(method_data, epoch * spe), initial_epoch=epoch, epochs=cfg.epochs,
                          steps_per_epoch=spe, validation_data=val, validation_freq=max(cfg.val_every, 1),
                          callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
            self.timings["fit"] = round(time.perf_counter() - fit_start, 4)
        self._timed("after_training", model.after_training, context)  # e.g. DDAF's SWA swap; idempotent
        return self.finish(run_dir)

    def _uncertainty_callbacks(self) -> list:
        from engine.uncertainty import UncertaintyLogger

        if "uncertainty" not in self.model.per_sample_state():
            return []
        return [UncertaintyLogger(self.train_table, self.spec.class_names, self.run_dir, self.cfg.tensorboard)]

    def finish(self, run_dir: Path) -> dict:
        from engine.export import export_saved_model

        cfg = self.cfg
        report = self._timed("evaluate", evaluate_model, self.model, self.eval_dataset(), self.test_table,
                             self.spec.class_names)
        report["run_dir"] = str(run_dir)
        report.update(epoch_selection(run_dir / "log.csv"))
        report.update(self._timed("per_sample_metrics", per_sample_metrics, self.model, self.train_table))
        report.update(self.model.final_metrics(self.context()))
        checkpoint = getattr(self, "_callbacks", {}).get("checkpoint")
        if checkpoint is not None and checkpoint.save_seconds:
            self.timings["checkpoint_write_max"] = round(max(checkpoint.save_seconds), 4)
            self.timings["checkpoint_bytes"] = checkpoint.saved_bytes
        for logger in getattr(self, "_callbacks", {}).get("uncertainty", []):
            if logger.seconds:
                # The first epoch also formats the CSV's fixed columns (once per run): reported on its own.
                later = logger.seconds[1:] or logger.seconds
                self.timings["uncertainty_logging_per_epoch"] = round(max(later), 4)
                self.timings["uncertainty_logging_first_epoch"] = round(logger.seconds[0], 4)
        report["timings_s"] = dict(self.timings)
        atomic_write_json(run_dir / "metrics.json", report)
        if cfg.export:
            from engine.model_card import provenance

            export_saved_model(self.model, run_dir / "saved_model", cfg.image_size, self.spec.class_names, cfg.method,
                               input_norm=cfg.input_norm, provenance=provenance(self, report), log=self.log)
        return report


def _worker_index(cfg) -> int | None:
    """This process's worker index under --strategy multiworker (each worker locks its own file)."""
    if cfg.strategy != "multiworker":
        return None
    import os

    try:
        return int(json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


def predict_split(model, dataset) -> dict[str, np.ndarray]:
    """``model.predict_outputs`` over a whole evaluation dataset (``probabilities`` (N, C), ``label``...)."""
    from data.pipeline import collect_outputs

    return collect_outputs(model.predict_outputs, dataset, keep=("label", "index"))


def evaluate_model(model, dataset, table, class_names) -> dict:
    """The test report: classification metrics, agreement with human votes, VA metrics where predicted."""
    from engine.metrics import classification_report, distribution_divergences, va_metrics

    outputs = predict_split(model, dataset)
    probs = outputs["probabilities"]
    report = classification_report(outputs["label"], probs, len(class_names), class_names)
    if table is not None and table.votes is not None:
        report["human_agreement"] = {k: float(v) for k, v in distribution_divergences(probs, table.votes).items()}
    if "va" in outputs and table is not None and table.va is not None:
        predicted = np.empty_like(outputs["va"])
        predicted[outputs["index"]] = outputs["va"]
        report.update(va_metrics(predicted, table.va))
    return report


def epoch_selection(log_path) -> dict:
    """Test accuracy by epoch-selection rule, from the per-epoch test evaluation in ``log.csv``.

    ``accuracy`` in metrics.json is always the final model's (the honest default). When the run evaluated
    the test split every epoch (``--val-every 1``) this adds the mean over the last 5 epochs (what the
    official SCN and EAC code report) and the best epoch (what the official LA-Net and NLA code report),
    which is *selected on the test set* and so an optimistic estimate.
    """
    import pandas as pd

    try:
        log = pd.read_csv(log_path, na_values=["NA"])
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}
    if "val_acc" not in log.columns or "epoch" not in log.columns:
        return {}
    log = log.dropna(subset=["val_acc"])
    if log.empty:
        return {}
    best = int(log["val_acc"].to_numpy().argmax())
    return {"epoch_selection": {
        "evaluated_epochs": int(len(log)),
        "mean_last_5_accuracy": float(log["val_acc"].iloc[-5:].mean()),
        "best_epoch": int(log["epoch"].iloc[best]),
        "best_epoch_accuracy": float(log["val_acc"].iloc[best]),
        "best_epoch_note": "selected on the test set (as the official LA-Net and NLA code report): optimistic"}}


def per_sample_metrics(model, train_table) -> dict:
    """Noise-detection ROC-AUC and mean of the method's per-sample ``uncertainty`` (if it has one)."""
    from engine.uncertainty import uncertainty_summary

    state = model.per_sample_state()
    if "uncertainty" not in state:
        return {}
    summary = uncertainty_summary(np.asarray(state["uncertainty"]), train_table)
    return {"noise_detection_auc": summary.get("noise_auc"), "mean_uncertainty": summary["uncertainty_mean"]}


def read_run_record(run_dir) -> dict:
    """A run's ``config.json``, validated (a hand-edited or damaged file is a clear error)."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json)")
    try:
        record = json.loads(config_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # also 5000-digit numbers, 50 000-deep nesting
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{config_path}: must hold a JSON object")
    for section in ("run", "method_config", "data"):
        if not isinstance(record.get(section), dict):
            raise CheckpointError(f"{config_path}: section '{section}' is missing or not an object")
    return record


def load_run_model(run_dir, ckpt=None, log=print):
    """Rebuild a run's model from its config.json and load a checkpoint (latest by default)."""
    from engine.checkpoint import CheckpointDamaged, CheckpointManager

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    config_path = run_dir / "config.json"
    cfg = run_config_from_record(record, config_path)
    cfg = dataclasses.replace(cfg, mixed_precision="off", strategy="default")
    try:
        trainer = Trainer(cfg, log=log)
    except ConfigError as exc:  # a recorded setting out of range, an unknown method: the file was edited or damaged
        raise CheckpointError(f"{config_path}: the recorded run settings are invalid ({exc}); the file was edited "
                              "or damaged") from None
    config_cls = type(trainer.method_cfg)
    try:
        saved = check_values(config_cls, record["method_config"], f"{config_path}: method_config")
        trainer.method_cfg = dataclasses.replace(config_cls(), **saved)
    except (TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{exc}" if isinstance(exc, ConfigError) else
                              f"{config_path}: method_config does not fit {config_cls.__name__} ({exc})") from None
    try:
        n = int(record["data"]["num_train_samples"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{config_path}: data.num_train_samples is missing or not an integer") from None
    if n < 1:
        raise CheckpointError(f"{config_path}: data.num_train_samples must be positive, got {n}")
    trainer.build(n, trainer.model_cls.empty_method_data(trainer.method_cfg, n), load_weights=False)
    manager = CheckpointManager(run_dir)
    path = Path(ckpt) if ckpt else manager.latest()
    if path is None:
        raise CheckpointError(f"{run_dir}: no checkpoint found")
    try:
        manager.load_into(trainer.model, path)
    except CheckpointDamaged as exc:
        intact = manager.newest_intact(exclude=[path])
        hint = (f"the newest intact checkpoint is {intact} (pass it as --run {intact})" if intact
                else "no intact checkpoint is left")
        raise CheckpointDamaged(f"{exc}; {hint}") from None
    return trainer, record
