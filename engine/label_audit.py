"""Label audit of a trained run: which training images are probably mislabelled, and a cleaned table.

Used by ``python -m tools.label_issues`` (the command) and ``benchmarks.label_issues`` (the comparison
with cleanlab); it lives in the engine so that both may import it (benchmarks never import tools).

Per training row the audit gives a **score** (higher = the given label is more likely wrong), a
**suggested label** and whether the row is **flagged**:

===========  ==========================================  =========================  ==============================
method       score (``score=method``)                    suggested label            own flag rule (``flag=own``)
===========  ==========================================  =========================  ==============================
LDLVA        λ_i, the learned uncertainty (1 − σ(λ̂_i)    argmax of the target       argmax t_i ≠ y_i: the target
             in the release variant): the value           t_i = (1 − λ_i)e_y +       LDLVA itself trains towards no
             ``metrics.json``'s noise-detection AUC       λ_i d_i (eq. 6), built     longer puts most mass on the
             scores                                       with the final weights     given label
SCN          1 − α_i of the row's latest visit            the relabelled target ỹ   ỹ_i ≠ y_i (SCN's margin rule
                                                                                     max p − p[ỹ] > δ₂ changed it)
RUL          u_i of the row's latest visit                ỹ (``relabel=true``), else ỹ_i ≠ y_i (``relabel=true``
                                                          the final model's argmax   only)
LA-Net       1 − T_i[y_i] (target bank)                   argmax T_i                 argmax T_i ≠ y_i
others       — (no per-sample state)
===========  ==========================================  =========================  ==============================

``score=self-confidence`` (the default of CE, DDAF, NLA and EAC, an option for every method) is
1 − p(y_i | x_i) and ``score=normalized-margin`` is 1 − (p_y − max_{k≠y} p_k + 1)/2 (cleanlab's
``rank_by_self_confidence`` / ``normalized_margin`` orderings), both from the final model run over the
training table without augmentation; the suggested label is then the model's argmax.

``flag=count`` (the fallback where a method has no rule of its own) flags the ``n`` highest scores, ``n``
being confident learning's estimate of the number of label errors: the off-diagonal count of the
confident joint (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021, Sec. 3.1, eq. 2), computed by :func:`confident_learning_issues` exactly as
``cleanlab.count.num_label_issues(estimation_method="off_diagonal")`` does (cleanlab/cleanlab,
``cleanlab/count.py``: ``get_confident_thresholds``, ``compute_confident_joint``, ``_reduce_issues``;
checked against cleanlab in the tests; cleanlab itself is not needed at run time). Here the
probabilities are the final model's *in-sample* ones: a model that memorised the noisy labels is
confident of them and the count comes out low (cleanlab asks for out-of-sample probabilities from cross
validation, which ``benchmarks.label_issues`` computes).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from common.errors import CheckpointError, ConfigError, DataError

SCORES = ("auto", "method", "self-confidence", "normalized-margin")
FLAG_RULES = ("auto", "own", "count")
ACTIONS = ("drop", "relabel")
CLEANED_DATASET_KIND = "cleaned dataset"
_FLOAT_TOLERANCE = 1e-6  # cleanlab's FLOATING_POINT_COMPARISON
_THRESHOLD_FLOOR = 2e-6  # cleanlab's CONFIDENT_THRESHOLDS_LOWER_BOUND


# ------------------------------------------------------------------------------ confident learning

def _check_probs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probabilities must have shape ({len(labels)}, C), got {probs.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]})")
    return labels, probs


def confident_thresholds(labels, probs) -> np.ndarray:
    """t_j = mean of p_j over the rows labelled j (JAIR 2021 eq. 2's per-class threshold); 2 (above any
    probability) for a class no row carries; at least 2e-6, as cleanlab clips them."""
    labels, probs = _check_probs(labels, probs)
    out = np.full(probs.shape[1], 2.0)
    for k in range(probs.shape[1]):
        rows = labels == k
        if rows.any():
            out[k] = probs[rows, k].mean()
    return np.maximum(out, _THRESHOLD_FLOOR)


def confident_learning_issues(labels, probs) -> np.ndarray:
    """(N,) bool: the rows confident learning counts as label errors.

    A row is counted in the confident joint's off-diagonal when some class clears its threshold and the
    class it is counted as (the one above threshold; the argmax when several are) is not its given label;
    rows whose prediction is the given label anyway (argmax of p with p_y raised by 1e-6) are removed.
    ``mask.sum()`` equals ``cleanlab.count.num_label_issues(labels, probs)`` (estimation_method
    ``off_diagonal``, which also equals ``sum(find_label_issues(filter_by='confident_learning'))``).
    """
    labels, probs = _check_probs(labels, probs)
    if not len(labels):
        return np.zeros(0, bool)
    above = probs >= confident_thresholds(labels, probs) - _FLOAT_TOLERANCE
    count = above.sum(axis=1)
    guess = np.where(count > 1, probs.argmax(axis=1), above.argmax(axis=1))
    off_diagonal = (count > 0) & (guess != labels)
    raised = probs.copy()
    raised[np.arange(len(labels)), labels] += _FLOAT_TOLERANCE
    return off_diagonal & (raised.argmax(axis=1) != labels)


def count_label_issues(labels, probs) -> int:
    """Confident learning's estimate of the number of label errors (:func:`confident_learning_issues`)."""
    return int(confident_learning_issues(labels, probs).sum())


def self_confidence_score(labels, probs) -> np.ndarray:
    """1 − p(y_i | x_i): higher = the model believes the given label less."""
    labels, probs = _check_probs(labels, probs)
    return 1.0 - probs[np.arange(len(labels)), labels]


def normalized_margin_score(labels, probs) -> np.ndarray:
    """1 − (p_y − max_{k≠y} p_k + 1)/2: one minus cleanlab's normalised-margin label quality."""
    labels, probs = _check_probs(labels, probs)
    rows = np.arange(len(labels))
    given = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -np.inf
    return 1.0 - (given - others.max(axis=1) + 1.0) / 2.0


def ranks(score, tiebreak=None) -> np.ndarray:
    """1-based rank of every row by descending ``score`` (rank 1 = most suspicious); equal scores are ordered
    by descending ``tiebreak`` (the audit passes the final model's 1 − p(y|x): a projected λ saturates at 1
    for many rows), then by row order."""
    score = np.asarray(score, np.float64)
    keys = [np.arange(len(score))]
    if tiebreak is not None:
        keys.append(-np.asarray(tiebreak, np.float64))
    order = np.lexsort((*keys, -score))
    out = np.empty(len(score), np.int64)
    out[order] = np.arange(1, len(score) + 1)
    return out


def top_n(score, n: int, tiebreak=None) -> np.ndarray:
    """(N,) bool: the ``n`` best-ranked rows (:func:`ranks`)."""
    return ranks(score, tiebreak) <= int(n)


def flagged_metrics(flagged, score, given, clean) -> dict:
    """Detection quality against the known flips (``given != clean``): the score's ROC-AUC and the flagged
    set's precision, recall and F1 (None where undefined: no flips, no flagged rows)."""
    from engine.metrics import noise_detection_auc

    flagged = np.asarray(flagged, bool)
    given, clean = np.asarray(given), np.asarray(clean)
    noisy = given != clean
    hits = int((flagged & noisy).sum())
    n_flagged, n_noisy = int(flagged.sum()), int(noisy.sum())
    precision = hits / n_flagged if n_flagged else None
    recall = hits / n_noisy if n_noisy else None
    f1 = (2 * hits / (n_flagged + n_noisy)) if (n_flagged + n_noisy) and n_noisy else None
    auc = noise_detection_auc(score, given, clean)
    return {"auc": None if np.isnan(auc) else float(auc), "precision": precision, "recall": recall, "f1": f1,
            "num_flagged": n_flagged, "num_noisy": n_noisy, "num_flagged_noisy": hits}


# ----------------------------------------------------------------------------------------- a run

@dataclasses.dataclass
class Audit:
    """The audit of one run's training table (arrays in table row order)."""

    run_dir: Path
    method: str
    score_kind: str  # what ``score`` is (e.g. "ldlva lambda", "self-confidence")
    flag_rule: str  # how ``flagged`` was decided, in words
    paths: list
    given: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    clean: np.ndarray | None
    class_names: tuple
    probabilities: np.ndarray  # the final model's, on the training table without augmentation
    estimated_issues: int  # confident learning's count on ``probabilities``

    @property
    def rank(self) -> np.ndarray:
        """1-based rank by score (ties: the final model's lower belief in the given label first, then row)."""
        return ranks(self.score, self_confidence_score(self.given, self.probabilities))

    def frame(self):
        """The audit table: ``path, given_label, suggested_label, score, rank, flagged[, clean_label]`` plus
        the class names, one row per training image in table order."""
        import pandas as pd

        names = np.asarray(self.class_names, dtype=object)
        columns = {"path": self.paths, "given_label": self.given, "suggested_label": self.suggested,
                   "score": self.score, "rank": self.rank, "flagged": self.flagged.astype(int)}
        if self.clean is not None:
            columns["clean_label"] = self.clean
        columns["given_name"] = names[self.given]
        columns["suggested_name"] = names[self.suggested]
        return pd.DataFrame(columns)

    def metrics(self) -> dict | None:
        if self.clean is None:
            return None
        return flagged_metrics(self.flagged, self.score, self.given, self.clean)


def load_audited_run(run_dir, ckpt=None, log=None):
    """``(run, model, record, checkpoint state)`` of a run, its model restored and its training table reloaded
    exactly as trained (same noise protocol and seed), refused when the table changed since the run."""
    from data.schema import table_fingerprint
    from engine.checkpoint import CheckpointManager
    from engine.results import load_run_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"--run {run_dir}: no such run directory")
    quiet = log or (lambda *a, **k: None)
    run, model, record = load_run_model(run_dir, ckpt, log=quiet)
    run.load_splits(need_train=True)
    table = run.train_table
    stored = record["data"].get("train_table_sha256")
    if stored is not None and stored != table_fingerprint(table):
        raise DataError(f"{table.csv_path}: the training table changed since the run in {run_dir} was trained "
                        "(its content fingerprint differs from config.json's train_table_sha256): the run's "
                        "per-sample state no longer lines up with its rows; audit the table it was trained on, or "
                        "train a new run on this one")
    if len(table) != model.num_train_samples:
        raise DataError(f"{table.csv_path}: {len(table)} training rows, but the run in {run_dir} was trained on "
                        f"{model.num_train_samples}; the table changed since the run")
    manager = CheckpointManager(run_dir)
    path = Path(ckpt) if ckpt else manager.latest()
    state = manager.read_state(path) if path is not None else {}
    return run, model, record, state


def _train_outputs(run, model, features: bool):
    """The final model over the training table in inference mode (table order): probabilities (and features)."""
    import tensorflow as tf

    from data.pipeline import collect_outputs

    if features:
        def fn(images):
            feats, logits = model.embed(images, training=False)
            return {"features": feats, "probabilities": tf.nn.softmax(tf.cast(logits, tf.float32))}
    else:
        def fn(images):
            return {"probabilities": model.predict_outputs(images)["probabilities"]}
    out = collect_outputs(fn, run.eval_dataset("train"), keep=("index",))
    if not np.array_equal(out["index"], np.arange(len(run.train_table))):
        raise RuntimeError("the evaluation pipeline returned the training rows out of order")
    return out


def ldlva_targets(model, labels, features, probs, batch: int = 1024) -> np.ndarray:
    """LDLVA's target t_i (eq. 6) of every training row with the final weights in inference mode: the same
    construction as a training step (``label_distribution``), the neighbours' features and probabilities
    taken from one forward pass over the table (so N forwards, not N·K)."""
    import tensorflow as tf

    neighbors = model.neighbor_table.numpy()
    labels = np.asarray(labels, np.int32)
    out = np.empty((len(labels), model.num_classes), np.float32)
    for start in range(0, len(labels), batch):
        rows = np.arange(start, min(len(labels), start + batch))
        nb = neighbors[rows]
        parts = model.label_distribution(tf.constant(rows, tf.int32), tf.constant(labels[rows]),
                                         tf.constant(features[rows]), tf.constant(nb, tf.int32),
                                         tf.constant(features[nb]), tf.constant(probs[nb]), training=False)
        out[rows] = np.asarray(parts["target"])
    return out


def method_state(run, model) -> dict | None:
    """What the run's method learned per sample: ``score`` (N,), ``suggested`` (N,) or None (to be taken from
    the final model), ``own_flag`` (N,) bool or None (no rule of its own), ``kind``, ``rule``; None when the
    method keeps no per-sample score (CE, DDAF, NLA, EAC; LDLVA without per-sample λ)."""
    import tensorflow as tf

    table, method = run.train_table, run.cfg.method
    given = np.asarray(table.labels, np.int32)
    if method == "ldlva":
        cfg = model.rcfg
        if not (cfg.label_distribution and cfg.uncertainty_mode == "per_instance"):
            return None
        stored = model.train_labels.numpy()
        if not np.array_equal(stored, given):
            raise DataError(f"{run.run_dir}: the training labels reloaded from {table.csv_path} "
                            "differ from the labels stored in the checkpoint (was the dataset changed since training?)")
        return {"score": np.asarray(model.uncertainty_values(), np.float64), "kind": "ldlva lambda",
                "suggested": None, "own_flag": None, "needs_target": True,
                "rule": "argmax of LDLVA's target t_i = (1 - lambda_i) e_y + lambda_i d_i differs from the given label"}
    if method == "lanet":
        bank = tf.convert_to_tensor(model.target_bank)
        score = 1.0 - tf.gather(bank, tf.constant(given), axis=1, batch_dims=1)
        suggested = np.asarray(bank).argmax(axis=1)
        return {"score": np.asarray(score, np.float64), "kind": "lanet 1 - T[given] (target bank)",
                "suggested": suggested, "own_flag": suggested != given,
                "rule": "argmax of LA-Net's target bank T_i differs from the given label"}
    if method in ("scn", "rul"):
        score = np.asarray(model.per_sample_state()["uncertainty"], np.float64)
        kind = "scn 1 - alpha (importance)" if method == "scn" else "rul u (relative uncertainty)"
        if model.config.relabel:
            current = model.current_labels.numpy()
            return {"score": score, "kind": kind, "suggested": current, "own_flag": current != given,
                    "rule": f"{method.upper()}'s relabelling changed the label (max p - p[label] > margin)"}
        return {"score": score, "kind": kind, "suggested": None, "own_flag": None, "rule": None}
    state = model.per_sample_state()
    if "uncertainty" in state:  # a method registered later with a per-sample score of its own
        return {"score": np.asarray(state["uncertainty"], np.float64), "kind": f"{method} uncertainty",
                "suggested": None, "own_flag": None, "rule": None}
    return None


def check_audit_request(record: dict, score: str, flag: str) -> None:
    """Refuse, from a run's config.json alone (before the model is built), a method score or an own flag rule
    of a method that keeps no per-sample state (its class does not override ``per_sample_state``)."""
    from models.base import FERModel
    from models.registry import get_method

    method = str(record.get("run", {}).get("method"))
    try:
        stateless = get_method(method)[0].per_sample_state is FERModel.per_sample_state
    except ConfigError:
        return  # an unknown method: load_run_model names the damaged config.json
    if stateless and score == "method":
        raise ConfigError(f"a '{method}' run keeps no per-sample noise score (only LDLVA's λ, SCN's α, RUL's u and "
                          "LA-Net's target bank are one); use --score self-confidence or normalized-margin (the final "
                          "model's belief in the given label)")
    if flag == "own" and (stateless or score in ("self-confidence", "normalized-margin")):
        what = f"a '{method}' run" if stateless else f"--score {score}"
        raise ConfigError(f"--flag own: {what} has no threshold of its own; use --flag count (confident learning's "
                          "estimate of the number of errors)")


def audit_run(run, model, score: str = "auto", flag: str = "auto") -> Audit:
    """Score, suggest and flag every training row of a loaded run (see the module docstring)."""
    if score not in SCORES:
        raise ConfigError(f"--score must be one of {', '.join(SCORES)}, got '{score}'")
    if flag not in FLAG_RULES:
        raise ConfigError(f"--flag must be one of {', '.join(FLAG_RULES)}, got '{flag}'")
    table, method = run.train_table, run.cfg.method
    given = np.asarray(table.labels, np.int64)
    state = method_state(run, model) if score in ("auto", "method") else None
    if score == "method" and state is None:
        raise ConfigError(f"{run.run_dir}: a '{method}' run keeps no per-sample noise score (only LDLVA's λ, "
                          "SCN's α, RUL's u and LA-Net's target bank are one); use --score self-confidence or "
                          "normalized-margin (the final model's belief in the given label)")
    use_method = state is not None
    outputs = _train_outputs(run, model, features=use_method and state.get("needs_target", False))
    probs = outputs["probabilities"].astype(np.float64)
    if use_method:
        values, kind = state["score"], state["kind"]
        suggested, own = state["suggested"], state["own_flag"]
        if state.get("needs_target"):
            target = ldlva_targets(model, given, outputs["features"], outputs["probabilities"])
            suggested = target.argmax(axis=1)
            own = suggested != given
        if suggested is None:
            suggested = probs.argmax(axis=1)
        rule_text = state["rule"]
    else:
        kind = "normalized-margin" if score == "normalized-margin" else "self-confidence"
        values = (normalized_margin_score if kind == "normalized-margin" else self_confidence_score)(given, probs)
        suggested, own, rule_text = probs.argmax(axis=1), None, None
    estimated = count_label_issues(given, probs)
    if flag == "own" and own is None:
        raise ConfigError(f"--flag own: the '{method}' run's {kind} score has no threshold of its own; use --flag "
                          "count (confident learning's estimate of the number of errors)")
    if own is not None and flag in ("auto", "own"):
        flagged, rule = np.asarray(own, bool), f"own: {rule_text}"
    else:
        flagged = top_n(values, estimated, self_confidence_score(given, probs))
        rule = (f"count: the {estimated} highest scores (confident learning's off-diagonal count on the final "
                "model's in-sample probabilities)")
    values = np.asarray(values, np.float64)
    if not np.all(np.isfinite(values)):
        raise CheckpointError(f"{run.run_dir}: the run's per-sample scores hold NaN or infinite values")
    return Audit(run_dir=Path(run.run_dir), method=method, score_kind=kind, flag_rule=rule,
                 paths=list(table.paths), given=given, suggested=np.asarray(suggested, np.int64), score=values,
                 flagged=np.asarray(flagged, bool),
                 clean=None if table.clean_labels is None else np.asarray(table.clean_labels, np.int64),
                 class_names=tuple(run.spec.class_names), probabilities=probs, estimated_issues=estimated)


def recorded_auc(run_dir, record: dict, state: dict):
    """``(noise_detection_auc of metrics.json, why it is not comparable or None)``: the value only counts
    when metrics.json belongs to the checkpoint audited (the run finished at the epochs config.json records;
    a run extended or resumed and not finished yet has an older metrics.json)."""
    path = Path(run_dir) / "metrics.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        value = report.get("noise_detection_auc") if isinstance(report, dict) else None
    except (OSError, ValueError):
        return None, "no readable metrics.json"
    if value is None:
        return None, "metrics.json has no noise-detection AUC"
    try:
        finished = int(state.get("epoch", -1)) >= int(record["run"]["epochs"])
    except (TypeError, ValueError, KeyError):
        finished = False
    if not finished:
        return None, "metrics.json predates the newest checkpoint (the run has not finished its epochs)"
    return float(value), None


# ------------------------------------------------------------------------------- the cleaned table

def cleaned_frame(frame, flagged, suggested, action: str):
    """A copy of a training table's frame (as trained: noisy labels included, ``clean_expression`` kept) with
    the ``flagged`` rows dropped, or relabelled to ``suggested``. A release ``knn`` column (row indices) is
    left out when rows are dropped, since its indices would point at other rows."""
    if action not in ACTIONS:
        raise ConfigError(f"--action must be one of {', '.join(ACTIONS)}, got '{action}'")
    flagged = np.asarray(flagged, bool)
    if len(flagged) != len(frame):
        raise ValueError(f"{len(flagged)} flags for a table of {len(frame)} rows")
    frame = frame.copy()
    frame.attrs = {}
    if action == "drop":
        frame = frame.loc[~flagged].reset_index(drop=True)
        if "knn" in frame.columns:
            frame = frame.drop(columns=["knn"])
    else:
        labels = frame["expression"].to_numpy().astype(np.int64).copy()
        labels[flagged] = np.asarray(suggested, np.int64)[flagged]
        frame["expression"] = labels
    return frame


def classes_without_rows(frame, class_names) -> list[str]:
    """The names of the classes no row of ``frame`` carries (a cleaned table that flagged every row of a class:
    train.py refuses such a table, since the class could never be learned)."""
    present = set(np.asarray(frame["expression"]).astype(np.int64).tolist())
    return [name for c, name in enumerate(class_names) if c not in present]


def write_prepared_dir(folder, tables: dict, image_root, num_classes: int, class_names, allow_outside_root: bool,
                       provenance: dict | None = None) -> Path:
    """A prepared directory in ``folder`` that reuses the images under ``image_root`` (absolute ``image_root``
    in its ``dataset.json``): ``tables`` {file name: frame}. ``folder`` must be new, empty, or an earlier
    such directory of the same images (marked as this toolkit's); files there that are not named in
    ``tables`` are kept."""
    from common.io import OUTPUT_MARKER, WRITER, atomic_write_json, atomic_write_text, output_kind, record_own_files, stamp
    from data.prepared import DATASET_JSON, read_dataset_json

    folder = Path(folder)
    root = str(Path(image_root).resolve())
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder (nothing was changed)")
    if folder.is_dir() and any(folder.iterdir()):
        if output_kind(folder) != CLEANED_DATASET_KIND:
            raise ConfigError(f"{folder} is a non-empty folder this toolkit did not write as a prepared copy; "
                              "choose a new or empty folder (nothing was changed)")
        meta = read_dataset_json(folder)
        if meta.get("image_root") not in (None, root):
            raise ConfigError(f"{folder} holds a prepared copy of other images ({meta.get('image_root')}); choose "
                              "another folder (nothing was changed)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OUTPUT_MARKER).write_text(json.dumps({"written_by": WRITER, "kind": CLEANED_DATASET_KIND}))
    meta = {"image_root": root, "num_classes": int(num_classes), "class_names": list(class_names), **(provenance or {})}
    if allow_outside_root:
        meta["allow_outside_root"] = True
    atomic_write_json(folder / DATASET_JSON, stamp(meta, "engine.label_audit"))
    for name, frame in tables.items():
        frame = frame.copy()
        frame.attrs = {}
        atomic_write_text(folder / name, frame.to_csv(index=False))
    record_own_files([folder / name for name in tables])
    return folder


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_cleaned_target(run, out_csv, force: bool = False) -> bool:
    """Refuse a ``--write-table`` target before any work: the run's own tables (even with ``--force``), a
    file this toolkit did not write, an existing file without ``--force``, a folder of the user's. Returns
    whether the target lies in the run's data directory."""
    from common.io import is_own_file, output_kind
    from data.prepared import DATASET_JSON

    out_csv = Path(out_csv)
    table, test = run.train_table, run.test_table
    for theirs in (table.csv_path, test.csv_path):
        if _same_file(out_csv, Path(theirs)):
            raise ConfigError(f"--write-table {out_csv} is the run's own table {theirs}; the cleaned copy never "
                              "replaces it: choose another file name")
    if out_csv.suffix.lower() != ".csv":
        raise ConfigError(f"--write-table {out_csv}: give a .csv file name")
    if out_csv.is_dir():
        raise ConfigError(f"--write-table {out_csv} is a directory; give a file name")
    folder = out_csv.parent
    in_data_dir = folder.is_dir() and _same_file(folder, Path(run.splits.data_dir))
    if out_csv.exists() and not is_own_file(out_csv):
        raise ConfigError(f"--write-table {out_csv} already exists and was not written by this toolkit; it is never "
                          "replaced (choose another name)")
    if out_csv.exists() and not force:
        raise ConfigError(f"--write-table {out_csv} already exists; pass --force to replace it")
    if not in_data_dir:
        if out_csv.name in ("test.csv", DATASET_JSON):
            raise ConfigError(f"--write-table {out_csv}: that name is the prepared directory's own file; choose "
                              "another name (e.g. train.csv)")
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"--write-table {out_csv}: {folder} is not a folder")
        if folder.is_dir() and any(folder.iterdir()) and output_kind(folder) != CLEANED_DATASET_KIND:
            raise ConfigError(f"--write-table {out_csv}: {folder} is a non-empty folder this toolkit did not write; "
                              "give a file in the run's data directory or in a new or empty folder (nothing was "
                              "changed)")
    return in_data_dir


def write_cleaned_table(run, audit: Audit, out_csv, action: str, force: bool = False) -> dict:
    """Write the cleaned copy of the run's training table to ``out_csv``; the user's tables are never touched
    (:func:`check_cleaned_target` first).

    * ``out_csv`` in the run's own data directory: only the CSV is written (same ``dataset.json``, image
      root and test table).
    * anywhere else: ``out_csv``'s folder becomes a prepared directory (new, empty, or one this toolkit
      wrote) that reuses the run's images through an absolute ``image_root`` in its ``dataset.json``, with
      the run's test table as ``test.csv`` (:func:`write_prepared_dir`).

    Returns ``{"table", "data_dir", "rows", "changed", "action", "train_command"}``.
    """
    from common.io import atomic_write_text, record_own_files
    from data.prepared import read_dataset_json

    out_csv = Path(out_csv)
    in_data_dir = check_cleaned_target(run, out_csv, force)
    table, test = run.train_table, run.test_table
    data_dir, folder = Path(run.splits.data_dir), out_csv.parent
    frame = cleaned_frame(table.frame, audit.flagged, audit.suggested, action)
    if len(frame) == 0:
        raise DataError(f"--action drop would drop every one of the {len(table)} training rows; nothing written")
    if in_data_dir:
        atomic_write_text(out_csv, frame.to_csv(index=False))
        record_own_files([out_csv])
    else:
        allow = bool(table.allow_outside_root or run.cfg.allow_outside_root
                     or read_dataset_json(data_dir).get("allow_outside_root"))
        write_prepared_dir(folder, {"test.csv": test.frame, out_csv.name: frame}, table.image_root,
                           run.cfg.num_classes, run.spec.class_names, allow,
                           {"source": str(data_dir.resolve()), "cleaned_from_run": str(audit.run_dir.resolve()),
                            "action": action})
    command = (f"python train.py --dataset csv --num-classes {run.cfg.num_classes} --data-dir {folder} "
               f"--train-table {out_csv.name}")
    return {"table": str(out_csv), "data_dir": str(folder), "rows": int(len(frame)),
            "changed": int(audit.flagged.sum()), "action": action, "train_command": command,
            "classes_without_rows": classes_without_rows(frame, run.spec.class_names)}
