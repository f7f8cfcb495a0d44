"""``--head-init probe`` (LP-FT): the probe's maths, every method's classifier hooks, and a fresh vs resumed run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import build_method, tiny_run_config, train_run


def _blobs(n=300, d=6, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, d))
    labels = rng.integers(0, classes, n)
    # Offset and unequal scales per dimension: the standardisation folded into the weights must undo them.
    features = (centres[labels] + rng.normal(0, 1, (n, d))) * rng.uniform(0.1, 10, d) + rng.normal(0, 50, d)
    return features, labels


def test_probe_folds_the_standardisation_into_the_weights():
    from sklearn.linear_model import LogisticRegression

    from engine.head_init import fit_probe

    features, labels = _blobs()
    kernel, bias = fit_probe(features, labels, num_classes=4)
    mean, scale = features.mean(0), features.std(0)
    reference = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit((features - mean) / scale, labels)
    np.testing.assert_allclose(features @ kernel + bias, reference.decision_function((features - mean) / scale),
                               rtol=1e-4, atol=1e-3)


def test_probe_gives_a_class_without_rows_the_lowest_logit_and_splits_two_classes():
    from engine.head_init import fit_probe

    features, labels = _blobs(classes=3)
    kernel, bias = fit_probe(features, labels, num_classes=5)  # classes 3 and 4 have no training row
    logits = features @ kernel + bias
    assert np.all(kernel[:, 3:] == 0) and np.all(logits[:, 3:].max(1) < logits[:, :3].max(1) - 5)
    assert np.mean(np.argmax(logits, 1) == labels) > 0.9
    two_features, two_labels = _blobs(classes=2)
    kernel, bias = fit_probe(two_features, two_labels, num_classes=2)
    assert np.mean(np.argmax(two_features @ kernel + bias, 1) == two_labels) > 0.9


def test_probe_refuses_one_class_and_mismatched_rows():
    from common.errors import DataError
    from engine.head_init import fit_probe

    features, labels = _blobs()
    with pytest.raises(DataError, match="two or more"):
        fit_probe(features, np.zeros_like(labels), num_classes=4)
    with pytest.raises(DataError, match="feature rows"):
        fit_probe(features[:10], labels, num_classes=4)


@pytest.mark.parametrize("method", ["ce", "ldlva", "scn", "rul", "ddaf", "nla", "eac", "lanet"])
def test_set_linear_head_makes_the_classifier_the_probe(tiny_dataset, tmp_path, method):
    """For every method: after set_linear_head(K, b) the inference logits are classifier_inputs·K + b (SCN: the
    same times its importance α, so the same argmax)."""
    import tensorflow as tf

    from models.registry import method_names

    assert method in method_names()
    run, model, _ = build_method(tiny_dataset, tmp_path / "run", method=method)
    images = next(iter(run.eval_dataset("train")))["image"]
    features = np.asarray(model.classifier_inputs(images))
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(0, 1, (features.shape[1], 7)), rng.normal(0, 1, 7)
    model.set_linear_head(kernel, bias)
    probe_logits = features @ kernel + bias
    outputs = model.predict_outputs(tf.convert_to_tensor(images))
    logits = np.asarray(outputs["logits"])
    if method == "scn":
        alpha = np.asarray(outputs["importance"])[:, None]
        np.testing.assert_allclose(logits, alpha * probe_logits, rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_allclose(logits, probe_logits, rtol=1e-4, atol=1e-4)


def test_a_fresh_run_fits_the_probe_on_the_training_split_and_a_resume_does_not(tiny_dataset, tmp_path, monkeypatch):
    """The engine fits the probe once, before the first step, on every training row in table order with the
    given labels; ``--resume`` of a finished or killed run does not fit it again over the trained head."""
    import engine.head_init as head_init

    calls = []
    original = head_init.fit_probe

    def spy(features, labels, num_classes, **kwargs):
        calls.append((np.array(features), np.array(labels)))
        return original(features, labels, num_classes, **kwargs)

    monkeypatch.setattr(head_init, "fit_probe", spy)
    logs = []
    cfg = tiny_run_config(tiny_dataset, tmp_path / "probe", head_init="probe", epochs=1)
    trained = train_run(cfg, log=logs.append)
    assert len(calls) == 1 and any("--head-init probe" in str(line) for line in logs)
    features, labels = calls[0]
    from engine.run import Run

    run = Run(cfg, log=lambda *a: None)
    run.load_splits()
    np.testing.assert_array_equal(labels, np.asarray(run.train_table.labels))
    assert features.shape == (len(run.train_table), trained.model.classifier.kernel.shape[0])
    assert json.loads((tmp_path / "probe" / "config.json").read_text())["run"]["head_init"] == "probe"
    train_run(tiny_run_config(tiny_dataset, tmp_path / "probe", head_init="probe", epochs=2, resume=True,
                              extend=True))
    assert len(calls) == 1


def test_head_init_probe_resumes_bit_identically(tiny_dataset, tmp_path, monkeypatch):
    from helpers import check_resume_is_bit_identical

    check_resume_is_bit_identical(tiny_dataset, tmp_path, monkeypatch, "ce", head_init="probe")
