"""Evaluation metrics, pure numpy, computed over a WHOLE split (never averaged per batch).

Classification: :func:`accuracy`, :func:`per_class_accuracy`, :func:`mean_class_accuracy`,
:func:`macro_f1`, :func:`confusion_matrix`. Probabilistic quality: :func:`expected_calibration_error`,
:func:`negative_log_likelihood`. Valence/arousal regression: :func:`rmse`, :func:`ccc`,
:func:`va_metrics`. Agreement with human vote distributions (LDLVA supplement):
:func:`distribution_divergences`. Label-noise detection: :func:`noise_detection_auc`.
Reports: :func:`classification_report` (JSON-serialisable dict) and :func:`format_report` (text).

Conventions
-----------
* Labels are integer class indices ``0..C-1``; ``y_pred`` is a hard prediction (argmax of ``probs``).
* A quantity that is undefined on the given data (e.g. recall of a class absent from ``y_true``, any
  metric of an empty split) is ``NaN``, never a silent 0; reports turn ``NaN`` into ``None`` for JSON.
* Shape mismatches and out-of-range labels raise ``ValueError`` (these are programming errors, not
  user input errors).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "accuracy", "per_class_accuracy", "mean_class_accuracy", "macro_f1", "confusion_matrix",
    "expected_calibration_error", "negative_log_likelihood", "rmse", "ccc", "va_metrics",
    "distribution_divergences", "noise_detection_auc", "classification_report", "format_report",
]


# --------------------------------------------------------------------------------------------- helpers

def _labels(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class indices")
    return arr.astype(np.int64)


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({len(t)} vs {len(p)})")
    return t, p


def _check_range(labels: np.ndarray, num_classes: int, name: str) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} has a label outside 0..{num_classes - 1}")


def _probs(probs, y_true=None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {p.shape}")
    t = None
    if y_true is not None:
        t = _labels(y_true, "y_true")
        if len(t) != len(p):
            raise ValueError(f"probs and y_true differ in length ({len(p)} vs {len(t)})")
        _check_range(t, p.shape[1], "y_true")
    return p, t


def _json_float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# ------------------------------------------------------------------------------------- classification

def accuracy(y_true, y_pred) -> float:
    """Fraction of samples with ``y_pred == y_true`` over the whole split (NaN when empty)."""
    t, p = _pair(y_true, y_pred)
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts; entry ``[i, j]`` = samples of true class ``i`` predicted as ``j`` (rows = true)."""
    t, p = _pair(y_true, y_pred)
    _check_range(t, num_classes, "y_true")
    _check_range(p, num_classes, "y_pred")
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Per-class recall ``TP_c / #(y_true == c)``, shape ``(C,)``; NaN for a class absent from ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1).astype(np.float64)
    out = np.full(num_classes, np.nan)
    present = support > 0
    out[present] = np.diag(cm)[present] / support[present]
    return out


def mean_class_accuracy(y_true, y_pred, num_classes: int) -> float:
    """Mean of :func:`per_class_accuracy` over the classes present in ``y_true`` (``nanmean``).

    Equals scikit-learn's ``balanced_accuracy_score`` (which also averages recall over the classes
    present in ``y_true``). NaN when ``y_true`` is empty.
    """
    pca = per_class_accuracy(y_true, y_pred, num_classes)
    if np.all(np.isnan(pca)):
        return float("nan")
    return float(np.nanmean(pca))


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` OR ``y_pred``.

    Per class ``F1_c = 2 TP / (2 TP + FP + FN)``. A class predicted but never true (or true but never
    predicted) has F1 = 0, exactly as scikit-learn with ``zero_division=0``. A class that appears in
    neither (``TP + FP + FN == 0``, F1 undefined) is left out of the average rather than counted as 0.
    This equals ``sklearn.metrics.f1_score(y_true, y_pred, average='macro', zero_division=0)`` (default
    ``labels`` = classes present in either array) always, and equals the same call with
    ``labels=range(C)`` whenever every class appears in ``y_true`` or ``y_pred`` (the usual case for a
    test split; with ``labels=range(C)`` scikit-learn would count an entirely absent class as F1 = 0).
    NaN when both arrays are empty.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / denom[present]))


# -------------------------------------------------------------------------------- probabilistic quality

def expected_calibration_error(probs, y_true, num_bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction (Guo et al., 2017).

    Confidence = ``max(probs, axis=1)``, prediction = ``argmax`` (first index on ties). Samples fall in
    ``num_bins`` equal-width bins on ``[0, 1]``, right-closed ``(lo, hi]`` (the first bin also takes
    confidence 0). ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` over non-empty bins. NaN when empty.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    p, t = _probs(probs, y_true)
    n = len(p)
    if n == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # side='left' on the inner edges: a confidence exactly on an edge belongs to the lower bin.
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    counts = np.bincount(bins, minlength=num_bins).astype(np.float64)
    acc_sum = np.bincount(bins, weights=correct, minlength=num_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=num_bins)
    nonempty = counts > 0
    gap = np.abs(acc_sum[nonempty] - conf_sum[nonempty])  # = n_b * |acc_b - conf_b|
    return float(gap.sum() / n)


def negative_log_likelihood(probs, y_true, eps: float = 1e-12) -> float:
    """Mean ``-log p(y_true)`` with the probability clipped to ``[eps, 1]``.

    Rows are used as given (not renormalised): pass softmax outputs. NaN when empty.
    """
    p, t = _probs(probs, y_true)
    if len(p) == 0:
        return float("nan")
    picked = np.clip(p[np.arange(len(p)), t], eps, 1.0)
    return float(-np.mean(np.log(picked)))


# ---------------------------------------------------------------------------------- valence / arousal

def _regression_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"pred and target differ in size ({x.size} vs {y.size})")
    return x, y


def rmse(pred, target) -> float:
    """Root mean squared error over all elements (NaN when empty)."""
    x, y = _regression_pair(pred, target)
    if x.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((x - y) ** 2)))


def ccc(pred, target) -> float:
    """Lin's concordance correlation coefficient with population (1/N) moments (float64).

    ``CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)`` (:func:`losses.common.concordance_correlation`).
    1 for identical non-constant inputs; NaN when the denominator is 0 (both inputs constant and equal)
    or the input is empty.
    """
    from losses.common import concordance_correlation

    x, y = _regression_pair(pred, target)
    if x.size == 0 or (np.ptp(x) == 0 and np.ptp(y) == 0 and x[0] == y[0]):
        return float("nan")
    return float(concordance_correlation(x, y))


def va_metrics(pred_va, true_va) -> dict:
    """RMSE and CCC of valence (column 0) and arousal (column 1) for ``(N, 2)`` arrays.

    Returns ``{'valence_rmse', 'arousal_rmse', 'valence_ccc', 'arousal_ccc'}`` as python floats.
    """
    p = np.asarray(pred_va, dtype=np.float64)
    t = np.asarray(true_va, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape != t.shape:
        raise ValueError(f"pred_va and true_va must both have shape (N, 2), got {p.shape} and {t.shape}")
    return {
        "valence_rmse": rmse(p[:, 0], t[:, 0]),
        "arousal_rmse": rmse(p[:, 1], t[:, 1]),
        "valence_ccc": ccc(p[:, 0], t[:, 0]),
        "arousal_ccc": ccc(p[:, 1], t[:, 1]),
    }


# ------------------------------------------------------------------------ distribution agreement (LDLVA)

def _normalise_rows(arr: np.ndarray, name: str) -> np.ndarray:
    if (arr < 0).any():
        raise ValueError(f"{name} must be non-negative")
    total = arr.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError(f"every row of {name} needs a positive total")
    return arr / total


def _kl_rows(p: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    """Row-wise KL(p || q) with 0 log 0 = 0 and q clipped below at eps."""
    mask = p > 0
    ratio = np.where(mask, np.log(np.where(mask, p, 1.0)) - np.log(np.maximum(q, eps)), 0.0)
    return np.sum(np.where(mask, p * ratio, 0.0), axis=1)


def distribution_divergences(pred_probs, votes, eps: float = 1e-12) -> dict:
    """Agreement of predicted class distributions with human vote distributions, averaged over samples.

    ``votes`` are per-class annotator counts ``(N, C)``; each row is normalised to the human
    distribution ``h``. ``pred_probs`` rows are normalised too (``m``). With natural logs, terms where
    the left distribution is 0 contribute 0, and the right distribution is clipped below at ``eps``:

    * ``kl``      = mean KL(h || m)
    * ``js``      = mean Jensen-Shannon divergence ``0.5 KL(h || M) + 0.5 KL(m || M)``, ``M = (h + m) / 2``
      (bounded by ``ln 2``)
    * ``jeffrey`` = mean ``KL(h || m) + KL(m || h)``

    Returns python floats (NaN for empty input).
    """
    m = np.asarray(pred_probs, dtype=np.float64)
    v = np.asarray(votes, dtype=np.float64)
    if m.ndim != 2 or m.shape != v.shape:
        raise ValueError(f"pred_probs and votes must both have shape (N, C), got {m.shape} and {v.shape}")
    if len(m) == 0:
        nan = float("nan")
        return {"kl": nan, "js": nan, "jeffrey": nan}
    h = _normalise_rows(v, "votes")
    m = _normalise_rows(m, "pred_probs")
    kl_hm = _kl_rows(h, m, eps)
    kl_mh = _kl_rows(m, h, eps)
    mid = 0.5 * (h + m)
    js = 0.5 * _kl_rows(h, mid, eps) + 0.5 * _kl_rows(m, mid, eps)
    return {"kl": float(kl_hm.mean()), "js": float(js.mean()), "jeffrey": float((kl_hm + kl_mh).mean())}


# --------------------------------------------------------------------------------- label-noise detection

def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with ties given the average of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    n = len(values)
    # start index of each run of equal values in the sorted array
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks_sorted = np.repeat(run_rank, ends - starts)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def noise_detection_auc(uncertainty, given_labels, clean_labels) -> float:
    """ROC-AUC of a per-sample score for detecting flipped labels (``given != clean`` is positive).

    A higher ``uncertainty`` should mean "more likely flipped". Computed with the Mann-Whitney rank
    formula ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with tied scores given averaged ranks
    (a tie between a flipped and a clean sample counts 1/2), identical to
    ``sklearn.metrics.roc_auc_score``. NaN when there is no flipped or no clean sample.
    """
    score = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    given, clean = _pair(given_labels, clean_labels)
    if score.shape != given.shape:
        raise ValueError(f"uncertainty and labels differ in length ({score.size} vs {given.size})")
    if not np.all(np.isfinite(score)):
        raise ValueError("uncertainty has NaN or infinite values")
    positive = given != clean
    n_pos = int(positive.sum())
    n_neg = int(positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(score)
    r_pos = ranks[positive].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------- reports

def classification_report(y_true, probs, num_classes: int, class_names: Sequence[str]) -> dict:
    """Whole-split classification report as a JSON-serialisable dict.

    Keys: ``accuracy``, ``mean_class_accuracy``, ``macro_f1``, ``per_class_accuracy`` (class name ->
    recall, ``None`` for a class absent from ``y_true``), ``confusion_matrix`` (list of lists, rows =
    true), ``class_names``, ``ece`` (15 bins), ``nll``, ``num_samples``. Predictions are the argmax of
    ``probs``. Undefined (NaN) values are stored as ``None``.
    """
    p, t = _probs(probs, y_true)
    names = [str(n) for n in class_names]
    if p.shape[1] != num_classes:
        raise ValueError(f"probs have {p.shape[1]} columns but num_classes is {num_classes}")
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    y_pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    pca = per_class_accuracy(t, y_pred, num_classes)
    cm = confusion_matrix(t, y_pred, num_classes)
    return {
        "accuracy": _json_float(accuracy(t, y_pred)),
        "mean_class_accuracy": _json_float(mean_class_accuracy(t, y_pred, num_classes)),
        "macro_f1": _json_float(macro_f1(t, y_pred, num_classes)),
        "per_class_accuracy": {name: _json_float(v) for name, v in zip(names, pca)},
        "confusion_matrix": [[int(x) for x in row] for row in cm],
        "class_names": names,
        "ece": _json_float(expected_calibration_error(p, t)),
        "nll": _json_float(negative_log_likelihood(p, t)),
        "num_samples": int(len(t)),
    }


def _fmt(value, pct: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100.0 * value:.2f}%" if pct else f"{value:.4f}"


def format_report(report: dict) -> str:
    """Human-readable text of a :func:`classification_report` dict.

    Headline numbers (accuracy, mean class accuracy, macro F1; plus ECE/NLL, agreement with human votes,
    VA RMSE/CCC and noise-detection AUC when present), per-class accuracy, and the confusion matrix with class names as row (true) and column (predicted) headers.
    """
    names = list(report["class_names"])
    lines = [
        f"samples:             {report.get('num_samples', 'n/a')}",
        f"accuracy:            {_fmt(report.get('accuracy'))}",
        f"mean class accuracy: {_fmt(report.get('mean_class_accuracy'))}",
        f"macro F1:            {_fmt(report.get('macro_f1'))}",
    ]
    if "ece" in report:
        lines.append(f"ECE:                 {_fmt(report.get('ece'), pct=False)}")
    if "nll" in report:
        lines.append(f"NLL:                 {_fmt(report.get('nll'), pct=False)}")
    human = report.get("human_agreement")
    if human:
        lines.append("human votes vs model: " + ", ".join(f"{k.upper() if k != 'jeffrey' else 'Jeffrey'} "
                                                          f"{_fmt(human.get(k), pct=False)}" for k in ("kl", "js", "jeffrey")))
    for key, label in (("valence_rmse", "valence RMSE"), ("arousal_rmse", "arousal RMSE"), ("valence_ccc", "valence CCC"),
                       ("arousal_ccc", "arousal CCC"), ("noise_detection_auc", "noise-detection AUC")):
        if report.get(key) is not None:
            lines.append(f"{(label + ':').ljust(21)}{_fmt(report[key], pct=False)}")
    pca = report.get("per_class_accuracy") or {}
    if pca:
        lines.append("per-class accuracy:")
        width = max(len(n) for n in names)
        for name in names:
            lines.append(f"  {name.ljust(width)}  {_fmt(pca.get(name))}")
    cm = report.get("confusion_matrix")
    if cm is not None:
        lines.append("confusion matrix (rows = true, columns = predicted):")
        row_w = max([len("true \\ pred")] + [len(n) for n in names])
        col_w = max([len(n) for n in names] + [len(str(x)) for row in cm for x in row])
        lines.append("  " + "true \\ pred".ljust(row_w) + "".join(" " + n.rjust(col_w) for n in names))
        for name, row in zip(names, cm):
            lines.append("  " + name.ljust(row_w) + "".join(" " + str(int(x)).rjust(col_w) for x in row))
    return "\n".join(lines)
