"""``MODEL_CARD.md`` written into every export: what the model is, what it was trained on, how well it
does, how to feed it, and what it must not be used for (Mitchell et al., "Model Cards for Model
Reporting", FAT* 2019)."""

from __future__ import annotations

import json


def _pct(value) -> str:
    return "–" if value is None else f"{100 * float(value):.2f} %"


def provenance(run, metrics: dict | None) -> dict:
    """What an export records about its training run (an :class:`engine.run.Run`) and its test ``metrics``."""
    from common.config import to_dict

    cfg, spec = run.cfg, run.spec
    return {"dataset": spec.name, "dataset_description": spec.description, "licence": spec.licence,
            "synthetic": spec.provider is not None, "method": cfg.method, "run_dir": str(run.run_dir),
            "run": {k: v for k, v in to_dict(cfg).items() if k in (
                "backbone", "weights", "input_norm", "image_size", "epochs", "batch_size", "lr", "optimizer",
                "lr_schedule", "noise", "noise_rate", "imbalance_factor", "seed", "preset")},
            "method_config": to_dict(run.method_cfg), "metrics": metrics or {}}


def model_card(meta: dict) -> str:
    """The model card text of an export (its ``fer_export.json`` content)."""
    prov = meta.get("provenance") or {}
    metrics = prov.get("metrics") or {}
    run = prov.get("run") or {}
    names = meta["class_names"]
    lines = [f"# Model card: {prov.get('method', meta.get('method', '?'))} on {prov.get('dataset', '?')}", ""]
    if prov.get("synthetic"):
        lines += ["> **Demonstration model.** It was trained on the toolkit's built-in *synthetic* benchmark "
                  "(procedurally rendered cartoon faces). It does not transfer to photographs of real faces: "
                  "its predictions on them are meaningless. Train on a real dataset for real use.", ""]
    lines += [
        "## Model", "",
        f"- Method: `{prov.get('method', meta.get('method', ''))}`; backbone `{run.get('backbone', '?')}` "
        f"(weights: `{run.get('weights', '?')}`); trained {run.get('epochs', '?')} epochs, batch "
        f"{run.get('batch_size', '?')}, {run.get('optimizer', '?')} lr {run.get('lr', '?')} ({run.get('lr_schedule', '?')}), "
        f"seed {run.get('seed', '?')}.",
        f"- Training run: `{prov.get('run_dir', '')}` (its `config.json` holds every setting).",
        "", "## Classes (output order)", "",
        "| index | class |", "|---:|---|", *[f"| {i} | {n} |" for i, n in enumerate(names)],
        "", "## Input and preprocessing", "",
        "- `serving_default`: `images`, uint8 RGB `(batch, height, width, 3)` of any size; "
        "`serve_bytes`: `image_bytes`, encoded JPEG/PNG strings.",
        f"- Inside the model: bilinear resize to {meta['image_size']}×{meta['image_size']}, then "
        "`(x − 127.5) / 127.5`, then the backbone's own input layer "
        f"(`{(meta.get('preprocessing') or {}).get('backbone_input_norm', {}).get('mode', 'none')}`): feed raw pixels, "
        "nothing else. Faces should be cropped and aligned as the training images were "
        "(`python -m preprocess.align` for raw photos).",
        "- Outputs: `probabilities` `(batch, classes)` float32 and `label` `(batch,)` int64.",
        "", "## Training data", "",
        f"- {prov.get('dataset_description', prov.get('dataset', '?'))}.",
        f"- Label protocol: noise `{run.get('noise', 'none')}` at rate {run.get('noise_rate', 0)}, imbalance "
        f"factor {run.get('imbalance_factor', 1)}.",
        f"- Terms: {prov.get('licence', 'unknown')}. A model trained on data inherits its terms.",
        "", "## Test metrics", "",
        f"- Accuracy {_pct(metrics.get('accuracy'))}, mean class accuracy {_pct(metrics.get('mean_class_accuracy'))}, "
        f"macro F1 {_pct(metrics.get('macro_f1'))} on {metrics.get('num_samples', '?')} test images.",
        f"- Calibration: expected calibration error (15 bins) {_pct(metrics.get('ece'))}; NLL "
        f"{metrics.get('nll', float('nan')):.4f}." if metrics.get("nll") is not None else
        f"- Calibration: expected calibration error (15 bins) {_pct(metrics.get('ece'))}.",
    ]
    per_class = metrics.get("per_class_accuracy") or {}
    if per_class:
        lines += ["- Per-class accuracy: " + ", ".join(f"{k} {_pct(v)}" for k, v in per_class.items()) + "."]
    formats = meta.get("formats") or {}
    if formats:
        lines += ["", "## Other formats (checked against this SavedModel on the test split)", "",
                  "| file | size | top-1 agreement | max abs probability difference |", "|---|---:|---:|---:|"]
        for fmt, check in formats.items():
            lines.append(f"| `{check['file']}` ({fmt}) | {check['bytes'] / 1e6:.1f} MB | "
                         f"{_pct(check.get('top1_agreement'))} | {check.get('max_abs_probability_difference', float('nan')):.2e} |")
    lines += ["", "## Intended use and limits", "",
              "- Research on facial expression recognition; a demonstration of the training methods.",
              "- Expression classifiers read facial *appearance*, not felt emotion; accuracy varies with pose, "
              "occlusion, lighting, age and demographics, none of which this card measures. Do not use it for "
              "decisions about people (hiring, policing, health, education) or to infer emotions without consent.",
              "- The metrics above hold for the test split of the training dataset only.", "",
              f"<!-- fer_export.json: {json.dumps({k: meta[k] for k in ('image_size', 'method')})} -->", ""]
    return "\n".join(lines)
