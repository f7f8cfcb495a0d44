"""Crash campaign: SIGKILL the toolkit's commands at seeded random moments and check what a rerun gives.

Training (``train.py``), per method: a tiny deterministic run (small_cnn, 32 px, 48 synthetic training
images, 3 epochs of 6 steps, a test evaluation and log row every epoch, a checkpoint every 4 steps and at
every epoch end, the SavedModel export at the end) is trained once uninterrupted as the reference. Then
chains of segments: the run is started, SIGKILLed at a chosen moment, started again with ``--resume`` (or
afresh when the kill came before ``config.json`` existed, as a user would), killed again, … and finally
resumed to the end. After every kill the run directory must hold nothing half-written under a final name
(``ckpt/latest`` names a checkpoint whose files read back, ``config.json``/``metrics.json`` parse,
``log.csv`` parses, ``saved_model/`` is complete). At the end of a chain:

* the final checkpoint equals the reference's array for array (every model variable, per-sample state and
  optimizer slot in ``model.weights.h5``) and its ``state.json`` apart from the wall-clock ``time``;
* ``metrics.json`` equals the reference's apart from ``timings_s`` and ``run_dir``;
* ``log.csv`` lists each epoch once, with the reference's test-set columns (``test_*``; the training means
  of an epoch cut by a kill cover only the steps after the resume, so they are not compared);
* the per-sample ``uncertainty/`` tables equal the reference's byte for byte;
* the export's variables equal the reference's byte for byte, and ``fer_export.json`` apart from
  ``provenance.run_dir`` and the timings inside ``provenance.metrics``;
* no temporary file or folder is left anywhere in the run directory.

Tools, on the reference run of the first method: ``export.py`` (killed, then rerun, with ``--force`` where an
export exists; a previous export in place must stay whole at every instant), ``python -m preprocess.knn``
(``.npz`` and ``--export-release-csv``) and ``predict.py --csv`` (a folder of test images, ``--no-detect``;
the rerun resumes the CSV): the rerun's files equal an uninterrupted run's, and nothing half-written remains.

**Kill moments.** Every command runs under a small tracer (``python -m benchmarks.chaos child``: it patches the
toolkit's functions in that process only, then runs the script exactly as ``python SCRIPT`` would) that
appends one line per event to a trace file: ``step-begin``/``step-end`` (Keras batch callbacks),
``ckpt-begin``, ``ckpt-serialise``, ``ckpt-write-weights``/``-state``/``-latest``, ``ckpt-prune``,
``ckpt-end``, ``validate``, ``epoch-end``, ``epoch-log``, ``uncertainty-log``, ``stage:<name>`` (each timed
stage of ``engine.fit.train``: load_data, build, resume, evaluate…), ``metrics-write``, ``export``,
``export-savedmodel``, ``rename:<file>`` (every ``os.replace``: a temporary becoming final), ``write:<file>``
(every atomic write), ``fsync`` (``predict.py`` durably appending a batch) and ``exit``. A kill target is a
category drawn at random (step, checkpoint write, validation, epoch-end logging, finish, export, or a random
time during start-up), then one event of that category in the reference's trace and a delay drawn inside that
event's duration; the monitor SIGKILLs the process that long after the event (or the first event past it)
appears. A share of targets *pauses* the process at the event (``--pause``) so that the kill lands exactly
between a temporary being complete and its rename. Each kill is classified by the last event the killed
process traced (the trace is written unbuffered, so it is exact).

Usage::

    python -m benchmarks.chaos --out DIR [--kills 104] [--methods ce,ldlva,...] [--seed 0] [--chain 4]
                               [--tool-kills 6] [--no-export] [--jobs 1]

Writes ``DIR/chaos.json`` (every kill: method, target, the point hit, the checks) and prints the summary.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, TRAIN_SIZE, TEST_SIZE, BATCH = 3, 48, 24, 8
BACKBONE = "small_cnn"  # the campaign's network (the test suite's short campaign takes tiny_cnn)
METHOD_ARGS = {"ldlva": ["--set", "num_neighbors=2", "--set", "neighbor_source=bank"]}
PAUSE_SECONDS = 5.0  # how long a paused child waits at its event (the kill comes within a few milliseconds)
SEGMENT_TIMEOUT_S = 600.0
CATEGORY_WEIGHTS = {"step": 3, "checkpoint": 3, "validation": 1, "epoch-end logging": 2, "finish": 1, "export": 2,
                    "start-up": 1}
TEMPORARY_MARKERS = (".tmp", ".old-")


# ============================================================================================ the tracer ====

def categorize(events) -> list[str]:
    """The category of each traced event name (a rename or write belongs to whatever was going on)."""
    out, current = [], "start-up"
    for name in events:
        if name in ("start", "imported", "train", "prepare-run-dir", "resume-load", "load-run-model") or (
                name.startswith("stage:") and name[6:] in ("load_data", "method_data", "data_facts", "build", "resume",
                                                            "image_sources")):
            current = "start-up"
        elif name in ("step-begin", "step-end"):
            current = "step"
        elif name.startswith("ckpt-"):
            current = "checkpoint" if name != "ckpt-end" else current
        elif name in ("validate", "validate-end"):
            current = "validation"
        elif name in ("epoch-end", "epoch-log", "uncertainty-log"):
            current = "epoch-end logging"
        elif name.startswith("stage:") or name in ("evaluate", "metrics-write"):
            current = "finish"
        elif name.startswith("export"):
            current = "export"
        elif name in ("build", "fsync", "csv-open"):
            current = {"build": "knn build", "fsync": "batch written", "csv-open": "start-up"}[name]
        elif name == "exit":
            current = "exit"
        out.append(current)
    return out


def install_tracer(trace_path: str, pause: str = "", script: str = "") -> callable:
    """Patch the toolkit in this process so that it appends one event line to ``trace_path`` at each point."""
    fd = os.open(trace_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    state = {"step": -1, "paused": False}

    def emit(name: str) -> None:
        os.write(fd, f"{time.monotonic():.6f} {name} {state['step']}\n".encode())
        # ``pause`` is EVENT@STEP: the first such event of this process waits there for its kill.
        if pause and not state["paused"] and f"{name}@{state['step']}" == pause:
            state["paused"] = True
            time.sleep(PAUSE_SECONDS)

    def wrap(owner, attr, event, before=None):
        real = getattr(owner, attr)

        def traced(*args, **kwargs):
            if before is not None:
                before(*args, **kwargs)
            emit(event(*args, **kwargs) if callable(event) else event)
            return real(*args, **kwargs)

        setattr(owner, attr, traced)
        return real

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        emit(f"rename:{Path(dst).name}")
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    import common.io

    wrap(common.io, "atomic_write_bytes", lambda path, data: f"write:{Path(path).name}")
    if script in ("train.py", "export.py"):
        emit("start")
        from common.cli import quiet_tensorflow

        quiet_tensorflow()  # TensorFlow imported as the command itself imports it
        import tensorflow as tf

        import engine.callbacks
        import engine.checkpoint
        import engine.export
        import engine.fit
        import engine.results
        import engine.rundir
        import engine.uncertainty

        emit("imported")
        callbacks = engine.callbacks

        def set_step_from_model(timer, *args, **kwargs):
            with contextlib.suppress(Exception):
                state["step"] = int(timer.model.optimizer.iterations.numpy())

        wrap(callbacks.EpochTimer, "on_train_batch_begin", "step-begin", before=set_step_from_model)
        wrap(callbacks.EpochTimer, "on_train_batch_end", "step-end")
        wrap(callbacks.EpochTimer, "on_epoch_end", "epoch-end", before=set_step_from_model)
        callbacks.EpochTimer.on_test_begin = lambda self, logs=None: emit("validate")
        callbacks.EpochTimer.on_test_end = lambda self, logs=None: emit("validate-end")
        wrap(callbacks.EpochLog, "on_epoch_end", "epoch-log")
        wrap(engine.uncertainty.UncertaintyLogger, "on_epoch_end", "uncertainty-log")
        checkpoint = engine.checkpoint

        def set_step_from_state(manager, model, saved_state):
            state["step"] = int(saved_state["global_step"])

        wrap(checkpoint.CheckpointManager, "save", "ckpt-begin", before=set_step_from_state)
        wrap(checkpoint, "weights_bytes", "ckpt-serialise")
        wrap(checkpoint, "atomic_write_bytes", "ckpt-write-weights")
        wrap(checkpoint, "atomic_write_json", "ckpt-write-state")
        wrap(checkpoint, "atomic_write_text", "ckpt-write-latest")
        wrap(checkpoint.CheckpointManager, "_prune", "ckpt-prune")
        real_prune = checkpoint.CheckpointManager._prune

        def prune_then_end(self, *args, **kwargs):
            result = real_prune(self, *args, **kwargs)
            emit("ckpt-end")
            return result

        checkpoint.CheckpointManager._prune = prune_then_end
        fit, results = engine.fit, engine.results
        wrap(fit, "train", "train")
        wrap(fit.StageTimes, "timed", lambda self, stage, *a, **k: f"stage:{stage}")
        wrap(results, "evaluate_model", "evaluate")
        wrap(results, "atomic_write_json", lambda path, obj: "metrics-write" if Path(path).name == "metrics.json"
             else f"write:{Path(path).name}")
        wrap(results, "load_run_model", "load-run-model")
        wrap(engine.rundir, "prepare_run_dir", "prepare-run-dir")
        wrap(engine.export, "export_saved_model", "export")
        wrap(tf.saved_model, "save", "export-savedmodel")
    elif script == "predict.py":
        emit("start")
        real_fsync = os.fsync

        def fsync(fileno):
            result = real_fsync(fileno)
            emit("fsync")
            return result

        os.fsync = fsync
    else:
        emit("start")
        import data.neighbors

        wrap(data.neighbors, "build_neighbor_table", "build")
    return emit


def child(argv: list[str]) -> int:
    """``child --trace FILE [--pause EVENT@STEP] -- SCRIPT ARGS...``: run SCRIPT (``train.py``, ``export.py``,
    ``predict.py`` or a ``-m`` module) traced, as ``python SCRIPT ARGS`` would."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos child")
    parser.add_argument("--trace", required=True)
    parser.add_argument("--pause", default="")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    import runpy

    emit = install_tracer(args.trace, args.pause, args.script)
    script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    code = 0
    try:
        if args.script.endswith(".py"):
            sys.argv = [str(ROOT / args.script), *script_args]
            runpy.run_path(str(ROOT / args.script), run_name="__main__")
        else:
            sys.argv = [args.script, *script_args]
            runpy.run_module(args.script, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    emit("exit")
    return code


# ============================================================================================ the monitor ====

@dataclass
class Event:
    time: float
    name: str
    step: int


def read_trace(path: Path) -> list[Event]:
    events = []
    if not path.is_file():
        return events
    for line in path.read_text().splitlines():
        parts = line.split(" ")
        if len(parts) == 3:
            with contextlib.suppress(ValueError):
                events.append(Event(float(parts[0]), parts[1], int(parts[2])))
    return events


def event_keys(events: list[Event]) -> list[tuple]:
    """(name, step, occurrence) of each event: the same moment in every run of the same command."""
    seen: collections.Counter = collections.Counter()
    keys = []
    for event in events:
        seen[(event.name, event.step)] += 1
        keys.append((event.name, event.step, seen[(event.name, event.step)]))
    return keys


@dataclass
class Target:
    """Kill ``delay`` seconds after the reference event number ``index`` (or after ``delay`` seconds of run time
    when ``index`` is None), optionally with the child paused at that event."""

    category: str
    index: int | None
    delay: float
    event: str = ""
    pause: str = ""


def draw_targets(reference: list[Event], count: int, rng: random.Random, allow_time: bool = True,
                 pause_share: float = 0.15) -> list[Target]:
    categories = categorize([e.name for e in reference])
    by_category: dict[str, list[int]] = collections.defaultdict(list)
    for index, category in enumerate(categories):
        if reference[index].name not in ("exit", "start"):
            by_category[category].append(index)
    first_work = next((e.time for e in reference if e.name in ("step-begin", "build", "fsync", "export")), reference[-1].time)
    weights = {c: CATEGORY_WEIGHTS.get(c, 2) for c in by_category}
    weights.setdefault("start-up", CATEGORY_WEIGHTS["start-up"])
    targets = []
    for _ in range(count):
        category = rng.choices(list(weights), list(weights.values()))[0]
        options = by_category.get(category)
        if category == "start-up" and allow_time and (rng.random() < 0.5 or not options):
            targets.append(Target("start-up", None, rng.uniform(0, first_work - reference[0].time)))
            continue
        options = options or [i for values in by_category.values() for i in values]
        index = rng.choice(options)
        duration = (reference[index + 1].time - reference[index].time) if index + 1 < len(reference) else 0.0
        pause = f"{reference[index].name}@{reference[index].step}" if reference[index].name.startswith(
            ("rename:", "write:")) and rng.random() < pause_share * 3 else ""
        delay = rng.uniform(0, 0.02) if pause else rng.uniform(0, min(max(duration, 0.0), 1.0))
        targets.append(Target(category, index, delay, reference[index].name, pause))
    return targets


@dataclass
class Kill:
    command: str
    target: dict
    killed: bool
    last_event: str = ""
    point: str = ""
    step: int = -1
    after_kill: list = field(default_factory=list)  # invariants broken right after the kill


def child_command(script: str, argv, trace: Path, pause: str = "") -> list[str]:
    return [sys.executable, "-m", "benchmarks.chaos", "child", "--trace", str(trace),
            *(["--pause", pause] if pause else []), script, "--", *map(str, argv)]


def env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
                PYTHONUNBUFFERED="1")


def run_segment(script: str, argv, trace: Path, log: Path, target: Target | None, ref_keys: dict,
                timeout: float = SEGMENT_TIMEOUT_S) -> tuple[int, bool]:
    """Run one traced command; SIGKILL it at ``target`` (None: let it finish). (exit code, killed)."""
    trace.unlink(missing_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(child_command(script, argv, trace, target.pause if target else ""), cwd=ROOT,
                                env=env(), stdout=out, stderr=subprocess.STDOUT)
    started = time.monotonic()
    killed = False
    seen: collections.Counter = collections.Counter()
    offset = 0
    try:
        while proc.poll() is None:
            if time.monotonic() - started > timeout:
                proc.kill()
                raise TimeoutError(f"{script} ran past {timeout:g} s (see {log})")
            if target is not None:
                fire_at = None
                if target.index is None:
                    fire_at = started + target.delay
                elif trace.is_file():
                    with open(trace, "rb") as handle:
                        handle.seek(offset)
                        chunk = handle.read()
                    complete = chunk.rsplit(b"\n", 1)[0] + b"\n" if b"\n" in chunk else b""
                    offset += len(complete)
                    for line in complete.decode().splitlines():
                        parts = line.split(" ")
                        if len(parts) != 3:
                            continue
                        seen[(parts[1], int(parts[2]))] += 1
                        index = ref_keys.get((parts[1], int(parts[2]), seen[(parts[1], int(parts[2]))]))
                        if index is not None and index >= target.index:
                            fire_at = time.monotonic() + target.delay
                            break
                if fire_at is not None:
                    while time.monotonic() < fire_at and proc.poll() is None:
                        time.sleep(0.0005)
                    if proc.poll() is None:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed = True
                    break
            time.sleep(0.002)
    finally:
        code = proc.wait()
    return code, killed


def classify_kill(trace: Path) -> tuple[str, str, int]:
    events = read_trace(trace)
    if not events:
        return "", "start-up", -1
    categories = categorize([e.name for e in events])
    return events[-1].name, categories[-1], events[-1].step


# ============================================================================================ the checks ====

def temporaries(folder: Path) -> list[str]:
    """Temporary files/folders (``.<name>.<pid>.….tmp``, ``.<name>.old-<pid>``) anywhere under ``folder``."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if any(m in p.name for m in TEMPORARY_MARKERS))


def run_invariants(run: Path) -> list[str]:
    """What must hold in a run directory at every instant (right after a kill included)."""
    from engine.checkpoint import CheckpointError, CheckpointManager, check_weights_file

    broken = []
    manager = CheckpointManager(run)
    try:
        latest = manager.latest()
        if latest is not None:
            manager.read_state(latest)
            damage = check_weights_file(latest / "model.weights.h5")
            if damage:
                broken.append(f"ckpt/latest names {latest.name}, whose weights do not read ({damage})")
    except CheckpointError as exc:
        broken.append(f"ckpt/latest: {exc}")
    for name in ("config.json", "metrics.json"):
        if (run / name).exists():
            try:
                if not isinstance(json.loads((run / name).read_text()), dict):
                    broken.append(f"{name} is not an object")
            except (OSError, ValueError) as exc:
                broken.append(f"{name} is half-written ({exc})")
    if (run / "log.csv").exists():
        with contextlib.suppress(OSError):
            rows = list(csv.reader(io.StringIO((run / "log.csv").read_text())))
            if rows and rows[0][:1] != ["epoch"] or any(len(r) != len(rows[0]) for r in rows):
                broken.append("log.csv is half-written")
    broken += export_invariants(run / "saved_model")
    return broken


def export_invariants(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    missing = [n for n in ("saved_model.pb", "fer_export.json", "variables/variables.index", ".fer-output.json")
               if not (folder / n).is_file()]
    if missing:
        return [f"{folder.name}/ is incomplete (no {', '.join(missing)})"]
    try:
        json.loads((folder / "fer_export.json").read_text())
    except ValueError as exc:
        return [f"{folder.name}/fer_export.json is half-written ({exc})"]
    return []


def h5_arrays(path: Path) -> dict:
    import h5py

    values = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda n, o: values.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return values


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_meta(folder: Path) -> dict:
    meta = json.loads((folder / "fer_export.json").read_text())
    provenance = meta.get("provenance") or {}
    provenance.pop("run_dir", None)
    (provenance.get("metrics") or {}).pop("timings_s", None)
    (provenance.get("metrics") or {}).pop("run_dir", None)
    return meta


def compare_exports(reference: Path, other: Path) -> list[str]:
    if not other.is_dir():
        return [f"{other.name}/ missing"]
    out = []
    for rel in ("variables/variables.index", "variables/variables.data-00000-of-00001"):
        if not (other / rel).is_file() or _sha(reference / rel) != _sha(other / rel):
            out.append(f"{other.name}/{rel} differs")
    if export_meta(reference) != export_meta(other):
        out.append(f"{other.name}/fer_export.json differs")
    return out


def compare_runs(reference: Path, run: Path) -> list[str]:
    """Every difference between a killed-and-resumed run and the uninterrupted one (see the module doc)."""
    import numpy as np

    out = []
    final = (reference / "ckpt" / "latest").read_text().strip()
    if not (run / "ckpt" / "latest").is_file() or (run / "ckpt" / "latest").read_text().strip() != final:
        return [f"ckpt/latest is not {final}"]
    mine, theirs = h5_arrays(run / "ckpt" / final / "model.weights.h5"), h5_arrays(reference / "ckpt" / final / "model.weights.h5")
    if sorted(mine) != sorted(theirs):
        out.append(f"checkpoint variables differ: {sorted(set(mine) ^ set(theirs))[:5]}")
    different = [k for k in sorted(theirs) if k in mine and not np.array_equal(mine[k], theirs[k])]
    if different:
        out.append(f"{len(different)} of {len(theirs)} checkpoint arrays differ (first: {', '.join(different[:3])})")
    state = [json.loads((r / "ckpt" / final / "state.json").read_text()) for r in (run, reference)]
    for s in state:
        s.pop("time", None)
    if state[0] != state[1]:
        out.append("state.json differs")
    metrics = []
    for r in (run, reference):
        m = json.loads((r / "metrics.json").read_text())
        m.pop("timings_s", None)
        m.pop("run_dir", None)
        metrics.append(m)
    if metrics[0] != metrics[1]:
        out.append(f"metrics.json differs in {sorted(k for k in metrics[1] if metrics[0].get(k) != metrics[1][k])}")
    logs = [list(csv.DictReader(io.StringIO((r / "log.csv").read_text()))) for r in (run, reference)]
    if [row["epoch"] for row in logs[0]] != [row["epoch"] for row in logs[1]]:
        out.append(f"log.csv epochs {[row['epoch'] for row in logs[0]]} != {[row['epoch'] for row in logs[1]]}")
    else:
        for a, b in zip(*logs):
            different = [k for k in b if k.startswith("test_") and a.get(k) != b[k]]
            if different:
                out.append(f"log.csv epoch {b['epoch']}: {different} differ")
    tables = sorted((reference / "uncertainty").glob("*")) if (reference / "uncertainty").is_dir() else []
    different = [p.name for p in tables if not (run / "uncertainty" / p.name).is_file()
                 or _sha(run / "uncertainty" / p.name) != _sha(p)]
    if different:
        out.append(f"uncertainty/ tables differ: {', '.join(different)}")
    if (reference / "saved_model").is_dir():
        out += compare_exports(reference / "saved_model", run / "saved_model")
    left = temporaries(run)
    if left:
        out.append(f"temporaries left: {left[:5]}")
    return out


# ============================================================================================ campaigns ====

def write_dataset(folder: Path) -> Path:
    from data.synthetic import SyntheticConfig, generate

    if not (folder / "train.csv").is_file():
        generate(folder, SyntheticConfig(train_size=TRAIN_SIZE, test_size=TEST_SIZE, image_size=32, workers=1),
                 progress=False)
    return folder


def train_argv(data_dir: Path, run: Path, method: str, export: bool) -> list[str]:
    return ["--dataset", "csv", "--num-classes", "7", "--data-dir", str(data_dir), "--method", method,
            *METHOD_ARGS.get(method, []), "--backbone", BACKBONE, "--image-size", "32", "--epochs", str(EPOCHS),
            "--batch-size", str(BATCH), "--seed", "3", "--no-tensorboard", "--verbose", "0", "--test-every", "1",
            "--checkpoint-every", "4", "--run", str(run), *([] if export else ["--no-export"])]


def reference_run(method: str, folder: Path, data_dir: Path, export: bool) -> tuple[Path, list[Event]]:
    """Train the uninterrupted reference under the tracer: (its run directory, its trace)."""
    folder.mkdir(parents=True, exist_ok=True)
    reference = folder / "reference"
    code, _ = run_segment("train.py", train_argv(data_dir, reference, method, export), folder / "reference.trace",
                          folder / "reference.log", None, {})
    if code != 0:
        raise RuntimeError(f"{method}: the reference run failed (see {folder / 'reference.log'})")
    return reference, read_trace(folder / "reference.trace")


def target_at(events: list[Event], name: str, step: int, delay: float = 0.0, pause: bool = False) -> Target:
    """A target at the reference's first event ``name`` at ``step`` (for tests and chosen points)."""
    index = next(i for i, e in enumerate(events) if e.name == name and e.step == step)
    return Target(categorize([e.name for e in events])[index], index, delay, name, f"{name}@{step}" if pause else "")


def run_chain(method: str, targets: list[Target], run: Path, reference: Path, ref_events: list[Event], data_dir: Path,
              export: bool, log=print, label: str = "") -> tuple[dict, list[dict]]:
    """Kill the run at each target in turn (resuming in between), resume it to the end, compare with the reference.

    Returns (chain record: kills, mismatches, finished_early; the kill records)."""
    ref_keys = {key: i for i, key in enumerate(event_keys(ref_events))}
    folder, name = run.parent, label or run.name
    chain_record = {"chain": name, "kills": [], "mismatches": [], "finished_early": False}
    kills = []

    def argv():
        return train_argv(data_dir, run, method, export) + (["--resume"] if (run / "config.json").is_file() else [])

    for i, target in enumerate(targets):
        trace = folder / f"{run.name}.seg{i}.trace"
        code, killed = run_segment("train.py", argv(), trace, folder / f"{run.name}.log", target, ref_keys)
        last, point, step = classify_kill(trace)
        if not killed:
            chain_record["finished_early"] = True
            if code != 0:
                chain_record["mismatches"].append(f"a segment exited {code} (see {folder / f'{run.name}.log'})")
            break
        kill = Kill("train.py", asdict(target), killed, last, point, step, run_invariants(run))
        kills.append({"method": method, "chain": name, **asdict(kill)})
        log(f"  {method} {name}: killed at {point} ({last}, step {step})"
            + (f"  BROKEN: {kill.after_kill}" if kill.after_kill else ""))
    if not chain_record["finished_early"]:
        code, _ = run_segment("train.py", argv(), folder / f"{run.name}.final.trace", folder / f"{run.name}.log", None,
                              ref_keys)
        if code != 0:
            chain_record["mismatches"].append(f"the final --resume exited {code} (see {folder / f'{run.name}.log'})")
    if not chain_record["mismatches"]:
        chain_record["mismatches"] = compare_runs(reference, run)
    if chain_record["mismatches"]:
        log(f"  {method} {name}: MISMATCH {chain_record['mismatches'][:5]}")
    chain_record["kills"] = len(kills)
    return chain_record, kills


def train_campaign(method: str, kills: int, chain: int, rng: random.Random, out: Path, data_dir: Path, export: bool,
                   log=print) -> dict:
    """The reference run, then ``kills`` drawn kills in chains of ``chain``; returns the method's record."""
    folder = out / method
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    reference, ref_events = reference_run(method, folder, data_dir, export)
    record = {"method": method, "reference_s": round(time.perf_counter() - started, 1), "chains": [], "kills": []}
    left, number = kills, 0
    while left > 0:
        targets = draw_targets(ref_events, min(chain, left), rng)
        time_targets = [t for t in targets if t.index is None][:1]  # a time-based kill only opens a chain
        targets = time_targets + sorted((t for t in targets if t.index is not None), key=lambda t: t.index)
        chain_record, made = run_chain(method, targets, folder / f"chain{number}", reference, ref_events, data_dir,
                                       export, log)
        record["chains"].append(chain_record)
        record["kills"] += made
        left -= max(len(made), 1)  # a chain whose first segment finished before its kill still uses up a kill
        number += 1
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


# --- tools ---------------------------------------------------------------------------------------------------

def _tool_kills(name: str, script: str, argv_for, reference_dir: Path, compare, kills: int, rng: random.Random,
                folder: Path, prepare, log, pause_share: float = 0.4, events=None) -> dict:
    """Reference run, then per kill: prepare → killed run → invariants → rerun → compare; returns the record."""
    record = {"tool": name, "kills": [], "mismatches": []}
    code, _ = run_segment(script, argv_for(reference_dir, False), folder / f"{name}.reference.trace",
                          folder / f"{name}.log", None, {})
    if code != 0:
        raise RuntimeError(f"{name}: the reference run failed (see {folder / f'{name}.log'})")
    ref_events = read_trace(folder / f"{name}.reference.trace")
    ref_keys = {key: i for i, key in enumerate(event_keys(ref_events))}
    # The first kills take the reference's interesting events in turn (each write, rename, the SavedModel
    # save, a batch's fsync, the table build), paused there when it is a write or rename; the rest are drawn.
    interesting = [i for i, e in enumerate(ref_events) if e.name.startswith(("write:", "rename:", "export", "fsync", "build"))
                   and (events is None or e.name in events)]
    for number in range(kills):
        target = draw_targets(ref_events, 1, rng, pause_share=pause_share)[0]
        if number < len(interesting):
            index = interesting[number]
            event = ref_events[index].name
            pause = f"{event}@{ref_events[index].step}" if event.startswith(("write:", "rename:")) and pause_share > 0 else ""
            duration = ref_events[index + 1].time - ref_events[index].time if index + 1 < len(ref_events) else 0.0
            target = Target(categorize([e.name for e in ref_events])[index], index,
                            rng.uniform(0, 0.02) if pause else rng.uniform(0, min(max(duration, 0.0), 1.0)), event, pause)
        case = folder / f"{name}{number}"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir(parents=True)
        before = prepare(case, number)
        trace = case / "trace"
        code, killed = run_segment(script, argv_for(case, before.get("force", False)), trace, folder / f"{name}.log",
                                   target, ref_keys)
        last, point, step = classify_kill(trace)
        entry = {"tool": name, **asdict(Kill(script, asdict(target), killed, last, point, step))}
        entry["after_kill"] = before["check"]() if killed else []
        rerun_force = before["rerun_force"]()
        code, _ = run_segment(script, argv_for(case, rerun_force), case / "rerun.trace", folder / f"{name}.log", None,
                              {})
        entry["mismatches"] = ([f"the rerun exited {code}"] if code != 0 else []) + compare(case)
        record["kills"].append(entry)
        log(f"  {name}: {'killed at ' + point + ' (' + last + ')' if killed else 'finished before the kill'}"
            + (f"  BROKEN: {entry['after_kill']}" if entry["after_kill"] else "")
            + (f"  MISMATCH: {entry['mismatches']}" if entry["mismatches"] else ""))
    return record


def export_campaign(run: Path, kills: int, rng: random.Random, folder: Path, log=print) -> dict:
    reference = folder / "export.ref"
    shutil.rmtree(reference, ignore_errors=True)

    def argv_for(case, force):
        target = reference if case == reference else case / "sm"
        return ["--run", str(run), "--out", str(target), *(["--force"] if force else [])]

    def prepare(case, number):
        previous = number % 2 == 1  # every other kill replaces an existing export (--force)
        if previous:
            shutil.copytree(reference, case / "sm")
        before = {p: _sha(p) for p in (case / "sm").rglob("*") if p.is_file()} if previous else None

        def check():
            """The final name holds nothing, the previous export untouched, or a complete new one."""
            sm = case / "sm"
            if not sm.exists():
                # Replacing an export renames the old one aside, then the new one into place: killed between the
                # two renames, the old one is whole under its aside name (README, Reliability) until the rerun.
                aside = [p for p in case.glob(".sm.old-*") if {q.relative_to(p): _sha(q) for q in p.rglob("*")
                                                              if q.is_file()} == {q.relative_to(sm): h for q, h in before.items()}] \
                    if previous else []
                return [] if not previous or aside else ["the previous export vanished"]
            if previous and {p: _sha(p) for p in sm.rglob("*") if p.is_file()} == before:
                return []
            return export_invariants(sm) + compare_exports(reference, sm)

        return {"force": previous, "check": check, "rerun_force": lambda: (case / "sm").exists()}

    def compare(case):
        return compare_exports(reference, case / "sm") + [f"temporaries left: {t}" for t in temporaries(case)]

    return _tool_kills("export", "export.py", argv_for, reference, compare, kills, rng, folder, prepare, log)


def knn_campaign(data_dir: Path, kills: int, rng: random.Random, folder: Path, log=print, events=None) -> dict:
    import numpy as np

    reference = folder / "knn.ref"
    reference.mkdir(parents=True, exist_ok=True)
    shutil.copy(data_dir / "train.csv", reference / "train.csv")

    def argv_for(case, force):
        return ["--table", str(case / "train.csv"), "--k", "4", "--export-release-csv", str(case / "release.csv"),
                *(["--force"] if force else [])]

    def prepare(case, number):
        shutil.copy(data_dir / "train.csv", case / "train.csv")

        def check():
            broken = []
            npz = case / "train.neighbors.npz"
            if npz.exists():
                try:
                    with np.load(npz) as data:
                        data["indices"], data["distances"]
                except Exception as exc:  # noqa: BLE001 - a half-written npz under its final name
                    broken.append(f"train.neighbors.npz is half-written ({type(exc).__name__})")
            if (case / "release.csv").exists() and (case / "release.csv").read_bytes() != (reference / "release.csv").read_bytes():
                broken.append("release.csv is half-written")
            return broken

        return {"force": False, "check": check,
                "rerun_force": lambda: (case / "train.neighbors.npz").exists() or (case / "release.csv").exists()}

    def compare(case):
        out = []
        with np.load(reference / "train.neighbors.npz") as a, np.load(case / "train.neighbors.npz") as b:
            if sorted(a.files) != sorted(b.files) or any(not np.array_equal(a[k], b[k]) for k in a.files):
                out.append("train.neighbors.npz arrays differ")
        if (case / "release.csv").read_bytes() != (reference / "release.csv").read_bytes():
            out.append("release.csv differs")
        return out + [f"temporaries left: {t}" for t in temporaries(case)]

    return _tool_kills("knn", "preprocess.knn", argv_for, reference, compare, kills, rng, folder, prepare, log,
                       pause_share=0.8, events=events)


def predict_campaign(run: Path, data_dir: Path, kills: int, rng: random.Random, folder: Path, log=print) -> dict:
    photos = folder / "photos"
    if not photos.is_dir():
        shutil.copytree(data_dir / "images" / "test", photos)
    reference = folder / "predict.ref"
    reference.mkdir(parents=True, exist_ok=True)

    def argv_for(case, force):
        return [str(photos), "--run", str(run), "--csv", str(case / "faces.csv"), "--no-detect", "--no-figures",
                "--batch-size", "4", *(["--force"] if force else [])]

    def prepare(case, number):
        def check():
            csv_path = case / "faces.csv"
            if not csv_path.exists():
                return []
            done = csv_path.read_bytes()
            whole = (reference / "faces.csv").read_bytes()
            # Appended and fsynced per batch: what is there is a prefix of the uninterrupted file.
            return [] if whole.startswith(done) else ["faces.csv is not a prefix of the uninterrupted one"]

        return {"force": False, "check": check, "rerun_force": lambda: False}

    def compare(case):
        same = (case / "faces.csv").read_bytes() == (reference / "faces.csv").read_bytes()
        return ([] if same else ["faces.csv differs from the uninterrupted one"]) + \
            [f"temporaries left: {t}" for t in temporaries(case)]

    return _tool_kills("predict", "predict.py", argv_for, reference, compare, kills, rng, folder, prepare, log,
                       pause_share=0.0)


# ============================================================================================== report ====

def summarize(report: dict) -> dict:
    kills = [k for m in report["methods"] for k in m["kills"]]
    tool_kills = [k for t in report["tools"] for k in t["kills"] if k["killed"]]
    mismatches = [f"{m['method']} chain {c['chain']}: {x}" for m in report["methods"] for c in m["chains"]
                  for x in c["mismatches"]]
    mismatches += [f"{k['tool']}: {x}" for t in report["tools"] for k in t["kills"] for x in k["mismatches"]]
    broken = [f"{k.get('method', k.get('tool'))}: {x}" for k in kills + tool_kills for x in k["after_kill"]]
    return {
        "training_kills": len(kills),
        "tool_kills": {t["tool"]: sum(k["killed"] for k in t["kills"]) for t in report["tools"]},
        "chains": sum(len(m["chains"]) for m in report["methods"]),
        "points": dict(collections.Counter(k["point"] for k in kills).most_common()),
        "events": dict(collections.Counter(k["last_event"] for k in kills).most_common()),
        "tool_points": dict(collections.Counter(f"{k['tool']}: {k['last_event']}" for k in tool_kills).most_common()),
        "mismatches": mismatches,
        "half_written": broken,
    }


def format_summary(report: dict) -> str:
    s = report["summary"]
    lines = [f"crash campaign (seed {report['seed']}): {s['training_kills']} training kills in {s['chains']} chains over "
             f"{len(report['methods'])} methods, tool kills {s['tool_kills']}; {report['wall_s']:.0f} s",
             "training kill points: " + ", ".join(f"{k} {v}" for k, v in s["points"].items()),
             "last events: " + ", ".join(f"{k} {v}" for k, v in s["events"].items()),
             "tool kill points: " + ", ".join(f"{k} {v}" for k, v in s["tool_points"].items()),
             f"mismatches: {len(s['mismatches'])}" + "".join(f"\n  {m}" for m in s["mismatches"]),
             f"half-written after a kill: {len(s['half_written'])}" + "".join(f"\n  {m}" for m in s["half_written"])]
    return "\n".join(lines)


def run_campaign(out: Path, kills: int, methods, seed: int = 0, chain: int = 4, tool_kills: int = 6, export: bool = True,
                 tools=("export", "knn", "predict"), jobs: int = 1, log=print) -> dict:
    """The whole campaign; ``DIR/chaos.json`` is rewritten after each method and tool (a stopped campaign keeps
    what it did). Each method draws from its own generator (seed, method), so ``jobs`` > 1 gives the same kills."""
    from concurrent.futures import ThreadPoolExecutor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir = write_dataset(out / "dataset")
    per_method = [kills // len(methods) + (1 if i < kills % len(methods) else 0) for i in range(len(methods))]
    report = {"seed": seed, "kills_requested": kills, "chain": chain, "export": export, "methods": [], "tools": []}

    def save():
        report["wall_s"] = round(time.perf_counter() - started, 1)
        report["summary"] = summarize(report)
        (out / "chaos.json").write_text(json.dumps(report, indent=2))

    def one(item):
        method, count = item
        log(f"{method}: {count} kills")
        record = train_campaign(method, count, chain, random.Random(f"{seed}-{method}"), out, data_dir, export, log)
        report["methods"].append(record)
        save()
        return record

    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        list(pool.map(one, zip(methods, per_method)))
    report["methods"].sort(key=lambda r: list(methods).index(r["method"]))
    reference_run = out / methods[0] / "reference"
    tools_dir = out / "tools"
    tools_dir.mkdir(exist_ok=True)
    rng = random.Random(f"{seed}-tools")
    if tool_kills:
        if "export" in tools:
            report["tools"].append(export_campaign(reference_run, tool_kills, rng, tools_dir, log))
            save()
        if "knn" in tools:
            report["tools"].append(knn_campaign(data_dir, tool_kills, rng, tools_dir, log))
            save()
        if "predict" in tools and (ROOT / "predict.py").is_file() and export:
            report["tools"].append(predict_campaign(reference_run, data_dir, tool_kills, rng, tools_dir, log))
    save()
    log(format_summary(report))
    return report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child(argv[1:])
    from models.registry import method_names

    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="campaign folder (runs, traces, chaos.json)")
    parser.add_argument("--kills", type=int, default=104, help="training kills over all methods (default 104)")
    parser.add_argument("--methods", default=",".join(method_names()), help="comma-separated (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chain", type=int, default=4, help="kills per chain before the final --resume (default 4)")
    parser.add_argument("--tool-kills", type=int, default=6, help="kills of each of export.py, knn, predict.py --csv")
    parser.add_argument("--no-export", action="store_true", help="train without the SavedModel export")
    parser.add_argument("--jobs", type=int, default=1, help="methods run side by side (default 1)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in method_names()]
    if unknown or args.kills < 1 or args.chain < 1 or args.tool_kills < 0:
        parser.error(f"bad --methods/--kills/--chain/--tool-kills (unknown methods: {unknown}; known: {method_names()})")
    report = run_campaign(args.out, args.kills, methods, args.seed, args.chain, args.tool_kills, not args.no_export,
                          jobs=args.jobs)
    bad = len(report["summary"]["mismatches"]) + len(report["summary"]["half_written"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
