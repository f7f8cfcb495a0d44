"""Per-sample uncertainty logging, for every method whose ``per_sample_state()`` has ``uncertainty``.

The engine attaches :class:`UncertaintyLogger` to such a method's runs (LDLVA's λ, LA-Net's target drift,
SCN's importance, ...). Each epoch it

* adds ``uncertainty_mean``, ``uncertainty_q10``, ``uncertainty_q50``, ``uncertainty_q90`` and, when
  the training table knows the labels before synthetic noise (``clean_expression``), ``noise_auc`` (the
  ROC-AUC of the uncertainty for detecting the flipped labels) to the epoch logs, so the epoch log
  records them in ``RUN/log.csv`` (the fit runs method callbacks before it);
* writes a TensorBoard histogram to ``RUN/tb/uncertainty``;
* writes ``RUN/uncertainty/epoch_XXX.csv`` (1-based epoch): ``index, path, label, label_name,
  uncertainty`` and, with clean labels, ``clean_label, flipped``. ``tools/show_uncertain.py`` draws
  the most and least uncertain images from the last one.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

QUANTILES = (10, 50, 90)


def uncertainty_summary(values, train_table=None) -> dict:
    """Mean and q10/q50/q90 of the per-sample ``values`` (N,), plus ``noise_auc`` when clean labels exist."""
    from engine.metrics import noise_detection_auc

    values = np.asarray(values, np.float64).reshape(-1)
    summary = {"uncertainty_mean": float(values.mean())}
    for q, v in zip(QUANTILES, np.percentile(values, QUANTILES)):
        summary[f"uncertainty_q{q}"] = float(v)
    if train_table is not None and train_table.clean_labels is not None and len(train_table) == len(values):
        auc = noise_detection_auc(values, train_table.labels, train_table.clean_labels)
        summary["noise_auc"] = None if np.isnan(auc) else float(auc)
    return summary


def uncertainty_csv_rows(train_table, class_names):
    """The per-epoch CSV's fixed part, formatted once per run: ``(header, before, after)``, where row i of an
    epoch's CSV is ``before[i] + value + after[i]``. Only the values change between epochs, so at AffectNet's
    287 651 rows an epoch formats one float column (≈ 0.3 s) instead of the whole table (≈ 2 s)."""
    import pandas as pd

    labels = np.asarray(train_table.labels)
    fixed = pd.DataFrame({"index": np.arange(len(labels)), "path": train_table.absolute_paths(), "label": labels,
                          "label_name": np.asarray(class_names, dtype=object)[labels.astype(np.int64)]})
    header = ["index", "path", "label", "label_name", "uncertainty"]
    before = [line + "," for line in fixed.to_csv(index=False, header=False, lineterminator="\n").split("\n")[:-1]]
    after = [""] * len(labels)
    if train_table.clean_labels is not None:
        clean = np.asarray(train_table.clean_labels)
        after = [f",{int(c)},{int(f)}" for c, f in zip(clean, clean != labels)]
        header += ["clean_label", "flipped"]
    return ",".join(header), before, after


def write_uncertainty_csv(path, values, train_table, class_names, rows=None) -> Path:
    """The per-sample table of one epoch (atomic write); ``rows``: :func:`uncertainty_csv_rows`, reused."""
    from common.io import atomic_write_text

    values = np.asarray(values, np.float64).reshape(-1)
    header, before, after = rows if rows is not None else uncertainty_csv_rows(train_table, class_names)
    if len(before) != len(values):
        raise ValueError(f"{len(values)} per-sample values for a table of {len(before)} rows")
    formatted = np.char.mod("%.6g", values)
    text = "\n".join([header, *(b + v + a for b, v, a in zip(before, formatted, after))]) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


class UncertaintyLogger(keras.callbacks.Callback):
    """Epoch-end λ statistics into the logs, a TensorBoard histogram and a per-sample CSV."""

    def __init__(self, train_table, class_names, run_dir, tensorboard: bool, key: str = "uncertainty"):
        super().__init__()
        self.table = train_table
        self.class_names = list(class_names)
        self.run_dir = Path(run_dir)
        self.tensorboard = bool(tensorboard)
        self.key = key
        self._writer = None
        self._rows = None  # the CSV's fixed columns, formatted at the first epoch
        self.seconds: list[float] = []  # wall time of each epoch's logging (summary, AUC, CSV, TensorBoard)

    def on_epoch_end(self, epoch, logs=None):
        import time

        start = time.perf_counter()
        self._log_epoch(epoch, logs)
        self.seconds.append(time.perf_counter() - start)

    def _log_epoch(self, epoch, logs):
        values = np.asarray(self.model.per_sample_state()[self.key]).reshape(-1)
        summary = uncertainty_summary(values, self.table)
        if logs is not None:
            logs.update({k: (float("nan") if v is None else v) for k, v in summary.items()})
        if self._rows is None:
            self._rows = uncertainty_csv_rows(self.table, self.class_names)
        write_uncertainty_csv(self.run_dir / "uncertainty" / f"epoch_{epoch + 1:03d}.csv", values, self.table,
                              self.class_names, self._rows)
        if self.tensorboard:
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(self.run_dir / "tb" / "uncertainty"))
            with self._writer.as_default():
                tf.summary.histogram(self.key, values, step=epoch + 1)
                for name, value in summary.items():
                    if value is not None:
                        tf.summary.scalar(name, value, step=epoch + 1)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
