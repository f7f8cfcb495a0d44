"""``--head-init probe``: start the classifier from a linear probe of the pretrained features (LP-FT).

Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", ICLR 2022
(LP-FT, Sec. 3): fine-tuning a pretrained backbone under a randomly initialised head first spends its steps
on the head's random errors, whose gradients move (distort) the pretrained features before the head carries
any class information; fitting the head as a linear probe on the frozen features first and then fine-tuning
everything avoids that window. On dlib's face ResNet at Adam 1e-4 that window is three epochs long (CE's
training accuracy stays at chance in epochs 0-2), and SCN's importance α and EAC's attention consistency
collapse inside it (BENCHMARKS.md, "The papers' regime on real face features").

What is fitted: a multinomial logistic regression (scikit-learn, L2, ``C``) from the inputs the method's
classifier sees at inference (:meth:`models.base.FERModel.classifier_inputs`: the pooled backbone feature;
RUL's μ) to the **given** training labels, on the training images in inference mode (resize + normalise, no
augmentation), standardised per dimension; the standardisation is folded into the weights, so the classifier
computes exactly the probe's logits (:meth:`models.base.FERModel.set_linear_head`). Done once, before the
first step of a fresh run; a resumed run reads the head from its checkpoint.
"""

from __future__ import annotations

import time

import numpy as np

from common.errors import DataError

HEAD_INITS = ("random", "probe")
PROBE_C = 1.0  # inverse L2 strength of the probe on standardised features (scikit-learn's default)


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, c: float = PROBE_C,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (D, C), bias (C,)) of a multinomial logistic regression on ``features`` (N, D), applied to the
    raw features (the per-dimension standardisation is folded in). A class no training row has keeps a zero
    kernel and a bias 10 below the lowest fitted one (its probability ~e⁻¹⁰ of the likeliest class's)."""
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(features) != len(labels) or len(labels) == 0:
        raise DataError(f"head init: {len(features)} feature rows for {len(labels)} labels")
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(f"head init: the training labels hold {len(present)} class; a probe needs two or more")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)  # a constant dimension carries nothing: leave it unscaled
    probe = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    probe.fit((features - mean) / scale, labels)
    coef, intercept = probe.coef_, probe.intercept_
    if len(probe.classes_) == 2:  # scikit-learn fits one logit for two classes: split it symmetrically
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    kernel = np.zeros((features.shape[1], num_classes))
    bias = np.full(num_classes, float(intercept.min()) - 10.0)
    for row, cls in enumerate(probe.classes_):
        kernel[:, cls] = coef[row] / scale
        bias[cls] = intercept[row] - float(np.dot(coef[row], mean / scale))
    return kernel.astype(np.float32), bias.astype(np.float32)


def init_head_from_probe(model, batches, labels, num_classes: int, seed: int = 0, log=print) -> dict:
    """Fit the probe on ``model.classifier_inputs`` of ``batches`` (inference-mode training images in table
    order, dicts with ``image``) and set the classifier to it. Returns what it did, for config/metrics."""
    start = time.perf_counter()
    rows = [np.asarray(model.classifier_inputs(batch["image"])) for batch in batches]
    features = np.concatenate(rows, axis=0)
    kernel, bias = fit_probe(features, labels, num_classes, seed=seed)
    model.set_linear_head(kernel, bias)
    logits = features @ kernel + bias
    agreement = float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels).reshape(-1)))
    seconds = time.perf_counter() - start
    log(f"--head-init probe: classifier fitted on {features.shape[0]} × {features.shape[1]} frozen features "
        f"({agreement:.1%} of the given training labels reproduced, {seconds:.1f} s)")
    return {"head_init_train_agreement": round(agreement, 4), "head_init_seconds": round(seconds, 2)}
