"""Keras 3's ``Model.export`` against the conversions it replaced, side by side on one run's test split.

    python -m benchmarks.keras_export --run runs/synthetic_ce_seed0 [--formats tflite tflite-int8 onnx] [--json FILE]

The run's model is exported as the serving SavedModel (the reference), then every format twice:

* **before**: converted from the SavedModel's ``serving_default`` signature, as ``engine/deploy.py`` did
  until Keras' exporters were used: ``tf.lite.TFLiteConverter.from_saved_model`` (``Optimize.DEFAULT``
  for int8) and the ``tf2onnx.convert`` command line (opset 17) in a separate interpreter;
* **Keras**: ``keras.Model.export(format="litert" | "onnx")`` of :class:`engine.export.FERServingModel`
  (:func:`engine.deploy.convert`, what ``export.py --formats`` now writes).

For each: top-1 agreement and the largest probability difference with the SavedModel on the test split
(:func:`engine.deploy.agreement`), the two exports against each other, file size, conversion seconds and,
for LiteRT, whether the file needs TensorFlow (Flex) ops. Prints a markdown block for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.cli import ArgumentParser, quiet_tensorflow, run_main

FORMAT_CHOICES = ("tflite", "tflite-int8", "onnx")


def convert_from_saved_model(saved_model_dir, fmt: str) -> bytes:
    """The conversion ``engine/deploy.py`` used before Keras' exporters (kept here to reproduce the comparison)."""
    saved_model_dir = str(saved_model_dir)
    if fmt in ("tflite", "tflite-int8"):
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=["serving_default"])
        if fmt == "tflite-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "model.onnx"
        done = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", saved_model_dir,
                               "--signature_def", "serving_default", "--opset", "17", "--output", str(target)],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if done.returncode != 0 or not target.is_file():
            raise RuntimeError(f"tf2onnx failed: {done.stderr[-500:]}")
        return target.read_bytes()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def needs_flex_ops(data: bytes) -> bool:
    """Whether a LiteRT flatbuffer names a TensorFlow (Flex) custom op."""
    return b"Flex" in data


def compare(run_dir, formats, log=print) -> dict:
    import tensorflow as tf

    from data.images import load_image_array
    from engine.deploy import FORMATS, agreement, batched, convert, predictor
    from engine.export import FERServingModule, export_saved_model
    from engine.results import load_run_model

    run, model, _ = load_run_model(run_dir, log=lambda *a, **k: None)
    run.load_splits(need_train=False)
    table = run.test_table
    size = run.cfg.image_size
    images = load_image_array(table.image_root, table.paths, size, table.csv_path)
    results = {"run": str(run_dir), "method": run.cfg.method, "backbone": run.cfg.backbone,
               "image_size": size, "test_images": int(len(images)), "formats": {}}
    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / "saved_model"
        export_saved_model(model, saved, size, run.spec.class_names, run.cfg.method,
                           input_norm=run.cfg.input_norm, log=lambda *a, **k: None)
        serve = tf.saved_model.load(str(saved)).signatures["serving_default"]
        reference = batched(lambda x: serve(images=tf.constant(x))["probabilities"].numpy(), images)
        serving_model = FERServingModule(model, size, run.spec.class_names).keras_model()
        for fmt in formats:
            row = {}
            outputs = {}
            for path_name, make in (("before", lambda: convert_from_saved_model(saved, fmt)),
                                    ("keras", lambda: convert(serving_model, fmt))):
                start = time.perf_counter()
                data = make()
                seconds = time.perf_counter() - start
                target = Path(folder) / f"{path_name}_{FORMATS[fmt]}"
                target.write_bytes(data)
                outputs[path_name] = batched(predictor(target, fmt), images)
                row[path_name] = {**agreement(reference, outputs[path_name]), "bytes": len(data),
                                  "convert_seconds": round(seconds, 2)}
                if fmt != "onnx":
                    row[path_name]["flex_ops"] = needs_flex_ops(data)
                log(f"{fmt:11s} {path_name:6s}: top-1 {100 * row[path_name]['top1_agreement']:.2f} %, max |Δp| "
                    f"{row[path_name]['max_abs_probability_difference']:.2e}, {len(data) / 1e6:.2f} MB, {seconds:.1f} s")
            row["keras_vs_before"] = agreement(outputs["before"], outputs["keras"])
            results["formats"][fmt] = row
    results["machine"] = f"{cpu_name()}, {os.cpu_count()} CPUs, no GPU used"
    results["date"] = time.strftime("%Y-%m-%d")
    return results


def markdown(results: dict, command: str) -> str:
    lines = [f"`{command}` — {results['method']} / {results['backbone']} @ {results['image_size']} px, "
             f"{results['test_images']} test images; {results['machine']}, {results['date']}.", "",
             "| format | path | top-1 agreement with the SavedModel | max \\|Δp\\| | size | conversion | Flex ops |",
             "|---|---|---:|---:|---:|---:|---|"]
    for fmt, row in results["formats"].items():
        for path_name in ("before", "keras"):
            r = row[path_name]
            lines.append(f"| {fmt} | {'Keras Model.export' if path_name == 'keras' else 'from the SavedModel'} | "
                         f"{100 * r['top1_agreement']:.2f} % | {r['max_abs_probability_difference']:.1e} | "
                         f"{r['bytes'] / 1e6:.2f} MB | {r['convert_seconds']:.1f} s | "
                         f"{'yes' if r.get('flex_ops') else 'no' if 'flex_ops' in r else '–'} |")
        k = row["keras_vs_before"]
        lines.append(f"| {fmt} | Keras vs before | {100 * k['top1_agreement']:.2f} % | "
                     f"{k['max_abs_probability_difference']:.1e} | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.keras_export", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished run directory")
    p.add_argument("--formats", nargs="+", default=list(FORMAT_CHOICES), choices=FORMAT_CHOICES)
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    quiet_tensorflow()
    results = compare(args.run, args.formats)
    command = "python -m benchmarks.keras_export " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(results, command))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
