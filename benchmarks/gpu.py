"""Everything the GPU goals need, in one command (about 10 minutes on one modern GPU):

    python -m benchmarks.gpu --out gpu_block.md            # on a machine with a CUDA GPU
    python -m benchmarks.gpu --tiny --out gpu_block.md     # the same sweep at a toy size (CPU, seconds)

It installs nothing: run it after the README's GPU line (``tensorflow[and-cuda]==2.21.*`` instead of
``tensorflow``). Each configuration is one ``python -m benchmarks.speed`` process (a fresh TensorFlow, so
precision policies and XLA caches never leak between settings), timed on the built-in synthetic data:

1. ResNet-50 at 224 px, mixed precision, no XLA, non-deterministic ops: CE, LDLVA bank, LDLVA forward,
   LA-Net, NLA (images/s and the ratio to CE), plus the input pipeline from JPEG files on all host cores
   against what the GPU consumes;
2. the same at 112 px;
3. CE and LDLVA bank with one setting changed at a time: mixed precision off, XLA on, op determinism on
   (the project enables determinism by default for exact resume: this measures what it costs here).

It writes one markdown block (machine, GPU name, the tables, the goals: LDLVA bank ≥ 85 % of CE images/s
with mixed precision; a projected full AffectNet-8 LDLVA run — 287 651 images × 60 epochs, K = 8 in bank
mode — under an hour) to paste into BENCHMARKS.md, and the raw numbers as ``--out``'s ``.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.cli import ArgumentParser, positive_int, run_main

AFFECTNET8_TRAIN = 287_651
LDLVA_EPOCHS = 60
GOAL_BANK_FRACTION = 0.85
GOAL_HOURS = 1.0
ALL_METHODS = ("ce", "ldlva-bank", "ldlva-forward", "lanet", "nla")


def configurations(tiny: bool) -> list[dict]:
    """(label, speed-harness arguments) of every configuration the sweep times."""
    if tiny:
        base = {"backbone": "tiny_cnn", "size": 32, "batch": 8, "steps": 1, "warmup": 1}
        big, small = 32, 24
    else:
        base = {"backbone": "resnet50", "size": 224, "batch": 64, "steps": 20, "warmup": 5}
        big, small = 224, 112
    runs = [
        {"label": f"{big} px, mixed precision", "size": big, "methods": ALL_METHODS, "precision": "mixed_float16",
         "jit": False, "deterministic": False, "pipeline": True},
        {"label": f"{small} px, mixed precision", "size": small, "methods": ALL_METHODS, "precision": "mixed_float16",
         "jit": False, "deterministic": False, "pipeline": False},
        {"label": f"{big} px, float32", "size": big, "methods": ("ce", "ldlva-bank"), "precision": "off",
         "jit": False, "deterministic": False, "pipeline": False},
        {"label": f"{big} px, mixed precision + XLA", "size": big, "methods": ("ce", "ldlva-bank"),
         "precision": "mixed_float16", "jit": True, "deterministic": False, "pipeline": False},
        {"label": f"{big} px, mixed precision, op determinism", "size": big, "methods": ("ce", "ldlva-bank"),
         "precision": "mixed_float16", "jit": False, "deterministic": True, "pipeline": False},
    ]
    for run in runs:
        run.update({k: v for k, v in base.items() if k != "size"})
        if tiny:  # the code paths, not the numbers: two methods are enough
            run["methods"] = tuple(m for m in run["methods"] if m in ("ce", "ldlva-bank"))
    return runs


def speed_argv(run: dict, json_path: Path, tiny: bool) -> list[str]:
    argv = ["--backbone", run["backbone"], "--image-size", str(run["size"]), "--batch-size", str(run["batch"]),
            "--steps", str(run["steps"]), "--warmup", str(run["warmup"]), "--methods", *run["methods"],
            "--mixed-precision", run["precision"], "--json", str(json_path), "--force",
            "--skip", "serving", "knn", *([] if run["pipeline"] else ["pipeline"])]
    if run["pipeline"]:
        argv += ["--image-cache", "files", "--pipeline-batches", "3" if tiny else "30"]
    if run["jit"]:
        argv.append("--jit")
    if not run["deterministic"]:
        argv.append("--nondeterministic")
    if tiny:
        argv += ["--synthetic", "train_size=64", "--synthetic", "test_size=16"]
    return argv


def run_configuration(run: dict, folder: Path, tiny: bool, log) -> dict:
    json_path = folder / f"speed_{len(list(folder.glob('speed_*.json')))}.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed", *speed_argv(run, json_path, tiny)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0 or not json_path.is_file():
        last = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        log(f"[gpu] {run['label']}: failed ({' | '.join(last)[:300]})")
        return {"label": run["label"], "error": " | ".join(last)[:500], "seconds": seconds}
    result = json.loads(json_path.read_text())
    log(f"[gpu] {run['label']}: {seconds:.0f} s")
    return {"label": run["label"], "run": run, "seconds": seconds, **result}


def _gpu_names(results) -> str:
    for result in results:
        gpus = (result.get("machine") or {}).get("gpus")
        if gpus:
            return ", ".join(gpus)
    return "none (CPU only)"


def markdown(results: list[dict], tiny: bool, argv) -> str:
    machine = next((r["machine"] for r in results if "machine" in r), {})
    lines = [f"### GPU suite ({time.strftime('%Y-%m-%d')}){' — TOY SIZE, not a measurement' if tiny else ''}", "",
             f"Command: `python -m benchmarks.gpu {' '.join(argv)}`  ",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores; GPU: {_gpu_names(results)}; "
             f"TF {machine.get('tensorflow', '?')}, Keras {machine.get('keras', '?')}", "",
             "| configuration | method | step (ms) | images/s | × CE step time |", "|---|---|---:|---:|---:|"]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['label']} | – | failed: {result['error'][:80]} | | |")
            continue
        for method, r in result.get("training", {}).items():
            lines.append(f"| {result['label']} | {method} | {1000 * r['median_step_s']:.1f} | {r['images_per_s']:.0f} | "
                         f"{r.get('ratio_to_ce', float('nan')):.2f} |")
    pipeline = next((r.get("pipeline") for r in results if r.get("pipeline")), None)
    if pipeline:
        lines += ["", "Input pipeline (JPEG files decoded + augmented every step, all host cores vs one thread):", ""]
        lines += [f"- {key}: {value:.0f} images/s" for key, value in pipeline.items() if isinstance(value, float)]
    goals = goal_lines(results)
    if goals:
        lines += ["", "Goals:", "", *goals]
    return "\n".join(lines) + "\n"


def goal_lines(results) -> list[str]:
    first = next((r for r in results if "training" in r and r.get("run", {}).get("pipeline")), None)
    if first is None:
        return []
    training = first["training"]
    lines = []
    if "ce" in training and "ldlva-bank" in training:
        fraction = training["ldlva-bank"]["images_per_s"] / training["ce"]["images_per_s"]
        lines.append(f"- LDLVA bank images/s = {100 * fraction:.0f} % of CE with mixed precision "
                     f"(goal ≥ {100 * GOAL_BANK_FRACTION:.0f} %) — {'met' if fraction >= GOAL_BANK_FRACTION else 'NOT met'}")
        hours = AFFECTNET8_TRAIN * LDLVA_EPOCHS / training["ldlva-bank"]["images_per_s"] / 3600
        lines.append(f"- projected AffectNet-8 LDLVA run ({AFFECTNET8_TRAIN} images × {LDLVA_EPOCHS} epochs, bank mode, "
                     f"training steps only): {hours:.2f} h (goal < {GOAL_HOURS:g} h) — "
                     f"{'met' if hours < GOAL_HOURS else 'NOT met'}")
    return lines


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the markdown block (and OUT.json with the raw numbers)")
    p.add_argument("--tiny", action="store_true", help="toy sizes: checks that the sweep runs (CPU, seconds)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out this toolkit did not write")
    p.add_argument("--max-configs", type=positive_int, help="time only the first N configurations")
    args = p.parse_args(argv)
    from common.io import atomic_write_json, atomic_write_text, check_output_file, stamp

    out = Path(args.out)
    check_output_file(out, args.force)
    check_output_file(out.with_suffix(".json"), args.force)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="fer-gpu-") as folder:
        runs = configurations(args.tiny)[:args.max_configs]
        results = [run_configuration(run, Path(folder), args.tiny, log) for run in runs]
    text = markdown(results, args.tiny, list(argv if argv is not None else sys.argv[1:]))
    atomic_write_text(out, text)
    atomic_write_json(out.with_suffix(".json"), stamp({"results": results, "tiny": args.tiny}, "benchmarks.gpu"))
    print(text)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
