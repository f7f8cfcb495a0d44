"""The benchmark grid behind ``benchmark.py``: cells (method × level × seed), training, tables.

See ``benchmark.py`` for the protocols, resuming and the output files. Each cell is one ordinary
training run (:func:`engine.fit.train`) whose :class:`~engine.config.RunConfig` holds every
grid-wide option the user set (any ``train.py`` option) plus the cell's method, seed, level and preset.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, FERError
from models.registry import method_title

PROTOCOLS = ("noise", "imbalance", "original", "inconsistent", "k-sweep")
RUNS_CSV_COLUMNS = ("method", "level", "seed", "accuracy", "mean_class_accuracy", "macro_f1", "ece", "nll",
                    "noise_detection_auc", "mean_last_5_accuracy", "best_epoch_accuracy", "run_dir", "seconds")
METRIC_KEYS = ("accuracy", "mean_class_accuracy", "macro_f1", "ece", "nll", "noise_detection_auc",
               "mean_last_5_accuracy", "best_epoch_accuracy")
CELL_FILE = "benchmark_cell.json"  # wall-clock seconds of a finished cell (beside metrics.json)
ERROR_FILE = "benchmark_error.txt"


@dataclass(frozen=True)
class Cell:
    method: str
    level: str  # column label as written in run names and runs.csv ("0.1", "50", "clean", "joint")
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


# ------------------------------------------------------------------------------------------ the grid

def level_label(protocol: str, value: float | None) -> str:
    if protocol == "original":
        return "clean"
    if protocol == "inconsistent":
        return "joint"
    return f"{value:g}"


def column_title(protocol: str, level: str) -> str:
    if protocol == "noise":
        return f"{100 * float(level):g}%"
    if protocol == "imbalance":
        return f"IF {level}"
    if protocol == "k-sweep":
        return f"K = {level}"
    return level


def parse_method_sets(items) -> dict[str, dict[str, str]]:
    """``["ldlva:gamma=0.1", ...]`` → ``{"ldlva": {"gamma": "0.1"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        method, sep, setting = item.partition(":")
        key, eq, value = setting.partition("=")
        if not sep or not eq or not method or not key.strip():
            raise ConfigError(f"--method-set expects METHOD:KEY=VALUE (e.g. ldlva:gamma=0.1), got '{item}'")
        out.setdefault(method.strip(), {})[key.strip()] = value.strip()
    return out


def parse_noise_files(items) -> dict[str, str]:
    """``["0.1=noise01.txt", ...]`` → ``{"0.1": "noise01.txt"}`` (keys as the level labels)."""
    out = {}
    for item in items or []:
        level, sep, path = item.partition("=")
        try:
            key = f"{float(level):g}"
        except ValueError:
            key = None
        if not sep or not path or key is None:
            raise ConfigError(f"--noise-files expects LEVEL=FILE (e.g. 0.1=noise01.txt), got '{item}'")
        if not Path(path).is_file():
            raise ConfigError(f"--noise-files {item}: {path} not found")
        out[key] = path
    return out


def parse_data_dirs(items) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--data-dirs expects NAME=DIR (e.g. rafdb=data/rafdb), got '{item}'")
        if name in out:
            raise ConfigError(f"--data-dirs: source '{name}' given twice")
        out[name] = Path(folder)
    return out


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def grid_levels(args) -> list[float | None]:
    if args.protocol in ("original", "inconsistent"):
        if args.levels:
            raise ConfigError(f"--levels does not apply to --protocol {args.protocol}")
        return [None]
    if not args.levels:
        example = {"noise": "0.1 0.2 0.3", "imbalance": "50 100 150", "k-sweep": "2 4 8 16 32"}[args.protocol]
        raise ConfigError(f"--protocol {args.protocol} needs --levels (e.g. {example})")
    for value in args.levels:
        if args.protocol == "k-sweep" and (value < 1 or value != int(value)):
            raise ConfigError(f"--levels: a neighbour count K must be a positive integer, got {value:g}")
        if args.protocol == "noise" and not 0.0 <= value < 1.0:
            raise ConfigError(f"--levels: a noise rate must be in [0, 1), got {value:g}")
        if args.protocol == "imbalance" and value < 1.0:
            raise ConfigError(f"--levels: an imbalance factor must be >= 1, got {value:g}")
    by_label: dict[str, float] = {}  # a level's label names its run folders: one cell per label
    for value in args.levels:
        label = level_label(args.protocol, value)
        if label in by_label and by_label[label] != value:
            raise ConfigError(f"--levels: {by_label[label]!r} and {value!r} would share the run folders of level "
                              f"'{label}'; give levels that differ in their first 6 significant digits")
        by_label.setdefault(label, value)
    return list(by_label.values())


# Grid-wide defaults that differ from train.py's (a grid writes no SavedModels or TensorBoard logs by default).
GRID_RUN_DEFAULTS = {"export": False, "tensorboard": False, "verbose": 0}


def base_config(args, method: str, seed: int, out: Path, level: float | None, method_sets: dict):
    """The RunConfig of one cell: the grid-wide options the user set, plus what makes this cell differ."""
    from common.cli import dataclass_kwargs
    from engine.config import GRID_FIELDS, RunConfig

    # The protocol sets the noise / imbalance fields of each cell.
    options = dataclass_kwargs(args, RunConfig, exclude=(*GRID_FIELDS, "noise", "noise_rate", "imbalance_factor"))
    options = {**GRID_RUN_DEFAULTS, **options}
    cfg = RunConfig(**options, method=method, seed=seed, noise_seed=seed, run=str(out),
                    preset=(args.preset or {}).get(method), set=dict(method_sets.get(method, {})))
    noise_files = parse_noise_files(getattr(args, "noise_files", None))
    if args.protocol == "noise" and noise_files:
        # The papers' released flips (EAC's RAF-DB noise01/02/03.txt) instead of our own draws.
        cfg = dataclasses.replace(cfg, noise_file=noise_files[f"{level:g}"]) if level else cfg
    elif args.protocol == "noise" and level:
        cfg = dataclasses.replace(cfg, noise=args.noise, noise_rate=float(level))
    elif args.protocol == "imbalance" and level != 1.0:
        cfg = dataclasses.replace(cfg, imbalance_factor=float(level))
    elif args.protocol == "k-sweep":
        # K of every method that has neighbours (LDLVA: VA neighbours, table built and cached per K; LA-Net:
        # in-batch kNN); the labels carry the grid's --noise at --noise-rate.
        cfg = dataclasses.replace(cfg, set={**cfg.set, "num_neighbors": str(int(level))})
        if args.noise_rate:
            cfg = dataclasses.replace(cfg, noise=args.noise, noise_rate=float(args.noise_rate))
    return cfg


def check_methods(methods, protocol: str | None = None) -> list[str]:
    """The grid's methods, each importable (a registered method that fails to import is an error)."""
    from models.registry import METHODS, get_method

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    ordered = list(dict.fromkeys(methods))
    for method in ordered:
        _, config_cls = get_method(method)
        if protocol == "k-sweep" and "num_neighbors" not in {f.name for f in dataclasses.fields(config_cls)}:
            raise ConfigError(f"--protocol k-sweep varies num_neighbors; method '{method}' has none")
    return ordered


# --------------------------------------------------------------------------------------------- CLI

# Set per cell by the protocol, or grid-wide with their own flags below.
_OWN_FIELDS = ("noise", "noise_rate", "imbalance_factor", "export", "tensorboard", "verbose")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    from common.cli import ArgumentParser, add_dataclass_options, finite_float, fraction, nonnegative_int
    from engine.config import GRID_FIELDS, RunConfig
    from models.registry import method_names

    p = ArgumentParser(prog="benchmark.py", description=description or __doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--levels", type=finite_float, nargs="*", default=[],
                   help="noise rates (noise) or imbalance factors (imbalance)")
    p.add_argument("--methods", nargs="+", default=["ce", "ldlva"], help=" | ".join(method_names()))
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--out", help="benchmark directory (default benchmark_runs/<protocol>)")
    p.add_argument("--noise", "--noise-kind", dest="noise", default="symmetric",
                   choices=["symmetric", "asymmetric"], help="noise protocol: kind of flips")
    p.add_argument("--noise-rate", type=fraction, default=0.0,
                   help="k-sweep protocol: label noise of every cell (default 0: clean)")
    p.add_argument("--noise-files", nargs="+", metavar="LEVEL=FILE",
                   help="noise protocol: released noisy-label files instead of our own flips, one per level, e.g. "
                        "0.1=noise01.txt 0.2=noise02.txt 0.3=noise03.txt (EAC's RAF-DB files)")
    p.add_argument("--method-set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="method config override for one method (repeatable), e.g. ldlva:gamma=0.1")
    p.add_argument("--method-preset", action="append", default=[], metavar="METHOD:PRESET",
                   help="use a method preset for one method (repeatable)")
    p.add_argument("--data-dirs", nargs="+", default=[], metavar="NAME=DIR",
                   help="inconsistent protocol: prepared directories, e.g. rafdb=DIR affectnet=DIR sfew=DIR")
    p.add_argument("--train-sources", nargs="+", metavar="NAME",
                   help="inconsistent protocol: sources trained on jointly (default: rafdb affectnet)")
    groups: dict = {}
    add_dataclass_options(p, RunConfig, exclude=(*GRID_FIELDS, *_OWN_FIELDS), groups=groups)
    g = groups["run"]
    g.add_argument("--export", dest="export", action="store_const", const=True, default=None,
                   help="also write each run's SavedModel")
    g.add_argument("--tensorboard", dest="tensorboard", action="store_const", const=True, default=None,
                   help="also write each run's TensorBoard logs")
    g.add_argument("--verbose", type=nonnegative_int, default=None, choices=[0, 1, 2], help="Keras progress output per run")
    g = p.add_argument_group("grid control")
    g.add_argument("--lock", help="flock this file around each cell's training (e.g. /tmp/cpu.lock)")
    g.add_argument("--max-cells", type=nonnegative_int, help="train at most N cells this invocation, then write the tables")
    g.add_argument("--report-only", action="store_true", help="train nothing; rebuild results.md/runs.csv")
    g.add_argument("--force-stale", action="store_true",
                   help="retrain finished cells whose configuration differs from this command")
    return p



# ------------------------------------------------------------------------------------ one cell

@contextlib.contextmanager
def cpu_lock(path):
    """Exclusive flock on ``path`` for the duration (no-op when ``path`` is None)."""
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stale_reason(run_dir: Path, cfg) -> str | None:
    """Why a finished run dir does not match ``cfg`` (None when it does)."""
    from engine.config import compare_configs, config_record, resolve

    try:
        old = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "its config.json is missing or unreadable"
    resolved, _spec, _cls, method_cfg = resolve(cfg)
    new = config_record(resolved, method_cfg, old.get("data", {}))
    new["data"] = old.get("data", {})  # data facts need the data loaded; the run/method settings decide
    diffs = compare_configs(old, new)
    return "; ".join(diffs[:4]) + (" …" if len(diffs) > 4 else "") if diffs else None


def logged_seconds(run_dir: Path) -> float | None:
    """Sum of the ``epoch_seconds`` column of RUN/log.csv (training time; None without a log)."""
    import pandas as pd

    path = run_dir / "log.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except Exception:  # noqa: BLE001 - an unreadable log only loses the timing
        return None
    if "epoch_seconds" not in frame.columns:
        return None
    return float(frame["epoch_seconds"].fillna(0).sum())


def train_cell(cfg, run_dir: Path, lock, log, tags: dict | None = None, record_extras: dict | None = None):
    """Train (or resume) one cell; returns ``(run, model)`` (the model is used for extra test tables).

    ``tags`` label the cell's MLflow run (``--mlflow``); ``record_extras`` go into its config.json (e.g. the
    ``replayed_from`` of ``benchmark.py --config``)."""
    import gc

    import keras

    from engine.fit import train
    from engine.run import Run

    with contextlib.suppress(FileNotFoundError):
        (run_dir / ERROR_FILE).unlink()  # from an earlier failed attempt; would block a fresh start
    resume = (run_dir / "config.json").is_file()
    prior = (logged_seconds(run_dir) or 0.0) if resume else 0.0
    cfg = dataclasses.replace(cfg, resume=resume)
    log(f"{'resuming' if resume else 'training'} {run_dir.name}")
    keras.backend.clear_session()
    gc.collect()
    with cpu_lock(lock):
        start = time.perf_counter()
        run = Run(cfg, log=log if cfg.verbose else (lambda *a, **k: None))
        run.tracking_tags.update(tags or {})
        run.record_extras.update(record_extras or {})
        model = train(run).model
        seconds = prior + time.perf_counter() - start
    from common.io import atomic_write_json

    atomic_write_json(run_dir / CELL_FILE, {"seconds": round(seconds, 2), "resumed": resume})
    return run, model


def cell_seconds(run_dir: Path):
    path = run_dir / CELL_FILE
    if path.is_file():
        try:
            return float(json.loads(path.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return logged_seconds(run_dir)


def find_metric(report: dict, key: str):
    """``report[key]``, or ``report[...][key]`` one level down (methods nest their final_metrics)."""
    if report.get(key) is not None:
        return report[key]
    for value in report.values():
        if isinstance(value, dict) and value.get(key) is not None:
            return value[key]
    return None


def csv_row(cell: Cell, report: dict, seconds, level: str | None = None) -> dict:
    row = {"method": cell.method, "level": level or cell.level, "seed": cell.seed, "run_dir": str(cell.run_dir),
           "seconds": None if seconds is None else round(float(seconds), 2)}
    for key in METRIC_KEYS:
        value = find_metric(report, key)
        row[key] = None if value is None else float(value)
    return row


# ------------------------------------------------------------------------------- inconsistent labels

def join_sources(args, out: Path, log) -> tuple[Path, dict[str, tuple[Path, str]]]:
    """Join the training sources into OUT/joined (once) and list every source's test table.

    Returns (joined dir, {source: (data dir, table name)}).
    """
    from preprocess.join import join

    sources = parse_data_dirs(args.data_dirs)
    if not sources:
        raise ConfigError("--protocol inconsistent needs --data-dirs NAME=DIR ... "
                          "(e.g. rafdb=DIR affectnet=DIR sfew=DIR)")
    train_sources = args.train_sources or [n for n in ("rafdb", "affectnet") if n in sources]
    missing = [n for n in train_sources if n not in sources]
    if missing or len(train_sources) < 2:
        unknown = f"; unknown: {', '.join(missing)}" if missing else ""
        raise ConfigError(f"--train-sources {' '.join(train_sources) or '(none)'}: need at least two of the "
                          f"--data-dirs names ({', '.join(sources)}){unknown}")
    for name, folder in sources.items():
        if not (folder / "test.csv").is_file():
            raise ConfigError(f"--data-dirs {name}={folder}: no test.csv there (not a prepared dataset directory)")
    joined = out / "joined"
    if not (joined / "train.csv").is_file():
        log(f"joining {', '.join(train_sources)} into {joined}")
        summary = join(argparse.Namespace(source=[f"{n}={sources[n]}" for n in train_sources], out=joined,
                                          classes=7, link="hardlink", strict=True, force=False))
        log(summary)
    tests = {}
    for name, folder in sources.items():
        if name in train_sources and (joined / f"test_{name}.csv").is_file():
            tests[name] = (joined, f"test_{name}.csv")
        else:
            tests[name] = (folder, "test.csv")
    return joined, tests


def evaluate_sources(cell: Cell, trained, tests: dict, log) -> dict[str, dict]:
    """Per-source test reports of a finished cell (cached as RUN/metrics_<source>.json); ``trained`` is the
    ``(run, model)`` just trained, or None to rebuild them from the run directory."""
    from common.io import atomic_write_json
    from engine.results import evaluate_model, load_run_model
    from engine.splits import load_split

    reports = {}
    for name, (folder, table_name) in tests.items():
        path = cell.run_dir / f"metrics_{name}.json"
        if path.is_file():
            reports[name] = json.loads(path.read_text())
            continue
        if trained is None:
            trained = load_run_model(cell.run_dir, log=lambda *a, **k: None)[:2]
        run, model = trained
        table = load_split(Path(folder), table_name, run.cfg.num_classes,
                           allow_outside_root=run.cfg.allow_outside_root)
        run.use_test_table(table)
        report = evaluate_model(model, run.eval_dataset(), table, run.spec.class_names)
        report.update({"source": name, "table": str(table.csv_path)})
        atomic_write_json(path, report)
        log(f"  {cell.name} on {name}: accuracy {100 * report['accuracy']:.2f}%")
        reports[name] = report
    return reports


# ------------------------------------------------------------------------------------------ tables

def mean_std(values) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std, len(vals)


def metric_table(rows, methods, levels, key: str, protocol: str, seeds: int, scale: float = 100.0) -> list[str] | None:
    """Markdown rows: methods × levels of mean ± std (sample std, ddof=1); best mean per column in bold."""
    stats = {}
    for method in methods:
        for level in levels:
            stats[method, level] = mean_std([r.get(key) for r in rows if r["method"] == method and r["level"] == level])
    if all(n == 0 for _, _, n in stats.values()):
        return None
    best = {}
    for level in levels:
        means = [stats[m, level][0] for m in methods if stats[m, level][2]]
        best[level] = max(means) if means and key != "ece" else None
    lines = ["| Method | " + " | ".join(column_title(protocol, lv) for lv in levels) + " |",
             "|---|" + "---:|" * len(levels)]
    for method in methods:
        cells = []
        for level in levels:
            mean, std, n = stats[method, level]
            if n == 0:
                cells.append("–")
                continue
            text = f"{scale * mean:.2f} ± {scale * std:.2f}"
            if len([m for m in methods if stats[m, level][2]]) > 1 and best[level] is not None and mean == best[level]:
                text = f"**{text}**"
            if n < seeds:
                text += f" (n={n})"
            cells.append(text)
        lines.append(f"| {method_title(method)} | " + " | ".join(cells) + " |")
    return lines


def results_markdown(args, rows, methods, levels, failed: dict, stale: dict, settings: str) -> str:
    title = {"noise": f"{args.noise} label noise", "imbalance": "class imbalance",
             "original": "original labels", "inconsistent": "inconsistent labels (joint training)",
             "k-sweep": f"neighbour count K ({args.noise} noise at {100 * args.noise_rate:g}%)"}[args.protocol]
    done = len({(r['method'], r['seed'], r['run_dir']) for r in rows})
    lines = [f"# Benchmark: {title}", "",
             f"{settings}  ",
             f"Mean ± sample std over seeds {' '.join(map(str, args.seeds))} ({done} run(s) finished; `(n=k)` marks a cell with "
             f"fewer seeds so far). Whole test split; best mean per column in bold.", ""]
    sections = [("Accuracy (%)", "accuracy", 100.0), ("Mean class accuracy (%)", "mean_class_accuracy", 100.0),
                ("Macro F1 (%)", "macro_f1", 100.0),
                ("Noise-detection ROC-AUC (%) of the method's per-sample uncertainty vs flipped labels",
                 "noise_detection_auc", 100.0),
                ("Accuracy (%), mean of the last 5 epochs (the official SCN / EAC report; needs --test-every 1)",
                 "mean_last_5_accuracy", 100.0),
                ("Accuracy (%) at the best epoch — selected on the test set, as the official LA-Net / NLA code "
                 "reports: optimistic (needs --test-every 1)", "best_epoch_accuracy", 100.0)]
    for heading, key, scale in sections:
        table = metric_table(rows, methods, levels, key, args.protocol, len(args.seeds), scale)
        if table is None:
            continue
        lines += [f"## {heading}", "", *table, ""]
    if failed or stale:
        lines += ["## Not in the table", ""]
        lines += [f"- {name}: failed ({why})" for name, why in failed.items()]
        lines += [f"- {name}: stale, its configuration differs ({why}); rerun with --force-stale" for name, why in
                  stale.items()]
        lines.append("")
    lines.append("Every run: `runs.csv`; run directories: `runs/<method>_<level>_s<seed>`.")
    return "\n".join(lines) + "\n"


def write_runs_csv(path: Path, rows) -> None:
    import io

    from common.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RUNS_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in RUNS_CSV_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def _check_configs(cells) -> None:
    """Resolve one cell per method now, so a typo in --method-set fails before hours of training."""
    from engine.config import resolve

    seen = set()
    for cell, cfg in cells:
        if cell.method not in seen:
            seen.add(cell.method)
            resolve(cfg)


def _settings_line(args, cells) -> str:
    parts = [f"dataset `{args.dataset or 'synthetic'}`" + (f" ({args.data_dir})" if args.data_dir else "")]
    if cells:
        from engine.config import resolve

        try:
            cfg = resolve(cells[0][1])[0]
            parts.append(f"backbone {cfg.backbone} @ {cfg.image_size} px, {cfg.epochs} epochs, batch "
                         f"{cfg.batch_size}, lr {cfg.lr:g} ({cfg.optimizer}, {cfg.lr_schedule} schedule)")
        except FERError:
            pass
    if getattr(args, "config_source", None):
        parts.append(f"common options from `{args.config_source.path}` (sha256 {args.config_source.sha256[:12]})")
    if args.protocol == "noise":
        parts.append(f"{args.noise} noise on the training labels (noise seed = run seed)")
    if args.method_set:
        parts.append("overrides " + ", ".join(f"`{s}`" for s in args.method_set))
    if getattr(args, "method_preset", None):
        parts.append("presets " + ", ".join(f"`{s}`" for s in args.method_preset))
    return "; ".join(parts)




BENCHMARK_KIND = "benchmark"
# What a benchmark directory holds; one with nothing else (and runs/) predates the output marker.
BENCHMARK_ENTRIES = ("runs", "results.md", "runs.csv", "joined")


def _grid_layout(names: set) -> bool:
    return "runs" in names and names <= set(BENCHMARK_ENTRIES)


def check_benchmark_dir(out: Path, kind: str = BENCHMARK_KIND, legacy=_grid_layout) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not this kind of benchmark directory:
    its tables (results.md, runs.csv, table.md ...) are rewritten there, and a user's own files of those
    names must not be replaced. A folder whose entries ``legacy(names)`` recognises was written by this
    benchmark before the output marker existed."""
    from common.io import OUTPUT_MARKER, output_kind

    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ConfigError(f"--out {out} exists and is not a directory; choose another --out (nothing was changed)")
    entries = {p.name for p in out.iterdir()} - {OUTPUT_MARKER}
    found = output_kind(out)
    if not entries or found == kind or (found is None and legacy(entries)):
        return
    what = "a non-empty folder this toolkit did not write" if found is None else f"a {found} written by this toolkit"
    raise ConfigError(f"--out {out} is {what}, not a {kind} directory; choose another --out (nothing was changed)")


def mark_benchmark_dir(out: Path, kind: str = BENCHMARK_KIND) -> None:
    """Create ``out`` with the output marker of ``kind`` (so a later run may write into it again)."""
    from common.io import OUTPUT_MARKER, WRITER

    out.mkdir(parents=True, exist_ok=True)
    marker = out / OUTPUT_MARKER
    if not marker.exists():
        marker.write_text(json.dumps({"written_by": WRITER, "kind": kind}))


def run_grid(args, log=print) -> int:
    """Train (or resume) every cell of the grid ``args`` describes and write the tables; exit code."""
    from common.io import atomic_write_text


    if not args.seeds or any(s < 0 for s in args.seeds):
        raise ConfigError(f"--seeds takes one or more seeds >= 0 (e.g. --seeds 0 1 2), got {args.seeds}")
    args.seeds = list(dict.fromkeys(args.seeds))
    levels = grid_levels(args)
    method_sets = parse_method_sets(args.method_set)
    presets = {}
    for item in args.method_preset:
        method, sep, name = item.partition(":")
        if not sep or not name:
            raise ConfigError(f"--method-preset expects METHOD:PRESET, got '{item}'")
        presets[method] = name
    args.preset = presets
    out = Path(args.out or f"benchmark_runs/{args.protocol}")
    methods = check_methods(args.methods, args.protocol)
    noise_files = parse_noise_files(getattr(args, "noise_files", None))
    if noise_files and (args.protocol != "noise" or sorted(noise_files) != sorted(f"{v:g}" for v in levels if v)):
        raise ConfigError("--noise-files needs --protocol noise and one file per non-zero level of --levels "
                          f"(levels {' '.join(f'{v:g}' for v in levels)}; files for {' '.join(sorted(noise_files))})")
    if args.protocol != "k-sweep" and getattr(args, "noise_rate", 0):
        raise ConfigError("--noise-rate applies to --protocol k-sweep (the noise protocol's rates are its --levels)")
    unused = sorted(set(method_sets) - set(args.methods))
    if unused:
        raise ConfigError(f"--method-set for {', '.join(unused)}, which is not in --methods")

    check_benchmark_dir(out)
    tests = {}
    if args.protocol == "inconsistent":
        joined, tests = join_sources(args, out, log)
        args.dataset, args.data_dir, args.num_classes = "csv", str(joined), 7
    mark_benchmark_dir(out)
    (out / "runs").mkdir(exist_ok=True)

    cells = []
    # Seed-major order: after the first pass every method × level has one run, so a grid stopped
    # early still gives a complete (n=1) table.
    for seed in args.seeds:
        for value in levels:
            for method in methods:
                label = level_label(args.protocol, value)
                cfg = base_config(args, method, seed, out / "runs" / f"{method}_{label}_s{seed}", value, method_sets)
                cells.append((Cell(method, label, seed, Path(cfg.run)), cfg))
    _check_configs(cells)
    settings = _settings_line(args, cells)
    columns = list(tests) if args.protocol == "inconsistent" else [level_label(args.protocol, v) for v in levels]

    rows, failed, stale = [], {}, {}
    trained = 0

    def write_tables():
        write_runs_csv(out / "runs.csv", rows)
        atomic_write_text(out / "results.md",
                          results_markdown(args, rows, methods, columns, failed, stale, settings))

    for index, (cell, cfg) in enumerate(cells, 1):
        just_trained = None  # (run, model) of a cell trained in this invocation
        finished = (cell.run_dir / "metrics.json").is_file()
        try:
            if finished:
                reason = stale_reason(cell.run_dir, cfg)
                if reason and args.force_stale and not args.report_only:
                    import shutil

                    log(f"[{index}/{len(cells)}] {cell.name}: stale ({reason}); retraining")
                    shutil.rmtree(cell.run_dir)
                    finished = False
                elif reason:
                    stale[cell.name] = reason
                    log(f"[{index}/{len(cells)}] {cell.name}: finished with other settings ({reason}); left out of "
                        "the table (--force-stale retrains it)")
                    continue
            if not finished:
                if args.report_only or (args.max_cells is not None and trained >= args.max_cells):
                    continue
                log(f"[{index}/{len(cells)}] {cell.name}")
                tags = {"fer.benchmark": str(out), "fer.protocol": args.protocol, "fer.cell": cell.name,
                        "fer.method": cell.method, "fer.level": cell.level, "fer.seed": str(cell.seed)}
                source = getattr(args, "config_source", None)
                just_trained = train_cell(cfg, cell.run_dir, args.lock, log, tags=tags,
                                     record_extras={"replayed_from": source.provenance()} if source else None)
                trained += 1
            report = json.loads((cell.run_dir / "metrics.json").read_text())
            seconds = cell_seconds(cell.run_dir)
            if args.protocol == "inconsistent":
                with cpu_lock(args.lock if just_trained is None else None):
                    per_source = evaluate_sources(cell, just_trained, tests, log)
                rows += [csv_row(cell, rep, seconds, level=name) for name, rep in per_source.items()]
            else:
                rows.append(csv_row(cell, report, seconds))
                if just_trained is not None:
                    row = rows[-1]
                    log(f"  accuracy {100 * row['accuracy']:.2f}%, mean class accuracy "
                        f"{100 * row['mean_class_accuracy']:.2f}% ({row['seconds']:.0f} s)")
        except KeyboardInterrupt:
            write_tables()
            raise
        except Exception as exc:  # noqa: BLE001 - one broken cell must not stop the grid
            why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FERError) else str(exc)
            failed[cell.name] = why.splitlines()[0][:300]
            log(f"  FAILED {cell.name}: {failed[cell.name]}")
            with contextlib.suppress(OSError):
                cell.run_dir.mkdir(parents=True, exist_ok=True)
                (cell.run_dir / ERROR_FILE).write_text(traceback.format_exc())
        finally:
            del just_trained
        write_tables()
    write_tables()
    pending = sum(1 for c, _ in cells if not (c.run_dir / "metrics.json").is_file()) - len(failed)
    log(f"\n{out / 'results.md'}:\n")
    log((out / "results.md").read_text())
    if pending > 0:
        log(f"{pending} cell(s) not trained yet; rerun the same command to continue")
    return 1 if failed else 0


