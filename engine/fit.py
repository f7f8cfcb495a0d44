"""Training a :class:`~engine.run.Run` in its directory, with exact resume: :func:`train`.

Run directory layout::

    RUN/config.json        resolved run config + method config + data facts (written before training)
    RUN/ckpt/step-*/       atomic checkpoints (weights incl. per-sample state + optimizer, state.json)
    RUN/ckpt/latest        name of the newest complete checkpoint
    RUN/log.csv            one row per epoch (appended on resume; test_* columns: the per-epoch test evaluation)
    RUN/tb/                TensorBoard logs
    RUN/uncertainty/       per-sample uncertainty per epoch (methods whose per_sample_state has it)
    RUN/metrics.json       final test metrics (evaluate.py reproduces them)
    RUN/saved_model/       serving SavedModel (see engine/export.py)

:func:`train` calls every hook of the method contract (:mod:`models.base`) through the base class, in this
order: ``prepare_data`` → build → [resume] → ``before_training`` → ``fit`` (with ``callbacks``,
``after_step`` every step) → ``after_training`` → evaluation → ``final_metrics``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from engine import results
from engine.build import build_model
from engine.checkpoint import CheckpointManager, resume_latest
from engine.rundir import RunLock, check_run_dir, prepare_run_dir
from engine.run import Run
from engine.setup import configure_runtime, make_strategy


@dataclass
class TrainedRun:
    """What :func:`train` leaves: the run directory, the trained model, its test report (``metrics.json``)
    and the distribution strategy it was trained under."""

    run_dir: Path
    model: object
    report: dict
    strategy: object


class StageTimes:
    """Wall time of each stage of :func:`train` (seconds), written to metrics.json as ``timings_s``: what a scale
    benchmark (benchmarks/scale.py) reads to see where the time outside the model goes."""

    def __init__(self):
        self.seconds: dict = {}

    def timed(self, stage: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 4)


def train(run: Run) -> TrainedRun:
    """Train (or resume) ``run`` in its directory, holding the directory's lock throughout; evaluate it on the
    test split, write ``metrics.json`` and (unless ``--no-export``) the SavedModel."""
    cfg = run.cfg
    run_dir = run.run_dir
    check_run_dir(run_dir)  # a file, or a user's folder: refused before anything is created
    strategy = make_strategy(cfg.strategy)  # before any TensorFlow op: a multi-worker strategy configures the runtime
    stages = StageTimes()
    stages.timed("load_data", run.load_splits)
    method_inputs = stages.timed("method_data", run.method_inputs)
    record = stages.timed("data_facts", run.record)
    tracker = None
    if cfg.mlflow and not _worker_index(cfg):  # one MLflow run: under --strategy multiworker, worker 0's
        from engine.callbacks import MLflowTracker

        tracker = MLflowTracker(cfg.mlflow, run_dir, cfg.resume, tags=run.tracking_tags, log=run.log)
    with RunLock(run_dir, worker=_worker_index(cfg)):
        prepare_run_dir(run_dir, record, cfg.resume, cfg.force, cfg.extend)
        run.log(f"run directory: {run_dir}")
        if tracker is None:
            return _fit(run, method_inputs, strategy, stages, None)
        with tracker:  # the MLflow run ends FINISHED, or FAILED / KILLED with the exception
            trained = _fit(run, method_inputs, strategy, stages, tracker)
            tracker.log_final(trained.report, run_dir)
        return trained


def _fit(run: Run, method_inputs, strategy, stages: StageTimes, tracker) -> TrainedRun:
    """Build (and resume) the model, fit the epochs left, finish. The callbacks and the checkpoint writer are
    made here, and only here."""
    import keras

    from engine.callbacks import EpochLog, EpochTimer, NonFiniteGuard, RenameValidationLogs, RunCheckpoint

    cfg, run_dir = run.cfg, run.run_dir
    steps = run.steps_per_epoch

    def build():
        configure_runtime(cfg)  # precision, determinism, seed: right before the weights are drawn
        return build_model(run, len(run.train_table), method_inputs, strategy)

    model = stages.timed("build", build)
    manager = CheckpointManager(run_dir)
    start_step = stages.timed("resume", resume_latest, manager, model, run.log) if cfg.resume else 0
    if start_step == 0 and cfg.head_init == "probe":  # a resumed run reads its head from the checkpoint
        from engine.head_init import init_head_from_probe

        stages.timed("head_init", init_head_from_probe, model, run.eval_dataset("train"), run.train_table.labels,
                     cfg.num_classes, seed=cfg.seed, log=run.log)
    checkpoint = RunCheckpoint(manager, model, steps, cfg.checkpoint_every)
    context = run.context(save_checkpoint=checkpoint.save)
    uncertainty = _uncertainty_loggers(run, model)
    if start_step < cfg.epochs * steps:
        stages.timed("image_sources", run.make_sources)
        epoch, in_epoch = divmod(start_step, steps)
        epoch_log = EpochLog(run_dir / "log.csv")
        epoch_log.start(epoch)
        # The checkpoint callback comes last: an epoch end's log row, per-sample table and SWA snapshot are
        # written before the checkpoint that marks the epoch done, so a kill in between replays that epoch
        # end on --resume instead of losing its row (found by benchmarks/chaos.py).
        callbacks = [RenameValidationLogs(), NonFiniteGuard(manager), EpochTimer(), *uncertainty,
                     *model.callbacks(context), *([tracker] if tracker is not None else []), epoch_log, checkpoint]
        if cfg.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tb"), write_graph=False, profile_batch=0))
        # Keras calls the split it evaluates every test_every epochs its validation data; here it is the test split.
        test_batches = run.eval_dataset() if cfg.test_every else None
        fit_start = time.perf_counter()
        if in_epoch:
            # Finish the interrupted epoch first (same batches an uninterrupted run sees), then whole epochs.
            model.before_training(context)
            partial = run.train_dataset(method_inputs, start_step).take(steps - in_epoch)
            model.fit(partial, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps - in_epoch,
                      validation_data=test_batches, callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
            epoch += 1
        if epoch < cfg.epochs:
            model.before_training(context)
            model.fit(run.train_dataset(method_inputs, epoch * steps), initial_epoch=epoch, epochs=cfg.epochs,
                      steps_per_epoch=steps, validation_data=test_batches, validation_freq=max(cfg.test_every, 1),
                      callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
        stages.seconds["fit"] = round(time.perf_counter() - fit_start, 4)
    stages.timed("after_training", model.after_training, context)  # e.g. DDAF's SWA swap; idempotent
    report = _finish(run, model, context, stages, checkpoint, uncertainty)
    return TrainedRun(run_dir=run_dir, model=model, report=report, strategy=strategy)


def _uncertainty_loggers(run: Run, model) -> list:
    from engine.uncertainty import UncertaintyLogger

    if "uncertainty" not in model.per_sample_state():
        return []
    return [UncertaintyLogger(run.train_table, run.spec.class_names, run.run_dir, run.cfg.tensorboard)]


def _finish(run: Run, model, context, stages: StageTimes, checkpoint, uncertainty) -> dict:
    """The test report with the fit's timings → metrics.json, then the export (engine.results)."""
    cfg, run_dir = run.cfg, run.run_dir
    report = stages.timed("evaluate", results.evaluate_model, model, run.eval_dataset(), run.test_table,
                          run.spec.class_names)
    report["run_dir"] = str(run_dir)
    report.update(results.epoch_selection(run_dir / "log.csv"))
    report.update(stages.timed("per_sample_metrics", results.per_sample_metrics, model, run.train_table))
    report.update(model.final_metrics(context))
    if checkpoint.save_seconds:
        stages.seconds["checkpoint_write_max"] = round(max(checkpoint.save_seconds), 4)
        stages.seconds["checkpoint_bytes"] = checkpoint.saved_bytes
    for logger in uncertainty:
        if logger.seconds:
            # The first epoch also formats the CSV's fixed columns (once per run): reported on its own.
            later = logger.seconds[1:] or logger.seconds
            stages.seconds["uncertainty_logging_per_epoch"] = round(max(later), 4)
            stages.seconds["uncertainty_logging_first_epoch"] = round(logger.seconds[0], 4)
    report["timings_s"] = dict(stages.seconds)
    results.write_metrics(run_dir, report)
    if cfg.export:
        results.export_run(run, model, run_dir / "saved_model", report)
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
