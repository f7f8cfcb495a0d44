"""--mlflow: a run, a resumed run and a benchmark grid, read back with MLflow's own client."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers_cli import ROOT, copy_dataset, run_cli, train_args

mlflow = pytest.importorskip("mlflow")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it before using a file store
    return tmp_path / "mlruns"


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.resolve().as_uri())


def _history(client, run_id, key) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client, run_id, path=None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_a_run_is_logged_and_read_back(tiny_dataset, tmp_path, store, capsys):
    import train

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    run = tmp_path / "run"
    argv = [a for a in train_args(ds, run, "--epochs", 2, "--val-every", 1, "--seed", 2, "--set", "label_smoothing=0.1",
                                  "--mlflow", store) if a != "--no-export"]  # with the export and its model card
    code, out, err = run_cli(train, argv, capsys)
    assert code == 0, err[-3000:]
    state = json.loads((run / "mlflow.json").read_text())
    assert state["tracking_uri"] == store.resolve().as_uri() and f"mlflow: run {state['run_id']}" in out
    client = _client(store)
    logged = client.get_run(state["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    record = json.loads((run / "config.json").read_text())
    params = logged.data.params
    # The resolved configuration, flattened: run settings, method config, data facts, sampler.
    assert params["run.lr"] == str(record["run"]["lr"]) and params["run.backbone"] == "tiny_cnn"
    assert params["method_config.label_smoothing"] == "0.1" and params["data.num_train_samples"] == "56"
    assert params["sampler.effective"] == "uniform" and params["versions.tensorflow"] == record["versions"]["tensorflow"]
    # Every epoch's metrics, equal to log.csv; the final metrics equal to metrics.json.
    log = pd.read_csv(run / "log.csv")
    for key in ("loss", "acc", "test_acc", "test_loss", "ce"):
        assert _history(client, state["run_id"], key) == pytest.approx(list(zip(log["epoch"], log[key]))), key
    metrics = json.loads((run / "metrics.json").read_text())
    final = logged.data.metrics
    assert final["final.accuracy"] == pytest.approx(metrics["accuracy"])
    assert final["final.macro_f1"] == pytest.approx(metrics["macro_f1"])
    # Artifacts: config.json, metrics, the model card and the export.
    assert {"config.json", "metrics.json", "log.csv", "MODEL_CARD.md", "saved_model"} <= _artifacts(client, state["run_id"])
    assert {"saved_model/saved_model.pb", "saved_model/fer_export.json"} <= _artifacts(client, state["run_id"], "saved_model")


def test_a_resumed_run_continues_the_same_mlflow_run(tiny_dataset, tmp_path, store, capsys, monkeypatch):
    """Interrupted after epoch 0 (tracked without MLflow) and after epoch 1 (with it), then resumed: one MLflow
    run holds all three epochs once each; epoch 0 comes from log.csv."""
    import train
    from engine.callbacks import EpochLog

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    run = tmp_path / "run"
    argv = train_args(ds, run, "--epochs", 3, "--seed", 1)
    real = EpochLog.on_epoch_begin

    def interrupt_after(epoch):
        # As Ctrl-C right after the epoch is logged and checkpointed: at the start of the next epoch (the
        # engine's checkpoint callback runs after the log, so an interrupt inside on_epoch_end would precede it).
        def on_epoch_begin(self, current, logs=None):
            if current == epoch + 1:
                raise KeyboardInterrupt()
            return real(self, current, logs)
        monkeypatch.setattr(EpochLog, "on_epoch_begin", on_epoch_begin)

    interrupt_after(0)
    assert run_cli(train, argv, capsys)[0] == 130
    assert not (run / "mlflow.json").exists()
    interrupt_after(1)
    assert run_cli(train, [*argv, "--resume", "--mlflow", store], capsys)[0] == 130
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    client = _client(store)
    assert client.get_run(run_id).info.status == "KILLED"
    assert [step for step, _ in _history(client, run_id, "loss")] == [0, 1]
    monkeypatch.setattr(EpochLog, "on_epoch_begin", real)
    code, out, err = run_cli(train, [*argv, "--resume", "--mlflow", store], capsys)
    assert code == 0, err[-3000:]
    assert f"mlflow: continuing run {run_id}" in out
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == run_id
    assert [r.info.run_id for r in client.search_runs([client.get_run(run_id).info.experiment_id])] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    log = pd.read_csv(run / "log.csv")
    assert _history(client, run_id, "loss") == pytest.approx(list(zip(log["epoch"], log["loss"])))
    assert [step for step, _ in _history(client, run_id, "loss")] == [0, 1, 2]
    # A resume from another store is refused, naming the one the run is tracked in.
    other = tmp_path / "other"
    code, _, err = run_cli(train, [*train_args(ds, run, "--epochs", 3, "--seed", 1), "--resume", "--mlflow", other],
                           capsys)
    assert code == 2 and f"resume it with --mlflow {store.resolve().as_uri()}" in err, err


def test_a_grid_tags_each_run_with_its_cell(tiny_dataset, tmp_path, store, capsys):
    import benchmark

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    out = tmp_path / "grid"
    argv = ["--protocol", "noise", "--levels", "0.2", "--methods", "ce", "--seeds", "4", "--out", out,
            "--dataset", "csv", "--num-classes", 7, "--data-dir", ds, "--backbone", "tiny_cnn", "--image-size", 24,
            "--epochs", 1, "--batch-size", 8, "--mlflow", store]
    code, _, err = run_cli(benchmark, argv, capsys)
    assert code == 0, err[-3000:]
    cell = out / "runs" / "ce_0.2_s4"
    run_id = json.loads((cell / "mlflow.json").read_text())["run_id"]
    tags = _client(store).get_run(run_id).data.tags
    assert {k: tags[k] for k in ("fer.cell", "fer.method", "fer.level", "fer.seed", "fer.protocol")} == {
        "fer.cell": "ce_0.2_s4", "fer.method": "ce", "fer.level": "0.2", "fer.seed": "4", "fer.protocol": "noise"}
    assert _client(store).get_run(run_id).data.params["run.noise_rate"] == "0.2"


def test_without_mlflow_installed_the_flag_is_a_clear_error(tiny_dataset, tmp_path, capsys, monkeypatch):
    import importlib.util

    import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    run = tmp_path / "run"
    code, _, err = run_cli(train, train_args(tiny_dataset, run, "--mlflow"), capsys)
    assert code == 2 and "--mlflow needs the mlflow package: pip install mlflow-skinny" in err, err
    assert not run.exists()


def test_mlflow_is_imported_only_inside_the_tracker():
    """No module-level import of mlflow anywhere: a run without --mlflow never loads it."""
    import ast

    for path in sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("*/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = [alias.name for node in top if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module or "" for node in top if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "mlflow"], path
    tracker = (ROOT / "engine" / "callbacks.py").read_text(encoding="utf-8")
    assert "from mlflow.tracking import MlflowClient" in tracker  # the check above looks at the right files
