"""After training: what a run directory yields. Plain functions over a run directory and its model.

* :func:`load_run_model`: the run rebuilt from ``RUN/config.json`` and a checkpoint (``(run, model, record)``);
* :func:`evaluate_model` / :func:`predict_split`: the test report of a model on a split (the one inference
  loop, ``data.pipeline.collect_outputs`` over ``predict_outputs``);
* :func:`epoch_selection`, :func:`per_sample_metrics`: the parts of ``metrics.json`` beside the test report;
  :func:`write_metrics` writes it;
* :func:`export_run`: the serving SavedModel with the model card of the run.

:func:`engine.fit.train` ends with them; ``evaluate.py``, ``export.py``, ``visualize.py``, the tools and the
benchmarks call them directly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from common.config import check_saved_values
from common.errors import CheckpointError, ConfigError
from common.io import atomic_write_json
from engine.build import build_model
from engine.config import run_config_from_record
from engine.run import Run
from engine.rundir import read_run_record


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
    the test split every epoch (``--test-every 1``) this adds the mean over the last 5 epochs (what the
    official SCN and EAC code report) and the best epoch (what the official LA-Net and NLA code report),
    which is *selected on the test set* and so an optimistic estimate.
    """
    import pandas as pd

    from engine.callbacks import read_epoch_log

    try:
        log = read_epoch_log(log_path)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}
    if "test_acc" not in log.columns or "epoch" not in log.columns:
        return {}
    log = log.dropna(subset=["test_acc"])
    if log.empty:
        return {}
    best = int(log["test_acc"].to_numpy().argmax())
    return {"epoch_selection": {
        "evaluated_epochs": int(len(log)),
        "mean_last_5_accuracy": float(log["test_acc"].iloc[-5:].mean()),
        "best_epoch": int(log["epoch"].iloc[best]),
        "best_epoch_accuracy": float(log["test_acc"].iloc[best]),
        "best_epoch_note": "selected on the test set (as the official LA-Net and NLA code report): optimistic"}}


def per_sample_metrics(model, train_table) -> dict:
    """Noise-detection ROC-AUC and mean of the method's per-sample ``uncertainty`` (if it has one)."""
    from engine.uncertainty import uncertainty_summary

    state = model.per_sample_state()
    if "uncertainty" not in state:
        return {}
    summary = uncertainty_summary(np.asarray(state["uncertainty"]), train_table)
    return {"noise_detection_auc": summary.get("noise_auc"), "mean_uncertainty": summary["uncertainty_mean"]}


def write_metrics(run_dir, report: dict) -> None:
    """``RUN/metrics.json``: the final test report (evaluate.py reproduces it from the last checkpoint)."""
    atomic_write_json(Path(run_dir) / "metrics.json", report)


def read_metrics(run_dir) -> dict | None:
    """``RUN/metrics.json``, or None when it is missing or unreadable (a model card then shows no metrics)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return metrics if isinstance(metrics, dict) else None


def export_run(run: Run, model, out, metrics: dict | None, formats=(), check_images=None) -> Path:
    """The serving SavedModel of ``run``'s ``model`` at ``out`` (:mod:`engine.export`), its model card made from
    the run's settings and test ``metrics``; ``formats`` are also written and checked on ``check_images``."""
    from engine.export import export_saved_model
    from engine.model_card import provenance

    cfg = run.cfg
    return export_saved_model(model, out, cfg.image_size, run.spec.class_names, cfg.method, input_norm=cfg.input_norm,
                              provenance=provenance(run, metrics), formats=formats, check_images=check_images,
                              log=run.log)


def load_run_model(run_dir, ckpt=None, log=print) -> tuple[Run, object, dict]:
    """``(run, model, record)``: a run rebuilt from its config.json (old setting names read too), its model
    restored from a checkpoint (the latest by default), in float32 on the default strategy. The splits are
    not loaded (``run.load_splits``)."""
    from engine.checkpoint import CheckpointDamaged, CheckpointManager
    from engine.setup import configure_runtime

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    config_path = run_dir / "config.json"
    cfg = run_config_from_record(record, config_path)
    cfg = dataclasses.replace(cfg, run=str(run_dir), mixed_precision="off", strategy="default")
    try:
        run = Run(cfg, log=log)
    except ConfigError as exc:  # a recorded setting out of range, an unknown method: the file was edited or damaged
        raise CheckpointError(f"{config_path}: the recorded run settings are invalid ({exc}); the file was edited "
                              "or damaged") from None
    config_cls = type(run.method_cfg)
    try:
        saved = check_saved_values(config_cls, record["method_config"], f"{config_path}: method_config")
        run.method_cfg = dataclasses.replace(config_cls(), **saved)
    except (TypeError, ValueError, ConfigError) as exc:
        raise CheckpointError(f"{exc}" if isinstance(exc, ConfigError) else
                              f"{config_path}: method_config does not fit {config_cls.__name__} ({exc})") from None
    try:
        n = int(record["data"]["num_train_samples"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{config_path}: data.num_train_samples is missing or not an integer") from None
    if n < 1:
        raise CheckpointError(f"{config_path}: data.num_train_samples must be positive, got {n}")
    configure_runtime(run.cfg)
    model = build_model(run, n, run.model_cls.empty_method_data(run.method_cfg, n), load_weights=False)
    manager = CheckpointManager(run_dir)
    path = Path(ckpt) if ckpt else manager.latest()
    if path is None:
        raise CheckpointError(f"{run_dir}: no checkpoint found")
    try:
        manager.load_into(model, path)
    except CheckpointDamaged as exc:
        intact = manager.newest_intact(exclude=[path])
        hint = (f"the newest intact checkpoint is {intact} (pass it as --run {intact})" if intact
                else "no intact checkpoint is left")
        raise CheckpointDamaged(f"{exc}; {hint}") from None
    return run, model, record
