"""train.py / benchmark.py --config RUN/config.json: replay, precedence of the options beside it, bad files."""

from __future__ import annotations

import hashlib
import json

import pytest

from helpers_cli import copy_dataset, run_cli, train_args


def _metrics_without_timings(run) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("timings_s")
    metrics.pop("run_dir")
    return metrics


@pytest.fixture(scope="module")
def original(tiny_dataset, tmp_path_factory):
    """A finished tiny run (2 epochs, seed 7, a --set and a per-epoch test evaluation)."""
    import train
    from common.cli import run_main

    folder = tmp_path_factory.mktemp("replay")
    ds = copy_dataset(tiny_dataset, folder / "ds")
    run = folder / "original"
    code = run_main(train.main, [str(a) for a in train_args(ds, run, "--epochs", 2, "--seed", 7, "--val-every", 1,
                                                                "--set", "label_smoothing=0.05", "--sampler", "balanced")])
    assert code == 0
    return ds, run


def test_replay_gives_the_same_metrics_and_records_its_source(original, tmp_path, capsys):
    import train

    ds, run = original
    replay = tmp_path / "replay"
    code, _, err = run_cli(train, ["--config", run / "config.json", "--run", replay, "--verbose", 0], capsys)
    assert code == 0, err[-3000:]
    assert _metrics_without_timings(replay) == _metrics_without_timings(run)  # every metric, every float
    old, new = (json.loads((r / "config.json").read_text()) for r in (run, replay))
    assert new["replayed_from"] == {"path": str(run / "config.json"),
                                    "sha256": hashlib.sha256((run / "config.json").read_bytes()).hexdigest()}
    assert new["method_config"] == old["method_config"] and new["data"] == old["data"]
    assert new["sampler"] == old["sampler"] == {"requested": "balanced", "effective": "balanced"}
    differ = {k for k in old["run"] if old["run"][k] != new["run"][k]}
    assert differ <= {"run"}, differ
    # The log of the replay matches epoch by epoch (timings aside).
    import pandas as pd

    a, b = (pd.read_csv(r / "log.csv").drop(columns=["epoch_seconds", "step_seconds"]) for r in (run, replay))
    pd.testing.assert_frame_equal(a, b)


def _with_old_setting_names(record: dict) -> dict:
    """A config.json as train.py wrote it before the run settings were named as their flags."""
    run = dict(record["run"])
    for old, new in (("out", "run"), ("noise_kind", "noise"), ("method_overrides", "set"), ("val_every", "test_every")):
        run[old] = run.pop(new)
    run["deterministic"] = not run.pop("nondeterministic")
    return {**record, "run": run}


def test_a_run_written_under_the_old_setting_names_is_read(original, tmp_path, capsys):
    """Runs of benchmark_runs/ and the archives hold out, noise_kind, method_overrides, deterministic and
    val_every in config.json and val_* columns in log.csv: they are rebuilt, evaluated, replayed and resumed
    (here extended by an epoch) as before, their log continuing under the new column names."""
    import shutil

    import evaluate
    import pandas as pd
    import train
    from engine.config import compare_configs, read_config_file, run_config_from_record

    ds, run = original
    record = json.loads((run / "config.json").read_text())
    legacy = _with_old_setting_names(record)
    assert not {"run", "noise", "set", "test_every", "nondeterministic"} & set(legacy["run"])
    cfg = run_config_from_record(legacy, "config.json")
    assert (cfg.run, cfg.noise, cfg.set, cfg.test_every, cfg.nondeterministic) == (
        str(run), "none", {"label_smoothing": "0.05"}, 1, False)
    assert compare_configs(legacy, record) == [] and compare_configs(record, legacy) == []
    changed = _with_old_setting_names({**record, "run": {**record["run"], "nondeterministic": True}})
    assert compare_configs(changed, record) == ["run.nondeterministic: True → False"]

    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "config.json").write_text(json.dumps(legacy))
    log = pd.read_csv(old / "log.csv")
    log.rename(columns=lambda c: "val_" + c[5:] if c.startswith("test_") else c).to_csv(old / "log.csv", index=False)
    assert read_config_file(old / "config.json").run["set"] == {"label_smoothing": "0.05"}
    # evaluate.py rebuilds it and reproduces metrics.json
    code, _, err = run_cli(evaluate, ["--run", old, "--json", tmp_path / "eval.json"], capsys)
    assert code == 0, err[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["accuracy"])
    # --config replays it exactly
    code, _, err = run_cli(train, ["--config", old / "config.json", "--run", tmp_path / "replay", "--verbose", 0], capsys)
    assert code == 0, err[-3000:]
    assert _metrics_without_timings(tmp_path / "replay") == _metrics_without_timings(run)
    # --resume accepts its settings (the same command), and --extend continues its log
    argv = train_args(ds, old, "--epochs", 3, "--seed", 7, "--test-every", 1, "--set", "label_smoothing=0.05",
                      "--sampler", "balanced", "--resume", "--extend")
    code, _, err = run_cli(train, argv, capsys)
    assert code == 0, err[-3000:]
    log = pd.read_csv(old / "log.csv")
    assert list(log["epoch"]) == [0, 1, 2] and log["test_acc"].notna().all()
    assert not any(c.startswith("val_") for c in log.columns)
    assert json.loads((old / "metrics.json").read_text())["epoch_selection"]["evaluated_epochs"] == 3


def test_options_beside_the_config_override_it(original, tmp_path, capsys):
    import train

    ds, run = original
    replay = tmp_path / "replay"
    code, _, err = run_cli(train, ["--config", run / "config.json", "--run", replay, "--epochs", 1,
                                   "--set", "l2_weight_decay=0.001", "--sampler", "uniform", "--no-export"], capsys)
    assert code == 0, err[-3000:]
    record = json.loads((replay / "config.json").read_text())
    assert record["run"]["epochs"] == 1 and record["run"]["sampler"] == "uniform"
    assert record["run"]["seed"] == 7 and record["run"]["backbone"] == "tiny_cnn"  # from the file
    # --set merges key by key: the recorded label_smoothing stays, the typed l2_weight_decay joins it.
    assert record["run"]["set"] == {"label_smoothing": "0.05", "l2_weight_decay": "0.001"}
    assert record["method_config"] == {"label_smoothing": 0.05, "l2_weight_decay": 0.001}


def _write_record(path, method="nla", **run):
    """A config.json as train.py writes it, for a run on the synthetic benchmark resolved without data."""
    from engine.config import RunConfig, config_record, resolve

    cfg, _, _, method_cfg = resolve(RunConfig(dataset="synthetic", method=method, weights="none", **run))
    path.write_text(json.dumps(config_record(cfg, method_cfg, {}), default=list))
    return path


def _replayed(path, argv):
    """(RunConfig after resolve, method config) of ``train.py --config path argv`` (nothing trained)."""
    from engine.config import read_config_file, replayed_method_config, resolve
    from train import build_parser, config_from_args

    args = build_parser().parse_args(["--config", str(path), *argv])
    source = read_config_file(path)
    cfg, _, model_cls, method_cfg = resolve(config_from_args(args, source))
    return cfg, replayed_method_config(source, model_cls, cfg, args.preset) or method_cfg


def test_precedence_typed_option_over_typed_preset_over_file_over_dataset(tmp_path):
    path = _write_record(tmp_path / "config.json", epochs=7, lr=0.005, set={"l2_weight_decay": "0.5",
                                                                                         "jsd_mode": "textbook"})
    cfg, method_cfg = _replayed(path, [])
    assert (cfg.epochs, cfg.lr, cfg.lr_schedule) == (7, 0.005, "constant")  # the file
    assert (method_cfg.l2_weight_decay, method_cfg.jsd_mode) == (0.5, "textbook")
    # A typed --preset beats the file for what it sets (NLA official: 60 epochs, lr 1e-4, exponential decay,
    # coupled L2 1e-4); what it does not set stays the file's (jsd_mode).
    cfg, method_cfg = _replayed(path, ["--preset", "official", "--weights", "none"])
    assert (cfg.epochs, cfg.lr, cfg.lr_schedule, cfg.batch_size) == (60, 1e-4, "exponential", 32)
    assert (method_cfg.l2_weight_decay, method_cfg.jsd_mode) == (1e-4, "textbook")
    # A typed option beats the typed preset.
    cfg, method_cfg = _replayed(path, ["--preset", "official", "--weights", "none", "--epochs", "3",
                                       "--set", "l2_weight_decay=0.25"])
    assert (cfg.epochs, cfg.lr) == (3, 1e-4) and method_cfg.l2_weight_decay == 0.25
    # A file that leaves a field out: the dataset's default fills it.
    record = json.loads(path.read_text())
    del record["run"]["epochs"]
    path.write_text(json.dumps(record))
    from data.registry import DATASETS

    assert _replayed(path, [])[0].epochs == DATASETS["synthetic"].epochs != 7


def test_the_recorded_method_config_wins_over_changed_code_defaults(tmp_path):
    """A replay rebuilds the method config the run had, not what today's defaults would give."""
    path = _write_record(tmp_path / "config.json")
    record = json.loads(path.read_text())
    record["method_config"]["slope"] = -9.5  # as if the default had been -9.5 when the run was made
    path.write_text(json.dumps(record))
    assert _replayed(path, [])[1].slope == -9.5


@pytest.mark.parametrize("edit, needle", [
    (lambda r: "{not json", "not valid JSON (line 1, column 2"),
    (lambda r: [1, 2], "must hold a JSON object"),
    (lambda r: {**r, "extra": 1}, "unknown key 'extra'"),
    (lambda r: {k: v for k, v in r.items() if k != "run"}, "run: missing or not an object"),
    (lambda r: {**r, "run": {**r["run"], "bogus": 1}}, "run.bogus: unknown setting"),
    (lambda r: {**r, "run": {**r["run"], "lr": "fast"}}, "run: lr = 'fast' has the wrong type"),
    (lambda r: {**r, "run": {**r["run"], "lr": -1}}, "run.lr: --lr must be > 0"),
    (lambda r: {**r, "run": {**r["run"], "optimizer": "rmsprop"}}, "run.optimizer: 'rmsprop' is not one of"),
    (lambda r: {**r, "method_config": {**r["method_config"], "gamma": 1}}, "method_config.gamma: unknown setting"),
    (lambda r: {**r, "method_config": {**r["method_config"], "label_smoothing": "x"}},
     "method_config: label_smoothing = 'x' has the wrong type"),
])
def test_a_bad_config_file_is_an_error_naming_file_and_key(edit, needle, original, tmp_path, capsys):
    import train

    ds, run = original
    bad = tmp_path / "bad.json"
    edited = edit(json.loads((run / "config.json").read_text()))
    bad.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    code, _, err = run_cli(train, ["--config", bad, "--run", tmp_path / "never"], capsys)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert err.startswith(f"error: {bad}") and needle in err, err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--method", "ldlva"], "method: the config is a 'ce' run; --method ldlva would replay it as another method"),
    (["--dataset", "synthetic"], "dataset: the config is a 'csv' run; --dataset synthetic"),
])
def test_a_config_of_another_method_or_dataset_is_refused(argv, needle, original, tmp_path, capsys):
    import train

    ds, run = original
    code, _, err = run_cli(train, ["--config", run / "config.json", "--run", tmp_path / "never", *argv], capsys)
    assert code == 2 and err.startswith(f"error: {run / 'config.json'}: ") and needle in err, err
    code, _, err = run_cli(train, ["--config", tmp_path / "missing.json"], capsys)
    assert code == 2 and "missing.json: no such file" in err


def test_benchmark_takes_its_common_options_from_a_config(original, tmp_path):
    import benchmark
    from benchmarks.grid import base_config

    ds, run = original
    args = benchmark.build_parser().parse_args(["--protocol", "noise", "--levels", "0.2", "--methods", "ce", "scn",
                                                "--seeds", "3", "--config", str(run / "config.json"),
                                                "--epochs", "4"])
    benchmark.apply_config(args)
    args.preset = {}  # run_grid's --method-preset table
    cfg = base_config(args, "scn", 3, tmp_path / "cell", 0.2, {})
    # From the file: data, backbone, image size, batch, sampler; typed: epochs; per cell: method, seed, noise.
    assert (cfg.dataset, cfg.data_dir, cfg.backbone, cfg.image_size, cfg.batch_size, cfg.sampler) == (
        "csv", str(ds), "tiny_cnn", 24, 8, "balanced")
    assert cfg.epochs == 4 and (cfg.method, cfg.seed, cfg.noise_rate) == ("scn", 3, 0.2)
    # Not the file's --set (a grid takes --method-set), nor its export/verbose (the grid's own defaults).
    assert cfg.set == {} and cfg.export is False and cfg.verbose == 0
    assert args.config_source.sha256 == hashlib.sha256((run / "config.json").read_bytes()).hexdigest()
    with pytest.raises(Exception, match="--dataset synthetic would replay it as another dataset"):
        benchmark.apply_config(benchmark.build_parser().parse_args(
            ["--protocol", "original", "--config", str(run / "config.json"), "--dataset", "synthetic"]))
