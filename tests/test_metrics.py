"""Whole-split metrics: hand-computed cases and cross-checks against scikit-learn."""

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from engine import metrics as M

# 3 classes, 6 samples. Confusion matrix (rows = true):
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 1]]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _random_case(seed, n=500, c=7):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, size=n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y_true]
    probs = _softmax(logits)
    return y_true, probs, probs.argmax(axis=1)


# ------------------------------------------------------------------------------------------ hand cases

def test_hand_confusion_and_accuracies():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert M.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)
    np.testing.assert_allclose(M.per_class_accuracy(Y_TRUE, Y_PRED, 3), [0.5, 1.0, 0.5])
    assert M.mean_class_accuracy(Y_TRUE, Y_PRED, 3) == pytest.approx(2 / 3)
    # F1: class 0: 2*1/(2+1+1)=0.5; class 1: 4/(4+1+0)=0.8; class 2: 2/(2+0+1)=2/3
    assert M.macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_absent_class_nan_and_f1_over_present_classes():
    y_true = np.array([0, 1, 1])
    y_pred = np.array([0, 1, 0])
    pca = M.per_class_accuracy(y_true, y_pred, 4)
    assert pca[0] == 1.0 and pca[1] == 0.5 and np.isnan(pca[2]) and np.isnan(pca[3])
    assert M.mean_class_accuracy(y_true, y_pred, 4) == pytest.approx(0.75)
    # classes 2, 3 appear nowhere -> left out; class 0: 2/3, class 1: 2/3
    assert M.macro_f1(y_true, y_pred, 4) == pytest.approx(2 / 3)
    assert M.macro_f1(y_true, y_pred, 4) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    # a class predicted but never true counts as F1 = 0
    assert M.macro_f1([0, 0], [0, 1], 3) == pytest.approx((2 / 3 + 0.0) / 2)


def test_empty_inputs_are_nan():
    assert math.isnan(M.accuracy([], []))
    assert math.isnan(M.mean_class_accuracy([], [], 3))
    assert math.isnan(M.macro_f1([], [], 3))


def test_label_out_of_range_raises():
    with pytest.raises(ValueError):
        M.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError):
        M.accuracy([0, 1], [0])


def test_ece_two_bins_by_hand():
    probs = np.array([
        [0.9, 0.05, 0.05],  # conf .9, correct (label 0)
        [0.8, 0.1, 0.1],    # conf .8, wrong (label 1)
        [0.2, 0.6, 0.2],    # conf .6, correct (label 1)
        [0.3, 0.3, 0.4],    # conf .4, wrong (label 0)
    ])
    y = np.array([0, 1, 1, 0])
    # high bin (.5, 1]: acc 2/3, conf 2.3/3 -> weight 3/4 * 0.1; low bin [0, .5]: acc 0, conf .4 -> 1/4 * .4
    assert M.expected_calibration_error(probs, y, num_bins=2) == pytest.approx(0.75 * 0.1 + 0.25 * 0.4)
    # a confidence exactly on an edge goes to the lower bin: conf 0.5 correct alone in [0, .5]
    edge = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert M.expected_calibration_error(edge, [0, 0], num_bins=2) == pytest.approx(0.5 * 0.5 + 0.5 * 0.0)
    # perfectly confident and correct -> 0
    assert M.expected_calibration_error(np.eye(3), [0, 1, 2]) == pytest.approx(0.0)


def test_ece_matches_reference_loop():
    y, probs, _ = _random_case(1)
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, 16)
    ref = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ref += inb.mean() * abs((pred[inb] == y[inb]).mean() - conf[inb].mean())
    assert M.expected_calibration_error(probs, y) == pytest.approx(ref, abs=1e-12)


def test_nll_by_hand_and_clipping():
    probs = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert M.negative_log_likelihood(probs, [0, 1]) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
    assert M.negative_log_likelihood([[1.0, 0.0]], [1], eps=1e-12) == pytest.approx(-math.log(1e-12))


def test_rmse_and_ccc_by_hand():
    assert M.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert M.ccc([0.1, -0.4, 0.7], [0.1, -0.4, 0.7]) == pytest.approx(1.0)
    # x=[1,2,3], y=[2,4,6]: var_x=2/3, var_y=8/3, cov=4/3, (mx-my)^2=4 -> (8/3)/(22/3) = 4/11
    assert M.ccc([1, 2, 3], [2, 4, 6]) == pytest.approx(4 / 11)
    assert M.ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(M.ccc([1, 1], [1, 1]))


def test_va_metrics_keys_and_values():
    pred = np.array([[0.0, 0.5], [0.5, 0.0], [1.0, -0.5]])
    true = np.array([[0.0, 0.5], [0.5, 0.0], [1.0, -0.5]])
    out = M.va_metrics(pred, true)
    assert set(out) == {"valence_rmse", "arousal_rmse", "valence_ccc", "arousal_ccc"}
    assert out["valence_rmse"] == 0 and out["arousal_rmse"] == 0
    assert out["valence_ccc"] == pytest.approx(1) and out["arousal_ccc"] == pytest.approx(1)
    out = M.va_metrics(pred + [0.1, 0.0], true)
    assert out["valence_rmse"] == pytest.approx(0.1)
    assert all(isinstance(v, float) for v in out.values())


def test_divergences_two_classes_by_hand():
    votes = np.array([[3, 1], [1, 0]], dtype=float)  # h = [.75, .25], [1, 0]
    pred = np.array([[0.5, 0.5], [0.5, 0.5]])
    kl1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl1 == pytest.approx(0.130812, abs=1e-6)
    kl2 = math.log(2.0)
    rkl1 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    rkl2 = 0.5 * math.log(0.5 / 1.0) + 0.5 * math.log(0.5 / 1e-12)  # h has a 0 -> clipped at eps
    js1 = 0.5 * (0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375)) + \
        0.5 * (0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375))
    js2 = 0.5 * (1.0 * math.log(1.0 / 0.75)) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    out = M.distribution_divergences(pred, votes)
    assert out["kl"] == pytest.approx((kl1 + kl2) / 2)
    assert out["js"] == pytest.approx((js1 + js2) / 2)
    assert out["jeffrey"] == pytest.approx((kl1 + rkl1 + kl2 + rkl2) / 2)
    same = M.distribution_divergences([[0.2, 0.8]], [[2, 8]])
    assert same["kl"] == pytest.approx(0) and same["js"] == pytest.approx(0) and same["jeffrey"] == pytest.approx(0)


def test_js_bounded_by_ln2():
    out = M.distribution_divergences([[1.0, 0.0]], [[0, 5]])
    assert out["js"] == pytest.approx(math.log(2))


def test_noise_auc_by_hand_with_ties():
    score = [0.9, 0.5, 0.5, 0.1]
    given = [1, 1, 0, 0]
    clean = [0, 0, 0, 0]  # first two flipped
    # pairs: .9>.5, .9>.1, .5=.5 (1/2), .5>.1 -> 3.5 / 4
    assert M.noise_detection_auc(score, given, clean) == pytest.approx(0.875)
    assert M.noise_detection_auc([1, 1, 1], [1, 0, 0], [0, 0, 0]) == pytest.approx(0.5)
    assert math.isnan(M.noise_detection_auc([0.1, 0.2], [0, 1], [0, 1]))  # no flipped
    assert math.isnan(M.noise_detection_auc([0.1, 0.2], [1, 0], [0, 1]))  # no clean


# ------------------------------------------------------------------------------- sklearn cross-checks

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed):
    y, probs, pred = _random_case(seed)
    c = probs.shape[1]
    assert M.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert M.mean_class_accuracy(y, pred, c) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert M.macro_f1(y, pred, c) == pytest.approx(
        skm.f1_score(y, pred, average="macro", labels=list(range(c)), zero_division=0))
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, c), skm.confusion_matrix(y, pred, labels=list(range(c))))
    np.testing.assert_allclose(M.per_class_accuracy(y, pred, c),
                               skm.recall_score(y, pred, average=None, labels=list(range(c))))
    assert M.negative_log_likelihood(probs, y) == pytest.approx(skm.log_loss(y, probs, labels=list(range(c))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_against_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 400
    clean = rng.integers(0, 7, size=n)
    given = clean.copy()
    flip = rng.random(n) < 0.3
    given[flip] = (clean[flip] + 1) % 7
    # coarse scores so there are many ties
    score = np.round(rng.random(n) + 0.5 * flip, 1)
    expected = skm.roc_auc_score(flip.astype(int), score)
    assert M.noise_detection_auc(score, given, clean) == pytest.approx(expected, abs=1e-12)


def test_divergence_kl_against_scipy():
    from scipy.stats import entropy
    rng = np.random.default_rng(3)
    votes = rng.integers(1, 10, size=(50, 8)).astype(float)
    probs = _softmax(rng.normal(size=(50, 8)))
    h = votes / votes.sum(1, keepdims=True)
    out = M.distribution_divergences(probs, votes)
    assert out["kl"] == pytest.approx(np.mean([entropy(a, b) for a, b in zip(h, probs)]))
    assert out["jeffrey"] == pytest.approx(np.mean([entropy(a, b) + entropy(b, a) for a, b in zip(h, probs)]))
    mid = (h + probs) / 2
    assert out["js"] == pytest.approx(np.mean([(entropy(a, m) + entropy(b, m)) / 2 for a, b, m in zip(h, probs, mid)]))


# ------------------------------------------------------------------------------------------------ report

def test_classification_report_json_and_format():
    probs = np.eye(4)[[0, 1, 1, 0]] * 0.7 + 0.075  # rows sum to 1
    y_true = np.array([0, 1, 0, 0])  # class 2, 3 absent from y_true
    names = ["Neutral", "Happy", "Sad", "Surprise"]
    rep = M.classification_report(y_true, probs, 4, names)
    assert set(rep) == {"accuracy", "mean_class_accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix",
                        "class_names", "ece", "nll", "num_samples"}
    text = json.dumps(rep)  # must not raise
    assert "NaN" not in text
    assert rep["num_samples"] == 4
    assert rep["accuracy"] == pytest.approx(0.75)
    assert rep["per_class_accuracy"] == {"Neutral": pytest.approx(2 / 3), "Happy": 1.0, "Sad": None, "Surprise": None}
    assert rep["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert rep["class_names"] == names
    assert isinstance(rep["confusion_matrix"][0][0], int)
    for key in ("accuracy", "mean_class_accuracy", "macro_f1", "ece", "nll"):
        assert type(rep[key]) is float
    out = M.format_report(rep)
    assert "accuracy" in out and "mean class accuracy" in out and "macro F1" in out
    assert "75.00%" in out
    for name in names:
        assert name in out
    lines = out.splitlines()
    header = [line for line in lines if "true \\ pred" in line][0]
    assert all(name in header for name in names)
    assert any(line.strip().startswith("Neutral") and line.split()[-4:] == ["2", "1", "0", "0"] for line in lines)
