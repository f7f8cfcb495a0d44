"""--sampler uniform|balanced: class counts per epoch, a method's own sampler kept, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import tiny_run_config, write_tiny_dataset
from helpers_cli import run_cli, train_args

# chi-square critical value at p = 0.001 with 6 degrees of freedom (7 classes): a balanced epoch exceeds
# it once in a thousand draws, the class counts of an imbalanced table by far.
CHI2_6DF_P001 = 22.458


def _chi2_uniform(counts) -> float:
    counts = np.asarray(counts, np.float64)
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_balanced_indices_draw_classes_equally_with_replacement():
    from data.pipeline import class_balanced_indices

    class_sizes = np.array([5000, 2000, 1500, 800, 400, 200, 100])
    labels = np.repeat(np.arange(7), class_sizes)
    np.random.default_rng(0).shuffle(labels)
    n = len(labels)
    for epoch in range(4):
        rows = class_balanced_indices(labels, 7, epoch, seed=3)
        assert rows.shape == (n,) and rows.dtype == np.int32 and rows.min() >= 0 and rows.max() < n
        share = np.bincount(labels[rows], minlength=7) / n
        # Each class 1/7 of the epoch; binomial sd sqrt(p(1-p)/n) = 0.0035, so 0.015 is > 4 sd.
        np.testing.assert_allclose(share, 1 / 7, atol=0.015)
        # With replacement: the 100 rows of the smallest class are drawn about n/7 = 1430 times.
        assert np.bincount(rows[labels[rows] == 6]).max() > 1
    # A pure function of (seed, epoch): a resumed run draws the same rows.
    np.testing.assert_array_equal(class_balanced_indices(labels, 7, 2, seed=3), class_balanced_indices(labels, 7, 2, seed=3))
    assert not np.array_equal(class_balanced_indices(labels, 7, 2, seed=3), class_balanced_indices(labels, 7, 3, seed=3))
    assert not np.array_equal(class_balanced_indices(labels, 7, 2, seed=3), class_balanced_indices(labels, 7, 2, seed=4))


def test_a_class_without_rows_is_never_drawn():
    from data.pipeline import class_balanced_indices

    labels = np.array([0] * 30 + [2] * 3)
    rows = class_balanced_indices(labels, 7, 0, seed=0)
    assert set(labels[rows]) == {0, 2}


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """A tiny table, 40 rows per class, subsampled to imbalance factor 10 (40 … 4 rows per class)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("imbalanced"), n_train=280, n_test=14, landmarks=False,
                              votes=False)


def _epoch_labels(run, method_data, epochs: int) -> list[np.ndarray]:
    """The labels of every training row the pipeline yields, epoch by epoch."""
    spe = run.steps_per_epoch
    labels = [batch["label"].numpy() for batch in run.train_dataset(method_data).take(epochs * spe)]
    return [np.concatenate(labels[e * spe:(e + 1) * spe]) for e in range(epochs)]


@pytest.mark.parametrize("sampler", ["uniform", "balanced"])
def test_per_epoch_class_counts_through_the_pipeline(sampler, imbalanced, tmp_path):
    from engine.run import Run

    log = []
    run = Run(tiny_run_config(imbalanced, tmp_path / "run", imbalance_factor=10.0, sampler=sampler, epochs=3,
                              batch_size=16), log=log.append)
    run.load_splits()
    table_counts = run.train_table.class_counts()
    assert table_counts.max() / table_counts.min() == 10
    method_data = run.method_inputs()
    epochs = _epoch_labels(run, method_data, 3)
    n = len(run.train_table)
    for labels in epochs:
        assert len(labels) == n  # the epoch keeps the dataset's size
        counts = np.bincount(labels, minlength=7)
        if sampler == "uniform":
            np.testing.assert_array_equal(counts, table_counts)
            assert _chi2_uniform(counts) > 2 * CHI2_6DF_P001
        else:
            assert _chi2_uniform(counts) < CHI2_6DF_P001, counts
    assert run.record_extras["sampler"] == {"requested": sampler, "effective": sampler}
    if sampler == "balanced":
        assert not np.array_equal(epochs[0], epochs[1])  # a new draw every epoch


def test_a_method_with_its_own_sampler_keeps_it(tiny_dataset, tmp_path):
    from engine.run import Run
    from models.lanet import balanced_epoch_indices

    log = []
    run = Run(tiny_run_config(tiny_dataset, tmp_path / "run", method="lanet", sampler="balanced"), log=log.append)
    run.load_splits()
    method_data = run.method_inputs()
    assert any("keeps its own sampler" in line for line in log), log
    effective = run.record_extras["sampler"]["effective"]
    assert effective.startswith("lanet's own") and "balanced_epoch_indices" in effective
    expected = balanced_epoch_indices(run.train_table.labels, 7, 1, total_epochs=2, seed=0)
    np.testing.assert_array_equal(method_data.epoch_indices(1), expected)
    # With its own sampler switched off, the run-level one applies.
    run = Run(tiny_run_config(tiny_dataset, tmp_path / "run2", method="lanet", sampler="balanced",
                              set={"balanced_sampler": "false"}), log=log.append)
    run.load_splits()
    run.method_inputs()
    assert run.record_extras["sampler"] == {"requested": "balanced", "effective": "balanced"}


@pytest.mark.slow
def test_resume_after_a_kill_between_epochs_is_exact(imbalanced, tmp_path, capsys, monkeypatch):
    """Killed at the end of epoch 0 (the run directory as epoch 0's checkpoint leaves it) and resumed: the same
    rows and weights as an uninterrupted run. A real SIGKILL's resume is test_resume.py's and benchmarks.chaos's."""
    import math

    import train
    from data.noise import imbalance_profile
    from helpers import copy_when_epoch_ends
    from helpers_cli import h5_datasets

    def argv(out, sampler="balanced"):
        return train_args(imbalanced, out, "--epochs", 2, "--seed", 5, "--sampler", sampler, "--imbalance-factor", 10,
                          "--batch-size", 16)

    run, reference = tmp_path / "killed", tmp_path / "reference"
    boundary = math.ceil(int(imbalance_profile(7, 40, 10.0).sum()) / 16)  # steps per epoch
    copy_when_epoch_ends(monkeypatch, reference, run)
    code, _, err = run_cli(train, argv(reference), capsys)
    assert code == 0, err[-3000:]
    monkeypatch.undo()
    assert (run / "ckpt" / "latest").read_text().strip() == f"step-{boundary:09d}"
    code, out, err = run_cli(train, argv(run) + ["--resume"], capsys)
    assert code == 0, err[-3000:]
    assert "resumed from" in out
    final = f"step-{2 * boundary:09d}"
    assert (run / "ckpt" / "latest").read_text().strip() == final
    resumed, uninterrupted = (h5_datasets(r / "ckpt" / final / "model.weights.h5") for r in (run, reference))
    different = [k for k in uninterrupted if not np.array_equal(resumed[k], uninterrupted[k])]
    assert sorted(resumed) == sorted(uninterrupted) and not different, different[:10]
    record = json.loads((run / "config.json").read_text())
    assert record["run"]["sampler"] == "balanced" and record["sampler"] == {"requested": "balanced",
                                                                             "effective": "balanced"}
    # --sampler is part of the run: resuming with another one is refused.
    code, _, err = run_cli(train, argv(run, sampler="uniform") + ["--resume"], capsys)
    assert code == 2 and "run.sampler: 'balanced' → 'uniform'" in err, err
