"""The built-in synthetic FER benchmark: procedurally rendered faces with known label distributions.

It is the toolkit's embedded default dataset, so the whole pipeline and the label-noise / label-ambiguity
methods can be exercised without a download, against a ground truth no real dataset has.

Generative model (one sample)
-----------------------------
1. **Latent cluster.** A class ``c`` is drawn from the class priors (uniform, an exponential
   ``imbalance_factor`` profile, or explicit ``class_weights``). Per split the cluster counts are exact
   quotas (largest remainder) in a seeded random order, so the imbalance ratio holds even for tiny splits.
2. **Valence-arousal point.** ``z ~ N(mu_c, (ambiguity * sigma_c)^2 I)`` with the cluster centres placed
   on Russell's circumplex (``CLASS_CENTRES``). Fear, Anger and Disgust are close to each other and
   Surprise is broad, so their clusters overlap and some faces are genuinely ambiguous.
3. **True label distribution.** ``p(k | z)``: the exact posterior of the cluster given ``z`` (class prior
   times the isotropic Gaussian likelihood, normalised) -- a softmax of negative scaled squared
   distances to the class centres. No classifier can beat ``argmax p`` on average, which gives the
   "ceiling" accuracies in ``meta.json``.
4. **Annotations.** ``num_annotators`` simulated annotators each draw a class from ``p``: their counts are
   ``votes``. The train/val ``expression`` is the first annotator's vote (one human label, hence noisy);
   the test ``expression`` is the majority vote, ties broken towards the tied class with the highest
   true probability. ``valence``/``arousal`` are ``z`` plus Gaussian annotation noise (``va_noise``),
   clipped to [-1, 1].
5. **Facial actions.** Expression parameters (mouth curvature/openness/width, lip press, teeth, upper-lip
   raise, lip-corner asymmetry, brow height/tilt, eye openness, cheek raise, nose wrinkle) are the
   per-class prototypes (``PROTOTYPES``) blended with weights ``p``, scaled by an intensity that grows
   with ``|z|`` (emotional intensity), plus per-sample jitter. So the face shows the distribution and the
   VA point, not the sampled label: a 60/40 Fear/Anger face looks like a mixture of both.
6. **Rendering.** The face (jaw, ears, hair, eyes with irises and lids, brows, nose, lips, teeth,
   wrinkles and folds) is drawn with OpenCV on a 2x canvas and area-downsampled for anti-aliasing, with
   random identity (face shape, feature sizes and spacing, skin tone, hair), pose (position, scale,
   in-plane rotation), background clutter, occluders (glasses, sunglasses, bars, hand-like blobs),
   lighting gradient, colour cast, blur, Gaussian noise, occasional greyscale, and JPEG compression; so
   a CNN has to read the expression rather than a pixel shortcut. The 68 iBUG landmarks are the drawn
   geometry's own points, in stored-image pixels.

Every random choice of sample ``i`` of split ``s`` comes from ``np.random.default_rng([seed, s, i])``, so
the output is byte-identical for a given config whatever the number of worker processes.

Output (a prepared dataset directory, see ``data.registry``)::

    OUT/train.csv, OUT/test.csv [, OUT/val.csv]   schema tables + true_distribution, latent_class
    OUT/images/{train,test,val}/000000.jpg        paths in the tables are relative to OUT/images
    OUT/meta.json                                 config, class counts, ceiling accuracies

Command line::

    python -m preprocess.synthetic --out DIR [--seed S] [--train-size N] [--test-size M] [--val-size V]
        [--image-size P] [--imbalance-factor F] [--ambiguity A] [--workers W] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from common.errors import ConfigError, DataError, FERError
from common.io import atomic_directory, atomic_write_json
from data.classes import AFFECTNET8_CLASSES
from data.schema import format_float_list

# Bump when the generative model or the renderer changes: it is part of the config hash, so a cached
# dataset produced by older code is never mistaken for the current one.
GENERATOR_VERSION = 1

SPLIT_IDS = {"train": 0, "test": 1, "val": 2}  # fixed ids: adding a val split never changes test
NUM_LANDMARKS = 68
SUPERSAMPLE = 2  # draw at 2x and area-downsample: cheap anti-aliasing
_SHIFT = 4  # fixed-point fractional bits for OpenCV drawing (sub-pixel geometry)
_FIX = float(1 << _SHIFT)

# Circumplex positions (valence, arousal) of the cluster centres, canonical (AffectNet) class order.
CLASS_CENTRES = np.array([
    [0.00, 0.00],    # Neutral
    [0.70, 0.30],    # Happy
    [-0.60, -0.35],  # Sad
    [0.20, 0.75],    # Surprise
    [-0.40, 0.75],   # Fear
    [-0.60, 0.22],   # Disgust
    [-0.75, 0.55],   # Anger
    [-0.30, 0.12],   # Contempt (only with num_classes=8)
])
# Cluster spreads (std of each VA coordinate at ambiguity=1). Fear, Anger and Disgust sit close together
# and Surprise is broad and borders Fear, so these are the ambiguous ones: about a quarter of all faces
# have max p < 0.8 at ambiguity=1, while every class keeps a core of clear-cut faces.
CLASS_SPREADS = np.array([0.16, 0.18, 0.18, 0.21, 0.17, 0.16, 0.16, 0.15])
# Largest -> smallest class for imbalance_factor (roughly the AffectNet / RAF-DB frequency order).
IMBALANCE_ORDER = (1, 0, 2, 3, 6, 4, 5, 7)

PARAM_NAMES = ("mouth_curve", "mouth_open", "mouth_width", "lip_press", "teeth", "upper_lip_raise",
               "lip_asym", "brow_raise", "brow_tilt", "eye_open", "cheek_raise", "nose_wrinkle")
# Per-class facial-action prototypes (FACS-inspired, exaggerated so they read at 64-96 px).
# brow_tilt > 0 raises the inner brows (sad, fear); < 0 lowers and knits them (anger).
PROTOTYPES = np.array([
    # curve open  width press teeth ulr  asym  braise tilt  eye   cheek wrinkle
    [0.00, 0.00, 1.00, 0.10, 0.00, 0.00, 0.00, 0.00, 0.00, 1.00, 0.00, 0.00],  # Neutral
    [1.00, 0.35, 1.30, 0.00, 1.00, 0.00, 0.00, 0.15, 0.00, 0.70, 1.00, 0.00],  # Happy
    [-1.00, 0.00, 0.90, 0.35, 0.00, 0.00, 0.00, -0.10, 1.00, 0.70, 0.00, 0.00],  # Sad
    [0.00, 1.05, 0.68, 0.00, 0.15, 0.00, 0.00, 1.10, 0.10, 1.60, 0.00, 0.00],  # Surprise
    [-0.50, 0.60, 1.30, 0.00, 0.85, 0.00, 0.00, 0.80, 0.90, 1.50, 0.00, 0.00],  # Fear
    [-0.60, 0.12, 0.95, 0.00, 0.60, 1.00, 0.25, -0.60, -0.40, 0.60, 0.30, 1.00],  # Disgust
    [-0.45, 0.00, 0.82, 1.00, 0.00, 0.00, 0.00, -1.00, -1.10, 1.20, 0.00, 0.35],  # Anger
    [0.30, 0.00, 1.00, 0.40, 0.00, 0.00, 1.00, 0.00, 0.00, 0.85, 0.00, 0.00],  # Contempt
])
_NEUTRAL = PROTOTYPES[0]
_JITTER = np.array([0.12, 0.05, 0.06, 0.10, 0.10, 0.08, 0.10, 0.12, 0.12, 0.08, 0.08, 0.08])
_PARAM_LO = np.array([-1.2, 0.0, 0.6, 0.0, 0.0, 0.0, -1.2, -1.2, -1.3, 0.45, 0.0, 0.0])
_PARAM_HI = np.array([1.2, 1.2, 1.45, 1.0, 1.0, 1.2, 1.2, 1.3, 1.3, 1.8, 1.2, 1.2])

_SKIN_TONES = np.array([[241, 206, 180], [214, 168, 132], [176, 124, 88], [128, 86, 58], [88, 58, 40]], float)
_HAIR_COLOURS = np.array([[28, 24, 22], [62, 42, 28], [105, 72, 44], [196, 164, 104], [150, 148, 146],
                          [130, 58, 30]], float)
_IRIS_COLOURS = np.array([[88, 58, 34], [45, 30, 20], [70, 108, 150], [80, 108, 70]], float)


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0  # master seed; sample i of split s draws from np.random.default_rng([seed, s, i])
    train_size: int = 6000  # number of training images
    test_size: int = 1500  # number of test images (labels = annotator majority vote)
    val_size: int = 0  # validation images (labelled like train); 0 = no val.csv
    image_size: int = 96  # side of the stored square RGB JPEGs, pixels
    num_classes: int = 7  # 7 basic classes, or 8 (adds Contempt), canonical order
    imbalance_factor: float = 1.0  # largest/smallest latent-class count ratio, exponential profile
    class_weights: tuple[float, ...] | None = None  # explicit latent-class priors; overrides imbalance_factor
    ambiguity: float = 1.0  # scales every cluster's spread in VA space: > 1 = more overlap, softer labels
    va_noise: float = 0.08  # std of the annotation noise added to the recorded valence/arousal
    num_annotators: int = 10  # simulated annotators behind `votes`
    occluder_prob: float = 0.15  # probability of an occluder (glasses, sunglasses, bar, hand)
    jpeg_quality: int = 92  # JPEG quality of the stored images
    workers: int = 0  # processes; 0 = auto (min(2, cpus)); never changes the output

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value the generator cannot honour."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"synthetic config: {message}")

        for name in ("seed", "train_size", "test_size", "val_size", "image_size", "num_classes",
                     "num_annotators", "jpeg_quality", "workers"):
            value = getattr(self, name)
            need(isinstance(value, (int, np.integer)) and not isinstance(value, bool),
                 f"{name} must be an integer, got {value!r}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.train_size >= 1, f"train_size must be >= 1, got {self.train_size}")
        need(self.test_size >= 1, f"test_size must be >= 1, got {self.test_size}")
        need(self.val_size >= 0, f"val_size must be >= 0, got {self.val_size}")
        need(32 <= self.image_size <= 1024, f"image_size must be in 32..1024, got {self.image_size}")
        need(self.num_classes in (7, 8), f"num_classes must be 7 or 8, got {self.num_classes}")
        need(math.isfinite(self.imbalance_factor) and self.imbalance_factor >= 1.0,
             f"imbalance_factor must be >= 1 (largest/smallest class ratio), got {self.imbalance_factor}")
        if self.class_weights is not None:
            weights = np.asarray(self.class_weights, dtype=float)
            need(weights.shape == (self.num_classes,),
                 f"class_weights needs {self.num_classes} values, got {len(weights)}")
            need(bool(np.all(np.isfinite(weights)) and np.all(weights > 0)),
                 "class_weights must be positive finite numbers")
        need(math.isfinite(self.ambiguity) and 0.05 <= self.ambiguity <= 5.0,
             f"ambiguity must be in [0.05, 5], got {self.ambiguity}")
        need(math.isfinite(self.va_noise) and 0.0 <= self.va_noise <= 1.0,
             f"va_noise must be in [0, 1], got {self.va_noise}")
        need(self.num_annotators >= 1, f"num_annotators must be >= 1, got {self.num_annotators}")
        need(0.0 <= self.occluder_prob <= 1.0, f"occluder_prob must be in [0, 1], got {self.occluder_prob}")
        need(1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        need(self.workers >= 0, f"workers must be >= 0, got {self.workers}")

    def content_dict(self) -> dict:
        """The fields that determine the output (everything except ``workers``), JSON-ready."""
        out = dataclasses.asdict(self)
        out.pop("workers")
        if out["class_weights"] is not None:
            out["class_weights"] = [float(w) for w in out["class_weights"]]
        out["imbalance_factor"] = float(out["imbalance_factor"])
        out["ambiguity"] = float(out["ambiguity"])
        out["va_noise"] = float(out["va_noise"])
        out["occluder_prob"] = float(out["occluder_prob"])
        return out


def config_hash(config: SyntheticConfig) -> str:
    """Short stable hash of everything that determines the generated files (not ``workers``)."""
    payload = json.dumps({"version": GENERATOR_VERSION, **config.content_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def class_names(config: SyntheticConfig) -> tuple[str, ...]:
    return AFFECTNET8_CLASSES[: config.num_classes]


def class_priors(config: SyntheticConfig) -> np.ndarray:
    """Latent-cluster priors: explicit weights, else an exponential profile over ``IMBALANCE_ORDER``."""
    num = config.num_classes
    if config.class_weights is not None:
        weights = np.asarray(config.class_weights, dtype=np.float64)
    else:
        weights = np.empty(num)
        order = [k for k in IMBALANCE_ORDER if k < num]
        for rank, k in enumerate(order):
            # rank 0 gets 1, the last rank gets 1/F: largest/smallest == imbalance_factor exactly.
            weights[k] = float(config.imbalance_factor) ** (-rank / (num - 1))
    return weights / weights.sum()


def true_distribution(va: np.ndarray, priors: np.ndarray, ambiguity: float = 1.0) -> np.ndarray:
    """Posterior ``p(class | va)`` under the isotropic Gaussian clusters; ``va`` is (2,) or (N, 2)."""
    va = np.asarray(va, dtype=np.float64)
    num = len(priors)
    centres, spreads = CLASS_CENTRES[:num], CLASS_SPREADS[:num] * ambiguity
    d2 = ((va[..., None, :] - centres) ** 2).sum(-1)
    logits = np.log(priors) - 2.0 * np.log(spreads) - d2 / (2.0 * spreads ** 2)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def latent_class_sequence(n: int, priors: np.ndarray, seed: int, split_id: int) -> np.ndarray:
    """Exact per-class quotas (largest remainder) for ``n`` samples, in a seeded random order."""
    raw = np.asarray(priors, dtype=np.float64) * n
    counts = np.floor(raw).astype(np.int64)
    remainder = n - int(counts.sum())
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:remainder]] += 1
    classes = np.repeat(np.arange(len(priors)), counts)
    # A stream no sample index can collide with (sample streams use [seed, split_id, i], i < 2**32 - 1).
    np.random.default_rng([seed, split_id, 2 ** 32 - 1]).shuffle(classes)
    return classes.astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Sampling of one face
# ---------------------------------------------------------------------------------------------------


def _sample_annotations(rng: np.random.Generator, latent: int, config: SyntheticConfig,
                        priors: np.ndarray, majority: bool) -> dict:
    num = config.num_classes
    spread = CLASS_SPREADS[latent] * config.ambiguity
    z = np.clip(CLASS_CENTRES[latent] + spread * rng.standard_normal(2), -0.98, 0.98)
    p = true_distribution(z, priors, config.ambiguity)
    draws = rng.choice(num, size=config.num_annotators, p=p)
    votes = np.bincount(draws, minlength=num)
    if majority:
        tied = np.flatnonzero(votes == votes.max())
        label = int(tied[np.argmax(p[tied])])  # ties -> the tied class the face shows most
    else:
        label = int(draws[0])  # a single annotator's label, as in a crowd-sourced train set
    va_obs = np.clip(z + config.va_noise * rng.standard_normal(2), -1.0, 1.0)
    return {"z": z, "p": p, "votes": votes, "label": label, "va": va_obs}


def _expression_params(rng: np.random.Generator, z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Blend the class prototypes by ``p``; intensity grows with the distance from the VA origin."""
    blend = p @ PROTOTYPES[: len(p)]
    intensity = float(np.clip(0.6 + 0.55 * np.hypot(*z), 0.6, 1.2)) * rng.uniform(0.9, 1.1)
    params = _NEUTRAL + intensity * (blend - _NEUTRAL) + _JITTER * rng.standard_normal(len(_JITTER))
    return np.clip(params, _PARAM_LO, _PARAM_HI)


# Identity parameters drawn uniformly from these ranges (one vectorised draw per face: cheaper).
_IDENTITY_RANGES = {
    "face_w": (0.9, 1.04), "face_h": (1.08, 1.24), "chin_narrow": (0.05, 0.3), "eye_sep": (0.36, 0.44),
    "eye_y": (-0.16, -0.08), "eye_size": (0.88, 1.12), "brow_gap": (0.09, 0.14), "brow_thick": (0.045, 0.075),
    "brow_arch": (0.015, 0.045), "nose_y": (0.2, 0.29), "nose_w": (0.11, 0.16), "mouth_y": (0.53, 0.6),
    "mouth_w": (0.26, 0.32), "lip_u": (0.04, 0.06), "lip_l": (0.055, 0.08), "hairline": (-0.78, -0.62),
    "gaze_x": (-0.03, 0.03), "gaze_y": (-0.03, 0.03), "skin_tone": (0.0, len(_SKIN_TONES) - 1.0),
}
_ID_LO = np.array([lo for lo, _ in _IDENTITY_RANGES.values()])
_ID_SPAN = np.array([hi - lo for lo, hi in _IDENTITY_RANGES.values()])
_HAIR_STYLE_CDF = np.cumsum([0.12, 0.48, 0.3, 0.1])  # none, short, long, cap with a fringe


def _identity(rng: np.random.Generator) -> dict:
    """Who the face belongs to: shape, feature placement and colours (independent of the expression)."""
    values = _ID_LO + _ID_SPAN * rng.random(len(_ID_LO))
    idp = dict(zip(_IDENTITY_RANGES, values.tolist()))
    u = idp.pop("skin_tone")
    lo = min(int(u), len(_SKIN_TONES) - 2)
    jitter = rng.normal(0.0, 1.0, 6)
    picks = rng.random(3)
    skin = np.clip(_SKIN_TONES[lo] + (u - lo) * (_SKIN_TONES[lo + 1] - _SKIN_TONES[lo]) + 7.0 * jitter[:3], 0, 255)
    hair = np.clip(_HAIR_COLOURS[int(picks[0] * len(_HAIR_COLOURS))] + 8.0 * jitter[3:], 0, 255)
    idp.update({
        "gaze": (idp.pop("gaze_x"), idp.pop("gaze_y")),
        "skin": skin,
        "lip": np.clip(skin * np.array([0.82, 0.55, 0.55]) + np.array([30.0, 6.0, 10.0]), 0, 255),
        "hair": hair,
        "brow": hair * 0.75,
        "iris": _IRIS_COLOURS[int(picks[1] * len(_IRIS_COLOURS))],
        "hair_style": int(np.searchsorted(_HAIR_STYLE_CDF, picks[2] * _HAIR_STYLE_CDF[-1], side="right")),
    })
    return idp


def _sq(u: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))


# Constant sampling grids, computed once: at this image size numpy's per-call overhead, not arithmetic,
# is what costs, so every curve below is a few scalar-times-constant-vector operations.
_JAW_T = np.linspace(0.0, np.pi, 17)
_JAW_COS, _JAW_SIN = np.cos(_JAW_T), np.sin(_JAW_T)
_JAW_SIN4 = _JAW_SIN ** 4
_FOREHEAD_S = np.linspace(0.0, np.pi, 15)
_FOREHEAD_COS, _FOREHEAD_SIN = np.cos(_FOREHEAD_S), np.sin(_FOREHEAD_S)
_EYE_U = np.linspace(-1.0, 1.0, 11)
_EYE_PROFILE = _sq(_EYE_U) ** 1.4
_EYE_K = (1.0 - 1.0 / 9.0) ** 0.7  # the lid profile at the landmark positions u = +-1/3
_EYE_LM_DX = np.array([-1.0, -1.0 / 3, 1.0 / 3, 1.0, 1.0 / 3, -1.0 / 3])
_EYE_LM_UP = np.array([0.0, _EYE_K, _EYE_K, 0.0, 0.0, 0.0])
_EYE_LM_LO = np.array([0.0, 0.0, 0.0, 0.0, _EYE_K, _EYE_K])
_BROW_U = np.linspace(0.0, 1.0, 5)  # 0 = outer end, 1 = inner end
_BROW_ARCH = np.sin(np.pi * _BROW_U ** 0.8)
_BROW_TAPER = (0.55 + 0.45 * _BROW_U)[:, None]
_HAIR_S = np.linspace(0.0, np.pi, 15)
_HAIR_X = np.linspace(-1.02, 1.02, 13)
_FOLD_T = np.linspace(0.0, 1.0, 9)[:, None]
_WRINKLE_X = np.linspace(-0.38, 0.38, 7)
_WRINKLE_Y = 0.03 * np.linspace(-1.0, 1.0, 7) ** 2
# Mouth: every curve is evaluated at fixed fractions u = x / mouth half-width, all in one vector.
_INNER = 0.88  # inner-lip corners sit at 0.88 of the mouth half-width
_MU = np.concatenate([
    np.linspace(-1.0, 1.0, 25),                 # [0:25]  dense outer lip contour
    _INNER * np.linspace(-1.0, 1.0, 21),        # [25:46] dense inner lip contour
    np.array([-0.6, -0.25, 0.0, 0.25, 0.6]),    # [46:51] landmarks 49-53 (upper), 59..55 (lower)
    _INNER * np.array([-0.5, 0.0, 0.5]),        # [51:54] landmarks 61-63 (upper), 67..65 (lower)
    np.array([-1.0, 1.0, -_INNER, _INNER]),     # [54:58] corners 48, 54, 60, 64
])
_MU2 = _MU ** 2
_MU_POS2 = np.maximum(_MU, 0.0) ** 2
_MSQ = _sq(_MU)
_MSQ_IN = _sq(_MU / _INNER)
_MBOW = _MSQ * (1.0 - 0.3 * np.exp(-(_MU / 0.15) ** 2))  # cupid's bow: thinner upper lip in the middle
_MTEETH = np.sqrt(_MSQ_IN)


def _face_geometry(idp: dict, ex: np.ndarray) -> tuple[np.ndarray, dict]:
    """68 iBUG landmarks and the dense curves the renderer draws, in face units (half-width ~ 1, y down).

    The landmarks are sampled from the very curves that are drawn, so they are exact by construction.
    """
    curve, mopen, mwidth, press, teeth, ulr, asym, braise, btilt, eopen, cheek, wrinkle = ex.tolist()
    lm = np.empty((NUM_LANDMARKS, 2))
    geo: dict = {}

    # Jaw (0-16, image left -> right); an open mouth drops the chin.
    wid, hgt = idp["face_w"], idp["face_h"] + 0.2 * mopen
    lm[0:17, 0] = -wid * _JAW_COS * (1.0 - idp["chin_narrow"] * _JAW_SIN4)
    lm[0:17, 1] = -0.15 + hgt * _JAW_SIN
    forehead = np.stack([wid * _FOREHEAD_COS, -0.15 - 0.95 * _FOREHEAD_SIN], 1)
    geo["head"] = np.concatenate([lm[0:17], forehead[1:-1]])

    # Eyes (36-41 image-left eye, 42-47 image-right eye): corners, upper lid, lower lid.
    ey, esz = idp["eye_y"], idp["eye_size"]
    ew = 0.14 * esz
    eh_up = 0.075 * esz * eopen
    eh_lo = 0.06 * esz * (0.6 + 0.4 * eopen) * (1.0 - 0.45 * min(cheek, 1.0))  # raised cheeks push it up
    geo["eyes"] = []
    for base, cx in ((36, -idp["eye_sep"]), (42, idp["eye_sep"])):
        xs = cx + ew * _EYE_U
        upper = np.stack([xs, ey - eh_up * _EYE_PROFILE], 1)
        lower = np.stack([xs, ey + eh_lo * _EYE_PROFILE], 1)
        lm[base:base + 6, 0] = cx + ew * _EYE_LM_DX
        lm[base:base + 6, 1] = ey - eh_up * _EYE_LM_UP + eh_lo * _EYE_LM_LO
        geo["eyes"].append((cx, ey, ew, upper, lower))

    # Brows (17-21 outer->inner on the image left, 22-26 inner->outer on the right). Tilt rotates the
    # brow about its middle; raise moves it; it never sinks into the eye (the lid gives way instead).
    base_y = ey - 0.075 * esz - idp["brow_gap"] - 0.085 * braise
    squeeze = 0.05 * max(-btilt, 0.0)  # anger knits the brows together
    by = np.minimum(base_y - idp["brow_arch"] * _BROW_ARCH - 0.15 * btilt * (_BROW_U - 0.4), ey - eh_up - 0.035)
    geo["brows"] = []
    for sign, start in ((-1.0, 17), (1.0, 22)):
        cx = sign * idp["eye_sep"]
        outer_x, inner_x = cx + sign * 1.2 * ew, cx - sign * (0.95 * ew + squeeze)
        pts = np.stack([outer_x + (inner_x - outer_x) * _BROW_U, by], 1)
        lm[start:start + 5] = pts if sign < 0 else pts[::-1]
        geo["brows"].append(pts)  # outer -> inner
    geo["brow_base"] = base_y

    # Nose (27-30 bridge, 31-35 base); a wrinkled nose lifts and flares the nostrils.
    nt, nw = idp["nose_y"], idp["nose_w"] * (1.0 + 0.18 * wrinkle)
    lm[27:31, 0] = 0.0
    lm[27:31, 1] = ey + (nt - ey) * np.array([0.0, 0.33, 0.66, 1.0])
    lm[31:36, 0] = nw * np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    lm[31:36, 1] = nt + np.array([0.04, 0.06, 0.07, 0.06, 0.04]) - 0.03 * wrinkle

    # Mouth (48-59 outer lip, 60-67 inner lip). The lip line is a parabola whose corners rise (smile)
    # or fall (frown); opening splits it, mostly by dropping the lower lip; a raised upper lip bares teeth.
    my = idp["mouth_y"] + 0.03 * mopen
    w = idp["mouth_w"] * mwidth
    gap = 0.27 * mopen
    tu = idp["lip_u"] * (1.0 - 0.6 * press) * (1.0 - 0.3 * max(curve, 0.0))
    tl = idp["lip_l"] * (1.0 - 0.6 * press) * (1.0 - 0.2 * max(curve, 0.0))
    up_open = 0.3 * gap + 0.035 * ulr
    x = w * _MU
    line = my - 0.13 * curve * _MU2 - 0.07 * asym * _MU_POS2
    inner_up = line - up_open * _MSQ_IN
    inner_lo = line + 0.7 * gap * _MSQ_IN
    outer_up = inner_up - tu * _MBOW - 0.03 * ulr * _MSQ
    outer_lo = inner_lo + tl * _MSQ
    geo["lips"] = np.concatenate([np.stack([x[0:25], outer_up[0:25]], 1),
                                  np.stack([x[24::-1], outer_lo[24::-1]], 1)])
    iu = np.stack([x[25:46], inner_up[25:46]], 1)
    geo["inner_up"] = iu
    geo["inner"] = np.concatenate([iu, np.stack([x[45:24:-1], inner_lo[45:24:-1]], 1)])
    geo["inner_gap"] = up_open + 0.7 * gap
    teeth_lo = np.minimum(inner_up[45:24:-1] + 0.085 * teeth * _MTEETH[45:24:-1], inner_lo[45:24:-1])
    geo["teeth"] = np.concatenate([iu, np.stack([x[45:24:-1], teeth_lo], 1)])
    lm[48] = (x[54], line[54])
    lm[49:54, 0], lm[49:54, 1] = x[46:51], outer_up[46:51]
    lm[54] = (x[55], line[55])
    lm[55:60, 0], lm[55:60, 1] = x[50:45:-1], outer_lo[50:45:-1]
    lm[60] = (x[56], line[56])
    lm[61:64, 0], lm[61:64, 1] = x[51:54], inner_up[51:54]
    lm[64] = (x[57], line[57])
    lm[65:68, 0], lm[65:68, 1] = x[53:50:-1], inner_lo[53:50:-1]
    geo["mouth_corner_y"] = float(line[55])
    geo["mouth_w"] = w
    return lm, geo


def _c(colour) -> tuple:
    return tuple(np.asarray(colour, dtype=np.float64).tolist())


class _Painter:
    """Records face-unit drawing operations, then draws them through one similarity transform.

    Recording first lets all points go through a single matrix product and fixed-point conversion
    (per-call numpy overhead would otherwise dominate the rendering time).
    """

    def __init__(self, centre: np.ndarray, scale: float, angle: float):
        self.scale = scale
        self.angle_deg = math.degrees(angle)
        c, s = math.cos(angle), math.sin(angle)
        self.matrix_t = (scale * np.array([[c, -s], [s, c]])).T
        self.centre = centre
        self.ops: list[tuple] = []
        self.chunks: list[np.ndarray] = []
        self.count = 0

    def canvas(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, dtype=np.float64) @ self.matrix_t + self.centre

    def px(self, units: float) -> int:
        return max(1, int(units * self.scale + 0.5))

    def _add(self, pts) -> tuple[int, int]:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        self.chunks.append(pts)
        start = self.count
        self.count += len(pts)
        return start, self.count

    def poly(self, pts, colour) -> None:
        self.ops.append((0, *self._add(pts), _c(colour)))

    def line(self, pts, colour, width: float, closed: bool = False) -> None:
        self.ops.append((1, *self._add(pts), _c(colour), self.px(width), closed))

    def ellipse(self, centre, axes, colour, angle: float = 0.0, thickness: float | None = None) -> None:
        a = (int(axes[0] * self.scale * _FIX + 0.5), int(axes[1] * self.scale * _FIX + 0.5))
        th = -1 if thickness is None else self.px(thickness)
        self.ops.append((2, *self._add(centre), _c(colour), a, self.angle_deg + angle, th))

    def render(self, img: np.ndarray) -> None:
        if not self.ops:
            return
        fixed = np.rint(self.canvas(np.concatenate(self.chunks)) * _FIX).astype(np.int32)
        for op in self.ops:
            kind, a, b, colour = op[:4]
            if kind == 0:
                cv2.fillPoly(img, [fixed[a:b]], colour, cv2.LINE_8, _SHIFT)
            elif kind == 1:
                cv2.polylines(img, [fixed[a:b]], op[5], colour, op[4], cv2.LINE_8, _SHIFT)
            else:
                cx, cy = fixed[a].tolist()
                cv2.ellipse(img, (cx, cy), op[4], op[5], 0, 360, colour, op[6], cv2.LINE_8, _SHIFT)


def _mix(a, b, t: float) -> np.ndarray:
    return np.asarray(a, float) * (1.0 - t) + np.asarray(b, float) * t


def _bezier(p0, p1, p2) -> np.ndarray:
    t = _FOLD_T
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)


def _draw_background(rng: np.random.Generator, img: np.ndarray) -> None:
    size = img.shape[0]
    base = rng.uniform(30, 230, 3)
    other = np.clip(base + rng.normal(0, 45, 3), 0, 255)
    ramp = (base + (other - base) * np.linspace(0.0, 1.0, size)[:, None]).astype(np.uint8)
    if rng.random() < 0.5:
        img[:] = ramp[:, None, :]
    else:
        img[:] = ramp[None, :, :]
    # Clutter: shapes in random colours, so neither the background nor its edges predict the class.
    # One vectorised draw per shape: kind, colour (3), filled?, thickness, position (2), radius, other (2).
    n = int(rng.integers(2, 9))
    for u in rng.random((n, 12)).tolist():
        kind = int(u[0] * 4)
        colour = (u[1] * 255, u[2] * 255, u[3] * 255)
        thick = -1 if u[4] < 0.5 else 1 + int(u[5] * 4)
        p = (int((u[6] * 1.2 - 0.1) * size), int((u[7] * 1.2 - 0.1) * size))
        r = int((0.04 + 0.26 * u[8]) * size)
        if kind == 0:
            q = (p[0] + int((u[9] - 0.5) * 0.8 * size), p[1] + int((u[10] - 0.5) * 0.8 * size))
            cv2.rectangle(img, p, q, colour, thick)
        elif kind == 1:
            cv2.circle(img, p, r, colour, thick)
        elif kind == 2:
            q = (int((u[9] * 1.2 - 0.1) * size), int((u[10] * 1.2 - 0.1) * size))
            cv2.line(img, p, q, colour, 1 + int(u[11] * 6))
        else:
            corners = 3 + int(u[11] * 3)
            pts = (np.array(p) + (rng.random((corners, 2)) * 2.0 - 1.0) * r).astype(np.int32)
            cv2.fillPoly(img, [pts], colour)


def _draw_face(rng: np.random.Generator, pt: _Painter, idp: dict, ex: np.ndarray, lm: np.ndarray, geo: dict) -> None:
    curve, mopen, mwidth, press, teeth, ulr, asym, braise, btilt, eopen, cheek, wrinkle = ex.tolist()
    skin, hair = idp["skin"], idp["hair"]
    dark = skin * 0.55
    style = idp["hair_style"]
    wid = idp["face_w"]

    # Hair behind the head (long style), neck and shoulders, ears.
    if style == 2:
        pt.ellipse((0.0, -0.3), (wid * 1.2, 0.95), hair * 0.85)
        pt.poly(np.array([[-wid * 1.2, -0.3], [wid * 1.2, -0.3], [wid * 1.28, 1.1], [-wid * 1.28, 1.1]]), hair * 0.85)
    pt.poly(np.array([[-0.42, 0.5], [0.42, 0.5], [0.46, 1.5], [-0.46, 1.5]]), skin * 0.85)
    cloth = rng.uniform(20, 235, 3)
    pt.poly(np.array([[-0.5, 1.35], [0.5, 1.35], [2.2, 1.9], [2.2, 3.0], [-2.2, 3.0], [-2.2, 1.9]]), cloth)
    pt.ellipse((-wid * 0.98, 0.02), (0.11, 0.2), skin * 0.9)
    pt.ellipse((wid * 0.98, 0.02), (0.11, 0.2), skin * 0.9)

    # Head (with soft shading under the cheekbones for some volume), then the hair cap and hairline.
    pt.poly(geo["head"], skin)
    jaw_shade = np.concatenate([lm[3:14], lm[13:2:-1] * np.array([0.93, 1.0]) + np.array([0.0, -0.07])])
    pt.poly(jaw_shade, skin * 0.92)
    if style in (1, 2, 3):
        outer = np.stack([wid * 1.06 * np.cos(_HAIR_S), -0.12 - 1.02 * np.sin(_HAIR_S)], 1)
        xs = wid * _HAIR_X
        hl = idp["hairline"] + (0.12 if style == 3 else 0.0)
        inner = np.stack([xs, hl + 0.42 * np.abs(_HAIR_X) ** 3.5], 1)
        if style == 3:  # fringe: a jagged hairline
            inner[1:-1:2, 1] += 0.06
        pt.poly(np.concatenate([outer, inner]), hair)

    # Forehead wrinkles (raised brows) and knitted-brow furrows (anger), from faint to strong.
    lift = min(max((braise - 0.35) / 0.6, 0.0), 1.0)
    if lift > 0.05:
        col = _mix(skin, dark, 0.55 * lift)
        for j in range(3):
            y = geo["brow_base"] - 0.1 - 0.07 * j
            pt.line(np.stack([_WRINKLE_X, y + _WRINKLE_Y], 1), col, 0.018)
    knit = min(max((-btilt - 0.3) / 0.6, 0.0), 1.0)
    if knit > 0.05:
        by = geo["brows"][0][-1, 1]
        col = _mix(skin, dark, 0.7 * knit)
        for sign in (-1.0, 1.0):
            pt.line(np.array([[sign * 0.045, by - 0.04], [sign * 0.06, idp["eye_y"]]]), col, 0.02)

    # Eyes: white, iris, pupil and highlight, then skin drawn back over whatever lies outside the lids.
    ir = 0.062 * idp["eye_size"]
    lid_col, crease_col = _mix(skin, dark, 0.6), _mix(skin, dark, 0.35)
    for cx, cy, ew, upper, lower in geo["eyes"]:
        pt.poly(np.concatenate([upper, lower[::-1]]), (236, 232, 226))
        ic = (cx + idp["gaze"][0], cy + idp["gaze"][1] * 0.5)
        pt.ellipse(ic, (ir, ir), idp["iris"])
        pt.ellipse(ic, (ir * 0.45, ir * 0.45), (15, 12, 12))
        pt.ellipse((ic[0] + ir * 0.35, ic[1] - ir * 0.35), (ir * 0.2, ir * 0.2), (250, 250, 250))
        pad = 0.16
        pt.poly(np.concatenate([upper, [[cx + ew + 0.01, cy - pad], [cx - ew - 0.01, cy - pad]]]), skin)
        pt.poly(np.concatenate([lower, [[cx + ew + 0.01, cy + pad], [cx - ew - 0.01, cy + pad]]]), skin)
        pt.line(upper, (25, 18, 15), 0.028)  # upper lid and lashes
        pt.line(lower, lid_col, 0.012)
        pt.line(upper + np.array([0.0, -0.045]), crease_col, 0.01)  # lid crease
        if cheek > 0.3:  # crow's feet of a Duchenne smile
            sgn = -1.0 if cx < 0 else 1.0
            outer_x = cx + sgn * ew
            col = _mix(skin, dark, 0.6 * min(1.0, (cheek - 0.3) / 0.5))
            for dy in (-0.03, 0.015):
                pt.line(np.array([[outer_x + sgn * 0.035, cy + dy * 0.5], [outer_x + sgn * 0.09, cy + dy * 2.0]]),
                        col, 0.012)

    # Brows: tapered filled shapes along the landmark curve (thicker at the inner end).
    for pts in geo["brows"]:
        top = pts.copy()
        top[:, 1:] -= idp["brow_thick"] * _BROW_TAPER
        pt.poly(np.concatenate([top, pts[::-1]]), idp["brow"])

    # Nose: side shading, base curve, nostrils, and wrinkles across the bridge for disgust.
    nt, nw = idp["nose_y"], float(lm[35, 0])
    pt.line(np.array([[-0.05, idp["eye_y"] + 0.05], [-0.06, nt - 0.08], [-nw * 0.95, nt + 0.01]]),
            _mix(skin, dark, 0.45), 0.016)
    pt.line(lm[31:36], _mix(skin, dark, 0.6), 0.018)
    nostril = _mix(skin, (20, 10, 10), 0.7)
    pt.ellipse((-nw * 0.5, lm[32, 1] - 0.005), (0.032, 0.018), nostril)
    pt.ellipse((nw * 0.5, lm[32, 1] - 0.005), (0.032, 0.018), nostril)
    if wrinkle > 0.3:
        col = _mix(skin, dark, 0.75 * min(1.0, (wrinkle - 0.3) / 0.5))
        for j in range(3):
            y = idp["eye_y"] + 0.06 + 0.035 * j
            pt.line(np.array([[-0.07, y + 0.01], [0.0, y - 0.012], [0.07, y + 0.01]]), col, 0.014)

    # Nasolabial folds: deep in smiles and disgust, faint otherwise.
    fold = min(max(cheek, 0.8 * wrinkle, 0.4 * mopen), 1.0)
    if fold > 0.1:
        col = _mix(skin, dark, 0.55 * fold)
        w, cy = geo["mouth_w"], geo["mouth_corner_y"]
        for sign in (-1.0, 1.0):
            pt.line(_bezier((sign * (nw + 0.05), nt - 0.01), (sign * (w + 0.13), (nt + cy) / 2),
                            (sign * (w + 0.05), cy + 0.05)), col, 0.016)

    # Mouth: lips, dark interior, upper teeth, and the lip line.
    pt.poly(geo["lips"], idp["lip"])
    if geo["inner_gap"] > 0.012:
        pt.poly(geo["inner"], (72, 22, 28))
        if teeth > 0.08:
            pt.poly(geo["teeth"], (238, 234, 220))
    pt.line(geo["inner_up"], _mix(idp["lip"], (30, 10, 10), 0.6), 0.016)


def _draw_occluder(rng: np.random.Generator, pt: _Painter, idp: dict, lm: np.ndarray) -> None:
    kind = int(rng.choice(4, p=[0.3, 0.15, 0.3, 0.25]))
    if kind in (0, 1):  # glasses / sunglasses around the eyes
        frame = rng.uniform(0, 90, 3) if rng.random() < 0.7 else rng.uniform(90, 220, 3)
        rw, rh = rng.uniform(0.19, 0.24), rng.uniform(0.12, 0.17)
        left, right = lm[36:42].mean(0), lm[42:48].mean(0)
        for c in (left, right):
            if kind == 1:
                pt.ellipse(c, (rw, rh), (20, 20, 24))
            pt.ellipse(c, (rw, rh), frame, thickness=0.03)
        pt.line(np.array([left + [rw, -0.02], right - [rw, 0.02]]), frame, 0.03)
        pt.line(np.array([left - [rw, 0.0], [-idp["face_w"], left[1] - 0.02]]), frame, 0.03)
        pt.line(np.array([right + [rw, 0.0], [idp["face_w"], right[1] - 0.02]]), frame, 0.03)
    elif kind == 2:  # a bar (microphone, strap, hat brim...) across a random part of the face
        c = rng.uniform([-0.6, -0.5], [0.6, 0.9])
        ang = rng.uniform(-np.pi, np.pi)
        half_l, half_w = rng.uniform(0.5, 1.3), rng.uniform(0.07, 0.17)
        d, n = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        pts = np.array([c + half_l * d + half_w * n, c - half_l * d + half_w * n,
                        c - half_l * d - half_w * n, c + half_l * d - half_w * n])
        pt.poly(pts, rng.uniform(0, 255, 3))
    else:  # a hand-like blob: palm and fingers, from one side
        col = np.clip(idp["skin"] * rng.uniform(0.85, 1.1) + rng.normal(0, 10, 3), 0, 255)
        side = float(rng.choice([-1.0, 1.0]))
        c = np.array([side * rng.uniform(0.45, 0.9), rng.uniform(0.2, 1.0)])
        pt.ellipse(c, (0.32, 0.25), col, angle=float(rng.uniform(-40, 40)))
        for j in range(4):
            tip = c + np.array([-side * (0.3 + 0.07 * (j in (1, 2))), -0.18 + 0.12 * j])
            pt.line(np.array([c + [0.0, -0.18 + 0.12 * j], tip]), col, 0.09)
        pt.line(np.array([c + [0.0, -0.12], c + [-side * 0.32, -0.12]]), col * 0.8, 0.012)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed bank of standard-normal noise; each image reads a random window (drawing fresh noise per
    image was the single most expensive step). Seeded, so every process builds the same bank."""
    return np.random.default_rng(0x5EED).standard_normal(1 << 20, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return xx, yy


def render_face(rng: np.random.Generator, ex: np.ndarray, image_size: int,
                occluder_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Render one face with expression parameters ``ex``; returns (RGB uint8 image, (68, 2) landmarks)."""
    idp = _identity(rng)
    lm, geo = _face_geometry(idp, ex)

    big = image_size * SUPERSAMPLE
    canvas = np.empty((big, big, 3), np.uint8)
    _draw_background(rng, canvas)
    # Tight, FER-style crop: the face spans most of the image; brows-to-chin centred with some jitter.
    scale = rng.uniform(0.3, 0.37) * big
    angle = math.radians(rng.uniform(-13.0, 13.0))
    centre = big * (0.5 + rng.uniform(-0.05, 0.05, 2)) - np.array([-math.sin(angle), math.cos(angle)]) * 0.3 * scale
    painter = _Painter(centre, scale, angle)
    _draw_face(rng, painter, idp, ex, lm, geo)
    if rng.random() < occluder_prob:
        _draw_occluder(rng, painter, idp, lm)
    painter.render(canvas)

    img = cv2.resize(canvas, (image_size, image_size), interpolation=cv2.INTER_AREA).astype(np.float32)
    # Photometric nuisances: lighting gradient, colour cast, contrast, blur, sensor noise, greyscale.
    # u: light direction, light strength, gain, contrast, brightness, blur?, blur sigma, noise std, grey?
    u = rng.random(9).tolist()
    cast = rng.uniform(0.9, 1.1, 3)
    xx, yy = _pixel_grid(image_size)
    direction = 2.0 * math.pi * u[0]
    light = 1.0 + 0.7 * u[1] * (math.cos(direction) * xx + math.sin(direction) * yy)
    contrast = 0.75 + 0.4 * u[3]
    mean = float(img.mean())
    # Contrast about the pre-lighting mean folds every step into one multiply and one add.
    img *= light[..., None] * (((0.75 + 0.45 * u[2]) * contrast) * cast).astype(np.float32)
    img += (1.0 - contrast) * mean + (30.0 * u[4] - 15.0) + 0.5  # +0.5: round, don't truncate
    if u[5] < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), (0.3 + 0.6 * u[6]) * image_size / 96.0)
    bank = _noise_bank()
    if img.size < bank.size:
        start = int(rng.integers(0, bank.size - img.size))
        img += (7.0 * u[7]) * bank[start:start + img.size].reshape(img.shape)
    else:  # very large images: fresh noise
        img += (7.0 * u[7]) * rng.standard_normal(img.shape, dtype=np.float32)
    if u[8] < 0.1:
        img[:] = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    np.clip(img, 0, 255, out=img)
    img = img.astype(np.uint8)

    # Canvas pixel centres are integers; stored pixel k covers canvas [2k, 2k + 2), centre 2k + 0.5.
    landmarks = (painter.canvas(lm) + 0.5) / SUPERSAMPLE - 0.5
    return img, np.clip(landmarks, 0.0, image_size - 1.0)


def render_sample(config: SyntheticConfig, split: str, index: int, latent: int,
                  priors: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Sample ``index`` of ``split``: (RGB image, annotation row without ``path``). Pure function of inputs."""
    if priors is None:
        priors = class_priors(config)
    rng = np.random.default_rng([config.seed, SPLIT_IDS[split], index])
    ann = _sample_annotations(rng, latent, config, priors, majority=(split == "test"))
    ex = _expression_params(rng, ann["z"], ann["p"])
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


def _render_chunk(job: tuple) -> list[dict]:
    """Worker entry: render samples ``start..`` of one split, write their JPEGs, return their rows."""
    config, split, start, latents, image_dir = job
    priors = class_priors(config)
    rows = []
    for offset, latent in enumerate(latents):
        index = start + offset
        img, row = render_sample(config, split, index, int(latent), priors)
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)])
        if not ok:  # pragma: no cover - OpenCV only fails here on a broken build
            raise DataError(f"could not encode synthetic image {split}/{index:06d}.jpg")
        name = f"{index:06d}.jpg"
        with open(os.path.join(image_dir, name), "wb") as handle:
            handle.write(buf.tobytes())
        rows.append({"path": f"{split}/{name}", **row})
    return rows


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would only contend


def _resolve_workers(config: SyntheticConfig, total: int) -> int:
    if config.workers > 0:
        return config.workers
    if total < 600:  # starting processes costs more than it saves on tiny sets
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


class _Progress:
    """A tiny textual progress line on stderr, every ~5% (tqdm is not a dependency)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.done, self.next_pct, self.start = 0, 5, time.monotonic()
        self.tty = enabled and sys.stderr.isatty()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = 100 * self.done // max(1, self.total)
        if pct >= self.next_pct or self.done == self.total:
            rate = self.done / max(1e-9, time.monotonic() - self.start)
            bar = "#" * (pct // 5) + "." * (20 - pct // 5)
            end = "" if self.tty and self.done < self.total else "\n"
            lead = "\r" if self.tty else ""
            sys.stderr.write(f"{lead}synthetic [{bar}] {pct:3d}% "
                             f"{self.done}/{self.total} images, {rate:.0f} img/s{end}")
            sys.stderr.flush()
            self.next_pct = (pct // 5 + 1) * 5


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
    workers = _resolve_workers(config, total)
    chunk = max(16, min(128, math.ceil(total / (8 * workers))))
    jobs = []
    for split, n in splits:
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True)
        latents = latent_class_sequence(n, priors, config.seed, SPLIT_IDS[split])
        for start in range(0, n, chunk):
            jobs.append((config, split, start, latents[start:start + chunk].tolist(), str(image_dir)))

    bar = _Progress(total, progress)
    rows: dict[str, list[dict]] = {s: [] for s, _ in splits}
    if workers == 1:
        for job in jobs:
            out = _render_chunk(job)
            rows[job[1]].extend(out)
            bar.update(len(out))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the caller may have TensorFlow (and its threads) loaded already. An executor,
        # not multiprocessing.Pool: a worker that dies raises BrokenProcessPool instead of hanging.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            for job, out in zip(jobs, pool.map(_render_chunk, jobs)):
                rows[job[1]].extend(out)
                bar.update(len(out))

    columns = ["path", "expression", "valence", "arousal", "votes", "landmarks", "true_distribution", "latent_class"]
    summaries = {}
    for split, _ in splits:
        frame = pd.DataFrame(rows[split], columns=columns)
        frame.to_csv(root / f"{split}.csv", index=False)
        summaries[split] = _split_summary(frame, config.num_classes, majority=(split == "test"))
    meta = {
        "generator": "preprocess.synthetic",
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
    atomic_write_json(root / "meta.json", meta)  # written last: its presence marks a complete dataset
    os.chmod(root / "meta.json", 0o644)  # the atomic writer's temp file is private (0600)


def generate(out_dir, config: SyntheticConfig | None = None, force: bool = False, progress: bool = True) -> Path:
    """Generate the benchmark into ``out_dir`` atomically; refuse a non-empty ``out_dir`` unless ``force``."""
    config = config or SyntheticConfig()
    config.validate()
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not force:
            raise DataError(f"{out} already exists and is not empty; pass --force to replace it")
    with atomic_directory(out) as tmp:
        _write_dataset(tmp, config, progress)
    return out


def _is_complete(path: Path) -> bool:
    return (path / "meta.json").is_file() and (path / "train.csv").is_file() and (path / "test.csv").is_file()


def _check_meta(path: Path, config: SyntheticConfig) -> None:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path / 'meta.json'} is unreadable ({exc}); delete {path} to regenerate it") from None
    want = config_hash(config)
    if meta.get("config_hash") != want:
        raise DataError(f"{path} holds a synthetic dataset with config hash {meta.get('config_hash')!r}, "
                        f"not {want!r} (different settings or generator version); delete it or use another folder")


def default_root(config: SyntheticConfig) -> Path:
    from data.registry import data_home

    return data_home() / f"synthetic-{config_hash(config)}"


def ensure_synthetic(config: SyntheticConfig | None = None, root=None, progress: bool = True) -> Path:
    """Return the prepared directory for ``config``, generating it first if it does not exist yet.

    Idempotent and safe when several processes race: each renders into its own temporary folder and
    renames it into place; a rename that finds the target already populated discards its own copy.
    """
    config = config or SyntheticConfig()
    config.validate()
    target = Path(root) if root is not None else default_root(config)
    if _is_complete(target):
        _check_meta(target, config)
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DataError(f"{target} exists but is not a complete synthetic dataset (no meta.json); "
                        "delete it or choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent)))
    try:
        _write_dataset(tmp, config, progress)
        try:
            os.rename(tmp, target)  # atomic; replaces only an empty folder
        except OSError:
            if not _is_complete(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race: use its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _check_meta(target, config)
    return target


def _parse_weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--class-weights expects comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    d = SyntheticConfig()
    ap = argparse.ArgumentParser(prog="python -m preprocess.synthetic",
                                 description="Generate the built-in synthetic FER benchmark (a prepared dataset directory).")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: the data home's synthetic-<config hash>)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--train-size", type=int, default=d.train_size)
    ap.add_argument("--test-size", type=int, default=d.test_size)
    ap.add_argument("--val-size", type=int, default=d.val_size)
    ap.add_argument("--image-size", type=int, default=d.image_size)
    ap.add_argument("--num-classes", type=int, default=d.num_classes, choices=(7, 8))
    ap.add_argument("--imbalance-factor", type=float, default=d.imbalance_factor,
                    help="largest/smallest latent-class count ratio (1 = balanced)")
    ap.add_argument("--class-weights", type=str, default=None,
                    help="explicit comma-separated class priors (overrides --imbalance-factor)")
    ap.add_argument("--ambiguity", type=float, default=d.ambiguity, help="cluster spread scale in VA space")
    ap.add_argument("--va-noise", type=float, default=d.va_noise)
    ap.add_argument("--num-annotators", type=int, default=d.num_annotators)
    ap.add_argument("--occluder-prob", type=float, default=d.occluder_prob)
    ap.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    ap.add_argument("--workers", type=int, default=d.workers, help="processes (0 = auto); output is identical")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = SyntheticConfig(
            seed=args.seed, train_size=args.train_size, test_size=args.test_size, val_size=args.val_size,
            image_size=args.image_size, num_classes=args.num_classes, imbalance_factor=args.imbalance_factor,
            class_weights=_parse_weights(args.class_weights) if args.class_weights else None,
            ambiguity=args.ambiguity, va_noise=args.va_noise, num_annotators=args.num_annotators,
            occluder_prob=args.occluder_prob, jpeg_quality=args.jpeg_quality, workers=args.workers)
        config.validate()
        out = args.out if args.out is not None else default_root(config)
        start = time.monotonic()
        generate(out, config, force=args.force, progress=not args.quiet)
        elapsed = time.monotonic() - start
        meta = json.loads((Path(out) / "meta.json").read_text())
    except FERError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(s["size"] for s in meta["splits"].values())
    print(f"synthetic benchmark written to {out} (config hash {meta['config_hash']})")
    for split in ("train", "val", "test"):
        if split not in meta["splits"]:
            continue
        s = meta["splits"][split]
        print(f"  {split:5s} {s['size']:6d} images  label counts {s['label_counts']}  "
              f"ambiguous (max p < 0.8) {s['ambiguous_fraction']:.1%}")
    print(f"  bayes_test_accuracy   {meta['bayes_test_accuracy']:.4f}  (ceiling on the majority-vote test labels)")
    print(f"  train_label_agreement {meta['train_label_agreement']:.4f}  (train labels equal to argmax p)")
    print(f"  {total} images in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
