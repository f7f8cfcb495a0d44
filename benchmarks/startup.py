"""A command's start-up, side by side: TensorFlow and Keras imported as they are, and as every command imports them.

    python -m benchmarks.startup --out benchmark_runs/startup.md [--rounds 5]

Keras 3 imports scikit-learn, IPython and ``matplotlib.pyplot`` while it is imported, when they are installed, for
features no command uses (``keras.wrappers``, ``KerasFileEditor``, ``keras.visualization``);
``common.cli.quiet_tensorflow`` (called by every command before TensorFlow) skips them
(``common.cli.skip_keras_optional_imports``). Each round starts two fresh interpreters, one per way, their order
alternating from round to round so that load from other processes hits both alike; each times its own import
(wall and CPU) and reports which of the optional packages it loaded, and whether it can still import each
afterwards (a skip that leaked into later imports would be an error, not a row). The test suite pays this start
in every process it starts; users pay it at every command.

Output: a markdown block (command, machine, median import wall and CPU per way, ratio) written to ``--out``, the
raw numbers to ``--out``'s ``.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.predict_throughput import machine
from common.cli import KERAS_OPTIONAL_IMPORTS, ArgumentParser, positive_int, run_main
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("as_is", "skipped")  # Keras's optional imports loaded, skipped
# The child: times the import of TensorFlow and Keras one way, says which optional packages it loaded, then
# checks that each installed one still imports.
CHILD = """
import importlib, importlib.util, json, sys, time
way, optional = sys.argv[1], sys.argv[2].split(",")
start_wall, start_cpu = time.perf_counter(), time.process_time()
if way == "skipped":
    from common.cli import skip_keras_optional_imports
    skip_keras_optional_imports()
import tensorflow, keras
wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
loaded = [name for name in optional if name in sys.modules]
installed = [name for name in optional if importlib.util.find_spec(name) is not None]
for name in installed:
    importlib.import_module(name)
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "loaded": loaded, "installed": installed,
                  "tensorflow": tensorflow.__version__, "keras": keras.__version__}))
"""


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the markdown block (and OUT.json with the raw numbers)")
    p.add_argument("--rounds", type=positive_int, default=5, help="pairs of fresh processes, order alternating")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out this toolkit did not write")
    return p


def timed_import(way: str) -> dict:
    """One fresh interpreter importing TensorFlow and Keras ``way``: its report."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, way, ",".join(KERAS_OPTIONAL_IMPORTS)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise ConfigError(f"the start-up process ({way}) failed: {' | '.join(last)[:500]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if way == "skipped" and report["loaded"]:
        raise ConfigError(f"the skip did not take: the process loaded {', '.join(report['loaded'])}")
    return report


def summary(results: dict) -> dict:
    rows = {way: {key: statistics.median(r[key] for r in results[way]) for key in ("wall_s", "cpu_s")}
            for way in WAYS}
    rows["ratio"] = {key: rows["as_is"][key] / rows["skipped"][key] for key in ("wall_s", "cpu_s")}
    return rows


def markdown(argv, results: dict, rows: dict) -> str:
    first = results["as_is"][0]
    lines = [f"### Start-up: Keras's optional imports loaded vs skipped ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python -m benchmarks.startup {' '.join(argv)}`  ",
             f"Machine: {machine()}; "
             f"TF {first['tensorflow']}, Keras {first['keras']}; optional packages installed: "
             f"{', '.join(first['installed']) or 'none'}", "",
             f"`import tensorflow, keras` in a fresh interpreter, median over {len(results['as_is'])} round(s):", "",
             "| way | optional packages loaded | wall (s) | CPU (s) |", "|---|---|---:|---:|"]
    for way, label in (("as_is", "as Keras does"), ("skipped", "skipped (every command)")):
        lines.append(f"| {label} | {', '.join(results[way][0]['loaded']) or 'none'} | {rows[way]['wall_s']:.2f} | "
                     f"{rows[way]['cpu_s']:.2f} |")
    lines.append(f"| ratio as is / skipped | | {rows['ratio']['wall_s']:.2f} | {rows['ratio']['cpu_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from common.io import atomic_write_json, atomic_write_text, check_output_file, stamp

    out = Path(args.out)
    check_output_file(out, args.force)
    check_output_file(out.with_suffix(".json"), args.force)
    results = {way: [] for way in WAYS}
    for round_index in range(args.rounds):
        for way in (WAYS if round_index % 2 == 0 else WAYS[::-1]):
            results[way].append(timed_import(way))
            print(f"[startup] round {round_index + 1} {way}: {results[way][-1]['wall_s']:.2f} s", file=sys.stderr,
                  flush=True)
    rows = summary(results)
    text = markdown(argv, results, rows)
    atomic_write_text(out, text)
    atomic_write_json(out.with_suffix(".json"), stamp({"argv": argv, "rows": rows, "results": results},
                                                      "benchmarks.startup"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
