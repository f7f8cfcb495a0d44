"""Repeatability: train one tiny run N times, uninterrupted, and count the results that differ from the first.

    python -m benchmarks.repeatability --out DIR --method lanet --runs 200 [--inter-op 2] [--intra-op 1]
        [--processes]

The crash campaign (:mod:`benchmarks.chaos`) compares killed-and-resumed runs with an uninterrupted one, so it
can only see a resume defect if uninterrupted runs repeat bit for bit. This script measures that premise: the
same configuration as the campaign's (``train.py``, small_cnn at 32 px, 48 synthetic training faces, 3 epochs of
6 steps, a test evaluation every epoch, a checkpoint every 4 steps; op determinism on, as every run by default)
trained ``--runs`` times, each compared with the first by :func:`benchmarks.chaos.compare_runs` (every array of
the final checkpoint, ``state.json``, ``metrics.json``, the test columns of ``log.csv``, the per-sample tables),
and, for a run that differs, the first epoch and ``log.csv`` columns where its *training* means part from the
first run's (where the divergence enters).

The runs share one process (the engine's training called N times with ``train.py``'s options, as the
suite's tests call it), or each gets its own
with ``--processes``. ``--inter-op`` / ``--intra-op`` set ``TF_NUM_INTEROP_THREADS`` / ``TF_NUM_INTRAOP_THREADS``
for it before TensorFlow starts (the suite runs with 2 / 1). A run directory equal to the first is removed once
compared; differing ones are kept. Writes ``OUT/repeatability.json`` and ``.md``.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from common.cli import ArgumentParser, positive_int, run_main
from common.errors import ConfigError

TIMING_COLUMNS = ("epoch_seconds", "step_seconds")  # wall-clock columns of log.csv: never equal between runs


def build_parser():
    p = ArgumentParser(prog="python -m benchmarks.repeatability", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the runs and repeatability.json / .md")
    p.add_argument("--method", default="lanet", help="the method to repeat (default lanet)")
    p.add_argument("--runs", type=positive_int, default=20, help="how many uninterrupted runs (default 20)")
    p.add_argument("--inter-op", type=positive_int, help="TF_NUM_INTEROP_THREADS (default: TensorFlow's choice)")
    p.add_argument("--intra-op", type=positive_int, help="TF_NUM_INTRAOP_THREADS (default: TensorFlow's choice)")
    p.add_argument("--processes", action="store_true", help="each run in its own process (default: one process)")
    return p


def first_divergence(reference: Path, run: Path) -> dict | None:
    """The first epoch whose ``log.csv`` row differs from the reference's (timing columns aside) and the
    columns that differ there; None when every row is equal."""
    rows = [list(csv.DictReader(io.StringIO((r / "log.csv").read_text()))) for r in (reference, run)]
    for ref_row, row in zip(*rows):
        columns = [k for k in ref_row if k not in TIMING_COLUMNS and ref_row[k] != row.get(k)]
        if columns:
            return {"epoch": int(ref_row["epoch"]), "columns": columns,
                    "values": {k: [ref_row[k], row.get(k)] for k in columns}}
    if len(rows[0]) != len(rows[1]):
        return {"epoch": min(len(rows[0]), len(rows[1])), "columns": ["(rows)"], "values": {}}
    return None


def train_in_process(argv) -> int:
    """``train.py ARGV`` in this process, as ``train.main`` runs it (the same options, ``Run`` and
    ``engine.fit.train``; a benchmark does not import the entry point)."""
    from common.cli import ArgumentParser as Parser
    from common.cli import add_dataclass_options
    from engine.config import RunConfig, run_config_from_args
    from engine.fit import train
    from engine.run import Run

    parser = Parser(prog="train.py")
    add_dataclass_options(parser, RunConfig)
    train(Run(run_config_from_args(parser.parse_args(argv)), log=lambda *a, **k: None))
    return 0


def thread_env(args) -> dict:
    env = {}
    if args.inter_op:
        env["TF_NUM_INTEROP_THREADS"] = str(args.inter_op)
    if args.intra_op:
        env["TF_NUM_INTRAOP_THREADS"] = str(args.intra_op)
    return env


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Before TensorFlow starts in this process (nothing above imports it): the thread pools read these once.
    os.environ.update(thread_env(args))
    from models.registry import method_names

    if args.method not in method_names():
        raise ConfigError(f"--method {args.method}: not a method ({', '.join(method_names())})")
    import shutil

    from benchmarks.chaos import ROOT, compare_runs, env, train_argv, write_dataset
    from common.io import atomic_write_json, atomic_write_text, stamp

    out = Path(args.out)
    data_dir = write_dataset(out / "dataset")
    runs, reference = [], out / "run_0"
    start = time.perf_counter()
    for i in range(args.runs):
        run = out / f"run_{i}"
        if run.exists():
            raise ConfigError(f"{run}: exists; give an empty --out (nothing there is overwritten)")
        argv_i = train_argv(data_dir, run, args.method, export=False)
        began = time.perf_counter()
        if args.processes:
            code = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv_i], env={**env(), **thread_env(args)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        else:
            code = train_in_process(argv_i)
        if code != 0:
            raise RuntimeError(f"run {i} of {args.method} failed (exit {code})")
        entry = {"run": i, "seconds": round(time.perf_counter() - began, 1)}
        if i > 0:
            entry["differences"] = compare_runs(reference, run)
            entry["first_divergence"] = first_divergence(reference, run) if entry["differences"] else None
            if not entry["differences"]:
                shutil.rmtree(run)
        runs.append(entry)
        print(f"run {i}: {entry['seconds']} s" + ("" if i == 0 else
              f"; {'equal to run 0' if not entry['differences'] else 'DIFFERS: ' + '; '.join(entry['differences'][:2])}"),
              flush=True)
    differing = [r for r in runs[1:] if r["differences"]]
    threads = thread_env(args) or {"threads": "TensorFlow's defaults"}
    setting = ", ".join(f"{k}={v}" for k, v in threads.items())
    lines = [f"# Repeatability: {args.method}, {args.runs} uninterrupted runs "
             f"({'one process each' if args.processes else 'one process'}; {setting})", "",
             f"**{len(differing)} of {args.runs - 1}** runs differ from run 0 "
             f"({time.perf_counter() - start:.0f} s in all).", ""]
    for r in differing:
        where = r["first_divergence"]
        lines.append(f"- run {r['run']}: " + "; ".join(r["differences"][:3])
                     + (f" — training means part first in epoch {where['epoch']}: {', '.join(where['columns'])}"
                        if where else " — every log.csv row equal"))
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "repeatability.md", text)
    atomic_write_json(out / "repeatability.json", stamp({"args": vars(args), "runs": runs}, "benchmarks.repeatability"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
