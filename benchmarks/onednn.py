"""TensorFlow's oneDNN CPU kernels off and on, side by side: what ``TF_ENABLE_ONEDNN_OPTS=1`` buys, opt-in.

    python -m benchmarks.onednn --out benchmark_runs/onednn.md \\
        [--backbone dlib_resnet --image-size 150 --batch-size 32 --methods ce ldlva-bank --steps 8 --warmup 3] \\
        [--rounds 2]
    python -m benchmarks.onednn --out onednn.md --tiny     # the same at a toy size (seconds; not a measurement)

TensorFlow's Linux x86 wheels turn oneDNN on by default only on CPUs with AVX512_VNNI, AVX512_BF16 or AMX
(TensorFlow 2.9 release notes, "oneDNN optimizations"); on the others, AVX2-only AMD EPYC among them, the
convolutions run on Eigen's kernels. The project leaves TensorFlow's choice alone: on a 2-vCPU AMD EPYC,
oneDNN trained 1.4× faster but broke exact resume (BENCHMARKS.md), so it is the user's opt-in. This
benchmark shows what it changes on the machine it runs on: each round runs the speed harness's training
section (``benchmarks.speed``: each method built by ``engine.build.build_model`` and trained with ``model.fit`` on the real pipeline, the median
step after warm-up) in two fresh processes, ``TF_ENABLE_ONEDNN_OPTS=0`` and ``=1``, their order alternating
from round to round so that load from other processes hits both alike. Each process reports whether oneDNN
was in fact on (``machine.onednn``); a setting that did not take is an error, not a row. A third process
with the variable unset says what TensorFlow chooses on this CPU by itself.

Output: a markdown block (command, machine, TensorFlow's own default, per method the median step with oneDNN
off and on over the rounds and the ratio off / on) written to ``--out``, the raw numbers to ``--out``'s
``.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.cli import ArgumentParser, nonnegative_int, positive_int, run_main
from common.errors import ConfigError

SETTINGS = ("0", "1")  # TF_ENABLE_ONEDNN_OPTS values compared: off, on
# TensorFlow's own answer, from the one native module that holds it: loaded by its file, without importing the
# `tensorflow` package (whose import costs ~8 s of CPU here, the probe ~0.5 s); the package import only where the
# module file is not found.
DEFAULT_PROBE = """
import glob, importlib.machinery, importlib.util, os
name = "tensorflow.python.util._pywrap_util_port"
root = os.path.dirname(importlib.util.find_spec("tensorflow").origin)
found = glob.glob(os.path.join(root, "python", "util", "_pywrap_util_port*.so"))
if found:
    loader = importlib.machinery.ExtensionFileLoader(name, found[0])
    port = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, found[0], loader=loader))
    loader.exec_module(port)
else:
    from tensorflow.python.util import _pywrap_util_port as port
print(int(port.IsMklEnabled()))
"""


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the markdown block (and OUT.json with the raw numbers)")
    p.add_argument("--backbone", default="dlib_resnet", help="backbone of every timed model (default dlib_resnet)")
    p.add_argument("--image-size", type=positive_int, default=150)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--methods", nargs="+", default=["ce", "ldlva-bank"], help="speed-harness labels")
    p.add_argument("--steps", type=positive_int, default=8, help="timed steps per method and process")
    p.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed steps first")
    p.add_argument("--rounds", type=positive_int, default=2, help="off/on pairs, order alternating")
    p.add_argument("--tiny", action="store_true", help="toy sizes: checks that it runs (not a measurement)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out this toolkit did not write")
    return p


def speed_argv(args, json_path: Path) -> list[str]:
    argv = ["--backbone", args.backbone, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--methods", *args.methods,
            "--skip", "pipeline", "serving", "knn", "--json", str(json_path), "--force"]
    if args.tiny:
        argv += ["--synthetic", "train_size=64", "--synthetic", "test_size=16"]
    return argv


def child_env(setting: str | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    return env


def tensorflow_default() -> bool:
    """Whether TensorFlow turns oneDNN on by itself on this CPU (the variable unset)."""
    done = subprocess.run([sys.executable, "-c", DEFAULT_PROBE], capture_output=True, text=True,
                          env={**child_env(None), "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode != 0:
        raise ConfigError(f"could not ask TensorFlow whether oneDNN is on: {done.stderr.strip()[-300:]}")
    return done.stdout.strip().splitlines()[-1] == "1"


def timed_process(args, setting: str, folder: Path, log) -> dict:
    """One ``benchmarks.speed`` process with TF_ENABLE_ONEDNN_OPTS=setting: its raw result."""
    json_path = folder / f"speed_{len(list(folder.glob('speed_*.json')))}.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed", *speed_argv(args, json_path)],
                          capture_output=True, text=True, env=child_env(setting))
    if done.returncode != 0 or not json_path.is_file():
        last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        raise ConfigError(f"benchmarks.speed with TF_ENABLE_ONEDNN_OPTS={setting} failed: {' | '.join(last)[:500]}")
    result = json.loads(json_path.read_text())
    if result["machine"].get("onednn") is not (setting == "1"):
        raise ConfigError(f"TF_ENABLE_ONEDNN_OPTS={setting} did not take: the process reports oneDNN "
                          f"{'on' if result['machine'].get('onednn') else 'off'}")
    log(f"[onednn] TF_ENABLE_ONEDNN_OPTS={setting}: {time.perf_counter() - start:.0f} s")
    return result


def summary(results: dict, methods) -> dict:
    """{method: {"off": median step s, "on": ..., "ratio": off / on, "rounds": n}} over the rounds."""
    rows = {}
    for method in methods:
        steps = {s: [r["training"][method]["median_step_s"] for r in results[s] if method in r["training"]]
                 for s in SETTINGS}
        if not all(steps.values()):
            continue
        off, on = statistics.median(steps["0"]), statistics.median(steps["1"])
        rows[method] = {"off": off, "on": on, "ratio": off / on, "rounds": len(steps["0"]),
                        "off_each": steps["0"], "on_each": steps["1"]}
    return rows


def markdown(args, argv, machine: dict, default_on: bool, rows: dict) -> str:
    lines = [f"### oneDNN off vs on ({time.strftime('%Y-%m-%d')})"
             f"{' — TOY SIZE, not a measurement' if args.tiny else ''}", "",
             f"Command: `python -m benchmarks.onednn {' '.join(argv)}`  ",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores; "
             f"TF {machine.get('tensorflow', '?')}, Keras {machine.get('keras', '?')}; "
             f"TensorFlow's own default on this CPU: oneDNN **{'on' if default_on else 'off'}**", "",
             f"{args.backbone} at {args.image_size} px, batch {args.batch_size}; median training step over "
             f"{args.steps} steps after {args.warmup}, median over {args.rounds} round(s) of fresh processes:", "",
             "| method | oneDNN off (ms) | oneDNN on (ms) | off / on | each round, off → on (ms) |",
             "|---|---:|---:|---:|---|"]
    for method, r in rows.items():
        each = ", ".join(f"{1000 * a:.0f} → {1000 * b:.0f}" for a, b in zip(r["off_each"], r["on_each"]))
        lines.append(f"| {method} | {1000 * r['off']:.0f} | {1000 * r['on']:.0f} | {r['ratio']:.2f} | {each} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.backbone, args.image_size, args.batch_size, args.steps, args.warmup, args.rounds = \
            "tiny_cnn", 32, 8, 1, 1, 1
    from common.io import atomic_write_json, atomic_write_text, check_output_file, stamp

    out = Path(args.out)
    check_output_file(out, args.force)
    check_output_file(out.with_suffix(".json"), args.force)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    default_on = tensorflow_default()
    log(f"[onednn] TensorFlow's default on this CPU: oneDNN {'on' if default_on else 'off'}")
    results = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="fer-onednn-") as folder:
        for round_index in range(args.rounds):
            for setting in (SETTINGS if round_index % 2 == 0 else SETTINGS[::-1]):
                results[setting].append(timed_process(args, setting, Path(folder), log))
    rows = summary(results, args.methods)
    machine = results["1"][0]["machine"]
    text = markdown(args, argv, machine, default_on, rows)
    atomic_write_text(out, text)
    atomic_write_json(out.with_suffix(".json"), stamp({"argv": argv, "default_on": default_on, "rows": rows,
                                                       "results": results, "tiny": args.tiny}, "benchmarks.onednn"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
