"""The generative model of the synthetic FER benchmark: the maths behind each face, no drawing.

One sample
----------
1. **Latent cluster.** A class ``c`` is drawn from the class priors (uniform, an exponential
   ``imbalance_factor`` profile, or explicit ``class_weights``). Per split the cluster counts are exact
   quotas (largest remainder) in a seeded random order, so the imbalance ratio holds even for tiny splits.
2. **Valence-arousal point.** ``z ~ N(mu_c, (ambiguity * sigma_c)^2 I)`` with the cluster centres placed
   on Russell's circumplex (``CLASS_CENTRES``; Russell, *A circumplex model of affect*, 1980). Fear,
   Anger and Disgust are close to each other and Surprise is broad, so their clusters overlap and some
   faces are genuinely ambiguous.
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
   per-class prototypes (``PROTOTYPES``, inspired by FACS action units: Ekman & Friesen, 1978) blended
   with weights ``p``, scaled by an intensity that grows with ``|z|`` (emotional intensity), plus
   per-sample jitter. So the face shows the distribution and the VA point, not the sampled label: a
   60/40 Fear/Anger face looks like a mixture of both.

The face itself (identity, pose, nuisances) is drawn by :mod:`data.synthetic.render`.

Random streams
--------------
Every random choice of benchmark sample ``i`` of split ``s`` comes from
``np.random.default_rng([seed, SPLIT_IDS[s], i])`` and the latent-class order of split ``s`` from
``np.random.default_rng([seed, SPLIT_IDS[s], 2**32 - 1])``, so the output is byte-identical for a given
config whatever the number of worker processes. The identity set (:mod:`data.synthetic.identities`)
uses streams that are disjoint from all of these.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError
from data.classes import AFFECTNET8_CLASSES

SPLIT_IDS = {"train": 0, "test": 1, "val": 2}  # fixed ids: adding a val split never changes test
LATENT_STREAM = 2 ** 32 - 1  # the index of a split's latent-order stream; sample indices stay below it

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
    np.random.default_rng([seed, split_id, LATENT_STREAM]).shuffle(classes)
    return classes.astype(np.int64)


def sample_latent_point(rng: np.random.Generator, latent: int, priors: np.ndarray,
                        ambiguity: float) -> tuple[np.ndarray, np.ndarray]:
    """A VA point ``z`` of cluster ``latent`` (kept inside the unit square) and its posterior ``p(k | z)``."""
    spread = CLASS_SPREADS[latent] * ambiguity
    z = np.clip(CLASS_CENTRES[latent] + spread * rng.standard_normal(2), -0.98, 0.98)
    return z, true_distribution(z, priors, ambiguity)


def sample_annotations(rng: np.random.Generator, latent: int, config: SyntheticConfig,
                       priors: np.ndarray, majority: bool) -> dict:
    """Latent VA point, true distribution, annotators' votes, the recorded label and the noisy VA."""
    num = config.num_classes
    z, p = sample_latent_point(rng, latent, priors, config.ambiguity)
    draws = rng.choice(num, size=config.num_annotators, p=p)
    votes = np.bincount(draws, minlength=num)
    if majority:
        tied = np.flatnonzero(votes == votes.max())
        label = int(tied[np.argmax(p[tied])])  # ties -> the tied class the face shows most
    else:
        label = int(draws[0])  # a single annotator's label, as in a crowd-sourced train set
    va_obs = np.clip(z + config.va_noise * rng.standard_normal(2), -1.0, 1.0)
    return {"z": z, "p": p, "votes": votes, "label": label, "va": va_obs}


def expression_params(rng: np.random.Generator, z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Blend the class prototypes by ``p``; intensity grows with the distance from the VA origin."""
    blend = p @ PROTOTYPES[: len(p)]
    intensity = float(np.clip(0.6 + 0.55 * np.hypot(*z), 0.6, 1.2)) * rng.uniform(0.9, 1.1)
    params = _NEUTRAL + intensity * (blend - _NEUTRAL) + _JITTER * rng.standard_normal(len(_JITTER))
    return np.clip(params, _PARAM_LO, _PARAM_HI)
