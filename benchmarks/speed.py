"""Speed of every method side by side, plus the input pipeline, serving and the neighbour table.

    python -m benchmarks.speed                                  # small_cnn @ 64 px, batch 32 (minutes on 2 cores)
    python -m benchmarks.speed --backbone resnet50 --image-size 112 --batch-size 32 --steps 20 --warmup 5
    python -m benchmarks.speed --methods ce ldlva-bank --skip serving knn --jit

What it measures, in one process, on the same data (the built-in synthetic benchmark unless
``--dataset``/``--data-dir`` say otherwise), backbone, image size and batch:

1. **Training step** of each method (CE, LDLVA ``neighbor_source=forward``, LDLVA ``neighbor_source=bank``,
   LA-Net, DDAF, NLA), each built through :func:`engine.build.build_model` exactly as ``train.py`` builds it,
   trained with ``model.fit`` on the real tf.data pipeline. A timing callback records the wall time of
   every step (``on_train_batch_begin`` → ``on_train_batch_end``; the step's logs are read, so the step has
   finished); the first ``--warmup`` steps (tracing, allocator and pipeline warm-up) are dropped and the
   median of the rest is reported with images/s (training samples/s) and the ratio to CE. The step runs
   as a compiled ``tf.function`` (graph mode); the harness counts how often the method's Python
   ``compute_losses`` ran to prove no step runs eagerly. ``--jit`` turns on XLA (slower on CPU).
   With ``--rounds R`` > 1 every model is built first and timed R times in turn (round-robin), so load
   from other processes on a shared machine hits all methods alike. A method whose module does not
   import (not written yet) is skipped and listed.
2. **Input pipeline alone**: training batches of the CE stream (and LDLVA forward mode's stream, which
   also loads and augments K neighbour images per sample) iterated without a model, with pixels in
   memory (``--image-cache memory``: decoded once) and read from the files (``files``: JPEG decode +
   resize every step), on one tf.data thread (per core) and on all cores; compared with the images/s
   the CE model consumes.
3. **Serving**: the SavedModel written by :func:`engine.export.export_saved_model`, loaded with
   ``tf.saved_model.load``, ``serving_default`` on uint8 batches, against the Keras model's own forward
   pass (a ``tf.function`` on the normalised float batch), same batch, after warm-up.
4. **Neighbour table**: :func:`data.neighbors.build_neighbor_table` on ``--knn-points`` (1 M) random VA
   points, K = ``--knn-k``.

Output: a markdown block (command, machine, date, tables, goals) to paste into BENCHMARKS.md, and with
``--json FILE`` the raw numbers.
"""

from __future__ import annotations

import argparse

from common.cli import ArgumentParser, nonnegative_int, positive_int, quiet_tensorflow
import datetime
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

# LDLVA is timed per neighbour source (and bank probabilities); every other method once, as registered.
LDLVA_VARIANTS = {
    "ldlva-forward": {"neighbor_source": "forward"},
    "ldlva-bank": {"neighbor_source": "bank"},
    "ldlva-bank-head": {"neighbor_source": "bank", "bank_probs": "head"},
}


def speed_methods() -> dict:
    """Benchmark label → (--method, --set overrides), from the method registry."""
    from models.registry import method_names

    out = {}
    for name in method_names():
        if name == "ldlva":
            out.update({label: ("ldlva", sets) for label, sets in LDLVA_VARIANTS.items()})
        else:
            out[name] = (name, {})
    return out


SECTIONS = ("train", "pipeline", "serving", "knn")

# Goals of the speed issue (checked at the end; "ratio" goals are upper bounds, the others lower bounds).
GOAL_BANK_RATIO = 1.15
GOAL_FORWARD_RATIO = 3.0
GOAL_PIPELINE_FACTOR = 2.0
GOAL_SERVING_FRACTION = 0.95
GOAL_KNN_SECONDS = 10.0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic", help="dataset name (default: the built-in synthetic benchmark)")
    p.add_argument("--data-dir", help="prepared dataset directory (--dataset csv)")
    p.add_argument("--num-classes", type=positive_int, help="for --dataset csv")
    p.add_argument("--synthetic", action="append", default=[], metavar="KEY=VALUE",
                   help="synthetic benchmark setting (default train_size=2000, test_size=500)")
    p.add_argument("--backbone", default="small_cnn", help="resnet50 | resnet18 | resnet101 | mobilenetv2 | small_cnn")
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=32, help="global batch size")
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps per method (per round)")
    p.add_argument("--warmup", type=nonnegative_int, default=5, help="untimed steps first (tracing, caches)")
    p.add_argument("--rounds", type=positive_int, default=1, help="time every method this many times, round-robin")
    p.add_argument("--methods", nargs="+", help="benchmark labels (default: every registered method, "
                   "LDLVA per neighbour source: ldlva-forward ldlva-bank ldlva-bank-head)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra method setting for the methods that have it (e.g. num_neighbors=16)")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train steps (slower on CPU)")
    p.add_argument("--nondeterministic", action="store_true",
                   help="allow non-deterministic ops (runs default to op determinism for exact resume)")
    p.add_argument("--image-cache", default="auto", choices=("auto", "memory", "files"),
                   help="where training pixels come from (files: decode every step)")
    p.add_argument("--mixed-precision", default="auto", choices=("auto", "off", "float32", "mixed_float16",
                                                                  "mixed_bfloat16"),
                   help="auto | off | mixed_float16 | mixed_bfloat16")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to skip")
    p.add_argument("--pipeline-batches", type=positive_int, default=20, help="batches timed per input-pipeline setting")
    p.add_argument("--serving-runs", type=positive_int, default=20, help="timed forward passes per serving setting")
    p.add_argument("--knn-points", type=positive_int, default=1_000_000)
    p.add_argument("--knn-k", type=positive_int, default=8)
    p.add_argument("--json", help="also write the raw results to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file this toolkit did not write")
    return p


# --- machine -------------------------------------------------------------------------------------------
def machine_description() -> dict:
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            gpus.append(tf.config.experimental.get_device_details(device).get("device_name", device.name))
        except Exception:  # details are optional
            gpus.append(device.name)
    try:  # whether TensorFlow's oneDNN CPU kernels are on (benchmarks.onednn; a private but stable call)
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    return {"cpu": cpu, "cpu_count": os.cpu_count() or 1, "gpus": gpus, "onednn": onednn,
            "devices": [d.name for d in tf.config.list_physical_devices()],
            "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
            "os": platform.platform()}


# --- training step ---------------------------------------------------------------------------------------
def step_timer():
    """A Keras callback recording each step's wall time (the logs are read, so the step has finished)."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float((logs or {}).get("loss", 0.0))  # the step's outputs exist: it has finished
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _synthetic_overrides(items: list[str]) -> dict:
    from common.cli import parse_pairs

    out = {"train_size": 2000, "test_size": 500}
    for key, value in parse_pairs(items, "--synthetic").items():
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


def run_config(args, method: str, overrides: dict):
    """The RunConfig every timed method is built from (the same data, backbone, size and batch)."""
    from engine.config import RunConfig

    return RunConfig(dataset=args.dataset, data_dir=args.data_dir, num_classes=args.num_classes, method=method,
                     backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size,
                     mixed_precision=args.mixed_precision, jit=args.jit, set=overrides,
                     nondeterministic=args.nondeterministic, image_cache=args.image_cache,
                     synthetic=_synthetic_overrides(args.synthetic) if args.dataset == "synthetic" else {},
                     export=False, tensorboard=False, verbose=0, run=str(Path(tempfile.gettempdir()) / "fer-speed"))


def chosen_labels(args, methods: dict) -> list[str]:
    """The --methods labels in order, once each (all of ``methods`` when none is given); an unknown one is a
    ConfigError naming the known ones."""
    from common.errors import ConfigError

    labels = list(dict.fromkeys(args.methods or methods))
    unknown = [m for m in labels if m not in methods]
    if unknown:
        raise ConfigError(f"unknown --methods {', '.join(unknown)}; known: {', '.join(methods)}")
    return labels


def check_arguments(args) -> None:
    """Refuse bad options before anything is built or timed (a ConfigError naming the flag): an unknown
    --methods label, --dataset or --backbone, a --set or --synthetic value out of range, a --set key that
    no benchmarked method has, a --json file of the user's."""
    import dataclasses

    from common.config import parse_set_args
    from common.errors import ConfigError
    from common.io import check_output_file
    from engine.config import resolve
    from models.registry import get_method

    if args.json:
        check_output_file(args.json, args.force, flag="--json")
    methods = speed_methods()
    labels = chosen_labels(args, methods)
    extra = parse_set_args(args.set)
    settings = set()
    for label in labels:
        method, base = methods[label]
        try:
            settings |= {f.name for f in dataclasses.fields(get_method(method)[1])}
        except ImportError:  # a method not written yet: bench_training skips and lists it
            continue
        resolve(run_config(args, method, _method_overrides(method, base, extra)))
    stray = sorted(set(extra) - settings)
    if stray:
        raise ConfigError(f"--set {stray[0]}: none of the benchmarked methods ({', '.join(labels)}) has this setting")


def make_run(args, method: str, overrides: dict, shared=None):
    """The :class:`engine.run.Run` of ``method`` on the benchmark data; ``shared`` (a Run) lends its splits and
    pixels."""
    from engine.run import Run

    cfg = run_config(args, method, overrides)
    setup = Run(cfg, log=lambda *a, **k: None, splits=None if shared is None else shared.splits)
    if shared is None:
        setup.load_splits()
    setup.make_sources()
    return setup


def _method_overrides(method: str, base: dict, extra: dict) -> dict:
    """Base overrides plus the ``--set`` ones that the method's config has."""
    import dataclasses

    from models.registry import get_method

    _, config_cls = get_method(method)
    names = {f.name for f in dataclasses.fields(config_cls)}
    return {**base, **{k: v for k, v in extra.items() if k in names}}


class MethodRun:
    """One method built as train.py builds it (``setup``: its :class:`engine.run.Run`); ``run(steps)`` fits
    ``steps`` more steps and keeps their times."""

    def __init__(self, label, setup, method_data):
        from engine.build import build_model
        from engine.setup import configure_runtime

        self.label, self.setup, self.method_data = label, setup, method_data
        self.policy = configure_runtime(setup.cfg)
        self.model = build_model(setup, len(setup.train_table), method_data)
        self.times, self.first_step_s = [], None
        self.python_calls = 0
        self.images_per_sample = 1 + (int(method_data.neighbor_table.shape[1])
                                      if method_data.neighbor_images and method_data.neighbor_table is not None else 0)
        original = self.model.compute_losses

        def counted(*a, **k):  # runs only while tracing when the step is a compiled tf.function
            self.python_calls += 1
            return original(*a, **k)

        self.model.compute_losses = counted

    def run(self, steps: int, drop: int) -> None:
        start_step = int(self.model.optimizer.iterations.numpy())
        dataset = self.setup.train_dataset(self.method_data, start_step)
        timer = step_timer()
        self.model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
        if self.first_step_s is None:
            self.first_step_s = timer.times[0]
        self.times.extend(timer.times[drop:])

    def summary(self, batch: int) -> dict:
        median = statistics.median(self.times)
        return {"median_step_s": median, "images_per_s": batch / median,
                "model_images_per_s": batch * self.images_per_sample / median,
                "images_per_sample": self.images_per_sample, "timed_steps": len(self.times),
                "first_step_s": self.first_step_s, "python_calls": self.python_calls,
                "graph": not self.model.run_eagerly and self.python_calls < len(self.times),
                "jit": bool(self.setup.cfg.jit), "policy": self.policy}


def bench_training(args, log) -> tuple[dict, dict, object]:
    """Returns (results by label, skipped label → reason, the CE MethodRun for later sections)."""
    import keras

    from common.config import parse_set_args
    from common.errors import ConfigError

    methods = speed_methods()
    labels = chosen_labels(args, methods)
    extra = parse_set_args(args.set)
    results, skipped, runs = {}, {}, []
    shared, ce_run = None, None
    for label in labels:
        method, base = methods[label]
        try:
            overrides = _method_overrides(method, base, extra)
            setup = make_run(args, method, overrides, shared)
        except ConfigError as exc:
            skipped[label] = str(exc)
            log(f"[skip] {label}: {exc}")
            continue
        shared = shared or setup
        try:
            log(f"[build] {label}")
            run = MethodRun(label, setup, setup.method_inputs())
            if args.rounds == 1:
                _time_run(run, args, 0, log)
                results[label] = run.summary(args.batch_size)
                if label == "ce":
                    ce_run = run
                else:
                    del run
                    gc.collect()
            else:
                runs.append(run)
                ce_run = run if label == "ce" else ce_run
        except Exception as exc:  # a method that imports but fails to build or train: report, go on
            skipped[label] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"[fail] {label}: {skipped[label]}")
            traceback.print_exc(limit=3, file=sys.stderr)
    for r in range(args.rounds if args.rounds > 1 else 0):
        for run in runs:
            _time_run(run, args, r, log)
    for run in runs:
        results[run.label] = run.summary(args.batch_size)
    if "ce" in results:
        for res in results.values():
            res["ratio_to_ce"] = res["median_step_s"] / results["ce"]["median_step_s"]
    keras.mixed_precision.set_global_policy("float32")
    return results, skipped, ce_run


def _time_run(run, args, round_index: int, log) -> None:
    # The first round drops --warmup steps (tracing); later rounds drop one (the restarted pipeline).
    drop = args.warmup if round_index == 0 else 1
    run.run(args.steps + drop, drop)
    log(f"[time] {run.label} round {round_index + 1}: median so far {1000 * statistics.median(run.times):.1f} ms")


# --- input pipeline ---------------------------------------------------------------------------------------
def _images_per_second(dataset, batches: int, warmup: int = 2) -> float:
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        count += int(batch["image"].shape[0])
        if "neighbor_images" in batch:
            count += int(batch["neighbor_images"].shape[0] * batch["neighbor_images"].shape[1])
    return count / (time.perf_counter() - start)


def bench_pipeline(args, setup, log) -> dict:
    """images/s decoded + augmented, memory vs files, one tf.data thread vs all cores; CE and LDLVA-forward streams."""
    import tensorflow as tf

    from data.neighbors import build_neighbor_table
    from data.pipeline import ImageSource, make_train_dataset

    table = setup.train_table
    config = setup.pipeline_config()
    sources = {"files": ImageSource(table, args.image_size, "files")}
    if setup.splits.train_source.mode == "memory":
        sources["memory"] = setup.splits.train_source
    elif len(table) * args.image_size ** 2 * 3 <= 3e9:  # what --image-cache auto would keep in RAM
        sources["memory"] = ImageSource(table, args.image_size, "memory")
    spe = math.ceil(len(table) / args.batch_size)
    epochs = math.ceil((args.pipeline_batches + 2) / spe) + 1
    streams = {"ce": {}}
    if table.va is not None:
        streams["ldlva-forward"] = {"neighbor_table": build_neighbor_table(table.va, 8)[0].astype("int32"),
                                    "neighbor_images": True}
    out = {"default_mode": setup.splits.train_source.mode, "cpu_count": os.cpu_count() or 1}
    for stream, kwargs in streams.items():
        for mode, source in sources.items():
            for threads in (1, 0):
                dataset = make_train_dataset(source, config, args.batch_size, epochs=epochs, **kwargs)
                if threads:
                    options = tf.data.Options()
                    options.threading.private_threadpool_size = threads
                    dataset = dataset.with_options(options)
                rate = _images_per_second(dataset, args.pipeline_batches)
                key = f"{stream}/{mode}/{'1 thread' if threads else 'all cores'}"
                out[key] = rate
                log(f"[pipeline] {key}: {rate:.0f} images/s")
    return out


# --- serving ----------------------------------------------------------------------------------------------
def _median_seconds(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_serving(args, setup, model, log) -> dict:
    import numpy as np
    import tensorflow as tf

    from engine.export import export_saved_model

    size = args.image_size
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (args.batch_size, size, size, 3), dtype=np.uint8))
    normalised = (tf.cast(images, tf.float32) - 127.5) / 127.5
    forward = tf.function(lambda x: model(x, training=False), jit_compile=bool(args.jit))
    export_dir = Path(tempfile.mkdtemp(prefix="fer-speed-export-")) / "saved_model"
    start = time.perf_counter()
    export_saved_model(model, export_dir, size, setup.spec.class_names, setup.cfg.method)
    export_s = time.perf_counter() - start
    serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    # Alternate the two so that background load hits both alike.
    keras_t, serve_t = [], []
    for _ in range(3):
        keras_t.append(_median_seconds(lambda: forward(normalised).numpy(), max(args.serving_runs // 3, 3)))
        serve_t.append(_median_seconds(lambda: serve(images=images)["probabilities"].numpy(),
                                       max(args.serving_runs // 3, 3)))
    keras_s, serve_s = statistics.median(keras_t), statistics.median(serve_t)
    shutil.rmtree(export_dir.parent, ignore_errors=True)
    out = {"batch": args.batch_size, "keras_forward_images_per_s": args.batch_size / keras_s,
           "saved_model_images_per_s": args.batch_size / serve_s, "fraction": keras_s / serve_s, "export_s": export_s}
    log(f"[serving] keras {out['keras_forward_images_per_s']:.0f} img/s, SavedModel "
        f"{out['saved_model_images_per_s']:.0f} img/s ({100 * out['fraction']:.1f} %)")
    return out


# --- neighbour table --------------------------------------------------------------------------------------
def bench_knn(args, log) -> dict:
    import numpy as np

    from data.neighbors import build_neighbor_table

    rng = np.random.default_rng(0)
    va = rng.uniform(-1.0, 1.0, (args.knn_points, 2))
    start = time.perf_counter()
    indices, _ = build_neighbor_table(va, args.knn_k)
    seconds = time.perf_counter() - start
    assert indices.shape == (args.knn_points, args.knn_k)
    log(f"[knn] {args.knn_points} points, K={args.knn_k}: {seconds:.2f} s")
    return {"points": args.knn_points, "k": args.knn_k, "seconds": seconds}


# --- report -----------------------------------------------------------------------------------------------
def _fmt(value, spec=".1f", missing="–"):
    return missing if value is None else format(value, spec)


def markdown_report(args, machine, results, skipped, pipeline, serving, knn, argv) -> str:
    lines = []
    command = "python -m benchmarks.speed" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    lines.append(f"### Speed benchmark ({datetime.date.today().isoformat()})\n")
    lines.append(f"Command: `{command}`  ")
    gpu = ", ".join(machine["gpus"]) if machine["gpus"] else "none (CPU only)"
    onednn = {True: "on", False: "off"}.get(machine.get("onednn"), "unknown")
    lines.append(f"Machine: {machine['cpu']}, {machine['cpu_count']} cores; GPU: {gpu}; oneDNN: {onednn}; "
                 f"TF {machine['tensorflow']}, Keras {machine['keras']}, Python {machine['python']}  ")
    lines.append(f"Setting: {args.dataset} data, backbone {args.backbone} @ {args.image_size} px, batch {args.batch_size}, "
                 f"median of {args.steps}×{args.rounds} steps after {args.warmup} warm-up, "
                 f"{'XLA (--jit)' if args.jit else 'graph mode, no XLA'}, precision {args.mixed_precision}, "
                 f"{'non-deterministic ops' if args.nondeterministic else 'op determinism on'}\n")
    if results:
        lines.append("| method | step (ms, median) | samples/s | images forwarded/s | × CE | first step (s) | compiled step |")
        lines.append("|---|---|---|---|---|---|---|")
        for label, r in results.items():
            graph = "yes" if r["graph"] else "NO (eager)"
            lines.append(f"| {label} | {1000 * r['median_step_s']:.1f} | {r['images_per_s']:.0f} | "
                         f"{r['model_images_per_s']:.0f} | {_fmt(r.get('ratio_to_ce'), '.2f')} | "
                         f"{r['first_step_s']:.1f} | {graph} ({r['python_calls']} trace{'s' if r['python_calls'] != 1 else ''}) |")
        lines.append("")
    for label, reason in skipped.items():
        lines.append(f"- skipped {label}: {reason}")
    if skipped:
        lines.append("")
    if pipeline:
        cores = pipeline["cpu_count"]
        lines.append(f"Input pipeline alone (decoded + augmented images/s; default cache mode here: "
                     f"{pipeline['default_mode']}; {cores} cores):\n")
        lines.append("| stream | pixels | 1 tf.data thread | all cores | all cores / core |")
        lines.append("|---|---|---|---|---|")
        for stream in ("ce", "ldlva-forward"):
            for mode in ("memory", "files"):
                one, all_ = pipeline.get(f"{stream}/{mode}/1 thread"), pipeline.get(f"{stream}/{mode}/all cores")
                if one is None:
                    continue
                lines.append(f"| {stream} | {mode} | {one:.0f} | {all_:.0f} | {all_ / cores:.0f} |")
        lines.append("")
    if serving:
        lines.append(f"Serving (batch {serving['batch']}): SavedModel `serving_default` (uint8 in, resize + normalise "
                     f"+ softmax inside) {serving['saved_model_images_per_s']:.0f} images/s vs Keras forward "
                     f"(tf.function, float input) {serving['keras_forward_images_per_s']:.0f} images/s = "
                     f"**{100 * serving['fraction']:.1f} %**; export took {serving['export_s']:.1f} s.\n")
    if knn:
        lines.append(f"Neighbour table: {knn['points']:,} random VA points, K = {knn['k']}: **{knn['seconds']:.2f} s**.\n")
    lines.append("Goals:\n")
    lines.extend(goal_lines(results, pipeline, serving, knn))
    if not args.jit:
        lines.append("\nXLA: `--jit` compiles the step with XLA; on CPU it is usually slower than plain graph mode "
                     "(its CPU convolutions are less tuned than oneDNN's); use it on GPU.")
    return "\n".join(lines)


def goal_lines(results, pipeline, serving, knn) -> list[str]:
    out = []

    def goal(name, value, target, ok, unit=""):
        mark = "met" if ok else "**MISSED**"
        out.append(f"- {name}: {value}{unit} (goal {target}) — {mark}")

    ce = results.get("ce")
    if ce and "ldlva-bank" in results:
        r = results["ldlva-bank"]["ratio_to_ce"]
        goal("LDLVA bank / CE step time", f"{r:.2f}×", f"≤ {GOAL_BANK_RATIO}×", r <= GOAL_BANK_RATIO)
    if ce and "ldlva-bank-head" in results:
        r = results["ldlva-bank-head"]["ratio_to_ce"]
        goal("LDLVA bank (bank_probs=head) / CE step time", f"{r:.2f}×", f"≤ {GOAL_BANK_RATIO}×",
             r <= GOAL_BANK_RATIO)
    if ce and "ldlva-forward" in results:
        r = results["ldlva-forward"]["ratio_to_ce"]
        goal("LDLVA forward / CE step time", f"{r:.2f}×", f"≤ {GOAL_FORWARD_RATIO}×", r <= GOAL_FORWARD_RATIO)
    if results:
        eager = [k for k, r in results.items() if not r["graph"]]
        goal("compiled train steps", "all" if not eager else "eager: " + ", ".join(eager), "no eager Python per step",
             not eager)
    if ce and pipeline:
        mode = pipeline["default_mode"]
        rate = pipeline.get(f"ce/{mode}/all cores")
        factor = rate / ce["images_per_s"]
        goal("input pipeline / CE consumption", f"{factor:.1f}×", f"≥ {GOAL_PIPELINE_FACTOR}×",
             factor >= GOAL_PIPELINE_FACTOR)
        fwd = results.get("ldlva-forward")
        if fwd and f"ldlva-forward/{mode}/all cores" in pipeline:
            factor = pipeline[f"ldlva-forward/{mode}/all cores"] / fwd["model_images_per_s"]
            goal("input pipeline / LDLVA-forward consumption (1+K images per sample)", f"{factor:.1f}×",
                 f"≥ {GOAL_PIPELINE_FACTOR}×", factor >= GOAL_PIPELINE_FACTOR)
    if serving:
        goal("SavedModel / Keras forward throughput", f"{100 * serving['fraction']:.1f} %",
             f"≥ {100 * GOAL_SERVING_FRACTION:.0f} %", serving["fraction"] >= GOAL_SERVING_FRACTION)
    if knn:
        goal(f"neighbour table, {knn['points']:,} points", f"{knn['seconds']:.2f} s", f"< {GOAL_KNN_SECONDS:.0f} s",
             knn["seconds"] < GOAL_KNN_SECONDS)
    return out


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_arguments(args)
    quiet_tensorflow()  # the level is set: this only skips Keras's optional imports, as every command does
    skip = set(args.skip)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    machine = machine_description()
    log(f"[machine] {machine['cpu']} ({machine['cpu_count']} cores), GPUs: {machine['gpus'] or 'none'}, "
        f"devices: {', '.join(machine['devices'])}")
    results, skipped, ce_run = {}, {}, None
    pipeline = serving = knn = None
    if "train" in skip:
        args.methods = ["ce"]  # the pipeline and serving sections still need the CE model
        args.steps, args.warmup = 1, 0
    results, skipped, ce_run = bench_training(args, log)
    if "train" in skip:
        results = {}
    if ce_run is not None:
        if "pipeline" not in skip:
            pipeline = bench_pipeline(args, ce_run.setup, log)
        if "serving" not in skip:
            serving = bench_serving(args, ce_run.setup, ce_run.model, log)
    if "knn" not in skip:
        knn = bench_knn(args, log)
    report = markdown_report(args, machine, results, skipped, pipeline, serving, knn, argv)
    print(report)
    if args.json:
        from common.io import atomic_write_text, stamp

        atomic_write_text(args.json, json.dumps(stamp({
            "argv": argv, "machine": machine, "training": results, "skipped": skipped, "pipeline": pipeline,
            "serving": serving, "knn": knn, "date": datetime.datetime.now().isoformat()}, "benchmarks.speed"),
            indent=2, default=str))
    return 0


if __name__ == "__main__":
    from common.cli import run_main

    sys.exit(run_main(main))
