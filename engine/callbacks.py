"""Keras callbacks shared by every method: step checkpoints, the non-finite guard, epoch logs, MLflow."""

from __future__ import annotations

import math
import time
from pathlib import Path

import keras
import numpy as np

from common.errors import TrainingError
from engine.checkpoint import CheckpointManager


class RunCheckpoint(keras.callbacks.Callback):
    """The run's checkpoint writer, and the one place a checkpoint's state is assembled: every ``every_steps``
    steps, at every epoch end, and whenever a method asks (``RunContext.save_checkpoint``: DDAF re-saves its
    SWA average), also outside ``fit`` (a resume that finds training complete)."""

    def __init__(self, manager: CheckpointManager, model, steps_per_epoch: int, every_steps: int = 0):
        super().__init__()
        self.manager = manager
        self.set_model(model)
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.last_saved = None
        self.save_seconds: list[float] = []  # wall time of each checkpoint write
        self.saved_bytes = 0  # size of the newest checkpoint

    def state(self, extra_state: dict | None = None) -> dict:
        """``state.json``: the global step, the epoch and the step within it, the time, a method's extras."""
        step = int(self.model.optimizer.iterations.numpy())
        return {"global_step": step, "epoch": step // self.steps_per_epoch,
                "step_in_epoch": step % self.steps_per_epoch, "time": time.time(), **(extra_state or {})}

    def save(self, extra_state: dict | None = None) -> Path:
        """Write a checkpoint of the model as it is now (again, if this step is saved already: its state changed)."""
        state = self.state(extra_state)
        start = time.perf_counter()
        path = self.manager.save(self.model, state)
        self.save_seconds.append(time.perf_counter() - start)
        self.saved_bytes = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        self.last_saved = state["global_step"]
        return path

    def save_now(self):
        """Checkpoint this step unless it is saved already."""
        if self.last_saved != int(self.model.optimizer.iterations.numpy()):
            self.save()

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps:
            step = int(self.model.optimizer.iterations.numpy())
            # An epoch's last step is saved by on_epoch_end, after that epoch's validation, log row and
            # per-sample tables: saved here it would mark the epoch done before its end ran, and a resume
            # from it would skip that end (found by benchmarks/chaos.py).
            if step % self.every_steps == 0 and step % self.steps_per_epoch != 0:
                self.save_now()

    def on_epoch_end(self, epoch, logs=None):
        self.save_now()


class NonFiniteGuard(keras.callbacks.Callback):
    """Stop on a non-finite loss, naming the step and the last good checkpoint (left intact)."""

    def __init__(self, manager: CheckpointManager):
        super().__init__()
        self.manager = manager

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = float(np.asarray(loss))
        if not math.isfinite(value):
            step = int(self.model.optimizer.iterations.numpy())
            last = self.manager.latest()
            raise TrainingError(
                f"non-finite loss ({value}) at global step {step}; training stopped. "
                f"The last good checkpoint is {last if last else '(none yet)'} and was not touched; "
                "lower the learning rate or check the data, then rerun with --resume")


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` and ``step_seconds`` (the train steps alone, data fetch included) to the epoch
    logs, so the CSV log records throughput and the per-epoch overhead outside the model step."""

    def __init__(self):
        super().__init__()
        self._start = self._step_start = 0.0  # perf_counter() at the epoch's and the step's start
        self._steps = 0.0  # seconds in train steps so far this epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._steps = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += time.perf_counter() - self._step_start

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start
            logs["step_seconds"] = self._steps


class RenameValidationLogs(keras.callbacks.Callback):
    """Names an epoch's test-split evaluation for what it is: Keras reports its ``validation_data`` as
    ``val_<metric>``, which the run's logs (log.csv, MLflow, TensorBoard, the progress line) hold as
    ``test_<metric>``. First in the callback list, so every later callback sees the test names."""

    def on_epoch_end(self, epoch, logs=None):
        for key in [k for k in (logs or {}) if k.startswith("val_")]:
            logs[test_split_column(key)] = logs.pop(key)


def test_split_column(name: str) -> str:
    """A log.csv column under today's name: ``val_acc`` (logs written before the rename) is ``test_acc``."""
    return "test_" + name[4:] if name.startswith("val_") else name


def read_epoch_log(path):
    """``RUN/log.csv`` as a DataFrame (``NA`` cells as NaN) with today's column names (an older log's
    ``val_*`` columns as ``test_*``)."""
    import pandas as pd

    log = pd.read_csv(path, na_values=["NA"])
    return log.rename(columns=test_split_column)


class EpochLog(keras.callbacks.Callback):
    """``RUN/log.csv``: one row per epoch (``epoch`` then the sorted log keys of the first epoch logged).

    Like Keras' CSVLogger, with the project's error handling (a full disk is ``error: RUN/log.csv: disk
    full``) and exact resume: rows of epochs at or after the epoch a run resumes at are dropped first, so
    a run resumed from an earlier checkpoint never lists an epoch twice.
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)
        self.keys = None

    def _rows(self) -> list[list[str]]:
        import csv

        if not self.path.is_file():
            return []
        try:
            with open(self.path, newline="", encoding="utf-8") as handle:
                return [row for row in csv.reader(handle) if row]
        except (OSError, UnicodeDecodeError, csv.Error):
            return []

    def _write(self, rows) -> None:
        import csv
        import io

        from common.io import atomic_write_text

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())

    def start(self, initial_epoch: int) -> None:
        """Keep the header and the rows of epochs before ``initial_epoch`` (0-based)."""
        rows = self._rows()
        if not rows or rows[0][:1] != ["epoch"]:
            self.keys = None
            return
        # A log written before the test columns were renamed continues under the new names.
        self.keys = [test_split_column(k) for k in rows[0][1:]]
        kept = [row for row in rows[1:] if row[0].isdigit() and int(row[0]) < initial_epoch]
        if len(kept) != len(rows) - 1 or self.keys != rows[0][1:]:
            self._write([["epoch", *self.keys], *kept])

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.keys is None:
            self.keys = sorted(logs)
            rows = [["epoch", *self.keys]]
        else:
            rows = self._rows() or [["epoch", *self.keys]]

        def cell(key):
            value = logs.get(key, "NA")
            value = value.item() if hasattr(value, "item") else value
            return f"{value}" if not isinstance(value, float) else repr(value)

        self._write([*rows, [str(epoch), *[cell(k) for k in self.keys]]])


# --- experiment tracking (--mlflow) ---------------------------------------------------------------------

MLFLOW_STATE = "mlflow.json"  # RUN/mlflow.json: the tracking URI and MLflow run id, reused by --resume
MLFLOW_EXPERIMENT = "fer-ldl"  # MLFLOW_EXPERIMENT_NAME overrides it, as in MLflow itself
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value (longer ones are cut, marked with "…")


def mlflow_tracking_uri(uri: str) -> str:
    """A tracking URI as MLflow takes it: a plain path (``./mlruns``) becomes an absolute ``file:`` URI, so a
    run resumed from another working directory finds its store; ``http://``, ``sqlite:``… stay as given."""
    if "://" in uri or uri.split(":", 1)[0] in ("databricks", "sqlite", "postgresql", "mysql", "file"):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def flatten(record: dict, prefix: str = "") -> dict:
    """``{"run": {"lr": 0.001}}`` → ``{"run.lr": 0.001}`` (lists and other leaves kept as they are)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _param_text(value) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS - 1] + "…"


def _finite_number(value):
    """A finite float, or None for anything else (strings, lists, NaN, booleans)."""
    value = value.item() if hasattr(value, "item") and np.ndim(value) == 0 else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class MLflowTracker(keras.callbacks.Callback):
    """``--mlflow [URI]``: the run in MLflow, as ``mlflow.keras`` autologging records one.

    * params: the resolved configuration (config.json's ``run``, ``method_config``, ``data`` facts, sampler,
      ``replayed_from``) flattened to ``section.key``;
    * metrics: every epoch's logs (``loss``, ``acc``, each loss term, ``test_*``, timings) at step = epoch
      (0-based, as ``log.csv``), then the final test metrics as ``final.<name>``;
    * artifacts: ``config.json``, ``metrics.json``, ``log.csv``, the model card and the export (``saved_model/``).

    The MLflow run id is kept in ``RUN/mlflow.json``: ``--resume`` continues the same MLflow run, and the
    epochs ``log.csv`` holds that MLflow lacks (those of a run tracked only from its resume on, or one
    killed between its checkpoint and its log) are logged from it. ``mlflow`` is imported here only, when
    ``--mlflow`` is given (written with :class:`mlflow.tracking.MlflowClient`, no global active run, so the
    cells of a benchmark grid never mix). Use as a context manager: the MLflow run ends FINISHED, or KILLED
    (Ctrl-C) / FAILED with the exception.
    """

    def __init__(self, uri: str, run_dir, resume: bool, tags: dict | None = None, log=print):
        super().__init__()
        import importlib.util
        import os

        from common.errors import ConfigError

        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("--mlflow needs the mlflow package: pip install mlflow-skinny (it is in "
                              "requirements.txt)")
        self.uri = mlflow_tracking_uri(uri)
        if self.uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked (it favours a database); a local ./mlruns is what
            # --mlflow documents, so it is asked for here (an explicit setting of the user's wins).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.log = log
        self.client = None
        self.run_id = None
        self._logged_epochs: set[int] = set()

    # --- the MLflow run ----------------------------------------------------------------------------
    def __enter__(self):
        self.open()
        return self

    def __exit__(self, kind, exc, traceback):
        if self.run_id is not None:
            status = "FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception:  # noqa: BLE001 - never hide the exception that ended the run
                if kind is None:
                    raise
        return False

    def _state(self) -> dict | None:
        import json

        from common.errors import CheckpointError

        path = self.run_dir / MLFLOW_STATE
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or not all(isinstance(state.get(k), str)
                                                      for k in ("tracking_uri", "run_id")):
                raise ValueError("tracking_uri and run_id must be strings")
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"{path}: not a valid MLflow run record ({exc}); delete it to track the rest "
                                  "of this run as a new MLflow run") from None
        return state

    def open(self) -> str:
        """Create the MLflow run (or continue the one in RUN/mlflow.json on --resume); log the params."""
        import json

        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from common.errors import CheckpointError, ConfigError
        from common.io import atomic_write_json

        self.client = MlflowClient(tracking_uri=self.uri)
        state = self._state() if self.resume else None
        try:
            if state is not None:
                if state["tracking_uri"] != self.uri:
                    raise ConfigError(f"{self.run_dir / MLFLOW_STATE}: this run is tracked in {state['tracking_uri']}; "
                                      f"resume it with --mlflow {state['tracking_uri']} (got {self.uri})")
                try:
                    self.client.get_run(state["run_id"])
                except MlflowException:
                    raise CheckpointError(f"{self.run_dir / MLFLOW_STATE}: MLflow run {state['run_id']} is not in "
                                          f"{self.uri}; delete the file to track the rest as a new MLflow run") from None
                self.run_id = state["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                self._logged_epochs = {m.step for m in self.client.get_metric_history(self.run_id, "loss")}
                self.log(f"mlflow: continuing run {self.run_id} ({self.uri})")
            else:
                import os

                name = os.environ.get("MLFLOW_EXPERIMENT_NAME", MLFLOW_EXPERIMENT)
                experiment = self.client.get_experiment_by_name(name)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
                run = self.client.create_run(experiment_id, run_name=self.run_dir.name)
                self.run_id = run.info.run_id
                atomic_write_json(self.run_dir / MLFLOW_STATE, {"tracking_uri": self.uri, "experiment_id": experiment_id,
                                                               "run_id": self.run_id})
                self.log(f"mlflow: run {self.run_id} in experiment '{name}' ({self.uri})")
            tags = {"fer.run_dir": str(self.run_dir), **self.tags}
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)
            record = json.loads((self.run_dir / "config.json").read_text(encoding="utf-8"))
            self._log_params(record)
        except MlflowException as exc:
            raise ConfigError(f"--mlflow {self.uri}: {str(exc).splitlines()[0][:300]}") from None
        return self.run_id

    def _log_params(self, record: dict) -> None:
        """The resolved configuration as params. MLflow params cannot change, so on a resume only new keys
        are logged, and a value that did change (``--extend``'s ``run.epochs``) becomes a tag ``changed.<key>``."""
        from mlflow.entities import Param

        params = {k: _param_text(v) for k, v in flatten({key: value for key, value in record.items()
                                                        if key != "versions"}).items()}
        params.update({f"versions.{k}": _param_text(v) for k, v in record.get("versions", {}).items()})
        logged = self.client.get_run(self.run_id).data.params if self.resume else {}
        new = [Param(k[:250], v) for k, v in sorted(params.items()) if k[:250] not in logged]
        for key, value in sorted(params.items()):
            if key[:250] in logged and logged[key[:250]] != value:
                self.client.set_tag(self.run_id, f"changed.{key}"[:250], f"{logged[key[:250]]} -> {value}"[:5000])
        for start in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=new[start:start + 100])

    def _log_metrics(self, values: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, number, stamp, int(step)) for key, value in sorted(values.items())
                   if (number := _finite_number(value)) is not None]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    # --- Keras hooks ---------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        """Epochs that log.csv holds and MLflow lacks (EpochLog has dropped rows to be retrained by now)."""
        import csv

        path = self.run_dir / "log.csv"
        if self.run_id is None or not path.is_file():
            return
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                epoch = row.pop("epoch", "")
                if epoch.isdigit() and int(epoch) not in self._logged_epochs:
                    values = {}
                    for key, text in row.items():
                        try:
                            values[key] = float(text)
                        except (TypeError, ValueError):
                            pass
                    self._log_metrics(values, int(epoch))
                    self._logged_epochs.add(int(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if self.run_id is None:
            return
        self._log_metrics(dict(logs or {}), epoch)
        self._logged_epochs.add(int(epoch))

    # --- the end of a run -------------------------------------------------------------------------
    def log_final(self, report: dict, run_dir) -> None:
        """The final metrics (``final.<name>``, at step = the number of epochs logged) and the artifacts."""
        run_dir = Path(run_dir)
        step = max(self._logged_epochs) + 1 if self._logged_epochs else 0
        self._log_metrics({f"final.{k}": v for k, v in flatten(report).items() if not k.startswith("timings_s.")},
                          step)
        for name in ("config.json", "metrics.json", "log.csv"):
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        export = run_dir / "saved_model"
        if export.is_dir():
            if (export / "MODEL_CARD.md").is_file():
                self.client.log_artifact(self.run_id, str(export / "MODEL_CARD.md"))
            self.client.log_artifacts(self.run_id, str(export), artifact_path="saved_model")
        else:
            self.log("mlflow: no export to log (--no-export); config.json, metrics.json and log.csv logged")
