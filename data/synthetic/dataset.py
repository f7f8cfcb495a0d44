"""The synthetic FER benchmark as a prepared dataset directory: sampling, writing, caching.

A sample is the generative model (:mod:`data.synthetic.generative`) rendered as a face
(:mod:`data.synthetic.render`) and stored as a JPEG, which adds compression artefacts to the
renderer's nuisances.

Output (a prepared dataset directory, see ``data.registry``)::

    OUT/train.csv, OUT/test.csv [, OUT/val.csv]   schema tables + true_distribution, latent_class
    OUT/images/{train,test,val}/000000.jpg        paths in the tables are relative to OUT/images
    OUT/meta.json                                 config, class counts, ceiling accuracies

``ensure_synthetic`` keeps one copy per config under the data home (``$FER_DATA_HOME``, default
``~/.cache/fer-ldl``) as ``synthetic-<config hash>``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np

from common.errors import DataError
from common.io import atomic_write_json
from data.schema import format_float_list
from data.synthetic.generative import (SPLIT_IDS, SyntheticConfig, class_names, class_priors, expression_params,
                                       latent_class_sequence, sample_annotations)
from common.progress import Progress
from data.synthetic.output import chunk_size, ensure_cached, resolve_workers, run_jobs, write_fresh
from data.synthetic.render import NUM_LANDMARKS, render_face

# Bump when the generative model or the renderer changes: it is part of the config hash, so a cached
# dataset produced by older code is never mistaken for the current one.
GENERATOR_VERSION = 1
# The generator's name recorded in meta.json. It names the module the generator lived in when version 1
# was written; it stays, so that meta.json -- and every cached dataset -- is byte-identical across moves.
_GENERATOR_NAME = "preprocess.synthetic"
_META = "meta.json"
COLUMNS = ["path", "expression", "valence", "arousal", "votes", "landmarks", "true_distribution", "latent_class"]


def config_hash(config: SyntheticConfig) -> str:
    """Short stable hash of everything that determines the generated files (not ``workers``)."""
    payload = json.dumps({"version": GENERATOR_VERSION, **config.content_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def render_sample(config: SyntheticConfig, split: str, index: int, latent: int,
                  priors: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Sample ``index`` of ``split``: (RGB image, annotation row without ``path``). Pure function of inputs."""
    if priors is None:
        priors = class_priors(config)
    rng = np.random.default_rng([config.seed, SPLIT_IDS[split], index])
    ann = sample_annotations(rng, latent, config, priors, majority=(split == "test"))
    ex = expression_params(rng, ann["z"], ann["p"])
    img, lm = render_face(rng, ex, config.image_size, config.occluder_prob)
    row = {
        "expression": ann["label"],
        "valence": f"{ann['va'][0]:.4f}",
        "arousal": f"{ann['va'][1]:.4f}",
        "votes": ";".join(str(int(v)) for v in ann["votes"]),
        "landmarks": format_float_list(lm, precision=2),
        "true_distribution": format_float_list(ann["p"], precision=4),
        "latent_class": int(latent),
    }
    return img, row


def encode_jpeg(img: np.ndarray, quality: int, name: str) -> bytes:
    """RGB uint8 image -> JPEG bytes (OpenCV wants BGR)."""
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV only fails here on a broken build
        raise DataError(f"could not encode synthetic image {name}")
    return buf.tobytes()


def _render_chunk(job: tuple) -> list[dict]:
    """Worker entry: render samples ``start..`` of one split, write their JPEGs, return their rows."""
    config, split, start, latents, image_dir = job
    priors = class_priors(config)
    rows = []
    for offset, latent in enumerate(latents):
        index = start + offset
        img, row = render_sample(config, split, index, int(latent), priors)
        name = f"{index:06d}.jpg"
        # Plain writes are enough: the whole folder is temporary until it is renamed into place.
        with open(os.path.join(image_dir, name), "wb") as handle:
            handle.write(encode_jpeg(img, config.jpeg_quality, f"{split}/{name}"))
        rows.append({"path": f"{split}/{name}", **row})
    return rows


def _split_summary(frame, num_classes: int, majority: bool) -> dict:
    labels = frame["expression"].to_numpy()
    p = np.array([[float(v) for v in s.split(";")] for s in frame["true_distribution"]])
    argmax = p.argmax(1)
    return {
        "size": int(len(frame)),
        "label_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "latent_counts": np.bincount(frame["latent_class"].to_numpy(), minlength=num_classes).tolist(),
        "label_agreement": round(float(np.mean(labels == argmax)), 6),
        "mean_max_prob": round(float(p.max(1).mean()), 6),
        "ambiguous_fraction": round(float(np.mean(p.max(1) < 0.8)), 6),
        "label_kind": "majority_vote" if majority else "single_annotator",
    }


def _write_dataset(root: Path, config: SyntheticConfig, progress: bool) -> None:
    """Render every split into ``root`` (an empty folder) and write the tables and meta.json last."""
    import pandas as pd

    os.chmod(root, 0o755)  # mkdtemp makes 0700 folders; a dataset should be readable like any other
    priors = class_priors(config)
    splits = [(s, n) for s, n in (("train", config.train_size), ("val", config.val_size),
                                  ("test", config.test_size)) if n > 0]
    total = sum(n for _, n in splits)
    workers = resolve_workers(config.workers, total)
    chunk = chunk_size(total, workers)
    jobs = []
    for split, n in splits:
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True)
        latents = latent_class_sequence(n, priors, config.seed, SPLIT_IDS[split])
        for start in range(0, n, chunk):
            jobs.append((config, split, start, latents[start:start + chunk].tolist(), str(image_dir)))

    bar = Progress("synthetic", total, unit="images", enabled=progress)
    rows: dict[str, list[dict]] = {s: [] for s, _ in splits}

    def collect(job, out):
        rows[job[1]].extend(out)
        bar.update(len(out))

    run_jobs(_render_chunk, jobs, workers, collect)
    bar.close()

    summaries = {}
    for split, _ in splits:
        frame = pd.DataFrame(rows[split], columns=COLUMNS)
        frame.to_csv(root / f"{split}.csv", index=False)
        summaries[split] = _split_summary(frame, config.num_classes, majority=(split == "test"))
    meta = {
        "generator": _GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "config": config.content_dict(),
        "config_hash": config_hash(config),
        "class_names": list(class_names(config)),
        "class_priors": [round(float(v), 6) for v in priors],
        "image_size": config.image_size,
        "num_landmarks": NUM_LANDMARKS,
        "landmark_format": "iBUG-68, x;y pairs in stored-image pixels",
        "splits": summaries,
        # Ceilings: the best any classifier that saw the latent VA point could do.
        "bayes_test_accuracy": summaries["test"]["label_agreement"],
        "train_label_agreement": summaries["train"]["label_agreement"],
    }
    atomic_write_json(root / _META, meta)  # written last: its presence marks a complete dataset
    os.chmod(root / _META, 0o644)  # the atomic writer's temp file is private (0600)


def generate(out_dir, config: SyntheticConfig | None = None, force: bool = False, progress: bool = True) -> Path:
    """Generate the benchmark into ``out_dir`` atomically; refuse a non-empty ``out_dir`` unless ``force``."""
    config = config or SyntheticConfig()
    config.validate()
    # A lambda, not a reference: ``_write_dataset`` is looked up when it runs (tests patch it).
    return write_fresh(out_dir, lambda tmp: _write_dataset(tmp, config, progress), force, "synthetic dataset", "meta.json")


def default_root(config: SyntheticConfig) -> Path:
    """The cache folder of ``config``: ``<data home>/synthetic-<config hash>``."""
    from data.registry import data_home

    return data_home() / f"synthetic-{config_hash(config)}"


def ensure_synthetic(config: SyntheticConfig | None = None, root=None, progress: bool = True) -> Path:
    """Return the prepared directory for ``config``, generating it first if it does not exist yet.

    ``root`` defaults to :func:`default_root`. Idempotent and safe when several processes race: each
    renders into its own temporary folder and renames it into place; a rename that finds the target
    already populated discards its own copy.
    """
    config = config or SyntheticConfig()
    config.validate()
    target = Path(root) if root is not None else default_root(config)
    return ensure_cached(target, lambda tmp: _write_dataset(tmp, config, progress), _META,
                         config_hash(config), "synthetic dataset")


def ensure_synthetic_from_options(options: dict | None = None, progress: bool = True) -> Path:
    """The dataset-provider entry (``--synthetic KEY=VALUE`` options, already typed): :func:`ensure_synthetic`."""
    options = dict(options or {})
    if options.get("class_weights") is not None:
        options["class_weights"] = tuple(float(w) for w in options["class_weights"])  # a frozen config holds tuples
    return ensure_synthetic(SyntheticConfig(**options), progress=progress)
