"""benchmarks.scale at a toy size (the real training path, growth exponents, goals), the per-sample state
table, and the per-epoch uncertainty CSV whose fixed columns are formatted once per run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd

from benchmarks import scale
from common.cli import run_main
from engine.uncertainty import uncertainty_csv_rows, write_uncertainty_csv


def _table(paths, labels, clean):
    return SimpleNamespace(labels=np.asarray(labels), clean_labels=None if clean is None else np.asarray(clean),
                           absolute_paths=lambda: list(paths))


def test_uncertainty_csv_reused_rows_read_back_as_written(tmp_path):
    # Paths a CSV must quote (comma, quote) and non-ASCII, read back by pandas exactly.
    paths = ["/d/a,b.jpg", '/d/"q".jpg', "/d/ü.png", "/d/plain.jpg"]
    table = _table(paths, [0, 1, 2, 1], [0, 2, 2, 1])
    rows = uncertainty_csv_rows(table, ["A", "B", "C"])
    for epoch, values in enumerate(([0.1, 1e-7, 0.5, 2 / 3], [0.9, 0.2, 0.3, 0.4])):
        path = write_uncertainty_csv(tmp_path / f"e{epoch}.csv", values, table, ["A", "B", "C"], rows)
        frame = pd.read_csv(path)
        assert list(frame.columns) == ["index", "path", "label", "label_name", "uncertainty", "clean_label", "flipped"]
        assert frame["path"].tolist() == paths and frame["label_name"].tolist() == ["A", "B", "C", "B"]
        np.testing.assert_allclose(frame["uncertainty"], values, rtol=1e-5)
        assert frame["flipped"].tolist() == [0, 1, 0, 0] and frame["index"].tolist() == [0, 1, 2, 3]
    no_clean = write_uncertainty_csv(tmp_path / "n.csv", [0.5, 0.5], _table(paths[:2], [0, 1], None), ["A", "B"])
    assert list(pd.read_csv(no_clean).columns) == ["index", "path", "label", "label_name", "uncertainty"]


def test_state_memory_counts_the_per_sample_rows():
    rows = {r["method"]: r for r in scale.state_memory(96, ["tiny_cnn"], image_size=24,
                                                       methods=["ce", "ldlva", "scn", "eac"])}
    assert rows["ce"]["state_bytes"] == 0 and rows["ce"]["other_bytes"] > 0
    bank, forward = rows["ldlva bank"], rows["ldlva (forward, default)"]
    assert "(96, 64)" in bank["state_shapes"] and "(96, 64)" not in forward["state_shapes"]  # tiny_cnn: 64-D
    assert bank["state_bytes"] - forward["state_bytes"] >= 96 * (64 + 7) * 4  # feature + probability banks
    assert rows["scn"]["state_bytes"] > 0 and rows["eac"]["state_bytes"] == 0
    assert "| tiny_cnn | ldlva bank |" in scale.state_markdown(list(rows.values()), 96)


def test_scale_benchmark_toy_sizes(tmp_path):
    out = tmp_path / "scale"
    assert run_main(scale.main, ["--sizes", "160", "320", "--pool", "12", "--epochs", "2", "--batch-size", "64",
                                 "--image-size", "16", "--backbone", "tiny_cnn", "--test-size", "40",
                                 "--out", str(out)]) == 0
    text = (out / "scale.md").read_text()
    assert "| load_data |" in text and "N = 320" in text and "peak host memory" in text
    assert "--backbone tiny_cnn" in text  # the option reaches the measuring processes:
    assert json.loads((out / "run_160" / "config.json").read_text())["run"]["backbone"] == "tiny_cnn"
    for n in (160, 320):
        result = json.loads((out / f"result_{n}.json").read_text())
        assert result["n"] == n and result["steps_per_epoch"] == -(-n // 64)
        assert len(result["epoch_seconds"]) == 2 and result["fit_overhead_per_epoch"] >= 0
        assert result["timings"]["checkpoint_bytes"] > 0 and 0 <= result["noise_auc"] <= 1
        assert len(pd.read_csv(out / f"run_{n}" / "uncertainty" / "epoch_002.csv")) == n
