"""benchmark.py: the grid, resuming a half-finished grid, a broken method, tables, inconsistent labels."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

import benchmark
from benchmarks import grid
from common.errors import ConfigError
from helpers import write_tiny_dataset



def tiny(epochs: int = 1) -> list[str]:
    return ["--backbone", "tiny_cnn", "--image-size", "24", "--batch-size", "8", "--epochs", str(epochs),
            "--val-every", "0"]


# ------------------------------------------------------------------------------------- pure parts

def test_parse_method_sets():
    assert grid.parse_method_sets(["ldlva:gamma=0.1", "ldlva:num_neighbors=4", "nla:t=2"]) == {
        "ldlva": {"gamma": "0.1", "num_neighbors": "4"}, "nla": {"t": "2"}}
    for bad in ("gamma=0.1", "ldlva:gamma", ":gamma=1"):
        with pytest.raises(ConfigError):
            grid.parse_method_sets([bad])


def test_mean_std_is_sample_std_and_ignores_missing():
    mean, std, n = grid.mean_std([0.8, 0.9, None, float("nan")])
    assert (mean, n) == (pytest.approx(0.85), 2)
    assert std == pytest.approx(math.sqrt(((0.8 - 0.85) ** 2 + (0.9 - 0.85) ** 2) / 1))  # ddof = 1
    assert grid.mean_std([0.5])[1:] == (0.0, 1)
    assert math.isnan(grid.mean_std([None])[0])


def test_metric_table_layout_best_in_bold_and_partial_cells():
    rows = [{"method": "ce", "level": "0.1", "accuracy": 0.80}, {"method": "ce", "level": "0.1", "accuracy": 0.90},
            {"method": "ldlva", "level": "0.1", "accuracy": 0.95},
            {"method": "ce", "level": "0.3", "accuracy": 0.70}, {"method": "ce", "level": "0.3", "accuracy": 0.72}]
    lines = grid.metric_table(rows, ["ce", "ldlva"], ["0.1", "0.3"], "accuracy", "noise", seeds=2)
    assert lines[0] == "| Method | 10% | 30% |"
    assert lines[2] == "| CE | 85.00 ± 7.07 | 71.00 ± 1.41 |"
    assert lines[3] == "| LDLVA | **95.00 ± 0.00** (n=1) | – |"
    assert grid.metric_table(rows, ["ce"], ["0.1"], "noise_detection_auc", "noise", 2) is None


def test_cell_configs_per_protocol():
    args = benchmark.build_parser().parse_args(["--protocol", "imbalance", "--levels", "50", "--dataset", "csv"])
    args.preset = {}
    cfg = grid.base_config(args, "ce", 1, "OUT/x", 50.0, {"ce": {"label_smoothing": "0.1"}})
    assert (cfg.imbalance_factor, cfg.noise, cfg.seed, cfg.noise_seed) == (50.0, "none", 1, 1)
    assert cfg.set == {"label_smoothing": "0.1"}
    args = benchmark.build_parser().parse_args(["--protocol", "noise", "--levels", "0.2", "--noise-kind", "asymmetric"])
    args.preset = {}
    cfg = grid.base_config(args, "ce", 0, "OUT/x", 0.2, {})
    assert (cfg.noise, cfg.noise_rate, cfg.imbalance_factor) == ("asymmetric", 0.2, 1.0)
    with pytest.raises(ConfigError, match="noise rate"):
        grid.grid_levels(benchmark.build_parser().parse_args(["--protocol", "noise", "--levels", "1.5"]))
    with pytest.raises(ConfigError, match="needs --levels"):
        grid.grid_levels(benchmark.build_parser().parse_args(["--protocol", "imbalance"]))


# ------------------------------------------------------------------------------------------ grids

def test_a_registered_method_that_does_not_import_stops_the_grid(tiny_dataset, tmp_path, monkeypatch):
    from models import registry

    registry.register_method("broken", "models.does_not_exist:X", "models.does_not_exist:Y")
    try:
        argv = ["--protocol", "noise", "--levels", "0.1", "--methods", "ce", "broken", "--seeds", "0",
                "--dataset", "csv", "--num-classes", "7", "--data-dir", str(tiny_dataset), "--out",
                str(tmp_path / "bench"), *tiny()]
        with pytest.raises(ImportError):
            benchmark.main(argv)
        assert not (tmp_path / "bench" / "runs").exists()  # before any training
    finally:
        registry.METHODS.pop("broken")


@pytest.mark.slow
def test_noise_grid_resumes_and_reports_stale_cells(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--protocol", "noise", "--levels", "0.1", "0.3", "--methods", "ce", "--seeds", "0",
            "--dataset", "csv", "--num-classes", "7", "--data-dir", str(tiny_dataset), "--out", str(out), *tiny()]
    assert benchmark.main(argv) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns) == list(grid.RUNS_CSV_COLUMNS)
    assert sorted(runs["level"].astype(str)) == ["0.1", "0.3"] and set(runs["method"]) == {"ce"}
    assert runs["accuracy"].between(0, 1).all() and (runs["seconds"] > 0).all()
    first = json.loads((out / "runs" / "ce_0.1_s0" / "metrics.json").read_text())
    assert runs.loc[runs["level"] == 0.1, "accuracy"].item() == pytest.approx(first["accuracy"])
    config = json.loads((out / "runs" / "ce_0.3_s0" / "config.json").read_text())["run"]
    assert (config["noise"], config["noise_rate"], config["noise_seed"]) == ("symmetric", 0.3, 0)
    results = (out / "results.md").read_text()
    assert "| CE |" in results and "| Method | 10% | 30% |" in results

    # Half-finished grid: cell 2 lost its metrics (killed after its last checkpoint); cell 1 is done.
    done_mtime = (out / "runs" / "ce_0.1_s0" / "metrics.json").stat().st_mtime_ns
    (out / "runs" / "ce_0.3_s0" / "metrics.json").unlink()
    capsys.readouterr()
    assert benchmark.main(argv) == 0
    log = capsys.readouterr().out
    assert "resuming ce_0.3_s0" in log and "ce_0.1_s0" not in log.split("results.md")[0]
    assert (out / "runs" / "ce_0.1_s0" / "metrics.json").stat().st_mtime_ns == done_mtime
    assert (out / "runs" / "ce_0.3_s0" / "metrics.json").is_file()
    assert len(pd.read_csv(out / "runs.csv")) == 2

    # A finished cell trained with other settings is reported as stale, not mixed into the table.
    assert benchmark.main(argv[:-len(tiny())] + tiny(epochs=2) + ["--report-only"]) == 0
    results = (out / "results.md").read_text()
    assert "stale" in results and "run.epochs: 1 → 2" in results
    assert len(pd.read_csv(out / "runs.csv")) == 0


@pytest.mark.slow
def test_failed_cell_is_reported_and_grid_goes_on(tiny_dataset, tmp_path, monkeypatch):
    import engine.fit

    calls = []

    def broken_train(run):
        calls.append(run.cfg.run)
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.fit, "train", broken_train)
    out = tmp_path / "bench"
    argv = ["--protocol", "noise", "--levels", "0.1", "0.2", "--methods", "ce", "--seeds", "0", "--dataset", "csv",
            "--num-classes", "7", "--data-dir", str(tiny_dataset), "--out", str(out), *tiny()]
    assert benchmark.main(argv) == 1
    assert len(calls) == 2  # the first failure did not stop the grid
    results = (out / "results.md").read_text()
    assert "ce_0.1_s0: failed (RuntimeError: boom)" in results and "ce_0.2_s0: failed" in results
    assert "RuntimeError: boom" in (out / "runs" / "ce_0.1_s0" / grid.ERROR_FILE).read_text()
    # Once the cause is gone, rerunning the same command trains the failed cell from its leftover directory.
    monkeypatch.undo()
    assert benchmark.main(argv[:4] + argv[5:]) == 0  # without level 0.2
    assert (out / "runs" / "ce_0.1_s0" / "metrics.json").is_file()
    assert not (out / "runs" / "ce_0.1_s0" / grid.ERROR_FILE).exists()


def test_bad_method_setting_fails_before_training(tiny_dataset, tmp_path):
    argv = ["--protocol", "original", "--methods", "ce", "--seeds", "0", "--dataset", "csv", "--num-classes", "7",
            "--data-dir", str(tiny_dataset), "--out", str(tmp_path / "b"), "--method-set", "ce:no_such_setting=1"]
    with pytest.raises(ConfigError, match="no_such_setting"):
        benchmark.main(argv)
    with pytest.raises(ConfigError, match="not in --methods"):
        benchmark.main(argv[:-1] + ["nla:t=1"])
    assert not (tmp_path / "b" / "runs").exists() or not any((tmp_path / "b" / "runs").iterdir())


def _prepared(root, seed):
    write_tiny_dataset(root, n_train=28, n_test=14, seed=seed)
    (root / "dataset.json").write_text(json.dumps({"num_classes": 7, "image_root": "images"}))
    return root


@pytest.mark.slow
def test_inconsistent_protocol_trains_on_the_join_and_tests_each_source(tmp_path):
    dirs = {name: _prepared(tmp_path / name, seed) for seed, name in enumerate(("rafdb", "affectnet", "sfew"))}
    out = tmp_path / "bench"
    argv = ["--protocol", "inconsistent", "--methods", "ce", "--seeds", "0", "--out", str(out),
            "--data-dirs", *[f"{n}={d}" for n, d in dirs.items()], *tiny()]
    assert benchmark.main(argv) == 0
    train = pd.read_csv(out / "joined" / "train.csv")
    assert len(train) == 56 and set(train["source"]) == {"rafdb", "affectnet"}  # SFEW is test-only
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["level"]) == ["rafdb", "affectnet", "sfew"]
    run_dir = out / "runs" / "ce_joint_s0"
    for name in dirs:
        report = json.loads((run_dir / f"metrics_{name}.json").read_text())
        assert report["num_samples"] == 14
        assert runs.loc[runs["level"] == name, "accuracy"].item() == pytest.approx(report["accuracy"])
    assert "| Method | rafdb | affectnet | sfew |" in (out / "results.md").read_text()
    # A lost per-source report is recomputed from the checkpoint (load_run_model), identically.
    before = json.loads((run_dir / "metrics_sfew.json").read_text())
    (run_dir / "metrics_sfew.json").unlink()
    assert benchmark.main(argv) == 0
    after = json.loads((run_dir / "metrics_sfew.json").read_text())
    assert after["confusion_matrix"] == before["confusion_matrix"]
    assert after["nll"] == pytest.approx(before["nll"], rel=1e-4)


def test_pseudo_va_e2e_small_regime_splits_disjoint_faces_and_averages_seeds(tmp_path):
    """--train-size: classifiers get the first N faces (annotated VA + neighbour table), the regressor the
    others; the summary is a mean ± std over the seeds that finished."""
    import argparse

    import numpy as np

    from benchmarks import pseudo_va_e2e as e2e

    syn = tmp_path / "syn"
    syn.mkdir()
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({"path": [f"img_{i:03d}.png" for i in range(n)], "expression": rng.integers(0, 7, n),
                          "valence": rng.uniform(-1, 1, n), "arousal": rng.uniform(-1, 1, n)})
    frame.to_csv(syn / "train.csv", index=False)
    frame.iloc[:5].to_csv(syn / "test.csv", index=False)
    out = tmp_path / "out"
    args = e2e.build_parser().parse_args(["--out", str(out), "--train-size", "30", "--seeds", "0", "1"])
    rest = e2e._split_source(args, out, syn, rest=True)
    mine = e2e._split_source(args, out, syn, rest=False)
    rest_paths = set(pd.read_csv(rest / "train.csv").path)
    mine_paths = pd.read_csv(mine / "train.csv").path.tolist()
    assert mine_paths == frame.path.iloc[:30].tolist() and len(rest_paths) == 10
    assert not rest_paths & set(mine_paths)
    assert (mine / "train.neighbors.npz").is_file() and not (rest / "train.neighbors.npz").exists()
    assert json.loads((mine / "dataset.json").read_text())["image_root"] == str((syn / "images").resolve())

    bad = argparse.Namespace(**{**vars(args), "train_size": n})
    with pytest.raises(SystemExit, match="--train-size must be in 1..39"):
        e2e._split_source(bad, tmp_path / "other", syn, rest=True)

    for seed, acc in ((0, 0.5), (1, 0.6)):
        run = out / "runs" / f"ce-s{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"accuracy": acc, "mean_class_accuracy": acc - 0.1}))
    table = e2e.summary(args, out)
    ce_row = next(line for line in table.splitlines() if line.startswith("| CE |"))
    assert ce_row == "| CE | 2 | 55.00 ± 7.07 | 45.00 ± 7.07 | s0 50.00, s1 60.00 |"
    assert "| LDLVA on pseudo-VA | 0 | — |" in table and "annotated VA (reference)" not in table
    assert "first 30 train faces, regressor on the other 10" in table


@pytest.mark.slow
def test_gpu_suite_runs_at_a_toy_size(tmp_path):
    """benchmarks.gpu is known to run without a GPU: its first configuration at a toy size, through
    fresh `python -m benchmarks.speed` processes, into one markdown block with the goals."""
    from helpers_cli import ROOT, subprocess_env

    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--tiny", "--max-configs", "1", "--out", str(out)],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "TOY SIZE, not a measurement" in text
    for needle in ("| 32 px, mixed precision | ce |", "| 32 px, mixed precision | ldlva-bank |",
                   "Input pipeline", "LDLVA bank images/s", "projected AffectNet-8 LDLVA run"):
        assert needle in text, needle
    raw = json.loads(out.with_suffix(".json").read_text())
    assert len(raw["results"]) == 1 and all("training" in r for r in raw["results"])


@pytest.mark.slow
def test_onednn_benchmark_runs_both_settings_and_checks_they_took(tmp_path):
    """benchmarks.onednn at a toy size: one speed process with oneDNN off and one with it on, each reporting
    the state it ran in (a setting that did not take would be an error), and TensorFlow's own default."""
    from helpers_cli import ROOT, subprocess_env

    out = tmp_path / "onednn.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.onednn", "--tiny", "--methods", "ce", "--out", str(out)],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "TOY SIZE, not a measurement" in text and "TensorFlow's own default on this CPU: oneDNN" in text
    raw = json.loads(out.with_suffix(".json").read_text())
    assert [r["machine"]["onednn"] for r in raw["results"]["0"]] == [False]
    assert [r["machine"]["onednn"] for r in raw["results"]["1"]] == [True]
    row = next(line for line in text.splitlines() if line.startswith("| ce |"))
    off, on, ratio = (float(cell) for cell in row.split("|")[2:5])
    assert off > 0 and on > 0 and abs(ratio - raw["rows"]["ce"]["off"] / raw["rows"]["ce"]["on"]) < 0.006
