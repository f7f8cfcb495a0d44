"""``benchmarks.va_neighbourhood``: what LDLVA's VA neighbours know, checked against a brute-force recount."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import tiny_run_config, train_run, write_tiny_dataset
from helpers_cli import run_cli


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from data.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(seed=1, train_size=90, test_size=21, image_size=32, workers=1)
    return generate(tmp_path_factory.mktemp("van") / "synthetic", config, progress=False)


def _brute_force(va, probs, latent, given, clean, k, delta=0.5):
    """The K nearest rows by (distance, row index), self excluded, and the eq. 2/5 mix: written out directly."""
    n = len(va)
    dist = np.sqrt(((va[:, None, :] - va[None, :, :]) ** 2).sum(-1))
    purity, peak, rescued = [], [], []
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (dist[i, j], j))[:k]
        weights = np.exp(-dist[i, order] ** 2 / delta ** 2)
        mix = (weights[:, None] * probs[order]).sum(0) / weights.sum()
        purity.append(np.mean(latent[order] == latent[i]))
        peak.append(mix.argmax() == clean[i])
        if given[i] != clean[i]:
            rescued.append(mix[clean[i]] > mix[given[i]])
    return np.mean(purity), np.mean(peak), np.mean(rescued)


def _results(out):
    return {(r["va_noise"], r["k"]): r for r in json.loads((out / "va_neighbourhood.json").read_text())["results"]}


def test_label_mix_equals_a_brute_force_recount(synthetic, tmp_path, capsys):
    import benchmarks.va_neighbourhood as van
    from data.noise import symmetric_noise

    code, stdout, err = run_cli(van, ["--out", tmp_path, "--data-dir", synthetic, "--ks", "2", "5", "--va-noise",
                                      "0", "0.5", "--noise-rate", "0.3", "--seed", "0"], capsys)
    assert code == 0, err
    assert "| 0 | 5 |" in stdout and (tmp_path / "va_neighbourhood.md").read_text() == stdout.rstrip("\n") + "\n"
    frame = pd.read_csv(synthetic / "train.csv")
    clean = frame["expression"].to_numpy()
    given = symmetric_noise(clean, 0.3, 7, 0)  # the training protocol's own flips
    va = frame[["valence", "arousal"]].to_numpy(np.float64)
    results = _results(tmp_path)
    for k in (2, 5):
        purity, peak, rescued = _brute_force(va, np.eye(7)[given], frame["latent_class"].to_numpy(), given, clean, k)
        row = results[0.0, k]
        assert row["neighbour_purity"] == pytest.approx(purity)
        assert row["mix_clean_accuracy"] == pytest.approx(peak)
        assert row["mix_rescues_flip"] == pytest.approx(rescued)
    # noisier VA puts fewer same-class faces among the neighbours (the data's property the table reads)
    assert results[0.5, 5]["neighbour_purity"] < results[0.0, 5]["neighbour_purity"]


@pytest.mark.slow
def test_a_run_gives_its_table_and_its_bank(synthetic, tmp_path, capsys):
    import benchmarks.va_neighbourhood as van
    from engine.label_audit import load_audited_run

    run_dir = tmp_path / "ldlva"
    train_run(tiny_run_config(synthetic, run_dir, method="ldlva", epochs=2, noise="symmetric", noise_rate=0.3,
                              seed=0, noise_seed=0, set={"num_neighbors": "3", "neighbor_source": "bank"}))
    code, stdout, err = run_cli(van, ["--out", tmp_path / "a", "--run", run_dir, "--ks", "3", "--va-noise", "0"],
                                capsys)
    assert code == 0, err
    assert "bank mix" in stdout
    code, _, err = run_cli(van, ["--out", tmp_path / "b", "--data-dir", synthetic, "--ks", "3", "--va-noise", "0",
                                 "--noise-rate", "0.3", "--seed", "0"], capsys)
    assert code == 0, err
    from_run, from_table = _results(tmp_path / "a")[0.0, 3], _results(tmp_path / "b")[0.0, 3]
    for key in ("neighbour_purity", "mix_clean_accuracy", "mix_rescues_flip", "tv_to_true"):
        assert from_run[key] == pytest.approx(from_table[key])  # the run's flips are the protocol's
    run, model, _record, _state = load_audited_run(run_dir)
    given, clean = np.asarray(run.train_table.labels), np.asarray(run.train_table.clean_labels)
    va = run.train_table.frame[["valence", "arousal"]].to_numpy(np.float64)
    bank = model.bank_probs.numpy().astype(np.float64)
    assert not np.allclose(bank, np.eye(7)[given])  # training replaced the label rows with predictions
    _purity, peak, rescued = _brute_force(va, bank, run.train_table.frame["latent_class"].to_numpy(), given, clean, 3)
    assert from_run["bank_mix_clean_accuracy"] == pytest.approx(peak)
    assert from_run["bank_mix_rescues_flip"] == pytest.approx(rescued)


@pytest.mark.slow
def test_bad_input_is_an_error_line(synthetic, tmp_path, capsys):
    import benchmarks.va_neighbourhood as van

    ce = tmp_path / "ce"
    train_run(tiny_run_config(synthetic, ce, method="ce", epochs=1))
    plain = write_tiny_dataset(tmp_path / "plain", n_train=14, n_test=7, votes=False, landmarks=False)
    for argv, expected in ((["--run", ce], "no neighbour bank"),
                           (["--data-dir", plain], "lacks"),
                           (["--data-dir", synthetic, "--ks", "90"], "needs more than K"),
                           (["--data-dir", synthetic, "--va-noise", "-1"], "must be >= 0"),
                           (["--data-dir", synthetic, "--noise-rate", "1"], "must be in [0, 1)")):
        code, _, err = run_cli(van, ["--out", tmp_path / "out", *argv], capsys)
        assert code == 2 and err.startswith("error:") and expected in err, err
    assert not (tmp_path / "out").exists()
