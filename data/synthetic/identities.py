"""Synthetic face identities: a stand-in for identity pretraining data such as MS-Celeb-1M.

Face-expression backbones are often pretrained on face *identity* classification (MS-Celeb-1M: Guo et
al., *MS-Celeb-1M: A Dataset and Benchmark for Large-Scale Face Recognition*, ECCV 2016) before they
are fine-tuned on expressions. That data cannot be downloaded here, so this module renders its analogue
with the benchmark's own renderer: ``num_identities`` people, each with identity parameters (face shape,
feature sizes and spacing, skin, hair, iris; :func:`data.synthetic.render.sample_identity`) fixed across
``images_per_identity`` images, while everything else varies per image: gaze, the expression (a latent
class drawn uniformly, a VA point in its cluster, the prototype blend and intensity of
:func:`data.synthetic.generative.expression_params`), pose (position, scale, in-plane rotation),
clothing, background, occluders, lighting, colour cast, blur and noise.

Disjoint from the benchmark
---------------------------
Benchmark faces draw from ``np.random.default_rng([seed, split, index])`` (split in 0..2, index below
2**32; the latent order uses index 2**32 - 1). Identity ``j`` draws its parameters from
``SeedSequence([seed, IDENTITY_NAMESPACE], spawn_key=(j,))`` and its image ``k`` from
``SeedSequence([seed, IDENTITY_NAMESPACE], spawn_key=(j, k))``. With a spawn key numpy zero-pads the
entropy to its 4-word pool before appending the key, so these streams hash the words
``[seed, IDENTITY_NAMESPACE, 0, 0, j(, k)]`` (``seed`` < 2**32 is one word). A benchmark stream's words
are ``words(seed) + [split, index]``; for it to be 5 or 6 words long its seed must take 3 or 4 words,
whose most significant word is non-zero exactly where ours hold a 0. So no identity stream shares its
entropy with any benchmark stream, for any benchmark seed: the identities are distinct draws, never a
benchmark face's identity (the tests also check it on a small config).

Output (a prepared dataset directory)::

    OUT/train.csv, OUT/test.csv   path, identity, expression, valence, arousal, landmarks,
                                  true_distribution, latent_class
    OUT/images/{train,test}/IIIIII_KKK.jpg   identity IIIIII, image KKK
    OUT/identities.csv            each identity's parameters (one row per identity)
    OUT/dataset.json              config, config hash, counts, what the columns mean (written last)

``identity`` (0..num_identities-1) is the label of the identity task. ``expression`` is the class the
face shows most (argmax of its true distribution over ``num_classes`` expression classes), so the tables
also validate against the expression schema; ``valence``/``arousal`` are the exact latent VA point.
Images ``0..images_per_identity - test_per_identity - 1`` of every identity are in ``train.csv``, the
rest in ``test.csv``, so identity accuracy can be measured on unseen images of known people.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError
from common.io import atomic_write_json
from data.classes import AFFECTNET8_CLASSES
from data.schema import format_float_list
from data.synthetic.dataset import GENERATOR_VERSION, encode_jpeg
from data.synthetic.generative import expression_params, sample_latent_point
from common.progress import Progress
from data.synthetic.output import chunk_size, ensure_cached, resolve_workers, run_jobs, write_fresh
from data.synthetic.render import GAZE_RANGE, NUM_LANDMARKS, render_face, sample_identity

IDENTITY_NAMESPACE = 0x1DE7  # second entropy word of every identity stream (see the module docstring)
IDENTITY_VERSION = 1  # bump when what an identity image contains changes (part of the config hash)
_META = "dataset.json"
COLUMNS = ["path", "identity", "expression", "valence", "arousal", "landmarks", "true_distribution",
           "latent_class"]
_COLOUR_KEYS = ("skin", "lip", "hair", "brow", "iris")


@dataclass(frozen=True)
class IdentityConfig:
    seed: int = 0  # master seed of the identity streams; 0 <= seed < 2**32
    num_identities: int = 200  # people, labels 0..num_identities-1
    images_per_identity: int = 20  # images of each person
    test_per_identity: int = 4  # of those, how many go to test.csv (the last ones)
    image_size: int = 64  # side of the stored square RGB JPEGs, pixels
    num_classes: int = 7  # expression classes the faces are drawn from (7, or 8 with Contempt)
    ambiguity: float = 1.0  # spread of the expression clusters in VA space, as in the benchmark
    occluder_prob: float = 0.15  # probability of an occluder (glasses, sunglasses, bar, hand)
    jpeg_quality: int = 92  # JPEG quality of the stored images
    workers: int = 0  # processes; 0 = auto (min(2, cpus)); never changes the output

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value the generator cannot honour."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"identity config: {message}")

        for name in ("seed", "num_identities", "images_per_identity", "test_per_identity", "image_size",
                     "num_classes", "jpeg_quality", "workers"):
            value = getattr(self, name)
            need(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                 f"{name} must be an integer, got {value!r}")
        # One 32-bit word: the disjointness argument of the module docstring relies on it.
        need(0 <= self.seed < 2 ** 32, f"seed must be in 0..2**32-1, got {self.seed}")
        need(2 <= self.num_identities <= 1_000_000, f"num_identities must be in 2..1000000, got {self.num_identities}")
        need(2 <= self.images_per_identity <= 1000,
             f"images_per_identity must be in 2..1000, got {self.images_per_identity}")
        need(1 <= self.test_per_identity < self.images_per_identity,
             f"test_per_identity must be in 1..images_per_identity-1 ({self.images_per_identity - 1}), "
             f"got {self.test_per_identity}")
        need(32 <= self.image_size <= 1024, f"image_size must be in 32..1024, got {self.image_size}")
        need(self.num_classes in (7, 8), f"num_classes must be 7 or 8, got {self.num_classes}")
        need(math.isfinite(self.ambiguity) and 0.05 <= self.ambiguity <= 5.0,
             f"ambiguity must be in [0.05, 5], got {self.ambiguity}")
        need(0.0 <= self.occluder_prob <= 1.0, f"occluder_prob must be in [0, 1], got {self.occluder_prob}")
        need(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        need(self.workers >= 0, f"workers must be >= 0, got {self.workers}")

    @property
    def train_per_identity(self) -> int:
        return self.images_per_identity - self.test_per_identity

    def content_dict(self) -> dict:
        """The fields that determine the output (everything except ``workers``), JSON-ready."""
        out = dataclasses.asdict(self)
        out.pop("workers")
        out["ambiguity"] = float(out["ambiguity"])
        out["occluder_prob"] = float(out["occluder_prob"])
        return out


def identity_config_hash(config: IdentityConfig) -> str:
    """Short stable hash of everything that determines the identity set (not ``workers``)."""
    payload = json.dumps({"kind": "identities", "version": IDENTITY_VERSION, "renderer_version": GENERATOR_VERSION,
                          **config.content_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def identity_rng(seed: int, identity: int, image: int | None = None) -> np.random.Generator:
    """The stream of identity ``identity``'s parameters, or (with ``image``) of one of its images."""
    key = (int(identity),) if image is None else (int(identity), int(image))
    return np.random.default_rng(np.random.SeedSequence([int(seed), IDENTITY_NAMESPACE], spawn_key=key))


def identity_params(config: IdentityConfig, identity: int) -> dict:
    """The fixed appearance of person ``identity`` (the dict :func:`render_face` takes as ``identity``).

    Its ``gaze`` entry is not used: every image redraws the gaze.
    """
    return sample_identity(identity_rng(config.seed, identity))


def render_identity_image(config: IdentityConfig, identity: int, image: int,
                          params: dict | None = None) -> tuple[np.ndarray, dict]:
    """Image ``image`` of person ``identity``: (RGB image, row without ``path``). Pure function of inputs."""
    if params is None:
        params = identity_params(config, identity)
    rng = identity_rng(config.seed, identity, image)
    latent = int(rng.integers(config.num_classes))
    priors = np.full(config.num_classes, 1.0 / config.num_classes)
    z, p = sample_latent_point(rng, latent, priors, config.ambiguity)
    ex = expression_params(rng, z, p)
    # Where the eyes look is not who someone is: the gaze is redrawn for every image.
    params = {**params, "gaze": tuple(rng.uniform(*GAZE_RANGE, 2).tolist())}
    img, lm = render_face(rng, ex, config.image_size, config.occluder_prob, identity=params)
    row = {
        "identity": int(identity),
        "expression": int(np.argmax(p)),  # the class the face shows most
        "valence": f"{z[0]:.4f}",
        "arousal": f"{z[1]:.4f}",
        "landmarks": format_float_list(lm, precision=2),
        "true_distribution": format_float_list(p, precision=4),
        "latent_class": latent,
    }
    return img, row


def _split_of(config: IdentityConfig, image: int) -> str:
    return "train" if image < config.train_per_identity else "test"


def _render_identity_chunk(job: tuple) -> list[dict]:
    """Worker entry: render a run of (identity, image) pairs, write their JPEGs, return their rows."""
    config, pairs, root = job
    rows, params = [], {}
    for identity, image in pairs:
        if identity not in params:  # pairs come grouped by identity: one draw per person and chunk
            params = {identity: identity_params(config, identity)}
        img, row = render_identity_image(config, identity, image, params[identity])
        split = _split_of(config, image)
        rel = f"{split}/{identity:06d}_{image:03d}.jpg"
        # Plain writes are enough: the whole folder is temporary until it is renamed into place.
        with open(os.path.join(root, "images", rel), "wb") as handle:
            handle.write(encode_jpeg(img, config.jpeg_quality, rel))
        rows.append({"path": rel, **row})
    return rows


def _identity_row(identity: int, params: dict) -> dict:
    row = {"identity": identity}
    for key, value in params.items():
        if key == "gaze":  # redrawn per image, not part of the identity
            continue
        if key in _COLOUR_KEYS:
            row[key] = format_float_list(value, precision=3)
        elif key == "hair_style":
            row[key] = int(value)
        else:
            row[key] = f"{value:.6f}"
    return row


def _write_identities(root: Path, config: IdentityConfig, progress: bool) -> None:
    """Render every image into ``root`` (an empty folder); tables next, dataset.json last."""
    import pandas as pd

    os.chmod(root, 0o755)  # mkdtemp makes 0700 folders; a dataset should be readable like any other
    for split in ("train", "test"):
        (root / "images" / split).mkdir(parents=True)
    pairs = [(j, k) for j in range(config.num_identities) for k in range(config.images_per_identity)]
    workers = resolve_workers(config.workers, len(pairs))
    chunk = chunk_size(len(pairs), workers)
    jobs = [(config, pairs[start:start + chunk], str(root)) for start in range(0, len(pairs), chunk)]

    bar = Progress("identities", len(pairs), unit="images", enabled=progress)
    rows: dict[str, list[dict]] = {"train": [], "test": []}

    def collect(job, out):
        for row in out:
            rows[row["path"].split("/", 1)[0]].append(row)
        bar.update(len(out))

    run_jobs(_render_identity_chunk, jobs, workers, collect)
    bar.close()

    for split in ("train", "test"):
        pd.DataFrame(rows[split], columns=COLUMNS).to_csv(root / f"{split}.csv", index=False)
    people = [_identity_row(j, identity_params(config, j)) for j in range(config.num_identities)]
    pd.DataFrame(people).to_csv(root / "identities.csv", index=False)
    meta = {
        "dataset": "synthetic-identities",
        "generator": "data.synthetic.identities",
        "generator_version": IDENTITY_VERSION,
        "renderer_version": GENERATOR_VERSION,
        "config": config.content_dict(),
        "config_hash": identity_config_hash(config),
        "num_classes": config.num_classes,
        "class_names": list(AFFECTNET8_CLASSES[: config.num_classes]),
        "num_identities": config.num_identities,
        "image_root": "images",
        "image_size": config.image_size,
        "num_landmarks": NUM_LANDMARKS,
        "splits": {split: len(rows[split]) for split in ("train", "test")},
        "columns": {
            "identity": f"person, 0..{config.num_identities - 1}: the label of the identity task",
            "expression": "the expression class the face shows most (argmax of true_distribution)",
            "valence/arousal": "the exact latent VA point of the expression",
        },
    }
    atomic_write_json(root / _META, meta)  # written last: its presence marks a complete dataset
    os.chmod(root / _META, 0o644)  # the atomic writer's temp file is private (0600)


def generate_identities(out_dir, config: IdentityConfig | None = None, force: bool = False,
                        progress: bool = True) -> Path:
    """Generate the identity set into ``out_dir`` atomically; refuse a non-empty one unless ``force``."""
    config = config or IdentityConfig()
    config.validate()
    return write_fresh(out_dir, lambda tmp: _write_identities(tmp, config, progress), force, "identity dataset", "identities.csv")


def identities_root(config: IdentityConfig) -> Path:
    """The cache folder of ``config``: ``<data home>/synthetic-identities-<config hash>``."""
    from data.registry import data_home

    return data_home() / f"synthetic-identities-{identity_config_hash(config)}"


def ensure_identities(config: IdentityConfig | None = None, root=None, progress: bool = True) -> Path:
    """Return the prepared identity set for ``config`` (default :func:`identities_root`), generating it once."""
    config = config or IdentityConfig()
    config.validate()
    target = Path(root) if root is not None else identities_root(config)
    return ensure_cached(target, lambda tmp: _write_identities(tmp, config, progress), _META,
                         identity_config_hash(config), "synthetic identity set")
