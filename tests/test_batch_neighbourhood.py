"""benchmarks.batch_neighbourhood: in-batch kNN purity, its ceiling and chance, on features with a known answer
and on a trained LA-Net run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import batch_neighbourhood as bn
from helpers import tiny_run_config, train_run


def test_class_clustered_features_reach_the_ceiling_in_every_batch_size():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = np.eye(3)[labels] + 0.01 * rng.standard_normal((120, 3))
    rows = bn.measure(features, labels, [4, 8, 16], k=5, draws=30, seed=0)
    assert [r["batch"] for r in rows] == [4, 8, 16, "all"]
    for r in rows:
        # Every same-class face is nearer than every other face: the graph fills its slots with the class first.
        assert r["purity_raw"] == pytest.approx(r["ceiling"]) and r["purity_centred"] == pytest.approx(r["ceiling"])
    assert rows[0]["ceiling"] < rows[1]["ceiling"] < rows[2]["ceiling"] <= rows[3]["ceiling"] == 1.0
    # Batch 4, K clipped to 3: on average 3 · 39/119 other faces of the class can fill the 3 slots' share.
    assert rows[0]["ceiling"] == pytest.approx(39 / 119, abs=0.06)


def test_features_blind_to_the_label_sit_at_chance():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 70)
    features = rng.standard_normal((210, 16))
    rows = bn.measure(features, labels, [32], k=8, draws=200, seed=0)
    expected = 69 / 209  # another face of the batch shares the row's class
    assert rows[0]["chance"] == pytest.approx(expected, abs=0.01)
    assert rows[0]["purity_raw"] == pytest.approx(expected, abs=0.03)
    assert rows[1]["chance"] == pytest.approx(expected, abs=1e-9)  # the whole table: exact


def test_batch_larger_than_the_table_is_refused():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="--batch-sizes 50: needs 2 to 20 faces"):
        bn.measure(np.ones((20, 2)), np.zeros(20, np.int64), [50], k=3, draws=2, seed=0)


@pytest.mark.slow
def test_a_lanet_run_gives_both_spaces_and_the_table(tiny_dataset, tmp_path):
    run = tmp_path / "lanet"
    train_run(tiny_run_config(tiny_dataset, run, "lanet", epochs=1, batch_size=16))
    out = tmp_path / "report"
    assert bn.main(["--runs", str(run), "--out", str(out), "--batch-sizes", "8", "16", "--draws", "5"]) == 0
    report = json.loads((out / "batch_neighbourhood.json").read_text())
    rows = report["results"]
    assert {(r["space"], r["batch"]) for r in rows} == {(s, b) for s in ("f (expression)", "g (landmark)")
                                                       for b in (8, 16, "all")}
    for r in rows:
        assert r["run"] == "lanet" and r["method"] == "lanet" and r["k"] == 8 and 0.0 <= r["purity_raw"] <= r["ceiling"] + 1e-9 <= 1.0 + 1e-9
    assert "| g (landmark) | all |" in (out / "batch_neighbourhood.md").read_text()


def test_a_missing_run_is_an_error_line(tmp_path, capsys):
    from common.cli import run_main

    assert run_main(bn.main, ["--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) != 0
    assert f"--runs {tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err


def test_a_grid_run_is_named_by_its_setting_and_name(tmp_path):
    assert bn.run_label(tmp_path / "pt" / "sym30" / "runs" / "lanet_0.3_s0") == "sym30/lanet_0.3_s0"
    assert bn.run_label(tmp_path / "my_run") == "my_run"
