"""Finding the mislabelled faces: the toolkit's per-sample scores against cleanlab, and what cleaning is worth.

    python -m benchmarks.label_issues --out benchmark_runs/label_issues [--seeds 0 1 2] [--settings sym30 asym30]
        [--detectors ldlva ce scn rul lanet] [--folds 5] [--clean-with cleanlab ldlva ce scn rul lanet]
        [--actions drop relabel] [recipe flags: --train-size --backbone --image-size --pad --epochs --batch-size
        --lr --lr-schedule --weights --random-erasing --method-set METHOD:KEY=VALUE --grid-option OPTION=VALUE]
        [--reuse-grid SETTING=DIR] [--report-only]

For every label setting (``sym30``: 30 % symmetric noise, ``asym30``: 30 % asymmetric, ...) and seed:

1. **One run per method** (an ordinary ``benchmarks.grid`` grid, ``OUT/<setting>/grid``): CE and the
   ``--detectors`` methods on the noisy table. Each is audited with ``engine.label_audit`` (what
   ``python -m tools.label_issues`` computes): LDLVA's λ, SCN's 1 − α, RUL's u and LA-Net's 1 − T[given],
   each flagged by the method's own rule where it has one, else by confident learning's count; CE by the
   final model's self-confidence, flagged by the count (on its in-sample probabilities).
2. **cleanlab** (Northcutt et al., JAIR 2021; ``cleanlab.filter.find_label_issues`` with its defaults,
   ``filter_by='prune_by_noise_rate'``) on out-of-sample probabilities from ``--folds``-fold cross
   validation: the noisy training table is written once as a prepared directory (``OUT/<setting>/s<seed>/noisy``,
   reusing the images), split into folds stratified by the given label, and the toolkit's own CE (same
   backbone and recipe) is trained on each table without one fold (``--dataset csv --train-table
   fold<k>.csv``) and run on the held-out fold. Its ranking score is 1 − self-confidence
   (``cleanlab.rank.get_label_quality_scores(method='self_confidence')``).
3. For each detector of ``--clean-with`` and each ``--actions``, the training table with the flagged rows
   dropped or relabelled to the suggested label is written as a prepared directory and **CE is retrained on
   it** (same recipe), beside CE on the noisy table and LDLVA itself.

Reported (``OUT/results.md``, ``OUT/results.csv``; mean ± sample std over seeds; the cells of earlier
invocations into the same OUT are kept, so seeds run one per session gather into one table, and
``OUT/recipe.json`` records the recipe they share: another recipe into that OUT is an error): per detector the
noise-detection ROC-AUC of its score, the precision, recall and F1 of its flagged set, the number flagged
against the true number of wrong labels, and its cost (training epochs summed over the runs it needs, and
their wall time); then the test accuracy of every CE retrained on a cleaned table. Every step resumes: a
finished run, an audit or the cross-validated probabilities are read back, not recomputed (the grids skip
finished cells, as ``benchmark.py`` does). ``--reuse-grid SETTING=DIR`` takes the single runs of a grid
already trained with the same recipe (a ``benchmarks.pretrained_regime`` setting folder, a ``benchmark.py
--protocol noise`` directory): each finished ``DIR/runs/<method>_<rate>_s<seed>`` whose config matches this
benchmark's is linked (a symbolic link; nothing in DIR is written), one trained with other settings is an
error that names the difference, and a missing one is trained here.

Default recipe: the CPU-sized protocol of BENCHMARKS.md (2000 synthetic training faces, ``small_cnn`` at 32
px, pad 2, 40 epochs, Adam 1e-3 with cosine decay, batch 64; LDLVA with ``neighbor_source=bank`` and
``gamma=0.01``); every recipe flag can be changed (e.g. ``--backbone resnet18 --weights FILE`` for a
pretrained regime, ``--backbone dlib_resnet --weights dlib --image-size 150`` for dlib's face ResNet; any
other ``train.py`` option with ``--grid-option OPTION=VALUE``), and ``--dataset csv --data-dir DIR --num-classes C`` runs it on any prepared directory
with clean labels in ``clean_expression``. cleanlab is needed by this benchmark only (requirements.txt).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_float, positive_int, run_main
from common.errors import ConfigError

SETTINGS = {"sym10": ("symmetric", 0.1), "sym20": ("symmetric", 0.2), "sym30": ("symmetric", 0.3),
            "asym10": ("asymmetric", 0.1), "asym20": ("asymmetric", 0.2), "asym30": ("asymmetric", 0.3),
            "sym40": ("symmetric", 0.4)}
DETECTORS = ("ldlva", "ce", "scn", "rul", "lanet")  # one run each; "ce" = CE's self-confidence
CLEANERS = ("cleanlab", *DETECTORS)
DEFAULT_METHOD_SETS = ("ldlva:neighbor_source=bank", "ldlva:gamma=0.01")
KIND = "label-issues benchmark"
RECIPE_FILE = "recipe.json"  # the recipe every cell of OUT/results.csv was made with
NOT_TRAINABLE = "not_trainable.json"  # a cleaned table that lost every row of a class (CE is not trained on it)
TITLES = {"cleanlab": "cleanlab (find_label_issues, {folds}-fold CV of CE)", "ldlva": "LDLVA λ",
          "ce": "CE self-confidence", "scn": "SCN 1 − α", "rul": "RUL u", "lanet": "LA-Net 1 − T[given]"}
RESULT_COLUMNS = ("setting", "seed", "kind", "name", "auc", "precision", "recall", "f1", "num_flagged", "num_noisy",
                  "epochs", "seconds", "accuracy", "rule")


def build_parser():
    p = ArgumentParser(prog="python -m benchmarks.label_issues", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="benchmark directory (resumable)")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=["sym30", "asym30"], choices=list(SETTINGS))
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS),
                   help="methods trained once and audited (ce = CE's self-confidence)")
    p.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds for cleanlab (default 5)")
    p.add_argument("--clean-with", nargs="*", default=list(CLEANERS), choices=list(CLEANERS),
                   help="detectors whose cleaned tables CE is retrained on (default all)")
    p.add_argument("--actions", nargs="*", default=["drop", "relabel"], choices=["drop", "relabel"])
    g = p.add_argument_group("recipe (every run: the single runs, the folds, the retrainings)")
    g.add_argument("--dataset", default="synthetic", help="synthetic (default) or csv with --data-dir")
    g.add_argument("--data-dir", help="a prepared directory (--dataset csv)")
    g.add_argument("--num-classes", type=positive_int, help="--dataset csv: 7 or 8")
    g.add_argument("--train-size", type=positive_int, default=2000, help="synthetic training faces (default 2000)")
    g.add_argument("--backbone", default="small_cnn")
    g.add_argument("--image-size", type=positive_int, default=32)
    g.add_argument("--pad", type=nonnegative_int, default=2)
    g.add_argument("--epochs", type=positive_int, default=40)
    g.add_argument("--batch-size", type=positive_int, default=64)
    g.add_argument("--lr", type=positive_float, default=1e-3)
    g.add_argument("--lr-schedule", default="cosine", choices=["constant", "step", "cosine", "exponential", "linear"])
    g.add_argument("--weights", default="none",
                   help="backbone weights of every run: none (default: from scratch), a file, or a name the backbone "
                        "knows (imagenet, dlib)")
    g.add_argument("--random-erasing", type=float, default=0.0)
    g.add_argument("--method-set", action="append", default=None, metavar="METHOD:KEY=VALUE",
                   help="method setting (repeatable); default " + " ".join(DEFAULT_METHOD_SETS))
    g.add_argument("--grid-option", action="append", default=[], metavar="OPTION=VALUE",
                   help="any other train.py option for every run (repeatable), e.g. input-norm=dlib or "
                        "optimizer=sgd")
    g = p.add_argument_group("control")
    g.add_argument("--reuse-grid", action="append", default=[], metavar="SETTING=DIR",
                   help="read the single runs of SETTING from a grid trained with the same recipe (repeatable; "
                        "its runs are linked, never written; one with other settings is an error)")
    g.add_argument("--lock", help="flock this file around each training (shared CPU)")
    g.add_argument("--report-only", action="store_true", help="train nothing; rebuild the tables from what is done")
    return p


# ----------------------------------------------------------------------------------------- recipe

def recipe_argv(args, methods, data_dir=None, train_table=None) -> list[str]:
    """The grid options shared by every run; ``data_dir``: a prepared copy (``--dataset csv``)."""
    argv = ["--backbone", args.backbone, "--image-size", str(args.image_size), "--pad", str(args.pad),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", f"{args.lr:g}",
            "--lr-schedule", args.lr_schedule, "--random-erasing", f"{args.random_erasing:g}", "--test-every", "0",
            "--weights", str(Path(args.weights).resolve()) if Path(args.weights).is_file() else args.weights]
    for item in args.grid_option:
        option, _, value = item.partition("=")
        argv += [f"--{option.strip().lstrip('-')}", *([value] if value else [])]
    if data_dir is not None:
        argv += ["--dataset", "csv", "--num-classes", str(num_classes(args)), "--data-dir", str(Path(data_dir).resolve())]
        if train_table:
            argv += ["--train-table", train_table]
    elif args.dataset == "synthetic":
        argv += ["--dataset", "synthetic", "--synthetic", f"train_size={args.train_size}"]
    else:
        argv += ["--dataset", args.dataset, "--data-dir", str(Path(args.data_dir).resolve())]
        if args.num_classes:
            argv += ["--num-classes", str(args.num_classes)]
    if args.lock:
        argv += ["--lock", args.lock]
    sets = DEFAULT_METHOD_SETS if args.method_set is None else args.method_set
    for item in sets:
        if item.partition(":")[0] in methods:
            argv += ["--method-set", item]
    return argv


def num_classes(args) -> int:
    from data.registry import get_dataset_spec

    return get_dataset_spec(args.dataset, args.num_classes).num_classes


def noise_grid_argv(args, setting: str, seed: int, methods, grid: Path) -> list[str]:
    """``benchmarks.grid`` options of the single runs of one (setting, seed)."""
    kind, rate = SETTINGS[setting]
    return ["--protocol", "noise", "--levels", f"{rate:g}", "--noise", kind, "--methods", *methods,
            "--seeds", str(seed), "--out", str(grid), *recipe_argv(args, methods)]


def link_reused_runs(args, source: Path, setting: str, seed: int, methods, grid: Path) -> list[str]:
    """Link the finished runs of ``source`` (a grid trained with this recipe) into ``grid``; the names linked.

    Each run's config.json is compared with the config this benchmark would train (``benchmarks.grid.stale_reason``,
    the check a resumed grid makes), so an audit never reads a run of another recipe under this one's name.
    """
    from benchmarks.grid import base_config, parse_method_sets, stale_reason
    from benchmarks.grid import build_parser as grid_parser

    grid_args = grid_parser().parse_args(noise_grid_argv(args, setting, seed, methods, grid))
    grid_args.preset = {}
    method_sets = parse_method_sets(grid_args.method_set)
    level = f"{SETTINGS[setting][1]:g}"
    linked = []
    for method in methods:
        reused, target = grid_run_dir(source, method, level, seed), grid_run_dir(grid, method, level, seed)
        if target.exists() or target.is_symlink() or not (reused / "metrics.json").is_file():
            continue
        cfg = base_config(grid_args, method, seed, target, float(level), method_sets)
        reason = stale_reason(reused, cfg)
        if reason:
            raise ConfigError(f"{reused}: trained with other settings than this benchmark's recipe ({reason}); give "
                              "the recipe it was trained with (--grid-option, --method-set) or leave --reuse-grid out")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(reused.resolve(), target_is_directory=True)
        linked.append(target.name)
    return linked


def parse_reuse_grids(items, settings) -> dict[str, Path]:
    """``--reuse-grid SETTING=DIR`` items as {setting: DIR}."""
    grids = {}
    for item in items:
        setting, sep, folder = item.partition("=")
        setting = setting.strip()
        if not sep or not folder:
            raise ConfigError(f"--reuse-grid expects SETTING=DIR (e.g. sym30=benchmark_runs/x/pretrained/sym30), "
                              f"got '{item}'")
        if setting not in settings:
            raise ConfigError(f"--reuse-grid {item}: {setting} is not one of --settings ({' '.join(settings)})")
        if not (Path(folder) / "runs").is_dir():
            raise ConfigError(f"--reuse-grid {item}: {folder} has no runs/ folder (not a grid directory)")
        grids[setting] = Path(folder)
    return grids


def run_grid(argv) -> int:
    """One ``benchmarks.grid`` grid (resumable; finished cells are skipped); a failed cell is reported."""
    from benchmarks.grid import build_parser as grid_parser
    from benchmarks.grid import run_grid as grid

    def log(*parts, **_kwargs):
        text = " ".join(map(str, parts))
        if "FAILED" in text:
            print(text.strip(), flush=True)

    return grid(grid_parser().parse_args(argv), log=log)


def grid_run_dir(grid: Path, method: str, level: str, seed: int) -> Path:
    return grid / "runs" / f"{method}_{level}_s{seed}"


def run_cost(run_dir: Path) -> tuple[float | None, float | None]:
    """(training epochs, wall seconds) of a finished run (its config.json and benchmark_cell.json)."""
    from benchmarks.grid import cell_seconds

    try:
        epochs = float(json.loads((run_dir / "config.json").read_text())["run"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        epochs = None
    return epochs, cell_seconds(run_dir)


def accuracy_of(run_dir: Path):
    try:
        return float(json.loads((run_dir / "metrics.json").read_text())["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------------- detections

def save_detection(path: Path, name: str, score, flagged, suggested, given, clean, epochs, seconds, rule: str) -> dict:
    """Store one detector's per-row output (``.npz``) and its summary (``.json``); the summary."""
    from common.io import atomic_write_bytes, atomic_write_json, stamp
    from engine.label_audit import flagged_metrics

    import io

    buffer = io.BytesIO()
    np.savez(buffer, score=np.asarray(score, np.float64), flagged=np.asarray(flagged, bool),
             suggested=np.asarray(suggested, np.int64), given=np.asarray(given, np.int64),
             clean=np.asarray(clean, np.int64))
    atomic_write_bytes(path.with_suffix(".npz"), buffer.getvalue())
    summary = {"name": name, "rule": rule, "epochs": epochs, "seconds": seconds,
               **flagged_metrics(flagged, score, given, clean)}
    atomic_write_json(path.with_suffix(".json"), stamp(summary, "benchmarks.label_issues"))
    return summary


def load_detection(path: Path):
    """(summary, arrays) of a stored detection, or None when it is not there (yet)."""
    try:
        summary = json.loads(path.with_suffix(".json").read_text())
        with np.load(path.with_suffix(".npz")) as data:
            arrays = {k: data[k] for k in data.files}
        return summary, arrays
    except (OSError, ValueError, KeyError):
        return None


def audit_single_run(run_dir: Path, detector: str, path: Path, expected_rows: int | None = None):
    """The audit of one grid run (method score, or CE's self-confidence), stored at ``path``."""
    from engine.label_audit import audit_run, load_audited_run

    done = load_detection(path)
    if done is not None:
        return done
    run, model, _record, _state = load_audited_run(run_dir)
    audit = audit_run(run, model, score="self-confidence" if detector == "ce" else "method",
                      flag="count" if detector == "ce" else "auto")
    if audit.clean is None:
        raise ConfigError(f"{run_dir}: the training table has no clean labels (clean_expression); the benchmark "
                          "measures detection against known flips")
    epochs, seconds = run_cost(run_dir)
    save_detection(path, detector, audit.score, audit.flagged, audit.suggested, audit.given, audit.clean, epochs,
                   seconds, f"{audit.score_kind}; {audit.flag_rule}")
    return load_detection(path)


def materialise_noisy_table(ce_run: Path, folder: Path, folds: int, seed: int):
    """The noisy training table CE was trained on, as a prepared directory with ``fold<k>.csv`` (training rows
    outside fold k) and ``held<k>.csv`` (fold k); fold membership stratified by the given label. Returns
    (given labels, clean labels, fold of every row)."""
    from data.schema import read_csv
    from engine.label_audit import write_prepared_dir

    fold_file = folder / "folds.npy"
    if fold_file.is_file() and (folder / "train.csv").is_file():
        frame = read_csv(folder / "train.csv")
        return (frame["expression"].to_numpy(np.int64), frame["clean_expression"].to_numpy(np.int64),
                np.load(fold_file))
    from engine.label_audit import load_audited_run

    run, _model, _record, _state = load_audited_run(ce_run)
    table = run.train_table
    if table.clean_labels is None:
        raise ConfigError(f"{table.csv_path}: no clean labels (clean_expression): detection cannot be measured")
    given = np.asarray(table.labels, np.int64)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(given), np.int64)
    for k in np.unique(given):
        rows = rng.permutation(np.flatnonzero(given == k))
        fold[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    tables = {"train.csv": table.frame, "test.csv": run.test_table.frame}
    for k in range(folds):
        tables[f"fold{k}.csv"] = table.frame.loc[fold != k].reset_index(drop=True)
        tables[f"held{k}.csv"] = table.frame.loc[fold == k].reset_index(drop=True)
    write_prepared_dir(folder, tables, table.image_root, run.cfg.num_classes, run.spec.class_names,
                       bool(table.allow_outside_root), {"source_run": str(ce_run.resolve())})
    np.save(fold_file, fold)
    return given, np.asarray(table.clean_labels, np.int64), fold


def out_of_fold_probabilities(args, folder: Path, cv: Path, fold, seed: int, train: bool):
    """CE trained on each fold's complement, run on the held-out fold: (N, C) probabilities, or None when a
    fold is not trained yet. Also returns (epochs, seconds) summed over the fold runs."""
    from engine.results import load_run_model, predict_split
    from engine.splits import load_split

    probs_file = cv / "pred_probs.npy"
    runs = [grid_run_dir(cv / f"fold{k}", "ce", "clean", seed) for k in range(args.folds)]
    for k, run in enumerate(runs):
        if train and not (run / "metrics.json").is_file():
            run_grid(["--protocol", "original", "--methods", "ce", "--seeds", str(seed), "--out", str(cv / f"fold{k}"),
                      *recipe_argv(args, ["ce"], folder, f"fold{k}.csv")])
    costs = [run_cost(r) for r in runs]
    epochs = sum(c[0] or 0 for c in costs)
    seconds = sum(c[1] or 0 for c in costs)
    if probs_file.is_file():
        return np.load(probs_file), epochs, seconds
    if not all((r / "metrics.json").is_file() for r in runs):
        return None, epochs, seconds
    probs = None
    for k, run in enumerate(runs):
        fold_run, model, _ = load_run_model(run, log=lambda *a, **kw: None)
        held = load_split(folder, f"held{k}.csv", fold_run.cfg.num_classes)
        fold_run.use_test_table(held)
        out = predict_split(model, fold_run.eval_dataset())
        if probs is None:
            probs = np.zeros((len(fold), out["probabilities"].shape[1]), np.float64)
        probs[np.flatnonzero(fold == k)[out["index"]]] = out["probabilities"]
    np.save(probs_file, probs)
    return probs, epochs, seconds


def cleanlab_detection(given, clean, probs, path: Path, epochs, seconds, folds: int):
    done = load_detection(path)
    if done is not None:
        return done
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ConfigError("benchmarks.label_issues compares with cleanlab: pip install cleanlab "
                          "(it is in requirements.txt)") from None
    flagged = find_label_issues(given, probs)
    score = 1.0 - get_label_quality_scores(given, probs, method="self_confidence")
    save_detection(path, "cleanlab", score, flagged, probs.argmax(axis=1), given, clean, epochs, seconds,
                   f"find_label_issues (prune_by_noise_rate) on {folds}-fold cross-validated CE probabilities; "
                   "score 1 - self-confidence")
    return load_detection(path)


def retrain_on_cleaned(args, noisy: Path, target: Path, arrays: dict, action: str, seed: int, train: bool) -> Path:
    """CE trained on the noisy table with a detector's flagged rows dropped / relabelled; its run directory."""
    from common.io import atomic_write_json
    from data.schema import read_csv
    from engine.label_audit import classes_without_rows, cleaned_frame, write_prepared_dir

    data = target / "data"
    if not (data / "train.csv").is_file() and not (target / NOT_TRAINABLE).is_file():
        frame = read_csv(noisy / "train.csv")
        meta = json.loads((noisy / "dataset.json").read_text())
        cleaned = cleaned_frame(frame, arrays["flagged"], arrays["suggested"], action)
        missing = classes_without_rows(cleaned, meta["class_names"])
        if missing:  # the detector flagged every row of a class: a result of the detector, not a failure
            atomic_write_json(target / NOT_TRAINABLE, {"classes_without_rows": missing, "rows": int(len(cleaned))})
            return target / "grid"
        write_prepared_dir(data, {"train.csv": cleaned, "test.csv": read_csv(noisy / "test.csv")}, meta["image_root"],
                           meta["num_classes"], meta["class_names"], bool(meta.get("allow_outside_root")),
                           {"action": action})
    if (target / NOT_TRAINABLE).is_file():
        return target / "grid"
    run = grid_run_dir(target / "grid", "ce", "clean", seed)
    if train and not (run / "metrics.json").is_file():
        run_grid(["--protocol", "original", "--methods", "ce", "--seeds", str(seed), "--out", str(target / "grid"),
                  *recipe_argv(args, ["ce"], data, "train.csv")])
    return run


# ----------------------------------------------------------------------------------------- one cell

def run_cell(args, setting: str, seed: int, train: bool, log=print) -> list[dict]:
    """Everything of one (setting, seed); result rows (what is finished so far)."""
    _kind, rate = SETTINGS[setting]
    base = Path(args.out) / setting
    level = f"{rate:g}"
    grid = base / "grid"
    methods = ["ce", *[d for d in args.detectors if d != "ce"]]
    rows: list[dict] = []
    if setting in args.reuse_grid:
        for name in link_reused_runs(args, args.reuse_grid[setting], setting, seed, methods, grid):
            log(f"{setting} seed {seed}: {name} read from {args.reuse_grid[setting]}")
    if train:
        run_grid(noise_grid_argv(args, setting, seed, methods, grid))
    ce_run = grid_run_dir(grid, "ce", level, seed)
    cell = base / f"s{seed}"
    detections = {}
    for detector in args.detectors:
        run = grid_run_dir(grid, detector, level, seed)
        if (run / "metrics.json").is_file():
            detections[detector] = audit_single_run(run, detector, cell / "audits" / detector)
    if not (ce_run / "metrics.json").is_file():
        return summary_rows(setting, seed, detections, {}, grid, level, cell, args)
    noisy = cell / "noisy"
    given, clean, fold = materialise_noisy_table(ce_run, noisy, args.folds, seed)
    for name, (_summary, arrays) in detections.items():
        if not (np.array_equal(arrays["given"], given) and np.array_equal(arrays["clean"], clean)):
            raise ConfigError(f"{cell / 'audits' / name}: its rows differ from the noisy table {noisy / 'train.csv'} "
                              "(a run of another table?); remove the stale files to recompute them")
    probs, epochs, seconds = out_of_fold_probabilities(args, noisy, cell / "cv", fold, seed, train)
    if probs is not None:
        detections["cleanlab"] = cleanlab_detection(given, clean, probs, cell / "audits" / "cleanlab", epochs, seconds,
                                                    args.folds)
    retrained = {}
    for name in args.clean_with:
        if name not in detections:
            continue
        for action in args.actions:
            run = retrain_on_cleaned(args, noisy, cell / "clean" / f"{name}_{action}", detections[name][1], action,
                                     seed, train)
            retrained[name, action] = run
    rows += summary_rows(setting, seed, detections, retrained, grid, level, cell, args)
    return rows


def summary_rows(setting, seed, detections, retrained, grid, level, cell, args) -> list[dict]:
    rows = []
    for name, (summary, _arrays) in detections.items():
        rows.append({"setting": setting, "seed": seed, "kind": "detection", "name": name,
                     **{k: summary.get(k) for k in ("auc", "precision", "recall", "f1", "num_flagged", "num_noisy",
                                                     "epochs", "seconds", "rule")}})
    for method, label in (("ce", "ce_noisy"), ("ldlva", "ldlva")):
        run = grid_run_dir(grid, method, level, seed)
        if (run / "metrics.json").is_file():
            epochs, seconds = run_cost(run)
            rows.append({"setting": setting, "seed": seed, "kind": "accuracy", "name": label,
                         "accuracy": accuracy_of(run), "epochs": epochs, "seconds": seconds})
    from benchmarks.grid import ERROR_FILE

    for (name, action), run in retrained.items():
        not_trainable = run.parent / NOT_TRAINABLE  # retrain_on_cleaned returned the cleaned table's grid folder
        if not_trainable.is_file():
            missing = json.loads(not_trainable.read_text())["classes_without_rows"]
            rows.append({"setting": setting, "seed": seed, "kind": "untrainable", "name": f"ce_on_{name}_{action}",
                         "rule": f"no {', '.join(missing)} row left"})
        elif (run / "metrics.json").is_file():
            epochs, seconds = run_cost(run)
            rows.append({"setting": setting, "seed": seed, "kind": "accuracy", "name": f"ce_on_{name}_{action}",
                         "accuracy": accuracy_of(run), "epochs": epochs, "seconds": seconds})
        elif (run / ERROR_FILE).is_file():  # e.g. a cleaned table left a class without any row
            lines = (run / ERROR_FILE).read_text(errors="replace").strip().splitlines()
            rows.append({"setting": setting, "seed": seed, "kind": "failed", "name": f"ce_on_{name}_{action}",
                         "rule": (lines[-1] if lines else "failed")[:300]})
    return rows


# ---------------------------------------------------------------------------------------- tables

def _cell(values, scale=100.0, digits=1, seeds=None) -> str:
    from benchmarks.grid import mean_std

    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    text = f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if n > 1 else "")
    return text + ("" if seeds is None or n == seeds else f" (n={n})")


def results_markdown(args, rows) -> str:
    """The tables of every cell in ``rows`` (this invocation's and the earlier ones' kept in OUT/results.csv)."""
    seed_list = sorted({int(r["seed"]) for r in rows}) or list(args.seeds)
    seeds = len(seed_list)
    settings = [s for s in SETTINGS if s in args.settings or any(r["setting"] == s for r in rows)]
    detectors = [d for d in DETECTORS if d in args.detectors or any(r["name"] == d for r in rows)]
    lines = ["# Finding label errors: the toolkit's per-sample scores vs cleanlab", "",
             f"Recipe: {args.dataset}" + (f" ({args.train_size} training faces)" if args.dataset == "synthetic" else "")
             + f", {args.backbone} @ {args.image_size} px, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr:g} "
             f"({args.lr_schedule}), weights {Path(args.weights).name}; cleanlab on {args.folds}-fold cross-validated CE."
             + (f" Every run also: {' '.join('--' + o.strip().lstrip('-').replace('=', ' ', 1) for o in args.grid_option)}."
                if args.grid_option else "")
             + (f" Method settings: {' '.join(args.method_set if args.method_set is not None else DEFAULT_METHOD_SETS)}.")
             + "".join(f" The {setting} single runs are read from `{folder}`." for setting, folder in
                       (args.reuse_grid.items() if isinstance(args.reuse_grid, dict) else ()))
             + f" Mean ± sample std over seeds {' '.join(map(str, seed_list))} (`(n=k)`: fewer seeds finished).", ""]
    for setting in settings:
        kind, rate = SETTINGS[setting]
        here = [r for r in rows if r["setting"] == setting]
        lines += [f"## {100 * rate:g} % {kind} noise", "",
                  "| detector | ROC-AUC (%) | precision (%) | recall (%) | F1 (%) | flagged / wrong | epochs | train time (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in ("cleanlab", *detectors):
            det = [r for r in here if r["kind"] == "detection" and r["name"] == name]
            if not det:
                continue
            flagged = _cell([r["num_flagged"] for r in det], 1.0, 0)
            noisy = _cell([r["num_noisy"] for r in det], 1.0, 0)
            lines.append(f"| {TITLES[name].format(folds=args.folds)} | {_cell([r['auc'] for r in det], seeds=seeds)} | "
                         f"{_cell([r['precision'] for r in det])} | {_cell([r['recall'] for r in det])} | "
                         f"{_cell([r['f1'] for r in det])} | {flagged} / {noisy} | "
                         f"{_cell([r['epochs'] for r in det], 1.0, 0)} | {_cell([r['seconds'] for r in det], 1.0, 0)} |")
        lines += ["", "| training | test accuracy (%) | epochs |", "|---|---:|---:|"]
        names = ["ce_noisy", "ldlva",
                 *[f"ce_on_{n}_{a}" for n in ("cleanlab", *detectors) for a in ("drop", "relabel")]]
        for name in names:
            acc = [r for r in here if r["kind"] == "accuracy" and r["name"] == name]
            untrainable = [r for r in here if r["kind"] == "untrainable" and r["name"] == name]
            if not acc and not untrainable:
                continue
            if name == "ce_noisy":
                title = "CE on the noisy table"
            elif name == "ldlva":
                title = "LDLVA on the noisy table"
            else:
                detector, action = name[len("ce_on_"):].rsplit("_", 1)
                title = f"CE on the table cleaned by {TITLES[detector].format(folds=args.folds)}, {action}"
            note = "; ".join(f"seed {r['seed']}: {r['rule']}, not trained" for r in untrainable)
            accuracy = _cell([r['accuracy'] for r in acc], seeds=seeds) if acc else "–"
            lines.append(f"| {title} | {accuracy}{f' ({note})' if note else ''} | "
                         f"{_cell([r['epochs'] for r in acc], 1.0, 0)} |")
        lines.append("")
    failed = [r for r in rows if r["kind"] == "failed"]
    if failed:
        lines += ["Not in the tables (failed; rerun to retry): " + "; ".join(
            f"{r['setting']} seed {r['seed']} {r['name']}: {r['rule']}" for r in failed), ""]
    # One entry per detector: a count rule's N differs per setting and seed (the tables give each run's count).
    rules = {f"{r['name']}: " + re.sub(r"the \d+ highest", "the N highest", r["rule"])
             for r in rows if r["kind"] == "detection" and r.get("rule")}
    lines += ["Flag rules: " + "; ".join(sorted(rules)), ""]
    return "\n".join(lines) + "\n"


def recipe_record(args) -> dict:
    """What every cell of OUT shares: the recipe group's options and ``--folds`` (the seeds, settings, detectors and
    cleaners may differ between invocations into one OUT; the recipe may not)."""
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    weights = str(Path(args.weights).resolve()) if Path(args.weights).is_file() else args.weights
    return {"dataset": args.dataset, "data_dir": data_dir, "num_classes": args.num_classes,
            "train_size": args.train_size, "backbone": args.backbone, "image_size": args.image_size, "pad": args.pad,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": args.lr_schedule,
            "weights": weights, "random_erasing": args.random_erasing,
            "method_set": list(args.method_set if args.method_set is not None else DEFAULT_METHOD_SETS),
            "grid_option": sorted(args.grid_option), "folds": args.folds}


def check_recipe(args) -> None:
    """Refuse an OUT whose results were made with another recipe (before anything trains); record it otherwise."""
    from common.io import atomic_write_json, read_json_object

    out = Path(args.out)
    path, current = out / RECIPE_FILE, recipe_record(args)
    if path.is_file():
        saved = read_json_object(path, ConfigError, "give another --out")
        changed = [k for k in current if saved.get(k) != current[k]]
        if changed:
            k = changed[0]
            raise ConfigError(f"{path}: the results in {out} were made with another recipe (--{k.replace('_', '-')} "
                              f"{saved.get(k)!r} there, {current[k]!r} now); give the same recipe or another --out")
    atomic_write_json(path, current)


_INT_COLUMNS = ("seed", "num_flagged", "num_noisy")
_TEXT_COLUMNS = ("setting", "kind", "name", "rule")


def read_results(path: Path) -> list[dict]:
    """The rows of a results.csv this benchmark wrote, typed as it wrote them (empty cells are None)."""
    import csv
    import math

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); remove it to start the tables again") from None
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != RESULT_COLUMNS:
        raise ConfigError(f"{path}, row 1: the columns are not this benchmark's ({', '.join(RESULT_COLUMNS)})")
    rows = []
    for number, raw in enumerate(reader, start=2):
        row = {}
        for key in RESULT_COLUMNS:
            value = raw.get(key)
            if value is None:
                raise ConfigError(f"{path}, row {number}: fewer cells than columns")
            if key in _TEXT_COLUMNS:
                row[key] = value
                continue
            if value == "":
                row[key] = None
                continue
            try:
                number_value = int(value) if key in _INT_COLUMNS else float(value)
            except ValueError:
                raise ConfigError(f"{path}, row {number}: {key} = {value!r} is not a number") from None
            if not math.isfinite(number_value):
                raise ConfigError(f"{path}, row {number}: {key} = {value!r} is not a finite number")
            row[key] = number_value
        if row["setting"] not in SETTINGS:
            raise ConfigError(f"{path}, row {number}: unknown setting {row['setting']!r}")
        rows.append(row)
    return rows


def write_results(args, rows) -> None:
    """OUT/results.csv and results.md: ``rows`` (this invocation's cells) and the rows of every other cell already
    in OUT/results.csv, read again now (another invocation may have written since this one started)."""
    import csv
    import io

    from common.io import atomic_write_text

    out = Path(args.out)
    mine = {(s, int(seed)) for s in args.settings for seed in args.seeds}
    if (out / "results.csv").is_file():
        rows = [r for r in read_results(out / "results.csv") if (r["setting"], r["seed"]) not in mine] + list(rows)
    rows = sorted(rows, key=lambda r: (list(SETTINGS).index(r["setting"]), int(r["seed"])))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in RESULT_COLUMNS})
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_text(out / "results.md", results_markdown(args, rows))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.cli import quiet_tensorflow

    if args.dataset != "synthetic" and not args.data_dir:
        raise ConfigError(f"--dataset {args.dataset} needs --data-dir (a prepared directory with clean_expression)")
    if not Path(args.weights).is_file() and ("/" in args.weights or Path(args.weights).suffix):
        raise ConfigError(f"--weights {args.weights}: not found")
    for item in args.grid_option:
        if not item.partition("=")[0].strip().lstrip("-"):
            raise ConfigError(f"--grid-option expects OPTION=VALUE (e.g. input-norm=dlib), got '{item}'")
    if args.folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {args.folds}")
    args.seeds = list(dict.fromkeys(args.seeds))
    args.reuse_grid = parse_reuse_grids(args.reuse_grid, args.settings)
    quiet_tensorflow()
    from benchmarks.grid import check_benchmark_dir, mark_benchmark_dir

    out = Path(args.out)
    check_benchmark_dir(out, KIND, legacy=lambda names: False)
    mark_benchmark_dir(out, KIND)
    check_recipe(args)
    rows: list[dict] = []
    for seed in args.seeds:  # seed-major: every setting gets seed 0 first
        for setting in args.settings:
            start = time.perf_counter()
            rows = [r for r in rows if not (r["setting"] == setting and r["seed"] == seed)]
            rows += run_cell(args, setting, seed, train=not args.report_only)
            write_results(args, rows)
            if not args.report_only:
                print(f"[{time.strftime('%H:%M')}] seed {seed} {setting}: {time.perf_counter() - start:.0f} s", flush=True)
    write_results(args, rows)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
