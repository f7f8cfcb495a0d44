"""Exact resume: atomic checkpoints/exports, SIGKILL-and-resume bit-identity, refusal of changed configs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers_cli import KillAt, copy_dataset, h5_datasets, run_cli, train_args, tree_digest


# --- atomic writes --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_model():
    import keras

    from models.backbones import build_backbone
    from models.ce import CEConfig, CEModel

    keras.utils.set_random_seed(0)
    model = CEModel(build_backbone("small_cnn", 24), 7, 10, CEConfig())
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.build_all(24)
    return model


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("crash", ["in_save_weights", "in_state_json", "before_latest"])
def test_crash_during_save_keeps_previous_checkpoint(crash, small_model, tmp_path, monkeypatch):
    import common.io
    from engine.checkpoint import CheckpointManager

    manager = CheckpointManager(tmp_path)
    first = manager.save(small_model, {"global_step": 1})
    before = tree_digest(first)

    class Killed(BaseException):  # not an Exception: nothing may swallow it, as with a real kill
        pass

    if crash == "in_save_weights":
        def half_written(path, *args, **kwargs):
            Path(path).write_bytes(b"\x89HDF\r\n\x1a\n partial")
            raise Killed()
        monkeypatch.setattr("engine.checkpoint.atomic_write_bytes", half_written)
    elif crash == "in_state_json":
        def killed_json(path, obj):
            Path(path).write_text('{"global_st')
            raise Killed()
        monkeypatch.setattr("engine.checkpoint.atomic_write_json", killed_json)
    else:
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if Path(dst).name == "latest":
                raise Killed()
            return real_replace(src, dst, *a, **k)
        monkeypatch.setattr(common.io.os, "replace", replace)
    with pytest.raises(Killed):
        manager.save(small_model, {"global_step": 2})
    monkeypatch.undo()
    assert manager.latest() == first  # `latest` still names the previous complete checkpoint
    assert tree_digest(first) == before
    if crash != "before_latest":  # the half-written one never appears under a final name
        assert _entries(tmp_path / "ckpt") == ["latest", "step-000000001"]
    # The next successful save cleans up whatever the crash left behind.
    manager.save(small_model, {"global_step": 3})
    # (Killed after the rename, step 2 is complete but unreferenced; keep=2 then prunes step 1.)
    kept = "step-000000002" if crash == "before_latest" else "step-000000001"
    assert _entries(tmp_path / "ckpt") == ["latest", kept, "step-000000003"]
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")]
    CheckpointManager.load_into(small_model, manager.latest(), require_optimizer=True)


@pytest.mark.parametrize("failure", ["crash", "disk_full"])
def test_failed_export_keeps_previous_savedmodel(failure, small_model, tmp_path, monkeypatch):
    import tensorflow as tf

    from common.errors import WriteError
    from engine.export import export_saved_model

    out = tmp_path / "saved_model"
    export_saved_model(small_model, out, 24, [f"c{i}" for i in range(7)], "ce")
    before = tree_digest(out)
    real_save = tf.saved_model.save

    def failing(module, path, *args, **kwargs):
        real_save(module, path, *args, **kwargs)  # everything written, then the last write fails
        (Path(path) / "variables" / "variables.index").write_bytes(b"trunc")
        if failure == "crash":
            raise KeyboardInterrupt()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", failing)
    expected = KeyboardInterrupt if failure == "crash" else WriteError
    with pytest.raises(expected) as info:
        export_saved_model(small_model, out, 24, [f"c{i}" for i in range(7)], "ce")
    if failure == "disk_full":
        assert str(out) in str(info.value) and "intact" in str(info.value) and "disk full" in str(info.value)
    assert tree_digest(out) == before
    assert _entries(tmp_path) == ["saved_model"]  # no temporary folder left


# --- SIGKILL mid-epoch, resume, compare with an uninterrupted run -----------------------------------------
# (Kills at an epoch's end, in a checkpoint's rename, inside a step and in the export, and a chain of resumes of
# resumed runs, are test_chaos.py's chain.)
EPOCHS = 2  # × 7 steps of 8 (56 training samples)
KILL_AFTER = 9  # global step: early epoch 1, after epoch 0's validation, log row and checkpoint
LDLVA_ARGS = ["--method", "ldlva", "--set", "num_neighbors=2"]
# LDLVA with its per-sample neighbour bank: weights, λ, centres, banks and optimizer must all come back.
METHOD_ARGS = {"ce": [], "ldlva": [*LDLVA_ARGS, "--set", "neighbor_source=bank"]}


def _run_args(ds, out, method):
    return train_args(ds, out, "--epochs", EPOCHS, "--checkpoint-every", 1, "--seed", 3, *METHOD_ARGS[method])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ldlva"])  # CE's resume is covered by test_extend_* and the contract test
def test_sigkill_mid_epoch_then_resume_is_bit_identical(method, tiny_dataset, tmp_path, capsys):
    import train

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    run, reference = tmp_path / "killed", tmp_path / "reference"
    killer = KillAt(_run_args(ds, run, method), run, KILL_AFTER, tmp_path / "segment0.log")
    killer.start()
    code, _, err = run_cli(train, _run_args(ds, reference, method), capsys)  # uninterrupted, meanwhile
    assert code == 0, err[-3000:]
    killed_at = killer.result()
    assert KILL_AFTER <= killed_at < EPOCHS * 7, killed_at
    code, out, err = run_cli(train, _run_args(ds, run, method) + ["--resume"], capsys)
    assert code == 0, err[-3000:]
    assert f"global step {killed_at}" in out

    final = f"step-{EPOCHS * 7:09d}"
    assert (run / "ckpt" / "latest").read_text().strip() == final
    resumed = h5_datasets(run / "ckpt" / final / "model.weights.h5")
    uninterrupted = h5_datasets(reference / "ckpt" / final / "model.weights.h5")
    assert sorted(resumed) == sorted(uninterrupted)
    assert any(k.startswith("optimizer/") for k in resumed)
    different = [k for k in uninterrupted if not np.array_equal(resumed[k], uninterrupted[k])]
    assert not different, f"killed at {killed_at}; differ: {different[:10]}"
    log = pd.read_csv(run / "log.csv")
    assert not log["epoch"].duplicated().any() and log["epoch"].iloc[-1] == EPOCHS - 1
    assert not [p for p in (run / "ckpt").iterdir() if p.name.startswith(".")]


# --- resume refuses a changed configuration ------------------------------------------------------------
@pytest.fixture
def ldlva_run(tiny_dataset, tmp_path):
    """A run directory as train.py leaves it before its first step (config.json written, K=2)."""
    from engine.run import Run
    from engine.rundir import prepare_run_dir
    from train import build_parser, config_from_args

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    run = tmp_path / "run"
    args = build_parser().parse_args(train_args(ds, run, *LDLVA_ARGS))
    inputs = Run(config_from_args(args), log=lambda *a: None)
    inputs.load_splits()
    prepare_run_dir(run, inputs.record(), False, False)
    return ds, run


def _drop_one_row_per_class(ds):
    frame = pd.read_csv(ds / "train.csv")
    frame.iloc[7:].to_csv(ds / "train.csv", index=False)


CHANGES = {
    "method": (lambda ds: ["--method", "ce"], "run.method: 'ldlva' → 'ce'"),
    "dataset_size": (lambda ds: _drop_one_row_per_class(ds) or LDLVA_ARGS,
                     "data.num_train_samples: 56 → 49"),
    "num_neighbors": (lambda ds: ["--method", "ldlva", "--set", "num_neighbors=3"],
                      "method_config.num_neighbors: 2 → 3"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_resume_refuses_changed_configuration(change, ldlva_run, capsys):
    import train

    ds, run = ldlva_run
    before = tree_digest(run)
    mutate, expected = CHANGES[change]
    extra = mutate(ds)
    code, _, err = run_cli(train, train_args(ds, run, "--resume", *extra), capsys)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert "--resume refused" in err and expected in err, err
    assert tree_digest(run) == before


# --- extending a run -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_extend_a_finished_run_equals_one_longer_run(tiny_dataset, tmp_path, capsys):
    """--resume --extend --epochs 2 on a finished 1-epoch run = one 2-epoch run (a schedule that does not
    depend on the total epoch count: constant here; see README for cosine/linear)."""
    import json

    import train

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    short, straight = tmp_path / "short", tmp_path / "straight"
    common = ["--seed", "4", "--test-every", "1"]
    assert run_cli(train, train_args(ds, short, *common), capsys)[0] == 0
    code, _, err = run_cli(train, train_args(ds, short, *common, "--epochs", "2", "--resume"), capsys)
    assert code == 2 and "run.epochs: 1 → 2" in err and "--extend" in err
    code, _, err = run_cli(train, train_args(ds, short, *common, "--epochs", "2", "--resume", "--extend"), capsys)
    assert code == 0, err[-3000:]
    assert run_cli(train, train_args(ds, straight, *common, "--epochs", "2"), capsys)[0] == 0
    final = "step-000000014"
    a = h5_datasets(short / "ckpt" / final / "model.weights.h5")
    b = h5_datasets(straight / "ckpt" / final / "model.weights.h5")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in b)
    record = json.loads((short / "config.json").read_text())
    assert record["run"]["epochs"] == 2 and record["extensions"] == [{"from_epochs": 1, "to_epochs": 2}]
    log = pd.read_csv(short / "log.csv")
    assert list(log["epoch"]) == [0, 1]
    # metrics.json is the extended run's; with a per-epoch test evaluation it also reports epoch selection.
    metrics = json.loads((short / "metrics.json").read_text())
    selection = metrics["epoch_selection"]
    assert selection["evaluated_epochs"] == 2 and selection["best_epoch"] in (0, 1)
    assert selection["best_epoch_accuracy"] == pytest.approx(log["test_acc"].max())
    assert selection["mean_last_5_accuracy"] == pytest.approx(log["test_acc"].mean())
    assert "test set" in selection["best_epoch_note"]
    # --extend never shortens a run or changes anything else.
    code, _, err = run_cli(train, train_args(ds, short, *common, "--epochs", "3", "--lr", "0.01", "--resume",
                                             "--extend"), capsys)
    assert code == 2 and "run.lr" in err
